/*
 * config.c -- loading the ringmx configuration (see config.h and DESIGN.md) and the
 * small parsers (addresses, networks, durations, sizes) other modules share.
 */
#include "core/config.h"

#include <arpa/inet.h>
#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <libfyaml.h>

#include "tls/tls.h"

static_assert(CONFIG_SNI_MAX == TLS_SNI_MAX, "tls.sni holds what the TLS server can load");

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

/* True for an RFC 1035 host name: LDH labels of 1..63 octets, 253 octets in all. */
static bool
domain_valid(const char *domain)
{
	size_t label = 0;
	size_t len = strlen(domain);

	if (len == 0 || len > 253)
		return false;
	for (size_t i = 0; i <= len; i++) {
		char c = domain[i];

		if (c == '.' || c == '\0') {
			if (label == 0 || label > 63 || domain[i - 1] == '-')
				return false;
			label = 0;
		} else if (isalnum((unsigned char)c) || (c == '-' && label > 0)) {
			label++;
		} else {
			return false;
		}
	}
	return true;
}

/* Room for a key path such as "routes.<255-octet domain>". */
#define CONFIG_KEY_PATH_LEN 320

struct loader {
	struct config *cfg;
	struct config_errors *errs;
	const char *file;
	bool builtin; /* the compiled-in default: its certificate may not exist yet */
	/* kept until the checks that need the whole file, so they can point at a line */
	struct fy_node *listen_nodes[CONFIG_LISTEN_MAX];
};

/* One value being read: its node (NULL when empty) and the key that led to it. */
struct item {
	struct fy_node *key;
	struct fy_node *value;
	char path[CONFIG_KEY_PATH_LEN];
};

static void errors_vadd(struct config_errors *errs, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));

static void
errors_vadd(struct config_errors *errs, const char *fmt, va_list ap)
{
	if (errs->count == CONFIG_ERRORS_MAX) {
		errs->dropped++;
		return;
	}
	vsnprintf(errs->line[errs->count], sizeof(errs->line[0]), fmt, ap);
	errs->count++;
}

static void __attribute__((format(printf, 2, 3)))
errors_add(struct config_errors *errs, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	errors_vadd(errs, fmt, ap);
	va_end(ap);
}

/*
 * Where a node starts, 1-based, in *pos (line, column). Collections have no token of
 * their own, so they point at their first scalar; a quoted scalar's token starts after
 * its quote, so step back onto it. False when the node has no position.
 */
static bool
node_position(struct fy_node *node, int pos[2])
{
	void *iter = NULL;
	struct fy_node_pair *pair;
	struct fy_token *token;
	const struct fy_mark *mark;
	enum fy_node_style style;

	if (node == NULL)
		return false;
	if (fy_node_is_mapping(node)) {
		pair = fy_node_mapping_iterate(node, &iter);
		return pair && node_position(fy_node_pair_key(pair), pos);
	}
	if (fy_node_is_sequence(node))
		return node_position(fy_node_sequence_iterate(node, &iter), pos);
	token = fy_node_is_scalar(node) ? fy_node_get_scalar_token(node) : NULL;
	mark = token ? fy_token_start_mark(token) : NULL;
	if (mark == NULL)
		return false;
	style = fy_node_get_style(node);
	pos[0] = mark->line + 1;
	pos[1] = mark->column + 1;
	if ((style == FYNS_SINGLE_QUOTED || style == FYNS_DOUBLE_QUOTED) && pos[1] > 1)
		pos[1]--;
	return true;
}

static void __attribute__((format(printf, 3, 4)))
loader_error(struct loader *ld, const struct item *it, const char *fmt, ...)
{
	char msg[sizeof(ld->errs->line[0])];
	const char *sep = it->path[0] ? ": " : "";
	int pos[2];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (node_position(it->value, pos) || node_position(it->key, pos))
		errors_add(ld->errs, "%s:%d:%d: %s%s%s", ld->file, pos[0], pos[1], it->path, sep,
		           msg);
	else
		errors_add(ld->errs, "%s: %s%s%s", ld->file, it->path, sep, msg);
}

static void path_format(struct item *it, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Key paths are labels for messages: a pathological key name may be cut, never overflow. */
static void
path_format(struct item *it, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(it->path, sizeof(it->path), fmt, ap);
	va_end(ap);
}

/* The item for the value of key `name` inside parent. */
static void
item_member(const struct item *parent, struct fy_node *key, struct fy_node *value, const char *name,
            struct item *child)
{
	child->key = key;
	child->value = value;
	if (parent->path[0] == '\0')
		path_format(child, "%s", name);
	else
		path_format(child, "%s.%s", parent->path, name);
}

/* The item for entry `index` of the list parent; its key is the list's own key. */
static void
item_entry(const struct item *parent, struct fy_node *value, int index, struct item *child)
{
	child->key = parent->key;
	child->value = value;
	path_format(child, "%s[%d]", parent->path, index);
}

/* An item pointing at key inside node (or at node when key is absent), for late checks. */
static void
item_at(struct fy_node *node, const char *key, const char *path, struct item *it)
{
	it->key = node;
	it->value =
	    fy_node_is_mapping(node) ? fy_node_mapping_lookup_by_string(node, key, FY_NT) : NULL;
	path_format(it, "%s", path);
}

/* YAML 1.2 core schema null: no value, "~" or "null" written plain. */
static bool
node_is_null(struct fy_node *node)
{
	const char *text;

	if (node == NULL)
		return true;
	if (!fy_node_is_scalar(node) || fy_node_get_style(node) != FYNS_PLAIN)
		return false;
	text = fy_node_get_scalar0(node);
	return text == NULL || strcmp(text, "~") == 0 || strcmp(text, "null") == 0 ||
	       strcmp(text, "Null") == 0 || strcmp(text, "NULL") == 0;
}

/* The text of a scalar ("" for null), or NULL after reporting what was wrong. */
static const char *
item_text(struct loader *ld, const struct item *it, const char *want)
{
	const char *text;

	if (node_is_null(it->value))
		return "";
	if (!fy_node_is_scalar(it->value)) {
		loader_error(ld, it, "expected %s", want);
		return NULL;
	}
	text = fy_node_get_scalar0(it->value);
	if (text == NULL)
		loader_error(ld, it, "out of memory");
	return text;
}

/* Copies text into dst[size], reporting instead of truncating. */
static bool
item_copy(struct loader *ld, const struct item *it, const char *text, char *dst, size_t size)
{
	if (strlen(text) >= size) {
		loader_error(ld, it, "too long (max %zu characters)", size - 1);
		return false;
	}
	strcpy(dst, text);
	return true;
}

/*
 * Readable regular file: what the server will open later, checked now so -t can tell.
 * may_be_missing: a file ringmx creates itself at start (the built-in default's certificate).
 */
static void
check_file(struct loader *ld, const struct item *it, const char *path, bool may_be_missing)
{
	struct stat st;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0 && errno == ENOENT && may_be_missing)
		return;
	if (fd < 0) {
		loader_error(ld, it, "cannot read file: %s", strerror(errno));
		return;
	}
	if (fstat(fd, &st) == 0 && !S_ISREG(st.st_mode))
		loader_error(ld, it, "cannot read file: not a regular file");
	close(fd);
}

static void
check_readable(struct loader *ld, const struct item *it, const char *path)
{
	check_file(ld, it, path, false);
}

