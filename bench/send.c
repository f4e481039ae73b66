#include "bench/send.h"

#include "bench/hist.h"
#include "bench/msggen.h"
#include "bench/reply.h"
#include "bench/report.h"
#include "bench/ring.h"
#include "tls/tls.h"

#include <assert.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

/* Queued writes per connection: a transaction queues at most 4 (RSET, commands, BDAT line with
 * headers, body), and the send completion of the one before can trail its last reply. */
#define SEND_IOV_MAX           8
#define SEND_RETRY_MAX         3  /* consecutive failures before a connection slot gives up */
#define SEND_CONNECT_TIMEOUT_S 10 /* connect() bound, below the kernel's SYN retry time */
#define SEND_TICK_NS           100000000ull
#define SEND_FAIL_TEXT_MAX     160
#define SEND_BDAT_CMD_MAX      32 /* "BDAT <n> LAST\r\n": 20 digits hold any size_t */
#define SEND_FINAL_DOT_LEN     3  /* the ".\r\n" ending msggen's body: DATA framing, not content */
#define SEND_EHLO              "EHLO ringmx-bench.test\r\n"
#define SEND_HELO              "HELO ringmx-bench.test\r\n"

enum send_state {
	SEND_CONNECTING,
	SEND_GREETING,
	SEND_EHLO_WAIT,
	SEND_HELO_WAIT,
	SEND_STARTTLS_WAIT,
	SEND_HANDSHAKE, /* TLS: ciphertext goes through the adapter until it is done */
	SEND_SCHEDULED, /* --rate: waiting for this message's start time */
	SEND_TXN,       /* MAIL, RCPTs, DATA written; their replies pending */
	SEND_BODY,      /* body written; final reply pending */
	SEND_QUIT,
	SEND_CLOSING, /* shut down; waiting for outstanding ops */
	SEND_DEAD,
};

enum send_op { SEND_OP_CONNECT = 1, SEND_OP_RECV, SEND_OP_SEND, SEND_OP_LTIMEOUT };

struct send_conn {
	int fd;
	unsigned slot;
	unsigned gen;
	unsigned pending; /* ops in flight; the slot is reused only at zero */
	enum send_state state;
	int pipelining;
	int chunking;
	int starttls_offered;
	int recycle;           /* QUIT because of --messages-per-connection: connect again */
	int seq_reserved;      /* seq is taken for the next connection's first transaction */
	unsigned msgs_on_conn; /* transactions begun on this connection */
	struct tls_conn *tls;  /* NULL on plaintext connections */
	uint64_t t_hs_ns;
	int bdat_txn;   /* this transaction goes as BDAT <n> LAST: its reply is the final one */
	unsigned fails; /* consecutive failures */
	unsigned stage; /* replies seen in the transaction: MAIL, RCPT 1..R, DATA or BDAT */
	unsigned rcpt_ok;
	int fail_code; /* first non-2xx reply to MAIL or RCPT */
	int need_rset; /* the last transaction ended without DATA */
	int rset_wait; /* the RSET reply comes first */
	uint64_t seq;
	uint64_t t_start_ns;
	uint64_t t_data_end_ns;
	int sending;
	int sending_tls; /* the send in flight is the adapter's ciphertext, not the iovs */
	unsigned iov_head;
	unsigned iov_n;
	struct iovec iov[SEND_IOV_MAX];
	struct msghdr mh;
	struct __kernel_timespec connect_timeout;
	char fail_text[SEND_FAIL_TEXT_MAX];
	struct reply_parser rp;
	size_t msg_len; /* bytes of the message, as counted in "bytes" when delivered */
	char hdr[SEND_BDAT_CMD_MAX + MSGGEN_HEADER_MAX]; /* BDAT keeps its command line in front */
};

struct send_shared {
	const struct send_opts *o;
	struct msggen gen;
	char *cmds;      /* "MAIL FROM:<..>\r\nRCPT TO:<..>\r\n...DATA\r\n", same for all */
	size_t *cmd_off; /* rcpts + 3 offsets: command i is cmds[cmd_off[i] .. cmd_off[i+1]) */
	uint64_t next_seq;
	uint64_t t0_ns;
	uint64_t deadline_ns;
	int connected; /* some connection got established */
	struct report_errors errors;
};

struct send_counts {
	uint64_t ok;
	uint64_t tempfail;
	uint64_t permfail;
	uint64_t lost; /* in flight when their connection failed or time ran out */
	uint64_t conn_errors;
	uint64_t rcpt_tempfail;
	uint64_t rcpt_permfail;
	uint64_t bytes; /* message bytes delivered */
	uint64_t connections_opened;
	uint64_t handshakes;
	uint64_t handshakes_resumed;
};

struct send_thread {
	struct send_shared *sh;
	pthread_t tid;
	struct ring ring;
	struct send_conn *conns;
	unsigned nconns;
	unsigned live;
	int done;
	int timed_out;
	struct send_counts st; /* updated with relaxed atomics: read for progress */
	uint64_t t_last_ns;
	struct hist lat_data;
	struct hist lat_txn;
	struct hist lat_hs;
	struct tls_client *tls; /* per thread: adapter contexts are not shared */
	time_t date_sec;
	char date[64];
	uint8_t plain[RING_BUF_SIZE]; /* replies decrypted from one receive */
};

#define STAT_ADD(t, field, n) __atomic_fetch_add(&(t)->st.field, (n), __ATOMIC_RELAXED)

static void conn_close(struct send_thread *t, struct send_conn *c);
static void conn_connect(struct send_thread *t, struct send_conn *c);

static uint64_t
send_ud(const struct send_conn *c, enum send_op op)
{
	return ring_ud(op, c->slot, c->gen);
}

static void
conn_fail(struct send_thread *t, struct send_conn *c, const char *reason)
{
	if (c->state == SEND_CLOSING || c->state == SEND_DEAD)
		return;
	if (c->state == SEND_QUIT) { /* the server may close before our QUIT arrives */
		conn_close(t, c);
		return;
	}
	if (c->state == SEND_TXN || c->state == SEND_BODY)
		STAT_ADD(t, lost, 1);
	STAT_ADD(t, conn_errors, 1);
	report_errors_note(&t->sh->errors, reason);
	c->fails++;
	conn_close(t, c);
}

