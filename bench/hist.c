#include "bench/hist.h"

#include <assert.h>
#include <string.h>

void
hist_init(struct hist *h)
{
	assert(h);
	memset(h, 0, sizeof(*h));
}

/* Values below HIST_SUB_BUCKETS map 1:1; above, the top HIST_SUB_BITS bits below the
 * leading one select the sub-bucket within the value's power of two. */
static unsigned
hist_index(uint64_t v)
{
	unsigned mag, sub;

	if (v < HIST_SUB_BUCKETS)
		return (unsigned)v;
	mag = 63u - (unsigned)__builtin_clzll(v); /* >= HIST_SUB_BITS */
	sub = (unsigned)(v >> (mag - HIST_SUB_BITS)) & (HIST_SUB_BUCKETS - 1);
	return (mag - HIST_SUB_BITS + 1) * HIST_SUB_BUCKETS + sub;
}

static uint64_t
hist_upper(unsigned idx)
{
	unsigned mag, sub;

	if (idx < HIST_SUB_BUCKETS)
		return idx;
	mag = idx / HIST_SUB_BUCKETS + HIST_SUB_BITS - 1;
	sub = idx % HIST_SUB_BUCKETS;
	return ((1ull << mag) | ((uint64_t)sub << (mag - HIST_SUB_BITS))) +
	       (1ull << (mag - HIST_SUB_BITS)) - 1;
}

void
hist_record(struct hist *h, uint64_t value_us)
{
	unsigned idx;

	assert(h);
	if (value_us > HIST_VALUE_MAX)
		value_us = HIST_VALUE_MAX;
	idx = hist_index(value_us);
	assert(idx < HIST_BUCKETS);
	h->buckets[idx]++;
	h->count++;
	if (value_us > h->max)
		h->max = value_us;
}

void
hist_merge(struct hist *dst, const struct hist *src)
{
	unsigned i;

	assert(dst);
	assert(src);
	for (i = 0; i < HIST_BUCKETS; i++)
		dst->buckets[i] += src->buckets[i];
	dst->count += src->count;
	if (src->max > dst->max)
		dst->max = src->max;
}

uint64_t
hist_quantile(const struct hist *h, double q)
{
	uint64_t rank, seen = 0, v;
	unsigned i;

	assert(h);
	assert(q > 0 && q <= 1);
	if (h->count == 0)
		return 0;
	rank = (uint64_t)(q * (double)h->count + 0.5);
	if (rank < 1)
		rank = 1;
	for (i = 0; i < HIST_BUCKETS; i++) {
		seen += h->buckets[i];
		if (seen >= rank) {
			v = hist_upper(i);
			return v < h->max ? v : h->max;
		}
	}
	return h->max;
}
