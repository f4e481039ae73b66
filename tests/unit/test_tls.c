/*
 * test_tls.c -- the wolfSSL adapter: real handshakes between a server and a client
 * tls_conn in one process, the test shuttling ciphertext between them (in bulk and
 * one byte at a time). Certificates come from tests/fixtures/tls (make-certs.sh).
 */
#include "tls/tls.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "tests/unit/check.h"
#include "tls/tls_internal.h"

#define FIX                 "../fixtures/tls/"
#define STEPS_MAX           200000 /* shuttle rounds before a handshake counts as stuck */
#define TLSA_LINE_MAX       1500
#define BULK_LEN            (1024 * 1024)
#define TLS12_VERSION       0x0303
#define HANDSHAKES_TIMED    100
#define SESSION_CACHE_SMALL 2

static struct tls_tickets *tickets, *tickets2;

struct pair {
	struct tls_conn *s, *c;
	enum tls_status ss, cs;
};

/* Moves ciphertext from one side to the other: everything, or only one byte. */
static bool
move(struct tls_conn *from, struct tls_conn *to, bool bytewise)
{
	size_t len;
	const uint8_t *p = tls_conn_out(from, &len);
	size_t took;

	if (len == 0)
		return false;
	took = tls_conn_push(to, p, bytewise ? 1 : len);
	tls_conn_out_consume(from, took);
	return took > 0;
}

/* Runs both handshakes to the end: 0 when both are done, -1 when one side failed. */
static int
pump(struct pair *p, bool bytewise)
{
	p->ss = p->cs = TLS_WANT;
	for (int i = 0; i < STEPS_MAX; i++) {
		bool moved;

		if (p->cs == TLS_WANT)
			p->cs = tls_conn_handshake(p->c);
		moved = move(p->c, p->s, bytewise);
		if (p->ss == TLS_WANT)
			p->ss = tls_conn_handshake(p->s);
		moved |= move(p->s, p->c, bytewise);
		if (p->ss == TLS_ERROR || p->cs == TLS_ERROR) {
			/* deliver the alert, so the other side fails too */
			while (move(p->c, p->s, false) || move(p->s, p->c, false))
				;
			return -1;
		}
		if (p->ss == TLS_OK && p->cs == TLS_OK && !moved)
			return 0;
	}
	return -1;
}

static struct tls_server *
server_with(const char *cert, const char *key, const struct tls_tickets *t)
{
	struct tls_cert_files f = {NULL, cert, key};
	char err[256];
	struct tls_server *s = tls_server_new(&f, 1, t, err, sizeof(err));

	if (s == NULL)
		printf("tls_server_new: %s\n", err);
	return s;
}

static struct tls_client *
client_with(const char *ca, unsigned cache)
{
	char err[256];
	struct tls_client *c = tls_client_new(ca, cache, err, sizeof(err));

	if (c == NULL || err[0])
		printf("tls_client_new: %s\n", c ? err : "NULL");
	return c;
}

static int
pair_open(struct pair *p, struct tls_server *s, struct tls_client *c,
          const struct tls_client_params *cp, bool tls12, bool bytewise)
{
	p->s = tls_conn_server(s);
	p->c = tls_conn_client(c, cp);
	if (tls12)
		wolfSSL_set_max_proto_version(tls_conn_ssl(p->c), TLS12_VERSION);
	return pump(p, bytewise);
}

static void
pair_close(struct pair *p)
{
	tls_conn_free(p->c);
	tls_conn_free(p->s);
}

/* Reads what arrived on `to` until want bytes came, shuttling as needed. */
static size_t
transfer(struct tls_conn *from, struct tls_conn *to, uint8_t *buf, size_t want, bool bytewise)
{
	size_t got = 0;
	enum tls_status st = TLS_WANT;

	for (int i = 0; i < STEPS_MAX * 10 && got < want; i++) {
		size_t n;

		move(from, to, bytewise);
		n = tls_conn_read(to, buf + got, want - got, &st);
		got += n;
		if (n == 0 && st != TLS_WANT)
			break;
	}
	return got;
}

/* Data both ways: client to server, then a reply. */
static bool
exchange(struct pair *p, bool bytewise)
{
	uint8_t buf[64];
	bool ok;

	ok = tls_conn_write(p->c, (const uint8_t *)"EHLO client\r\n", 13) == 13;
	ok = ok && transfer(p->c, p->s, buf, 13, bytewise) == 13 && memcmp(buf, "EHLO", 4) == 0;
	ok = ok && tls_conn_write(p->s, (const uint8_t *)"250 ok\r\n", 8) == 8;
	ok = ok && transfer(p->s, p->c, buf, 8, bytewise) == 8 && memcmp(buf, "250 ok", 6) == 0;
	return ok;
}

static int
unhex(const char *hex, uint8_t *out, size_t cap)
{
	size_t n = strlen(hex) / 2;

	if (n > cap)
		return -1;
	for (size_t i = 0; i < n; i++) {
		unsigned v;

		if (sscanf(hex + 2 * i, "%2x", &v) != 1)
			return -1;
		out[i] = (uint8_t)v;
	}
	return (int)n;
}

/* The record tlsa.txt lists for name (e.g. "ecdsa") with those parameters. */
static struct tls_dane_record
tlsa(const char *name, int usage, int selector, int mtype)
{
	struct tls_dane_record r;
	char line[TLSA_LINE_MAX], n[64], hex[TLSA_LINE_MAX];
	int u, s, m;
	FILE *f = fopen(FIX "tlsa.txt", "r");

	memset(&r, 0, sizeof(r));
	while (f && fgets(line, sizeof(line), f)) {
		if (sscanf(line, "%63s %d %d %d %1499s", n, &u, &s, &m, hex) != 5)
			continue;
		if (strcmp(n, name) != 0 || u != usage || s != selector || m != mtype)
			continue;
		r.usage = (uint8_t)u;
		r.selector = (uint8_t)s;
		r.mtype = (uint8_t)m;
		r.len = (uint16_t)unhex(hex, r.data, sizeof(r.data));
		break;
	}
	if (f)
		fclose(f);
	if (r.len == 0)
		printf("tlsa.txt: no %s %d %d %d\n", name, usage, selector, mtype);
	return r;
}

