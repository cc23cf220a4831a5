/*
 * helper: where nuvlabox-event-net is (the network half of the CLI):
 * beside the running program in a build tree, else where the package
 * installs it (NBE_LIBEXEC_DIR).
 */
#ifndef NBE_HELPER_H
#define NBE_HELPER_H

#include <stddef.h>

/* Writes the helper's path into @out. */
void nbe_net_helper_path(char *out, size_t size);

#endif
