/*
 * outbound.c -- outbound delivery inside a worker: scheduling queued recipients
 * onto destinations, outbound connections driven by the pure smtp_client engine,
 * per-recipient outcomes (journaled), retries and bounces.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/log.h"
#include "core/worker_impl.h"
#include "queue/dsn.h"

#define OUT_REPLY_TIMEOUT_MS (5 * 60 * 1000) /* RFC 5321 §4.5.3.2: minutes per reply */
#define OUT_RECORD_SCRATCH   (QUEUE_TEXT_MAX + 64 * 1024)

static uint32_t
oconn_slot(const struct worker *w, const struct oconn *oc)
{
	return (uint32_t)(oc - w->oconns);
}

static struct oconn *
oconn_from(struct worker *w, uint64_t ud)
{
	uint32_t slot = ud_slot(ud);

	assert(slot < OUT_CONN_MAX);
	return &w->oconns[slot];
}

/*
 * The generation changes with every connection attempt: a completion of an earlier
 * attempt on the same slot (the receive of a socket we gave up) only ends its operation.
 * A slot is reused only once no operation names it, so nothing older can come.
 */
static bool
oconn_current(const struct oconn *oc, uint64_t ud)
{
	return (oc->gen & 0xffffff) == ud_gen(ud);
}

int
out_init(struct worker *w)
{
	w->sched = sched_new();
	w->oconns = calloc(OUT_CONN_MAX, sizeof(*w->oconns));
	w->ofree = calloc(OUT_CONN_MAX, sizeof(unsigned));
	if (w->sched == NULL || w->oconns == NULL || w->ofree == NULL)
		return -ENOMEM;
	for (unsigned i = 0; i < OUT_CONN_MAX; i++) {
		w->oconns[i].t.fd = -1;
		w->ofree[i] = OUT_CONN_MAX - 1 - i;
	}
	w->ofree_count = OUT_CONN_MAX;
	return 0;
}

/* The slot's job is over: its message body, if read back for it, goes too. */
static void
out_txn_clear(struct out_txn *t)
{
	t->job = NULL;
	free(t->body);
	t->body = NULL;
}

static void
out_txn_free(struct out_txn *t)
{
	free(t->job);
	free(t->rcpts);
	free(t->rcpt_dsn);
	free(t->body);
}

void
out_free(struct worker *w)
{
	for (unsigned i = 0; w->oconns != NULL && i < OUT_CONN_MAX; i++) {
		struct oconn *oc = &w->oconns[i];
		if (oc->t.fd >= 0)
			close(oc->t.fd);
		tls_conn_free(oc->t.tls);
		free(oc->t.out);
		free(oc->t.cipher);
		smtp_client_free(oc->smtp);
		for (unsigned k = 0; k < OUT_TXN_WINDOW; k++)
			out_txn_free(&oc->txns[k]);
		while (oc->held != NULL) {
			struct sched_job *job = oc->held;
			oc->held = job->next;
			free(job);
		}
		free(oc->stash);
	}
	sched_free(w->sched);
	dns_free(w->dns);
	free(w->blocked);
	free(w->oconns);
	free(w->ofree);
}

/* ---- outcomes ------------------------------------------------------------------------ */

enum out_outcome {
	OUT_DELIVERED,
	OUT_DEFERRED,
	OUT_BOUNCED,
};

static const char *const out_outcome_names[] = {"delivered", "deferred", "bounced"};

static uint64_t
out_retry_ms(const struct worker *w, uint32_t attempts)
{
	const struct config *cfg = w->cfg;
	unsigned i = attempts == 0 ? 0 : attempts - 1;

	if (cfg->queue_retry_count == 0)
		return 60000;
	if (i >= cfg->queue_retry_count)
		i = cfg->queue_retry_count - 1;
	return (uint64_t)cfg->queue_retry_s[i] * 1000;
}

static bool
out_expired(const struct worker *w, const struct queue_message *m)
{
	return w->wall_ms > m->arrival_ms &&
	       w->wall_ms - m->arrival_ms >= w->cfg->queue_max_lifetime_s * 1000;
}

struct out_result {
	unsigned idx; /* recipient index in the message */
	unsigned code;
	const char *status; /* "5.1.1" */
	const char *text;   /* the reply line(s) */
	const char *relay;  /* the next hop's name (Remote-MTA), NULL when none was reached */
	const char *addr;   /* its address and port, NULL likewise */
	const char *tls;    /* how the session was secured: none, anonymous, trusted, ... */
};

/* "550 5.1.1 text" -> "5.1.1"; else the class's generic status. */
static void
out_status_of(const char *error, char status[SMTP_CLIENT_STATUS_MAX])
{
	unsigned a, b, c;

	if (sscanf(error, "%*3u %u.%u.%u", &a, &b, &c) == 3 && (a == 4 || a == 5) && b < 1000 &&
	    c < 1000)
		snprintf(status, SMTP_CLIENT_STATUS_MAX, "%u.%u.%u", a, b, c);
	else
		snprintf(status, SMTP_CLIENT_STATUS_MAX, "%c.0.0", error[0] == '4' ? '4' : '5');
}

/* reply: the outcome's text (res->text may point at the error the outcome just replaced) */
static void
out_log_outcome(struct worker *w, const struct queue_message *m, const struct queue_rcpt *r,
                enum out_outcome o, const struct out_result *res, const char *reply)
{
	struct log_line *l = log_begin(CONFIG_LOG_INFO, m->id_text, out_outcome_names[o]);
	char status[SMTP_CLIENT_STATUS_MAX];

	if (l == NULL)
		return;
	out_status_of(reply, status);
	log_str(l, "to", r->address);
	log_uint(l, "code", res->code);
	log_str(l, "dsn", res->status != NULL && res->status[0] ? res->status : status);
	log_str(l, "relay", res->relay);
	log_str(l, "addr", res->addr);
	log_str(l, "tls", res->tls != NULL ? res->tls : "none");
	log_str(l, "reply", reply);
	log_uint(l, "delay_s", (w->wall_ms - m->arrival_ms) / 1000);
	log_uint(l, "attempt", r->attempts);
	log_end(l);
}

static enum out_outcome
out_apply(struct worker *w, struct queue_message *m, const struct out_result *res)
{
	struct queue_rcpt *r = &m->rcpts[res->idx];
	uint32_t attempts = r->attempts + 1;
	char error[QUEUE_TEXT_MAX];
	enum out_outcome o;

	snprintf(error, sizeof(error), "%s", res->text);
	if (res->code >= 200 && res->code < 300) {
		o = OUT_DELIVERED;
	} else if (res->code >= 500) {
		o = OUT_BOUNCED;
	} else if (out_expired(w, m)) {
		o = OUT_BOUNCED;
		snprintf(error, sizeof(error), "451 4.4.7 Message expired, last reply: %.900s",
		         res->text);
	} else {
		o = OUT_DEFERRED;
	}
	static const enum queue_rcpt_state states[] = {QUEUE_RCPT_DELIVERED, QUEUE_RCPT_PENDING,
	                                               QUEUE_RCPT_BOUNCED};
	static const enum journal_rec_type types[] = {JOURNAL_REC_DELIVERED, JOURNAL_REC_DEFERRED,
	                                              JOURNAL_REC_BOUNCED};
	uint64_t next = o == OUT_DEFERRED ? w->wall_ms + out_retry_ms(w, attempts) : 0;
	store_outcome(w->store, m, types[o], &res->idx, 1, attempts, next, error);
	queue_rcpt_outcome(w->queue, m, res->idx, states[o], attempts, next, error);
	out_log_outcome(w, m, r, o, res, error);
	if (o == OUT_DEFERRED)
		sched_wake(w->sched, m->id, next);
	w->stats.rcpts_delivered += o == OUT_DELIVERED;
	w->stats.rcpts_deferred += o == OUT_DEFERRED;
	w->stats.rcpts_bounced += o == OUT_BOUNCED;
	return o;
}

/*
 * The ESMTP parameter key in params (as stored: "KEY[=value]" words): true when
 * present, with its value copied to out (when out is given). A value that does not
 * fit counts as absent: a cut DSN value would be a wrong one.
 */
static bool
out_param(const char *params, const char *key, char *out, size_t cap)
{
	struct address_param p[ADDRESS_PARAMS_MAX];
	size_t n;

	if (address_parse_params(params, strlen(params), p, &n) != ADDRESS_OK)
		return false;
	for (size_t i = 0; i < n; i++) {
		if (strcmp(p[i].keyword, key) != 0)
			continue;
		if (out == NULL)
			return true;
		if (p[i].value == NULL || p[i].value_len >= cap)
			return false;
		snprintf(out, cap, "%.*s", (int)p[i].value_len, p[i].value);
		return true;
	}
	return false;
}