static void
test_handshake(const char *cert, const char *key, bool tls12, bool bytewise, const char *version,
               const char *cipher)
{
	struct tls_server *s = server_with(cert, key, NULL);
	struct tls_client *c = client_with(NULL, 0);
	struct tls_client_params cp = {"mx.ringmx.test", NULL, TLS_VERIFY_NONE, NULL, 0};
	struct pair p;

	CHECK(pair_open(&p, s, c, &cp, tls12, bytewise) == 0);
	CHECK(tls_conn_established(p.s));
	CHECK(tls_conn_established(p.c));
	CHECK(exchange(&p, bytewise));
	CHECK(strcmp(tls_conn_version(p.c), version) == 0);
	CHECK(strcmp(tls_conn_version(p.s), version) == 0);
	CHECK(strcmp(tls_conn_cipher(p.c), cipher) == 0);
	CHECK(strcmp(tls_conn_cipher(p.s), cipher) == 0);
	if (strcmp(tls_conn_cipher(p.c), cipher) != 0)
		printf("  cipher %s, expected %s\n", tls_conn_cipher(p.c), cipher);
	CHECK(!tls_conn_resumed(p.c));
	CHECK(tls_conn_auth(p.c) == TLS_AUTH_ANONYMOUS);
	CHECK(strcmp(tls_conn_sni(p.s), "mx.ringmx.test") == 0);
	pair_close(&p);
	tls_server_free(s);
	tls_client_free(c);
}

static void
test_handshakes(void)
{
	for (int bytewise = 0; bytewise < 2; bytewise++) {
		test_handshake(FIX "ecdsa.pem", FIX "ecdsa.key", false, bytewise, "TLSv1.3",
		               "TLS_CHACHA20_POLY1305_SHA256");
		test_handshake(FIX "rsa.pem", FIX "rsa.key", false, bytewise, "TLSv1.3",
		               "TLS_CHACHA20_POLY1305_SHA256");
		test_handshake(FIX "ecdsa.pem", FIX "ecdsa.key", true, bytewise, "TLSv1.2",
		               "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256");
		test_handshake(FIX "rsa.pem", FIX "rsa.key", true, bytewise, "TLSv1.2",
		               "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256");
	}
}

/* The client offers only `ciphers` (and at most max_version): what is agreed, or "". */
static void
offer(const char *ciphers, int max_version, char *out, size_t len)
{
	struct tls_server *s = server_with(FIX "ecdsa.pem", FIX "ecdsa.key", NULL);
	struct tls_client *c = client_with(NULL, 0);
	struct tls_client_params cp = {"mx.ringmx.test", NULL, TLS_VERIFY_NONE, NULL, 0};
	struct pair p = {tls_conn_server(s), tls_conn_client(c, &cp), TLS_WANT, TLS_WANT};
	WOLFSSL *ssl = tls_conn_ssl(p.c);

	out[0] = '\0';
	if (wolfSSL_set_max_proto_version(ssl, max_version) == WOLFSSL_SUCCESS &&
	    wolfSSL_set_cipher_list(ssl, ciphers) == WOLFSSL_SUCCESS && pump(&p, false) == 0)
		snprintf(out, len, "%s", tls_conn_cipher(p.s));
	else if (p.ss == TLS_ERROR)
		snprintf(out, len, "%s", tls_conn_error(p.s));
	pair_close(&p);
	tls_server_free(s);
	tls_client_free(c);
}

static void
test_suites(void)
{
	char got[TLS_ERROR_LEN];

	/* the server's order wins: ChaCha20 first (no AES-NI in this wolfSSL) */
	offer("TLS13-AES128-GCM-SHA256:TLS13-CHACHA20-POLY1305-SHA256", TLS1_3_VERSION, got,
	      sizeof(got));
	CHECK(strcmp(got, "TLS_CHACHA20_POLY1305_SHA256") == 0);
	offer("ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305", TLS12_VERSION, got,
	      sizeof(got));
	CHECK(strcmp(got, "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256") == 0);
	offer("TLS13-AES256-GCM-SHA384", TLS1_3_VERSION, got, sizeof(got));
	CHECK(strcmp(got, "TLS_AES_256_GCM_SHA384") == 0);
	offer("ECDHE-ECDSA-AES256-GCM-SHA384", TLS12_VERSION, got, sizeof(got));
	CHECK(strcmp(got, "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384") == 0);
	/* no CBC, no static RSA key exchange */
	offer("ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES128-SHA", TLS12_VERSION, got, sizeof(got));
	CHECK(strncmp(got, "handshake: ", 11) == 0);
	printf("CBC only: %s\n", got);
	offer("AES128-GCM-SHA256", TLS12_VERSION, got, sizeof(got));
	CHECK(strncmp(got, "TLS_", 4) != 0);
	/* TLS 1.1, if this wolfSSL can still speak it */
	offer("ECDHE-ECDSA-AES128-SHA", 0x0302, got, sizeof(got));
	CHECK(strncmp(got, "TLS_", 4) != 0);
}

/* The client's view of which certificate it got: a DANE-EE record of that one matches. */
static enum tls_auth
sni_auth(struct tls_server *s, const char *name, const char *expect_cert, char *sni, size_t len)
{
	struct tls_client *c = client_with(NULL, 0);
	struct tls_dane_record r = tlsa(expect_cert, 3, 0, 1);
	struct tls_client_params cp = {name, NULL, TLS_VERIFY_DANE, &r, 1};
	struct pair p;
	enum tls_auth a = TLS_AUTH_ANONYMOUS;

	if (pair_open(&p, s, c, &cp, false, false) == 0)
		a = tls_conn_auth(p.c);
	snprintf(sni, len, "%s", tls_conn_sni(p.s));
	pair_close(&p);
	tls_client_free(c);
	return a;
}

