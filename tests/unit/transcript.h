/*
 * transcript.h -- the table-driven protocol tests' shared machinery. A fixture
 * directory holds dialogue transcripts (*.txt, run in name order); each is run
 * with its input whole, one byte at a time and split in two at every point of
 * every segment, and each run's trace must equal the transcript's expectation.
 *
 * A transcript line is "X: text"; blank lines and "# ..." are skipped. Two
 * kinds mean the same for every engine: "P: words" sets the session up, word
 * by word, and "K: text" ends the segment with the action "counts" and
 * expects "K: text" (the engine's state, as the action traces it). The other
 * kinds belong to the engine's test, which builds the transcript from them
 * with transcript_input, transcript_segment_end and transcript_expect.
 * A segment is the input up to an action; splits happen only inside one.
 */
#ifndef RINGMX_TESTS_TRANSCRIPT_H
#define RINGMX_TESTS_TRANSCRIPT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TRANSCRIPT_LINE_MAX  (64 * 1024)  /* a transcript, trace or expected line */
#define TRANSCRIPT_INPUT_MAX (256 * 1024) /* the input bytes of one transcript */

struct transcript;
struct transcript_trace;

/* An engine's test: how to read its lines and how to run its engine. */
struct transcript_engine {
	size_t setup_size; /* the engine's per-transcript state, allocated zeroed */
	/* Frees what line kept in setup and restores the defaults. */
	void (*reset)(void *setup);
	/* One word of a P: line; returns 0, or -1 when it is unknown. */
	int (*param)(void *setup, const char *word);
	/* One transcript line of another kind X; returns 0, or -1 when it is malformed. */
	int (*line)(void *setup, struct transcript *t, char kind, char *text);
	/* A fresh session reporting to tr; bytewise: input comes one byte at a time. */
	void *(*start)(const void *setup, struct transcript_trace *tr, bool bytewise);
	void (*feed)(void *run, const uint8_t *in, size_t len);
	/* After each segment; action is NULL after the last one. */
	void (*action)(void *run, const char *action);
	/* Ends the session and frees run. */
	void (*stop)(void *run);
};

/*
 * Runs every transcript in dir as above and adds its checks to the caller's
 * passed and failed counts (check.h): per transcript its loading and the whole,
 * bytewise and split runs, and once each that dir can be read and holds at
 * least 10 transcripts. Each failure is printed with its place.
 */
void transcript_test_dir(const char *dir, const struct transcript_engine *e, unsigned *passed,
                         unsigned *failed);

/* Adds text's bytes (escapes decoded, CRLF appended if crlf) to the segment; 0 or -1. */
int transcript_input(struct transcript *t, const char *text, bool crlf);

/* Ends the current segment with action (copied); 0, or -1 when there are too many. */
int transcript_segment_end(struct transcript *t, const char *action);

/* Expects the trace line "X: text", with text's escapes normalized if bytes; 0 or -1. */
int transcript_expect(struct transcript *t, char kind, const char *text, bool bytes);

/* Adds a printf-formatted line (cut at TRANSCRIPT_LINE_MAX) to the run's trace. */
void transcript_trace_add(struct transcript_trace *tr, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/*
 * Decodes \r \n \t \\ \xHH and \[N]c (c N times) from text into out; returns
 * the length, or -1 on a malformed escape or when out's size is too small.
 */
long transcript_unescape(const char *text, uint8_t *out, size_t size);

/* Encodes in as transcripts write it, NUL-terminated and cut to fit size (4 * len + 1 fits all). */
void transcript_escape(const uint8_t *in, size_t len, char *out, size_t size);

#endif
