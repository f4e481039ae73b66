/*
 * transcript.c -- loading, running and comparing dialogue transcripts for the
 * table-driven protocol tests (test_smtp_server.c, test_smtp_client.c).
 */
#include "tests/unit/transcript.h"

#include <assert.h>
#include <dirent.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TRANSCRIPT_LINES_MAX    512 /* expected lines of one transcript */
#define TRANSCRIPT_TRACE_MAX    (4 * TRANSCRIPT_LINES_MAX)
#define TRANSCRIPT_SEGMENTS_MAX 128
#define TRANSCRIPT_FILES_MAX    64
#define TRANSCRIPT_FILES_MIN    10 /* fewer means the fixtures went missing */
#define TRANSCRIPT_PATH_MAX     512

struct segment {
	size_t start, len; /* into transcript.input */
	char *action;      /* NULL for the last segment */
};

struct transcript {
	char name[TRANSCRIPT_PATH_MAX];
	uint8_t input[TRANSCRIPT_INPUT_MAX];
	size_t input_len;
	struct segment seg[TRANSCRIPT_SEGMENTS_MAX];
	size_t seg_count;
	char *expect[TRANSCRIPT_LINES_MAX];
	size_t expect_count;
};

/* How many checks passed and failed. */
struct tally {
	unsigned passed, failed;
};

struct transcript_trace {
	char *line[TRANSCRIPT_TRACE_MAX];
	size_t count;
};

long
transcript_unescape(const char *text, uint8_t *out, size_t size)
{
	size_t n = 0;

	assert(text != NULL);
	assert(out != NULL || size == 0);
	for (const char *p = text; *p != '\0'; p++) {
		unsigned v = (unsigned char)*p, count = 1;

		if (*p == '\\') {
			p++;
			if (*p == 'r')
				v = '\r';
			else if (*p == 'n')
				v = '\n';
			else if (*p == 't')
				v = '\t';
			else if (*p == '\\')
				v = '\\';
			else if (*p == 'x' && sscanf(p + 1, "%2x", &v) == 1)
				p += 2;
			else if (*p == '[' && sscanf(p + 1, "%u", &count) == 1 && strchr(p, ']'))
				p = strchr(p, ']') + 1, v = (unsigned char)*p;
			else
				return -1;
			if (*p == '\0')
				return -1;
		}
		if (n + count > size)
			return -1;
		memset(out + n, (int)v, count);
		n += count;
	}
	return (long)n;
}

void
transcript_escape(const uint8_t *in, size_t len, char *out, size_t size)
{
	size_t n = 0;

	assert(out != NULL);
	assert(size > 0);
	/* n + 4 < size: room for the longest form, "\xHH", and the NUL */
	for (size_t i = 0; i < len && n + 4 < size; i++) {
		if (in[i] == '\r')
			n += (size_t)snprintf(out + n, size - n, "\\r");
		else if (in[i] == '\n')
			n += (size_t)snprintf(out + n, size - n, "\\n");
		else if (in[i] == '\\')
			n += (size_t)snprintf(out + n, size - n, "\\\\");
		else if (in[i] < 0x20 || in[i] > 0x7e)
			n += (size_t)snprintf(out + n, size - n, "\\x%02x", in[i]);
		else
			out[n++] = (char)in[i];
	}
	out[n] = '\0';
}

void
transcript_trace_add(struct transcript_trace *tr, const char *fmt, ...)
{
	char buf[TRANSCRIPT_LINE_MAX];
	va_list ap;

	assert(tr != NULL);
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	/* Lines past the limit are dropped: the comparison then fails on the count. */
	if (tr->count < TRANSCRIPT_TRACE_MAX)
		tr->line[tr->count++] = strdup(buf);
}

static void
trace_free(struct transcript_trace *tr)
{
	for (size_t i = 0; i < tr->count; i++)
		free(tr->line[i]);
	tr->count = 0;
}

int
transcript_input(struct transcript *t, const char *text, bool crlf)
{
	size_t room = sizeof(t->input) - t->input_len;
	long n;

	assert(text != NULL);
	if (crlf && room < 2)
		return -1;
	n = transcript_unescape(text, t->input + t->input_len, room - (crlf ? 2 : 0));
	if (n < 0)
		return -1;
	if (crlf) {
		memcpy(t->input + t->input_len + n, "\r\n", 2);
		n += 2;
	}
	t->input_len += (size_t)n;
	t->seg[t->seg_count - 1].len += (size_t)n;
	return 0;
}

