/* test_dns.c -- dns/ against a real signed zone tree served by nsd (tests/fixtures/dns). */
#include "dns/dns.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <unbound-event.h>

#include "dns/dnsevent.h"
#include "dns/dnswire.h"
#include "tests/unit/check.h"

#define FIXTURE_SCRIPTS "../fixtures/dns"
#define WAIT_MS         20000
#define MANY            5000 /* concurrent lookups in the load test */
#define PROCESS_MAX_MS  200  /* longest a single dns_process call may take */

struct fixture {
	char dir[256];
	char forward[64];
	char closed[64];
	char ta[300];
	char conf[300];
	char conf_fastfail[300];
	bool started; /* by this test, so stopped by it */
};

struct mx_wait {
	int calls;
	struct dns_mx_result r;
};

struct tlsa_wait {
	int calls;
	struct dns_tlsa_result r;
};

static double
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/*
 * Drives the context the way a worker does: poll dns_fd for POLLIN with dns_timeout_ms as the
 * timeout, then dns_process on readiness or expiry. A 100 ms cap only bounds the test's wait.
 */
static double
run_until(struct dns *d, const int *calls, int want)
{
	double worst = 0, deadline = now_ms() + WAIT_MS;

	while (*calls < want && now_ms() < deadline) {
		struct pollfd p = {.fd = dns_fd(d), .events = POLLIN};
		int timeout = dns_timeout_ms(d);
		if (poll(&p, 1, timeout < 0 || timeout > 100 ? 100 : timeout) < 0)
			continue;
		double t0 = now_ms();
		CHECK(dns_process(d) == 0);
		if (now_ms() - t0 > worst)
			worst = now_ms() - t0;
	}
	return worst;
}

static void
on_mx(void *arg, const struct dns_mx_result *r)
{
	struct mx_wait *w = arg;

	w->calls++;
	w->r = *r;
}

static void
on_tlsa(void *arg, const struct dns_tlsa_result *r)
{
	struct tlsa_wait *w = arg;

	w->calls++;
	w->r = *r;
}

/* dns_resolve_mx or dns_resolve_host */
typedef int (*resolve_fn)(struct dns *d, const char *name, dns_mx_cb cb, void *arg);

static struct dns_mx_result
resolve_wait(struct dns *d, resolve_fn resolve, const char *name)
{
	struct mx_wait w = {0};
	int id = resolve(d, name, on_mx, &w);

	CHECK(id > 0);
	if (id > 0)
		run_until(d, &w.calls, 1);
	CHECK(w.calls == 1);
	return w.r;
}

static struct dns_mx_result
mx(struct dns *d, const char *domain)
{
	return resolve_wait(d, dns_resolve_mx, domain);
}

static struct dns_mx_result
host(struct dns *d, const char *name)
{
	return resolve_wait(d, dns_resolve_host, name);
}

/* The shape every dns_resolve_host result has: one host, the name asked for. */
static bool
host_shape(const struct dns_mx_result *r, const char *name)
{
	return r->implicit && r->host_count == 1 && r->hosts[0].pref == 0 &&
	       strcmp(r->hosts[0].name, name) == 0;
}

static struct dns_tlsa_result
tlsa(struct dns *d, const char *host)
{
	struct tlsa_wait w = {0};
	int id = dns_resolve_tlsa(d, host, 25, on_tlsa, &w);

	CHECK(id > 0);
	if (id > 0)
		run_until(d, &w.calls, 1);
	CHECK(w.calls == 1);
	return w.r;
}

static bool
starts(const char *s, const char *prefix)
{
	return strncmp(s, prefix, strlen(prefix)) == 0;
}

static bool
addr_is(const struct dns_addr *a, const char *text)
{
	uint8_t buf[16];
	int family = strchr(text, ':') ? AF_INET6 : AF_INET;

	if (inet_pton(family, text, buf) != 1 || a->family != family)
		return false;
	return memcmp(a->bytes, buf, family == AF_INET ? 4 : 16) == 0;
}

static struct dns *
fixture_dns(const struct fixture *f, const char *forward, const char *conf, bool dnssec,
            bool ipv6_first)
{
	const char *fwd[] = {forward};
	struct dns_params p = {
	    .forward = fwd,
	    .forward_count = 1,
	    .trust_anchor_file = f->ta,
	    .dnssec = dnssec,
	    .unbound_config = conf,
	    .ipv6_first = ipv6_first,
	};
	char err[256] = "";
	struct dns *d = dns_new(&p, err, sizeof(err));

	if (d == NULL)
		printf("dns_new: %s\n", err);
	return d;
}

static void
test_config_errors(const struct fixture *f)
{
	const char *bad_fwd[] = {"not an address"};
	struct dns_params p = {.forward = bad_fwd, .forward_count = 1, .dnssec = false};
	char err[256] = "";

	CHECK(dns_new(&p, err, sizeof(err)) == NULL);
	CHECK(strstr(err, "dns.forward") != NULL);
	p = (struct dns_params){.forward = NULL, .dnssec = true, .trust_anchor_file = ""};
	CHECK(dns_new(&p, err, sizeof(err)) == NULL);
	CHECK(strstr(err, "trust_anchor_file") != NULL);
	p.trust_anchor_file = "/nonexistent/root.key";
	CHECK(dns_new(&p, err, sizeof(err)) == NULL);
	p = (struct dns_params){.dnssec = false, .unbound_config = "/nonexistent/unbound.conf"};
	CHECK(dns_new(&p, err, sizeof(err)) == NULL);
	CHECK(strstr(err, "unbound_config") != NULL);
	(void)f;
}

static void
test_names(struct dns *d)
{
	struct mx_wait w = {0};
	char longname[300];

	CHECK(dns_resolve_mx(d, "", on_mx, &w) == -EINVAL);
	CHECK(dns_resolve_mx(d, ".", on_mx, &w) == -EINVAL);
	CHECK(dns_resolve_mx(d, "a..test", on_mx, &w) == -EINVAL);
	CHECK(dns_resolve_mx(d, "a b.test", on_mx, &w) == -EINVAL);
	CHECK(dns_resolve_mx(d, ".test", on_mx, &w) == -EINVAL);
	memset(longname, 'a', 64);
	strcpy(longname + 64, ".test");
	CHECK(dns_resolve_mx(d, longname, on_mx, &w) == -EINVAL); /* label over 63 */
	for (int i = 0; i < 256; i += 2)
		memcpy(longname + i, "a.", 2);
	longname[255] = '\0';
	CHECK(dns_resolve_mx(d, longname, on_mx, &w) == -EINVAL); /* over DNS_NAME_MAX */
	longname[DNS_NAME_MAX] = '\0';
	CHECK(dns_resolve_tlsa(d, longname, 25, on_tlsa, &w) == -EINVAL); /* _25._tcp. too long */
	CHECK(dns_resolve_host(d, "a..test", on_mx, &w) == -EINVAL);
	CHECK(dns_resolve_host(d, "[mail.mx.test]", on_mx, &w) == -EINVAL); /* brackets: caller's */
	CHECK(dns_resolve_host(d, "192.0.2.1", on_mx, &w) == -EINVAL);      /* a literal: no DNS */
	CHECK(dns_resolve_host(d, "192.0.2.1.", on_mx, &w) == -EINVAL);
	CHECK(dns_resolve_host(d, "2001:db8::1", on_mx, &w) == -EINVAL);
	CHECK(dns_inflight(d) == 0);
	CHECK(w.calls == 0);
}

