#include "bench/ring.h"

#include <assert.h>
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

static_assert((RING_BUF_COUNT & (RING_BUF_COUNT - 1)) == 0, "buffer ring size: power of two");

int
ring_init(struct ring *r)
{
	struct io_uring_buf_reg reg;
	size_t br_size = RING_BUF_COUNT * sizeof(struct io_uring_buf);
	int rc;
	unsigned i;

	assert(r);
	memset(r, 0, sizeof(*r));
	rc = io_uring_queue_init(RING_ENTRIES, &r->uring, 0);
	if (rc < 0)
		return rc;
	r->br = mmap(NULL, br_size, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
	if (r->br == MAP_FAILED) {
		rc = -errno;
		r->br = NULL;
		goto fail;
	}
	r->bufs = malloc((size_t)RING_BUF_COUNT * RING_BUF_SIZE);
	if (!r->bufs) {
		rc = -ENOMEM;
		goto fail;
	}
	io_uring_buf_ring_init(r->br);
	memset(&reg, 0, sizeof(reg));
	reg.ring_addr = (uint64_t)(uintptr_t)r->br;
	reg.ring_entries = RING_BUF_COUNT;
	reg.bgid = RING_BGID;
	rc = io_uring_register_buf_ring(&r->uring, &reg, 0);
	if (rc < 0)
		goto fail;
	for (i = 0; i < RING_BUF_COUNT; i++)
		io_uring_buf_ring_add(r->br, r->bufs + (size_t)i * RING_BUF_SIZE, RING_BUF_SIZE,
		                      (unsigned short)i, io_uring_buf_ring_mask(RING_BUF_COUNT),
		                      (int)i);
	io_uring_buf_ring_advance(r->br, RING_BUF_COUNT);
	return 0;
fail:
	ring_free(r);
	return rc;
}

void
ring_free(struct ring *r)
{
	assert(r);
	io_uring_queue_exit(&r->uring);
	if (r->br)
		munmap(r->br, RING_BUF_COUNT * sizeof(struct io_uring_buf));
	free(r->bufs);
	r->br = NULL;
	r->bufs = NULL;
}

struct io_uring_sqe *
ring_sqe(struct ring *r)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&r->uring);

	if (!sqe) {
		io_uring_submit(&r->uring);
		sqe = io_uring_get_sqe(&r->uring);
	}
	assert(sqe);
	return sqe;
}

void
ring_recv(struct ring *r, int fd, uint64_t user_data)
{
	struct io_uring_sqe *sqe = ring_sqe(r);

	io_uring_prep_recv_multishot(sqe, fd, NULL, 0, 0);
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = RING_BGID;
	io_uring_sqe_set_data64(sqe, user_data);
}

const uint8_t *
ring_buf(const struct ring *r, unsigned bid)
{
	assert(bid < RING_BUF_COUNT);
	return r->bufs + (size_t)bid * RING_BUF_SIZE;
}

void
ring_buf_recycle(struct ring *r, unsigned bid)
{
	assert(bid < RING_BUF_COUNT);
	io_uring_buf_ring_add(r->br, r->bufs + (size_t)bid * RING_BUF_SIZE, RING_BUF_SIZE,
	                      (unsigned short)bid, io_uring_buf_ring_mask(RING_BUF_COUNT), 0);
	io_uring_buf_ring_advance(r->br, 1);
}

void
ring_wait(struct ring *r, uint64_t timeout_ns)
{
	struct __kernel_timespec ts = {
	    .tv_sec = (long long)(timeout_ns / 1000000000u),
	    .tv_nsec = (long long)(timeout_ns % 1000000000u),
	};
	struct io_uring_cqe *cqe;

	io_uring_submit_and_wait_timeout(&r->uring, &cqe, 1, &ts, NULL);
}

uint64_t
ring_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

int
ring_parse_addr(const char *hostport, struct sockaddr_storage *ss, socklen_t *len)
{
	char host[256];
	const char *colon = strrchr(hostport, ':');
	const char *h = hostport;
	size_t hl;
	struct addrinfo hints, *res = NULL;

	if (!colon || colon[1] == '\0')
		return -EINVAL;
	hl = (size_t)(colon - hostport);
	if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') {
		h++;
		hl -= 2;
	}
	if (hl == 0 || hl >= sizeof(host))
		return -EINVAL;
	memcpy(host, h, hl);
	host[hl] = '\0';
	memset(&hints, 0, sizeof(hints));
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_NUMERICSERV;
	if (getaddrinfo(host, colon + 1, &hints, &res) != 0 || !res)
		return -EINVAL;
	memcpy(ss, res->ai_addr, res->ai_addrlen);
	*len = res->ai_addrlen;
	freeaddrinfo(res);
	return 0;
}
