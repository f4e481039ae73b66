/*
 * dsn.h -- RFC 3464 delivery status notifications (bounces, delay and success reports).
 *
 * Pure: no clock, no I/O. The caller passes the times, names and the original message,
 * and gets a complete RFC 5322 message (CRLF lines of at most 998 octets, not dot-stuffed)
 * to send from <> to the original envelope sender. message/global-delivery-status
 * (RFC 6533) is out of scope: a non-ASCII address is written in the 7-bit "utf-8;" form
 * inside message/delivery-status.
 *
 * The result contains 8-bit octets only when the original sender or a final recipient
 * is a UTF-8 address, or the returned original part has them (then the parts concerned
 * say "Content-Transfer-Encoding: 8bit"): the caller sends it with the same BODY= and
 * SMTPUTF8 as the original message arrived with.
 */
#ifndef RINGMX_QUEUE_DSN_H
#define RINGMX_QUEUE_DSN_H

#include <stdbool.h>
#include <stddef.h>
#include <time.h>

#include "core/strbuf.h"

#define DSN_RECIPIENTS_MAX 1000   /* recipients in one report; the caller splits beyond */
#define DSN_DIAG_MAX       1024   /* octets of one diagnostic text kept (cleaned, then cut) */
#define DSN_RETURN_MAX     131072 /* octets of the original returned; beyond, headers only */
#define DSN_ADDRESS_MAX    256    /* octets of a sender or final recipient address */
#define DSN_ORCPT_MAX      500    /* octets of an ORCPT value; longer ones are left out */
#define DSN_HOST_MAX       255    /* octets of our hostname; a longer Remote-MTA is cut */
#define DSN_QUEUE_ID_MAX   32     /* letters and digits of a queue id */
#define DSN_ENVID_MAX      100    /* RFC 3461 §4.4; a longer ENVID is cut */
#define DSN_TYPE_MAX       32     /* octets of an address or diagnostic type ("rfc822", "smtp") */

/* Per-recipient output is bounded by the limits above; so is the whole report. */
#define DSN_RCPT_OUTPUT_MAX 8192
#define DSN_OUTPUT_MAX      (2 * DSN_RETURN_MAX + DSN_RECIPIENTS_MAX * DSN_RCPT_OUTPUT_MAX + 8192)

enum dsn_action {
	DSN_ACTION_FAILED,
	DSN_ACTION_DELAYED,
	DSN_ACTION_DELIVERED,
	DSN_ACTION_RELAYED,
	DSN_ACTION_EXPANDED,
};

/* RET of RFC 3461: absent means HDRS. */
enum dsn_ret {
	DSN_RET_ABSENT,
	DSN_RET_HDRS,
	DSN_RET_FULL,
};

struct dsn_rcpt {
	const char *final_recipient;    /* "local@domain", UTF-8 allowed */
	const char *original_recipient; /* ORCPT, xtext-decoded "rfc822;addr"; NULL: none */
	enum dsn_action action;
	const char *status;          /* "5.1.1" */
	const char *remote_mta;      /* host name of the next hop; NULL: none */
	const char *diagnostic;      /* the remote reply, may be multi-line; NULL: none */
	const char *diagnostic_type; /* NULL: "smtp"; e.g. "X-Ringmx" for local reasons */
	time_t last_attempt;         /* 0: none */
	time_t will_retry_until;     /* DELAYED only; 0: none */
};

struct dsn_report {
	const char *hostname; /* ours: Reporting-MTA, From:, Message-ID */
	const char *queue_id;
	const char *sender; /* original envelope sender, never "" */
	const char *envid;  /* ENVID, xtext-decoded; NULL: none */
	time_t arrival;
	time_t date;  /* of this report */
	unsigned seq; /* tells apart reports for one message made in the same second */
	enum dsn_ret ret;
	const char *message; /* the original message, header section and body, CRLF */
	size_t message_len;
	const struct dsn_rcpt *rcpts;
	size_t rcpt_count;
};

/*
 * Appends the report to out as a complete message. Returns 0; -EINVAL when a required
 * field is missing or malformed (empty sender, hostname, queue id, status, address with
 * control characters or invalid UTF-8, no recipients); -E2BIG for more than
 * DSN_RECIPIENTS_MAX recipients; -EEXIST when no boundary candidate is free (the
 * original is built to collide with all of them); -ENOBUFS when out's limit (or memory)
 * ran out: DSN_OUTPUT_MAX always suffices. On error out keeps its previous length.
 * Remote text (diagnostic, Remote-MTA, ENVID) is cleaned to printable ASCII and cut to
 * its limit; an ORCPT that is not printable ASCII "type;addr" is left out.
 */
int dsn_build(struct strbuf *out, const struct dsn_report *r);

/* False for the null sender "" (a bounce of a bounce: log a double bounce), RFC 5321 §6.2. */
bool dsn_should_bounce(const char *sender);

/*
 * Length of the header section of msg: up to and including the line end of the last
 * header line, without the empty line. 0 when msg starts with an empty line; len when
 * it has no empty line (no body). Lines may end in CRLF, or in a bare LF or CR as the
 * copy of the original in dsn_build treats them.
 */
size_t dsn_header_section_len(const char *msg, size_t len);

#endif
