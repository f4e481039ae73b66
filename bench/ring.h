/* ring.h -- the io_uring plumbing ringmx-bench's send and sink loops share: one ring per
 * thread with a provided-buffer ring for multishot receives, user_data packing, clocks.
 *
 * user_data packs an op (8 bits), a generation (24 bits) and a connection slot (32 bits),
 * as liburing's examples/proxy.c does, so a completion arriving after its connection was
 * closed and the slot reused is recognised by its stale generation.
 */
#ifndef RINGMX_BENCH_RING_H
#define RINGMX_BENCH_RING_H

#include <liburing.h>
#include <stdint.h>
#include <sys/socket.h>

#define RING_ENTRIES   1024  /* SQ entries per thread */
#define RING_BUF_COUNT 512   /* provided receive buffers per thread (power of two) */
#define RING_BUF_SIZE  16384 /* bytes per receive buffer */
#define RING_BGID      0     /* buffer group id */
#define RING_CQE_BATCH 256   /* completions handled per loop turn, so one turn stays short */
#define RING_GEN_MASK  0xffffffu

struct ring {
	struct io_uring uring;
	struct io_uring_buf_ring *br;
	uint8_t *bufs;
};

/* Sets up the ring and registers RING_BUF_COUNT buffers. Returns 0 or -errno. */
int ring_init(struct ring *r);
void ring_free(struct ring *r);

/* A free SQE; submits queued ones first when the SQ is full. Never NULL. */
struct io_uring_sqe *ring_sqe(struct ring *r);

/* Arms a multishot receive on fd using the provided buffers. */
void ring_recv(struct ring *r, int fd, uint64_t user_data);

/* The data of a completed receive, and giving its buffer back to the kernel. */
const uint8_t *ring_buf(const struct ring *r, unsigned bid);
void ring_buf_recycle(struct ring *r, unsigned bid);

/* Returns after at least one completion or timeout_ns; submits pending SQEs. */
void ring_wait(struct ring *r, uint64_t timeout_ns);

uint64_t ring_now_ns(void);

/* Parses "HOST:PORT" (IPv6 as "[::1]:25") into ss. Returns 0 or -EINVAL. */
int ring_parse_addr(const char *hostport, struct sockaddr_storage *ss, socklen_t *len);

static inline uint64_t
ring_ud(unsigned op, unsigned slot, unsigned gen)
{
	return ((uint64_t)op << 56) | ((uint64_t)(gen & RING_GEN_MASK) << 32) | slot;
}

static inline unsigned
ring_ud_op(uint64_t ud)
{
	return (unsigned)(ud >> 56);
}

static inline unsigned
ring_ud_gen(uint64_t ud)
{
	return (unsigned)(ud >> 32) & RING_GEN_MASK;
}

static inline unsigned
ring_ud_slot(uint64_t ud)
{
	return (unsigned)ud;
}

#endif
