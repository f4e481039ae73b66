/*
 * config_warn.c -- the security warnings of `ringmx -t` (see config_warn.h, DESIGN.md).
 * Each check is a leaf that adds at most a line or two; config_warn() runs them in order.
 */
#include "core/config_warn.h"

#include <arpa/inet.h>
#include <assert.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "tls/tls.h"

static void __attribute__((format(printf, 2, 3)))
warn_add(struct config_warnings *w, const char *fmt, ...)
{
	va_list ap;

	if (w->count == CONFIG_WARN_MAX) {
		w->dropped++;
		return;
	}
	va_start(ap, fmt);
	vsnprintf(w->line[w->count], sizeof(w->line[0]), fmt, ap);
	va_end(ap);
	w->count++;
}

static const char *
tls_mode_name(enum config_tls_mode m)
{
	static const char *const names[] = {"none", "may", "required", "implicit"};

	assert((unsigned)m < sizeof(names) / sizeof(names[0]));
	return names[m];
}

static const char *
auth_mode_name(enum config_auth_mode m)
{
	static const char *const names[] = {"off", "optional", "required"};

	assert((unsigned)m < sizeof(names) / sizeof(names[0]));
	return names[m];
}

static uint16_t
sockaddr_port(const struct config_sockaddr *sa)
{
	if (sa->ss.ss_family == AF_INET)
		return ntohs(((const struct sockaddr_in *)&sa->ss)->sin_port);
	return ntohs(((const struct sockaddr_in6 *)&sa->ss)->sin6_port);
}

static bool
sockaddr_loopback(const struct config_sockaddr *sa)
{
	struct config_network v4, v6;
	int rc = config_parse_network("127.0.0.0/8", &v4);

	assert(rc == 0);
	rc = config_parse_network("::1/128", &v6);
	assert(rc == 0);
	return config_network_contains(&v4, (const struct sockaddr *)&sa->ss) ||
	       config_network_contains(&v6, (const struct sockaddr *)&sa->ss);
}

/* Checks of one listener against its role, tls and auth settings. */
static void
warn_listener(const struct config *cfg, unsigned i, struct config_warnings *w)
{
	const struct config_listen *l = &cfg->listen[i];
	char at[96];

	snprintf(at, sizeof(at), "listen[%u] %s", i, l->address.text);
	if (l->auth != CONFIG_AUTH_OFF && l->tls == CONFIG_TLS_NONE)
		warn_add(w,
		         "warning: %s: auth: %s with tls: none: passwords would cross the network "
		         "in clear text (set tls: required, or tls: implicit on port 465)",
		         at, auth_mode_name(l->auth));
	if (l->role == CONFIG_ROLE_MX &&
	    (l->tls == CONFIG_TLS_REQUIRED || l->tls == CONFIG_TLS_IMPLICIT) &&
	    !sockaddr_loopback(&l->address))
		warn_add(w,
		         "warning: %s: role: mx with tls: %s: RFC 3207 forbids requiring TLS of "
		         "MTAs, mail from servers without TLS would be refused (set tls: may)",
		         at, tls_mode_name(l->tls));
	if (l->role == CONFIG_ROLE_SUBMISSION && sockaddr_port(&l->address) == 25)
		warn_add(w,
		         "warning: %s: role: submission on port 25: ISPs block port 25 for their "
		         "customers (OP25B), so mail clients could not reach it (use 587 with tls: "
		         "required, or 465 with tls: implicit)",
		         at);
	if (l->role == CONFIG_ROLE_SUBMISSION && l->auth == CONFIG_AUTH_OFF)
		warn_add(w,
		         "warning: %s: role: submission with auth: off: clients in mynetworks or "
		         "allow-ip relay anywhere without logging in, every other client gets "
		         "554 5.7.1 for every recipient (set auth: required)",
		         at);
	if (l->auth != CONFIG_AUTH_OFF && cfg->auth_passwd_file[0] == '\0')
		warn_add(w,
		         "warning: %s: auth: %s without auth.passwd_file: nobody can log in, so %s "
		         "(set auth.passwd_file)",
		         at, auth_mode_name(l->auth),
		         l->auth == CONFIG_AUTH_REQUIRED ? "every MAIL gets 530 5.7.0"
		                                         : "AUTH can never succeed");
	if (l->tls != CONFIG_TLS_NONE && cfg->tls_certificate[0] == '\0')
		warn_add(w,
		         "warning: %s: tls: %s without tls.certificate: STARTTLS would not be "
		         "offered and mail would arrive in clear text (set tls.certificate and "
		         "tls.key)",
		         at, tls_mode_name(l->tls));
}

/* "10.0.0.0/8" or "2001:db8::/32" (IPv4 networks are stored v4-mapped). */
static void
network_text(const struct config_network *net, char *buf, size_t len)
{
	static const uint8_t v4_mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
	char ip[INET6_ADDRSTRLEN];

	if (net->prefix_len >= 96 && memcmp(net->addr, v4_mapped, sizeof(v4_mapped)) == 0) {
		inet_ntop(AF_INET, net->addr + 12, ip, sizeof(ip));
		snprintf(buf, len, "%s/%u", ip, net->prefix_len - 96u);
	} else {
		inet_ntop(AF_INET6, net->addr, ip, sizeof(ip));
		snprintf(buf, len, "%s/%u", ip, (unsigned)net->prefix_len);
	}
}

