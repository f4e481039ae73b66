/*
 * tls_client.c -- the client context of one worker: SNI, the CA bundle for `verify`,
 * and a bounded cache of sessions (tickets) keyed by next hop.
 *
 * A cached session is offered only to a connection checked the same way (verify mode,
 * server name, TLSA records: the fingerprint), and a resumed connection inherits the
 * authentication of the handshake that made the session: resuming proves the peer
 * holds that session's secret, and no certificate is sent again.
 */
#include "tls/tls.h"

#include <arpa/inet.h>
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tls/tls_internal.h"

#include <wolfssl/wolfcrypt/sha256.h>

#define TLS_SESSION_CACHE_MAX 65536 /* next hops remembered per worker, whatever asked */

struct session_entry {
	char key[TLS_NAME_LEN];
	uint8_t fingerprint[TLS_FINGERPRINT_LEN];
	enum tls_auth auth;
	WOLFSSL_SESSION *session; /* NULL: a free slot */
	uint64_t used;            /* for least-recently-used eviction */
};

struct tls_client {
	unsigned refs; /* the owner, plus one per connection; all on one thread */
	WOLFSSL_CTX *ctx;
	bool ca_loaded;
	unsigned cache_max;
	uint64_t clock;
	struct session_entry *cache;
};

struct tls_client *
tls_client_new(const char *ca_file, unsigned session_cache_max, char *err, size_t err_len)
{
	struct tls_client *c = calloc(1, sizeof(*c));

	if (err_len)
		err[0] = '\0';
	if (session_cache_max > TLS_SESSION_CACHE_MAX)
		session_cache_max = TLS_SESSION_CACHE_MAX;
	if (c == NULL)
		goto nomem;
	c->refs = 1;
	c->cache_max = session_cache_max;
	c->cache = calloc(session_cache_max ? session_cache_max : 1, sizeof(*c->cache));
	c->ctx = wolfSSL_CTX_new(wolfSSLv23_client_method());
	if (c->cache == NULL || c->ctx == NULL)
		goto nomem;
	if (tls_ctx_common(c->ctx) != 0 ||
	    wolfSSL_CTX_UseSessionTicket(c->ctx) != WOLFSSL_SUCCESS) {
		snprintf(err, err_len, "tls: cannot set up a wolfSSL context");
		goto fail;
	}
	/* A bundle with one certificate wolfSSL cannot parse still loads the others. */
	if (ca_file != NULL &&
	    wolfSSL_CTX_load_verify_locations_ex(c->ctx, ca_file, NULL,
	                                         WOLFSSL_LOAD_FLAG_IGNORE_ERR) == WOLFSSL_SUCCESS)
		c->ca_loaded = true;
	else if (ca_file != NULL)
		snprintf(err, err_len, "tls.ca_file %s: no CA certificate loaded, verify will fail",
		         ca_file);
	return c;
nomem:
	snprintf(err, err_len, "out of memory");
fail:
	if (c) {
		wolfSSL_CTX_free(c->ctx);
		free(c->cache);
		free(c);
	}
	return NULL;
}

static void
client_release(struct tls_client *c)
{
	assert(c->refs > 0);
	if (--c->refs > 0)
		return;
	for (unsigned i = 0; i < c->cache_max; i++)
		wolfSSL_SESSION_free(c->cache[i].session);
	free(c->cache);
	wolfSSL_CTX_free(c->ctx);
	free(c);
}

void
tls_client_free(struct tls_client *c)
{
	if (c != NULL)
		client_release(c);
}

/* What the peer was checked against; a session is resumed only under the same. */
static void
client_fingerprint(struct tls_conn *t)
{
	wc_Sha256 h;
	uint8_t v = (uint8_t)t->verify;

	wc_InitSha256(&h);
	wc_Sha256Update(&h, &v, 1);
	wc_Sha256Update(&h, (const byte *)t->server_name, (word32)strlen(t->server_name) + 1);
	for (unsigned i = 0; i < t->dane_count; i++) {
		const struct tls_dane_record *r = &t->dane[i];
		uint8_t head[5] = {r->usage, r->selector, r->mtype, (uint8_t)(r->len >> 8),
		                   (uint8_t)r->len};

		wc_Sha256Update(&h, head, sizeof(head));
		wc_Sha256Update(&h, r->data, r->len);
	}
	wc_Sha256Final(&h, t->fingerprint);
	wc_Sha256Free(&h);
}

