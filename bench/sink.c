#include "bench/sink.h"

#include "bench/ring.h"
#include "tls/tls.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#define SINK_CONNS_MAX    8192  /* connections per thread; more are closed at accept */
#define SINK_LINE_MAX     1024  /* command line bytes, CRLF excluded (RFC 5321: 512) */
#define SINK_ADDR_MAX     256   /* bytes of a MAIL/RCPT address */
#define SINK_RCPTS_BUF    4096  /* bytes of the accepted recipients of one message */
#define SINK_HDR_LINE_MAX 1000  /* header line bytes kept while looking for Message-ID */
#define SINK_MSGID_MAX    256   /* bytes of a recorded Message-ID */
#define SINK_OUT_MAX      16384 /* reply bytes queued per connection */
#define SINK_ERRORS_MAX   3     /* bad commands before "421" and close */
#define SINK_TICK_NS      100000000ull
#define SINK_DRAIN_NS     500000000ull /* after stop: time for the last replies to leave */
#define SINK_RECORD_MAX   (SINK_ADDR_MAX + SINK_RCPTS_BUF + SINK_MSGID_MAX + 80)
#define SINK_SIZE_MAX     104857600 /* message bytes; advertised as SIZE, enforced on BDAT */
#define SINK_BDAT_DIGITS  19        /* digits of a BDAT size: any such value fits uint64_t */
#define SINK_STR_(x)      #x
#define SINK_STR(x)       SINK_STR_(x)
#define SINK_EHLO_HEAD                                                                             \
	"250-ringmx-bench\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE " SINK_STR(                \
	    SINK_SIZE_MAX) "\r\n"
#define SINK_EHLO_TAIL "250 ENHANCEDSTATUSCODES\r\n"

enum sink_state { SINK_CMD, SINK_DATA, SINK_BDAT, SINK_QUITTING, SINK_CLOSING };

/* What a BDAT chunk is answered with once its octets are consumed: the reply must follow
 * the chunk, so a refused BDAT still swallows its data. */
enum sink_bdat_verdict {
	SINK_BDAT_OK,     /* counted: 250 for the chunk, or the message on LAST */
	SINK_BDAT_NOMAIL, /* 503 */
	SINK_BDAT_NORCPT, /* 554 */
	SINK_BDAT_TOOBIG, /* 552: the message would pass SINK_SIZE_MAX */
};

/* End-of-data detection: only CR LF "." CR LF ends a message; a bare LF or CR never starts
 * a line, so a peer can't end (or split) a message with "\n.\n". */
enum sink_data_state { SINK_D_BOL, SINK_D_MID, SINK_D_CR, SINK_D_DOT, SINK_D_DOT_CR };

enum sink_op { SINK_OP_ACCEPT = 1, SINK_OP_RECV, SINK_OP_SEND };

struct sink_conn {
	int fd;
	unsigned slot;
	unsigned gen;
	unsigned pending;
	enum sink_state state;
	unsigned errors;
	uint64_t last_io_ns;
	size_t line_len;
	int line_overflow;
	int has_mail;
	int bdat_open; /* a BDAT message is in progress: its header scan and size go on */
	int bdat_last;
	enum sink_bdat_verdict bdat_verdict;
	int in_headers;
	enum sink_data_state dstate;
	uint64_t size;
	uint64_t chunk_left; /* octets of the current BDAT chunk not yet consumed */
	uint64_t chunk_size;
	size_t rcpts_len;
	size_t hline_len;
	size_t out_off;
	size_t out_len;
	size_t out_inflight;
	struct tls_conn *tls; /* after STARTTLS (or from the start with --implicit-tls) */
	size_t raw_len;       /* bytes from out_off that leave unencrypted: up to STARTTLS's 220 */
	int inflight_tls;     /* the send in flight is ciphertext from the adapter */
	char sender[SINK_ADDR_MAX];
	char msgid[SINK_MSGID_MAX];
	char line[SINK_LINE_MAX + 2];
	char hline[SINK_HDR_LINE_MAX];
	char rcpts[SINK_RCPTS_BUF];
	char out[SINK_OUT_MAX];
};

struct sink_counts {
	uint64_t messages;
	uint64_t bytes;
	uint64_t connections;
	uint64_t refused; /* over SINK_CONNS_MAX */
	uint64_t rcpt_ok;
	uint64_t rcpt_tempfail;
	uint64_t rcpt_permfail;
	uint64_t protocol_errors;
	uint64_t handshakes;
	uint64_t handshakes_resumed;
	uint64_t tls_errors; /* failed handshakes and broken TLS records */
};

struct sink_shared {
	const struct sink_opts *o;
	struct tls_tickets *tickets; /* shared by the threads' servers, so any of them resumes */
	int record_fd;
	uint64_t messages; /* all threads, for --expect */
	uint64_t t_first_ns;
	int stop;
};

struct sink_thread {
	struct sink_shared *sh;
	pthread_t tid;
	int listen_fd;
	unsigned gen_next;
	struct ring ring;
	struct tls_server *tls; /* NULL without --tls */
	struct sink_counts st;
	uint64_t t_last_ns;
	uint64_t rcpt_seen;
	uint64_t issued[SINK_REPLY_CODES_MAX];
	unsigned nfree;
	unsigned free_slots[SINK_CONNS_MAX];
	struct sink_conn *conns[SINK_CONNS_MAX];
	uint8_t plain[RING_BUF_SIZE]; /* decrypted from one receive */
};

