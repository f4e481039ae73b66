/*
 * test_config_warn.c -- each security warning of `ringmx -t`: a configuration that
 * triggers it and one that does not. Certificates are the fixtures of tests/fixtures/tls
 * (mx.ringmx.test); run from tests/unit.
 */
#include "core/config_warn.h"

#include "tests/unit/check.h"
#include "tls/tls.h"
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define TLS_FIXTURE(name) "../fixtures/tls/" name
#define CERT_OK           "tls: { certificate: ../fixtures/tls/ecdsa.pem, key: ../fixtures/tls/ecdsa.key }\n"
#define PASSWD            "auth: { passwd_file: ../fixtures/tls/ecdsa.pem }\n" /* any readable file */
#define HEAD              "hostname: mx.ringmx.test\nmynetworks: [ 127.0.0.0/8 ]\n"

static char scratch_path[64];

/* The warnings of yaml (which must load) at time now. */
static struct config_warnings *
warnings_at(const char *yaml, int64_t now)
{
	static struct config_warnings w;
	struct config_errors errs;
	struct config *cfg;
	FILE *f = fopen(scratch_path, "w");

	if (f == NULL) {
		perror(scratch_path);
		exit(1);
	}
	fputs(yaml, f);
	fclose(f);
	cfg = config_load(scratch_path, &errs);
	CHECK(cfg != NULL);
	for (unsigned i = 0; i < errs.count; i++)
		printf("  config error: %s\n", errs.line[i]);
	memset(&w, 0, sizeof(w));
	if (cfg != NULL)
		config_warn(cfg, now, &w);
	config_free(cfg);
	return &w;
}

/* How many lines of yaml's warnings contain needle (all shown when expect differs). */
static unsigned
count_at(const char *yaml, const char *needle, int64_t now, unsigned expect)
{
	struct config_warnings *w = warnings_at(yaml, now);
	unsigned n = 0;

	for (unsigned i = 0; i < w->count; i++)
		n += strstr(w->line[i], needle) != NULL;
	if (n != expect) {
		printf("  %u lines with \"%s\", expected %u; config:\n%s  warnings:\n", n, needle,
		       expect, yaml);
		for (unsigned i = 0; i < w->count; i++)
			printf("    %s\n", w->line[i]);
	}
	return n;
}

static unsigned
count(const char *yaml, const char *needle, unsigned expect)
{
	return count_at(yaml, needle, (int64_t)time(NULL), expect);
}

#define WARNS(yaml, needle)     CHECK(count(yaml, needle, 1) == 1)
#define NOT_WARNS(yaml, needle) CHECK(count(yaml, needle, 0) == 0)

static void
test_clean(void)
{
	/* the three-port design done right: no warning at all */
	struct config_warnings *w = warnings_at(
	    HEAD CERT_OK PASSWD "listen:\n"
	                        "  - { address: \"0.0.0.0:25\", role: mx, tls: may }\n"
	                        "  - { address: \"0.0.0.0:587\", role: submission, tls: required, "
	                        "auth: required }\n"
	                        "  - { address: \"[::]:465\", role: submission, tls: implicit, "
	                        "auth: required }\n",
	    (int64_t)time(NULL));

	CHECK(w->count == 0);
	for (unsigned i = 0; i < w->count; i++)
		printf("    %s\n", w->line[i]);
}

static void
test_auth_without_tls(void)
{
	WARNS(HEAD PASSWD "listen: [ { address: \"0.0.0.0:587\", role: submission, tls: none, "
	                  "auth: required } ]\n",
	      "warning: listen[0] 0.0.0.0:587: auth: required with tls: none: passwords would "
	      "cross the network in clear text");
	WARNS(HEAD PASSWD "listen: [ { address: \"0.0.0.0:25\", tls: none, auth: optional } ]\n",
	      "auth: optional with tls: none");
	NOT_WARNS(HEAD CERT_OK PASSWD "listen: [ { address: \"0.0.0.0:587\", role: submission, "
	                              "tls: required, auth: required } ]\n",
	          "clear text");
}