/* Feeds the queued plaintext to the adapter; 0, or -1 when the connection failed. */
static int
conn_encrypt(struct send_thread *t, struct send_conn *c)
{
	char why[TLS_ERROR_LEN + 16];

	while (c->iov_head < c->iov_n) {
		struct iovec *v = &c->iov[c->iov_head];
		ssize_t n = tls_conn_write(c->tls, v->iov_base, v->iov_len);

		if (n < 0) {
			snprintf(why, sizeof(why), "TLS write: %s", tls_conn_error(c->tls));
			conn_fail(t, c, why);
			return -1;
		}
		if ((size_t)n < v->iov_len) { /* TLS_OUT_MAX waits: the rest after this send */
			v->iov_base = (char *)v->iov_base + n;
			v->iov_len -= (size_t)n;
			return 0;
		}
		c->iov_head++;
	}
	return 0;
}

/* Plaintext is encrypted only while no send is in flight, so the adapter never appends to
 * (or moves) the ciphertext the kernel is reading; what queues meanwhile leaves together in
 * the next send. */
static void
conn_kick_tls(struct send_thread *t, struct send_conn *c)
{
	struct io_uring_sqe *sqe;
	const uint8_t *out;
	size_t len;

	if (c->sending)
		return;
	if (tls_conn_established(c->tls) && conn_encrypt(t, c) < 0)
		return;
	out = tls_conn_out(c->tls, &len);
	if (len == 0)
		return;
	sqe = ring_sqe(&t->ring);
	io_uring_prep_send(sqe, c->fd, out, len, MSG_NOSIGNAL);
	io_uring_sqe_set_data64(sqe, send_ud(c, SEND_OP_SEND));
	c->sending = c->sending_tls = 1;
	c->pending++;
}

static void
conn_kick(struct send_thread *t, struct send_conn *c)
{
	struct io_uring_sqe *sqe;

	if (c->tls) {
		conn_kick_tls(t, c);
		return;
	}
	if (c->sending || c->iov_head == c->iov_n)
		return;
	memset(&c->mh, 0, sizeof(c->mh));
	c->mh.msg_iov = c->iov + c->iov_head;
	c->mh.msg_iovlen = c->iov_n - c->iov_head;
	sqe = ring_sqe(&t->ring);
	io_uring_prep_sendmsg(sqe, c->fd, &c->mh, MSG_NOSIGNAL);
	io_uring_sqe_set_data64(sqe, send_ud(c, SEND_OP_SEND));
	c->sending = 1;
	c->sending_tls = 0;
	c->pending++;
}

/* Queues bytes without sending: what is queued before one conn_kick leaves in one sendmsg. */
static void
conn_queue(struct send_conn *c, const void *p, size_t len)
{
	if (c->iov_head == c->iov_n)
		c->iov_head = c->iov_n = 0;
	assert(c->iov_n < SEND_IOV_MAX);
	c->iov[c->iov_n].iov_base = (void *)p;
	c->iov[c->iov_n].iov_len = len;
	c->iov_n++;
}

static void
conn_write(struct send_thread *t, struct send_conn *c, const void *p, size_t len)
{
	conn_queue(c, p, len);
	conn_kick(t, c);
}

static void
send_on_sent(struct send_thread *t, struct send_conn *c, int res)
{
	size_t left = res > 0 ? (size_t)res : 0;

	c->sending = 0;
	if (res < 0) {
		conn_fail(t, c,
		          res == -EPIPE || res == -ECONNRESET ? "connection closed by server"
		                                              : "send failed");
		return;
	}
	if (c->sending_tls) {
		tls_conn_out_consume(c->tls, left);
	} else {
		while (c->iov_head < c->iov_n && left >= c->iov[c->iov_head].iov_len)
			left -= c->iov[c->iov_head++].iov_len;
		if (c->iov_head < c->iov_n) {
			c->iov[c->iov_head].iov_base = (char *)c->iov[c->iov_head].iov_base + left;
			c->iov[c->iov_head].iov_len -= left;
		}
	}
	conn_kick(t, c); /* the rest; after STARTTLS, the first handshake flight */
	/* Nothing left to send: the message's last byte is on the wire. */
	if (!c->sending && (c->state == SEND_BODY || (c->state == SEND_TXN && c->bdat_txn)) &&
	    c->t_data_end_ns == 0)
		c->t_data_end_ns = ring_now_ns();
}

static const char *
send_date(struct send_thread *t)
{
	time_t now = time(NULL);

	if (now != t->date_sec) {
		t->date_sec = now;
		msggen_date(t->date, sizeof(t->date));
	}
	return t->date;
}

/* MAIL, RCPTs, "BDAT <n> LAST" and the message itself, unstuffed and without the final dot:
 * queued together so that they leave in one write. */
static void
txn_queue_bdat(struct send_thread *t, struct send_conn *c)
{
	const struct send_shared *sh = t->sh;
	char *hdr = c->hdr + SEND_BDAT_CMD_MAX, cmd[SEND_BDAT_CMD_MAX + 1];
	size_t hlen = msggen_header(&sh->gen, hdr, c->seq, send_date(t));
	int n;

	c->msg_len = hlen + sh->gen.body_len - SEND_FINAL_DOT_LEN;
	n = snprintf(cmd, sizeof(cmd), "BDAT %zu LAST\r\n", c->msg_len);
	assert(n > 0 && n <= SEND_BDAT_CMD_MAX);
	memcpy(hdr - n, cmd, (size_t)n);
	conn_queue(c, sh->cmds, sh->cmd_off[sh->o->rcpts + 1]);
	conn_queue(c, hdr - n, hlen + (size_t)n);
	conn_queue(c, sh->gen.body, sh->gen.body_len - SEND_FINAL_DOT_LEN);
}

