/*
 * test_queue.c -- queue ids, message record encoding and hostile decoding, limits,
 * lookup and iteration. queue.c is compiled in here with a small QUEUE_MESSAGES_MAX
 * (above the initial hash size, so growth is covered) so the limit can be reached.
 */
#define QUEUE_MESSAGES_MAX 2000u
#include "queue/queue.c"

#include "tests/unit/check.h"
#include <stdio.h>

#define SCRATCH_LEN 65536

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

/* queue_record_encode_outcome under a shorter name, so the calls below fit a line. */
static int
outcome_make(uint64_t id, enum journal_rec_type type, const unsigned *idx, unsigned n,
             uint32_t attempts, uint64_t next_ms, const char *error, uint8_t *scratch, size_t cap,
             struct iovec *iov)
{
	return queue_record_encode_outcome(id, type, idx, n, attempts, next_ms, error, scratch, cap,
	                                   iov);
}

/* Counters the queue keeps agree with a recount over its messages. */
static bool
queue_consistent(struct queue *q)
{
	uint64_t pending = 0, memory = 0;
	size_t count = 0;
	struct queue_stats st;
	bool ok = true;

	for (struct queue_message *m = queue_next(q, NULL); m != NULL; m = queue_next(q, m)) {
		unsigned p = 0;
		for (unsigned i = 0; i < m->rcpt_count; i++)
			p += m->rcpts[i].state == QUEUE_RCPT_PENDING;
		ok = ok && queue_message_finished(m) == (p == 0);
		pending += p;
		memory += m->memory;
		count++;
	}
	queue_stats(q, &st);
	return ok && st.recipients_pending == pending && st.memory == memory &&
	       st.messages == count && queue_count(q) == count;
}

/* A queue holding one message (id, the three test recipients), as replay builds it. */
static struct queue *
queue_with_message(uint64_t id)
{
	struct queue *q = queue_new(0, 1 << 20);
	struct queue_envelope env = env_make();
	uint8_t payload[4096];
	struct journal_loc loc = {1, 32, 0};
	size_t len = payload_make(id, &env, "body", payload);

	CHECK(queue_replay(q, JOURNAL_REC_MESSAGE, payload, len, &loc) == 0);
	return q;
}

