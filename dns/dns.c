#include "dns/dns.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>

#include <unbound-event.h>
#include <unbound.h>

#include "dns/dnsevent.h"
#include "dns/dnswire.h"

#define DNS_HASH_BUCKETS 4096
#define DNS_WAIT_MAX     (1 + 2 * DNS_MX_MAX) /* the first query, then A and AAAA per host */
#define DNS_GEN_MASK     ((1u << (30 - DNS_INFLIGHT_BITS)) - 1)
/*
 * Queries inside libunbound at once; the rest wait in our queue. One answer (a DNSKEY many
 * queries wait for) wakes every query waiting on it inside a single libunbound callback, and
 * each then validates on its own: this bounds that work. libunbound itself sends at most
 * outgoing-range (16) UDP queries at once, so the window costs no concurrency upstream.
 */
#define DNS_SUBMIT_MAX 64

static_assert((DNS_HASH_BUCKETS & (DNS_HASH_BUCKETS - 1)) == 0, "hash mask needs a power of two");
static_assert(DNS_INFLIGHT_BITS <= 16, "free slots are stored as uint16_t");
static_assert(DNS_ADDR_MAX >= 2, "each family needs a slot");
static_assert(DNS_TLSA_DATA_MAX <= UINT8_MAX, "data_len is a uint8_t");
static_assert(DNS_NAME_MAX == DNSWIRE_TEXT_MAX, "names are copied between both");

/* The sec argument of a ub_resolve_event callback. */
enum { UB_SEC_INSECURE = 0, UB_SEC_BOGUS = 1, UB_SEC_SECURE = 2 };

enum dns_kind {
	DNS_KIND_MX,
	DNS_KIND_HOST, /* an MX result for one named host: its A and AAAA, no MX query */
	DNS_KIND_TLSA,
};

enum dns_outcome {
	OUT_DATA,
	OUT_NODATA,
	OUT_NXDOMAIN,
	OUT_FAIL,
	OUT_BOGUS,
};

struct dns_answer {
	enum dns_outcome outcome;
	enum dns_security security;
	const struct dnswire_msg *msg; /* for OUT_DATA */
	const char *why;               /* for OUT_FAIL and OUT_BOGUS */
};

/*
 * One libunbound query, shared by every request waiting for the same (name, type). It waits in
 * the submit queue for room in the DNS_SUBMIT_MAX window, runs in libunbound, then its answer
 * is copied into the answered queue and handed to the waiters outside libunbound's callback:
 * the packet lives in a buffer libunbound reuses for the next query, which a waiter may start.
 */
struct dns_query {
	struct dns_query *next;       /* hash chain */
	struct dns_query *queue_next; /* submit or answered queue */
	struct dns_wait *waits;
	struct dns *d;
	int async_id;
	bool submitted;
	bool answered;
	uint16_t type;
	int ub_err;   /* ub_resolve_event refused it */
	int rcode;    /* of the callback: nonzero when there is no usable packet */
	int sec;      /* UB_SEC_* */
	uint8_t *pkt; /* copy of the answer, NULL when rcode != 0 or out of memory */
	size_t pkt_len;
	char why[DNS_REASON_MAX]; /* why_bogus, truncated */
	char name[DNS_NAME_MAX + 1];
};

struct dns_fifo {
	struct dns_query *head;
	struct dns_query **tail;
};

struct dns_wait {
	struct dns_wait *next;
	struct dns_query *query; /* NULL when not waiting */
	struct dns_req *req;
	unsigned index; /* 0: the request's first query; then 1 + 2 * host + family */
};

/* Addresses of one MX host per family (0: A, 1: AAAA) until both answers are in. */
struct dns_mx_stage {
	struct dns_addr addrs[2][DNS_ADDR_MAX];
	unsigned count[2];
	enum dns_security security;
};

struct dns_req {
	struct dns *d;
	struct dns_req *done_next; /* done queue */
	enum dns_kind kind;
	int id;
	bool done;
	bool cancelled;
	unsigned pending;
	dns_mx_cb mx_cb;
	dns_tlsa_cb tlsa_cb;
	void *arg;
	char name[DNS_NAME_MAX + 1];
	char bogus_why[DNS_REASON_MAX]; /* first bogus host answer */
	char temp_why[DNS_REASON_MAX];  /* first failed host lookup */
	struct dns_wait waits[DNS_WAIT_MAX];
	struct dns_mx_stage stage[DNS_MX_MAX];
	union {
		struct dns_mx_result mx;
		struct dns_tlsa_result tlsa;
	} res;
};

