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
	QUEUE_RCPT_PENDING,
	QUEUE_RCPT_DELIVERED,
	QUEUE_RCPT_BOUNCED,
};

struct queue_rcpt {
	char *address; /* "local@domain" */
	char *params;  /* ESMTP RCPT parameters as received, "" if none */
	enum queue_rcpt_state state;
	uint32_t attempts;
	uint64_t next_attempt_ms; /* wall clock, ms */
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
 * Tiny records about a message already journaled; each fills one iovec in scratch and
 * returns 1, or -ENOSPC when scratch is small (-EINVAL for count outside 1..RCPTS_MAX).
 * DELETED: u64 id. DELIVERED: u64 id, u32 count, count x u32 recipient index.
 */
int queue_record_encode_deleted(uint64_t id, uint8_t *scratch, size_t scratch_len,
                                struct iovec *iov);
int queue_record_encode_delivered(uint64_t id, const unsigned *rcpt_index, unsigned count,
                                  uint8_t *scratch, size_t scratch_len, struct iovec *iov);

/*
 * Adds an accepted message (copies envelope and body). Returns the message, or
 * NULL when the memory limit or QUEUE_MESSAGES_MAX is reached.
 */
struct queue_message *queue_add(struct queue *q, uint64_t id, const struct queue_envelope *env,
                                const uint8_t *body, size_t body_len,
                                const struct journal_loc *loc);

/*
 * Applies one replayed journal record (a journal_replay_fn); 0, -EINVAL for a record that
 * does not decode, or -ENOMEM when the message does not fit even without its body (over
 * the memory limit the body is left in the journal: body = NULL). Idempotent: a MESSAGE
 * for an id already queued is ignored; DELETED/DELIVERED for an unknown id are no-ops.
 * DEFERRED, BOUNCED and HOLD are accepted and ignored until their payloads are defined.
 */
int queue_replay(struct queue *q, enum journal_rec_type type, const void *payload, size_t len,
                 const struct journal_loc *loc);

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

#endif
