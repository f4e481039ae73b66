#include "core/store.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"

#define COMPACT_LAG_SEGMENTS 4  /* messages this many segments behind are rewritten, */
#define COMPACT_BATCH        64 /* this many per tick */
#define COMPACT_MOVES_MAX    (2 * COMPACT_BATCH) /* rewrites waiting for their sync */
#define OUTCOME_SCRATCH      (QUEUE_TEXT_MAX + 64 * 1024)

/* A message written again at the head: it lives there once that batch is durable. */
struct compact_move {
	uint64_t id;
	uint64_t batch;
	struct journal_loc loc;
};

struct store {
	struct journal *journal;
	struct queue *queue;
	uint8_t *record_scratch;

	struct journal_write jw;
	bool jw_busy;
	int jw_error;
	size_t jw_written;

	struct compact_move moves[COMPACT_MOVES_MAX];
	unsigned move_count;

	/* live messages per journal segment: count[seg - seg_base], for deleting segments */
	uint64_t seg_base;
	unsigned *seg_live;
	size_t seg_cap;

	struct store_counters counters;
};

struct queue *
store_queue(struct store *st)
{
	return st->queue;
}

const struct store_counters *
store_counters(const struct store *st)
{
	return &st->counters;
}

uint64_t
store_disk_bytes(const struct store *st)
{
	return journal_disk_bytes(st->journal);
}

/* ---- segments ---------------------------------------------------------------------- */

/* Counts a message in the segment that holds its record; false without memory. */
static bool
store_seg_add(struct store *st, uint64_t seg)
{
	/* seg_base is the oldest segment at start; nothing is ever written below it */
	assert(seg >= st->seg_base);
	size_t i = seg - st->seg_base;
	if (i >= st->seg_cap) {
		size_t cap = st->seg_cap ? st->seg_cap : 64;
		while (cap <= i)
			cap *= 2;
		unsigned *p = realloc(st->seg_live, cap * sizeof(*p));
		if (p == NULL)
			return false;
		memset(p + st->seg_cap, 0, (cap - st->seg_cap) * sizeof(*p));
		st->seg_live = p;
		st->seg_cap = cap;
	}
	st->seg_live[i]++;
	return true;
}

static unsigned
store_seg_live(const struct store *st, uint64_t seg)
{
	if (st->seg_live == NULL || seg < st->seg_base || seg - st->seg_base >= st->seg_cap)
		return 0;
	return st->seg_live[seg - st->seg_base];
}

static void
store_seg_drop(struct store *st, uint64_t seg)
{
	if (store_seg_live(st, seg) > 0)
		st->seg_live[seg - st->seg_base]--;
}

void
store_forget(struct store *st, struct queue_message *m)
{
	store_seg_drop(st, m->loc.segment);
	queue_remove(st->queue, m);
}

static void
store_moved(struct store *st, struct queue_message *m, const struct journal_loc *loc)
{
	if (store_seg_add(st, loc->segment)) {
		store_seg_drop(st, m->loc.segment);
		m->loc = *loc;
	}
}

/*
 * Deletes the oldest segments once no queued message lives in them. Only in order:
 * a segment's DELETED and outcome records must outlive the older segments holding
 * the messages they finish, or a restart would bring those messages back.
 */
static void
store_segments_collect(struct store *st)
{
	uint64_t current = journal_current_segment(st->journal);

	for (uint64_t seg = journal_oldest_segment(st->journal); seg < current;
	     seg = journal_oldest_segment(st->journal)) {
		if (store_seg_live(st, seg) > 0)
			return;
		int r = journal_segment_delete(st->journal, seg);
		if (r == -ENOENT)
			continue;
		if (r != 0) {
			if (r != -EBUSY)
				log_msg(CONFIG_LOG_WARNING,
				        "journal: cannot delete segment %llu: %s",
				        (unsigned long long)seg, strerror(-r));
			return;
		}
		struct log_line *l = log_begin(CONFIG_LOG_DEBUG, NULL, "segment-deleted");
		log_uint(l, "segment", seg);
		log_end(l);
	}
}

/* ---- records ----------------------------------------------------------------------- */

/* A record that needs no reply of its own: it becomes durable with the next batch. */
static void
store_record(struct store *st, enum journal_rec_type type, const struct iovec *iov, unsigned n)
{
	struct journal_loc loc;

	if (journal_append(st->journal, type, iov, n, &loc) < 0) {
		/* lost now means repeated after a crash (a duplicate delivery), never lost mail */
		st->counters.journal_errors++;
		log_msg(CONFIG_LOG_WARNING, "journal busy: an outcome record was dropped");
	}
}