/* RFC 3461 §4.1: without NOTIFY, only failures are reported. */
static bool
out_notify(const char *rcpt_params, const char *what)
{
	char v[SMTP_CLIENT_NOTIFY_MAX];

	if (!out_param(rcpt_params, "NOTIFY", v, sizeof(v)))
		return strcmp(what, "FAILURE") == 0;
	for (char *save = NULL, *t = strtok_r(v, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
		if (strcasecmp(t, what) == 0)
			return true;
	}
	return false;
}

/*
 * Sends a delivery status notification for the bounced recipients to the sender,
 * as a new message from <> (RFC 3464). A bounce is never bounced: a message from
 * <> that fails is logged as a double bounce and dropped.
 */
static void
out_bounce(struct worker *w, const struct queue_message *m, const struct dsn_rcpt *rcpts,
           unsigned n)
{
	if (!dsn_should_bounce(m->sender)) {
		struct log_line *l = log_begin(CONFIG_LOG_WARNING, m->id_text, "double-bounce");
		log_uint(l, "rcpts", n);
		log_end(l);
		return;
	}
	uint8_t *owned;
	const uint8_t *body = store_body(w->store, m, &owned);
	char ret[8], envid_x[SMTP_CLIENT_ENVID_MAX * 3 + 1], envid[SMTP_CLIENT_ENVID_MAX + 1];
	bool has_envid = out_param(m->sender_params, "ENVID", envid_x, sizeof(envid_x)) &&
	                 address_xtext_decode(envid_x, strlen(envid_x), envid, sizeof(envid)) >= 0;
	bool full =
	    out_param(m->sender_params, "RET", ret, sizeof(ret)) && strcasecmp(ret, "FULL") == 0;
	char id_text[QUEUE_ID_LEN + 1], date[64];
	uint64_t id = queue_next_id(w->queue, w->wall_ms * 1000, id_text);
	time_t now = (time_t)(w->wall_ms / 1000);
	struct tm tm;
	gmtime_r(&now, &tm);
	strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S +0000", &tm);
	struct strbuf sb;
	strbuf_init(&sb, DSN_OUTPUT_MAX + SMTP_RECEIVED_MAX);
	/* the report starts its life here: its trace header says so (RFC 5321 §4.4) */
	strbuf_printf(&sb, "Received: by %s (ringmx) id %s; %s\r\n", w->cfg->hostname, id_text,
	              date);
	struct dsn_report rep = {
	    .hostname = w->cfg->hostname,
	    .queue_id = m->id_text,
	    .sender = m->sender,
	    .arrival = (time_t)(m->arrival_ms / 1000),
	    .date = (time_t)(w->wall_ms / 1000),
	    .seq = w->dsn_seq++,
	    .envid = has_envid ? envid : NULL,
	    .ret = full ? DSN_RET_FULL : DSN_RET_HDRS,
	    .message = body != NULL ? (const char *)body : "",
	    .message_len = body != NULL ? m->body_len : 0,
	    .rcpts = rcpts,
	    .rcpt_count = n,
	};
	int r = dsn_build(&sb, &rep);
	free(owned);
	if (r != 0) {
		log_msg(CONFIG_LOG_ERROR, "%s: cannot build the bounce: %s", m->id_text,
		        strerror(-r));
		strbuf_free(&sb);
		return;
	}
	const char *rcpt = m->sender, *params = "";
	struct queue_envelope qe = {
	    .sender = "",
	    .sender_params = "",
	    .rcpt_addresses = &rcpt,
	    .rcpt_params = &params,
	    .rcpt_count = 1,
	    .origin = {.client_addr = "127.0.0.1",
	               .client_name = w->cfg->hostname,
	               .protocol = "local",
	               .tls_version = "",
	               .auth_user = ""},
	    .arrival_ms = w->wall_ms,
	};
	int64_t batch;
	struct queue_message *b =
	    store_message(w->store, id, &qe, (const uint8_t *)sb.data, sb.len, &batch);
	strbuf_free(&sb);
	struct log_line *l = log_begin(CONFIG_LOG_INFO, m->id_text, "bounce");
	log_str(l, "dsn_id", b != NULL ? id_text : "none (queue full)");
	log_str(l, "to", m->sender);
	log_uint(l, "rcpts", n);
	log_end(l);
	if (b != NULL)
		out_schedule(w, b);
}

/* A message with no pending recipient leaves the queue (and, by its DELETED record, the journal).
 */
static void
out_finish(struct worker *w, struct queue_message *m)
{
	if (queue_message_finished(m))
		store_delete(w->store, m);
}

/*
 * Applies one result per recipient of a job, reports what the sender asked to hear
 * about (RFC 3461: failures by default; successes as "relayed" when the next hop
 * could not take NOTIFY over), and finishes the message.
 */
static void
out_results(struct worker *w, struct queue_message *m, const struct out_result *res, unsigned n,
            bool peer_dsn)
{
	struct dsn_rcpt *report = calloc(n, sizeof(*report));
	char(*status)[SMTP_CLIENT_STATUS_MAX] = calloc(n, sizeof(*status));
	char(*orcpt)[SMTP_CLIENT_ORCPT_MAX + 1] = calloc(n, sizeof(*orcpt));
	unsigned nr = 0;

	for (unsigned i = 0; i < n; i++) {
		enum out_outcome o = out_apply(w, m, &res[i]);
		const struct queue_rcpt *r = &m->rcpts[res[i].idx];
		if (report == NULL || status == NULL || orcpt == NULL || o == OUT_DEFERRED)
			continue;
		if (o == OUT_BOUNCED ? !out_notify(r->params, "FAILURE")
		                     : peer_dsn || !out_notify(r->params, "SUCCESS"))
			continue;
		char x[SMTP_CLIENT_ORCPT_MAX * 3 + 1];
		bool has_orcpt =
		    out_param(r->params, "ORCPT", x, sizeof(x)) &&
		    address_xtext_decode(x, strlen(x), orcpt[nr], sizeof(orcpt[nr])) >= 0;
		if (o == OUT_BOUNCED)
			out_status_of(r->last_error, status[nr]);
		else
			snprintf(status[nr], sizeof(status[nr]), "2.0.0");
		report[nr] = (struct dsn_rcpt){
		    .final_recipient = r->address,
		    .original_recipient = has_orcpt ? orcpt[nr] : NULL,
		    .action = o == OUT_BOUNCED ? DSN_ACTION_FAILED : DSN_ACTION_RELAYED,
		    .status = status[nr],
		    .remote_mta = res[i].relay,
		    .diagnostic = o == OUT_BOUNCED ? r->last_error : res[i].text,
		    .last_attempt = (time_t)(w->wall_ms / 1000),
		};
		nr++;
	}
	if (nr > 0)
		out_bounce(w, m, report, nr);
	free(report);
	free(status);
	free(orcpt);
	out_finish(w, m);
}

/* ---- scheduling ---------------------------------------------------------------------- */

static const char *
out_domain_of(const char *address)
{
	const char *at = strrchr(address, '@');

	return at != NULL ? at + 1 : "";
}

/* Every pending recipient past its lifetime bounces with 4.4.7, without an attempt. */
static void
out_expire(struct worker *w, struct queue_message *m)
{
	struct out_result *res = calloc(m->rcpt_count, sizeof(*res));
	unsigned n = 0;

	if (res == NULL)
		return;
	for (unsigned i = 0; i < m->rcpt_count; i++) {
		const struct queue_rcpt *r = &m->rcpts[i];
		if (r->state != QUEUE_RCPT_PENDING || r->next_attempt_ms == QUEUE_IN_FLIGHT)
			continue;
		res[n++] = (struct out_result){
		    .idx = i,
		    .code = 451,
		    .status = "4.4.7",
		    .text = r->last_error != NULL ? r->last_error : "451 4.4.7 never attempted",
		};
	}
	out_results(w, m, res, n, false);
	free(res);
}

/*
 * Puts the message's due recipients on their destinations' queues, one job per
 * destination, and asks to be woken for the ones due later.
 */
void
out_schedule(struct worker *w, struct queue_message *m)
{
	unsigned *idx = calloc(m->rcpt_count, sizeof(unsigned));
	bool *taken = calloc(m->rcpt_count, sizeof(bool));
	uint64_t later = UINT64_MAX;

	if (queue_message_finished(m)) {
		out_finish(w, m);
		goto out;
	}
	if (idx == NULL || taken == NULL || m->held)
		goto out;
	if (out_expired(w, m)) {
		out_expire(w, m);
		goto out;
	}
	for (unsigned i = 0; i < m->rcpt_count; i++) {
		struct queue_rcpt *r = &m->rcpts[i];
		if (taken[i] || r->state != QUEUE_RCPT_PENDING ||
		    r->next_attempt_ms == QUEUE_IN_FLIGHT)
			continue;
		if (r->next_attempt_ms > w->wall_ms) {
			later = r->next_attempt_ms < later ? r->next_attempt_ms : later;
			continue;
		}
		struct sched_route route, other;
		sched_route_for(w->cfg, out_domain_of(r->address), &route);
		unsigned n = 0;
		for (unsigned k = i; k < m->rcpt_count; k++) {
			struct queue_rcpt *rk = &m->rcpts[k];
			if (taken[k] || rk->state != QUEUE_RCPT_PENDING ||
			    rk->next_attempt_ms == QUEUE_IN_FLIGHT ||
			    rk->next_attempt_ms > w->wall_ms)
				continue;
			sched_route_for(w->cfg, out_domain_of(rk->address), &other);
			if (strcmp(route.key, other.key) == 0) {
				idx[n++] = k;
				taken[k] = true;
			}
		}
		struct sched_dest *d = sched_dest(w->sched, &route);
		if (d == NULL || sched_job_add(w->sched, d, m->id, idx, n) != 0) {
			/* no room for another destination now: try again in a minute */
			later = w->wall_ms + 60000 < later ? w->wall_ms + 60000 : later;
			continue;
		}
		for (unsigned k = 0; k < n; k++)
			m->rcpts[idx[k]].next_attempt_ms = QUEUE_IN_FLIGHT;
	}
	if (later != UINT64_MAX)
		sched_wake(w->sched, m->id, later);
out:
	free(idx);
	free(taken);
}

/* A job that will not be tried now: each recipient gets `code` (deferred or bounced by it). */
static void
out_fail_job(struct worker *w, struct sched_job *job, unsigned code, const char *text,
             const char *relay)
{
	struct queue_message *m = queue_find(w->queue, job->id);

	if (m != NULL) {
		struct out_result *res = calloc(job->rcpt_count, sizeof(*res));
		if (res != NULL) {
			for (unsigned i = 0; i < job->rcpt_count; i++) {
				m->rcpts[job->rcpt[i]].next_attempt_ms = 0;
				res[i] = (struct out_result){.idx = job->rcpt[i],
				                             .code = code,
				                             .text = text,
				                             .relay = relay};
			}
			out_results(w, m, res, job->rcpt_count, false);
			free(res);
		}
	}
	free(job);
}

static void
out_fail_dest(struct worker *w, struct sched_dest *d, unsigned code, const char *text,
              const char *relay)
{
	struct sched_job *job;

	while ((job = sched_job_take(d)) != NULL)
		out_fail_job(w, job, code, text, relay);
}

void
out_flush_queue(struct worker *w)
{
	sched_dest_revive_all(w->sched);
	for (struct queue_message *m = queue_next(w->queue, NULL); m != NULL;
	     m = queue_next(w->queue, m)) {
		for (unsigned i = 0; i < m->rcpt_count; i++) {
			if (m->rcpts[i].next_attempt_ms != QUEUE_IN_FLIGHT)
				m->rcpts[i].next_attempt_ms = 0;
		}
		sched_wake(w->sched, m->id, 0);
	}
}

/* ringmxctl delete: refused while a recipient is in a transaction (its body is in use). */
int
out_delete(struct worker *w, struct queue_message *m)
{
	for (unsigned i = 0; i < m->rcpt_count; i++) {
		if (m->rcpts[i].next_attempt_ms == QUEUE_IN_FLIGHT)
			return -EBUSY;
	}
	store_delete(w->store, m);
	return 0;
}

/* ringmxctl hold/release: journaled; a released message is scheduled at once. */
void
out_hold(struct worker *w, struct queue_message *m, bool held)
{
	store_hold(w->store, m, held);
	if (!held)
		out_schedule(w, m);
}

/* ---- connections --------------------------------------------------------------------- */

static void out_event(struct worker *w, struct oconn *oc, const struct smtp_client_event *ev);
static void out_flush(struct worker *w, struct oconn *oc);

/* The socket goes (its pending receive ends with it); so does its TLS session. */
static void
out_drop_socket(struct worker *w, struct oconn *oc)
{
	transport_close(&w->io, &oc->t);
	tls_conn_free(oc->t.tls);
	oc->t.tls = NULL;
	oc->t.handshaking = false;
}

static void
oconn_release(struct worker *w, struct oconn *oc)
{
	assert(oc->t.inflight == 0);
	assert(oc->txn_count == 0 && oc->held == NULL);
	smtp_client_free(oc->smtp);
	for (unsigned k = 0; k < OUT_TXN_WINDOW; k++)
		out_txn_free(&oc->txns[k]);
	free(oc->stash);
	transport_reset(&oc->t);
	uint32_t gen = oc->gen + 1;
	*oc = (struct oconn){.t.fd = -1, .gen = gen};
	w->ofree[w->ofree_count++] = oconn_slot(w, oc);
}

static void
oconn_unidle(struct oconn *oc)
{
	struct oconn **pp = (struct oconn **)&oc->dest->idle;

	for (; *pp != NULL; pp = &(*pp)->next_idle) {
		if (*pp == oc) {
			*pp = oc->next_idle;
			break;
		}
	}
	oc->next_idle = NULL;
}

/* Closes the connection; jobs still on it go back as deferred with `text`. */
static void
oconn_close(struct worker *w, struct oconn *oc, const char *text)
{
	if (oc->closing)
		return;
	oc->closing = true;
	oconn_unidle(oc);
	if (oc->dns_id != 0) {
		dns_cancel(w->dns, oc->dns_id);
		oc->dns_id = 0;
	}
	for (; oc->txn_count > 0; oc->txn_count--) {
		struct out_txn *t = &oc->txns[oc->txn_head];
		out_fail_job(w, t->job, 451, text, oc->peer_text);
		out_txn_clear(t);
		oc->txn_head = (oc->txn_head + 1) % OUT_TXN_WINDOW;
	}
	while (oc->held != NULL) {
		struct sched_job *job = oc->held;
		oc->held = job->next;
		out_fail_job(w, job, 451, text, oc->peer_text);
	}
	out_drop_socket(w, oc);
	struct sched_dest *d = oc->dest;
	d->active--;
	if (!oc->session_ok)
		d->opening--;
	connlimit_release_name(w->dest_limits, d->route.key);
	if (d->jobs > 0)
		sched_runnable_put(w->sched, d);
	if (oc->t.inflight == 0)
		oconn_release(w, oc);
}

static void
oconn_op_done(struct worker *w, struct oconn *oc)
{
	assert(oc->t.inflight > 0);
	if (--oc->t.inflight == 0 && oc->closing)
		oconn_release(w, oc);
}

/* The destination's TLS policy as the engine sees it: STARTTLS when offered, or required. */
static enum smtp_client_tls_mode
out_tls_mode(const struct worker *w, const struct oconn *oc)
{
	if (w->tls_client == NULL || oc->plain_addr == (int)oc->addr_next)
		return SMTP_CLIENT_TLS_NONE;
	switch (oc->tls_policy) {
	case CONFIG_OUT_TLS_NONE:
		return SMTP_CLIENT_TLS_NONE;
	case CONFIG_OUT_TLS_MAY:
		return SMTP_CLIENT_TLS_MAY;
	case CONFIG_OUT_TLS_DANE: /* secure TLSA records make TLS mandatory, even unusable ones */
		return oc->tlsa_secure && oc->tlsa_host == oc->addr_host[oc->addr_next]
		           ? SMTP_CLIENT_TLS_REQUIRED
		           : SMTP_CLIENT_TLS_MAY;
	case CONFIG_OUT_TLS_ENCRYPT:
	case CONFIG_OUT_TLS_VERIFY:
		break;
	}
	return SMTP_CLIENT_TLS_REQUIRED;
}

static struct smtp_client *
out_client_new(const struct worker *w, const struct oconn *oc)
{
	struct smtp_client_params p = {
	    .helo_name = w->cfg->hostname,
	    .tls_mode = out_tls_mode(w, oc),
	    .reply_line_max = SMTP_CLIENT_REPLY_LINE_CAP,
	    .reply_lines_max = 100,
	    .rcpt_count_max = w->cfg->limits_max_recipients,
	    .chunking = true,
	    .txn_window = OUT_TXN_WINDOW,
	};

	return smtp_client_new(&p);
}

static void out_conn_failed(struct worker *w, struct oconn *oc, const char *why);

/*
 * DANE (RFC 7672) for the host of the next address: its TLSA records, looked up
 * once per host before connecting. Secure records make TLS mandatory and say how
 * the certificate must match; none (or an insecure answer) leaves TLS
 * opportunistic; an answer that can't be trusted (bogus, failed) defers that
 * host: we don't connect to it at all, as a downgrade could be what an attacker wants.
 */
static void
out_tlsa_done(void *arg, const struct dns_tlsa_result *r)
{
	struct oconn *oc = arg;
	struct worker *w = oc->w;
	unsigned host = oc->addr_host[oc->addr_next];

	oc->dns_id = 0;
	oc->tlsa_host = (int)host;
	oc->tlsa_count = 0;
	oc->tlsa_secure = r->status == DNS_OK && r->security == DNS_SECURE && r->count > 0;
	if (oc->tlsa_secure) {
		oc->tlsa_count = r->count;
		memcpy(oc->tlsa, r->records, r->count * sizeof(r->records[0]));
	} else if (r->security == DNS_BOGUS || r->status == DNS_TEMPFAIL) {
		struct log_line *l = log_begin(CONFIG_LOG_WARNING, NULL, "tlsa-failed");
		log_str(l, "dest", oc->dest->route.key);
		log_str(l, "host", oc->hosts[host]);
		log_str(l, "dnssec", dns_security_name(r->security));
		log_str(l, "reason", r->reason);
		log_end(l);
		while (oc->addr_next < oc->addr_count && oc->addr_host[oc->addr_next] == host)
			oc->addr_next++;
		snprintf(oc->tlsa_error, sizeof(oc->tlsa_error), "%s",
		         r->reason[0] ? r->reason : "451 4.7.5 TLSA lookup failed");
	}
	/* connects to the next address, or gives up with the reason */
	out_conn_failed(w, oc, oc->tlsa_error[0] ? oc->tlsa_error : "no address left");
}

/* True when the next address needs its host's TLSA records first (and the lookup started). */
static bool
out_tlsa_needed(struct worker *w, struct oconn *oc)
{
	unsigned host = oc->addr_host[oc->addr_next];

	if (oc->tls_policy != CONFIG_OUT_TLS_DANE || oc->security != DNS_SECURE ||
	    oc->tlsa_host == (int)host || w->tls_client == NULL)
		return false;
	int id = dns_resolve_tlsa(w->dns, oc->hosts[host], oc->dest->route.port, out_tlsa_done, oc);
	if (id < 0)
		return false;
	oc->dns_id = id;
	oc->deadline_ms = w->now_ms + OUT_CONNECT_TIMEOUT_MS;
	return true;
}

/* Connects to the next address of the connection; false when none is left. */
static bool
out_connect(struct worker *w, struct oconn *oc)
{
	while (oc->addr_next < oc->addr_count) {
		if (out_tlsa_needed(w, oc))
			return true;
		const struct sockaddr_storage *ss = &oc->addrs[oc->addr_next];
		int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (fd < 0) {
			oc->addr_next++;
			continue;
		}
		/* every address gets a session of its own: the last one may have ended mid-way */
		smtp_client_free(oc->smtp);
		oc->smtp = out_client_new(w, oc);
		oc->addr_next++;
		if (oc->smtp == NULL) {
			close(fd);
			return false;
		}
		int one = 1;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		oc->gen++;
		transport_init(&oc->t, fd, oc->gen, oconn_slot(w, oc), OP_OUT_RECV, OP_OUT_SEND);
		oc->stash_len = 0;
		oc->tls_auth = NULL;
		oc->connecting = true;
		transport_addr_text(ss, true, oc->peer_text, sizeof(oc->peer_text));
		struct io_uring_sqe *sqe = ring_sqe(&w->io.ring);
		io_uring_prep_connect(sqe, fd, (const struct sockaddr *)ss,
		                      ss->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6)
		                                                : sizeof(struct sockaddr_in));
		io_uring_sqe_set_data64(sqe, ud_pack(OP_OUT_CONNECT, oc->gen, oconn_slot(w, oc)));
		oc->t.inflight++;
		oc->deadline_ms = w->now_ms + OUT_CONNECT_TIMEOUT_MS;
		return true;
	}
	return false;
}