static void
test_mx_order(struct dns *d)
{
	struct dns_mx_result r = mx(d, "multi.mx.test");
	bool seen_a_first = false, seen_b_first = false;

	CHECK(r.status == DNS_OK);
	CHECK(r.security == DNS_SECURE);
	CHECK(r.mx_security == DNS_SECURE);
	CHECK(!r.implicit);
	CHECK(r.host_count == 4);
	CHECK(strcmp(r.hosts[0].name, "mx1.multi.mx.test") == 0);
	CHECK(r.hosts[0].pref == 10);
	CHECK(r.hosts[1].pref == 20);
	CHECK(r.hosts[2].pref == 20);
	CHECK(strcmp(r.hosts[3].name, "mx3.multi.mx.test") == 0);
	/* IPv4 first by default; both families present. */
	CHECK(r.hosts[0].addr_count == 2);
	CHECK(addr_is(&r.hosts[0].addrs[0], "192.0.2.1"));
	CHECK(addr_is(&r.hosts[0].addrs[1], "2001:db8::1"));
	CHECK(r.hosts[3].addr_count == 1);
	CHECK(addr_is(&r.hosts[3].addrs[0], "2001:db8::4"));
	for (int i = 0; i < 64; i++) {
		r = mx(d, "multi.mx.test");
		CHECK(r.host_count == 4);
		CHECK(strcmp(r.hosts[0].name, "mx1.multi.mx.test") == 0);
		CHECK(strcmp(r.hosts[3].name, "mx3.multi.mx.test") == 0);
		if (strcmp(r.hosts[1].name, "mx2a.multi.mx.test") == 0) {
			seen_a_first = true;
			CHECK(r.hosts[1].addr_count == 1);
			CHECK(addr_is(&r.hosts[1].addrs[0], "192.0.2.2"));
		} else {
			seen_b_first = true;
			CHECK(strcmp(r.hosts[1].name, "mx2b.multi.mx.test") == 0);
			CHECK(r.hosts[1].addr_count == 2);
		}
	}
	CHECK(seen_a_first);
	CHECK(seen_b_first);
	/* A CNAME chain ends at the same MX set. */
	r = mx(d, "cname.mx.test");
	CHECK(r.status == DNS_OK);
	CHECK(r.security == DNS_SECURE);
	CHECK(r.host_count == 4);
	CHECK(r.hosts[0].pref == 10);
}

static void
test_mx_outcomes(struct dns *d)
{
	struct dns_mx_result r = mx(d, "implicit.mx.test.");

	CHECK(r.status == DNS_OK);
	CHECK(r.implicit);
	CHECK(r.security == DNS_SECURE);
	CHECK(r.host_count == 1);
	CHECK(strcmp(r.hosts[0].name, "implicit.mx.test") == 0);
	CHECK(r.hosts[0].addr_count == 2);
	CHECK(addr_is(&r.hosts[0].addrs[0], "192.0.2.10"));

	r = mx(d, "nullmx.mx.test");
	CHECK(r.status == DNS_PERMFAIL);
	CHECK(starts(r.reason, "556 5.1.10 "));
	CHECK(r.host_count == 0);

	r = mx(d, "NoSuchDomain.mx.test");
	CHECK(r.status == DNS_PERMFAIL);
	CHECK(starts(r.reason, "550 5.1.2 "));
	CHECK(strstr(r.reason, "nosuchdomain.mx.test") != NULL);
	CHECK(r.security == DNS_SECURE); /* the denial itself validated */

	r = mx(d, "noaddr.mx.test");
	CHECK(r.status == DNS_PERMFAIL);
	CHECK(starts(r.reason, "550 5.1.2 "));
	CHECK(r.implicit);

	r = mx(d, "deadmx.mx.test");
	CHECK(r.status == DNS_PERMFAIL);
	CHECK(starts(r.reason, "550 5.4.4 "));
	CHECK(r.host_count == 1);
	CHECK(r.hosts[0].addr_count == 0);
}

static void
test_mx_security(struct dns *d)
{
	struct dns_mx_result r = mx(d, "insecure.test");

	CHECK(r.status == DNS_OK);
	CHECK(r.security == DNS_INSECURE);
	CHECK(r.mx_security == DNS_INSECURE);
	CHECK(r.host_count == 1);
	CHECK(r.hosts[0].addr_count == 1);
	CHECK(addr_is(&r.hosts[0].addrs[0], "192.0.2.20"));

	r = mx(d, "mixed.mx.test");
	CHECK(r.status == DNS_OK);
	CHECK(r.mx_security == DNS_SECURE);
	CHECK(r.hosts[0].security == DNS_INSECURE);
	CHECK(r.security == DNS_INSECURE);

	r = mx(d, "bogus.test");
	CHECK(r.status == DNS_TEMPFAIL);
	CHECK(starts(r.reason, "451 4.7.5 "));
	CHECK(strlen(r.reason) > strlen("451 4.7.5 DNSSEC validation of bogus.test MX failed: "));
	CHECK(r.security == DNS_BOGUS);
	CHECK(r.host_count == 0);
	printf("bogus reason: %s\n", r.reason);

	/* The bogus host is listed for the log but carries no address; the good one is used. */
	r = mx(d, "tobogus.mx.test");
	CHECK(r.status == DNS_OK);
	CHECK(r.security == DNS_BOGUS);
	CHECK(r.host_count == 2);
	CHECK(strcmp(r.hosts[0].name, "mail.bogus.test") == 0);
	CHECK(r.hosts[0].security == DNS_BOGUS);
	CHECK(r.hosts[0].addr_count == 0);
	CHECK(r.hosts[1].security == DNS_SECURE);
	CHECK(r.hosts[1].addr_count == 2);
}

static void
test_mx_limits(struct dns *d)
{
	struct dns_mx_result r = mx(d, "manymx.mx.test");

	CHECK(r.status == DNS_OK);
	CHECK(r.host_count == DNS_MX_MAX);
	for (unsigned i = 0; i < r.host_count; i++) {
		CHECK(r.hosts[i].pref == i + 1); /* the lowest preferences survive */
		CHECK(r.hosts[i].addr_count == 1);
	}
	r = mx(d, "manyaddr.mx.test");
	CHECK(r.status == DNS_OK);
	CHECK(r.hosts[0].addr_count == DNS_ADDR_MAX);
}

