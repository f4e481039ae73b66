/*
 * smtp_client.h -- the client side of RFC 5321 (outbound relay) as a pure state machine.
 *
 * Bytes in, commands and events out: no syscalls, clocks or logging. The caller
 * connects, feeds the server's reply bytes to smtp_client_feed(), writes what
 * smtp_client_output() describes and reports it written with
 * smtp_client_output_consume(). Timeouts and a lost connection come back in
 * through smtp_client_abort(), so every recipient always ends with a result.
 *
 * Session: greeting 220, EHLO (HELO when EHLO gets a 5xx), STARTTLS per
 * tls_mode (then EHLO again, RFC 3207 §4.2), SMTP_CLIENT_EV_READY. Then any
 * number of transactions (smtp_client_send, SMTP_CLIENT_EV_TXN_DONE) and
 * smtp_client_quit(). With PIPELINING, MAIL, every RCPT and DATA go out in one
 * batch (RFC 2920) and their replies are matched in order.
 *
 * With PIPELINING and CHUNKING (RFC 3030) and params.chunking, a transaction is
 * MAIL, its RCPTs and "BDAT <size> LAST" followed by the body as it is (no
 * stuffing), all in one batch, and up to params.txn_window transactions may be in
 * flight at once (state CHUNK): smtp_client_send() is allowed while
 * smtp_client_can_send(), and TXN_DONE events come in the order of the sends. A
 * transaction sent while another is in flight, or after one that did not end with
 * a 2xx, starts with RSET, so that no server can hold a failed transaction's
 * state against the next one.
 *
 * Made-up results (remote = false) use these codes: peer's SIZE too small 552 5.3.4;
 * SMTPUTF8 needed but not offered 553 5.6.7; TLS required but not available 451 4.7.4;
 * malformed or oversized replies 451 4.4.2; smtp_client_abort(): 451 4.4.2 (lost,
 * timeout) or 451 4.7.5 (TLS handshake).
 */
#ifndef RINGMX_CORE_SMTP_CLIENT_H
#define RINGMX_CORE_SMTP_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#define SMTP_CLIENT_REPLY_LINE_MIN 512  /* RFC 5321 §4.5.3.1.5: a reply line, with CRLF */
#define SMTP_CLIENT_REPLY_LINE_CAP 8192 /* the largest reply_line_max accepted */
#define SMTP_CLIENT_REPLY_TEXT_MAX 256  /* stored reply text, with NUL; longer is cut */
#define SMTP_CLIENT_STATUS_MAX     16   /* "5.123.123" with NUL */
#define SMTP_CLIENT_ENVID_MAX      100  /* RFC 3461 §4.4 */
#define SMTP_CLIENT_ORCPT_MAX      500  /* RFC 3461 §4.2 */
#define SMTP_CLIENT_NOTIFY_MAX     32   /* "SUCCESS,FAILURE,DELAY" */
#define SMTP_CLIENT_CMD_MAX                                                                        \
	1000 /* one MAIL or RCPT line with CRLF (RFC 5321 §4.5.3.1.4                              \
	        plus RFC 1869 parameter room) */

enum smtp_client_state {
	SMTP_CLIENT_GREETING, /* connected, waiting for 220 */
	SMTP_CLIENT_EHLO,     /* EHLO sent */
	SMTP_CLIENT_HELO,     /* EHLO refused with 5xx, HELO sent */
	SMTP_CLIENT_STARTTLS, /* STARTTLS sent */
	SMTP_CLIENT_TLS_WAIT, /* 220 to STARTTLS: input discarded until smtp_client_tls_done() */
	SMTP_CLIENT_READY,    /* idle: smtp_client_send() or smtp_client_quit() */
	SMTP_CLIENT_MAIL,     /* waiting for the MAIL reply */
	SMTP_CLIENT_RCPT,     /* waiting for a RCPT reply */
	SMTP_CLIENT_DATA,     /* waiting for the DATA reply (354) */
	SMTP_CLIENT_BODY,     /* body queued, waiting for the final reply */
	SMTP_CLIENT_RSET,     /* the transaction failed; RSET sent */
	SMTP_CLIENT_CHUNK,    /* BDAT transactions in flight */
	SMTP_CLIENT_QUIT,     /* QUIT sent */
	SMTP_CLIENT_CLOSED,   /* after SMTP_CLIENT_EV_FAILED or _CLOSED: input is discarded */
};

enum smtp_client_tls_mode {
	SMTP_CLIENT_TLS_NONE,     /* never STARTTLS */
	SMTP_CLIENT_TLS_MAY,      /* STARTTLS when offered; plaintext when not, or refused */
	SMTP_CLIENT_TLS_REQUIRED, /* no STARTTLS offered or accepted: fail with 451 4.7.4 */
};