enum field_kind {
	FIELD_SECTION, /* a nested mapping of more fields, stored flat in the same struct */
	FIELD_STRING,
	FIELD_FILE, /* a string naming a file that must be readable when set */
	FIELD_UINT,
	FIELD_DURATION,
	FIELD_SIZE,
	FIELD_ENUM, /* one of names[]; stored as its index (bool fields: off=0, on=1) */
	FIELD_LIST, /* a list of up to max entries (at least min), count stored apart */
	FIELD_CUSTOM,
};

struct field {
	const char *name;
	enum field_kind kind;
	size_t offset;
	size_t size;
	uint64_t min, max; /* numbers, in the stored unit */
	uint64_t unit_ms;  /* FIELD_DURATION: 1 for _ms fields, 1000 for _s fields */
	const char *const *names;
	const struct field *section;
	void (*parse)(struct loader *ld, const struct item *it, void *target);
	void (*entry)(struct loader *ld, const struct item *entry, unsigned index);
	size_t count_offset; /* FIELD_LIST: the unsigned count of entries */
};

#define AT(type, member) .offset = offsetof(type, member), .size = sizeof(((type *)0)->member)
#define SECTION(n, fields)                                                                         \
	{                                                                                          \
		.name = n, .kind = FIELD_SECTION, .section = fields                                \
	}
#define STRING(n, type, member)                                                                    \
	{                                                                                          \
		.name = n, .kind = FIELD_STRING, AT(type, member)                                  \
	}
#define FILENAME(n, type, member)                                                                  \
	{                                                                                          \
		.name = n, .kind = FIELD_FILE, AT(type, member)                                    \
	}
#define NUMBER(n, k, type, member, lo, hi, unit)                                                   \
	{                                                                                          \
		.name = n, .kind = k, AT(type, member), .min = lo, .max = hi, .unit_ms = unit      \
	}
#define UINT(n, type, member, lo, hi) NUMBER(n, FIELD_UINT, type, member, lo, hi, 0)
#define SIZE(n, type, member, lo, hi) NUMBER(n, FIELD_SIZE, type, member, lo, hi, 0)
#define DURATION(n, type, member, unit, lo, hi)                                                    \
	NUMBER(n, FIELD_DURATION, type, member, lo, hi, unit)
#define ENUM(n, type, member, list)                                                                \
	{                                                                                          \
		.name = n, .kind = FIELD_ENUM, AT(type, member), .names = list                     \
	}
#define CUSTOM(n, type, member, fn)                                                                \
	{                                                                                          \
		.name = n, .kind = FIELD_CUSTOM, AT(type, member), .parse = fn                     \
	}
#define LIST(n, type, member, count, lo, hi, fn)                                                   \
	{                                                                                          \
		.name = n, .kind = FIELD_LIST, AT(type, member), .min = lo, .max = hi,             \
		.entry = fn, .count_offset = offsetof(type, count)                                 \
	}
#define FIELDS_END                                                                                 \
	{                                                                                          \
		.name = NULL                                                                       \
	}

/* Stores v into an unsigned field (or enum, or bool) of the given width. */
static void
store_uint(void *target, size_t size, uint64_t v)
{
	uint8_t u8 = (uint8_t)v;
	uint16_t u16 = (uint16_t)v;
	uint32_t u32 = (uint32_t)v;

	switch (size) {
	case 1:
		memcpy(target, &u8, 1);
		break;
	case 2:
		memcpy(target, &u16, 2);
		break;
	case 4:
		memcpy(target, &u32, 4);
		break;
	case 8:
		memcpy(target, &v, 8);
		break;
	default:
		assert(!"unsupported field width");
	}
}

/* Parses a number field's text into the field's unit; reports and returns false if bad. */
static bool
number_parse(struct loader *ld, const struct item *it, const struct field *f, uint64_t *v)
{
	const char *text = item_text(ld, it, "a single value");
	const char *rest;

	if (text == NULL)
		return false;
	switch (f->kind) {
	case FIELD_UINT:
		rest = parse_digits(text, v);
		if (rest == NULL || *rest != '\0') {
			loader_error(ld, it, "expected an integer");
			return false;
		}
		return true;
	case FIELD_DURATION:
		if (config_parse_duration_ms(text, v) < 0) {
			loader_error(ld, it, "expected a duration (e.g. 250ms, 30s, 5m, 1h, 5d)");
			return false;
		}
		*v /= f->unit_ms;
		return true;
	case FIELD_SIZE:
		if (config_parse_size(text, v) < 0) {
			loader_error(ld, it, "expected a size (e.g. 64K, 64M, 1G, or bytes)");
			return false;
		}
		return true;
	default:
		assert(!"not a number field");
		return false;
	}
}

static void
field_number(struct loader *ld, const struct item *it, const struct field *f, void *target)
{
	uint64_t v;

	if (!number_parse(ld, it, f, &v))
		return;
	if (v < f->min || v > f->max) {
		loader_error(ld, it, "out of range (%llu..%llu%s)", (unsigned long long)f->min,
		             (unsigned long long)f->max,
		             f->kind == FIELD_DURATION ? (f->unit_ms == 1 ? " ms" : " s")
		             : f->kind == FIELD_SIZE   ? " bytes"
		                                       : "");
		return;
	}
	store_uint(target, f->size, v);
}

static void
field_enum(struct loader *ld, const struct item *it, const struct field *f, void *target)
{
	const char *text = item_text(ld, it, "a single value");
	char want[128] = "";

	if (text == NULL)
		return;
	for (unsigned i = 0; f->names[i] != NULL; i++) {
		if (strcmp(text, f->names[i]) == 0) {
			store_uint(target, f->size, i);
			return;
		}
		snprintf(want + strlen(want), sizeof(want) - strlen(want), "%s%s", i ? ", " : "",
		         f->names[i]);
	}
	loader_error(ld, it, "bad value \"%.64s\" (want one of: %s)", text, want);
}

/* Calls fn for each entry of a list of at most max; the count, or -1 (reported) if refused. */
static int
walk_sequence(struct loader *ld, const struct item *it, unsigned max,
              void (*fn)(struct loader *ld, const struct item *entry, unsigned index))
{
	void *iter = NULL;
	struct fy_node *node;
	int count;
	int index = 0;

	if (node_is_null(it->value))
		return 0;
	if (!fy_node_is_sequence(it->value)) {
		loader_error(ld, it, "expected a list");
		return -1;
	}
	count = fy_node_sequence_item_count(it->value);
	if (count < 0 || (unsigned)count > max) {
		loader_error(ld, it, "too many entries (%d, max %u)", count, max);
		return -1;
	}
	while ((node = fy_node_sequence_iterate(it->value, &iter)) != NULL) {
		struct item entry;

		item_entry(it, node, index, &entry);
		fn(ld, &entry, (unsigned)index);
		index++;
	}
	return count;
}

/* A list replaces the default entries; a failed list keeps its count so errors don't cascade. */
static void
field_list(struct loader *ld, const struct item *it, const struct field *f, void *base)
{
	int count = walk_sequence(ld, it, (unsigned)f->max, f->entry);

	if (count < 0)
		return;
	if ((uint64_t)count < f->min) {
		loader_error(ld, it, "needs at least %llu %s", (unsigned long long)f->min,
		             f->min == 1 ? "entry" : "entries");
		return;
	}
	store_uint((char *)base + f->count_offset, sizeof(unsigned), (uint64_t)count);
}

