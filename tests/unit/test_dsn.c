/*
 * test_dsn.c -- RFC 3464 bounce generation: structure, RET, ENVID/ORCPT, boundary
 * collisions, folding and line limits, UTF-8 addresses, refusals and the output bound.
 * dsn.c is compiled in so the boundary candidates can be planted in the original.
 * Each well-formed DSN is also written to a temporary directory and checked by
 * tests/fixtures/dsn/parse_dsn.py with Python's email package when /usr/bin/python3 exists;
 * the directory is kept for inspection when a check fails or DSN_KEEP is set.
 */
#include "queue/dsn.c"

#include "tests/unit/check.h"
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#define PYTHON       "/usr/bin/python3"
#define PARSE_SCRIPT "../fixtures/dsn/parse_dsn.py" /* meson runs us in tests/unit */
#define T_ARRIVAL    1700000000                     /* Tue, 14 Nov 2023 22:13:20 +0000 */
#define T_DATE       1700086400

static const char orig_msg[] = "Received: from client.example.com by mx.example.test\r\n"
                               "From: Alice <alice@example.com>\r\n"
                               "To: bob@example.net\r\n"
                               "Subject: original subject\r\n"
                               "Message-ID: <orig@example.com>\r\n"
                               "\r\n"
                               "original body line 1\r\n"
                               "original body line 2\r\n";

static char tmpdir[] = "/tmp/test_dsn.XXXXXX";
static bool python_ok;

static struct dsn_rcpt
rcpt_failed(const char *addr)
{
	return (struct dsn_rcpt){
	    .final_recipient = addr,
	    .action = DSN_ACTION_FAILED,
	    .status = "5.1.1",
	    .remote_mta = "mx.example.net",
	    .diagnostic = "550 5.1.1 <bob@example.net>: Recipient address rejected: User unknown",
	    .last_attempt = T_DATE - 10,
	};
}

static struct dsn_report
report_make(const struct dsn_rcpt *rcpts, size_t count)
{
	return (struct dsn_report){
	    .hostname = "mx.example.test",
	    .queue_id = "0123456789ABCDEF",
	    .sender = "alice@example.com",
	    .arrival = T_ARRIVAL,
	    .date = T_DATE,
	    .message = orig_msg,
	    .message_len = sizeof(orig_msg) - 1,
	    .rcpts = rcpts,
	    .rcpt_count = count,
	};
}

/* Every line ends in CRLF, holds no bare CR or LF and at most 998 octets. */
static bool
lines_ok(const char *s, size_t n)
{
	size_t col = 0;

	for (size_t i = 0; i < n; i++) {
		if (s[i] == '\r') {
			if (i + 1 >= n || s[i + 1] != '\n')
				return false;
			i++;
			col = 0;
		} else if (s[i] == '\n' || ++col > DSN_LINE_MAX) {
			return false;
		}
	}
	return col == 0;
}

static size_t
count_of(const char *s, const char *needle)
{
	size_t n = 0;

	for (const char *p = strstr(s, needle); p; p = strstr(p + 1, needle))
		n++;
	return n;
}

static bool
has_8bit_between(const char *s, const char *from, const char *to)
{
	const char *a = strstr(s, from);
	const char *b = a ? strstr(a, to) : NULL;

	return a == NULL || b == NULL || dsn_has_8bit(a, (size_t)(b - a));
}

/* Runs the Python validator on text; returns its exit status, or -1 when it could not run. */
static int
python_run(const char *name, const char *text, size_t len, const char *third, const char *actions)
{
	char path[256], cmd[512];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s.eml", tmpdir, name);
	f = fopen(path, "wb");
	if (f == NULL)
		return -1;
	fwrite(text, 1, len, f);
	fclose(f);
	/* the reasons for expected rejections would only clutter the log */
	snprintf(cmd, sizeof(cmd), "%s %s %s %s %s%s", PYTHON, PARSE_SCRIPT, path, third, actions,
	         strncmp(name, "reject_", 7) == 0 ? " >/dev/null" : "");
	int rc = system(cmd);
	return rc == -1 || !WIFEXITED(rc) ? -1 : WEXITSTATUS(rc);
}

/* The generated DSN passes the independent parser (skipped without python). */
static void
python_check(const char *name, const struct strbuf *sb, const char *third, const char *actions)
{
	if (!python_ok)
		return;
	int rc = python_run(name, sb->data, sb->len, third, actions);
	if (rc != 0)
		printf("python check of %s: exit %d\n", name, rc);
	CHECK(rc == 0);
}

/* Builds r into a fresh buffer limited to DSN_OUTPUT_MAX; checks the line rules. */
static int
build(const struct dsn_report *r, struct strbuf *sb)
{
	strbuf_init(sb, DSN_OUTPUT_MAX);
	int rc = dsn_build(sb, r);
	if (rc == 0)
		CHECK(lines_ok(sb->data, sb->len));
	return rc;
}

