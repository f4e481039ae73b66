/*
 * worker.h -- one per-core, shared-nothing worker: its own io_uring, listening
 * sockets, connections, journal and queue shard.
 *
 * The only shared pieces are read-only (config, policy) and the connection
 * limits (touched at connect and close). Everything else reaches a worker as a
 * message in its mailbox.
 */
#ifndef RINGMX_CORE_WORKER_H
#define RINGMX_CORE_WORKER_H

#include "core/config.h"
#include "core/connlimit.h"
#include "core/control.h"
#include "core/policy.h"
#include "tls/tls.h"

#define WORKER_OUT_CONN_MAX 1024 /* outbound connections per worker */

/* What the workers share, all touched only when a connection opens or closes. */
struct worker_shared {
	struct connlimit *inbound;         /* max_connections, max_connections_per_ip */
	struct connlimit *outbound;        /* max_connections_per_destination, over all workers */
	const struct tls_tickets *tickets; /* session-ticket keys, read-only */
};

struct worker;

/*
 * Prepares worker `index`: opens and replays its journal shard under spool_dir
 * and takes ownership of listen_fds (one bound SO_REUSEPORT socket per listener
 * of cfg). Returns NULL with err filled on failure.
 */
struct worker *worker_new(unsigned index, const struct config *cfg, const struct policy *policy,
                          const struct worker_shared *shared, const int *listen_fds, char *err,
                          size_t err_len);

/* Starts the thread; waits until its ring is set up. 0, or -errno with err filled. */
int worker_start(struct worker *w, char *err, size_t err_len);

/* Hands a request to the worker; control_request_answered() is called when done. */
void worker_post(struct worker *w, struct control_request *r);

/* Waits for the thread to end (after CONTROL_STOP) and frees the worker. */
void worker_join(struct worker *w);

/* The certificates of cfg (tls.certificate and tls.sni) as a server context; NULL with err. */
struct tls_server *worker_tls_server(const struct config *cfg, const struct tls_tickets *tickets,
                                     char *err, size_t err_len);

/* Checks that io_uring works here with what ringmx needs; 0, or -errno with why filled. */
int worker_probe_uring(char *why, size_t why_len);

#endif
