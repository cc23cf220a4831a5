#include "testutil.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

char *tu_mkdtemp(void)
{
	const char *base = getenv("TMPDIR");
	char *p = malloc(4096);

	assert_non_null(p);
	snprintf(p, 4096, "%s/nbe-test-XXXXXX", base && *base ? base : "/tmp");
	assert_non_null(mkdtemp(p));
	return p;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

void tu_rmtree(char *dir)
{
	if (!dir)
		return;
	nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	free(dir);
}

char *tu_write(const char *dir, const char *name, const char *text)
{
	char *p = malloc(4096);
	FILE *f;

	assert_non_null(p);
	snprintf(p, 4096, "%s/%s", dir, name);
	f = fopen(p, "w");
	assert_non_null(f);
	assert_int_equal(fputs(text, f) >= 0, 1);
	assert_int_equal(fclose(f), 0);
	return p;
}

char *tu_read(const char *path)
{
	FILE *f = fopen(path, "rb");
	char *buf;
	long n;

	if (!f)
		return NULL;
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	fseek(f, 0, SEEK_SET);
	buf = malloc((size_t)n + 1);
	assert_non_null(buf);
	assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
	buf[n] = '\0';
	fclose(f);
	return buf;
}

char *tu_boot_id_file(const char *dir, const char *boot_id)
{
	char text[64];

	snprintf(text, sizeof(text), "%s\n", boot_id);
	return tu_write(dir, "boot_id", text);
}

void tu_event(struct nbe_event *ev, const char *name, const char *severity, const char *job,
	      const char *parent)
{
	struct nbe_event_input in = {
		.name = name, .severity = severity, .job = job, .parent = parent
	};
	struct nbe_error err = { { 0 } };
	int r;

	memset(ev, 0, sizeof(*ev));
	r = nbe_event_init_capture(ev, &in, INT64_C(1772360142123), 1000, TU_BOOT_ID, true, &err);
	if (r < 0)
		fail_msg("nbe_event_init_capture(%s): %s", name, err.msg);
}

struct nbe_buffer *tu_open(const char *dir, int64_t max_bytes, int64_t max_events)
{
	struct nbe_buffer_opts o = { 0 };
	struct nbe_error err = { { 0 } };
	struct nbe_buffer *b = NULL;
	char path[4096], *boot_file = tu_boot_id_file(dir, TU_BOOT_ID);
	int r;

	snprintf(path, sizeof(path), "%s/events.db", dir);
	o.path = path;
	o.max_bytes = max_bytes;
	o.max_events = max_events;
	o.keep_sent = 1000;
	o.busy_timeout_ms = 2000;
	o.full_check = true;
	o.boot_id_file = boot_file;
	r = nbe_buffer_open(&o, &b, NULL, &err);
	free(boot_file);
	if (r < 0)
		fail_msg("nbe_buffer_open: %s", err.msg);
	return b;
}

int64_t tu_append(struct nbe_buffer *b, const char *name, const char *severity, const char *job,
		  const char *parent, char ret_id[NBE_UUID_LEN + 1])
{
	struct nbe_error err = { { 0 } };
	struct nbe_event ev;
	int64_t seq;
	int r;

	tu_event(&ev, name, severity, job, parent);
	r = nbe_buffer_append(b, &ev, &err);
	if (r < 0)
		fail_msg("append %s: %s", name, err.msg);
	seq = ev.seq;
	if (ret_id)
		memcpy(ret_id, ev.id, NBE_UUID_LEN + 1);
	nbe_event_clear(&ev);
	return seq;
}