static void
test_single_failed(void)
{
	struct dsn_rcpt rc = rcpt_failed("bob@example.net");
	struct dsn_report r = report_make(&rc, 1);
	struct strbuf sb;

	CHECK(build(&r, &sb) == 0);
	const char *s = sb.data;
	const char *from = "From: Mail Delivery System <MAILER-DAEMON@mx.example.test>\r\n";
	CHECK(strncmp(s, from, strlen(from)) == 0);
	CHECK(strstr(s, "\r\nTo: <alice@example.com>\r\n"));
	CHECK(strstr(s, "\r\nSubject: Undelivered Mail Returned to Sender\r\n"));
	CHECK(strstr(s, "\r\nDate: Wed, 15 Nov 2023 22:13:20 +0000\r\n"));
	CHECK(strstr(s, "\r\nMessage-ID: <0123456789ABCDEF."));
	CHECK(strstr(s, ".dsn@mx.example.test>\r\n"));
	CHECK(strstr(s, "\r\nAuto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n"));
	CHECK(strstr(s, "\r\nContent-Type: multipart/report; report-type=delivery-status;\r\n"));
	CHECK(strstr(s, "\r\nContent-Type: text/plain; charset=utf-8\r\n"));
	CHECK(strstr(s, "\r\n<bob@example.net>: host mx.example.net said: 550 5.1.1"));
	CHECK(strstr(s, "\r\nContent-Type: message/delivery-status\r\n"));
	CHECK(strstr(s, "\r\nReporting-MTA: dns; mx.example.test\r\n"
	                "X-Ringmx-Queue-ID: 0123456789ABCDEF\r\n"
	                "Arrival-Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n"
	                "\r\nFinal-Recipient: rfc822; bob@example.net\r\n"
	                "Action: failed\r\nStatus: 5.1.1\r\n"
	                "Remote-MTA: dns; mx.example.net\r\n"
	                "Diagnostic-Code: smtp; 550 5.1.1 <bob@example.net>: Recipient address\r\n"
	                " rejected: User unknown\r\n"
	                "Last-Attempt-Date: Wed, 15 Nov 2023 22:13:10 +0000\r\n"));
	CHECK(strstr(s, "\r\nContent-Type: text/rfc822-headers\r\n"));
	CHECK(
	    strstr(s, "\r\nSubject: original subject\r\nMessage-ID: <orig@example.com>\r\n\r\n--"));
	CHECK(strstr(s, "original body") == NULL);
	CHECK(strstr(s, "Original-Envelope-Id") == NULL);
	CHECK(strstr(s, "Original-Recipient") == NULL);
	CHECK(strstr(s, "Will-Retry-Until") == NULL);
	CHECK(strstr(s, "Content-Transfer-Encoding") == NULL);
	CHECK(count_of(s, "--=_dsn-0123456789ABCDEF-") == 4);
	CHECK(sb.len >= 2 && strcmp(s + sb.len - 2, "\r\n") == 0);
	python_check("single", &sb, "text/rfc822-headers", "failed");

	/* the same input gives the same bytes */
	struct strbuf again;
	CHECK(build(&r, &again) == 0);
	CHECK(again.len == sb.len && memcmp(again.data, sb.data, sb.len) == 0);
	strbuf_free(&again);
	strbuf_free(&sb);
}

static void
test_mixed_actions(void)
{
	struct dsn_rcpt rc[5] = {rcpt_failed("a@example.net"), rcpt_failed("b@example.net"),
	                         rcpt_failed("c@example.net"), rcpt_failed("d@example.net"),
	                         rcpt_failed("e@example.net")};
	struct dsn_report r = report_make(rc, 5);
	struct strbuf sb;

	rc[0].will_retry_until = T_DATE + 3600; /* not for a failed recipient */
	rc[1].action = DSN_ACTION_DELAYED;
	rc[1].status = "4.4.1";
	rc[1].diagnostic = NULL;
	rc[1].will_retry_until = T_DATE + 86400;
	rc[2].action = DSN_ACTION_DELIVERED;
	rc[2].status = "2.0.0";
	rc[2].diagnostic = "250 2.0.0 Ok: queued as 12345";
	rc[3].action = DSN_ACTION_RELAYED;
	rc[3].status = "2.0.0";
	rc[4].action = DSN_ACTION_EXPANDED;
	rc[4].status = "2.0.0";
	rc[4].remote_mta = NULL;
	rc[4].diagnostic = NULL;
	CHECK(build(&r, &sb) == 0);
	const char *s = sb.data;
	CHECK(strstr(s, "\r\nSubject: Undelivered Mail Returned to Sender\r\n"));
	const char *a = strstr(s, "Action: failed"), *b = strstr(s, "Action: delayed");
	const char *c = strstr(s, "Action: delivered"), *d = strstr(s, "Action: relayed");
	const char *e = strstr(s, "Action: expanded");
	CHECK(a && b && c && d && e && a < b && b < c && c < d && d < e);
	CHECK(count_of(s, "Will-Retry-Until: ") == 1);
	CHECK(strstr(s, "Will-Retry-Until: Thu, 16 Nov 2023 22:13:20 +0000\r\n"));
	CHECK(strstr(s, "<b@example.net>: status 4.4.1 at host mx.example.net (retrying until "
	                "Thu, 16\r\n Nov 2023 22:13:20 +0000)\r\n"));
	CHECK(strstr(s, "<e@example.net>: status 2.0.0\r\n"));
	CHECK(strstr(s, "could not be delivered to these recipients"));
	CHECK(strstr(s, "has been delayed"));
	CHECK(strstr(s, "was delivered to these recipients"));
	CHECK(count_of(s, "Final-Recipient: ") == 5);
	python_check("mixed", &sb, "text/rfc822-headers",
	             "failed,delayed,delivered,relayed,expanded");
	strbuf_free(&sb);

	/* only successes: a success report, not a bounce */
	struct dsn_report ok = report_make(rc + 2, 3);
	CHECK(build(&ok, &sb) == 0);
	CHECK(strstr(sb.data, "\r\nSubject: Successful Mail Delivery Report\r\n"));
	CHECK(strstr(sb.data, "could not be delivered") == NULL);
	python_check("success", &sb, "text/rfc822-headers", "delivered,relayed,expanded");
	strbuf_free(&sb);
}