static void sink_close(struct sink_thread *t, struct sink_conn *c);
static int sink_drained(struct sink_conn *c);

static void
sink_out(struct sink_conn *c, const char *s, size_t n)
{
	if (c->out_inflight == 0 && c->out_off > 0) {
		memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
		c->out_len -= c->out_off;
		c->out_off = 0;
	}
	if (c->out_len + n > SINK_OUT_MAX) {
		/* A peer pipelining this much without reading its replies is not a client. */
		c->state = SINK_QUITTING;
		return;
	}
	memcpy(c->out + c->out_len, s, n);
	c->out_len += n;
}

#define SINK_OUT(c, lit) sink_out((c), lit, sizeof(lit) - 1)

/* Nothing left to send, in the clear or encrypted. */
static int
sink_drained(struct sink_conn *c)
{
	size_t len = 0;

	if (c->out_off != c->out_len)
		return 0;
	if (c->tls)
		tls_conn_out(c->tls, &len);
	return len == 0;
}

/* Replies are encrypted only while no send is in flight, so the adapter never appends to
 * (or moves) the ciphertext the kernel is reading. Until the handshake is done only its
 * own records go out; the replies wait (the greeting with --implicit-tls). */
static void
sink_flush_tls(struct sink_thread *t, struct sink_conn *c)
{
	struct io_uring_sqe *sqe;
	const uint8_t *p;
	size_t len;
	ssize_t n;

	if (tls_conn_established(c->tls) && c->out_off < c->out_len) {
		n = tls_conn_write(c->tls, (const uint8_t *)c->out + c->out_off,
		                   c->out_len - c->out_off);
		if (n < 0) {
			t->st.tls_errors++;
			sink_close(t, c);
			return;
		}
		c->out_off += (size_t)n;
		if (c->out_off == c->out_len)
			c->out_off = c->out_len = 0;
	}
	p = tls_conn_out(c->tls, &len);
	if (len == 0)
		return;
	c->out_inflight = len;
	c->inflight_tls = 1;
	sqe = ring_sqe(&t->ring);
	io_uring_prep_send(sqe, c->fd, p, len, MSG_NOSIGNAL);
	io_uring_sqe_set_data64(sqe, ring_ud(SINK_OP_SEND, c->slot, c->gen));
	c->pending++;
}

static void
sink_flush(struct sink_thread *t, struct sink_conn *c)
{
	struct io_uring_sqe *sqe;

	if (c->out_inflight || c->state == SINK_CLOSING)
		return;
	if (c->tls && c->raw_len == 0) {
		sink_flush_tls(t, c);
		return;
	}
	if (c->out_off == c->out_len)
		return;
	c->out_inflight = c->tls ? c->raw_len : c->out_len - c->out_off;
	c->inflight_tls = 0;
	sqe = ring_sqe(&t->ring);
	io_uring_prep_send(sqe, c->fd, c->out + c->out_off, c->out_inflight, MSG_NOSIGNAL);
	io_uring_sqe_set_data64(sqe, ring_ud(SINK_OP_SEND, c->slot, c->gen));
	c->pending++;
}

/* Spreads --reply codes deterministically: after n RCPTs, code j has been given
 * floor(n * fraction_j) times (one less while a slot is shared), so counts are exact. */
static int
sink_pick_code(struct sink_thread *t)
{
	const struct sink_opts *o = t->sh->o;
	uint64_t n = ++t->rcpt_seen;
	unsigned j;

	for (j = 0; j < o->nrules; j++) {
		if (t->issued[j] < (uint64_t)floor((double)n * o->rules[j].fraction + 1e-9)) {
			t->issued[j]++;
			return o->rules[j].code;
		}
	}
	return 250;
}

static void
sink_error(struct sink_thread *t, struct sink_conn *c, const char *reply, size_t n)
{
	t->st.protocol_errors++;
	if (++c->errors >= SINK_ERRORS_MAX) {
		SINK_OUT(c, "421 4.7.0 too many errors, closing\r\n");
		c->state = SINK_QUITTING;
		return;
	}
	sink_out(c, reply, n);
}

#define SINK_ERROR(t, c, lit) sink_error((t), (c), lit, sizeof(lit) - 1)

/* Copies the address of "FROM:<addr>" / "TO:<addr>" at p into dst. Tabs and commas are
 * refused because the record file uses them as separators. Returns 0 or -EINVAL. */
static int
sink_parse_path(const char *p, const char *prefix, char *dst)
{
	size_t plen = strlen(prefix), n;
	const char *end;

	if (strncasecmp(p, prefix, plen) != 0)
		return -EINVAL;
	p += plen;
	while (*p == ' ')
		p++;
	if (*p != '<' || !(end = strchr(p, '>')))
		return -EINVAL;
	n = (size_t)(end - p - 1);
	if (n >= SINK_ADDR_MAX || strcspn(p + 1, "\t,<") < n)
		return -EINVAL;
	memcpy(dst, p + 1, n);
	dst[n] = '\0';
	return 0;
}

static void
sink_envelope_reset(struct sink_conn *c)
{
	c->has_mail = 0;
	c->bdat_open = 0;
	c->rcpts_len = 0;
	c->sender[0] = '\0';
}

static void
sink_cmd_mail(struct sink_thread *t, struct sink_conn *c, const char *arg)
{
	if (c->has_mail) {
		SINK_ERROR(t, c, "503 5.5.1 nested MAIL\r\n");
		return;
	}
	if (sink_parse_path(arg, "FROM:", c->sender) < 0) {
		SINK_ERROR(t, c, "501 5.5.4 syntax: MAIL FROM:<address>\r\n");
		return;
	}
	c->has_mail = 1;
	SINK_OUT(c, "250 2.1.0 Ok\r\n");
}