static void
test_tlsa(struct dns *d)
{
	struct dns_tlsa_result t = tlsa(d, "mx1.multi.mx.test");

	CHECK(t.status == DNS_OK);
	CHECK(t.security == DNS_SECURE);
	CHECK(t.count == 1);
	CHECK(t.records[0].usage == 3);
	CHECK(t.records[0].selector == 1);
	CHECK(t.records[0].mtype == 1);
	CHECK(t.records[0].data_len == 32);
	CHECK(t.records[0].data[0] == 0x01 && t.records[0].data[31] == 0xef);

	t = tlsa(d, "mail.insecure.test");
	CHECK(t.status == DNS_OK);
	CHECK(t.security == DNS_INSECURE);
	CHECK(t.count == 0);
	CHECK(strstr(t.reason, "insecure") != NULL);

	t = tlsa(d, "mx2a.multi.mx.test");
	CHECK(t.status == DNS_OK);
	CHECK(t.security == DNS_SECURE);
	CHECK(t.count == 0);

	t = tlsa(d, "mail.bogus.test");
	CHECK(t.status == DNS_TEMPFAIL);
	CHECK(t.security == DNS_BOGUS);
	CHECK(t.count == 0);
	CHECK(starts(t.reason, "451 4.7.5 "));
}

static void
test_host(struct dns *d)
{
	struct dns_mx_result r = host(d, "Implicit.MX.test.");

	CHECK(r.status == DNS_OK);
	CHECK(host_shape(&r, "implicit.mx.test"));
	CHECK(r.reason[0] == '\0');
	CHECK(r.security == DNS_SECURE);
	CHECK(r.mx_security == DNS_SECURE);
	CHECK(r.hosts[0].security == DNS_SECURE);
	CHECK(r.hosts[0].addr_count == 2);
	CHECK(addr_is(&r.hosts[0].addrs[0], "192.0.2.10"));
	CHECK(addr_is(&r.hosts[0].addrs[1], "2001:db8::10"));

	/* The name's own addresses, never its MX host's (mx1: 192.0.2.1). */
	r = host(d, "selfmx.mx.test");
	CHECK(r.status == DNS_OK);
	CHECK(host_shape(&r, "selfmx.mx.test"));
	CHECK(r.hosts[0].addr_count == 2);
	CHECK(addr_is(&r.hosts[0].addrs[0], "192.0.2.40"));
	CHECK(addr_is(&r.hosts[0].addrs[1], "2001:db8::40"));
	CHECK(mx(d, "selfmx.mx.test").hosts[0].addr_count == 2); /* as an MX domain: mx1's */
	CHECK(addr_is(&mx(d, "selfmx.mx.test").hosts[0].addrs[0], "192.0.2.1"));

	/* An MX but no address of its own: nothing to connect to. */
	r = host(d, "multi.mx.test");
	CHECK(r.status == DNS_PERMFAIL);
	CHECK(starts(r.reason, "550 5.1.2 "));
	CHECK(strstr(r.reason, "multi.mx.test") != NULL);
	CHECK(host_shape(&r, "multi.mx.test"));
	CHECK(r.hosts[0].addr_count == 0);

	r = host(d, "NoSuchHost.mx.test");
	CHECK(r.status == DNS_PERMFAIL);
	CHECK(starts(r.reason, "550 5.1.2 "));
	CHECK(strstr(r.reason, "nosuchhost.mx.test") != NULL);
	CHECK(r.security == DNS_SECURE); /* the denials validated */
	CHECK(r.hosts[0].addr_count == 0);

	r = host(d, "manyaddr.mx.test");
	CHECK(r.status == DNS_OK);
	CHECK(r.hosts[0].addr_count == DNS_ADDR_MAX);
}

static void
test_host_security(struct dns *d)
{
	struct dns_mx_result r = host(d, "mail.insecure.test");

	CHECK(r.status == DNS_OK);
	CHECK(host_shape(&r, "mail.insecure.test"));
	CHECK(r.security == DNS_INSECURE);
	CHECK(r.hosts[0].security == DNS_INSECURE);
	CHECK(r.mx_security == DNS_SECURE); /* no MX answer involved */
	CHECK(r.hosts[0].addr_count == 1);
	CHECK(addr_is(&r.hosts[0].addrs[0], "192.0.2.20"));

	r = host(d, "mail.bogus.test");
	CHECK(r.status == DNS_TEMPFAIL);
	CHECK(starts(r.reason, "451 4.7.5 "));
	CHECK(strstr(r.reason, "mail.bogus.test") != NULL);
	CHECK(r.security == DNS_BOGUS);
	CHECK(r.hosts[0].security == DNS_BOGUS);
	CHECK(host_shape(&r, "mail.bogus.test"));
	CHECK(r.hosts[0].addr_count == 0);
}

static void
test_ipv6_first(const struct fixture *f)
{
	struct dns *d = fixture_dns(f, f->forward, f->conf, true, true);

	CHECK(d != NULL);
	if (d == NULL)
		return;
	struct dns_mx_result r = mx(d, "implicit.mx.test");
	CHECK(r.hosts[0].addr_count == 2);
	CHECK(addr_is(&r.hosts[0].addrs[0], "2001:db8::10"));
	CHECK(addr_is(&r.hosts[0].addrs[1], "192.0.2.10"));
	r = host(d, "selfmx.mx.test");
	CHECK(r.hosts[0].addr_count == 2);
	CHECK(addr_is(&r.hosts[0].addrs[0], "2001:db8::40"));
	CHECK(addr_is(&r.hosts[0].addrs[1], "192.0.2.40"));
	dns_free(d);
}

static void
test_no_validation(const struct fixture *f)
{
	struct dns *d = fixture_dns(f, f->forward, f->conf, false, false);

	CHECK(d != NULL);
	if (d == NULL)
		return;
	struct dns_mx_result r = mx(d, "bogus.test");
	CHECK(r.status == DNS_OK);
	CHECK(r.security == DNS_INSECURE);
	r = mx(d, "multi.mx.test");
	CHECK(r.security == DNS_INSECURE);
	dns_free(d);
}

