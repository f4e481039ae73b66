/*
 * dane.c -- RFC 7672 (SMTP DANE) checks of a finished client handshake.
 *
 * DANE-EE(3) pins the leaf: its certificate or public key, no name and no date check.
 * DANE-TA(2) pins a certificate of the chain the server sent: the leaf must chain to
 * it (dates checked) and carry the server name. Other usages are unusable and ignored;
 * with no usable record at all the connection is only encrypted (anonymous).
 */
#include "tls/tls.h"

#include <assert.h>
#include <string.h>

#include "tls/tls_internal.h"

#include <wolfssl/wolfcrypt/sha256.h>
#include <wolfssl/wolfcrypt/sha512.h>

#define DER_LEN_OCTETS_MAX 4 /* lengths up to 4 GB: more than any certificate */

/* One DER TLV at p: its tag, header size and content size, all inside [p, end). */
static int
der_next(const uint8_t *p, const uint8_t *end, uint8_t *tag, size_t *hdr, size_t *len)
{
	size_t avail = (size_t)(end - p);
	size_t l, h = 2;

	if (avail < 2)
		return -1;
	*tag = p[0];
	l = p[1];
	if (l & 0x80) {
		size_t n = l & 0x7f;

		if (n == 0 || n > DER_LEN_OCTETS_MAX || avail < 2 + n)
			return -1;
		l = 0;
		for (size_t i = 0; i < n; i++)
			l = l << 8 | p[2 + i];
		h += n;
	}
	if (l > avail - h)
		return -1;
	*hdr = h;
	*len = l;
	return 0;
}

/*
 * The SubjectPublicKeyInfo of a DER certificate (RFC 5280 §4.1): the seventh field of
 * tbsCertificate when the optional [0] version comes first, else the sixth.
 */
static int
der_spki(const uint8_t *der, size_t der_len, const uint8_t **spki, size_t *spki_len)
{
	const uint8_t *p = der, *end = der + der_len;
	size_t hdr, len;
	uint8_t tag;

	for (int depth = 0; depth < 2; depth++) { /* Certificate, then tbsCertificate */
		if (der_next(p, end, &tag, &hdr, &len) != 0 || tag != 0x30)
			return -1;
		end = p + hdr + len;
		p += hdr;
	}
	if (der_next(p, end, &tag, &hdr, &len) == 0 && tag == 0xa0)
		p += hdr + len;
	for (int field = 0; field < 5; field++) { /* serial, signature, issuer, validity, subject */
		if (der_next(p, end, &tag, &hdr, &len) != 0)
			return -1;
		p += hdr + len;
	}
	if (der_next(p, end, &tag, &hdr, &len) != 0 || tag != 0x30)
		return -1;
	*spki = p;
	*spki_len = hdr + len;
	return 0;
}

static bool
dane_usable(const struct tls_dane_record *r)
{
	if (r->usage != 2 && r->usage != 3)
		return false;
	if (r->selector > 1 || r->len > sizeof(r->data))
		return false;
	switch (r->mtype) {
	case 0:
		return r->len > 0;
	case 1:
		return r->len == WC_SHA256_DIGEST_SIZE;
	case 2:
		return r->len == WC_SHA512_DIGEST_SIZE;
	default:
		return false;
	}
}

static bool
dane_match(const struct tls_dane_record *r, const uint8_t *der, size_t len)
{
	uint8_t digest[WC_SHA512_DIGEST_SIZE];
	const uint8_t *p = der;
	size_t n = len;

	if (r->selector == 1 && der_spki(der, len, &p, &n) != 0)
		return false;
	switch (r->mtype) {
	case 0:
		return n == r->len && memcmp(p, r->data, n) == 0;
	case 1:
		return wc_Sha256Hash(p, (word32)n, digest) == 0 &&
		       memcmp(digest, r->data, WC_SHA256_DIGEST_SIZE) == 0;
	default:
		return wc_Sha512Hash(p, (word32)n, digest) == 0 &&
		       memcmp(digest, r->data, WC_SHA512_DIGEST_SIZE) == 0;
	}
}

