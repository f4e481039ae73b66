/*
 * connlimit.h -- the server-wide connection limits: max_connections in all and
 * max_connections_per_ip.
 *
 * SO_REUSEPORT spreads one client's connections over every worker, so these
 * counts are the one piece of state the workers share. It is touched only when a
 * connection opens or closes, never on the data path, under one mutex. The outbound
 * side uses a second table the same way for max_connections_per_destination.
 */
#ifndef RINGMX_CORE_CONNLIMIT_H
#define RINGMX_CORE_CONNLIMIT_H

#include <stdbool.h>
#include <sys/socket.h>

enum connlimit_verdict {
	CONNLIMIT_OK,
	CONNLIMIT_TOTAL,  /* max_connections reached */
	CONNLIMIT_PER_IP, /* max_connections_per_ip reached for this address */
};

struct connlimit;

/* NULL on allocation failure. The table holds at most total_max addresses. */
struct connlimit *connlimit_new(unsigned total_max, unsigned per_ip_max);
void connlimit_free(struct connlimit *cl);

/* Counts a new connection from addr, unless a limit says no (then nothing is counted). */
enum connlimit_verdict connlimit_acquire(struct connlimit *cl, const struct sockaddr *addr);

/* Releases what connlimit_acquire counted for addr. */
void connlimit_release(struct connlimit *cl, const struct sockaddr *addr);

/*
 * The same for any name, such as an outbound destination ("[192.0.2.1]:25"): counted
 * under a 128-bit hash of it, so two names share a count only if their hashes collide.
 */
enum connlimit_verdict connlimit_acquire_name(struct connlimit *cl, const char *name);
void connlimit_release_name(struct connlimit *cl, const char *name);

#endif
