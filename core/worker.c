#include "core/worker.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <liburing.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "core/log.h"
#include "core/worker_impl.h"

/* ---- journal group commit ---------------------------------------------------------- */

static void
worker_journal_submit(struct worker *w)
{
	int r = store_submit(w->store, &w->io.ring);

	if (r < 0)
		in_journal_settled(w, 0, r);
}

static void
worker_on_journal(struct worker *w, enum worker_op op, int res)
{
	uint64_t durable = 0;
	int r = store_on_journal(w->store, &w->io.ring, op, res, &durable);

	if (r != 1)
		in_journal_settled(w, durable, r);
}

/* ---- timers, stop ------------------------------------------------------------------ */

static void
worker_arm_tick(struct worker *w)
{
	struct io_uring_sqe *sqe = ring_sqe(&w->io.ring);

	w->tick.tv_sec = 0;
	w->tick.tv_nsec = WORKER_TICK_MS * 1000000L;
	io_uring_prep_timeout(sqe, &w->tick, 0, 0);
	io_uring_sqe_set_data64(sqe, ud_pack(OP_TICK, 0, 0));
}

static void
worker_on_tick(struct worker *w)
{
	bool grace_over = w->stopping && w->now_ms >= w->stop_deadline_ms;

	in_tick(w, grace_over);
	out_dns_pump(w); /* the resolver's timers are served at tick granularity */
	out_tick(w);
	store_tick(w->store);
	if (!(w->stopping && w->active == 0 && out_idle(w)))
		worker_arm_tick(w);
}

static void
worker_stop(struct worker *w)
{
	if (w->stopping)
		return;
	w->stopping = true;
	w->stop_deadline_ms = w->now_ms + WORKER_STOP_GRACE_MS;
	for (unsigned i = 0; i < w->cfg->listen_count; i++) {
		struct io_uring_sqe *sqe = ring_sqe(&w->io.ring);
		io_uring_prep_cancel64(sqe, ud_pack(OP_ACCEPT, 0, i), 0);
		io_uring_sqe_set_data64(sqe, ud_pack(OP_CANCEL, 0, 0));
	}
	out_stop(w);
	worker_on_tick(w);
}

static bool
worker_finished(const struct worker *w)
{
	return w->stopping && w->active == 0 && out_idle(w) && w->waiter_count == 0 &&
	       !store_busy(w->store);
}

/* ---- TLS contexts ----------------------------------------------------------------- */

struct tls_server *
worker_tls_server(const struct config *cfg, const struct tls_tickets *tickets, char *err,
                  size_t err_len)
{
	struct tls_cert_files certs[1 + CONFIG_SNI_MAX] = {
	    {.certificate = cfg->tls_certificate, .key = cfg->tls_key}};

	for (unsigned i = 0; i < cfg->tls_sni_count; i++)
		certs[1 + i] = (struct tls_cert_files){.name = cfg->tls_sni[i].name,
		                                       .certificate = cfg->tls_sni[i].certificate,
		                                       .key = cfg->tls_sni[i].key};
	return tls_server_new(certs, 1 + cfg->tls_sni_count, tickets, err, err_len);
}

/* SIGHUP: certificates read again for new connections; sessions keep the ones they have. */
static void
worker_tls_reload(struct worker *w)
{
	char why[256];
	struct tls_server *s = worker_tls_server(w->cfg, w->tickets, why, sizeof(why));

	if (s == NULL) {
		log_msg(CONFIG_LOG_ERROR, "worker %u: keeping the current certificate: %s",
		        w->index, why);
		return;
	}
	tls_server_free(w->tls_server);
	w->tls_server = s;
}

/* ---- control requests -------------------------------------------------------------- */

static void
worker_arm_mailbox(struct worker *w)
{
	struct io_uring_sqe *sqe = ring_sqe(&w->io.ring);

	io_uring_prep_read(sqe, w->mailbox_fd, &w->mailbox_value, sizeof(w->mailbox_value), 0);
	io_uring_sqe_set_data64(sqe, ud_pack(OP_MAILBOX, 0, 0));
}

void
worker_post(struct worker *w, struct control_request *r)
{
	uint64_t one = 1;

	pthread_mutex_lock(&w->mailbox_lock);
	/* the main thread sends one request at a time, so the box never fills */
	assert(w->mailbox_count < sizeof(w->mailbox) / sizeof(w->mailbox[0]));
	w->mailbox[w->mailbox_count++] = r;
	pthread_mutex_unlock(&w->mailbox_lock);
	if (write(w->mailbox_fd, &one, sizeof(one)) != sizeof(one))
		abort(); /* an eventfd write fails only on overflow: impossible here */
}