/* The route's host as an address, when it is one ("[192.0.2.1]", "192.0.2.1", "[IPv6:…]"). */
static bool
out_literal(const struct sched_route *r, uint16_t port, struct sockaddr_storage *ss)
{
	char host[CONFIG_DOMAIN_LEN + 1];
	const char *h = r->host;
	size_t len = strlen(h);

	if (len >= 2 && h[0] == '[' && h[len - 1] == ']') {
		h++;
		len -= 2;
	}
	if (len >= 5 && strncasecmp(h, "IPv6:", 5) == 0) {
		h += 5;
		len -= 5;
	}
	snprintf(host, sizeof(host), "%.*s", (int)len, h);
	memset(ss, 0, sizeof(*ss));
	struct sockaddr_in *sin = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
	if (inet_pton(AF_INET, host, &sin->sin_addr) == 1) {
		sin->sin_family = AF_INET;
		sin->sin_port = htons(port);
		return true;
	}
	if (inet_pton(AF_INET6, host, &sin6->sin6_addr) == 1) {
		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons(port);
		return true;
	}
	return false;
}

/* ---- DNS ------------------------------------------------------------------------------ */

static const char *
out_code_of(const char *reason, unsigned *code)
{
	unsigned c = 0;

	if (sscanf(reason, "%3u", &c) != 1 || c < 400 || c > 599)
		c = 451;
	*code = c;
	return reason;
}

