/*
 * tls.h -- TLS over memory buffers (wolfSSL): the socket never reaches wolfSSL.
 *
 * The caller moves ciphertext: bytes received go in with tls_conn_push(), bytes to
 * send come out of tls_conn_out(). Plaintext goes through tls_conn_read() and
 * tls_conn_write(). Nothing here blocks, sleeps or calls the kernel for I/O.
 *
 * Contexts (struct tls_server, struct tls_client) belong to one worker thread: no
 * locks on the hot path. The one piece every worker shares is the read-only
 * struct tls_tickets (the session-ticket master secret), made once at start.
 *
 * TLS 1.2 and 1.3 only; AEAD suites with forward secrecy only; server cipher
 * preference; no renegotiation.
 */
#ifndef RINGMX_TLS_TLS_H
#define RINGMX_TLS_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define TLS_IN_MAX          (64 * 1024)  /* ciphertext held before the engine reads it */
#define TLS_OUT_MAX         (256 * 1024) /* ciphertext waiting for the socket */
#define TLS_SNI_MAX         64           /* certificates chosen by server name */
#define TLS_DANE_MAX        16           /* TLSA records considered per host */
#define TLS_ERROR_LEN       160
#define TLS_NAME_LEN        256
#define TLS_TICKET_ROTATE_S 3600 /* ticket keys change this often; the last one still opens */

/* Called once by the main thread before any other function, and at exit. */
int tls_global_init(void);
void tls_global_free(void);

/*
 * Called by every thread that used TLS, as it ends: wolfSSL keeps a per-thread
 * cache of ECC points (about 3 MB) that only the thread itself can free.
 */
void tls_thread_free(void);

/* ---- session tickets, shared read-only by the workers ---------------------------- */

struct tls_tickets;

/* A random master secret; ticket keys are derived from it per TLS_TICKET_ROTATE_S epoch. */
struct tls_tickets *tls_tickets_new(void);
void tls_tickets_free(struct tls_tickets *t);

/* ---- server ---------------------------------------------------------------------- */

struct tls_cert_files {
	const char *name;        /* server name for SNI (NULL: the default certificate) */
	const char *certificate; /* PEM, leaf first, then the chain */
	const char *key;         /* PEM, ECDSA or RSA */
};

struct tls_server;

/*
 * Loads the default certificate (certs[0], name NULL) and any per-name ones (SNI,
 * exact names, case-insensitive). Checks each pair: readable, key matches the
 * certificate. NULL with err filled ("tls.certificate /x.pem: key does not match").
 * tickets may be NULL (no resumption).
 */
struct tls_server *tls_server_new(const struct tls_cert_files *certs, unsigned count,
                                  const struct tls_tickets *tickets, char *err, size_t err_len);

/* Connections made from it keep what they use alive until they are freed. */
void tls_server_free(struct tls_server *s);

/* ---- client ---------------------------------------------------------------------- */

struct tls_client;

/*
 * ca_file: PEM bundle for `verify` (Debian's /etc/ssl/certs/ca-certificates.crt);
 * NULL or unreadable means `verify` can never succeed (logged by the caller via err).
 * session_cache_max: TLS sessions kept for resumption, one per next hop (TLS 1.3
 * only, see tls_client.c). With a CA file, `may` connections are checked too, so they
 * can log trusted/verified. Connections keep the client alive until they are freed.
 */
struct tls_client *tls_client_new(const char *ca_file, unsigned session_cache_max, char *err,
                                  size_t err_len);
void tls_client_free(struct tls_client *c);

/* One TLSA record (RFC 6698) as DNS gave it. */
struct tls_dane_record {
	uint8_t usage;    /* 2: DANE-TA, 3: DANE-EE; others are unusable (RFC 7672 §3.1.3) */
	uint8_t selector; /* 0: full certificate, 1: SubjectPublicKeyInfo */
	uint8_t mtype;    /* 0: exact, 1: SHA-256, 2: SHA-512 */
	uint16_t len;
	uint8_t data[512];
};

enum tls_verify {
	TLS_VERIFY_NONE,  /* encrypt only: any certificate (may, encrypt) */
	TLS_VERIFY_CHAIN, /* chain to ca_file and the name of the host (verify) */
	TLS_VERIFY_DANE,  /* match one of the usable dane records (dane) */
};

struct tls_client_params {
	const char *server_name; /* SNI and the name checked (MX host name); may be NULL */
	const char *session_key; /* next hop: the cached session to resume, and to save */
	enum tls_verify verify;
	const struct tls_dane_record *dane;
	unsigned dane_count;
};

