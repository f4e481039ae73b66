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

struct io_uring_sqe *
worker_sqe(struct worker *w)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&w->ring);

	if (sqe == NULL) {
		/* The ring is full: push what is queued to the kernel to make room. */
		io_uring_submit(&w->ring);
		sqe = io_uring_get_sqe(&w->ring);
	}
	assert(sqe != NULL);
	return sqe;
}

/* ---- connections ------------------------------------------------------------------ */

static uint32_t
conn_slot(const struct worker *w, const struct conn *c)
{
	return (uint32_t)(c - w->conns);
}

static void
conn_mark_dirty(struct worker *w, struct conn *c)
{
	if (c->dirty)
		return;
	c->dirty = true;
	w->dirty[w->dirty_count++] = conn_slot(w, c);
}

static void
conn_arm_recv(struct worker *w, struct conn *c)
{
	if (c->recv_armed || c->recv_paused || c->fd < 0 || c->closing)
		return;
	struct io_uring_sqe *sqe = worker_sqe(w);
	io_uring_prep_recv_multishot(sqe, c->fd, NULL, 0, 0);
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = WORKER_BUF_GROUP;
	io_uring_sqe_set_data64(sqe, ud_pack(OP_RECV, c->gen, conn_slot(w, c)));
	c->recv_armed = true;
	c->inflight++;
}

static void
conn_pause_recv(struct worker *w, struct conn *c)
{
	if (c->recv_paused)
		return;
	c->recv_paused = true;
	if (!c->recv_armed)
		return;
	struct io_uring_sqe *sqe = worker_sqe(w);
	io_uring_prep_cancel64(sqe, ud_pack(OP_RECV, c->gen, conn_slot(w, c)), 0);
	io_uring_sqe_set_data64(sqe, ud_pack(OP_CANCEL, 0, 0));
}

static void
conn_touch(struct worker *w, struct conn *c)
{
	uint64_t t = smtp_server_in_data(c->smtp) ? w->cfg->limits_data_timeout_ms
	                                          : w->cfg->limits_command_timeout_ms;
	c->deadline_ms = w->now_ms + t;
}

static void
conn_release_slot(struct worker *w, struct conn *c)
{
	assert(c->inflight == 0);
	assert(!c->waiting);
	smtp_server_free(c->smtp);
	free(c->stash);
	free(c->out);
	uint32_t gen = c->gen + 1;
	*c = (struct conn){.fd = -1, .gen = gen};
	w->free_slots[w->free_count++] = conn_slot(w, c);
}

static void
conn_log_disconnect(struct worker *w, struct conn *c)
{
	struct smtp_server_counts n;

	smtp_server_counts(c->smtp, &n);
	struct log_line *l = log_begin(CONFIG_LOG_INFO, NULL, "disconnect");
	log_str(l, "client", c->peer_text);
	log_uint(l, "commands", n.commands);
	log_uint(l, "errors", n.errors);
	log_uint(l, "messages", n.messages);
	log_uint(l, "rcpts", n.rcpts_accepted);
	log_uint(l, "rcpts_refused", n.rcpts_refused);
	log_uint(l, "duration_ms", w->now_ms - c->connected_ms);
	log_end(l);
}

/* Closes the socket now; the slot is reused once no operation names it any more. */
static void
conn_close(struct worker *w, struct conn *c)
{
	if (c->fd < 0)
		return;
	conn_log_disconnect(w, c);
	/* shutdown ends the pending multishot receive, so its last completion comes back */
	shutdown(c->fd, SHUT_RDWR);
	close(c->fd);
	c->fd = -1;
	c->closing = true;
	if (c->counted)
		connlimit_release(w->limits, (const struct sockaddr *)&c->peer);
	c->counted = false;
	w->active--;
	w->stats.connections_active--;
	if (c->inflight == 0 && !c->waiting)
		conn_release_slot(w, c);
}

static void
conn_op_done(struct worker *w, struct conn *c)
{
	assert(c->inflight > 0);
	c->inflight--;
	if (c->fd < 0 && c->inflight == 0 && !c->waiting)
		conn_release_slot(w, c);
}

/* Moves reply bytes from the engine into the connection's send buffer and sends them. */
static void
conn_flush(struct worker *w, struct conn *c)
{
	if (c->fd < 0 || c->send_busy)
		return;
	if (c->out_sent == c->out_len)
		c->out_len = c->out_sent = 0;
	size_t n;
	const uint8_t *p = smtp_server_output(c->smtp, &n);
	if (n > 0) {
		if (c->out == NULL && (c->out = malloc(CONN_OUT_CAP)) == NULL) {
			conn_close(w, c);
			return;
		}
		if (n > CONN_OUT_CAP - c->out_len)
			n = CONN_OUT_CAP - c->out_len;
		memcpy(c->out + c->out_len, p, n);
		c->out_len += n;
		smtp_server_output_consume(c->smtp, n);
	}
	if (c->out_sent < c->out_len) {
		struct io_uring_sqe *sqe = worker_sqe(w);
		io_uring_prep_send(sqe, c->fd, c->out + c->out_sent, c->out_len - c->out_sent,
		                   MSG_NOSIGNAL);
		io_uring_sqe_set_data64(sqe, ud_pack(OP_SEND, c->gen, conn_slot(w, c)));
		c->send_busy = true;
		c->inflight++;
	} else if (smtp_server_state(c->smtp) == SMTP_SERVER_CLOSING) {
		conn_close(w, c);
	}
}

static void
conn_stash(struct worker *w, struct conn *c, const uint8_t *in, size_t len)
{
	if (c->stash_len + len > CONN_STASH_MAX) {
		/* A peer pipelining this far ahead waits in its socket buffer instead. */
		conn_pause_recv(w, c);
	}
	uint8_t *p = realloc(c->stash, c->stash_len + len);
	if (p == NULL) {
		conn_close(w, c);
		return;
	}
	memcpy(p + c->stash_len, in, len);
	c->stash = p;
	c->stash_len += len;
}

