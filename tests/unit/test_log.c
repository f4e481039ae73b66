/* test_log.c -- event lines as text and as JSON, quoting, and the bound on a value. */
#include "core/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/unit/check.h"

/* Runs emit() with stderr sent to a file; returns what it wrote (caller frees). */
static char *
capture(void (*emit)(void))
{
	FILE *f = tmpfile();
	int saved = dup(STDERR_FILENO);

	fflush(stderr);
	dup2(fileno(f), STDERR_FILENO);
	emit();
	log_flush();
	dup2(saved, STDERR_FILENO);
	close(saved);
	off_t n = lseek(fileno(f), 0, SEEK_END); /* written through the fd, not the FILE */
	char *out = calloc(1, (size_t)n + 1);
	if (pread(fileno(f), out, (size_t)n, 0) != n)
		out[0] = '\0';
	fclose(f);
	return out;
}

static void
emit_accepted(void)
{
	struct log_line *l = log_begin(CONFIG_LOG_INFO, "0123456789ABCDEF", "accepted");
	log_str(l, "from", "a@b.example");
	log_uint(l, "size", 1234);
	log_str(l, "reply", "250 2.0.0 \"ok\"");
	log_str(l, "empty", "");
	log_end(l);
}

static void
emit_filtered(void)
{
	struct log_line *l = log_begin(CONFIG_LOG_DEBUG, NULL, "noise");
	CHECK(l == NULL); /* below the level: nothing is built */
	log_str(l, "k", "v");
	log_end(l);
}

static void
emit_long(void)
{
	char *v = malloc(3 * LOG_VALUE_MAX);
	memset(v, 'x', 3 * LOG_VALUE_MAX - 1);
	v[3 * LOG_VALUE_MAX - 1] = '\0';
	struct log_line *l = log_begin(CONFIG_LOG_INFO, NULL, "long");
	log_str(l, "reply", v);
	log_str(l, "after", "kept");
	log_end(l);
	free(v);
}

static void
test_text(void)
{
	log_setup(CONFIG_LOG_INFO, CONFIG_LOG_TEXT);
	char *out = capture(emit_accepted);
	CHECK(strstr(out, " info: 0123456789ABCDEF accepted from=a@b.example size=1234 "
	                  "reply=\"250 2.0.0 \\\"ok\\\"\" empty=\"\"\n") != NULL);
	free(out);
	out = capture(emit_filtered);
	CHECK(out[0] == '\0');
	free(out);
	/* a value is cut at LOG_VALUE_MAX; the fields after it survive */
	out = capture(emit_long);
	CHECK(strstr(out, "...\" after=kept\n") != NULL);
	CHECK(strlen(out) < LOG_LINE_MAX);
	free(out);
}

static void
test_json(void)
{
	log_setup(CONFIG_LOG_INFO, CONFIG_LOG_JSON);
	char *out = capture(emit_accepted);
	CHECK(strstr(out, "\"level\":\"info\"") != NULL);
	CHECK(strstr(out, "\"id\":\"0123456789ABCDEF\",\"event\":\"accepted\","
	                  "\"from\":\"a@b.example\",\"size\":1234,"
	                  "\"reply\":\"250 2.0.0 \\\"ok\\\"\",\"empty\":\"\"}\n") != NULL);
	free(out);
	out = capture(emit_long);
	CHECK(strstr(out, "...\",\"after\":\"kept\"}\n") != NULL);
	free(out);
}

int
main(void)
{
	test_text();
	test_json();
	printf("%u passed, %u failed\n", passed, failed);
	return failed ? 1 : 0;
}