/*
 * The next hops of a connection's destination are known (or not). Addresses are
 * tried in the order the resolver gives (RFC 5321 §5.1: MX preference, ties
 * shuffled); a host whose answer was bogus has none and is never tried.
 */
static void
out_dns_done(void *arg, const struct dns_mx_result *r)
{
	struct oconn *oc = arg;
	struct worker *w = oc->w;
	struct sched_dest *d = oc->dest;
	unsigned code;

	oc->dns_id = 0;
	oc->security = r->security;
	for (unsigned h = 0; h < r->host_count && oc->addr_count < OUT_ADDRS_MAX; h++) {
		snprintf(oc->hosts[h], sizeof(oc->hosts[h]), "%s", r->hosts[h].name);
		for (unsigned a = 0; a < r->hosts[h].addr_count && oc->addr_count < OUT_ADDRS_MAX;
		     a++) {
			const struct dns_addr *da = &r->hosts[h].addrs[a];
			struct sockaddr_storage *ss = &oc->addrs[oc->addr_count];
			memset(ss, 0, sizeof(*ss));
			if (da->family == AF_INET6) {
				struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
				sin6->sin6_family = AF_INET6;
				sin6->sin6_port = htons(d->route.port);
				memcpy(&sin6->sin6_addr, da->bytes, 16);
			} else {
				struct sockaddr_in *sin = (struct sockaddr_in *)ss;
				sin->sin_family = AF_INET;
				sin->sin_port = htons(d->route.port);
				memcpy(&sin->sin_addr, da->bytes, 4);
			}
			oc->addr_host[oc->addr_count++] = (uint8_t)h;
		}
	}
	if (r->status == DNS_OK && oc->addr_count > 0 && out_connect(w, oc))
		return;
	const char *reason = r->reason[0] ? r->reason : "451 4.4.3 no address to connect to";
	struct log_line *l = log_begin(CONFIG_LOG_WARNING, NULL, "destination-failed");
	log_str(l, "dest", d->route.key);
	/* an answer that never came has no DNSSEC state to speak of */
	log_str(l, "dnssec",
	        r->status == DNS_TEMPFAIL && r->security != DNS_BOGUS
	            ? "unknown"
	            : dns_security_name(r->security));
	log_str(l, "reason", reason);
	log_end(l);
	out_code_of(reason, &code);
	oconn_close(w, oc, reason);
	if (code < 500)
		sched_dest_failed(d, w->now_ms, reason);
	/* a permanent answer (NXDOMAIN, null MX) bounces the queued jobs; else they wait */
	out_fail_dest(w, d, code, reason, NULL);
}

