#include "core/control.h"

#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "core/config.h"
#include "core/log.h"
#include "core/policy.h"
#include "core/worker.h"
#include "queue/queue.h"

#define CONTROL_IO_TIMEOUT_S  5
#define CONTROL_HTTP_HEAD_MAX 4096   /* bytes of an HTTP request head read */
#define CONTROL_DRAIN_US      100000 /* how long the rest of a request is waited for */

static const char *
control_rcpt_state(enum queue_rcpt_state st)
{
	switch (st) {
	case QUEUE_RCPT_PENDING:
		return "pending";
	case QUEUE_RCPT_DELIVERED:
		return "delivered";
	case QUEUE_RCPT_BOUNCED:
		return "bounced";
	}
	return "unknown";
}

static void
control_time_iso(uint64_t ms, char *buf, size_t cap)
{
	time_t t = (time_t)(ms / 1000);
	struct tm tm;

	gmtime_r(&t, &tm);
	strftime(buf, cap, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* The earliest next attempt and the latest error over the pending recipients. */
static void
control_message_summary(const struct queue_message *m, uint64_t *next_ms, const char **error)
{
	*next_ms = 0;
	*error = NULL;
	for (unsigned i = 0; i < m->rcpt_count; i++) {
		const struct queue_rcpt *r = &m->rcpts[i];
		if (r->state != QUEUE_RCPT_PENDING)
			continue;
		if (r->next_attempt_ms != 0 && (*next_ms == 0 || r->next_attempt_ms < *next_ms))
			*next_ms = r->next_attempt_ms;
		if (r->last_error != NULL)
			*error = r->last_error;
	}
}

static void
control_format_json(struct strbuf *sb, const struct queue_message *m, uint64_t now_ms)
{
	char when[32];

	control_time_iso(m->arrival_ms, when, sizeof(when));
	strbuf_printf(
	    sb,
	    "{\"id\":\"%s\",\"size\":%zu,\"age_s\":%llu,\"arrival\":\"%s\",\"sender\":", m->id_text,
	    m->body_len,
	    (unsigned long long)(now_ms > m->arrival_ms ? (now_ms - m->arrival_ms) / 1000 : 0),
	    when);
	strbuf_json_string(sb, m->sender);
	strbuf_puts(sb, ",\"sender_params\":");
	strbuf_json_string(sb, m->sender_params);
	strbuf_printf(sb, ",\"state\":\"%s\",\"recipients\":[", m->held ? "held" : "queued");
	for (unsigned i = 0; i < m->rcpt_count; i++) {
		const struct queue_rcpt *r = &m->rcpts[i];
		strbuf_puts(sb, i ? ",{\"address\":" : "{\"address\":");
		strbuf_json_string(sb, r->address);
		strbuf_puts(sb, ",\"params\":");
		strbuf_json_string(sb, r->params);
		strbuf_printf(sb, ",\"state\":\"%s\",\"attempts\":%u,\"next_attempt_ms\":%llu,",
		              control_rcpt_state(r->state), r->attempts,
		              (unsigned long long)r->next_attempt_ms);
		strbuf_puts(sb, "\"last_error\":");
		if (r->last_error != NULL)
			strbuf_json_string(sb, r->last_error);
		else
			strbuf_puts(sb, "null");
		strbuf_puts(sb, "}");
	}
	strbuf_puts(sb, "],\"client\":{\"addr\":");
	strbuf_json_string(sb, m->client_addr);
	strbuf_puts(sb, ",\"helo\":");
	strbuf_json_string(sb, m->client_name);
	strbuf_puts(sb, ",\"protocol\":");
	strbuf_json_string(sb, m->protocol);
	strbuf_puts(sb, ",\"tls\":");
	strbuf_json_string(sb, m->tls_version);
	strbuf_puts(sb, ",\"auth\":");
	strbuf_json_string(sb, m->auth_user);
	strbuf_puts(sb, "}}");
}

void
control_format_message(struct strbuf *sb, const struct queue_message *m, bool json, uint64_t now_ms)
{
	uint64_t next_ms;
	const char *error;

	if (json) {
		control_format_json(sb, m, now_ms);
		return;
	}
	control_message_summary(m, &next_ms, &error);
	strbuf_printf(
	    sb, "%s %zu %llus %s ", m->id_text, m->body_len,
	    (unsigned long long)(now_ms > m->arrival_ms ? (now_ms - m->arrival_ms) / 1000 : 0),
	    m->sender[0] ? m->sender : "<>");
	for (unsigned i = 0; i < m->rcpt_count; i++)
		strbuf_printf(sb, "%s%s", i ? "," : "", m->rcpts[i].address);
	strbuf_printf(sb, " %s ", m->held ? "held" : "queued");
	if (next_ms != 0) {
		char when[32];
		control_time_iso(next_ms, when, sizeof(when));
		strbuf_puts(sb, when);
	} else {
		strbuf_puts(sb, "-");
	}
	strbuf_printf(sb, " %s", error ? error : "-");
}

void
control_request_answered(struct control_request *r)
{
	pthread_mutex_lock(&r->lock);
	if (--r->pending == 0)
		pthread_cond_signal(&r->done);
	pthread_mutex_unlock(&r->lock);
}

void
control_fan_out(struct control_request *r, struct worker **workers, unsigned n)
{
	struct timespec ts;

	pthread_mutex_init(&r->lock, NULL);
	pthread_cond_init(&r->done, NULL);
	clock_gettime(CLOCK_REALTIME, &ts);
	r->now_ms = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
	r->pending = n;
	for (unsigned i = 0; i < n; i++)
		worker_post(workers[i], r);
	pthread_mutex_lock(&r->lock);
	while (r->pending > 0)
		pthread_cond_wait(&r->done, &r->lock);
	pthread_mutex_unlock(&r->lock);
	pthread_cond_destroy(&r->done);
	pthread_mutex_destroy(&r->lock);
}

/* Every counter once: `ringmxctl stats` (text, JSON) and /metrics (Prometheus) print this. */
static const struct control_stat {
	const char *name;
	size_t offset;
	bool gauge; /* else a counter, which only grows */
	const char *help;
} control_stat_table[] = {
#define STAT(n, g, h)                                                                              \
	{                                                                                          \
#n, offsetof(struct control_stats, n), g, h                                        \
	}
    STAT(connections_total, false, "SMTP connections accepted"),
    STAT(connections_active, true, "SMTP sessions open now"),
    STAT(connections_refused, false, "connections refused by max_connections limits"),
    STAT(messages_accepted, false, "messages acknowledged with 250 after the journal sync"),
    STAT(bytes_accepted, false, "bytes of the messages acknowledged"),
    STAT(messages_refused, false, "messages refused with 452/451 (storage)"),
    STAT(rcpts_accepted, false, "recipients accepted"),
    STAT(rcpts_refused, false, "recipients refused by the relay policy"),
    STAT(rcpts_delivered, false, "recipients delivered to the next hop"),
    STAT(rcpts_deferred, false, "delivery attempts deferred"),
    STAT(rcpts_bounced, false, "recipients bounced"),
    STAT(journal_batches, false, "journal group commits written"),
    STAT(journal_syncs, false, "journal fdatasyncs"),
    STAT(journal_errors, false, "journal write or sync failures"),
    STAT(journal_disk_bytes, true, "bytes of journal segments on disk"),
    STAT(tls_handshakes, false, "inbound TLS handshakes completed"),
    STAT(tls_failures, false, "inbound TLS handshakes or sessions that failed"),
    STAT(tls_out_handshakes, false, "outbound TLS handshakes completed"),
    STAT(tls_out_failures, false, "outbound TLS handshakes that failed"),
    STAT(queue_messages, true, "messages queued"),
    STAT(queue_recipients, true, "recipients waiting for delivery"),
    STAT(queue_memory, true, "bytes of queue memory in use"),
    STAT(queue_memory_limit, true, "queue.memory_limit"),
#undef STAT
};

static uint64_t
control_stat_value(const struct control_stats *s, const struct control_stat *st)
{
	uint64_t v;

	memcpy(&v, (const char *)s + st->offset, sizeof(v));
	return v;
}

static void
control_stats_text(struct strbuf *sb, const struct control_stats *s, bool json)
{
	size_t n = sizeof(control_stat_table) / sizeof(control_stat_table[0]);

	for (size_t i = 0; i < n; i++) {
		const struct control_stat *st = &control_stat_table[i];
		unsigned long long v = (unsigned long long)control_stat_value(s, st);
		if (json)
			strbuf_printf(sb, "%s\"%s\":%llu", i ? "," : "{", st->name, v);
		else
			strbuf_printf(sb, "%s %llu\n", st->name, v);
	}
	if (json)
		strbuf_puts(sb, "}\n");
}

/* The Prometheus text exposition format, version 0.0.4. */
static void
control_stats_prometheus(struct strbuf *sb, const struct control_stats *s)
{
	for (size_t i = 0; i < sizeof(control_stat_table) / sizeof(control_stat_table[0]); i++) {
		const struct control_stat *st = &control_stat_table[i];
		size_t len = strlen(st->name);
		bool has_total = len > 6 && strcmp(st->name + len - 6, "_total") == 0;
		const char *suffix = st->gauge || has_total ? "" : "_total";
		strbuf_printf(
		    sb, "# HELP ringmx_%s%s %s\n# TYPE ringmx_%s%s %s\nringmx_%s%s %llu\n",
		    st->name, suffix, st->help, st->name, suffix, st->gauge ? "gauge" : "counter",
		    st->name, suffix, (unsigned long long)control_stat_value(s, st));
	}
}

/* The commands that act on one message named by its queue id. */
static bool
control_message_cmd(const char *cmd, enum control_cmd *out)
{
	static const struct {
		const char *name;
		enum control_cmd cmd;
	} table[] = {
	    {"delete", CONTROL_DELETE},
	    {"hold", CONTROL_HOLD},
	    {"release", CONTROL_RELEASE},
	};

	for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++) {
		if (strcmp(cmd, table[i].name) == 0) {
			*out = table[i].cmd;
			return true;
		}
	}
	return false;
}

/* Runs one command line; fills reply (status line included). */
static void
control_run(char *line, struct strbuf *reply, struct worker **workers, unsigned n)
{
	char *save = NULL;
	char *cmd = strtok_r(line, " \t\r\n", &save);
	char *arg = strtok_r(NULL, " \t\r\n", &save);
	struct control_request r = {.json = arg != NULL && strcmp(arg, "--json") == 0};

	strbuf_init(&r.out, CONTROL_REPLY_MAX);
	if (cmd == NULL) {
		strbuf_puts(reply, "error empty command\n");
	} else if (strcmp(cmd, "queue") == 0) {
		r.cmd = CONTROL_QUEUE;
		control_fan_out(&r, workers, n);
		strbuf_puts(reply, "ok\n");
		strbuf_puts(reply, r.json ? "[" : "");
		strbuf_append(reply, r.out.data ? r.out.data : "", r.out.len);
		strbuf_puts(reply, r.json ? "]\n" : "");
	} else if (strcmp(cmd, "stats") == 0) {
		r.cmd = CONTROL_STATS;
		control_fan_out(&r, workers, n);
		strbuf_puts(reply, "ok\n");
		control_stats_text(reply, &r.stats, r.json);
	} else if (strcmp(cmd, "flush") == 0) {
		r.cmd = CONTROL_FLUSH;
		control_fan_out(&r, workers, n);
		strbuf_puts(reply, "ok\n");
	} else if (control_message_cmd(cmd, &r.cmd) && arg != NULL) {
		snprintf(r.arg, sizeof(r.arg), "%s", arg);
		control_fan_out(&r, workers, n);
		if (!r.found)
			strbuf_printf(reply, "error no such message: %s\n", arg);
		else if (r.error == -EBUSY)
			strbuf_printf(reply, "error %s is being delivered right now: try again\n",
			              arg);
		else
			strbuf_puts(reply, "ok\n");
	} else if (strcmp(cmd, "resolve") == 0 && arg != NULL) {
		/* as the running server sees it: one worker's resolver is enough */
		r.cmd = CONTROL_RESOLVE;
		snprintf(r.arg, sizeof(r.arg), "%s", arg);
		control_fan_out(&r, workers, 1);
		strbuf_puts(reply, "ok\n");
		strbuf_append(reply, r.out.data ? r.out.data : "", r.out.len);
	} else if (strcmp(cmd, "show") == 0 && arg != NULL) {
		r.cmd = CONTROL_SHOW;
		snprintf(r.arg, sizeof(r.arg), "%s", arg);
		control_fan_out(&r, workers, n);
		if (r.found) {
			strbuf_puts(reply, "ok\n");
			strbuf_append(reply, r.out.data, r.out.len);
		} else {
			strbuf_printf(reply, "error no such message: %s\n", arg);
		}
	} else {
		strbuf_printf(
		    reply,
		    "error unknown command \"%s\" (try: queue, show ID, stats, flush, delete ID, "
		    "hold ID, release ID, resolve DOMAIN)\n",
		    cmd);
	}
	if (r.out.overflow || reply->overflow) {
		strbuf_free(reply);
		strbuf_puts(reply, "error reply too large\n");
	}
	strbuf_free(&r.out);
}

static void
control_write_all(int fd, const char *p, size_t len)
{
	while (len > 0) {
		ssize_t k = write(fd, p, len);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			return; /* the client went away: nothing to tell it */
		p += k;
		len -= (size_t)k;
	}
}

/*
 * Reads from a client (with CONTROL_IO_TIMEOUT_S for it and for our replies) until
 * `end` has been seen, the buffer is full, or the client stops; NUL-terminates and
 * returns the length.
 */
static size_t
control_read_until(int fd, char *buf, size_t cap, const char *end)
{
	struct timeval tv = {.tv_sec = CONTROL_IO_TIMEOUT_S};
	size_t len = 0;

	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	buf[0] = '\0';
	while (len < cap - 1 && strstr(buf, end) == NULL) {
		ssize_t k = read(fd, buf + len, cap - 1 - len);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			break;
		len += (size_t)k;
		buf[len] = '\0';
	}
	return len;
}

static void
control_client(int fd, struct worker **workers, unsigned n)
{
	char line[CONTROL_LINE_MAX];
	struct strbuf reply;
	size_t len = control_read_until(fd, line, sizeof(line), "\n");

	strbuf_init(&reply, CONTROL_REPLY_MAX);
	if (memchr(line, '\n', len) == NULL)
		strbuf_puts(&reply, "error command line missing or too long\n");
	else
		control_run(line, &reply, workers, n);
	control_write_all(fd, reply.data ? reply.data : "", reply.len);
	strbuf_free(&reply);
}

static int
control_listen(const char *path)
{
	struct sockaddr_un sun = {.sun_family = AF_UNIX};
	int fd;

	if (strlen(path) >= sizeof(sun.sun_path))
		return -ENAMETOOLONG;
	memcpy(sun.sun_path, path, strlen(path) + 1);
	char *slash = strrchr(sun.sun_path, '/');
	if (slash != NULL && slash != sun.sun_path) {
		*slash = '\0';
		if (mkdir(sun.sun_path, 0750) != 0 && errno != EEXIST)
			return -errno;
		*slash = '/';
	}
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	unlink(path); /* a socket left by a previous run that did not stop cleanly */
	if (bind(fd, (struct sockaddr *)&sun, sizeof(sun)) != 0 || chmod(path, 0660) != 0 ||
	    listen(fd, 16) != 0) {
		int e = errno;
		close(fd);
		return -e;
	}
	return fd;
}

/*
 * GET /metrics over plain HTTP/1.0 (Prometheus scrapes it): one request per connection,
 * read with a timeout and a bounded head, answered from the workers' counters.
 */
static void
metrics_client(int fd, struct worker **workers, unsigned n)
{
	char head[CONTROL_HTTP_HEAD_MAX];
	struct strbuf body, reply;

	/* only the request line matters: the rest of the head is read but not looked at */
	control_read_until(fd, head, sizeof(head), "\n");
	strbuf_init(&body, CONTROL_REPLY_MAX);
	strbuf_init(&reply, CONTROL_REPLY_MAX);
	bool found =
	    strncmp(head, "GET /metrics ", 13) == 0 || strncmp(head, "GET /metrics?", 13) == 0;
	if (found) {
		struct control_request r = {.cmd = CONTROL_STATS};
		strbuf_init(&r.out, 0);
		control_fan_out(&r, workers, n);
		control_stats_prometheus(&body, &r.stats);
	} else {
		strbuf_puts(&body, "only GET /metrics is served here\n");
	}
	strbuf_printf(&reply,
	              "HTTP/1.0 %s\r\nContent-Type: text/plain; version=0.0.4\r\n"
	              "Content-Length: %zu\r\nConnection: close\r\n\r\n",
	              found ? "200 OK" : "404 Not Found", body.len);
	strbuf_append(&reply, body.data ? body.data : "", body.len);
	control_write_all(fd, reply.data, reply.len);
	strbuf_free(&body);
	strbuf_free(&reply);
	/* unread request bytes would turn our close into a reset that loses the reply */
	struct timeval drain = {.tv_usec = CONTROL_DRAIN_US};
	shutdown(fd, SHUT_WR);
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &drain, sizeof(drain));
	for (unsigned i = 0; i < 16 && read(fd, head, sizeof(head)) > 0; i++)
		continue;
}

