/*
 * config_warn.h -- the security warnings of `ringmx -t` (DESIGN.md): configurations
 * that load but do what the three-port design exists to prevent, each named on one line.
 *
 * Pure apart from reading the certificate files (tls_cert_inspect); the time is passed in.
 */
#ifndef RINGMX_CORE_CONFIG_WARN_H
#define RINGMX_CORE_CONFIG_WARN_H

#include <stdint.h>

#include "core/config.h"

#define CONFIG_WARN_MAX    128 /* lines kept; the rest are counted in dropped */
#define CONFIG_WARN_LEN    512
#define CONFIG_WARN_SOON_S (14 * 86400) /* a certificate expiring sooner is named */

struct config_warnings {
	char line[CONFIG_WARN_MAX][CONFIG_WARN_LEN]; /* "warning: listen[1] 0.0.0.0:587: ..." */
	unsigned count;
	unsigned dropped;
};

/*
 * Fills w (cleared first) with one line per problem of cfg at time now (Unix seconds):
 * listeners, mynetworks, then tls.certificate and each tls.sni certificate. A built-in
 * default certificate that does not exist yet (config_tls_missing) is not inspected.
 * Returns w->count.
 */
unsigned config_warn(const struct config *cfg, int64_t now, struct config_warnings *w);

#endif
