/* send.h -- `ringmx-bench send`: SMTP load over io_uring, one ring per thread. */
#ifndef RINGMX_BENCH_SEND_H
#define RINGMX_BENCH_SEND_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define SEND_RCPTS_MAX       1000 /* --rcpts limit */
#define SEND_CONNECTIONS_MAX 100000

struct send_opts {
	const char *server; /* as given, for messages */
	struct sockaddr_storage addr;
	socklen_t addr_len;
	unsigned connections;
	unsigned threads;
	unsigned rcpts;
	uint64_t messages;
	size_t size;
	const char *from;
	const char *to; /* NULL: rcptN@to_domain */
	const char *to_domain;
	double rate; /* messages/s; 0: as fast as possible */
	unsigned timeout_s;
	int json;
	int bdat;     /* --bdat: MAIL, RCPTs and BDAT <n> LAST + message in one write, if offered */
	int starttls; /* --starttls: STARTTLS after EHLO, then EHLO again */
	int tls;      /* --tls: TLS from the first byte (port 465) */
	int no_resume; /* --no-resume: every handshake a full one */
	/* --messages-per-connection: then QUIT and connect again; 0: no limit */
	uint64_t per_connection;
};

/* Runs the load and prints the report. Returns the process exit code: 0 when every message
 * was attempted and at least one delivered, 1 when nothing was delivered or the server was
 * unreachable, 3 on --timeout. */
int send_run(const struct send_opts *o);

#endif
