/*
 * worker_impl.h -- the inside of a worker, shared by the files that make it up:
 * worker.c (the loop: ring, dispatch, tick, mailbox, start and stop), inbound.c
 * (sessions accepted on the listeners) and outbound.c (delivery). Below them, and
 * knowing nothing of them: transport.c (connection bytes, plaintext or TLS) and
 * store.c (queue and journal). Nothing else includes this header.
 */
#ifndef RINGMX_CORE_WORKER_IMPL_H
#define RINGMX_CORE_WORKER_IMPL_H

#include <assert.h>
#include <liburing.h>
#include <netinet/in.h>
#include <pthread.h>
#include <time.h>

#include "core/address.h"
#include "core/smtp_client.h"
#include "core/smtp_server.h"
#include "core/store.h"
#include "core/transport.h"
#include "core/worker.h"
#include "dns/dns.h"
#include "queue/journal.h"
#include "queue/queue.h"
#include "queue/scheduler.h"

#define WORKER_RING_ENTRIES      4096
#define WORKER_CQE_BATCH         512 /* completions handled per turn before the next submit */
#define WORKER_TICK_MS           250
#define WORKER_STOP_GRACE_MS     5000        /* sessions in a transaction may finish this long */
#define CONN_STASH_MAX           (64 * 1024) /* input held while a reply is awaited */
#define TLS_HANDSHAKE_TIMEOUT_MS 30000       /* a handshake that takes longer is dropped */
#define OUT_TLS_SESSIONS_MAX     256         /* outbound TLS sessions kept (37 KB each) */

struct conn {
	struct transport t; /* t.fd is -1 once closed */
	struct worker *w;   /* for the transport's events */
	uint32_t gen;
	bool used;
	bool closing, dirty, waiting, counted;
	unsigned listener;
	struct smtp_server *smtp;
	struct sockaddr_storage peer;
	char peer_text[INET6_ADDRSTRLEN];
	struct policy_client client;
	char tls_text[96]; /* "TLSv1.3/TLS_AES_128_GCM_SHA256" once secured */
	uint64_t deadline_ms;
	uint64_t connected_ms;

	/* the message awaiting its journal batch */
	uint64_t wait_batch;
	struct queue_message *wait_msg;

	uint8_t *stash; /* input not yet fed (the engine was waiting) */
	size_t stash_len;
};

/* Outbound delivery, worker_out.c. */
#define OUT_CONN_MAX           WORKER_OUT_CONN_MAX
#define OUT_ADDRS_MAX          16          /* addresses tried per connection */
#define OUT_TXN_WINDOW         16          /* BDAT transactions in flight per connection */
#define OUT_RETURNS_MAX        2           /* a job goes back this often after failed sessions */
#define OUT_STASH_MAX          (64 * 1024) /* reply bytes held while our output is pending */
#define OUT_CONNECT_TIMEOUT_MS 30000
#define OUT_IDLE_MS            2000 /* an idle connection waits this long for more work */
#define OUT_DUE_BATCH          256  /* messages woken per tick and call */

/* A recipient's DSN requests, passed on as received (RFC 3461). */
struct out_rcpt_dsn {
	char notify[SMTP_CLIENT_NOTIFY_MAX];
	char orcpt[SMTP_CLIENT_ORCPT_MAX + 1];
};

/* One transaction on a connection: its job and what the engine reads while it runs. */
struct out_txn {
	struct sched_job *job;
	struct smtp_client_rcpt *rcpts;
	struct out_rcpt_dsn *rcpt_dsn;
	unsigned rcpt_cap;
	char ret[8];
	char body_type[16];
	char envid[SMTP_CLIENT_ENVID_MAX + 1];
	uint8_t *body; /* the body read back from the journal, when evicted */
};

struct oconn {
	struct transport t; /* t.fd is -1: none (resolving, or closed) */
	uint32_t gen;
	bool used, connecting, closing;
	struct worker *w; /* for the DNS callback */
	struct sched_dest *dest;
	struct smtp_client *smtp;
	int dns_id;                 /* the lookup in flight, 0: none */
	enum dns_security security; /* of the lookup that gave the addresses */
	struct sockaddr_storage addrs[OUT_ADDRS_MAX];
	uint8_t addr_host[OUT_ADDRS_MAX]; /* index into hosts */
	char hosts[DNS_MX_MAX][DNS_NAME_MAX + 1];
	unsigned addr_count, addr_next;
	char peer_text[INET6_ADDRSTRLEN + 8];
	uint64_t deadline_ms;
	uint64_t started_ms;
	unsigned messages; /* transactions on this connection */
	uint32_t feed_gen; /* the generation whose input is being fed */
	enum config_outbound_tls tls_policy;
	int plain_addr;       /* index of the address retried without TLS (may), -1: none */
	const char *tls_auth; /* "anonymous", "trusted", "verified", "dane"; NULL: no TLS */
	int tlsa_host;        /* the host whose TLSA records these are, -1: none looked up */
	bool tlsa_secure;     /* a secure TLSA RRset: TLS is mandatory for that host */
	unsigned tlsa_count;
	struct dns_tlsa tlsa[DNS_TLSA_MAX];
	char tlsa_error[DNS_REASON_MAX]; /* why a host was skipped (bogus TLSA) */
	bool session_ok; /* got to READY once: later failures are not the address's fault */

