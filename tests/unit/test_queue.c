/*
 * test_queue.c -- queue ids, message record encoding and hostile decoding, limits,
 * lookup and iteration. queue.c is compiled in here with a small QUEUE_MESSAGES_MAX
 * (above the initial hash size, so growth is covered) so the limit can be reached.
 */
#define QUEUE_MESSAGES_MAX 2000u
#include "queue/queue.c"

#include <stdio.h>

#define SCRATCH_LEN 65536

static int passed, failed;

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (cond) {                                                                        \
			passed++;                                                                  \
		} else {                                                                           \
			failed++;                                                                  \
			printf("%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond);            \
		}                                                                                  \
	} while (0)

static const char *const test_rcpts[] = {"a@example.org", "b@example.org", "c@example.net"};
static const char *const test_params[] = {"NOTIFY=SUCCESS", "", "ORCPT=rfc822;c@x"};

static struct queue_envelope
env_make(void)
{
	return (struct queue_envelope){
	    .sender = "sender@example.com",
	    .sender_params = "SIZE=100 BODY=8BITMIME",
	    .rcpt_addresses = test_rcpts,
	    .rcpt_params = test_params,
	    .rcpt_count = 3,
	    .origin = {"192.0.2.1", "mail.example.com", "ESMTPS", "TLSv1.3", "alice"},
	    .arrival_ms = 1700000000123ull,
	};
}

/* Encodes a message record into one contiguous payload, as replay will see it. */
static size_t
payload_make(uint64_t id, const struct queue_envelope *env, const char *body, uint8_t *out)
{
	uint8_t scratch[SCRATCH_LEN];
	struct iovec iov[2];
	int n = queue_record_encode(id, env, (const uint8_t *)body, strlen(body), scratch,
	                            sizeof(scratch), iov);

	CHECK(n == 2);
	if (n != 2)
		return 0;
	memcpy(out, iov[0].iov_base, iov[0].iov_len);
	memcpy(out + iov[0].iov_len, iov[1].iov_base, iov[1].iov_len);
	return iov[0].iov_len + iov[1].iov_len;
}

static bool
message_matches(const struct queue_message *m, uint64_t id, const struct queue_envelope *env,
                const char *body)
{
	bool ok = m->id == id && m->arrival_ms == env->arrival_ms && !m->held &&
	          strcmp(m->sender, env->sender) == 0 &&
	          strcmp(m->sender_params, env->sender_params) == 0 &&
	          strcmp(m->client_addr, env->origin.client_addr) == 0 &&
	          strcmp(m->client_name, env->origin.client_name) == 0 &&
	          strcmp(m->protocol, env->origin.protocol) == 0 &&
	          strcmp(m->tls_version, env->origin.tls_version) == 0 &&
	          strcmp(m->auth_user, env->origin.auth_user) == 0 &&
	          m->rcpt_count == env->rcpt_count && m->body_len == strlen(body) &&
	          m->body != NULL && memcmp(m->body, body, m->body_len) == 0;

	for (unsigned i = 0; ok && i < m->rcpt_count; i++)
		ok = strcmp(m->rcpts[i].address, env->rcpt_addresses[i]) == 0 &&
		     strcmp(m->rcpts[i].params, env->rcpt_params[i]) == 0 &&
		     m->rcpts[i].state == QUEUE_RCPT_PENDING && m->rcpts[i].attempts == 0 &&
		     m->rcpts[i].last_error == NULL;
	return ok;
}

static void
test_ids(void)
{
	struct queue *q = queue_new(5, 1 << 20), *q2;
	struct queue_envelope env = env_make();
	uint8_t payload[4096];
	char text[QUEUE_ID_LEN + 1];
	uint64_t id = 0, prev = 0, last;
	struct journal_loc loc = {1, 32, 0};

	CHECK(queue_next_id(q, 1000, text) == (1000ull << QUEUE_WORKER_BITS | 5));
	CHECK(strcmp(text, "000000000000FA05") == 0);
	queue_id_format(0xabcdef0123456789ull, text);
	CHECK(strcmp(text, "ABCDEF0123456789") == 0);
	for (int i = 0; i < 5000; i++) {
		id = queue_next_id(q, 1000, text); /* a stuck clock can't repeat an id */
		CHECK(id > prev);
		prev = id;
	}
	last = id;
	/* Restart with a clock behind the last id: replay raises the floor. */
	q2 = queue_new(5, 1 << 20);
	loc.length = (uint32_t)payload_make(last, &env, "x", payload);
	CHECK(queue_replay(q2, JOURNAL_REC_MESSAGE, payload, loc.length, &loc) == 0);
	CHECK(queue_next_id(q2, 2000, text) > last);
	CHECK(queue_next_id(q2, 2000, text) > last);
	queue_free(q2);
	/* A DELETED id counts too: its message may be gone from the journal. */
	q2 = queue_new(5, 1 << 20);
	CHECK(queue_record_encode_deleted(last, payload, sizeof(payload), &(struct iovec){0}) == 1);
	CHECK(queue_replay(q2, JOURNAL_REC_DELETED, payload, 8, &loc) == 0);
	CHECK(queue_next_id(q2, 1, text) > last);
	queue_free(q2);
	queue_free(q);
}

static void
test_round_trip(void)
{
	struct queue *q = queue_new(0, 1 << 20);
	struct queue_envelope env = env_make();
	uint8_t payload[4096], scratch[4096];
	struct iovec iov[2];
	struct journal_loc loc = {7, 4096, 0};
	struct queue_message *m;
	const char *body = "Subject: hi\r\n\r\nbody\r\n";
	size_t len = payload_make(42, &env, body, payload);
	size_t header_len = queue_record_header_len(&env);

	loc.length = (uint32_t)len;
	CHECK(header_len == len - strlen(body));
	CHECK(queue_replay(q, JOURNAL_REC_MESSAGE, payload, len, &loc) == 0);
	m = queue_find(q, 42);
	CHECK(m != NULL && message_matches(m, 42, &env, body));
	CHECK(m != NULL && strcmp(m->id_text, "000000000000002A") == 0);
	CHECK(m != NULL && m->loc.segment == 7 && m->loc.offset == 4096 && m->loc.length == len);
	/* The same record again (a copy made by recovery) changes nothing. */
	CHECK(queue_replay(q, JOURNAL_REC_MESSAGE, payload, len, &loc) == 0);
	CHECK(queue_next(q, queue_next(q, NULL)) == NULL);
	/* Too small a scratch, at every size. */
	for (size_t s = 0; s < header_len; s++)
		CHECK(queue_record_encode(1, &env, (const uint8_t *)body, 3, scratch, s, iov) ==
		      -ENOSPC);
	CHECK(queue_record_encode(1, &env, (const uint8_t *)body, 3, scratch, header_len, iov) ==
	      2);
	queue_free(q);
}

static void
test_encode_limits(void)
{
	struct queue_envelope env = env_make();
	static char long_text[QUEUE_TEXT_MAX + 2];
	static const char *many[QUEUE_RCPTS_MAX + 1];
	uint8_t scratch[SCRATCH_LEN];
	struct iovec iov[2];
	uint8_t *big;
	size_t big_len;

	memset(long_text, 'a', QUEUE_TEXT_MAX);
	env.sender = long_text; /* exactly the limit */
	CHECK(queue_record_encode(1, &env, NULL, 0, scratch, sizeof(scratch), iov) == 2);
	long_text[QUEUE_TEXT_MAX] = 'a';
	CHECK(queue_record_encode(1, &env, NULL, 0, scratch, sizeof(scratch), iov) == -EINVAL);
	CHECK(queue_record_header_len(&env) == 0);
	env = env_make();
	env.rcpt_count = 0;
	CHECK(queue_record_encode(1, &env, NULL, 0, scratch, sizeof(scratch), iov) == -EINVAL);
	for (int i = 0; i <= QUEUE_RCPTS_MAX; i++)
		many[i] = "r@example.org";
	env.rcpt_addresses = many;
	env.rcpt_params = NULL;
	env.rcpt_count = QUEUE_RCPTS_MAX + 1;
	CHECK(queue_record_encode(1, &env, NULL, 0, scratch, sizeof(scratch), iov) == -EINVAL);
	env.rcpt_count = QUEUE_RCPTS_MAX;
	big_len = queue_record_header_len(&env);
	big = malloc(big_len);
	CHECK(queue_record_encode(1, &env, NULL, 0, big, big_len, iov) == 2);
	free(big);
}

/* Every prefix of a valid payload, and random damage, are refused or decode sanely. */
static void
test_hostile_payloads(void)
{
	struct queue *q = queue_new(0, 1 << 20);
	struct queue_envelope env = env_make();
	uint8_t payload[4096], bad[4096];
	struct journal_loc loc = {1, 32, 0};
	size_t len = payload_make(9, &env, "hello", payload);
	unsigned seed = 12345, accepted = 0;
	struct queue_message *m;

	for (size_t cut = 0; cut < len; cut++)
		CHECK(queue_replay(q, JOURNAL_REC_MESSAGE, payload, cut, &loc) == -EINVAL);
	memcpy(bad, payload, len);
	bad[len] = 'x'; /* one byte more than the body length says */
	CHECK(queue_replay(q, JOURNAL_REC_MESSAGE, bad, len + 1, &loc) == -EINVAL);
	bad[0] = 2; /* unknown version */
	CHECK(queue_replay(q, JOURNAL_REC_MESSAGE, bad, len, &loc) == -EINVAL);
	memcpy(bad, payload, len);
	bad[18 + 2] = '\0'; /* a NUL inside the sender */
	CHECK(queue_replay(q, JOURNAL_REC_MESSAGE, bad, len, &loc) == -EINVAL);
	CHECK(queue_next(q, NULL) == NULL);
	for (int round = 0; round < 20000; round++) {
		memcpy(bad, payload, len);
		for (int k = 0; k < 1 + round % 4; k++) {
			seed = seed * 1103515245 + 12345;
			bad[(seed >> 8) % len] ^= (uint8_t)(1u << ((seed >> 4) % 8));
		}
		int rc = queue_replay(q, JOURNAL_REC_MESSAGE, bad, len, &loc);
		CHECK(rc == 0 || rc == -EINVAL);
		while ((m = queue_next(q, NULL)) != NULL) {
			accepted++;
			CHECK(m->rcpt_count >= 1 && m->rcpt_count <= 3);
			CHECK(strlen(m->sender) <= QUEUE_TEXT_MAX);
			queue_remove(q, m);
		}
	}
	CHECK(accepted > 0); /* flips inside strings still decode */
	queue_free(q);
}

static void
test_small_records(void)
{
	struct queue *q = queue_new(0, 1 << 20);
	struct queue_envelope env = env_make();
	uint8_t payload[4096], rec[64];
	struct journal_loc loc = {1, 32, 0};
	struct queue_stats st;
	struct iovec iov;
	unsigned idx[2] = {0, 2}, wrong[1] = {3};
	size_t len = payload_make(77, &env, "b", payload);

	CHECK(queue_replay(q, JOURNAL_REC_MESSAGE, payload, len, &loc) == 0);
	queue_stats(q, &st);
	CHECK(st.messages == 1 && st.recipients_pending == 3);
	CHECK(queue_record_encode_delivered(77, idx, 2, rec, 19, &iov) == -ENOSPC);
	CHECK(queue_record_encode_delivered(77, idx, 0, rec, sizeof(rec), &iov) == -EINVAL);
	CHECK(queue_record_encode_delivered(77, idx, 2, rec, sizeof(rec), &iov) == 1);
	CHECK(iov.iov_len == 20);
	CHECK(queue_replay(q, JOURNAL_REC_DELIVERED, rec, iov.iov_len - 1, &loc) == -EINVAL);
	CHECK(queue_replay(q, JOURNAL_REC_DELIVERED, rec, iov.iov_len, &loc) == 0);
	queue_stats(q, &st);
	CHECK(st.recipients_pending == 1);
	CHECK(queue_find(q, 77)->rcpts[1].state == QUEUE_RCPT_PENDING);
	CHECK(queue_find(q, 77)->rcpts[2].state == QUEUE_RCPT_DELIVERED);
	CHECK(queue_record_encode_delivered(77, wrong, 1, rec, sizeof(rec), &iov) == 1);
	CHECK(queue_replay(q, JOURNAL_REC_DELIVERED, rec, iov.iov_len, &loc) == -EINVAL);
	CHECK(queue_record_encode_delivered(78, wrong, 1, rec, sizeof(rec), &iov) == 1);
	CHECK(queue_replay(q, JOURNAL_REC_DELIVERED, rec, iov.iov_len, &loc) == 0);
	CHECK(queue_record_encode_deleted(77, rec, 7, &iov) == -ENOSPC);
	CHECK(queue_record_encode_deleted(77, rec, sizeof(rec), &iov) == 1);
	CHECK(queue_replay(q, JOURNAL_REC_DELETED, rec, 9, &loc) == -EINVAL);
	CHECK(queue_replay(q, JOURNAL_REC_DELETED, rec, 8, &loc) == 0);
	CHECK(queue_find(q, 77) == NULL);
	CHECK(queue_replay(q, JOURNAL_REC_DELETED, rec, 8, &loc) == 0); /* again: no-op */
	CHECK(queue_replay(q, (enum journal_rec_type)99, rec, 8, &loc) == -EINVAL);
	queue_stats(q, &st);
	CHECK(st.messages == 0 && st.memory == 0);
	queue_free(q);
}

static void
test_memory_limit(void)
{
	struct queue *q = queue_new(1, 100000);
	struct queue_envelope env = env_make();
	static uint8_t body[10000];
	char big_body[3001] = "";
	uint8_t payload[16384];
	struct journal_loc loc = {3, 64, 0};
	struct queue_stats st;
	struct queue_message *m;
	unsigned n = 0;
	size_t len;

	while (queue_has_room(q, sizeof(body)) &&
	       queue_add(q, n + 1, &env, body, sizeof(body), &loc) != NULL)
		n++;
	queue_stats(q, &st);
	CHECK(n == 9);
	CHECK(st.memory <= st.memory_limit && st.memory_limit == 100000);
	CHECK(!queue_has_room(q, sizeof(body)));
	CHECK(queue_add(q, 100, &env, body, sizeof(body), &loc) == NULL);
	CHECK(queue_find(q, 100) == NULL);
	/* At replay the envelope stays and the body is left in the journal. */
	memset(big_body, 'b', sizeof(big_body) - 1);
	len = payload_make(200, &env, big_body, payload);
	queue_remove(q, queue_find(q, 1));
	/* Leave room for an envelope (a few hundred bytes) but not for the 3000-byte body. */
	for (queue_stats(q, &st); st.memory_limit - st.memory > 2000; queue_stats(q, &st))
		CHECK(queue_add(q, 300 + n++, &env, body, 1, &loc) != NULL);
	CHECK(queue_replay(q, JOURNAL_REC_MESSAGE, payload, len, &loc) == 0);
	m = queue_find(q, 200);
	CHECK(m != NULL && m->body == NULL && m->body_len == sizeof(big_body) - 1);
	CHECK(m != NULL && m->loc.segment == 3);
	while (queue_replay(q, JOURNAL_REC_MESSAGE, payload, len, &loc) == 0) {
		payload[2]++; /* a new id each time, until even the envelope does not fit */
		queue_stats(q, &st);
		CHECK(st.memory <= st.memory_limit);
	}
	CHECK(queue_replay(q, JOURNAL_REC_MESSAGE, payload, len, &loc) == -ENOMEM);
	while ((m = queue_next(q, NULL)) != NULL)
		queue_remove(q, m);
	queue_stats(q, &st);
	CHECK(st.memory == 0 && st.messages == 0);
	CHECK(queue_has_room(q, sizeof(body)));
	queue_free(q);
}

static void
test_message_limit_and_iteration(void)
{
	struct queue *q = queue_new(2, 1ull << 32);
	struct queue_envelope env = env_make();
	struct queue_message *m;
	struct journal_loc loc = {1, 32, 0};
	char text[QUEUE_ID_LEN + 1];
	uint64_t ids[QUEUE_MESSAGES_MAX], expect;
	unsigned n = 0, seen = 0;
	bool ordered = true, found = true;

	for (; n < QUEUE_MESSAGES_MAX; n++) {
		ids[n] = queue_next_id(q, 5000, text);
		CHECK(queue_has_room(q, 10));
		if (queue_add(q, ids[n], &env, (const uint8_t *)"body", 4, &loc) == NULL)
			break;
	}
	CHECK(n == QUEUE_MESSAGES_MAX);
	CHECK(!queue_has_room(q, 10));
	CHECK(queue_add(q, queue_next_id(q, 5000, text), &env, NULL, 0, &loc) == NULL);
	for (unsigned i = 0; i < n; i++)
		found =
		    found && queue_find(q, ids[i]) != NULL && queue_find(q, ids[i])->id == ids[i];
	CHECK(found);
	for (unsigned i = 1; i < n; i += 2)
		queue_remove(q, queue_find(q, ids[i]));
	CHECK(queue_find(q, ids[1]) == NULL);
	CHECK(queue_find(q, ids[0]) != NULL);
	for (m = queue_next(q, NULL); m != NULL; m = queue_next(q, m)) {
		expect = ids[2 * seen++];
		ordered = ordered && m->id == expect;
	}
	CHECK(ordered);
	CHECK(seen == n / 2);
	CHECK(queue_has_room(q, 10));
	queue_free(q); /* frees what is left; ASan checks for leaks */
}

int
main(void)
{
	test_ids();
	test_round_trip();
	test_encode_limits();
	test_hostile_payloads();
	test_small_records();
	test_memory_limit();
	test_message_limit_and_iteration();
	printf("%d passed, %d failed\n", passed, failed);
	return failed ? 1 : 0;
}