static void
sink_cmd_rcpt(struct sink_thread *t, struct sink_conn *c, const char *arg)
{
	char addr[SINK_ADDR_MAX], reply[80];
	size_t n;
	int code;

	if (!c->has_mail) {
		SINK_ERROR(t, c, "503 5.5.1 need MAIL first\r\n");
		return;
	}
	if (sink_parse_path(arg, "TO:", addr) < 0) {
		SINK_ERROR(t, c, "501 5.5.4 syntax: RCPT TO:<address>\r\n");
		return;
	}
	n = strlen(addr);
	if (c->rcpts_len + n + 1 > SINK_RCPTS_BUF) {
		SINK_OUT(c, "452 4.5.3 too many recipients\r\n");
		return;
	}
	code = sink_pick_code(t);
	if (code != 250) {
		if (code / 100 == 4)
			t->st.rcpt_tempfail++;
		else
			t->st.rcpt_permfail++;
		sink_out(c, reply,
		         (size_t)snprintf(reply, sizeof(reply),
		                          "%d %d.0.0 ringmx-bench sink: simulated reply\r\n", code,
		                          code / 100));
		return;
	}
	t->st.rcpt_ok++;
	if (c->rcpts_len)
		c->rcpts[c->rcpts_len++] = ',';
	memcpy(c->rcpts + c->rcpts_len, addr, n + 1);
	c->rcpts_len += n;
	SINK_OUT(c, "250 2.1.5 Ok\r\n");
}

/* Starts the Message-ID scan and the size count, for DATA and for a first BDAT chunk. */
static void
sink_message_begin(struct sink_conn *c)
{
	c->in_headers = 1;
	c->hline_len = 0;
	c->size = 0;
	c->msgid[0] = '\0';
}

static void
sink_cmd_data(struct sink_thread *t, struct sink_conn *c)
{
	if (!c->has_mail) {
		SINK_ERROR(t, c, "503 5.5.1 need MAIL first\r\n");
		return;
	}
	if (c->bdat_open) { /* RFC 3030: DATA and BDAT don't mix in one transaction */
		SINK_ERROR(t, c, "503 5.5.1 BDAT in progress\r\n");
		return;
	}
	if (c->rcpts_len == 0) {
		SINK_OUT(c, "554 5.5.1 no valid recipients\r\n");
		return;
	}
	c->state = SINK_DATA;
	c->dstate = SINK_D_BOL;
	sink_message_begin(c);
	SINK_OUT(c, "354 3.0.0 end data with <CR><LF>.<CR><LF>\r\n");
}

/* " <size>" or " <size> LAST" after the verb. Returns 0 or -EINVAL. */
static int
sink_parse_bdat(const char *arg, uint64_t *size, int *last)
{
	uint64_t v = 0;
	unsigned n = 0;

	if (*arg++ != ' ')
		return -EINVAL;
	for (; *arg >= '0' && *arg <= '9'; arg++) {
		if (++n > SINK_BDAT_DIGITS)
			return -EINVAL;
		v = v * 10 + (uint64_t)(*arg - '0');
	}
	*last = *arg == ' ' && strcasecmp(arg + 1, "LAST") == 0;
	if (n == 0 || (*arg != '\0' && !*last))
		return -EINVAL;
	*size = v;
	return 0;
}

static void sink_message_done(struct sink_thread *t, struct sink_conn *c);

/* A chunk's octets are all in: now its reply, in order after everything before it. */
static void
sink_bdat_end(struct sink_thread *t, struct sink_conn *c)
{
	char reply[64];

	c->state = SINK_CMD;
	switch (c->bdat_verdict) {
	case SINK_BDAT_NOMAIL:
		SINK_ERROR(t, c, "503 5.5.1 need MAIL first\r\n");
		return;
	case SINK_BDAT_NORCPT:
		SINK_OUT(c, "554 5.5.1 no valid recipients\r\n");
		return;
	case SINK_BDAT_TOOBIG:
		sink_envelope_reset(c); /* the message is lost; later chunks get 503 */
		SINK_OUT(c, "552 5.3.4 message exceeds SIZE " SINK_STR(SINK_SIZE_MAX) "\r\n");
		return;
	case SINK_BDAT_OK:
		break;
	}
	c->size += c->chunk_size;
	if (c->bdat_last) {
		sink_message_done(t, c);
		return;
	}
	sink_out(c, reply,
	         (size_t)snprintf(reply, sizeof(reply), "250 2.0.0 %llu octets\r\n",
	                          (unsigned long long)c->chunk_size));
}

static void
sink_cmd_bdat(struct sink_thread *t, struct sink_conn *c, const char *arg)
{
	uint64_t size;
	int last;

	if (t->sh->o->no_chunking) {
		SINK_ERROR(t, c, "502 5.5.1 CHUNKING not offered\r\n");
		return;
	}
	if (sink_parse_bdat(arg, &size, &last) < 0) {
		SINK_ERROR(t, c, "501 5.5.4 syntax: BDAT <size> [LAST]\r\n");
		return;
	}
	if (!c->has_mail)
		c->bdat_verdict = SINK_BDAT_NOMAIL;
	else if (c->rcpts_len == 0)
		c->bdat_verdict = SINK_BDAT_NORCPT;
	else if (size > SINK_SIZE_MAX - (c->bdat_open ? c->size : 0))
		c->bdat_verdict = SINK_BDAT_TOOBIG;
	else
		c->bdat_verdict = SINK_BDAT_OK;
	if (c->bdat_verdict == SINK_BDAT_OK && !c->bdat_open) {
		sink_message_begin(c);
		c->bdat_open = 1;
	}
	c->bdat_last = last;
	c->chunk_size = c->chunk_left = size;
	c->state = SINK_BDAT;
	if (size == 0)
		sink_bdat_end(t, c);
}