static void
test_mx_requires_tls(void)
{
	WARNS(HEAD CERT_OK "listen: [ { address: \"0.0.0.0:25\", role: mx, tls: required } ]\n",
	      "warning: listen[0] 0.0.0.0:25: role: mx with tls: required: RFC 3207 forbids "
	      "requiring TLS of MTAs, mail from servers without TLS would be refused (set tls: "
	      "may)");
	WARNS(HEAD CERT_OK "listen: [ { address: \"[2001:db8::1]:25\", tls: implicit } ]\n",
	      "listen[0] [2001:db8::1]:25: role: mx with tls: implicit");
	/* loopback: a test or a local content filter, not the public */
	NOT_WARNS(HEAD CERT_OK "listen: [ { address: \"127.0.0.1:25\", tls: required },\n"
	                       "          { address: \"[::1]:25\", tls: implicit } ]\n",
	          "RFC 3207");
	NOT_WARNS(HEAD CERT_OK "listen: [ { address: \"0.0.0.0:25\", role: mx, tls: may } ]\n",
	          "RFC 3207");
}

static void
test_submission_on_25(void)
{
	WARNS(HEAD CERT_OK PASSWD "listen: [ { address: \"0.0.0.0:25\", role: submission, tls: "
	                          "required, auth: required } ]\n",
	      "warning: listen[0] 0.0.0.0:25: role: submission on port 25: ISPs block port 25 for "
	      "their customers (OP25B)");
	NOT_WARNS(HEAD CERT_OK PASSWD "listen: [ { address: \"0.0.0.0:587\", role: submission, "
	                              "tls: required, auth: required } ]\n",
	          "OP25B");
}

static void
test_submission_without_auth(void)
{
	WARNS(HEAD CERT_OK "listen: [ { address: \"0.0.0.0:587\", role: submission, tls: required, "
	                   "auth: \"off\" } ]\n",
	      "warning: listen[0] 0.0.0.0:587: role: submission with auth: off: clients in "
	      "mynetworks or allow-ip relay anywhere without logging in");
	NOT_WARNS(HEAD CERT_OK PASSWD "listen: [ { address: \"0.0.0.0:587\", role: submission, "
	                              "tls: required, auth: required } ]\n",
	          "auth: off");
}

static void
test_auth_without_users(void)
{
	WARNS(HEAD CERT_OK "listen: [ { address: \"0.0.0.0:587\", role: submission, tls: required, "
	                   "auth: required } ]\n",
	      "warning: listen[0] 0.0.0.0:587: auth: required without auth.passwd_file: nobody "
	      "can log in, so every MAIL gets 530 5.7.0");
	NOT_WARNS(HEAD CERT_OK PASSWD "listen: [ { address: \"0.0.0.0:587\", role: submission, "
	                              "tls: required, auth: required } ]\n",
	          "auth.passwd_file");
}

static void
test_tls_without_certificate(void)
{
	WARNS(HEAD "listen: [ { address: \"0.0.0.0:25\", tls: may } ]\n",
	      "warning: listen[0] 0.0.0.0:25: tls: may without tls.certificate: STARTTLS would "
	      "not be offered");
	NOT_WARNS(HEAD CERT_OK "listen: [ { address: \"0.0.0.0:25\", tls: may } ]\n",
	          "without tls.certificate");
	NOT_WARNS(HEAD "listen: [ { address: \"0.0.0.0:25\", tls: none } ]\n",
	          "without tls.certificate");
}

