/*
 * policy.c -- the relay decision. Never an open relay.
 *
 * relay_domains is a sorted array searched with bsearch; the recipient map is an
 * open-addressing hash set of keys "local@domain" and "@domain", lower-cased (Postfix
 * compares local parts case-insensitively too) with the domain's trailing dot dropped.
 */
#include "core/policy.h"

#include <assert.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/address.h"
#include "core/config.h"

/* "local@domain" as stored in the map, plus its NUL */
#define POLICY_KEY_SIZE (ADDRESS_LOCAL_MAX + 1 + ADDRESS_DOMAIN_MAX + 1)

/* Keys are found by a 32-bit arena offset: even the largest map must fit. */
/* The limits as the error messages spell them. */
static_assert(POLICY_MAP_LINE_MAX == 1024, "update the recipient_map messages");
static_assert(POLICY_MAP_ENTRIES_MAX == 4194304, "update the recipient_map messages");

static_assert((uint64_t)POLICY_MAP_ENTRIES_MAX * POLICY_KEY_SIZE < UINT32_MAX,
              "recipient map arena offsets overflow");

struct policy_map {
	char *arena; /* the keys, NUL-terminated, one after another */
	size_t arena_len;
	size_t arena_cap;
	uint32_t *slots;   /* arena offset + 1 of a key; 0: empty */
	size_t slot_count; /* a power of two, at least twice key_count */
	size_t key_count;
};

struct policy {
	char (*domains)[CONFIG_DOMAIN_LEN + 1]; /* lower case, no trailing dot, sorted */
	unsigned domain_count;
	struct config_network networks[CONFIG_NETWORKS_MAX];
	unsigned network_count;
	bool map_enabled;
	struct policy_map map;
};

static uint64_t
map_hash(const char *key)
{
	uint64_t h = 0xcbf29ce484222325u; /* FNV-1a */

	for (; *key != '\0'; key++)
		h = (h ^ (unsigned char)*key) * 0x100000001b3u;
	return h;
}

/* The slot holding key, or the empty slot where it would go. */
static size_t
map_slot(const struct policy_map *m, const char *key)
{
	size_t mask = m->slot_count - 1;
	size_t i = (size_t)map_hash(key) & mask;

	assert(m->slot_count > m->key_count);
	while (m->slots[i] != 0 && strcmp(m->arena + m->slots[i] - 1, key) != 0)
		i = (i + 1) & mask;
	return i;
}

static bool
map_contains(const struct policy_map *m, const char *key)
{
	return m->slot_count > 0 && m->slots[map_slot(m, key)] != 0;
}

static int
map_grow(struct policy_map *m)
{
	size_t count = m->slot_count == 0 ? 1024 : m->slot_count * 2;
	uint32_t *old = m->slots;
	size_t old_count = m->slot_count;

	m->slots = calloc(count, sizeof(*m->slots));
	if (m->slots == NULL) {
		m->slots = old;
		return -ENOMEM;
	}
	m->slot_count = count;
	for (size_t i = 0; i < old_count; i++) {
		if (old[i] != 0)
			m->slots[map_slot(m, m->arena + old[i] - 1)] = old[i];
	}
	free(old);
	return 0;
}

/* Adds key unless present; 0 or -ENOMEM. */
static int
map_add(struct policy_map *m, const char *key)
{
	size_t len = strlen(key) + 1;
	size_t slot;

	if ((m->key_count + 1) * 2 > m->slot_count && map_grow(m) != 0)
		return -ENOMEM;
	slot = map_slot(m, key);
	if (m->slots[slot] != 0)
		return 0;
	if (m->arena_len + len > m->arena_cap) {
		size_t cap = m->arena_cap == 0 ? 64 * 1024 : m->arena_cap * 2;
		char *arena = realloc(m->arena, cap);

		if (arena == NULL)
			return -ENOMEM;
		m->arena = arena;
		m->arena_cap = cap;
	}
	memcpy(m->arena + m->arena_len, key, len);
	m->slots[slot] = (uint32_t)m->arena_len + 1;
	m->arena_len += len;
	m->key_count++;
	return 0;
}

/* The map key for local@domain ("" local: the whole-domain key "@domain"). */
static void
map_key(char key[POLICY_KEY_SIZE], const char *local, const char *domain)
{
	size_t local_len = strlen(local);
	size_t domain_len = strlen(domain);

	assert(local_len <= ADDRESS_LOCAL_MAX);
	assert(domain_len <= ADDRESS_DOMAIN_MAX);
	memcpy(key, local, local_len);
	key[local_len] = '@';
	memcpy(key + local_len + 1, domain, domain_len + 1);
	/* Lower-cases the local part along with the domain, and drops the trailing dot. */
	config_domain_normalize(key);
}

