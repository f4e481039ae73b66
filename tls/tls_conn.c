/*
 * tls_conn.c -- one TLS connection over two memory queues. wolfSSL's I/O callbacks
 * read the ciphertext the caller pushed and append what it writes to the output; an
 * empty input is WANT_READ, so wolfSSL never touches a socket or blocks.
 */
#include "tls/tls.h"

#include <assert.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tls/tls_internal.h"

#include <wolfssl/wolfcrypt/ecc.h>

#define TLS_BUF_MIN  4096 /* first allocation of a queue */
#define TLS_BUF_KEEP 0    /* an empty queue is given back: idle sessions hold no buffer */

static_assert(TLS_OUT_MAX > 4 * (TLS_RECORD_MAX + TLS_RECORD_OVERHEAD), "records fit the output");
static_assert(TLS_IN_MAX > TLS_RECORD_MAX + TLS_RECORD_OVERHEAD, "one whole record fits the input");

int
tls_global_init(void)
{
	if (wolfSSL_Init() != WOLFSSL_SUCCESS)
		return -1;
	wolfSSL_Debugging_OFF();
	return 0;
}

void
tls_global_free(void)
{
	wolfSSL_Cleanup();
}

void
tls_thread_free(void)
{
#ifdef FP_ECC
	wc_ecc_fp_free();
#endif
}

static size_t
buf_pending(const struct tls_buf *b)
{
	return b->len - b->off;
}

/* Appends n bytes, or -1 when that would pass b->max (or without memory). */
static int
buf_append(struct tls_buf *b, const uint8_t *p, size_t n)
{
	size_t pending = buf_pending(b);

	if (n > b->max - pending)
		return -1;
	if (b->len + n > b->cap && b->off > 0) {
		memmove(b->data, b->data + b->off, pending);
		b->off = 0;
		b->len = pending;
	}
	if (b->len + n > b->cap) {
		size_t cap = b->cap ? b->cap : TLS_BUF_MIN;
		uint8_t *data;

		while (cap < b->len + n)
			cap *= 2;
		if (cap > b->max)
			cap = b->max;
		data = realloc(b->data, cap);
		if (data == NULL)
			return -1;
		b->data = data;
		b->cap = cap;
	}
	memcpy(b->data + b->len, p, n);
	b->len += n;
	return 0;
}

static void
buf_consume(struct tls_buf *b, size_t n)
{
	assert(n <= buf_pending(b));
	b->off += n;
	if (b->off < b->len)
		return;
	b->off = b->len = 0;
	/* Idle connections are the common case: they should not hold 256 KB each. */
	if (b->cap > TLS_BUF_KEEP) {
		free(b->data);
		b->data = NULL;
		b->cap = 0;
	}
}

static int
conn_recv(WOLFSSL *ssl, char *buf, int sz, void *ctx)
{
	struct tls_conn *t = ctx;
	size_t n = buf_pending(&t->in);

	(void)ssl;
	if (n == 0)
		return WOLFSSL_CBIO_ERR_WANT_READ;
	if (n > (size_t)sz)
		n = (size_t)sz;
	memcpy(buf, t->in.data + t->in.off, n);
	buf_consume(&t->in, n);
	return (int)n;
}

static int
conn_send(WOLFSSL *ssl, char *buf, int sz, void *ctx)
{
	struct tls_conn *t = ctx;

	(void)ssl;
	/* tls_conn_write() leaves room for its records; only a full queue lands here. */
	if (buf_append(&t->out, (const uint8_t *)buf, (size_t)sz) != 0)
		return WOLFSSL_CBIO_ERR_WANT_WRITE;
	return sz;
}

int
tls_ctx_io(WOLFSSL_CTX *ctx)
{
	wolfSSL_CTX_SetIORecv(ctx, conn_recv);
	wolfSSL_CTX_SetIOSend(ctx, conn_send);
	return 0;
}