struct queue_message *
store_message(struct store *st, uint64_t id, const struct queue_envelope *qe, const uint8_t *body,
              size_t body_len, int64_t *batch)
{
	struct iovec iov[2];
	int n = queue_record_encode(id, qe, body, body_len, st->record_scratch,
	                            STORE_RECORD_SCRATCH, iov);

	if (n < 0) {
		*batch = -E2BIG;
		return NULL;
	}
	/* In the queue first (it checks the memory limit), then journaled. */
	struct queue_message *m =
	    queue_add(st->queue, id, qe, body, body_len, &(struct journal_loc){0});
	if (m == NULL) {
		*batch = -ENOSPC;
		return NULL;
	}
	*batch = journal_append(st->journal, JOURNAL_REC_MESSAGE, iov, (unsigned)n, &m->loc);
	if (*batch < 0 || !store_seg_add(st, m->loc.segment)) {
		queue_remove(st->queue, m);
		*batch = -ENOSPC;
		return NULL;
	}
	return m;
}

void
store_outcome(struct store *st, const struct queue_message *m, enum journal_rec_type type,
              const unsigned *idx, unsigned n, uint32_t attempts, uint64_t next_ms,
              const char *error)
{
	uint8_t scratch[OUTCOME_SCRATCH];
	struct iovec iov[2];

	int k = queue_record_encode_outcome(m->id, type, idx, n, attempts, next_ms, error, scratch,
	                                    sizeof(scratch), iov);
	if (k > 0)
		store_record(st, type, iov, (unsigned)k);
}

void
store_delete(struct store *st, struct queue_message *m)
{
	uint8_t rec[64];
	struct iovec iov[2];
	int k = queue_record_encode_deleted(m->id, rec, sizeof(rec), iov);

	if (k > 0)
		store_record(st, JOURNAL_REC_DELETED, iov, (unsigned)k);
	store_forget(st, m);
}

void
store_hold(struct store *st, struct queue_message *m, bool held)
{
	uint8_t rec[64];
	struct iovec iov[2];
	int k = queue_record_encode_hold(m->id, held, rec, sizeof(rec), iov);

	if (k > 0)
		store_record(st, JOURNAL_REC_HOLD, iov, (unsigned)k);
	queue_hold(st->queue, m, held);
}

const uint8_t *
store_body(struct store *st, const struct queue_message *m, uint8_t **owned)
{
	*owned = NULL;
	if (m->body != NULL)
		return m->body;
	/* the record is the envelope encoding followed by the body */
	uint8_t *rec = malloc(m->loc.length);
	if (rec == NULL || m->loc.length < m->body_len ||
	    journal_read(st->journal, &m->loc, rec, m->loc.length) != 0) {
		free(rec);
		return NULL;
	}
	*owned = rec;
	return rec + m->loc.length - m->body_len;
}

/* ---- compaction -------------------------------------------------------------------- */

/*
 * Writes the message again at the journal's head, with the state of each recipient
 * and its hold, so that the old segment it lived in can be deleted once *mv (where
 * and in which batch) is durable: until then the old copy is the one that counts. On
 * replay a copy of a message already known is ignored, and the records after it
 * restore the same state. Returns 0, or a negative error (nothing was appended).
 */
