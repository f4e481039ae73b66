/*
 * queue.h -- one worker's in-memory queue of accepted messages, its queue ids,
 * and the encoding of messages into journal records.
 *
 * Each worker owns one struct queue; nothing here is shared between threads.
 */
#ifndef RINGMX_QUEUE_QUEUE_H
#define RINGMX_QUEUE_QUEUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "queue/journal.h"

#define QUEUE_ID_LEN    16                     /* hex digits of a queue id */
#define QUEUE_RCPTS_MAX 10000                  /* recipients of one message */
#ifndef QUEUE_MESSAGES_MAX                     /* test_queue.c compiles queue.c with a small one */
#define QUEUE_MESSAGES_MAX (16u * 1024 * 1024) /* messages in one worker's queue */
#endif
#define QUEUE_TEXT_MAX 1024 /* one envelope string (address, params, names) */

/* Queue ids: time in µs at the worker's start, plus a counter, with the worker number
 * in the low 6 bits; printed as 16 hex digits. Unique across workers and restarts. */
#define QUEUE_WORKER_BITS 6

enum queue_rcpt_state {
	QUEUE_RCPT_PENDING, /* not tried yet, or deferred (attempts > 0) */
	QUEUE_RCPT_DELIVERED,
	QUEUE_RCPT_BOUNCED,
};

#define QUEUE_IN_FLIGHT UINT64_MAX /* next_attempt_ms of a recipient in a delivery job */

struct queue_rcpt {
	char *address;               /* "local@domain" */
	char *params;                /* ESMTP RCPT parameters as received, "" if none */
	enum queue_rcpt_state state; /* these four change through queue_rcpt_outcome */
	uint32_t attempts;
	uint64_t next_attempt_ms; /* wall clock, ms; QUEUE_IN_FLIGHT while in a job */
	char *last_error;         /* NULL if none; malloc'd, freed by queue_remove */
};

/* Facts about how the message arrived, recorded for Received:, logs and DSNs. */
struct queue_origin {
	const char *client_addr; /* "192.0.2.1" */
	const char *client_name; /* HELO/EHLO name */
	const char *protocol;    /* "ESMTP", "ESMTPS", "ESMTPSA", ... */
	const char *tls_version; /* "" without TLS */
	const char *auth_user;   /* "" without AUTH */
};

/* Input to queue_message_new: what the server accepted. */
struct queue_envelope {
	const char *sender; /* "" for <> */
	const char *sender_params;
	const char *const *rcpt_addresses;
	const char *const *rcpt_params;
	unsigned rcpt_count;
	struct queue_origin origin;
	uint64_t arrival_ms; /* wall clock */
};

struct queue_message {
	uint64_t id;
	char id_text[QUEUE_ID_LEN + 1];
	uint64_t arrival_ms;
	char *sender;
	char *sender_params;
	char *client_addr, *client_name, *protocol, *tls_version, *auth_user;
	struct queue_rcpt *rcpts;
	unsigned rcpt_count;
	bool held;
	uint8_t *body; /* NULL when evicted: journal_read(loc) gives the record
	                * payload, whose last body_len bytes are the body */
	size_t body_len;
	struct journal_loc loc; /* of the JOURNAL_REC_MESSAGE record */
	size_t memory;          /* bytes charged to the queue's memory limit */
};

struct queue;

/* Creates an empty queue for worker `worker` with a memory limit in bytes. */
struct queue *queue_new(unsigned worker, uint64_t memory_limit);
void queue_free(struct queue *q);

/* A fresh queue id (never one seen in replay); fills text with 16 hex digits + NUL. */
uint64_t queue_next_id(struct queue *q, uint64_t now_us, char text[QUEUE_ID_LEN + 1]);
void queue_id_format(uint64_t id, char text[QUEUE_ID_LEN + 1]);

/*
 * True if a message of body_len bytes with this envelope would fit under the
 * memory limit (the server answers 452 4.3.1 otherwise, before DATA if it can).
 */
bool queue_has_room(const struct queue *q, size_t body_len);

/*
 * Encodes a message record into iov (header + body, no body copy): iov[0] points
 * into scratch (the caller keeps it alive until journal_append has copied it).
 * Returns the iov count (2), or a negative error (-ENOSPC when scratch is small,
 * -EINVAL for no recipients or more than QUEUE_RCPTS_MAX, or a text over QUEUE_TEXT_MAX).
 * NULL strings in env are recorded as "".
 */
int queue_record_encode(uint64_t id, const struct queue_envelope *env, const uint8_t *body,
                        size_t body_len, uint8_t *scratch, size_t scratch_len, struct iovec iov[2]);