static bool
conn_blocked(const struct conn *c)
{
	return c->waiting || c->fd < 0 || smtp_server_output_full(c->smtp) ||
	       smtp_server_state(c->smtp) == SMTP_SERVER_CLOSING;
}

static void conn_event(struct worker *w, struct conn *c, const struct smtp_event *ev);

/* Feeds input to the engine until it is used up or the engine waits on us. */
static size_t
conn_feed(struct worker *w, struct conn *c, const uint8_t *in, size_t len)
{
	size_t used = 0;

	while (used < len && !conn_blocked(c)) {
		struct smtp_event ev;
		used += smtp_server_feed(c->smtp, in + used, len - used, &ev);
		if (ev.type == SMTP_EV_NONE)
			continue;
		conn_event(w, c, &ev);
		if (ev.type == SMTP_EV_STARTTLS || ev.type == SMTP_EV_CLOSE)
			return len; /* the rest is never executed (STARTTLS injection) */
	}
	return used;
}

static void
conn_input(struct worker *w, struct conn *c, const uint8_t *in, size_t len)
{
	conn_touch(w, c);
	conn_mark_dirty(w, c);
	if (c->stash_len > 0 || conn_blocked(c)) {
		conn_stash(w, c, in, len);
		return;
	}
	size_t used = conn_feed(w, c, in, len);
	if (used < len && c->fd >= 0 && smtp_server_state(c->smtp) != SMTP_SERVER_CLOSING)
		conn_stash(w, c, in + used, len - used);
	conn_touch(w, c);
}

/* Runs input that arrived while the engine waited; called when the wait ends. */
static void
conn_resume(struct worker *w, struct conn *c)
{
	conn_mark_dirty(w, c);
	if (c->stash_len > 0 && !conn_blocked(c)) {
		size_t used = conn_feed(w, c, c->stash, c->stash_len);
		memmove(c->stash, c->stash + used, c->stash_len - used);
		c->stash_len -= used;
		if (smtp_server_state(c->smtp) == SMTP_SERVER_CLOSING)
			c->stash_len = 0;
	}
	if (c->stash_len == 0 && c->recv_paused && !smtp_server_output_full(c->smtp)) {
		c->recv_paused = false;
		conn_arm_recv(w, c);
	}
	if (c->fd >= 0)
		conn_touch(w, c);
}

/* ---- relay policy and message storage ---------------------------------------------- */

static void
conn_rcpt(struct worker *w, struct conn *c, const struct smtp_rcpt *rcpt)
{
	enum policy_verdict v = policy_check_rcpt(w->policy, &c->client, &rcpt->addr);

	if (v == POLICY_ACCEPT) {
		w->stats.rcpts_accepted++;
		smtp_server_rcpt_done(c->smtp, NULL);
		return;
	}
	char addr[ADDRESS_PATH_MAX + 1];
	if (address_format(&rcpt->addr, addr, sizeof(addr)) < 0)
		snprintf(addr, sizeof(addr), "(unprintable)");
	const char *reply = policy_verdict_reply(v);
	struct log_line *l = log_begin(CONFIG_LOG_INFO, NULL, "reject");
	log_str(l, "client", c->peer_text);
	log_str(l, "rcpt", addr);
	log_str(l, "reply", reply);
	log_end(l);
	w->stats.rcpts_refused++;
	smtp_server_rcpt_done(c->smtp, reply);
}

static const char *
conn_protocol(const struct conn *c)
{
	if (!smtp_server_esmtp(c->smtp))
		return "SMTP";
	if (c->client.authenticated)
		return c->client.role == CONFIG_ROLE_SUBMISSION ? "ESMTPSA" : "ESMTPA";
	return "ESMTP";
}

/* RFC 5321 §4.4 trace header; "for" names the recipient only when there is one. */
static size_t
conn_received(struct worker *w, struct conn *c, const struct smtp_envelope *env,
              const char *id_text, char *buf, size_t cap)
{
	char date[64];
	struct tm tm;
	time_t t = time(NULL);

	gmtime_r(&t, &tm);
	strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S +0000", &tm);
	int n = snprintf(
	    buf, cap, "Received: from %s (unknown [%s])\r\n\tby %s (ringmx) with %s id %s",
	    smtp_server_helo(c->smtp), c->peer_text, w->cfg->hostname, conn_protocol(c), id_text);
	if (n > 0 && env->rcpt_count == 1 && (size_t)n < cap)
		n += snprintf(buf + n, cap - (size_t)n, "\r\n\tfor <%s>", w->rcpt_text[0]);
	if (n > 0 && (size_t)n < cap)
		n += snprintf(buf + n, cap - (size_t)n, "; %s\r\n", date);
	assert(n > 0 && (size_t)n < cap);
	return (size_t)n;
}

static void
conn_store_refuse(struct worker *w, struct conn *c, enum smtp_store_result r, const char *why)
{
	struct log_line *l = log_begin(CONFIG_LOG_WARNING, NULL, "refused");
	log_str(l, "client", c->peer_text);
	log_str(l, "reason", why);
	log_end(l);
	w->stats.messages_refused++;
	smtp_server_message_done(c->smtp, r, NULL);
}

static bool
conn_envelope_text(struct worker *w, const struct smtp_envelope *env, char *sender,
                   size_t sender_cap)
{
	sender[0] = '\0';
	if (!env->sender.null && address_format(&env->sender, sender, sender_cap) < 0)
		return false;
	for (unsigned i = 0; i < env->rcpt_count; i++) {
		if (address_format(&env->rcpts[i].addr, w->rcpt_text[i], sizeof(w->rcpt_text[i])) <
		    0)
			return false;
		w->rcpt_ptrs[i] = w->rcpt_text[i];
		w->rcpt_params[i] = env->rcpts[i].params;
	}
	return true;
}

/* ---- journal segments -------------------------------------------------------------- */