WOLFSSL_X509 *
tls_peer_leaf(struct tls_conn *t)
{
	WOLFSSL_X509_CHAIN *chain = wolfSSL_get_peer_chain(t->ssl);

	if (chain == NULL || wolfSSL_get_chain_count(chain) < 1)
		return NULL;
	return wolfSSL_X509_d2i(NULL, wolfSSL_get_chain_cert(chain, 0),
	                        wolfSSL_get_chain_length(chain, 0));
}

/* The leaf chains to certificate ta of the chain, through those between; dates count. */
static bool
dane_ta_chains(WOLFSSL_X509_CHAIN *chain, int ta)
{
	WOLFSSL_CERT_MANAGER *cm = wolfSSL_CertManagerNew();
	bool ok = cm != NULL;

	ok = ok && wolfSSL_CertManagerLoadCABuffer(cm, wolfSSL_get_chain_cert(chain, ta),
	                                           wolfSSL_get_chain_length(chain, ta),
	                                           WOLFSSL_FILETYPE_ASN1) == WOLFSSL_SUCCESS;
	for (int i = ta - 1; ok && i >= 0; i--) {
		const unsigned char *der = wolfSSL_get_chain_cert(chain, i);
		int len = wolfSSL_get_chain_length(chain, i);

		ok = wolfSSL_CertManagerVerifyBuffer(cm, der, len, WOLFSSL_FILETYPE_ASN1) ==
		     WOLFSSL_SUCCESS;
		if (ok && i > 0)
			ok = wolfSSL_CertManagerLoadCABuffer(cm, der, len, WOLFSSL_FILETYPE_ASN1) ==
			     WOLFSSL_SUCCESS;
	}
	wolfSSL_CertManagerFree(cm);
	return ok;
}

/* A DANE-TA record: 1 matched and verified, 0 no match, -1 matched but did not verify. */
static int
dane_ta(struct tls_conn *t, WOLFSSL_X509_CHAIN *chain, const struct tls_dane_record *r)
{
	int count = wolfSSL_get_chain_count(chain);
	WOLFSSL_X509 *leaf;
	bool named;

	for (int i = 1; i < count; i++) {
		if (!dane_match(r, wolfSSL_get_chain_cert(chain, i),
		                (size_t)wolfSSL_get_chain_length(chain, i)))
			continue;
		if (!dane_ta_chains(chain, i))
			return -1;
		leaf = tls_peer_leaf(t);
		named = leaf && t->server_name[0] && tls_name_matches(leaf, t->server_name);
		wolfSSL_X509_free(leaf);
		return named ? 1 : -1;
	}
	return 0;
}

int
tls_dane_check(struct tls_conn *t)
{
	WOLFSSL_X509_CHAIN *chain = wolfSSL_get_peer_chain(t->ssl);
	unsigned usable = 0;
	bool ta_failed = false;

	for (unsigned i = 0; i < t->dane_count; i++)
		usable += dane_usable(&t->dane[i]);
	if (usable == 0) {
		t->auth = TLS_AUTH_ANONYMOUS; /* the caller's policy decides whether that will do */
		return 0;
	}
	if (chain == NULL || wolfSSL_get_chain_count(chain) < 1) {
		tls_conn_set_error(t, "dane", "no peer certificate");
		return -1;
	}
	for (unsigned i = 0; i < t->dane_count; i++) {
		const struct tls_dane_record *r = &t->dane[i];
		int rc = 0;

		if (!dane_usable(r))
			continue;
		if (r->usage == 3)
			rc = dane_match(r, wolfSSL_get_chain_cert(chain, 0),
			                (size_t)wolfSSL_get_chain_length(chain, 0));
		else
			rc = dane_ta(t, chain, r);
		if (rc == 1) {
			t->auth = TLS_AUTH_DANE;
			return 0;
		}
		ta_failed |= rc < 0;
	}
	tls_conn_set_error(t, "dane",
	                   ta_failed ? "trust anchor matched, but the chain or name does not verify"
	                             : "no TLSA record matches");
	return -1;
}
