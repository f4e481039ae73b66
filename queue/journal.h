/*
 * journal.h -- one worker's append-only, segmented log of queue changes.
 *
 * Records are opaque to the journal: a type and a payload, framed with a magic,
 * the length and a crc32c so that replay can tell a valid record from a torn or
 * corrupt one. Files live in spool_dir/<shard>/ as seg-<16 hex>.log.
 *
 * The hot path does no I/O here: journal_append() copies a record into the
 * pending batch; the worker takes the batch with journal_batch_begin(), writes it
 * and fdatasyncs it through io_uring (linked write + fsync), and reports the
 * result with journal_batch_end(). Records appended while a batch is in flight
 * wait for the next one: that is the group commit.
 *
 * Opening, replay, segment rotation and error recovery use plain syscalls: they
 * run at start or on rare paths.
 */
#ifndef RINGMX_QUEUE_JOURNAL_H
#define RINGMX_QUEUE_JOURNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#define JOURNAL_RECORD_MAX     (64u * 1024 * 1024) /* payload bytes of one record */
#define JOURNAL_BATCH_MAX      (8u * 1024 * 1024)  /* pending bytes before append says busy */
#define JOURNAL_SEGMENT_SIZE   (64u * 1024 * 1024) /* default rotation size */
#define JOURNAL_FILL_STEP      (4u * 1024 * 1024)  /* zeros written ahead of small batches */
#define JOURNAL_FILL_BATCH_AVG (64u * 1024)        /* batches larger on average append */

/* Module error codes, returned negated (-JOURNAL_ENOSPC). */
enum journal_error {
	JOURNAL_ENOSPC = 1000, /* disk full: 452 4.3.1 */
	JOURNAL_EBUSY,         /* pending batch full: 452 4.3.1, try again later */
	JOURNAL_ETOOBIG,       /* record over JOURNAL_RECORD_MAX */
	JOURNAL_EIO,           /* write or sync failed */
	JOURNAL_ECORRUPT,      /* used in replay reports */
};

enum journal_rec_type {
	JOURNAL_REC_MESSAGE = 1, /* envelope + body of one accepted message */
	JOURNAL_REC_DELIVERED,   /* recipients of a message delivered */
	JOURNAL_REC_DEFERRED,    /* recipients deferred, next attempt, last error */
	JOURNAL_REC_BOUNCED,     /* recipients failed permanently */
	JOURNAL_REC_DELETED,     /* message removed (ringmxctl delete, all done) */
	JOURNAL_REC_HOLD,        /* message held / released */
};

/* Where a record lives: used to read a body back and to know when a segment is done. */
struct journal_loc {
	uint64_t segment; /* segment sequence number */
	uint64_t offset;  /* of the record header */
	uint32_t length;  /* of the payload */
};

/* One batch handed to the worker to write at offset and then fdatasync. */
struct journal_write {
	int fd;
	const void *buf;
	size_t len;
	uint64_t offset;
	bool sync;      /* false with queue.sync = none */
	uint64_t batch; /* sequence number, increasing */
};

/* Called once per valid record during replay, in log order. Returns 0 or a negative error. */
typedef int (*journal_replay_fn)(void *arg, enum journal_rec_type type, const void *payload,
                                 size_t len, const struct journal_loc *loc);

/* One line per notable replay event (torn tail cut, segment quarantined, ...). */
typedef void (*journal_report_fn)(void *arg, const char *line);

struct journal_params {
	const char *dir;       /* spool_dir/<shard>, created if missing */
	uint64_t segment_size; /* rotation threshold; 0: JOURNAL_SEGMENT_SIZE */
	bool sync;
	journal_replay_fn replay;
	journal_report_fn report;
	void *arg;
};

struct journal;

/*
 * Opens the journal and replays it: a torn tail in the last segment is cut at
 * the last valid record; a corrupt record inside a segment quarantines that
 * segment (renamed to *.corrupt) after its readable records are replayed and
 * copied into a fresh segment, so nothing readable is lost (the records of the
 * segments after it are moved there too, which keeps the log in order). Segments
 * with no record left are removed. Appends then go to a new segment, never after
 * a cut tail. A replay callback's -EINVAL is reported and the record skipped; any
 * other error fails the open. Returns 0 with *out set, or a negative error with err
 * filled.
 */
int journal_open(const struct journal_params *params, struct journal **out, char *err,
                 size_t err_len);
void journal_close(struct journal *j);

/*
 * Copies one record (the concatenation of at most 16 parts) into the pending batch
 * and fills *loc. Returns the batch number that will make it durable (> 0), or
 * -JOURNAL_EBUSY (pending batch would pass JOURNAL_BATCH_MAX; a lone record may be
 * bigger), -JOURNAL_ETOOBIG or -ENOMEM.
 */
int64_t journal_append(struct journal *j, enum journal_rec_type type, const struct iovec *parts,
                       unsigned part_count, struct journal_loc *loc);

/* True when records are pending and no batch is in flight. */
bool journal_batch_ready(const struct journal *j);

/*
 * Moves the pending records into flight and describes the write (creating the
 * segment first when the batch starts one); 0, or -JOURNAL_ENOSPC / -JOURNAL_EIO when
 * the segment can't be created: the pending records are then dropped and every
 * message waiting for a batch above journal_durable_batch() must be refused.
 */
int journal_batch_begin(struct journal *j, struct journal_write *w);

/*
 * Reports the outcome of the in-flight batch: res is 0, or a negative errno from
 * the write or the sync (a short write counts as -EIO). On failure the journal
 * cuts the segment back to before the batch and moves to a new segment, so a
 * failed batch is never replayed. The records pending behind it are dropped too
 * (their locations were in that segment). Returns 0, or -JOURNAL_ENOSPC /
 * -JOURNAL_EIO: then refuse every message waiting for a batch above
 * journal_durable_batch() -- the in-flight one and the pending one. Batch numbers
 * keep increasing, so a later durable batch never stands for a dropped one.
 */
int journal_batch_end(struct journal *j, int res);

/* Highest batch number known durable (0: none yet). */
uint64_t journal_durable_batch(const struct journal *j);

/*
 * Reads a record's payload (loc->length bytes, len >= that) back, e.g. an evicted body,
 * verifying its crc. 0, -EAGAIN if the record is not durable yet, -EBADMSG if it does
 * not verify, or -errno.
 */
int journal_read(struct journal *j, const struct journal_loc *loc, void *buf, size_t len);

/*
 * Segment bookkeeping for deletion of finished segments (outbound issue). The current
 * segment is where the next batch goes; deleting it, or the one being written, is
 * -EBUSY. Deleting a segment also syncs the directory. Beware: a segment holding
 * DELETED/DELIVERED records for messages in older segments must outlive those.
 */
uint64_t journal_current_segment(const struct journal *j);
int journal_segment_delete(struct journal *j, uint64_t segment);

/* The lowest segment that may still be on disk: deleting in order starts here. */
uint64_t journal_oldest_segment(const struct journal *j);

/* Bytes on disk across segments, for stats. */
uint64_t journal_disk_bytes(const struct journal *j);

#endif