int
transcript_segment_end(struct transcript *t, const char *action)
{
	assert(t != NULL);
	assert(action != NULL);
	if (t->seg_count == TRANSCRIPT_SEGMENTS_MAX)
		return -1;
	t->seg[t->seg_count - 1].action = strdup(action);
	t->seg[t->seg_count++] = (struct segment){.start = t->input_len};
	return 0;
}

/*
 * text's escapes written again as the trace writes them, so that "\x41" and
 * "A" compare equal; malloc'd, NULL on a malformed escape.
 */
static char *
normalize(const char *text)
{
	uint8_t *raw = malloc(TRANSCRIPT_INPUT_MAX);
	long n = transcript_unescape(text, raw, TRANSCRIPT_INPUT_MAX);
	char *norm = NULL;

	if (n >= 0) {
		norm = malloc(4 * (size_t)n + 1);
		transcript_escape(raw, (size_t)n, norm, 4 * (size_t)n + 1);
	}
	free(raw);
	return norm;
}

int
transcript_expect(struct transcript *t, char kind, const char *text, bool bytes)
{
	char *norm;

	assert(t != NULL);
	assert(text != NULL);
	if (t->expect_count == TRANSCRIPT_LINES_MAX)
		return -1;
	norm = bytes ? normalize(text) : NULL;
	if (bytes && norm == NULL)
		return -1;
	if (norm != NULL)
		text = norm;
	t->expect[t->expect_count] = malloc(strlen(text) + 4);
	sprintf(t->expect[t->expect_count++], "%c: %s", kind, text);
	free(norm);
	return 0;
}

/* One line of t's file; returns -1 when it is malformed. */
static int
transcript_line(struct transcript *t, const struct transcript_engine *e, void *setup, char kind,
                char *text)
{
	char *save = NULL;

	if (kind == 'K') {
		if (transcript_segment_end(t, "counts") < 0)
			return -1;
		return transcript_expect(t, kind, text, false);
	}
	if (kind != 'P')
		return e->line(setup, t, kind, text);
	for (char *w = strtok_r(text, " ", &save); w != NULL; w = strtok_r(NULL, " ", &save)) {
		if (e->param(setup, w) < 0)
			return -1;
	}
	return 0;
}

/* Reads path into t (zeroed first); returns 0, or -1 after saying why. */
static int
transcript_load(struct transcript *t, const char *path, const struct transcript_engine *e,
                void *setup)
{
	char line[TRANSCRIPT_LINE_MAX];
	FILE *f = fopen(path, "r");
	int lineno = 0;

	memset(t, 0, sizeof(*t));
	snprintf(t->name, sizeof(t->name), "%s", path);
	t->seg_count = 1;
	e->reset(setup);
	if (f == NULL) {
		printf("%s: cannot open\n", path);
		return -1;
	}
	while (fgets(line, sizeof(line), f) != NULL) {
		size_t len = strcspn(line, "\n");

		lineno++;
		line[len] = '\0';
		if (len == 0 || line[0] == '#')
			continue;
		if (len < 3 || line[1] != ':' || line[2] != ' ' ||
		    transcript_line(t, e, setup, line[0], line + 3) < 0) {
			printf("%s:%d: malformed transcript line\n", path, lineno);
			fclose(f);
			return -1;
		}
	}
	fclose(f);
	return 0;
}

static void
transcript_free(struct transcript *t)
{
	for (size_t i = 0; i < t->expect_count; i++)
		free(t->expect[i]);
	for (size_t i = 0; i < t->seg_count; i++)
		free(t->seg[i].action);
}

/*
 * Runs t with segment split_seg cut at split_at (0: whole), or every segment
 * fed one byte at a time when split_at is SIZE_MAX.
 */
static void
transcript_run(const struct transcript *t, const struct transcript_engine *e, const void *setup,
               size_t split_seg, size_t split_at, struct transcript_trace *tr)
{
	void *run = e->start(setup, tr, split_at == SIZE_MAX);

	for (size_t i = 0; i < t->seg_count; i++) {
		const struct segment *seg = &t->seg[i];
		const uint8_t *in = t->input + seg->start;

		if (split_at == SIZE_MAX) {
			for (size_t b = 0; b < seg->len; b++)
				e->feed(run, in + b, 1);
		} else if (i == split_seg && split_at > 0) {
			e->feed(run, in, split_at);
			e->feed(run, in + split_at, seg->len - split_at);
		} else {
			e->feed(run, in, seg->len);
		}
		e->action(run, seg->action);
	}
	e->stop(run);
}

