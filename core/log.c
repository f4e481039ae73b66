#include "core/log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/strbuf.h"

struct log_line {
	char buf[LOG_LINE_MAX];
	size_t len;
	bool truncated;
};

/* Settings are written once by log_setup before threads start, then only read. */
static enum config_log_level log_level_min = CONFIG_LOG_INFO;
static enum config_log_format log_format = CONFIG_LOG_TEXT;

struct log_thread_state {
	char name[16];
	bool batch;
	struct log_line line;
	char out[LOG_BUFFER_MAX];
	size_t out_len;
};

static _Thread_local struct log_thread_state log_ts = {.name = "main"};

static const char *const log_level_names[] = {
    [CONFIG_LOG_DEBUG] = "debug",
    [CONFIG_LOG_INFO] = "info",
    [CONFIG_LOG_WARNING] = "warning",
    [CONFIG_LOG_ERROR] = "error",
};

void
log_setup(enum config_log_level level, enum config_log_format format)
{
	log_level_min = level;
	log_format = format;
}

void
log_thread(const char *name, bool batch)
{
	log_flush();
	snprintf(log_ts.name, sizeof(log_ts.name), "%s", name);
	log_ts.batch = batch;
}

static void
log_write_all(const char *p, size_t len)
{
	while (len > 0) {
		ssize_t n = write(STDERR_FILENO, p, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return; /* stderr is gone: nowhere left to report it */
		p += n;
		len -= (size_t)n;
	}
}

void
log_flush(void)
{
	log_write_all(log_ts.out, log_ts.out_len);
	log_ts.out_len = 0;
}

static void
log_put(struct log_line *l, const char *s, size_t n)
{
	/* room is kept for the "...\n" or "\"}\n" ending */
	size_t room = sizeof(l->buf) - l->len - 8;

	if (l->truncated)
		return;
	if (n > room) {
		n = room;
		l->truncated = true;
	}
	memcpy(l->buf + l->len, s, n);
	l->len += n;
}

static void
log_putc(struct log_line *l, char c)
{
	log_put(l, &c, 1);
}

/* Text values are quoted when they hold anything but plain printable non-space bytes. */
static bool
log_needs_quotes(const char *v)
{
	if (*v == '\0')
		return true;
	for (const unsigned char *p = (const unsigned char *)v; *p; p++) {
		if (*p <= ' ' || *p == '"' || *p == '\\' || *p == '=' || *p == 0x7f)
			return true;
	}
	return false;
}

static void
log_put_escaped(struct log_line *l, const char *v)
{
	size_t n = 0;
	char e[6];

	for (const unsigned char *p = (const unsigned char *)v; *p; p++, n++) {
		if (n == LOG_VALUE_MAX) {
			log_put(l, "...", 3);
			return;
		}
		log_put(l, e, strbuf_json_char(*p, e));
	}
}

static void
log_put_timestamp(struct log_line *l)
{
	struct timespec ts;
	struct tm tm;
	char b[40];

	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	size_t n = strftime(b, sizeof(b), "%Y-%m-%dT%H:%M:%S", &tm);
	n += (size_t)snprintf(b + n, sizeof(b) - n, ".%03ldZ", ts.tv_nsec / 1000000);
	log_put(l, b, n);
}

static void
log_key(struct log_line *l, const char *key)
{
	if (log_format == CONFIG_LOG_JSON) {
		log_put(l, ",\"", 2);
		log_put(l, key, strlen(key));
		log_put(l, "\":", 2);
	} else {
		log_putc(l, ' ');
		log_put(l, key, strlen(key));
		log_putc(l, '=');
	}
}

struct log_line *
log_begin(enum config_log_level level, const char *queue_id, const char *event)
{
	struct log_line *l = &log_ts.line;

	if (level < log_level_min)
		return NULL;
	l->len = 0;
	l->truncated = false;
	if (log_format == CONFIG_LOG_JSON) {
		log_put(l, "{\"ts\":\"", 7);
		log_put_timestamp(l);
		log_put(l, "\"", 1);
		log_str(l, "level", log_level_names[level]);
		log_str(l, "thread", log_ts.name);
		if (queue_id)
			log_str(l, "id", queue_id);
		log_str(l, "event", event);
		return l;
	}
	log_put_timestamp(l);
	log_putc(l, ' ');
	log_put(l, log_ts.name, strlen(log_ts.name));
	log_putc(l, ' ');
	log_put(l, log_level_names[level], strlen(log_level_names[level]));
	log_put(l, ": ", 2);
	if (queue_id) {
		log_put(l, queue_id, strlen(queue_id));
		log_putc(l, ' ');
	}
	log_put(l, event, strlen(event));
	return l;
}

void
log_str(struct log_line *l, const char *key, const char *value)
{
	if (l == NULL)
		return;
	if (value == NULL)
		value = "";
	log_key(l, key);
	if (log_format == CONFIG_LOG_JSON || log_needs_quotes(value) ||
	    strlen(value) > LOG_VALUE_MAX) {
		log_putc(l, '"');
		log_put_escaped(l, value);
		log_putc(l, '"');
	} else {
		log_put(l, value, strlen(value));
	}
}

void
log_uint(struct log_line *l, const char *key, uint64_t value)
{
	char b[24];

	if (l == NULL)
		return;
	log_key(l, key);
	log_put(l, b, (size_t)snprintf(b, sizeof(b), "%llu", (unsigned long long)value));
}

void
log_end(struct log_line *l)
{
	if (l == NULL)
		return;
	/* A cut line is cut inside a value (values are bounded well below the line size). */
	bool cut = l->truncated;

	l->truncated = false;
	if (cut)
		log_put(l, "...", 3);
	if (log_format == CONFIG_LOG_JSON)
		log_put(l, cut ? "\"}" : "}", cut ? 2 : 1);
	l->buf[l->len++] = '\n';
	if (log_ts.out_len + l->len > sizeof(log_ts.out))
		log_flush();
	memcpy(log_ts.out + log_ts.out_len, l->buf, l->len);
	log_ts.out_len += l->len;
	if (!log_ts.batch)
		log_flush();
}

void
log_msg(enum config_log_level level, const char *fmt, ...)
{
	char text[LOG_LINE_MAX / 2];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	struct log_line *l = log_begin(level, NULL, "msg");
	log_str(l, "text", text);
	log_end(l);
}
