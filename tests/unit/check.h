/*
 * check.h -- the unit tests' one assertion. CHECK counts, prints the failing
 * expression with file:line and goes on; main prints "N passed, N failed".
 * Included by each test_<module>.c (one translation unit per test program).
 */
#ifndef RINGMX_TESTS_CHECK_H
#define RINGMX_TESTS_CHECK_H

#include <stdio.h>

static unsigned passed, failed;

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (cond) {                                                                        \
			passed++;                                                                  \
		} else {                                                                           \
			failed++;                                                                  \
			printf("%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond);            \
		}                                                                                  \
	} while (0)

#endif