static void
txn_begin(struct send_thread *t, struct send_conn *c)
{
	const struct send_shared *sh = t->sh;
	size_t end = c->pipelining ? sh->cmd_off[sh->o->rcpts + 2] : sh->cmd_off[1];

	c->state = SEND_TXN;
	c->stage = 0;
	c->rcpt_ok = 0;
	c->fail_code = 0;
	c->t_data_end_ns = 0;
	c->bdat_txn = sh->o->bdat && c->chunking && c->pipelining;
	if (c->need_rset) {
		c->need_rset = 0;
		c->rset_wait = 1;
		conn_queue(c, "RSET\r\n", 6);
		if (!c->pipelining) {
			conn_kick(t, c);
			return;
		}
	}
	if (c->bdat_txn)
		txn_queue_bdat(t, c);
	else
		conn_queue(c, sh->cmds, end);
	conn_kick(t, c);
}

/* Takes the next message number, or sends QUIT when all are taken. Under --rate a message
 * starts at its scheduled time, and latency counts from then, so a slow server can't hide
 * its queueing delay (no coordinated omission). */
static void
txn_next(struct send_thread *t, struct send_conn *c)
{
	const struct send_opts *o = t->sh->o;
	uint64_t seq =
	    c->seq_reserved ? c->seq : __atomic_fetch_add(&t->sh->next_seq, 1, __ATOMIC_RELAXED);
	uint64_t now = ring_now_ns();

	c->seq_reserved = 0;
	if (seq >= o->messages) {
		c->state = SEND_QUIT;
		conn_write(t, c, "QUIT\r\n", 6);
		return;
	}
	/* The message is taken before reconnecting, so a new connection is opened only for a
	 * message that it will send: --messages-per-connection 1 opens exactly N. */
	if (o->per_connection && c->msgs_on_conn >= o->per_connection) {
		c->seq = seq;
		c->seq_reserved = 1;
		c->recycle = 1;
		c->state = SEND_QUIT;
		conn_write(t, c, "QUIT\r\n", 6);
		return;
	}
	c->msgs_on_conn++;
	c->seq = seq;
	c->t_start_ns = now;
	if (o->rate > 0) {
		c->t_start_ns = t->sh->t0_ns + (uint64_t)((double)seq * 1e9 / o->rate);
		if (c->t_start_ns > now) {
			c->state = SEND_SCHEDULED;
			return;
		}
	}
	txn_begin(t, c);
}

static void
txn_finish(struct send_thread *t, struct send_conn *c, int code, const char *line)
{
	uint64_t now = ring_now_ns();

	hist_record(&t->lat_txn, (now - c->t_start_ns) / 1000);
	if (c->t_data_end_ns)
		hist_record(&t->lat_data, (now - c->t_data_end_ns) / 1000);
	t->t_last_ns = now;
	if (code / 100 == 2) {
		STAT_ADD(t, ok, 1);
		STAT_ADD(t, bytes, c->msg_len);
	} else {
		if (code / 100 == 4)
			STAT_ADD(t, tempfail, 1);
		else
			STAT_ADD(t, permfail, 1);
		report_errors_note(&t->sh->errors, line);
	}
	c->fails = 0;
	txn_next(t, c);
}

static void
txn_reply(struct send_thread *t, struct send_conn *c, int code, const char *line)
{
	const struct send_shared *sh = t->sh;
	unsigned s;

	if (c->rset_wait) {
		c->rset_wait = 0;
		if (!c->pipelining)
			conn_write(t, c, sh->cmds, sh->cmd_off[1]);
		return;
	}
	s = c->stage++;
	if (s <= sh->o->rcpts) { /* MAIL or a RCPT */
		if (code / 100 == 2) {
			c->rcpt_ok += s > 0;
		} else {
			if (s > 0 && code / 100 == 4)
				STAT_ADD(t, rcpt_tempfail, 1);
			else if (s > 0)
				STAT_ADD(t, rcpt_permfail, 1);
			if (!c->fail_code) {
				c->fail_code = code;
				snprintf(c->fail_text, sizeof(c->fail_text), "%.*s",
				         SEND_FAIL_TEXT_MAX - 1, line);
			}
		}
		if (!c->pipelining)
			conn_write(t, c, sh->cmds + sh->cmd_off[s + 1],
			           sh->cmd_off[s + 2] - sh->cmd_off[s + 1]);
		return;
	}
	if (code == 354 && !c->bdat_txn) {
		size_t hlen = msggen_header(&sh->gen, c->hdr, c->seq, send_date(t));

		c->msg_len = hlen + sh->gen.body_len;
		c->state = SEND_BODY;
		conn_write(t, c, c->hdr, hlen);
		conn_write(t, c, sh->gen.body, sh->gen.body_len);
		return;
	}
	if (c->bdat_txn && code / 100 == 2) {
		txn_finish(t, c, code, line);
		return;
	}
	/* DATA or BDAT refused: servers keep the MAIL state (Postfix does), so the next one
	 * needs RSET. */
	c->need_rset = 1;
	if (c->fail_code)
		txn_finish(t, c, c->fail_code, c->fail_text);
	else
		txn_finish(t, c, code, line);
}

static int
send_ehlo_keyword(const char *kw, const char *want)
{
	size_t n = strlen(want);

	return strncasecmp(kw, want, n) == 0 && (kw[n] == '\0' || kw[n] == ' ');
}

static void
send_on_ehlo_line(struct send_conn *c)
{
	const char *kw = reply_parser_text(&c->rp);

	if (send_ehlo_keyword(kw, "PIPELINING"))
		c->pipelining = 1;
	else if (send_ehlo_keyword(kw, "CHUNKING"))
		c->chunking = 1;
	else if (send_ehlo_keyword(kw, "STARTTLS"))
		c->starttls_offered = 1;
}

/* After the handshake: a greeting to wait for (--tls), or EHLO again (--starttls: the
 * server forgets what was said before, RFC 3207 4.2). */
static void
send_tls_ready(struct send_thread *t, struct send_conn *c)
{
	hist_record(&t->lat_hs, (ring_now_ns() - c->t_hs_ns) / 1000);
	STAT_ADD(t, handshakes, 1);
	if (tls_conn_resumed(c->tls))
		STAT_ADD(t, handshakes_resumed, 1);
	if (t->sh->o->tls) {
		c->state = SEND_GREETING;
		return;
	}
	c->pipelining = c->chunking = c->starttls_offered = 0;
	c->state = SEND_EHLO_WAIT;
	conn_write(t, c, SEND_EHLO, strlen(SEND_EHLO));
}

