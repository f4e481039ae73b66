/* test_policy.c -- the relay decision: no open relay, trusted clients, the recipient map. */
#include "core/policy.h"

#include "tests/unit/check.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <unistd.h>

#define FIXTURES "../fixtures/policy/"

/* What verdict_of returns when the parser already refuses the path. */
#define PARSE_REFUSED 100

/* Our domains; our own address is 192.0.2.25 (inside no mynetworks entry). */
static struct config *
config_make(const char *map)
{
	static const char *const domains[] = {"example.org", "ours.test", "Nomap.Test."};
	static const char *const nets[] = {"198.51.100.0/24", "2001:db8:1::/48", "127.0.0.1",
	                                   "::1"};
	struct config *cfg = calloc(1, sizeof(*cfg));

	if (cfg == NULL)
		abort();
	cfg->relay_domains = calloc(3, sizeof(*cfg->relay_domains));
	if (cfg->relay_domains == NULL)
		abort();
	for (unsigned i = 0; i < 3; i++)
		strcpy(cfg->relay_domains[i], domains[i]);
	cfg->relay_domain_count = 3;
	for (unsigned i = 0; i < 4; i++) {
		if (config_parse_network(nets[i], &cfg->mynetworks[i]) != 0)
			abort();
	}
	cfg->mynetwork_count = 4;
	if (map != NULL)
		snprintf(cfg->recipient_map, sizeof(cfg->recipient_map), "%s", map);
	return cfg;
}

static void
config_drop(struct config *cfg)
{
	free(cfg->relay_domains);
	free(cfg);
}

static struct policy *
policy_make(const char *map)
{
	struct config *cfg = config_make(map);
	char err[512] = "";
	struct policy *p = policy_new(cfg, err, sizeof(err));

	/* The policy keeps nothing of the config. */
	config_drop(cfg);
	if (p == NULL) {
		printf("%s:%d: policy_new: %s\n", __FILE__, __LINE__, err);
		abort();
	}
	return p;
}

static int
verdict_of(const struct policy *p, const struct policy_client *c, const char *path)
{
	struct address a;
	size_t end;

	if (address_parse_path(path, strlen(path), false, true, &a, &end) != ADDRESS_OK ||
	    end != strlen(path))
		return PARSE_REFUSED;
	return (int)policy_check_rcpt(p, c, &a);
}

struct rcpt_case {
	const char *path;
	int want;
};

static void
check_cases(const struct policy *p, const struct policy_client *c, const char *what,
            const struct rcpt_case *cases, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		int got = verdict_of(p, c, cases[i].path);

		if (got == cases[i].want) {
			passed++;
			continue;
		}
		failed++;
		printf("%s:%d: %s %s: got %d, want %d\n", __FILE__, __LINE__, what, cases[i].path,
		       got, cases[i].want);
	}
}

#define CASES(p, c, what, table) check_cases(p, c, what, table, sizeof(table) / sizeof(table[0]))

