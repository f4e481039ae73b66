/* test_scheduler.c -- routes, wake-ups, destination queues and back-off. */
#include "queue/scheduler.h"

#include <stdlib.h>
#include <string.h>

#include "tests/unit/check.h"

static struct config *
config_with_routes(void)
{
	static struct config_route routes[] = {
	    {.domain = "*", .kind = CONFIG_ROUTE_MX},
	    {.domain = "example.org", .kind = CONFIG_ROUTE_HOST, .host = "10.0.0.5", .port = 2525},
	    {.domain = "corp.example", .kind = CONFIG_ROUTE_HOST_MX, .host = "gw.example"},
	};
	struct config *cfg = calloc(1, sizeof(*cfg));

	cfg->routes = routes;
	cfg->route_count = sizeof(routes) / sizeof(routes[0]);
	cfg->outbound_port = 25;
	return cfg;
}

static void
test_routes(void)
{
	struct config *cfg = config_with_routes();
	struct sched_route r;

	sched_route_for(cfg, "example.org", &r);
	CHECK(r.kind == CONFIG_ROUTE_HOST);
	CHECK(strcmp(r.host, "10.0.0.5") == 0);
	CHECK(r.port == 2525);
	CHECK(strcmp(r.key, "10.0.0.5:2525") == 0);

	/* a parent domain's route covers its subdomains; case and a trailing dot don't matter */
	sched_route_for(cfg, "Mail.Example.ORG.", &r);
	CHECK(r.kind == CONFIG_ROUTE_HOST);
	CHECK(strcmp(r.key, "10.0.0.5:2525") == 0);

	sched_route_for(cfg, "corp.example", &r);
	CHECK(r.kind == CONFIG_ROUTE_HOST_MX);
	CHECK(r.port == 25);
	CHECK(strcmp(r.key, "mx:gw.example:25") == 0);

	/* "*": the recipient domain's own MX, one destination per domain */
	sched_route_for(cfg, "Other.Test.", &r);
	CHECK(r.kind == CONFIG_ROUTE_MX);
	CHECK(strcmp(r.host, "other.test") == 0);
	CHECK(strcmp(r.key, "mx:other.test:25") == 0);

	/* "example.org" must not match "notexample.org" */
	sched_route_for(cfg, "notexample.org", &r);
	CHECK(r.kind == CONFIG_ROUTE_MX);
	free(cfg);
}

static void
test_wakeups(void)
{
	struct sched *s = sched_new();
	uint64_t ids[8];
	const uint64_t at[] = {50, 10, 40, 20, 30, 10};

	CHECK(sched_next_wake(s) == UINT64_MAX);
	for (size_t i = 0; i < sizeof(at) / sizeof(at[0]); i++)
		CHECK(sched_wake(s, 100 + i, at[i]) == 0);
	CHECK(sched_next_wake(s) == 10);
	CHECK(sched_due(s, 5, ids, 8) == 0);
	size_t n = sched_due(s, 20, ids, 8);
	CHECK(n == 3);
	/* the two at 10 first (in either order), then the one at 20 */
	CHECK((ids[0] == 101 && ids[1] == 105) || (ids[0] == 105 && ids[1] == 101));
	CHECK(ids[2] == 103);
	CHECK(sched_due(s, 100, ids, 2) == 2); /* at most max per call */
	CHECK(ids[0] == 104 && ids[1] == 102);
	CHECK(sched_due(s, 100, ids, 8) == 1);
	CHECK(ids[0] == 100);
	CHECK(sched_next_wake(s) == UINT64_MAX);

	/* many wake-ups come out in time order */
	for (uint64_t i = 0; i < 5000; i++)
		sched_wake(s, i, (i * 7919) % 5000);
	uint64_t last = 0, count = 0;
	bool ordered = true;
	while ((n = sched_due(s, 5000, ids, 1)) == 1) {
		uint64_t t = (ids[0] * 7919) % 5000;
		ordered = ordered && t >= last;
		last = t;
		count++;
	}
	CHECK(ordered);
	CHECK(count == 5000);
	sched_free(s);
}

static void
test_destinations(void)
{
	struct config *cfg = config_with_routes();
	struct sched *s = sched_new();
	struct sched_route a, b;

	sched_route_for(cfg, "example.org", &a);
	sched_route_for(cfg, "other.test", &b);
	struct sched_dest *da = sched_dest(s, &a), *db = sched_dest(s, &b);
	CHECK(da != NULL && db != NULL && da != db);
	CHECK(sched_dest(s, &a) == da); /* found again, not made twice */

	const unsigned r1[] = {0, 2}, r2[] = {1};
	CHECK(sched_job_add(s, da, 7, r1, 2) == 0);
	CHECK(sched_job_add(s, db, 8, r2, 1) == 0);
	CHECK(sched_job_add(s, da, 9, r2, 1) == 0);
	CHECK(da->jobs == 2);

	/* runnable in the order work arrived, each destination once */
	CHECK(sched_runnable_take(s) == da);
	CHECK(sched_runnable_take(s) == db);
	CHECK(sched_runnable_take(s) == NULL);
	sched_runnable_put(s, db);
	sched_runnable_put(s, db);
	CHECK(sched_runnable_take(s) == db);
	CHECK(sched_runnable_take(s) == NULL);

	/* jobs come out first in, first out, with their recipients */
	struct sched_job *j = sched_job_take(da);
	CHECK(j != NULL && j->id == 7 && j->rcpt_count == 2 && j->rcpt[1] == 2);
	free(j);
	j = sched_job_take(da);
	CHECK(j != NULL && j->id == 9);
	free(j);
	CHECK(sched_job_take(da) == NULL);
	CHECK(da->jobs == 0);
	sched_free(s); /* frees db's remaining job too (LeakSanitizer checks) */
	free(cfg);
}

static void
test_backoff(void)
{
	struct sched_dest d = {0};

	CHECK(!sched_dest_down(&d, 0));
	sched_dest_failed(&d, 1000, "451 4.4.1 refused");
	CHECK(sched_dest_down(&d, 1000 + SCHED_DOWN_MIN_MS - 1));
	CHECK(!sched_dest_down(&d, 1000 + SCHED_DOWN_MIN_MS));
	CHECK(strcmp(d.down_reason, "451 4.4.1 refused") == 0);
	sched_dest_failed(&d, 1000, "again");
	CHECK(d.down_until_ms == 1000 + 2 * SCHED_DOWN_MIN_MS); /* doubles */
	for (int i = 0; i < 40; i++)
		sched_dest_failed(&d, 1000, "again");
	CHECK(d.down_until_ms == 1000 + SCHED_DOWN_MAX_MS); /* and stops growing */
	sched_dest_ok(&d);
	CHECK(!sched_dest_down(&d, 1000));
	CHECK(d.failures == 0);

	/* flush revives every destination */
	struct config *cfg = config_with_routes();
	struct sched *s = sched_new();
	struct sched_route r;
	sched_route_for(cfg, "other.test", &r);
	struct sched_dest *dd = sched_dest(s, &r);
	sched_dest_failed(dd, 0, "down");
	CHECK(sched_dest_down(dd, 1));
	sched_dest_revive_all(s);
	CHECK(!sched_dest_down(dd, 1));
	sched_free(s);
	free(cfg);
}

int
main(void)
{
	test_routes();
	test_wakeups();
	test_destinations();
	test_backoff();
	printf("%u passed, %u failed\n", passed, failed);
	return failed ? 1 : 0;
}