/* Advances the handshake with what was pushed; -1 when the connection failed. */
static int
send_handshake(struct send_thread *t, struct send_conn *c)
{
	char why[TLS_ERROR_LEN + 32];

	switch (tls_conn_handshake(c->tls)) {
	case TLS_OK:
		send_tls_ready(t, c);
		return 0;
	case TLS_WANT:
		return 0;
	default:
		snprintf(why, sizeof(why), "TLS handshake: %s", tls_conn_error(c->tls));
		conn_fail(t, c, why);
		return -1;
	}
}

/* A new client session. The session is saved under the server address and the connection
 * slot: a later connection of the same slot resumes it (unless --no-resume). One session per
 * slot, not one per server as an MTA keeps, works around the adapter: a cached session is
 * the live session of the connection that saved it, which its NewSessionTicket then changes
 * in place, so a connection starting meanwhile from it gets a ticket that does not match its
 * secret, and the server fails its handshake ("binder does not verify"). The certificate is
 * not checked (verify none). */
static void
send_tls_start(struct send_thread *t, struct send_conn *c)
{
	const struct send_opts *o = t->sh->o;
	char key[TLS_NAME_LEN];
	struct tls_client_params p = {
	    .session_key = o->no_resume ? NULL : key,
	    .verify = TLS_VERIFY_NONE,
	};

	snprintf(key, sizeof(key), "%s#%u", o->server, c->slot);
	assert(!c->tls);
	c->tls = tls_conn_client(t->tls, &p);
	if (!c->tls) {
		conn_fail(t, c, "out of memory for a TLS connection");
		return;
	}
	c->state = SEND_HANDSHAKE;
	c->t_hs_ns = ring_now_ns();
	if (send_handshake(t, c) == 0)
		conn_kick(t, c);
}

static void
send_starttls(struct send_thread *t, struct send_conn *c)
{
	if (!c->starttls_offered) {
		conn_fail(t, c, "--starttls: server does not offer STARTTLS");
		return;
	}
	c->state = SEND_STARTTLS_WAIT;
	conn_write(t, c, "STARTTLS\r\n", 10);
}

static void
send_on_starttls(struct send_thread *t, struct send_conn *c)
{
	char why[REPLY_LINE_MAX + 32];

	if (c->rp.code != 220) {
		snprintf(why, sizeof(why), "STARTTLS refused: %s", c->rp.line);
		conn_fail(t, c, why);
		return;
	}
	send_tls_start(t, c);
}

static void
send_on_greeting(struct send_thread *t, struct send_conn *c)
{
	if (c->rp.code != 220) {
		conn_fail(t, c, c->rp.line);
		return;
	}
	c->state = SEND_EHLO_WAIT;
	conn_write(t, c, SEND_EHLO, strlen(SEND_EHLO));
}

/* A server that refuses EHLO with 5xx gets HELO, and no pipelining. */
static void
send_on_hello(struct send_thread *t, struct send_conn *c)
{
	int class = c->rp.code / 100;

	if (class == 2) {
		if (c->state == SEND_HELO_WAIT)
			c->pipelining = c->chunking = c->starttls_offered = 0;
		if (t->sh->o->starttls && !c->tls)
			send_starttls(t, c);
		else
			txn_next(t, c);
	} else if (class == 5 && c->state == SEND_EHLO_WAIT) {
		c->state = SEND_HELO_WAIT;
		conn_write(t, c, SEND_HELO, strlen(SEND_HELO));
	} else {
		conn_fail(t, c, c->rp.line);
	}
}

/* One complete reply line; only the last line of a reply moves the state machine. */
static void
send_on_line(struct send_thread *t, struct send_conn *c, int last)
{
	if (c->state == SEND_EHLO_WAIT)
		send_on_ehlo_line(c);
	if (!last)
		return;
	switch (c->state) {
	case SEND_GREETING:
		send_on_greeting(t, c);
		break;
	case SEND_EHLO_WAIT:
	case SEND_HELO_WAIT:
		send_on_hello(t, c);
		break;
	case SEND_STARTTLS_WAIT:
		send_on_starttls(t, c);
		break;
	case SEND_TXN:
		txn_reply(t, c, c->rp.code, c->rp.line);
		break;
	case SEND_BODY:
		txn_finish(t, c, c->rp.code, c->rp.line);
		break;
	case SEND_QUIT:
		conn_close(t, c);
		break;
	default:
		conn_fail(t, c, "unexpected reply from server");
		break;
	}
}

static void
send_on_data(struct send_thread *t, struct send_conn *c, const uint8_t *p, size_t len)
{
	size_t off = 0, used;
	int rc, was_tls = c->tls != NULL;

	/* Bytes after the 220 to STARTTLS are dropped: the server must wait for our hello. */
	while (off < len && c->state != SEND_CLOSING && (c->tls != NULL) == was_tls) {
		rc = reply_parser_feed(&c->rp, p + off, len - off, &used);
		off += used;
		if (rc < 0) {
			conn_fail(t, c,
			          rc == -REPLY_ETOOLONG ? "reply line too long"
			                                : "malformed reply from server");
			return;
		}
		if (rc == REPLY_NEED_MORE)
			return;
		send_on_line(t, c, rc == REPLY_END);
	}
}

/* Decrypted replies go to the SMTP side; 0, or -1 when the connection ended. */
static int
send_tls_read(struct send_thread *t, struct send_conn *c)
{
	unsigned gen = c->gen;
	enum tls_status st = TLS_WANT;
	char why[TLS_ERROR_LEN + 16];
	size_t n;

	while ((n = tls_conn_read(c->tls, t->plain, sizeof(t->plain), &st)) > 0) {
		send_on_data(t, c, t->plain, n);
		if (c->gen != gen || c->state == SEND_CLOSING || c->state == SEND_DEAD)
			return -1;
	}
	if (st == TLS_CLOSED) {
		conn_fail(t, c, "TLS closed by server (close_notify)");
		return -1;
	}
	if (st == TLS_ERROR) {
		snprintf(why, sizeof(why), "TLS: %s", tls_conn_error(c->tls));
		conn_fail(t, c, why);
		return -1;
	}
	return 0;
}