static void
test_delayed(void)
{
	struct dsn_rcpt rc = rcpt_failed("bob@example.net");
	struct dsn_report r = report_make(&rc, 1);
	struct strbuf sb;

	rc.action = DSN_ACTION_DELAYED;
	rc.status = "4.2.0";
	rc.diagnostic = "451 4.2.0 try again later";
	rc.will_retry_until = T_ARRIVAL + 5 * 86400;
	CHECK(build(&r, &sb) == 0);
	CHECK(strstr(sb.data, "\r\nSubject: Delayed Mail (still being retried)\r\n"));
	CHECK(strstr(sb.data, "\r\nAction: delayed\r\nStatus: 4.2.0\r\n"));
	CHECK(strstr(sb.data, "\r\nWill-Retry-Until: Sun, 19 Nov 2023 22:13:20 +0000\r\n"));
	CHECK(strstr(sb.data, "Diagnostic-Code: smtp; 451 4.2.0 try again later\r\n"));
	CHECK(strstr(sb.data, "Undelivered") == NULL);
	python_check("delayed", &sb, "text/rfc822-headers", "delayed");
	strbuf_free(&sb);
}

static void
test_ret(void)
{
	struct dsn_rcpt rc = rcpt_failed("bob@example.net");
	struct dsn_report r = report_make(&rc, 1);
	struct strbuf sb;

	r.ret = DSN_RET_HDRS;
	CHECK(build(&r, &sb) == 0);
	CHECK(strstr(sb.data, "\r\nContent-Type: text/rfc822-headers\r\n"));
	CHECK(strstr(sb.data, "original body") == NULL);
	CHECK(strstr(sb.data, "The header section of your message is attached."));
	strbuf_free(&sb);

	r.ret = DSN_RET_FULL;
	CHECK(build(&r, &sb) == 0);
	CHECK(strstr(sb.data, "\r\nContent-Type: message/rfc822\r\n"));
	CHECK(strstr(sb.data, "text/rfc822-headers") == NULL);
	CHECK(strstr(sb.data, "Message-ID: <orig@example.com>\r\n\r\noriginal body line 1\r\n"
	                      "original body line 2\r\n\r\n--"));
	CHECK(strstr(sb.data, "Your message is attached."));
	python_check("full", &sb, "message/rfc822", "failed");
	strbuf_free(&sb);

	/* exactly at the cap: returned whole; one octet over: headers only, and said so */
	size_t big_len = DSN_RETURN_MAX + 1;
	char *big = malloc(big_len + 1);
	CHECK(big != NULL);
	if (big == NULL)
		return;
	memset(big, 'x', big_len);
	int hdr = snprintf(big, big_len, "Subject: big\r\n\r\n");
	for (size_t i = (size_t)hdr + 70; i + 1 < big_len; i += 72)
		memcpy(big + i, "\r\n", 2);
	big[big_len] = '\0';
	r.message = big;
	r.message_len = DSN_RETURN_MAX;
	CHECK(build(&r, &sb) == 0);
	CHECK(strstr(sb.data, "\r\nContent-Type: message/rfc822\r\n"));
	CHECK(sb.len > DSN_RETURN_MAX);
	strbuf_free(&sb);
	r.message_len = big_len;
	CHECK(build(&r, &sb) == 0);
	CHECK(strstr(sb.data, "\r\nContent-Type: text/rfc822-headers\r\n"));
	CHECK(strstr(sb.data, "message/rfc822") == NULL);
	CHECK(strstr(sb.data, "xxxxxxxx") == NULL);
	CHECK(strstr(sb.data, "Your message is larger than 131072 octets, so only its header"));
	CHECK(sb.len < 4096);
	python_check("full_over_cap", &sb, "text/rfc822-headers", "failed");
	strbuf_free(&sb);

	/* a header section over the cap is not returned at all: two parts */
	memset(big, 'x', big_len);
	memcpy(big, "X-Big: ", 7);
	r.message_len = big_len;
	CHECK(build(&r, &sb) == 0);
	CHECK(strstr(sb.data, "text/rfc822-headers") == NULL);
	CHECK(strstr(sb.data, "message/rfc822") == NULL);
	CHECK(strstr(sb.data, "is larger than 131072 octets and is not\r\nattached."));
	CHECK(count_of(sb.data, "--=_dsn-") == 3);
	python_check("no_original", &sb, "none", "failed");
	strbuf_free(&sb);
	free(big);
}