static void
test_sni(void)
{
	struct tls_cert_files f[2] = {
	    {NULL, FIX "ecdsa.pem", FIX "ecdsa.key"},
	    {"other.ringmx.test", FIX "other.pem", FIX "other.key"},
	};
	char err[256], sni[TLS_NAME_LEN];
	struct tls_server *s = tls_server_new(f, 2, tickets, err, sizeof(err));

	CHECK(s != NULL);
	CHECK(sni_auth(s, "other.ringmx.test", "other", sni, sizeof(sni)) == TLS_AUTH_DANE);
	CHECK(strcmp(sni, "other.ringmx.test") == 0);
	CHECK(sni_auth(s, "OTHER.ringmx.test", "other", sni, sizeof(sni)) == TLS_AUTH_DANE);
	CHECK(sni_auth(s, "mx.ringmx.test", "ecdsa", sni, sizeof(sni)) == TLS_AUTH_DANE);
	CHECK(sni_auth(s, "unknown.ringmx.test", "ecdsa", sni, sizeof(sni)) == TLS_AUTH_DANE);
	CHECK(sni_auth(s, NULL, "ecdsa", sni, sizeof(sni)) == TLS_AUTH_DANE);
	CHECK(strcmp(sni, "") == 0);
	tls_server_free(s);

	/* a pair whose key does not match is refused with a reason */
	f[1].key = FIX "mismatch.key";
	s = tls_server_new(f, 2, tickets, err, sizeof(err));
	CHECK(s == NULL);
	CHECK(strstr(err, "key does not match") != NULL);
	f[1].certificate = FIX "missing.pem";
	CHECK(tls_server_new(f, 2, tickets, err, sizeof(err)) == NULL);
	CHECK(strstr(err, "missing.pem") != NULL);
}

/* One connection to s under session_key; returns whether it resumed (-1: it failed). */
static int
connect_once(struct tls_server *s, struct tls_client *c, const char *key, bool tls12)
{
	struct tls_client_params cp = {"mx.ringmx.test", key, TLS_VERIFY_NONE, NULL, 0};
	struct pair p;
	int rc = -1;

	/* The data exchange lets the client take the TLS 1.3 ticket sent after the handshake. */
	if (pair_open(&p, s, c, &cp, tls12, false) == 0 && exchange(&p, false))
		rc = tls_conn_resumed(p.c) && tls_conn_resumed(p.s);
	pair_close(&p);
	return rc;
}

static void
test_resumption(void)
{
	const bool tls12 = false;
	/* two workers: two servers made from the same tickets */
	struct tls_server *a = server_with(FIX "ecdsa.pem", FIX "ecdsa.key", tickets);
	struct tls_server *b = server_with(FIX "ecdsa.pem", FIX "ecdsa.key", tickets);
	struct tls_server *other = server_with(FIX "ecdsa.pem", FIX "ecdsa.key", tickets2);
	struct tls_server *none = server_with(FIX "ecdsa.pem", FIX "ecdsa.key", NULL);
	struct tls_client *c = client_with(FIX "ca.pem", SESSION_CACHE_SMALL);

	CHECK(connect_once(a, c, "hop1", tls12) == 0);
	CHECK(connect_once(b, c, "hop1", tls12) == 1);
	CHECK(connect_once(a, c, "hop1", tls12) == 1);
	/* another secret: a full handshake, then the new session resumes there */
	CHECK(connect_once(other, c, "hop1", tls12) == 0);
	CHECK(connect_once(other, c, "hop1", tls12) == 1);
	CHECK(connect_once(a, c, "hop1", tls12) == 0);
	/* no key, no caching */
	CHECK(connect_once(a, c, NULL, tls12) == 0);
	CHECK(connect_once(a, c, NULL, tls12) == 0);
	/* a server without tickets never resumes */
	CHECK(connect_once(none, c, "hop9", tls12) == 0);
	CHECK(connect_once(none, c, "hop9", tls12) == 0);
	/* the cache holds SESSION_CACHE_SMALL hops: the least recently used goes */
	CHECK(connect_once(a, c, "hop2", tls12) == 0);
	CHECK(connect_once(a, c, "hop3", tls12) == 0);
	CHECK(connect_once(a, c, "hop3", tls12) == 1);
	CHECK(connect_once(a, c, "hop2", tls12) == 1);
	CHECK(connect_once(a, c, "hop1", tls12) == 0);
	CHECK(connect_once(a, c, "hop2", tls12) == 1);
	CHECK(connect_once(a, c, "hop3", tls12) == 0);
	tls_server_free(a);
	tls_server_free(b);
	tls_server_free(other);
	tls_server_free(none);
	tls_client_free(c);
}

/*
 * TLS 1.2: the servers resume each other's tickets. The client cache keeps no TLS 1.2
 * session (see client_resumable()), so the session is handed over by hand here.
 */
