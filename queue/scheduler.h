/*
 * scheduler.h -- one worker's delivery schedule: when each queued message is due
 * again, and the per-destination queues that outbound connections take work from.
 *
 * A destination is a next hop: a route's host ("[10.0.0.5]:25") or a domain's MX
 * set ("mx:example.org:25"). Recipients of one message that share a destination
 * travel as one job, so they go in one transaction. Pure: no I/O, and times are
 * passed in by the caller.
 */
#ifndef RINGMX_QUEUE_SCHEDULER_H
#define RINGMX_QUEUE_SCHEDULER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/config.h"

#define SCHED_DEST_MAX    65536               /* destinations known at once per worker */
#define SCHED_WAKE_MAX    (16u * 1024 * 1024) /* pending wake-ups per worker */
#define SCHED_KEY_MAX     (CONFIG_DOMAIN_LEN + 16)
#define SCHED_DOWN_MIN_MS 5000   /* a destination that failed waits this long first, */
#define SCHED_DOWN_MAX_MS 300000 /* doubling per failure up to this */
#define SCHED_REASON_MAX  256    /* why a destination is down, as a reply line */

/* Where a recipient domain's mail goes, from the config's routes. */
struct sched_route {
	enum config_route_kind kind;
	char host[CONFIG_DOMAIN_LEN + 1]; /* CONFIG_ROUTE_MX: the recipient domain */
	uint16_t port;
	enum config_outbound_tls tls; /* outbound.tls, or the route's own */
	char key[SCHED_KEY_MAX];
};

/* Recipients of one message bound for one destination. */
struct sched_job {
	struct sched_job *next;
	uint64_t id;
	unsigned rcpt_count;
	unsigned rcpt[]; /* indexes into the message's recipients */
};

struct sched_dest {
	struct sched_route route;
	struct sched_job *head, *tail;
	unsigned jobs;
	unsigned active;   /* open connections, kept by the caller */
	unsigned opening;  /* of those, not yet ready for a job (the caller's) */
	void *idle;        /* the caller's list of idle connections */
	unsigned failures; /* in a row */
	uint64_t down_until_ms;
	char down_reason[SCHED_REASON_MAX];
	bool runnable; /* on the runnable list */
	struct sched_dest *next_runnable;
	struct sched_dest *hash_next;
};

struct sched;

struct sched *sched_new(void);
void sched_free(struct sched *s);

/*
 * The route for a recipient domain: the longest matching routes entry (the domain
 * itself, then each parent domain), else "*". A route without a port, and every MX
 * route, uses outbound.port.
 */
void sched_route_for(const struct config *cfg, const char *domain, struct sched_route *out);

/* Asks to be told (sched_due) about message id at at_ms. -ENOSPC past SCHED_WAKE_MAX. */
int sched_wake(struct sched *s, uint64_t id, uint64_t at_ms);

/* Pops up to max ids due at now_ms (an id may come more than once: check it is still due). */
size_t sched_due(struct sched *s, uint64_t now_ms, uint64_t *ids, size_t max);

/* The earliest pending wake-up, or UINT64_MAX. */
uint64_t sched_next_wake(const struct sched *s);

/* Finds or creates the destination of route; NULL past SCHED_DEST_MAX or without memory. */
struct sched_dest *sched_dest(struct sched *s, const struct sched_route *route);

/* Appends a job; puts the destination on the runnable list. -ENOMEM. */
int sched_job_add(struct sched *s, struct sched_dest *d, uint64_t id, const unsigned *rcpt,
                  unsigned rcpt_count);

/* Takes the oldest job (NULL if none); the caller frees it with free(). */
struct sched_job *sched_job_take(struct sched_dest *d);

/* Takes the next runnable destination off the list (NULL if none). */
struct sched_dest *sched_runnable_take(struct sched *s);

/* Puts d back on the runnable list (it has jobs and may get a connection later). */
void sched_runnable_put(struct sched *s, struct sched_dest *d);

/*
 * Connection outcomes: a failure marks the destination down, with a growing back-off;
 * reason (a 4xx reply line) is what its queued recipients are deferred with meanwhile.
 */
void sched_dest_failed(struct sched_dest *d, uint64_t now_ms, const char *reason);
void sched_dest_ok(struct sched_dest *d);
bool sched_dest_down(const struct sched_dest *d, uint64_t now_ms);

/* Every destination may be tried again now (ringmxctl flush). */
void sched_dest_revive_all(struct sched *s);

#endif
