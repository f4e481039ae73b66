#include "dns/dnswire.h"

#include <assert.h>
#include <errno.h>
#include <string.h>

#define DNSWIRE_RR_FIXED_LEN 10 /* type, class, ttl, rdlength */
#define DNSWIRE_PTR_FLAGS    0xc0

static_assert(DNSWIRE_TEXT_MAX + 2 == DNSWIRE_NAME_MAX, "text form drops two bytes of wire form");

static uint16_t
get16(const uint8_t *p)
{
	return (uint16_t)(p[0] << 8 | p[1]);
}

static uint8_t
lower(uint8_t c)
{
	return c >= 'A' && c <= 'Z' ? (uint8_t)(c + ('a' - 'A')) : c;
}

/*
 * Reads the possibly compressed name at *off into lowercase wire form and moves *off past it.
 * A pointer must point before the segment that contains it, so following pointers always
 * terminates; DNSWIRE_PTR_MAX bounds the work on top of that.
 */
static int
name_read(const uint8_t *pkt, size_t len, size_t *off, uint8_t out[DNSWIRE_NAME_MAX],
          size_t *out_len)
{
	size_t pos = *off, limit = *off, end = 0, o = 0;
	unsigned ptrs = 0;

	for (;;) {
		if (pos >= len)
			return -EBADMSG;
		uint8_t label = pkt[pos];
		if ((label & DNSWIRE_PTR_FLAGS) == DNSWIRE_PTR_FLAGS) {
			if (pos + 1 >= len || ++ptrs > DNSWIRE_PTR_MAX)
				return -EBADMSG;
			size_t target = (size_t)(label & ~DNSWIRE_PTR_FLAGS) << 8 | pkt[pos + 1];
			if (target >= limit)
				return -EBADMSG;
			if (end == 0)
				end = pos + 2;
			pos = limit = target;
			continue;
		}
		/* 0x40 and 0x80 are extended or reserved label types: not used in answers. */
		if (label > DNSWIRE_LABEL_MAX || o + 1 + label > DNSWIRE_NAME_MAX ||
		    pos + 1 + label > len)
			return -EBADMSG;
		out[o++] = label;
		for (size_t i = 0; i < label; i++)
			out[o++] = lower(pkt[pos + 1 + i]);
		pos += 1 + (size_t)label;
		if (label == 0)
			break;
	}
	*off = end != 0 ? end : pos;
	*out_len = o;
	return 0;
}

/* Wire form to text ("" for the root); only LDH labels are accepted. */
static int
name_text(const uint8_t *wire, char out[DNSWIRE_TEXT_MAX + 1])
{
	size_t i = 0, o = 0;

	while (wire[i] != 0) {
		size_t label = wire[i++];
		if (o > 0)
			out[o++] = '.';
		for (size_t j = 0; j < label; j++) {
			if (!dnswire_char_ok(wire[i + j]))
				return -EBADMSG;
			out[o++] = (char)wire[i + j];
		}
		i += label;
	}
	assert(o <= DNSWIRE_TEXT_MAX);
	out[o] = '\0';
	return 0;
}

/* Reads one record's owner and framing at *off and moves *off past its rdata. */
static int
rr_read(const struct dnswire_msg *m, size_t *off, uint8_t owner[DNSWIRE_NAME_MAX],
        size_t *owner_len, struct dnswire_rr *rr)
{
	if (name_read(m->pkt, m->len, off, owner, owner_len) != 0)
		return -EBADMSG;
	if (m->len - *off < DNSWIRE_RR_FIXED_LEN)
		return -EBADMSG;
	const uint8_t *p = m->pkt + *off;
	rr->type = get16(p);
	rr->rclass = get16(p + 2);
	rr->rdlen = get16(p + 8);
	rr->rdata_off = *off + DNSWIRE_RR_FIXED_LEN;
	if (m->len - rr->rdata_off < rr->rdlen)
		return -EBADMSG;
	*off = rr->rdata_off + rr->rdlen;
	return 0;
}