struct tls_conn *
tls_conn_new(WOLFSSL_CTX *ctx, bool is_server)
{
	struct tls_conn *t = calloc(1, sizeof(*t));

	if (t == NULL)
		return NULL;
	t->ssl = wolfSSL_new(ctx);
	if (t->ssl == NULL) {
		free(t);
		return NULL;
	}
	t->is_server = is_server;
	t->in.max = TLS_IN_MAX;
	t->out.max = TLS_OUT_MAX;
	wolfSSL_SSLSetIORecv(t->ssl, conn_recv);
	wolfSSL_SSLSetIOSend(t->ssl, conn_send);
	wolfSSL_SetIOReadCtx(t->ssl, t);
	wolfSSL_SetIOWriteCtx(t->ssl, t);
	return t;
}

WOLFSSL *
tls_conn_ssl(struct tls_conn *t)
{
	return t->ssl;
}

void
tls_conn_free(struct tls_conn *t)
{
	if (t == NULL)
		return;
	if (!t->is_server)
		tls_client_conn_free(t);
	wolfSSL_free(t->ssl);
	if (t->is_server)
		tls_server_release(t->server);
	free(t->in.data);
	free(t->out.data);
	free(t);
}

size_t
tls_conn_push(struct tls_conn *t, const uint8_t *in, size_t len)
{
	size_t room;

	assert(t);
	assert(in || len == 0);
	room = t->in.max - buf_pending(&t->in);
	if (len > room)
		len = room;
	if (len == 0 || buf_append(&t->in, in, len) != 0)
		return 0;
	return len;
}

void
tls_conn_set_error(struct tls_conn *t, const char *what, const char *why)
{
	t->failed = true;
	snprintf(t->error, sizeof(t->error), "%s: %s", what, why);
}

/* Names the failure: the alert the peer sent if it sent one, else wolfSSL's reason. */
static void
conn_fail(struct tls_conn *t, const char *what, int err)
{
	WOLFSSL_ALERT_HISTORY h;
	char why[TLS_ERROR_LEN];

	memset(&h, 0, sizeof(h));
	if (wolfSSL_get_alert_history(t->ssl, &h) == WOLFSSL_SUCCESS && h.last_rx.code > 0 &&
	    h.last_rx.level == alert_fatal)
		snprintf(why, sizeof(why), "peer sent alert %s",
		         wolfSSL_alert_desc_string_long(h.last_rx.code));
	else
		wolfSSL_ERR_error_string_n((unsigned long)err, why, sizeof(why));
	tls_conn_set_error(t, what, why);
}

/* What a wolfSSL call that did not succeed means for the caller. */
static enum tls_status
conn_status(struct tls_conn *t, int ret, const char *what)
{
	int err = wolfSSL_get_error(t->ssl, ret);

	switch (err) {
	case WOLFSSL_ERROR_WANT_READ:
	case WOLFSSL_ERROR_WANT_WRITE:
		return TLS_WANT;
	case WOLFSSL_ERROR_ZERO_RETURN:
		t->closed = true;
		return TLS_CLOSED;
	default:
		conn_fail(t, what, err);
		return TLS_ERROR;
	}
}

enum tls_status
tls_conn_handshake(struct tls_conn *t)
{
	const char *sni;
	int ret;

	assert(t);
	if (t->failed)
		return TLS_ERROR;
	if (t->established)
		return TLS_OK;
	ret = t->is_server ? wolfSSL_accept(t->ssl) : wolfSSL_connect(t->ssl);
	if (ret != WOLFSSL_SUCCESS) {
		enum tls_status st = conn_status(t, ret, "handshake");

		if (st == TLS_CLOSED) /* close_notify before the end: not a clean close */
			tls_conn_set_error(t, "handshake", "peer closed");
		return st == TLS_CLOSED ? TLS_ERROR : st;
	}
	t->resumed = wolfSSL_session_reused(t->ssl) == 1;
	if (t->is_server) {
		sni = wolfSSL_get_servername(t->ssl, WOLFSSL_SNI_HOST_NAME);
		snprintf(t->sni, sizeof(t->sni), "%s", sni ? sni : "");
	} else if (tls_client_established(t) != 0) {
		assert(t->failed);
		return TLS_ERROR;
	}
	t->established = true;
	return TLS_OK;
}

bool
tls_conn_established(const struct tls_conn *t)
{
	return t->established;
}

