/*
 * test_config.c -- config_load over fixture files (tests/fixtures/config, run from
 * tests/unit) and generated files, and the small parsers of config.h.
 */
#include "core/config.h"

#include "tests/unit/check.h"
#include <arpa/inet.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define FIXTURE(name) "../fixtures/config/" name

/* The test's scratch directory, made once by main. */
struct scratch {
	char dir[64];
	char path[128];
};

static const char *
scratch_write(struct scratch *s, const char *name, const char *text)
{
	FILE *f;

	snprintf(s->path, sizeof(s->path), "%s/%s", s->dir, name);
	f = fopen(s->path, "w");
	if (f == NULL) {
		perror(s->path);
		exit(1);
	}
	fputs(text, f);
	fclose(f);
	return s->path;
}

/* True when errs holds exactly this line. */
static bool
has_error(const struct config_errors *errs, const char *line)
{
	for (unsigned i = 0; i < errs->count; i++)
		if (strcmp(errs->line[i], line) == 0)
			return true;
	printf("  missing error: %s\n  have:\n", line);
	for (unsigned i = 0; i < errs->count; i++)
		printf("    %s\n", errs->line[i]);
	return false;
}

static bool
sockaddr_is(const struct config_sockaddr *sa, int family, const char *ip, unsigned port)
{
	char text[INET6_ADDRSTRLEN];
	const void *addr;
	unsigned p;

	if (sa->ss.ss_family != family)
		return false;
	if (family == AF_INET) {
		addr = &((const struct sockaddr_in *)&sa->ss)->sin_addr;
		p = ntohs(((const struct sockaddr_in *)&sa->ss)->sin_port);
	} else {
		addr = &((const struct sockaddr_in6 *)&sa->ss)->sin6_addr;
		p = ntohs(((const struct sockaddr_in6 *)&sa->ss)->sin6_port);
	}
	inet_ntop(family, addr, text, sizeof(text));
	return strcmp(text, ip) == 0 && p == port;
}

static struct sockaddr_in
ipv4(const char *ip)
{
	struct sockaddr_in sin = {.sin_family = AF_INET};

	inet_pton(AF_INET, ip, &sin.sin_addr);
	return sin;
}

static struct sockaddr_in6
ipv6(const char *ip)
{
	struct sockaddr_in6 sin6 = {.sin6_family = AF_INET6};

	inet_pton(AF_INET6, ip, &sin6.sin6_addr);
	return sin6;
}

static bool
net_contains(const char *net_text, const struct sockaddr *sa)
{
	struct config_network net;

	if (config_parse_network(net_text, &net) < 0)
		return false;
	return config_network_contains(&net, sa);
}

static void
test_sockaddr(void)
{
	struct config_sockaddr sa;

	CHECK(config_parse_sockaddr("1.2.3.4:25", &sa) == 0);
	CHECK(sockaddr_is(&sa, AF_INET, "1.2.3.4", 25));
	CHECK(sa.len == sizeof(struct sockaddr_in));
	CHECK(strcmp(sa.text, "1.2.3.4:25") == 0);
	CHECK(config_parse_sockaddr("[::1]:2525", &sa) == 0);
	CHECK(sockaddr_is(&sa, AF_INET6, "::1", 2525));
	CHECK(sa.len == sizeof(struct sockaddr_in6));
	CHECK(strcmp(sa.text, "[::1]:2525") == 0);
	CHECK(config_parse_sockaddr("[1.2.3.4]:65535", &sa) == 0);
	CHECK(sockaddr_is(&sa, AF_INET, "1.2.3.4", 65535));
	CHECK(config_parse_sockaddr("[2001:db8:0::1]:1", &sa) == 0);
	CHECK(strcmp(sa.text, "[2001:db8::1]:1") == 0);

	CHECK(config_parse_sockaddr("1.2.3.4:99999", &sa) == -EINVAL);
	CHECK(config_parse_sockaddr("1.2.3.4:0", &sa) == -EINVAL);
	CHECK(config_parse_sockaddr("1.2.3.4:", &sa) == -EINVAL);
	CHECK(config_parse_sockaddr("1.2.3.4", &sa) == -EINVAL);
	CHECK(config_parse_sockaddr("1.2.3.4:25x", &sa) == -EINVAL);
	CHECK(config_parse_sockaddr("::1:25", &sa) == -EINVAL);
	CHECK(config_parse_sockaddr("[::1]25", &sa) == -EINVAL);
	CHECK(config_parse_sockaddr("[::1:25", &sa) == -EINVAL);
	CHECK(config_parse_sockaddr("localhost:25", &sa) == -EINVAL);
	CHECK(config_parse_sockaddr("1.2.3.256:25", &sa) == -EINVAL);
	CHECK(config_parse_sockaddr("", &sa) == -EINVAL);
	/* longer than the text buffer: refused, not cut */
	CHECK(config_parse_sockaddr(
	          "[0000:0000:0000:0000:0000:0000:0000:0001]:25.........................", &sa) ==
	      -EINVAL);
}

static void
test_network(void)
{
	struct sockaddr_in in_10 = ipv4("10.200.3.4");
	struct sockaddr_in in_11 = ipv4("11.0.0.1");
	struct sockaddr_in in_host = ipv4("192.0.2.1");
	struct sockaddr_in in_next = ipv4("192.0.2.2");
	struct sockaddr_in6 mapped_10 = ipv6("::ffff:10.1.1.1");
	struct sockaddr_in6 mapped_11 = ipv6("::ffff:11.1.1.1");
	struct sockaddr_in6 v6_in = ipv6("2001:db8:ffff::1");
	struct sockaddr_in6 v6_out = ipv6("2001:db9::1");
	struct sockaddr_in6 loop6 = ipv6("::1");
	struct sockaddr unix_sa = {.sa_family = AF_UNIX};
	struct config_network net;

	CHECK(config_parse_network("10.0.0.0/8", &net) == 0);
	CHECK(net.prefix_len == 104);
	CHECK(net.addr[10] == 0xff && net.addr[11] == 0xff && net.addr[12] == 10);
	CHECK(config_parse_network("::1/128", &net) == 0);
	CHECK(net.prefix_len == 128);
	CHECK(config_parse_network("192.0.2.1", &net) == 0);
	CHECK(net.prefix_len == 128);
	CHECK(config_parse_network("2001:db8::1", &net) == 0);
	CHECK(net.prefix_len == 128);
	CHECK(config_parse_network("0.0.0.0/0", &net) == 0);
	CHECK(net.prefix_len == 96);
	CHECK(config_parse_network("10.0.0.0/33", &net) == -EINVAL);
	CHECK(config_parse_network("::/129", &net) == -EINVAL);
	CHECK(config_parse_network("10.0.0.0/", &net) == -EINVAL);
	CHECK(config_parse_network("10.0.0.0/-1", &net) == -EINVAL);
	CHECK(config_parse_network("10.0.0.0/8x", &net) == -EINVAL);
	CHECK(config_parse_network("10.0.0/8", &net) == -EINVAL);
	CHECK(config_parse_network("example.org", &net) == -EINVAL);
	CHECK(config_parse_network("", &net) == -EINVAL);

	CHECK(net_contains("10.0.0.0/8", (struct sockaddr *)&in_10));
	CHECK(!net_contains("10.0.0.0/8", (struct sockaddr *)&in_11));
	/* an IPv4 client seen on an IPv6 socket matches IPv4 networks */
	CHECK(net_contains("10.0.0.0/8", (struct sockaddr *)&mapped_10));
	CHECK(!net_contains("10.0.0.0/8", (struct sockaddr *)&mapped_11));
	/* host bits in the network are ignored: 10.1.2.3/8 is 10.0.0.0/8 */
	CHECK(net_contains("10.1.2.3/8", (struct sockaddr *)&in_10));
	CHECK(net_contains("192.0.2.1", (struct sockaddr *)&in_host));
	CHECK(!net_contains("192.0.2.1", (struct sockaddr *)&in_next));
	CHECK(net_contains("192.0.2.0/30", (struct sockaddr *)&in_next));
	CHECK(net_contains("2001:db8::/32", (struct sockaddr *)&v6_in));
	CHECK(!net_contains("2001:db8::/32", (struct sockaddr *)&v6_out));
	CHECK(net_contains("::1/128", (struct sockaddr *)&loop6));
	CHECK(!net_contains("::1/128", (struct sockaddr *)&in_10));
	/* an IPv6 network never matches an IPv4 peer, except ::/0 which is everything */
	CHECK(!net_contains("2001:db8::/32", (struct sockaddr *)&in_10));
	CHECK(net_contains("::/0", (struct sockaddr *)&in_10));
	CHECK(net_contains("0.0.0.0/0", (struct sockaddr *)&in_11));
	CHECK(!net_contains("0.0.0.0/0", (struct sockaddr *)&v6_in));
	CHECK(!net_contains("0.0.0.0/0", &unix_sa));
}