int
out_dns_setup(struct worker *w, char *err, size_t err_len)
{
	const struct config *cfg = w->cfg;
	const char *forward[CONFIG_FORWARD_MAX];

	for (unsigned i = 0; i < cfg->dns_forward_count; i++)
		forward[i] = cfg->dns_forward[i];
	struct dns_params p = {
	    .forward = forward,
	    .forward_count = cfg->dns_forward_count,
	    .trust_anchor_file = cfg->dns_trust_anchor_file,
	    .dnssec = cfg->dns_dnssec,
	    .unbound_config = cfg->dns_unbound_config,
	    .hosts_file = cfg->dns_hosts_file,
	    .ipv6_first = cfg->dns_prefer_ipv6,
	};
	w->dns = dns_new(&p, err, err_len);
	if (w->dns == NULL)
		return -EINVAL;
	struct io_uring_sqe *sqe = ring_sqe(&w->io.ring);
	io_uring_prep_poll_multishot(sqe, dns_fd(w->dns), POLLIN);
	io_uring_sqe_set_data64(sqe, ud_pack(OP_DNS, 0, 0));
	return 0;
}

/* Runs the resolver while it has work due now (bounded: the rest waits for the next turn). */
void
out_dns_pump(struct worker *w)
{
	for (unsigned i = 0; i < 8 && dns_timeout_ms(w->dns) == 0; i++)
		dns_process(w->dns);
}

/* Opens one more connection to d; false when the destination can't be reached now. */
/* The destination waits for a slot another worker holds: looked at again each tick. */
static void
out_block(struct worker *w, struct sched_dest *d)
{
	for (size_t i = 0; i < w->blocked_count; i++) {
		if (w->blocked[i] == d)
			return;
	}
	if (w->blocked_count == w->blocked_cap) {
		size_t cap = w->blocked_cap ? 2 * w->blocked_cap : 16;
		struct sched_dest **p = realloc(w->blocked, cap * sizeof(*p));
		if (p == NULL)
			return; /* it runs again when one of our own connections to it ends */
		w->blocked = p;
		w->blocked_cap = cap;
	}
	w->blocked[w->blocked_count++] = d;
}

static bool
out_open(struct worker *w, struct sched_dest *d)
{
	if (connlimit_acquire_name(w->dest_limits, d->route.key) != CONNLIMIT_OK) {
		if (d->active == 0)
			out_block(w, d);
		return false;
	}
	struct oconn *oc = &w->oconns[w->ofree[--w->ofree_count]];

	assert(!oc->used);
	oc->used = true;
	oc->dest = d;
	oc->started_ms = w->now_ms;
	d->active++;
	d->opening++;
	oc->w = w;
	oc->tls_policy = d->route.tls;
	oc->plain_addr = -1;
	oc->tlsa_host = -1;
	if (d->route.kind == CONFIG_ROUTE_HOST &&
	    out_literal(&d->route, d->route.port, &oc->addrs[0])) {
		snprintf(oc->hosts[0], sizeof(oc->hosts[0]), "%s", d->route.host);
		oc->addr_count = 1;
		oc->security = DNS_INSECURE;
		return out_connect(w, oc);
	}
	int id = d->route.kind == CONFIG_ROUTE_HOST
	             ? dns_resolve_host(w->dns, d->route.host, out_dns_done, oc)
	             : dns_resolve_mx(w->dns, d->route.host, out_dns_done, oc);
	if (id < 0) {
		char text[128];
		snprintf(text, sizeof(text), "451 4.4.3 cannot look up %s: %s", d->route.host,
		         dns_strerror(id));
		oconn_close(w, oc, text);
		out_fail_dest(w, d, 451, text, NULL);
		return false;
	}
	oc->dns_id = id;
	oc->deadline_ms = w->now_ms + OUT_CONNECT_TIMEOUT_MS;
	return true;
}

/* A connection attempt or a session that failed before any transaction: next address, or down. */
static void
out_conn_failed(struct worker *w, struct oconn *oc, const char *why)
{
	char text[SMTP_CLIENT_REPLY_TEXT_MAX + 64];
	struct sched_dest *d = oc->dest;

	snprintf(text, sizeof(text), "451 4.4.1 %s: %s", oc->peer_text, why);
	out_drop_socket(w, oc);
	oc->connecting = false;
	if (!oc->session_ok && oc->txn_count == 0 && out_connect(w, oc))
		return;
	struct log_line *l = log_begin(CONFIG_LOG_WARNING, NULL, "destination-failed");
	log_str(l, "dest", d->route.key);
	log_str(l, "reason", text);
	log_end(l);
	if (!oc->session_ok && d->active == 1) {
		/* the last way in failed: the destination rests, and its queue is deferred */
		sched_dest_failed(d, w->now_ms, text);
		out_fail_dest(w, d, 451, text, NULL);
	}
	oconn_close(w, oc, text);
}

static void
out_feed(struct worker *w, struct oconn *oc, const uint8_t *in, size_t len)
{
	uint32_t gen = oc->gen;

	/* an event may move the connection to its next address: the rest was the old peer's */
	while (len > 0 && !oc->closing && oc->gen == gen) {
		struct smtp_client_event ev;
		if (smtp_client_input_blocked(oc->smtp)) {
			/* replies wait until what they answer has been sent */
			if (oc->stash_len + len > OUT_STASH_MAX) {
				oconn_close(w, oc, "451 4.4.2 peer sent too much ahead");
				return;
			}
			uint8_t *p = realloc(oc->stash, oc->stash_len + len);
			if (p == NULL) {
				oconn_close(w, oc, "451 4.3.0 out of memory");
				return;
			}
			memcpy(p + oc->stash_len, in, len);
			oc->stash = p;
			oc->stash_len += len;
			return;
		}
		size_t used = smtp_client_feed(oc->smtp, in, len, &ev);
		in += used;
		len -= used;
		if (ev.type != SMTP_CLIENT_EV_NONE)
			out_event(w, oc, &ev);
		else if (used == 0)
			break;
	}
	if (!oc->closing)
		out_flush(w, oc);
}

/* Under TLS the engine's output is encrypted now, so it counts as sent at once. */
static void
out_flush_tls(struct worker *w, struct oconn *oc)
{
	struct iovec iov[TRANSPORT_IOV_MAX];

	while (smtp_client_output_pending(oc->smtp)) {
		unsigned n = smtp_client_output(oc->smtp, iov, TRANSPORT_IOV_MAX);
		size_t took = 0, k = 0;
		for (unsigned i = 0; i < n; i++) {
			k = transport_write(&oc->t, iov[i].iov_base, iov[i].iov_len);
			took += k;
			if (k < iov[i].iov_len)
				break;
		}
		smtp_client_output_consume(oc->smtp, took);
		if (took == 0 || k < iov[n - 1].iov_len)
			break; /* the ciphertext buffer is full, or the handshake runs */
	}
	transport_flush(&w->io, &oc->t);
}

static void
out_flush(struct worker *w, struct oconn *oc)
{
	if (transport_busy(&oc->t) || oc->t.fd < 0 || oc->connecting)
		return;
	if (oc->t.tls != NULL) {
		out_flush_tls(w, oc);
	} else if (smtp_client_output_pending(oc->smtp)) {
		struct iovec iov[TRANSPORT_IOV_MAX];
		unsigned n = smtp_client_output(oc->smtp, iov, TRANSPORT_IOV_MAX);
		transport_sendv(&w->io, &oc->t, iov, n);
	} else {
		return;
	}
	oc->deadline_ms = w->now_ms + OUT_REPLY_TIMEOUT_MS;
}

/* The name the peer's certificate should carry: the MX host (or the route's host). */
static const char *
out_peer_name(const struct oconn *oc)
{
	return oc->addr_next > 0 ? oc->hosts[oc->addr_host[oc->addr_next - 1]]
	                         : oc->dest->route.host;
}

/*
 * A handshake that failed: under `may` the same address is tried again at once
 * without TLS (as Postfix does: encryption was only ever opportunistic); any other
 * policy defers the mail for that address.
 */