static void
test_forwarder_down(const struct fixture *f)
{
	struct dns *d = fixture_dns(f, f->closed, f->conf_fastfail, true, false);

	CHECK(d != NULL);
	if (d == NULL)
		return;
	double t0 = now_ms();
	struct dns_mx_result r = mx(d, "multi.mx.test");
	double took = now_ms() - t0;
	CHECK(r.status == DNS_TEMPFAIL);
	CHECK(starts(r.reason, "451 4.4.3 ") || starts(r.reason, "451 4.7.5 "));
	printf("forwarder down: \"%s\" after %.0f ms\n", r.reason, took);
	r = host(d, "implicit.mx.test");
	CHECK(r.status == DNS_TEMPFAIL);
	CHECK(starts(r.reason, "451 4.4.3 ") || starts(r.reason, "451 4.7.5 "));
	CHECK(host_shape(&r, "implicit.mx.test"));
	printf("forwarder down, host: \"%s\"\n", r.reason);
	struct dns_tlsa_result t = tlsa(d, "mx1.multi.mx.test");
	CHECK(t.status == DNS_TEMPFAIL);
	CHECK(t.count == 0);
	dns_free(d);
}

/*
 * Two lookups of name through resolve and one through other share their queries; one cancelled
 * leaves them running for the rest. Returns the first lookup's result.
 */
static struct dns_mx_result
merge_and_cancel(struct dns *d, resolve_fn resolve, resolve_fn other, const char *name,
                 const char *cancelled)
{
	struct mx_wait a = {0}, b = {0}, c = {0};
	int ida = resolve(d, name, on_mx, &a);
	int idb = resolve(d, name, on_mx, &b);
	int idc = other(d, name, on_mx, &c);

	CHECK(ida > 0 && idb > 0 && idc > 0);
	CHECK(ida != idb);
	CHECK(dns_inflight(d) == 3);
	dns_cancel(d, idb);
	CHECK(dns_inflight(d) == 2);
	dns_cancel(d, idb); /* stale id: ignored */
	run_until(d, &a.calls, 1);
	run_until(d, &c.calls, 1);
	CHECK(a.calls == 1 && c.calls == 1);
	CHECK(b.calls == 0);
	CHECK(a.r.status == DNS_OK && c.r.status == DNS_OK);
	CHECK(dns_inflight(d) == 0);
	dns_cancel(d, ida); /* finished: ignored */

	/* Cancelled alone: no callback ever, nothing left in flight. */
	int id = resolve(d, cancelled, on_mx, &b);
	CHECK(id > 0);
	dns_cancel(d, id);
	CHECK(dns_inflight(d) == 0);
	CHECK(mx(d, "implicit.mx.test").status == DNS_OK);
	CHECK(b.calls == 0);
	return a.r;
}

static void
test_merge_and_cancel(struct dns *d)
{
	merge_and_cancel(d, dns_resolve_mx, dns_resolve_mx, "insecure.test", "cancelled.mx.test");
	/* The host's A and AAAA queries, which the MX lookup's implicit host asks for too. */
	struct dns_mx_result r =
	    merge_and_cancel(d, dns_resolve_host, dns_resolve_mx, "hostmerge.wild.mx.test",
	                     "hostcancel.wild.mx.test");
	CHECK(host_shape(&r, "hostmerge.wild.mx.test"));
	CHECK(r.hosts[0].addr_count == 1);
	CHECK(addr_is(&r.hosts[0].addrs[0], "192.0.2.99"));
}

static void
test_inflight_limit(struct dns *d)
{
	static int ids[DNS_INFLIGHT_MAX];
	struct mx_wait w = {0};
	int n = 0;

	for (; n < DNS_INFLIGHT_MAX; n++) {
		ids[n] = dns_resolve_mx(d, "limit.mx.test", on_mx, &w);
		if (ids[n] <= 0)
			break;
	}
	CHECK(n == DNS_INFLIGHT_MAX);
	CHECK(dns_inflight(d) == DNS_INFLIGHT_MAX);
	CHECK(dns_resolve_mx(d, "limit.mx.test", on_mx, &w) == -DNS_EFULL);
	CHECK(dns_resolve_tlsa(d, "limit.mx.test", 25, on_tlsa, &w) == -DNS_EFULL);
	CHECK(dns_resolve_host(d, "limit.mx.test", on_mx, &w) == -DNS_EFULL);
	CHECK(strstr(dns_strerror(-DNS_EFULL), "DNS_INFLIGHT_MAX") != NULL);
	for (int i = 0; i < n; i++)
		dns_cancel(d, ids[i]);
	CHECK(dns_inflight(d) == 0);
	CHECK(w.calls == 0);
	/* Slots are reused with new ids; an old id cannot cancel the new request. */
	int id = dns_resolve_mx(d, "implicit.mx.test", on_mx, &w);
	CHECK(id > 0);
	dns_cancel(d, ids[0]);
	dns_cancel(d, ids[n - 1]);
	run_until(d, &w.calls, 1);
	CHECK(w.calls == 1);
}

struct load {
	int calls;
	int ok;
	int nxdomain;
};

static void
on_load(void *arg, const struct dns_mx_result *r)
{
	struct load *l = arg;

	l->calls++;
	l->ok += r->status == DNS_OK && r->implicit && r->hosts[0].addr_count == 1;
	l->nxdomain += r->status == DNS_PERMFAIL && starts(r->reason, "550 5.1.2 ");
}

/* MANY distinct names at once, half of them NXDOMAIN; the loop must never stall. */
static void
load_round(struct dns *d, const char *what)
{
	struct load l = {0};
	char name[64];
	int started = 0;

	double t0 = now_ms();
	for (int i = 0; i < MANY; i++) {
		snprintf(name, sizeof(name), i % 2 ? "n%d.nx.mx.test" : "w%d.wild.mx.test", i);
		started += dns_resolve_mx(d, name, on_load, &l) > 0;
	}
	CHECK(started == MANY);
	double worst = run_until(d, &l.calls, MANY);
	double took = now_ms() - t0;
	CHECK(l.calls == MANY);
	CHECK(l.ok == MANY / 2);
	CHECK(l.nxdomain == MANY / 2);
	CHECK(worst < PROCESS_MAX_MS);
	CHECK(dns_inflight(d) == 0);
	printf("%s: %d MX lookups (each MX + A + AAAA or NXDOMAIN) in %.0f ms: %.0f/s, "
	       "longest dns_process %.1f ms\n",
	       what, MANY, took, MANY / took * 1000, worst);
}

/* ---- dnswire: hand-built hostile packets ---- */

struct pkt {
	uint8_t b[1024];
	size_t n;
};

static void
put(struct pkt *p, const void *data, size_t len)
{
	memcpy(p->b + p->n, data, len);
	p->n += len;
}

static void
put16(struct pkt *p, unsigned v)
{
	uint8_t b[2] = {(uint8_t)(v >> 8), (uint8_t)v};

	put(p, b, 2);
}

/* Header, then one question for wire name qname (class IN unless qclass). */
static void
pkt_start(struct pkt *p, unsigned rcode, unsigned qd, unsigned an, const char *qname,
          size_t qname_len, unsigned qtype, unsigned qclass)
{
	p->n = 0;
	put16(p, 0x1234);
	put16(p, 0x8180 | rcode);
	put16(p, qd);
	put16(p, an);
	put16(p, 0);
	put16(p, 0);
	put(p, qname, qname_len);
	put16(p, qtype);
	put16(p, qclass);
}

