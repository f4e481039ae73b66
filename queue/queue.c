/*
 * queue.c -- one worker's in-memory queue, its ids, and message record encoding.
 *
 * A MESSAGE record payload (version 1, little-endian) is:
 *
 *   u8 version | u8 flags (1: held) | u64 id | u64 arrival_ms | 7 texts (sender,
 *   sender params, client addr, client name, protocol, tls version, auth user) |
 *   u32 rcpt_count | rcpt_count × { text address | text params | u8 state |
 *   u32 attempts | u64 next_attempt_ms | u8 has_error | [text error] } |
 *   u64 body_len | body
 *
 * where a text is u16 length + bytes (no NUL, at most QUEUE_TEXT_MAX). The payload
 * passed the journal crc but may come from an older or buggy version, so decoding
 * checks every length against what is left and the body length against the rest.
 *
 * A DELIVERED, DEFERRED or BOUNCED record (version 1) is:
 *
 *   u8 version | u64 id | u32 attempts | u64 next_attempt_ms | u8 has_error |
 *   [text error] | u32 count | count × u32 recipient index
 *
 * and a HOLD record (version 1) is u8 version | u64 id | u8 held; a DELETED record is
 * the u64 id alone.
 */
#include "queue/queue.h"

#include <assert.h>
#include <endian.h>
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define QUEUE_RECORD_VERSION 1
#define QUEUE_FLAG_HELD      1u
#define QUEUE_FIXED_COUNT    7
#define QUEUE_BUCKETS_MIN    1024

static_assert(QUEUE_TEXT_MAX <= UINT16_MAX, "text lengths are u16");
static_assert(QUEUE_RCPTS_MAX <= UINT32_MAX / 4, "rcpt index lists fit a u32 length");

/* The message's fixed strings, in record order. */
static const size_t queue_fixed_offsets[QUEUE_FIXED_COUNT] = {
    offsetof(struct queue_message, sender),      offsetof(struct queue_message, sender_params),
    offsetof(struct queue_message, client_addr), offsetof(struct queue_message, client_name),
    offsetof(struct queue_message, protocol),    offsetof(struct queue_message, tls_version),
    offsetof(struct queue_message, auth_user),
};

struct queue_entry {
	struct queue_message m; /* first: a message pointer is an entry pointer */
	struct queue_entry *hash_next;
	struct queue_entry *prev, *next; /* arrival order */
	unsigned pending;                /* recipients in QUEUE_RCPT_PENDING */
};

struct queue {
	unsigned worker;
	uint64_t memory, memory_limit;
	uint64_t id_next; /* time part of the next id; a floor until the first id */
	bool id_started;
	struct queue_entry **buckets;
	size_t bucket_count; /* a power of two */
	uint64_t count;
	uint64_t rcpts_pending; /* sum of the entries' pending */
	struct queue_entry *head, *tail;
};

struct text {
	const char *p;
	size_t len;
};

struct rcpt_view {
	struct text address, params, error;
	bool has_error;
	uint8_t state;
	uint32_t attempts;
	uint64_t next_attempt_ms;
};

struct reader {
	const uint8_t *p;
	size_t left;
};

/* A decoded DELIVERED/DEFERRED/BOUNCED record. */
struct outcome_view {
	uint64_t id;
	uint32_t attempts;
	uint64_t next_attempt_ms;
	bool has_error;
	struct text error;
	uint32_t count;
	struct reader index; /* count × u32, each below QUEUE_RCPTS_MAX */
};

/* A message as either an envelope (rcpts from env) or a decoded record (rcpts read back). */
struct msg_view {
	uint64_t id, arrival_ms;
	bool held;
	struct text fixed[QUEUE_FIXED_COUNT];
	unsigned rcpt_count;
	const struct queue_envelope *env;
	struct reader rcpts;
	size_t text_bytes; /* all strings with their NULs */
	const uint8_t *body;
	uint64_t body_len;
};

/* Counts only when p is NULL; overflow is sticky. */
struct writer {
	uint8_t *p;
	size_t len, cap;
	bool overflow;
};