/* Ciphertext in: pushed to the adapter in pieces it takes, each followed by the handshake
 * or the replies it completes. */
static void
send_on_cipher(struct send_thread *t, struct send_conn *c, const uint8_t *p, size_t len)
{
	unsigned gen = c->gen;
	size_t off = 0, n;
	int stalled = 0;

	while (off < len) {
		n = tls_conn_push(c->tls, p + off, len - off);
		off += n;
		if (c->state == SEND_HANDSHAKE && send_handshake(t, c) < 0)
			return;
		if (c->state != SEND_HANDSHAKE && send_tls_read(t, c) < 0)
			return;
		if (c->gen != gen)
			return;
		if (n == 0 && stalled) {
			conn_fail(t, c, "TLS input over limit");
			return;
		}
		stalled = n == 0;
	}
	conn_kick(t, c);
}

static void
send_on_recv(struct send_thread *t, struct send_conn *c, const struct io_uring_cqe *cqe)
{
	int more = (cqe->flags & IORING_CQE_F_MORE) != 0;

	if (!more)
		c->pending--;
	if (cqe->res > 0) {
		unsigned bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;

		if (c->tls)
			send_on_cipher(t, c, ring_buf(&t->ring, bid), (size_t)cqe->res);
		else
			send_on_data(t, c, ring_buf(&t->ring, bid), (size_t)cqe->res);
		ring_buf_recycle(&t->ring, bid);
	} else if (cqe->res == 0) {
		if (c->state == SEND_QUIT)
			conn_close(t, c);
		else
			conn_fail(t, c, "connection closed by server");
	} else if (cqe->res == -ECONNRESET) {
		conn_fail(t, c, "connection closed by server (reset)");
	} else if (cqe->res != -ENOBUFS) {
		conn_fail(t, c, "receive failed");
	}
	/* Multishot receives end on ENOBUFS or by themselves: re-arm while the session lives. */
	if (!more && c->state != SEND_CLOSING && c->state != SEND_DEAD) {
		ring_recv(&t->ring, c->fd, send_ud(c, SEND_OP_RECV));
		c->pending++;
	}
}

static void
send_on_connect(struct send_thread *t, struct send_conn *c, int res)
{
	char why[200];

	c->pending--;
	if (res < 0) {
		snprintf(why, sizeof(why), "connect to %s: %s", t->sh->o->server,
		         res == -ECANCELED ? "timed out" : strerror(-res));
		conn_fail(t, c, why);
		return;
	}
	__atomic_store_n(&t->sh->connected, 1, __ATOMIC_RELAXED);
	STAT_ADD(t, connections_opened, 1);
	c->state = SEND_GREETING;
	ring_recv(&t->ring, c->fd, send_ud(c, SEND_OP_RECV));
	c->pending++;
	if (t->sh->o->tls)
		send_tls_start(t, c);
}

static void
conn_closed(struct send_thread *t, struct send_conn *c)
{
	int retry, more;

	assert(c->pending == 0);
	close(c->fd);
	c->fd = -1;
	c->gen = (c->gen + 1) & RING_GEN_MASK;
	if (c->tls) {
		tls_conn_free(c->tls);
		c->tls = NULL;
	}
	more = c->seq_reserved ||
	       __atomic_load_n(&t->sh->next_seq, __ATOMIC_RELAXED) < t->sh->o->messages;
	retry = more && (c->fails == 0 ? c->recycle : c->fails < SEND_RETRY_MAX);
	if (retry) {
		conn_connect(t, c);
		return;
	}
	c->state = SEND_DEAD;
	t->live--;
}

static void
conn_close(struct send_thread *t, struct send_conn *c)
{
	if (c->state == SEND_CLOSING || c->state == SEND_DEAD)
		return;
	c->state = SEND_CLOSING;
	shutdown(c->fd, SHUT_RDWR);
	if (c->pending == 0)
		conn_closed(t, c);
}