/* Record header with owner (raw wire bytes, possibly a pointer); rdata follows. */
static void
pkt_rr(struct pkt *p, const char *owner, size_t owner_len, unsigned type, unsigned rdlen)
{
	put(p, owner, owner_len);
	put16(p, type);
	put16(p, 1);
	put16(p, 0);
	put16(p, 300);
	put16(p, rdlen);
}

#define W(s)      s, sizeof(s) - 1 /* a wire-format literal and its length */
#define QNAME_OFF 12

static int
parse(const struct pkt *p, struct dnswire_msg *m)
{
	return dnswire_parse(m, p->b, p->n);
}

/* MX set for multi.mx.test with compressed owners and exchanges. */
static void
pkt_mx(struct pkt *p)
{
	pkt_start(p, 0, 1, 3, W("\5multi\2mx\4test\0"), 15, 1);
	pkt_rr(p, W("\xc0\x0c"), 15, 2 + 6);
	size_t mx1 = p->n + 2;
	put16(p, 10);
	put(p, W("\3mx1\xc0\x0c"));
	pkt_rr(p, W("\xc0\x0c"), 15, 4);
	put16(p, 20);
	put16(p, 0xc000 | (unsigned)mx1); /* the whole exchange is a pointer to mx1's */
	pkt_rr(p, W("\xc0\x0c"), 15, 3);
	put16(p, 0);
	put(p, W("\0")); /* a null MX among real ones */
}

static void
test_wire_mx(void)
{
	struct pkt p;
	struct dnswire_msg m;
	struct dnswire_rr rr;
	char name[DNSWIRE_TEXT_MAX + 1];
	uint16_t pref;
	size_t pos = 0;

	pkt_mx(&p);
	CHECK(parse(&p, &m) == 0);
	CHECK(strcmp(m.qname, "multi.mx.test") == 0);
	CHECK(m.qtype == 15 && m.rcode == 0 && m.count == 3);
	CHECK(dnswire_next(&m, &pos, &rr) == 1);
	CHECK(dnswire_mx(&m, &rr, &pref, name) == 0);
	CHECK(pref == 10 && strcmp(name, "mx1.multi.mx.test") == 0);
	CHECK(dnswire_next(&m, &pos, &rr) == 1);
	CHECK(dnswire_mx(&m, &rr, &pref, name) == 0);
	CHECK(pref == 20 && strcmp(name, "mx1.multi.mx.test") == 0);
	CHECK(dnswire_next(&m, &pos, &rr) == 1);
	CHECK(dnswire_mx(&m, &rr, &pref, name) == 0);
	CHECK(pref == 0 && name[0] == '\0');
	CHECK(dnswire_next(&m, &pos, &rr) == 0);
	CHECK(dnswire_next(&m, &pos, &rr) == 0);
	/* Every truncation is refused: ancount promises three whole records. */
	size_t full = p.n;
	int refused = 0;
	for (p.n = 0; p.n < full; p.n++)
		refused += parse(&p, &m) == -EBADMSG;
	CHECK(refused == (int)full);
	/* Trailing bytes after the answer section (authority, additional) are not read. */
	p.n = full + 7;
	CHECK(parse(&p, &m) == 0);
}

static void
test_wire_names(void)
{
	struct pkt p;
	struct dnswire_msg m;
	struct dnswire_rr rr;
	char name[DNSWIRE_TEXT_MAX + 1];
	uint16_t pref;
	size_t pos;

	/* A pointer to itself, and one pointing forward: both would loop or read ahead. */
	pkt_start(&p, 0, 1, 1, W("\2mx\4test\0"), 15, 1);
	pkt_rr(&p, W("\xc0\x0c"), 15, 4);
	put16(&p, 10);
	put16(&p, 0xc000 | (unsigned)p.n);
	CHECK(parse(&p, &m) == 0);
	pos = 0;
	CHECK(dnswire_next(&m, &pos, &rr) == 1);
	CHECK(dnswire_mx(&m, &rr, &pref, name) == -EBADMSG);
	p.b[p.n - 1] += 2;
	CHECK(dnswire_mx(&m, &rr, &pref, name) == -EBADMSG);
	/* Owner pointing into the header; an extended label type (0x40). */
	pkt_start(&p, 0, 1, 1, W("\2mx\4test\0"), 15, 1);
	pkt_rr(&p, W("\xc0\x02"), 15, 0);
	CHECK(parse(&p, &m) == -EBADMSG);
	pkt_start(&p, 0, 1, 0, W("\x41mx\4test\0"), 15, 1);
	CHECK(parse(&p, &m) == -EBADMSG);
	/* The question: exactly one, class IN, LDH only. */
	pkt_start(&p, 0, 2, 0, W("\2mx\4test\0"), 15, 1);
	CHECK(parse(&p, &m) == -EBADMSG);
	pkt_start(&p, 0, 1, 0, W("\2mx\4test\0"), 15, 3);
	CHECK(parse(&p, &m) == -EBADMSG);
	pkt_start(&p, 0, 1, 0, W("\2m \4test\0"), 15, 1);
	CHECK(parse(&p, &m) == -EBADMSG);
	/* An exchange that is not LDH, or that ends before its rdata does. */
	pkt_start(&p, 0, 1, 1, W("\2mx\4test\0"), 15, 1);
	pkt_rr(&p, W("\xc0\x0c"), 15, 7);
	put16(&p, 10);
	put(&p, W("\3m@x\0"));
	CHECK(parse(&p, &m) == 0);
	pos = 0;
	CHECK(dnswire_next(&m, &pos, &rr) == 1);
	CHECK(dnswire_mx(&m, &rr, &pref, name) == -EBADMSG);
	p.b[p.n - 3] = 'x';
	CHECK(dnswire_mx(&m, &rr, &pref, name) == 0);
	pkt_start(&p, 0, 1, 1, W("\2mx\4test\0"), 15, 1);
	pkt_rr(&p, W("\xc0\x0c"), 15, 8);
	put16(&p, 10);
	put(&p, W("\3mxx\0\0"));
	CHECK(parse(&p, &m) == 0);
	pos = 0;
	CHECK(dnswire_next(&m, &pos, &rr) == 1);
	CHECK(dnswire_mx(&m, &rr, &pref, name) == -EBADMSG);
	/* rdlength past the end of the packet. */
	pkt_start(&p, 0, 1, 1, W("\2mx\4test\0"), 15, 1);
	pkt_rr(&p, W("\xc0\x0c"), 15, 9);
	put16(&p, 10);
	CHECK(parse(&p, &m) == -EBADMSG);
}

