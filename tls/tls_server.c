/*
 * tls_server.c -- server contexts: one WOLFSSL_CTX per certificate (the default one
 * and one per SNI name), and session tickets whose keys every worker derives alike
 * from the shared read-only master secret, so a ticket from one worker opens on any.
 * wolfSSL's internal session cache stays off: it takes a process-wide lock.
 */
#include "tls/tls.h"

#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "tls/tls_internal.h"

#include <wolfssl/openssl/evp.h>
#include <wolfssl/wolfcrypt/chacha20_poly1305.h>
#include <wolfssl/wolfcrypt/hmac.h>
#include <wolfssl/wolfcrypt/random.h>

#define KEY_SIG_MAX       1024 /* an RSA-8192 signature, or an ECDSA one */
#define TICKET_SECRET_LEN 32
#define TICKET_KEY_LEN    CHACHA20_POLY1305_AEAD_KEYSIZE
#define TICKET_TAG_LEN    CHACHA20_POLY1305_AEAD_AUTHTAG_SIZE

static_assert(TICKET_TAG_LEN <= WOLFSSL_TICKET_MAC_SZ, "the AEAD tag fits the ticket MAC");
static_assert(CHACHA20_POLY1305_AEAD_IV_SIZE <= WOLFSSL_TICKET_IV_SZ, "the nonce fits the IV");

/*
 * TLS 1.2 suites: ECDHE and AEAD only. ChaCha20 comes first because this wolfSSL has
 * no AES-NI code: its software AES is slower and uses lookup tables.
 */
#define TLS_CIPHERS                                                                                \
	"TLS13-CHACHA20-POLY1305-SHA256:TLS13-AES128-GCM-SHA256:TLS13-AES256-GCM-SHA384:"          \
	"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"                               \
	"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"                               \
	"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384"

struct tls_tickets {
	uint8_t secret[TICKET_SECRET_LEN];
};

/* The keys of one epoch, derived once per worker and kept while the epoch lasts. */
struct ticket_keys {
	uint64_t epoch;
	bool set;
	uint8_t name[WOLFSSL_TICKET_NAME_SZ];
	uint8_t key[TICKET_KEY_LEN];
};

struct tls_server {
	unsigned refs; /* the owner, plus one per connection; all on one thread */
	unsigned count;
	WOLFSSL_CTX *ctx[TLS_SNI_MAX + 1]; /* [0]: the default certificate */
	char names[TLS_SNI_MAX + 1][TLS_NAME_LEN];
	const struct tls_tickets *tickets;
	struct ticket_keys keys[2]; /* indexed by epoch parity: this one and the last */
	WC_RNG rng;                 /* ticket nonces */
	bool rng_ready;
};

struct tls_tickets *
tls_tickets_new(void)
{
	struct tls_tickets *t = malloc(sizeof(*t));
	WC_RNG rng;
	int rc;

	if (t == NULL)
		return NULL;
	if (wc_InitRng(&rng) != 0) {
		free(t);
		return NULL;
	}
	rc = wc_RNG_GenerateBlock(&rng, t->secret, sizeof(t->secret));
	wc_FreeRng(&rng);
	if (rc != 0) {
		free(t);
		return NULL;
	}
	return t;
}

void
tls_tickets_free(struct tls_tickets *t)
{
	if (t == NULL)
		return;
	memset(t->secret, 0, sizeof(t->secret));
	free(t);
}

/* HMAC-SHA256(secret, label || epoch): no state, so every worker gets the same keys. */
static int
ticket_derive(const struct tls_tickets *t, const char *label, uint64_t epoch, uint8_t *out,
              size_t len)
{
	uint8_t mac[WC_SHA256_DIGEST_SIZE];
	uint8_t e[8];
	Hmac h;
	int rc;

	assert(len <= sizeof(mac));
	for (int i = 0; i < 8; i++)
		e[i] = (uint8_t)(epoch >> (56 - 8 * i));
	if (wc_HmacInit(&h, NULL, INVALID_DEVID) != 0)
		return -1;
	rc = wc_HmacSetKey(&h, WC_SHA256, t->secret, sizeof(t->secret));
	if (rc == 0)
		rc = wc_HmacUpdate(&h, (const byte *)label, (word32)strlen(label));
	if (rc == 0)
		rc = wc_HmacUpdate(&h, e, sizeof(e));
	if (rc == 0)
		rc = wc_HmacFinal(&h, mac);
	wc_HmacFree(&h);
	if (rc != 0)
		return -1;
	memcpy(out, mac, len);
	memset(mac, 0, sizeof(mac));
	return 0;
}

