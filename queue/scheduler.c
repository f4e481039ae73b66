#include "queue/scheduler.h"

#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/address.h"

#define SCHED_BUCKETS 4096

struct sched_wakeup {
	uint64_t at_ms;
	uint64_t id;
};

struct sched {
	struct sched_wakeup *heap; /* min-heap on at_ms */
	size_t heap_len, heap_cap;
	struct sched_dest *buckets[SCHED_BUCKETS];
	unsigned dest_count;
	struct sched_dest *runnable_head, *runnable_tail;
};

struct sched *
sched_new(void)
{
	return calloc(1, sizeof(struct sched));
}

void
sched_free(struct sched *s)
{
	if (s == NULL)
		return;
	for (unsigned b = 0; b < SCHED_BUCKETS; b++) {
		struct sched_dest *d = s->buckets[b];
		while (d != NULL) {
			struct sched_dest *next = d->hash_next;
			struct sched_job *j;
			while ((j = sched_job_take(d)) != NULL)
				free(j);
			free(d);
			d = next;
		}
	}
	free(s->heap);
	free(s);
}

static const struct config_route *
sched_route_match(const struct config *cfg, const char *domain)
{
	const struct config_route *star = NULL;

	for (const char *d = domain; d != NULL && *d;
	     d = strchr(d, '.') ? strchr(d, '.') + 1 : NULL) {
		for (unsigned i = 0; i < cfg->route_count; i++) {
			if (address_domain_equal(cfg->routes[i].domain, d))
				return &cfg->routes[i];
		}
	}
	for (unsigned i = 0; i < cfg->route_count; i++) {
		if (strcmp(cfg->routes[i].domain, "*") == 0)
			star = &cfg->routes[i];
	}
	return star;
}

void
sched_route_for(const struct config *cfg, const char *domain, struct sched_route *out)
{
	const struct config_route *r = sched_route_match(cfg, domain);

	memset(out, 0, sizeof(*out));
	out->kind = r != NULL ? r->kind : CONFIG_ROUTE_MX;
	out->port = r != NULL && r->port != 0 ? r->port : cfg->outbound_port;
	if (out->kind == CONFIG_ROUTE_MX) {
		snprintf(out->host, sizeof(out->host), "%s", domain);
		config_domain_normalize(out->host);
		snprintf(out->key, sizeof(out->key), "mx:%s:%u", out->host, out->port);
	} else {
		snprintf(out->host, sizeof(out->host), "%s", r->host);
		snprintf(out->key, sizeof(out->key), "%s%s:%u",
		         out->kind == CONFIG_ROUTE_HOST_MX ? "mx:" : "", out->host, out->port);
	}
	out->tls = r != NULL ? config_route_tls(cfg, r) : cfg->outbound_tls;
	if (r != NULL && r->tls_set) {
		/* a route with a TLS policy of its own is a destination of its own */
		static const char *const names[] = {"none", "may", "encrypt", "dane", "verify"};
		size_t n = strlen(out->key);
		snprintf(out->key + n, sizeof(out->key) - n, "/tls=%s", names[out->tls]);
	}
}

static void
sched_heap_swap(struct sched *s, size_t a, size_t b)
{
	struct sched_wakeup t = s->heap[a];

	s->heap[a] = s->heap[b];
	s->heap[b] = t;
}

int
sched_wake(struct sched *s, uint64_t id, uint64_t at_ms)
{
	if (s->heap_len == s->heap_cap) {
		size_t cap = s->heap_cap ? s->heap_cap * 2 : 1024;
		if (cap > SCHED_WAKE_MAX)
			cap = SCHED_WAKE_MAX;
		if (cap == s->heap_len)
			return -ENOSPC;
		struct sched_wakeup *h = realloc(s->heap, cap * sizeof(*h));
		if (h == NULL)
			return -ENOMEM;
		s->heap = h;
		s->heap_cap = cap;
	}
	size_t i = s->heap_len++;
	s->heap[i] = (struct sched_wakeup){.at_ms = at_ms, .id = id};
	while (i > 0 && s->heap[(i - 1) / 2].at_ms > s->heap[i].at_ms) {
		sched_heap_swap(s, i, (i - 1) / 2);
		i = (i - 1) / 2;
	}
	return 0;
}