static void
test_resumption_tls12(void)
{
	struct tls_server *a = server_with(FIX "rsa.pem", FIX "rsa.key", tickets);
	struct tls_server *b = server_with(FIX "rsa.pem", FIX "rsa.key", tickets);
	struct tls_client *c = client_with(NULL, SESSION_CACHE_SMALL);
	struct tls_client_params cp = {"mx.ringmx.test", NULL, TLS_VERIFY_NONE, NULL, 0};
	WOLFSSL_SESSION *sess;
	struct pair p;

	CHECK(pair_open(&p, a, c, &cp, true, false) == 0);
	CHECK(exchange(&p, false));
	CHECK(strcmp(tls_conn_version(p.c), "TLSv1.2") == 0);
	sess = wolfSSL_get1_session(tls_conn_ssl(p.c));
	CHECK(sess != NULL && wolfSSL_SESSION_has_ticket(sess));
	pair_close(&p);
	for (int i = 0; i < 2; i++) {
		p.s = tls_conn_server(i == 0 ? b : a);
		p.c = tls_conn_client(c, &cp);
		wolfSSL_set_max_proto_version(tls_conn_ssl(p.c), TLS12_VERSION);
		CHECK(wolfSSL_set_session(tls_conn_ssl(p.c), sess) == WOLFSSL_SUCCESS);
		CHECK(pump(&p, i == 1) == 0);
		CHECK(exchange(&p, false));
		CHECK(tls_conn_resumed(p.c));
		CHECK(tls_conn_resumed(p.s));
		pair_close(&p);
	}
	wolfSSL_SESSION_free(sess);
	/* through the cache: never offered, so never a failed handshake either */
	CHECK(connect_once(a, c, "hop12", true) == 0);
	CHECK(connect_once(b, c, "hop12", true) == 0);
	tls_server_free(a);
	tls_server_free(b);
	tls_client_free(c);
}

/* A resumed session keeps its authentication, and is not offered under another check. */
static void
test_resumption_auth(void)
{
	struct tls_server *s = server_with(FIX "ecdsa.pem", FIX "ecdsa.key", tickets);
	struct tls_client *c = client_with(FIX "ca.pem", 4);
	struct tls_client_params cp = {"mx.ringmx.test", "hop", TLS_VERIFY_CHAIN, NULL, 0};
	struct pair p;

	for (int i = 0; i < 2; i++) {
		CHECK(pair_open(&p, s, c, &cp, false, false) == 0);
		CHECK(exchange(&p, false));
		CHECK(tls_conn_resumed(p.c) == (i == 1));
		CHECK(tls_conn_auth(p.c) == TLS_AUTH_VERIFIED);
		pair_close(&p);
	}
	cp.verify = TLS_VERIFY_NONE;
	CHECK(pair_open(&p, s, c, &cp, false, false) == 0);
	CHECK(!tls_conn_resumed(p.c));
	pair_close(&p);
	tls_server_free(s);
	tls_client_free(c);
}

/* A DANE connection to a server with cert/key: the status and what the client decided. */
/* One handshake against cert/key, the client checking as cp says: its status and result. */
static enum tls_status
client_run(const char *cert, const char *key, struct tls_client *c,
           const struct tls_client_params *cp, enum tls_auth *auth, char *err, size_t err_len)
{
	struct tls_server *s = server_with(cert, key, NULL);
	struct pair p;
	enum tls_status st;

	pair_open(&p, s, c, cp, false, false);
	st = p.cs;
	*auth = tls_conn_auth(p.c);
	snprintf(err, err_len, "%s", tls_conn_error(p.c));
	pair_close(&p);
	tls_server_free(s);
	tls_client_free(c);
	return st;
}

static enum tls_status
dane_run(const char *cert, const char *key, const char *name, const struct tls_dane_record *r,
         unsigned count, enum tls_auth *auth, char *err, size_t err_len)
{
	struct tls_client_params cp = {name, NULL, TLS_VERIFY_DANE, r, count};

	return client_run(cert, key, client_with(NULL, 0), &cp, auth, err, err_len);
}

static void
test_dane_ee(void)
{
	static const int ee[][2] = {{1, 1}, {0, 1}, {1, 2}, {1, 0}, {0, 2}};
	struct tls_dane_record r[3];
	enum tls_auth a;
	char err[TLS_ERROR_LEN];

	for (size_t i = 0; i < sizeof(ee) / sizeof(ee[0]); i++) {
		r[0] = tlsa("ecdsa", 3, ee[i][0], ee[i][1]);
		CHECK(dane_run(FIX "ecdsa.pem", FIX "ecdsa.key", "mx.ringmx.test", r, 1, &a, err,
		               sizeof(err)) == TLS_OK);
		CHECK(a == TLS_AUTH_DANE);
	}
	r[0] = tlsa("rsa", 3, 1, 1);
	CHECK(dane_run(FIX "rsa.pem", FIX "rsa.key", "mx.ringmx.test", r, 1, &a, err,
	               sizeof(err)) == TLS_OK);
	CHECK(a == TLS_AUTH_DANE);
	/* a record of another certificate */
	CHECK(dane_run(FIX "ecdsa.pem", FIX "ecdsa.key", "mx.ringmx.test", r, 1, &a, err,
	               sizeof(err)) == TLS_ERROR);
	CHECK(strcmp(err, "dane: no TLSA record matches") == 0);
	/* the second record matches */
	r[1] = tlsa("ecdsa", 3, 1, 1);
	CHECK(dane_run(FIX "ecdsa.pem", FIX "ecdsa.key", "mx.ringmx.test", r, 2, &a, err,
	               sizeof(err)) == TLS_OK);
	CHECK(a == TLS_AUTH_DANE);
	/* DANE-EE checks neither dates nor names */
	r[0] = tlsa("expired", 3, 1, 1);
	CHECK(dane_run(FIX "expired.pem", FIX "expired.key", "nowhere.example", r, 1, &a, err,
	               sizeof(err)) == TLS_OK);
	CHECK(a == TLS_AUTH_DANE);
	r[0] = tlsa("wrongname", 3, 0, 1);
	CHECK(dane_run(FIX "wrongname.pem", FIX "wrongname.key", "mx.ringmx.test", r, 1, &a, err,
	               sizeof(err)) == TLS_OK);
	CHECK(a == TLS_AUTH_DANE);
}