static void
wr_bytes(struct writer *w, const void *src, size_t n)
{
	if (w->p != NULL && n > w->cap - w->len)
		w->overflow = true;
	if (w->p != NULL && !w->overflow)
		memcpy(w->p + w->len, src, n);
	w->len += n;
}

static void
wr_u8(struct writer *w, uint8_t v)
{
	wr_bytes(w, &v, 1);
}

static void
wr_u32(struct writer *w, uint32_t v)
{
	uint32_t le = htole32(v);
	wr_bytes(w, &le, 4);
}

static void
wr_u64(struct writer *w, uint64_t v)
{
	uint64_t le = htole64(v);
	wr_bytes(w, &le, 8);
}

static void
wr_text(struct writer *w, struct text t)
{
	uint16_t le = htole16((uint16_t)t.len);

	assert(t.len <= QUEUE_TEXT_MAX);
	wr_bytes(w, &le, 2);
	wr_bytes(w, t.p, t.len);
}

static bool
rd_bytes(struct reader *r, size_t n, const uint8_t **out)
{
	if (n > r->left)
		return false;
	*out = r->p;
	r->p += n;
	r->left -= n;
	return true;
}

static bool
rd_u8(struct reader *r, uint8_t *v)
{
	const uint8_t *p;

	if (!rd_bytes(r, 1, &p))
		return false;
	*v = *p;
	return true;
}

static bool
rd_u32(struct reader *r, uint32_t *v)
{
	const uint8_t *p;

	if (!rd_bytes(r, 4, &p))
		return false;
	memcpy(v, p, 4);
	*v = le32toh(*v);
	return true;
}

static bool
rd_u64(struct reader *r, uint64_t *v)
{
	const uint8_t *p;

	if (!rd_bytes(r, 8, &p))
		return false;
	memcpy(v, p, 8);
	*v = le64toh(*v);
	return true;
}

/* A text must fit QUEUE_TEXT_MAX and hold no NUL, which would cut it short in memory. */
static bool
rd_text(struct reader *r, struct text *t)
{
	const uint8_t *p;
	uint16_t le;

	if (!rd_bytes(r, 2, &p))
		return false;
	memcpy(&le, p, 2);
	t->len = le16toh(le);
	if (t->len > QUEUE_TEXT_MAX || !rd_bytes(r, t->len, &p))
		return false;
	t->p = (const char *)p;
	return memchr(p, '\0', t->len) == NULL;
}

static bool
rd_rcpt(struct reader *r, struct rcpt_view *v)
{
	uint8_t has_error;

	v->error = (struct text){"", 0};
	if (!rd_text(r, &v->address) || !rd_text(r, &v->params) || !rd_u8(r, &v->state) ||
	    !rd_u32(r, &v->attempts) || !rd_u64(r, &v->next_attempt_ms) || !rd_u8(r, &has_error))
		return false;
	v->has_error = has_error == 1;
	if (has_error > 1 || v->state > QUEUE_RCPT_BOUNCED)
		return false;
	return !v->has_error || rd_text(r, &v->error);
}

static struct text
text_of(const char *s)
{
	return s == NULL ? (struct text){"", 0} : (struct text){s, strlen(s)};
}

/* Recipient i of v; rcpts of a decoded record must be taken in order. */
static void
view_rcpt(struct msg_view *v, unsigned i, struct rcpt_view *r)
{
	if (v->env == NULL) {
		bool ok = rd_rcpt(&v->rcpts, r);
		assert(ok); /* validated by record_decode */
		return;
	}
	*r = (struct rcpt_view){
	    .address = text_of(v->env->rcpt_addresses[i]),
	    .params = text_of(v->env->rcpt_params ? v->env->rcpt_params[i] : NULL),
	    .state = QUEUE_RCPT_PENDING,
	};
}

