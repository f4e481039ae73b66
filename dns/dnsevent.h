/*
 * dnsevent: a libunbound pluggable event base (unbound-event.h) on a private epoll instance and
 * a timer heap, so that libunbound resolves inside the caller's loop: no thread, no process.
 *
 * The owner polls dnsevent_fd() (the epoll fd) for POLLIN, arms a timer for
 * dnsevent_timeout_ms(), and calls dnsevent_run() on either. libunbound's callbacks run only
 * from inside dnsevent_run(). Every descriptor libunbound hands over is made close-on-exec.
 * Signal events are not supported: libunbound does not use them in this mode.
 */
#ifndef RINGMX_DNS_DNSEVENT_H
#define RINGMX_DNS_DNSEVENT_H

#include <stdint.h>

/*
 * Live ub_events (about one per upstream query in flight): new_event fails beyond it. Each
 * event holds at most one timeout, so the timer heap, grown on demand, never exceeds it.
 */
#define DNSEVENT_EVENTS_MAX (1 << 16)

struct dnsevent_base;
struct ub_event_base;

/* Returns 0 or -errno. */
int dnsevent_base_new(struct dnsevent_base **out);
/* The events libunbound created must be freed first (ub_ctx_delete does it). */
void dnsevent_base_free(struct dnsevent_base *b);
/* The object to give ub_ctx_create_ub_event(). */
struct ub_event_base *dnsevent_base_ub(struct dnsevent_base *b);

int dnsevent_fd(const struct dnsevent_base *b);
/* Milliseconds until the earliest timeout is due (0: overdue), or -1 if none is armed. */
int dnsevent_timeout_ms(const struct dnsevent_base *b);
/*
 * Fires due timeouts first, then ready descriptors, at most budget callbacks in all (one
 * epoll_wait per descriptor, so a callback can free any other event safely). Returns the number
 * of callbacks run, or -errno if epoll_wait failed.
 */
int dnsevent_run(struct dnsevent_base *b, unsigned budget);

/* Live events and armed timeouts, for tests and limits. */
unsigned dnsevent_events(const struct dnsevent_base *b);
unsigned dnsevent_timers(const struct dnsevent_base *b);

#endif
