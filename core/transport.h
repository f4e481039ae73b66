/*
 * transport.h -- the bytes between a worker's ring and a protocol engine, for
 * inbound and outbound connections alike: receive completions become plaintext
 * for the engine, the engine's output becomes sends. Plaintext and TLS are two
 * modes of one transport; a connection switches to TLS once (STARTTLS, or at
 * connect for implicit TLS), and wolfSSL only ever sees memory (tls/tls.h).
 *
 * The transport submits its own receives and sends; it owns no slot and frees
 * nothing: its owner (an inbound or outbound connection) keeps the slot until
 * transport_idle() says no operation names it.
 */
#ifndef RINGMX_CORE_TRANSPORT_H
#define RINGMX_CORE_TRANSPORT_H

#include <liburing.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "core/uring_ud.h"
#include "tls/tls.h"

#define TRANSPORT_BUF_COUNT 512   /* provided receive buffers per worker (power of two) */
#define TRANSPORT_BUF_SIZE  16384 /* one receive */
#define TRANSPORT_BUF_GROUP 1
#define TRANSPORT_OUT_CAP   8192        /* plaintext copied for one send */
#define TRANSPORT_IOV_MAX   64          /* caller's iovecs in one zero-copy send */
#define TRANSPORT_TLS_SEND  (32 * 1024) /* ciphertext copied out for one send */

static_assert((TRANSPORT_BUF_COUNT & (TRANSPORT_BUF_COUNT - 1)) == 0,
              "buffer ring size is a power of two");

/* A worker's ring, its provided receive buffers and the scratch TLS decrypts into. */
struct transport_ring {
	struct io_uring ring;
	struct io_uring_buf_ring *buf_ring;
	uint8_t *bufs;
	uint8_t plain[TRANSPORT_BUF_SIZE];
};

/* 0, or -errno with err filled (the reason names what the kernel lacks). */
int transport_ring_setup(struct transport_ring *r, unsigned entries, char *err, size_t err_len);
void transport_ring_free(struct transport_ring *r);

/* A buffer of a receive completion, and giving it back to the kernel. */
const uint8_t *transport_buffer(const struct transport_ring *r, unsigned bid);
void transport_return_buffer(struct transport_ring *r, unsigned bid);

enum transport_send_kind {
	TRANSPORT_SEND_NONE,
	TRANSPORT_SEND_COPY, /* out[out_sent, out_len) */
	TRANSPORT_SEND_IOV,  /* the caller's iovecs: reported back as sent plaintext */
	TRANSPORT_SEND_TLS,  /* cipher[cipher_sent, cipher_len): ciphertext taken from TLS */
};

struct transport {
	int fd; /* -1: none */
	uint32_t gen, slot;
	enum worker_op recv_op, send_op;
	bool recv_armed, recv_paused;
	enum transport_send_kind sending;
	unsigned inflight; /* submitted operations that still name this transport */

	uint8_t *out; /* TRANSPORT_OUT_CAP, allocated on first use */
	size_t out_len, out_sent;
	struct iovec iov[TRANSPORT_IOV_MAX];
	struct msghdr mh;

	/* TLS output moves as wolfSSL adds to it: what is in flight is a copy, freed once sent */
	uint8_t *cipher;
	size_t cipher_len, cipher_sent;
	struct tls_conn *tls; /* NULL: plaintext */
	bool handshaking;
	bool notified;     /* close_notify queued */
	const char *error; /* why the transport failed, for one log line */
};

/* What the owner does with what the transport brings in. */
struct transport_events {
	void (*secured)(void *owner);                                 /* handshake done */
	void (*input)(void *owner, const uint8_t *plain, size_t len); /* engine food */
	bool (*gone)(void *owner); /* true once the owner closed: stop delivering */
};

/* A fresh transport on fd; operations of an earlier socket of the same slot stay counted. */
void transport_init(struct transport *t, int fd, uint32_t gen, uint32_t slot,
                    enum worker_op recv_op, enum worker_op send_op);

/* Frees TLS state and buffers; the fd is the owner's to close. No operation may be pending. */
void transport_reset(struct transport *t);

/*
 * Closes the socket (its pending receive ends, so its last completion comes back).
 * SQEs still queued for it go to the kernel first: submitted later, they would name
 * whatever socket takes the fd number next (an alert sent into another session).
 */
void transport_close(struct transport_ring *r, struct transport *t);

/* Multishot receive into the provided buffers, unless armed, paused or closed. */
void transport_arm_recv(struct transport_ring *r, struct transport *t);

/* Stops receiving (the peer waits in its socket buffer), or starts again. */
void transport_pause_recv(struct transport_ring *r, struct transport *t);
void transport_resume_recv(struct transport_ring *r, struct transport *t);

/*
 * A receive completion: the buffer goes back to the kernel, its bytes (decrypted
 * under TLS) to ev->input; a finished handshake to ev->secured first. False when
 * the peer closed, the socket failed or TLS failed (t->error says why). The owner
 * counts the operation as done when IORING_CQE_F_MORE is clear.
 */
bool transport_on_recv(struct transport_ring *r, struct transport *t, int res, unsigned flags,
                       const struct transport_events *ev, void *owner);

/* True while a send is in flight: the owner queues nothing until it completes. */
bool transport_busy(const struct transport *t);
bool transport_pending(const struct transport *t); /* bytes queued, not yet sent */

/*
 * Takes plaintext to send: copied (or encrypted under TLS) now, so the caller's
 * buffer is free at return. Returns the bytes taken (fewer when the buffer is full).
 */
size_t transport_write(struct transport *t, const uint8_t *p, size_t len);

/* Submits a send of what transport_write() queued, when there is some and none is busy. */
void transport_flush(struct transport_ring *r, struct transport *t);

/*
 * Plaintext only: sends the caller's iovecs as they are (zero copy); they stay valid
 * until transport_on_send() reports the bytes sent.
 */
void transport_sendv(struct transport_ring *r, struct transport *t, const struct iovec *iov,
                     unsigned n);

/*
 * A send completion: the rest of a short copy or TLS send goes out again. Returns
 * the plaintext bytes of a zero-copy send that went out (0 for other sends), or a
 * negative errno when the socket failed.
 */
ssize_t transport_on_send(struct transport_ring *r, struct transport *t, int res);

/*
 * Switches to TLS with tls (owned from now on): bytes queued before are sent as
 * they are, everything after is TLS. A client starts its handshake at once.
 */
void transport_start_tls(struct transport_ring *r, struct transport *t, struct tls_conn *tls);

/* "192.0.2.1" (v4-mapped shown as IPv4), or with the port: "192.0.2.1:25", "[2001:db8::1]:25" */
void transport_addr_text(const struct sockaddr_storage *ss, bool with_port, char *buf, size_t cap);

/*
 * Before a graceful close: queues TLS close_notify once and sends it. True while it
 * is still to go out (the owner closes when the send completes), false when there is
 * nothing to wait for (plaintext, a failed handshake, or already sent).
 */
bool transport_close_notify(struct transport_ring *r, struct transport *t);

/* TLS established: "TLSv1.3/TLS_AES_128_GCM_SHA256" into buf; "" without TLS. */
void transport_tls_text(const struct transport *t, char *buf, size_t cap);

#endif