/* Fills v from an envelope; -EINVAL when a limit is broken. */
static int
view_from_envelope(struct msg_view *v, uint64_t id, const struct queue_envelope *env,
                   const uint8_t *body, size_t body_len)
{
	const char *fixed[QUEUE_FIXED_COUNT] = {
	    env->sender,
	    env->sender_params,
	    env->origin.client_addr,
	    env->origin.client_name,
	    env->origin.protocol,
	    env->origin.tls_version,
	    env->origin.auth_user,
	};

	assert(body != NULL || body_len == 0);
	assert(env->rcpt_addresses != NULL || env->rcpt_count == 0);
	*v = (struct msg_view){.id = id,
	                       .arrival_ms = env->arrival_ms,
	                       .env = env,
	                       .rcpt_count = env->rcpt_count,
	                       .body = body,
	                       .body_len = body_len};
	if (env->rcpt_count == 0 || env->rcpt_count > QUEUE_RCPTS_MAX)
		return -EINVAL;
	for (int k = 0; k < QUEUE_FIXED_COUNT; k++) {
		v->fixed[k] = text_of(fixed[k]);
		if (v->fixed[k].len > QUEUE_TEXT_MAX)
			return -EINVAL;
		v->text_bytes += v->fixed[k].len + 1;
	}
	for (unsigned i = 0; i < env->rcpt_count; i++) {
		struct rcpt_view r;
		view_rcpt(v, i, &r);
		if (r.address.len > QUEUE_TEXT_MAX || r.params.len > QUEUE_TEXT_MAX)
			return -EINVAL;
		v->text_bytes += r.address.len + r.params.len + 2;
	}
	return 0;
}

static void
view_encode(struct msg_view *v, struct writer *w)
{
	wr_u8(w, QUEUE_RECORD_VERSION);
	wr_u8(w, v->held ? QUEUE_FLAG_HELD : 0);
	wr_u64(w, v->id);
	wr_u64(w, v->arrival_ms);
	for (int k = 0; k < QUEUE_FIXED_COUNT; k++)
		wr_text(w, v->fixed[k]);
	wr_u32(w, v->rcpt_count);
	for (unsigned i = 0; i < v->rcpt_count; i++) {
		struct rcpt_view r;
		view_rcpt(v, i, &r);
		wr_text(w, r.address);
		wr_text(w, r.params);
		wr_u8(w, r.state);
		wr_u32(w, r.attempts);
		wr_u64(w, r.next_attempt_ms);
		wr_u8(w, r.has_error);
		if (r.has_error)
			wr_text(w, r.error);
	}
	wr_u64(w, v->body_len);
}

int
queue_record_encode(uint64_t id, const struct queue_envelope *env, const uint8_t *body,
                    size_t body_len, uint8_t *scratch, size_t scratch_len, struct iovec iov[2])
{
	struct writer w = {.p = scratch, .cap = scratch_len};
	struct msg_view v;
	int rc;

	assert(env != NULL);
	assert(scratch != NULL);
	rc = view_from_envelope(&v, id, env, body, body_len);
	if (rc < 0)
		return rc;
	view_encode(&v, &w);
	if (w.overflow)
		return -ENOSPC;
	iov[0] = (struct iovec){scratch, w.len};
	iov[1] = (struct iovec){(void *)body, body_len};
	return 2;
}

size_t
queue_record_header_len(const struct queue_envelope *env)
{
	struct writer w = {0};
	struct msg_view v;

	if (view_from_envelope(&v, 0, env, NULL, 0) < 0)
		return 0;
	view_encode(&v, &w);
	return w.len;
}

/* Validates a MESSAGE payload and fills v (rcpts are left to read again in order). */
static int
record_decode(const uint8_t *payload, size_t len, struct msg_view *v)
{
	struct reader r = {payload, len};
	uint8_t version, flags;
	uint32_t rcpt_count;
	struct rcpt_view rv;

	*v = (struct msg_view){0};
	if (!rd_u8(&r, &version) || version != QUEUE_RECORD_VERSION || !rd_u8(&r, &flags) ||
	    (flags & ~QUEUE_FLAG_HELD) != 0 || !rd_u64(&r, &v->id) || !rd_u64(&r, &v->arrival_ms))
		return -EINVAL;
	v->held = flags & QUEUE_FLAG_HELD;
	for (int k = 0; k < QUEUE_FIXED_COUNT; k++) {
		if (!rd_text(&r, &v->fixed[k]))
			return -EINVAL;
		v->text_bytes += v->fixed[k].len + 1;
	}
	if (!rd_u32(&r, &rcpt_count) || rcpt_count == 0 || rcpt_count > QUEUE_RCPTS_MAX)
		return -EINVAL;
	v->rcpt_count = rcpt_count;
	v->rcpts = r;
	for (unsigned i = 0; i < v->rcpt_count; i++) {
		if (!rd_rcpt(&r, &rv))
			return -EINVAL;
		v->text_bytes += rv.address.len + rv.params.len + 2;
	}
	if (!rd_u64(&r, &v->body_len) || v->body_len != r.left)
		return -EINVAL;
	v->body = r.p;
	return 0;
}

