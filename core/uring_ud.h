/*
 * uring_ud.h -- what a worker's io_uring completions carry: the operation and the
 * slot it belongs to, packed into user_data, and the one way to get an SQE.
 * Shared by the loop (worker.c) and the modules that submit on its ring
 * (transport.c, store.c).
 */
#ifndef RINGMX_CORE_URING_UD_H
#define RINGMX_CORE_URING_UD_H

#include <assert.h>
#include <liburing.h>
#include <stdint.h>

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

/* An SQE; when the ring is full, what is queued goes to the kernel first to make room. */
static inline struct io_uring_sqe *
ring_sqe(struct io_uring *ring)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(ring);

	if (sqe == NULL) {
		io_uring_submit(ring);
		sqe = io_uring_get_sqe(ring);
	}
	assert(sqe != NULL);
	return sqe;
}

#endif