/* The classic relay-checker list, from a stranger on port 25. */
static const struct rcpt_case untrusted_cases[] = {
    {"<user@example.org>", POLICY_ACCEPT},
    {"<USER@EXAMPLE.ORG>", POLICY_ACCEPT},
    {"<user@example.org.>", POLICY_ACCEPT},
    {"<user@Ours.Test>", POLICY_ACCEPT},
    {"<user@nomap.test>", POLICY_ACCEPT},
    {"<\"user\"@example.org>", POLICY_ACCEPT},
    {"<postmaster>", POLICY_ACCEPT},
    {"<Postmaster@example.org>", POLICY_ACCEPT},
    {"<user@other.example>", POLICY_RELAY_DENIED},
    {"<user@other.example.>", POLICY_RELAY_DENIED},
    {"<postmaster@other.example>", POLICY_RELAY_DENIED},
    {"<user@sub.example.org>", POLICY_RELAY_DENIED},
    {"<user@xexample.org>", POLICY_RELAY_DENIED},
    {"<user@example.org.other.example>", POLICY_RELAY_DENIED},
    {"<user@example.or>", POLICY_RELAY_DENIED},
    {"<user%other.example@example.org>", POLICY_ROUTING_DENIED},
    {"<user%other.example@EXAMPLE.ORG.>", POLICY_ROUTING_DENIED},
    {"<\"user%other.example\"@example.org>", POLICY_ROUTING_DENIED},
    {"<\"user@other.example\"@example.org>", POLICY_ROUTING_DENIED},
    {"<other.example!user@example.org>", POLICY_ROUTING_DENIED},
    {"<@other.example:user@example.org>", POLICY_ROUTING_DENIED},
    {"<@example.org:user@other.example>", POLICY_RELAY_DENIED},
    {"<@example.org,@ours.test:user@other.example>", POLICY_RELAY_DENIED},
    {"<user%example.org@other.example>", POLICY_RELAY_DENIED},
    {"<user@[192.0.2.25]>", POLICY_RELAY_DENIED},
    {"<user%other.example@[192.0.2.25]>", POLICY_RELAY_DENIED},
    {"<\"user@other.example\"@[192.0.2.25]>", POLICY_RELAY_DENIED},
    {"<user@[IPv6:2001:db8::25]>", POLICY_RELAY_DENIED},
    {"<user@192.0.2.25>", POLICY_RELAY_DENIED},
    /* refused by the parser before the policy sees them */
    {"<\"user@other.example\">", PARSE_REFUSED},
    {"<user@other.example@example.org>", PARSE_REFUSED},
    {"<user@example.org..>", PARSE_REFUSED},
    {"<user@[example.org]>", PARSE_REFUSED},
    {"<user@other.example,example.org>", PARSE_REFUSED},
    {"<user@other.example:example.org>", PARSE_REFUSED},
    {"<@other.example:postmaster>", PARSE_REFUSED},
    {"<user>", PARSE_REFUSED},
    {"<>", PARSE_REFUSED},
};

/* Trusted clients may relay anywhere, and route as they like. */
static const struct rcpt_case trusted_cases[] = {
    {"<user@example.org>", POLICY_ACCEPT},
    {"<user@other.example>", POLICY_ACCEPT},
    {"<user@[192.0.2.25]>", POLICY_ACCEPT},
    {"<user%other.example@example.org>", POLICY_ACCEPT},
    {"<@a.example:user@other.example>", POLICY_ACCEPT},
    {"<postmaster>", POLICY_ACCEPT},
};

/* Submission without AUTH from outside mynetworks: nothing but <postmaster>. */
static const struct rcpt_case submission_cases[] = {
    {"<user@example.org>", POLICY_RELAY_DENIED},
    {"<user@other.example>", POLICY_RELAY_DENIED},
    {"<postmaster@example.org>", POLICY_RELAY_DENIED},
    {"<postmaster>", POLICY_ACCEPT},
};

static void
test_relay(void)
{
	struct policy *p = policy_make(NULL);
	struct policy_client c = {.role = CONFIG_ROLE_MX};

	CASES(p, &c, "untrusted mx", untrusted_cases);
	c.trusted_network = true;
	CASES(p, &c, "mynetworks mx", trusted_cases);
	c.trusted_network = false;
	c.authenticated = true;
	c.role = CONFIG_ROLE_SUBMISSION;
	CASES(p, &c, "authenticated submission", trusted_cases);
	c.authenticated = false;
	c.allow_listed = true;
	CASES(p, &c, "allow-listed submission", trusted_cases);
	c.allow_listed = false;
	CASES(p, &c, "untrusted submission", submission_cases);
	c.trusted_network = true;
	CASES(p, &c, "mynetworks submission", trusted_cases);
	policy_free(p);
}

static void
test_no_domains(void)
{
	struct config *cfg = calloc(1, sizeof(*cfg));
	struct policy_client c = {.role = CONFIG_ROLE_MX};
	char err[256];
	struct policy *p;

	if (cfg == NULL)
		abort();
	p = policy_new(cfg, err, sizeof(err));
	CHECK(p != NULL);
	if (p == NULL)
		return;
	CHECK(verdict_of(p, &c, "<user@example.org>") == POLICY_RELAY_DENIED);
	CHECK(verdict_of(p, &c, "<postmaster>") == POLICY_ACCEPT);
	CHECK(!policy_is_local_domain(p, "example.org"));
	c.authenticated = true;
	CHECK(verdict_of(p, &c, "<user@example.org>") == POLICY_ACCEPT);
	policy_free(p);
	free(cfg);
}

