#include "dns/dnsevent.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <unbound-event.h>

#define DNSEVENT_HEAP_INITIAL 64
#define DNSEVENT_NONE         (-1)

static_assert(DNSEVENT_HEAP_INITIAL <= DNSEVENT_EVENTS_MAX, "the heap starts within its limit");

typedef void (*dnsevent_cb)(int, short, void *);

struct dnsevent {
	struct ub_event super; /* first: libunbound only sees this part */
	struct dnsevent_base *b;
	int fd;
	short bits; /* UB_EV_READ, UB_EV_WRITE, UB_EV_PERSIST, UB_EV_TIMEOUT */
	dnsevent_cb cb;
	void *arg;
	bool active;
	uint32_t epoll_mask; /* registered with epoll for these; 0: not registered */
	int heap_index;      /* in the timer heap, or DNSEVENT_NONE */
	int64_t interval_ms; /* persistent events re-arm their timeout with it */
	int64_t deadline_ms;
};

struct dnsevent_base {
	struct ub_event_base super; /* first: libunbound only sees this part */
	int epfd;
	unsigned events;
	unsigned heap_len;
	unsigned heap_cap;
	struct dnsevent **heap; /* min-heap on deadline_ms */
};

static int64_t
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t
tv_ms(const struct timeval *tv)
{
	/* Rounded up: a timeout never fires before libunbound asked. */
	return (int64_t)tv->tv_sec * 1000 + (tv->tv_usec + 999) / 1000;
}

static void
heap_set(struct dnsevent_base *b, unsigned i, struct dnsevent *ev)
{
	b->heap[i] = ev;
	ev->heap_index = (int)i;
}

static void
heap_up(struct dnsevent_base *b, unsigned i)
{
	struct dnsevent *ev = b->heap[i];

	while (i > 0 && b->heap[(i - 1) / 2]->deadline_ms > ev->deadline_ms) {
		heap_set(b, i, b->heap[(i - 1) / 2]);
		i = (i - 1) / 2;
	}
	heap_set(b, i, ev);
}

static void
heap_down(struct dnsevent_base *b, unsigned i)
{
	struct dnsevent *ev = b->heap[i];

	for (;;) {
		unsigned c = 2 * i + 1;
		if (c >= b->heap_len)
			break;
		if (c + 1 < b->heap_len && b->heap[c + 1]->deadline_ms < b->heap[c]->deadline_ms)
			c++;
		if (b->heap[c]->deadline_ms >= ev->deadline_ms)
			break;
		heap_set(b, i, b->heap[c]);
		i = c;
	}
	heap_set(b, i, ev);
}

static void
heap_remove(struct dnsevent_base *b, struct dnsevent *ev)
{
	unsigned i = (unsigned)ev->heap_index;
	struct dnsevent *last;

	assert(ev->heap_index != DNSEVENT_NONE);
	assert(b->heap[i] == ev);
	ev->heap_index = DNSEVENT_NONE;
	last = b->heap[--b->heap_len];
	if (last == ev)
		return;
	heap_set(b, i, last);
	heap_up(b, i);
	heap_down(b, (unsigned)last->heap_index);
}

/* Arms or moves ev's timeout; fails only when out of memory. */
static int
heap_arm(struct dnsevent_base *b, struct dnsevent *ev, int64_t deadline_ms)
{
	if (ev->heap_index != DNSEVENT_NONE)
		heap_remove(b, ev);
	if (b->heap_len == b->heap_cap) {
		/* Every event holds one slot at most, and there are at most DNSEVENT_EVENTS_MAX. */
		assert(b->heap_cap < DNSEVENT_EVENTS_MAX);
		unsigned cap =
		    b->heap_cap * 2 < DNSEVENT_EVENTS_MAX ? b->heap_cap * 2 : DNSEVENT_EVENTS_MAX;
		struct dnsevent **heap = realloc(b->heap, cap * sizeof(*heap));
		if (heap == NULL)
			return -ENOMEM;
		b->heap = heap;
		b->heap_cap = cap;
	}
	ev->deadline_ms = deadline_ms;
	heap_set(b, b->heap_len++, ev);
	heap_up(b, b->heap_len - 1);
	return 0;
}

static uint32_t
epoll_mask_of(const struct dnsevent *ev)
{
	uint32_t mask = 0;

	if (!ev->active || ev->fd < 0)
		return 0;
	if (ev->bits & UB_EV_READ)
		mask |= EPOLLIN;
	if (ev->bits & UB_EV_WRITE)
		mask |= EPOLLOUT;
	return mask;
}

/* Makes the epoll registration match the event's state. */
static int
epoll_sync(struct dnsevent *ev)
{
	uint32_t want = epoll_mask_of(ev);
	struct epoll_event e = {.events = want, .data.ptr = ev};
	int op, epfd = ev->b->epfd;

	if (want == ev->epoll_mask)
		return 0;
	if (want == 0) {
		/* ENOENT or EBADF: the descriptor was closed, which removed it already. */
		(void)epoll_ctl(epfd, EPOLL_CTL_DEL, ev->fd, NULL);
		ev->epoll_mask = 0;
		return 0;
	}
	op = ev->epoll_mask == 0 ? EPOLL_CTL_ADD : EPOLL_CTL_MOD;
	if (epoll_ctl(epfd, op, ev->fd, &e) != 0)
		return -errno;
	ev->epoll_mask = want;
	return 0;
}