static int
metrics_listen(const struct config *cfg)
{
	int one = 1;
	const struct config_sockaddr *a = &cfg->metrics_listen;

	if (!cfg->metrics_enabled)
		return -1;
	int fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, (const struct sockaddr *)&a->ss, a->len) != 0 || listen(fd, 16) != 0) {
		int e = errno;
		close(fd);
		return -e;
	}
	return fd;
}

/*
 * The certificates are checked here once, before any worker loads them: a bad one
 * (unreadable, not matching its key, expired) is one log line, and every worker
 * keeps the certificate it has.
 */
static bool
control_reload_tls(const struct config *cfg)
{
	char err[CONFIG_PATH_LEN + 128];
	struct tls_cert_info info;

	if (cfg->tls_certificate[0] == '\0')
		return false;
	struct tls_server *probe = worker_tls_server(cfg, NULL, err, sizeof(err));
	bool ok = probe != NULL && tls_cert_inspect(cfg->tls_certificate, cfg->tls_key,
	                                            cfg->hostname, &info, err, sizeof(err)) == 0;
	if (ok && info.not_after <= time(NULL)) {
		snprintf(err, sizeof(err), "tls.certificate %s has expired", cfg->tls_certificate);
		ok = false;
	}
	tls_server_free(probe);
	if (!ok)
		log_msg(CONFIG_LOG_ERROR, "reload: keeping the current certificates: %s", err);
	return ok;
}