static void
test_duration_size(void)
{
	uint64_t v = 7;

	CHECK(config_parse_duration_ms("30s", &v) == 0 && v == 30000);
	CHECK(config_parse_duration_ms("5m", &v) == 0 && v == 300000);
	CHECK(config_parse_duration_ms("1h", &v) == 0 && v == 3600000);
	CHECK(config_parse_duration_ms("5d", &v) == 0 && v == 432000000);
	CHECK(config_parse_duration_ms("250ms", &v) == 0 && v == 250);
	CHECK(config_parse_duration_ms("90", &v) == 0 && v == 90000);
	CHECK(config_parse_duration_ms("0", &v) == 0 && v == 0);
	v = 7;
	CHECK(config_parse_duration_ms("", &v) == -EINVAL && v == 7);
	CHECK(config_parse_duration_ms("s", &v) == -EINVAL);
	CHECK(config_parse_duration_ms("5x", &v) == -EINVAL);
	CHECK(config_parse_duration_ms("5 m", &v) == -EINVAL);
	CHECK(config_parse_duration_ms("-5s", &v) == -EINVAL);
	CHECK(config_parse_duration_ms("1.5s", &v) == -EINVAL);
	CHECK(config_parse_duration_ms("5M", &v) == -EINVAL);
	/* overflow is refused, not wrapped */
	CHECK(config_parse_duration_ms("18446744073709551615ms", &v) == 0 && v == UINT64_MAX);
	CHECK(config_parse_duration_ms("18446744073709551616ms", &v) == -EINVAL);
	CHECK(config_parse_duration_ms("213503982334602d", &v) == -EINVAL);

	CHECK(config_parse_size("1G", &v) == 0 && v == 1073741824);
	CHECK(config_parse_size("64M", &v) == 0 && v == 67108864);
	CHECK(config_parse_size("512m", &v) == 0 && v == 536870912);
	CHECK(config_parse_size("64K", &v) == 0 && v == 65536);
	CHECK(config_parse_size("2T", &v) == 0 && v == 2199023255552ULL);
	CHECK(config_parse_size("36700160", &v) == 0 && v == 36700160);
	CHECK(config_parse_size("", &v) == -EINVAL);
	CHECK(config_parse_size("M", &v) == -EINVAL);
	CHECK(config_parse_size("1MB", &v) == -EINVAL);
	CHECK(config_parse_size("1X", &v) == -EINVAL);
	CHECK(config_parse_size("1.5G", &v) == -EINVAL);
	CHECK(config_parse_size("17179869184G", &v) == -EINVAL);
}

static void
test_domain_normalize(void)
{
	char d1[] = "Mail.Example.ORG.";
	char d2[] = "example.org";
	char d3[] = ".";
	char d4[] = "";

	config_domain_normalize(d1);
	CHECK(strcmp(d1, "mail.example.org") == 0);
	config_domain_normalize(d2);
	CHECK(strcmp(d2, "example.org") == 0);
	config_domain_normalize(d3);
	CHECK(strcmp(d3, "") == 0);
	config_domain_normalize(d4);
	CHECK(strcmp(d4, "") == 0);
}

/* Whole-struct comparison minus what legitimately differs between two loads. */
static bool
config_equal(const struct config *a, const struct config *b)
{
	struct config x = *a;
	struct config y = *b;

	if (a->relay_domain_count != b->relay_domain_count || a->route_count != b->route_count ||
	    a->tls_sni_count != b->tls_sni_count)
		return false;
	for (unsigned i = 0; i < a->tls_sni_count; i++)
		if (memcmp(&a->tls_sni[i], &b->tls_sni[i], sizeof(a->tls_sni[i])) != 0)
			return false;
	for (unsigned i = 0; i < a->relay_domain_count; i++)
		if (strcmp(a->relay_domains[i], b->relay_domains[i]) != 0)
			return false;
	for (unsigned i = 0; i < a->route_count; i++)
		if (memcmp(&a->routes[i], &b->routes[i], sizeof(a->routes[i])) != 0)
			return false;
	memset(x.source, 0, sizeof(x.source));
	memset(y.source, 0, sizeof(y.source));
	x.relay_domains = y.relay_domains = NULL;
	x.routes = y.routes = NULL;
	x.tls_sni = y.tls_sni = NULL;
	x.builtin = y.builtin = false;
	return memcmp(&x, &y, sizeof(x)) == 0;
}

/* A good starting file: every line that sets something explains itself. */
static void
test_default_commented(const char *yaml)
{
	char line[256];
	FILE *f = fmemopen((void *)yaml, strlen(yaml), "r");

	CHECK(f != NULL);
	while (f && fgets(line, sizeof(line), f) != NULL) {
		CHECK(strchr(line, '\n') != NULL && strlen(line) <= 101);
		if (line[0] != '\n' && strchr(line, '#') == NULL)
			printf("  uncommented default line: %s", line);
		CHECK(line[0] == '\n' || strchr(line, '#') != NULL);
	}
	if (f)
		fclose(f);
}

/* Loads s->dir/default.yaml from inside s->dir, with ./var/tls/{cert,key}.pem made or not. */
static struct config *
in_dir_with_default_tls(struct scratch *s, struct config_errors *errs, bool make)
{
	char cwd[512];
	struct config *cfg;

	CHECK(getcwd(cwd, sizeof(cwd)) != NULL);
	CHECK(chdir(s->dir) == 0);
	if (make) {
		CHECK(mkdir("var", 0700) == 0 && mkdir("var/tls", 0700) == 0);
		CHECK(system("touch var/tls/cert.pem var/tls/key.pem") == 0);
	}
	cfg = config_load("default.yaml", errs);
	if (make)
		CHECK(system("rm -r var") == 0);
	CHECK(chdir(cwd) == 0);
	return cfg;
}

