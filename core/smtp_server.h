/*
 * smtp_server.h -- the server side of RFC 5321 as a pure state machine.
 *
 * Bytes in, replies and events out: no syscalls, clocks or logging. The caller
 * (core/worker.c) feeds received bytes, sends what smtp_server_output() holds,
 * and answers the events that need a decision from outside (policy, journal,
 * TLS) by calling the matching smtp_server_*() function before feeding more.
 *
 * Replies of a pipelined group are collected and handed out together
 * (RFC 2920): the caller sends the output once per read, not per command.
 *
 * CHUNKING (RFC 3030): "BDAT <size> [LAST]" is followed by exactly <size> octets
 * of message content, taken as they are (no dot-unstuffing), across any feed()
 * split; the next octet starts a command line again. Each chunk is answered
 * "250 2.0.0 <size> octets received" once its octets are in, except the LAST,
 * which raises SMTP_EV_MESSAGE as the end of DATA does. Chunk octets are read and
 * discarded also when their BDAT is refused (503/530/554). A BDAT line whose size
 * cannot be read (not 1..20 digits, too big for size_t, junk after it, line too
 * long) leaves the chunk's end unknown: 501 or 500, then 421 and SMTP_EV_CLOSE,
 * so message bytes are never run as commands. BDAT LAST ends the transaction
 * whatever its outcome (stored, refused, or refused for lack of a recipient), so
 * a client may pipeline the next MAIL right after the chunk; RSET or EHLO between
 * chunks discards the content; DATA and RCPT after a BDAT are refused with 503.
 * BINARYMIME is not offered, so content is text: bare CR and LF follow
 * params.bare_newline as in DATA, and a missing final CRLF is added, so the stored
 * body ends as a DATA body does. The limit counts the body as stored.
 */
#ifndef RINGMX_CORE_SMTP_SERVER_H
#define RINGMX_CORE_SMTP_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/address.h"

#define SMTP_LINE_MAX     512         /* RFC 5321 §4.5.3.1.4, with CRLF */
#define SMTP_LINE_EXT_MAX 1012        /* with ESMTP parameters: RFC 3461 §4 adds 500 to RCPT */
#define SMTP_OUTPUT_MAX   (64 * 1024) /* queued reply bytes before we stop reading */
#define SMTP_HELO_MAX     255
#define SMTP_RECEIVED_MAX 1024              /* the Received: header we prepend */
#define SMTP_PARAMS_MAX   SMTP_LINE_EXT_MAX /* the parameters of one MAIL or RCPT, with NUL */
#define SMTP_ENVID_MAX    100               /* RFC 3461 §4.4: ENVID, decoded */
#define SMTP_ORCPT_MAX    500               /* RFC 3461 §4.2: the address of ORCPT, decoded */

enum smtp_server_state {
	SMTP_SERVER_GREETING,  /* waiting for EHLO/HELO */
	SMTP_SERVER_READY,     /* EHLO done, no transaction */
	SMTP_SERVER_MAIL,      /* MAIL accepted, waiting for RCPT */
	SMTP_SERVER_RCPT,      /* at least one RCPT accepted */
	SMTP_SERVER_DATA,      /* reading the message body */
	SMTP_SERVER_BDAT,      /* reading the octets of an accepted BDAT chunk */
	SMTP_SERVER_DATA_WAIT, /* body complete, waiting for smtp_server_message_done() */
	SMTP_SERVER_RCPT_WAIT, /* waiting for smtp_server_rcpt_done() */
	SMTP_SERVER_TLS_WAIT,  /* input discarded until the handshake ends */
	SMTP_SERVER_CLOSING,   /* QUIT or 421 sent: no more input is read */
};

enum smtp_event_type {
	SMTP_EV_NONE,     /* nothing to decide; all input consumed unless output is full */
	SMTP_EV_RCPT,     /* ev.rcpt needs a verdict: call smtp_server_rcpt_done() */
	SMTP_EV_MESSAGE,  /* a complete message: store it, then smtp_server_message_done() */
	SMTP_EV_STARTTLS, /* 220 queued: flush it, drop the rest of the input, handshake */
	SMTP_EV_CLOSE,    /* flush the output, then close the connection */
};

