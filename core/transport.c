#include "core/transport.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

/* ---- the ring and its buffers ---------------------------------------------------- */

int
transport_ring_setup(struct transport_ring *r, unsigned entries, char *err, size_t err_len)
{
	struct io_uring_params p = {.flags = IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN};
	int rc = io_uring_queue_init_params(entries, &r->ring, &p);

	if (rc < 0) {
		snprintf(err, err_len, "io_uring_queue_init: %s", strerror(-rc));
		return rc;
	}
	r->bufs = aligned_alloc(4096, (size_t)TRANSPORT_BUF_COUNT * TRANSPORT_BUF_SIZE);
	size_t ring_size = TRANSPORT_BUF_COUNT * sizeof(struct io_uring_buf);
	r->buf_ring =
	    mmap(NULL, ring_size, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
	if (r->buf_ring == MAP_FAILED || r->bufs == NULL) {
		if (r->buf_ring == MAP_FAILED)
			r->buf_ring = NULL;
		snprintf(err, err_len, "receive buffers: out of memory");
		return -ENOMEM;
	}
	struct io_uring_buf_reg reg = {
	    .ring_addr = (uint64_t)(uintptr_t)r->buf_ring,
	    .ring_entries = TRANSPORT_BUF_COUNT,
	    .bgid = TRANSPORT_BUF_GROUP,
	};
	rc = io_uring_register_buf_ring(&r->ring, &reg, 0);
	if (rc < 0) {
		snprintf(err, err_len, "io_uring_register_buf_ring: %s (ringmx needs Linux >= 6.1)",
		         strerror(-rc));
		return rc;
	}
	io_uring_buf_ring_init(r->buf_ring);
	for (unsigned i = 0; i < TRANSPORT_BUF_COUNT; i++)
		io_uring_buf_ring_add(r->buf_ring, r->bufs + (size_t)i * TRANSPORT_BUF_SIZE,
		                      TRANSPORT_BUF_SIZE, (unsigned short)i,
		                      io_uring_buf_ring_mask(TRANSPORT_BUF_COUNT), (int)i);
	io_uring_buf_ring_advance(r->buf_ring, TRANSPORT_BUF_COUNT);
	return 0;
}

void
transport_ring_free(struct transport_ring *r)
{
	if (r->ring.ring_fd > 0)
		io_uring_queue_exit(&r->ring);
	if (r->buf_ring != NULL)
		munmap(r->buf_ring, TRANSPORT_BUF_COUNT * sizeof(struct io_uring_buf));
	free(r->bufs);
}

const uint8_t *
transport_buffer(const struct transport_ring *r, unsigned bid)
{
	return r->bufs + (size_t)bid * TRANSPORT_BUF_SIZE;
}

void
transport_return_buffer(struct transport_ring *r, unsigned bid)
{
	io_uring_buf_ring_add(r->buf_ring, r->bufs + (size_t)bid * TRANSPORT_BUF_SIZE,
	                      TRANSPORT_BUF_SIZE, (unsigned short)bid,
	                      io_uring_buf_ring_mask(TRANSPORT_BUF_COUNT), 0);
	io_uring_buf_ring_advance(r->buf_ring, 1);
}

/* ---- life ------------------------------------------------------------------------ */

void
transport_init(struct transport *t, int fd, uint32_t gen, uint32_t slot, enum worker_op recv_op,
               enum worker_op send_op)
{
	assert(t->tls == NULL);
	/* the buffers, and the operations of an earlier socket of the slot, carry over: a send of
	 * that socket may still read them */
	*t = (struct transport){
	    .fd = fd,
	    .gen = gen,
	    .slot = slot,
	    .recv_op = recv_op,
	    .send_op = send_op,
	    .inflight = t->inflight,
	    .out = t->out,
	    .cipher = t->cipher,
	};
}

void
transport_reset(struct transport *t)
{
	assert(t->inflight == 0);
	tls_conn_free(t->tls);
	free(t->cipher);
	free(t->out);
	*t = (struct transport){.fd = -1};
}

void
transport_close(struct transport_ring *r, struct transport *t)
{
	if (t->fd < 0)
		return;
	if (io_uring_sq_ready(&r->ring) > 0)
		io_uring_submit(&r->ring);
	shutdown(t->fd, SHUT_RDWR);
	close(t->fd);
	t->fd = -1;
}

/* ---- receiving ------------------------------------------------------------------- */

void
transport_arm_recv(struct transport_ring *r, struct transport *t)
{
	if (t->recv_armed || t->recv_paused || t->fd < 0)
		return;
	struct io_uring_sqe *sqe = ring_sqe(&r->ring);
	io_uring_prep_recv_multishot(sqe, t->fd, NULL, 0, 0);
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = TRANSPORT_BUF_GROUP;
	io_uring_sqe_set_data64(sqe, ud_pack(t->recv_op, t->gen, t->slot));
	t->recv_armed = true;
	t->inflight++;
}

void
transport_pause_recv(struct transport_ring *r, struct transport *t)
{
	if (t->recv_paused)
		return;
	t->recv_paused = true;
	if (!t->recv_armed)
		return;
	struct io_uring_sqe *sqe = ring_sqe(&r->ring);
	io_uring_prep_cancel64(sqe, ud_pack(t->recv_op, t->gen, t->slot), 0);
	io_uring_sqe_set_data64(sqe, ud_pack(OP_CANCEL, 0, 0));
}

void
transport_resume_recv(struct transport_ring *r, struct transport *t)
{
	if (!t->recv_paused)
		return;
	t->recv_paused = false;
	transport_arm_recv(r, t);
}

/* Plaintext out of the TLS connection, to the owner, until it has none or the owner went. */
static bool
transport_tls_deliver(struct transport_ring *r, struct transport *t,
                      const struct transport_events *ev, void *owner)
{
	for (;;) {
		enum tls_status st;
		size_t n = tls_conn_read(t->tls, r->plain, sizeof(r->plain), &st);
		if (n > 0) {
			ev->input(owner, r->plain, n);
			if (ev->gone(owner))
				return true;
			continue;
		}
		if (st == TLS_WANT)
			return true;
		t->error = st == TLS_CLOSED ? "TLS close_notify" : tls_conn_error(t->tls);
		return false;
	}
}

/* Ciphertext in: the handshake goes on, then plaintext goes to the owner. */
static bool
transport_tls_input(struct transport_ring *r, struct transport *t, const uint8_t *in, size_t len,
                    const struct transport_events *ev, void *owner)
{
	if (tls_conn_push(t->tls, in, len) < len) {
		/* bounded: a peer that sends this far ahead of the handshake is not talking TLS */
		t->error = "TLS input over its limit";
		return false;
	}
	if (t->handshaking) {
		enum tls_status st = tls_conn_handshake(t->tls);
		transport_flush(r, t);
		if (st == TLS_ERROR) {
			t->error = tls_conn_error(t->tls);
			return false;
		}
		if (st != TLS_OK)
			return true;
		t->handshaking = false;
		ev->secured(owner);
		if (ev->gone(owner))
			return true;
	}
	return transport_tls_deliver(r, t, ev, owner);
}

bool
transport_on_recv(struct transport_ring *r, struct transport *t, int res, unsigned flags,
                  const struct transport_events *ev, void *owner)
{
	bool ok = true;

	if (flags & IORING_CQE_F_BUFFER) {
		unsigned bid = flags >> IORING_CQE_BUFFER_SHIFT;
		if (res > 0 && !ev->gone(owner)) {
			const uint8_t *in = transport_buffer(r, bid);
			if (t->tls == NULL)
				ev->input(owner, in, (size_t)res);
			else
				ok = transport_tls_input(r, t, in, (size_t)res, ev, owner);
		}
		transport_return_buffer(r, bid);
	}
	if (flags & IORING_CQE_F_MORE)
		return ok;
	if (ev->gone(owner))
		return true; /* closed, or the owner's transport now belongs to another socket */
	t->recv_armed = false;
	if (!ok)
		return false;
	if (res == 0 || (res < 0 && res != -ENOBUFS && res != -ECANCELED)) {
		t->error = res == 0 ? "connection closed by peer" : strerror(-res);
		return false;
	}
	transport_arm_recv(r, t); /* out of buffers, or un-paused before the cancel */
	return true;
}

/* ---- sending --------------------------------------------------------------------- */

bool
transport_busy(const struct transport *t)
{
	return t->sending != TRANSPORT_SEND_NONE;
}

bool
transport_pending(const struct transport *t)
{
	size_t n = 0;

	if (t->tls != NULL)
		tls_conn_out(t->tls, &n);
	return t->out_sent < t->out_len || t->cipher_sent < t->cipher_len || n > 0 ||
	       transport_busy(t);
}

size_t
transport_write(struct transport *t, const uint8_t *p, size_t len)
{
	if (t->tls != NULL) {
		/* plaintext waits while the handshake runs and the bytes before it go out */
		if (t->handshaking || t->out_sent < t->out_len)
			return 0;
		ssize_t n = tls_conn_write(t->tls, p, len);
		return n > 0 ? (size_t)n : 0;
	}
	if (t->out == NULL && (t->out = malloc(TRANSPORT_OUT_CAP)) == NULL)
		return 0;
	if (t->out_sent == t->out_len && t->sending == TRANSPORT_SEND_NONE)
		t->out_len = t->out_sent = 0;
	if (len > TRANSPORT_OUT_CAP - t->out_len)
		len = TRANSPORT_OUT_CAP - t->out_len;
	memcpy(t->out + t->out_len, p, len);
	t->out_len += len;
	return len;
}

static void
transport_submit(struct transport_ring *r, struct transport *t, const void *p, size_t len,
                 enum transport_send_kind kind)
{
	struct io_uring_sqe *sqe = ring_sqe(&r->ring);

	if (kind == TRANSPORT_SEND_IOV)
		io_uring_prep_sendmsg(sqe, t->fd, &t->mh, MSG_NOSIGNAL);
	else
		io_uring_prep_send(sqe, t->fd, p, len, MSG_NOSIGNAL);
	io_uring_sqe_set_data64(sqe, ud_pack(t->send_op, t->gen, t->slot));
	t->sending = kind;
	t->inflight++;
}

void
transport_flush(struct transport_ring *r, struct transport *t)
{
	size_t n;

	if (t->fd < 0 || transport_busy(t))
		return;
	/* plaintext queued before STARTTLS (its 220) goes first, as it is */
	if (t->out_sent < t->out_len) {
		transport_submit(r, t, t->out + t->out_sent, t->out_len - t->out_sent,
		                 TRANSPORT_SEND_COPY);
		return;
	}
	if (t->tls == NULL)
		return;
	if (t->cipher_sent < t->cipher_len) {
		transport_submit(r, t, t->cipher + t->cipher_sent, t->cipher_len - t->cipher_sent,
		                 TRANSPORT_SEND_TLS);
		return;
	}
	const uint8_t *p = tls_conn_out(t->tls, &n);
	if (n == 0)
		return;
	if (t->cipher == NULL && (t->cipher = malloc(TRANSPORT_TLS_SEND)) == NULL)
		return; /* tried again at the next flush */
	t->cipher_len = n < TRANSPORT_TLS_SEND ? n : TRANSPORT_TLS_SEND;
	t->cipher_sent = 0;
	memcpy(t->cipher, p, t->cipher_len);
	tls_conn_out_consume(t->tls, t->cipher_len);
	transport_submit(r, t, t->cipher, t->cipher_len, TRANSPORT_SEND_TLS);
}

void
transport_sendv(struct transport_ring *r, struct transport *t, const struct iovec *iov, unsigned n)
{
	assert(t->tls == NULL);
	assert(!transport_busy(t));
	assert(n <= TRANSPORT_IOV_MAX);
	memcpy(t->iov, iov, n * sizeof(*iov));
	t->mh = (struct msghdr){.msg_iov = t->iov, .msg_iovlen = n};
	transport_submit(r, t, NULL, 0, TRANSPORT_SEND_IOV);
}

ssize_t
transport_on_send(struct transport_ring *r, struct transport *t, int res)
{
	enum transport_send_kind kind = t->sending;

	assert(kind != TRANSPORT_SEND_NONE);
	t->sending = TRANSPORT_SEND_NONE;
	if (res < 0)
		return res;
	switch (kind) {
	case TRANSPORT_SEND_IOV:
		return res;
	case TRANSPORT_SEND_COPY:
		t->out_sent += (size_t)res;
		break;
	case TRANSPORT_SEND_TLS:
		t->cipher_sent += (size_t)res;
		if (t->cipher_sent == t->cipher_len) {
			/* idle TLS sessions are the common case: they keep no send buffer */
			free(t->cipher);
			t->cipher = NULL;
			t->cipher_len = t->cipher_sent = 0;
		}
		break;
	case TRANSPORT_SEND_NONE:
		break;
	}
	transport_flush(r, t);
	return 0;
}

/* ---- TLS ------------------------------------------------------------------------- */

void
transport_start_tls(struct transport_ring *r, struct transport *t, struct tls_conn *tls)
{
	assert(t->tls == NULL);
	t->tls = tls;
	t->handshaking = true;
	/* a client speaks first (ClientHello); a server's first call just waits for it */
	if (tls_conn_handshake(tls) == TLS_ERROR)
		t->error = tls_conn_error(tls);
	transport_flush(r, t);
}

bool
transport_close_notify(struct transport_ring *r, struct transport *t)
{
	if (t->tls == NULL || t->handshaking || t->notified || t->fd < 0)
		return false;
	t->notified = true;
	tls_conn_shutdown(t->tls);
	transport_flush(r, t);
	return transport_pending(t);
}

void
transport_tls_text(const struct transport *t, char *buf, size_t cap)
{
	if (t->tls == NULL || t->handshaking)
		snprintf(buf, cap, "%s", "");
	else
		snprintf(buf, cap, "%s/%s", tls_conn_version(t->tls), tls_conn_cipher(t->tls));
}

void
transport_addr_text(const struct sockaddr_storage *ss, bool with_port, char *buf, size_t cap)
{
	char a[INET6_ADDRSTRLEN];
	bool v6 = ss->ss_family == AF_INET6;
	const void *p = v6 ? (const void *)&((const struct sockaddr_in6 *)ss)->sin6_addr
	                   : (const void *)&((const struct sockaddr_in *)ss)->sin_addr;
	uint16_t port = ntohs(v6 ? ((const struct sockaddr_in6 *)ss)->sin6_port
	                         : ((const struct sockaddr_in *)ss)->sin_port);

	if (inet_ntop(ss->ss_family, p, a, sizeof(a)) == NULL)
		snprintf(a, sizeof(a), "unknown");
	/* v4-mapped peers on a dual-stack socket are shown as plain IPv4 */
	if (strncmp(a, "::ffff:", 7) == 0 && strchr(a, '.') != NULL) {
		memmove(a, a + 7, strlen(a + 7) + 1);
		v6 = false;
	}
	if (!with_port)
		snprintf(buf, cap, "%s", a);
	else
		snprintf(buf, cap, v6 ? "[%s]:%u" : "%s:%u", a, port);
}