/* SIGHUP: the maps are read again; a map that no longer parses keeps the old policy. */
static void
control_reload(const struct config *cfg, struct worker **workers, unsigned n,
               struct policy **policy)
{
	char err[512];
	struct policy *p = policy_new(cfg, err, sizeof(err));

	if (p == NULL) {
		log_msg(CONFIG_LOG_ERROR, "reload failed, keeping the current maps: %s", err);
		return;
	}
	struct control_request r = {.cmd = CONTROL_RELOAD, .policy = p};
	r.tls_reload = control_reload_tls(cfg);
	strbuf_init(&r.out, 0);
	control_fan_out(&r, workers, n);
	policy_free(*policy);
	*policy = p;
	log_msg(CONFIG_LOG_INFO, "reloaded: recipient map and policy%s",
	        r.tls_reload ? ", certificates" : "");
}

int
control_serve(const struct config *cfg, int signal_fd, struct worker **workers,
              unsigned worker_count, struct policy **policy, char *err, size_t err_len)
{
	const char *socket_path = cfg->control_socket;
	int lfd = control_listen(socket_path);

	if (lfd < 0) {
		snprintf(err, err_len, "control socket %.200s: %s", socket_path, strerror(-lfd));
		return lfd;
	}
	int mfd = metrics_listen(cfg);
	if (cfg->metrics_enabled && mfd < 0) {
		snprintf(err, err_len, "metrics.listen %s: %s", cfg->metrics_listen.text,
		         strerror(-mfd));
		close(lfd);
		unlink(socket_path);
		return mfd;
	}
	for (;;) {
		/* a negative fd (metrics off) is ignored by poll */
		struct pollfd pfd[3] = {{.fd = signal_fd, .events = POLLIN},
		                        {.fd = lfd, .events = POLLIN},
		                        {.fd = mfd, .events = POLLIN}};
		if (poll(pfd, 3, -1) < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		if (pfd[0].revents & POLLIN) {
			struct signalfd_siginfo si;
			if (read(signal_fd, &si, sizeof(si)) == sizeof(si)) {
				if (si.ssi_signo != SIGHUP)
					break;
				control_reload(cfg, workers, worker_count, policy);
			}
		}
		if (pfd[1].revents & POLLIN) {
			int cfd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
			if (cfd >= 0) {
				control_client(cfd, workers, worker_count);
				close(cfd);
			}
		}
		if (pfd[2].revents & POLLIN) {
			int cfd = accept4(mfd, NULL, NULL, SOCK_CLOEXEC);
			if (cfd >= 0) {
				metrics_client(cfd, workers, worker_count);
				close(cfd);
			}
		}
	}
	if (mfd >= 0)
		close(mfd);
	close(lfd);
	unlink(socket_path);
	return 0;
}
