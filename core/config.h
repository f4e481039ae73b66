/*
 * config.h -- the ringmx configuration: the keys of DESIGN.md, parsed from YAML 1.2
 * (libfyaml; JSON is valid YAML 1.2) or taken from the compiled-in development default.
 *
 * A struct config is immutable once loaded and is shared read-only by every thread.
 */
#ifndef RINGMX_CORE_CONFIG_H
#define RINGMX_CORE_CONFIG_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>

#define CONFIG_LISTEN_MAX   32
#define CONFIG_DOMAINS_MAX  4096
#define CONFIG_NETWORKS_MAX 1024
#define CONFIG_ROUTES_MAX   1024
#define CONFIG_FORWARD_MAX  8
#define CONFIG_RETRY_MAX    32
#define CONFIG_WORKERS_MAX  64
#define CONFIG_DOMAIN_LEN   255
#define CONFIG_PATH_LEN     1024
#define CONFIG_ERRORS_MAX   64
#define CONFIG_SNI_MAX      64 /* = TLS_SNI_MAX of tls/tls.h (checked in config.c) */

enum config_role {
	CONFIG_ROLE_MX,
	CONFIG_ROLE_SUBMISSION,
};

enum config_tls_mode {
	CONFIG_TLS_NONE,
	CONFIG_TLS_MAY,
	CONFIG_TLS_REQUIRED,
	CONFIG_TLS_IMPLICIT,
};

enum config_auth_mode {
	CONFIG_AUTH_OFF,
	CONFIG_AUTH_OPTIONAL,
	CONFIG_AUTH_REQUIRED,
};

enum config_outbound_tls {
	CONFIG_OUT_TLS_NONE,
	CONFIG_OUT_TLS_MAY,
	CONFIG_OUT_TLS_ENCRYPT,
	CONFIG_OUT_TLS_DANE,
	CONFIG_OUT_TLS_VERIFY,
};

enum config_log_format {
	CONFIG_LOG_TEXT,
	CONFIG_LOG_JSON,
};

enum config_log_level {
	CONFIG_LOG_DEBUG,
	CONFIG_LOG_INFO,
	CONFIG_LOG_WARNING,
	CONFIG_LOG_ERROR,
};

enum config_bare_newline {
	CONFIG_BARE_NEWLINE_NORMALIZE, /* bare LF becomes CRLF */
	CONFIG_BARE_NEWLINE_REJECT,    /* 550 5.5.2 for the whole message */
};

/* An address with a port; the text form is kept for logs and diagnostics. */
struct config_sockaddr {
	struct sockaddr_storage ss;
	socklen_t len;
	char text[64];
};

/* A CIDR network, IPv4 or IPv6 (IPv4 stored as v4-mapped IPv6 so one match covers both). */
struct config_network {
	uint8_t addr[16];
	uint8_t prefix_len; /* over the 128-bit form */
};

struct config_listen {
	struct config_sockaddr address;
	enum config_role role;
	enum config_tls_mode tls;
	enum config_auth_mode auth;
};

/* A route: "[host]:port" (no MX lookup), "host" (that host's MX), or "mx". */
enum config_route_kind {
	CONFIG_ROUTE_MX,
	CONFIG_ROUTE_HOST_MX,
	CONFIG_ROUTE_HOST,
};

/*
 * A route is a string ("[10.0.0.5]:25") or a mapping { nexthop: "[10.0.0.5]:25", tls: verify }
 * (nexthop left out: mx). tls_set says the mapping chose its own outbound TLS policy; read the
 * policy in effect with config_route_tls().
 */
struct config_route {
	char domain[CONFIG_DOMAIN_LEN + 1]; /* lower case, no trailing dot; "*" = default */
	enum config_route_kind kind;
	char host[CONFIG_DOMAIN_LEN + 1];
	uint16_t port; /* 0: outbound.port */
	bool tls_set;
	enum config_outbound_tls tls; /* only when tls_set */
};

/* A certificate chosen by SNI (tls.sni): exact server name, lower case, no trailing dot. */
struct config_sni {
	char name[CONFIG_DOMAIN_LEN + 1];
	char certificate[CONFIG_PATH_LEN];
	char key[CONFIG_PATH_LEN];
};

struct config {
	char source[CONFIG_PATH_LEN]; /* file name, or "<default>" */
	bool builtin;                 /* the compiled-in default (no -c) */
	char hostname[CONFIG_DOMAIN_LEN + 1];
	unsigned workers; /* resolved: never 0 after config_load */
	char spool_dir[CONFIG_PATH_LEN];
	char user[64];
	char control_socket[108]; /* sun_path */

	enum config_log_level log_level;
	enum config_log_format log_format;

	bool metrics_enabled;
	struct config_sockaddr metrics_listen;

	struct config_listen listen[CONFIG_LISTEN_MAX];
	unsigned listen_count; /* >= 1; no `listen` key: 0.0.0.0:25 mx, tls may, auth off */