static int
sink_verb(const char *line, const char *verb)
{
	size_t n = strlen(verb);

	return strncasecmp(line, verb, n) == 0 && (line[n] == '\0' || line[n] == ' ');
}

/* The 220 and everything before it leave in the clear; the rest of this receive is dropped
 * by the caller (bytes pipelined after STARTTLS are never executed, RFC 3207 5), and the
 * session starts over (no envelope survives the handshake). */
static void
sink_cmd_starttls(struct sink_thread *t, struct sink_conn *c)
{
	if (!t->tls || t->sh->o->implicit_tls) {
		SINK_ERROR(t, c, "502 5.5.1 STARTTLS not offered\r\n");
		return;
	}
	if (c->tls) {
		SINK_ERROR(t, c, "503 5.5.1 TLS already active\r\n");
		return;
	}
	c->tls = tls_conn_server(t->tls);
	if (!c->tls) {
		SINK_OUT(c, "454 4.7.0 TLS not available\r\n");
		return;
	}
	SINK_OUT(c, "220 2.0.0 ready to start TLS\r\n");
	c->raw_len = c->out_len - c->out_off;
	sink_envelope_reset(c);
}

static void
sink_command(struct sink_thread *t, struct sink_conn *c, const char *line)
{
	if (sink_verb(line, "EHLO")) {
		SINK_OUT(c, SINK_EHLO_HEAD);
		if (!t->sh->o->no_chunking)
			SINK_OUT(c, "250-CHUNKING\r\n");
		if (t->tls && !c->tls)
			SINK_OUT(c, "250-STARTTLS\r\n");
		SINK_OUT(c, SINK_EHLO_TAIL);
	} else if (sink_verb(line, "HELO"))
		SINK_OUT(c, "250 ringmx-bench\r\n");
	else if (sink_verb(line, "MAIL"))
		sink_cmd_mail(t, c, line + 5);
	else if (sink_verb(line, "RCPT"))
		sink_cmd_rcpt(t, c, line + 5);
	else if (sink_verb(line, "DATA"))
		sink_cmd_data(t, c);
	else if (sink_verb(line, "BDAT"))
		sink_cmd_bdat(t, c, line + 4);
	else if (sink_verb(line, "RSET")) {
		sink_envelope_reset(c);
		SINK_OUT(c, "250 2.0.0 Ok\r\n");
	} else if (sink_verb(line, "STARTTLS"))
		sink_cmd_starttls(t, c);
	else if (sink_verb(line, "NOOP"))
		SINK_OUT(c, "250 2.0.0 Ok\r\n");
	else if (sink_verb(line, "QUIT")) {
		SINK_OUT(c, "221 2.0.0 Bye\r\n");
		c->state = SINK_QUITTING;
	} else
		SINK_ERROR(t, c, "500 5.5.2 command not recognized\r\n");
}

/* Consumes command bytes up to the end of one line. The line limit is checked before the
 * line ends; the rest of an overlong line is skipped and answered once. */
static size_t
sink_cmd_bytes(struct sink_thread *t, struct sink_conn *c, const uint8_t *p, size_t len)
{
	const uint8_t *nl = memchr(p, '\n', len);
	size_t take = nl ? (size_t)(nl - p) : len;

	if (c->line_len + take > SINK_LINE_MAX + 1)
		c->line_overflow = 1;
	else
		memcpy(c->line + c->line_len, p, take);
	if (!c->line_overflow)
		c->line_len += take;
	if (!nl)
		return len;
	if (c->line_len > 0 && c->line[c->line_len - 1] == '\r')
		c->line_len--;
	c->line[c->line_len] = '\0';
	if (c->line_overflow)
		SINK_ERROR(t, c, "500 5.5.6 line too long\r\n");
	else
		sink_command(t, c, c->line);
	c->line_len = 0;
	c->line_overflow = 0;
	return take + 1;
}

static void
sink_header_line(struct sink_conn *c)
{
	size_t n = c->hline_len, i = 11;

	if (n > 0 && c->hline[n - 1] == '\r')
		n--;
	if (n == 0) {
		c->in_headers = 0;
		return;
	}
	if (n <= 11 || strncasecmp(c->hline, "message-id:", 11) != 0)
		return;
	while (i < n && (c->hline[i] == ' ' || c->hline[i] == '\t'))
		i++;
	while (n > i && (c->hline[n - 1] == ' ' || c->hline[n - 1] == '\t'))
		n--;
	if (n - i >= SINK_MSGID_MAX)
		n = i + SINK_MSGID_MAX - 1;
	memcpy(c->msgid, c->hline + i, n - i);
	c->msgid[n - i] = '\0';
}

static void
sink_header_byte(struct sink_conn *c, uint8_t b)
{
	if (b == '\n') {
		sink_header_line(c);
		c->hline_len = 0;
	} else if (c->hline_len < SINK_HDR_LINE_MAX) {
		c->hline[c->hline_len++] = (char)b;
	}
}

