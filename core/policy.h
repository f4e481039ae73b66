/*
 * policy.h -- who may send mail to whom: the relay decision. Never an open relay.
 *
 * A struct policy is built once from the config (relay_domains, mynetworks, the
 * recipient map file) and is immutable: every worker reads it without locks.
 * Reloading builds a new one.
 */
#ifndef RINGMX_CORE_POLICY_H
#define RINGMX_CORE_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

#include "core/address.h"
#include "core/config.h"

#define POLICY_MAP_ENTRIES_MAX (4u * 1024 * 1024) /* entry lines in recipient_map */
#define POLICY_MAP_LINE_MAX    1024 /* octets in one recipient_map line, newline excluded */

enum policy_verdict {
	POLICY_ACCEPT,            /* 250 2.1.5 */
	POLICY_RELAY_DENIED,      /* 554 5.7.1 relay access denied */
	POLICY_ROUTING_DENIED,    /* 554 5.7.1 sender-specified routing */
	POLICY_UNKNOWN_RECIPIENT, /* 550 5.1.1 not in recipient_map */
};

/* What the server knows about the client when RCPT arrives. */
struct policy_client {
	const struct sockaddr *addr; /* peer address */
	enum config_role role;
	bool trusted_network; /* set by policy_client_trusted() at connect */
	bool authenticated;   /* SMTP AUTH succeeded */
	bool allow_listed;    /* on the short-lived allow-list (ringmxctl allow-ip) */
};

struct policy;

/*
 * Builds the policy, copying what it needs from cfg, and loads cfg->recipient_map when
 * set: one "user@domain" or "@domain" per line, '#' comment lines and blank lines
 * ignored. Returns NULL with err filled ("recipient_map: FILE:LINE: problem") when the
 * file can't be read, a line is malformed or over POLICY_MAP_LINE_MAX, or there are
 * more than POLICY_MAP_ENTRIES_MAX entry lines.
 */
struct policy *policy_new(const struct config *cfg, char *err, size_t err_len);
void policy_free(struct policy *p);

/* True when addr is inside mynetworks. */
bool policy_client_trusted(const struct policy *p, const struct sockaddr *addr);

/* True when domain is one of relay_domains (case-insensitive, trailing dot ignored). */
bool policy_is_local_domain(const struct policy *p, const char *domain);

/*
 * The decision for one recipient (never the null path). <postmaster> is always taken;
 * a trusted client (mynetworks, AUTH, allow-list) may relay anywhere; anyone else may
 * only send to relay_domains, without sender-specified routing, and not on the
 * submission role. For relay_domains the recipient_map applies to every client, except
 * to postmaster@ (RFC 5321 §4.5.1).
 */
enum policy_verdict policy_check_rcpt(const struct policy *p, const struct policy_client *c,
                                      const struct address *rcpt);

/* The reply line (with code and enhanced code, no CRLF) for a verdict; a static string. */
const char *policy_verdict_reply(enum policy_verdict v);

#endif