static const struct ticket_keys *
ticket_keys(struct tls_server *s, uint64_t epoch)
{
	struct ticket_keys *k = &s->keys[epoch & 1];

	if (k->set && k->epoch == epoch)
		return k;
	k->set = false;
	if (ticket_derive(s->tickets, "ringmx ticket name", epoch, k->name, sizeof(k->name)) != 0 ||
	    ticket_derive(s->tickets, "ringmx ticket key", epoch, k->key, sizeof(k->key)) != 0)
		return NULL;
	k->epoch = epoch;
	k->set = true;
	return k;
}

/*
 * wolfSSL's ticket callback. Tickets are sealed with ChaCha20-Poly1305 under the
 * epoch's key, the key name and IV authenticated with them. A ticket of the last
 * epoch still opens, and gets a new one (RET_CREATE).
 */
static int
server_ticket(WOLFSSL *ssl, unsigned char name[WOLFSSL_TICKET_NAME_SZ],
              unsigned char iv[WOLFSSL_TICKET_IV_SZ], unsigned char mac[WOLFSSL_TICKET_MAC_SZ],
              int enc, unsigned char *ticket, int in_len, int *out_len, void *arg)
{
	struct tls_server *s = arg;
	uint64_t now = (uint64_t)time(NULL) / TLS_TICKET_ROTATE_S;
	uint8_t aad[WOLFSSL_TICKET_NAME_SZ + WOLFSSL_TICKET_IV_SZ];
	const struct ticket_keys *k;

	(void)ssl;
	if (enc) {
		k = ticket_keys(s, now);
		if (k == NULL || wc_RNG_GenerateBlock(&s->rng, iv, WOLFSSL_TICKET_IV_SZ) != 0)
			return WOLFSSL_TICKET_RET_FATAL;
		memcpy(name, k->name, WOLFSSL_TICKET_NAME_SZ);
		memcpy(aad, name, WOLFSSL_TICKET_NAME_SZ);
		memcpy(aad + WOLFSSL_TICKET_NAME_SZ, iv, WOLFSSL_TICKET_IV_SZ);
		memset(mac, 0, WOLFSSL_TICKET_MAC_SZ);
		if (wc_ChaCha20Poly1305_Encrypt(k->key, iv, aad, sizeof(aad), ticket,
		                                (word32)in_len, ticket, mac) != 0)
			return WOLFSSL_TICKET_RET_FATAL;
		*out_len = in_len;
		return WOLFSSL_TICKET_RET_OK;
	}
	memcpy(aad, name, WOLFSSL_TICKET_NAME_SZ);
	memcpy(aad + WOLFSSL_TICKET_NAME_SZ, iv, WOLFSSL_TICKET_IV_SZ);
	for (uint64_t e = now; e + 2 > now; e--) { /* now, then the epoch before */
		k = ticket_keys(s, e);
		if (k == NULL || memcmp(name, k->name, WOLFSSL_TICKET_NAME_SZ) != 0)
			continue;
		if (wc_ChaCha20Poly1305_Decrypt(k->key, iv, aad, sizeof(aad), ticket,
		                                (word32)in_len, mac, ticket) != 0)
			return WOLFSSL_TICKET_RET_REJECT;
		*out_len = in_len;
		return e == now ? WOLFSSL_TICKET_RET_OK : WOLFSSL_TICKET_RET_CREATE;
	}
	return WOLFSSL_TICKET_RET_REJECT; /* another secret or too old: a full handshake */
}

/* SNI: switch the connection to the per-name context; unknown names keep the default. */
static int
server_sni(WOLFSSL *ssl, int *alert, void *arg)
{
	struct tls_server *s = arg;
	const char *name = wolfSSL_get_servername(ssl, WOLFSSL_SNI_HOST_NAME);

	(void)alert;
	if (name == NULL)
		return 0;
	for (unsigned i = 1; i < s->count; i++) {
		if (strcasecmp(s->names[i], name) == 0) {
			wolfSSL_set_SSL_CTX(ssl, s->ctx[i]);
			break;
		}
	}
	return 0;
}

