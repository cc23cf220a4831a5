#include "sysinfo.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

static int is_uuid_text(const char *s)
{
	for (size_t i = 0; i < NBE_BOOT_ID_LEN; i++) {
		if (i == 8 || i == 13 || i == 18 || i == 23) {
			if (s[i] != '-')
				return 0;
		} else if (!isxdigit((unsigned char)s[i])) {
			return 0;
		}
	}
	return 1;
}

int nbe_boot_id_read(const char *path, char *ret, size_t ret_size)
{
	char buf[64];
	ssize_t n;
	int fd;

	if (ret_size < NBE_BOOT_ID_LEN + 1)
		return -EINVAL;
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	if (fd < 0)
		return -errno;
	do {
		n = read(fd, buf, sizeof(buf) - 1);
	} while (n < 0 && errno == EINTR);
	if (n < 0) {
		int e = -errno;
		close(fd);
		return e;
	}
	close(fd);
	buf[n] = '\0';
	while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == ' '))
		buf[--n] = '\0';
	if (n != NBE_BOOT_ID_LEN || !is_uuid_text(buf))
		return -EINVAL;
	for (size_t i = 0; i < NBE_BOOT_ID_LEN; i++)
		ret[i] = (char)tolower((unsigned char)buf[i]);
	ret[NBE_BOOT_ID_LEN] = '\0';
	return 0;
}
