/*
 * control.h -- the control socket: `ringmxctl` talks to the running server here.
 *
 * Protocol: the client sends one command line ("queue --json\n"); the server
 * answers "ok\n" or "error <text>\n", then the body, then closes. The main thread
 * serves the socket; a command that needs a worker's state is sent to every
 * worker as a struct control_request and answered when all have filled it in.
 */
#ifndef RINGMX_CORE_CONTROL_H
#define RINGMX_CORE_CONTROL_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "core/strbuf.h"

#define CONTROL_LINE_MAX  512                  /* one command line */
#define CONTROL_REPLY_MAX (256u * 1024 * 1024) /* one reply (a whole queue listing) */

enum control_cmd {
	CONTROL_QUEUE,  /* one line (or JSON object) per queued message */
	CONTROL_SHOW,   /* the stored message `arg` (envelope and bytes) */
	CONTROL_STATS,  /* counters: fills `stats` */
	CONTROL_FLUSH,  /* every deferred recipient is due now */
	CONTROL_DELETE, /* remove message `arg` (no bounce) */
	CONTROL_HOLD,   /* message `arg` is not delivered until released */
	CONTROL_RELEASE,
	CONTROL_RESOLVE, /* next hops, addresses, DNSSEC state and TLSA of domain `arg` */
	CONTROL_RELOAD,  /* use `policy` from now on (SIGHUP) */
	CONTROL_STOP,    /* graceful stop: stop accepting, finish, exit the loop */
};

struct control_stats {
	uint64_t connections_total, connections_active, connections_refused;
	uint64_t messages_accepted, bytes_accepted, messages_refused;
	uint64_t rcpts_accepted, rcpts_refused;
	uint64_t rcpts_delivered, rcpts_deferred, rcpts_bounced;
	uint64_t journal_batches, journal_syncs, journal_errors;
	uint64_t queue_messages, queue_recipients, queue_memory, queue_memory_limit;
	uint64_t journal_disk_bytes;
	uint64_t tls_handshakes, tls_failures;         /* inbound */
	uint64_t tls_out_handshakes, tls_out_failures; /* outbound */
};

/* One request, shared by the fan-out to all workers (each appends under `lock`). */
struct control_request {
	enum control_cmd cmd;
	bool json;
	char arg[128];
	uint64_t now_ms;             /* wall clock when asked, for ages */
	const struct policy *policy; /* CONTROL_RELOAD */
	bool tls_reload;             /* CONTROL_RELOAD: the certificates checked out, load them */

	pthread_mutex_t lock;
	pthread_cond_t done;
	unsigned pending; /* workers still to answer */
	bool found;       /* SHOW, DELETE, HOLD, RELEASE: some worker had it */
	int error;        /* DELETE: -EBUSY while the message is in a transaction */
	unsigned items;   /* CONTROL_QUEUE: entries appended (for JSON commas) */
	struct strbuf out;
	struct control_stats stats; /* summed over workers */
};

struct config;
struct policy;
struct worker;

/*
 * Serves cfg->control_socket, and GET /metrics on metrics.listen when set, until a
 * stop signal (SIGTERM, SIGINT) arrives on signal_fd. SIGHUP rebuilds the policy (maps are read
 * again) and hands it to every worker; *policy is then the new one (the old one is freed once no
 * worker uses it). Returns 0, or -errno with err filled if a socket cannot be set up.
 */
int control_serve(const struct config *cfg, int signal_fd, struct worker **workers,
                  unsigned worker_count, struct policy **policy, char *err, size_t err_len);

/* Sends r to every worker and waits until all have answered. */
void control_fan_out(struct control_request *r, struct worker **workers, unsigned n);

struct queue_message;

/* Appends one queue entry: a text line (no newline) or a JSON object. */
void control_format_message(struct strbuf *sb, const struct queue_message *m, bool json,
                            uint64_t now_ms);

/* Called by a worker to finish its part of a request. */
void control_request_answered(struct control_request *r);

#endif