static struct session_entry *
client_lookup(struct tls_client *c, const char *key)
{
	for (unsigned i = 0; i < c->cache_max; i++)
		if (c->cache[i].session && strcmp(c->cache[i].key, key) == 0)
			return &c->cache[i];
	return NULL;
}

/* The entry for key, else a free slot, else the least recently used one. */
static struct session_entry *
client_slot(struct tls_client *c, const char *key)
{
	struct session_entry *e = client_lookup(c, key);

	if (e != NULL)
		return e;
	e = &c->cache[0];
	for (unsigned i = 0; i < c->cache_max; i++) {
		if (c->cache[i].session == NULL)
			return &c->cache[i];
		if (c->cache[i].used < e->used)
			e = &c->cache[i];
	}
	return e;
}

/* The verify callback accepts every chain, and notes what wolfSSL thought of it. */
static int
client_verify(int preverify, WOLFSSL_X509_STORE_CTX *store)
{
	struct tls_conn *t = store->userCtx;

	assert(t);
	t->chain_seen = true;
	if (!preverify && t->chain_error == 0)
		t->chain_error = store->error ? store->error : -1;
	return 1;
}

static int
client_params(struct tls_conn *t, const struct tls_client_params *p)
{
	unsigned char ip[16];

	t->verify = p->verify;
	snprintf(t->server_name, sizeof(t->server_name), "%s",
	         p->server_name ? p->server_name : "");
	snprintf(t->session_key, sizeof(t->session_key), "%s",
	         p->session_key ? p->session_key : "");
	t->dane_count = p->dane_count > TLS_DANE_MAX ? TLS_DANE_MAX : p->dane_count;
	if (t->dane_count) {
		t->dane = malloc(t->dane_count * sizeof(*t->dane));
		if (t->dane == NULL)
			return -1;
		memcpy(t->dane, p->dane, t->dane_count * sizeof(*t->dane));
	}
	/* SNI carries host names only (RFC 6066 §3), never an address literal. */
	if (t->server_name[0] && inet_pton(AF_INET, t->server_name, ip) != 1 &&
	    inet_pton(AF_INET6, t->server_name, ip) != 1 &&
	    wolfSSL_UseSNI(t->ssl, WOLFSSL_SNI_HOST_NAME, t->server_name,
	                   (unsigned short)strlen(t->server_name)) != WOLFSSL_SUCCESS)
		return -1;
	return 0;
}

struct tls_conn *
tls_conn_client(struct tls_client *c, const struct tls_client_params *p)
{
	struct tls_conn *t;
	struct session_entry *e;

	assert(c);
	assert(p);
	assert(p->dane_count == 0 || p->dane);
	t = tls_conn_new(c->ctx, false);
	if (t == NULL)
		return NULL;
	t->client = c;
	c->refs++;
	if (client_params(t, p) != 0) {
		tls_conn_free(t);
		return NULL;
	}
	/* DANE checks the chain itself; wolfSSL's check against the bundle would be wasted. */
	if (p->verify != TLS_VERIFY_DANE && c->ca_loaded) {
		wolfSSL_set_verify(t->ssl, WOLFSSL_VERIFY_PEER, client_verify);
		wolfSSL_SetCertCbCtx(t->ssl, t);
	} else {
		wolfSSL_set_verify(t->ssl, WOLFSSL_VERIFY_NONE, NULL);
	}
	client_fingerprint(t);
	e = t->session_key[0] ? client_lookup(c, t->session_key) : NULL;
	if (e && memcmp(e->fingerprint, t->fingerprint, TLS_FINGERPRINT_LEN) == 0) {
		e->used = ++c->clock;
		t->auth = e->auth; /* used only if the server accepts the session */
		if (wolfSSL_set_session(t->ssl, e->session) == WOLFSSL_SUCCESS)
			t->offered = e->session;
	}
	return t;
}

/*
 * wolfSSL 5.5.4 has no text for some of the OpenSSL codes it reports, and reports
 * the dates as errors "in" the date fields.
 */
