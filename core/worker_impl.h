/*
 * worker_impl.h -- the inside of a worker, shared by its two halves: worker.c (the
 * loop, inbound sessions, journal, control) and worker_out.c (outbound delivery).
 * Nothing outside those two files includes it.
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
#include "core/worker.h"
#include "dns/dns.h"
#include "queue/journal.h"
#include "queue/queue.h"
#include "queue/scheduler.h"

#define WORKER_RING_ENTRIES  4096
#define WORKER_CQE_BATCH     512 /* completions handled per turn before the next submit */
#define WORKER_BUF_COUNT     512 /* provided receive buffers (power of two) */
#define WORKER_BUF_SIZE      16384
#define WORKER_BUF_GROUP     1
#define WORKER_TICK_MS       250
#define WORKER_STOP_GRACE_MS 5000          /* sessions in a transaction may finish this long */
#define CONN_OUT_CAP         8192          /* reply bytes in flight per connection */
#define CONN_STASH_MAX       (64 * 1024)   /* input held while a reply is awaited */
#define RECORD_SCRATCH       (1024 * 1024) /* encoded envelope of one message */

static_assert((WORKER_BUF_COUNT & (WORKER_BUF_COUNT - 1)) == 0,
              "buffer ring size is a power of two");

enum worker_op {
	OP_ACCEPT = 1,
	OP_RECV,
	OP_SEND,
	OP_REFUSE_SEND,
	OP_REFUSE_CLOSE,
	OP_TICK,
	OP_JOURNAL_WRITE,
	OP_JOURNAL_SYNC,
	OP_MAILBOX,
	OP_CANCEL,
	OP_OUT_CONNECT,
	OP_OUT_RECV,
	OP_OUT_SEND,
	OP_DNS,
};

/* user_data: op in the top byte, a 24-bit generation, a 32-bit slot (or fd, or listener). */
static inline uint64_t
ud_pack(enum worker_op op, uint32_t gen, uint32_t slot)
{
	return (uint64_t)op << 56 | (uint64_t)(gen & 0xffffff) << 32 | slot;
}

static inline enum worker_op
ud_op(uint64_t ud)
{
	return (enum worker_op)(ud >> 56);
}

static inline uint32_t
ud_gen(uint64_t ud)
{
	return (uint32_t)(ud >> 32) & 0xffffff;
}

static inline uint32_t
ud_slot(uint64_t ud)
{
	return (uint32_t)ud;
}

struct conn {
	int fd; /* -1 once closed */
	uint32_t gen;
	bool used;
	bool recv_armed, recv_paused, send_busy, closing, dirty, waiting, counted;
	unsigned inflight; /* submitted ops that still name this slot */
	unsigned listener;
	struct smtp_server *smtp;
	struct sockaddr_storage peer;
	char peer_text[INET6_ADDRSTRLEN];
	struct policy_client client;
	uint64_t deadline_ms;
	uint64_t connected_ms;

	/* the message awaiting its journal batch */
	uint64_t wait_batch;
	struct queue_message *wait_msg;

	uint8_t *stash; /* input not yet fed (the engine was waiting) */
	size_t stash_len;
	uint8_t *out; /* CONN_OUT_CAP bytes, allocated on first send */
	size_t out_len, out_sent;
};

/* Outbound delivery, worker_out.c. */
#define OUT_CONN_MAX           WORKER_OUT_CONN_MAX
#define OUT_ADDRS_MAX          16          /* addresses tried per connection */
#define OUT_IOV_MAX            64          /* iovecs in one send */
#define OUT_TXN_WINDOW         16          /* BDAT transactions in flight per connection */
#define OUT_RETURNS_MAX        2           /* a job goes back this often after failed sessions */
#define OUT_STASH_MAX          (64 * 1024) /* reply bytes held while our output is pending */
#define OUT_CONNECT_TIMEOUT_MS 30000
#define OUT_IDLE_MS            2000       /* an idle connection waits this long for more work */
#define OUT_DUE_BATCH          256        /* messages woken per tick and call */
#define QUEUE_IN_FLIGHT        UINT64_MAX /* next_attempt_ms of a recipient in a job */
#define COMPACT_LAG_SEGMENTS   4          /* messages this many segments behind are rewritten, */
#define COMPACT_BATCH          64         /* this many per tick */
#define COMPACT_MOVES_MAX      (2 * COMPACT_BATCH) /* rewrites waiting for their sync */

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

/* A message written again at the head: it lives there once that batch is durable. */
struct compact_move {
	uint64_t id;
	uint64_t batch;
	struct journal_loc loc;
};

struct oconn {
	int fd; /* -1: none (resolving, or closed) */
	uint32_t gen;
	bool used, connecting, recv_armed, send_busy, closing;
	unsigned inflight;
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
	bool session_ok;   /* got to READY once: later failures are not the address's fault */

	/* transactions in flight, a ring in the order they were sent */
	struct out_txn txns[OUT_TXN_WINDOW];
	unsigned txn_head, txn_count;
	struct sched_job *held; /* jobs of a failed session, sent first at the next address */

	struct iovec iov[OUT_IOV_MAX];
	struct msghdr mh;
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

	struct io_uring ring;
	int listen_fds[CONFIG_LISTEN_MAX];
	struct io_uring_buf_ring *buf_ring;
	uint8_t *bufs;
	struct __kernel_timespec tick;
	uint64_t now_ms; /* monotonic, once per turn */

	struct conn *conns;
	unsigned conn_max;
	unsigned *free_slots, free_count;
	unsigned *dirty, dirty_count;
	unsigned *waiters, waiter_count; /* in batch order */
	unsigned active;

	struct journal *journal;
	struct queue *queue;
	struct journal_write jw;
	bool jw_busy;
	int jw_error;
	size_t jw_written;
	struct compact_move moves[COMPACT_MOVES_MAX];
	unsigned move_count;
	uint8_t *record_scratch;
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

	/* live messages per journal segment: count[seg - seg_base], for deleting segments */
	uint64_t seg_base;
	unsigned *seg_live;
	size_t seg_cap;

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

/* worker.c, for worker_out.c */
void worker_return_buffer(struct worker *w, unsigned bid);
/* "192.0.2.1" (v4-mapped shown as IPv4), or with the port: "192.0.2.1:25", "[2001:db8::1]:25" */
void worker_addr_text(const struct sockaddr_storage *ss, bool with_port, char *buf, size_t cap);
const uint8_t *worker_buffer(const struct worker *w, unsigned bid);
struct queue_message *worker_store_message(struct worker *w, uint64_t id,
                                           const struct queue_envelope *qe, const uint8_t *body,
                                           size_t body_len, int64_t *batch);
void worker_journal_record(struct worker *w, enum journal_rec_type type, const struct iovec *iov,
                           unsigned n);
void worker_queue_remove(struct worker *w, struct queue_message *m);
void worker_queue_moved(struct worker *w, struct queue_message *m, const struct journal_loc *loc);

/* worker_out.c */
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
int out_rewrite(struct worker *w, struct queue_message *m, struct compact_move *mv);
void out_flush_queue(struct worker *w);

static inline uint64_t
clock_ms(clockid_t id)
{
	struct timespec ts;

	clock_gettime(id, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

struct io_uring_sqe *worker_sqe(struct worker *w);

#endif
