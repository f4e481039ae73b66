/*
 * store.h -- one worker's store: its queue shard and the journal that makes it
 * durable (records, group commit, segments, compaction).
 *
 * Both directions of a worker write through it: inbound sessions add messages,
 * outbound delivery records outcomes. It submits only its own journal writes on
 * the worker's ring and knows nothing of connections.
 */
#ifndef RINGMX_CORE_STORE_H
#define RINGMX_CORE_STORE_H

#include <liburing.h>
#include <stdbool.h>
#include <stdint.h>

#include "core/config.h"
#include "core/uring_ud.h"
#include "queue/journal.h"
#include "queue/queue.h"

#define STORE_RECORD_SCRATCH (1024 * 1024) /* encoded envelope of one message */

struct store;

struct store_counters {
	uint64_t journal_batches, journal_syncs, journal_errors;
};

/*
 * Opens worker `index`'s journal under spool_dir and replays it into a new queue
 * shard. NULL with err filled on failure.
 */
struct store *store_open(unsigned index, const struct config *cfg, char *err, size_t err_len);
void store_close(struct store *st);

struct queue *store_queue(struct store *st);
const struct store_counters *store_counters(const struct store *st);
uint64_t store_disk_bytes(const struct store *st);

/*
 * Queues a message and appends its journal record; *batch is the journal batch
 * that makes it durable. NULL when it can't be taken: *batch is then -E2BIG (the
 * envelope does not encode) or -ENOSPC (queue memory, or the journal, is full).
 */
struct queue_message *store_message(struct store *st, uint64_t id, const struct queue_envelope *qe,
                                    const uint8_t *body, size_t body_len, int64_t *batch);

/* Journals recipients' outcome (durable with the next batch: a crash may repeat a delivery). */
void store_outcome(struct store *st, const struct queue_message *m, enum journal_rec_type type,
                   const unsigned *idx, unsigned n, uint32_t attempts, uint64_t next_ms,
                   const char *error);

/* The message leaves the queue, and by its DELETED record the journal. */
void store_delete(struct store *st, struct queue_message *m);

/* The message leaves the queue only: its record never became durable. */
void store_forget(struct store *st, struct queue_message *m);

/* ringmxctl hold/release, journaled. */
void store_hold(struct store *st, struct queue_message *m, bool held);

/* The message bytes: in memory, or read back from the journal into *owned (freed by the caller). */
const uint8_t *store_body(struct store *st, const struct queue_message *m, uint8_t **owned);

/* Per tick: compaction of lagging segments, deletion of segments nothing lives in. */
void store_tick(struct store *st);

/* ---- group commit on the worker's ring ---- */

/* True while records wait for a batch or a batch is in flight. */
bool store_busy(const struct store *st);

/*
 * Starts a batch (write, then linked fdatasync) when records wait and none is in
 * flight. 0, or a negative error: the pending records were dropped (no segment).
 */
int store_submit(struct store *st, struct io_uring *ring);

/*
 * A completion of OP_JOURNAL_WRITE or OP_JOURNAL_SYNC. Returns 1 while the batch is
 * still in flight; 0 when it is durable (*durable: the batch number); a negative
 * error when it failed: every message waiting for a batch must be refused.
 */
int store_on_journal(struct store *st, struct io_uring *ring, enum worker_op op, int res,
                     uint64_t *durable);

#endif