static void
test_local_domain(void)
{
	struct policy *p = policy_make(NULL);
	char longer[400];

	CHECK(policy_is_local_domain(p, "example.org"));
	CHECK(policy_is_local_domain(p, "EXAMPLE.ORG."));
	CHECK(policy_is_local_domain(p, "nomap.test"));
	CHECK(policy_is_local_domain(p, "NoMap.Test."));
	CHECK(!policy_is_local_domain(p, "example.org.."));
	CHECK(!policy_is_local_domain(p, "org"));
	CHECK(!policy_is_local_domain(p, ""));
	CHECK(!policy_is_local_domain(p, "."));
	CHECK(!policy_is_local_domain(p, "[192.0.2.25]"));
	memset(longer, 'a', sizeof(longer) - 1);
	longer[sizeof(longer) - 1] = '\0';
	CHECK(!policy_is_local_domain(p, longer));
	policy_free(p);
}

static bool
trusted4(const struct policy *p, const char *ip)
{
	struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(25)};

	if (inet_pton(AF_INET, ip, &sin.sin_addr) != 1)
		abort();
	return policy_client_trusted(p, (const struct sockaddr *)&sin);
}

static bool
trusted6(const struct policy *p, const char *ip)
{
	struct sockaddr_in6 sin6 = {.sin6_family = AF_INET6, .sin6_port = htons(25)};

	if (inet_pton(AF_INET6, ip, &sin6.sin6_addr) != 1)
		abort();
	return policy_client_trusted(p, (const struct sockaddr *)&sin6);
}

static void
test_trusted_networks(void)
{
	struct policy *p = policy_make(NULL);
	struct sockaddr_un sun = {.sun_family = AF_UNIX};

	CHECK(trusted4(p, "198.51.100.0"));
	CHECK(trusted4(p, "198.51.100.77"));
	CHECK(trusted4(p, "198.51.100.255"));
	CHECK(!trusted4(p, "198.51.101.0"));
	CHECK(!trusted4(p, "198.51.99.255"));
	CHECK(trusted4(p, "127.0.0.1"));
	CHECK(!trusted4(p, "127.0.0.2"));
	CHECK(!trusted4(p, "192.0.2.25"));
	CHECK(!trusted4(p, "0.0.0.0"));
	/* v4-mapped peers of a dual-stack socket match the IPv4 networks */
	CHECK(trusted6(p, "::ffff:198.51.100.77"));
	CHECK(trusted6(p, "::ffff:127.0.0.1"));
	CHECK(!trusted6(p, "::ffff:198.51.101.1"));
	/* ... but a v4-compatible or NAT64 spelling is another address */
	CHECK(!trusted6(p, "::198.51.100.77"));
	CHECK(!trusted6(p, "64:ff9b::198.51.100.77"));
	CHECK(trusted6(p, "2001:db8:1::5"));
	CHECK(trusted6(p, "2001:db8:1:ffff:ffff:ffff:ffff:ffff"));
	CHECK(!trusted6(p, "2001:db8:2::5"));
	CHECK(!trusted6(p, "2001:db8::5"));
	CHECK(trusted6(p, "::1"));
	CHECK(!trusted6(p, "::2"));
	CHECK(!policy_client_trusted(p, (const struct sockaddr *)&sun));
	policy_free(p);
}

static const struct rcpt_case map_untrusted_cases[] = {
    {"<alice@example.org>", POLICY_ACCEPT},
    {"<ALICE@Example.Org.>", POLICY_ACCEPT},
    {"<\"alice\"@example.org>", POLICY_ACCEPT},
    {"<bob.smith@example.org>", POLICY_ACCEPT},
    {"<\"john doe\"@example.org>", POLICY_ACCEPT},
    {"<\"John Doe\"@example.org>", POLICY_ACCEPT},
    {"<carol@example.org>", POLICY_ACCEPT},
    {"<dave@example.org>", POLICY_ACCEPT},
    {"<erin@example.org>", POLICY_ACCEPT},
    {"<j\xc3\xb6rg@example.org>", POLICY_ACCEPT},
    {"<anyone@ours.test>", POLICY_ACCEPT},
    {"<Anyone@OURS.TEST.>", POLICY_ACCEPT},
    {"<postmaster@example.org>", POLICY_ACCEPT},
    {"<postmaster@nomap.test>", POLICY_ACCEPT},
    {"<postmaster>", POLICY_ACCEPT},
    {"<mallory@example.org>", POLICY_UNKNOWN_RECIPIENT},
    {"<alice.x@example.org>", POLICY_UNKNOWN_RECIPIENT},
    {"<john.doe@example.org>", POLICY_UNKNOWN_RECIPIENT},
    {"<user@nomap.test>", POLICY_UNKNOWN_RECIPIENT},
    {"<alice@other.example>", POLICY_RELAY_DENIED},
    {"<anyone@sub.ours.test>", POLICY_RELAY_DENIED},
    {"<alice%other.example@example.org>", POLICY_ROUTING_DENIED},
    {"<@other.example:alice@example.org>", POLICY_ROUTING_DENIED},
};

