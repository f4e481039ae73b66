/*
 * inbound.c -- a worker's inbound sessions: accepting, the pure smtp_server engine
 * fed through the transport, relay policy per recipient, storing each message and
 * answering its 250 once the journal batch holding it is durable.
 */
#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "core/log.h"
#include "core/worker_impl.h"

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
	if (!c->closing)
		transport_arm_recv(&w->io, &c->t);
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
	assert(c->t.inflight == 0);
	assert(!c->waiting);
	smtp_server_free(c->smtp);
	free(c->stash);
	transport_reset(&c->t);
	uint32_t gen = c->gen + 1;
	*c = (struct conn){.t.fd = -1, .gen = gen};
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
	if (c->t.fd < 0)
		return;
	conn_log_disconnect(w, c);
	/* shutdown ends the pending multishot receive, so its last completion comes back */
	shutdown(c->t.fd, SHUT_RDWR);
	close(c->t.fd);
	c->t.fd = -1;
	c->closing = true;
	if (c->counted)
		connlimit_release(w->limits, (const struct sockaddr *)&c->peer);
	c->counted = false;
	w->active--;
	w->stats.connections_active--;
	if (c->t.inflight == 0 && !c->waiting)
		conn_release_slot(w, c);
}

static void
conn_op_done(struct worker *w, struct conn *c)
{
	assert(c->t.inflight > 0);
	c->t.inflight--;
	if (c->t.fd < 0 && c->t.inflight == 0 && !c->waiting)
		conn_release_slot(w, c);
}

/* Moves reply bytes from the engine to the transport, and sends them. */
static void
conn_flush(struct worker *w, struct conn *c)
{
	size_t n;

	if (c->t.fd < 0 || transport_busy(&c->t))
		return;
	const uint8_t *p = smtp_server_output(c->smtp, &n);
	if (n > 0)
		smtp_server_output_consume(c->smtp, transport_write(&c->t, p, n));
	transport_flush(&w->io, &c->t);
	if (!transport_pending(&c->t) && smtp_server_state(c->smtp) == SMTP_SERVER_CLOSING)
		conn_close(w, c);
}

static void
conn_stash(struct worker *w, struct conn *c, const uint8_t *in, size_t len)
{
	if (c->stash_len + len > CONN_STASH_MAX) {
		/* A peer pipelining this far ahead waits in its socket buffer instead. */
		transport_pause_recv(&w->io, &c->t);
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
	return c->waiting || c->t.fd < 0 || smtp_server_output_full(c->smtp) ||
	       smtp_server_state(c->smtp) == SMTP_SERVER_CLOSING;
}

static void conn_event(struct worker *w, struct conn *c, const struct smtp_event *ev);

/* Commands pipelined behind STARTTLS (CVE-2011-0411): dropped, and said once. */
static void
conn_log_injection(const struct conn *c, size_t bytes)
{
	struct log_line *l = log_begin(CONFIG_LOG_WARNING, NULL, "starttls-injection");
	log_str(l, "client", c->peer_text);
	log_uint(l, "discarded", bytes);
	log_end(l);
}

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
		if (ev.type == SMTP_EV_STARTTLS && ev.discarded > 0)
			conn_log_injection(c, ev.discarded);
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
	if (used < len && c->t.fd >= 0 && smtp_server_state(c->smtp) != SMTP_SERVER_CLOSING)
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
	if (c->stash_len == 0 && c->t.recv_paused && !smtp_server_output_full(c->smtp) &&
	    !c->closing)
		transport_resume_recv(&w->io, &c->t);
	if (c->t.fd >= 0)
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
	bool tls = c->tls_text[0] != '\0';

	/* RFC 3848 */
	if (!smtp_server_esmtp(c->smtp))
		return "SMTP";
	if (c->client.authenticated)
		return tls ? "ESMTPSA" : "ESMTPA";
	return tls ? "ESMTPS" : "ESMTP";
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
	if (n > 0 && c->tls_text[0] != '\0' && (size_t)n < cap) {
		const char *cipher = strchr(c->tls_text, '/');
		n += snprintf(buf + n, cap - (size_t)n, "\r\n\t(using %.*s with cipher %s)",
		              (int)(cipher - c->tls_text), c->tls_text, cipher + 1);
	}
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
	               .tls_version = c->tls_text,
	               .auth_user = ""},
	    .arrival_ms = clock_ms(CLOCK_REALTIME),
	};
	int64_t batch;
	struct queue_message *m =
	    store_message(w->store, id, &qe, w->body_scratch, body_len, &batch);
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