static void
worker_stats_add(struct worker *w, struct control_stats *sum)
{
	struct queue_stats qs;

	queue_stats(w->queue, &qs);
	w->stats.queue_messages = qs.messages;
	w->stats.queue_recipients = qs.recipients_pending;
	w->stats.queue_memory = qs.memory;
	w->stats.queue_memory_limit = qs.memory_limit;
	w->stats.journal_disk_bytes = store_disk_bytes(w->store);
	const struct store_counters *sc = store_counters(w->store);
	w->stats.journal_batches = sc->journal_batches;
	w->stats.journal_syncs = sc->journal_syncs;
	w->stats.journal_errors = sc->journal_errors;

	const uint64_t *src = (const uint64_t *)&w->stats;
	uint64_t *dst = (uint64_t *)sum;
	static_assert(sizeof(struct control_stats) % sizeof(uint64_t) == 0, "stats are u64s");
	for (size_t i = 0; i < sizeof(*sum) / sizeof(uint64_t); i++)
		dst[i] += src[i];
}

static void
worker_show(struct worker *w, struct control_request *r)
{
	uint64_t id = strtoull(r->arg, NULL, 16);
	struct queue_message *m = queue_find(w->queue, id);

	if (m == NULL)
		return;
	r->found = true;
	control_format_message(&r->out, m, r->json, r->now_ms);
	strbuf_puts(&r->out, "\n");
	uint8_t *owned;
	const uint8_t *body = store_body(w->store, m, &owned);
	if (body != NULL)
		strbuf_append(&r->out, (const char *)body, m->body_len);
	free(owned);
}

static void
worker_message_cmd(struct worker *w, struct control_request *r)
{
	struct queue_message *m = queue_find(w->queue, strtoull(r->arg, NULL, 16));

	if (m == NULL)
		return;
	r->found = true;
	if (r->cmd == CONTROL_DELETE) {
		r->error = out_delete(w, m);
		return;
	}
	out_hold(w, m, r->cmd == CONTROL_HOLD);
}

static void
worker_handle_request(struct worker *w, struct control_request *r)
{
	if (r->cmd == CONTROL_RESOLVE) {
		out_resolve(w, r); /* answered when the lookups are done */
		return;
	}
	pthread_mutex_lock(&r->lock);
	switch (r->cmd) {
	case CONTROL_QUEUE:
		for (struct queue_message *m = queue_next(w->queue, NULL); m != NULL;
		     m = queue_next(w->queue, m)) {
			if (r->json && r->items++ > 0)
				strbuf_puts(&r->out, ",");
			control_format_message(&r->out, m, r->json, r->now_ms);
			strbuf_puts(&r->out, "\n");
		}
		break;
	case CONTROL_SHOW:
		worker_show(w, r);
		break;
	case CONTROL_STATS:
		worker_stats_add(w, &r->stats);
		break;
	case CONTROL_RELOAD:
		w->policy = r->policy;
		if (r->tls_reload)
			worker_tls_reload(w);
		break;
	case CONTROL_FLUSH:
		out_flush_queue(w);
		break;
	case CONTROL_DELETE:
	case CONTROL_HOLD:
	case CONTROL_RELEASE:
		worker_message_cmd(w, r);
		break;
	case CONTROL_RESOLVE:
		break;
	case CONTROL_STOP:
		break;
	}
	pthread_mutex_unlock(&r->lock);
	if (r->cmd == CONTROL_STOP)
		worker_stop(w);
	control_request_answered(r);
}

static void
worker_on_mailbox(struct worker *w)
{
	struct control_request *box[8];
	unsigned n;

	pthread_mutex_lock(&w->mailbox_lock);
	n = w->mailbox_count;
	memcpy(box, w->mailbox, n * sizeof(box[0]));
	w->mailbox_count = 0;
	pthread_mutex_unlock(&w->mailbox_lock);
	for (unsigned i = 0; i < n; i++)
		worker_handle_request(w, box[i]);
	worker_arm_mailbox(w);
}

/* ---- the loop ---------------------------------------------------------------------- */

static void
worker_dispatch(struct worker *w, const struct io_uring_cqe *cqe)
{
	uint64_t ud = cqe->user_data;

	switch (ud_op(ud)) {
	case OP_ACCEPT:
		in_on_accept(w, ud_slot(ud), cqe->res, cqe->flags);
		break;
	case OP_RECV:
		in_on_recv(w, ud, cqe->res, cqe->flags);
		break;
	case OP_SEND:
		in_on_send(w, ud, cqe->res);
		break;
	case OP_TICK:
		worker_on_tick(w);
		break;
	case OP_JOURNAL_WRITE:
	case OP_JOURNAL_SYNC:
		worker_on_journal(w, ud_op(ud), cqe->res);
		break;
	case OP_MAILBOX:
		worker_on_mailbox(w);
		break;
	case OP_REFUSE_SEND:
	case OP_REFUSE_CLOSE:
	case OP_CANCEL:
		break;
	case OP_OUT_CONNECT:
	case OP_OUT_RECV:
	case OP_OUT_SEND:
	case OP_DNS:
		out_on_cqe(w, ud_op(ud), ud, cqe->res, cqe->flags);
		break;
	}
}