static enum sink_data_state
sink_data_step(enum sink_data_state s, uint8_t b)
{
	switch (s) {
	case SINK_D_BOL:
		return b == '.' ? SINK_D_DOT : b == '\r' ? SINK_D_CR : SINK_D_MID;
	case SINK_D_CR:
		return b == '\n' ? SINK_D_BOL : b == '\r' ? SINK_D_CR : SINK_D_MID;
	case SINK_D_DOT:
		return b == '\r' ? SINK_D_DOT_CR : SINK_D_MID;
	case SINK_D_DOT_CR:
		return b == '\n' ? SINK_D_BOL : b == '\r' ? SINK_D_CR : SINK_D_MID;
	default:
		return b == '\r' ? SINK_D_CR : SINK_D_MID;
	}
}

/* Appends the record line with one write() on the O_APPEND descriptor, so lines written
 * by several threads never interleave. */
static void
sink_record(struct sink_thread *t, const struct sink_conn *c)
{
	char line[SINK_RECORD_MAX];
	int n = snprintf(line, sizeof(line), "%s\t%s\t%llu\t%s\t%s\n", c->sender, c->rcpts,
	                 (unsigned long long)c->size, c->msgid[0] ? c->msgid : "-",
	                 c->tls ? tls_conn_version(c->tls) : "none");

	assert(n > 0 && (size_t)n < sizeof(line));
	if (write(t->sh->record_fd, line, (size_t)n) != n)
		t->st.protocol_errors++; /* counted, not fatal: the sink keeps absorbing load */
}

static void
sink_message_done(struct sink_thread *t, struct sink_conn *c)
{
	struct sink_shared *sh = t->sh;
	uint64_t total;
	char reply[64];

	t->st.messages++;
	t->st.bytes += c->size;
	t->t_last_ns = ring_now_ns();
	if (sh->record_fd >= 0)
		sink_record(t, c);
	sink_out(c, reply,
	         (size_t)snprintf(reply, sizeof(reply), "250 2.0.0 Ok: queued as %u.%llu\r\n",
	                          c->slot, (unsigned long long)t->st.messages));
	sink_envelope_reset(c);
	c->state = SINK_CMD;
	total = __atomic_add_fetch(&sh->messages, 1, __ATOMIC_RELAXED);
	if (sh->o->expect && total >= sh->o->expect)
		__atomic_store_n(&sh->stop, 1, __ATOMIC_RELAXED);
}

/* Consumes message bytes up to and including the final ".\r\n". Body bytes after the
 * headers are skipped with memchr: only a CR can start the end sequence. */
static size_t
sink_data_bytes(struct sink_thread *t, struct sink_conn *c, const uint8_t *p, size_t len)
{
	size_t i = 0;

	while (i < len) {
		uint8_t b;

		if (c->dstate == SINK_D_MID && !c->in_headers) {
			const uint8_t *cr = memchr(p + i, '\r', len - i);

			if (!cr)
				break;
			i = (size_t)(cr - p);
		}
		b = p[i++];
		if (c->in_headers)
			sink_header_byte(c, b);
		if (c->dstate == SINK_D_DOT_CR && b == '\n') {
			c->size += i;
			c->size -= 3; /* the final ".\r\n" is not message content */
			sink_message_done(t, c);
			return i;
		}
		c->dstate = sink_data_step(c->dstate, b);
	}
	c->size += len;
	return len;
}

/* Consumes BDAT chunk octets: data, not lines. Only the Message-ID scan looks at them one
 * by one, as on the DATA path, and only while in the headers; the body is skipped whole. */
static size_t
sink_bdat_bytes(struct sink_thread *t, struct sink_conn *c, const uint8_t *p, size_t len)
{
	size_t n = c->chunk_left < len ? (size_t)c->chunk_left : len, i;

	if (c->bdat_verdict == SINK_BDAT_OK)
		for (i = 0; i < n && c->in_headers; i++)
			sink_header_byte(c, p[i]);
	c->chunk_left -= n;
	if (c->chunk_left == 0)
		sink_bdat_end(t, c);
	return n;
}

/* SMTP bytes, plaintext or decrypted. A STARTTLS ends the loop: what followed it in the
 * same receive is dropped. */
static void
sink_smtp_bytes(struct sink_thread *t, struct sink_conn *c, const uint8_t *p, size_t len)
{
	size_t off = 0;
	int was_tls = c->tls != NULL;

	while (off < len && c->state != SINK_QUITTING && c->state != SINK_CLOSING &&
	       (c->tls != NULL) == was_tls) {
		if (c->state == SINK_DATA)
			off += sink_data_bytes(t, c, p + off, len - off);
		else if (c->state == SINK_BDAT)
			off += sink_bdat_bytes(t, c, p + off, len - off);
		else
			off += sink_cmd_bytes(t, c, p + off, len - off);
	}
}

/* Completes the handshake, then runs the decrypted commands. -1: the connection ends (an
 * alert or close_notify may still go out). */