/* A signature by the key, checked with the certificate's public key. */
static bool
key_signs_for(WOLFSSL_EVP_PKEY *key, WOLFSSL_EVP_PKEY *pub)
{
	static const unsigned char msg[] = "ringmx: does this key belong to the certificate?";
	unsigned char sig[KEY_SIG_MAX];
	size_t sig_len = sizeof(sig);
	WOLFSSL_EVP_MD_CTX *m = wolfSSL_EVP_MD_CTX_new();
	bool ok;

	ok = m && wolfSSL_EVP_DigestSignInit(m, NULL, wolfSSL_EVP_sha256(), NULL, key) == 1 &&
	     wolfSSL_EVP_DigestSignUpdate(m, msg, sizeof(msg)) == 1 &&
	     wolfSSL_EVP_DigestSignFinal(m, sig, &sig_len) == 1;
	wolfSSL_EVP_MD_CTX_free(m);
	m = ok ? wolfSSL_EVP_MD_CTX_new() : NULL;
	ok = m && wolfSSL_EVP_DigestVerifyInit(m, NULL, wolfSSL_EVP_sha256(), NULL, pub) == 1 &&
	     wolfSSL_EVP_DigestVerifyUpdate(m, msg, sizeof(msg)) == 1 &&
	     wolfSSL_EVP_DigestVerifyFinal(m, sig, sig_len) == 1;
	wolfSSL_EVP_MD_CTX_free(m);
	return ok;
}

/*
 * wolfSSL_CTX_check_private_key (5.5.4) passes any P-256 key with any P-256
 * certificate, so the key signs and the certificate's key verifies: once per file.
 */
bool
tls_ctx_key_matches(WOLFSSL_CTX *ctx)
{
	WOLFSSL_X509 *x = wolfSSL_CTX_get0_certificate(ctx);
	WOLFSSL_EVP_PKEY *key = wolfSSL_CTX_get0_privatekey(ctx);
	WOLFSSL_EVP_PKEY *pub;
	bool same;

	if (x == NULL || key == NULL || wolfSSL_CTX_check_private_key(ctx) != WOLFSSL_SUCCESS)
		return false;
	pub = wolfSSL_X509_get_pubkey(x);
	same = pub && wolfSSL_EVP_PKEY_base_id(pub) == wolfSSL_EVP_PKEY_base_id(key) &&
	       key_signs_for(key, pub);
	wolfSSL_EVP_PKEY_free(pub);
	return same;
}

int
tls_ctx_load_pair(WOLFSSL_CTX *ctx, const char *certificate, const char *key, char *err,
                  size_t err_len)
{
	if (access(certificate, R_OK) != 0) {
		snprintf(err, err_len, "tls.certificate %s: %s", certificate, strerror(errno));
		return -1;
	}
	if (wolfSSL_CTX_use_certificate_chain_file(ctx, certificate) != WOLFSSL_SUCCESS) {
		snprintf(err, err_len, "tls.certificate %s: not a PEM certificate", certificate);
		return -1;
	}
	if (access(key, R_OK) != 0) {
		snprintf(err, err_len, "tls.key %s: %s", key, strerror(errno));
		return -1;
	}
	if (wolfSSL_CTX_use_PrivateKey_file(ctx, key, WOLFSSL_FILETYPE_PEM) != WOLFSSL_SUCCESS) {
		snprintf(err, err_len, "tls.key %s: not a PEM private key", key);
		return -1;
	}
	if (!tls_ctx_key_matches(ctx)) {
		snprintf(err, err_len, "tls.certificate %s: key does not match", certificate);
		return -1;
	}
	return 0;
}

int
tls_ctx_common(WOLFSSL_CTX *ctx)
{
	/*
	 * wolfSSL_CTX_set1_groups_list does not know X25519 by name; this one does. P-521
	 * is there because wolfSSL 5.5.4 answers a client offering only groups it does
	 * not list with a broken HelloRetryRequest instead of an alert.
	 */
	static const char groups[] = "X25519:P-256:P-384:P-521";

	if (wolfSSL_CTX_SetMinVersion(ctx, WOLFSSL_TLSV1_2) != WOLFSSL_SUCCESS ||
	    wolfSSL_CTX_set_cipher_list(ctx, TLS_CIPHERS) != WOLFSSL_SUCCESS ||
	    wolfSSL_CTX_set1_curves_list(ctx, groups) != WOLFSSL_SUCCESS)
		return -1;
	wolfSSL_CTX_set_session_cache_mode(ctx, WOLFSSL_SESS_CACHE_OFF);
	return tls_ctx_io(ctx);
}