static void walk_mapping(struct loader *ld, const struct item *it, const struct field *fields,
                         void *base);

static void
field_parse(struct loader *ld, const struct item *it, const struct field *f, void *base)
{
	void *target = (char *)base + f->offset;
	const char *text;

	switch (f->kind) {
	case FIELD_SECTION:
		walk_mapping(ld, it, f->section, base);
		break;
	case FIELD_STRING:
	case FIELD_FILE:
		text = item_text(ld, it, "a string");
		if (text == NULL || !item_copy(ld, it, text, target, f->size))
			break;
		if (f->kind == FIELD_FILE && text[0] != '\0')
			check_readable(ld, it, text);
		break;
	case FIELD_UINT:
	case FIELD_DURATION:
	case FIELD_SIZE:
		field_number(ld, it, f, target);
		break;
	case FIELD_ENUM:
		field_enum(ld, it, f, target);
		break;
	case FIELD_LIST:
		field_list(ld, it, f, base);
		break;
	case FIELD_CUSTOM:
		f->parse(ld, it, target);
		break;
	}
}

static const struct field *
field_find(const struct field *fields, const char *name)
{
	for (const struct field *f = fields; f->name != NULL; f++)
		if (strcmp(f->name, name) == 0)
			return f;
	return NULL;
}

/* Reads a mapping of known keys into base; every unknown key is reported. */
static void
walk_mapping(struct loader *ld, const struct item *it, const struct field *fields, void *base)
{
	void *iter = NULL;
	struct fy_node_pair *pair;

	if (node_is_null(it->value))
		return;
	if (!fy_node_is_mapping(it->value)) {
		loader_error(ld, it, "expected a mapping of keys");
		return;
	}
	while ((pair = fy_node_mapping_iterate(it->value, &iter)) != NULL) {
		struct fy_node *key = fy_node_pair_key(pair);
		const char *name = key && fy_node_is_scalar(key) ? fy_node_get_scalar0(key) : NULL;
		const struct field *f = name ? field_find(fields, name) : NULL;
		struct item child;

		item_member(it, key, fy_node_pair_value(pair), name ? name : "?", &child);
		if (name == NULL) {
			child.value = key;
			loader_error(ld, &child, "expected a key name");
		} else if (f == NULL) {
			child.value = key;
			loader_error(ld, &child, "unknown key \"%.64s\"", name);
		} else {
			field_parse(ld, &child, f, base);
		}
	}
}

static void
parse_hostname(struct loader *ld, const struct item *it, void *target)
{
	const char *text = item_text(ld, it, "a host name");
	char name[CONFIG_DOMAIN_LEN + 1];

	if (text == NULL || !item_copy(ld, it, text, name, sizeof(name)))
		return;
	config_domain_normalize(name);
	if (!domain_valid(name)) {
		loader_error(ld, it, "bad host name \"%.64s\"", text);
		return;
	}
	strcpy(target, name);
}

/* "HOST:PORT"; an empty string leaves the address unset (len 0). */
static void
parse_address(struct loader *ld, const struct item *it, void *target)
{
	struct config_sockaddr *sa = target;
	const char *text = item_text(ld, it, "an address");

	if (text == NULL)
		return;
	memset(sa, 0, sizeof(*sa));
	if (text[0] != '\0' && config_parse_sockaddr(text, sa) < 0)
		loader_error(ld, it, "bad address \"%.64s\" (want HOST:PORT)", text);
}

static const char *const role_names[] = {"mx", "submission", NULL};
static const char *const tls_names[] = {"none", "may", "required", "implicit", NULL};
static const char *const auth_names[] = {"off", "optional", "required", NULL};

static const struct field listen_fields[] = {
    CUSTOM("address", struct config_listen, address, parse_address),
    ENUM("role", struct config_listen, role, role_names),
    ENUM("tls", struct config_listen, tls, tls_names),
    ENUM("auth", struct config_listen, auth, auth_names),
    FIELDS_END,
};

static void
listen_entry(struct loader *ld, const struct item *entry, unsigned index)
{
	struct config_listen *l = &ld->cfg->listen[index];

	unsigned problems = ld->errs->count + ld->errs->dropped;

	*l = (struct config_listen){.role = CONFIG_ROLE_MX, .tls = CONFIG_TLS_MAY};
	ld->listen_nodes[index] = entry->value;
	walk_mapping(ld, entry, listen_fields, l);
	/* missing, null or "": one message, unless the entry was already reported */
	if (l->address.len == 0 && problems == ld->errs->count + ld->errs->dropped)
		loader_error(ld, entry, "needs an address");
}

static void
relay_domain_entry(struct loader *ld, const struct item *entry, unsigned index)
{
	const char *text = item_text(ld, entry, "a domain name");
	char *domain = ld->cfg->relay_domains[index];

	if (text == NULL || !item_copy(ld, entry, text, domain, CONFIG_DOMAIN_LEN + 1))
		return;
	config_domain_normalize(domain);
	if (!domain_valid(domain))
		loader_error(ld, entry, "bad domain \"%.64s\"", text);
}

static void
parse_relay_domains(struct loader *ld, const struct item *it, void *target)
{
	struct config *cfg = ld->cfg;
	int count = fy_node_is_sequence(it->value) ? fy_node_sequence_item_count(it->value) : 0;

	free(cfg->relay_domains);
	cfg->relay_domain_count = 0;
	/* sized before the walk; a list over the limit is refused by walk_sequence */
	count = count < 1 ? 1 : count > CONFIG_DOMAINS_MAX ? CONFIG_DOMAINS_MAX : count;
	cfg->relay_domains = calloc((size_t)count, sizeof(cfg->relay_domains[0]));
	if (cfg->relay_domains == NULL) {
		loader_error(ld, it, "out of memory");
		return;
	}
	count = walk_sequence(ld, it, CONFIG_DOMAINS_MAX, relay_domain_entry);
	if (count > 0)
		cfg->relay_domain_count = (unsigned)count;
}

static void
network_entry(struct loader *ld, const struct item *entry, unsigned index)
{
	const char *text = item_text(ld, entry, "a network");

	if (text != NULL && config_parse_network(text, &ld->cfg->mynetworks[index]) < 0)
		loader_error(ld, entry, "bad CIDR \"%.64s\"", text);
}

/* "IP" or "IP@PORT", as libunbound's ub_ctx_set_fwd takes it. */
static void
forward_entry(struct loader *ld, const struct item *entry, unsigned index)
{
	const char *text = item_text(ld, entry, "a resolver address");
	char *dst = ld->cfg->dns_forward[index];
	char ip[sizeof(ld->cfg->dns_forward[0])];
	uint8_t scratch[16];
	uint16_t port;
	char *at;

	if (text == NULL || !item_copy(ld, entry, text, dst, sizeof(ld->cfg->dns_forward[0])))
		return;
	strcpy(ip, dst);
	at = strchr(ip, '@');
	if (at != NULL)
		*at = '\0';
	if ((inet_pton(AF_INET, ip, scratch) != 1 && inet_pton(AF_INET6, ip, scratch) != 1) ||
	    (at != NULL && parse_port(at + 1, &port) < 0))
		loader_error(ld, entry, "bad resolver \"%.64s\" (want IP or IP@PORT)", text);
}