static int
sink_tls_advance(struct sink_thread *t, struct sink_conn *c)
{
	enum tls_status st = TLS_WANT;
	size_t n = 0;

	if (!tls_conn_established(c->tls)) {
		st = tls_conn_handshake(c->tls);
		if (st == TLS_WANT)
			return 0;
		if (st != TLS_OK) { /* the alert goes out; replies queued for later never will */
			t->st.tls_errors++;
			c->out_off = c->out_len = 0;
			c->state = SINK_QUITTING;
			return -1;
		}
		t->st.handshakes++;
		t->st.handshakes_resumed += tls_conn_resumed(c->tls);
	}
	while (c->state != SINK_QUITTING && c->state != SINK_CLOSING &&
	       (n = tls_conn_read(c->tls, t->plain, sizeof(t->plain), &st)) > 0)
		sink_smtp_bytes(t, c, t->plain, n);
	if (n == 0 && (st == TLS_CLOSED || st == TLS_ERROR)) {
		t->st.tls_errors += st == TLS_ERROR;
		c->state = SINK_QUITTING;
		return -1;
	}
	return 0;
}

/* Ciphertext, pushed in the pieces the adapter takes. */
static void
sink_tls_input(struct sink_thread *t, struct sink_conn *c, const uint8_t *p, size_t len)
{
	size_t off = 0, n;
	int stalled = 0;

	while (off < len && c->state != SINK_QUITTING && c->state != SINK_CLOSING) {
		n = tls_conn_push(c->tls, p + off, len - off);
		off += n;
		if (sink_tls_advance(t, c) < 0)
			break;
		if (n == 0 && stalled) {
			t->st.tls_errors++;
			c->state = SINK_QUITTING;
			break;
		}
		stalled = n == 0;
	}
}

/* Once STARTTLS was accepted, every byte that arrives is ciphertext. */
static void
sink_input(struct sink_thread *t, struct sink_conn *c, const uint8_t *p, size_t len)
{
	c->last_io_ns = ring_now_ns();
	if (c->tls)
		sink_tls_input(t, c, p, len);
	else
		sink_smtp_bytes(t, c, p, len);
	sink_flush(t, c);
	if (c->state == SINK_QUITTING && sink_drained(c))
		sink_close(t, c);
}

static void
sink_on_recv(struct sink_thread *t, struct sink_conn *c, const struct io_uring_cqe *cqe)
{
	int more = (cqe->flags & IORING_CQE_F_MORE) != 0;

	if (!more)
		c->pending--;
	if (cqe->res > 0) {
		unsigned bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;

		if (c->state != SINK_CLOSING)
			sink_input(t, c, ring_buf(&t->ring, bid), (size_t)cqe->res);
		ring_buf_recycle(&t->ring, bid);
	} else if (cqe->res != -ENOBUFS) {
		sink_close(t, c); /* peer closed or reset; an unfinished message is not counted */
	}
	if (!more && c->state != SINK_CLOSING) {
		ring_recv(&t->ring, c->fd, ring_ud(SINK_OP_RECV, c->slot, c->gen));
		c->pending++;
	}
}

static void
sink_on_sent(struct sink_thread *t, struct sink_conn *c, int res)
{
	c->pending--;
	c->out_inflight = 0;
	if (res < 0) {
		sink_close(t, c);
		return;
	}
	if (c->inflight_tls) {
		tls_conn_out_consume(c->tls, (size_t)res);
	} else {
		c->out_off += (size_t)res;
		if (c->tls)
			c->raw_len -= (size_t)res;
		if (c->out_off == c->out_len)
			c->out_off = c->out_len = 0;
	}
	if (sink_drained(c)) {
		if (c->state == SINK_QUITTING)
			sink_close(t, c);
		return;
	}
	sink_flush(t, c);
}

static void
sink_free(struct sink_thread *t, struct sink_conn *c)
{
	assert(c->pending == 0);
	close(c->fd);
	if (c->tls)
		tls_conn_free(c->tls);
	t->conns[c->slot] = NULL;
	t->free_slots[t->nfree++] = c->slot;
	free(c);
}

static void
sink_close(struct sink_thread *t, struct sink_conn *c)
{
	if (c->state == SINK_CLOSING)
		return;
	c->state = SINK_CLOSING;
	shutdown(c->fd, SHUT_RDWR);
}

static void
sink_on_accept(struct sink_thread *t, int fd)
{
	struct sink_conn *c;
	uint64_t now = ring_now_ns(), zero = 0;
	int one = 1;

	if (t->nfree == 0 || !(c = calloc(1, sizeof(*c)))) {
		t->st.refused++;
		close(fd);
		return;
	}
	if (t->sh->o->implicit_tls && !(c->tls = tls_conn_server(t->tls))) {
		t->st.refused++;
		free(c);
		close(fd);
		return;
	}
	__atomic_compare_exchange_n(&t->sh->t_first_ns, &zero, now, 0, __ATOMIC_RELAXED,
	                            __ATOMIC_RELAXED);
	t->st.connections++;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	c->fd = fd;
	c->slot = t->free_slots[--t->nfree];
	c->gen = t->gen_next++ & RING_GEN_MASK;
	c->state = SINK_CMD;
	c->last_io_ns = now;
	t->conns[c->slot] = c;
	SINK_OUT(c, "220 ringmx-bench ESMTP sink\r\n");
	sink_flush(t, c);
	ring_recv(&t->ring, fd, ring_ud(SINK_OP_RECV, c->slot, c->gen));
	c->pending++;
}

static void
sink_arm_accept(struct sink_thread *t)
{
	struct io_uring_sqe *sqe = ring_sqe(&t->ring);

	io_uring_prep_multishot_accept(sqe, t->listen_fd, NULL, NULL, SOCK_CLOEXEC);
	io_uring_sqe_set_data64(sqe, ring_ud(SINK_OP_ACCEPT, 0, 0));
}