/* A name inside rdata: compressed or not, it must end exactly where the rdata ends. */
static int
rdata_name(const struct dnswire_msg *m, const struct dnswire_rr *rr, size_t skip,
           uint8_t out[DNSWIRE_NAME_MAX], size_t *out_len)
{
	size_t off = rr->rdata_off + skip;

	if (rr->rdlen <= skip || name_read(m->pkt, m->len, &off, out, out_len) != 0)
		return -EBADMSG;
	return off == rr->rdata_off + rr->rdlen ? 0 : -EBADMSG;
}

static int
question_read(struct dnswire_msg *m)
{
	size_t off = DNSWIRE_HEADER_LEN;

	if (get16(m->pkt + 4) != 1)
		return -EBADMSG;
	if (name_read(m->pkt, m->len, &off, m->name, &m->name_len) != 0 ||
	    name_text(m->name, m->qname) != 0 || m->len - off < 4)
		return -EBADMSG;
	m->qtype = get16(m->pkt + off);
	if (get16(m->pkt + off + 2) != DNSWIRE_CLASS_IN)
		return -EBADMSG;
	m->answer_off = off + 4;
	return 0;
}

/* Checks every answer record's framing; CNAMEs move the owner we look for, in answer order. */
static int
answers_walk(struct dnswire_msg *m)
{
	uint8_t owner[DNSWIRE_NAME_MAX];
	size_t off = m->answer_off, owner_len;
	struct dnswire_rr rr;

	for (unsigned i = 0; i < m->ancount; i++) {
		if (rr_read(m, &off, owner, &owner_len, &rr) != 0)
			return -EBADMSG;
		if (rr.type != DNSWIRE_CNAME || rr.rclass != DNSWIRE_CLASS_IN ||
		    m->qtype == DNSWIRE_CNAME || owner_len != m->name_len ||
		    memcmp(owner, m->name, owner_len) != 0)
			continue;
		if (++m->cname_hops > DNSWIRE_CNAME_MAX ||
		    rdata_name(m, &rr, 0, m->name, &m->name_len) != 0)
			return -EBADMSG;
	}
	m->answer_end = off;
	return 0;
}

int
dnswire_parse(struct dnswire_msg *m, const uint8_t *pkt, size_t len)
{
	struct dnswire_rr rr;
	size_t pos = 0;
	int rc;

	assert(m != NULL);
	memset(m, 0, sizeof(*m));
	if (pkt == NULL || len < DNSWIRE_HEADER_LEN)
		return -EBADMSG;
	m->pkt = pkt;
	m->len = len;
	m->rcode = pkt[3] & 0x0f;
	m->ancount = get16(pkt + 6);
	if (question_read(m) != 0 || answers_walk(m) != 0)
		return -EBADMSG;
	while ((rc = dnswire_next(m, &pos, &rr)) == 1)
		m->count++;
	return rc;
}

int
dnswire_next(const struct dnswire_msg *m, size_t *pos, struct dnswire_rr *rr)
{
	uint8_t owner[DNSWIRE_NAME_MAX];
	size_t off = *pos == 0 ? m->answer_off : *pos, owner_len;

	assert(off >= m->answer_off);
	while (off < m->answer_end) {
		if (rr_read(m, &off, owner, &owner_len, rr) != 0)
			return -EBADMSG;
		if (rr->type == m->qtype && rr->rclass == DNSWIRE_CLASS_IN &&
		    owner_len == m->name_len && memcmp(owner, m->name, owner_len) == 0) {
			*pos = off;
			return 1;
		}
	}
	*pos = off;
	return 0;
}

int
dnswire_mx(const struct dnswire_msg *m, const struct dnswire_rr *rr, uint16_t *pref,
           char name[DNSWIRE_TEXT_MAX + 1])
{
	uint8_t wire[DNSWIRE_NAME_MAX];
	size_t wire_len;

	assert(rr->type == DNSWIRE_MX);
	if (rdata_name(m, rr, 2, wire, &wire_len) != 0 || name_text(wire, name) != 0)
		return -EBADMSG;
	*pref = get16(m->pkt + rr->rdata_off);
	return 0;
}
