/*
 * tls_internal.h -- what the files of tls/ share: the connection and context structs.
 * Only the files of tls/ and the unit test (which reaches the WOLFSSL object to force TLS 1.2 or
 * start a renegotiation) include it; everyone else sees tls.h.
 */
#ifndef RINGMX_TLS_TLS_INTERNAL_H
#define RINGMX_TLS_TLS_INTERNAL_H

#include "tls/tls.h"

#include <wolfssl/options.h>

#include <wolfssl/ssl.h>

#define TLS_RECORD_MAX      16384 /* plaintext bytes per record (RFC 8446 §5.1) */
#define TLS_RECORD_OVERHEAD 64    /* header, nonce, tag, content type: never more */
#define TLS_FINGERPRINT_LEN 32    /* SHA-256 of what a cached session was checked against */

/* A bounded byte queue: bytes live in [off, len); grows by doubling up to max. */
struct tls_buf {
	uint8_t *data;
	size_t off, len, cap, max;
};

struct tls_conn {
	WOLFSSL *ssl;
	struct tls_buf in, out;
	bool is_server, established, closed, failed;
	bool resumed;
	enum tls_auth auth;
	char error[TLS_ERROR_LEN];
	char sni[TLS_NAME_LEN];

	struct tls_server *server; /* server side: holds a reference */

	/* client side */
	struct tls_client *client;
	enum tls_verify verify;
	char server_name[TLS_NAME_LEN];
	char session_key[TLS_NAME_LEN];
	uint8_t fingerprint[TLS_FINGERPRINT_LEN];
	struct tls_dane_record *dane; /* copy, dane_count records */
	unsigned dane_count;
	int chain_error;     /* first chain verification error seen (0: none) */
	bool chain_seen;     /* the verify callback ran, so chain_error means something */
	bool session_done;   /* a session with a ticket was saved for session_key */
	const void *offered; /* the cached session offered, to forget if the handshake fails */
};

/* tls_conn.c */
struct tls_conn *tls_conn_new(WOLFSSL_CTX *ctx, bool is_server);
void tls_conn_set_error(struct tls_conn *t, const char *what, const char *why);
int tls_ctx_io(WOLFSSL_CTX *ctx);
WOLFSSL *tls_conn_ssl(struct tls_conn *t);

/* tls_server.c: loads a certificate/key pair into ctx; 0, or -1 with err filled. */
int tls_ctx_load_pair(WOLFSSL_CTX *ctx, const char *certificate, const char *key, char *err,
                      size_t err_len);
bool tls_ctx_key_matches(WOLFSSL_CTX *ctx);
/* Settings both sides share: versions, suites, groups, I/O callbacks; 0 or -1. */
int tls_ctx_common(WOLFSSL_CTX *ctx);
void tls_server_release(struct tls_server *s);

/* tls_client.c: after the client handshake, the authentication asked for; 0 or -1. */
int tls_client_established(struct tls_conn *t);
void tls_client_conn_free(struct tls_conn *t);
void tls_client_save_session(struct tls_conn *t);

/*
 * dane.c: checks the peer chain of a finished client handshake against t->dane (0 and
 * t->auth set, or -1 with the reason in t->error), and decides the chain/name result.
 */
int tls_dane_check(struct tls_conn *t);
bool tls_name_matches(WOLFSSL_X509 *x, const char *name);
WOLFSSL_X509 *tls_peer_leaf(struct tls_conn *t);

#endif