static uint64_t
id_hash(uint64_t id)
{
	id ^= id >> 33;
	id *= 0xff51afd7ed558ccdULL;
	id ^= id >> 33;
	return id;
}

struct queue *
queue_new(unsigned worker, uint64_t memory_limit)
{
	struct queue *q;

	assert(worker < 1u << QUEUE_WORKER_BITS);
	q = calloc(1, sizeof(*q));
	if (q == NULL)
		return NULL;
	q->buckets = calloc(QUEUE_BUCKETS_MIN, sizeof(*q->buckets));
	if (q->buckets == NULL) {
		free(q);
		return NULL;
	}
	q->bucket_count = QUEUE_BUCKETS_MIN;
	q->worker = worker;
	q->memory_limit = memory_limit;
	return q;
}

void
queue_free(struct queue *q)
{
	if (q == NULL)
		return;
	while (q->head != NULL)
		queue_remove(q, &q->head->m);
	free(q->buckets);
	free(q);
}

void
queue_id_format(uint64_t id, char text[QUEUE_ID_LEN + 1])
{
	snprintf(text, QUEUE_ID_LEN + 1, "%016llX", (unsigned long long)id);
}

/* Ids seen in the journal raise the floor, so a restart never hands one out again. */
static void
queue_id_seen(struct queue *q, uint64_t id)
{
	uint64_t t = (id >> QUEUE_WORKER_BITS) + 1;

	if (t > q->id_next)
		q->id_next = t;
}

uint64_t
queue_next_id(struct queue *q, uint64_t now_us, char text[QUEUE_ID_LEN + 1])
{
	uint64_t id;

	if (!q->id_started && now_us > q->id_next)
		q->id_next = now_us;
	q->id_started = true;
	assert(q->id_next < UINT64_MAX >> QUEUE_WORKER_BITS);
	id = q->id_next++ << QUEUE_WORKER_BITS | q->worker;
	queue_id_format(id, text);
	return id;
}

static size_t
message_charge(const struct msg_view *v, bool with_body)
{
	return sizeof(struct queue_entry) + v->rcpt_count * sizeof(struct queue_rcpt) +
	       v->text_bytes + (with_body ? v->body_len : 0);
}

bool
queue_has_room(const struct queue *q, size_t body_len)
{
	/* The envelope is small next to the body; it is charged exactly when added. */
	return q->count < QUEUE_MESSAGES_MAX &&
	       q->memory + sizeof(struct queue_entry) + body_len <= q->memory_limit;
}

static char *
text_copy(char **cursor, struct text t)
{
	char *s = *cursor;

	memcpy(s, t.p, t.len);
	s[t.len] = '\0';
	*cursor += t.len + 1;
	return s;
}

/* Copies the recipients; 0, or -ENOMEM for a last_error (each is its own allocation). */
static int
message_fill_rcpts(struct queue_message *m, struct msg_view *v, char **cursor)
{
	struct queue_entry *e = (struct queue_entry *)m;

	for (unsigned i = 0; i < v->rcpt_count; i++) {
		struct queue_rcpt *qr = &m->rcpts[i];
		struct rcpt_view r;
		view_rcpt(v, i, &r);
		qr->address = text_copy(cursor, r.address);
		qr->params = text_copy(cursor, r.params);
		qr->state = r.state;
		e->pending += r.state == QUEUE_RCPT_PENDING;
		qr->attempts = r.attempts;
		qr->next_attempt_ms = r.next_attempt_ms;
		qr->last_error = r.has_error ? strndup(r.error.p, r.error.len) : NULL;
		if (r.has_error && qr->last_error == NULL)
			return -ENOMEM;
		m->memory += r.has_error ? r.error.len + 1 : 0;
	}
	return 0;
}