static void
test_dane_ta(void)
{
	struct tls_dane_record r[2];
	enum tls_auth a;
	char err[TLS_ERROR_LEN];

	/* DANE-TA: the CA is sent in the chain, the leaf chains to it and has the name */
	r[0] = tlsa("ca", 2, 0, 1);
	CHECK(dane_run(FIX "ecdsa-chain.pem", FIX "ecdsa.key", "mx.ringmx.test", r, 1, &a, err,
	               sizeof(err)) == TLS_OK);
	CHECK(a == TLS_AUTH_DANE);
	r[0] = tlsa("ca", 2, 1, 1);
	CHECK(dane_run(FIX "ecdsa-chain.pem", FIX "ecdsa.key", "mx.ringmx.test", r, 1, &a, err,
	               sizeof(err)) == TLS_OK);
	CHECK(a == TLS_AUTH_DANE);
	r[0] = tlsa("ca", 2, 0, 1);
	CHECK(dane_run(FIX "ecdsa-chain.pem", FIX "ecdsa.key", "wrong.ringmx.test", r, 1, &a, err,
	               sizeof(err)) == TLS_ERROR);
	CHECK(strncmp(err, "dane: ", 6) == 0);
	/* an intermediate CA as the trust anchor */
	r[0] = tlsa("ica", 2, 1, 1);
	CHECK(dane_run(FIX "ica-chain.pem", FIX "ica-leaf.key", "mx.ringmx.test", r, 1, &a, err,
	               sizeof(err)) == TLS_OK);
	CHECK(a == TLS_AUTH_DANE);
	CHECK(dane_run(FIX "ica-chain.pem", FIX "ica-leaf.key", "other.ringmx.test", r, 1, &a, err,
	               sizeof(err)) == TLS_ERROR);
	r[0] = tlsa("ca", 2, 0, 1);
	/* the CA not in the chain the server sent: no match */
	CHECK(dane_run(FIX "ecdsa.pem", FIX "ecdsa.key", "mx.ringmx.test", r, 1, &a, err,
	               sizeof(err)) == TLS_ERROR);
	/* a record of another CA */
	r[0] = tlsa("ca2", 2, 0, 1);
	CHECK(dane_run(FIX "ecdsa-chain.pem", FIX "ecdsa.key", "mx.ringmx.test", r, 1, &a, err,
	               sizeof(err)) == TLS_ERROR);
	/* PKIX-TA(0) and PKIX-EE(1) are unusable for SMTP: encrypted, not authenticated */
	r[0] = tlsa("ca", 2, 0, 1);
	r[0].usage = 0;
	r[1] = tlsa("ecdsa", 3, 1, 1);
	r[1].usage = 1;
	CHECK(dane_run(FIX "ecdsa-chain.pem", FIX "ecdsa.key", "mx.ringmx.test", r, 2, &a, err,
	               sizeof(err)) == TLS_OK);
	CHECK(a == TLS_AUTH_ANONYMOUS);
	/* a malformed digest length is unusable too */
	r[0] = tlsa("ecdsa", 3, 1, 1);
	r[0].len = 31;
	CHECK(dane_run(FIX "ecdsa.pem", FIX "ecdsa.key", "mx.ringmx.test", r, 1, &a, err,
	               sizeof(err)) == TLS_OK);
	CHECK(a == TLS_AUTH_ANONYMOUS);
}

static enum tls_status
verify_run(const char *cert, const char *key, const char *ca, const char *name, enum tls_verify v,
           enum tls_auth *auth, char *err, size_t err_len)
{
	struct tls_client_params cp = {name, NULL, v, NULL, 0};

	return client_run(cert, key, tls_client_new(ca, 0, err, err_len), &cp, auth, err, err_len);
}

static void
test_verify(void)
{
	const char *e = FIX "ecdsa.pem", *k = FIX "ecdsa.key", *ca = FIX "ca.pem";
	enum tls_auth a;
	char err[TLS_ERROR_LEN];

	CHECK(verify_run(e, k, ca, "mx.ringmx.test", TLS_VERIFY_CHAIN, &a, err, sizeof(err)) ==
	      TLS_OK);
	CHECK(a == TLS_AUTH_VERIFIED);
	CHECK(verify_run(e, k, ca, "localhost", TLS_VERIFY_CHAIN, &a, err, sizeof(err)) == TLS_OK);
	CHECK(verify_run(e, k, ca, "127.0.0.1", TLS_VERIFY_CHAIN, &a, err, sizeof(err)) == TLS_OK);
	CHECK(verify_run(FIX "rsa.pem", FIX "rsa.key", ca, "mx.ringmx.test", TLS_VERIFY_CHAIN, &a,
	                 err, sizeof(err)) == TLS_OK);
	CHECK(a == TLS_AUTH_VERIFIED);
	CHECK(verify_run(FIX "ica-chain.pem", FIX "ica-leaf.key", ca, "mx.ringmx.test",
	                 TLS_VERIFY_CHAIN, &a, err, sizeof(err)) == TLS_OK);
	CHECK(a == TLS_AUTH_VERIFIED);
	CHECK(verify_run(FIX "ica-leaf.pem", FIX "ica-leaf.key", ca, "mx.ringmx.test",
	                 TLS_VERIFY_CHAIN, &a, err, sizeof(err)) == TLS_ERROR);
	CHECK(verify_run(e, k, ca, "other.ringmx.test", TLS_VERIFY_CHAIN, &a, err, sizeof(err)) ==
	      TLS_ERROR);
	CHECK(strcmp(err, "verify: certificate name mismatch") == 0);
	CHECK(verify_run(e, k, FIX "ca2.pem", "mx.ringmx.test", TLS_VERIFY_CHAIN, &a, err,
	                 sizeof(err)) == TLS_ERROR);
	CHECK(strcmp(err, "verify: unable to get local issuer certificate") == 0);
	CHECK(verify_run(FIX "expired.pem", FIX "expired.key", ca, "mx.ringmx.test",
	                 TLS_VERIFY_CHAIN, &a, err, sizeof(err)) == TLS_ERROR);
	CHECK(strcmp(err, "verify: certificate has expired") == 0);
	CHECK(verify_run(e, k, NULL, "mx.ringmx.test", TLS_VERIFY_CHAIN, &a, err, sizeof(err)) ==
	      TLS_ERROR);
	CHECK(strcmp(err, "verify: no CA file loaded") == 0);
	CHECK(verify_run(e, k, FIX "missing.pem", "mx.ringmx.test", TLS_VERIFY_CHAIN, &a, err,
	                 sizeof(err)) == TLS_ERROR);
	/* encrypt-only still says what it saw */
	CHECK(verify_run(e, k, ca, "mx.ringmx.test", TLS_VERIFY_NONE, &a, err, sizeof(err)) ==
	      TLS_OK);
	CHECK(a == TLS_AUTH_VERIFIED);
	CHECK(verify_run(e, k, ca, "other.ringmx.test", TLS_VERIFY_NONE, &a, err, sizeof(err)) ==
	      TLS_OK);
	CHECK(a == TLS_AUTH_TRUSTED);
	CHECK(verify_run(e, k, FIX "ca2.pem", "mx.ringmx.test", TLS_VERIFY_NONE, &a, err,
	                 sizeof(err)) == TLS_OK);
	CHECK(a == TLS_AUTH_ANONYMOUS);
	CHECK(verify_run(FIX "expired.pem", FIX "expired.key", ca, "mx.ringmx.test",
	                 TLS_VERIFY_NONE, &a, err, sizeof(err)) == TLS_OK);
	CHECK(a == TLS_AUTH_ANONYMOUS);
	CHECK(strcmp(tls_auth_name(TLS_AUTH_DANE), "dane") == 0);
	CHECK(strcmp(tls_auth_name(TLS_AUTH_TRUSTED), "trusted") == 0);
}