/* The 220 is queued: the handshake follows it, and the rest of the input was dropped. */
static void
conn_starttls(struct worker *w, struct conn *c)
{
	struct tls_conn *tls = tls_conn_server(w->tls_server);

	if (tls == NULL) {
		smtp_server_shutdown(c->smtp);
		return;
	}
	conn_flush(w, c); /* the 220 goes out as plaintext */
	transport_start_tls(&w->io, &c->t, tls);
	c->deadline_ms = w->now_ms + TLS_HANDSHAKE_TIMEOUT_MS;
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
		conn_starttls(w, c);
		break;
	case SMTP_EV_CLOSE:
	case SMTP_EV_NONE:
		break;
	}
}

/* ---- journal group commit ---------------------------------------------------------- */

static void
in_message_acked(struct worker *w, struct conn *c)
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
void
in_journal_settled(struct worker *w, uint64_t durable, int r)
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
			in_message_acked(w, c);
		} else {
			store_forget(w->store, c->wait_msg);
			w->stats.messages_refused++;
			/* full or failing, the storage could not keep it: 452 4.3.1 either way */
			smtp_server_message_done(c->smtp, SMTP_STORE_NOSPACE, NULL);
		}
		c->wait_msg = NULL;
		if (c->t.fd < 0) {
			if (c->t.inflight == 0)
				conn_release_slot(w, c);
			continue;
		}
		conn_resume(w, c);
	}
	w->waiter_count = keep;
}

/* ---- accepting -------------------------------------------------------------------- */

void
in_arm_accept(struct worker *w, unsigned listener)
{
	struct io_uring_sqe *sqe = ring_sqe(&w->io.ring);

	io_uring_prep_multishot_accept(sqe, w->listen_fds[listener], NULL, NULL, SOCK_CLOEXEC);
	io_uring_sqe_set_data64(sqe, ud_pack(OP_ACCEPT, 0, listener));
}

/* Answers a connection we can't take, then closes it; both run whatever the send does. */
static void
in_refuse(struct worker *w, int fd, const char *reply)
{
	struct io_uring_sqe *sqe = ring_sqe(&w->io.ring);

	io_uring_prep_send(sqe, fd, reply, strlen(reply), MSG_NOSIGNAL);
	sqe->flags |= IOSQE_IO_HARDLINK;
	io_uring_sqe_set_data64(sqe, ud_pack(OP_REFUSE_SEND, 0, (uint32_t)fd));
	sqe = ring_sqe(&w->io.ring);
	io_uring_prep_close(sqe, fd);
	io_uring_sqe_set_data64(sqe, ud_pack(OP_REFUSE_CLOSE, 0, (uint32_t)fd));
	w->stats.connections_refused++;
}

static void
in_log_refused(const char *peer, const char *why)
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
	    .starttls_offer = w->tls_server != NULL &&
	                      (ls->tls == CONFIG_TLS_MAY || ls->tls == CONFIG_TLS_REQUIRED),
	    .tls_required = ls->tls == CONFIG_TLS_REQUIRED,
	    .tls_active = ls->tls == CONFIG_TLS_IMPLICIT,
	    .auth_required = ls->auth == CONFIG_AUTH_REQUIRED,
	};
	struct smtp_server_limits lim = {
	    .message_size_max = w->cfg->limits_max_message_size,
	    .rcpt_count_max = w->cfg->limits_max_recipients,
	    .error_count_max = w->cfg->limits_max_errors,
	};

	c->used = true;
	c->w = w;
	transport_init(&c->t, fd, c->gen, conn_slot(w, c), OP_RECV, OP_SEND);
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
	if (ls->tls == CONFIG_TLS_IMPLICIT) {
		struct tls_conn *tls = w->tls_server ? tls_conn_server(w->tls_server) : NULL;
		if (tls == NULL) {
			conn_close(w, c);
			return;
		}
		/* the banner waits in the engine until the handshake is done */
		transport_start_tls(&w->io, &c->t, tls);
		c->deadline_ms = w->now_ms + TLS_HANDSHAKE_TIMEOUT_MS;
	}
	conn_arm_recv(w, c);
	conn_mark_dirty(w, c);
}