/* Bytes of scratch queue_record_encode needs for env (0: env breaks a limit). */
size_t queue_record_header_len(const struct queue_envelope *env);

/*
 * Small records about a message already journaled; each fills one iovec in scratch (no
 * allocation) and returns 1, or -ENOSPC when scratch is small. Replay decodes them with
 * the same checks as MESSAGE records.
 *
 * DELETED: the id (8 bytes).
 * Outcome, type JOURNAL_REC_DELIVERED, _DEFERRED or _BOUNCED: recipients rcpt_idx[0..n)
 * of message id get that outcome with attempts, next_attempt_ms and last_error (NULL:
 * none; cut to QUEUE_TEXT_MAX bytes as queue_rcpt_outcome cuts it). At most
 * QUEUE_OUTCOME_RECORD_MAX(n) bytes. -EINVAL for another type, n outside
 * 1..QUEUE_RCPTS_MAX or an index >= QUEUE_RCPTS_MAX.
 * HOLD: message id held (true) or released (false); QUEUE_HOLD_RECORD_LEN bytes.
 */
#define QUEUE_OUTCOME_RECORD_MAX(n) ((size_t)28 + QUEUE_TEXT_MAX + 4 * (size_t)(n))
#define QUEUE_HOLD_RECORD_LEN       10
int queue_record_encode_deleted(uint64_t id, uint8_t *scratch, size_t scratch_len,
                                struct iovec *iov);
int queue_record_encode_outcome(uint64_t id, enum journal_rec_type type, const unsigned *rcpt_idx,
                                unsigned n, uint32_t attempts, uint64_t next_attempt_ms,
                                const char *last_error, uint8_t *scratch, size_t cap,
                                struct iovec *iov);
int queue_record_encode_hold(uint64_t id, bool held, uint8_t *scratch, size_t cap,
                             struct iovec *iov);

/*
 * Adds an accepted message (copies envelope and body). Returns the message, or
 * NULL when the memory limit or QUEUE_MESSAGES_MAX is reached.
 */
struct queue_message *queue_add(struct queue *q, uint64_t id, const struct queue_envelope *env,
                                const uint8_t *body, size_t body_len,
                                const struct journal_loc *loc);

/*
 * Applies one replayed journal record (a journal_replay_fn); 0, -EINVAL for a record that
 * does not decode or names a recipient the message does not have, or -ENOMEM when the
 * message does not fit even without its body (over the memory limit the body is left in
 * the journal: body = NULL) or a last_error can't be copied. Idempotent: a MESSAGE for an
 * id already queued is ignored; DELETED, outcome and HOLD records for an unknown id are
 * no-ops (the message was deleted or lay in a quarantined segment). Outcomes go through
 * queue_rcpt_outcome's rules, so duplicated or reordered outcomes give the same state.
 * A message whose recipients are all final stays queued until its DELETED record.
 */
int queue_replay(struct queue *q, enum journal_rec_type type, const void *payload, size_t len,
                 const struct journal_loc *loc);

/*
 * Records an outcome of recipient idx (also used by replay): st is QUEUE_RCPT_PENDING
 * for a deferral, or a final state. A recipient already DELIVERED or BOUNCED is left
 * unchanged, and so is one whose attempts are above those of a deferral. Otherwise sets
 * state, attempts and next_attempt_ms and replaces last_error with a copy of at most
 * QUEUE_TEXT_MAX bytes (NULL clears it); the copy is charged to the queue's memory but
 * never refused for the limit, since an outcome must be kept. 0, -EINVAL (idx or st out
 * of range), or -ENOMEM (nothing changed). Change rcpt states only through here: the
 * queue counts pending recipients.
 */
int queue_rcpt_outcome(struct queue *q, struct queue_message *m, unsigned idx,
                       enum queue_rcpt_state st, uint32_t attempts, uint64_t next_attempt_ms,
                       const char *last_error);

/* Holds (no delivery attempts) or releases a queued message. */
void queue_hold(struct queue *q, struct queue_message *m, bool held);

/* True when no recipient of m is PENDING (O(1)). */
bool queue_message_finished(const struct queue_message *m);

struct queue_message *queue_find(struct queue *q, uint64_t id);
void queue_remove(struct queue *q, struct queue_message *m);

/* Iteration in arrival order: start with NULL. */
struct queue_message *queue_next(struct queue *q, struct queue_message *prev);

struct queue_stats {
	uint64_t messages;
	uint64_t recipients_pending;
	uint64_t memory;
	uint64_t memory_limit;
};
void queue_stats(const struct queue *q, struct queue_stats *st);

/* Messages queued. */
size_t queue_count(const struct queue *q);

#endif