size_t
tls_conn_read(struct tls_conn *t, uint8_t *buf, size_t cap, enum tls_status *status)
{
	int n;

	assert(t);
	assert(buf);
	assert(status);
	/* wolfSSL_read would finish a handshake itself, skipping the client's checks. */
	if (!t->established) {
		*status = tls_conn_handshake(t);
		if (*status != TLS_OK)
			return 0;
	}
	if (t->failed || t->closed) {
		*status = t->failed ? TLS_ERROR : TLS_CLOSED;
		return 0;
	}
	n = wolfSSL_read(t->ssl, buf, cap > INT_MAX ? INT_MAX : (int)cap);
	/* a TLS 1.3 ticket read in this call is complete now: its session is cached */
	if (!t->is_server && !t->session_done)
		tls_client_save_session(t);
	if (n > 0) {
		*status = TLS_OK;
		return (size_t)n;
	}
	*status = conn_status(t, n, "read");
	return 0;
}

ssize_t
tls_conn_write(struct tls_conn *t, const uint8_t *p, size_t len)
{
	size_t done = 0;

	assert(t);
	assert(p || len == 0);
	if (t->failed || !t->established)
		return -1;
	/*
	 * One record at a time, each only when its ciphertext fits the output: wolfSSL
	 * would otherwise keep a record it could not send and want the same call again.
	 */
	while (done < len) {
		size_t room = t->out.max - buf_pending(&t->out);
		size_t chunk = len - done;
		int n;

		if (room <= TLS_RECORD_OVERHEAD)
			break;
		if (chunk > TLS_RECORD_MAX)
			chunk = TLS_RECORD_MAX;
		if (chunk > room - TLS_RECORD_OVERHEAD)
			chunk = room - TLS_RECORD_OVERHEAD;
		n = wolfSSL_write(t->ssl, p + done, (int)chunk);
		if (n <= 0) {
			if (conn_status(t, n, "write") == TLS_ERROR)
				return -1;
			break;
		}
		assert((size_t)n == chunk);
		done += (size_t)n;
	}
	return (ssize_t)done;
}

const uint8_t *
tls_conn_out(struct tls_conn *t, size_t *len)
{
	assert(t);
	assert(len);
	*len = buf_pending(&t->out);
	return *len ? t->out.data + t->out.off : NULL;
}

void
tls_conn_out_consume(struct tls_conn *t, size_t n)
{
	buf_consume(&t->out, n);
}

void
tls_conn_shutdown(struct tls_conn *t)
{
	assert(t);
	if (t->failed || !t->established)
		return;
	/* Returns "not done" until the peer's close_notify: that is not an error here. */
	wolfSSL_shutdown(t->ssl);
}

const char *
tls_conn_error(const struct tls_conn *t)
{
	return t->error;
}

const char *
tls_conn_version(const struct tls_conn *t)
{
	const char *v;

	if (!t->established)
		return "";
	v = wolfSSL_get_version(t->ssl);
	return v ? v : "";
}

const char *
tls_conn_cipher(const struct tls_conn *t)
{
	int suite;
	const char *name;

	if (!t->established)
		return "";
	/* wolfSSL_get_cipher_name gives wolfSSL's own names; logs want the IANA ones. */
	suite = wolfSSL_get_current_cipher_suite(t->ssl);
	name = wolfSSL_get_cipher_name_iana_from_suite((unsigned char)(suite >> 8),
	                                               (unsigned char)suite);
	return name ? name : "";
}

bool
tls_conn_resumed(const struct tls_conn *t)
{
	return t->resumed;
}

const char *
tls_conn_sni(const struct tls_conn *t)
{
	return t->sni;
}

enum tls_auth
tls_conn_auth(const struct tls_conn *t)
{
	return t->auth;
}

const char *
tls_auth_name(enum tls_auth a)
{
	switch (a) {
	case TLS_AUTH_ANONYMOUS:
		return "anonymous";
	case TLS_AUTH_TRUSTED:
		return "trusted";
	case TLS_AUTH_VERIFIED:
		return "verified";
	case TLS_AUTH_DANE:
		return "dane";
	}
	return "unknown";
}