/* Counts a message in the segment that holds its record; false without memory. */
static bool
worker_seg_add(struct worker *w, uint64_t seg)
{
	/* seg_base is the oldest segment at start; nothing is ever written below it */
	assert(seg >= w->seg_base);
	size_t i = seg - w->seg_base;
	if (i >= w->seg_cap) {
		size_t cap = w->seg_cap ? w->seg_cap : 64;
		while (cap <= i)
			cap *= 2;
		unsigned *p = realloc(w->seg_live, cap * sizeof(*p));
		if (p == NULL)
			return false;
		memset(p + w->seg_cap, 0, (cap - w->seg_cap) * sizeof(*p));
		w->seg_live = p;
		w->seg_cap = cap;
	}
	w->seg_live[i]++;
	return true;
}

static unsigned
worker_seg_live(const struct worker *w, uint64_t seg)
{
	if (w->seg_live == NULL || seg < w->seg_base || seg - w->seg_base >= w->seg_cap)
		return 0;
	return w->seg_live[seg - w->seg_base];
}

void
worker_queue_remove(struct worker *w, struct queue_message *m)
{
	uint64_t seg = m->loc.segment;

	if (worker_seg_live(w, seg) > 0)
		w->seg_live[seg - w->seg_base]--;
	queue_remove(w->queue, m);
}

void
worker_queue_moved(struct worker *w, struct queue_message *m, const struct journal_loc *loc)
{
	uint64_t seg = m->loc.segment;

	if (worker_seg_add(w, loc->segment)) {
		if (worker_seg_live(w, seg) > 0)
			w->seg_live[seg - w->seg_base]--;
		m->loc = *loc;
	}
}

static bool
worker_moving(const struct worker *w, uint64_t id)
{
	for (unsigned i = 0; i < w->move_count; i++) {
		if (w->moves[i].id == id)
			return true;
	}
	return false;
}

/*
 * Long-lived messages (deferred for hours) would pin every later segment: those
 * left in the oldest segment, once it lags COMPACT_LAG_SEGMENTS behind, are
 * written again at the head, a few per tick. They move there when that batch is
 * durable (worker_moves_settle): the old segment must not go before.
 */
static void
worker_compact(struct worker *w)
{
	uint64_t oldest = journal_oldest_segment(w->journal);
	unsigned done = 0;

	if (journal_current_segment(w->journal) - oldest < COMPACT_LAG_SEGMENTS ||
	    worker_seg_live(w, oldest) == 0)
		return;
	for (struct queue_message *m = queue_next(w->queue, NULL);
	     m != NULL && done < COMPACT_BATCH && w->move_count < COMPACT_MOVES_MAX;
	     m = queue_next(w->queue, m)) {
		if (m->loc.segment != oldest || worker_moving(w, m->id))
			continue;
		if (out_rewrite(w, m, &w->moves[w->move_count]) != 0)
			return; /* the batch is full: next tick */
		w->move_count++;
		done++;
	}
}

/*
 * The journal made batches up to durable safe (ok), or lost the batch in flight and
 * every record after it (!ok): rewritten messages move to their new copies, or stay
 * where they were, to be rewritten again later.
 */
static void
worker_moves_settle(struct worker *w, uint64_t durable, bool ok)
{
	unsigned keep = 0;

	for (unsigned i = 0; i < w->move_count; i++) {
		struct compact_move *mv = &w->moves[i];
		if (ok && mv->batch > durable) {
			w->moves[keep++] = *mv;
			continue;
		}
		struct queue_message *m = ok ? queue_find(w->queue, mv->id) : NULL;
		if (m != NULL && m->loc.segment < mv->loc.segment)
			worker_queue_moved(w, m, &mv->loc);
	}
	w->move_count = keep;
}

/*
 * Deletes the oldest segments once no queued message lives in them. Only in order:
 * a segment's DELETED and outcome records must outlive the older segments holding
 * the messages they finish, or a restart would bring those messages back.
 */
static void
worker_segments_collect(struct worker *w)
{
	uint64_t current = journal_current_segment(w->journal);

	for (uint64_t seg = journal_oldest_segment(w->journal); seg < current;
	     seg = journal_oldest_segment(w->journal)) {
		if (worker_seg_live(w, seg) > 0)
			return;
		int r = journal_segment_delete(w->journal, seg);
		if (r == -ENOENT)
			continue;
		if (r != 0) {
			if (r != -EBUSY)
				log_msg(CONFIG_LOG_WARNING,
				        "journal: cannot delete segment %llu: %s",
				        (unsigned long long)seg, strerror(-r));
			return;
		}
		struct log_line *l = log_begin(CONFIG_LOG_DEBUG, NULL, "segment-deleted");
		log_uint(l, "segment", seg);
		log_end(l);
	}
}

/* Counts what the journal brought back, per segment. */
static void
worker_segments_count(struct worker *w)
{
	w->seg_base = journal_oldest_segment(w->journal);
	for (struct queue_message *m = queue_next(w->queue, NULL); m != NULL;
	     m = queue_next(w->queue, m))
		worker_seg_add(w, m->loc.segment);
}

/*
 * Queues a message and appends its journal record; *batch is the journal batch
 * that makes it durable. NULL when it can't be taken: *batch is then -E2BIG (the
 * envelope does not encode) or -ENOSPC (queue memory, or the journal, is full).
 */
struct queue_message *
worker_store_message(struct worker *w, uint64_t id, const struct queue_envelope *qe,
                     const uint8_t *body, size_t body_len, int64_t *batch)
{
	struct iovec iov[2];
	int n = queue_record_encode(id, qe, body, body_len, w->record_scratch, RECORD_SCRATCH, iov);

	if (n < 0) {
		*batch = -E2BIG;
		return NULL;
	}
	/* In the queue first (it checks the memory limit), then journaled. */
	struct queue_message *m =
	    queue_add(w->queue, id, qe, body, body_len, &(struct journal_loc){0});
	if (m == NULL) {
		*batch = -ENOSPC;
		return NULL;
	}
	*batch = journal_append(w->journal, JOURNAL_REC_MESSAGE, iov, (unsigned)n, &m->loc);
	if (*batch < 0 || !worker_seg_add(w, m->loc.segment)) {
		queue_remove(w->queue, m);
		*batch = -ENOSPC;
		return NULL;
	}
	return m;
}

