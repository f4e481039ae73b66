/* ringmx-bench: command line of `send` and `sink` (see bench/README.md). */
#include "bench/send.h"
#include "bench/sink.h"

#include "bench/msggen.h"
#include "bench/ring.h"
#include "tls/tls.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BENCH_THREADS_MAX 256

enum bench_opt {
	OPT_SERVER = 256,
	OPT_CONNECTIONS,
	OPT_MESSAGES,
	OPT_SIZE,
	OPT_RCPTS,
	OPT_FROM,
	OPT_TO,
	OPT_TO_DOMAIN,
	OPT_STARTTLS,
	OPT_TLS,
	OPT_AUTH,
	OPT_RATE,
	OPT_JSON,
	OPT_THREADS,
	OPT_TIMEOUT,
	OPT_LISTEN,
	OPT_REPLY,
	OPT_EXPECT,
	OPT_RECORD,
	OPT_IDLE_TIMEOUT,
	OPT_BDAT,
	OPT_NO_CHUNKING,
	OPT_PER_CONNECTION,
	OPT_NO_RESUME,
	OPT_IMPLICIT_TLS,
};

static const struct option send_longopts[] = {
    {"server", required_argument, NULL, OPT_SERVER},
    {"connections", required_argument, NULL, OPT_CONNECTIONS},
    {"messages", required_argument, NULL, OPT_MESSAGES},
    {"size", required_argument, NULL, OPT_SIZE},
    {"rcpts", required_argument, NULL, OPT_RCPTS},
    {"from", required_argument, NULL, OPT_FROM},
    {"to", required_argument, NULL, OPT_TO},
    {"to-domain", required_argument, NULL, OPT_TO_DOMAIN},
    {"starttls", no_argument, NULL, OPT_STARTTLS},
    {"tls", no_argument, NULL, OPT_TLS},
    {"auth", required_argument, NULL, OPT_AUTH},
    {"rate", required_argument, NULL, OPT_RATE},
    {"json", no_argument, NULL, OPT_JSON},
    {"threads", required_argument, NULL, OPT_THREADS},
    {"timeout", required_argument, NULL, OPT_TIMEOUT},
    {"bdat", no_argument, NULL, OPT_BDAT},
    {"messages-per-connection", required_argument, NULL, OPT_PER_CONNECTION},
    {"no-resume", no_argument, NULL, OPT_NO_RESUME},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

static const struct option sink_longopts[] = {
    {"listen", required_argument, NULL, OPT_LISTEN},
    {"tls", required_argument, NULL, OPT_TLS},
    {"reply", required_argument, NULL, OPT_REPLY},
    {"expect", required_argument, NULL, OPT_EXPECT},
    {"record", required_argument, NULL, OPT_RECORD},
    {"json", no_argument, NULL, OPT_JSON},
    {"threads", required_argument, NULL, OPT_THREADS},
    {"idle-timeout", required_argument, NULL, OPT_IDLE_TIMEOUT},
    {"no-chunking", no_argument, NULL, OPT_NO_CHUNKING},
    {"implicit-tls", no_argument, NULL, OPT_IMPLICIT_TLS},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

static const char send_usage[] =
    "usage: ringmx-bench send --server HOST:PORT [--connections C] [--messages N]\n"
    "         [--size BYTES] [--rcpts R] [--from ADDR] [--to ADDR|--to-domain D]\n"
    "         [--starttls|--tls] [--auth USER:PASS] [--rate MSGS_PER_S] [--json]\n"
    "         [--threads T] [--timeout SECONDS] [--bdat] [--messages-per-connection K]\n"
    "         [--no-resume]\n";

static const char sink_usage[] =
    "usage: ringmx-bench sink --listen HOST:PORT [--tls CERT,KEY [--implicit-tls]]\n"
    "         [--reply CODE:FRACTION,...] [--expect N] [--record FILE] [--json] [--threads T]\n"
    "         [--idle-timeout SECONDS] [--no-chunking]\n";

static int
bench_usage(const char *usage, const char *why)
{
	if (why)
		fprintf(stderr, "ringmx-bench: %s\n", why);
	fputs(usage, stderr);
	return 2;
}

static int
bench_no_auth(void)
{
	fprintf(stderr, "ringmx-bench: --auth needs TLS support (not built yet)\n");
	return 2;
}

/* The adapter's process-wide setup, only for runs that use TLS. */
static int
bench_tls_init(void)
{
	if (tls_global_init() == 0)
		return 0;
	fprintf(stderr, "ringmx-bench: TLS library initialisation failed (wolfSSL)\n");
	return -1;
}

/* Parses a decimal in [min, max]; returns 0 or -EINVAL with a message. */
static int
bench_uint(const char *name, const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
	char *end;
	unsigned long long v;

	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || end == s || *end != '\0' || s[0] == '-' || v < min || v > max) {
		fprintf(stderr,
		        "ringmx-bench: %s must be an integer from %llu to %llu (got '%s')\n", name,
		        (unsigned long long)min, (unsigned long long)max, s);
		return -EINVAL;
	}
	*out = v;
	return 0;
}

static unsigned
bench_default_threads(void)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);

	return n < 1 ? 1 : n > BENCH_THREADS_MAX ? BENCH_THREADS_MAX : (unsigned)n;
}