static void
test_garbage(void)
{
	struct tls_server *s = server_with(FIX "ecdsa.pem", FIX "ecdsa.key", tickets);
	struct tls_conn *t = tls_conn_server(s);
	const char *ehlo = "EHLO client.example\r\nMAIL FROM:<a@b>\r\n";
	uint8_t buf[16];
	enum tls_status st;
	size_t len;

	CHECK(tls_conn_push(t, (const uint8_t *)ehlo, strlen(ehlo)) == strlen(ehlo));
	CHECK(tls_conn_handshake(t) == TLS_ERROR);
	CHECK(strncmp(tls_conn_error(t), "handshake: ", 11) == 0);
	printf("garbage: %s\n", tls_conn_error(t));
	CHECK(tls_conn_handshake(t) == TLS_ERROR);
	CHECK(tls_conn_read(t, buf, sizeof(buf), &st) == 0 && st == TLS_ERROR);
	CHECK(tls_conn_write(t, buf, 1) < 0);
	tls_conn_out(t, &len);
	tls_conn_free(t);
	tls_server_free(s);
}

/* The peer stops in the middle of a record; the connection is freed while waiting. */
static void
test_truncated(void)
{
	struct tls_server *s = server_with(FIX "ecdsa.pem", FIX "ecdsa.key", tickets);
	struct tls_client *c = client_with(NULL, 0);
	struct tls_client_params cp = {"mx.ringmx.test", "hop", TLS_VERIFY_NONE, NULL, 0};
	static uint8_t msg[4000];
	uint8_t buf[sizeof(msg)];
	struct pair p;
	const uint8_t *out;
	size_t len;
	enum tls_status st;

	CHECK(pair_open(&p, s, c, &cp, false, false) == 0);
	CHECK(tls_conn_write(p.c, msg, sizeof(msg)) == (ssize_t)sizeof(msg));
	out = tls_conn_out(p.c, &len);
	CHECK(tls_conn_push(p.s, out, len / 2) == len / 2);
	CHECK(tls_conn_read(p.s, buf, sizeof(buf), &st) == 0);
	CHECK(st == TLS_WANT);
	pair_close(&p);

	/* and in the middle of the handshake */
	p.s = tls_conn_server(s);
	p.c = tls_conn_client(c, &cp);
	CHECK(tls_conn_handshake(p.c) == TLS_WANT);
	out = tls_conn_out(p.c, &len);
	CHECK(tls_conn_push(p.s, out, len - 10) == len - 10);
	CHECK(tls_conn_handshake(p.s) == TLS_WANT);
	pair_close(&p);
	tls_server_free(s);
	tls_client_free(c);
}

static void
test_bounds(void)
{
	struct tls_server *s = server_with(FIX "ecdsa.pem", FIX "ecdsa.key", tickets);
	struct tls_client *c = client_with(NULL, 0);
	struct tls_client_params cp = {"mx.ringmx.test", NULL, TLS_VERIFY_NONE, NULL, 0};
	uint8_t *big = calloc(1, BULK_LEN), *got = malloc(BULK_LEN);
	struct tls_conn *t = tls_conn_server(s);
	struct pair p;
	size_t len, sent = 0, recvd = 0;
	ssize_t n;

	/* input: TLS_IN_MAX waits at most, the rest is left to the caller */
	CHECK(tls_conn_push(t, big, TLS_IN_MAX + 100) == TLS_IN_MAX);
	CHECK(tls_conn_push(t, big, 1) == 0);
	tls_conn_free(t);

	for (size_t i = 0; i < BULK_LEN; i++)
		big[i] = (uint8_t)(i * 7);
	CHECK(pair_open(&p, s, c, &cp, false, false) == 0);
	/* output: a write stops at TLS_OUT_MAX of ciphertext */
	n = tls_conn_write(p.c, big, BULK_LEN);
	CHECK(n > 0 && n < BULK_LEN);
	tls_conn_out(p.c, &len);
	CHECK(len <= TLS_OUT_MAX);
	CHECK(len > TLS_OUT_MAX - 2 * (TLS_RECORD_MAX + TLS_RECORD_OVERHEAD));
	CHECK(tls_conn_write(p.c, big + n, BULK_LEN - (size_t)n) == 0);
	sent = (size_t)n;
	for (int i = 0; i < STEPS_MAX && recvd < BULK_LEN; i++) {
		enum tls_status st;

		if (sent < BULK_LEN) {
			n = tls_conn_write(p.c, big + sent, BULK_LEN - sent);
			CHECK(n >= 0);
			sent += (size_t)(n > 0 ? n : 0);
		}
		move(p.c, p.s, false);
		recvd += tls_conn_read(p.s, got + recvd, BULK_LEN - recvd, &st);
	}
	CHECK(recvd == BULK_LEN);
	CHECK(memcmp(big, got, BULK_LEN) == 0);

	/* close_notify */
	tls_conn_shutdown(p.c);
	{
		enum tls_status st;
		uint8_t b[16];

		move(p.c, p.s, false);
		CHECK(tls_conn_read(p.s, b, sizeof(b), &st) == 0);
		CHECK(st == TLS_CLOSED);
		CHECK(tls_conn_read(p.s, b, sizeof(b), &st) == 0);
		CHECK(st == TLS_CLOSED);
	}
	pair_close(&p);
	free(big);
	free(got);
	tls_server_free(s);
	tls_client_free(c);
}