/* Exchange reached through n chained pointers: DNSWIRE_PTR_MAX is the most accepted. */
static int
wire_ptr_chain(unsigned n)
{
	struct pkt p;
	struct dnswire_msg m;
	struct dnswire_rr rr;
	char name[DNSWIRE_TEXT_MAX + 1];
	uint16_t pref;
	size_t pos = 0, first;

	pkt_start(&p, 0, 1, 2, W("\2mx\4test\0"), 15, 1);
	pkt_rr(&p, W("\xc0\x0c"), 99, 2 * (n - 1)); /* an unknown type holding the chain */
	first = p.n;
	for (unsigned i = 0; i + 1 < n; i++)
		put16(&p, 0xc000 | (unsigned)(i == 0 ? QNAME_OFF : first + 2 * (i - 1)));
	pkt_rr(&p, W("\xc0\x0c"), 15, 4);
	put16(&p, 10);
	put16(&p, 0xc000 | (unsigned)(n == 1 ? QNAME_OFF : first + 2 * (n - 2)));
	if (parse(&p, &m) != 0 || dnswire_next(&m, &pos, &rr) != 1)
		return -1;
	return dnswire_mx(&m, &rr, &pref, name);
}

/* Text name of n labels of 63 bytes, each compressed onto the previous one. */
static int
wire_long_name(unsigned labels)
{
	struct pkt p;
	struct dnswire_msg m;
	char label[64];
	size_t prev = QNAME_OFF;

	memset(label, 'a', sizeof(label));
	label[0] = 63;
	pkt_start(&p, 0, 1, labels, W("\2mx\4test\0"), 1, 1);
	for (unsigned i = 0; i < labels; i++) {
		size_t at = p.n;
		put(&p, label, 64);
		put16(&p, 0xc000 | (unsigned)prev);
		put16(&p, 99);
		put16(&p, 1);
		put16(&p, 0);
		put16(&p, 0);
		put16(&p, 0);
		prev = at;
	}
	return parse(&p, &m);
}

static void
test_wire_limits(void)
{
	struct pkt p;
	struct dnswire_msg m;
	struct dnswire_rr rr;
	size_t pos = 0;

	CHECK(wire_ptr_chain(1) == 0);
	CHECK(wire_ptr_chain(DNSWIRE_PTR_MAX) == 0);
	CHECK(wire_ptr_chain(DNSWIRE_PTR_MAX + 1) == -EBADMSG);
	CHECK(wire_long_name(3) == 0);        /* 3 * 64 + 9 bytes */
	CHECK(wire_long_name(4) == -EBADMSG); /* over DNSWIRE_NAME_MAX */
	/* A CNAME chain moves the owner; the A record of the first name no longer counts. */
	pkt_start(&p, 0, 1, 3, W("\1c\2mx\4test\0"), 1, 1);
	pkt_rr(&p, W("\xc0\x0c"), 5, 4);
	put(&p, W("\1t\xc0\x0e"));
	pkt_rr(&p, W("\xc0\x0c"), 1, 4);
	put(&p, W("\xc0\0\2\1"));
	size_t target = p.n;
	pkt_rr(&p, W("\1T\2MX\4TEST\0"), 1, 4); /* case differs from the CNAME target */
	put(&p, W("\xc0\0\2\2"));
	CHECK(parse(&p, &m) == 0);
	CHECK(m.cname_hops == 1 && m.count == 1);
	CHECK(dnswire_next(&m, &pos, &rr) == 1);
	CHECK(rr.rdlen == 4 && p.b[rr.rdata_off + 3] == 2);
	CHECK(rr.rdata_off == target + 11 + 10);
	/* A loop of CNAMEs, a.test -> b.test -> a.test ...: DNSWIRE_CNAME_MAX links at most. */
	for (unsigned links = DNSWIRE_CNAME_MAX; links <= DNSWIRE_CNAME_MAX + 1; links++) {
		pkt_start(&p, 0, 1, links, W("\1a\4test\0"), 1, 1);
		for (unsigned i = 0; i < links; i++) {
			if (i % 2 == 0) {
				pkt_rr(&p, W("\xc0\x0c"), 5, 4);
				put(&p, W("\1b\xc0\x0e"));
			} else {
				pkt_rr(&p, W("\1b\xc0\x0e"), 5, 2);
				put16(&p, 0xc00c);
			}
		}
		CHECK(parse(&p, &m) == (links <= DNSWIRE_CNAME_MAX ? 0 : -EBADMSG));
	}
	/* NXDOMAIN comes from the header. */
	pkt_start(&p, 3, 1, 0, W("\2mx\4test\0"), 15, 1);
	CHECK(parse(&p, &m) == 0);
	CHECK(m.rcode == 3 && m.count == 0);
}

/* ---- dnsevent: the pluggable event base on its own ---- */

struct fire {
	int n;
	short bits;
	int order;
};

static int fire_seq;

static void
on_fire(int fd, short bits, void *arg)
{
	struct fire *f = arg;

	f->n++;
	f->bits = bits;
	f->order = ++fire_seq;
}

static bool
cloexec(int fd)
{
	int flags = fcntl(fd, F_GETFD);

	return flags >= 0 && (flags & FD_CLOEXEC);
}

static struct ub_event *
timer_new(struct ub_event_base *ub, struct fire *f, int ms)
{
	struct ub_event *ev = ub->vmt->new_event(ub, -1, UB_EV_TIMEOUT, on_fire, f);
	struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};

	if (ev != NULL && ev->vmt->add_timer(ev, ub, on_fire, f, &tv) != 0) {
		ev->vmt->free(ev);
		return NULL;
	}
	return ev;
}

