/*
 * dns: asynchronous, DNSSEC-validating MX, A/AAAA and TLSA resolution on one libunbound context.
 *
 * One struct dns per worker, resolving inside the worker's own loop: no thread, no process.
 * libunbound runs on a private epoll instance and timer list (libunbound's pluggable event
 * base), so the worker sees one descriptor and one timeout. Lookups never block: the worker
 * polls dns_fd() for POLLIN, arms a timer for dns_timeout_ms(), and calls dns_process() when
 * either fires. Callbacks run from inside dns_process(), never from dns_resolve_*().
 * Concurrent lookups of the same (name, type) share one libunbound query.
 */
#ifndef RINGMX_DNS_DNS_H
#define RINGMX_DNS_DNS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define DNS_NAME_MAX        253 /* text form, without the trailing dot */
#define DNS_MX_MAX          10  /* next hops kept, lowest preferences first */
#define DNS_ADDR_MAX        8   /* addresses kept per host, each family gets half if both exist */
#define DNS_TLSA_MAX        8   /* TLSA records kept */
#define DNS_TLSA_DATA_MAX   64  /* longer association data (full certificates) is skipped */
#define DNS_FORWARD_MAX     8   /* dns.forward entries */
#define DNS_REASON_MAX      384 /* "451 4.7.5 ..." with a full name; resolver detail truncated */
#define DNS_INFLIGHT_BITS   13
#define DNS_INFLIGHT_MAX    (1 << DNS_INFLIGHT_BITS) /* requests in flight per context */
#define DNS_EVENTS_PER_CALL 64

enum dns_error {
	DNS_EFULL = 1000, /* DNS_INFLIGHT_MAX requests already in flight */
	DNS_EUNBOUND,     /* libunbound refused the query */
};

/* Ordered from weakest: the security of a combined answer is the minimum of its parts. */
enum dns_security {
	DNS_BOGUS,
	DNS_INSECURE,
	DNS_SECURE,
};

enum dns_status {
	DNS_OK,
	DNS_TEMPFAIL, /* reason starts with a 4xx reply and enhanced code */
	DNS_PERMFAIL, /* reason starts with a 5xx reply and enhanced code */
};

struct dns_params {
	const char *const *forward; /* "addr[@port]"; none: /etc/resolv.conf */
	unsigned forward_count;     /* <= DNS_FORWARD_MAX */
	const char *trust_anchor_file;
	bool dnssec;                /* false: no validation, every answer is insecure */
	const char *unbound_config; /* NULL or "": none */
	const char *hosts_file;     /* NULL or "": none */
	bool ipv6_first;            /* address order within a host; IPv4 first by default */
};

struct dns_addr {
	int family; /* AF_INET (4 bytes used) or AF_INET6 */
	uint8_t bytes[16];
};

struct dns_host {
	char name[DNS_NAME_MAX + 1];
	uint16_t pref;
	enum dns_security security; /* weakest of its A and AAAA answers */
	unsigned addr_count;        /* 0: unusable (bogus, missing or failed); skip it */
	struct dns_addr addrs[DNS_ADDR_MAX];
};

struct dns_mx_result {
	enum dns_status status;        /* DNS_OK: at least one host has addresses */
	enum dns_security security;    /* weakest of every answer consulted */
	enum dns_security mx_security; /* of the MX answer alone (DANE needs it secure) */
	bool implicit;                 /* no MX: the domain itself is the only host */
	unsigned host_count;
	struct dns_host hosts[DNS_MX_MAX]; /* RFC 5321 order: preference, ties shuffled */
	char reason[DNS_REASON_MAX];       /* failure reason; empty on DNS_OK */
};

struct dns_tlsa {
	uint8_t usage;
	uint8_t selector;
	uint8_t mtype;
	uint8_t data_len;
	uint8_t data[DNS_TLSA_DATA_MAX];
};

struct dns_tlsa_result {
	enum dns_status status;
	enum dns_security security;
	unsigned count;   /* usable records: nonzero only for a secure answer */
	unsigned skipped; /* secure records not kept (over a limit) */
	struct dns_tlsa records[DNS_TLSA_MAX];
	char reason[DNS_REASON_MAX]; /* why count is 0, or the failure */
};

/* Results are valid only during the callback. */
typedef void (*dns_mx_cb)(void *arg, const struct dns_mx_result *r);
typedef void (*dns_tlsa_cb)(void *arg, const struct dns_tlsa_result *r);

struct dns;

/* Returns NULL with a message in err on bad configuration or resource failure. */
struct dns *dns_new(const struct dns_params *p, char *err, size_t err_len);
/* Pending callbacks are dropped; closes every descriptor the context opened. */
void dns_free(struct dns *d);

/* An epoll descriptor (close-on-exec): poll it for POLLIN, on readiness call dns_process(). */
int dns_fd(const struct dns *d);
/*
 * Milliseconds until dns_process() must run even if dns_fd() stays quiet (libunbound's next
 * timeout; 0 when work is already queued), or -1 for no deadline. Ask again after every
 * dns_process() and dns_resolve_*() call, and call dns_process() when the timer expires.
 */
int dns_timeout_ms(const struct dns *d);
/*
 * Runs due timeouts and ready descriptors, hands answers to requests and runs callbacks: at most
 * DNS_EVENTS_PER_CALL of each, so one call cannot stall the loop; dns_fd() stays readable or
 * dns_timeout_ms() returns 0 while more is waiting. Never blocks. Not from inside a callback.
 * Returns 0 or -errno (epoll_wait failed).
 */
int dns_process(struct dns *d);

/* Return a request id (> 0) for dns_cancel, -EINVAL for a bad name or -DNS_EFULL. */
int dns_resolve_mx(struct dns *d, const char *domain, dns_mx_cb cb, void *arg);
/*
 * The A and AAAA records of host alone, with no MX lookup: for a route "[host]:port" (RFC 5321:
 * a bracketed host is used as is). The result has one host (hosts[0].name is host, pref 0,
 * implicit set), ordered and limited as an MX host's; mx_security is DNS_SECURE (no MX answer
 * is involved), so hosts[0].security alone decides DANE. Failures: bogus 451 4.7.5,
 * SERVFAIL/timeout 451 4.4.3, NXDOMAIN or no address 550 5.1.2. -EINVAL also for an IPv4
 * literal (the caller connects to it without DNS).
 */
int dns_resolve_host(struct dns *d, const char *host, dns_mx_cb cb, void *arg);
int dns_resolve_tlsa(struct dns *d, const char *host, uint16_t port, dns_tlsa_cb cb, void *arg);
/* Its callback will not run. Ids of finished or cancelled requests are ignored. */
void dns_cancel(struct dns *d, int id);

unsigned dns_inflight(const struct dns *d);
const char *dns_security_name(enum dns_security s);
const char *dns_strerror(int err);

#endif