static void
sink_dispatch(struct sink_thread *t, const struct io_uring_cqe *cqe)
{
	uint64_t ud = io_uring_cqe_get_data64(cqe);
	struct sink_conn *c;

	if (ring_ud_op(ud) == SINK_OP_ACCEPT) {
		if (cqe->res >= 0)
			sink_on_accept(t, cqe->res);
		if (!(cqe->flags & IORING_CQE_F_MORE))
			sink_arm_accept(t);
		return;
	}
	assert(ring_ud_slot(ud) < SINK_CONNS_MAX);
	c = t->conns[ring_ud_slot(ud)];
	assert(c); /* a slot is freed only when none of its ops is pending */
	assert(ring_ud_gen(ud) == c->gen);
	if (ring_ud_op(ud) == SINK_OP_RECV)
		sink_on_recv(t, c, cqe);
	else
		sink_on_sent(t, c, cqe->res);
	if (c->state == SINK_CLOSING && c->pending == 0)
		sink_free(t, c);
}

/* Closes connections idle for longer than --idle-timeout: a silent peer can't hold a slot. */
static void
sink_reap_idle(struct sink_thread *t, uint64_t now)
{
	uint64_t limit = (uint64_t)t->sh->o->idle_timeout_s * 1000000000u;
	unsigned i;

	for (i = 0; i < SINK_CONNS_MAX; i++) {
		struct sink_conn *c = t->conns[i];

		if (c && c->state != SINK_CLOSING && now - c->last_io_ns > limit) {
			sink_close(t, c);
			if (c->pending == 0)
				sink_free(t, c);
		}
	}
}

static unsigned
sink_turn(struct sink_thread *t, uint64_t wait_ns)
{
	struct io_uring_cqe *cqe;
	unsigned head, n = 0;

	ring_wait(&t->ring, wait_ns);
	io_uring_for_each_cqe(&t->ring.uring, head, cqe)
	{
		sink_dispatch(t, cqe);
		if (++n == RING_CQE_BATCH)
			break;
	}
	io_uring_cq_advance(&t->ring.uring, n);
	return n;
}

static int
sink_sending(const struct sink_thread *t)
{
	unsigned i;

	for (i = 0; i < SINK_CONNS_MAX; i++)
		if (t->conns[i] && t->conns[i]->out_inflight)
			return 1;
	return 0;
}

static void *
sink_thread_main(void *arg)
{
	struct sink_thread *t = arg;
	uint64_t last_reap = ring_now_ns(), now, drain_end;
	unsigned i;

	sink_arm_accept(t);
	while (!__atomic_load_n(&t->sh->stop, __ATOMIC_RELAXED)) {
		sink_turn(t, SINK_TICK_NS);
		now = ring_now_ns();
		if (now - last_reap >= 1000000000u) {
			sink_reap_idle(t, now);
			last_reap = now;
		}
	}
	/* The replies to the last messages (--expect) must leave before we exit. */
	io_uring_submit(&t->ring.uring);
	drain_end = ring_now_ns() + SINK_DRAIN_NS;
	while (sink_sending(t) && ring_now_ns() < drain_end)
		sink_turn(t, SINK_DRAIN_NS / 10);
	ring_free(&t->ring);
	for (i = 0; i < SINK_CONNS_MAX; i++) {
		if (t->conns[i]) {
			close(t->conns[i]->fd);
			if (t->conns[i]->tls)
				tls_conn_free(t->conns[i]->tls);
			free(t->conns[i]);
		}
	}
	if (t->tls)
		tls_server_free(t->tls);
	return NULL;
}

static int
sink_listen(const struct sink_opts *o)
{
	int one = 1, fd = socket(o->addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0)
		return -errno;
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0 ||
	    bind(fd, (const struct sockaddr *)&o->addr, o->addr_len) < 0 || listen(fd, 4096) < 0) {
		int rc = -errno;

		close(fd);
		return rc;
	}
	return fd;
}

/* One server context per thread (contexts are not shared), all with the same tickets. */
static int
sink_tls_server(struct sink_shared *sh, struct sink_thread *t)
{
	const struct tls_cert_files cert = {
	    .name = NULL, .certificate = sh->o->tls_cert, .key = sh->o->tls_key};
	char err[TLS_ERROR_LEN];

	t->tls = tls_server_new(&cert, 1, sh->tickets, err, sizeof(err));
	if (!t->tls) {
		fprintf(stderr, "ringmx-bench sink: --tls: %s\n", err);
		return -1;
	}
	return 0;
}

static int
sink_threads_init(struct sink_shared *sh, struct sink_thread *ts, unsigned n)
{
	unsigned i, j;
	int rc;

	for (i = 0; i < n; i++) {
		struct sink_thread *t = &ts[i];

		t->sh = sh;
		rc = t->listen_fd = sink_listen(sh->o);
		if (rc < 0) {
			fprintf(stderr, "ringmx-bench sink: cannot listen on %s: %s\n",
			        sh->o->listen, strerror(-rc));
			goto fail;
		}
		rc = ring_init(&t->ring);
		if (rc < 0) {
			fprintf(stderr,
			        "ringmx-bench sink: io_uring setup failed: %s (needs Linux >= "
			        "6.1 with io_uring allowed; containers may block it with "
			        "seccomp)\n",
			        strerror(-rc));
			close(t->listen_fd);
			goto fail;
		}
		if (sh->o->tls_cert[0] && sink_tls_server(sh, t) < 0) {
			rc = -EINVAL;
			close(t->listen_fd);
			ring_free(&t->ring);
			goto fail;
		}
		t->nfree = SINK_CONNS_MAX;
		for (j = 0; j < SINK_CONNS_MAX; j++)
			t->free_slots[j] = SINK_CONNS_MAX - 1 - j;
	}
	return 0;
fail:
	while (i-- > 0) {
		close(ts[i].listen_fd);
		ring_free(&ts[i].ring);
		if (ts[i].tls)
			tls_server_free(ts[i].tls);
	}
	return rc;
}