static const struct rcpt_case map_trusted_cases[] = {
    {"<alice@example.org>", POLICY_ACCEPT},
    {"<mallory@example.org>", POLICY_UNKNOWN_RECIPIENT},
    {"<user@nomap.test>", POLICY_UNKNOWN_RECIPIENT},
    {"<mallory@other.example>", POLICY_ACCEPT},
    {"<alice%other.example@example.org>", POLICY_UNKNOWN_RECIPIENT},
    {"<@a.example:alice@example.org>", POLICY_ACCEPT},
};

static void
test_recipient_map(void)
{
	struct policy *p = policy_make(FIXTURES "recipients");
	struct policy_client c = {.role = CONFIG_ROLE_MX};

	CASES(p, &c, "map untrusted", map_untrusted_cases);
	c.trusted_network = true;
	CASES(p, &c, "map trusted", map_trusted_cases);
	c.trusted_network = false;
	c.authenticated = true;
	c.role = CONFIG_ROLE_SUBMISSION;
	CASES(p, &c, "map authenticated", map_trusted_cases);
	policy_free(p);
}

/* policy_new must fail with exactly this message. */
static void
check_map_error(const char *file, const char *want)
{
	struct config *cfg = config_make(file);
	char err[512] = "";
	struct policy *p = policy_new(cfg, err, sizeof(err));

	CHECK(p == NULL);
	CHECK(strcmp(err, want) == 0);
	if (p != NULL || strcmp(err, want) != 0)
		printf("  %s: got \"%s\"\n  want \"%s\"\n", file, err, want);
	policy_free(p);
	config_drop(cfg);
}

static void
test_map_errors(void)
{
	const char *bad = "malformed address (want user@domain or @domain)";
	const char *literal = "an address literal is never one of relay_domains";
	char file[128];
	char want[512];
	static const struct {
		const char *file;
		unsigned line;
		int kind; /* 0: bad address, 1: bad domain, 2: literal */
	} cases[] = {
	    {"bad_address.map", 2, 0}, {"bad_domain.map", 3, 1},    {"no_domain.map", 1, 0},
	    {"literal.map", 2, 2},     {"trailing_text.map", 1, 0}, {"source_route.map", 1, 1},
	    {"brackets.map", 1, 0},
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const char *problem = cases[i].kind == 0   ? bad
		                      : cases[i].kind == 1 ? "malformed domain"
		                                           : literal;

		snprintf(file, sizeof(file), FIXTURES "%s", cases[i].file);
		snprintf(want, sizeof(want), "recipient_map: %s:%u: %s", file, cases[i].line,
		         problem);
		check_map_error(file, want);
	}
	check_map_error(FIXTURES "missing.map",
	                "recipient_map: " FIXTURES "missing.map: No such file or directory");
}

/* Writes text to a fresh temporary file; the caller unlinks name. */
static void
write_temp(char name[64], const char *text, size_t repeat)
{
	FILE *f;
	int fd;

	snprintf(name, 64, "/tmp/test_policy.XXXXXX");
	fd = mkstemp(name);
	if (fd < 0 || (f = fdopen(fd, "w")) == NULL)
		abort();
	for (size_t i = 0; i < repeat; i++)
		fputs(text, f);
	if (fclose(f) != 0)
		abort();
}

static void
append_temp(const char *name, const char *text)
{
	FILE *f = fopen(name, "a");

	if (f == NULL)
		abort();
	fputs(text, f);
	if (fclose(f) != 0)
		abort();
}