/* The client asks to renegotiate a TLS 1.2 session; the server must refuse. */
static void
test_renegotiation(void)
{
	struct tls_server *s = server_with(FIX "ecdsa.pem", FIX "ecdsa.key", NULL);
	struct tls_client *c = client_with(NULL, 0);
	struct tls_client_params cp = {"mx.ringmx.test", NULL, TLS_VERIFY_NONE, NULL, 0};
	struct pair p;
	uint8_t b[64];
	enum tls_status st = TLS_WANT;
	int rc;

	p.s = tls_conn_server(s);
	p.c = tls_conn_client(c, &cp);
	wolfSSL_set_max_proto_version(tls_conn_ssl(p.c), TLS12_VERSION);
	CHECK(wolfSSL_UseSecureRenegotiation(tls_conn_ssl(p.c)) == WOLFSSL_SUCCESS);
	CHECK(pump(&p, false) == 0);
	/* this wolfSSL can send one: the client's side of RFC 5746 is compiled in */
	rc = wolfSSL_Rehandshake(tls_conn_ssl(p.c));
	CHECK(rc != WOLFSSL_SUCCESS);
	CHECK(wolfSSL_get_error(tls_conn_ssl(p.c), rc) == WOLFSSL_ERROR_WANT_READ);
	CHECK(move(p.c, p.s, false));
	CHECK(tls_conn_read(p.s, b, sizeof(b), &st) == 0);
	CHECK(st == TLS_ERROR);
	CHECK(strncmp(tls_conn_error(p.s), "read: ", 6) == 0);
	printf("renegotiation refused: %s\n", tls_conn_error(p.s));
	/* the server's alert ends the client too */
	move(p.s, p.c, false);
	CHECK(tls_conn_read(p.c, b, sizeof(b), &st) == 0);
	CHECK(st == TLS_ERROR);
	pair_close(&p);
	tls_server_free(s);
	tls_client_free(c);
}

static void
test_inspect(void)
{
	struct tls_cert_info i;
	char err[256];
	int64_t now = (int64_t)time(NULL);

	CHECK(tls_cert_inspect(FIX "ecdsa.pem", FIX "ecdsa.key", "mx.ringmx.test", &i, err,
	                       sizeof(err)) == 0);
	CHECK(i.key_matches);
	CHECK(i.name_matches);
	CHECK(strcmp(i.key_type, "ECDSA P-256") == 0);
	CHECK(i.not_before <= now && i.not_after > now + 50LL * 365 * 86400);
	CHECK(tls_cert_inspect(FIX "ecdsa.pem", FIX "ecdsa.key", "localhost", &i, err,
	                       sizeof(err)) == 0);
	CHECK(i.name_matches);
	CHECK(tls_cert_inspect(FIX "ecdsa.pem", FIX "ecdsa.key", "127.0.0.1", &i, err,
	                       sizeof(err)) == 0);
	CHECK(i.name_matches);
	CHECK(tls_cert_inspect(FIX "rsa.pem", FIX "rsa.key", "MX.ringmx.test", &i, err,
	                       sizeof(err)) == 0);
	CHECK(i.key_matches);
	CHECK(i.name_matches);
	CHECK(strcmp(i.key_type, "RSA 2048") == 0);
	CHECK(tls_cert_inspect(FIX "expired.pem", FIX "expired.key", "mx.ringmx.test", &i, err,
	                       sizeof(err)) == 0);
	CHECK(i.not_after < now);
	CHECK(i.not_before == 946684800); /* 2000-01-01 */
	CHECK(i.not_after == 978307200);  /* 2001-01-01 */
	CHECK(i.key_matches);
	CHECK(tls_cert_inspect(FIX "ecdsa.pem", FIX "mismatch.key", "mx.ringmx.test", &i, err,
	                       sizeof(err)) == 0);
	CHECK(!i.key_matches);
	CHECK(tls_cert_inspect(FIX "ecdsa.pem", FIX "rsa.key", "mx.ringmx.test", &i, err,
	                       sizeof(err)) == 0);
	CHECK(!i.key_matches);
	CHECK(tls_cert_inspect(FIX "wrongname.pem", FIX "wrongname.key", "mx.ringmx.test", &i, err,
	                       sizeof(err)) == 0);
	CHECK(!i.name_matches);
	CHECK(i.key_matches);
	CHECK(tls_cert_inspect(FIX "missing.pem", FIX "ecdsa.key", "x", &i, err, sizeof(err)) ==
	      -1);
	CHECK(strstr(err, "missing.pem") != NULL);
	CHECK(tls_cert_inspect(FIX "ecdsa.pem", FIX "missing.key", "x", &i, err, sizeof(err)) ==
	      -1);
	CHECK(tls_cert_inspect(FIX "tlsa.txt", FIX "ecdsa.key", "x", &i, err, sizeof(err)) == -1);
	CHECK(tls_cert_inspect(FIX "ecdsa.pem", FIX "tlsa.txt", "x", &i, err, sizeof(err)) == -1);
}

