/*
 * fuzz_journal_replay.c -- hostile input to replay: the first byte picks the target.
 *   even: the bytes are a payload for queue_replay (the second byte picks the record
 *         type); records other than MESSAGE meet a queued message of id 1 with three
 *         recipients, so outcomes and holds are applied, not skipped as unknown;
 *   odd:  the bytes are a segment file (after a valid segment header) opened by
 *         journal_open, whose records go to queue_replay.
 * Build: clang -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -I. \
 *        tests/fuzz/fuzz_journal_replay.c queue/{journal,queue,crc32c}.c
 */
#include "queue/journal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "queue/crc32c.h"
#include "queue/queue.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int
fuzz_replay(void *arg, enum journal_rec_type type, const void *payload, size_t len,
            const struct journal_loc *loc)
{
	return queue_replay(arg, type, payload, len, loc);
}

static void
fuzz_report(void *arg, const char *line)
{
}

/* The same header journal.c writes: most inputs then reach the record parser. */
static void
segment_header(uint8_t h[32], uint64_t seq)
{
	uint32_t version = 1, crc;

	memset(h, 0, 32);
	memcpy(h, "RINGMXJ1", 8);
	memcpy(h + 8, &version, 4);
	memcpy(h + 16, &seq, 8);
	crc = crc32c(0, h, 28);
	memcpy(h + 28, &crc, 4);
}

static void
fuzz_journal(const uint8_t *data, size_t size)
{
	char dir[] = "/tmp/fuzz_journal.XXXXXX", path[64];
	struct queue *q = queue_new(0, 1 << 24);
	struct journal_params p = {.replay = fuzz_replay, .report = fuzz_report, .arg = q};
	struct journal *j = NULL;
	uint8_t h[32];
	char err[256];
	int fd;

	if (mkdtemp(dir) == NULL)
		abort();
	snprintf(path, sizeof(path), "%s/seg-0000000000000001.log", dir);
	fd = open(path, O_CREAT | O_WRONLY, 0640);
	segment_header(h, 1);
	if (write(fd, h, sizeof(h)) != sizeof(h) || write(fd, data, size) != (ssize_t)size)
		abort();
	close(fd);
	p.dir = dir;
	if (journal_open(&p, &j, err, sizeof(err)) == 0)
		journal_close(j);
	queue_free(q);
	/* Whatever replay left: the segment, a new one, a quarantined one. */
	for (int seq = 1; seq <= 2; seq++) {
		snprintf(path, sizeof(path), "%s/seg-%016x.log", dir, seq);
		unlink(path);
		strcat(path, ".corrupt");
		unlink(path);
	}
	if (rmdir(dir) < 0)
		abort(); /* a file nobody expected */
}

/* The queue's own counters agree with a recount, whatever replay applied. */
static void
queue_check(struct queue *q)
{
	uint64_t pending = 0, memory = 0;
	struct queue_stats st;

	for (struct queue_message *m = queue_next(q, NULL); m != NULL; m = queue_next(q, m)) {
		unsigned p = 0;
		if (m->rcpt_count == 0 || m->rcpt_count > QUEUE_RCPTS_MAX)
			abort();
		for (unsigned i = 0; i < m->rcpt_count; i++) {
			p += m->rcpts[i].state == QUEUE_RCPT_PENDING;
			if (m->rcpts[i].last_error &&
			    strlen(m->rcpts[i].last_error) > QUEUE_TEXT_MAX)
				abort();
		}
		if (queue_message_finished(m) != (p == 0))
			abort();
		pending += p;
		memory += m->memory;
	}
	queue_stats(q, &st);
	if (st.recipients_pending != pending || st.memory != memory)
		abort();
}

static struct queue *
queue_seeded(void)
{
	static const char *const rcpts[] = {"a@example.org", "b@example.org", "c@example.net"};
	struct queue_envelope env = {
	    .sender = "s@example.com", .rcpt_addresses = rcpts, .rcpt_count = 3};
	struct queue *q = queue_new(0, 1 << 24);

	if (q == NULL || queue_add(q, 1, &env, (const uint8_t *)"body", 4, NULL) == NULL)
		abort();
	return q;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct journal_loc loc = {1, 32, 0};
	enum journal_rec_type type;
	struct queue *q;

	if (size < 2)
		return 0;
	if (data[0] & 1) {
		fuzz_journal(data + 1, size - 1);
		return 0;
	}
	type = JOURNAL_REC_MESSAGE + data[1] % 6;
	q = type == JOURNAL_REC_MESSAGE ? queue_new(0, 1 << 24) : queue_seeded();
	loc.length = (uint32_t)(size - 2);
	if (queue_replay(q, type, data + 2, size - 2, &loc) == 0 && type == JOURNAL_REC_MESSAGE &&
	    queue_next(q, NULL) == NULL)
		abort();
	queue_check(q);
	queue_free(q);
	return 0;
}
