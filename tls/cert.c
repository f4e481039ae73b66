/*
 * cert.c -- certificate checks for `ringmx -t` (dates, key, name, key type) and the
 * self-signed ECDSA P-256 certificate made when none is configured.
 */
#include "tls/tls.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "tls/tls_internal.h"

#include <wolfssl/openssl/ec.h>
#include <wolfssl/openssl/evp.h>
#include <wolfssl/wolfcrypt/asn_public.h>
#include <wolfssl/wolfcrypt/ecc.h>
#include <wolfssl/wolfcrypt/random.h>

#define CERT_DER_MAX      4096 /* one self-signed P-256 certificate with two names */
#define CERT_PEM_MAX      (2 * CERT_DER_MAX)
#define CERT_HOSTNAME_MAX 253 /* RFC 1035 */

bool
tls_name_matches(WOLFSSL_X509 *x, const char *name)
{
	unsigned char ip[16];

	assert(x);
	assert(name);
	/* An address literal is matched against iPAddress names, never against DNS ones. */
	if (inet_pton(AF_INET, name, ip) == 1 || inet_pton(AF_INET6, name, ip) == 1)
		return wolfSSL_X509_check_ip_asc(x, name, 0) == WOLFSSL_SUCCESS;
	return wolfSSL_X509_check_host(x, name, strlen(name), 0, NULL) == WOLFSSL_SUCCESS;
}

static int
cert_time(const WOLFSSL_ASN1_TIME *t, int64_t *out)
{
	struct tm tm;

	memset(&tm, 0, sizeof(tm));
	if (t == NULL || wolfSSL_ASN1_TIME_to_tm(t, &tm) != WOLFSSL_SUCCESS)
		return -1;
	*out = (int64_t)timegm(&tm);
	return 0;
}

static void
cert_key_type(WOLFSSL_X509 *x, char *out, size_t out_len)
{
	WOLFSSL_EVP_PKEY *pk = wolfSSL_X509_get_pubkey(x);
	const char *curve = NULL;
	int bits;

	snprintf(out, out_len, "unknown");
	if (pk == NULL)
		return;
	bits = wolfSSL_EVP_PKEY_bits(pk);
	if (wolfSSL_EVP_PKEY_base_id(pk) == EVP_PKEY_RSA) {
		snprintf(out, out_len, "RSA %d", bits);
	} else if (wolfSSL_EVP_PKEY_base_id(pk) == EVP_PKEY_EC) {
		const WOLFSSL_EC_KEY *ec = wolfSSL_EVP_PKEY_get0_EC_KEY(pk);
		int nid = ec ? wolfSSL_EC_GROUP_get_curve_name(wolfSSL_EC_KEY_get0_group(ec)) : 0;

		curve = nid == NID_X9_62_prime256v1 ? "P-256"
		        : nid == NID_secp384r1      ? "P-384"
		        : nid == NID_secp521r1      ? "P-521"
		                                    : NULL;
		if (curve)
			snprintf(out, out_len, "ECDSA %s", curve);
		else
			snprintf(out, out_len, "ECDSA %d", bits);
	}
	wolfSSL_EVP_PKEY_free(pk);
}

/* A scratch context tells whether the key file is readable and belongs to the cert. */
static int
cert_key_check(const char *certificate, const char *key, bool *matches, char *err, size_t err_len)
{
	WOLFSSL_CTX *ctx = wolfSSL_CTX_new(wolfSSLv23_server_method());

	if (ctx == NULL) {
		snprintf(err, err_len, "out of memory");
		return -1;
	}
	*matches = false;
	if (wolfSSL_CTX_use_certificate_chain_file(ctx, certificate) != WOLFSSL_SUCCESS) {
		snprintf(err, err_len, "tls.certificate %s: not a PEM certificate", certificate);
		goto fail;
	}
	if (access(key, R_OK) != 0) {
		snprintf(err, err_len, "tls.key %s: %s", key, strerror(errno));
		goto fail;
	}
	if (wolfSSL_CTX_use_PrivateKey_file(ctx, key, WOLFSSL_FILETYPE_PEM) != WOLFSSL_SUCCESS) {
		snprintf(err, err_len, "tls.key %s: not a PEM private key", key);
		goto fail;
	}
	*matches = tls_ctx_key_matches(ctx);
	wolfSSL_CTX_free(ctx);
	return 0;
fail:
	wolfSSL_CTX_free(ctx);
	return -1;
}

int
tls_cert_inspect(const char *certificate, const char *key, const char *hostname,
                 struct tls_cert_info *info, char *err, size_t err_len)
{
	WOLFSSL_X509 *x;
	int rc = -1;

	assert(certificate);
	assert(key);
	assert(info);
	memset(info, 0, sizeof(*info));
	if (access(certificate, R_OK) != 0) {
		snprintf(err, err_len, "tls.certificate %s: %s", certificate, strerror(errno));
		return -1;
	}
	x = wolfSSL_X509_load_certificate_file(certificate, WOLFSSL_FILETYPE_PEM);
	if (x == NULL) {
		snprintf(err, err_len, "tls.certificate %s: not a PEM certificate", certificate);
		return -1;
	}
	if (cert_time(wolfSSL_X509_get_notBefore(x), &info->not_before) != 0 ||
	    cert_time(wolfSSL_X509_get_notAfter(x), &info->not_after) != 0) {
		snprintf(err, err_len, "tls.certificate %s: unreadable validity dates",
		         certificate);
		goto out;
	}
	cert_key_type(x, info->key_type, sizeof(info->key_type));
	info->name_matches = hostname != NULL && tls_name_matches(x, hostname);
	rc = cert_key_check(certificate, key, &info->key_matches, err, err_len);
out:
	wolfSSL_X509_free(x);
	return rc;
}