static void
test_default(struct scratch *s)
{
	struct config_errors errs;
	struct config *cfg = config_load(NULL, &errs);
	struct config *from_file;
	const char *yaml = config_default_yaml();

	CHECK(cfg != NULL);
	CHECK(errs.count == 0);
	if (cfg == NULL)
		return;
	CHECK(strcmp(cfg->source, "<default>") == 0);
	CHECK(strcmp(cfg->hostname, "localhost") == 0);
	CHECK(cfg->workers >= 1 && cfg->workers <= CONFIG_WORKERS_MAX);
	CHECK(strcmp(cfg->spool_dir, "./var/spool") == 0);
	CHECK(strcmp(cfg->control_socket, "./var/ringmx.sock") == 0);
	CHECK(cfg->user[0] == '\0');
	CHECK(cfg->log_level == CONFIG_LOG_INFO && cfg->log_format == CONFIG_LOG_TEXT);
	CHECK(!cfg->metrics_enabled);
	CHECK(cfg->builtin);
	CHECK(cfg->listen_count == 3);
	CHECK(sockaddr_is(&cfg->listen[0].address, AF_INET, "127.0.0.1", 2525));
	CHECK(cfg->listen[0].role == CONFIG_ROLE_MX);
	CHECK(cfg->listen[0].tls == CONFIG_TLS_MAY);
	CHECK(cfg->listen[0].auth == CONFIG_AUTH_OFF);
	CHECK(sockaddr_is(&cfg->listen[1].address, AF_INET, "127.0.0.1", 2587));
	CHECK(cfg->listen[1].role == CONFIG_ROLE_SUBMISSION);
	CHECK(cfg->listen[1].tls == CONFIG_TLS_REQUIRED);
	CHECK(cfg->listen[1].auth == CONFIG_AUTH_REQUIRED);
	CHECK(sockaddr_is(&cfg->listen[2].address, AF_INET, "127.0.0.1", 2465));
	CHECK(cfg->listen[2].role == CONFIG_ROLE_SUBMISSION);
	CHECK(cfg->listen[2].tls == CONFIG_TLS_IMPLICIT);
	CHECK(cfg->listen[2].auth == CONFIG_AUTH_REQUIRED);
	/* relative to the working directory, like spool_dir; missing here (tests/unit) */
	CHECK(strcmp(cfg->tls_certificate, "./var/tls/cert.pem") == 0);
	CHECK(strcmp(cfg->tls_key, "./var/tls/key.pem") == 0);
	CHECK(cfg->tls_sni_count == 0);
	CHECK(config_tls_missing(cfg));
	CHECK(cfg->relay_domain_count == 1 && strcmp(cfg->relay_domains[0], "example.test") == 0);
	CHECK(cfg->recipient_map[0] == '\0');
	CHECK(cfg->mynetwork_count == 2);
	CHECK(cfg->auth_passwd_file[0] == '\0');
	CHECK(cfg->route_count == 1 && strcmp(cfg->routes[0].domain, "*") == 0);
	CHECK(cfg->routes[0].kind == CONFIG_ROUTE_MX);
	CHECK(cfg->dns_forward_count == 0 && cfg->dns_dnssec);
	CHECK(strcmp(cfg->dns_trust_anchor_file, "/usr/share/dns/root.key") == 0);
	CHECK(cfg->outbound_port == 25 && cfg->outbound_tls == CONFIG_OUT_TLS_DANE);
	CHECK(strcmp(cfg->outbound_tls_ca_file, "/etc/ssl/certs/ca-certificates.crt") == 0);
	CHECK(cfg->outbound_max_connections_per_destination == 20);
	CHECK(cfg->outbound_max_messages_per_connection == 100);
	CHECK(cfg->queue_sync);
	CHECK(cfg->queue_retry_count == 7 && cfg->queue_retry_s[0] == 60 &&
	      cfg->queue_retry_s[6] == 14400);
	CHECK(cfg->queue_max_lifetime_s == 5 * 86400);
	CHECK(cfg->queue_memory_limit == 1ULL << 30);
	CHECK(cfg->queue_segment_size == 64ULL << 20);
	CHECK(cfg->limits_max_message_size == 36700160);
	CHECK(cfg->limits_max_recipients == 1000);
	CHECK(cfg->limits_max_connections == 20000);
	CHECK(cfg->limits_max_connections_per_ip == 100);
	CHECK(cfg->limits_command_timeout_ms == 300000);
	CHECK(cfg->limits_data_timeout_ms == 600000);
	CHECK(cfg->limits_max_errors == 10);
	CHECK(cfg->limits_max_hops == 50);
	CHECK(cfg->limits_bare_newline == CONFIG_BARE_NEWLINE_NORMALIZE);

	/*
	 * what --default-config prints, saved and loaded, is the same configuration; as a -c
	 * file its certificate must exist (only the built-in default gets one made at start)
	 */
	scratch_write(s, "default.yaml", yaml);
	from_file = in_dir_with_default_tls(s, &errs, false);
	CHECK(from_file == NULL);
	CHECK(errs.count == 2);
	CHECK(strstr(errs.line[0], "default.yaml:21:16: tls.certificate: cannot read file: No such "
	                           "file or directory") != NULL);
	from_file = in_dir_with_default_tls(s, &errs, true);
	CHECK(from_file != NULL);
	CHECK(from_file && config_equal(cfg, from_file));
	CHECK(from_file && !from_file->builtin && !config_tls_missing(from_file));
	config_free(from_file);
	config_free(cfg);

	test_default_commented(yaml);
}

/* Keys left out of a file take the production defaults, not the development ones. */
static void
test_production_defaults(struct scratch *s)
{
	struct config_errors errs;
	struct config *cfg =
	    config_load(scratch_write(s, "min.yaml", "hostname: a.example\n"), &errs);

	CHECK(cfg != NULL);
	if (cfg == NULL)
		return;
	CHECK(strcmp(cfg->spool_dir, "/var/spool/ringmx") == 0);
	CHECK(strcmp(cfg->control_socket, "/run/ringmx/ctl.sock") == 0);
	CHECK(cfg->listen_count == 1);
	CHECK(sockaddr_is(&cfg->listen[0].address, AF_INET, "0.0.0.0", 25));
	CHECK(cfg->listen[0].role == CONFIG_ROLE_MX && cfg->listen[0].tls == CONFIG_TLS_MAY);
	CHECK(cfg->relay_domain_count == 0);
	CHECK(cfg->mynetwork_count == 2);
	CHECK(cfg->route_count == 1 && cfg->routes[0].kind == CONFIG_ROUTE_MX);
	CHECK(cfg->dns_dnssec && cfg->queue_sync);
	CHECK(cfg->limits_max_hops == 50 && cfg->queue_segment_size == 64ULL << 20);
	config_free(cfg);
}

/* Loads a file that must be valid, showing its errors if it is not. */
static struct config *
load_ok(const char *path)
{
	struct config_errors errs;
	struct config *cfg = config_load(path, &errs);

	CHECK(cfg != NULL);
	for (unsigned i = 0; i < errs.count; i++)
		printf("  %s\n", errs.line[i]);
	return cfg;
}