enum smtp_close_reason {
	SMTP_CLOSE_QUIT,
	SMTP_CLOSE_ERRORS,            /* max_errors reached: 421 4.7.0 sent */
	SMTP_CLOSE_TLS_REQUIRED_QUIT, /* QUIT while TLS was required and never started */
	SMTP_CLOSE_SHUTDOWN,          /* smtp_server_shutdown(): 421 4.3.2 sent */
	SMTP_CLOSE_TIMEOUT,           /* smtp_server_timeout(): 421 4.4.2 sent */
	SMTP_CLOSE_CHUNK_UNFRAMED,    /* a BDAT size was unreadable: 421 4.5.0 sent */
};

/* What a session is allowed and what it has; set by the caller at connect and on TLS. */
struct smtp_server_params {
	const char *hostname; /* our name, for the banner and EHLO */
	bool starttls_offer;  /* advertise STARTTLS (tls: may|required, not yet active) */
	bool tls_required;    /* MAIL refused with 530 5.7.0 before STARTTLS */
	bool auth_required;   /* MAIL refused with 530 5.7.0 before AUTH (auth issue) */
	bool tls_active;      /* implicit TLS, or after STARTTLS */
	enum { SMTP_BARE_NEWLINE_NORMALIZE, SMTP_BARE_NEWLINE_REJECT } bare_newline;
};

struct smtp_server_limits {
	size_t message_size_max;  /* bytes of body as stored (unstuffed, CRLF-normalized) */
	unsigned rcpt_count_max;  /* 452 4.5.3 past this */
	unsigned error_count_max; /* 421 4.7.0 and close at this many bad commands */
};

/*
 * A recipient as accepted: the parsed mailbox and its ESMTP parameters.
 *
 * Parameters (here and in smtp_envelope.sender_params) are what the queue stores and
 * the relay passes on: the text after the path ("" if none) in one spelling,
 * "KEYWORD[=value]" joined by single spaces, keywords upper-case, in the order
 * received, each keyword at most once. Only these are accepted, with valid values:
 *   MAIL  SIZE=digits  BODY=7BIT|8BITMIME  SMTPUTF8  RET=FULL|HDRS  ENVID=xtext
 *   RCPT  NOTIFY=NEVER|SUCCESS,FAILURE,DELAY (a list in any order)  ORCPT=type;xtext
 * BODY, RET and NOTIFY values are upper-cased. ENVID and ORCPT stay as received, valid
 * RFC 3461 xtext (see address_xtext_decode()) that decodes to printable ASCII: an
 * ENVID of at most SMTP_ENVID_MAX; an ORCPT address of at most SMTP_ORCPT_MAX after
 * an atom type such as "rfc822" or "utf-8" (its case as received).
 */
struct smtp_rcpt {
	struct address addr;
	char params[SMTP_PARAMS_MAX]; /* NOTIFY and ORCPT, as above */
};

/* The envelope of the current transaction, valid from SMTP_EV_MESSAGE until done. */
struct smtp_envelope {
	struct address sender;
	char sender_params[SMTP_PARAMS_MAX]; /* SIZE, BODY, SMTPUTF8, RET and ENVID, as above */
	bool body_8bitmime;
	bool smtputf8;
	const struct smtp_rcpt *rcpts;
	unsigned rcpt_count;
	/*
	 * Unstuffed, without the final ".\r\n"; never NULL. Bare LF and bare CR are
	 * stored as CRLF (NORMALIZE) but do not start a line, so a body may hold a
	 * line "." that came in as "\n.\r\n": relaying must dot-stuff as usual.
	 * BDAT content is the chunks' octets joined, normalized the same way, with a
	 * final CRLF added when it lacks one (an empty one stays empty).
	 */
	const uint8_t *body;
	size_t body_len;
};