static void
retry_entry(struct loader *ld, const struct item *entry, unsigned index)
{
	static const struct field retry =
	    DURATION("retry", struct config, queue_retry_s[0], 1000, 1, 30 * 86400);

	field_number(ld, entry, &retry, &ld->cfg->queue_retry_s[index]);
}

static bool
ip_literal(const char *text)
{
	uint8_t scratch[16];

	return inet_pton(AF_INET, text, scratch) == 1 || inet_pton(AF_INET6, text, scratch) == 1;
}

/* "mx", "host" (its MX), "[host]" or "[host]:port" (that host, no MX lookup); 0 or -EINVAL. */
static int
route_parse(const char *text, struct config_route *route)
{
	const char *close;
	size_t len;

	route->port = 0;
	if (strcmp(text, "mx") == 0) {
		route->kind = CONFIG_ROUTE_MX;
		route->host[0] = '\0';
		return 0;
	}
	route->kind = text[0] == '[' ? CONFIG_ROUTE_HOST : CONFIG_ROUTE_HOST_MX;
	if (route->kind == CONFIG_ROUTE_HOST_MX) {
		len = strlen(text);
	} else {
		text++;
		close = strchr(text, ']');
		if (close == NULL || (close[1] != '\0' && close[1] != ':'))
			return -EINVAL;
		if (close[1] == ':' && parse_port(close + 2, &route->port) < 0)
			return -EINVAL;
		len = (size_t)(close - text);
	}
	if (len > CONFIG_DOMAIN_LEN)
		return -EINVAL;
	memcpy(route->host, text, len);
	route->host[len] = '\0';
	if (route->kind == CONFIG_ROUTE_HOST && ip_literal(route->host))
		return 0;
	config_domain_normalize(route->host);
	/* an IP address has no MX records: it needs the brackets */
	if (!domain_valid(route->host) || ip_literal(route->host))
		return -EINVAL;
	return 0;
}

static const char *const outbound_tls_names[] = {"none", "may", "encrypt", "dane", "verify", NULL};

/* A route written as a mapping, read into this before it is checked. */
struct route_spec {
	char nexthop[CONFIG_DOMAIN_LEN + 8];
	enum config_outbound_tls tls;
};

static const struct field route_fields[] = {
    STRING("nexthop", struct route_spec, nexthop),
    ENUM("tls", struct route_spec, tls, outbound_tls_names),
    FIELDS_END,
};

/* { nexthop: "[10.0.0.5]:25", tls: verify }: both optional (no nexthop: mx); true if good. */
static bool
route_mapping(struct loader *ld, const struct item *entry, struct config_route *route)
{
	struct route_spec spec = {.nexthop = "mx"};
	unsigned problems = ld->errs->count + ld->errs->dropped;
	struct item at;

	walk_mapping(ld, entry, route_fields, &spec);
	if (problems != ld->errs->count + ld->errs->dropped)
		return false;
	if (route_parse(spec.nexthop, route) < 0) {
		item_at(entry->value, "nexthop", "", &at);
		path_format(&at, "%.300s.nexthop", entry->path);
		loader_error(ld, &at,
		             "bad next hop \"%.64s\" (want mx, HOST, [HOST] or [HOST]:PORT)",
		             spec.nexthop);
		return false;
	}
	route->tls_set = fy_node_mapping_lookup_by_string(entry->value, "tls", FY_NT) != NULL;
	route->tls = route->tls_set ? spec.tls : CONFIG_OUT_TLS_NONE;
	return true;
}

/* One "domain: route" pair; entry->key is the domain, entry->value the route. */
static void
route_entry(struct loader *ld, const struct item *entry)
{
	struct config *cfg = ld->cfg;
	struct config_route *route = &cfg->routes[cfg->route_count];
	struct item at_key = *entry;
	const char *domain =
	    entry->key && fy_node_is_scalar(entry->key) ? fy_node_get_scalar0(entry->key) : NULL;
	const char *text;

	at_key.value = entry->key;
	if (domain == NULL || strlen(domain) > CONFIG_DOMAIN_LEN) {
		loader_error(ld, &at_key, "expected a domain name or \"*\"");
		return;
	}
	strcpy(route->domain, domain);
	config_domain_normalize(route->domain);
	if (strcmp(route->domain, "*") != 0 && !domain_valid(route->domain)) {
		loader_error(ld, &at_key, "bad domain \"%.64s\"", domain);
		return;
	}
	for (unsigned i = 0; i < cfg->route_count; i++) {
		if (strcmp(cfg->routes[i].domain, route->domain) == 0) {
			loader_error(ld, &at_key, "duplicate route for \"%.64s\"", route->domain);
			return;
		}
	}
	route->tls_set = false;
	route->tls = CONFIG_OUT_TLS_NONE;
	if (fy_node_is_mapping(entry->value)) {
		if (route_mapping(ld, entry, route))
			cfg->route_count++;
		return;
	}
	text = item_text(ld, entry, "a route");
	if (text == NULL)
		return;
	if (route_parse(text, route) < 0) {
		loader_error(ld, entry,
		             "bad route \"%.64s\" (want mx, HOST, [HOST] or [HOST]:PORT)", text);
		return;
	}
	cfg->route_count++;
}

/* Entries of a "name: value" mapping of at most max; the count, or -1 (reported). */
static int
pairs_count(struct loader *ld, const struct item *it, int max, const char *want)
{
	int count;

	if (!fy_node_is_mapping(it->value)) {
		loader_error(ld, it, "expected a mapping of %s", want);
		return -1;
	}
	count = fy_node_mapping_item_count(it->value);
	if (count < 0 || count > max) {
		loader_error(ld, it, "too many entries (%d, max %d)", count, max);
		return -1;
	}
	return count;
}

/* Calls fn for each pair of the mapping it, with the key as the entry's key. */
static void
pairs_walk(struct loader *ld, const struct item *it,
           void (*fn)(struct loader *ld, const struct item *entry))
{
	void *iter = NULL;
	struct fy_node_pair *pair;

	while ((pair = fy_node_mapping_iterate(it->value, &iter)) != NULL) {
		struct item entry;
		struct fy_node *key = fy_node_pair_key(pair);
		const char *name = key && fy_node_is_scalar(key) ? fy_node_get_scalar0(key) : "?";

		item_member(it, key, fy_node_pair_value(pair), name, &entry);
		fn(ld, &entry);
	}
}

static void
parse_routes(struct loader *ld, const struct item *it, void *target)
{
	struct config *cfg = ld->cfg;
	int count = pairs_count(ld, it, CONFIG_ROUTES_MAX, "domain: route");

	if (count < 0)
		return;
	free(cfg->routes);
	cfg->route_count = 0;
	/* one spare for the "*" default added when the file has none */
	cfg->routes = calloc((size_t)count + 1, sizeof(cfg->routes[0]));
	if (cfg->routes == NULL) {
		loader_error(ld, it, "out of memory");
		return;
	}
	pairs_walk(ld, it, route_entry);
}

/* tls.certificate and tls.key: the built-in default's may not exist yet (made at start). */
static void
parse_tls_file(struct loader *ld, const struct item *it, void *target)
{
	const char *text = item_text(ld, it, "a string");

	if (text == NULL || !item_copy(ld, it, text, target, CONFIG_PATH_LEN))
		return;
	if (text[0] != '\0')
		check_file(ld, it, text, ld->builtin);
}