static void
check_full_numbers(const struct config *cfg)
{
	CHECK(cfg->outbound_port == 2526 && cfg->outbound_tls == CONFIG_OUT_TLS_DANE);
	CHECK(cfg->outbound_max_connections_per_destination == 7);
	CHECK(cfg->outbound_max_messages_per_connection == 9);
	CHECK(!cfg->queue_sync);
	CHECK(cfg->queue_retry_count == 3);
	CHECK(cfg->queue_retry_s[0] == 30 && cfg->queue_retry_s[1] == 120);
	CHECK(cfg->queue_retry_s[2] == 3600);
	CHECK(cfg->queue_max_lifetime_s == 2 * 86400);
	CHECK(cfg->queue_memory_limit == 512ULL << 20);
	CHECK(cfg->queue_segment_size == 1ULL << 20);
	CHECK(cfg->limits_max_message_size == 10ULL << 20);
	CHECK(cfg->limits_max_recipients == 50);
	CHECK(cfg->limits_max_connections == 300);
	CHECK(cfg->limits_max_connections_per_ip == 4);
	CHECK(cfg->limits_command_timeout_ms == 250);
	CHECK(cfg->limits_data_timeout_ms == 90000);
	CHECK(cfg->limits_max_errors == 3);
	CHECK(cfg->limits_max_hops == 30);
	CHECK(cfg->limits_bare_newline == CONFIG_BARE_NEWLINE_REJECT);
}

static void
test_full(void)
{
	struct config *cfg = load_ok(FIXTURE("full.yaml"));

	if (cfg == NULL)
		return;
	CHECK(strcmp(cfg->hostname, "mx.example.test") == 0);
	CHECK(cfg->workers == 3);
	CHECK(strcmp(cfg->spool_dir, "/tmp/ringmx-test-spool") == 0);
	CHECK(strcmp(cfg->user, "ringmx") == 0);
	CHECK(strcmp(cfg->control_socket, "/tmp/ringmx-test.sock") == 0);
	CHECK(cfg->log_level == CONFIG_LOG_DEBUG && cfg->log_format == CONFIG_LOG_JSON);
	CHECK(cfg->metrics_enabled);
	CHECK(sockaddr_is(&cfg->metrics_listen, AF_INET, "127.0.0.1", 9465));
	CHECK(cfg->listen_count == 3);
	CHECK(sockaddr_is(&cfg->listen[0].address, AF_INET, "0.0.0.0", 25));
	CHECK(cfg->listen[0].auth == CONFIG_AUTH_OFF);
	CHECK(sockaddr_is(&cfg->listen[1].address, AF_INET6, "::1", 587));
	CHECK(cfg->listen[1].role == CONFIG_ROLE_SUBMISSION);
	CHECK(cfg->listen[1].tls == CONFIG_TLS_REQUIRED);
	CHECK(cfg->listen[1].auth == CONFIG_AUTH_REQUIRED);
	CHECK(sockaddr_is(&cfg->listen[2].address, AF_INET, "1.2.3.4", 465));
	CHECK(cfg->listen[2].tls == CONFIG_TLS_IMPLICIT);
	CHECK(cfg->listen[2].auth == CONFIG_AUTH_OPTIONAL);
	CHECK(strcmp(cfg->tls_certificate, FIXTURE("full.yaml")) == 0);
	CHECK(strcmp(cfg->tls_key, FIXTURE("full.json")) == 0);
	/* normalised, sorted, duplicates dropped */
	CHECK(cfg->relay_domain_count == 3);
	CHECK(strcmp(cfg->relay_domains[0], "a.example") == 0);
	CHECK(strcmp(cfg->relay_domains[1], "example.net") == 0);
	CHECK(strcmp(cfg->relay_domains[2], "example.org") == 0);
	CHECK(strcmp(cfg->recipient_map, FIXTURE("full.yaml")) == 0);
	CHECK(cfg->mynetwork_count == 3);
	CHECK(cfg->mynetworks[0].prefix_len == 104 && cfg->mynetworks[1].prefix_len == 32);
	CHECK(cfg->mynetworks[2].prefix_len == 128);
	CHECK(strcmp(cfg->auth_passwd_file, FIXTURE("full.yaml")) == 0);
	/* sorted by domain: "*" first */
	CHECK(cfg->route_count == 4);
	CHECK(strcmp(cfg->routes[0].domain, "*") == 0 && cfg->routes[0].kind == CONFIG_ROUTE_MX);
	CHECK(strcmp(cfg->routes[1].domain, "example.com") == 0);
	CHECK(cfg->routes[1].kind == CONFIG_ROUTE_HOST_MX);
	CHECK(strcmp(cfg->routes[1].host, "smarthost.example.com") == 0);
	CHECK(strcmp(cfg->routes[2].domain, "example.net") == 0);
	CHECK(cfg->routes[2].kind == CONFIG_ROUTE_HOST && cfg->routes[2].port == 0);
	CHECK(strcmp(cfg->routes[2].host, "relay.example.net") == 0);
	CHECK(strcmp(cfg->routes[3].domain, "example.org") == 0);
	CHECK(cfg->routes[3].kind == CONFIG_ROUTE_HOST && cfg->routes[3].port == 2525);
	CHECK(strcmp(cfg->routes[3].host, "10.0.0.5") == 0);
	CHECK(cfg->dns_forward_count == 2);
	CHECK(strcmp(cfg->dns_forward[0], "127.0.0.1@5353") == 0);
	CHECK(strcmp(cfg->dns_forward[1], "::1") == 0);
	CHECK(strcmp(cfg->dns_trust_anchor_file, FIXTURE("full.yaml")) == 0);
	CHECK(!cfg->dns_dnssec);
	CHECK(strcmp(cfg->dns_unbound_config, FIXTURE("full.yaml")) == 0);
	CHECK(strcmp(cfg->dns_hosts_file, FIXTURE("full.yaml")) == 0);
	CHECK(cfg->dns_prefer_ipv6);
	check_full_numbers(cfg);
	config_free(cfg);
}

static void
test_json(void)
{
	struct config *cfg = load_ok(FIXTURE("full.json"));

	if (cfg == NULL)
		return;
	CHECK(strcmp(cfg->hostname, "json.example.test") == 0);
	CHECK(cfg->workers == 2);
	CHECK(cfg->listen_count == 1 && cfg->listen[0].tls == CONFIG_TLS_NONE);
	CHECK(cfg->relay_domain_count == 2 && strcmp(cfg->relay_domains[0], "a.example") == 0);
	CHECK(cfg->mynetwork_count == 1);
	/* the "*" default is added when routes leave it out */
	CHECK(cfg->route_count == 2 && strcmp(cfg->routes[0].domain, "*") == 0);
	CHECK(cfg->routes[1].kind == CONFIG_ROUTE_HOST && cfg->routes[1].port == 25);
	CHECK(cfg->queue_sync && cfg->queue_retry_count == 2);
	CHECK(cfg->queue_retry_s[0] == 60 && cfg->queue_retry_s[1] == 300);
	CHECK(cfg->queue_memory_limit == 1048576);
	CHECK(cfg->limits_max_hops == 20 && cfg->limits_command_timeout_ms == 60000);
	CHECK(!cfg->dns_prefer_ipv6); /* the default */
	config_free(cfg);
}

