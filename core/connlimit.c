#include "core/connlimit.h"

#include <assert.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Open addressing with linear probing and backward-shift deletion (no tombstones). */
struct connlimit_slot {
	uint8_t addr[16];
	unsigned count; /* 0: empty */
};

struct connlimit {
	pthread_mutex_t lock;
	unsigned total, total_max, per_ip_max;
	unsigned mask;
	struct connlimit_slot *slots;
};

struct connlimit *
connlimit_new(unsigned total_max, unsigned per_ip_max)
{
	assert(total_max > 0);
	assert(per_ip_max > 0);
	struct connlimit *cl = calloc(1, sizeof(*cl));
	if (cl == NULL)
		return NULL;
	unsigned size = 16;
	while (size < 2 * total_max) /* load factor stays at or under 1/2 */
		size *= 2;
	cl->slots = calloc(size, sizeof(*cl->slots));
	if (cl->slots == NULL) {
		free(cl);
		return NULL;
	}
	pthread_mutex_init(&cl->lock, NULL);
	cl->mask = size - 1;
	cl->total_max = total_max;
	cl->per_ip_max = per_ip_max;
	return cl;
}

void
connlimit_free(struct connlimit *cl)
{
	if (cl == NULL)
		return;
	pthread_mutex_destroy(&cl->lock);
	free(cl->slots);
	free(cl);
}

/* The address as 16 bytes, IPv4 as v4-mapped IPv6, so a client has one key either way. */
static void
connlimit_key(const struct sockaddr *sa, uint8_t key[16])
{
	memset(key, 0, 16);
	if (sa->sa_family == AF_INET) {
		key[10] = key[11] = 0xff;
		memcpy(key + 12, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, 4);
	} else if (sa->sa_family == AF_INET6) {
		memcpy(key, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, 16);
	}
}

static unsigned
connlimit_hash(const uint8_t key[16])
{
	uint64_t a, b;

	memcpy(&a, key, 8);
	memcpy(&b, key + 8, 8);
	uint64_t h = (a ^ (b * 0x9e3779b97f4a7c15ull)) * 0xff51afd7ed558ccdull;
	return (unsigned)(h >> 32);
}

static struct connlimit_slot *
connlimit_find(struct connlimit *cl, const uint8_t key[16])
{
	for (unsigned i = connlimit_hash(key) & cl->mask;; i = (i + 1) & cl->mask) {
		struct connlimit_slot *s = &cl->slots[i];
		if (s->count == 0 || memcmp(s->addr, key, 16) == 0)
			return s;
	}
}

/* Two FNV-1a variants side by side: 128 bits, so distinct names practically never share. */
static void
connlimit_name_key(const char *name, uint8_t key[16])
{
	uint64_t a = 0xcbf29ce484222325ull, b = 0x84222325cbf29ce4ull;

	for (const unsigned char *p = (const unsigned char *)name; *p; p++) {
		a = (a ^ *p) * 0x100000001b3ull;
		b = (b ^ *p) * 0x9e3779b97f4a7c15ull;
	}
	memcpy(key, &a, 8);
	memcpy(key + 8, &b, 8);
}

static enum connlimit_verdict
connlimit_acquire_key(struct connlimit *cl, const uint8_t key[16])
{
	enum connlimit_verdict v = CONNLIMIT_OK;

	pthread_mutex_lock(&cl->lock);
	struct connlimit_slot *s = connlimit_find(cl, key);
	if (cl->total >= cl->total_max) {
		v = CONNLIMIT_TOTAL;
	} else if (s->count >= cl->per_ip_max) {
		v = CONNLIMIT_PER_IP;
	} else {
		memcpy(s->addr, key, 16);
		s->count++;
		cl->total++;
	}
	pthread_mutex_unlock(&cl->lock);
	return v;
}

enum connlimit_verdict
connlimit_acquire(struct connlimit *cl, const struct sockaddr *addr)
{
	uint8_t key[16];

	connlimit_key(addr, key);
	return connlimit_acquire_key(cl, key);
}

enum connlimit_verdict
connlimit_acquire_name(struct connlimit *cl, const char *name)
{
	uint8_t key[16];

	connlimit_name_key(name, key);
	return connlimit_acquire_key(cl, key);
}

static void
connlimit_delete(struct connlimit *cl, struct connlimit_slot *hole)
{
	unsigned i = (unsigned)(hole - cl->slots);

	/* Shift back every later entry of the probe run that may sit in the hole. */
	for (unsigned j = (i + 1) & cl->mask; cl->slots[j].count != 0; j = (j + 1) & cl->mask) {
		unsigned home = connlimit_hash(cl->slots[j].addr) & cl->mask;
		if (((j - home) & cl->mask) >= ((j - i) & cl->mask)) {
			cl->slots[i] = cl->slots[j];
			i = j;
		}
	}
	cl->slots[i].count = 0;
}

static void
connlimit_release_key(struct connlimit *cl, const uint8_t key[16])
{
	pthread_mutex_lock(&cl->lock);
	struct connlimit_slot *s = connlimit_find(cl, key);
	assert(s->count > 0);
	assert(cl->total > 0);
	cl->total--;
	if (--s->count == 0)
		connlimit_delete(cl, s);
	pthread_mutex_unlock(&cl->lock);
}

void
connlimit_release(struct connlimit *cl, const struct sockaddr *addr)
{
	uint8_t key[16];

	connlimit_key(addr, key);
	connlimit_release_key(cl, key);
}

void
connlimit_release_name(struct connlimit *cl, const char *name)
{
	uint8_t key[16];

	connlimit_name_key(name, key);
	connlimit_release_key(cl, key);
}