/* Capability bits from the EHLO reply (smtp_client_caps). */
#define SMTP_CLIENT_CAP_PIPELINING          0x01u
#define SMTP_CLIENT_CAP_SIZE                0x02u
#define SMTP_CLIENT_CAP_8BITMIME            0x04u
#define SMTP_CLIENT_CAP_SMTPUTF8            0x08u
#define SMTP_CLIENT_CAP_DSN                 0x10u
#define SMTP_CLIENT_CAP_STARTTLS            0x20u
#define SMTP_CLIENT_CAP_ENHANCEDSTATUSCODES 0x40u
#define SMTP_CLIENT_CAP_CHUNKING            0x80u

#define SMTP_CLIENT_TXN_WINDOW_MAX 64 /* the largest txn_window accepted */

struct smtp_client_params {
	const char *helo_name; /* our name for EHLO/HELO; must outlive the session */
	enum smtp_client_tls_mode tls_mode;
	bool tls_active;          /* implicit TLS (port 465): never STARTTLS */
	size_t reply_line_max;    /* octets with CRLF, SMTP_CLIENT_REPLY_LINE_MIN..._CAP */
	unsigned reply_lines_max; /* lines in one reply; more is a protocol error */
	unsigned rcpt_count_max;  /* recipients per smtp_client_send() */
	bool chunking;            /* BDAT when the peer has CHUNKING and PIPELINING */
	unsigned txn_window;      /* BDAT transactions in flight, 1..SMTP_CLIENT_TXN_WINDOW_MAX */
};

/* A server reply, or one made up for it (remote = false). */
struct smtp_client_reply {
	unsigned code; /* 250, 451, 550, ... */
	/* "5.1.1" from the reply (RFC 3463, class matching the code), else "N.0.0"; "" for 3xx */
	char status[SMTP_CLIENT_STATUS_MAX];
	bool remote; /* sent by the peer */
	/* "550 5.1.1 text": the lines' texts joined by one space, bytes outside 0x20-0x7e as '?' */
	char text[SMTP_CLIENT_REPLY_TEXT_MAX];
};

struct smtp_client_rcpt {
	const char *address; /* "local@domain" as address_format() writes it */
	const char *notify;  /* DSN NOTIFY= value, or NULL; sent only to a peer with DSN */
	const char *orcpt;   /* DSN ORCPT= value (xtext, "rfc822;..."), or NULL; likewise */
};

/* One transaction. Only body must stay valid (unchanged) until the transaction ends. */
struct smtp_client_txn {
	const char *sender; /* "local@domain"; "" for the null sender */
	const char *ret;    /* DSN RET= "FULL" or "HDRS", or NULL; sent only with DSN */
	const char *envid;  /* DSN ENVID= (xtext), or NULL; likewise */
	bool body_8bit;     /* BODY=8BITMIME when the peer has 8BITMIME (else sent as is) */
	bool smtputf8;      /* needs SMTPUTF8 (also implied by a non-ASCII address) */
	const struct smtp_client_rcpt *rcpts;
	unsigned rcpt_count;
	const uint8_t *body; /* unstuffed, CRLF line ends, without the final ".\r\n" */
	size_t body_len;
};

enum smtp_client_event_type {
	SMTP_CLIENT_EV_NONE,     /* nothing to decide */
	SMTP_CLIENT_EV_READY,    /* greeting, EHLO (and TLS) done: smtp_client_send() allowed */
	SMTP_CLIENT_EV_STARTTLS, /* handshake now, then smtp_client_tls_done() */
	SMTP_CLIENT_EV_TXN_DONE, /* results final; the session is READY again */
	SMTP_CLIENT_EV_FAILED,   /* session over (reply says why); results if in a txn; close */
	SMTP_CLIENT_EV_CLOSED,   /* QUIT answered; close */
};

struct smtp_client_event {
	enum smtp_client_event_type type;
	/* FAILED: why, always 4xx or 5xx (a bogus code becomes 451 4.4.2); CLOSED: the reply */
	const struct smtp_client_reply *reply;
	/*
	 * TXN_DONE, and FAILED during a transaction: one result per recipient in send
	 * order, valid until the next smtp_client_send() or smtp_client_free(). An
	 * accepted RCPT gets the final reply to the body (or to DATA); a refused RCPT
	 * keeps its own reply; a refused MAIL gives its reply to all. On FAILED, the
	 * recipients without such a final reply get the failure reply. With several
	 * transactions in flight, FAILED reports the oldest; smtp_client_next_failed()
	 * gives the others.
	 */
	const struct smtp_client_reply *results;
	unsigned rcpt_count;
};