/* Compares a run with the expectation; reports the first difference. */
static bool
transcript_compare(const struct transcript *t, const struct transcript_trace *tr, const char *how)
{
	size_t n = tr->count > t->expect_count ? tr->count : t->expect_count;

	for (size_t i = 0; i < n; i++) {
		const char *want = i < t->expect_count ? t->expect[i] : "(end)";
		const char *got = i < tr->count ? tr->line[i] : "(end)";

		if (strcmp(want, got) != 0) {
			printf("%s (%s): line %zu:\n  want %.400s\n  got  %.400s\n", t->name, how,
			       i + 1, want, got);
			return false;
		}
	}
	return true;
}

/* One run compared and its trace freed. */
static bool
transcript_passes(const struct transcript *t, const struct transcript_engine *e, const void *setup,
                  size_t split_seg, size_t split_at, const char *how)
{
	struct transcript_trace *tr = calloc(1, sizeof(*tr));
	bool ok;

	transcript_run(t, e, setup, split_seg, split_at, tr);
	ok = transcript_compare(t, tr, how);
	trace_free(tr);
	free(tr);
	return ok;
}

static void
tally_add(struct tally *n, bool ok)
{
	if (ok)
		n->passed++;
	else
		n->failed++;
}

/* Whole, bytewise, and split at every point until the first split that fails. */
static void
transcript_test(const struct transcript *t, const struct transcript_engine *e, const void *setup,
                struct tally *n)
{
	char how[64];
	bool ok = true;

	tally_add(n, transcript_passes(t, e, setup, 0, 0, "whole"));
	tally_add(n, transcript_passes(t, e, setup, 0, SIZE_MAX, "byte at a time"));
	for (size_t i = 0; i < t->seg_count && ok; i++) {
		for (size_t k = 1; k < t->seg[i].len && ok; k++) {
			snprintf(how, sizeof(how), "segment %zu split at %zu", i, k);
			ok = transcript_passes(t, e, setup, i, k, how);
		}
	}
	tally_add(n, ok);
}

static int
name_compare(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Fills names with dir's *.txt names, sorted; returns the count or -1 if dir is unreadable. */
static int
transcript_list(const char *dir, char *names[TRANSCRIPT_FILES_MAX])
{
	DIR *d = opendir(dir);
	struct dirent *ent;
	int count = 0;

	if (d == NULL) {
		printf("%s: cannot open the transcript directory\n", dir);
		return -1;
	}
	while ((ent = readdir(d)) != NULL) {
		size_t len = strlen(ent->d_name);

		if (len > 4 && strcmp(ent->d_name + len - 4, ".txt") == 0 &&
		    count < TRANSCRIPT_FILES_MAX)
			names[count++] = strdup(ent->d_name);
	}
	closedir(d);
	qsort(names, (size_t)count, sizeof(names[0]), name_compare);
	return count;
}

void
transcript_test_dir(const char *dir, const struct transcript_engine *e, unsigned *passed,
                    unsigned *failed)
{
	struct tally n = {0};
	struct transcript *t = malloc(sizeof(*t));
	void *setup = calloc(1, e->setup_size);
	char *names[TRANSCRIPT_FILES_MAX];
	int count = transcript_list(dir, names);

	assert(passed != NULL);
	assert(failed != NULL);
	tally_add(&n, count >= 0);
	if (count >= 0 && count < TRANSCRIPT_FILES_MIN)
		printf("%s: %d transcripts, fewer than %d\n", dir, count, TRANSCRIPT_FILES_MIN);
	tally_add(&n, count >= TRANSCRIPT_FILES_MIN);
	for (int i = 0; i < count; i++) {
		char path[TRANSCRIPT_PATH_MAX];

		snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
		tally_add(&n, transcript_load(t, path, e, setup) == 0);
		transcript_test(t, e, setup, &n);
		transcript_free(t);
		free(names[i]);
	}
	e->reset(setup);
	free(setup);
	free(t);
	*passed += n.passed;
	*failed += n.failed;
}