static void message_link(struct queue *q, struct queue_entry *e);

/* Builds and links a message from v: one allocation for struct, rcpts and strings. */
static struct queue_message *
message_build(struct queue *q, struct msg_view *v, bool with_body, const struct journal_loc *loc)
{
	size_t rcpts_len = v->rcpt_count * sizeof(struct queue_rcpt);
	struct queue_entry *e = calloc(1, sizeof(*e) + rcpts_len + v->text_bytes);
	struct queue_message *m = &e->m;
	char *cursor;

	if (e == NULL)
		return NULL;
	m->id = v->id;
	m->rcpts = (struct queue_rcpt *)(e + 1);
	m->rcpt_count = v->rcpt_count;
	m->memory = message_charge(v, with_body);
	cursor = (char *)m->rcpts + rcpts_len;
	for (int k = 0; k < QUEUE_FIXED_COUNT; k++)
		*(char **)((char *)m + queue_fixed_offsets[k]) = text_copy(&cursor, v->fixed[k]);
	if (message_fill_rcpts(m, v, &cursor) < 0 ||
	    (with_body && (m->body = malloc(v->body_len ? v->body_len : 1)) == NULL)) {
		m->body = NULL;
		message_link(q, e);
		queue_remove(q, m);
		return NULL;
	}
	if (with_body)
		memcpy(m->body, v->body, v->body_len);
	assert(cursor == (char *)m->rcpts + rcpts_len + v->text_bytes);
	queue_id_format(m->id, m->id_text);
	m->arrival_ms = v->arrival_ms;
	m->held = v->held;
	m->body_len = v->body_len;
	m->loc = loc ? *loc : (struct journal_loc){0};
	message_link(q, e);
	return m;
}

static void
buckets_grow(struct queue *q)
{
	size_t count = q->bucket_count * 2;
	struct queue_entry **b = calloc(count, sizeof(*b));

	if (b == NULL)
		return; /* longer chains, still correct */
	for (struct queue_entry *e = q->head; e != NULL; e = e->next) {
		size_t i = id_hash(e->m.id) & (count - 1);
		e->hash_next = b[i];
		b[i] = e;
	}
	free(q->buckets);
	q->buckets = b;
	q->bucket_count = count;
}

static void
message_link(struct queue *q, struct queue_entry *e)
{
	size_t i = id_hash(e->m.id) & (q->bucket_count - 1);

	e->hash_next = q->buckets[i];
	q->buckets[i] = e;
	e->prev = q->tail;
	e->next = NULL;
	if (q->tail != NULL)
		q->tail->next = e;
	else
		q->head = e;
	q->tail = e;
	q->count++;
	q->memory += e->m.memory;
	q->rcpts_pending += e->pending;
	if (q->count > q->bucket_count && q->bucket_count < QUEUE_MESSAGES_MAX)
		buckets_grow(q);
}

struct queue_message *
queue_add(struct queue *q, uint64_t id, const struct queue_envelope *env, const uint8_t *body,
          size_t body_len, const struct journal_loc *loc)
{
	struct msg_view v;

	assert(env != NULL);
	assert(queue_find(q, id) == NULL);
	if (view_from_envelope(&v, id, env, body, body_len) < 0 || q->count >= QUEUE_MESSAGES_MAX ||
	    q->memory + message_charge(&v, true) > q->memory_limit)
		return NULL;
	return message_build(q, &v, true, loc);
}

struct queue_message *
queue_find(struct queue *q, uint64_t id)
{
	struct queue_entry *e = q->buckets[id_hash(id) & (q->bucket_count - 1)];

	while (e != NULL && e->m.id != id)
		e = e->hash_next;
	return e ? &e->m : NULL;
}