/* True when all of net lies inside outer. */
static bool
network_within(const struct config_network *net, const struct config_network *outer)
{
	struct config_network cut = *net;

	if (net->prefix_len < outer->prefix_len)
		return false;
	for (unsigned i = 0; i < 16; i++) {
		unsigned bits = outer->prefix_len > i * 8 ? outer->prefix_len - i * 8 : 0;

		if (bits < 8)
			cut.addr[i] &= (uint8_t)(0xff00u >> bits);
	}
	return memcmp(cut.addr, outer->addr, sizeof(cut.addr)) == 0;
}

/* Networks that are nobody else's: private (RFC 1918, ULA), loopback, link-local. */
static bool
network_private(const struct config_network *net)
{
	static const char *const own[] = {
	    "10.0.0.0/8",     "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8",
	    "169.254.0.0/16", "::1/128",       "fc00::/7",       "fe80::/10",
	};
	struct config_network outer;

	for (size_t i = 0; i < sizeof(own) / sizeof(own[0]); i++) {
		int rc = config_parse_network(own[i], &outer);

		assert(rc == 0);
		if (network_within(net, &outer))
			return true;
	}
	return false;
}

static void
warn_mynetworks(const struct config *cfg, struct config_warnings *w)
{
	for (unsigned i = 0; i < cfg->mynetwork_count; i++) {
		const struct config_network *net = &cfg->mynetworks[i];
		char text[INET6_ADDRSTRLEN + 8];
		bool world;

		if (network_private(net))
			continue;
		network_text(net, text, sizeof(text));
		world = strcmp(text, "0.0.0.0/0") == 0 || strcmp(text, "::/0") == 0;
		warn_add(
		    w,
		    "warning: mynetworks[%u] %s: not a private, loopback or link-local network: "
		    "%s may relay anywhere without AUTH%s (list only your own networks)",
		    i, text, world ? "anyone on the Internet" : "anyone in it",
		    world ? ", an open relay for the world" : "");
	}
}

static void
date_text(int64_t t, char *buf, size_t len)
{
	time_t tt = (time_t)t;
	struct tm tm;

	if (gmtime_r(&tt, &tm) == NULL || strftime(buf, len, "%Y-%m-%d", &tm) == 0)
		snprintf(buf, len, "@%lld", (long long)t);
}

/*
 * One certificate/key pair: what = "tls.certificate" or "tls.sni.NAME.certificate",
 * key_what the key's key, name the host name clients will ask for.
 */
static void
warn_cert(const char *what, const char *key_what, const char *cert, const char *key,
          const char *name, int64_t now, struct config_warnings *w)
{
	struct tls_cert_info info;
	char err[TLS_ERROR_LEN];
	char date[32];

	if (tls_cert_inspect(cert, key, name, &info, err, sizeof(err)) != 0) {
		warn_add(w, "warning: %s %s: %s (the TLS server could not load it)", what, cert,
		         err);
		return;
	}
	if (info.not_after < now) {
		date_text(info.not_after, date, sizeof(date));
		warn_add(w,
		         "warning: %s %s: expired on %s: clients that check certificates refuse "
		         "it (renew it)",
		         what, cert, date);
	} else if (info.not_before > now) {
		date_text(info.not_before, date, sizeof(date));
		warn_add(w,
		         "warning: %s %s: not valid before %s: clients that check certificates "
		         "refuse it (check the clock, or the certificate's dates)",
		         what, cert, date);
	} else if (info.not_after - now < CONFIG_WARN_SOON_S) {
		date_text(info.not_after, date, sizeof(date));
		warn_add(w, "warning: %s %s: expires on %s, in %lld days (renew it)", what, cert,
		         date, (long long)((info.not_after - now) / 86400));
	}
	if (!info.name_matches)
		warn_add(w,
		         "warning: %s %s: does not name %s: clients that check the name refuse "
		         "it (get a certificate for %s)",
		         what, cert, name, name);
	if (!info.key_matches)
		warn_add(w,
		         "warning: %s %s: does not match %s %s: the TLS server refuses to load "
		         "the pair and no handshake could succeed (use the key the certificate "
		         "was made with)",
		         key_what, key, what, cert);
}

static void
warn_certificates(const struct config *cfg, int64_t now, struct config_warnings *w)
{
	char what[CONFIG_DOMAIN_LEN + 32];
	char key_what[CONFIG_DOMAIN_LEN + 32];

	if (cfg->tls_certificate[0] != '\0' && !config_tls_missing(cfg))
		warn_cert("tls.certificate", "tls.key", cfg->tls_certificate, cfg->tls_key,
		          cfg->hostname, now, w);
	for (unsigned i = 0; i < cfg->tls_sni_count; i++) {
		const struct config_sni *sni = &cfg->tls_sni[i];

		snprintf(what, sizeof(what), "tls.sni.%s.certificate", sni->name);
		snprintf(key_what, sizeof(key_what), "tls.sni.%s.key", sni->name);
		warn_cert(what, key_what, sni->certificate, sni->key, sni->name, now, w);
	}
}

unsigned
config_warn(const struct config *cfg, int64_t now, struct config_warnings *w)
{
	assert(cfg);
	assert(w);
	w->count = 0;
	w->dropped = 0;
	for (unsigned i = 0; i < cfg->listen_count; i++)
		warn_listener(cfg, i, w);
	warn_mynetworks(cfg, w);
	warn_certificates(cfg, now, w);
	return w->count;
}