static void
test_event_timers(struct dnsevent_base *b)
{
	struct ub_event_base *ub = dnsevent_base_ub(b);
	struct fire t[3] = {{0}};
	struct ub_event *ev[3];
	int ms[3] = {60, 20, 40};

	for (int i = 0; i < 3; i++)
		ev[i] = timer_new(ub, &t[i], ms[i]);
	CHECK(ev[0] != NULL && ev[1] != NULL && ev[2] != NULL);
	CHECK(dnsevent_timers(b) == 3);
	int left = dnsevent_timeout_ms(b);
	CHECK(left >= 18 && left <= 20);
	CHECK(dnsevent_run(b, 64) == 0);
	CHECK(ev[0]->vmt->add_signal(ev[0], NULL) != 0); /* signals unsupported */
	CHECK(ev[0]->vmt->del_signal(ev[0]) != 0);
	poll(NULL, 0, 70);
	CHECK(dnsevent_timeout_ms(b) == 0);
	CHECK(dnsevent_run(b, 1) == 1); /* the budget bounds the callbacks */
	CHECK(dnsevent_run(b, 64) == 2);
	CHECK(t[1].order < t[2].order && t[2].order < t[0].order);
	CHECK(t[0].n == 1 && t[1].n == 1 && t[2].n == 1 && t[0].bits == UB_EV_TIMEOUT);
	CHECK(dnsevent_timers(b) == 0);
	CHECK(dnsevent_timeout_ms(b) == -1);
	/* A deleted timer never fires; a re-armed one fires once, at its new time. */
	struct timeval zero = {0, 0}, later = {0, 30000};
	CHECK(ev[0]->vmt->add_timer(ev[0], ub, on_fire, &t[0], &zero) == 0);
	CHECK(ev[0]->vmt->del_timer(ev[0]) == 0);
	CHECK(ev[1]->vmt->add_timer(ev[1], ub, on_fire, &t[1], &zero) == 0);
	CHECK(ev[1]->vmt->add_timer(ev[1], ub, on_fire, &t[1], &later) == 0);
	CHECK(dnsevent_timers(b) == 1);
	CHECK(dnsevent_run(b, 64) == 0);
	poll(NULL, 0, 35);
	CHECK(dnsevent_run(b, 64) == 1);
	CHECK(t[0].n == 1 && t[1].n == 2);
	for (int i = 0; i < 3; i++)
		ev[i]->vmt->free(ev[i]);
	CHECK(dnsevent_events(b) == 0);
}

static bool
readable(int fd, int ms)
{
	struct pollfd p = {.fd = fd, .events = POLLIN};

	return poll(&p, 1, ms) == 1;
}

static void
test_event_fds(struct dnsevent_base *b)
{
	struct ub_event_base *ub = dnsevent_base_ub(b);
	struct fire persist = {0}, once = {0}, idle = {0};
	int a[2], c[2], e[2];

	CHECK(pipe(a) == 0 && pipe(c) == 0 && pipe(e) == 0);
	CHECK(!cloexec(a[0]));
	struct ub_event *pe =
	    ub->vmt->new_event(ub, a[0], UB_EV_READ | UB_EV_PERSIST, on_fire, &persist);
	struct ub_event *oe = ub->vmt->new_event(ub, -1, UB_EV_READ, on_fire, &once);
	struct ub_event *ie = ub->vmt->new_event(ub, e[0], UB_EV_READ, on_fire, &idle);
	CHECK(cloexec(a[0])); /* every descriptor handed over becomes close-on-exec */
	oe->vmt->set_fd(oe, c[0]);
	CHECK(cloexec(c[0]));
	struct timeval tv = {0, 20000};
	CHECK(pe->vmt->add(pe, NULL) == 0 && oe->vmt->add(oe, NULL) == 0);
	CHECK(ie->vmt->add(ie, &tv) == 0); /* readable or timed out, whichever comes first */
	CHECK(!readable(dnsevent_fd(b), 0));
	CHECK(write(a[1], "x", 1) == 1 && write(c[1], "x", 1) == 1);
	CHECK(readable(dnsevent_fd(b), 1000));
	CHECK(dnsevent_run(b, 2) == 2);
	CHECK(persist.n == 1 && persist.bits == UB_EV_READ && once.n == 1);
	/* Level-triggered: still unread, the persistent event fires again, the other does not. */
	CHECK(dnsevent_run(b, 3) == 3);
	CHECK(persist.n == 4 && once.n == 1);
	CHECK(pe->vmt->del(pe) == 0);
	CHECK(dnsevent_run(b, 64) == 0);
	CHECK(dnsevent_timeout_ms(b) > 0);
	poll(NULL, 0, 25);
	CHECK(dnsevent_run(b, 64) == 1);
	CHECK(idle.n == 1 && idle.bits == UB_EV_TIMEOUT);
	CHECK(dnsevent_timers(b) == 0);
	pe->vmt->free(pe);
	oe->vmt->free(oe);
	ie->vmt->free(ie);
	for (int i = 0; i < 2; i++) {
		close(a[i]);
		close(c[i]);
		close(e[i]);
	}
}

/* DNSEVENT_EVENTS_MAX events, all armed timers; one more event is refused. */
static void
test_event_limits(struct dnsevent_base *b)
{
	struct ub_event_base *ub = dnsevent_base_ub(b);
	struct ub_event **evs = calloc(DNSEVENT_EVENTS_MAX, sizeof(*evs));
	struct fire f = {0};
	unsigned made = 0;

	CHECK(evs != NULL);
	if (evs == NULL)
		return;
	for (; made < DNSEVENT_EVENTS_MAX; made++)
		if ((evs[made] = timer_new(ub, &f, 60000 - (int)(made % 1000))) == NULL)
			break;
	CHECK(made == DNSEVENT_EVENTS_MAX);
	CHECK(dnsevent_timers(b) == DNSEVENT_EVENTS_MAX);
	CHECK(ub->vmt->new_event(ub, -1, UB_EV_TIMEOUT, on_fire, &f) == NULL);
	int left = dnsevent_timeout_ms(b);
	CHECK(left > 58000 && left <= 59001); /* the earliest of them */
	for (unsigned i = 0; i < made; i++)
		evs[i]->vmt->free(evs[i]);
	CHECK(dnsevent_events(b) == 0 && dnsevent_timers(b) == 0);
	CHECK(f.n == 0);
	free(evs);
}

static void
test_event_base(void)
{
	struct dnsevent_base *b = NULL;

	CHECK(dnsevent_base_new(&b) == 0);
	if (b == NULL)
		return;
	struct ub_event_base *ub = dnsevent_base_ub(b);
	struct fire f = {0};
	CHECK(cloexec(dnsevent_fd(b)));
	CHECK(dnsevent_timeout_ms(b) == -1);
	CHECK(ub->vmt->new_signal(ub, SIGHUP, on_fire, &f) == NULL);
	CHECK(ub->vmt->dispatch(ub) != 0);
	test_event_timers(b);
	test_event_fds(b);
	test_event_limits(b);
	dnsevent_base_free(b);
}

/* ---- the context runs in this process and this thread, on close-on-exec descriptors ---- */

static int
task_count(void)
{
	DIR *dir = opendir("/proc/self/task");
	struct dirent *e;
	int n = 0;

	if (dir == NULL)
		return -1;
	while ((e = readdir(dir)) != NULL)
		n += e->d_name[0] != '.';
	closedir(dir);
	return n;
}

static bool
no_children(void)
{
	return waitpid(-1, NULL, WNOHANG) == -1 && errno == ECHILD;
}

#define FD_SCAN_MAX 1024