static void
ev_deactivate(struct dnsevent *ev)
{
	ev->active = false;
	(void)epoll_sync(ev);
	if (ev->heap_index != DNSEVENT_NONE)
		heap_remove(ev->b, ev);
}

static struct dnsevent *
ev_of(struct ub_event *u)
{
	assert(u != NULL);
	assert(u->magic == UB_EVENT_MAGIC);
	return (struct dnsevent *)u;
}

static void
ev_set_fd(struct dnsevent *ev, int fd)
{
	/* libunbound's sockets are not close-on-exec; none must leak into anything exec'd. */
	if (fd >= 0)
		(void)fcntl(fd, F_SETFD, fcntl(fd, F_GETFD) | FD_CLOEXEC);
	ev->fd = fd;
}

static int
vmt_add(struct ub_event *u, struct timeval *tv)
{
	struct dnsevent *ev = ev_of(u);

	ev->active = true;
	if (epoll_sync(ev) != 0) {
		ev_deactivate(ev);
		return -1;
	}
	if (tv == NULL) {
		if (ev->heap_index != DNSEVENT_NONE)
			heap_remove(ev->b, ev);
		return 0;
	}
	ev->interval_ms = tv_ms(tv);
	if (heap_arm(ev->b, ev, now_ms() + ev->interval_ms) != 0) {
		ev_deactivate(ev);
		return -1;
	}
	return 0;
}

static int
vmt_del(struct ub_event *u)
{
	ev_deactivate(ev_of(u));
	return 0;
}

static void
vmt_add_bits(struct ub_event *u, short bits)
{
	struct dnsevent *ev = ev_of(u);

	ev->bits |= bits;
	(void)epoll_sync(ev);
}

static void
vmt_del_bits(struct ub_event *u, short bits)
{
	struct dnsevent *ev = ev_of(u);

	ev->bits &= (short)~bits;
	(void)epoll_sync(ev);
}

static void
vmt_set_fd(struct ub_event *u, int fd)
{
	struct dnsevent *ev = ev_of(u);
	bool active = ev->active;

	/* libunbound deactivates first; if not, move the registration to the new descriptor. */
	ev->active = false;
	(void)epoll_sync(ev);
	ev_set_fd(ev, fd);
	ev->active = active;
	(void)epoll_sync(ev);
}

static void
vmt_free(struct ub_event *u)
{
	struct dnsevent *ev = ev_of(u);

	ev_deactivate(ev);
	assert(ev->b->events > 0);
	ev->b->events--;
	free(ev);
}

static int
vmt_add_timer(struct ub_event *u, struct ub_event_base *base, dnsevent_cb cb, void *arg,
              struct timeval *tv)
{
	struct dnsevent *ev = ev_of(u);

	assert(base == &ev->b->super);
	ev_deactivate(ev);
	ev->fd = -1;
	ev->bits = UB_EV_TIMEOUT;
	ev->cb = cb;
	ev->arg = arg;
	return vmt_add(u, tv);
}

static int
vmt_signal_unsupported(struct ub_event *u, struct timeval *tv)
{
	return -1;
}

static int
vmt_del_signal_unsupported(struct ub_event *u)
{
	return -1;
}

static void
vmt_winsock_unregister(struct ub_event *u)
{
}

static void
vmt_winsock_wouldblock(struct ub_event *u, int bits)
{
}

static struct ub_event_vmt dnsevent_vmt = {
    .add_bits = vmt_add_bits,
    .del_bits = vmt_del_bits,
    .set_fd = vmt_set_fd,
    .free = vmt_free,
    .add = vmt_add,
    .del = vmt_del,
    .add_timer = vmt_add_timer,
    .del_timer = vmt_del,
    .add_signal = vmt_signal_unsupported,
    .del_signal = vmt_del_signal_unsupported,
    .winsock_unregister_wsaevent = vmt_winsock_unregister,
    .winsock_tcp_wouldblock = vmt_winsock_wouldblock,
};

static struct dnsevent_base *
base_of(struct ub_event_base *u)
{
	assert(u != NULL);
	assert(u->magic == UB_EVENT_MAGIC);
	return (struct dnsevent_base *)u;
}

static struct ub_event *
base_new_event(struct ub_event_base *u, int fd, short bits, dnsevent_cb cb, void *arg)
{
	struct dnsevent_base *b = base_of(u);
	struct dnsevent *ev;

	if (b->events == DNSEVENT_EVENTS_MAX)
		return NULL;
	ev = calloc(1, sizeof(*ev));
	if (ev == NULL)
		return NULL;
	ev->super.magic = UB_EVENT_MAGIC;
	ev->super.vmt = &dnsevent_vmt;
	ev->b = b;
	ev->bits = bits;
	ev->cb = cb;
	ev->arg = arg;
	ev->heap_index = DNSEVENT_NONE;
	ev_set_fd(ev, fd);
	b->events++;
	return &ev->super;
}