	/*
	 * The default certificate. In the built-in default (builtin) the two files may be
	 * missing: ringmx creates a self-signed pair at start (config_tls_missing()).
	 */
	char tls_certificate[CONFIG_PATH_LEN];
	char tls_key[CONFIG_PATH_LEN];
	struct config_sni *tls_sni; /* in file order; NULL when tls_sni_count is 0 */
	unsigned tls_sni_count;     /* <= CONFIG_SNI_MAX; needs tls.certificate */

	/* lower case, no trailing dot; sorted for bsearch */
	char (*relay_domains)[CONFIG_DOMAIN_LEN + 1];
	unsigned relay_domain_count;
	char recipient_map[CONFIG_PATH_LEN]; /* "" = none */
	struct config_network mynetworks[CONFIG_NETWORKS_MAX];
	unsigned mynetwork_count;
	char auth_passwd_file[CONFIG_PATH_LEN];

	struct config_route *routes; /* sorted by domain for bsearch; "*" always present */
	unsigned route_count;

	char dns_forward[CONFIG_FORWARD_MAX][64];
	unsigned dns_forward_count;
	char dns_trust_anchor_file[CONFIG_PATH_LEN];
	bool dns_dnssec;
	char dns_unbound_config[CONFIG_PATH_LEN];
	char dns_hosts_file[CONFIG_PATH_LEN];
	bool dns_prefer_ipv6; /* dns.prefer: ipv6 (default ipv4) */

	uint16_t outbound_port;
	enum config_outbound_tls outbound_tls;      /* routes may override: config_route_tls() */
	char outbound_tls_ca_file[CONFIG_PATH_LEN]; /* CA bundle for `verify` (not for DANE) */
	unsigned outbound_max_connections_per_destination;
	unsigned outbound_max_messages_per_connection;

	bool queue_sync; /* false: "none", benchmarks only */
	uint32_t queue_retry_s[CONFIG_RETRY_MAX];
	unsigned queue_retry_count;
	uint64_t queue_max_lifetime_s;
	uint64_t queue_memory_limit; /* bytes */
	uint64_t queue_segment_size; /* bytes: journal segment rotation size */

	uint64_t limits_max_message_size;
	unsigned limits_max_recipients;
	unsigned limits_max_connections;
	unsigned limits_max_connections_per_ip;
	uint64_t limits_command_timeout_ms;
	uint64_t limits_data_timeout_ms;
	unsigned limits_max_errors;
	unsigned limits_max_hops;
	enum config_bare_newline limits_bare_newline;
};

/*
 * A problem found while loading: "file:line:column: key: message". config_load
 * reports every problem it finds (up to CONFIG_ERRORS_MAX), not only the first.
 */
struct config_errors {
	char line[CONFIG_ERRORS_MAX][512];
	unsigned count;
	unsigned dropped; /* problems past CONFIG_ERRORS_MAX */
};

/*
 * Loads path, or the compiled-in default when path is NULL. Returns a config the
 * caller frees with config_free(), or NULL with errs filled (at least one line).
 * Checks only what can be checked without side effects: syntax, types, ranges,
 * addresses, CIDRs, that referenced files are readable. spool_dir is checked by
 * the server at start (config_check_spool).
 */
struct config *config_load(const char *path, struct config_errors *errs);
void config_free(struct config *cfg);

/* The compiled-in development default, as YAML (what `ringmx --default-config` prints). */
const char *config_default_yaml(void);

/* Creates spool_dir if missing and checks it is a writable directory; 0 or -errno. */
int config_check_spool(const struct config *cfg, char *err, size_t err_len);

/*
 * mkdir -p dir (mode 0750 for each missing component); 0 or -errno with err naming key,
 * the config key the directory is for ("spool_dir", "tls.certificate").
 */
int config_mkdir_parents(const char *key, const char *dir, char *err, size_t err_len);

/* The outbound TLS policy for mail on route: its own `tls`, else outbound.tls. */
enum config_outbound_tls config_route_tls(const struct config *cfg,
                                          const struct config_route *route);

/*
 * True when cfg is the built-in default and its tls.certificate or tls.key file does not
 * exist yet: ringmx creates a self-signed pair there at start. Always false with -c.
 */
bool config_tls_missing(const struct config *cfg);

/* Parses "1.2.3.4:25", "[::1]:25", "[1.2.3.4]:25"; 0 or -EINVAL. */
int config_parse_sockaddr(const char *text, struct config_sockaddr *out);

/* Parses "10.0.0.0/8", "::1/128" or a bare address (host prefix); 0 or -EINVAL. */
int config_parse_network(const char *text, struct config_network *out);

/* True when the address (AF_INET or AF_INET6 sockaddr) is inside net. */
bool config_network_contains(const struct config_network *net, const struct sockaddr *sa);

/* Parses durations "30s", "5m", "1h", "5d", "250ms" or bare seconds into ms; 0 or -EINVAL. */
int config_parse_duration_ms(const char *text, uint64_t *ms);

/* Parses sizes "1G", "512M", "64K" or bare bytes; 0 or -EINVAL. */
int config_parse_size(const char *text, uint64_t *bytes);

/* Lower-cases a domain and drops one trailing dot, in place. */
void config_domain_normalize(char *domain);

#endif