enum smtp_client_abort_reason {
	SMTP_CLIENT_ABORT_LOST,    /* connection closed or reset */
	SMTP_CLIENT_ABORT_TIMEOUT, /* the peer stalled past the caller's timeout */
	SMTP_CLIENT_ABORT_TLS,     /* the TLS handshake failed */
};

struct smtp_client;

/* Creates a session waiting for the greeting. Returns NULL on allocation failure. */
struct smtp_client *smtp_client_new(const struct smtp_client_params *p);
void smtp_client_free(struct smtp_client *c);

/*
 * Consumes reply bytes; returns the number used and stops at the first event
 * (ev->type != NONE). While smtp_client_input_blocked() it uses nothing and returns
 * with SMTP_CLIENT_EV_NONE: feed the rest once smtp_client_output_consume() has
 * taken enough. In TLS_WAIT and CLOSED all len bytes count as used (discarded), and so do
 * bytes after the 220 that raises SMTP_CLIENT_EV_STARTTLS. Any split of the input
 * gives the same output and events; memory stays bounded by the params' limits.
 */
size_t smtp_client_feed(struct smtp_client *c, const uint8_t *in, size_t len,
                        struct smtp_client_event *ev);

/*
 * Starts a transaction; only while smtp_client_can_send(). Returns 0 with ev->type NONE and the
 * commands queued, or 0 with SMTP_CLIENT_EV_TXN_DONE when nothing can be sent
 * (body over the peer's SIZE: 552 5.3.4; SMTPUTF8 needed, not offered: 553 5.6.7).
 * Errors, with nothing queued: -EBUSY (not READY), -EINVAL (no recipients, a bad
 * address or DSN value), -E2BIG (over rcpt_count_max or a command over
 * SMTP_CLIENT_CMD_MAX), -ENOMEM.
 */
int smtp_client_send(struct smtp_client *c, const struct smtp_client_txn *t,
                     struct smtp_client_event *ev);

/* READY, or CHUNK with fewer than txn_window transactions in flight. */
bool smtp_client_can_send(const struct smtp_client *c);

/*
 * After SMTP_CLIENT_EV_FAILED: the next transaction that was in flight, as another
 * SMTP_CLIENT_EV_FAILED with its results; SMTP_CLIENT_EV_NONE when none is left.
 */
void smtp_client_next_failed(struct smtp_client *c, struct smtp_client_event *ev);

/* Queues QUIT; only in READY (else -EBUSY). Any reply then gives SMTP_CLIENT_EV_CLOSED. */
int smtp_client_quit(struct smtp_client *c);

/* After SMTP_CLIENT_EV_STARTTLS: the handshake succeeded; forgets the capabilities, EHLO again. */
void smtp_client_tls_done(struct smtp_client *c);

/*
 * The connection is gone or the peer stalled: raises SMTP_CLIENT_EV_FAILED with
 * a made-up 4xx reply (results as for any failure) unless CLOSED (ev NONE).
 */
void smtp_client_abort(struct smtp_client *c, enum smtp_client_abort_reason why,
                       struct smtp_client_event *ev);

/*
 * Describes the bytes to send as up to max iovecs, in order; returns how many
 * (0: nothing pending). Command text lives in the session, body bytes in the
 * caller's body; dot-stuffing inserts "." segments, so the body is never copied.
 * Valid until the next call on the session.
 */
unsigned smtp_client_output(const struct smtp_client *c, struct iovec *iov, unsigned max);

/* n bytes of the output were sent (n <= the bytes pending). */
void smtp_client_output_consume(struct smtp_client *c, size_t n);

bool smtp_client_output_pending(const struct smtp_client *c);

/* The next reply answers a command not yet sent in full: keep input until it is. */
bool smtp_client_input_blocked(const struct smtp_client *c);

enum smtp_client_state smtp_client_state(const struct smtp_client *c);
const char *smtp_client_state_name(enum smtp_client_state st);

/* SMTP_CLIENT_CAP_* bits of the current EHLO (0 after HELO); SIZE value, 0 if none. */
unsigned smtp_client_caps(const struct smtp_client *c);
size_t smtp_client_size_max(const struct smtp_client *c);
bool smtp_client_tls_active(const struct smtp_client *c);

/* The last complete reply from the peer (code 0 before any), for logs. */
const struct smtp_client_reply *smtp_client_last_reply(const struct smtp_client *c);

#endif
