/* test_connlimit.c -- max_connections and max_connections_per_ip bookkeeping. */
#include "core/connlimit.h"

#include "tests/unit/check.h"
#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

static struct sockaddr_storage
v4(const char *text)
{
	struct sockaddr_storage ss = {0};
	struct sockaddr_in *sin = (struct sockaddr_in *)&ss;

	sin->sin_family = AF_INET;
	inet_pton(AF_INET, text, &sin->sin_addr);
	return ss;
}

static struct sockaddr_storage
v6(const char *text)
{
	struct sockaddr_storage ss = {0};
	struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;

	sin6->sin6_family = AF_INET6;
	inet_pton(AF_INET6, text, &sin6->sin6_addr);
	return ss;
}

#define SA(ss) ((const struct sockaddr *)&(ss))

static void
test_per_ip(void)
{
	struct connlimit *cl = connlimit_new(100, 3);
	struct sockaddr_storage a = v4("192.0.2.1"), b = v4("192.0.2.2");
	struct sockaddr_storage a_mapped = v6("::ffff:192.0.2.1");

	for (int i = 0; i < 3; i++)
		CHECK(connlimit_acquire(cl, SA(a)) == CONNLIMIT_OK);
	CHECK(connlimit_acquire(cl, SA(a)) == CONNLIMIT_PER_IP);
	/* the same client over a dual-stack socket is the same client */
	CHECK(connlimit_acquire(cl, SA(a_mapped)) == CONNLIMIT_PER_IP);
	CHECK(connlimit_acquire(cl, SA(b)) == CONNLIMIT_OK);
	connlimit_release(cl, SA(a));
	CHECK(connlimit_acquire(cl, SA(a_mapped)) == CONNLIMIT_OK);
	CHECK(connlimit_acquire(cl, SA(a)) == CONNLIMIT_PER_IP);
	connlimit_free(cl);
}

static void
test_total(void)
{
	struct connlimit *cl = connlimit_new(5, 5);
	struct sockaddr_storage addrs[6];
	char text[32];

	for (int i = 0; i < 6; i++) {
		snprintf(text, sizeof(text), "2001:db8::%d", i + 1);
		addrs[i] = v6(text);
	}
	for (int i = 0; i < 5; i++)
		CHECK(connlimit_acquire(cl, SA(addrs[i])) == CONNLIMIT_OK);
	CHECK(connlimit_acquire(cl, SA(addrs[5])) == CONNLIMIT_TOTAL);
	connlimit_release(cl, SA(addrs[2]));
	CHECK(connlimit_acquire(cl, SA(addrs[5])) == CONNLIMIT_OK);
	connlimit_free(cl);
}

/* Many addresses in and out: deletion must keep every other entry findable. */
static void
test_churn(void)
{
	enum { N = 4000 };
	struct connlimit *cl = connlimit_new(N, 2);
	struct sockaddr_storage ss;
	char text[32];
	unsigned ok = 0;

	for (int i = 0; i < N / 2; i++) {
		snprintf(text, sizeof(text), "10.%d.%d.1", i / 256, i % 256);
		ss = v4(text);
		ok += connlimit_acquire(cl, SA(ss)) == CONNLIMIT_OK;
		ok += connlimit_acquire(cl, SA(ss)) == CONNLIMIT_OK;
	}
	CHECK(ok == N);
	for (int i = 0; i < N / 2; i += 2) {
		snprintf(text, sizeof(text), "10.%d.%d.1", i / 256, i % 256);
		ss = v4(text);
		connlimit_release(cl, SA(ss));
		connlimit_release(cl, SA(ss));
	}
	unsigned full = 0, free_again = 0;
	for (int i = 0; i < N / 2; i++) {
		snprintf(text, sizeof(text), "10.%d.%d.1", i / 256, i % 256);
		ss = v4(text);
		enum connlimit_verdict v = connlimit_acquire(cl, SA(ss));
		if (i % 2)
			full += v == CONNLIMIT_PER_IP;
		else
			free_again += v == CONNLIMIT_OK;
	}
	CHECK(full == N / 4);
	CHECK(free_again == N / 4);
	connlimit_free(cl);
}

int
main(void)
{
	test_per_ip();
	test_total();
	test_churn();
	printf("%u passed, %u failed\n", passed, failed);
	return failed ? 1 : 0;
}