static void
test_envid_orcpt(void)
{
	struct dsn_rcpt rc[2] = {rcpt_failed("bob@example.net"), rcpt_failed("carol@example.net")};
	struct dsn_report r = report_make(rc, 2);
	struct strbuf sb;

	r.envid = "QQ314159";
	rc[0].original_recipient = "rfc822;Bob@Example.NET";
	CHECK(build(&r, &sb) == 0);
	CHECK(strstr(sb.data, "\r\nOriginal-Envelope-Id: QQ314159\r\nArrival-Date: "));
	CHECK(strstr(sb.data, "\r\n\r\nOriginal-Recipient: rfc822; Bob@Example.NET\r\n"
	                      "Final-Recipient: rfc822; bob@example.net\r\n"));
	CHECK(count_of(sb.data, "Original-Recipient:") == 1);
	python_check("envid_orcpt", &sb, "text/rfc822-headers", "failed,failed");
	strbuf_free(&sb);

	/* malformed ORCPTs are left out, never copied raw */
	static const char *const bad[] = {"no-type-separator", "rfc822;", "rf c822;a@b",
	                                  "rfc822;a\r\nBcc: evil@x", "rfc822;b\xc3\xa9@x"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		rc[0].original_recipient = bad[i];
		CHECK(build(&r, &sb) == 0);
		CHECK(strstr(sb.data, "Original-Recipient") == NULL);
		CHECK(strstr(sb.data, "\r\nBcc:") == NULL);
		strbuf_free(&sb);
	}
	char long_orcpt[DSN_ORCPT_MAX + 2];
	memset(long_orcpt, 'a', sizeof(long_orcpt) - 1);
	memcpy(long_orcpt, "rfc822;", 7);
	long_orcpt[sizeof(long_orcpt) - 1] = '\0';
	rc[0].original_recipient = long_orcpt;
	CHECK(build(&r, &sb) == 0);
	CHECK(strstr(sb.data, "Original-Recipient") == NULL);
	strbuf_free(&sb);
	long_orcpt[DSN_ORCPT_MAX] = '\0'; /* at the limit: kept */
	CHECK(build(&r, &sb) == 0);
	CHECK(strstr(sb.data, "\r\nOriginal-Recipient: rfc822;\r\n aaaa"));
	strbuf_free(&sb);

	/* a remote ENVID cannot inject header lines, and is cut at DSN_ENVID_MAX */
	rc[0].original_recipient = NULL;
	r.envid = "id\r\nBcc: evil@example.org";
	CHECK(build(&r, &sb) == 0);
	CHECK(strstr(sb.data, "\r\nOriginal-Envelope-Id: id Bcc: evil@example.org\r\n"));
	CHECK(strstr(sb.data, "\r\nBcc:") == NULL);
	strbuf_free(&sb);
	char long_envid[DSN_ENVID_MAX + 50];
	memset(long_envid, 'e', sizeof(long_envid) - 1);
	long_envid[sizeof(long_envid) - 1] = '\0';
	r.envid = long_envid;
	CHECK(build(&r, &sb) == 0);
	const char *f = strstr(sb.data, "Original-Envelope-Id: ");
	CHECK(f && strcspn(f + 22, "\r") == DSN_ENVID_MAX);
	strbuf_free(&sb);
}

static void
test_boundary(void)
{
	struct dsn_rcpt rc = rcpt_failed("bob@example.net");
	struct dsn_report r = report_make(&rc, 1);
	char cand[DSN_BOUNDARY_TRIES_MAX][DSN_BOUNDARY_LEN + 1], expect[128], msg[8192];
	struct strbuf sb;

	for (unsigned k = 0; k < DSN_BOUNDARY_TRIES_MAX; k++)
		dsn_boundary_make(&r, k, cand[k]);
	CHECK(strcmp(cand[0], cand[1]) != 0);
	CHECK(strlen(cand[0]) <= DSN_BOUNDARY_LEN);

	/* candidate 0 in the original header section: the next one is used */
	snprintf(msg, sizeof(msg), "Subject: x\r\nX-Trap: --%s\r\n\r\nbody\r\n", cand[0]);
	r.message = msg;
	r.message_len = strlen(msg);
	CHECK(build(&r, &sb) == 0);
	snprintf(expect, sizeof(expect), "\tboundary=\"%s\"\r\n", cand[1]);
	CHECK(strstr(sb.data, expect));
	python_check("collision_header", &sb, "text/rfc822-headers", "failed");
	strbuf_free(&sb);

	/* candidates 0 and 1 in the body with RET=FULL: candidate 2 */
	snprintf(msg, sizeof(msg), "Subject: x\r\n\r\n--%s\r\n--%s--\r\n", cand[0], cand[1]);
	r.message_len = strlen(msg);
	r.ret = DSN_RET_FULL;
	CHECK(build(&r, &sb) == 0);
	snprintf(expect, sizeof(expect), "\tboundary=\"%s\"\r\n", cand[2]);
	CHECK(strstr(sb.data, expect));
	python_check("collision_body", &sb, "message/rfc822", "failed");
	strbuf_free(&sb);

	/* but a candidate only in the body does not matter when only headers go back */
	r.ret = DSN_RET_HDRS;
	CHECK(build(&r, &sb) == 0);
	snprintf(expect, sizeof(expect), "\tboundary=\"%s\"\r\n", cand[0]);
	CHECK(strstr(sb.data, expect));
	strbuf_free(&sb);

	/* remote text counts too: candidate 0 in the diagnostic */
	snprintf(expect, sizeof(expect), "550 5.7.1 see --%s", cand[0]);
	rc.diagnostic = expect;
	r.message = orig_msg;
	r.message_len = sizeof(orig_msg) - 1;
	CHECK(build(&r, &sb) == 0);
	CHECK(strstr(sb.data, cand[1]));
	CHECK(count_of(sb.data, cand[1]) == 5); /* Content-Type, three parts, the end */
	strbuf_free(&sb);

	/* every candidate taken: refused, and the buffer is left as it was */
	size_t o = (size_t)snprintf(msg, sizeof(msg), "Subject: x\r\n");
	for (unsigned k = 0; k < DSN_BOUNDARY_TRIES_MAX; k++)
		o += (size_t)snprintf(msg + o, sizeof(msg) - o, "X-Trap: %s\r\n", cand[k]);
	CHECK(o < sizeof(msg));
	r.message = msg;
	r.message_len = o;
	rc.diagnostic = NULL;
	strbuf_init(&sb, DSN_OUTPUT_MAX);
	strbuf_puts(&sb, "kept");
	CHECK(dsn_build(&sb, &r) == -EEXIST);
	CHECK(sb.len == 4 && strcmp(sb.data, "kept") == 0);
	strbuf_free(&sb);
}