/* Marks the descriptors open now; with before, counts new ones that are not close-on-exec. */
static int
fds_scan(bool open_now[FD_SCAN_MAX], const bool *before, int *fresh)
{
	DIR *dir = opendir("/proc/self/fd");
	struct dirent *e;
	int leaky = 0;

	*fresh = 0;
	if (dir == NULL)
		return -1;
	memset(open_now, 0, FD_SCAN_MAX);
	while ((e = readdir(dir)) != NULL) {
		int fd = atoi(e->d_name);
		if (e->d_name[0] == '.' || fd == dirfd(dir) || fd >= FD_SCAN_MAX)
			continue;
		open_now[fd] = true;
		if (before != NULL && !before[fd]) {
			(*fresh)++;
			leaky += !cloexec(fd);
		}
	}
	closedir(dir);
	return leaky;
}

#define INPROCESS_LOOKUPS 200

static void
on_count(void *arg, const struct dns_mx_result *r)
{
	int *ok = arg;

	*ok += r->status == DNS_OK;
}

/* Runs lookups to completion, scanning descriptors after every dns_process call. */
static void
inprocess_run(struct dns *d, const bool *before, int *fresh_max, int *leaky)
{
	static bool now[FD_SCAN_MAX];
	char name[64];
	int ok = 0, fresh;

	for (int i = 0; i < INPROCESS_LOOKUPS; i++) {
		snprintf(name, sizeof(name), "inprocess%d.wild.mx.test", i);
		CHECK(dns_resolve_mx(d, name, on_count, &ok) > 0);
	}
	/* libunbound 1.17 sends from a zero timeout, in the next dns_process. */
	CHECK(dns_timeout_ms(d) == 0);
	for (double end = now_ms() + WAIT_MS; dns_inflight(d) > 0 && now_ms() < end;) {
		struct pollfd p = {.fd = dns_fd(d), .events = POLLIN};
		int timeout = dns_timeout_ms(d);
		(void)poll(&p, 1, timeout < 0 || timeout > 100 ? 100 : timeout);
		CHECK(dns_process(d) == 0);
		*leaky += fds_scan(now, before, &fresh);
		*fresh_max = fresh > *fresh_max ? fresh : *fresh_max;
	}
	CHECK(ok == INPROCESS_LOOKUPS);
}

static void
test_in_process(const struct fixture *f)
{
	static bool before[FD_SCAN_MAX], now[FD_SCAN_MAX];
	int tasks = task_count(), fresh, fresh_max = 0, leaky = 0;

	CHECK(tasks >= 1);
	CHECK(fds_scan(before, NULL, &fresh) == 0);
	struct dns *d = fixture_dns(f, f->forward, f->conf, true, false);
	CHECK(d != NULL);
	if (d == NULL)
		return;
	CHECK(task_count() == tasks);
	CHECK(no_children());
	CHECK(dns_timeout_ms(d) == -1); /* nothing asked yet, nothing armed */
	CHECK(fds_scan(now, before, &fresh) == 0);
	CHECK(fresh == 1); /* the epoll descriptor */
	inprocess_run(d, before, &fresh_max, &leaky);
	/* libunbound's sockets came and went, none inheritable by anything exec'd. */
	CHECK(fresh_max >= 2);
	CHECK(leaky == 0);
	CHECK(task_count() == tasks);
	CHECK(no_children());
	dns_free(d);
	CHECK(fds_scan(now, before, &fresh) == 0);
	CHECK(fresh == 0); /* dns_free closed everything the context opened */
}

static bool
fixture_env(struct fixture *f)
{
	char path[300], line[128];
	FILE *fp;

	snprintf(path, sizeof(path), "%s/env", f->dir);
	fp = fopen(path, "r");
	if (fp == NULL)
		return false;
	while (fgets(line, sizeof(line), fp) != NULL)
		if (sscanf(line, "RINGMX_DNS_FORWARD=%63s", f->forward) == 1)
			break;
	fclose(fp);
	snprintf(path, sizeof(path), "%s/closed.port", f->dir);
	fp = fopen(path, "r");
	int port = 0;
	if (fp == NULL || fscanf(fp, "%d", &port) != 1)
		port = 9; /* discard: nothing listens there in CI either */
	if (fp != NULL)
		fclose(fp);
	snprintf(f->closed, sizeof(f->closed), "127.0.0.1@%d", port);
	snprintf(f->ta, sizeof(f->ta), "%s/ta.key", f->dir);
	snprintf(f->conf, sizeof(f->conf), "%s/unbound.conf", f->dir);
	snprintf(f->conf_fastfail, sizeof(f->conf_fastfail), "%s/unbound-fastfail.conf", f->dir);
	return f->forward[0] != '\0';
}

/* Uses RINGMX_DNS_FIXTURE if the runner started one, else starts its own. Returns 77: skip. */
static int
fixture_start(struct fixture *f)
{
	const char *dir = getenv("RINGMX_DNS_FIXTURE");
	char cmd[600];

	if (dir != NULL && dir[0] != '\0') {
		snprintf(f->dir, sizeof(f->dir), "%s", dir);
	} else {
		strcpy(f->dir, "/tmp/ringmx-dns-XXXXXX");
		if (mkdtemp(f->dir) == NULL)
			return 1;
		snprintf(cmd, sizeof(cmd), FIXTURE_SCRIPTS "/start.sh %s", f->dir);
		int st = system(cmd);
		if (WIFEXITED(st) && WEXITSTATUS(st) == 77)
			return 77;
		if (st != 0)
			return 1;
		f->started = true;
	}
	return fixture_env(f) ? 0 : 1;
}

static void
fixture_stop(const struct fixture *f)
{
	char cmd[600];

	if (!f->started)
		return;
	snprintf(cmd, sizeof(cmd), FIXTURE_SCRIPTS "/stop.sh %s && rm -rf %s", f->dir, f->dir);
	CHECK(system(cmd) == 0);
}

int
main(void)
{
	struct fixture f = {0};
	int rc = fixture_start(&f);

	if (rc != 0) {
		printf("dns fixture unavailable%s\n",
		       rc == 77 ? " (nsd or ldnsutils missing)" : "");
		return rc == 77 ? 77 : 1;
	}
	test_wire_mx();
	test_wire_names();
	test_wire_limits();
	test_event_base();
	test_in_process(&f);
	struct dns *d = fixture_dns(&f, f.forward, f.conf, true, false);
	CHECK(d != NULL);
	if (d != NULL) {
		test_names(d);
		test_mx_order(d);
		test_mx_outcomes(d);
		test_mx_security(d);
		test_mx_limits(d);
		test_tlsa(d);
		test_host(d);
		test_host_security(d);
		test_merge_and_cancel(d);
		test_inflight_limit(d);
		load_round(d, "uncached");
		load_round(d, "cached");
		dns_free(d);
	}
	test_config_errors(&f);
	test_ipv6_first(&f);
	test_no_validation(&f);
	test_forwarder_down(&f);
	CHECK(no_children());
	fixture_stop(&f);
	printf("%d passed, %d failed\n", passed, failed);
	return failed ? 1 : 0;
}