static void
conn_connect(struct send_thread *t, struct send_conn *c)
{
	const struct send_opts *o = t->sh->o;
	struct io_uring_sqe *sqe;
	int one = 1;

	c->state = SEND_CONNECTING;
	c->pipelining = 0;
	c->chunking = 0;
	c->starttls_offered = 0;
	c->recycle = 0;
	c->msgs_on_conn = 0;
	c->bdat_txn = 0;
	c->need_rset = 0;
	c->rset_wait = 0;
	c->sending = c->sending_tls = 0;
	c->iov_head = c->iov_n = 0;
	reply_parser_init(&c->rp);
	c->fd = socket(o->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (c->fd < 0) {
		STAT_ADD(t, conn_errors, 1);
		report_errors_note(&t->sh->errors, "socket() failed (descriptor limit?)");
		c->state = SEND_DEAD;
		t->live--;
		return;
	}
	setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	sqe = ring_sqe(&t->ring);
	io_uring_prep_connect(sqe, c->fd, (const struct sockaddr *)&o->addr, o->addr_len);
	io_uring_sqe_set_data64(sqe, send_ud(c, SEND_OP_CONNECT));
	sqe->flags |= IOSQE_IO_LINK;
	c->connect_timeout.tv_sec = SEND_CONNECT_TIMEOUT_S;
	c->connect_timeout.tv_nsec = 0;
	sqe = ring_sqe(&t->ring);
	io_uring_prep_link_timeout(sqe, &c->connect_timeout, 0);
	io_uring_sqe_set_data64(sqe, send_ud(c, SEND_OP_LTIMEOUT));
	c->pending++;
}

static void
send_dispatch(struct send_thread *t, const struct io_uring_cqe *cqe)
{
	uint64_t ud = io_uring_cqe_get_data64(cqe);
	struct send_conn *c;

	if (ring_ud_op(ud) == SEND_OP_LTIMEOUT)
		return;
	assert(ring_ud_slot(ud) < t->nconns);
	c = &t->conns[ring_ud_slot(ud)];
	assert(ring_ud_gen(ud) == c->gen); /* slots are reused only when nothing is pending */
	switch (ring_ud_op(ud)) {
	case SEND_OP_CONNECT:
		send_on_connect(t, c, cqe->res);
		break;
	case SEND_OP_RECV:
		send_on_recv(t, c, cqe);
		break;
	case SEND_OP_SEND:
		c->pending--;
		send_on_sent(t, c, cqe->res);
		break;
	default:
		assert(!"unknown op");
	}
	if (c->state == SEND_CLOSING && c->pending == 0)
		conn_closed(t, c);
}

/* Starts scheduled messages whose time has come; returns ns until the next one (capped). */
static uint64_t
send_start_due(struct send_thread *t, uint64_t now)
{
	uint64_t wait = SEND_TICK_NS;
	unsigned i;

	if (t->sh->o->rate <= 0)
		return wait;
	for (i = 0; i < t->nconns; i++) {
		struct send_conn *c = &t->conns[i];

		if (c->state != SEND_SCHEDULED)
			continue;
		if (c->t_start_ns <= now)
			txn_begin(t, c);
		else if (c->t_start_ns - now < wait)
			wait = c->t_start_ns - now;
	}
	return wait;
}

static void
send_loop(struct send_thread *t)
{
	struct io_uring_cqe *cqe;
	unsigned head, n;
	uint64_t wait = SEND_TICK_NS, now;

	while (t->live > 0) {
		ring_wait(&t->ring, wait);
		n = 0;
		io_uring_for_each_cqe(&t->ring.uring, head, cqe)
		{
			send_dispatch(t, cqe);
			if (++n == RING_CQE_BATCH)
				break;
		}
		io_uring_cq_advance(&t->ring.uring, n);
		now = ring_now_ns();
		if (now >= t->sh->deadline_ns) {
			t->timed_out = 1;
			break;
		}
		wait = send_start_due(t, now);
	}
}

static void *
send_thread_main(void *arg)
{
	struct send_thread *t = arg;
	unsigned i;

	for (i = 0; i < t->nconns; i++)
		conn_connect(t, &t->conns[i]);
	send_loop(t);
	for (i = 0; i < t->nconns; i++) {
		struct send_conn *c = &t->conns[i];

		if (c->state == SEND_TXN || c->state == SEND_BODY)
			STAT_ADD(t, lost, 1);
	}
	ring_free(&t->ring); /* cancels what is still in flight before the fds go */
	for (i = 0; i < t->nconns; i++) {
		if (t->conns[i].fd >= 0)
			close(t->conns[i].fd);
		if (t->conns[i].tls)
			tls_conn_free(t->conns[i].tls);
	}
	if (t->tls)
		tls_client_free(t->tls);
	__atomic_store_n(&t->done, 1, __ATOMIC_RELEASE);
	return NULL;
}

static int
send_build_cmds(struct send_shared *sh, char *to_hdr)
{
	const struct send_opts *o = sh->o;
	size_t cap = 64 + (size_t)(o->rcpts + 1) * (MSGGEN_ADDR_MAX + 32), off;
	unsigned i;

	sh->cmds = malloc(cap);
	sh->cmd_off = calloc(o->rcpts + 3, sizeof(*sh->cmd_off));
	if (!sh->cmds || !sh->cmd_off)
		return -ENOMEM;
	off = (size_t)snprintf(sh->cmds, cap, "MAIL FROM:<%s>\r\n", o->from);
	for (i = 0; i < o->rcpts; i++) {
		sh->cmd_off[i + 1] = off;
		if (o->to)
			off +=
			    (size_t)snprintf(sh->cmds + off, cap - off, "RCPT TO:<%s>\r\n", o->to);
		else
			off += (size_t)snprintf(sh->cmds + off, cap - off,
			                        "RCPT TO:<rcpt%u@%s>\r\n", i + 1, o->to_domain);
		assert(off < cap);
	}
	sh->cmd_off[o->rcpts + 1] = off;
	off += (size_t)snprintf(sh->cmds + off, cap - off, "DATA\r\n");
	sh->cmd_off[o->rcpts + 2] = off;
	assert(off < cap);
	if (o->to)
		snprintf(to_hdr, MSGGEN_ADDR_MAX, "%s", o->to);
	else
		snprintf(to_hdr, MSGGEN_ADDR_MAX, "rcpt1@%s", o->to_domain);
	return 0;
}

static int
send_tls_client(struct send_thread *t)
{
	char err[TLS_ERROR_LEN];

	t->tls = tls_client_new(NULL, t->nconns, err, sizeof(err)); /* a session per slot */
	if (!t->tls) {
		fprintf(stderr, "ringmx-bench send: TLS client setup failed: %s\n", err);
		return -1;
	}
	return 0;
}

static int
send_threads_init(struct send_shared *sh, struct send_thread *ts, unsigned nthreads)
{
	const struct send_opts *o = sh->o;
	unsigned i, j;
	int rc;

	for (i = 0; i < nthreads; i++) {
		struct send_thread *t = &ts[i];

		t->sh = sh;
		t->nconns = o->connections / nthreads + (i < o->connections % nthreads);
		t->live = t->nconns;
		t->conns = calloc(t->nconns, sizeof(*t->conns));
		if (!t->conns)
			return -ENOMEM;
		for (j = 0; j < t->nconns; j++) {
			t->conns[j].slot = j;
			t->conns[j].fd = -1;
		}
		hist_init(&t->lat_data);
		hist_init(&t->lat_txn);
		hist_init(&t->lat_hs);
		rc = ring_init(&t->ring);
		if (rc < 0) {
			fprintf(stderr,
			        "ringmx-bench send: io_uring setup failed: %s (needs Linux >= 6.1 "
			        "with io_uring allowed; containers may block it with seccomp)\n",
			        strerror(-rc));
			goto fail;
		}
		if ((o->tls || o->starttls) && send_tls_client(t) < 0) {
			ring_free(&t->ring);
			rc = -EINVAL;
			goto fail;
		}
	}
	return 0;
fail:
	while (i-- > 0) {
		ring_free(&ts[i].ring);
		if (ts[i].tls)
			tls_client_free(ts[i].tls);
	}
	return rc;
}

static void
send_sum(const struct send_thread *ts, unsigned n, struct send_counts *sum, uint64_t *t_last)
{
	unsigned i;

	memset(sum, 0, sizeof(*sum));
	for (i = 0; i < n; i++) {
		const struct send_counts *c = &ts[i].st;

		sum->ok += __atomic_load_n(&c->ok, __ATOMIC_RELAXED);
		sum->tempfail += __atomic_load_n(&c->tempfail, __ATOMIC_RELAXED);
		sum->permfail += __atomic_load_n(&c->permfail, __ATOMIC_RELAXED);
		sum->lost += __atomic_load_n(&c->lost, __ATOMIC_RELAXED);
		sum->conn_errors += __atomic_load_n(&c->conn_errors, __ATOMIC_RELAXED);
		sum->rcpt_tempfail += __atomic_load_n(&c->rcpt_tempfail, __ATOMIC_RELAXED);
		sum->rcpt_permfail += __atomic_load_n(&c->rcpt_permfail, __ATOMIC_RELAXED);
		sum->bytes += __atomic_load_n(&c->bytes, __ATOMIC_RELAXED);
		sum->connections_opened +=
		    __atomic_load_n(&c->connections_opened, __ATOMIC_RELAXED);
		sum->handshakes += __atomic_load_n(&c->handshakes, __ATOMIC_RELAXED);
		sum->handshakes_resumed +=
		    __atomic_load_n(&c->handshakes_resumed, __ATOMIC_RELAXED);
		if (t_last && ts[i].t_last_ns > *t_last)
			*t_last = ts[i].t_last_ns;
	}
}

/* Waits for the threads, printing a progress line each second when stdout is a terminal. */
static void
send_wait(const struct send_shared *sh, const struct send_thread *ts, unsigned n)
{
	const struct timespec step = {0, 100000000};
	int tty = isatty(1) && !sh->o->json, progressed = 0;
	uint64_t last_print = ring_now_ns(), last_done = 0;
	unsigned i, done = 0;

	while (done < n) {
		nanosleep(&step, NULL);
		for (i = 0, done = 0; i < n; i++)
			done += __atomic_load_n(&ts[i].done, __ATOMIC_ACQUIRE) != 0;
		if (tty && ring_now_ns() - last_print >= 1000000000u) {
			struct send_counts s;
			uint64_t now = ring_now_ns(), d;

			send_sum(ts, n, &s, NULL);
			d = s.ok + s.tempfail + s.permfail;
			printf("\r%6.1fs  %llu/%llu done  %llu ok  %llu 4xx  %llu 5xx  %llu conn "
			       "errors  "
			       "%.0f msgs/s   ",
			       (double)(now - sh->t0_ns) / 1e9, (unsigned long long)d,
			       (unsigned long long)sh->o->messages, (unsigned long long)s.ok,
			       (unsigned long long)s.tempfail, (unsigned long long)s.permfail,
			       (unsigned long long)s.conn_errors,
			       (double)(d - last_done) * 1e9 / (double)(now - last_print));
			fflush(stdout);
			last_print = now;
			last_done = d;
			progressed = 1;
		}
	}
	if (progressed)
		printf("\n");
}

static const char *
send_tls_mode(const struct send_opts *o)
{
	return o->tls ? "implicit" : o->starttls ? "starttls" : "none";
}

/* Connections and handshakes: keys after the ones that existed before TLS. */
static void
send_print_tls_json(const struct send_shared *sh, const struct send_counts *s, double el,
                    const struct hist *lh)
{
	printf(",\"tls\":\"%s\",\"connections_opened\":%llu,\"handshakes\":%llu,"
	       "\"handshakes_resumed\":%llu,\"handshakes_per_s\":%.1f,\"handshake_p50_ms\":%.3f,"
	       "\"handshake_p90_ms\":%.3f,\"handshake_p99_ms\":%.3f,\"handshake_max_ms\":%.3f",
	       send_tls_mode(sh->o), (unsigned long long)s->connections_opened,
	       (unsigned long long)s->handshakes, (unsigned long long)s->handshakes_resumed,
	       el > 0 ? (double)s->handshakes / el : 0.0, (double)hist_quantile(lh, 0.5) / 1e3,
	       (double)hist_quantile(lh, 0.9) / 1e3, (double)hist_quantile(lh, 0.99) / 1e3,
	       (double)lh->max / 1e3);
}

static void
send_print_json(const struct send_shared *sh, const struct send_counts *s, double el,
                const struct hist *ld, const struct hist *lt, const struct hist *lh, int timed_out)
{
	const struct send_opts *o = sh->o;
	uint64_t done = s->ok + s->tempfail + s->permfail;

	printf(
	    "{\"messages\":%llu,\"ok\":%llu,\"tempfail\":%llu,\"permfail\":%llu,\"lost\":%llu,"
	    "\"conn_errors\":%llu,\"rcpt_tempfail\":%llu,\"rcpt_permfail\":%llu,\"bytes\":%llu,"
	    "\"elapsed_s\":%.3f,\"msgs_per_s\":%.1f,\"mb_per_s\":%.3f,\"connections\":%u,"
	    "\"threads\":%u,\"size\":%zu,\"rcpts\":%u,\"timed_out\":%s,\"latency_ms\":{\"data\":",
	    (unsigned long long)(done + s->lost), (unsigned long long)s->ok,
	    (unsigned long long)s->tempfail, (unsigned long long)s->permfail,
	    (unsigned long long)s->lost, (unsigned long long)s->conn_errors,
	    (unsigned long long)s->rcpt_tempfail, (unsigned long long)s->rcpt_permfail,
	    (unsigned long long)s->bytes, el, el > 0 ? (double)done / el : 0.0,
	    el > 0 ? (double)s->bytes / el / 1e6 : 0.0, o->connections, o->threads, o->size,
	    o->rcpts, timed_out ? "true" : "false");
	report_latency_json(stdout, ld);
	printf(",\"txn\":");
	report_latency_json(stdout, lt);
	printf("},\"first_errors\":");
	report_errors_json(&sh->errors, stdout);
	send_print_tls_json(sh, s, el, lh);
	printf("}\n");
}

static void
send_print_text(const struct send_shared *sh, const struct send_counts *s, double el,
                const struct hist *ld, const struct hist *lt, const struct hist *lh)
{
	const struct send_opts *o = sh->o;
	uint64_t done = s->ok + s->tempfail + s->permfail;

	printf("ringmx-bench send: %llu messages of ~%zu bytes to %s, %u connections, %u threads\n",
	       (unsigned long long)(done + s->lost), o->size, o->server, o->connections,
	       o->threads);
	printf("elapsed %.3f s: %.1f msgs/s, %.3f MB/s\n", el, el > 0 ? (double)done / el : 0.0,
	       el > 0 ? (double)s->bytes / el / 1e6 : 0.0);
	printf("replies: %llu 2xx, %llu 4xx, %llu 5xx (rcpt: %llu 4xx, %llu 5xx); "
	       "connection errors: %llu (%llu messages lost)\n",
	       (unsigned long long)s->ok, (unsigned long long)s->tempfail,
	       (unsigned long long)s->permfail, (unsigned long long)s->rcpt_tempfail,
	       (unsigned long long)s->rcpt_permfail, (unsigned long long)s->conn_errors,
	       (unsigned long long)s->lost);
	printf("connections opened: %llu; TLS (%s): %llu handshakes (%llu resumed, %llu full), "
	       "%.1f handshakes/s\n",
	       (unsigned long long)s->connections_opened, send_tls_mode(o),
	       (unsigned long long)s->handshakes, (unsigned long long)s->handshakes_resumed,
	       (unsigned long long)(s->handshakes - s->handshakes_resumed),
	       el > 0 ? (double)s->handshakes / el : 0.0);
	printf("latency ms          p50       p90       p99     p99.9       max\n");
	report_latency_row(stdout, "data-end", ld);
	report_latency_row(stdout, "transaction", lt);
	if (lh->count)
		report_latency_row(stdout, "tls-handshake", lh);
	report_errors_print(&sh->errors, stdout);
}

/* Exit status and the one clear line that explains a failure. */
static int
send_verdict(const struct send_shared *sh, const struct send_counts *s, int timed_out)
{
	const struct send_opts *o = sh->o;
	uint64_t attempted = s->ok + s->tempfail + s->permfail + s->lost;

	if (!__atomic_load_n(&sh->connected, __ATOMIC_RELAXED)) {
		fprintf(stderr, "ringmx-bench send: server %s unreachable: %s\n", o->server,
		        sh->errors.n ? sh->errors.e[0].text : "no connection");
		return 1;
	}
	if (timed_out) {
		fprintf(stderr, "ringmx-bench send: timed out after %u s (%llu of %llu messages)\n",
		        o->timeout_s, (unsigned long long)attempted,
		        (unsigned long long)o->messages);
		return 3;
	}
	if (s->ok == 0) {
		fprintf(stderr,
		        "ringmx-bench send: nothing was delivered (%llu 4xx, %llu 5xx, %llu "
		        "connection errors)\n",
		        (unsigned long long)s->tempfail, (unsigned long long)s->permfail,
		        (unsigned long long)s->conn_errors);
		return 1;
	}
	if (attempted < o->messages) {
		fprintf(stderr,
		        "ringmx-bench send: only %llu of %llu messages attempted (connections "
		        "kept failing)\n",
		        (unsigned long long)attempted, (unsigned long long)o->messages);
		return 1;
	}
	return 0;
}

static int
send_report(struct send_shared *sh, struct send_thread *ts, unsigned n)
{
	struct send_counts s;
	struct hist *ld = calloc(3, sizeof(*ld));
	uint64_t t_last = 0;
	int timed_out = 0, rc;
	unsigned i;
	double el;

	if (!ld)
		return 1;
	hist_init(&ld[0]);
	hist_init(&ld[1]);
	hist_init(&ld[2]);
	send_sum(ts, n, &s, &t_last);
	for (i = 0; i < n; i++) {
		hist_merge(&ld[0], &ts[i].lat_data);
		hist_merge(&ld[1], &ts[i].lat_txn);
		hist_merge(&ld[2], &ts[i].lat_hs);
		timed_out |= ts[i].timed_out;
	}
	el = (double)((t_last ? t_last : ring_now_ns()) - sh->t0_ns) / 1e9;
	if (sh->o->json)
		send_print_json(sh, &s, el, &ld[0], &ld[1], &ld[2], timed_out);
	else
		send_print_text(sh, &s, el, &ld[0], &ld[1], &ld[2]);
	fflush(stdout);
	rc = send_verdict(sh, &s, timed_out);
	free(ld);
	return rc;
}

static void
send_cleanup(struct send_shared *sh, struct send_thread *ts, unsigned n)
{
	unsigned i;

	for (i = 0; ts && i < n; i++)
		free(ts[i].conns);
	free(ts);
	free(sh->cmds);
	free(sh->cmd_off);
	msggen_free(&sh->gen);
	report_errors_free(&sh->errors);
}

int
send_run(const struct send_opts *o)
{
	struct send_shared sh;
	struct send_thread *ts;
	char to_hdr[MSGGEN_ADDR_MAX];
	unsigned n = o->threads < o->connections ? o->threads : o->connections, i;
	int rc;

	assert(n > 0);
	memset(&sh, 0, sizeof(sh));
	sh.o = o;
	report_errors_init(&sh.errors);
	ts = calloc(n, sizeof(*ts));
	if (!ts || send_build_cmds(&sh, to_hdr) < 0 ||
	    msggen_init(&sh.gen, o->size, o->from, to_hdr) < 0) {
		fprintf(stderr, "ringmx-bench send: out of memory\n");
		send_cleanup(&sh, ts, n);
		return 2;
	}
	if (send_threads_init(&sh, ts, n) < 0) {
		send_cleanup(&sh, ts, n);
		return 2;
	}
	sh.t0_ns = ring_now_ns();
	sh.deadline_ns = sh.t0_ns + (uint64_t)o->timeout_s * 1000000000u;
	for (i = 0; i < n; i++)
		pthread_create(&ts[i].tid, NULL, send_thread_main, &ts[i]);
	send_wait(&sh, ts, n);
	for (i = 0; i < n; i++)
		pthread_join(ts[i].tid, NULL);
	rc = send_report(&sh, ts, n);
	send_cleanup(&sh, ts, n);
	return rc;
}