static const char *
client_verify_reason(int err)
{
	switch (err) {
	case X509_V_ERR_CERT_NOT_YET_VALID:
	case X509_V_ERR_ERROR_IN_CERT_NOT_BEFORE_FIELD:
		return "certificate is not yet valid";
	case X509_V_ERR_CERT_HAS_EXPIRED:
	case X509_V_ERR_ERROR_IN_CERT_NOT_AFTER_FIELD:
		return "certificate has expired";
	case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
		return "self-signed certificate";
	case 0:
		return "no certificate";
	default:
		return wolfSSL_X509_verify_cert_error_string(err);
	}
}

/* The chain was checked by wolfSSL during the handshake: what did it conclude? */
static int
client_chain(struct tls_conn *t)
{
	WOLFSSL_X509 *leaf;
	bool trusted = t->client->ca_loaded && t->chain_seen && t->chain_error == 0;
	bool named;

	if (t->verify == TLS_VERIFY_CHAIN && !t->client->ca_loaded) {
		tls_conn_set_error(t, "verify", "no CA file loaded");
		return -1;
	}
	if (t->verify == TLS_VERIFY_CHAIN && !trusted) {
		tls_conn_set_error(t, "verify", client_verify_reason(t->chain_error));
		return -1;
	}
	leaf = trusted && t->server_name[0] ? tls_peer_leaf(t) : NULL;
	named = leaf && tls_name_matches(leaf, t->server_name);
	wolfSSL_X509_free(leaf);
	if (t->verify == TLS_VERIFY_CHAIN && !named) {
		tls_conn_set_error(t, "verify", "certificate name mismatch");
		return -1;
	}
	t->auth = !trusted ? TLS_AUTH_ANONYMOUS : named ? TLS_AUTH_VERIFIED : TLS_AUTH_TRUSTED;
	return 0;
}

int
tls_client_established(struct tls_conn *t)
{
	int rc;

	assert(!t->is_server);
	if (t->resumed) {
		rc = 0; /* t->auth came with the cached session */
	} else {
		t->auth = TLS_AUTH_ANONYMOUS;
		rc = t->verify == TLS_VERIFY_DANE ? tls_dane_check(t) : client_chain(t);
	}
	if (rc != 0)
		return -1;
	t->established = true;
	/*
	 * TLS 1.2 has its ticket now, TLS 1.3 only after the handshake; a resumed TLS 1.3
	 * connection waits for the fresh ticket the server sends (read or free saves it).
	 */
	if (!t->resumed)
		tls_client_save_session(t);
	return 0;
}

/*
 * Only TLS 1.3 sessions are kept. wolfSSL 5.5.4 offers a TLS 1.2 ticket with an empty
 * session ID, and when the server turns the ticket down and answers with an empty ID
 * too (wolfSSL servers do, ours among them), the client takes the full handshake for a
 * resumption and fails ("Out of order message"). TLS 1.2 resumption is only a saving.
 */
static bool
client_resumable(struct tls_conn *t)
{
	return wolfSSL_version(t->ssl) == TLS1_3_VERSION;
}

void
tls_client_save_session(struct tls_conn *t)
{
	struct tls_client *c = t->client;
	struct session_entry *e;
	WOLFSSL_SESSION *s;

	if (!t->established || t->failed || t->session_done || !t->session_key[0] ||
	    c->cache_max == 0)
		return;
	s = wolfSSL_get1_session(t->ssl);
	/* The server keeps no session cache: only a ticket can resume. */
	if (s == NULL || !wolfSSL_SESSION_has_ticket(s) || !client_resumable(t)) {
		wolfSSL_SESSION_free(s);
		return;
	}
	e = client_slot(c, t->session_key);
	wolfSSL_SESSION_free(e->session);
	snprintf(e->key, sizeof(e->key), "%s", t->session_key);
	memcpy(e->fingerprint, t->fingerprint, TLS_FINGERPRINT_LEN);
	e->auth = t->auth;
	e->session = s;
	e->used = ++c->clock;
	t->session_done = true;
}

void
tls_client_conn_free(struct tls_conn *t)
{
	struct session_entry *e;

	if (t->client == NULL)
		return;
	/* A handshake that failed after offering a session: never offer that one again. */
	e = t->offered ? client_lookup(t->client, t->session_key) : NULL;
	if (e && e->session == t->offered && !t->established) {
		wolfSSL_SESSION_free(e->session);
		e->session = NULL;
	}
	tls_client_save_session(t);
	free(t->dane);
	client_release(t->client);
}
