/*
 * main.c -- ringmx: configuration, binding, privilege drop, signals, workers and
 * the control socket. The mail itself is handled by the workers (core/worker.c).
 */
#include <errno.h>
#include <getopt.h>
#include <grp.h>
#include <libgen.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/config.h"
#include "core/config_warn.h"
#include "core/connlimit.h"
#include "core/control.h"
#include "core/log.h"
#include "core/policy.h"
#include "core/worker.h"
#include "tls/tls.h"

#define EXIT_CONFIG           2  /* the configuration has problems */
#define LISTEN_PROBE_TRIES    40 /* times LISTEN_PROBE_PAUSE_MS: how long a port may be */
#define LISTEN_PROBE_PAUSE_MS 50 /* still held by a server that just died */
#define SELFSIGNED_DAYS       365

static void
usage(FILE *f)
{
	fprintf(
	    f, "usage: ringmx [-c FILE] [-t] [-V] [--default-config]\n"
	       "  -c FILE           configuration file (default: the built-in development config)\n"
	       "  -t                check the configuration and exit (0: valid)\n"
	       "  -V                print the version and exit\n"
	       "  --default-config  print the built-in configuration as YAML and exit\n");
}

static void
listen_error(const struct config_listen *ls, int e, char *err, size_t err_len)
{
	snprintf(err, err_len, "listen %s: %s%s", ls->address.text, strerror(e),
	         e == EACCES       ? " (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
	         : e == EADDRINUSE ? " (another server has this port)"
	                           : "");
}