/* Loads a fixture that must fail; returns its errors. */
static struct config_errors
load_failing(const char *path)
{
	struct config_errors errs;
	struct config *cfg = config_load(path, &errs);

	CHECK(cfg == NULL);
	CHECK(errs.count > 0);
	config_free(cfg);
	return errs;
}

static void
test_errors(void)
{
	struct config_errors e;

	e = load_failing(FIXTURE("unknown_key.yaml"));
	CHECK(e.count == 2);
	CHECK(
	    has_error(&e, FIXTURE("unknown_key.yaml") ":3:1: spooldir: unknown key \"spooldir\""));
	CHECK(
	    has_error(&e, FIXTURE("unknown_key.yaml") ":4:21: log.colour: unknown key \"colour\""));

	e = load_failing(FIXTURE("wrong_type.yaml"));
	CHECK(e.count == 6);
	CHECK(has_error(&e, FIXTURE("wrong_type.yaml") ":2:10: workers: expected an integer"));
	CHECK(has_error(&e, FIXTURE("wrong_type.yaml") ":3:8: log: expected a mapping of keys"));
	CHECK(has_error(&e, FIXTURE("wrong_type.yaml") ":4:11: listen: expected a list"));
	CHECK(
	    has_error(&e, FIXTURE("wrong_type.yaml") ":5:19: outbound.port: expected an integer"));
	CHECK(has_error(&e, FIXTURE("wrong_type.yaml") ":6:24: queue.max_lifetime: expected a "
	                                               "duration (e.g. 250ms, 30s, 5m, 1h, 5d)"));
	CHECK(has_error(&e, FIXTURE("wrong_type.yaml") ":6:47: queue.memory_limit: expected a "
	                                               "size (e.g. 64K, 64M, 1G, or bytes)"));

	/* every problem of the file at once, each at its own line and column */
	e = load_failing(FIXTURE("bad_values.yaml"));
	CHECK(e.count == 10);
	CHECK(has_error(&e, FIXTURE("bad_values.yaml") ":4:16: listen[1].address: bad address "
	                                               "\"1.2.3.4:99999\" (want HOST:PORT)"));
	CHECK(has_error(&e, FIXTURE("bad_values.yaml") ":5:7: listen[2]: needs an address"));
	CHECK(has_error(&e, FIXTURE("bad_values.yaml") ":6:28: mynetworks[1]: bad CIDR "
	                                               "\"10.0.0.0/33\""));
	CHECK(
	    has_error(&e, FIXTURE("bad_values.yaml") ":6:41: mynetworks[2]: bad CIDR \"::1/129\""));
	CHECK(has_error(&e, FIXTURE("bad_values.yaml") ":6:52: mynetworks[3]: bad CIDR "
	                                               "\"not-a-net\""));
	CHECK(has_error(&e, FIXTURE("bad_values.yaml") ":7:31: relay_domains[1]: bad domain "
	                                               "\"bad domain\""));
	CHECK(has_error(&e, FIXTURE("bad_values.yaml") ":7:45: relay_domains[2]: bad domain "
	                                               "\"-bad.example\""));
	CHECK(has_error(&e, FIXTURE("bad_values.yaml") ":9:16: routes.example.org: bad route "
	                                               "\"[10.0.0.5]:0\" (want mx, HOST, [HOST] or "
	                                               "[HOST]:PORT)"));
	CHECK(has_error(&e, FIXTURE("bad_values.yaml") ":10:16: routes.example.net: bad route "
	                                               "\"10.0.0.1\" (want mx, HOST, [HOST] or "
	                                               "[HOST]:PORT)"));
	CHECK(has_error(&e, FIXTURE("bad_values.yaml") ":11:19: dns.forward[0]: bad resolver "
	                                               "\"127.0.0.1@99999\" (want IP or IP@PORT)"));
}

/* Files that cannot be read, and YAML that cannot be parsed. */
static void
test_file_errors(void)
{
	struct config_errors e;

	e = load_failing(FIXTURE("unreadable.yaml"));
	CHECK(e.count == 5);
	CHECK(has_error(&e, FIXTURE("unreadable.yaml") ":1:16: recipient_map: cannot read file: "
	                                               "No such file or directory"));
	CHECK(has_error(&e, FIXTURE("unreadable.yaml") ":2:21: tls.certificate: cannot read "
	                                               "file: No such file or directory"));
	CHECK(has_error(&e, FIXTURE("unreadable.yaml") ":2:49: tls.key: cannot read file: No such "
	                                               "file or directory"));
	CHECK(has_error(&e, FIXTURE("unreadable.yaml") ":3:22: auth.passwd_file: cannot read "
	                                               "file: not a regular file"));
	CHECK(has_error(&e, FIXTURE("unreadable.yaml") ":4:27: dns.trust_anchor_file: cannot "
	                                               "read file: No such file or directory"));

	/* libfyaml's own diagnostics come back as lines too, nothing on stderr */
	e = load_failing(FIXTURE("syntax.yaml"));
	CHECK(e.count == 1);
	CHECK(has_error(&e, FIXTURE("syntax.yaml") ":4:1: yaml: flow sequence without a closing "
	                                           "bracket"));

	e = load_failing(FIXTURE("missing.yaml"));
	CHECK(e.count == 1);
	CHECK(
	    has_error(&e, FIXTURE("missing.yaml") ": cannot read file: No such file or directory"));
	e = load_failing("../fixtures/config");
	CHECK(has_error(&e, "../fixtures/config: cannot read file: Is a directory"));
}

static void
test_more_errors(struct scratch *s)
{
	struct config_errors e;

	e = load_failing(scratch_write(s, "empty.yaml", ""));
	CHECK(e.count == 1 && strstr(e.line[0], "empty file") != NULL);
	e = load_failing(scratch_write(s, "scalar.yaml", "just text\n"));
	CHECK(e.count == 1 && strstr(e.line[0], ":1:1: expected a mapping") != NULL);
	e = load_failing(scratch_write(s, "dup.yaml", "workers: 1\nworkers: 2\n"));
	CHECK(e.count == 1 && strstr(e.line[0], ":2:1: yaml: duplicate key") != NULL);
	e = load_failing(
	    scratch_write(s, "range.yaml",
	                  "workers: 65\nlimits: { max_errors: 0, command_timeout: 5ms }\n"
	                  "outbound: { port: 65536 }\nqueue: { segment_size: 1K }\n"));
	CHECK(e.count == 5);
	CHECK(strstr(e.line[0], ":1:10: workers: out of range (0..64)") != NULL);
	CHECK(strstr(e.line[2], "limits.command_timeout: out of range (10..86400000 ms)") != NULL);
	CHECK(strstr(e.line[3], "outbound.port: out of range (1..65535)") != NULL);
	e = load_failing(scratch_write(
	    s, "enum.yaml", "listen: [ { address: \"127.0.0.1:25\", tls: sometimes } ]\n"));
	CHECK(e.count == 1);
	CHECK(strstr(e.line[0], ":1:43: listen[0].tls: bad value \"sometimes\" (want one of: none, "
	                        "may, required, implicit)") != NULL);
	e = load_failing(scratch_write(s, "empty_lists.yaml",
	                               "listen: []\nqueue: { retry: [] }\nspool_dir: \"\"\n"));
	CHECK(e.count == 3);
	CHECK(strstr(e.line[0], "listen: needs at least 1 entry") != NULL);
	CHECK(strstr(e.line[1], "queue.retry: needs at least 1 entry") != NULL);
	CHECK(strstr(e.line[2], ":3:12: spool_dir: needs a directory") != NULL);
	e = load_failing(scratch_write(s, "hostname.yaml", "hostname: \"bad_name\"\n"));
	CHECK(e.count == 1 && strstr(e.line[0], ":1:11: hostname: bad host name") != NULL);
	e = load_failing(
	    scratch_write(s, "dup_route.yaml", "routes: { example.org: mx, Example.Org.: mx }\n"));
	CHECK(e.count == 1 && strstr(e.line[0], "duplicate route for \"example.org\"") != NULL);
}