/* A record that needs no reply of its own: it becomes durable with the next batch. */
void
worker_journal_record(struct worker *w, enum journal_rec_type type, const struct iovec *iov,
                      unsigned n)
{
	struct journal_loc loc;

	if (journal_append(w->journal, type, iov, n, &loc) < 0) {
		/* lost now means repeated after a crash (a duplicate delivery), never lost mail */
		w->stats.journal_errors++;
		log_msg(CONFIG_LOG_WARNING, "journal busy: an outcome record was dropped");
	}
}

/* Received: headers in the header section (RFC 5321 §6.3: counting them finds loops). */
static unsigned
conn_hops(const uint8_t *body, size_t len)
{
	unsigned hops = 0;

	for (size_t i = 0; i < len;) {
		const uint8_t *eol = memchr(body + i, '\n', len - i);
		size_t line = eol ? (size_t)(eol - (body + i)) + 1 : len - i;
		if (line <= 2 && (body[i] == '\r' || body[i] == '\n'))
			break; /* the empty line: end of the header section */
		if (line >= 9 && strncasecmp((const char *)body + i, "Received:", 9) == 0)
			hops++;
		i += line;
	}
	return hops;
}

static void
conn_store(struct worker *w, struct conn *c, const struct smtp_envelope *env)
{
	char sender[ADDRESS_PATH_MAX + 1], id_text[QUEUE_ID_LEN + 1];

	/* refused in the session, so the previous hop bounces it: no backscatter from us */
	if (conn_hops(env->body, env->body_len) >= w->cfg->limits_max_hops) {
		conn_store_refuse(w, c, SMTP_STORE_LOOP, "too many hops");
		return;
	}

	if (!queue_has_room(w->queue, env->body_len)) {
		conn_store_refuse(w, c, SMTP_STORE_NOSPACE, "queue memory limit");
		return;
	}
	if (env->rcpt_count > w->cfg->limits_max_recipients ||
	    !conn_envelope_text(w, env, sender, sizeof(sender))) {
		conn_store_refuse(w, c, SMTP_STORE_ERROR, "envelope does not format");
		return;
	}
	uint64_t id = queue_next_id(w->queue, clock_ms(CLOCK_REALTIME) * 1000, id_text);
	size_t hlen = conn_received(w, c, env, id_text, (char *)w->body_scratch, SMTP_RECEIVED_MAX);
	memcpy(w->body_scratch + hlen, env->body, env->body_len);
	size_t body_len = hlen + env->body_len;

	struct queue_envelope qe = {
	    .sender = sender,
	    .sender_params = env->sender_params,
	    .rcpt_addresses = w->rcpt_ptrs,
	    .rcpt_params = w->rcpt_params,
	    .rcpt_count = env->rcpt_count,
	    .origin = {.client_addr = c->peer_text,
	               .client_name = smtp_server_helo(c->smtp),
	               .protocol = conn_protocol(c),
	               .tls_version = "",
	               .auth_user = ""},
	    .arrival_ms = clock_ms(CLOCK_REALTIME),
	};
	int64_t batch;
	struct queue_message *m =
	    worker_store_message(w, id, &qe, w->body_scratch, body_len, &batch);
	if (m == NULL) {
		conn_store_refuse(w, c, batch == -E2BIG ? SMTP_STORE_ERROR : SMTP_STORE_NOSPACE,
		                  batch == -E2BIG ? "envelope too large" : "queue or journal full");
		return;
	}
	c->waiting = true;
	c->wait_batch = (uint64_t)batch;
	c->wait_msg = m;
	w->waiters[w->waiter_count++] = conn_slot(w, c);
}

static void
conn_event(struct worker *w, struct conn *c, const struct smtp_event *ev)
{
	switch (ev->type) {
	case SMTP_EV_RCPT:
		conn_rcpt(w, c, ev->rcpt);
		break;
	case SMTP_EV_MESSAGE:
		conn_store(w, c, ev->envelope);
		break;
	case SMTP_EV_STARTTLS:
		/* Never offered until TLS lands: the engine asked anyway, so end the session. */
		smtp_server_shutdown(c->smtp);
		break;
	case SMTP_EV_CLOSE:
	case SMTP_EV_NONE:
		break;
	}
}

/* ---- journal group commit ---------------------------------------------------------- */

static void
worker_message_acked(struct worker *w, struct conn *c)
{
	struct queue_message *m = c->wait_msg;
	struct log_line *l = log_begin(CONFIG_LOG_INFO, m->id_text, "accepted");

	log_str(l, "from", m->sender);
	log_uint(l, "size", m->body_len);
	log_uint(l, "rcpts", m->rcpt_count);
	log_str(l, "client", c->peer_text);
	log_str(l, "helo", m->client_name);
	log_str(l, "proto", m->protocol);
	log_str(l, "tls", m->tls_version[0] ? m->tls_version : "none");
	log_end(l);
	w->stats.messages_accepted++;
	w->stats.bytes_accepted += m->body_len;
	out_schedule(w, m);
	smtp_server_message_done(c->smtp, SMTP_STORE_OK, m->id_text);
}

/*
 * Answers the sessions waiting on the journal: those whose batch is durable get
 * their 250. After a failure (r != 0) every waiter is refused, also those queued
 * behind the failed batch: the journal dropped their records with it.
 */