static void
test_mynetworks(void)
{
	static const char *const wide[] = {"0.0.0.0/0",        "\"::/0\"",      "8.0.0.0/8",
	                                   "10.0.0.0/7",       "100.64.0.0/10", "192.0.2.1",
	                                   "\"2001:db8::/32\""};
	static const char *const own[] = {"10.1.0.0/16",  "172.16.0.0/12",  "192.168.1.0/24",
	                                  "127.0.0.1",    "169.254.0.0/16", "\"::1\"",
	                                  "\"fd00::/8\"", "\"fe80::/64\""};
	char yaml[256];

	WARNS("listen: [ { address: \"127.0.0.1:25\", tls: none } ]\n"
	      "mynetworks: [ 10.0.0.0/8, 0.0.0.0/0 ]\n",
	      "warning: mynetworks[1] 0.0.0.0/0: not a private, loopback or link-local network: "
	      "anyone on the Internet may relay anywhere without AUTH, an open relay for the "
	      "world");
	WARNS("listen: [ { address: \"127.0.0.1:25\", tls: none } ]\nmynetworks: [ \"::/0\" ]\n",
	      "mynetworks[0] ::/0: not a private");
	WARNS("listen: [ { address: \"127.0.0.1:25\", tls: none } ]\nmynetworks: [ 8.0.0.0/8 ]\n",
	      "mynetworks[0] 8.0.0.0/8: not a private, loopback or link-local network: anyone in "
	      "it may relay anywhere without AUTH (list only your own networks)");
	for (size_t i = 0; i < sizeof(wide) / sizeof(wide[0]); i++) {
		snprintf(yaml, sizeof(yaml),
		         "listen: [ { address: \"127.0.0.1:25\", tls: none } ]\n"
		         "mynetworks: [ %s ]\n",
		         wide[i]);
		WARNS(yaml, "not a private, loopback or link-local network");
	}
	for (size_t i = 0; i < sizeof(own) / sizeof(own[0]); i++) {
		snprintf(yaml, sizeof(yaml),
		         "listen: [ { address: \"127.0.0.1:25\", tls: none } ]\n"
		         "mynetworks: [ %s ]\n",
		         own[i]);
		NOT_WARNS(yaml, "mynetworks");
	}
}

/* Past CONFIG_WARN_MAX lines, the rest are counted. */
static void
test_limit(void)
{
	size_t cap = 128 + 24 * (CONFIG_WARN_MAX + 10);
	char *yaml = malloc(cap);
	struct config_warnings *w;
	size_t len;

	CHECK(yaml != NULL);
	if (yaml == NULL)
		return;
	len = (size_t)snprintf(yaml, cap,
	                       "listen: [ { address: \"127.0.0.1:25\", tls: none } ]\n"
	                       "mynetworks:\n");
	for (unsigned i = 0; i < CONFIG_WARN_MAX + 10; i++)
		len +=
		    (size_t)snprintf(yaml + len, cap - len, "  - 8.%u.%u.0/24\n", i / 200, i % 200);
	w = warnings_at(yaml, (int64_t)time(NULL));
	CHECK(w->count == CONFIG_WARN_MAX && w->dropped == 10);
	free(yaml);
}

#define LISTEN_MX "listen: [ { address: \"0.0.0.0:25\", tls: may } ]\n"

static void
test_certificates(void)
{
	struct tls_cert_info info;
	char err[TLS_ERROR_LEN];
	int rc = tls_cert_inspect(TLS_FIXTURE("ecdsa.pem"), TLS_FIXTURE("ecdsa.key"),
	                          "mx.ringmx.test", &info, err, sizeof(err));

	CHECK(rc == 0);
	if (rc != 0) {
		printf("  %s\n", err);
		return;
	}
	NOT_WARNS(HEAD CERT_OK LISTEN_MX, "tls.");
	WARNS(HEAD LISTEN_MX "tls: { certificate: ../fixtures/tls/expired.pem, key: "
	                     "../fixtures/tls/expired.key }\n",
	      "warning: tls.certificate ../fixtures/tls/expired.pem: expired on 2001-01-01: "
	      "clients that check certificates refuse it (renew it)");
	CHECK(count_at(HEAD CERT_OK LISTEN_MX, "not valid before", info.not_before - 86400, 1) ==
	      1);
	CHECK(count_at(HEAD CERT_OK LISTEN_MX, "expires on", info.not_after - 2 * 86400, 1) == 1);
	CHECK(count_at(HEAD CERT_OK LISTEN_MX, "expires on", info.not_after - 30 * 86400, 0) == 0);
	WARNS(HEAD LISTEN_MX "tls: { certificate: ../fixtures/tls/wrongname.pem, key: "
	                     "../fixtures/tls/wrongname.key }\n",
	      "warning: tls.certificate ../fixtures/tls/wrongname.pem: does not name "
	      "mx.ringmx.test: clients that check the name refuse it");
	/* the name asked about is hostname: the same certificate is fine for its own name */
	WARNS("hostname: mail.example.org\n" CERT_OK LISTEN_MX, "does not name mail.example.org");
	WARNS(HEAD LISTEN_MX "tls: { certificate: ../fixtures/tls/ecdsa.pem, key: "
	                     "../fixtures/tls/mismatch.key }\n",
	      "warning: tls.key ../fixtures/tls/mismatch.key: does not match tls.certificate "
	      "../fixtures/tls/ecdsa.pem");
	NOT_WARNS(HEAD CERT_OK LISTEN_MX, "does not match");
	WARNS(HEAD LISTEN_MX "tls: { certificate: ../fixtures/tls/ecdsa.key, key: "
	                     "../fixtures/tls/ecdsa.key }\n",
	      "(the TLS server could not load it)");
}

