/* tls_thread.h -- a stopgap for the TLS adapter having no per-thread cleanup yet.
 *
 * Debian's wolfSSL keeps a fixed-point ECC cache per thread (FP_ECC with thread-local
 * storage: about 3 MB of points per thread that did an ECDHE or ECDSA operation), which
 * wolfSSL_Cleanup() frees only for the calling thread; the others leak it at exit, and
 * LeakSanitizer fails the process. Until tls/tls.h has a per-thread free, each send and
 * sink thread that used TLS calls this before it ends.
 */
#ifndef RINGMX_BENCH_TLS_THREAD_H
#define RINGMX_BENCH_TLS_THREAD_H

#include <wolfssl/options.h>

#include <wolfssl/wolfcrypt/ecc.h>

static inline void
bench_tls_thread_end(void)
{
	wc_ecc_fp_free();
}

#endif