static size_t
cert_der_len(uint8_t *out, size_t len)
{
	if (len < 128) {
		out[0] = (uint8_t)len;
		return 1;
	}
	out[0] = 0x81; /* long form, one octet: names are at most CERT_HOSTNAME_MAX */
	out[1] = (uint8_t)len;
	return 2;
}

/* GeneralNames holding one dNSName, DER (RFC 5280 §4.2.1.6), for Cert.altNames. */
static int
cert_alt_name(const char *hostname, uint8_t *out, size_t cap)
{
	size_t n = strlen(hostname);
	size_t i = 0;

	static_assert(CERT_HOSTNAME_MAX + 6 <= CTC_MAX_ALT_SIZE, "alt name fits Cert.altNames");
	if (n == 0 || n > CERT_HOSTNAME_MAX || n + 6 > cap)
		return -1;
	out[i++] = 0x30; /* SEQUENCE */
	i += cert_der_len(out + i, n + (n < 128 ? 2 : 3));
	out[i++] = 0x82; /* [2] IMPLICIT IA5String: dNSName */
	i += cert_der_len(out + i, n);
	memcpy(out + i, hostname, n);
	return (int)(i + n);
}

/* Writes path atomically: a temporary file in the same folder, synced, then renamed. */
static int
cert_write_file(const char *path, const uint8_t *data, size_t len, mode_t mode, char *err,
                size_t err_len)
{
	char tmp[4096];
	int fd;

	if (snprintf(tmp, sizeof(tmp), "%s.XXXXXX", path) >= (int)sizeof(tmp)) {
		snprintf(err, err_len, "%s: path too long", path);
		return -1;
	}
	fd = mkstemp(tmp);
	if (fd < 0) {
		snprintf(err, err_len, "%s: %s", path, strerror(errno));
		return -1;
	}
	if (fchmod(fd, mode) != 0 || write(fd, data, len) != (ssize_t)len || fsync(fd) != 0) {
		snprintf(err, err_len, "%s: %s", path, strerror(errno));
		close(fd);
		unlink(tmp);
		return -1;
	}
	close(fd);
	if (rename(tmp, path) != 0) {
		snprintf(err, err_len, "%s: %s", path, strerror(errno));
		unlink(tmp);
		return -1;
	}
	return 0;
}

static int
cert_make(Cert *cert, ecc_key *key, WC_RNG *rng, const char *hostname, unsigned days, uint8_t *der,
          int der_cap)
{
	int alt;
	int n;

	if (wc_InitCert(cert) != 0)
		return -1;
	snprintf(cert->subject.commonName, sizeof(cert->subject.commonName), "%s", hostname);
	cert->daysValid = (int)days;
	cert->selfSigned = 1;
	cert->isCA = 0;
	cert->sigType = CTC_SHA256wECDSA;
	alt = cert_alt_name(hostname, cert->altNames, sizeof(cert->altNames));
	if (alt < 0)
		return -1;
	cert->altNamesSz = alt;
	if (wc_SetKeyUsage(cert, "digitalSignature") != 0 ||
	    wc_SetExtKeyUsage(cert, "serverAuth,clientAuth") != 0)
		return -1;
	n = wc_MakeCert(cert, der, (word32)der_cap, NULL, key, rng);
	if (n < 0)
		return -1;
	return wc_SignCert(cert->bodySz, cert->sigType, der, (word32)der_cap, NULL, key, rng);
}

int
tls_selfsigned_create(const char *hostname, unsigned days, const char *cert_path,
                      const char *key_path, char *err, size_t err_len)
{
	Cert *cert = malloc(sizeof(*cert)); /* 20 KB with its altNames: off the stack */
	uint8_t der[CERT_DER_MAX], pem[CERT_PEM_MAX];
	ecc_key key;
	WC_RNG rng;
	int n, rc = -1;

	assert(hostname);
	assert(cert_path);
	assert(key_path);
	assert(days > 0);
	if (cert == NULL) {
		snprintf(err, err_len, "out of memory");
		return -1;
	}
	if (wc_InitRng(&rng) != 0) {
		snprintf(err, err_len, "random generator unavailable");
		free(cert);
		return -1;
	}
	if (wc_ecc_init(&key) != 0 || wc_ecc_make_key_ex(&rng, 32, &key, ECC_SECP256R1) != 0) {
		snprintf(err, err_len, "cannot make an ECDSA P-256 key");
		goto out;
	}
	n = cert_make(cert, &key, &rng, hostname, days, der, sizeof(der));
	if (n < 0) {
		snprintf(err, err_len, "cannot make a certificate for %s", hostname);
		goto out;
	}
	n = wc_DerToPem(der, (word32)n, pem, sizeof(pem), CERT_TYPE);
	if (n < 0 || cert_write_file(cert_path, pem, (size_t)n, 0644, err, err_len) != 0)
		goto out;
	n = wc_EccKeyToDer(&key, der, sizeof(der));
	if (n > 0)
		n = wc_DerToPem(der, (word32)n, pem, sizeof(pem), ECC_PRIVATEKEY_TYPE);
	if (n < 0) {
		snprintf(err, err_len, "cannot encode the key");
		goto out;
	}
	rc = cert_write_file(key_path, pem, (size_t)n, 0600, err, err_len);
out:
	memset(der, 0, sizeof(der));
	memset(pem, 0, sizeof(pem));
	wc_ecc_free(&key);
	wc_FreeRng(&rng);
	free(cert);
	return rc;
}
