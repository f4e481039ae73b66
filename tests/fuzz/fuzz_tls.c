/*
 * fuzz_tls.c -- libFuzzer target for a server tls_conn: arbitrary bytes where a
 * ClientHello (and what follows it) should be.
 *
 * The first octet picks the size of the pieces the rest is pushed in (1 to 256
 * octets), so records split at every boundary. Beyond memory safety it checks the
 * adapter's promises: the input bound holds, a failure always says why in one
 * bounded line, and a failed connection stays failed.
 *
 *   clang -fsanitize=fuzzer,address -I. tests/fuzz/fuzz_tls.c tls/cert.c tls/dane.c \
 *         tls/tls_client.c tls/tls_conn.c tls/tls_server.c -lwolfssl
 */
#include "tls/tls.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define FUZZ_PIECE_MAX 256
#define FUZZ_READ_MAX  4096

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct tls_tickets *tickets;
static struct tls_server *server;

/* The fixtures, whether run from the top of the tree or from build-fuzz/. */
static const char *
fixture(const char *name)
{
	static const char *const dirs[] = {"tests/fixtures/tls/", "../tests/fixtures/tls/"};
	static char path[256];

	for (size_t i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++) {
		snprintf(path, sizeof(path), "%s%s", dirs[i], name);
		if (access(path, R_OK) == 0)
			return path;
	}
	fprintf(stderr, "fuzz_tls: %s not found; run from the top of the tree\n", name);
	exit(1);
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	struct tls_cert_files f = {NULL, NULL, NULL};
	char cert[256], key[256], err[256];

	(void)argc;
	(void)argv;
	assert(tls_global_init() == 0);
	tickets = tls_tickets_new();
	assert(tickets);
	snprintf(cert, sizeof(cert), "%s", fixture("ecdsa.pem"));
	snprintf(key, sizeof(key), "%s", fixture("ecdsa.key"));
	f.certificate = cert;
	f.key = key;
	server = tls_server_new(&f, 1, tickets, err, sizeof(err));
	if (server == NULL) {
		fprintf(stderr, "fuzz_tls: %s\n", err);
		exit(1);
	}
	return 0;
}

/* One step after input: the handshake, or reads once it is done. */
static enum tls_status
step(struct tls_conn *t)
{
	uint8_t buf[FUZZ_READ_MAX];
	enum tls_status st;
	size_t n;

	if (!tls_conn_established(t))
		return tls_conn_handshake(t);
	do {
		n = tls_conn_read(t, buf, sizeof(buf), &st);
		assert(n <= sizeof(buf));
	} while (n > 0);
	return st;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct tls_conn *t;
	enum tls_status st = TLS_WANT;
	size_t piece, off = 1, len;

	if (size < 1)
		return 0;
	piece = (size_t)data[0] + 1;
	assert(piece <= FUZZ_PIECE_MAX);
	t = tls_conn_server(server);
	assert(t);
	while (off < size && st != TLS_ERROR && st != TLS_CLOSED) {
		size_t n = size - off < piece ? size - off : piece;
		size_t took = tls_conn_push(t, data + off, n);

		assert(took <= n);
		off += took;
		st = step(t);
		tls_conn_out(t, &len);
		assert(len <= TLS_OUT_MAX);
		tls_conn_out_consume(t, len);
		if (took == 0 && st == TLS_WANT)
			break; /* the input is full and nothing moves: the caller would close */
	}
	if (st == TLS_ERROR) {
		assert(tls_conn_error(t)[0] != '\0');
		assert(strlen(tls_conn_error(t)) < TLS_ERROR_LEN);
		assert(tls_conn_handshake(t) == TLS_ERROR);
		assert(tls_conn_write(t, data, size) < 0);
	}
	tls_conn_free(t);
	return 0;
}