/* Parses one trimmed, non-empty map line into its key; NULL or the problem. */
static const char *
map_line_key(const char *line, size_t len, char key[POLICY_KEY_SIZE])
{
	char path[ADDRESS_PATH_MAX + 1];
	struct address a;
	size_t end = 0;

	if (line[0] == '@') {
		if (address_parse_domain(line + 1, len - 1, true) != ADDRESS_OK)
			return "malformed domain";
		if (line[1] == '[')
			return "an address literal is never one of relay_domains";
		memcpy(path, line + 1, len - 1);
		path[len - 1] = '\0';
		map_key(key, "", path);
		return NULL;
	}
	if (len > ADDRESS_PATH_MAX - 2)
		return "address too long";
	path[0] = '<';
	memcpy(path + 1, line, len);
	path[len + 1] = '>';
	if (address_parse_path(path, len + 2, false, true, &a, &end) != ADDRESS_OK ||
	    end != len + 2)
		return "malformed address (want user@domain or @domain)";
	if (a.source_route || a.domain[0] == '\0')
		return "malformed address (want user@domain or @domain)";
	if (a.domain_literal)
		return "an address literal is never one of relay_domains";
	map_key(key, a.local, a.domain);
	return NULL;
}

/* Reads the next line without its newline; NULL at the end. *len over the limit: too long. */
static char *
map_read_line(FILE *f, char buf[POLICY_MAP_LINE_MAX + 2], size_t *len)
{
	size_t n;

	if (fgets(buf, POLICY_MAP_LINE_MAX + 2, f) == NULL)
		return NULL;
	n = strlen(buf);
	if (n > 0 && buf[n - 1] == '\n')
		buf[--n] = '\0';
	*len = n;
	return buf;
}

/* One line: blank and '#' lines are skipped; anything else is an entry. */
static const char *
map_load_line(struct policy_map *m, char *line, size_t len, unsigned *entries)
{
	char key[POLICY_KEY_SIZE];
	const char *problem;

	while (len > 0 && strchr(" \t\r", line[len - 1]) != NULL)
		len--;
	while (len > 0 && (line[0] == ' ' || line[0] == '\t')) {
		line++;
		len--;
	}
	if (len == 0 || line[0] == '#')
		return NULL;
	if (++*entries > POLICY_MAP_ENTRIES_MAX)
		return "more than 4194304 entries";
	problem = map_line_key(line, len, key);
	if (problem != NULL)
		return problem;
	if (map_add(m, key) != 0)
		return "out of memory";
	return NULL;
}

static int
map_load(struct policy_map *m, const char *file, char *err, size_t err_len)
{
	char buf[POLICY_MAP_LINE_MAX + 2];
	FILE *f = fopen(file, "re");
	unsigned line_no = 0;
	unsigned entries = 0;
	const char *problem = NULL;
	char *line;
	size_t len;

	if (f == NULL) {
		int e = errno;

		snprintf(err, err_len, "recipient_map: %s: %s", file, strerror(e));
		return -e;
	}
	while (problem == NULL && (line = map_read_line(f, buf, &len)) != NULL) {
		line_no++;
		problem = len > POLICY_MAP_LINE_MAX ? "line longer than 1024 octets"
		                                    : map_load_line(m, line, len, &entries);
	}
	if (problem == NULL && ferror(f))
		problem = "read error";
	fclose(f);
	if (problem == NULL)
		return 0;
	snprintf(err, err_len, "recipient_map: %s:%u: %s", file, line_no, problem);
	return -EINVAL;
}

static int
domain_compare(const void *a, const void *b)
{
	return strcmp(a, b);
}

