/* report.h -- what send and sink print: the table of first distinct errors (shared by all
 * threads, touched only on the error path), JSON strings and latency percentiles. */
#ifndef RINGMX_BENCH_REPORT_H
#define RINGMX_BENCH_REPORT_H

#include "bench/hist.h"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>

#define REPORT_ERRORS_MAX     5   /* distinct error texts kept; later ones are only counted */
#define REPORT_ERROR_TEXT_MAX 160 /* bytes kept of each text */

struct report_error {
	uint64_t count;
	char text[REPORT_ERROR_TEXT_MAX];
};

struct report_errors {
	pthread_mutex_t lock;
	unsigned n;
	uint64_t other; /* errors whose text did not fit in the table */
	struct report_error e[REPORT_ERRORS_MAX];
};

void report_errors_init(struct report_errors *e);
void report_errors_free(struct report_errors *e);

/* Counts text (truncated to REPORT_ERROR_TEXT_MAX - 1 bytes). Thread-safe. */
void report_errors_note(struct report_errors *e, const char *text);

/* Human lines "  COUNT x TEXT", or a JSON array of {"count","text"} objects. */
void report_errors_print(const struct report_errors *e, FILE *f);
void report_errors_json(const struct report_errors *e, FILE *f);

/* Writes s as a JSON string literal, quotes included. */
void report_json_string(FILE *f, const char *s);

/* {"p50":..,"p90":..,"p99":..,"p99.9":..,"max":..} in milliseconds. */
void report_latency_json(FILE *f, const struct hist *h);

/* One table row: name then p50 p90 p99 p99.9 max in milliseconds. */
void report_latency_row(FILE *f, const char *name, const struct hist *h);

#endif