static const struct field sni_fields[] = {
    FILENAME("certificate", struct config_sni, certificate),
    FILENAME("key", struct config_sni, key),
    FIELDS_END,
};

/* One "server.name: { certificate: FILE, key: FILE }" pair of tls.sni. */
static void
sni_entry(struct loader *ld, const struct item *entry)
{
	struct config *cfg = ld->cfg;
	struct config_sni *sni = &cfg->tls_sni[cfg->tls_sni_count];
	struct item at_key = *entry;
	const char *name =
	    entry->key && fy_node_is_scalar(entry->key) ? fy_node_get_scalar0(entry->key) : NULL;
	unsigned problems = ld->errs->count + ld->errs->dropped;

	at_key.value = entry->key;
	memset(sni, 0, sizeof(*sni));
	if (name == NULL || strlen(name) > CONFIG_DOMAIN_LEN) {
		loader_error(ld, &at_key, "expected a server name");
		return;
	}
	strcpy(sni->name, name);
	config_domain_normalize(sni->name);
	/* the TLS server matches exact names only: no wildcards */
	if (!domain_valid(sni->name)) {
		loader_error(ld, &at_key, "bad server name \"%.64s\" (want an exact host name)",
		             name);
		return;
	}
	for (unsigned i = 0; i < cfg->tls_sni_count; i++) {
		if (strcmp(cfg->tls_sni[i].name, sni->name) == 0) {
			loader_error(ld, &at_key, "duplicate server name \"%.64s\"", sni->name);
			return;
		}
	}
	if (!fy_node_is_mapping(entry->value)) {
		loader_error(ld, entry, "expected { certificate: FILE, key: FILE }");
		return;
	}
	walk_mapping(ld, entry, sni_fields, sni);
	if (problems != ld->errs->count + ld->errs->dropped)
		return;
	if (sni->certificate[0] == '\0' || sni->key[0] == '\0') {
		loader_error(ld, entry, "needs certificate and key");
		return;
	}
	cfg->tls_sni_count++;
}

static void
parse_sni(struct loader *ld, const struct item *it, void *target)
{
	struct config *cfg = ld->cfg;
	int count;

	if (node_is_null(it->value))
		return;
	count = pairs_count(ld, it, CONFIG_SNI_MAX, "server name: { certificate, key }");
	if (count < 0)
		return;
	free(cfg->tls_sni);
	cfg->tls_sni_count = 0;
	cfg->tls_sni = calloc((size_t)count + 1, sizeof(cfg->tls_sni[0]));
	if (cfg->tls_sni == NULL) {
		loader_error(ld, it, "out of memory");
		return;
	}
	pairs_walk(ld, it, sni_entry);
}

static const char *const log_level_names[] = {"debug", "info", "warning", "error", NULL};
static const char *const log_format_names[] = {"text", "json", NULL};
static const char *const dnssec_names[] = {"off", "validate", NULL};
static const char *const prefer_names[] = {"ipv4", "ipv6", NULL};
static const char *const sync_names[] = {"none", "always", NULL};
static const char *const bare_newline_names[] = {"normalize", "reject", NULL};

#define KIB   1024ULL
#define MIB   (1024ULL * KIB)
#define GIB   (1024ULL * MIB)
#define DAY_S 86400ULL

static const struct field log_fields[] = {
    ENUM("level", struct config, log_level, log_level_names),
    ENUM("format", struct config, log_format, log_format_names),
    FIELDS_END,
};

static const struct field metrics_fields[] = {
    CUSTOM("listen", struct config, metrics_listen, parse_address),
    FIELDS_END,
};

static const struct field tls_fields[] = {
    CUSTOM("certificate", struct config, tls_certificate, parse_tls_file),
    CUSTOM("key", struct config, tls_key, parse_tls_file),
    CUSTOM("sni", struct config, tls_sni, parse_sni),
    FIELDS_END,
};

static const struct field auth_fields[] = {
    FILENAME("passwd_file", struct config, auth_passwd_file),
    FIELDS_END,
};

static const struct field dns_fields[] = {
    LIST("forward", struct config, dns_forward, dns_forward_count, 0, CONFIG_FORWARD_MAX,
         forward_entry),
    FILENAME("trust_anchor_file", struct config, dns_trust_anchor_file),
    ENUM("dnssec", struct config, dns_dnssec, dnssec_names),
    FILENAME("unbound_config", struct config, dns_unbound_config),
    FILENAME("hosts_file", struct config, dns_hosts_file),
    ENUM("prefer", struct config, dns_prefer_ipv6, prefer_names),
    FIELDS_END,
};

static const struct field outbound_fields[] = {
    UINT("port", struct config, outbound_port, 1, 65535),
    ENUM("tls", struct config, outbound_tls, outbound_tls_names),
    FILENAME("tls_ca_file", struct config, outbound_tls_ca_file),
    UINT("max_connections_per_destination", struct config, outbound_max_connections_per_destination,
         1, 10000),
    UINT("max_messages_per_connection", struct config, outbound_max_messages_per_connection, 1,
         1000000),
    FIELDS_END,
};

static const struct field queue_fields[] = {
    ENUM("sync", struct config, queue_sync, sync_names),
    LIST("retry", struct config, queue_retry_s, queue_retry_count, 1, CONFIG_RETRY_MAX,
         retry_entry),
    DURATION("max_lifetime", struct config, queue_max_lifetime_s, 1000, 1, 365 * DAY_S),
    SIZE("memory_limit", struct config, queue_memory_limit, 64 * KIB, 1024 * GIB),
    SIZE("segment_size", struct config, queue_segment_size, 64 * KIB, 4 * GIB),
    FIELDS_END,
};

static const struct field limits_fields[] = {
    SIZE("max_message_size", struct config, limits_max_message_size, 1, 2 * GIB),
    UINT("max_recipients", struct config, limits_max_recipients, 1, 100000),
    UINT("max_connections", struct config, limits_max_connections, 1, 1000000),
    UINT("max_connections_per_ip", struct config, limits_max_connections_per_ip, 1, 1000000),
    DURATION("command_timeout", struct config, limits_command_timeout_ms, 1, 10, DAY_S * 1000),
    DURATION("data_timeout", struct config, limits_data_timeout_ms, 1, 10, DAY_S * 1000),
    UINT("max_errors", struct config, limits_max_errors, 1, 1000),
    UINT("max_hops", struct config, limits_max_hops, 1, 1000),
    ENUM("bare_newline", struct config, limits_bare_newline, bare_newline_names),
    FIELDS_END,
};

static const struct field top_fields[] = {
    CUSTOM("hostname", struct config, hostname, parse_hostname),
    UINT("workers", struct config, workers, 0, CONFIG_WORKERS_MAX),
    STRING("spool_dir", struct config, spool_dir),
    STRING("user", struct config, user),
    STRING("control_socket", struct config, control_socket),
    SECTION("log", log_fields),
    SECTION("metrics", metrics_fields),
    LIST("listen", struct config, listen, listen_count, 1, CONFIG_LISTEN_MAX, listen_entry),
    SECTION("tls", tls_fields),
    CUSTOM("relay_domains", struct config, relay_domains, parse_relay_domains),
    FILENAME("recipient_map", struct config, recipient_map),
    LIST("mynetworks", struct config, mynetworks, mynetwork_count, 0, CONFIG_NETWORKS_MAX,
         network_entry),
    SECTION("auth", auth_fields),
    CUSTOM("routes", struct config, routes, parse_routes),
    SECTION("dns", dns_fields),
    SECTION("outbound", outbound_fields),
    SECTION("queue", queue_fields),
    SECTION("limits", limits_fields),
    FIELDS_END,
};