static int
store_rewrite(struct store *st, struct queue_message *m, struct compact_move *mv)
{
	uint8_t *owned;
	const uint8_t *body = store_body(st, m, &owned);
	const char **addrs = calloc(m->rcpt_count, sizeof(char *));
	const char **params = calloc(m->rcpt_count, sizeof(char *));
	struct journal_loc loc;
	struct iovec iov[2];
	int r = -ENOMEM;

	if (body == NULL || addrs == NULL || params == NULL)
		goto out;
	for (unsigned i = 0; i < m->rcpt_count; i++) {
		addrs[i] = m->rcpts[i].address;
		params[i] = m->rcpts[i].params;
	}
	struct queue_envelope qe = {
	    .sender = m->sender,
	    .sender_params = m->sender_params,
	    .rcpt_addresses = addrs,
	    .rcpt_params = params,
	    .rcpt_count = m->rcpt_count,
	    .origin = {.client_addr = m->client_addr,
	               .client_name = m->client_name,
	               .protocol = m->protocol,
	               .tls_version = m->tls_version,
	               .auth_user = m->auth_user},
	    .arrival_ms = m->arrival_ms,
	};
	int n = queue_record_encode(m->id, &qe, body, m->body_len, st->record_scratch,
	                            STORE_RECORD_SCRATCH, iov);
	int64_t batch =
	    n < 0 ? n : journal_append(st->journal, JOURNAL_REC_MESSAGE, iov, (unsigned)n, &loc);
	r = batch < 0 ? (int)batch : 0;
	if (r < 0)
		goto out;
	*mv = (struct compact_move){.id = m->id, .batch = (uint64_t)batch, .loc = loc};
	for (unsigned i = 0; i < m->rcpt_count; i++) {
		const struct queue_rcpt *rc = &m->rcpts[i];
		static const enum journal_rec_type types[] = {
		    [QUEUE_RCPT_PENDING] = JOURNAL_REC_DEFERRED,
		    [QUEUE_RCPT_DELIVERED] = JOURNAL_REC_DELIVERED,
		    [QUEUE_RCPT_BOUNCED] = JOURNAL_REC_BOUNCED,
		};
		if (rc->state == QUEUE_RCPT_PENDING && rc->attempts == 0)
			continue;
		uint64_t next = rc->next_attempt_ms == QUEUE_IN_FLIGHT ? 0 : rc->next_attempt_ms;
		store_outcome(st, m, types[rc->state], &i, 1, rc->attempts, next, rc->last_error);
	}
	if (m->held)
		store_hold(st, m, true);
out:
	free(owned);
	free(addrs);
	free(params);
	return r;
}

static bool
store_moving(const struct store *st, uint64_t id)
{
	for (unsigned i = 0; i < st->move_count; i++) {
		if (st->moves[i].id == id)
			return true;
	}
	return false;
}

/*
 * Long-lived messages (deferred for hours) would pin every later segment: those
 * left in the oldest segment, once it lags COMPACT_LAG_SEGMENTS behind, are
 * written again at the head, a few per tick. They move there when that batch is
 * durable (store_moves_settle): the old segment must not go before.
 */
static void
store_compact(struct store *st)
{
	uint64_t oldest = journal_oldest_segment(st->journal);
	unsigned done = 0;

	if (journal_current_segment(st->journal) - oldest < COMPACT_LAG_SEGMENTS ||
	    store_seg_live(st, oldest) == 0)
		return;
	for (struct queue_message *m = queue_next(st->queue, NULL);
	     m != NULL && done < COMPACT_BATCH && st->move_count < COMPACT_MOVES_MAX;
	     m = queue_next(st->queue, m)) {
		if (m->loc.segment != oldest || store_moving(st, m->id))
			continue;
		if (store_rewrite(st, m, &st->moves[st->move_count]) != 0)
			return; /* the batch is full: next tick */
		st->move_count++;
		done++;
	}
}

/*
 * The journal made batches up to durable safe (ok), or lost the batch in flight and
 * every record after it (!ok): rewritten messages move to their new copies, or stay
 * where they were, to be rewritten again later.
 */
static void
store_moves_settle(struct store *st, uint64_t durable, bool ok)
{
	unsigned keep = 0;

	for (unsigned i = 0; i < st->move_count; i++) {
		struct compact_move *mv = &st->moves[i];
		if (ok && mv->batch > durable) {
			st->moves[keep++] = *mv;
			continue;
		}
		struct queue_message *m = ok ? queue_find(st->queue, mv->id) : NULL;
		if (m != NULL && m->loc.segment < mv->loc.segment)
			store_moved(st, m, &mv->loc);
	}
	st->move_count = keep;
}

void
store_tick(struct store *st)
{
	store_compact(st);
	store_segments_collect(st);
}

/* ---- group commit ------------------------------------------------------------------ */

bool
store_busy(const struct store *st)
{
	return st->jw_busy || journal_batch_ready(st->journal);
}

/* Writes what is left of the batch, then (linked) syncs it. */
static void
store_write(struct store *st, struct io_uring *ring)
{
	struct io_uring_sqe *sqe = ring_sqe(ring);

	io_uring_prep_write(sqe, st->jw.fd, (const uint8_t *)st->jw.buf + st->jw_written,
	                    (unsigned)(st->jw.len - st->jw_written),
	                    st->jw.offset + st->jw_written);
	io_uring_sqe_set_data64(sqe, ud_pack(OP_JOURNAL_WRITE, 0, 0));
	if (st->jw.sync) {
		sqe->flags |= IOSQE_IO_LINK;
		sqe = ring_sqe(ring);
		io_uring_prep_fsync(sqe, st->jw.fd, IORING_FSYNC_DATASYNC);
		io_uring_sqe_set_data64(sqe, ud_pack(OP_JOURNAL_SYNC, 0, 0));
	}
}