/* `off` unquoted is the string "off" (YAML 1.2 core schema), not a boolean. */
static void
test_off_is_a_string(void)
{
	struct config *cfg = load_ok(FIXTURE("off.yaml"));

	if (cfg == NULL)
		return;
	CHECK(strcmp(cfg->hostname, "off") == 0);
	CHECK(cfg->listen[0].auth == CONFIG_AUTH_OFF && cfg->listen[0].tls == CONFIG_TLS_NONE);
	CHECK(!cfg->dns_dnssec);
	CHECK(!cfg->queue_sync);
	CHECK(strcmp(cfg->user, "no") == 0);
	config_free(cfg);
}

static void
test_tls_rules(struct scratch *s)
{
	struct config_errors e;
	struct config *cfg;

	/* auth without auth.passwd_file fails closed (530 to MAIL): a -t warning, no error */
	e = load_failing(FIXTURE("tls_rules.yaml"));
	CHECK(e.count == 1);
	CHECK(
	    has_error(&e, FIXTURE("tls_rules.yaml") ":5:8: tls: certificate and key go together"));

	e = load_failing(scratch_write(s, "tls.yaml",
	                               "listen:\n"
	                               "  - { address: \"127.0.0.1:25\", tls: may }\n"
	                               "  - { address: \"127.0.0.1:587\", tls: required }\n"
	                               "  - { address: \"127.0.0.1:465\", tls: implicit }\n"));
	CHECK(e.count == 2);
	CHECK(strstr(e.line[0], ":3:38: listen[1].tls: needs tls.certificate and tls.key") != NULL);
	CHECK(strstr(e.line[1], ":4:38: listen[2].tls: needs tls.certificate and tls.key") != NULL);

	/* until the TLS module lands, `may` without a certificate just offers no STARTTLS */
	cfg = config_load(
	    scratch_write(s, "may.yaml", "listen: [ { address: \"127.0.0.1:25\", tls: may } ]\n"),
	    &e);
	CHECK(cfg != NULL && cfg->listen[0].tls == CONFIG_TLS_MAY);
	config_free(cfg);
}

#define TLS_PAIR                                                                                   \
	"tls: { certificate: ../fixtures/config/full.yaml, key: ../fixtures/config/full.json"

static void
test_sni(struct scratch *s)
{
	struct config_errors e;
	struct config *cfg;
	char *text;
	size_t len;

	cfg = load_ok(scratch_write(
	    s, "sni.yaml",
	    TLS_PAIR ",\n"
	             "  sni: { Mx.Other.TEST.: { certificate: ../fixtures/config/off.yaml,"
	             " key: ../fixtures/config/full.yaml },\n"
	             "         b.example: { certificate: ../fixtures/config/full.json,"
	             " key: ../fixtures/config/full.json } } }\n"));
	CHECK(cfg && cfg->tls_sni_count == 2);
	if (cfg && cfg->tls_sni_count == 2) {
		/* names lower-cased, without the trailing dot; file order kept */
		CHECK(strcmp(cfg->tls_sni[0].name, "mx.other.test") == 0);
		CHECK(strcmp(cfg->tls_sni[0].certificate, FIXTURE("off.yaml")) == 0);
		CHECK(strcmp(cfg->tls_sni[0].key, FIXTURE("full.yaml")) == 0);
		CHECK(strcmp(cfg->tls_sni[1].name, "b.example") == 0);
	}
	config_free(cfg);

	e = load_failing(scratch_write(
	    s, "sni_bad.yaml",
	    TLS_PAIR
	    ",\n"
	    "  sni: { a.example: { certificate: /nonexistent.pem, key: /nonexistent.key },\n"
	    "         \"*.example\": { certificate: x, key: y },\n"
	    "         b.example: { certificate: ../fixtures/config/off.yaml, key: "
	    "../fixtures/config/off.yaml },\n"
	    "         B.Example: { certificate: x, key: y },\n"
	    "         c.example: { certificate: ../fixtures/config/off.yaml },\n"
	    "         d.example: { chain: z },\n"
	    "         e.example: ../fixtures/config/off.yaml } }\n"));
	CHECK(e.count == 7);
	CHECK(strstr(e.line[0], ":2:36: tls.sni.a.example.certificate: cannot read file") != NULL);
	CHECK(strstr(e.line[1], ":2:59: tls.sni.a.example.key: cannot read file") != NULL);
	CHECK(strstr(e.line[2], ":3:10: tls.sni.*.example: bad server name \"*.example\" (want an "
	                        "exact host name)") != NULL);
	CHECK(strstr(e.line[3], ":5:10: tls.sni.B.Example: duplicate server name \"b.example\"") !=
	      NULL);
	CHECK(strstr(e.line[4], ":6:23: tls.sni.c.example: needs certificate and key") != NULL);
	CHECK(strstr(e.line[5], ":7:23: tls.sni.d.example.chain: unknown key \"chain\"") != NULL);
	CHECK(strstr(e.line[6], ":8:21: tls.sni.e.example: expected { certificate: FILE, key: FILE "
	                        "}") != NULL);

	cfg = load_ok(scratch_write(s, "sni_null.yaml", TLS_PAIR ", sni: ~ }\n"));
	CHECK(cfg && cfg->tls_sni_count == 0);
	config_free(cfg);

	/* the default certificate is what clients without SNI (or another name) get */
	e = load_failing(
	    scratch_write(s, "sni_alone.yaml",
	                  "tls: { sni: { a.example: { certificate: "
	                  "../fixtures/config/off.yaml, key: ../fixtures/config/off.yaml"
	                  " } } }\n"));
	CHECK(e.count == 1);
	CHECK(strstr(e.line[0], ":1:15: tls.sni: needs tls.certificate and tls.key") != NULL);

	/* CONFIG_SNI_MAX names fit, one more does not */
	text = malloc(16384);
	CHECK(text != NULL);
	if (text == NULL)
		return;
	for (unsigned n = CONFIG_SNI_MAX; n <= CONFIG_SNI_MAX + 1; n++) {
		len = (size_t)snprintf(text, 16384, TLS_PAIR ",\n  sni: {\n");
		for (unsigned i = 0; i < n; i++)
			len +=
			    (size_t)snprintf(text + len, 16384 - len,
			                     "    n%u.example: { certificate: ../fixtures/config/"
			                     "off.yaml, key: ../fixtures/config/off.yaml },\n",
			                     i);
		snprintf(text + len, 16384 - len, "  } }\n");
		cfg = config_load(scratch_write(s, "sni_max.yaml", text), &e);
		if (n == CONFIG_SNI_MAX) {
			CHECK(cfg != NULL && cfg->tls_sni_count == CONFIG_SNI_MAX);
		} else {
			CHECK(cfg == NULL && e.count == 1);
			CHECK(strstr(e.line[0], "tls.sni: too many entries (65, max 64)") != NULL);
		}
		config_free(cfg);
	}
	free(text);
}