static void
test_long_diagnostic(void)
{
	struct dsn_rcpt rc = rcpt_failed("bob@example.net");
	struct dsn_report r = report_make(&rc, 1);
	char diag[3000], expect[64];
	struct strbuf sb;

	/* words: folded under 78 columns, cut to DSN_DIAG_MAX */
	for (size_t i = 0; i < sizeof(diag) - 1; i++)
		diag[i] = i % 8 == 7 ? ' ' : (char)('a' + i % 8);
	diag[sizeof(diag) - 1] = '\0';
	memcpy(diag, "550 5.7.1", 9);
	rc.diagnostic = diag;
	CHECK(build(&r, &sb) == 0);
	const char *f = strstr(sb.data, "\r\nDiagnostic-Code: smtp; 550 5.7.1");
	CHECK(f != NULL);
	if (f != NULL) {
		size_t unfolded = 0, longest = 0;
		const char *p = f + 2;
		for (;;) {
			size_t line = strcspn(p, "\r");
			longest = line > longest ? line : longest;
			unfolded += line;
			p += line + 2;
			if (*p != ' ')
				break;
		}
		CHECK(longest <= DSN_FOLD_WIDTH);
		/* cut at the last word that fits */
		size_t text = unfolded - strlen("Diagnostic-Code: smtp; ");
		CHECK(text <= DSN_DIAG_MAX && text > DSN_DIAG_MAX - 8);
	}
	python_check("long_diag_words", &sb, "text/rfc822-headers", "failed");
	strbuf_free(&sb);

	/* one long word: broken at 998 octets, never longer */
	memset(diag, 'W', sizeof(diag) - 1);
	CHECK(build(&r, &sb) == 0);
	CHECK(count_of(sb.data, "WWWWWWWWWW") > 0);
	python_check("long_diag_word", &sb, "text/rfc822-headers", "failed");
	strbuf_free(&sb);

	/* a multi-line reply becomes one line; controls and 8-bit octets are cleaned */
	rc.diagnostic =
	    "550-5.1.1 first line\r\n550-5.1.1 \tsecond\x01 line\r\n550 5.1.1 caf\xc3\xa9\r\n";
	CHECK(build(&r, &sb) == 0);
	CHECK(strstr(sb.data, "\r\nDiagnostic-Code: smtp; 550-5.1.1 first line 550-5.1.1 second "
	                      "line 550 5.1.1\r\n caf??\r\n"));
	CHECK(!has_8bit_between(sb.data, "message/delivery-status", "\r\n--=_dsn-"));
	strbuf_free(&sb);

	/* a local reason with its own diagnostic type */
	rc.diagnostic = "message expired after 5 days";
	rc.diagnostic_type = "X-Ringmx";
	rc.status = "4.4.7";
	CHECK(build(&r, &sb) == 0);
	snprintf(expect, sizeof(expect), "\r\nDiagnostic-Code: X-Ringmx; message expired");
	CHECK(strstr(sb.data, expect));
	strbuf_free(&sb);
}