static int
store_failed(struct store *st, int r, int res)
{
	st->counters.journal_errors++;
	log_msg(CONFIG_LOG_ERROR, "journal: %s; refusing the messages waiting for it",
	        strerror(res < 0 ? -res : EIO));
	store_moves_settle(st, 0, false);
	return r;
}

int
store_submit(struct store *st, struct io_uring *ring)
{
	if (st->jw_busy || !journal_batch_ready(st->journal))
		return 0;
	int r = journal_batch_begin(st->journal, &st->jw);
	if (r != 0) {
		/* no segment to write to: the pending records are gone, so are their 250s */
		bool full = r == -JOURNAL_ENOSPC;
		return store_failed(st, full ? r : -JOURNAL_EIO, full ? -ENOSPC : -EIO);
	}
	st->jw_busy = true;
	st->jw_error = 0;
	st->jw_written = 0;
	st->counters.journal_batches++;
	store_write(st, ring);
	return 0;
}

int
store_on_journal(struct store *st, struct io_uring *ring, enum worker_op op, int res,
                 uint64_t *durable)
{
	if (op == OP_JOURNAL_WRITE) {
		if (res == 0)
			res = -EIO; /* no progress on a regular file: never loop on it */
		if (res < 0)
			st->jw_error = res;
		else
			st->jw_written += (size_t)res;
		/* with sync, the linked fsync completes next (cancelled if the write was short) */
		if (st->jw.sync)
			return 1;
		res = 0;
	}
	if (st->jw_error == 0 && st->jw_written < st->jw.len) {
		/* a short write (a disk filling up does that): the rest tells us why */
		store_write(st, ring);
		return 1;
	}
	res = st->jw_error ? st->jw_error : (res < 0 ? res : 0);
	int r = journal_batch_end(st->journal, res);
	st->jw_busy = false;
	if (st->jw.sync)
		st->counters.journal_syncs++;
	if (r != 0)
		return store_failed(st, r, res);
	*durable = st->jw.batch;
	store_moves_settle(st, st->jw.batch, true);
	return 0;
}

/* ---- open and close ---------------------------------------------------------------- */

static int
store_replay(void *arg, enum journal_rec_type type, const void *payload, size_t len,
             const struct journal_loc *loc)
{
	struct store *st = arg;

	return queue_replay(st->queue, type, payload, len, loc);
}

static void
store_report(void *arg, const char *line)
{
	(void)arg;
	log_msg(CONFIG_LOG_WARNING, "%s", line);
}

struct store *
store_open(unsigned index, const struct config *cfg, char *err, size_t err_len)
{
	struct store *st = calloc(1, sizeof(*st));
	char dir[CONFIG_PATH_LEN + 16];

	if (st == NULL ||
	    (st->queue = queue_new(index, cfg->queue_memory_limit / cfg->workers)) == NULL ||
	    (st->record_scratch = malloc(STORE_RECORD_SCRATCH)) == NULL) {
		snprintf(err, err_len, "worker %u: out of memory", index);
		store_close(st);
		return NULL;
	}
	snprintf(dir, sizeof(dir), "%s/%u", cfg->spool_dir, index);
	struct journal_params jp = {
	    .dir = dir,
	    .segment_size = cfg->queue_segment_size,
	    .sync = cfg->queue_sync,
	    .replay = store_replay,
	    .report = store_report,
	    .arg = st,
	};
	if (journal_open(&jp, &st->journal, err, err_len) != 0) {
		store_close(st);
		return NULL;
	}
	/* what the journal brought back, counted per segment */
	st->seg_base = journal_oldest_segment(st->journal);
	for (struct queue_message *m = queue_next(st->queue, NULL); m != NULL;
	     m = queue_next(st->queue, m))
		store_seg_add(st, m->loc.segment);
	return st;
}

void
store_close(struct store *st)
{
	if (st == NULL)
		return;
	journal_close(st->journal);
	queue_free(st->queue);
	free(st->record_scratch);
	free(st->seg_live);
	free(st);
}