static_assert(sizeof(enum config_log_level) == sizeof(uint32_t), "enum fields are stored as u32");
static_assert(sizeof(bool) == 1, "bool fields are stored as one byte");

/*
 * The development default. config_load(NULL) parses this very text, so what
 * `ringmx --default-config` prints is exactly what runs without -c. It is longer than
 * the 4095 characters ISO C promises for a string literal; GCC and Clang take it.
 */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Woverlength-strings"
static const char default_yaml[] =
    "# ringmx configuration: YAML 1.2 (plain JSON works too). Unknown keys are errors.\n"
    "# This is the development default; keys left out take their production default.\n"
    "# Durations: 250ms, 30s, 5m, 1h, 5d or bare seconds. Sizes: 64K, 64M, 1G or bytes.\n"
    "\n"
    "hostname: localhost            # name in the banner, EHLO and Received headers\n"
    "workers: 0                     # worker threads, at most 64; 0: one per online CPU\n"
    "spool_dir: ./var/spool         # queue journal; created at start if missing\n"
    "# user: ringmx                 # drop privileges to this user after binding ports\n"
    "control_socket: ./var/ringmx.sock   # where ringmxctl talks to the server\n"
    "log: { level: info, format: text }  # level: debug|info|warning|error; format: text|json\n"
    "metrics: { listen: \"\" }        # Prometheus /metrics, e.g. \"127.0.0.1:9465\"; \"\": off\n"
    "\n"
    "listen:                        # role: mx|submission; tls: none|may|required|implicit\n"
    "  - { address: \"127.0.0.1:2525\", role: mx, tls: may, auth: \"off\" }  # as 25: from MTAs\n"
    "  - { address: \"127.0.0.1:2587\", role: submission, tls: required, auth: required }  # 587\n"
    "  - { address: \"127.0.0.1:2465\", role: submission, tls: implicit, auth: required }  # 465\n"
    "# auth: off|optional|required. 25 offers STARTTLS and never requires it (RFC 3207); 587\n"
    "# needs STARTTLS before AUTH, 465 is TLS from the first byte; both need AUTH to relay.\n"
    "\n"
    "tls:                           # the certificate for STARTTLS and implicit TLS (PEM)\n"
    "  certificate: ./var/tls/cert.pem  # without -c, a missing pair is created at start,\n"
    "  key: ./var/tls/key.pem       # self-signed for hostname: replace it for production\n"
    "  # sni: { mx.other.test: { certificate: ./other.pem, key: ./other.key } }  # per name\n"
    "\n"
    "relay_domains: [ example.test ]     # domains we accept mail for, from anyone\n"
    "# recipient_map: /etc/ringmx/recipients   # known addresses and @domain lines\n"
    "mynetworks: [ 127.0.0.0/8, \"::1/128\" ]  # may relay anywhere without AUTH\n"
    "# auth: { passwd_file: /etc/ringmx/passwd }  # user:crypt(3)-hash per line\n"
    "\n"
    "routes:                        # next hop per recipient domain; \"*\" = every other\n"
    "  \"*\": mx                      # mx: DNS MX; \"[host]:port\": that host; host: its MX\n"
    "  # example.net: { nexthop: \"[10.0.0.5]:25\", tls: verify }  # own outbound.tls policy\n"
    "\n"
    "dns:                           # the resolver for MX, A/AAAA and TLSA lookups\n"
    "  forward: []                  # resolvers, e.g. [ \"127.0.0.1@5353\" ]; []: resolv.conf\n"
    "  dnssec: validate             # validate | off\n"
    "  # trust_anchor_file: /usr/share/dns/root.key  # the default (Debian dns-root-data)\n"
    "  # unbound_config: ./unbound.conf  # extra settings read with ub_ctx_config\n"
    "  # hosts_file: ./hosts         # static host addresses for the resolver\n"
    "  prefer: ipv4                 # ipv4 | ipv6: which of a host's addresses is tried first\n"
    "\n"
    "outbound:                      # delivery to next hops\n"
    "  port: 25                     # SMTP port of next hops (tests point it at a sink)\n"
    "  tls: dane                    # none | may | encrypt | dane (may without TLSA) | verify\n"
    "  # tls_ca_file: /etc/ssl/certs/ca-certificates.crt  # CAs for verify (the default)\n"
    "  max_connections_per_destination: 20   # parallel connections to one next hop\n"
    "  max_messages_per_connection: 100      # messages sent before reconnecting\n"
    "\n"
    "queue:                         # the journal under spool_dir\n"
    "  sync: always                 # always: fdatasync before 250; none: benchmarks only\n"
    "  retry: [ 1m, 5m, 15m, 30m, 1h, 2h, 4h ]  # delays between delivery attempts\n"
    "  max_lifetime: 5d             # undelivered after this: bounce\n"
    "  memory_limit: 1G             # queued mail held in memory; beyond it: 452 4.3.1\n"
    "  segment_size: 64M            # journal files rotate at this size\n"
    "\n"
    "limits:                        # per connection and per message\n"
    "  max_message_size: 36700160   # bytes; larger: 552 5.3.4\n"
    "  max_recipients: 1000         # per message; more: 452 4.5.3\n"
    "  max_connections: 20000       # inbound connections in all\n"
    "  max_connections_per_ip: 100  # inbound connections from one address\n"
    "  command_timeout: 5m          # idle time allowed between commands\n"
    "  data_timeout: 10m            # time allowed for the whole DATA transfer\n"
    "  max_errors: 10               # bad commands before the session is closed\n"
    "  max_hops: 50                 # Received headers allowed (mail loop guard)\n"
    "  bare_newline: normalize      # bare LF in DATA: normalize (to CRLF) | reject\n";
#pragma GCC diagnostic pop

const char *
config_default_yaml(void)
{
	return default_yaml;
}