static void
test_no_body(void)
{
	static const char *const msgs[] = {
	    "Subject: no body\r\nFrom: a@example.com\r\n",
	    "Subject: no body, no final line end\r\nFrom: a@example.com",
	    "Subject: bare LF\nFrom: a@example.com\n\nbody\nline\n",
	};
	struct dsn_rcpt rc = rcpt_failed("bob@example.net");
	struct dsn_report r = report_make(&rc, 1);
	struct strbuf sb;

	for (size_t i = 0; i < sizeof(msgs) / sizeof(msgs[0]); i++) {
		r.message = msgs[i];
		r.message_len = strlen(msgs[i]);
		r.ret = DSN_RET_HDRS;
		CHECK(build(&r, &sb) == 0);
		CHECK(strstr(sb.data, "From: a@example.com\r\n\r\n--=_dsn-"));
		python_check("no_body_hdrs", &sb, "text/rfc822-headers", "failed");
		strbuf_free(&sb);
		r.ret = DSN_RET_FULL;
		CHECK(build(&r, &sb) == 0);
		CHECK(strstr(sb.data, "\r\nContent-Type: message/rfc822\r\n"));
		python_check("no_body_full", &sb, "message/rfc822", "failed");
		strbuf_free(&sb);
	}
	CHECK(build(&r, &sb) == 0);
	CHECK(strstr(sb.data, "\r\nFrom: a@example.com\r\n\r\nbody\r\nline\r\n\r\n--=_dsn-"));
	strbuf_free(&sb);

	/* an empty message: an empty header section is returned */
	r.message = "";
	r.message_len = 0;
	r.ret = DSN_RET_HDRS;
	CHECK(build(&r, &sb) == 0);
	CHECK(strstr(sb.data, "Content-Type: text/rfc822-headers\r\n\r\n\r\n--=_dsn-"));
	strbuf_free(&sb);
}

static void
test_header_section_len(void)
{
	static const struct {
		const char *msg;
		size_t len;
	} cases[] = {
	    {"A: b\r\n\r\nbody\r\n", 6},
	    {"A: b\r\nC: d\r\n\r\n", 12},
	    {"A: b\n\nbody", 5},
	    {"A: b\r\n folded\r\n\r\nbody", 15},
	    {"A: b\r\n\rbody", 6}, /* a bare CR ends a line, as the copy treats it */
	    {"A: b\rC: d\r", 10},
	    {"\r\nbody", 0},
	    {"\nbody", 0},
	    {"A: b\r\n", 6},
	    {"A: b", 4},
	    {"", 0},
	    {"A: b\r\n \r\nbody", 13}, /* a line holding a space is not empty */
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		size_t got = dsn_header_section_len(cases[i].msg, strlen(cases[i].msg));
		if (got != cases[i].len)
			printf("case %zu: %zu\n", i, got);
		CHECK(got == cases[i].len);
	}
}

static void
test_should_bounce(void)
{
	CHECK(!dsn_should_bounce(""));
	CHECK(dsn_should_bounce("alice@example.com"));
	CHECK(dsn_should_bounce("MAILER-DAEMON@example.com")); /* only <> is exempt */
	CHECK(dsn_should_bounce("postmaster"));
}

/* Builds into a buffer holding "kept": the result; on error the buffer is unchanged. */
static int
build_refused(const struct dsn_report *r)
{
	struct strbuf sb;

	strbuf_init(&sb, DSN_OUTPUT_MAX);
	strbuf_puts(&sb, "kept");
	int rc = dsn_build(&sb, r);
	if (rc == 0)
		CHECK(sb.len > 4 && strncmp(sb.data, "keptFrom: ", 10) == 0);
	else
		CHECK(sb.len == 4 && strcmp(sb.data, "kept") == 0);
	strbuf_free(&sb);
	return rc;
}

static void
test_refusals(void)
{
	struct dsn_rcpt rc = rcpt_failed("bob@example.net");
	struct dsn_report r = report_make(&rc, 1);
	char long_addr[DSN_ADDRESS_MAX + 2];

	CHECK(build_refused(&r) == 0);
	r.rcpt_count = 0;
	CHECK(build_refused(&r) == -EINVAL);
	r = report_make(&rc, 1);
	r.sender = "";
	CHECK(build_refused(&r) == -EINVAL);
	r.sender = "a\r\nBcc: evil@example.org";
	CHECK(build_refused(&r) == -EINVAL);
	r.sender = "bad\xc3(@example.com"; /* invalid UTF-8 */
	CHECK(build_refused(&r) == -EINVAL);
	r.sender = "over\xed\xa0\x80@example.com"; /* a surrogate */
	CHECK(build_refused(&r) == -EINVAL);
	r.sender = "long\xc0\xaf@example.com"; /* overlong */
	CHECK(build_refused(&r) == -EINVAL);
	memset(long_addr, 'a', sizeof(long_addr) - 1);
	long_addr[sizeof(long_addr) - 1] = '\0';
	r.sender = long_addr;
	CHECK(build_refused(&r) == -EINVAL);
	long_addr[DSN_ADDRESS_MAX] = '\0';
	CHECK(build_refused(&r) == 0);

	r = report_make(&rc, 1);
	r.hostname = "mx example";
	CHECK(build_refused(&r) == -EINVAL);
	r.hostname = "";
	CHECK(build_refused(&r) == -EINVAL);
	r = report_make(&rc, 1);
	r.queue_id = "0123.456";
	CHECK(build_refused(&r) == -EINVAL);
	r.queue_id = "0123456789012345678901234567890123"; /* over DSN_QUEUE_ID_MAX */
	CHECK(build_refused(&r) == -EINVAL);
	r = report_make(&rc, 1);
	r.ret = (enum dsn_ret)7;
	CHECK(build_refused(&r) == -EINVAL);
	r = report_make(&rc, 1);
	r.date = (time_t)1 << 60; /* no four-digit year */
	CHECK(build_refused(&r) == -EINVAL);

	r = report_make(&rc, 1);
	static const char *const statuses[] = {"5.1",    "6.0.0", "5.1.1000", "5..1",
	                                       "5.1.1 ", "",      "x.1.1"};
	for (size_t i = 0; i < sizeof(statuses) / sizeof(statuses[0]); i++) {
		rc.status = statuses[i];
		CHECK(build_refused(&r) == -EINVAL);
	}
	rc.status = "4.123.456";
	CHECK(build_refused(&r) == 0);
	rc = rcpt_failed("bob@example.net");
	rc.action = (enum dsn_action)9;
	CHECK(build_refused(&r) == -EINVAL);
	rc = rcpt_failed("bob\n@example.net");
	CHECK(build_refused(&r) == -EINVAL);
	rc = rcpt_failed("bob@example.net");
	rc.diagnostic_type = "smtp; evil";
	CHECK(build_refused(&r) == -EINVAL);
	rc.diagnostic_type = "";
	CHECK(build_refused(&r) == -EINVAL);
	rc = rcpt_failed("bob@example.net");
	rc.last_attempt = (time_t)1 << 60;
	CHECK(build_refused(&r) == -EINVAL);
}

