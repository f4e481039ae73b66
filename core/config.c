/*
 * config.c -- loading the ringmx configuration (see config.h and DESIGN.md) and the
 * small parsers (addresses, networks, durations, sizes) other modules share.
 */
#include "core/config.h"

#include <arpa/inet.h>
#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

/* Parses 1..65535 written as plain decimal digits. */
static int
parse_port(const char *text, uint16_t *port)
{
	unsigned long v = 0;

	if (*text == '\0' || strlen(text) > 5)
		return -EINVAL;
	for (const char *p = text; *p != '\0'; p++) {
		if (!isdigit((unsigned char)*p))
			return -EINVAL;
		v = v * 10 + (unsigned long)(*p - '0');
	}
	if (v == 0 || v > 65535)
		return -EINVAL;
	*port = (uint16_t)v;
	return 0;
}

/* Fills out->ss from an IP literal (v4 or v6) and a port; 0 or -EINVAL. */
static int
sockaddr_from_ip(const char *ip, uint16_t port, struct config_sockaddr *out)
{
	struct sockaddr_in *sin = (struct sockaddr_in *)&out->ss;
	struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&out->ss;
	char canon[INET6_ADDRSTRLEN];

	memset(out, 0, sizeof(*out));
	if (inet_pton(AF_INET, ip, &sin->sin_addr) == 1) {
		sin->sin_family = AF_INET;
		sin->sin_port = htons(port);
		out->len = sizeof(*sin);
		inet_ntop(AF_INET, &sin->sin_addr, canon, sizeof(canon));
		snprintf(out->text, sizeof(out->text), "%s:%u", canon, port);
		return 0;
	}
	if (inet_pton(AF_INET6, ip, &sin6->sin6_addr) == 1) {
		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons(port);
		out->len = sizeof(*sin6);
		inet_ntop(AF_INET6, &sin6->sin6_addr, canon, sizeof(canon));
		snprintf(out->text, sizeof(out->text), "[%s]:%u", canon, port);
		return 0;
	}
	return -EINVAL;
}

int
config_parse_sockaddr(const char *text, struct config_sockaddr *out)
{
	char buf[sizeof(out->text)];
	const char *ip = buf;
	char *colon;
	uint16_t port;

	assert(text);
	assert(out);
	if (strlen(text) >= sizeof(buf))
		return -EINVAL;
	strcpy(buf, text);
	if (buf[0] == '[') {
		char *close = strchr(buf, ']');

		/* "[addr]:port": the brackets are what make an IPv6 port unambiguous */
		if (close == NULL || close[1] != ':')
			return -EINVAL;
		*close = '\0';
		ip = buf + 1;
		colon = close + 1;
	} else {
		colon = strrchr(buf, ':');
		if (colon == NULL || strchr(buf, ':') != colon)
			return -EINVAL;
		*colon = '\0';
	}
	if (parse_port(colon + 1, &port) < 0)
		return -EINVAL;
	return sockaddr_from_ip(ip, port, out);
}

/* Clears the bits of addr past prefix_len, so equal networks compare equal. */
static void
network_mask(struct config_network *net)
{
	for (unsigned i = 0; i < 16; i++) {
		unsigned bits = net->prefix_len > i * 8 ? net->prefix_len - i * 8 : 0;

		if (bits < 8)
			net->addr[i] &= (uint8_t)(0xff00u >> bits);
	}
}

int
config_parse_network(const char *text, struct config_network *out)
{
	static const uint8_t v4_mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
	char buf[INET6_ADDRSTRLEN + 4];
	char *slash;
	unsigned max_len = 128;
	unsigned long prefix;

	assert(text);
	assert(out);
	if (strlen(text) >= sizeof(buf))
		return -EINVAL;
	strcpy(buf, text);
	slash = strchr(buf, '/');
	if (slash != NULL)
		*slash = '\0';
	memset(out, 0, sizeof(*out));
	if (inet_pton(AF_INET, buf, out->addr + 12) == 1) {
		memcpy(out->addr, v4_mapped, sizeof(v4_mapped));
		max_len = 32;
	} else if (inet_pton(AF_INET6, buf, out->addr) != 1) {
		return -EINVAL;
	}
	prefix = max_len;
	if (slash != NULL) {
		char *end;

		if (!isdigit((unsigned char)slash[1]) || strlen(slash + 1) > 3)
			return -EINVAL;
		prefix = strtoul(slash + 1, &end, 10);
		if (*end != '\0' || prefix > max_len)
			return -EINVAL;
	}
	out->prefix_len = (uint8_t)(prefix + (128 - max_len));
	network_mask(out);
	return 0;
}

bool
config_network_contains(const struct config_network *net, const struct sockaddr *sa)
{
	struct config_network peer = {.prefix_len = net->prefix_len};

	assert(net);
	assert(sa);
	assert(net->prefix_len <= 128);
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)sa;

		peer.addr[10] = 0xff;
		peer.addr[11] = 0xff;
		memcpy(peer.addr + 12, &sin->sin_addr, 4);
	} else if (sa->sa_family == AF_INET6) {
		memcpy(peer.addr, &((const struct sockaddr_in6 *)sa)->sin6_addr, 16);
	} else {
		return false;
	}
	network_mask(&peer);
	return memcmp(peer.addr, net->addr, sizeof(peer.addr)) == 0;
}

/* Reads leading decimal digits into *v; returns the rest, or NULL on none/overflow. */
static const char *
parse_digits(const char *text, uint64_t *v)
{
	const char *p = text;

	*v = 0;
	for (; isdigit((unsigned char)*p); p++) {
		uint64_t d = (uint64_t)(*p - '0');

		if (*v > (UINT64_MAX - d) / 10)
			return NULL;
		*v = *v * 10 + d;
	}
	return p == text ? NULL : p;
}

/* Multiplies *v by unit, failing instead of wrapping. */
static int
scale(uint64_t *v, uint64_t unit)
{
	if (*v > UINT64_MAX / unit)
		return -EINVAL;
	*v *= unit;
	return 0;
}

int
config_parse_duration_ms(const char *text, uint64_t *ms)
{
	static const struct {
		const char *suffix;
		uint64_t ms;
	} units[] = {
	    {"", 1000}, {"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}, {"d", 86400000},
	};
	uint64_t v;
	const char *rest;

	assert(text);
	assert(ms);
	rest = parse_digits(text, &v);
	if (rest == NULL)
		return -EINVAL;
	for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
		if (strcmp(rest, units[i].suffix) == 0) {
			if (scale(&v, units[i].ms) < 0)
				return -EINVAL;
			*ms = v;
			return 0;
		}
	}
	return -EINVAL;
}

int
config_parse_size(const char *text, uint64_t *bytes)
{
	static const char suffixes[] = "KMGT";
	uint64_t v;
	const char *rest;
	const char *unit;

	assert(text);
	assert(bytes);
	rest = parse_digits(text, &v);
	if (rest == NULL)
		return -EINVAL;
	if (*rest != '\0') {
		unit = strchr(suffixes, toupper((unsigned char)*rest));
		if (unit == NULL || rest[1] != '\0')
			return -EINVAL;
		for (const char *u = suffixes; u <= unit; u++)
			if (scale(&v, 1024) < 0)
				return -EINVAL;
	}
	*bytes = v;
	return 0;
}

void
config_domain_normalize(char *domain)
{
	size_t len;

	assert(domain);
	for (char *p = domain; *p != '\0'; p++)
		*p = (char)tolower((unsigned char)*p);
	len = strlen(domain);
	if (len > 0 && domain[len - 1] == '.')
		domain[len - 1] = '\0';
}