void
queue_remove(struct queue *q, struct queue_message *m)
{
	struct queue_entry *e = (struct queue_entry *)m;
	struct queue_entry **link = &q->buckets[id_hash(m->id) & (q->bucket_count - 1)];

	while (*link != e) {
		assert(*link != NULL);
		link = &(*link)->hash_next;
	}
	*link = e->hash_next;
	if (e->prev != NULL)
		e->prev->next = e->next;
	else
		q->head = e->next;
	if (e->next != NULL)
		e->next->prev = e->prev;
	else
		q->tail = e->prev;
	assert(q->count > 0);
	assert(q->memory >= m->memory);
	assert(q->rcpts_pending >= e->pending);
	q->count--;
	q->memory -= m->memory;
	q->rcpts_pending -= e->pending;
	for (unsigned i = 0; i < m->rcpt_count; i++)
		free(m->rcpts[i].last_error);
	free(m->body);
	free(e);
}

struct queue_message *
queue_next(struct queue *q, struct queue_message *prev)
{
	struct queue_entry *e = prev ? ((struct queue_entry *)prev)->next : q->head;

	return e ? &e->m : NULL;
}

size_t
queue_count(const struct queue *q)
{
	return q->count;
}

void
queue_stats(const struct queue *q, struct queue_stats *st)
{
	*st = (struct queue_stats){.messages = q->count,
	                           .recipients_pending = q->rcpts_pending,
	                           .memory = q->memory,
	                           .memory_limit = q->memory_limit};
}

/* The record type of an outcome decides the state it sets. */
static bool
outcome_state(enum journal_rec_type type, enum queue_rcpt_state *st)
{
	switch (type) {
	case JOURNAL_REC_DELIVERED:
		*st = QUEUE_RCPT_DELIVERED;
		return true;
	case JOURNAL_REC_DEFERRED:
		*st = QUEUE_RCPT_PENDING;
		return true;
	case JOURNAL_REC_BOUNCED:
		*st = QUEUE_RCPT_BOUNCED;
		return true;
	default:
		return false;
	}
}

/*
 * An error text bounded to QUEUE_TEXT_MAX; the cut backs off to the start of a UTF-8
 * sequence so that a DSN quoting a long SMTPUTF8 reply stays valid UTF-8.
 */
static struct text
error_text(const char *s)
{
	size_t len = strnlen(s, QUEUE_TEXT_MAX);

	while (len > 0 && ((uint8_t)s[len] & 0xc0) == 0x80)
		len--;
	return (struct text){s, len};
}

/* Validates an outcome payload without knowing the message: indexes are checked later. */
static int
outcome_decode(const uint8_t *payload, size_t len, struct outcome_view *v)
{
	struct reader r = {payload, len};
	uint8_t version, has_error;
	uint32_t index;

	*v = (struct outcome_view){.error = {"", 0}};
	if (!rd_u8(&r, &version) || version != QUEUE_RECORD_VERSION || !rd_u64(&r, &v->id) ||
	    !rd_u32(&r, &v->attempts) || !rd_u64(&r, &v->next_attempt_ms) ||
	    !rd_u8(&r, &has_error) || has_error > 1)
		return -EINVAL;
	v->has_error = has_error == 1;
	if ((v->has_error && !rd_text(&r, &v->error)) || !rd_u32(&r, &v->count) || v->count == 0 ||
	    v->count > QUEUE_RCPTS_MAX || r.left != (size_t)v->count * 4)
		return -EINVAL;
	v->index = r;
	while (rd_u32(&r, &index))
		if (index >= QUEUE_RCPTS_MAX)
			return -EINVAL;
	return 0;
}

static int
hold_decode(const uint8_t *payload, size_t len, uint64_t *id, bool *held)
{
	struct reader r = {payload, len};
	uint8_t version, flag;

	if (!rd_u8(&r, &version) || version != QUEUE_RECORD_VERSION || !rd_u64(&r, id) ||
	    !rd_u8(&r, &flag) || flag > 1 || r.left != 0)
		return -EINVAL;
	*held = flag == 1;
	return 0;
}

int
queue_record_encode_deleted(uint64_t id, uint8_t *scratch, size_t scratch_len, struct iovec *iov)
{
	struct writer w = {.p = scratch, .cap = scratch_len};

	assert(scratch != NULL);
	wr_u64(&w, id);
	if (w.overflow)
		return -ENOSPC;
	*iov = (struct iovec){scratch, w.len};
	return 1;
}

