/* msggen.h -- RFC 5322 test messages of a requested size for ringmx-bench send.
 *
 * A message is a per-message header block (From, To, Subject, Date, Message-ID) followed
 * by a body shared by all messages. The body is built once: lines of at most MSGGEN_LINE_MAX
 * characters that never start with '.', so no dot-stuffing is needed, ending with the
 * SMTP end-of-data "CRLF.CRLF". Message-IDs are <RUN.SEQ@ringmx-bench>: RUN differs between
 * runs (start time and pid), SEQ is the caller's global message number, so IDs are unique
 * across threads and runs.
 */
#ifndef RINGMX_BENCH_MSGGEN_H
#define RINGMX_BENCH_MSGGEN_H

#include <stddef.h>
#include <stdint.h>

#define MSGGEN_LINE_MAX   78   /* characters per body line, CRLF excluded (RFC 5322 SHOULD) */
#define MSGGEN_HEADER_MAX 1024 /* bytes of a header block; addresses are bounded to fit */
#define MSGGEN_ADDR_MAX   256  /* bytes of an address in From/To */

struct msggen {
	char *body;       /* body + ".\r\n", owned */
	size_t body_len;  /* bytes including the final ".\r\n" */
	char run_id[40];  /* unique per run */
	const char *from; /* not owned */
	const char *to;   /* not owned: shown in the To: header */
};

/* Builds the shared body so that a whole message (headers + body) is about size_total
 * bytes (never less than a few lines). from/to must stay valid and be < MSGGEN_ADDR_MAX.
 * Returns 0 or -ENOMEM / -EINVAL. */
int msggen_init(struct msggen *g, size_t size_total, const char *from, const char *to);

void msggen_free(struct msggen *g);

/* Writes the header block (ending with the blank line) of message seq into buf, dated
 * date (an RFC 5322 date string). Returns its length; asserts it fits MSGGEN_HEADER_MAX. */
size_t msggen_header(const struct msggen *g, char *buf, uint64_t seq, const char *date);

/* Formats the current time as an RFC 5322 date into buf (at least 64 bytes). */
void msggen_date(char *buf, size_t cap);

#endif