/* End of a turn: one journal batch for everything that finished DATA, then the replies. */
static void
worker_end_turn(struct worker *w)
{
	out_dns_pump(w);
	out_dispatch(w);
	worker_journal_submit(w);
	in_flush_dirty(w);
	log_flush();
}

static void
worker_loop(struct worker *w)
{
	while (!worker_finished(w)) {
		struct io_uring_cqe *cqe;
		unsigned head, seen = 0;

		worker_end_turn(w);
		int r = io_uring_submit_and_wait(&w->io.ring, 1);
		if (r < 0 && r != -EINTR && r != -EBUSY) {
			log_msg(CONFIG_LOG_ERROR, "io_uring_submit_and_wait: %s", strerror(-r));
			abort();
		}
		w->now_ms = clock_ms(CLOCK_MONOTONIC_COARSE);
		w->wall_ms = clock_ms(CLOCK_REALTIME);
		io_uring_for_each_cqe(&w->io.ring, head, cqe)
		{
			worker_dispatch(w, cqe);
			if (++seen == WORKER_CQE_BATCH)
				break;
		}
		io_uring_cq_advance(&w->io.ring, seen);
	}
	worker_end_turn(w);
}

static void
worker_pin(struct worker *w)
{
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	cpu_set_t set;

	if (cpus <= 0)
		return;
	CPU_ZERO(&set);
	CPU_SET(w->index % (unsigned)cpus, &set);
	pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

/* What the journal brought back goes out again (finished messages leave the queue). */
static void
worker_schedule_replayed(struct worker *w)
{
	struct queue_message *m = queue_next(w->queue, NULL);

	while (m != NULL) {
		struct queue_message *next = queue_next(w->queue, m);
		out_schedule(w, m);
		m = next;
	}
}

static void *
worker_main(void *arg)
{
	struct worker *w = arg;
	int r;

	log_thread(w->name, true);
	worker_pin(w);
	r = transport_ring_setup(&w->io, WORKER_RING_ENTRIES, w->start_err, sizeof(w->start_err));
	if (r == 0)
		r = out_dns_setup(w, w->start_err, sizeof(w->start_err));
	pthread_mutex_lock(&w->start_lock);
	w->start_done = true;
	w->start_error = r;
	pthread_cond_signal(&w->start_cond);
	pthread_mutex_unlock(&w->start_lock);
	if (r < 0)
		return NULL;

	w->now_ms = clock_ms(CLOCK_MONOTONIC_COARSE);
	w->wall_ms = clock_ms(CLOCK_REALTIME);
	worker_schedule_replayed(w);
	for (unsigned i = 0; i < w->cfg->listen_count; i++)
		in_arm_accept(w, i);
	worker_arm_tick(w);
	worker_arm_mailbox(w);
	worker_loop(w);
	log_flush();
	tls_thread_free();
	return NULL;
}

int
worker_start(struct worker *w, char *err, size_t err_len)
{
	int r = pthread_create(&w->thread, NULL, worker_main, w);
	if (r != 0) {
		snprintf(err, err_len, "worker %u: pthread_create: %s", w->index, strerror(r));
		return -r;
	}
	pthread_mutex_lock(&w->start_lock);
	while (!w->start_done)
		pthread_cond_wait(&w->start_cond, &w->start_lock);
	pthread_mutex_unlock(&w->start_lock);
	if (w->start_error < 0) {
		snprintf(err, err_len, "worker %u: %s", w->index, w->start_err);
		pthread_join(w->thread, NULL);
		w->thread = 0;
		return w->start_error;
	}
	return 0;
}

/* ---- set-up and tear-down ---------------------------------------------------------- */

static void
worker_free(struct worker *w)
{
	if (w == NULL)
		return;
	in_free(w);
	for (unsigned i = 0; i < w->cfg->listen_count; i++)
		if (w->listen_fds[i] >= 0)
			close(w->listen_fds[i]);
	transport_ring_free(&w->io);
	if (w->mailbox_fd >= 0)
		close(w->mailbox_fd);
	out_free(w);
	tls_server_free(w->tls_server);
	tls_client_free(w->tls_client);
	store_close(w->store);
	pthread_mutex_destroy(&w->mailbox_lock);
	pthread_mutex_destroy(&w->start_lock);
	pthread_cond_destroy(&w->start_cond);
	free(w);
}

/*
 * The worker's own TLS contexts. Without a certificate no listener offers TLS
 * (`ringmx -t` says so); a client context that can't be made leaves outbound
 * mail in plaintext, logged.
 */
static int
worker_tls_setup(struct worker *w, const struct tls_tickets *tickets, char *err, size_t err_len)
{
	const struct config *cfg = w->cfg;
	char why[256];

	w->tickets = tickets;
	if (cfg->tls_certificate[0] != '\0') {
		w->tls_server = worker_tls_server(cfg, tickets, why, sizeof(why));
		if (w->tls_server == NULL) {
			snprintf(err, err_len, "worker %u: %s", w->index, why);
			return -EINVAL;
		}
	}
	/* routes may ask for TLS even when outbound.tls is none */
	w->tls_client =
	    tls_client_new(cfg->outbound_tls_ca_file, OUT_TLS_SESSIONS_MAX, why, sizeof(why));
	if (w->tls_client == NULL && w->index == 0)
		log_msg(CONFIG_LOG_WARNING, "outbound TLS unavailable: %s", why);
	return 0;
}

struct worker *
worker_new(unsigned index, const struct config *cfg, const struct policy *policy,
           const struct worker_shared *shared, const int *listen_fds, char *err, size_t err_len)
{
	struct worker *w = calloc(1, sizeof(*w));

	if (w == NULL) {
		snprintf(err, err_len, "worker %u: out of memory", index);
		return NULL;
	}
	w->index = index;
	w->cfg = cfg;
	w->policy = policy;
	w->limits = shared->inbound;
	w->dest_limits = shared->outbound;
	w->mailbox_fd = -1;
	w->io.ring.ring_fd = -1;
	snprintf(w->name, sizeof(w->name), "w%u", index);
	pthread_mutex_init(&w->mailbox_lock, NULL);
	pthread_mutex_init(&w->start_lock, NULL);
	pthread_cond_init(&w->start_cond, NULL);
	memcpy(w->listen_fds, listen_fds, cfg->listen_count * sizeof(int));

	if (in_init(w) != 0 || out_init(w) != 0) {
		snprintf(err, err_len, "worker %u: out of memory", index);
		goto fail;
	}
	w->mailbox_fd = eventfd(0, EFD_CLOEXEC);
	if (w->mailbox_fd < 0) {
		snprintf(err, err_len, "worker %u: eventfd: %s", index, strerror(errno));
		goto fail;
	}
	w->store = store_open(index, cfg, err, err_len);
	if (w->store == NULL || worker_tls_setup(w, shared->tickets, err, err_len) != 0)
		goto fail;
	w->queue = store_queue(w->store);
	return w;
fail:
	for (unsigned i = 0; i < cfg->listen_count; i++)
		w->listen_fds[i] = -1; /* still the caller's */
	worker_free(w);
	return NULL;
}

void
worker_join(struct worker *w)
{
	if (w->thread)
		pthread_join(w->thread, NULL);
	worker_free(w);
}

int
worker_probe_uring(char *why, size_t why_len)
{
	static const struct {
		int op;
		const char *name;
	} needed[] = {
	    {IORING_OP_ACCEPT, "accept"}, {IORING_OP_RECV, "recv"},
	    {IORING_OP_SEND, "send"},     {IORING_OP_WRITE, "write"},
	    {IORING_OP_FSYNC, "fsync"},   {IORING_OP_TIMEOUT, "timeout"},
	    {IORING_OP_READ, "read"},     {IORING_OP_ASYNC_CANCEL, "cancel"},
	    {IORING_OP_CLOSE, "close"},
	};
	struct io_uring ring;
	int r = io_uring_queue_init(8, &ring, 0);

	if (r < 0) {
		snprintf(
		    why, why_len,
		    "io_uring is not available here (io_uring_setup: %s): ringmx needs Linux >= "
		    "6.1 with io_uring allowed (check sysctl kernel.io_uring_disabled and the "
		    "container's seccomp profile)",
		    strerror(-r));
		return r;
	}
	struct io_uring_probe *p = io_uring_get_probe_ring(&ring);
	r = 0;
	for (size_t i = 0; p != NULL && i < sizeof(needed) / sizeof(needed[0]); i++) {
		if (!io_uring_opcode_supported(p, needed[i].op)) {
			snprintf(why, why_len,
			         "io_uring lacks the %s operation: ringmx needs Linux >= 6.1",
			         needed[i].name);
			r = -ENOTSUP;
			break;
		}
	}
	if (p == NULL) {
		snprintf(why, why_len, "io_uring cannot be probed: ringmx needs Linux >= 6.1");
		r = -ENOTSUP;
	}
	io_uring_free_probe(p);
	io_uring_queue_exit(&ring);
	return r;
}