int
queue_record_encode_outcome(uint64_t id, enum journal_rec_type type, const unsigned *rcpt_idx,
                            unsigned n, uint32_t attempts, uint64_t next_attempt_ms,
                            const char *last_error, uint8_t *scratch, size_t cap, struct iovec *iov)
{
	struct writer w = {.p = scratch, .cap = cap};
	struct outcome_view check;
	enum queue_rcpt_state st;

	assert(rcpt_idx != NULL || n == 0);
	assert(scratch != NULL);
	if (!outcome_state(type, &st) || n == 0 || n > QUEUE_RCPTS_MAX)
		return -EINVAL;
	for (unsigned i = 0; i < n; i++)
		if (rcpt_idx[i] >= QUEUE_RCPTS_MAX)
			return -EINVAL;
	wr_u8(&w, QUEUE_RECORD_VERSION);
	wr_u64(&w, id);
	wr_u32(&w, attempts);
	wr_u64(&w, next_attempt_ms);
	wr_u8(&w, last_error != NULL);
	if (last_error != NULL)
		wr_text(&w, error_text(last_error));
	wr_u32(&w, n);
	for (unsigned i = 0; i < n; i++)
		wr_u32(&w, rcpt_idx[i]);
	if (w.overflow)
		return -ENOSPC;
	/* Checked as replay will check it: a record it would refuse must not be written. */
	assert(outcome_decode(scratch, w.len, &check) == 0);
	*iov = (struct iovec){scratch, w.len};
	return 1;
}

int
queue_record_encode_hold(uint64_t id, bool held, uint8_t *scratch, size_t cap, struct iovec *iov)
{
	struct writer w = {.p = scratch, .cap = cap};
	uint64_t check_id;
	bool check_held;

	assert(scratch != NULL);
	wr_u8(&w, QUEUE_RECORD_VERSION);
	wr_u64(&w, id);
	wr_u8(&w, held);
	if (w.overflow)
		return -ENOSPC;
	assert(hold_decode(scratch, w.len, &check_id, &check_held) == 0);
	assert(check_id == id);
	assert(check_held == held);
	*iov = (struct iovec){scratch, w.len};
	return 1;
}

static int
replay_message(struct queue *q, const void *payload, size_t len, const struct journal_loc *loc)
{
	struct msg_view v;
	bool with_body;

	if (record_decode(payload, len, &v) < 0)
		return -EINVAL;
	queue_id_seen(q, v.id);
	if (queue_find(q, v.id) != NULL)
		return 0; /* a copy from a compaction or a recovery: already here */
	if (q->count >= QUEUE_MESSAGES_MAX ||
	    q->memory + message_charge(&v, false) > q->memory_limit)
		return -ENOMEM;
	/* Over the limit, the body stays in the journal and is read back through loc. */
	with_body = q->memory + message_charge(&v, true) <= q->memory_limit;
	return message_build(q, &v, with_body, loc) ? 0 : -ENOMEM;
}

static bool
text_is(const char *s, struct text t)
{
	return s != NULL && strncmp(s, t.p, t.len) == 0 && s[t.len] == '\0';
}

/* Replaces a recipient's last error (NULL: none), moving the charge with it. */
static void
rcpt_error_set(struct queue *q, struct queue_message *m, struct queue_rcpt *r, char *error)
{
	size_t old = r->last_error ? strlen(r->last_error) + 1 : 0;
	size_t new = error ? strlen(error) + 1 : 0;

	assert(m->memory >= old);
	assert(q->memory >= old);
	free(r->last_error);
	r->last_error = error;
	m->memory = m->memory - old + new;
	q->memory = q->memory - old + new;
}

/*
 * The one place a recipient's outcome changes, at run time and in replay, so the two
 * cannot disagree. Final states stay final and a deferral older than what is known is
 * dropped: duplicated or reordered records then leave the same result.
 */