static void
test_selfsigned(void)
{
	char dir[] = "/tmp/ringmx-tls-XXXXXX", cert[64], key[64], err[256];
	struct tls_cert_info i;
	struct stat st;
	struct tls_server *s;
	struct tls_client *c;
	struct tls_client_params cp = {"self.ringmx.test", NULL, TLS_VERIFY_NONE, NULL, 0};
	struct pair p;

	CHECK(mkdtemp(dir) != NULL);
	snprintf(cert, sizeof(cert), "%s/cert.pem", dir);
	snprintf(key, sizeof(key), "%s/key.pem", dir);
	CHECK(tls_selfsigned_create("self.ringmx.test", 30, cert, key, err, sizeof(err)) == 0);
	CHECK(tls_cert_inspect(cert, key, "self.ringmx.test", &i, err, sizeof(err)) == 0);
	CHECK(i.key_matches);
	CHECK(i.name_matches);
	CHECK(strcmp(i.key_type, "ECDSA P-256") == 0);
	CHECK(i.not_after - i.not_before >= 30LL * 86400);
	CHECK(i.not_after - i.not_before <= 32LL * 86400);
	CHECK(stat(key, &st) == 0 && (st.st_mode & 0777) == 0600);
	CHECK(tls_cert_inspect(cert, key, "other.ringmx.test", &i, err, sizeof(err)) == 0);
	CHECK(!i.name_matches);
	/* a long name takes the DER long-form lengths */
	CHECK(tls_selfsigned_create("a123456789012345678901234567890123456789012345678901234567890."
	                            "b123456789012345678901234567890123456789012345678901234567890."
	                            "ringmx.test",
	                            1, cert, key, err, sizeof(err)) == 0);
	CHECK(tls_cert_inspect(cert, key,
	                       "a123456789012345678901234567890123456789012345678901234567890."
	                       "b123456789012345678901234567890123456789012345678901234567890."
	                       "ringmx.test",
	                       &i, err, sizeof(err)) == 0);
	CHECK(i.name_matches);
	CHECK(tls_selfsigned_create("self.ringmx.test", 30, cert, key, err, sizeof(err)) == 0);
	s = server_with(cert, key, NULL);
	c = client_with(NULL, 0);
	CHECK(pair_open(&p, s, c, &cp, false, false) == 0);
	CHECK(exchange(&p, false));
	pair_close(&p);
	tls_server_free(s);
	tls_client_free(c);
	CHECK(tls_selfsigned_create("x.test", 1, "/nonexistent/c.pem", key, err, sizeof(err)) ==
	      -1);
	unlink(cert);
	unlink(key);
	rmdir(dir);
}

static double
elapsed_us(const struct timespec *a, const struct timespec *b)
{
	return (double)(b->tv_sec - a->tv_sec) * 1e6 + (double)(b->tv_nsec - a->tv_nsec) / 1e3;
}

/* Time spent inside each side's handshake calls, per full handshake (no resumption). */
static void
time_handshakes(const char *what, const char *cert, const char *key, const char *ca)
{
	struct tls_server *s = server_with(cert, key, NULL);
	struct tls_client *c = client_with(ca, 0);
	struct tls_client_params cp = {"mx.ringmx.test", NULL, TLS_VERIFY_NONE, NULL, 0};
	double server_us = 0, client_us = 0;

	for (int i = 0; i < HANDSHAKES_TIMED; i++) {
		struct pair p = {tls_conn_server(s), tls_conn_client(c, &cp), TLS_WANT, TLS_WANT};

		for (int step = 0; step < 100 && (p.ss != TLS_OK || p.cs != TLS_OK); step++) {
			struct timespec a, b, d;

			clock_gettime(CLOCK_MONOTONIC, &a);
			if (p.cs == TLS_WANT)
				p.cs = tls_conn_handshake(p.c);
			clock_gettime(CLOCK_MONOTONIC, &b);
			move(p.c, p.s, false);
			if (p.ss == TLS_WANT)
				p.ss = tls_conn_handshake(p.s);
			clock_gettime(CLOCK_MONOTONIC, &d);
			move(p.s, p.c, false);
			client_us += elapsed_us(&a, &b);
			server_us += elapsed_us(&b, &d);
		}
		CHECK(p.ss == TLS_OK && p.cs == TLS_OK);
		pair_close(&p);
	}
	printf("%s TLS 1.3 full handshake: server %.0f us, client %.0f us%s\n", what,
	       server_us / HANDSHAKES_TIMED, client_us / HANDSHAKES_TIMED,
	       ca ? " (client checks the chain)" : "");
	tls_server_free(s);
	tls_client_free(c);
}

int
main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (tls_global_init() != 0) {
		printf("wolfSSL_Init failed\n");
		return 1;
	}
	tickets = tls_tickets_new();
	tickets2 = tls_tickets_new();
	test_inspect();
	test_selfsigned();
	test_handshakes();
	test_suites();
	test_sni();
	test_resumption();
	test_resumption_tls12();
	test_resumption_auth();
	test_dane_ee();
	test_dane_ta();
	test_verify();
	test_garbage();
	test_truncated();
	test_bounds();
	test_renegotiation();
	time_handshakes("ECDSA P-256", FIX "ecdsa.pem", FIX "ecdsa.key", NULL);
	time_handshakes("ECDSA P-256", FIX "ecdsa.pem", FIX "ecdsa.key", FIX "ca.pem");
	time_handshakes("RSA 2048", FIX "rsa.pem", FIX "rsa.key", NULL);
	time_handshakes("RSA 2048", FIX "rsa.pem", FIX "rsa.key", FIX "ca.pem");
	tls_tickets_free(tickets);
	tls_tickets_free(tickets2);
	tls_global_free();
	printf("%u passed, %u failed\n", passed, failed);
	return failed ? 1 : 0;
}