static void
sched_heap_pop(struct sched *s)
{
	size_t i = 0;

	s->heap[0] = s->heap[--s->heap_len];
	for (;;) {
		size_t l = 2 * i + 1, r = l + 1, m = i;
		if (l < s->heap_len && s->heap[l].at_ms < s->heap[m].at_ms)
			m = l;
		if (r < s->heap_len && s->heap[r].at_ms < s->heap[m].at_ms)
			m = r;
		if (m == i)
			return;
		sched_heap_swap(s, i, m);
		i = m;
	}
}

size_t
sched_due(struct sched *s, uint64_t now_ms, uint64_t *ids, size_t max)
{
	size_t n = 0;

	while (n < max && s->heap_len > 0 && s->heap[0].at_ms <= now_ms) {
		ids[n++] = s->heap[0].id;
		sched_heap_pop(s);
	}
	return n;
}

uint64_t
sched_next_wake(const struct sched *s)
{
	return s->heap_len > 0 ? s->heap[0].at_ms : UINT64_MAX;
}

static unsigned
sched_hash(const char *key)
{
	uint32_t h = 2166136261u; /* FNV-1a */

	for (const unsigned char *p = (const unsigned char *)key; *p; p++)
		h = (h ^ *p) * 16777619u;
	return h % SCHED_BUCKETS;
}

struct sched_dest *
sched_dest(struct sched *s, const struct sched_route *route)
{
	unsigned b = sched_hash(route->key);

	for (struct sched_dest *d = s->buckets[b]; d != NULL; d = d->hash_next) {
		if (strcmp(d->route.key, route->key) == 0)
			return d;
	}
	if (s->dest_count >= SCHED_DEST_MAX)
		return NULL;
	struct sched_dest *d = calloc(1, sizeof(*d));
	if (d == NULL)
		return NULL;
	d->route = *route;
	d->hash_next = s->buckets[b];
	s->buckets[b] = d;
	s->dest_count++;
	return d;
}

int
sched_job_add(struct sched *s, struct sched_dest *d, uint64_t id, const unsigned *rcpt,
              unsigned rcpt_count)
{
	assert(rcpt_count > 0);
	struct sched_job *j = malloc(sizeof(*j) + rcpt_count * sizeof(j->rcpt[0]));
	if (j == NULL)
		return -ENOMEM;
	j->next = NULL;
	j->id = id;
	j->rcpt_count = rcpt_count;
	memcpy(j->rcpt, rcpt, rcpt_count * sizeof(j->rcpt[0]));
	if (d->tail != NULL)
		d->tail->next = j;
	else
		d->head = j;
	d->tail = j;
	d->jobs++;
	sched_runnable_put(s, d);
	return 0;
}

struct sched_job *
sched_job_take(struct sched_dest *d)
{
	struct sched_job *j = d->head;

	if (j == NULL)
		return NULL;
	d->head = j->next;
	if (d->head == NULL)
		d->tail = NULL;
	d->jobs--;
	j->next = NULL;
	return j;
}

struct sched_dest *
sched_runnable_take(struct sched *s)
{
	struct sched_dest *d = s->runnable_head;

	if (d == NULL)
		return NULL;
	s->runnable_head = d->next_runnable;
	if (s->runnable_head == NULL)
		s->runnable_tail = NULL;
	d->next_runnable = NULL;
	d->runnable = false;
	return d;
}

void
sched_runnable_put(struct sched *s, struct sched_dest *d)
{
	if (d->runnable)
		return;
	d->runnable = true;
	if (s->runnable_tail != NULL)
		s->runnable_tail->next_runnable = d;
	else
		s->runnable_head = d;
	s->runnable_tail = d;
}

void
sched_dest_failed(struct sched_dest *d, uint64_t now_ms, const char *reason)
{
	snprintf(d->down_reason, sizeof(d->down_reason), "%s", reason);
	uint64_t wait = SCHED_DOWN_MIN_MS;

	for (unsigned i = 0; i < d->failures && wait < SCHED_DOWN_MAX_MS; i++)
		wait *= 2;
	if (wait > SCHED_DOWN_MAX_MS)
		wait = SCHED_DOWN_MAX_MS;
	d->failures++;
	d->down_until_ms = now_ms + wait;
}

void
sched_dest_ok(struct sched_dest *d)
{
	d->failures = 0;
	d->down_until_ms = 0;
}

bool
sched_dest_down(const struct sched_dest *d, uint64_t now_ms)
{
	return now_ms < d->down_until_ms;
}

void
sched_dest_revive_all(struct sched *s)
{
	for (unsigned b = 0; b < SCHED_BUCKETS; b++) {
		for (struct sched_dest *d = s->buckets[b]; d != NULL; d = d->hash_next)
			sched_dest_ok(d);
	}
}
