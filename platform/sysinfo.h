/*
 * sysinfo: facts about the running system that events carry: the boot id.
 */
#ifndef NBE_PLATFORM_SYSINFO_H
#define NBE_PLATFORM_SYSINFO_H

#include <stddef.h>

#define NBE_BOOT_ID_FILE "/proc/sys/kernel/random/boot_id"
#define NBE_BOOT_ID_LEN	 36

/*
 * Reads the boot id (a UUID, 36 characters) from @path (normally
 * NBE_BOOT_ID_FILE; tests point it at a file). Writes a NUL-terminated
 * lower-case id to @ret (at least NBE_BOOT_ID_LEN + 1 bytes) only on success.
 * Returns 0, -errno on I/O failure, -EINVAL when the content is not a UUID.
 */
int nbe_boot_id_read(const char *path, char *ret, size_t ret_size);

#endif
