/*
 * test_store.c -- the worker's store over a real io_uring: messages journaled and
 * made durable by a group commit, outcomes, hold and delete, all brought back by
 * a replay; and the store's limits (queue memory, an envelope that can't encode).
 */
#include "core/store.h"

#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"

static char dir[64];

static int
rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb;
	(void)flag;
	(void)ftw;
	return remove(path);
}

static struct config *
test_config(const char *memory_limit)
{
	char path[128], yaml[512];
	struct config_errors errs = {0};

	snprintf(path, sizeof(path), "%s/ringmx.yaml", dir);
	snprintf(yaml, sizeof(yaml),
	         "spool_dir: %s/spool\nworkers: 1\nqueue: { memory_limit: %s }\n", dir,
	         memory_limit);
	FILE *f = fopen(path, "w");
	fputs(yaml, f);
	fclose(f);
	struct config *cfg = config_load(path, &errs);
	if (cfg == NULL)
		printf("config: %s\n", errs.line[0]);
	return cfg;
}

static struct queue_message *
add(struct store *st, uint64_t id, const char *body, int64_t *batch)
{
	static const char *const rcpts[] = {"a@example.org", "b@example.org"};
	static const char *const params[] = {"", ""};
	struct queue_envelope qe = {
	    .sender = "s@example.net",
	    .sender_params = "",
	    .rcpt_addresses = rcpts,
	    .rcpt_params = params,
	    .rcpt_count = 2,
	    .origin = {"192.0.2.1", "client.test", "ESMTPS", "TLSv1.3/TLS_AES_128_GCM_SHA256", ""},
	    .arrival_ms = 1,
	};
	return store_message(st, id, &qe, (const uint8_t *)body, strlen(body), batch);
}

/* Submits what waits and runs completions until the batch is settled; its result. */
static int
commit(struct store *st, struct io_uring *ring, uint64_t *durable)
{
	int r = store_submit(st, ring);

	if (r < 0)
		return r;
	for (;;) {
		struct io_uring_cqe *cqe;
		io_uring_submit_and_wait(ring, 1);
		if (io_uring_wait_cqe(ring, &cqe) != 0)
			return -EIO;
		enum worker_op op = ud_op(cqe->user_data);
		int res = cqe->res;
		io_uring_cqe_seen(ring, cqe);
		r = store_on_journal(st, ring, op, res, durable);
		if (r != 1)
			return r;
	}
}

static void
test_round_trip(struct io_uring *ring)
{
	struct config *cfg = test_config("1G");
	char err[256];
	struct store *st = store_open(0, cfg, err, sizeof(err));
	int64_t b1, b2, b3;
	uint64_t durable = 0;

	CHECK(st != NULL);
	struct queue_message *m1 = add(st, 0x101, "Subject: one\r\n\r\nbody\r\n", &b1);
	struct queue_message *m2 = add(st, 0x102, "Subject: two\r\n\r\nbody\r\n", &b2);
	struct queue_message *m3 = add(st, 0x103, "Subject: three\r\n\r\nbody\r\n", &b3);
	CHECK(m1 && m2 && m3);
	CHECK(b1 == b2 && b2 == b3); /* one group commit for all three */
	CHECK(store_busy(st));
	CHECK(commit(st, ring, &durable) == 0);
	CHECK(durable >= (uint64_t)b3);
	CHECK(!store_busy(st));
	CHECK(store_counters(st)->journal_batches == 1);

	unsigned first = 0;
	store_outcome(st, m1, JOURNAL_REC_DELIVERED, &first, 1, 1, 0, NULL);
	store_delete(st, m2);
	store_hold(st, m3, true);
	CHECK(commit(st, ring, &durable) == 0);
	uint8_t *owned;
	const uint8_t *body = store_body(st, m3, &owned);
	CHECK(body != NULL && memcmp(body, "Subject: three", 14) == 0);
	free(owned);
	store_close(st);

	st = store_open(0, cfg, err, sizeof(err));
	CHECK(st != NULL);
	struct queue *q = store_queue(st);
	CHECK(queue_find(q, 0x102) == NULL);
	struct queue_message *r1 = queue_find(q, 0x101), *r3 = queue_find(q, 0x103);
	CHECK(r1 != NULL && r1->rcpts[0].state == QUEUE_RCPT_DELIVERED);
	CHECK(r1 != NULL && r1->rcpts[1].state == QUEUE_RCPT_PENDING);
	CHECK(r3 != NULL && r3->held);
	CHECK(r3 != NULL && strcmp(r3->tls_version, "TLSv1.3/TLS_AES_128_GCM_SHA256") == 0);
	store_close(st);
	config_free(cfg);
}

static void
test_limits(void)
{
	struct config *cfg = test_config("1M");
	char err[256], *big = malloc(2 << 20);
	struct store *st = cfg ? store_open(0, cfg, err, sizeof(err)) : NULL;
	int64_t batch;

	if (st == NULL) {
		CHECK(st != NULL);
		return;
	}

	CHECK(st != NULL && big != NULL);
	memset(big, 'x', (2 << 20) - 1);
	big[(2 << 20) - 1] = '\0';
	/* over queue.memory_limit: refused (452 4.3.1), nothing journaled */
	CHECK(add(st, 0x201, big, &batch) == NULL);
	CHECK(batch == -ENOSPC);
	CHECK(!store_busy(st));
	free(big);
	store_close(st);
	config_free(cfg);
}

int
main(void)
{
	struct io_uring ring;

	if (io_uring_queue_init(64, &ring, 0) != 0) {
		printf("io_uring unavailable: skipped\n");
		return 77;
	}
	snprintf(dir, sizeof(dir), "/tmp/test_store.XXXXXX");
	if (mkdtemp(dir) == NULL) {
		perror("mkdtemp");
		return 1;
	}
	test_round_trip(&ring);
	test_limits();
	io_uring_queue_exit(&ring);
	nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	printf("%u passed, %u failed\n", passed, failed);
	return failed ? 1 : 0;
}