static void
sink_report(const struct sink_shared *sh, const struct sink_thread *ts, unsigned n)
{
	struct sink_counts s;
	uint64_t t_last = 0;
	double el;
	unsigned i;

	memset(&s, 0, sizeof(s));
	for (i = 0; i < n; i++) {
		s.messages += ts[i].st.messages;
		s.bytes += ts[i].st.bytes;
		s.connections += ts[i].st.connections;
		s.refused += ts[i].st.refused;
		s.rcpt_ok += ts[i].st.rcpt_ok;
		s.rcpt_tempfail += ts[i].st.rcpt_tempfail;
		s.rcpt_permfail += ts[i].st.rcpt_permfail;
		s.protocol_errors += ts[i].st.protocol_errors;
		s.handshakes += ts[i].st.handshakes;
		s.handshakes_resumed += ts[i].st.handshakes_resumed;
		s.tls_errors += ts[i].st.tls_errors;
		if (ts[i].t_last_ns > t_last)
			t_last = ts[i].t_last_ns;
	}
	el = sh->t_first_ns && t_last > sh->t_first_ns ? (double)(t_last - sh->t_first_ns) / 1e9
	                                               : 0.0;
	printf(sh->o->json
	           ? "{\"messages\":%llu,\"bytes\":%llu,\"elapsed_s\":%.3f,\"msgs_per_s\":%.1f,"
	             "\"mb_per_s\":%.3f,\"connections\":%llu,\"refused\":%llu,\"rcpt_ok\":%llu,"
	             "\"rcpt_tempfail\":%llu,\"rcpt_permfail\":%llu,\"protocol_errors\":%llu,"
	           : "ringmx-bench sink: %llu messages, %llu bytes in %.3f s: %.1f msgs/s, %.3f "
	             "MB/s\nconnections: %llu (%llu refused); rcpts: %llu ok, %llu 4xx, %llu "
	             "5xx; protocol errors: %llu\n",
	       (unsigned long long)s.messages, (unsigned long long)s.bytes, el,
	       el > 0 ? (double)s.messages / el : 0.0, el > 0 ? (double)s.bytes / el / 1e6 : 0.0,
	       (unsigned long long)s.connections, (unsigned long long)s.refused,
	       (unsigned long long)s.rcpt_ok, (unsigned long long)s.rcpt_tempfail,
	       (unsigned long long)s.rcpt_permfail, (unsigned long long)s.protocol_errors);
	printf(sh->o->json ? "\"tls\":\"%s\",\"handshakes\":%llu,\"handshakes_resumed\":%llu,"
	                     "\"tls_errors\":%llu}\n"
	                   : "TLS (%s): %llu handshakes (%llu resumed), %llu TLS errors\n",
	       !sh->o->tls_cert[0]   ? "none"
	       : sh->o->implicit_tls ? "implicit"
	                             : "starttls",
	       (unsigned long long)s.handshakes, (unsigned long long)s.handshakes_resumed,
	       (unsigned long long)s.tls_errors);
	fflush(stdout);
}

/* Main thread: signals arrive only here (the workers block them), and it polls the stop
 * flag that --expect sets. */
static void
sink_wait(struct sink_shared *sh)
{
	const struct timespec step = {0, 50000000};
	sigset_t set;

	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	while (!__atomic_load_n(&sh->stop, __ATOMIC_RELAXED)) {
		if (sigtimedwait(&set, NULL, &step) > 0)
			__atomic_store_n(&sh->stop, 1, __ATOMIC_RELAXED);
	}
}

int
sink_run(const struct sink_opts *o)
{
	struct sink_shared sh = {.o = o, .record_fd = -1};
	struct sink_thread *ts = calloc(o->threads, sizeof(*ts));
	sigset_t set;
	unsigned i;
	int rc = 2;

	assert(o->threads > 0);
	if (!ts) {
		fprintf(stderr, "ringmx-bench sink: out of memory\n");
		return 2;
	}
	if (o->record) {
		sh.record_fd = open(o->record, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
		if (sh.record_fd < 0) {
			fprintf(stderr, "ringmx-bench sink: cannot open record file %s: %s\n",
			        o->record, strerror(errno));
			goto out;
		}
	}
	if (o->tls_cert[0] && !(sh.tickets = tls_tickets_new())) {
		fprintf(stderr, "ringmx-bench sink: --tls: no session ticket secret (out of "
		                "memory or no randomness)\n");
		goto out;
	}
	if (sink_threads_init(&sh, ts, o->threads) < 0)
		goto out;
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	for (i = 0; i < o->threads; i++)
		pthread_create(&ts[i].tid, NULL, sink_thread_main, &ts[i]);
	sink_wait(&sh);
	for (i = 0; i < o->threads; i++)
		pthread_join(ts[i].tid, NULL);
	sink_report(&sh, ts, o->threads);
	for (i = 0; i < o->threads; i++)
		close(ts[i].listen_fd);
	rc = 0;
out:
	if (sh.record_fd >= 0)
		close(sh.record_fd);
	if (sh.tickets)
		tls_tickets_free(sh.tickets);
	free(ts);
	return rc;
}