static void
test_route_tls(struct scratch *s)
{
	struct config_errors e;
	struct config *cfg;

	cfg = load_ok(scratch_write(s, "route_tls.yaml",
	                            "outbound: { tls: encrypt }\n"
	                            "routes:\n"
	                            "  a.example: { nexthop: \"[10.0.0.5]:2525\", tls: verify }\n"
	                            "  b.example: { tls: dane }\n"
	                            "  c.example: { nexthop: smarthost.example }\n"
	                            "  d.example: \"[10.0.0.6]\"\n"
	                            "  \"*\": { tls: none }\n"));
	CHECK(cfg && cfg->route_count == 5);
	if (cfg && cfg->route_count == 5) {
		/* sorted: "*", a, b, c, d */
		CHECK(cfg->routes[0].kind == CONFIG_ROUTE_MX && cfg->routes[0].tls_set);
		CHECK(config_route_tls(cfg, &cfg->routes[0]) == CONFIG_OUT_TLS_NONE);
		CHECK(cfg->routes[1].kind == CONFIG_ROUTE_HOST && cfg->routes[1].port == 2525);
		CHECK(strcmp(cfg->routes[1].host, "10.0.0.5") == 0);
		CHECK(config_route_tls(cfg, &cfg->routes[1]) == CONFIG_OUT_TLS_VERIFY);
		CHECK(cfg->routes[2].kind == CONFIG_ROUTE_MX);
		CHECK(config_route_tls(cfg, &cfg->routes[2]) == CONFIG_OUT_TLS_DANE);
		CHECK(cfg->routes[3].kind == CONFIG_ROUTE_HOST_MX && !cfg->routes[3].tls_set);
		CHECK(strcmp(cfg->routes[3].host, "smarthost.example") == 0);
		CHECK(config_route_tls(cfg, &cfg->routes[3]) == CONFIG_OUT_TLS_ENCRYPT);
		CHECK(!cfg->routes[4].tls_set);
		CHECK(config_route_tls(cfg, &cfg->routes[4]) == CONFIG_OUT_TLS_ENCRYPT);
	}
	config_free(cfg);

	e = load_failing(scratch_write(s, "route_tls_bad.yaml",
	                               "routes:\n"
	                               "  a.example: { nexthop: \"[10.0.0.5\", tls: verify }\n"
	                               "  b.example: { tls: always }\n"
	                               "  c.example: { via: mx }\n"
	                               "  d.example: [ mx ]\n"));
	CHECK(e.count == 4);
	CHECK(strstr(e.line[0], ":2:25: routes.a.example.nexthop: bad next hop \"[10.0.0.5\"") !=
	      NULL);
	CHECK(strstr(e.line[1], ":3:21: routes.b.example.tls: bad value \"always\" (want one of: "
	                        "none, may, encrypt, dane, verify)") != NULL);
	CHECK(strstr(e.line[2], ":4:16: routes.c.example.via: unknown key \"via\"") != NULL);
	CHECK(strstr(e.line[3], ":5:16: routes.d.example: expected a route") != NULL);
}

/* outbound.tls_ca_file: the CA bundle `verify` needs, default or set. */
static void
test_ca_file(struct scratch *s)
{
	struct config_errors e;
	struct config *cfg;

	cfg = load_ok(
	    scratch_write(s, "ca.yaml",
	                  "outbound: { tls: verify, tls_ca_file: ../fixtures/config/off.yaml"
	                  " }\n"));
	CHECK(cfg && strcmp(cfg->outbound_tls_ca_file, FIXTURE("off.yaml")) == 0);
	config_free(cfg);
	/* unread unless verify is used: may and dane never need it */
	cfg = load_ok(scratch_write(s, "ca_unused.yaml", "outbound: { tls_ca_file: \"\" }\n"));
	config_free(cfg);

	e = load_failing(scratch_write(
	    s, "ca_bad.yaml", "outbound: { tls: dane, tls_ca_file: /nonexistent/ca.pem }\n"));
	CHECK(e.count == 1);
	CHECK(strstr(e.line[0], ":1:37: outbound.tls_ca_file: cannot read file") != NULL);
	e = load_failing(scratch_write(s, "ca_empty.yaml",
	                               "outbound: { tls_ca_file: \"\" }\n"
	                               "routes: { a.example: { tls: verify } }\n"));
	CHECK(e.count == 1);
	CHECK(strstr(e.line[0], ":1:26: outbound.tls_ca_file: tls: verify needs a CA bundle") !=
	      NULL);
}

/* A list key filled up to a count, to test its named limit. */
struct list_case {
	const char *head; /* the YAML up to the list, e.g. "dns:\n  forward:\n" */
	const char *indent;
	const char *path; /* the key path errors name */
	unsigned max;
	void (*entry)(char *buf, size_t size, unsigned i);
};

static void
entry_listen(char *buf, size_t size, unsigned i)
{
	snprintf(buf, size, "{ address: \"127.0.%u.%u:25\" }", i / 250, i % 250 + 1);
}

static void
entry_domain(char *buf, size_t size, unsigned i)
{
	snprintf(buf, size, "d%u.example", i);
}

static void
entry_network(char *buf, size_t size, unsigned i)
{
	snprintf(buf, size, "10.%u.%u.0/24", i / 250, i % 250);
}

static void
entry_forward(char *buf, size_t size, unsigned i)
{
	snprintf(buf, size, "\"127.0.0.%u@53\"", i + 1);
}

static void
entry_retry(char *buf, size_t size, unsigned i)
{
	snprintf(buf, size, "%um", i + 1);
}

static const char *
write_list(struct scratch *s, const struct list_case *c, unsigned count)
{
	size_t cap = (size_t)count * 64 + 64;
	char *text = malloc(cap);
	char entry[48];
	size_t len;

	if (text == NULL)
		exit(1);
	len = (size_t)snprintf(text, cap, "%s", c->head);
	for (unsigned i = 0; i < count; i++) {
		c->entry(entry, sizeof(entry), i);
		len += (size_t)snprintf(text + len, cap - len, "%s- %s\n", c->indent, entry);
	}
	scratch_write(s, "list.yaml", text);
	free(text);
	return s->path;
}

static void
check_list_limit(struct scratch *s, const struct list_case *c)
{
	struct config_errors errs;
	struct config *cfg = config_load(write_list(s, c, c->max), &errs);
	char want[96];

	CHECK(cfg != NULL);
	if (cfg == NULL)
		printf("  %s at its limit %u: %s\n", c->path, c->max, errs.line[0]);
	config_free(cfg);
	cfg = config_load(write_list(s, c, c->max + 1), &errs);
	CHECK(cfg == NULL);
	CHECK(errs.count == 1);
	snprintf(want, sizeof(want), "%s: too many entries (%u, max %u)", c->path, c->max + 1,
	         c->max);
	CHECK(strstr(errs.line[0], want) != NULL);
	config_free(cfg);
}