static void
test_limits(void)
{
	struct dsn_rcpt *rc = calloc(DSN_RECIPIENTS_MAX + 1, sizeof(*rc));
	char *msg = malloc(DSN_RETURN_MAX);
	char addr[DSN_ADDRESS_MAX + 1], orcpt[DSN_ORCPT_MAX + 1], host[400], diag[3000];
	struct strbuf sb;

	CHECK(rc != NULL && msg != NULL);
	if (rc == NULL || msg == NULL)
		return;
	/* the largest report: the biggest escape expansion, a diagnostic folding at every
	 * other octet, and a returned message that doubles in size (bare LF -> CRLF) */
	memset(addr, '+', sizeof(addr) - 1);
	memcpy(addr + DSN_ADDRESS_MAX - 14, "\xdf\xbf@\xdf\xbf\xdf\xbf.example", 14);
	addr[DSN_ADDRESS_MAX] = '\0';
	memset(orcpt, 'o', sizeof(orcpt) - 1);
	memcpy(orcpt, "rfc822;", 7);
	orcpt[DSN_ORCPT_MAX] = '\0';
	memset(host, 'h', sizeof(host) - 1);
	host[sizeof(host) - 1] = '\0';
	for (size_t i = 0; i < sizeof(diag) - 1; i++)
		diag[i] = i % 2 ? ' ' : 'd';
	diag[sizeof(diag) - 1] = '\0';
	for (size_t i = 0; i <= DSN_RECIPIENTS_MAX; i++)
		rc[i] = (struct dsn_rcpt){addr,
		                          orcpt,
		                          DSN_ACTION_DELAYED,
		                          "4.123.456",
		                          host,
		                          diag,
		                          "X-Long-Diagnostic-Type-Name-32c",
		                          T_DATE,
		                          T_DATE + 1};
	memset(msg, '\n', DSN_RETURN_MAX);
	struct dsn_report r = report_make(rc, DSN_RECIPIENTS_MAX);
	r.sender = addr;
	r.envid = diag;
	r.ret = DSN_RET_FULL;
	r.message = msg;
	r.message_len = DSN_RETURN_MAX;
	CHECK(build(&r, &sb) == 0);
	CHECK(count_of(sb.data, "Final-Recipient: utf-8;\r\n \\x{2B}") == DSN_RECIPIENTS_MAX);
	CHECK(strstr(sb.data, "\r\nContent-Type: message/rfc822\r\n"));
	strbuf_free(&sb);

	r.rcpt_count = DSN_RECIPIENTS_MAX + 1;
	CHECK(build_refused(&r) == -E2BIG);

	/* an output limit that is too small: -ENOBUFS and nothing appended */
	struct dsn_rcpt one = rcpt_failed("bob@example.net");
	r = report_make(&one, 1);
	strbuf_init(&sb, 500);
	CHECK(dsn_build(&sb, &r) == -ENOBUFS);
	CHECK(sb.len == 0);
	strbuf_free(&sb);
	free(rc);
	free(msg);
}