static int
bench_addr(const char *flag, const char *s, struct sockaddr_storage *ss, socklen_t *len)
{
	if (ring_parse_addr(s, ss, len) == 0)
		return 0;
	fprintf(stderr, "ringmx-bench: %s wants HOST:PORT with a numeric port (got '%s')\n", flag,
	        s);
	return -EINVAL;
}

/* One send option; returns 0, or an exit code. */
static int
send_opt(struct send_opts *o, int opt, const char *arg)
{
	uint64_t v = 0;
	int rc = 0;

	switch (opt) {
	case OPT_SERVER:
		o->server = arg;
		rc = bench_addr("--server", arg, &o->addr, &o->addr_len);
		break;
	case OPT_CONNECTIONS:
		rc = bench_uint("--connections", arg, 1, SEND_CONNECTIONS_MAX, &v);
		o->connections = (unsigned)v;
		break;
	case OPT_MESSAGES:
		rc = bench_uint("--messages", arg, 1, UINT64_MAX / 2, &o->messages);
		break;
	case OPT_SIZE:
		rc = bench_uint("--size", arg, 1, 1u << 30, &v);
		o->size = (size_t)v;
		break;
	case OPT_RCPTS:
		rc = bench_uint("--rcpts", arg, 1, SEND_RCPTS_MAX, &v);
		o->rcpts = (unsigned)v;
		break;
	case OPT_THREADS:
		rc = bench_uint("--threads", arg, 1, BENCH_THREADS_MAX, &v);
		o->threads = (unsigned)v;
		break;
	case OPT_TIMEOUT:
		rc = bench_uint("--timeout", arg, 1, 86400 * 365, &v);
		o->timeout_s = (unsigned)v;
		break;
	case OPT_RATE:
		o->rate = strtod(arg, NULL);
		rc = o->rate > 0 ? 0 : bench_usage(send_usage, "--rate must be a positive number");
		break;
	case OPT_FROM:
		o->from = arg;
		break;
	case OPT_TO:
		o->to = arg;
		break;
	case OPT_TO_DOMAIN:
		o->to_domain = arg;
		break;
	case OPT_JSON:
		o->json = 1;
		break;
	case OPT_BDAT:
		o->bdat = 1;
		break;
	case OPT_STARTTLS:
		o->starttls = 1;
		break;
	case OPT_TLS:
		o->tls = 1;
		break;
	case OPT_NO_RESUME:
		o->no_resume = 1;
		break;
	case OPT_PER_CONNECTION:
		rc = bench_uint("--messages-per-connection", arg, 1, UINT64_MAX / 2,
		                &o->per_connection);
		break;
	case OPT_AUTH:
		return bench_no_auth();
	default:
		return bench_usage(send_usage, NULL);
	}
	return rc ? 2 : 0;
}

static int
send_main(int argc, char **argv)
{
	struct send_opts o = {
	    .connections = 10,
	    .messages = 1000,
	    .size = 1024,
	    .rcpts = 1,
	    .from = "bench@example.test",
	    .to_domain = "example.test",
	    .timeout_s = 60,
	    .threads = bench_default_threads(),
	};
	int opt, rc;

	while ((opt = getopt_long(argc, argv, "h", send_longopts, NULL)) != -1) {
		rc = send_opt(&o, opt, optarg);
		if (rc)
			return rc;
	}
	if (optind != argc)
		return bench_usage(send_usage, "unexpected argument");
	if (!o.server)
		return bench_usage(send_usage, "--server is required");
	if (o.starttls && o.tls)
		return bench_usage(send_usage, "--starttls and --tls exclude each other");
	if (strlen(o.from) >= MSGGEN_ADDR_MAX || (o.to && strlen(o.to) >= MSGGEN_ADDR_MAX) ||
	    strlen(o.to_domain) >= MSGGEN_ADDR_MAX - 16)
		return bench_usage(send_usage, "addresses must be shorter than 240 bytes");
	if (!o.starttls && !o.tls)
		return send_run(&o);
	if (bench_tls_init() < 0)
		return 2;
	rc = send_run(&o);
	tls_global_free();
	return rc;
}