/* Encodes an outcome for one recipient and replays it; the replay's result. */
static int
replay_one(struct queue *q, uint64_t id, enum journal_rec_type type, unsigned idx,
           uint32_t attempts, uint64_t next_ms, const char *error)
{
	uint8_t rec[QUEUE_OUTCOME_RECORD_MAX(1)];
	struct journal_loc loc = {2, 0, 0};
	struct iovec iov;

	CHECK(outcome_make(id, type, &idx, 1, attempts, next_ms, error, rec, sizeof(rec), &iov) ==
	      1);
	return queue_replay(q, type, rec, iov.iov_len, &loc);
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
	CHECK(outcome_make(77, JOURNAL_REC_DELIVERED, idx, 2, 1, 0, NULL, rec, 33, &iov) ==
	      -ENOSPC);
	CHECK(outcome_make(77, JOURNAL_REC_DELIVERED, idx, 0, 1, 0, NULL, rec, 64, &iov) ==
	      -EINVAL);
	CHECK(outcome_make(77, JOURNAL_REC_DELIVERED, idx, 2, 1, 0, NULL, rec, 64, &iov) == 1);
	CHECK(iov.iov_len == 34 && iov.iov_len <= QUEUE_OUTCOME_RECORD_MAX(2));
	CHECK(queue_replay(q, JOURNAL_REC_DELIVERED, rec, iov.iov_len - 1, &loc) == -EINVAL);
	CHECK(queue_replay(q, JOURNAL_REC_DELIVERED, rec, iov.iov_len, &loc) == 0);
	queue_stats(q, &st);
	CHECK(st.recipients_pending == 1);
	CHECK(queue_find(q, 77)->rcpts[1].state == QUEUE_RCPT_PENDING);
	CHECK(queue_find(q, 77)->rcpts[2].state == QUEUE_RCPT_DELIVERED);
	CHECK(outcome_make(77, JOURNAL_REC_DELIVERED, wrong, 1, 1, 0, NULL, rec, 64, &iov) == 1);
	CHECK(queue_replay(q, JOURNAL_REC_DELIVERED, rec, iov.iov_len, &loc) == -EINVAL);
	CHECK(outcome_make(78, JOURNAL_REC_DELIVERED, wrong, 1, 1, 0, NULL, rec, 64, &iov) == 1);
	CHECK(queue_replay(q, JOURNAL_REC_DELIVERED, rec, iov.iov_len, &loc) == 0);
	CHECK(queue_record_encode_deleted(77, rec, 7, &iov) == -ENOSPC);
	CHECK(queue_record_encode_deleted(77, rec, sizeof(rec), &iov) == 1);
	CHECK(queue_replay(q, JOURNAL_REC_DELETED, rec, 9, &loc) == -EINVAL);
	CHECK(queue_replay(q, JOURNAL_REC_DELETED, rec, 8, &loc) == 0);
	CHECK(queue_find(q, 77) == NULL);
	CHECK(queue_replay(q, JOURNAL_REC_DELETED, rec, 8, &loc) == 0); /* again: no-op */
	CHECK(queue_replay(q, (enum journal_rec_type)99, rec, 8, &loc) == -EINVAL);
	queue_stats(q, &st);
	CHECK(st.messages == 0 && st.memory == 0 && st.recipients_pending == 0);
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

/* Each outcome type, encoded and replayed, sets what queue_rcpt_outcome would set. */
static void
test_outcome_round_trip(void)
{
	struct queue *q = queue_with_message(5);
	struct queue_message *m = queue_find(q, 5);
	uint8_t rec[QUEUE_OUTCOME_RECORD_MAX(3)];
	struct journal_loc loc = {2, 0, 0};
	unsigned all[3] = {0, 1, 2}, first[1] = {0};
	struct iovec iov;

	CHECK(m != NULL && !queue_message_finished(m));
	CHECK(outcome_make(5, JOURNAL_REC_DEFERRED, all, 3, 1, 1700000060000ull,
	                   "451 4.7.1 try later", rec, sizeof(rec), &iov) == 1);
	CHECK(iov.iov_len == 28 + strlen("451 4.7.1 try later") + 12);
	CHECK(queue_replay(q, JOURNAL_REC_DEFERRED, rec, iov.iov_len, &loc) == 0);
	for (unsigned i = 0; i < 3; i++) {
		CHECK(m->rcpts[i].state == QUEUE_RCPT_PENDING && m->rcpts[i].attempts == 1);
		CHECK(m->rcpts[i].next_attempt_ms == 1700000060000ull);
		CHECK(m->rcpts[i].last_error != NULL &&
		      strcmp(m->rcpts[i].last_error, "451 4.7.1 try later") == 0);
	}
	CHECK(queue_consistent(q) && !queue_message_finished(m));
	CHECK(outcome_make(5, JOURNAL_REC_DELIVERED, first, 1, 2, 0, NULL, rec, sizeof(rec),
	                   &iov) == 1);
	CHECK(queue_replay(q, JOURNAL_REC_DELIVERED, rec, iov.iov_len, &loc) == 0);
	CHECK(m->rcpts[0].state == QUEUE_RCPT_DELIVERED && m->rcpts[0].attempts == 2);
	CHECK(m->rcpts[0].last_error == NULL && m->rcpts[0].next_attempt_ms == 0);
	CHECK(outcome_make(5, JOURNAL_REC_BOUNCED, all + 1, 2, 2, 0, "550 5.1.1 no such user", rec,
	                   sizeof(rec), &iov) == 1);
	CHECK(queue_replay(q, JOURNAL_REC_BOUNCED, rec, iov.iov_len, &loc) == 0);
	CHECK(m->rcpts[1].state == QUEUE_RCPT_BOUNCED && m->rcpts[2].state == QUEUE_RCPT_BOUNCED);
	CHECK(strcmp(m->rcpts[2].last_error, "550 5.1.1 no such user") == 0);
	/* Finished, but still queued until its DELETED record. */
	CHECK(queue_message_finished(m) && queue_find(q, 5) == m && queue_count(q) == 1);
	CHECK(queue_consistent(q));
	/* The id floor rises for outcome records too. */
	CHECK(replay_one(q, 1000ull << QUEUE_WORKER_BITS, JOURNAL_REC_DEFERRED, 0, 1, 0, NULL) ==
	      0);
	CHECK(queue_next_id(q, 1, (char[QUEUE_ID_LEN + 1]){0}) > 1000ull << QUEUE_WORKER_BITS);
	queue_free(q);
}

/* DELIVERED and BOUNCED are final; deferrals apply in attempts order only. */
static void
test_outcome_order(void)
{
	struct queue *q = queue_with_message(6);
	struct queue_message *m = queue_find(q, 6);
	struct queue_rcpt *r = &m->rcpts[0];

	CHECK(replay_one(q, 6, JOURNAL_REC_DELIVERED, 0, 3, 0, NULL) == 0);
	CHECK(replay_one(q, 6, JOURNAL_REC_DEFERRED, 0, 4, 99, "451 later") == 0);
	CHECK(r->state == QUEUE_RCPT_DELIVERED && r->attempts == 3 && r->last_error == NULL);
	CHECK(replay_one(q, 6, JOURNAL_REC_BOUNCED, 0, 5, 0, "550 no") == 0);
	CHECK(r->state == QUEUE_RCPT_DELIVERED && r->last_error == NULL);
	CHECK(replay_one(q, 6, JOURNAL_REC_DELIVERED, 0, 3, 0, NULL) == 0); /* duplicate */
	CHECK(r->state == QUEUE_RCPT_DELIVERED && r->attempts == 3);
	r = &m->rcpts[1];
	CHECK(replay_one(q, 6, JOURNAL_REC_BOUNCED, 1, 2, 0, "550 no") == 0);
	CHECK(replay_one(q, 6, JOURNAL_REC_DELIVERED, 1, 3, 0, NULL) == 0);
	CHECK(r->state == QUEUE_RCPT_BOUNCED && strcmp(r->last_error, "550 no") == 0);
	r = &m->rcpts[2];
	CHECK(replay_one(q, 6, JOURNAL_REC_DEFERRED, 2, 3, 300, "451 third") == 0);
	CHECK(replay_one(q, 6, JOURNAL_REC_DEFERRED, 2, 2, 200, "451 second") == 0); /* stale */
	CHECK(r->attempts == 3 && r->next_attempt_ms == 300 &&
	      strcmp(r->last_error, "451 third") == 0);
	CHECK(replay_one(q, 6, JOURNAL_REC_DEFERRED, 2, 3, 310, "451 same try") == 0); /* equal */
	CHECK(r->next_attempt_ms == 310 && strcmp(r->last_error, "451 same try") == 0);
	CHECK(replay_one(q, 6, JOURNAL_REC_DEFERRED, 2, 3, 310, "451 same try") == 0);
	CHECK(r->attempts == 3 && r->state == QUEUE_RCPT_PENDING && !queue_message_finished(m));
	/* A final outcome is taken whatever its attempts. */
	CHECK(replay_one(q, 6, JOURNAL_REC_DELIVERED, 2, 1, 0, NULL) == 0);
	CHECK(r->state == QUEUE_RCPT_DELIVERED && queue_message_finished(m));
	CHECK(queue_consistent(q));
	/* Run time goes through the same rules. */
	CHECK(queue_rcpt_outcome(q, m, 2, QUEUE_RCPT_PENDING, 9, 1, "x") == 0);
	CHECK(r->state == QUEUE_RCPT_DELIVERED && r->last_error == NULL);
	CHECK(queue_rcpt_outcome(q, m, 3, QUEUE_RCPT_DELIVERED, 1, 0, NULL) == -EINVAL);
	CHECK(queue_rcpt_outcome(q, m, 0, (enum queue_rcpt_state)3, 1, 0, NULL) == -EINVAL);
	queue_free(q);
}

/*
 * Random outcomes (stale deferrals among them) applied at run time while their records are
 * kept; replaying the records, then all of them again as a recovery copy might, gives
 * the same recipients.
 */
static void
test_outcome_replay_agrees(void)
{
	static const enum journal_rec_type types[3] = {JOURNAL_REC_DEFERRED, JOURNAL_REC_DELIVERED,
	                                               JOURNAL_REC_BOUNCED};
	static const char *const errors[3] = {NULL, "451 4.4.1 timeout", "550 5.7.1 refused"};
	static uint8_t log[400][QUEUE_OUTCOME_RECORD_MAX(3)];
	size_t log_len[400], n = 0;
	enum journal_rec_type log_type[400];
	struct queue *run = queue_with_message(8), *replayed = queue_with_message(8);
	struct queue_message *m = queue_find(run, 8), *m2;
	unsigned seed = 99;
	bool same = true;

	for (uint32_t round = 0; round < 200; round++) {
		seed = seed * 1103515245 + 12345;
		unsigned idx = (seed >> 8) % 3,
		         t = (seed >> 12) % 10 < 8 ? 0 : 1 + (seed >> 16) % 2;
		uint32_t attempts = round / 4 + (seed >> 20) % 3;
		enum queue_rcpt_state st = t == 0   ? QUEUE_RCPT_PENDING
		                           : t == 1 ? QUEUE_RCPT_DELIVERED
		                                    : QUEUE_RCPT_BOUNCED;
		const char *error = errors[(seed >> 24) % 3];
		struct iovec iov;

		CHECK(outcome_make(8, types[t], &idx, 1, attempts, round, error, log[n],
		                   sizeof(log[n]), &iov) == 1);
		log_len[n] = iov.iov_len;
		log_type[n++] = types[t];
		CHECK(queue_rcpt_outcome(run, m, idx, st, attempts, round, error) == 0);
	}
	for (int pass = 0; pass < 2; pass++)
		for (size_t i = 0; i < n; i++)
			CHECK(queue_replay(replayed, log_type[i], log[i], log_len[i],
			                   &(struct journal_loc){2, 0, 0}) == 0);
	m2 = queue_find(replayed, 8);
	for (unsigned i = 0; i < 3; i++) {
		const struct queue_rcpt *a = &m->rcpts[i], *b = &m2->rcpts[i];
		same = same && a->state == b->state && a->attempts == b->attempts &&
		       a->next_attempt_ms == b->next_attempt_ms &&
		       (a->last_error == NULL) == (b->last_error == NULL) &&
		       (a->last_error == NULL || strcmp(a->last_error, b->last_error) == 0);
	}
	CHECK(same);
	CHECK(m->memory == m2->memory);
	CHECK(queue_consistent(run) && queue_consistent(replayed));
	queue_free(run);
	queue_free(replayed);
}

/* Replays a damaged outcome or hold record; it must be refused or leave a sane queue. */
static void
replay_damaged(struct queue *q, enum journal_rec_type type, const uint8_t *rec, size_t len,
               unsigned *seed, unsigned *accepted)
{
	uint8_t bad[QUEUE_OUTCOME_RECORD_MAX(3)];
	int rc;

	assert(len <= sizeof(bad));
	for (size_t cut = 0; cut < len; cut++)
		CHECK(queue_replay(q, type, rec, cut, &(struct journal_loc){0}) == -EINVAL);
	memcpy(bad, rec, len);
	bad[len] = 0;
	CHECK(queue_replay(q, type, bad, len + 1, &(struct journal_loc){0}) == -EINVAL);
	for (int round = 0; round < 5000; round++) {
		memcpy(bad, rec, len);
		for (int k = 0; k < 1 + round % 3; k++) {
			*seed = *seed * 1103515245 + 12345;
			bad[(*seed >> 8) % len] ^= (uint8_t)(1u << ((*seed >> 4) % 8));
		}
		rc = queue_replay(q, type, bad, len, &(struct journal_loc){0});
		CHECK(rc == 0 || rc == -EINVAL);
		*accepted += rc == 0;
	}
	CHECK(queue_consistent(q));
}

static void
test_outcome_hostile(void)
{
	struct queue *q = queue_with_message(0x42);
	struct queue_message *m = queue_find(q, 0x42);
	uint8_t rec[QUEUE_OUTCOME_RECORD_MAX(3)], bad[sizeof(rec)];
	unsigned idx[3] = {0, 2, 1}, seed = 4242, accepted = 0;
	struct iovec iov;
	size_t len;

	CHECK(outcome_make(0x42, JOURNAL_REC_DEFERRED, idx, 3, 1, 5, "451 x", rec, sizeof(rec),
	                   &iov) == 1);
	len = iov.iov_len;
	memcpy(bad, rec, len);
	bad[0] = 2; /* unknown version */
	CHECK(queue_replay(q, JOURNAL_REC_DEFERRED, bad, len, NULL) == -EINVAL);
	memcpy(bad, rec, len);
	bad[21] = 2; /* has_error neither 0 nor 1 */
	CHECK(queue_replay(q, JOURNAL_REC_DEFERRED, bad, len, NULL) == -EINVAL);
	CHECK(outcome_make(0x42, JOURNAL_REC_DEFERRED, idx, 3, 1, 5, NULL, bad, sizeof(bad),
	                   &iov) == 1);
	bad[21] = 2; /* the same without an error text to misread */
	CHECK(queue_replay(q, JOURNAL_REC_DEFERRED, bad, iov.iov_len, NULL) == -EINVAL);
	memcpy(bad, rec, len);
	bad[24 + 2] = '\0'; /* a NUL inside the error text */
	CHECK(queue_replay(q, JOURNAL_REC_DEFERRED, bad, len, NULL) == -EINVAL);
	memcpy(bad, rec, len);
	bad[22] = 0xff; /* error length far past the end */
	CHECK(queue_replay(q, JOURNAL_REC_DEFERRED, bad, len, NULL) == -EINVAL);
	memcpy(bad, rec, len);
	bad[len - 4] = 3; /* the last index (1) becomes 3: the message has 3 recipients */
	CHECK(queue_replay(q, JOURNAL_REC_DEFERRED, bad, len, NULL) == -EINVAL);
	CHECK(m->rcpts[0].attempts == 0 && m->rcpts[0].last_error == NULL); /* none applied */
	bad[len - 1] = 0xff; /* index past QUEUE_RCPTS_MAX: refused even for an unknown id */
	bad[1] ^= 1;
	CHECK(queue_replay(q, JOURNAL_REC_DEFERRED, bad, len, NULL) == -EINVAL);
	memcpy(bad, rec, len);
	memset(bad + len - 16, 0, 4); /* count 0 */
	CHECK(queue_replay(q, JOURNAL_REC_DEFERRED, bad, len, NULL) == -EINVAL);
	bad[len - 16] = 2; /* count 2 with 3 indexes after it */
	CHECK(queue_replay(q, JOURNAL_REC_DEFERRED, bad, len, NULL) == -EINVAL);
	CHECK(queue_consistent(q) && m->rcpts[1].attempts == 0);
	replay_damaged(q, JOURNAL_REC_DEFERRED, rec, len, &seed, &accepted);
	replay_damaged(q, JOURNAL_REC_BOUNCED, rec, len, &seed, &accepted);
	CHECK(accepted > 0); /* flips in the numbers and the text still decode */
	CHECK(queue_record_encode_hold(0x42, true, rec, sizeof(rec), &iov) == 1);
	replay_damaged(q, JOURNAL_REC_HOLD, rec, iov.iov_len, &seed, &accepted);
	rec[9] = 2; /* held flag neither 0 nor 1 */
	CHECK(queue_replay(q, JOURNAL_REC_HOLD, rec, iov.iov_len, NULL) == -EINVAL);
	queue_free(q);
}

static void
test_outcome_encode_limits(void)
{
	static unsigned many[QUEUE_RCPTS_MAX + 1];
	static uint8_t big[QUEUE_OUTCOME_RECORD_MAX(QUEUE_RCPTS_MAX)];
	static char long_error[QUEUE_TEXT_MAX + 10];
	uint8_t rec[64];
	unsigned idx[1] = {0};
	struct iovec iov;

	CHECK(outcome_make(1, JOURNAL_REC_MESSAGE, idx, 1, 0, 0, NULL, rec, 64, &iov) == -EINVAL);
	CHECK(outcome_make(1, JOURNAL_REC_HOLD, idx, 1, 0, 0, NULL, rec, 64, &iov) == -EINVAL);
	CHECK(outcome_make(1, JOURNAL_REC_DELETED, idx, 1, 0, 0, NULL, rec, 64, &iov) == -EINVAL);
	idx[0] = QUEUE_RCPTS_MAX;
	CHECK(outcome_make(1, JOURNAL_REC_DELIVERED, idx, 1, 0, 0, NULL, rec, 64, &iov) == -EINVAL);
	for (unsigned i = 0; i <= QUEUE_RCPTS_MAX; i++)
		many[i] = i % QUEUE_RCPTS_MAX;
	memset(long_error, 'e', sizeof(long_error) - 1);
	CHECK(outcome_make(1, JOURNAL_REC_BOUNCED, many, QUEUE_RCPTS_MAX + 1, 0, 0, NULL, big,
	                   sizeof(big), &iov) == -EINVAL);
	CHECK(outcome_make(1, JOURNAL_REC_BOUNCED, many, QUEUE_RCPTS_MAX, 7, 9, long_error, big,
	                   sizeof(big), &iov) == 1);
	CHECK(iov.iov_len == sizeof(big)); /* the bound in the header is exact */
	for (size_t cap = 0; cap < sizeof(big); cap += 1 + cap / 4)
		CHECK(outcome_make(1, JOURNAL_REC_BOUNCED, many, QUEUE_RCPTS_MAX, 7, 9, long_error,
		                   big, cap, &iov) == -ENOSPC);
	for (size_t cap = 0; cap < QUEUE_HOLD_RECORD_LEN; cap++)
		CHECK(queue_record_encode_hold(1, false, rec, cap, &iov) == -ENOSPC);
	CHECK(queue_record_encode_hold(1, false, rec, QUEUE_HOLD_RECORD_LEN, &iov) == 1);
	CHECK(iov.iov_len == QUEUE_HOLD_RECORD_LEN);
}

/* last_error is charged to the queue, cut to QUEUE_TEXT_MAX, and released. */
static void
test_error_memory(void)
{
	struct queue *q = queue_with_message(3);
	struct queue_message *m = queue_find(q, 3);
	static char long_error[QUEUE_TEXT_MAX + 100];
	struct queue_stats st, before;
	size_t base = m->memory;

	queue_stats(q, &before);
	CHECK(queue_rcpt_outcome(q, m, 0, QUEUE_RCPT_PENDING, 1, 10, "451 busy") == 0);
	queue_stats(q, &st);
	CHECK(m->memory == base + 9 && st.memory == before.memory + 9);
	CHECK(queue_rcpt_outcome(q, m, 0, QUEUE_RCPT_PENDING, 2, 20, "451 busy") == 0); /* same */
	CHECK(queue_rcpt_outcome(q, m, 1, QUEUE_RCPT_PENDING, 1, 10, "4") == 0);
	queue_stats(q, &st);
	CHECK(m->memory == base + 9 + 2 && st.memory == before.memory + 11);
	memset(long_error, 'x', sizeof(long_error) - 1);
	CHECK(queue_rcpt_outcome(q, m, 0, QUEUE_RCPT_PENDING, 3, 30, long_error) == 0);
	CHECK(strlen(m->rcpts[0].last_error) == QUEUE_TEXT_MAX);
	CHECK(m->memory == base + QUEUE_TEXT_MAX + 1 + 2);
	/* A cut inside a UTF-8 sequence backs off to its start; the record cuts the same way. */
	memcpy(long_error + QUEUE_TEXT_MAX - 1, "\xc3\xa9", 2);
	CHECK(replay_one(q, 3, JOURNAL_REC_DEFERRED, 2, 4, 40, long_error) == 0);
	CHECK(strlen(m->rcpts[2].last_error) == QUEUE_TEXT_MAX - 1);
	CHECK(queue_rcpt_outcome(q, m, 2, QUEUE_RCPT_PENDING, 4, 40, long_error) == 0);
	CHECK(strlen(m->rcpts[2].last_error) == QUEUE_TEXT_MAX - 1);
	CHECK(queue_rcpt_outcome(q, m, 0, QUEUE_RCPT_DELIVERED, 4, 0, NULL) == 0);
	CHECK(m->rcpts[0].last_error == NULL);
	CHECK(m->memory == base + 2 + QUEUE_TEXT_MAX);
	/* Over the limit an outcome is still kept: the limit gates new messages only. */
	q->memory_limit = q->memory;
	CHECK(queue_rcpt_outcome(q, m, 1, QUEUE_RCPT_BOUNCED, 2, 0, "550 5.1.1 unknown user") == 0);
	CHECK(strcmp(m->rcpts[1].last_error, "550 5.1.1 unknown user") == 0);
	CHECK(!queue_has_room(q, 0));
	CHECK(queue_consistent(q));
	queue_remove(q, m);
	queue_stats(q, &st);
	CHECK(st.memory == 0 && st.messages == 0 && st.recipients_pending == 0);
	queue_free(q);
}

static void
test_hold(void)
{
	struct queue *q = queue_with_message(4);
	struct queue_message *m = queue_find(q, 4);
	uint8_t rec[QUEUE_HOLD_RECORD_LEN];
	struct iovec iov;

	CHECK(!m->held);
	queue_hold(q, m, true);
	CHECK(m->held);
	queue_hold(q, m, false);
	CHECK(!m->held);
	CHECK(queue_record_encode_hold(4, true, rec, sizeof(rec), &iov) == 1);
	CHECK(queue_replay(q, JOURNAL_REC_HOLD, rec, iov.iov_len, NULL) == 0);
	CHECK(m->held);
	CHECK(queue_replay(q, JOURNAL_REC_HOLD, rec, iov.iov_len, NULL) == 0); /* duplicate */
	CHECK(m->held);
	CHECK(queue_record_encode_hold(4, false, rec, sizeof(rec), &iov) == 1);
	CHECK(queue_replay(q, JOURNAL_REC_HOLD, rec, iov.iov_len, NULL) == 0);
	CHECK(!m->held);
	/* Unknown id: ignored, but its id is never handed out again. */
	CHECK(queue_record_encode_hold(7000ull << QUEUE_WORKER_BITS, true, rec, sizeof(rec),
	                               &iov) == 1);
	CHECK(queue_replay(q, JOURNAL_REC_HOLD, rec, iov.iov_len, NULL) == 0);
	CHECK(queue_count(q) == 1 && !m->held);
	CHECK(queue_next_id(q, 1, (char[QUEUE_ID_LEN + 1]){0}) > 7000ull << QUEUE_WORKER_BITS);
	queue_free(q);
}

/* recipients_pending follows every change: outcomes, adds, removes, replayed states. */
static void
test_pending_stats(void)
{
	struct queue *q = queue_with_message(10);
	struct queue_envelope env = env_make();
	struct queue_message *a = queue_find(q, 10), *b;
	uint8_t payload[4096];
	struct queue_stats st;

	b = queue_add(q, 11, &env, (const uint8_t *)"x", 1, NULL);
	queue_stats(q, &st);
	CHECK(st.recipients_pending == 6 && queue_count(q) == 2);
	CHECK(queue_rcpt_outcome(q, a, 0, QUEUE_RCPT_PENDING, 1, 5, NULL) == 0);
	queue_stats(q, &st);
	CHECK(st.recipients_pending == 6);
	CHECK(queue_rcpt_outcome(q, a, 0, QUEUE_RCPT_DELIVERED, 2, 0, NULL) == 0);
	CHECK(queue_rcpt_outcome(q, a, 0, QUEUE_RCPT_BOUNCED, 3, 0, NULL) == 0); /* final: kept */
	CHECK(queue_rcpt_outcome(q, b, 2, QUEUE_RCPT_BOUNCED, 1, 0, "550") == 0);
	queue_stats(q, &st);
	CHECK(st.recipients_pending == 4 && queue_consistent(q));
	/* A MESSAGE record carrying a final state (as compaction will write) counts it. */
	size_t len = payload_make(12, &env, "y", payload), at = 18 + 4;
	const char *fixed[] = {env.sender,
	                       env.sender_params,
	                       env.origin.client_addr,
	                       env.origin.client_name,
	                       env.origin.protocol,
	                       env.origin.tls_version,
	                       env.origin.auth_user};
	for (int k = 0; k < QUEUE_FIXED_COUNT; k++)
		at += 2 + strlen(fixed[k]);
	at += 2 + strlen(test_rcpts[0]) + 2 + strlen(test_params[0]);
	CHECK(payload[at] == QUEUE_RCPT_PENDING);
	payload[at] = QUEUE_RCPT_DELIVERED;
	CHECK(queue_replay(q, JOURNAL_REC_MESSAGE, payload, len, &(struct journal_loc){0}) == 0);
	CHECK(queue_find(q, 12)->rcpts[0].state == QUEUE_RCPT_DELIVERED);
	queue_stats(q, &st);
	CHECK(st.recipients_pending == 6 && queue_count(q) == 3 && queue_consistent(q));
	queue_remove(q, b);
	queue_stats(q, &st);
	CHECK(st.recipients_pending == 4 && queue_count(q) == 2);
	queue_remove(q, a);
	queue_stats(q, &st);
	CHECK(st.recipients_pending == 2 && queue_count(q) == 1);
	queue_free(q);
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
	test_outcome_round_trip();
	test_outcome_order();
	test_outcome_replay_agrees();
	test_outcome_hostile();
	test_outcome_encode_limits();
	test_error_memory();
	test_hold();
	test_pending_stats();
	printf("%d passed, %d failed\n", passed, failed);
	return failed ? 1 : 0;
}