/* ---- connections ----------------------------------------------------------------- */

struct tls_conn;

/* NULL only without memory. */
struct tls_conn *tls_conn_server(struct tls_server *s);
struct tls_conn *tls_conn_client(struct tls_client *c, const struct tls_client_params *p);
void tls_conn_free(struct tls_conn *t);

/*
 * Ciphertext received from the peer. Returns the bytes taken: fewer than len only
 * when TLS_IN_MAX bytes already wait (the caller pauses its receive).
 */
size_t tls_conn_push(struct tls_conn *t, const uint8_t *in, size_t len);

enum tls_status {
	TLS_OK = 0,     /* handshake done (tls_conn_handshake) */
	TLS_WANT = 1,   /* needs more input from the peer, or output to be sent */
	TLS_CLOSED = 2, /* the peer sent close_notify */
	TLS_ERROR = -1, /* fatal; tls_conn_error() says why; send what is out, then close */
};

/* Advances the handshake with what was pushed. After TLS_OK it is done for good. */
enum tls_status tls_conn_handshake(struct tls_conn *t);
bool tls_conn_established(const struct tls_conn *t);

/*
 * Decrypts into buf: > 0 bytes read, 0 when nothing complete is buffered
 * (*status TLS_WANT), or 0 with *status TLS_CLOSED / TLS_ERROR.
 */
size_t tls_conn_read(struct tls_conn *t, uint8_t *buf, size_t cap, enum tls_status *status);

/*
 * Encrypts plaintext into the output. Returns the bytes taken: fewer than len only
 * when TLS_OUT_MAX bytes of ciphertext already wait for the socket; < 0 on error.
 */
ssize_t tls_conn_write(struct tls_conn *t, const uint8_t *p, size_t len);

/* Ciphertext to send, and how much of it the socket took. */
const uint8_t *tls_conn_out(struct tls_conn *t, size_t *len);
void tls_conn_out_consume(struct tls_conn *t, size_t n);

/* Queues close_notify in the output. */
void tls_conn_shutdown(struct tls_conn *t);

/* Why the last TLS_ERROR happened, for one log line ("handshake: bad record mac"). */
const char *tls_conn_error(const struct tls_conn *t);

/* After the handshake: "TLSv1.3", "TLS_AES_128_GCM_SHA256" (IANA names), resumed or not. */
const char *tls_conn_version(const struct tls_conn *t);
const char *tls_conn_cipher(const struct tls_conn *t);
bool tls_conn_resumed(const struct tls_conn *t);
/* Server side: the name the client asked for by SNI ("" if none). */
const char *tls_conn_sni(const struct tls_conn *t);

/* Client side, after the handshake: how the peer was authenticated. */
enum tls_auth {
	TLS_AUTH_ANONYMOUS, /* encrypted, the certificate not checked or not trusted */
	TLS_AUTH_TRUSTED,   /* chains to a trusted CA, the name does not match */
	TLS_AUTH_VERIFIED,  /* chains to a trusted CA and matches server_name */
	TLS_AUTH_DANE,      /* matched a usable TLSA record */
};
enum tls_auth tls_conn_auth(const struct tls_conn *t);
const char *tls_auth_name(enum tls_auth a); /* "anonymous", "trusted", "verified", "dane" */

/*
 * Client side: the handshake is done when the check that verify asked for passed;
 * tls_conn_handshake() returns TLS_ERROR with the reason ("dane: no TLSA record
 * matches", "verify: certificate name mismatch") otherwise.
 */

/* ---- certificates ---------------------------------------------------------------- */

struct tls_cert_info {
	int64_t not_before, not_after; /* Unix seconds */
	bool key_matches;
	bool name_matches; /* the hostname asked about is in the SAN (or CN without SAN) */
	char key_type[16]; /* "ECDSA P-256", "RSA 2048" */
};

/* Reads a certificate/key pair for `ringmx -t`: 0, or -1 with err filled. */
int tls_cert_inspect(const char *certificate, const char *key, const char *hostname,
                     struct tls_cert_info *info, char *err, size_t err_len);

/*
 * Creates a self-signed ECDSA P-256 certificate for hostname (CN and SAN), valid for
 * `days`, written as PEM to cert_path and key_path (key mode 0600). 0, or -1 with err.
 */
int tls_selfsigned_create(const char *hostname, unsigned days, const char *cert_path,
                          const char *key_path, char *err, size_t err_len);

#endif