/* "451:0.1,550:0.05" */
static int
sink_parse_rules(struct sink_opts *o, const char *arg)
{
	const char *p = arg;
	double sum = 0;
	char *end;

	for (o->nrules = 0; *p; o->nrules++) {
		struct sink_reply_rule *r = &o->rules[o->nrules];

		if (o->nrules == SINK_REPLY_CODES_MAX)
			return -EINVAL;
		r->code = (int)strtol(p, &end, 10);
		if (end == p || *end != ':' || r->code < 400 || r->code > 599)
			return -EINVAL;
		p = end + 1;
		r->fraction = strtod(p, &end);
		if (end == p || r->fraction <= 0 || r->fraction > 1 ||
		    (*end != ',' && *end != '\0'))
			return -EINVAL;
		sum += r->fraction;
		p = *end == ',' ? end + 1 : end;
	}
	return o->nrules > 0 && sum <= 1.0 + 1e-9 ? 0 : -EINVAL;
}

/* Splits "CERT,KEY" into the two paths kept in o. */
static int
sink_parse_tls(struct sink_opts *o, const char *arg)
{
	const char *comma = strchr(arg, ',');
	size_t n = comma ? (size_t)(comma - arg) : 0;

	if (!comma || n == 0 || comma[1] == '\0' || n >= sizeof(o->tls_cert) ||
	    strlen(comma + 1) >= sizeof(o->tls_key)) {
		bench_usage(sink_usage, "--tls wants CERT,KEY (two PEM files)");
		return -EINVAL;
	}
	memcpy(o->tls_cert, arg, n);
	o->tls_cert[n] = '\0';
	snprintf(o->tls_key, sizeof(o->tls_key), "%s", comma + 1);
	return 0;
}

static int
sink_opt(struct sink_opts *o, int opt, const char *arg)
{
	uint64_t v = 0;
	int rc = 0;

	switch (opt) {
	case OPT_LISTEN:
		o->listen = arg;
		rc = bench_addr("--listen", arg, &o->addr, &o->addr_len);
		break;
	case OPT_REPLY:
		if (sink_parse_rules(o, arg) < 0)
			return bench_usage(sink_usage, "--reply wants CODE:FRACTION,... with codes "
			                               "400-599 and fractions summing to <= 1");
		break;
	case OPT_EXPECT:
		rc = bench_uint("--expect", arg, 1, UINT64_MAX / 2, &o->expect);
		break;
	case OPT_THREADS:
		rc = bench_uint("--threads", arg, 1, BENCH_THREADS_MAX, &v);
		o->threads = (unsigned)v;
		break;
	case OPT_IDLE_TIMEOUT:
		rc = bench_uint("--idle-timeout", arg, 1, 86400, &v);
		o->idle_timeout_s = (unsigned)v;
		break;
	case OPT_RECORD:
		o->record = arg;
		break;
	case OPT_JSON:
		o->json = 1;
		break;
	case OPT_NO_CHUNKING:
		o->no_chunking = 1;
		break;
	case OPT_TLS:
		rc = sink_parse_tls(o, arg);
		break;
	case OPT_IMPLICIT_TLS:
		o->implicit_tls = 1;
		break;
	default:
		return bench_usage(sink_usage, NULL);
	}
	return rc ? 2 : 0;
}

static int
sink_main(int argc, char **argv)
{
	struct sink_opts o = {.threads = bench_default_threads(), .idle_timeout_s = 60};
	int opt, rc;

	while ((opt = getopt_long(argc, argv, "h", sink_longopts, NULL)) != -1) {
		rc = sink_opt(&o, opt, optarg);
		if (rc)
			return rc;
	}
	if (optind != argc)
		return bench_usage(sink_usage, "unexpected argument");
	if (!o.listen)
		return bench_usage(sink_usage, "--listen is required");
	if (o.implicit_tls && !o.tls_cert[0])
		return bench_usage(sink_usage, "--implicit-tls needs --tls CERT,KEY");
	if (!o.tls_cert[0])
		return sink_run(&o);
	if (bench_tls_init() < 0)
		return 2;
	rc = sink_run(&o);
	tls_global_free();
	return rc;
}

int
main(int argc, char **argv)
{
	if (argc >= 2 && strcmp(argv[1], "send") == 0)
		return send_main(argc - 1, argv + 1);
	if (argc >= 2 && strcmp(argv[1], "sink") == 0)
		return sink_main(argc - 1, argv + 1);
	if (argc >= 2 && (strcmp(argv[1], "-V") == 0 || strcmp(argv[1], "--version") == 0)) {
		printf("ringmx-bench %s\n", RINGMX_VERSION);
		return 0;
	}
	fputs(send_usage, stderr);
	fputs(sink_usage, stderr);
	return 2;
}
