/* test_dns.c -- dns/ against a real signed zone tree served by nsd (tests/fixtures/dns). */
#include "dns/dns.h"

#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int passed;
static int failed;

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (cond) {                                                                        \
			passed++;                                                                  \
		} else {                                                                           \
			failed++;                                                                  \
			printf("%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond);            \
		}                                                                                  \
	} while (0)

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

/* Drives the context the way a worker does: poll for POLLIN, then dns_process. */
static double
run_until(struct dns *d, const int *calls, int want)
{
	double worst = 0, deadline = now_ms() + WAIT_MS;

	while (*calls < want && now_ms() < deadline) {
		struct pollfd p = {.fd = dns_fd(d), .events = POLLIN};
		if (poll(&p, 1, 100) <= 0)
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

static struct dns_mx_result
mx(struct dns *d, const char *domain)
{
	struct mx_wait w = {0};
	int id = dns_resolve_mx(d, domain, on_mx, &w);

	CHECK(id > 0);
	if (id > 0)
		run_until(d, &w.calls, 1);
	CHECK(w.calls == 1);
	return w.r;
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
	struct dns_tlsa_result t = tlsa(d, "mx1.multi.mx.test");
	CHECK(t.status == DNS_TEMPFAIL);
	CHECK(t.count == 0);
	dns_free(d);
}

static void
test_merge_and_cancel(struct dns *d)
{
	struct mx_wait a = {0}, b = {0}, c = {0};
	int ida = dns_resolve_mx(d, "insecure.test", on_mx, &a);
	int idb = dns_resolve_mx(d, "insecure.test", on_mx, &b);
	int idc = dns_resolve_mx(d, "insecure.test", on_mx, &c);

	CHECK(ida > 0 && idb > 0 && idc > 0);
	CHECK(ida != idb);
	CHECK(dns_inflight(d) == 3);
	/* Cancelling one sharer leaves the shared query running for the others. */
	dns_cancel(d, idb);
	CHECK(dns_inflight(d) == 2);
	dns_cancel(d, idb); /* stale id: ignored */
	run_until(d, &c.calls, 1);
	CHECK(a.calls == 1 && c.calls == 1);
	CHECK(b.calls == 0);
	CHECK(a.r.status == DNS_OK && c.r.status == DNS_OK);
	CHECK(dns_inflight(d) == 0);
	dns_cancel(d, ida); /* finished: ignored */

	/* Cancelled alone: no callback ever, nothing left in flight. */
	int id = dns_resolve_mx(d, "cancelled.mx.test", on_mx, &b);
	CHECK(id > 0);
	dns_cancel(d, id);
	CHECK(dns_inflight(d) == 0);
	CHECK(mx(d, "implicit.mx.test").status == DNS_OK);
	CHECK(b.calls == 0);
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
	struct dns *d = fixture_dns(&f, f.forward, f.conf, true, false);
	CHECK(d != NULL);
	if (d != NULL) {
		/* libunbound without threads resolves in a forked child of ours. */
		CHECK(waitpid(-1, NULL, WNOHANG) == 0);
		test_names(d);
		test_mx_order(d);
		test_mx_outcomes(d);
		test_mx_security(d);
		test_mx_limits(d);
		test_tlsa(d);
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
	/* dns_free stops the resolver process: no child is left behind. */
	CHECK(waitpid(-1, NULL, WNOHANG) == -1 && errno == ECHILD);
	fixture_stop(&f);
	printf("%d passed, %d failed\n", passed, failed);
	return failed ? 1 : 0;
}