/* The production defaults of DESIGN.md, for every key a file leaves out. */
static int
defaults_set(struct config *cfg)
{
	static const uint32_t retry_s[] = {60, 300, 900, 1800, 3600, 7200, 14400};
	struct config_network *nets = cfg->mynetworks;
	int rc;

	if (gethostname(cfg->hostname, sizeof(cfg->hostname) - 1) < 0 || cfg->hostname[0] == '\0')
		strcpy(cfg->hostname, "localhost");
	config_domain_normalize(cfg->hostname);
	strcpy(cfg->spool_dir, "/var/spool/ringmx");
	strcpy(cfg->control_socket, "/run/ringmx/ctl.sock");
	cfg->log_level = CONFIG_LOG_INFO;
	cfg->log_format = CONFIG_LOG_TEXT;
	/* no listen key: the public MX port alone; submission ports need TLS and AUTH set up */
	cfg->listen[0] = (struct config_listen){.role = CONFIG_ROLE_MX, .tls = CONFIG_TLS_MAY};
	rc = config_parse_sockaddr("0.0.0.0:25", &cfg->listen[0].address);
	assert(rc == 0);
	cfg->listen_count = 1;
	rc = config_parse_network("127.0.0.0/8", &nets[0]);
	assert(rc == 0);
	rc = config_parse_network("::1/128", &nets[1]);
	assert(rc == 0);
	cfg->mynetwork_count = 2;
	cfg->routes = calloc(1, sizeof(cfg->routes[0]));
	if (cfg->routes == NULL)
		return -ENOMEM;
	cfg->routes[0] = (struct config_route){.domain = "*", .kind = CONFIG_ROUTE_MX};
	cfg->route_count = 1;
	strcpy(cfg->dns_trust_anchor_file, "/usr/share/dns/root.key");
	cfg->dns_dnssec = true;
	cfg->outbound_port = 25;
	cfg->outbound_tls = CONFIG_OUT_TLS_DANE;
	strcpy(cfg->outbound_tls_ca_file, "/etc/ssl/certs/ca-certificates.crt");
	cfg->outbound_max_connections_per_destination = 20;
	cfg->outbound_max_messages_per_connection = 100;
	cfg->queue_sync = true;
	memcpy(cfg->queue_retry_s, retry_s, sizeof(retry_s));
	cfg->queue_retry_count = sizeof(retry_s) / sizeof(retry_s[0]);
	cfg->queue_max_lifetime_s = 5 * DAY_S;
	cfg->queue_memory_limit = GIB;
	cfg->queue_segment_size = 64 * MIB;
	cfg->limits_max_message_size = 36700160;
	cfg->limits_max_recipients = 1000;
	cfg->limits_max_connections = 20000;
	cfg->limits_max_connections_per_ip = 100;
	cfg->limits_command_timeout_ms = 5 * 60 * 1000;
	cfg->limits_data_timeout_ms = 10 * 60 * 1000;
	cfg->limits_max_errors = 10;
	cfg->limits_max_hops = 50;
	cfg->limits_bare_newline = CONFIG_BARE_NEWLINE_NORMALIZE;
	return 0;
}

/*
 * STARTTLS needs a certificate. Until the TLS module lands, a `may` listener without
 * one is accepted and simply does not offer STARTTLS; the TLS issue sets this to true
 * so that `may` needs tls.certificate and tls.key like `required` and `implicit` do.
 */
static const bool tls_may_needs_certificate = false;

/* Rules that span keys: listeners against tls settings. */
static void
finish_listeners(struct loader *ld, struct fy_node *root)
{
	const struct config *cfg = ld->cfg;
	bool have_cert = cfg->tls_certificate[0] != '\0';
	struct item it;

	if (have_cert != (cfg->tls_key[0] != '\0')) {
		item_at(root, "tls", "tls", &it);
		loader_error(ld, &it, "certificate and key go together");
	}
	if (cfg->tls_sni_count > 0 && !have_cert) {
		item_at(fy_node_mapping_lookup_by_string(root, "tls", FY_NT), "sni", "tls.sni",
		        &it);
		loader_error(ld, &it,
		             "needs tls.certificate and tls.key (for clients without SNI)");
	}
	for (unsigned i = 0; i < cfg->listen_count; i++) {
		const struct config_listen *l = &cfg->listen[i];
		char path[32];

		snprintf(path, sizeof(path), "listen[%u].tls", i);
		item_at(ld->listen_nodes[i], "tls", path, &it);
		if (!have_cert && l->tls != CONFIG_TLS_NONE &&
		    (l->tls != CONFIG_TLS_MAY || tls_may_needs_certificate))
			loader_error(ld, &it, "needs tls.certificate and tls.key");
		/*
		 * auth without auth.passwd_file is no error: nobody can log in, so `required`
		 * refuses every MAIL (530) and fails closed; `ringmx -t` warns about it.
		 */
	}
}

static bool
verify_used(const struct config *cfg)
{
	if (cfg->outbound_tls == CONFIG_OUT_TLS_VERIFY)
		return true;
	for (unsigned i = 0; i < cfg->route_count; i++)
		if (config_route_tls(cfg, &cfg->routes[i]) == CONFIG_OUT_TLS_VERIFY)
			return true;
	return false;
}

/* `verify` can never succeed without CA certificates: the default bundle is checked too. */
static void
finish_outbound(struct loader *ld, struct fy_node *root)
{
	const struct config *cfg = ld->cfg;
	struct fy_node *outbound = fy_node_mapping_lookup_by_string(root, "outbound", FY_NT);
	struct item it;

	if (!verify_used(cfg))
		return;
	item_at(outbound, "tls_ca_file", "outbound.tls_ca_file", &it);
	if (cfg->outbound_tls_ca_file[0] == '\0')
		loader_error(ld, &it, "tls: verify needs a CA bundle");
	else if (it.value == NULL && access(cfg->outbound_tls_ca_file, R_OK) < 0)
		loader_error(ld, &it,
		             "%s: cannot read file: %s (tls: verify needs it: install "
		             "ca-certificates or set outbound.tls_ca_file)",
		             cfg->outbound_tls_ca_file, strerror(errno));
}

static int
domain_compare(const void *a, const void *b)
{
	return strcmp(a, b);
}

static int
route_compare(const void *a, const void *b)
{
	const struct config_route *ra = a;
	const struct config_route *rb = b;

	return strcmp(ra->domain, rb->domain);
}

/* Sorted lists for bsearch; duplicate relay domains are harmless and dropped. */
static void
finish_lists(struct loader *ld, struct fy_node *root)
{
	struct config *cfg = ld->cfg;
	unsigned kept = 0;
	bool have_default = false;
	struct item it;

	if (cfg->relay_domain_count > 0)
		qsort(cfg->relay_domains, cfg->relay_domain_count, sizeof(cfg->relay_domains[0]),
		      domain_compare);
	for (unsigned i = 0; i < cfg->relay_domain_count; i++)
		if (kept == 0 || strcmp(cfg->relay_domains[kept - 1], cfg->relay_domains[i]) != 0)
			memmove(cfg->relay_domains[kept++], cfg->relay_domains[i],
			        sizeof(cfg->relay_domains[0]));
	cfg->relay_domain_count = kept;

	for (unsigned i = 0; i < cfg->route_count; i++)
		have_default |= strcmp(cfg->routes[i].domain, "*") == 0;
	if (!have_default && cfg->route_count == CONFIG_ROUTES_MAX) {
		item_at(root, "routes", "routes", &it);
		loader_error(ld, &it, "too many entries (max %d with the \"*\" default)",
		             CONFIG_ROUTES_MAX);
	} else if (!have_default) {
		/* parse_routes allocated one spare entry for this */
		cfg->routes[cfg->route_count++] =
		    (struct config_route){.domain = "*", .kind = CONFIG_ROUTE_MX};
	}
	qsort(cfg->routes, cfg->route_count, sizeof(cfg->routes[0]), route_compare);
}

static void
finish(struct loader *ld, struct fy_node *root)
{
	struct config *cfg = ld->cfg;
	struct item it;
	long cpus;

	if (cfg->spool_dir[0] == '\0') {
		item_at(root, "spool_dir", "spool_dir", &it);
		loader_error(ld, &it, "needs a directory");
	}
	if (cfg->control_socket[0] == '\0') {
		item_at(root, "control_socket", "control_socket", &it);
		loader_error(ld, &it, "needs a path");
	}
	finish_listeners(ld, root);
	finish_lists(ld, root);
	finish_outbound(ld, root);
	cfg->metrics_enabled = cfg->metrics_listen.len != 0;
	if (cfg->workers == 0) {
		cpus = sysconf(_SC_NPROCESSORS_ONLN);
		cfg->workers = cpus < 1                    ? 1
		               : cpus > CONFIG_WORKERS_MAX ? CONFIG_WORKERS_MAX
		                                           : (unsigned)cpus;
	}
}