static void
test_utf8(void)
{
	struct dsn_rcpt rc = rcpt_failed("j\xc3\xb8rn+tag=x@b\xc3\xbc"
	                                 "cher.example");
	struct dsn_report r = report_make(&rc, 1);
	struct strbuf sb;

	rc.diagnostic = "550 5.1.1 unknown";
	CHECK(build(&r, &sb) == 0);
	CHECK(strstr(sb.data, "\r\nFinal-Recipient: utf-8; j\\x{F8}rn\\x{2B}tag\\x{3D}x@b\\x{FC}"
	                      "cher.example\r\n"));
	/* the human part names the address as it is, and says it is 8-bit */
	CHECK(strstr(sb.data, "\r\n<j\xc3\xb8rn+tag=x@b\xc3\xbc"
	                      "cher.example>: host"));
	CHECK(strstr(sb.data, "\r\nContent-Type: text/plain; charset=utf-8\r\n"
	                      "Content-Transfer-Encoding: 8bit\r\n"));
	CHECK(!has_8bit_between(sb.data, "message/delivery-status", "\r\n--=_dsn-"));
	const char *body = strstr(sb.data, "\r\n\r\n");
	CHECK(body && dsn_has_8bit(sb.data, (size_t)(body - sb.data)) == false);
	CHECK(body && strstr(sb.data, "\r\nContent-Transfer-Encoding: 8bit\r\n") < body);
	python_check("utf8", &sb, "text/rfc822-headers", "failed");
	strbuf_free(&sb);

	/* a 4-octet character and a space in a quoted local part */
	rc.final_recipient = "\"a b\xf0\x9f\x93\xa7\"@example.org";
	CHECK(build(&r, &sb) == 0);
	CHECK(
	    strstr(sb.data, "\r\nFinal-Recipient: utf-8; \"a\\x{20}b\\x{1F4E7}\"@example.org\r\n"));
	strbuf_free(&sb);

	/* ASCII addresses with an 8-bit original: only the returned part is 8-bit */
	rc.final_recipient = "bob@example.net";
	r.message = "Subject: caf\xc3\xa9\r\n\r\nna\xc3\xafve\r\n";
	r.message_len = strlen(r.message);
	r.ret = DSN_RET_FULL;
	CHECK(build(&r, &sb) == 0);
	CHECK(strstr(sb.data, "\r\nContent-Type: message/rfc822\r\n"
	                      "Content-Transfer-Encoding: 8bit\r\n\r\n"));
	CHECK(strstr(sb.data, "text/plain; charset=utf-8\r\n\r\n"));
	python_check("eightbit", &sb, "message/rfc822", "failed");
	strbuf_free(&sb);
}

static void
test_long_original_lines(void)
{
	struct dsn_rcpt rc = rcpt_failed("bob@example.net");
	struct dsn_report r = report_make(&rc, 1);
	char *msg = malloc(6000);
	struct strbuf sb;

	CHECK(msg != NULL);
	if (msg == NULL)
		return;
	/* a 2500-octet header and body line, bare CR and LF line ends */
	size_t o = (size_t)sprintf(msg, "X-Long: ");
	memset(msg + o, 'h', 2500);
	o += 2500;
	o += (size_t)sprintf(msg + o, "\r\nSubject: s\r\n\rcr\nlf\r\n");
	memset(msg + o, 'b', 2500);
	o += 2500;
	r.message = msg;
	r.message_len = o;
	r.ret = DSN_RET_FULL;
	CHECK(build(&r, &sb) == 0);
	CHECK(strstr(sb.data, "hhhh\r\n hhhh"));
	CHECK(strstr(sb.data, "\r\nSubject: s\r\n\r\ncr\r\nlf\r\nbbbb"));
	CHECK(strstr(sb.data, "bbbb\r\nbbbb"));
	python_check("long_lines", &sb, "message/rfc822", "failed");
	strbuf_free(&sb);
	free(msg);
}

/* The validator itself rejects what it must: a wrong part type, a bare LF. */
static void
test_python_rejects(void)
{
	struct dsn_rcpt rc = rcpt_failed("bob@example.net");
	struct dsn_report r = report_make(&rc, 1);
	struct strbuf sb;

	if (!python_ok)
		return;
	CHECK(build(&r, &sb) == 0);
	CHECK(python_run("reject_actions", sb.data, sb.len, "text/rfc822-headers", "delayed") == 1);
	CHECK(python_run("reject_third", sb.data, sb.len, "message/rfc822", "failed") == 1);
	char *p = strstr(sb.data, "message/delivery-status");
	CHECK(p != NULL);
	if (p != NULL) {
		memcpy(p, "message/delivery-statu\n", 23);
		CHECK(python_run("reject_lf", sb.data, sb.len, "text/rfc822-headers", "failed") ==
		      1);
		memcpy(p, "text/plain; x=yyyyyyyyy", 23);
		CHECK(python_run("reject_type", sb.data, sb.len, "text/rfc822-headers", "failed") ==
		      1);
	}
	strbuf_free(&sb);
}

int
main(void)
{
	if (mkdtemp(tmpdir) == NULL) {
		perror("mkdtemp");
		return 1;
	}
	python_ok = access(PYTHON, X_OK) == 0 && access(PARSE_SCRIPT, R_OK) == 0;
	if (!python_ok)
		printf("note: %s or %s missing, Python checks skipped\n", PYTHON, PARSE_SCRIPT);
	test_single_failed();
	test_mixed_actions();
	test_delayed();
	test_ret();
	test_envid_orcpt();
	test_boundary();
	test_long_diagnostic();
	test_no_body();
	test_header_section_len();
	test_should_bounce();
	test_refusals();
	test_limits();
	test_utf8();
	test_long_original_lines();
	test_python_rejects();
	if (failed == 0 && getenv("DSN_KEEP") == NULL) {
		char cmd[300];
		snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
		if (system(cmd) != 0)
			printf("note: could not remove %s\n", tmpdir);
	} else {
		printf("generated DSNs kept in %s\n", tmpdir);
	}
	printf("%d passed, %d failed\n", passed, failed);
	return failed ? 1 : 0;
}