static void
worker_answer_waiters(struct worker *w, uint64_t durable, int r)
{
	unsigned keep = 0;

	for (unsigned i = 0; i < w->waiter_count; i++) {
		struct conn *c = &w->conns[w->waiters[i]];
		if (r == 0 && c->wait_batch > durable) {
			w->waiters[keep++] = w->waiters[i];
			continue;
		}
		c->waiting = false;
		if (r == 0) {
			worker_message_acked(w, c);
		} else {
			worker_queue_remove(w, c->wait_msg);
			w->stats.messages_refused++;
			/* full or failing, the storage could not keep it: 452 4.3.1 either way */
			smtp_server_message_done(c->smtp, SMTP_STORE_NOSPACE, NULL);
		}
		c->wait_msg = NULL;
		if (c->fd < 0) {
			if (c->inflight == 0)
				conn_release_slot(w, c);
			continue;
		}
		conn_resume(w, c);
	}
	w->waiter_count = keep;
}

static void
worker_journal_failed(struct worker *w, int r, int res)
{
	w->stats.journal_errors++;
	log_msg(CONFIG_LOG_ERROR, "journal: %s; refusing the messages waiting for it",
	        strerror(res < 0 ? -res : EIO));
	worker_answer_waiters(w, 0, r);
	worker_moves_settle(w, 0, false);
}

static void
worker_journal_done(struct worker *w, int res)
{
	int r = journal_batch_end(w->journal, res);

	w->jw_busy = false;
	if (w->jw.sync)
		w->stats.journal_syncs++;
	if (r != 0) {
		worker_journal_failed(w, r, res);
	} else {
		worker_answer_waiters(w, w->jw.batch, 0);
		worker_moves_settle(w, w->jw.batch, true);
	}
}

/* Writes what is left of the batch, then (linked) syncs it. */
static void
worker_journal_write(struct worker *w)
{
	struct io_uring_sqe *sqe = worker_sqe(w);

	io_uring_prep_write(sqe, w->jw.fd, (const uint8_t *)w->jw.buf + w->jw_written,
	                    (unsigned)(w->jw.len - w->jw_written), w->jw.offset + w->jw_written);
	io_uring_sqe_set_data64(sqe, ud_pack(OP_JOURNAL_WRITE, 0, 0));
	if (w->jw.sync) {
		sqe->flags |= IOSQE_IO_LINK;
		sqe = worker_sqe(w);
		io_uring_prep_fsync(sqe, w->jw.fd, IORING_FSYNC_DATASYNC);
		io_uring_sqe_set_data64(sqe, ud_pack(OP_JOURNAL_SYNC, 0, 0));
	}
}

static void
worker_journal_submit(struct worker *w)
{
	if (w->jw_busy || !journal_batch_ready(w->journal))
		return;
	int r = journal_batch_begin(w->journal, &w->jw);
	if (r != 0) {
		/* no segment to write to: the pending records are gone, so are their 250s */
		bool full = r == -JOURNAL_ENOSPC;
		worker_journal_failed(w, full ? r : -JOURNAL_EIO, full ? -ENOSPC : -EIO);
		return;
	}
	w->jw_busy = true;
	w->jw_error = 0;
	w->jw_written = 0;
	w->stats.journal_batches++;
	worker_journal_write(w);
}

static void
worker_on_journal(struct worker *w, enum worker_op op, int res)
{
	if (op == OP_JOURNAL_WRITE) {
		if (res == 0)
			res = -EIO; /* no progress on a regular file: never loop on it */
		if (res < 0)
			w->jw_error = res;
		else
			w->jw_written += (size_t)res;
		/* with sync, the linked fsync completes next (cancelled if the write was short) */
		if (w->jw.sync)
			return;
		res = 0;
	}
	if (w->jw_error == 0 && w->jw_written < w->jw.len) {
		/* a short write (a disk filling up does that): the rest tells us why */
		worker_journal_write(w);
		return;
	}
	worker_journal_done(w, w->jw_error ? w->jw_error : (res < 0 ? res : 0));
}

/* ---- accepting -------------------------------------------------------------------- */

static void
worker_arm_accept(struct worker *w, unsigned listener)
{
	struct io_uring_sqe *sqe = worker_sqe(w);

	io_uring_prep_multishot_accept(sqe, w->listen_fds[listener], NULL, NULL, SOCK_CLOEXEC);
	io_uring_sqe_set_data64(sqe, ud_pack(OP_ACCEPT, 0, listener));
}

/* Answers a connection we can't take, then closes it; both run whatever the send does. */
static void
worker_refuse(struct worker *w, int fd, const char *reply)
{
	struct io_uring_sqe *sqe = worker_sqe(w);

	io_uring_prep_send(sqe, fd, reply, strlen(reply), MSG_NOSIGNAL);
	sqe->flags |= IOSQE_IO_HARDLINK;
	io_uring_sqe_set_data64(sqe, ud_pack(OP_REFUSE_SEND, 0, (uint32_t)fd));
	sqe = worker_sqe(w);
	io_uring_prep_close(sqe, fd);
	io_uring_sqe_set_data64(sqe, ud_pack(OP_REFUSE_CLOSE, 0, (uint32_t)fd));
	w->stats.connections_refused++;
}

static void
worker_log_refused(const char *peer, const char *why)
{
	struct log_line *l = log_begin(CONFIG_LOG_WARNING, NULL, "connect-refused");
	log_str(l, "client", peer);
	log_str(l, "reason", why);
	log_end(l);
}