struct dns {
	struct ub_ctx *ub;
	struct dnsevent_base *ev;
	bool ipv6_first;
	bool busy; /* inside dns_process: no reentry, no dns_free */
	uint64_t rng;
	unsigned free_count;
	unsigned submitted;        /* queries inside libunbound, <= DNS_SUBMIT_MAX */
	struct dns_fifo to_submit; /* waiting for room in the window */
	struct dns_fifo answered;  /* answer copied, waiters not told yet */
	struct dns_req *done;      /* finished, callback not yet run (FIFO) */
	struct dns_req **done_tail;
	struct dns_query *buckets[DNS_HASH_BUCKETS];
	struct dns_req *slots[DNS_INFLIGHT_MAX];
	uint32_t gen[DNS_INFLIGHT_MAX];
	uint16_t free_slots[DNS_INFLIGHT_MAX];
};

static enum dns_security
security_min(enum dns_security a, enum dns_security b)
{
	return a < b ? a : b;
}

static uint32_t
rng_next(struct dns *d)
{
	/* splitmix64: enough to shuffle equal MX preferences unpredictably per context */
	uint64_t z = (d->rng += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return (uint32_t)((z ^ (z >> 31)) >> 32);
}

__attribute__((format(printf, 3, 4))) static void
set_reason(enum dns_status *status, char reason[DNS_REASON_MAX], const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(reason, DNS_REASON_MAX, fmt, ap);
	va_end(ap);
	assert(reason[0] == '4' || reason[0] == '5');
	*status = reason[0] == '4' ? DNS_TEMPFAIL : DNS_PERMFAIL;
}

static char
lower(unsigned char c)
{
	return (char)(c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c);
}

/* Copies a text name lowercased without its trailing dot; refuses anything but LDH labels. */
static int
name_normalize(const char *in, char out[DNS_NAME_MAX + 1])
{
	size_t len = strlen(in), label = 0;

	if (len > 0 && in[len - 1] == '.')
		len--;
	if (len == 0 || len > DNS_NAME_MAX)
		return -EINVAL;
	for (size_t i = 0; i < len; i++) {
		if (in[i] == '.') {
			if (label == 0)
				return -EINVAL;
			label = 0;
		} else if (!dnswire_char_ok((uint8_t)in[i]) || ++label > DNSWIRE_LABEL_MAX) {
			return -EINVAL;
		}
		out[i] = lower((unsigned char)in[i]);
	}
	out[len] = '\0';
	return label == 0 ? -EINVAL : 0;
}

static uint32_t
query_hash(const char *name, uint16_t type)
{
	uint32_t h = 2166136261u ^ type;

	for (; *name; name++)
		h = (h ^ (unsigned char)*name) * 16777619u;
	return h & (DNS_HASH_BUCKETS - 1);
}

static void
query_unlink(struct dns *d, struct dns_query *q)
{
	struct dns_query **pp = &d->buckets[query_hash(q->name, q->type)];

	while (*pp != q)
		pp = &(*pp)->next;
	*pp = q->next;
}

static void req_on_answer(struct dns_req *r, unsigned index, const struct dns_answer *a);
static void req_finish(struct dns_req *r);

static void
fifo_init(struct dns_fifo *f)
{
	f->head = NULL;
	f->tail = &f->head;
}

static void
fifo_push(struct dns_fifo *f, struct dns_query *q)
{
	q->queue_next = NULL;
	*f->tail = q;
	f->tail = &q->queue_next;
}

static struct dns_query *
fifo_pop(struct dns_fifo *f)
{
	struct dns_query *q = f->head;

	if (q != NULL && (f->head = q->queue_next) == NULL)
		f->tail = &f->head;
	return q;
}

static const char *
rcode_why(int rcode)
{
	switch (rcode) {
	case DNSWIRE_RCODE_SERVFAIL:
		return "SERVFAIL or timeout";
	case DNSWIRE_RCODE_REFUSED:
		return "REFUSED";
	default:
		return "error rcode";
	}
}

/* Reads the security from the callback's arguments, the rest from the packet's header. */
static void
answer_classify(const struct dns_query *q, struct dnswire_msg *msg, struct dns_answer *a)
{
	*a = (struct dns_answer){.msg = msg, .why = "", .security = DNS_INSECURE};
	if (q->sec == UB_SEC_BOGUS) {
		a->outcome = OUT_BOGUS;
		a->security = DNS_BOGUS;
		a->why = q->why[0] != '\0' ? q->why : "no reason given";
		return;
	}
	if (q->sec == UB_SEC_SECURE)
		a->security = DNS_SECURE;
	a->outcome = OUT_FAIL;
	if (q->ub_err != 0)
		a->why = ub_strerror(q->ub_err);
	else if (q->rcode == DNSWIRE_RCODE_NXDOMAIN)
		a->outcome = OUT_NXDOMAIN;
	else if (q->rcode != 0)
		a->why = rcode_why(q->rcode);
	else if (q->pkt == NULL)
		a->why = "out of memory for the answer";
	else if (dnswire_parse(msg, q->pkt, q->pkt_len) != 0 || msg->qtype != q->type ||
	         strcmp(msg->qname, q->name) != 0)
		a->why = "malformed answer";
	else if (msg->rcode == DNSWIRE_RCODE_NXDOMAIN)
		a->outcome = OUT_NXDOMAIN;
	else if (msg->rcode != 0)
		a->why = rcode_why(msg->rcode);
	else
		a->outcome = msg->count > 0 ? OUT_DATA : OUT_NODATA;
}

/*
 * libunbound callback, from inside dnsevent_run or (cache, local data) ub_resolve_event: only
 * copies the answer and queues the query, so nothing re-enters libunbound from here.
 */
static void
query_done(void *arg, int rcode, void *pkt, int pkt_len, int sec, char *why_bogus,
           int was_ratelimited)
{
	struct dns_query *q = arg;
	struct dns *d = q->d;

	assert(q->submitted);
	assert(!q->answered);
	assert(d->submitted > 0);
	d->submitted--;
	q->answered = true;
	q->rcode = rcode;
	q->sec = sec;
	if (why_bogus != NULL)
		snprintf(q->why, sizeof(q->why), "%s", why_bogus);
	if (rcode == 0 && pkt != NULL && pkt_len > 0 &&
	    (q->pkt = malloc((size_t)pkt_len)) != NULL) {
		memcpy(q->pkt, pkt, (size_t)pkt_len);
		q->pkt_len = (size_t)pkt_len;
	}
	fifo_push(&d->answered, q);
}

static void
query_free(struct dns_query *q)
{
	free(q->pkt);
	free(q);
}

/*
 * Starts up to budget queued queries while the window has room; one refused is answered as a
 * failure. Cached answers complete at once and leave the window open, so only the budget bounds
 * how much libunbound work one call does.
 */
static void
query_submit_queued(struct dns *d, unsigned budget)
{
	struct dns_query *q;

	while (budget > 0 && d->submitted < DNS_SUBMIT_MAX &&
	       (q = fifo_pop(&d->to_submit)) != NULL) {
		if (q->waits == NULL) {
			/* Every request left before it started. */
			query_unlink(d, q);
			query_free(q);
			continue;
		}
		budget--;
		q->submitted = true;
		d->submitted++;
		/* A cached answer calls query_done before this returns. */
		int rc = ub_resolve_event(d->ub, q->name, q->type, DNSWIRE_CLASS_IN, q, query_done,
		                          &q->async_id);
		if (rc != 0) {
			assert(!q->answered);
			query_done(q, 0, NULL, 0, UB_SEC_INSECURE, NULL, 0);
			q->ub_err = rc;
		}
	}
}

/* Hands the oldest answered query's answer to every request waiting for it. */
static void
query_deliver(struct dns *d)
{
	struct dns_query *q = fifo_pop(&d->answered);
	struct dnswire_msg msg;
	struct dns_answer a;
	struct dns_wait *w, *next;

	/* Unlinked first, so requests asking again while handling the answer get a new query. */
	query_unlink(d, q);
	answer_classify(q, &msg, &a);
	for (w = q->waits; w != NULL; w = next) {
		struct dns_req *r = w->req;
		next = w->next;
		w->next = NULL;
		w->query = NULL;
		assert(r->pending > 0);
		r->pending--;
		req_on_answer(r, w->index, &a);
		if (r->pending == 0)
			req_finish(r);
	}
	query_free(q);
}

/* Makes wait index of r wait for (name, type), joining a query already in flight. */
static int
query_wait(struct dns_req *r, unsigned index, const char *name, uint16_t type)
{
	struct dns *d = r->d;
	struct dns_wait *w = &r->waits[index];
	uint32_t h = query_hash(name, type);
	struct dns_query *q;

	assert(index < DNS_WAIT_MAX);
	assert(w->query == NULL);
	for (q = d->buckets[h]; q != NULL; q = q->next)
		if (q->type == type && strcmp(q->name, name) == 0)
			break;
	if (q == NULL) {
		q = calloc(1, sizeof(*q));
		if (q == NULL)
			return -ENOMEM;
		q->d = d;
		q->type = type;
		strcpy(q->name, name);
		q->next = d->buckets[h];
		d->buckets[h] = q;
		fifo_push(&d->to_submit, q);
	}
	w->req = r;
	w->index = index;
	w->query = q;
	w->next = q->waits;
	q->waits = w;
	r->pending++;
	/* One query started per query asked for: the queue drains in dns_process. */
	query_submit_queued(d, 1);
	return 0;
}

/*
 * Stops r waiting. The last waiter of a query inside libunbound cancels it there; a queued or
 * answered query stays in its queue, which frees it.
 */
static void
query_leave(struct dns_wait *w)
{
	struct dns_query *q = w->query;
	struct dns_wait **pp = &q->waits;

	while (*pp != w)
		pp = &(*pp)->next;
	*pp = w->next;
	w->query = NULL;
	w->next = NULL;
	w->req->pending--;
	if (q->waits == NULL && q->submitted && !q->answered) {
		query_unlink(q->d, q);
		(void)ub_cancel(q->d->ub, q->async_id);
		assert(q->d->submitted > 0);
		q->d->submitted--;
		free(q);
	}
}

static int
req_new(struct dns *d, enum dns_kind kind, const char *name, void *arg, struct dns_req **out)
{
	struct dns_req *r;
	unsigned slot;

	if (d->free_count == 0)
		return -DNS_EFULL;
	r = calloc(1, sizeof(*r));
	if (r == NULL)
		return -ENOMEM;
	slot = d->free_slots[--d->free_count];
	assert(d->slots[slot] == NULL);
	d->slots[slot] = r;
	r->d = d;
	r->kind = kind;
	r->arg = arg;
	strcpy(r->name, name);
	r->id = (int)(((d->gen[slot] & DNS_GEN_MASK) << DNS_INFLIGHT_BITS) | slot) + 1;
	*out = r;
	return 0;
}

static void
req_free(struct dns_req *r)
{
	struct dns *d = r->d;
	unsigned slot = (unsigned)(r->id - 1) & (DNS_INFLIGHT_MAX - 1);

	assert(d->slots[slot] == r);
	for (unsigned i = 0; i < DNS_WAIT_MAX; i++)
		if (r->waits[i].query != NULL)
			query_leave(&r->waits[i]);
	assert(r->pending == 0);
	d->slots[slot] = NULL;
	d->gen[slot]++;
	d->free_slots[d->free_count++] = (uint16_t)slot;
	free(r);
}

/* Records the first failure of each kind among the MX hosts, for when no host is usable. */
__attribute__((format(printf, 2, 3))) static void
mx_note(char why[DNS_REASON_MAX], const char *fmt, ...)
{
	va_list ap;

	if (why[0] != '\0')
		return;
	va_start(ap, fmt);
	vsnprintf(why, DNS_REASON_MAX, fmt, ap);
	va_end(ap);
}

/* Keeps the DNS_MX_MAX best records by (preference, random key): ties end up shuffled. */
static void
mx_insert(struct dns_mx_result *m, uint32_t keys[DNS_MX_MAX], uint16_t pref, uint32_t key,
          const char *name)
{
	unsigned pos = m->host_count;

	while (pos > 0 && (m->hosts[pos - 1].pref > pref ||
	                   (m->hosts[pos - 1].pref == pref && keys[pos - 1] > key)))
		pos--;
	if (pos == DNS_MX_MAX)
		return;
	if (m->host_count < DNS_MX_MAX)
		m->host_count++;
	for (unsigned i = m->host_count - 1; i > pos; i--) {
		m->hosts[i] = m->hosts[i - 1];
		keys[i] = keys[i - 1];
	}
	memset(&m->hosts[pos], 0, sizeof(m->hosts[pos]));
	m->hosts[pos].pref = pref;
	strcpy(m->hosts[pos].name, name);
	keys[pos] = key;
}

/* Returns 0, 1 for a null MX (RFC 7505), or -EBADMSG for malformed rdata. */
static int
mx_parse(struct dns_req *r, const struct dnswire_msg *msg)
{
	struct dns_mx_result *m = &r->res.mx;
	uint32_t keys[DNS_MX_MAX];
	char name[DNS_NAME_MAX + 1];
	unsigned nulls = 0;
	struct dnswire_rr rr;
	size_t pos = 0;
	uint16_t pref;
	int rc;

	while ((rc = dnswire_next(msg, &pos, &rr)) == 1) {
		if (dnswire_mx(msg, &rr, &pref, name) != 0)
			return -EBADMSG;
		if (name[0] == '\0') {
			/* "." among real hosts is a misconfiguration: skip it, use the rest. */
			nulls++;
			continue;
		}
		mx_insert(m, keys, pref, rng_next(r->d), name);
	}
	if (rc < 0)
		return -EBADMSG;
	return nulls > 0 && m->host_count == 0 ? 1 : 0;
}

static void
mx_query_hosts(struct dns_req *r)
{
	struct dns_mx_result *m = &r->res.mx;

	for (unsigned i = 0; i < m->host_count; i++) {
		r->stage[i].security = DNS_SECURE;
		for (unsigned fam = 0; fam < 2; fam++) {
			int rc = query_wait(r, 1 + 2 * i + fam, m->hosts[i].name,
			                    fam == 0 ? DNSWIRE_A : DNSWIRE_AAAA);
			if (rc != 0)
				mx_note(r->temp_why, "451 4.4.3 lookup of %s not started: %s",
				        m->hosts[i].name, dns_strerror(rc));
		}
	}
}

/* The name itself is the only host: it has no MX (RFC 5321 5.1), or the route names a host. */
static void
mx_single_host(struct dns_req *r)
{
	struct dns_mx_result *m = &r->res.mx;

	m->implicit = true;
	m->host_count = 1;
	strcpy(m->hosts[0].name, r->name);
	mx_query_hosts(r);
}

static void
mx_on_mx(struct dns_req *r, const struct dns_answer *a)
{
	struct dns_mx_result *m = &r->res.mx;
	int rc;

	assert(r->kind == DNS_KIND_MX);
	m->mx_security = a->security;
	m->security = a->security;
	switch (a->outcome) {
	case OUT_BOGUS:
		set_reason(&m->status, m->reason, "451 4.7.5 DNSSEC validation of %s MX failed: %s",
		           r->name, a->why);
		return;
	case OUT_FAIL:
		set_reason(&m->status, m->reason, "451 4.4.3 MX lookup of %s failed: %s", r->name,
		           a->why);
		return;
	case OUT_NXDOMAIN:
		set_reason(&m->status, m->reason, "550 5.1.2 domain %s does not exist", r->name);
		return;
	case OUT_NODATA:
		mx_single_host(r);
		return;
	case OUT_DATA:
		rc = mx_parse(r, a->msg);
		if (rc < 0) {
			set_reason(&m->status, m->reason, "451 4.4.3 malformed MX answer for %s",
			           r->name);
			return;
		}
		if (rc == 1) {
			set_reason(&m->status, m->reason,
			           "556 5.1.10 domain %s accepts no mail (null MX)", r->name);
			return;
		}
		break;
	}
	mx_query_hosts(r);
}

static void
mx_on_addr(struct dns_req *r, unsigned host, unsigned fam, const struct dns_answer *a)
{
	struct dns_mx_stage *s = &r->stage[host];
	const char *name = r->res.mx.hosts[host].name;
	size_t want = fam == 0 ? 4 : 16, pos = 0;
	struct dnswire_rr rr;
	int rc;

	s->security = security_min(s->security, a->security);
	if (a->outcome == OUT_BOGUS)
		mx_note(r->bogus_why, "451 4.7.5 DNSSEC validation of %s failed: %s", name, a->why);
	if (a->outcome == OUT_FAIL)
		mx_note(r->temp_why, "451 4.4.3 address lookup of %s failed: %s", name, a->why);
	if (a->outcome != OUT_DATA)
		return;
	while ((rc = dnswire_next(a->msg, &pos, &rr)) == 1 && rr.rdlen == want) {
		if (s->count[fam] == DNS_ADDR_MAX)
			continue;
		struct dns_addr *addr = &s->addrs[fam][s->count[fam]++];
		addr->family = fam == 0 ? AF_INET : AF_INET6;
		memcpy(addr->bytes, a->msg->pkt + rr.rdata_off, want);
	}
	if (rc != 0) {
		mx_note(r->temp_why, "451 4.4.3 malformed address answer for %s", name);
		s->count[fam] = 0;
	}
}

/* Preferred family first; when both exist each keeps at least half of DNS_ADDR_MAX. */
static void
mx_merge_addrs(const struct dns_mx_stage *s, struct dns_host *h, bool ipv6_first)
{
	unsigned first = ipv6_first ? 1 : 0, second = 1 - first;
	unsigned half = DNS_ADDR_MAX / 2;
	unsigned second_min = s->count[second] < half ? s->count[second] : half;
	unsigned n_first = s->count[first];

	if (n_first > DNS_ADDR_MAX - second_min)
		n_first = DNS_ADDR_MAX - second_min;
	unsigned n_second = s->count[second];
	if (n_second > DNS_ADDR_MAX - n_first)
		n_second = DNS_ADDR_MAX - n_first;
	memcpy(h->addrs, s->addrs[first], n_first * sizeof(h->addrs[0]));
	memcpy(h->addrs + n_first, s->addrs[second], n_second * sizeof(h->addrs[0]));
	h->addr_count = n_first + n_second;
	assert(h->addr_count <= DNS_ADDR_MAX);
}

static void
mx_finish(struct dns_req *r)
{
	struct dns_mx_result *m = &r->res.mx;
	unsigned usable = 0;

	if (m->status != DNS_OK)
		return;
	for (unsigned i = 0; i < m->host_count; i++) {
		struct dns_host *h = &m->hosts[i];
		h->security = r->stage[i].security;
		m->security = security_min(m->security, h->security);
		/* A bogus host is never a next hop, even if one family validated. */
		if (h->security != DNS_BOGUS)
			mx_merge_addrs(&r->stage[i], h, r->d->ipv6_first);
		usable += h->addr_count > 0;
	}
	if (usable > 0)
		return;
	if (r->bogus_why[0] != '\0')
		set_reason(&m->status, m->reason, "%s", r->bogus_why);
	else if (r->temp_why[0] != '\0')
		set_reason(&m->status, m->reason, "%s", r->temp_why);
	else if (r->kind == DNS_KIND_HOST)
		set_reason(&m->status, m->reason, "550 5.1.2 host %s has no address", r->name);
	else if (m->implicit)
		set_reason(&m->status, m->reason, "550 5.1.2 domain %s has no MX and no address",
		           r->name);
	else
		set_reason(&m->status, m->reason, "550 5.4.4 no MX host of %s has an address",
		           r->name);
}

static void
tlsa_on_answer(struct dns_req *r, const struct dns_answer *a)
{
	struct dns_tlsa_result *t = &r->res.tlsa;

	t->security = a->security;
	if (a->outcome == OUT_BOGUS) {
		set_reason(&t->status, t->reason, "451 4.7.5 DNSSEC validation of %s failed: %s",
		           r->name, a->why);
		return;
	}
	if (a->outcome == OUT_FAIL) {
		set_reason(&t->status, t->reason, "451 4.4.3 TLSA lookup of %s failed: %s", r->name,
		           a->why);
		return;
	}
	if (a->outcome != OUT_DATA || a->security != DNS_SECURE) {
		snprintf(t->reason, sizeof(t->reason), "no usable TLSA for %s: %s", r->name,
		         a->outcome != OUT_DATA ? "none published" : "answer is insecure");
		return;
	}
	struct dnswire_rr rr;
	size_t pos = 0;
	int rc;
	while ((rc = dnswire_next(a->msg, &pos, &rr)) != 0) {
		if (rc < 0 || rr.rdlen < 4) {
			t->count = 0;
			set_reason(&t->status, t->reason, "451 4.4.3 malformed TLSA answer for %s",
			           r->name);
			return;
		}
		const uint8_t *p = a->msg->pkt + rr.rdata_off;
		size_t len = rr.rdlen;
		if (t->count == DNS_TLSA_MAX || len - 3 > DNS_TLSA_DATA_MAX) {
			t->skipped++;
			continue;
		}
		struct dns_tlsa *rec = &t->records[t->count++];
		*rec = (struct dns_tlsa){.usage = p[0], .selector = p[1], .mtype = p[2]};
		rec->data_len = (uint8_t)(len - 3);
		memcpy(rec->data, p + 3, len - 3);
	}
}

static void
req_on_answer(struct dns_req *r, unsigned index, const struct dns_answer *a)
{
	if (r->kind == DNS_KIND_TLSA)
		tlsa_on_answer(r, a);
	else if (index == 0)
		mx_on_mx(r, a);
	else
		mx_on_addr(r, (index - 1) / 2, (index - 1) % 2, a);
}

/* Queues r for its callback, which dns_process runs: never from inside dns_resolve_*(). */
static void
req_finish(struct dns_req *r)
{
	assert(r->pending == 0);
	assert(!r->done);
	if (r->kind != DNS_KIND_TLSA)
		mx_finish(r);
	r->done = true;
	*r->d->done_tail = r;
	r->d->done_tail = &r->done_next;
}

static void
noop_cb(void *arg, int rcode, void *pkt, int pkt_len, int sec, char *why_bogus, int was_ratelimited)
{
}

__attribute__((format(printf, 3, 4))) static int
config_error(char *err, size_t err_len, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(err, err_len, fmt, ap);
	va_end(ap);
	return -EINVAL;
}

static int
dns_configure(struct ub_ctx *ub, const struct dns_params *p, char *err, size_t err_len)
{
	int rc;

	if (p->unbound_config != NULL && p->unbound_config[0] != '\0' &&
	    (rc = ub_ctx_config(ub, p->unbound_config)) != 0)
		return config_error(err, err_len, "dns: cannot use dns.unbound_config %s: %s",
		                    p->unbound_config, ub_strerror(rc));
	if (!p->dnssec) {
		if ((rc = ub_ctx_set_option(ub, "module-config:", "iterator")) != 0)
			return config_error(err, err_len, "dns: cannot turn validation off: %s",
			                    ub_strerror(rc));
	} else if (p->trust_anchor_file == NULL || p->trust_anchor_file[0] == '\0') {
		return config_error(
		    err, err_len,
		    "dns: dns.dnssec is validate but dns.trust_anchor_file is empty "
		    "(Debian's is /usr/share/dns/root.key, package dns-root-data)");
	} else if ((rc = ub_ctx_add_ta_file(ub, p->trust_anchor_file)) != 0) {
		return config_error(err, err_len, "dns: cannot use dns.trust_anchor_file %s: %s",
		                    p->trust_anchor_file, ub_strerror(rc));
	}
	for (unsigned i = 0; i < p->forward_count; i++)
		if ((rc = ub_ctx_set_fwd(ub, p->forward[i])) != 0)
			return config_error(err, err_len, "dns: bad dns.forward entry %s: %s",
			                    p->forward[i], ub_strerror(rc));
	if (p->forward_count == 0 && (rc = ub_ctx_resolvconf(ub, "/etc/resolv.conf")) != 0)
		return config_error(err, err_len, "dns: empty dns.forward and /etc/resolv.conf: %s",
		                    ub_strerror(rc));
	if (p->hosts_file != NULL && p->hosts_file[0] != '\0' &&
	    (rc = ub_ctx_hosts(ub, p->hosts_file)) != 0)
		return config_error(err, err_len, "dns: cannot use dns.hosts_file %s: %s",
		                    p->hosts_file, ub_strerror(rc));
	return 0;
}

/*
 * libunbound reads the trust anchor and sets up its modules at the first query. Doing it now,
 * with "localhost" (answered from local data, or else cancelled), makes a bad configuration
 * fail dns_new() instead of the first lookup.
 */
static int
dns_start_resolver(struct ub_ctx *ub, char *err, size_t err_len)
{
	int id, rc;

	rc = ub_resolve_event(ub, "localhost", DNSWIRE_A, DNSWIRE_CLASS_IN, NULL, noop_cb, &id);
	if (rc != 0)
		return config_error(err, err_len, "dns: cannot start the resolver: %s",
		                    ub_strerror(rc));
	if (id != 0)
		(void)ub_cancel(ub, id);
	return 0;
}

struct dns *
dns_new(const struct dns_params *p, char *err, size_t err_len)
{
	struct dns *d;
	int rc;

	assert(p != NULL);
	assert(err != NULL);
	assert(p->forward_count <= DNS_FORWARD_MAX);
	d = calloc(1, sizeof(*d));
	if (d == NULL) {
		snprintf(err, err_len, "dns: out of memory");
		return NULL;
	}
	fifo_init(&d->to_submit);
	fifo_init(&d->answered);
	d->done_tail = &d->done;
	if ((rc = dnsevent_base_new(&d->ev)) != 0) {
		snprintf(err, err_len, "dns: epoll_create1: %s", strerror(-rc));
		goto fail;
	}
	d->ub = ub_ctx_create_ub_event(dnsevent_base_ub(d->ev));
	if (d->ub == NULL) {
		snprintf(err, err_len, "dns: ub_ctx_create_ub_event failed (out of memory?)");
		goto fail;
	}
	if (getrandom(&d->rng, sizeof(d->rng), 0) != sizeof(d->rng)) {
		snprintf(err, err_len, "dns: getrandom: %s", strerror(errno));
		goto fail;
	}
	if (dns_configure(d->ub, p, err, err_len) != 0 ||
	    dns_start_resolver(d->ub, err, err_len) != 0)
		goto fail;
	d->ipv6_first = p->ipv6_first;
	for (unsigned i = 0; i < DNS_INFLIGHT_MAX; i++)
		d->free_slots[i] = (uint16_t)(DNS_INFLIGHT_MAX - 1 - i);
	d->free_count = DNS_INFLIGHT_MAX;
	return d;
fail:
	if (d->ub != NULL)
		ub_ctx_delete(d->ub);
	dnsevent_base_free(d->ev);
	free(d);
	return NULL;
}

void
dns_free(struct dns *d)
{
	if (d == NULL)
		return;
	assert(!d->busy);
	for (unsigned i = 0; i < DNS_INFLIGHT_MAX; i++)
		if (d->slots[i] != NULL)
			req_free(d->slots[i]);
	struct dns_query *q;
	while ((q = fifo_pop(&d->to_submit)) != NULL || (q = fifo_pop(&d->answered)) != NULL) {
		assert(q->waits == NULL);
		query_unlink(d, q);
		query_free(q);
	}
	for (unsigned i = 0; i < DNS_HASH_BUCKETS; i++)
		assert(d->buckets[i] == NULL);
	/* Closes libunbound's sockets and frees its events, so the base goes last. */
	ub_ctx_delete(d->ub);
	dnsevent_base_free(d->ev);
	free(d);
}

int
dns_fd(const struct dns *d)
{
	assert(d != NULL);
	return dnsevent_fd(d->ev);
}

int
dns_timeout_ms(const struct dns *d)
{
	assert(d != NULL);
	if (d->answered.head != NULL || d->done != NULL ||
	    (d->to_submit.head != NULL && d->submitted < DNS_SUBMIT_MAX))
		return 0;
	return dnsevent_timeout_ms(d->ev);
}

static void
req_callback(struct dns_req *r)
{
	if (!r->cancelled && r->kind != DNS_KIND_TLSA)
		r->mx_cb(r->arg, &r->res.mx);
	else if (!r->cancelled)
		r->tlsa_cb(r->arg, &r->res.tlsa);
	req_free(r);
}

int
dns_process(struct dns *d)
{
	int rc;

	assert(d != NULL);
	assert(!d->busy);
	d->busy = true;
	rc = dnsevent_run(d->ev, DNS_EVENTS_PER_CALL);
	/* Outside libunbound's callbacks now, so waiters may start queries and callbacks cancel. */
	for (unsigned n = 0; n < DNS_EVENTS_PER_CALL && d->answered.head != NULL; n++)
		query_deliver(d);
	query_submit_queued(d, DNS_EVENTS_PER_CALL);
	for (unsigned n = 0; n < DNS_EVENTS_PER_CALL && d->done != NULL; n++) {
		struct dns_req *r = d->done;
		d->done = r->done_next;
		if (d->done == NULL)
			d->done_tail = &d->done;
		req_callback(r);
	}
	d->busy = false;
	return rc < 0 ? rc : 0;
}

/* Starts r's first query; on failure r is freed. Returns r's id or an error. */
static int
req_start(struct dns_req *r, uint16_t type)
{
	int rc = query_wait(r, 0, r->name, type);

	if (rc != 0) {
		req_free(r);
		return rc;
	}
	return r->id;
}

/* A request whose callback gets a struct dns_mx_result; nothing started yet. */
static int
mx_req_new(struct dns *d, enum dns_kind kind, const char *name, dns_mx_cb cb, void *arg,
           struct dns_req **out)
{
	char norm[DNS_NAME_MAX + 1];
	int rc;

	assert(d != NULL);
	assert(name != NULL);
	assert(cb != NULL);
	if (name_normalize(name, norm) != 0)
		return -EINVAL;
	if ((rc = req_new(d, kind, norm, arg, out)) != 0)
		return rc;
	(*out)->mx_cb = cb;
	return 0;
}

int
dns_resolve_mx(struct dns *d, const char *domain, dns_mx_cb cb, void *arg)
{
	struct dns_req *r;
	int rc = mx_req_new(d, DNS_KIND_MX, domain, cb, arg, &r);

	return rc != 0 ? rc : req_start(r, DNSWIRE_MX);
}

int
dns_resolve_host(struct dns *d, const char *host, dns_mx_cb cb, void *arg)
{
	struct in_addr literal;
	struct dns_req *r;
	int rc = mx_req_new(d, DNS_KIND_HOST, host, cb, arg, &r);

	if (rc != 0)
		return rc;
	/* "[192.0.2.1]" needs no lookup; asking DNS for it would only turn a bug into a 550. */
	if (inet_pton(AF_INET, r->name, &literal) == 1) {
		req_free(r);
		return -EINVAL;
	}
	/* No MX answer is consulted, so none weakens the result: security is the host's alone. */
	r->res.mx.security = DNS_SECURE;
	r->res.mx.mx_security = DNS_SECURE;
	mx_single_host(r);
	if (r->pending == 0) {
		/* Neither A nor AAAA started, and query_wait fails only for memory. */
		req_free(r);
		return -ENOMEM;
	}
	return r->id;
}

int
dns_resolve_tlsa(struct dns *d, const char *host, uint16_t port, dns_tlsa_cb cb, void *arg)
{
	char name[DNS_NAME_MAX + 1], full[DNS_NAME_MAX + 16];
	struct dns_req *r;
	int rc;

	assert(d != NULL);
	assert(host != NULL);
	assert(cb != NULL);
	if (name_normalize(host, name) != 0)
		return -EINVAL;
	snprintf(full, sizeof(full), "_%u._tcp.%s", port, name);
	if (strlen(full) > DNS_NAME_MAX)
		return -EINVAL;
	if ((rc = req_new(d, DNS_KIND_TLSA, full, arg, &r)) != 0)
		return rc;
	r->tlsa_cb = cb;
	return req_start(r, DNSWIRE_TLSA);
}

void
dns_cancel(struct dns *d, int id)
{
	struct dns_req *r;

	assert(d != NULL);
	if (id <= 0)
		return;
	r = d->slots[(unsigned)(id - 1) & (DNS_INFLIGHT_MAX - 1)];
	if (r == NULL || r->id != id)
		return;
	if (r->done)
		r->cancelled = true; /* freed by dns_process after the queued callbacks */
	else
		req_free(r);
}

unsigned
dns_inflight(const struct dns *d)
{
	assert(d != NULL);
	return DNS_INFLIGHT_MAX - d->free_count;
}

const char *
dns_security_name(enum dns_security s)
{
	switch (s) {
	case DNS_BOGUS:
		return "bogus";
	case DNS_INSECURE:
		return "insecure";
	case DNS_SECURE:
		return "secure";
	}
	return "unknown";
}

const char *
dns_strerror(int err)
{
	switch (err) {
	case -DNS_EFULL:
		return "too many DNS lookups in flight (DNS_INFLIGHT_MAX)";
	case -DNS_EUNBOUND:
		return "libunbound failed";
	default:
		return strerror(-err);
	}
}
