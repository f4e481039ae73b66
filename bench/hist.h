/* hist.h -- fixed-memory log-linear latency histogram (HDR-like) for ringmx-bench.
 *
 * Values are microseconds. Each power of two is split into HIST_SUB_BUCKETS linear
 * sub-buckets, so a recorded value is reported within 1/HIST_SUB_BUCKETS (~1.6 %) of the
 * truth; values above HIST_VALUE_MAX are clamped (and still counted). The struct is plain
 * data: per-thread histograms are merged with hist_merge at the end.
 */
#ifndef RINGMX_BENCH_HIST_H
#define RINGMX_BENCH_HIST_H

#include <stdint.h>

#define HIST_SUB_BITS    6
#define HIST_SUB_BUCKETS (1u << HIST_SUB_BITS)
#define HIST_MAG_MAX     40 /* magnitudes: values up to 2^40 us (~12 days) */
#define HIST_VALUE_MAX   ((1ull << HIST_MAG_MAX) - 1)
#define HIST_BUCKETS     ((HIST_MAG_MAX - HIST_SUB_BITS + 2) * HIST_SUB_BUCKETS)

struct hist {
	uint64_t count;
	uint64_t max;
	uint64_t buckets[HIST_BUCKETS];
};

void hist_init(struct hist *h);
void hist_record(struct hist *h, uint64_t value_us);
void hist_merge(struct hist *dst, const struct hist *src);

/* Value at quantile q (0 < q <= 1): the upper edge of its bucket, capped at max; 0 if empty. */
uint64_t hist_quantile(const struct hist *h, double q);

#endif