struct smtp_event {
	enum smtp_event_type type;
	const struct smtp_rcpt *rcpt;         /* SMTP_EV_RCPT */
	const struct smtp_envelope *envelope; /* SMTP_EV_MESSAGE */
	enum smtp_close_reason close;         /* SMTP_EV_CLOSE */
	size_t discarded;                     /* SMTP_EV_STARTTLS: bytes after it, dropped */
};

/* Result of storing a message (smtp_server_message_done). */
enum smtp_store_result {
	SMTP_STORE_OK,      /* 250 2.0.0 Ok: queued as ID */
	SMTP_STORE_NOSPACE, /* 452 4.3.1 */
	SMTP_STORE_ERROR,   /* 451 4.3.0 */
	SMTP_STORE_LOOP,    /* 554 5.4.6: more Received: headers than limits.max_hops */
};

struct smtp_server;

/*
 * Creates a session with the 220 banner queued (with implicit TLS the caller
 * sends it once the handshake is done). params.hostname must outlive the session.
 * The session owns its buffers; body memory grows up to limits.message_size_max.
 * Returns NULL on allocation failure.
 */
struct smtp_server *smtp_server_new(const struct smtp_server_params *params,
                                    const struct smtp_server_limits *limits);
void smtp_server_free(struct smtp_server *s);

/*
 * Consumes up to len bytes; returns the number used and stops at the first event
 * that needs the caller (ev->type != SMTP_EV_NONE). It also stops, with
 * SMTP_EV_NONE, when smtp_server_output_full() (feed the rest once output has
 * drained) and in CLOSING (returns 0). After SMTP_EV_STARTTLS all len bytes count
 * as used: they were discarded. Never blocks; input split at any byte boundary
 * gives the same replies and events. Must not be called while an event waits
 * for its smtp_server_*_done() answer.
 */
size_t smtp_server_feed(struct smtp_server *s, const uint8_t *in, size_t len,
                        struct smtp_event *ev);

/* Answers SMTP_EV_RCPT: reply NULL accepts (250 2.1.5), else it is the refusal line. */
void smtp_server_rcpt_done(struct smtp_server *s, const char *reply);

/* Answers SMTP_EV_MESSAGE. queue_id is used in the 250 reply. Resets the transaction. */
void smtp_server_message_done(struct smtp_server *s, enum smtp_store_result r,
                              const char *queue_id);

/* After SMTP_EV_STARTTLS: the handshake succeeded; the session starts over (RFC 3207 §4.2). */
void smtp_server_tls_done(struct smtp_server *s);

/*
 * Queues 421 and moves to CLOSING (timeout or shutdown); the caller flushes and
 * closes. No-ops once CLOSING. May come while an event waits: the envelope stays
 * valid and the later *_done() answer is accepted but sends nothing.
 */
void smtp_server_timeout(struct smtp_server *s);
void smtp_server_shutdown(struct smtp_server *s);

/* Reply bytes waiting to be sent; the caller calls smtp_server_output_consume(n) once sent. */
const uint8_t *smtp_server_output(const struct smtp_server *s, size_t *len);
void smtp_server_output_consume(struct smtp_server *s, size_t n);

/* True when output is over SMTP_OUTPUT_MAX: stop reading until it drains. */
bool smtp_server_output_full(const struct smtp_server *s);

enum smtp_server_state smtp_server_state(const struct smtp_server *s);
const char *smtp_server_state_name(enum smtp_server_state st);
/* For data_timeout vs command_timeout: true in DATA and inside BDAT chunk octets. */
bool smtp_server_in_data(const struct smtp_server *s);

/* The HELO/EHLO name given, "" before; and ESMTP vs SMTP. */
const char *smtp_server_helo(const struct smtp_server *s);
bool smtp_server_esmtp(const struct smtp_server *s);

/* Counters for the disconnect log line. */
struct smtp_server_counts {
	unsigned commands, errors, messages, rcpts_accepted, rcpts_refused;
};
void smtp_server_counts(const struct smtp_server *s, struct smtp_server_counts *c);

#endif