static WOLFSSL_CTX *
server_ctx(struct tls_server *s, const struct tls_cert_files *f, bool is_default, char *err,
           size_t err_len)
{
	WOLFSSL_CTX *ctx = wolfSSL_CTX_new(wolfSSLv23_server_method());

	if (ctx == NULL || tls_ctx_common(ctx) != 0) {
		snprintf(err, err_len, "tls: cannot set up a wolfSSL context");
		goto fail;
	}
	wolfSSL_CTX_set_options(ctx, WOLFSSL_OP_CIPHER_SERVER_PREFERENCE);
	if (tls_ctx_load_pair(ctx, f->certificate, f->key, err, err_len) != 0)
		goto fail;
	if (s->tickets) {
		wolfSSL_CTX_set_TicketEncCb(ctx, server_ticket);
		wolfSSL_CTX_set_TicketEncCtx(ctx, s);
		wolfSSL_CTX_set_TicketHint(ctx, TLS_TICKET_ROTATE_S);
	} else {
		/* Without this wolfSSL would seal tickets with a key of its own, per context. */
		wolfSSL_CTX_NoTicketTLSv12(ctx);
		wolfSSL_CTX_set_num_tickets(ctx, 0);
	}
	if (is_default) {
		wolfSSL_CTX_set_servername_callback(ctx, server_sni);
		wolfSSL_CTX_set_servername_arg(ctx, s);
	}
	return ctx;
fail:
	wolfSSL_CTX_free(ctx);
	return NULL;
}

struct tls_server *
tls_server_new(const struct tls_cert_files *certs, unsigned count,
               const struct tls_tickets *tickets, char *err, size_t err_len)
{
	struct tls_server *s;

	assert(certs);
	assert(count >= 1);
	assert(certs[0].name == NULL);
	if (count > TLS_SNI_MAX + 1) {
		snprintf(err, err_len, "tls: more than %d certificates by name", TLS_SNI_MAX);
		return NULL;
	}
	s = calloc(1, sizeof(*s));
	if (s == NULL) {
		snprintf(err, err_len, "out of memory");
		return NULL;
	}
	s->refs = 1;
	s->tickets = tickets;
	if (wc_InitRng(&s->rng) != 0) {
		snprintf(err, err_len, "random generator unavailable");
		free(s);
		return NULL;
	}
	s->rng_ready = true;
	for (unsigned i = 0; i < count; i++) {
		const char *name = certs[i].name ? certs[i].name : "";

		if (i > 0 && (name[0] == '\0' || strlen(name) >= TLS_NAME_LEN)) {
			snprintf(err, err_len, "tls.certificate %s: bad server name",
			         certs[i].certificate);
			goto fail;
		}
		snprintf(s->names[i], TLS_NAME_LEN, "%s", name);
		s->ctx[i] = server_ctx(s, &certs[i], i == 0, err, err_len);
		if (s->ctx[i] == NULL)
			goto fail;
		s->count = i + 1;
	}
	return s;
fail:
	tls_server_release(s);
	return NULL;
}

void
tls_server_release(struct tls_server *s)
{
	assert(s->refs > 0);
	if (--s->refs > 0)
		return;
	for (unsigned i = 0; i < s->count; i++)
		wolfSSL_CTX_free(s->ctx[i]);
	if (s->rng_ready)
		wc_FreeRng(&s->rng);
	memset(s->keys, 0, sizeof(s->keys));
	free(s);
}

void
tls_server_free(struct tls_server *s)
{
	if (s != NULL)
		tls_server_release(s);
}

struct tls_conn *
tls_conn_server(struct tls_server *s)
{
	struct tls_conn *t;

	assert(s);
	t = tls_conn_new(s->ctx[0], true);
	if (t == NULL)
		return NULL;
	t->server = s;
	s->refs++;
	return t;
}