void
in_on_accept(struct worker *w, unsigned listener, int res, unsigned flags)
{
	if (!(flags & IORING_CQE_F_MORE) && !w->stopping)
		in_arm_accept(w, listener);
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
	transport_addr_text(&ss, false, text, sizeof(text));
	if (w->free_count == 0) {
		in_log_refused(text, "max_connections");
		in_refuse(w, res, "421 4.7.0 Too many connections, try again later\r\n");
		return;
	}
	switch (connlimit_acquire(w->limits, (struct sockaddr *)&ss)) {
	case CONNLIMIT_TOTAL:
		in_log_refused(text, "max_connections");
		in_refuse(w, res, "421 4.7.0 Too many connections, try again later\r\n");
		return;
	case CONNLIMIT_PER_IP:
		in_log_refused(text, "max_connections_per_ip");
		in_refuse(w, res, "421 4.7.0 Too many connections from your address\r\n");
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

static struct conn *
in_conn(struct worker *w, uint64_t ud)
{
	uint32_t slot = ud_slot(ud);

	assert(slot < w->conn_max);
	struct conn *c = &w->conns[slot];
	assert((c->gen & 0xffffff) == ud_gen(ud));
	return c;
}

static void
conn_ev_input(void *owner, const uint8_t *in, size_t len)
{
	struct conn *c = owner;

	conn_input(c->w, c, in, len);
}

static bool
conn_ev_gone(void *owner)
{
	return ((struct conn *)owner)->t.fd < 0;
}

static void
conn_ev_secured(void *owner)
{
	struct conn *c = owner;
	struct worker *w = c->w;

	transport_tls_text(&c->t, c->tls_text, sizeof(c->tls_text));
	struct log_line *l = log_begin(CONFIG_LOG_INFO, NULL, "tls");
	log_str(l, "client", c->peer_text);
	log_str(l, "tls", c->tls_text);
	log_str(l, "sni", tls_conn_sni(c->t.tls));
	log_str(l, "resumed", tls_conn_resumed(c->t.tls) ? "yes" : "no");
	log_end(l);
	w->stats.tls_handshakes++;
	if (smtp_server_state(c->smtp) == SMTP_SERVER_TLS_WAIT)
		smtp_server_tls_done(c->smtp);
	conn_touch(w, c);
	conn_mark_dirty(w, c);
}

/* The transport failed: a TLS error or a lost peer, said once, then closed. */
static void
conn_lost(struct worker *w, struct conn *c)
{
	if (c->t.fd < 0)
		return;
	if (c->t.tls != NULL && c->t.error != NULL && c->tls_text[0] == '\0') {
		struct log_line *l = log_begin(CONFIG_LOG_INFO, NULL, "tls-failed");
		log_str(l, "client", c->peer_text);
		log_str(l, "reason", c->t.error);
		log_end(l);
		w->stats.tls_failures++;
		transport_flush(&w->io, &c->t); /* the alert, if the socket takes it */
	}
	conn_close(w, c);
}

static const struct transport_events conn_events = {
    .secured = conn_ev_secured,
    .input = conn_ev_input,
    .gone = conn_ev_gone,
};

void
in_on_recv(struct worker *w, uint64_t ud, int res, unsigned flags)
{
	struct conn *c = in_conn(w, ud);

	if (!transport_on_recv(&w->io, &c->t, res, flags, &conn_events, c))
		conn_lost(w, c);
	if (!(flags & IORING_CQE_F_MORE))
		conn_op_done(w, c);
}

void
in_on_send(struct worker *w, uint64_t ud, int res)
{
	struct conn *c = in_conn(w, ud);
	ssize_t r = transport_on_send(&w->io, &c->t, res);

	if (c->t.fd >= 0) {
		if (r < 0) {
			conn_close(w, c);
		} else {
			conn_flush(w, c);
			/* input held back while the output was full runs now */
			if ((c->t.recv_paused || c->stash_len > 0) && !c->waiting)
				conn_resume(w, c);
		}
	}
	conn_op_done(w, c);
}

/* Idle sessions get 421 at once on stop; those inside a transaction get a grace period. */
static bool
conn_idle(const struct conn *c)
{
	enum smtp_server_state st = smtp_server_state(c->smtp);

	return !c->waiting && (st == SMTP_SERVER_GREETING || st == SMTP_SERVER_READY);
}

/* Per tick: timeouts, and on stop a 421 to every session that may have one now. */
void
in_tick(struct worker *w, bool grace_over)
{
	/* slots are taken lowest first, so the open ones sit at the front of the table */
	for (unsigned i = 0, seen = 0; i < w->conn_max && seen < w->active; i++) {
		struct conn *c = &w->conns[i];
		if (c->t.fd < 0)
			continue;
		seen++;
		if (smtp_server_state(c->smtp) == SMTP_SERVER_CLOSING || c->waiting)
			continue;
		if (w->now_ms >= c->deadline_ms && c->t.handshaking) {
			c->t.error = "handshake timeout";
			conn_lost(w, c);
			continue;
		}
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
}

/* End of a turn: the replies of every session that got input or an answer. */
void
in_flush_dirty(struct worker *w)
{
	for (unsigned i = 0; i < w->dirty_count; i++) {
		struct conn *c = &w->conns[w->dirty[i]];
		c->dirty = false;
		if (c->used)
			conn_flush(w, c);
	}
	w->dirty_count = 0;
}

/* ---- set-up and tear-down ---------------------------------------------------------- */

int
in_init(struct worker *w)
{
	const struct config *cfg = w->cfg;
	unsigned rcpts = cfg->limits_max_recipients;

	/* the server-wide limit is connlimit's; SO_REUSEPORT may send any worker them all */
	w->conn_max = cfg->limits_max_connections;
	w->conns = calloc(w->conn_max, sizeof(*w->conns));
	w->free_slots = calloc(w->conn_max, sizeof(unsigned));
	w->dirty = calloc(w->conn_max, sizeof(unsigned));
	w->waiters = calloc(w->conn_max, sizeof(unsigned));
	w->body_scratch_cap = cfg->limits_max_message_size + SMTP_RECEIVED_MAX;
	w->body_scratch = malloc(w->body_scratch_cap);
	w->rcpt_text = calloc(rcpts, sizeof(*w->rcpt_text));
	w->rcpt_ptrs = calloc(rcpts, sizeof(char *));
	w->rcpt_params = calloc(rcpts, sizeof(char *));
	if (!w->conns || !w->free_slots || !w->dirty || !w->waiters || !w->body_scratch ||
	    !w->rcpt_text || !w->rcpt_ptrs || !w->rcpt_params)
		return -ENOMEM;
	for (unsigned i = 0; i < w->conn_max; i++) {
		w->conns[i].t.fd = -1;
		w->free_slots[i] = w->conn_max - 1 - i;
	}
	w->free_count = w->conn_max;
	return 0;
}

void
in_free(struct worker *w)
{
	for (unsigned i = 0; w->conns != NULL && i < w->conn_max; i++) {
		struct conn *c = &w->conns[i];
		if (c->t.fd >= 0)
			close(c->t.fd);
		smtp_server_free(c->smtp);
		free(c->stash);
		tls_conn_free(c->t.tls);
		free(c->t.out);
	}
	free(w->conns);
	free(w->free_slots);
	free(w->dirty);
	free(w->waiters);
	free(w->body_scratch);
	free(w->rcpt_text);
	free(w->rcpt_ptrs);
	free(w->rcpt_params);
}
