/*
 * dnswire: parser for the wire-format answers libunbound hands to ub_resolve_event callbacks.
 *
 * Pure and allocation-free: the packet is read in place and treated as hostile. Every length is
 * checked against the packet, compression pointers must point backwards and are followed at most
 * DNSWIRE_PTR_MAX times per name, CNAME chains at most DNSWIRE_CNAME_MAX links. Only the header,
 * the question and the answer section are read; authority and additional are ignored.
 */
#ifndef RINGMX_DNS_DNSWIRE_H
#define RINGMX_DNS_DNSWIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define DNSWIRE_HEADER_LEN 12
#define DNSWIRE_NAME_MAX   255 /* wire form, including the root label */
#define DNSWIRE_TEXT_MAX   253 /* text form without the trailing dot */
#define DNSWIRE_LABEL_MAX  63
#define DNSWIRE_PTR_MAX    32 /* compression pointers followed within one name */
#define DNSWIRE_CNAME_MAX  16 /* CNAME links followed from the question name */

enum dnswire_type {
	DNSWIRE_A = 1,
	DNSWIRE_CNAME = 5,
	DNSWIRE_MX = 15,
	DNSWIRE_AAAA = 28,
	DNSWIRE_TLSA = 52,
};

enum {
	DNSWIRE_CLASS_IN = 1,
	DNSWIRE_RCODE_SERVFAIL = 2,
	DNSWIRE_RCODE_NXDOMAIN = 3,
	DNSWIRE_RCODE_REFUSED = 5,
};

/* A parsed answer; points into the packet, which must outlive it. */
struct dnswire_msg {
	const uint8_t *pkt;
	size_t len;
	uint8_t rcode;
	uint16_t qtype;
	uint16_t ancount;
	unsigned count;                   /* answer records of qtype owned by name */
	unsigned cname_hops;              /* CNAME links followed to reach name */
	size_t answer_off;                /* first answer record */
	size_t answer_end;                /* just past the last one */
	char qname[DNSWIRE_TEXT_MAX + 1]; /* lowercase text, "" for the root */
	uint8_t name[DNSWIRE_NAME_MAX];   /* lowercase wire form of the final owner */
	size_t name_len;
};

struct dnswire_rr {
	uint16_t type;
	uint16_t rclass;
	uint16_t rdlen;
	size_t rdata_off; /* rdata is pkt[rdata_off .. rdata_off + rdlen) */
};

/* Letters, digits, hyphen and underscore (for _25._tcp): the only bytes accepted in names. */
static inline bool
dnswire_char_ok(uint8_t c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       c == '-' || c == '_';
}

/*
 * Parses header and question (exactly one, class IN, LDH name) and checks the framing of every
 * answer record, following the CNAME chain in answer order. Returns 0 or -EBADMSG.
 */
int dnswire_parse(struct dnswire_msg *m, const uint8_t *pkt, size_t len);

/*
 * Iterates the class IN answer records of m->qtype owned by the end of the CNAME chain. Start
 * with *pos = 0. Returns 1 with rr filled in, 0 at the end, -EBADMSG on a malformed packet.
 */
int dnswire_next(const struct dnswire_msg *m, size_t *pos, struct dnswire_rr *rr);

/*
 * Reads an MX rdata: preference and exchange as lowercase LDH text ("" for a null MX). The name
 * may be compressed but must end exactly at the end of the rdata. Returns 0 or -EBADMSG.
 */
int dnswire_mx(const struct dnswire_msg *m, const struct dnswire_rr *rr, uint16_t *pref,
               char name[DNSWIRE_TEXT_MAX + 1]);

#endif
