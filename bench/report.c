#include "bench/report.h"

#include <assert.h>
#include <stdio.h>
#include <string.h>

static const double report_quantiles[] = {0.5, 0.9, 0.99, 0.999};
static const char *const report_quantile_names[] = {"p50", "p90", "p99", "p99.9"};

void
report_errors_init(struct report_errors *e)
{
	assert(e);
	memset(e, 0, sizeof(*e));
	pthread_mutex_init(&e->lock, NULL);
}

void
report_errors_free(struct report_errors *e)
{
	assert(e);
	pthread_mutex_destroy(&e->lock);
}

void
report_errors_note(struct report_errors *e, const char *text)
{
	unsigned i;

	assert(e);
	assert(text);
	pthread_mutex_lock(&e->lock);
	for (i = 0; i < e->n; i++) {
		if (strncmp(e->e[i].text, text, REPORT_ERROR_TEXT_MAX - 1) == 0) {
			e->e[i].count++;
			break;
		}
	}
	if (i == e->n && e->n < REPORT_ERRORS_MAX) {
		snprintf(e->e[i].text, sizeof(e->e[i].text), "%s", text);
		e->e[i].count = 1;
		e->n++;
	} else if (i == e->n) {
		e->other++;
	}
	pthread_mutex_unlock(&e->lock);
}

void
report_errors_print(const struct report_errors *e, FILE *f)
{
	unsigned i;

	if (e->n == 0)
		return;
	fprintf(f, "first errors:\n");
	for (i = 0; i < e->n; i++)
		fprintf(f, "  %llu x %s\n", (unsigned long long)e->e[i].count, e->e[i].text);
	if (e->other)
		fprintf(f, "  %llu x (other errors)\n", (unsigned long long)e->other);
}

void
report_json_string(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;

		if (ch == '"' || ch == '\\')
			fprintf(f, "\\%c", ch);
		else if (ch < 0x20 || ch >= 0x7f)
			fprintf(f, "\\u%04x", ch);
		else
			fputc(ch, f);
	}
	fputc('"', f);
}

void
report_errors_json(const struct report_errors *e, FILE *f)
{
	unsigned i;

	fputc('[', f);
	for (i = 0; i < e->n; i++) {
		fprintf(f, "%s{\"count\":%llu,\"text\":", i ? "," : "",
		        (unsigned long long)e->e[i].count);
		report_json_string(f, e->e[i].text);
		fputc('}', f);
	}
	fputc(']', f);
}

void
report_latency_json(FILE *f, const struct hist *h)
{
	unsigned i;

	fputc('{', f);
	for (i = 0; i < sizeof(report_quantiles) / sizeof(report_quantiles[0]); i++)
		fprintf(f, "\"%s\":%.3f,", report_quantile_names[i],
		        (double)hist_quantile(h, report_quantiles[i]) / 1000.0);
	fprintf(f, "\"max\":%.3f}", (double)h->max / 1000.0);
}

void
report_latency_row(FILE *f, const char *name, const struct hist *h)
{
	unsigned i;

	fprintf(f, "  %-12s", name);
	for (i = 0; i < sizeof(report_quantiles) / sizeof(report_quantiles[0]); i++)
		fprintf(f, " %9.3f", (double)hist_quantile(h, report_quantiles[i]) / 1000.0);
	fprintf(f, " %9.3f\n", (double)h->max / 1000.0);
}