static struct ub_event *
base_new_signal(struct ub_event_base *u, int fd, dnsevent_cb cb, void *arg)
{
	return NULL;
}

static struct ub_event *
base_register_wsaevent(struct ub_event_base *u, void *wsaevent, dnsevent_cb cb, void *arg)
{
	return NULL;
}

/* libunbound never runs or frees a pluggable base: the owner drives and frees it. */
static int
base_dispatch_unsupported(struct ub_event_base *u)
{
	return -1;
}

static int
base_loopexit(struct ub_event_base *u, struct timeval *tv)
{
	return 0;
}

static void
base_free_unsupported(struct ub_event_base *u)
{
	assert(!"libunbound does not free a pluggable event base");
}

static struct ub_event_base_vmt dnsevent_base_vmt = {
    .free = base_free_unsupported,
    .dispatch = base_dispatch_unsupported,
    .loopexit = base_loopexit,
    .new_event = base_new_event,
    .new_signal = base_new_signal,
    .winsock_register_wsaevent = base_register_wsaevent,
};

int
dnsevent_base_new(struct dnsevent_base **out)
{
	struct dnsevent_base *b;

	assert(out != NULL);
	b = calloc(1, sizeof(*b));
	if (b == NULL)
		return -ENOMEM;
	b->heap = calloc(DNSEVENT_HEAP_INITIAL, sizeof(*b->heap));
	if (b->heap == NULL) {
		free(b);
		return -ENOMEM;
	}
	b->heap_cap = DNSEVENT_HEAP_INITIAL;
	b->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (b->epfd < 0) {
		int rc = -errno;
		free(b->heap);
		free(b);
		return rc;
	}
	b->super.magic = UB_EVENT_MAGIC;
	b->super.vmt = &dnsevent_base_vmt;
	*out = b;
	return 0;
}

void
dnsevent_base_free(struct dnsevent_base *b)
{
	if (b == NULL)
		return;
	close(b->epfd);
	free(b->heap);
	free(b);
}

struct ub_event_base *
dnsevent_base_ub(struct dnsevent_base *b)
{
	assert(b != NULL);
	return &b->super;
}

int
dnsevent_fd(const struct dnsevent_base *b)
{
	assert(b != NULL);
	return b->epfd;
}

int
dnsevent_timeout_ms(const struct dnsevent_base *b)
{
	assert(b != NULL);
	if (b->heap_len == 0)
		return -1;
	int64_t left = b->heap[0]->deadline_ms - now_ms();
	if (left < 0)
		return 0;
	return left > INT32_MAX ? INT32_MAX : (int)left;
}

static void
fire_timeout(struct dnsevent_base *b, int64_t now)
{
	struct dnsevent *ev = b->heap[0];

	/* Like libevent: a persistent descriptor event stays armed, its timeout restarts. */
	if ((ev->bits & UB_EV_PERSIST) && ev->fd >= 0)
		(void)heap_arm(b, ev, now + ev->interval_ms); /* moves its own slot: cannot fail */
	else
		ev_deactivate(ev);
	ev->cb(ev->fd, UB_EV_TIMEOUT, ev->arg);
}

static void
fire_ready(struct dnsevent *ev, uint32_t ready)
{
	short what = 0;

	/* Errors and hangups are reported as readiness: the read or write then sees them. */
	if (ready & (EPOLLIN | EPOLLERR | EPOLLHUP))
		what |= ev->bits & UB_EV_READ;
	if (ready & (EPOLLOUT | EPOLLERR | EPOLLHUP))
		what |= ev->bits & UB_EV_WRITE;
	if (!(ev->bits & UB_EV_PERSIST))
		ev_deactivate(ev);
	else if (ev->heap_index != DNSEVENT_NONE)
		(void)heap_arm(ev->b, ev, now_ms() + ev->interval_ms);
	ev->cb(ev->fd, what, ev->arg);
}

int
dnsevent_run(struct dnsevent_base *b, unsigned budget)
{
	unsigned n = 0;
	int64_t now = now_ms();

	assert(b != NULL);
	while (n < budget && b->heap_len > 0 && b->heap[0]->deadline_ms <= now) {
		fire_timeout(b, now);
		n++;
	}
	while (n < budget) {
		struct epoll_event e;
		int rc = epoll_wait(b->epfd, &e, 1, 0);
		if (rc < 0 && errno == EINTR)
			continue;
		if (rc < 0)
			return -errno;
		if (rc == 0)
			break;
		fire_ready(e.data.ptr, e.events);
		n++;
	}
	return (int)n;
}

unsigned
dnsevent_events(const struct dnsevent_base *b)
{
	assert(b != NULL);
	return b->events;
}

unsigned
dnsevent_timers(const struct dnsevent_base *b)
{
	assert(b != NULL);
	return b->heap_len;
}
