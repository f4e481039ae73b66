/*
 * auth_backend.h -- what checks a user name and password for SMTP AUTH: the
 * passwd file (core/passwd.c, crypt(3) hashes) or Dovecot's auth service
 * (core/dovecot_auth.c, auth.dovecot_socket).
 *
 * A backend runs only on the threads of the verification pool (core/auth_pool.c),
 * never on a worker's loop: password hashes are slow on purpose and a Dovecot
 * round trip waits on another process, so verify() may block. Each pool thread
 * gets its own state from thread_new(), so a backend needs no locks of its own
 * beyond what it shares between threads (a reloadable user table, say).
 */
#ifndef RINGMX_CORE_AUTH_BACKEND_H
#define RINGMX_CORE_AUTH_BACKEND_H

#include <stddef.h>

#define AUTH_USER_MAX     255 /* bytes of a user name, without NUL */
#define AUTH_PASSWORD_MAX 255 /* bytes of a password, without NUL */

enum auth_verdict {
	AUTH_VERDICT_OK,       /* 235 2.7.0 */
	AUTH_VERDICT_FAIL,     /* 535 5.7.8: unknown user or wrong password, one answer for both */
	AUTH_VERDICT_TEMPFAIL, /* 454 4.7.0: the backend could not answer (Dovecot down, say) */
};

/* One attempt, as the SASL exchange gave it. The strings are NUL-terminated. */
struct auth_creds {
	const char *user;        /* authentication identity, <= AUTH_USER_MAX */
	const char *password;    /* <= AUTH_PASSWORD_MAX; wiped by the pool after verify() */
	const char *client_addr; /* "192.0.2.1" or "2001:db8::1", for the backend's own logs */
	const char *mechanism;   /* "PLAIN" or "LOGIN" */
};

struct auth_backend {
	const char *name; /* "passwd_file" or "dovecot", for log lines */
	void *ctx;        /* the backend's shared state, passed to thread_new() */
	/* A pool thread's own state; NULL with err filled when it cannot be made. */
	void *(*thread_new)(void *ctx, char *err, size_t err_len);
	/*
	 * Checks c. On AUTH_VERDICT_OK, user_out holds the canonical user name (the
	 * backend's spelling of it), which is what the session records.
	 */
	enum auth_verdict (*verify)(void *thread, const struct auth_creds *c, char *user_out,
	                            size_t user_out_len);
	void (*thread_free)(void *thread);
};

#endif