static int
rcpt_apply(struct queue *q, struct queue_message *m, unsigned idx, enum queue_rcpt_state st,
           uint32_t attempts, uint64_t next_attempt_ms, const struct text *error)
{
	struct queue_entry *e = (struct queue_entry *)m;
	struct queue_rcpt *r;
	char *copy = NULL;

	if (idx >= m->rcpt_count || (unsigned)st > QUEUE_RCPT_BOUNCED)
		return -EINVAL;
	r = &m->rcpts[idx];
	if (r->state != QUEUE_RCPT_PENDING || (st == QUEUE_RCPT_PENDING && attempts < r->attempts))
		return 0;
	if (error == NULL || !text_is(r->last_error, *error)) {
		if (error != NULL && (copy = strndup(error->p, error->len)) == NULL)
			return -ENOMEM;
		rcpt_error_set(q, m, r, copy);
	}
	if (st != QUEUE_RCPT_PENDING) {
		assert(e->pending > 0);
		assert(q->rcpts_pending > 0);
		e->pending--;
		q->rcpts_pending--;
	}
	r->state = st;
	r->attempts = attempts;
	r->next_attempt_ms = next_attempt_ms;
	return 0;
}

int
queue_rcpt_outcome(struct queue *q, struct queue_message *m, unsigned idx, enum queue_rcpt_state st,
                   uint32_t attempts, uint64_t next_attempt_ms, const char *last_error)
{
	struct text error;

	assert(q != NULL);
	assert(m != NULL);
	if (last_error == NULL)
		return rcpt_apply(q, m, idx, st, attempts, next_attempt_ms, NULL);
	error = error_text(last_error);
	return rcpt_apply(q, m, idx, st, attempts, next_attempt_ms, &error);
}

void
queue_hold(struct queue *q, struct queue_message *m, bool held)
{
	assert(m != NULL);
	assert(queue_find(q, m->id) == m);
	m->held = held;
}

bool
queue_message_finished(const struct queue_message *m)
{
	assert(m != NULL);
	return ((const struct queue_entry *)m)->pending == 0;
}

/* Applies all of a record's recipients or, when one index is out of range, none. */
static int
replay_outcome(struct queue *q, enum journal_rec_type type, const void *payload, size_t len)
{
	struct outcome_view v;
	struct queue_message *m;
	enum queue_rcpt_state st;
	struct reader r;
	uint32_t index;
	bool known = outcome_state(type, &st);
	int rc = 0;

	assert(known);
	if (outcome_decode(payload, len, &v) < 0)
		return -EINVAL;
	queue_id_seen(q, v.id);
	m = queue_find(q, v.id);
	if (m == NULL)
		return 0; /* deleted, or its MESSAGE was in a quarantined segment */
	for (r = v.index; rd_u32(&r, &index);)
		if (index >= m->rcpt_count)
			return -EINVAL;
	for (r = v.index; rc == 0 && rd_u32(&r, &index);)
		rc = rcpt_apply(q, m, index, st, v.attempts, v.next_attempt_ms,
		                v.has_error ? &v.error : NULL);
	return rc;
}

static int
replay_hold(struct queue *q, const void *payload, size_t len)
{
	struct queue_message *m;
	uint64_t id;
	bool held;

	if (hold_decode(payload, len, &id, &held) < 0)
		return -EINVAL;
	queue_id_seen(q, id);
	m = queue_find(q, id);
	if (m != NULL)
		queue_hold(q, m, held);
	return 0;
}

static int
replay_deleted(struct queue *q, const void *payload, size_t len)
{
	struct reader r = {payload, len};
	struct queue_message *m;
	uint64_t id;

	if (!rd_u64(&r, &id) || r.left != 0)
		return -EINVAL;
	queue_id_seen(q, id);
	m = queue_find(q, id);
	if (m != NULL)
		queue_remove(q, m);
	return 0;
}

int
queue_replay(struct queue *q, enum journal_rec_type type, const void *payload, size_t len,
             const struct journal_loc *loc)
{
	assert(q != NULL);
	assert(payload != NULL || len == 0);
	switch (type) {
	case JOURNAL_REC_MESSAGE:
		return replay_message(q, payload, len, loc);
	case JOURNAL_REC_DELIVERED:
	case JOURNAL_REC_DEFERRED:
	case JOURNAL_REC_BOUNCED:
		return replay_outcome(q, type, payload, len);
	case JOURNAL_REC_DELETED:
		return replay_deleted(q, payload, len);
	case JOURNAL_REC_HOLD:
		return replay_hold(q, payload, len);
	}
	return -EINVAL;
}