static void
conn_open(struct worker *w, struct conn *c, int fd, unsigned listener)
{
	const struct config_listen *ls = &w->cfg->listen[listener];
	struct smtp_server_params sp = {
	    .hostname = w->cfg->hostname,
	    .bare_newline = w->cfg->limits_bare_newline == CONFIG_BARE_NEWLINE_REJECT
	                        ? SMTP_BARE_NEWLINE_REJECT
	                        : SMTP_BARE_NEWLINE_NORMALIZE,
	    .tls_required = ls->tls == CONFIG_TLS_REQUIRED,
	    .auth_required = ls->auth == CONFIG_AUTH_REQUIRED,
	};
	struct smtp_server_limits lim = {
	    .message_size_max = w->cfg->limits_max_message_size,
	    .rcpt_count_max = w->cfg->limits_max_recipients,
	    .error_count_max = w->cfg->limits_max_errors,
	};

	c->used = true;
	c->fd = fd;
	c->listener = listener;
	c->connected_ms = w->now_ms;
	c->client = (struct policy_client){
	    .addr = (const struct sockaddr *)&c->peer,
	    .role = ls->role,
	    .trusted_network = policy_client_trusted(w->policy, (const struct sockaddr *)&c->peer),
	};
	c->smtp = smtp_server_new(&sp, &lim);
	w->active++;
	w->stats.connections_total++;
	w->stats.connections_active++;
	if (c->smtp == NULL) {
		conn_close(w, c);
		return;
	}
	struct log_line *l = log_begin(CONFIG_LOG_INFO, NULL, "connect");
	log_str(l, "client", c->peer_text);
	log_str(l, "listener", ls->address.text);
	log_str(l, "trusted", c->client.trusted_network ? "yes" : "no");
	log_end(l);
	conn_touch(w, c);
	conn_arm_recv(w, c);
	conn_mark_dirty(w, c);
}

void
worker_addr_text(const struct sockaddr_storage *ss, bool with_port, char *buf, size_t cap)
{
	char a[INET6_ADDRSTRLEN];
	bool v6 = ss->ss_family == AF_INET6;
	const void *p = v6 ? (const void *)&((const struct sockaddr_in6 *)ss)->sin6_addr
	                   : (const void *)&((const struct sockaddr_in *)ss)->sin_addr;
	uint16_t port = ntohs(v6 ? ((const struct sockaddr_in6 *)ss)->sin6_port
	                         : ((const struct sockaddr_in *)ss)->sin_port);

	if (inet_ntop(ss->ss_family, p, a, sizeof(a)) == NULL)
		snprintf(a, sizeof(a), "unknown");
	/* v4-mapped peers on a dual-stack socket are shown as plain IPv4 */
	if (strncmp(a, "::ffff:", 7) == 0 && strchr(a, '.') != NULL) {
		memmove(a, a + 7, strlen(a + 7) + 1);
		v6 = false;
	}
	if (!with_port)
		snprintf(buf, cap, "%s", a);
	else
		snprintf(buf, cap, v6 ? "[%s]:%u" : "%s:%u", a, port);
}

static void
worker_on_accept(struct worker *w, unsigned listener, int res, unsigned flags)
{
	if (!(flags & IORING_CQE_F_MORE) && !w->stopping)
		worker_arm_accept(w, listener);
	if (res < 0) {
		if (res != -ECANCELED)
			log_msg(CONFIG_LOG_WARNING, "accept: %s", strerror(-res));
		return;
	}
	if (w->stopping) {
		close(res);
		return;
	}
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	char text[INET6_ADDRSTRLEN];
	if (getpeername(res, (struct sockaddr *)&ss, &sl) != 0) {
		close(res);
		return;
	}
	worker_addr_text(&ss, false, text, sizeof(text));
	if (w->free_count == 0) {
		worker_log_refused(text, "max_connections");
		worker_refuse(w, res, "421 4.7.0 Too many connections, try again later\r\n");
		return;
	}
	switch (connlimit_acquire(w->limits, (struct sockaddr *)&ss)) {
	case CONNLIMIT_TOTAL:
		worker_log_refused(text, "max_connections");
		worker_refuse(w, res, "421 4.7.0 Too many connections, try again later\r\n");
		return;
	case CONNLIMIT_PER_IP:
		worker_log_refused(text, "max_connections_per_ip");
		worker_refuse(w, res, "421 4.7.0 Too many connections from your address\r\n");
		return;
	case CONNLIMIT_OK:
		break;
	}
	struct conn *c = &w->conns[w->free_slots[--w->free_count]];
	assert(!c->used);
	c->peer = ss;
	c->counted = true;
	snprintf(c->peer_text, sizeof(c->peer_text), "%s", text);
	conn_open(w, c, res, listener);
}

/* ---- receiving and sending --------------------------------------------------------- */

const uint8_t *
worker_buffer(const struct worker *w, unsigned bid)
{
	return w->bufs + (size_t)bid * WORKER_BUF_SIZE;
}

void
worker_return_buffer(struct worker *w, unsigned bid)
{
	io_uring_buf_ring_add(w->buf_ring, w->bufs + (size_t)bid * WORKER_BUF_SIZE, WORKER_BUF_SIZE,
	                      (unsigned short)bid, io_uring_buf_ring_mask(WORKER_BUF_COUNT), 0);
	io_uring_buf_ring_advance(w->buf_ring, 1);
}

static struct conn *
worker_conn(struct worker *w, uint64_t ud)
{
	uint32_t slot = ud_slot(ud);

	assert(slot < w->conn_max);
	struct conn *c = &w->conns[slot];
	assert((c->gen & 0xffffff) == ud_gen(ud));
	return c;
}

static void
worker_on_recv(struct worker *w, uint64_t ud, int res, unsigned flags)
{
	struct conn *c = worker_conn(w, ud);

	if (flags & IORING_CQE_F_BUFFER) {
		unsigned bid = flags >> IORING_CQE_BUFFER_SHIFT;
		if (res > 0 && c->fd >= 0)
			conn_input(w, c, w->bufs + (size_t)bid * WORKER_BUF_SIZE, (size_t)res);
		worker_return_buffer(w, bid);
	}
	if (flags & IORING_CQE_F_MORE)
		return;
	c->recv_armed = false;
	if (c->fd >= 0) {
		if (res == 0 || (res < 0 && res != -ENOBUFS && res != -ECANCELED))
			conn_close(w, c);
		else
			conn_arm_recv(w, c); /* out of buffers, or un-paused before the cancel */
	}
	conn_op_done(w, c);
}

static void
worker_on_send(struct worker *w, uint64_t ud, int res)
{
	struct conn *c = worker_conn(w, ud);

	c->send_busy = false;
	if (c->fd >= 0) {
		if (res < 0) {
			conn_close(w, c);
		} else {
			c->out_sent += (size_t)res;
			conn_flush(w, c);
			/* input held back while the output was full runs now */
			if ((c->recv_paused || c->stash_len > 0) && !c->waiting)
				conn_resume(w, c);
		}
	}
	conn_op_done(w, c);
}

