/* sink.h -- `ringmx-bench sink`: an SMTP server that accepts, counts and discards mail,
 * over io_uring with one SO_REUSEPORT listener and ring per thread. */
#ifndef RINGMX_BENCH_SINK_H
#define RINGMX_BENCH_SINK_H

#include <stdint.h>
#include <sys/socket.h>

#define SINK_REPLY_CODES_MAX 8    /* entries in --reply */
#define SINK_PATH_MAX        4096 /* bytes of a --tls file name */

struct sink_reply_rule {
	int code;        /* 400..599 */
	double fraction; /* of all RCPTs; the fractions sum to <= 1 */
};

struct sink_opts {
	const char *listen; /* as given, for messages */
	struct sockaddr_storage addr;
	socklen_t addr_len;
	unsigned threads;
	uint64_t expect;    /* 0: run until SIGINT/SIGTERM */
	const char *record; /* NULL: no record file */
	unsigned idle_timeout_s;
	int json;
	int no_chunking;              /* --no-chunking: no CHUNKING in EHLO, BDAT gets 502 */
	char tls_cert[SINK_PATH_MAX]; /* --tls CERT,KEY: "" without TLS */
	char tls_key[SINK_PATH_MAX];
	int implicit_tls; /* --implicit-tls: TLS from the first byte instead of STARTTLS */
	unsigned nrules;
	struct sink_reply_rule rules[SINK_REPLY_CODES_MAX];
};

/* Runs until --expect messages arrived or a signal; prints the summary. Returns the exit
 * code: 0, or 2 when the listener or io_uring could not be set up (with a message). */
int sink_run(const struct sink_opts *o);

#endif