struct policy *
policy_new(const struct config *cfg, char *err, size_t err_len)
{
	struct policy *p;

	assert(cfg != NULL);
	assert(err != NULL);
	assert(cfg->relay_domain_count <= CONFIG_DOMAINS_MAX);
	assert(cfg->mynetwork_count <= CONFIG_NETWORKS_MAX);
	p = calloc(1, sizeof(*p));
	if (p == NULL)
		goto fail_nomem;
	if (cfg->relay_domain_count > 0) {
		p->domains = calloc(cfg->relay_domain_count, sizeof(*p->domains));
		if (p->domains == NULL)
			goto fail_nomem;
	}
	for (unsigned i = 0; i < cfg->relay_domain_count; i++) {
		memcpy(p->domains[i], cfg->relay_domains[i], sizeof(p->domains[i]));
		p->domains[i][CONFIG_DOMAIN_LEN] = '\0';
		config_domain_normalize(p->domains[i]);
	}
	p->domain_count = cfg->relay_domain_count;
	if (p->domain_count > 0)
		qsort(p->domains, p->domain_count, sizeof(*p->domains), domain_compare);
	memcpy(p->networks, cfg->mynetworks, cfg->mynetwork_count * sizeof(p->networks[0]));
	p->network_count = cfg->mynetwork_count;
	if (cfg->recipient_map[0] != '\0') {
		p->map_enabled = true;
		if (map_load(&p->map, cfg->recipient_map, err, err_len) != 0)
			goto fail;
	}
	return p;

fail_nomem:
	snprintf(err, err_len, "policy: out of memory");
fail:
	policy_free(p);
	return NULL;
}

void
policy_free(struct policy *p)
{
	if (p == NULL)
		return;
	free(p->map.arena);
	free(p->map.slots);
	free(p->domains);
	free(p);
}

bool
policy_client_trusted(const struct policy *p, const struct sockaddr *addr)
{
	assert(p != NULL);
	assert(addr != NULL);
	for (unsigned i = 0; i < p->network_count; i++) {
		if (config_network_contains(&p->networks[i], addr))
			return true;
	}
	return false;
}

bool
policy_is_local_domain(const struct policy *p, const char *domain)
{
	char key[CONFIG_DOMAIN_LEN + 1];
	size_t len;

	assert(p != NULL);
	assert(domain != NULL);
	len = strlen(domain);
	/* An address literal names a host, never a domain we accept mail for. */
	if (len == 0 || len > CONFIG_DOMAIN_LEN || domain[0] == '[' || p->domain_count == 0)
		return false;
	memcpy(key, domain, len + 1);
	config_domain_normalize(key);
	return bsearch(key, p->domains, p->domain_count, sizeof(*p->domains), domain_compare) !=
	       NULL;
}

/* Is rcpt (at one of our domains) a known recipient? True when there is no map. */
static bool
policy_known_recipient(const struct policy *p, const struct address *rcpt)
{
	char key[POLICY_KEY_SIZE];

	/* RFC 5321 §4.5.1: postmaster must be taken for every domain we accept mail for. */
	if (!p->map_enabled || address_is_postmaster(rcpt))
		return true;
	map_key(key, rcpt->local, rcpt->domain);
	if (map_contains(&p->map, key))
		return true;
	map_key(key, "", rcpt->domain);
	return map_contains(&p->map, key);
}

/* user%host@ours, host!user@ours, "user@host"@ours, <@ours:user@host>: allow_untrusted_routing=no
 */
static bool
rcpt_has_routing(const struct address *rcpt)
{
	return rcpt->source_route || strpbrk(rcpt->local, "%!@") != NULL;
}

enum policy_verdict
policy_check_rcpt(const struct policy *p, const struct policy_client *c, const struct address *rcpt)
{
	bool trusted;
	bool ours;

	assert(p != NULL);
	assert(c != NULL);
	assert(rcpt != NULL);
	assert(!rcpt->null);
	if (rcpt->domain[0] == '\0')
		return address_is_postmaster(rcpt) ? POLICY_ACCEPT : POLICY_RELAY_DENIED;
	trusted = c->trusted_network || c->authenticated || c->allow_listed;
	ours = !rcpt->domain_literal && policy_is_local_domain(p, rcpt->domain);
	if (!trusted) {
		/* Submission is for our own users: no AUTH, no relay, not even to us. */
		if (c->role == CONFIG_ROLE_SUBMISSION || !ours)
			return POLICY_RELAY_DENIED;
		if (rcpt_has_routing(rcpt))
			return POLICY_ROUTING_DENIED;
	} else if (!ours) {
		return POLICY_ACCEPT;
	}
	return policy_known_recipient(p, rcpt) ? POLICY_ACCEPT : POLICY_UNKNOWN_RECIPIENT;
}

const char *
policy_verdict_reply(enum policy_verdict v)
{
	switch (v) {
	case POLICY_ACCEPT:
		return "250 2.1.5 Ok";
	case POLICY_RELAY_DENIED:
		return "554 5.7.1 Relay access denied";
	case POLICY_ROUTING_DENIED:
		return "554 5.7.1 Sender-specified routing is not allowed";
	case POLICY_UNKNOWN_RECIPIENT:
		return "550 5.1.1 Recipient address rejected: unknown user";
	}
	assert(!"unknown policy verdict");
	return "451 4.3.0 Internal error";
}