/* libfyaml's messages are collected, never printed: they become lines in errs. */
static void
diag_discard(struct fy_diag *diag, void *user, const char *buf, size_t len)
{
}

static void
diag_collect(struct loader *ld, struct fy_diag *diag)
{
	void *iter = NULL;
	struct fy_diag_error *e;

	while ((e = fy_diag_errors_iterate(diag, &iter)) != NULL)
		if (e->type >= FYET_ERROR)
			errors_add(ld->errs, "%s:%d:%d: yaml: %s", ld->file, e->line, e->column,
			           e->msg);
}

/* Checks path can be read, so a missing file gets errno's words rather than silence. */
static bool
file_readable(struct loader *ld, const char *path)
{
	struct stat st;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0) {
		errors_add(ld->errs, "%s: cannot read file: %s", path, strerror(errno));
		return false;
	}
	if (fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) {
		errors_add(ld->errs, "%s: cannot read file: %s", path, strerror(EISDIR));
		close(fd);
		return false;
	}
	close(fd);
	return true;
}

/* Parses path (or the default text when NULL); NULL with errs filled on failure. */
static struct fy_document *
document_parse(struct loader *ld, const char *path)
{
	struct fy_diag_cfg diag_cfg;
	struct fy_parse_cfg parse_cfg = {
	    .flags = FYPCF_QUIET | FYPCF_RESOLVE_DOCUMENT | FYPCF_DEFAULT_VERSION_1_2,
	};
	struct fy_document *doc;
	unsigned problems = ld->errs->count;

	if (path != NULL && !file_readable(ld, path))
		return NULL;
	fy_diag_cfg_default(&diag_cfg);
	diag_cfg.fp = NULL;
	diag_cfg.output_fn = diag_discard;
	parse_cfg.diag = fy_diag_create(&diag_cfg);
	if (parse_cfg.diag == NULL) {
		errors_add(ld->errs, "%s: out of memory", ld->file);
		return NULL;
	}
	fy_diag_set_collect_errors(parse_cfg.diag, true);
	doc = path ? fy_document_build_from_file(&parse_cfg, path)
	           : fy_document_build_from_string(&parse_cfg, default_yaml, FY_NT);
	diag_collect(ld, parse_cfg.diag);
	fy_diag_destroy(parse_cfg.diag);
	if (doc == NULL && ld->errs->count == problems)
		errors_add(ld->errs, "%s: empty file (expected a mapping of configuration keys)",
		           ld->file);
	if (doc != NULL && ld->errs->count != problems) {
		fy_document_destroy(doc);
		doc = NULL;
	}
	return doc;
}

struct config *
config_load(const char *path, struct config_errors *errs)
{
	struct loader ld = {.errs = errs, .file = path ? path : "<default>", .builtin = !path};
	struct item root = {.key = NULL};
	struct fy_document *doc;

	assert(errs);
	memset(errs, 0, sizeof(*errs));
	ld.cfg = calloc(1, sizeof(*ld.cfg));
	if (ld.cfg == NULL || defaults_set(ld.cfg) < 0) {
		errors_add(errs, "%s: out of memory", ld.file);
		goto fail;
	}
	if (strlen(ld.file) >= sizeof(ld.cfg->source)) {
		errors_add(errs, "%s: file name too long", ld.file);
		goto fail;
	}
	strcpy(ld.cfg->source, ld.file);
	ld.cfg->builtin = ld.builtin;
	doc = document_parse(&ld, path);
	if (doc == NULL)
		goto fail;
	root.value = fy_document_root(doc);
	if (root.value == NULL || !fy_node_is_mapping(root.value))
		loader_error(&ld, &root, "expected a mapping of configuration keys");
	else
		walk_mapping(&ld, &root, top_fields, ld.cfg);
	finish(&ld, root.value);
	fy_document_destroy(doc);
	if (errs->count > 0)
		goto fail;
	return ld.cfg;
fail:
	config_free(ld.cfg);
	return NULL;
}

void
config_free(struct config *cfg)
{
	if (cfg == NULL)
		return;
	free(cfg->relay_domains);
	free(cfg->routes);
	free(cfg->tls_sni);
	free(cfg);
}

enum config_outbound_tls
config_route_tls(const struct config *cfg, const struct config_route *route)
{
	assert(cfg);
	assert(route);
	return route->tls_set ? route->tls : cfg->outbound_tls;
}

bool
config_tls_missing(const struct config *cfg)
{
	assert(cfg);
	if (!cfg->builtin || cfg->tls_certificate[0] == '\0')
		return false;
	return access(cfg->tls_certificate, F_OK) < 0 || access(cfg->tls_key, F_OK) < 0;
}

int
config_mkdir_parents(const char *key, const char *dir, char *err, size_t err_len)
{
	char path[CONFIG_PATH_LEN];

	assert(key);
	assert(dir);
	snprintf(path, sizeof(path), "%s", dir);
	for (char *p = path + 1;; p++) {
		char c = *p;

		if (c != '/' && c != '\0')
			continue;
		*p = '\0';
		if (mkdir(path, 0750) < 0 && errno != EEXIST) {
			int e = errno;

			snprintf(err, err_len,
			         "%s %s: cannot create %s: %s (create it, or set %s "
			         "to a path this user can write)",
			         key, dir, path, strerror(e), key);
			return -e;
		}
		*p = c;
		if (c == '\0')
			return 0;
	}
}

int
config_check_spool(const struct config *cfg, char *err, size_t err_len)
{
	char probe[CONFIG_PATH_LEN + 32];
	struct stat st;
	int rc;
	int fd;

	assert(cfg);
	assert(err);
	assert(cfg->spool_dir[0] != '\0');
	rc = config_mkdir_parents("spool_dir", cfg->spool_dir, err, err_len);
	if (rc < 0)
		return rc;
	if (stat(cfg->spool_dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
		snprintf(err, err_len,
		         "spool_dir %s: not a directory (remove it, or set spool_dir "
		         "elsewhere)",
		         cfg->spool_dir);
		return -ENOTDIR;
	}
	if (access(cfg->spool_dir, W_OK | X_OK) < 0) {
		rc = -errno;
		snprintf(err, err_len,
		         "spool_dir %s: not writable by uid %u: %s (fix its owner "
		         "or mode)",
		         cfg->spool_dir, (unsigned)geteuid(), strerror(-rc));
		return rc;
	}
	/* access() trusts the mode bits; a read-only mount or full disk shows only on create */
	snprintf(probe, sizeof(probe), "%s/.ringmx-probe-XXXXXX", cfg->spool_dir);
	fd = mkstemp(probe);
	if (fd < 0) {
		rc = -errno;
		snprintf(err, err_len,
		         "spool_dir %s: cannot create a file: %s (check the mount "
		         "and free space)",
		         cfg->spool_dir, strerror(-rc));
		return rc;
	}
	close(fd);
	unlink(probe);
	return 0;
}