static void
test_limits(struct scratch *s)
{
	struct config_errors errs;
	struct config *cfg;
	char *text;
	size_t len = 0;

	static const struct list_case cases[] = {
	    {"listen:\n", "  ", "listen", CONFIG_LISTEN_MAX, entry_listen},
	    {"relay_domains:\n", "  ", "relay_domains", CONFIG_DOMAINS_MAX, entry_domain},
	    {"mynetworks:\n", "  ", "mynetworks", CONFIG_NETWORKS_MAX, entry_network},
	    {"dns:\n  forward:\n", "    ", "dns.forward", CONFIG_FORWARD_MAX, entry_forward},
	    {"queue:\n  retry:\n", "    ", "queue.retry", CONFIG_RETRY_MAX, entry_retry},
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		check_list_limit(s, &cases[i]);

	/* more problems than CONFIG_ERRORS_MAX: the first are kept, the rest counted */
	text = malloc(100 * 32);
	CHECK(text != NULL);
	if (text == NULL)
		return;
	for (unsigned i = 0; i < 100; i++)
		len += (size_t)sprintf(text + len, "bad_key_%u: 1\n", i);
	cfg = config_load(scratch_write(s, "many.yaml", text), &errs);
	free(text);
	CHECK(cfg == NULL);
	CHECK(errs.count == CONFIG_ERRORS_MAX);
	CHECK(errs.dropped == 100 - CONFIG_ERRORS_MAX);
	CHECK(strstr(errs.line[0], ":1:1: bad_key_0: unknown key") != NULL);
	CHECK(strstr(errs.line[CONFIG_ERRORS_MAX - 1], ":64:1: bad_key_63: unknown") != NULL);
}

static void
test_routes_limit(struct scratch *s)
{
	struct config_errors errs;
	struct config *cfg;
	size_t cap = CONFIG_ROUTES_MAX * 48 + 64;
	char *text = malloc(cap);
	size_t len;

	CHECK(text != NULL);
	if (text == NULL)
		return;
	/* CONFIG_ROUTES_MAX routes with "*" among them fit; one more does not */
	len = (size_t)snprintf(text, cap, "routes:\n  \"*\": mx\n");
	for (unsigned i = 1; i < CONFIG_ROUTES_MAX; i++)
		len += (size_t)snprintf(text + len, cap - len, "  d%u.example: mx\n", i);
	cfg = config_load(scratch_write(s, "routes.yaml", text), &errs);
	CHECK(cfg != NULL && cfg->route_count == CONFIG_ROUTES_MAX);
	config_free(cfg);
	snprintf(text + len, cap - len, "  d0.example: mx\n");
	cfg = config_load(scratch_write(s, "routes.yaml", text), &errs);
	CHECK(cfg == NULL && errs.count == 1);
	CHECK(strstr(errs.line[0], "routes: too many entries (1025, max 1024)") != NULL);
	config_free(cfg);
	/* without "*", the implicit default needs a slot too */
	text[strlen("routes:\n")] = '#';
	cfg = config_load(scratch_write(s, "routes.yaml", text), &errs);
	CHECK(cfg == NULL && errs.count == 1);
	CHECK(strstr(errs.line[0], "too many entries (max 1024 with the \"*\" default)") != NULL);
	config_free(cfg);
	free(text);
}

/*
 * Root passes every mode check, so a root test run checks as "nobody" in a child.
 * Returns what config_check_spool returned, after checking its message.
 */
static int
spool_check_unprivileged(struct scratch *s, const struct config *cfg)
{
	char err[512] = "";
	int status = 0;
	int rc;
	pid_t pid;

	if (geteuid() != 0) {
		rc = config_check_spool(cfg, err, sizeof(err));
		CHECK(strstr(err, "not writable") != NULL);
		return rc;
	}
	CHECK(chmod(s->dir, 0755) == 0);
	pid = fork();
	if (pid == 0) {
		if (setgid(65534) < 0 || setuid(65534) < 0)
			_exit(100);
		rc = config_check_spool(cfg, err, sizeof(err));
		_exit(strstr(err, "not writable") != NULL ? -rc : 101);
	}
	CHECK(pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status));
	chmod(s->dir, 0700);
	return -WEXITSTATUS(status);
}

static void
test_check_spool(struct scratch *s)
{
	struct config_errors errs;
	struct config *cfg = config_load(NULL, &errs);
	char err[512];
	char path[sizeof(s->dir) + 32];
	struct stat st;

	CHECK(cfg != NULL);
	if (cfg == NULL)
		return;
	snprintf(cfg->spool_dir, sizeof(cfg->spool_dir), "%s/spool/a/b/", s->dir);
	CHECK(config_check_spool(cfg, err, sizeof(err)) == 0);
	snprintf(path, sizeof(path), "%s/spool/a/b", s->dir);
	CHECK(stat(path, &st) == 0 && S_ISDIR(st.st_mode) && (st.st_mode & 0777) == 0750);
	/* a second check of an existing directory passes and leaves no probe file behind */
	CHECK(config_check_spool(cfg, err, sizeof(err)) == 0);
	CHECK(rmdir(path) == 0);

	snprintf(cfg->spool_dir, sizeof(cfg->spool_dir), "%s/plain", s->dir);
	scratch_write(s, "plain", "not a directory\n");
	CHECK(config_check_spool(cfg, err, sizeof(err)) == -ENOTDIR);
	CHECK(strstr(err, "not a directory") != NULL);
	snprintf(cfg->spool_dir, sizeof(cfg->spool_dir), "%s/plain/below", s->dir);
	CHECK(config_check_spool(cfg, err, sizeof(err)) == -ENOTDIR);
	CHECK(strstr(err, "cannot create") != NULL);

	snprintf(path, sizeof(path), "%s/readonly", s->dir);
	CHECK(mkdir(path, 0555) == 0);
	snprintf(cfg->spool_dir, sizeof(cfg->spool_dir), "%s", path);
	CHECK(spool_check_unprivileged(s, cfg) == -EACCES);
	rmdir(path);
	config_free(cfg);
}

static void
scratch_remove(struct scratch *s)
{
	char cmd[sizeof(s->dir) + 16];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", s->dir);
	if (system(cmd) != 0)
		printf("could not remove %s\n", s->dir);
}

int
main(void)
{
	struct scratch s;

	snprintf(s.dir, sizeof(s.dir), "/tmp/test_config.XXXXXX");
	if (mkdtemp(s.dir) == NULL) {
		perror("mkdtemp");
		return 1;
	}
	test_sockaddr();
	test_network();
	test_duration_size();
	test_domain_normalize();
	test_default(&s);
	test_production_defaults(&s);
	test_full();
	test_json();
	test_errors();
	test_file_errors();
	test_more_errors(&s);
	test_off_is_a_string();
	test_tls_rules(&s);
	test_sni(&s);
	test_route_tls(&s);
	test_ca_file(&s);
	test_limits(&s);
	test_routes_limit(&s);
	test_check_spool(&s);
	scratch_remove(&s);
	printf("%u passed, %u failed\n", passed, failed);
	return failed > 0;
}