static void
test_sni_certificates(void)
{
	const char *sni = HEAD LISTEN_MX
	    "tls: { certificate: ../fixtures/tls/ecdsa.pem, key: ../fixtures/tls/ecdsa.key,\n"
	    "  sni: { other.ringmx.test: { certificate: ../fixtures/tls/other.pem,\n"
	    "                              key: ../fixtures/tls/other.key },\n"
	    "         wrong.ringmx.test: { certificate: ../fixtures/tls/ecdsa.pem,\n"
	    "                              key: ../fixtures/tls/ecdsa.key },\n"
	    "         old.ringmx.test: { certificate: ../fixtures/tls/other.pem,\n"
	    "                            key: ../fixtures/tls/ecdsa.key } } }\n";

	/* each SNI certificate is checked against its own name */
	CHECK(count(sni, "other.ringmx.test", 0) == 0);
	WARNS(sni, "warning: tls.sni.wrong.ringmx.test.certificate ../fixtures/tls/ecdsa.pem: does "
	           "not name wrong.ringmx.test");
	WARNS(sni, "warning: tls.sni.old.ringmx.test.key ../fixtures/tls/ecdsa.key: does not match "
	           "tls.sni.old.ringmx.test.certificate ../fixtures/tls/other.pem");
	NOT_WARNS(sni, "warning: tls.certificate");
}

/* The built-in default's certificate is made at start: -t does not look for it. */
static void
test_builtin_default(void)
{
	struct config_errors errs;
	struct config *cfg = config_load(NULL, &errs);
	struct config_warnings *w = calloc(1, sizeof(*w));

	CHECK(cfg != NULL && w != NULL);
	if (cfg == NULL || w == NULL)
		goto out;
	CHECK(config_tls_missing(cfg));
	config_warn(cfg, (int64_t)time(NULL), w);
	/* 2587 and 2465 need users the auth issue will bring; nothing else */
	CHECK(w->count == 2);
	for (unsigned i = 0; i < w->count; i++)
		CHECK(strstr(w->line[i], "without auth.passwd_file") != NULL);
out:
	free(w);
	config_free(cfg);
}

int
main(void)
{
	char dir[] = "/tmp/test_config_warn.XXXXXX";

	if (mkdtemp(dir) == NULL || tls_global_init() != 0) {
		perror("set-up");
		return 1;
	}
	snprintf(scratch_path, sizeof(scratch_path), "%s/ringmx.yaml", dir);
	test_clean();
	test_auth_without_tls();
	test_mx_requires_tls();
	test_submission_on_25();
	test_submission_without_auth();
	test_auth_without_users();
	test_tls_without_certificate();
	test_mynetworks();
	test_limit();
	test_certificates();
	test_sni_certificates();
	test_builtin_default();
	unlink(scratch_path);
	rmdir(dir);
	tls_global_free();
	printf("%u passed, %u failed\n", passed, failed);
	return failed > 0;
}
