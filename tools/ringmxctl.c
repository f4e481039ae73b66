/*
 * ringmxctl -- talks to a running ringmx over its control socket.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "core/config.h"
#include "core/control.h"

#define EXIT_FAILED  1 /* the server answered with an error */
#define EXIT_USAGE   2
#define EXIT_CONNECT 3 /* no server to talk to */

static void
usage(FILE *f)
{
	fprintf(f, "usage: ringmxctl [-c FILE] COMMAND [ARGS]\n"
	           "commands:\n"
	           "  queue [--json]   one line (or JSON object) per queued message\n"
	           "  show ID          the envelope and the stored bytes of one message\n"
	           "  stats [--json]   counters of the running server\n"
	           "  flush            every deferred recipient is tried now\n"
	           "  delete ID        remove a message from the queue (no bounce)\n"
	           "  hold ID          keep a message queued without delivering it\n"
	           "  release ID       deliver a held message again\n"
	           "  resolve DOMAIN   next hops, addresses, DNSSEC state and TLSA, as the server "
	           "sees them\n");
}

static int
ctl_connect(const char *path)
{
	struct sockaddr_un sun = {.sun_family = AF_UNIX};
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0 || strlen(path) >= sizeof(sun.sun_path))
		return -1;
	memcpy(sun.sun_path, path, strlen(path) + 1);
	if (connect(fd, (struct sockaddr *)&sun, sizeof(sun)) != 0) {
		close(fd);
		return -1;
	}
	return fd;
}

static int
ctl_send(int fd, const char *line)
{
	size_t len = strlen(line);

	while (len > 0) {
		ssize_t k = write(fd, line, len);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			return -1;
		line += k;
		len -= (size_t)k;
	}
	return 0;
}

/* Prints the reply body; returns the exit code from its status line. */
static int
ctl_reply(int fd)
{
	char buf[65536];
	bool first = true;
	int rc = EXIT_FAILED;
	ssize_t k;

	while ((k = read(fd, buf, sizeof(buf))) > 0 || (k < 0 && errno == EINTR)) {
		const char *p = buf;
		size_t n = (size_t)(k < 0 ? 0 : k);
		if (first && n > 0) {
			first = false;
			const char *nl = memchr(buf, '\n', n);
			size_t skip = nl ? (size_t)(nl - buf) + 1 : n;
			if (n >= 3 && memcmp(buf, "ok\n", 3) == 0) {
				rc = 0;
			} else {
				fprintf(stderr, "ringmxctl: %.*s", (int)skip, buf);
			}
			p += skip;
			n -= skip;
		}
		fwrite(p, 1, n, stdout);
	}
	if (first)
		fprintf(stderr, "ringmxctl: the server closed the connection without a reply\n");
	return rc;
}

int
main(int argc, char **argv)
{
	const char *path = NULL;
	char line[CONTROL_LINE_MAX];
	size_t len = 0;
	int opt;

	while ((opt = getopt(argc, argv, "+c:h")) != -1) {
		switch (opt) {
		case 'c':
			path = optarg;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return EXIT_USAGE;
		}
	}
	if (optind == argc) {
		usage(stderr);
		return EXIT_USAGE;
	}
	for (int i = optind; i < argc; i++) {
		int n = snprintf(line + len, sizeof(line) - len, "%s%s", i > optind ? " " : "",
		                 argv[i]);
		if (n < 0 || (size_t)n >= sizeof(line) - len - 1) {
			fprintf(stderr, "ringmxctl: command too long\n");
			return EXIT_USAGE;
		}
		len += (size_t)n;
	}
	line[len++] = '\n';
	line[len] = '\0';

	struct config_errors errs = {0};
	struct config *cfg = config_load(path, &errs);
	if (cfg == NULL) {
		for (unsigned i = 0; i < errs.count; i++)
			fprintf(stderr, "%s\n", errs.line[i]);
		return EXIT_USAGE;
	}
	int fd = ctl_connect(cfg->control_socket);
	if (fd < 0) {
		fprintf(stderr,
		        "ringmxctl: cannot connect to %s: %s (is ringmx running with this "
		        "config?)\n",
		        cfg->control_socket, strerror(errno));
		config_free(cfg);
		return EXIT_CONNECT;
	}
	config_free(cfg);
	int rc = ctl_send(fd, line) == 0 ? ctl_reply(fd) : EXIT_CONNECT;
	close(fd);
	return rc;
}