static void
out_tls_failed(struct worker *w, struct oconn *oc)
{
	struct smtp_client_event ev;
	bool plain = out_tls_mode(w, oc) == SMTP_CLIENT_TLS_MAY;

	w->stats.tls_out_failures++;
	struct log_line *l = log_begin(CONFIG_LOG_WARNING, NULL, "tls-failed");
	log_str(l, "dest", oc->dest->route.key);
	log_str(l, "addr", oc->peer_text);
	log_str(l, "reason", oc->t.error != NULL ? oc->t.error : "handshake failed");
	log_str(l, "then", plain ? "plaintext" : "deferred");
	log_end(l);
	if (plain) {
		oc->addr_next--;
		oc->plain_addr = (int)oc->addr_next;
	}
	smtp_client_abort(oc->smtp, SMTP_CLIENT_ABORT_TLS, &ev);
	out_event(w, oc, &ev);
}

/* The 220 to our STARTTLS came: the handshake starts (anything after the 220 was dropped). */
static void
out_starttls(struct worker *w, struct oconn *oc)
{
	enum tls_verify verify = TLS_VERIFY_NONE;
	struct tls_dane_record dane[DNS_TLSA_MAX];
	unsigned ndane = 0;

	if (oc->tls_policy == CONFIG_OUT_TLS_VERIFY)
		verify = TLS_VERIFY_CHAIN;
	if (oc->tls_policy == CONFIG_OUT_TLS_DANE && oc->tlsa_secure &&
	    oc->tlsa_host == oc->addr_host[oc->addr_next - 1]) {
		for (unsigned i = 0; i < oc->tlsa_count; i++) {
			const struct dns_tlsa *t = &oc->tlsa[i];
			dane[ndane] = (struct tls_dane_record){.usage = t->usage,
			                                       .selector = t->selector,
			                                       .mtype = t->mtype,
			                                       .len = t->data_len};
			memcpy(dane[ndane++].data, t->data, t->data_len);
		}
		verify = TLS_VERIFY_DANE;
	}
	struct tls_client_params p = {
	    .server_name = out_peer_name(oc),
	    .session_key = oc->peer_text,
	    .verify = verify,
	    .dane = dane,
	    .dane_count = ndane,
	};
	struct tls_conn *tls = tls_conn_client(w->tls_client, &p);
	if (tls == NULL) {
		struct smtp_client_event ev;
		smtp_client_abort(oc->smtp, SMTP_CLIENT_ABORT_TLS, &ev);
		out_event(w, oc, &ev);
		return;
	}
	transport_start_tls(&w->io, &oc->t, tls);
	oc->deadline_ms = w->now_ms + TLS_HANDSHAKE_TIMEOUT_MS;
	if (oc->t.error != NULL)
		out_tls_failed(w, oc);
}

static void
out_ev_secured(void *owner)
{
	struct oconn *oc = owner;
	struct worker *w = oc->w;
	char text[96];

	oc->tls_auth = tls_auth_name(tls_conn_auth(oc->t.tls));
	w->stats.tls_out_handshakes++;
	transport_tls_text(&oc->t, text, sizeof(text));
	struct log_line *l = log_begin(CONFIG_LOG_DEBUG, NULL, "tls-out");
	log_str(l, "dest", oc->dest->route.key);
	log_str(l, "addr", oc->peer_text);
	log_str(l, "tls", text);
	log_str(l, "auth", oc->tls_auth);
	log_str(l, "resumed", tls_conn_resumed(oc->t.tls) ? "yes" : "no");
	log_end(l);
	oc->deadline_ms = w->now_ms + OUT_REPLY_TIMEOUT_MS;
	smtp_client_tls_done(oc->smtp);
	out_flush(w, oc);
}

static void
out_lost(struct worker *w, struct oconn *oc)
{
	struct smtp_client_event ev;

	if (oc->t.handshaking) {
		out_tls_failed(w, oc);
		return;
	}
	smtp_client_abort(oc->smtp, SMTP_CLIENT_ABORT_LOST, &ev);
	out_event(w, oc, &ev);
}

static void
out_on_send(struct worker *w, struct oconn *oc, int res)
{
	ssize_t sent = transport_on_send(&w->io, &oc->t, res);

	if (oc->closing)
		return;
	if (sent < 0) {
		out_lost(w, oc);
		return;
	}
	if (sent > 0)
		smtp_client_output_consume(oc->smtp, (size_t)sent);
	if (!smtp_client_input_blocked(oc->smtp) && oc->stash_len > 0) {
		uint8_t *held = oc->stash;
		size_t len = oc->stash_len;
		oc->stash = NULL;
		oc->stash_len = 0;
		out_feed(w, oc, held, len);
		free(held);
		return;
	}
	out_flush(w, oc);
}

static void
out_on_connect(struct worker *w, struct oconn *oc, int res)
{
	if (oc->closing)
		return;
	oc->connecting = false;
	if (res < 0) {
		out_conn_failed(w, oc, strerror(-res));
		return;
	}
	oc->deadline_ms = w->now_ms + OUT_REPLY_TIMEOUT_MS;
	transport_arm_recv(&w->io, &oc->t);
}

static void
out_ev_input(void *owner, const uint8_t *in, size_t len)
{
	struct oconn *oc = owner;

	out_feed(oc->w, oc, in, len);
}

/* Closed, or moved on to its next address: the rest was the old peer's. */
static bool
out_ev_gone(void *owner)
{
	const struct oconn *oc = owner;

	return oc->closing || oc->gen != oc->feed_gen;
}

static const struct transport_events out_events = {
    .secured = out_ev_secured,
    .input = out_ev_input,
    .gone = out_ev_gone,
};

static void
out_on_recv(struct worker *w, struct oconn *oc, int res, unsigned flags)
{
	oc->feed_gen = oc->gen;
	if (!transport_on_recv(&w->io, &oc->t, res, flags, &out_events, oc) && !out_ev_gone(oc))
		out_lost(w, oc);
}

void
out_on_cqe(struct worker *w, enum worker_op op, uint64_t ud, int res, unsigned flags)
{
	if (op == OP_DNS) {
		dns_process(w->dns);
		out_dns_pump(w);
		if (!(flags & IORING_CQE_F_MORE)) {
			struct io_uring_sqe *sqe = ring_sqe(&w->io.ring);
			io_uring_prep_poll_multishot(sqe, dns_fd(w->dns), POLLIN);
			io_uring_sqe_set_data64(sqe, ud_pack(OP_DNS, 0, 0));
		}
		return;
	}
	struct oconn *oc = oconn_from(w, ud);

	if (!oconn_current(oc, ud)) {
		if (flags & IORING_CQE_F_BUFFER)
			transport_return_buffer(&w->io, flags >> IORING_CQE_BUFFER_SHIFT);
		if (!(flags & IORING_CQE_F_MORE))
			oconn_op_done(w, oc);
		return;
	}
	switch (op) {
	case OP_OUT_CONNECT:
		out_on_connect(w, oc, res);
		break;
	case OP_OUT_RECV:
		out_on_recv(w, oc, res, flags);
		if (flags & IORING_CQE_F_MORE)
			return;
		break;
	case OP_OUT_SEND:
		out_on_send(w, oc, res);
		break;
	default:
		assert(!"not an outbound operation");
	}
	oconn_op_done(w, oc);
}

/* ---- transactions -------------------------------------------------------------------- */

static void out_next(struct worker *w, struct oconn *oc);

/* The results of a transaction's job, as the engine gives them; the job is over. */
static void
out_txn_done(struct worker *w, struct oconn *oc, struct out_txn *t,
             const struct smtp_client_reply *results, unsigned n)
{
	struct sched_job *job = t->job;
	struct queue_message *m = queue_find(w->queue, job->id);
	struct out_result *res = calloc(job->rcpt_count, sizeof(*res));
	const char *relay =
	    oc->addr_next > 0 ? oc->hosts[oc->addr_host[oc->addr_next - 1]] : oc->dest->route.host;

	assert(n == job->rcpt_count);
	out_txn_clear(t);
	if (m != NULL && res != NULL) {
		for (unsigned i = 0; i < n; i++) {
			m->rcpts[job->rcpt[i]].next_attempt_ms = 0;
			res[i] = (struct out_result){.idx = job->rcpt[i],
			                             .code = results[i].code,
			                             .status = results[i].status,
			                             .text = results[i].text,
			                             .relay = relay,
			                             .addr = oc->peer_text,
			                             .tls = oc->tls_auth};
		}
		out_results(w, m, res, n, (smtp_client_caps(oc->smtp) & SMTP_CLIENT_CAP_DSN) != 0);
	}
	free(res);
	free(job);
	oc->messages++;
}