/* ---- timers, stop ------------------------------------------------------------------ */

static void
worker_arm_tick(struct worker *w)
{
	struct io_uring_sqe *sqe = worker_sqe(w);

	w->tick.tv_sec = 0;
	w->tick.tv_nsec = WORKER_TICK_MS * 1000000L;
	io_uring_prep_timeout(sqe, &w->tick, 0, 0);
	io_uring_sqe_set_data64(sqe, ud_pack(OP_TICK, 0, 0));
}

/* Idle sessions get 421 at once on stop; those inside a transaction get a grace period. */
static bool
conn_idle(const struct conn *c)
{
	enum smtp_server_state st = smtp_server_state(c->smtp);

	return !c->waiting && (st == SMTP_SERVER_GREETING || st == SMTP_SERVER_READY);
}

static void
worker_on_tick(struct worker *w)
{
	bool grace_over = w->stopping && w->now_ms >= w->stop_deadline_ms;

	/* slots are taken lowest first, so the open ones sit at the front of the table */
	for (unsigned i = 0, seen = 0; i < w->conn_max && seen < w->active; i++) {
		struct conn *c = &w->conns[i];
		if (c->fd < 0)
			continue;
		seen++;
		if (smtp_server_state(c->smtp) == SMTP_SERVER_CLOSING || c->waiting)
			continue;
		if (w->now_ms >= c->deadline_ms) {
			struct log_line *l = log_begin(CONFIG_LOG_INFO, NULL, "timeout");
			log_str(l, "client", c->peer_text);
			log_str(l, "state", smtp_server_state_name(smtp_server_state(c->smtp)));
			log_end(l);
			smtp_server_timeout(c->smtp);
		} else if (w->stopping && (grace_over || conn_idle(c))) {
			smtp_server_shutdown(c->smtp);
		} else {
			continue;
		}
		c->stash_len = 0;
		conn_mark_dirty(w, c);
	}
	out_dns_pump(w); /* the resolver's timers are served at tick granularity */
	out_tick(w);
	worker_compact(w);
	worker_segments_collect(w);
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
		struct io_uring_sqe *sqe = worker_sqe(w);
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
	       !w->jw_busy && !journal_batch_ready(w->journal);
}

/* ---- control requests -------------------------------------------------------------- */

static void
worker_arm_mailbox(struct worker *w)
{
	struct io_uring_sqe *sqe = worker_sqe(w);

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
	w->stats.journal_disk_bytes = journal_disk_bytes(w->journal);

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
	if (m->body != NULL) {
		strbuf_append(&r->out, (const char *)m->body, m->body_len);
		return;
	}
	/* the record is the envelope encoding followed by the body */
	uint8_t *rec = malloc(m->loc.length);
	if (rec != NULL && m->loc.length >= m->body_len &&
	    journal_read(w->journal, &m->loc, rec, m->loc.length) == 0)
		strbuf_append(&r->out, (const char *)rec + m->loc.length - m->body_len,
		              m->body_len);
	free(rec);
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
		worker_on_accept(w, ud_slot(ud), cqe->res, cqe->flags);
		break;
	case OP_RECV:
		worker_on_recv(w, ud, cqe->res, cqe->flags);
		break;
	case OP_SEND:
		worker_on_send(w, ud, cqe->res);
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
	for (unsigned i = 0; i < w->dirty_count; i++) {
		struct conn *c = &w->conns[w->dirty[i]];
		c->dirty = false;
		if (c->used)
			conn_flush(w, c);
	}
	w->dirty_count = 0;
	log_flush();
}

static void
worker_loop(struct worker *w)
{
	while (!worker_finished(w)) {
		struct io_uring_cqe *cqe;
		unsigned head, seen = 0;

		worker_end_turn(w);
		int r = io_uring_submit_and_wait(&w->ring, 1);
		if (r < 0 && r != -EINTR && r != -EBUSY) {
			log_msg(CONFIG_LOG_ERROR, "io_uring_submit_and_wait: %s", strerror(-r));
			abort();
		}
		w->now_ms = clock_ms(CLOCK_MONOTONIC_COARSE);
		w->wall_ms = clock_ms(CLOCK_REALTIME);
		io_uring_for_each_cqe(&w->ring, head, cqe)
		{
			worker_dispatch(w, cqe);
			if (++seen == WORKER_CQE_BATCH)
				break;
		}
		io_uring_cq_advance(&w->ring, seen);
	}
	worker_end_turn(w);
}