static int
listen_probe_once(const struct config_listen *ls)
{
	int one = 1;
	int fd = socket(ls->address.ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0)
		return errno;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (ls->address.ss.ss_family == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
	int r = bind(fd, (const struct sockaddr *)&ls->address.ss, ls->address.len);
	int e = errno;
	close(fd);
	return r == 0 ? 0 : e;
}

/*
 * SO_REUSEPORT would let a second ringmx (same user) join our listening group and
 * quietly take part of the connections, so the address is first bound once without
 * it: that fails while anybody, ringmx included, listens there. A server killed a
 * moment ago holds its sockets for a few more milliseconds (the kernel tears its
 * io_uring down), so a restart by a supervisor waits for that, briefly.
 */
static int
listen_probe(const struct config_listen *ls, char *err, size_t err_len)
{
	int e = 0;

	for (unsigned i = 0; i < LISTEN_PROBE_TRIES; i++) {
		e = listen_probe_once(ls);
		if (e != EADDRINUSE)
			break;
		usleep(LISTEN_PROBE_PAUSE_MS * 1000);
	}
	if (e != 0) {
		listen_error(ls, e, err, err_len);
		return -1;
	}
	return 0;
}

static int
listen_socket(const struct config_listen *ls, char *err, size_t err_len)
{
	int one = 1;
	int fd = socket(ls->address.ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0) {
		listen_error(ls, errno, err, err_len);
		return -1;
	}
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
	/* accepted sockets inherit it: replies of a pipelined group leave at once */
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (ls->address.ss.ss_family == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
	if (bind(fd, (const struct sockaddr *)&ls->address.ss, ls->address.len) != 0 ||
	    listen(fd, 4096) != 0) {
		listen_error(ls, errno, err, err_len);
		close(fd);
		return -1;
	}
	return fd;
}

/* The spool is created by root at start; the journal shards are made by `user` after the drop. */
static int
drop_privileges(const char *user, const char *spool_dir, char *err, size_t err_len)
{
	struct passwd *pw = getpwnam(user);

	if (pw == NULL) {
		snprintf(err, err_len, "user %s: no such user", user);
		return -1;
	}
	if (chown(spool_dir, pw->pw_uid, pw->pw_gid) != 0) {
		snprintf(err, err_len, "spool_dir %.200s: chown to %s: %s", spool_dir, user,
		         strerror(errno));
		return -1;
	}
	if (setgroups(0, NULL) != 0 || setgid(pw->pw_gid) != 0 || setuid(pw->pw_uid) != 0) {
		snprintf(err, err_len, "cannot become user %s: %s", user, strerror(errno));
		return -1;
	}
	return 0;
}

/* mkdir -p of the directory holding path; key names the config key in errors. */
static int
mkdir_for_file(const char *key, const char *path, char *err, size_t err_len)
{
	char dir[CONFIG_PATH_LEN];

	snprintf(dir, sizeof(dir), "%s", path);
	return config_mkdir_parents(key, dirname(dir), err, err_len) < 0 ? -1 : 0;
}

/*
 * The built-in default (no -c) gets a development certificate where it points, so that
 * STARTTLS and port 2465 work from the first start. A file given with -c never gets one:
 * there a missing certificate is a configuration error.
 */
static int
selfsigned_prepare(const struct config *cfg, char *err, size_t err_len)
{
	char tls_err[TLS_ERROR_LEN];

	if (!config_tls_missing(cfg))
		return 0;
	if (mkdir_for_file("tls.certificate", cfg->tls_certificate, err, err_len) != 0 ||
	    mkdir_for_file("tls.key", cfg->tls_key, err, err_len) != 0)
		return -1;
	if (tls_selfsigned_create(cfg->hostname, SELFSIGNED_DAYS, cfg->tls_certificate,
	                          cfg->tls_key, tls_err, sizeof(tls_err)) != 0) {
		snprintf(err, err_len,
		         "tls.certificate %.200s: cannot create a self-signed certificate: %.200s",
		         cfg->tls_certificate, tls_err);
		return -1;
	}
	log_msg(CONFIG_LOG_WARNING,
	        "tls: created %s (key %s) for %s, valid %u days: self-signed; replace it for "
	        "production",
	        cfg->tls_certificate, cfg->tls_key, cfg->hostname, SELFSIGNED_DAYS);
	return 0;
}

struct server {
	const struct config *cfg;
	struct policy *policy;
	struct worker_shared shared;
	struct worker *workers[CONFIG_WORKERS_MAX];
	unsigned started;
	int listen_fds[CONFIG_WORKERS_MAX][CONFIG_LISTEN_MAX];
};

static int
server_bind(struct server *s, char *err, size_t err_len)
{
	const struct config *cfg = s->cfg;

	for (unsigned w = 0; w < cfg->workers; w++)
		for (unsigned i = 0; i < cfg->listen_count; i++)
			s->listen_fds[w][i] = -1;
	for (unsigned i = 0; i < cfg->listen_count; i++)
		if (listen_probe(&cfg->listen[i], err, err_len) != 0)
			return -1;
	for (unsigned w = 0; w < cfg->workers; w++) {
		for (unsigned i = 0; i < cfg->listen_count; i++) {
			s->listen_fds[w][i] = listen_socket(&cfg->listen[i], err, err_len);
			if (s->listen_fds[w][i] < 0)
				return -1;
		}
	}
	return 0;
}

static void
server_stop(struct server *s)
{
	struct control_request r = {.cmd = CONTROL_STOP};

	strbuf_init(&r.out, 0);
	control_fan_out(&r, s->workers, s->started);
	for (unsigned i = 0; i < s->started; i++)
		worker_join(s->workers[i]);
	s->started = 0;
}

/* Workers replay their journals (in order, here) and then start their loops. */
static int
server_start(struct server *s, char *err, size_t err_len)
{
	const struct config *cfg = s->cfg;

	for (unsigned i = 0; i < cfg->workers; i++) {
		s->workers[i] =
		    worker_new(i, cfg, s->policy, &s->shared, s->listen_fds[i], err, err_len);
		if (s->workers[i] == NULL)
			return -1;
		for (unsigned k = 0; k < cfg->listen_count; k++)
			s->listen_fds[i][k] = -1; /* the worker owns them now */
		if (worker_start(s->workers[i], err, err_len) != 0) {
			worker_join(s->workers[i]);
			return -1;
		}
		s->started++;
	}
	return 0;
}

static void
server_close_sockets(struct server *s)
{
	for (unsigned w = 0; w < s->cfg->workers; w++)
		for (unsigned i = 0; i < s->cfg->listen_count; i++)
			if (s->listen_fds[w][i] >= 0)
				close(s->listen_fds[w][i]);
}

static int
run(const struct config *cfg)
{
	struct server s = {.cfg = cfg};
	struct tls_tickets *tickets = NULL;
	char err[512];
	sigset_t sigs;
	int sfd = -1, rc = 1;

	log_setup(cfg->log_level, cfg->log_format);
	if (worker_probe_uring(err, sizeof(err)) != 0 ||
	    config_check_spool(cfg, err, sizeof(err)) ||
	    selfsigned_prepare(cfg, err, sizeof(err)) != 0)
		goto fail;
	s.policy = policy_new(cfg, err, sizeof(err));
	if (s.policy == NULL)
		goto fail;
	s.shared.inbound =
	    connlimit_new(cfg->limits_max_connections, cfg->limits_max_connections_per_ip);
	s.shared.outbound = connlimit_new(WORKER_OUT_CONN_MAX * cfg->workers,
	                                  cfg->outbound_max_connections_per_destination);
	tickets = tls_tickets_new();
	s.shared.tickets = tickets;
	if (s.shared.inbound == NULL || s.shared.outbound == NULL || tickets == NULL) {
		snprintf(err, sizeof(err), "out of memory");
		goto fail;
	}
	if (server_bind(&s, err, sizeof(err)) != 0)
		goto fail;
	if (cfg->user[0] && drop_privileges(cfg->user, cfg->spool_dir, err, sizeof(err)) != 0)
		goto fail;
	/* every thread inherits the mask; the signals are read from a signalfd only */
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGHUP);
	sigprocmask(SIG_BLOCK, &sigs, NULL);
	signal(SIGPIPE, SIG_IGN);
	sfd = signalfd(-1, &sigs, SFD_CLOEXEC);
	if (sfd < 0) {
		snprintf(err, sizeof(err), "signalfd: %s", strerror(errno));
		goto fail;
	}
	if (!cfg->queue_sync)
		log_msg(CONFIG_LOG_WARNING,
		        "queue.sync is none: accepted mail is NOT synced to disk "
		        "before the 250 reply (benchmarks only)");
	if (server_start(&s, err, sizeof(err)) != 0)
		goto fail;
	log_msg(CONFIG_LOG_INFO, "ringmx %s started: %u workers, %u listeners, config %s",
	        RINGMX_VERSION, cfg->workers, cfg->listen_count, cfg->source);
	if (control_serve(cfg, sfd, s.workers, s.started, &s.policy, err, sizeof(err)) != 0)
		goto fail;
	log_msg(CONFIG_LOG_INFO, "stopping");
	server_stop(&s);
	log_msg(CONFIG_LOG_INFO, "stopped");
	rc = 0;
	goto out;
fail:
	/* one plain line: start-up failures are read by people, not log pipelines */
	log_flush();
	fprintf(stderr, "ringmx: %s\n", err);
	server_stop(&s);
out:
	server_close_sockets(&s);
	if (sfd >= 0)
		close(sfd);
	policy_free(s.policy);
	connlimit_free(s.shared.inbound);
	connlimit_free(s.shared.outbound);
	tls_tickets_free(tickets);
	return rc;
}

static void
print_errors(const struct config_errors *errs)
{
	for (unsigned i = 0; i < errs->count; i++)
		fprintf(stderr, "%s\n", errs->line[i]);
	if (errs->dropped)
		fprintf(stderr, "(and %u more problems)\n", errs->dropped);
}

/* -t: the security warnings (exit code unchanged), and what start-up would create. */
static void
print_warnings(const struct config *cfg)
{
	struct config_warnings *w = malloc(sizeof(*w));

	if (w == NULL) {
		fprintf(stderr, "warning: out of memory: security checks skipped\n");
		return;
	}
	config_warn(cfg, (int64_t)time(NULL), w);
	for (unsigned i = 0; i < w->count; i++)
		fprintf(stderr, "%s\n", w->line[i]);
	if (w->dropped)
		fprintf(stderr, "(and %u more warnings)\n", w->dropped);
	free(w);
	if (config_tls_missing(cfg))
		printf(
		    "%s: tls.certificate %s does not exist yet: a self-signed certificate for %s "
		    "will be created at start\n",
		    cfg->source, cfg->tls_certificate, cfg->hostname);
}

/* -t: loads the maps too (they are part of the configuration); 0 or EXIT_CONFIG. */
static int
check_config(const struct config *cfg)
{
	char err[512];
	struct policy *p = policy_new(cfg, err, sizeof(err));

	if (p == NULL)
		fprintf(stderr, "%s\n", err);
	print_warnings(cfg);
	if (p != NULL)
		printf("%s: configuration ok\n", cfg->source);
	policy_free(p);
	return p == NULL ? EXIT_CONFIG : 0;
}

int
main(int argc, char **argv)
{
	static const struct option longopts[] = {
	    {"default-config", no_argument, NULL, 'D'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	const char *path = NULL;
	bool check = false;
	int opt;

	while ((opt = getopt_long(argc, argv, "c:tVh", longopts, NULL)) != -1) {
		switch (opt) {
		case 'c':
			path = optarg;
			break;
		case 't':
			check = true;
			break;
		case 'V':
			printf("ringmx %s\n", RINGMX_VERSION);
			return 0;
		case 'D':
			fputs(config_default_yaml(), stdout);
			return 0;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return EXIT_CONFIG;
		}
	}
	if (optind != argc) {
		usage(stderr);
		return EXIT_CONFIG;
	}
	struct config_errors errs = {0};
	struct config *cfg = config_load(path, &errs);
	if (cfg == NULL) {
		print_errors(&errs);
		return EXIT_CONFIG;
	}
	if (tls_global_init() != 0) {
		fprintf(stderr, "ringmx: tls: cannot initialise wolfSSL\n");
		config_free(cfg);
		return 1;
	}
	int rc = check ? check_config(cfg) : run(cfg);
	tls_global_free();
	config_free(cfg);
	return rc;
}