static void
test_map_line_limit(void)
{
	char line[POLICY_MAP_LINE_MAX + 8];
	char name[64];
	char want[512];
	struct policy_client c = {.role = CONFIG_ROLE_MX};
	struct policy *p;

	/* An entry padded with blanks to exactly the limit is fine. */
	memset(line, ' ', POLICY_MAP_LINE_MAX);
	memcpy(line, "alice@example.org", 17);
	strcpy(line + POLICY_MAP_LINE_MAX, "\n");
	write_temp(name, line, 1);
	p = policy_make(name);
	CHECK(verdict_of(p, &c, "<alice@example.org>") == POLICY_ACCEPT);
	CHECK(verdict_of(p, &c, "<bob@example.org>") == POLICY_UNKNOWN_RECIPIENT);
	policy_free(p);
	/* One octet more, even on a comment line, is refused. */
	line[0] = '#';
	strcpy(line + POLICY_MAP_LINE_MAX, " \n");
	append_temp(name, line);
	snprintf(want, sizeof(want), "recipient_map: %s:2: line longer than 1024 octets", name);
	check_map_error(name, want);
	unlink(name);
	/* The same at the end of a file without a final newline. */
	line[POLICY_MAP_LINE_MAX] = '\0';
	write_temp(name, line, 1);
	p = policy_make(name);
	policy_free(p);
	append_temp(name, "\n");
	append_temp(name, line);
	append_temp(name, "x");
	snprintf(want, sizeof(want), "recipient_map: %s:2: line longer than 1024 octets", name);
	check_map_error(name, want);
	unlink(name);
}

static void
test_map_entries_limit(void)
{
	char name[64];
	char want[512];
	struct policy_client c = {.role = CONFIG_ROLE_MX};
	struct policy *p;

	/* Entry lines count, duplicates included; comments and blank lines do not. */
	write_temp(name, "@ours.test\n", POLICY_MAP_ENTRIES_MAX);
	append_temp(name, "# a comment\n\n");
	p = policy_make(name);
	CHECK(verdict_of(p, &c, "<anyone@ours.test>") == POLICY_ACCEPT);
	CHECK(verdict_of(p, &c, "<anyone@example.org>") == POLICY_UNKNOWN_RECIPIENT);
	policy_free(p);
	append_temp(name, "alice@example.org\n");
	snprintf(want, sizeof(want), "recipient_map: %s:%u: more than 4194304 entries", name,
	         POLICY_MAP_ENTRIES_MAX + 3);
	check_map_error(name, want);
	unlink(name);
}

/* Many distinct keys: the table grows and every key is still found. */
static void
test_map_many(void)
{
	char name[64];
	char path[64];
	struct policy_client c = {.role = CONFIG_ROLE_MX};
	struct policy *p;
	FILE *f;
	bool all = true;

	write_temp(name, "", 0);
	f = fopen(name, "w");
	if (f == NULL)
		abort();
	for (unsigned i = 0; i < 20000; i++)
		fprintf(f, "user%u@example.org\n", i);
	fclose(f);
	p = policy_make(name);
	for (unsigned i = 0; i < 20000; i++) {
		snprintf(path, sizeof(path), "<USER%u@example.org>", i);
		all = all && verdict_of(p, &c, path) == POLICY_ACCEPT;
	}
	CHECK(all);
	CHECK(verdict_of(p, &c, "<user20000@example.org>") == POLICY_UNKNOWN_RECIPIENT);
	CHECK(verdict_of(p, &c, "<user@example.org>") == POLICY_UNKNOWN_RECIPIENT);
	policy_free(p);
	unlink(name);
}

static void
test_replies(void)
{
	CHECK(strncmp(policy_verdict_reply(POLICY_ACCEPT), "250 2.1.5 ", 10) == 0);
	CHECK(strcmp(policy_verdict_reply(POLICY_RELAY_DENIED), "554 5.7.1 Relay access denied") ==
	      0);
	CHECK(strcmp(policy_verdict_reply(POLICY_ROUTING_DENIED),
	             "554 5.7.1 Sender-specified routing is not allowed") == 0);
	CHECK(strcmp(policy_verdict_reply(POLICY_UNKNOWN_RECIPIENT),
	             "550 5.1.1 Recipient address rejected: unknown user") == 0);
}

int
main(void)
{
	test_relay();
	test_no_domains();
	test_local_domain();
	test_trusted_networks();
	test_recipient_map();
	test_map_errors();
	test_map_line_limit();
	test_map_entries_limit();
	test_map_many();
	test_replies();
	printf("%d passed, %d failed\n", passed, failed);
	return failed == 0 ? 0 : 1;
}