static int
worker_setup_ring(struct worker *w)
{
	struct io_uring_params p = {.flags = IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN};
	int r = io_uring_queue_init_params(WORKER_RING_ENTRIES, &w->ring, &p);
	if (r < 0) {
		snprintf(w->start_err, sizeof(w->start_err), "io_uring_queue_init: %s",
		         strerror(-r));
		return r;
	}
	size_t ring_size = WORKER_BUF_COUNT * sizeof(struct io_uring_buf);
	w->buf_ring =
	    mmap(NULL, ring_size, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
	if (w->buf_ring == MAP_FAILED) {
		w->buf_ring = NULL;
		snprintf(w->start_err, sizeof(w->start_err), "buffer ring: out of memory");
		return -ENOMEM;
	}
	struct io_uring_buf_reg reg = {
	    .ring_addr = (uint64_t)(uintptr_t)w->buf_ring,
	    .ring_entries = WORKER_BUF_COUNT,
	    .bgid = WORKER_BUF_GROUP,
	};
	r = io_uring_register_buf_ring(&w->ring, &reg, 0);
	if (r < 0) {
		snprintf(w->start_err, sizeof(w->start_err),
		         "io_uring_register_buf_ring: %s (ringmx needs Linux >= 6.1)",
		         strerror(-r));
		return r;
	}
	io_uring_buf_ring_init(w->buf_ring);
	for (unsigned i = 0; i < WORKER_BUF_COUNT; i++)
		io_uring_buf_ring_add(w->buf_ring, w->bufs + (size_t)i * WORKER_BUF_SIZE,
		                      WORKER_BUF_SIZE, (unsigned short)i,
		                      io_uring_buf_ring_mask(WORKER_BUF_COUNT), (int)i);
	io_uring_buf_ring_advance(w->buf_ring, WORKER_BUF_COUNT);
	return 0;
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
	r = worker_setup_ring(w);
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
	worker_segments_count(w);
	worker_schedule_replayed(w);
	for (unsigned i = 0; i < w->cfg->listen_count; i++)
		worker_arm_accept(w, i);
	worker_arm_tick(w);
	worker_arm_mailbox(w);
	worker_loop(w);
	log_flush();
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

static int
worker_replay(void *arg, enum journal_rec_type type, const void *payload, size_t len,
              const struct journal_loc *loc)
{
	struct worker *w = arg;

	return queue_replay(w->queue, type, payload, len, loc);
}

static void
worker_report(void *arg, const char *line)
{
	(void)arg;
	log_msg(CONFIG_LOG_WARNING, "%s", line);
}

static void
worker_free(struct worker *w)
{
	if (w == NULL)
		return;
	for (unsigned i = 0; w->conns != NULL && i < w->conn_max; i++) {
		struct conn *c = &w->conns[i];
		if (c->fd >= 0)
			close(c->fd);
		smtp_server_free(c->smtp);
		free(c->stash);
		free(c->out);
	}
	for (unsigned i = 0; i < w->cfg->listen_count; i++)
		if (w->listen_fds[i] >= 0)
			close(w->listen_fds[i]);
	if (w->ring.ring_fd > 0)
		io_uring_queue_exit(&w->ring);
	if (w->buf_ring != NULL)
		munmap(w->buf_ring, WORKER_BUF_COUNT * sizeof(struct io_uring_buf));
	if (w->mailbox_fd >= 0)
		close(w->mailbox_fd);
	out_free(w);
	journal_close(w->journal);
	queue_free(w->queue);
	free(w->bufs);
	free(w->conns);
	free(w->free_slots);
	free(w->dirty);
	free(w->waiters);
	free(w->record_scratch);
	free(w->body_scratch);
	free(w->rcpt_text);
	free(w->rcpt_ptrs);
	free(w->rcpt_params);
	free(w->seg_live);
	pthread_mutex_destroy(&w->mailbox_lock);
	pthread_mutex_destroy(&w->start_lock);
	pthread_cond_destroy(&w->start_cond);
	free(w);
}

static bool
worker_alloc(struct worker *w)
{
	const struct config *cfg = w->cfg;
	unsigned rcpts = cfg->limits_max_recipients;

	/* the server-wide limit is connlimit's; SO_REUSEPORT may send any worker them all */
	w->conn_max = cfg->limits_max_connections;
	w->conns = calloc(w->conn_max, sizeof(*w->conns));
	w->free_slots = calloc(w->conn_max, sizeof(unsigned));
	w->dirty = calloc(w->conn_max, sizeof(unsigned));
	w->waiters = calloc(w->conn_max, sizeof(unsigned));
	w->bufs = aligned_alloc(4096, (size_t)WORKER_BUF_COUNT * WORKER_BUF_SIZE);
	w->record_scratch = malloc(RECORD_SCRATCH);
	w->body_scratch_cap = cfg->limits_max_message_size + SMTP_RECEIVED_MAX;
	w->body_scratch = malloc(w->body_scratch_cap);
	w->rcpt_text = calloc(rcpts, sizeof(*w->rcpt_text));
	w->rcpt_ptrs = calloc(rcpts, sizeof(char *));
	w->rcpt_params = calloc(rcpts, sizeof(char *));
	if (!w->conns || !w->free_slots || !w->dirty || !w->waiters || !w->bufs ||
	    !w->record_scratch || !w->body_scratch || !w->rcpt_text || !w->rcpt_ptrs ||
	    !w->rcpt_params)
		return false;
	for (unsigned i = 0; i < w->conn_max; i++) {
		w->conns[i].fd = -1;
		w->free_slots[i] = w->conn_max - 1 - i;
	}
	w->free_count = w->conn_max;
	return true;
}

struct worker *
worker_new(unsigned index, const struct config *cfg, const struct policy *policy,
           const struct worker_shared *shared, const int *listen_fds, char *err, size_t err_len)
{
	struct worker *w = calloc(1, sizeof(*w));
	char dir[CONFIG_PATH_LEN + 16];

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
	w->ring.ring_fd = -1;
	snprintf(w->name, sizeof(w->name), "w%u", index);
	pthread_mutex_init(&w->mailbox_lock, NULL);
	pthread_mutex_init(&w->start_lock, NULL);
	pthread_cond_init(&w->start_cond, NULL);
	memcpy(w->listen_fds, listen_fds, cfg->listen_count * sizeof(int));

	w->queue = queue_new(index, cfg->queue_memory_limit / cfg->workers);
	if (w->queue == NULL || !worker_alloc(w) || out_init(w) != 0) {
		snprintf(err, err_len, "worker %u: out of memory", index);
		goto fail;
	}
	w->mailbox_fd = eventfd(0, EFD_CLOEXEC);
	if (w->mailbox_fd < 0) {
		snprintf(err, err_len, "worker %u: eventfd: %s", index, strerror(errno));
		goto fail;
	}
	snprintf(dir, sizeof(dir), "%s/%u", cfg->spool_dir, index);
	struct journal_params jp = {
	    .dir = dir,
	    .segment_size = cfg->queue_segment_size,
	    .sync = cfg->queue_sync,
	    .replay = worker_replay,
	    .report = worker_report,
	    .arg = w,
	};
	if (journal_open(&jp, &w->journal, err, err_len) != 0)
		goto fail;
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