	/* transactions in flight, a ring in the order they were sent */
	struct out_txn txns[OUT_TXN_WINDOW];
	unsigned txn_head, txn_count;
	struct sched_job *held; /* jobs of a failed session, sent first at the next address */

	uint8_t *stash;
	size_t stash_len;
	struct oconn *next_idle; /* on its destination's idle list */
};

struct worker {
	unsigned index;
	char name[16];
	const struct config *cfg;
	const struct policy *policy;
	struct connlimit *limits;
	pthread_t thread;

	struct transport_ring io;
	struct tls_server *tls_server; /* NULL: no certificate, no TLS offered */
	struct tls_client *tls_client; /* NULL: outbound TLS unavailable (logged at start) */
	const struct tls_tickets *tickets;
	int listen_fds[CONFIG_LISTEN_MAX];
	struct __kernel_timespec tick;
	uint64_t now_ms; /* monotonic, once per turn */

	struct conn *conns;
	unsigned conn_max;
	unsigned *free_slots, free_count;
	unsigned *dirty, dirty_count;
	unsigned *waiters, waiter_count; /* in batch order */
	unsigned active;

	struct store *store;
	struct queue *queue; /* the store's */
	uint8_t *body_scratch;
	size_t body_scratch_cap;
	char (*rcpt_text)[ADDRESS_PATH_MAX + 1];
	const char **rcpt_ptrs, **rcpt_params;

	int mailbox_fd;
	uint64_t mailbox_value;
	pthread_mutex_t mailbox_lock;
	struct control_request *mailbox[8];
	unsigned mailbox_count;

	bool stopping;
	uint64_t stop_deadline_ms;

	/* start-up handshake with the main thread */
	pthread_mutex_t start_lock;
	pthread_cond_t start_cond;
	bool start_done;
	int start_error;
	char start_err[256];

	/* outbound delivery (worker_out.c) */
	uint64_t wall_ms; /* wall clock, once per turn: recipients' next attempts */
	struct sched *sched;
	struct dns *dns;
	struct connlimit *dest_limits;
	struct sched_dest **blocked; /* waiting for a connection slot another worker holds */
	size_t blocked_count, blocked_cap;
	struct oconn *oconns;
	unsigned *ofree, ofree_count;
	unsigned dsn_seq;

	struct control_stats stats;
};

/* inbound.c */
int in_init(struct worker *w);
void in_free(struct worker *w);
void in_arm_accept(struct worker *w, unsigned listener);
void in_on_accept(struct worker *w, unsigned listener, int res, unsigned flags);
void in_on_recv(struct worker *w, uint64_t ud, int res, unsigned flags);
void in_on_send(struct worker *w, uint64_t ud, int res);
/* The journal made batches up to durable safe (r == 0), or failed (r < 0): 250s or 452s. */
void in_journal_settled(struct worker *w, uint64_t durable, int r);
void in_tick(struct worker *w, bool grace_over);
void in_flush_dirty(struct worker *w);

/* outbound.c */
int out_init(struct worker *w);
void out_free(struct worker *w);
void out_schedule(struct worker *w, struct queue_message *m);
void out_dispatch(struct worker *w);
void out_tick(struct worker *w);
void out_stop(struct worker *w);
bool out_idle(const struct worker *w);
void out_on_cqe(struct worker *w, enum worker_op op, uint64_t ud, int res, unsigned flags);
int out_dns_setup(struct worker *w, char *err, size_t err_len);
void out_dns_pump(struct worker *w);
void out_resolve(struct worker *w, struct control_request *r);
int out_delete(struct worker *w, struct queue_message *m);
void out_hold(struct worker *w, struct queue_message *m, bool held);
void out_flush_queue(struct worker *w);

static inline uint64_t
clock_ms(clockid_t id)
{
	struct timespec ts;

	clock_gettime(id, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

#endif