/* The oldest transaction in flight ended with these results. */
static void
out_head_done(struct worker *w, struct oconn *oc, const struct smtp_client_event *ev)
{
	struct out_txn *t = &oc->txns[oc->txn_head];

	assert(oc->txn_count > 0);
	oc->txn_head = (oc->txn_head + 1) % OUT_TXN_WINDOW;
	oc->txn_count--;
	out_txn_done(w, oc, t, ev->results, ev->rcpt_count);
}

/*
 * A session that failed temporarily (421, lost, timed out) with transactions in flight:
 * while the connection has another address (the next MX), it keeps their jobs and moves
 * on to it in this same attempt, where they go first. False when there is nowhere to go:
 * the caller defers them.
 */
static bool
out_fallback(struct worker *w, struct oconn *oc, const char *why)
{
	struct sched_dest *d = oc->dest;

	if (!oc->session_ok || why[0] != '4' || w->stopping || oc->addr_next >= oc->addr_count)
		return false;
	for (unsigned k = oc->txn_count; k-- > 0;) { /* newest first onto the list: order kept */
		struct out_txn *t = &oc->txns[(oc->txn_head + k) % OUT_TXN_WINDOW];
		t->job->next = oc->held;
		oc->held = t->job;
		out_txn_clear(t);
	}
	oc->txn_count = 0;
	struct log_line *l = log_begin(CONFIG_LOG_WARNING, NULL, "next-address");
	log_str(l, "dest", d->route.key);
	log_str(l, "addr", oc->peer_text);
	log_str(l, "reason", why);
	log_end(l);
	/* a fresh connection again: it counts as opening until its session is ready */
	oc->session_ok = false;
	oc->messages = 0;
	d->opening++;
	out_conn_failed(w, oc, why);
	return true;
}

/* A failed session: every transaction in flight gets its results, then the connection closes. */
static void
out_session_failed(struct worker *w, struct oconn *oc, const struct smtp_client_event *ev)
{
	const char *why = ev->reply != NULL ? ev->reply->text : "451 4.4.2 failed";

	if (oc->txn_count == 0 && !oc->session_ok) {
		out_conn_failed(w, oc, why);
		return;
	}
	if (oc->txn_count > 0 && out_fallback(w, oc, why))
		return;
	if (oc->txn_count > 0 && ev->results != NULL) {
		struct smtp_client_event more = *ev;
		do {
			out_head_done(w, oc, &more);
			smtp_client_next_failed(oc->smtp, &more);
		} while (more.type == SMTP_CLIENT_EV_FAILED && oc->txn_count > 0);
	}
	oconn_close(w, oc, why);
}

static void
out_event(struct worker *w, struct oconn *oc, const struct smtp_client_event *ev)
{
	switch (ev->type) {
	case SMTP_CLIENT_EV_READY:
		oc->session_ok = true;
		oc->dest->opening--;
		sched_dest_ok(oc->dest);
		out_next(w, oc);
		break;
	case SMTP_CLIENT_EV_TXN_DONE:
		out_head_done(w, oc, ev);
		out_next(w, oc);
		break;
	case SMTP_CLIENT_EV_FAILED:
		out_session_failed(w, oc, ev);
		break;
	case SMTP_CLIENT_EV_CLOSED:
		oconn_close(w, oc, "451 4.4.2 closed");
		break;
	case SMTP_CLIENT_EV_STARTTLS:
		out_starttls(w, oc);
		break;
	case SMTP_CLIENT_EV_NONE:
		break;
	}
}

/* Every recipient of a transaction that could not be sent gets a made-up 554. */
static void
out_txn_unsendable(struct worker *w, struct oconn *oc, struct out_txn *t, int err)
{
	unsigned n = t->job->rcpt_count;
	struct smtp_client_reply *fail = calloc(n, sizeof(*fail));
	char text[128];

	snprintf(text, sizeof(text), "554 5.3.0 cannot send this message: %s", strerror(-err));
	for (unsigned i = 0; fail != NULL && i < n; i++) {
		fail[i].code = 554;
		snprintf(fail[i].status, sizeof(fail[i].status), "5.3.0");
		snprintf(fail[i].text, sizeof(fail[i].text), "%s", text);
	}
	if (fail != NULL) {
		out_txn_done(w, oc, t, fail, n);
	} else {
		out_fail_job(w, t->job, 451, "451 4.3.0 out of memory", NULL);
		out_txn_clear(t);
	}
	free(fail);
}

/* The engine's view of the job's message: recipients with their DSN requests. */
static bool
out_txn_rcpts(struct out_txn *t, const struct queue_message *m)
{
	const struct sched_job *job = t->job;

	if (job->rcpt_count > t->rcpt_cap) {
		struct smtp_client_rcpt *rc = realloc(t->rcpts, job->rcpt_count * sizeof(*rc));
		if (rc == NULL)
			return false;
		t->rcpts = rc;
		struct out_rcpt_dsn *dsn = realloc(t->rcpt_dsn, job->rcpt_count * sizeof(*dsn));
		if (dsn == NULL)
			return false;
		t->rcpt_dsn = dsn;
		t->rcpt_cap = job->rcpt_count;
	}
	/* DSN requests go on as received; smtp_client sends them only to a peer with DSN */
	for (unsigned i = 0; i < job->rcpt_count; i++) {
		const struct queue_rcpt *r = &m->rcpts[job->rcpt[i]];
		struct out_rcpt_dsn *dsn = &t->rcpt_dsn[i];
		t->rcpts[i] = (struct smtp_client_rcpt){
		    .address = r->address,
		    .notify = out_param(r->params, "NOTIFY", dsn->notify, sizeof(dsn->notify))
		                  ? dsn->notify
		                  : NULL,
		    .orcpt = out_param(r->params, "ORCPT", dsn->orcpt, sizeof(dsn->orcpt))
		                 ? dsn->orcpt
		                 : NULL,
		};
	}
	return true;
}

/* Hands the job to the engine in the next free transaction slot; it is finished if it can't go. */
static void
out_start(struct worker *w, struct oconn *oc, struct sched_job *job)
{
	struct queue_message *m = queue_find(w->queue, job->id);
	struct out_txn *t = &oc->txns[(oc->txn_head + oc->txn_count) % OUT_TXN_WINDOW];
	struct smtp_client_event ev = {0};

	assert(oc->txn_count < OUT_TXN_WINDOW);
	if (m == NULL) { /* deleted meanwhile */
		free(job);
		return;
	}
	t->job = job;
	const uint8_t *body = store_body(w->store, m, &t->body);
	if (body == NULL || !out_txn_rcpts(t, m)) {
		out_fail_job(w, job, 451, "451 4.3.0 cannot read the message back", NULL);
		out_txn_clear(t);
		return;
	}
	struct smtp_client_txn tx = {
	    .sender = m->sender,
	    .ret = out_param(m->sender_params, "RET", t->ret, sizeof(t->ret)) ? t->ret : NULL,
	    .envid =
	        out_param(m->sender_params, "ENVID", t->envid, sizeof(t->envid)) ? t->envid : NULL,
	    .rcpts = t->rcpts,
	    .rcpt_count = job->rcpt_count,
	    .body = body,
	    .body_len = m->body_len,
	    .body_8bit = out_param(m->sender_params, "BODY", t->body_type, sizeof(t->body_type)) &&
	                 strcmp(t->body_type, "8BITMIME") == 0,
	    .smtputf8 = out_param(m->sender_params, "SMTPUTF8", NULL, 0),
	};
	int r = smtp_client_send(oc->smtp, &tx, &ev);
	if (r != 0)
		out_txn_unsendable(w, oc, t, r);
	else if (ev.type == SMTP_CLIENT_EV_TXN_DONE)
		out_txn_done(w, oc, t, ev.results, ev.rcpt_count);
	else
		oc->txn_count++;
}

static void
out_quit(struct worker *w, struct oconn *oc)
{
	oconn_unidle(oc);
	oc->deadline_ms = w->now_ms + OUT_REPLY_TIMEOUT_MS;
	if (smtp_client_quit(oc->smtp) == 0)
		out_flush(w, oc);
	else
		oconn_close(w, oc, "451 4.4.2 closed");
}

/*
 * The connection can take work: jobs of its destination while the engine has room
 * (one at a time with DATA, a window with BDAT); with nothing in flight it goes idle,
 * or says QUIT when it has done its share or the worker stops.
 */
static void
out_next(struct worker *w, struct oconn *oc)
{
	struct sched_dest *d = oc->dest;
	unsigned max = w->cfg->outbound_max_messages_per_connection;

	while (oc->messages + oc->txn_count < max && !w->stopping &&
	       smtp_client_can_send(oc->smtp)) {
		struct sched_job *job = oc->held;
		if (job != NULL)
			oc->held = job->next;
		else if ((job = sched_job_take(d)) == NULL)
			break;
		out_start(w, oc, job);
	}
	if (oc->txn_count > 0) {
		out_flush(w, oc);
	} else if (oc->messages < max && !w->stopping) {
		oc->next_idle = d->idle;
		d->idle = oc;
		oc->deadline_ms = w->now_ms + OUT_IDLE_MS;
	} else {
		out_quit(w, oc);
	}
}

/* End of a turn: runnable destinations get idle connections, then new ones. */
void
out_dispatch(struct worker *w)
{
	struct sched_dest *d;

	while ((d = sched_runnable_take(w->sched)) != NULL) {
		if (d->jobs == 0)
			continue;
		if (sched_dest_down(d, w->now_ms)) {
			out_fail_dest(w, d, 451, d->down_reason, NULL);
			continue;
		}
		while (d->jobs > 0 && d->idle != NULL) {
			struct oconn *oc = d->idle;
			d->idle = oc->next_idle;
			oc->next_idle = NULL;
			out_next(w, oc);
		}
		while (d->jobs > d->opening && w->ofree_count > 0 && !w->stopping) {
			if (!out_open(w, d))
				break;
		}
	}
}

/* ---- time ---------------------------------------------------------------------------- */

static void
out_expire_conn(struct worker *w, struct oconn *oc)
{
	struct smtp_client_event ev;

	if (oc->dns_id != 0) {
		out_conn_failed(w, oc, "the DNS lookup took too long");
	} else if (oc->connecting) {
		out_conn_failed(w, oc, "connection timed out");
	} else if (oc->txn_count == 0 && smtp_client_state(oc->smtp) == SMTP_CLIENT_READY) {
		out_quit(w, oc); /* idle for OUT_IDLE_MS */
	} else {
		smtp_client_abort(oc->smtp, SMTP_CLIENT_ABORT_TIMEOUT, &ev);
		if (ev.type != SMTP_CLIENT_EV_NONE)
			out_event(w, oc, &ev); /* closes, or moves on to the next address */
		else
			oconn_close(w, oc, "451 4.4.2 timed out");
	}
}

void
out_tick(struct worker *w)
{
	uint64_t ids[OUT_DUE_BATCH];
	size_t n;

	for (size_t i = 0; i < w->blocked_count; i++)
		sched_runnable_put(w->sched, w->blocked[i]);
	w->blocked_count = 0;
	do {
		n = sched_due(w->sched, w->wall_ms, ids, OUT_DUE_BATCH);
		for (size_t i = 0; i < n; i++) {
			struct queue_message *m = queue_find(w->queue, ids[i]);
			if (m != NULL)
				out_schedule(w, m);
		}
	} while (n == OUT_DUE_BATCH);
	/* stopping: a transaction still running when the grace period ends is cut short */
	bool grace_over = w->stopping && w->now_ms >= w->stop_deadline_ms;
	for (unsigned i = 0; i < OUT_CONN_MAX; i++) {
		struct oconn *oc = &w->oconns[i];
		if (!oc->used || oc->closing)
			continue;
		if (grace_over)
			oconn_close(w, oc, "451 4.3.2 shutting down"); /* its job is deferred */
		else if (w->now_ms >= oc->deadline_ms)
			out_expire_conn(w, oc);
	}
}

/* On stop: idle connections say QUIT now; busy ones do after their transaction. */
void
out_stop(struct worker *w)
{
	for (unsigned i = 0; i < OUT_CONN_MAX; i++) {
		struct oconn *oc = &w->oconns[i];
		if (oc->used && !oc->closing && oc->txn_count == 0 && oc->smtp != NULL &&
		    smtp_client_state(oc->smtp) == SMTP_CLIENT_READY)
			out_quit(w, oc);
	}
}

bool
out_idle(const struct worker *w)
{
	return w->ofree_count == OUT_CONN_MAX;
}

/* ---- compaction ---------------------------------------------------------------------- */

/* ---- ringmxctl resolve ----------------------------------------------------------------- */

/* One diagnostic lookup: the next hops of a domain, then each host's TLSA. */
struct out_resolve {
	struct worker *w;
	struct control_request *r;
	struct dns_mx_result mx;
	struct dns_tlsa_result tlsa[DNS_MX_MAX];
	unsigned pending;
};

static void
out_resolve_print(struct out_resolve *q)
{
	const struct dns_mx_result *mx = &q->mx;
	struct strbuf *sb = &q->r->out;
	static const char *const status[] = {
	    [DNS_OK] = "ok", [DNS_TEMPFAIL] = "tempfail", [DNS_PERMFAIL] = "permfail"};

	strbuf_printf(sb, "domain %s status %s dnssec %s mx-dnssec %s%s\n", q->r->arg,
	              status[mx->status], dns_security_name(mx->security),
	              dns_security_name(mx->mx_security), mx->implicit ? " (implicit MX)" : "");
	if (mx->reason[0])
		strbuf_printf(sb, "reason %s\n", mx->reason);
	for (unsigned h = 0; h < mx->host_count; h++) {
		const struct dns_host *host = &mx->hosts[h];
		strbuf_printf(sb, "mx %u %s dnssec %s addresses", host->pref, host->name,
		              dns_security_name(host->security));
		for (unsigned a = 0; a < host->addr_count; a++) {
			char text[INET6_ADDRSTRLEN];
			inet_ntop(host->addrs[a].family, host->addrs[a].bytes, text, sizeof(text));
			strbuf_printf(sb, " %s", text);
		}
		if (host->addr_count == 0)
			strbuf_puts(sb, " none (not used)");
		const struct dns_tlsa_result *t = &q->tlsa[h];
		strbuf_printf(sb, "\n  tlsa _%u._tcp.%s dnssec %s:", q->w->cfg->outbound_port,
		              host->name, dns_security_name(t->security));
		for (unsigned i = 0; i < t->count; i++) {
			strbuf_printf(sb, " %u %u %u ", t->records[i].usage, t->records[i].selector,
			              t->records[i].mtype);
			for (unsigned k = 0; k < t->records[i].data_len; k++)
				strbuf_printf(sb, "%02x", t->records[i].data[k]);
		}
		strbuf_printf(sb, "%s%s\n", t->count == 0 ? " none " : "",
		              t->count == 0 ? t->reason : "");
	}
}

static void
out_resolve_step(struct out_resolve *q)
{
	if (--q->pending > 0)
		return;
	pthread_mutex_lock(&q->r->lock);
	q->r->found = true;
	out_resolve_print(q);
	pthread_mutex_unlock(&q->r->lock);
	control_request_answered(q->r);
	free(q);
}

struct out_resolve_tlsa {
	struct out_resolve *q;
	unsigned host;
};

static void
out_resolve_tlsa_done(void *arg, const struct dns_tlsa_result *t)
{
	struct out_resolve_tlsa *qt = arg;

	qt->q->tlsa[qt->host] = *t;
	out_resolve_step(qt->q);
	free(qt);
}

static void
out_resolve_mx_done(void *arg, const struct dns_mx_result *mx)
{
	struct out_resolve *q = arg;

	q->mx = *mx;
	for (unsigned h = 0; h < mx->host_count; h++) {
		struct out_resolve_tlsa *qt = malloc(sizeof(*qt));
		if (qt == NULL)
			continue;
		*qt = (struct out_resolve_tlsa){.q = q, .host = h};
		snprintf(q->tlsa[h].reason, sizeof(q->tlsa[h].reason), "not looked up");
		q->pending++;
		if (dns_resolve_tlsa(q->w->dns, mx->hosts[h].name, q->w->cfg->outbound_port,
		                     out_resolve_tlsa_done, qt) < 0) {
			q->pending--;
			free(qt);
		}
	}
	out_resolve_step(q);
}

/* Starts the lookup; the request is answered from the resolver's callbacks. */
void
out_resolve(struct worker *w, struct control_request *r)
{
	struct out_resolve *q = calloc(1, sizeof(*q));

	if (q != NULL) {
		*q = (struct out_resolve){.w = w, .r = r, .pending = 1};
		if (dns_resolve_mx(w->dns, r->arg, out_resolve_mx_done, q) > 0)
			return;
		free(q);
	}
	pthread_mutex_lock(&r->lock);
	strbuf_printf(&r->out, "domain %s: cannot look it up\n", r->arg);
	r->found = true;
	pthread_mutex_unlock(&r->lock);
	control_request_answered(r);
}
