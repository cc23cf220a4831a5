/*
 * Unit tests: the durable buffer (DESIGN §5, §9): storage settings, append
 * and lookup, linkage, caps and eviction order with drop accounting,
 * quarantine and salvage, parent resolution, purge, allocation failures.
 */
#include "testutil.h"

#include "alloc.h"
#include "json.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define JOB "job/9f0c1d2e-3f4a-4b5c-8d6e-7f8091a2b3c4"
#define BIG (64 * 1024 * 1024)

static int setup(void **state)
{
	*state = tu_mkdtemp();
	return 0;
}

static int teardown(void **state)
{
	tu_rmtree(*state);
	return 0;
}

/* Runs SQL on the buffer file through a second connection, as another
 * process would (used to put events into states no API sets yet). */
static void raw_sql(const char *dir, const char *sql)
{
	char path[4200];
	sqlite3 *db;
	char *msg = NULL;

	snprintf(path, sizeof(path), "%s/events.db", dir);
	assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
	sqlite3_busy_timeout(db, 2000);
	if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK)
		fail_msg("raw_sql %s: %s", sql, msg);
	sqlite3_close(db);
}

static int64_t file_bytes(const char *dir, const char *suffix)
{
	char path[4200];
	struct stat st;

	snprintf(path, sizeof(path), "%s/events.db%s", dir, suffix);
	return stat(path, &st) == 0 ? (int64_t)st.st_size : 0;
}

static void get_ok(struct nbe_buffer *b, const char *ref, struct nbe_event *ev)
{
	struct nbe_error err = { { 0 } };

	memset(ev, 0, sizeof(*ev));
	if (nbe_buffer_get(b, ref, ev, &err) != 0)
		fail_msg("get %s: %s", ref, err.msg);
}

static void test_settings(void **state)
{
	const char *dir = *state;
	struct nbe_buffer *b = tu_open(dir, BIG, 1000);
	struct nbe_error err = { { 0 } };
	struct stat st;
	char path[4200];
	int64_t v;

	snprintf(path, sizeof(path), "%s/events.db", dir);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0660);
	assert_int_equal(nbe_buffer_setting(b, "journal_mode", &v, &err), 0);
	assert_int_equal(v, 1);
	assert_int_equal(nbe_buffer_setting(b, "synchronous", &v, &err), 0);
	assert_int_equal(v, 2); /* FULL */
	assert_int_equal(nbe_buffer_setting(b, "secure_delete", &v, &err), 0);
	assert_int_equal(v, 0);
	assert_int_equal(nbe_buffer_setting(b, "auto_vacuum", &v, &err), 0);
	assert_int_equal(v, 2); /* INCREMENTAL */
	assert_int_equal(nbe_buffer_setting(b, "application_id", &v, &err), 0);
	assert_int_equal(v, NBE_BUFFER_APPLICATION_ID);
	assert_int_equal(nbe_buffer_setting(b, "user_version", &v, &err), 0);
	assert_int_equal(v, NBE_BUFFER_SCHEMA_VERSION);
	assert_int_equal(nbe_buffer_setting(b, "journal_size_limit", &v, &err), 0);
	assert_true(v > 0 && v <= 4 * 1024 * 1024);
	assert_int_equal(nbe_buffer_setting(b, "busy_timeout", &v, &err), 0);
	assert_int_equal(v, 2000);
	assert_int_equal(nbe_buffer_setting(b, "cache_size", &v, &err), 0);
	assert_int_equal(v, -512); /* KiB: a small page cache for the daemon */
	assert_int_equal(nbe_buffer_setting(b, "mmap_size", &v, &err), -EINVAL);
	nbe_buffer_close(b);

	/* -wal and -shm take the database file's mode */
	raw_sql(dir, "SELECT 1");
	b = tu_open(dir, BIG, 1000);
	tu_append(b, "x", NULL, NULL, NULL, NULL);
	snprintf(path, sizeof(path), "%s/events.db-wal", dir);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0660);
	nbe_buffer_close(b);
}

static void test_append_get(void **state)
{
	const char *dir = *state;
	struct nbe_buffer *b = tu_open(dir, BIG, 1000);
	struct nbe_error err = { { 0 } };
	char id1[NBE_UUID_LEN + 1], id2[NBE_UUID_LEN + 1], ref[64];
	struct nbe_event ev;
	int64_t s1, s2;

	s1 = tu_append(b, "nuvlabox.reboot", "high", JOB, NULL, id1);
	s2 = tu_append(b, "custom.thing", NULL, NULL, "credential/abc", id2);
	assert_true(s2 > s1);

	get_ok(b, id1, &ev);
	assert_int_equal(ev.seq, s1);
	assert_string_equal(ev.name, "nuvlabox.reboot");
	assert_int_equal(ev.severity, NBE_SEV_HIGH);
	assert_int_equal(ev.phase, NBE_PHASE_STARTED);
	assert_string_equal(ev.job, JOB);
	assert_int_equal(ev.state, NBE_STATE_PENDING);
	assert_string_equal(ev.boot_id, TU_BOOT_ID);
	assert_int_equal(ev.wall_ms, INT64_C(1772360142123));
	nbe_event_clear(&ev);

	snprintf(ref, sizeof(ref), "%lld", (long long)s2);
	get_ok(b, ref, &ev);
	assert_string_equal(ev.id, id2);
	assert_string_equal(ev.parent, "credential/abc");
	assert_int_equal(ev.parent_seq, 0);
	nbe_event_clear(&ev);

	/* upper-case device ids find the event too */
	for (char *p = id2; *p; p++)
		*p = (char)((*p >= 'a' && *p <= 'f') ? *p - 32 : *p);
	get_ok(b, id2, &ev);
	nbe_event_clear(&ev);

	memset(&ev, 0, sizeof(ev));
	assert_int_equal(nbe_buffer_get(b, "99999", &ev, &err), -ENOENT);
	assert_int_equal(nbe_buffer_get(b, "5e1d7a4c-0c1b-4d43-9a8b-6f3e7d8a1b22", &ev, &err),
			 -ENOENT);
	assert_int_equal(nbe_buffer_get(b, "event/nothere", &ev, &err), -ENOENT);
	assert_int_equal(nbe_buffer_get(b, "nonsense!", &ev, &err), -EINVAL);
	assert_int_equal(nbe_buffer_get(b, "0", &ev, &err), -EINVAL);
	nbe_buffer_close(b);

	/* survives close and reopen */
	b = tu_open(dir, BIG, 1000);
	get_ok(b, id1, &ev);
	nbe_event_clear(&ev);
	nbe_buffer_close(b);
}

struct collect {
	int64_t seqs[64];
	int n;
	int stop_at;
};

static int collect(const struct nbe_event *ev, void *userdata)
{
	struct collect *c = userdata;

	c->seqs[c->n++] = ev->seq;
	return c->stop_at && c->n == c->stop_at ? 7 : 0;
}

static void test_foreach(void **state)
{
	const char *dir = *state;
	struct nbe_buffer *b = tu_open(dir, BIG, 1000);
	struct nbe_error err = { { 0 } };
	struct collect c = { 0 };
	int64_t s[6];

	for (int i = 0; i < 6; i++)
		s[i] = tu_append(b, "x", NULL, NULL, NULL, NULL);
	raw_sql(dir, "UPDATE events SET state = 1, server_id = 'event/a' WHERE seq IN (2, 4);"
		     "UPDATE events SET state = 2 WHERE seq = 5;");
	assert_int_equal(nbe_buffer_foreach(b, NBE_STATE_MASK_ALL, 0, collect, &c, &err), 0);
	assert_int_equal(c.n, 6);
	for (int i = 0; i < 6; i++)
		assert_int_equal(c.seqs[i], s[i]);
	memset(&c, 0, sizeof(c));
	assert_int_equal(
		nbe_buffer_foreach(b, NBE_STATE_MASK(NBE_STATE_PENDING), 0, collect, &c, &err), 0);
	assert_int_equal(c.n, 3);
	assert_int_equal(c.seqs[1], 3);
	memset(&c, 0, sizeof(c));
	assert_int_equal(nbe_buffer_foreach(
				 b, NBE_STATE_MASK(NBE_STATE_SENT) | NBE_STATE_MASK(NBE_STATE_DEAD),
				 2, collect, &c, &err),
			 0);
	assert_int_equal(c.n, 2);
	assert_int_equal(c.seqs[0], 2);
	assert_int_equal(c.seqs[1], 4);
	memset(&c, 0, sizeof(c));
	c.stop_at = 2;
	assert_int_equal(nbe_buffer_foreach(b, NBE_STATE_MASK_ALL, 0, collect, &c, &err), 7);
	nbe_buffer_close(b);
}

static void test_linkage(void **state)
{
	const char *dir = *state;
	struct nbe_buffer *b = tu_open(dir, BIG, 1000);
	struct nbe_error err = { { 0 } };
	char start[NBE_UUID_LEN + 1], done[NBE_UUID_LEN + 1], other[NBE_UUID_LEN + 1];
	char s2[NBE_UUID_LEN + 1], c2[NBE_UUID_LEN + 1], x[NBE_UUID_LEN + 1];
	struct nbe_event ev;

	/* with a job: .completed finds the latest start of that op and job */
	tu_append(b, "nuvlabox.reboot", NULL, "job/old", NULL, NULL);
	tu_append(b, "nuvlabox.reboot", NULL, JOB, NULL, other);
	tu_append(b, "nuvlabox.reboot", NULL, JOB, NULL, start);
	tu_append(b, "nuvlabox.add-ssh-key", NULL, JOB, NULL, NULL);
	tu_append(b, "nuvlabox.reboot.completed", NULL, JOB, NULL, done);
	get_ok(b, done, &ev);
	assert_string_equal(ev.parent_local, start);
	assert_null(ev.parent); /* as recorded: nothing */
	assert_string_equal(ev.parent_fallback, JOB);
	nbe_event_clear(&ev);

	/* without any start of that job: no local parent (the job is) */
	tu_append(b, "nuvlabox.revoke-ssh-key.failed", NULL, "job/none", NULL, x);
	get_ok(b, x, &ev);
	assert_int_equal(ev.parent_seq, 0);
	assert_string_equal(ev.parent_local, "");
	nbe_event_clear(&ev);

	/* without a job: the latest unclaimed start in this boot */
	tu_append(b, "nuvlabox.commission", NULL, NULL, NULL, s2);
	tu_append(b, "nuvlabox.commission.completed", NULL, NULL, NULL, c2);
	get_ok(b, c2, &ev);
	assert_string_equal(ev.parent_local, s2);
	assert_null(ev.parent_fallback);
	nbe_event_clear(&ev);
	/* ...which a second completion does not claim again */
	tu_append(b, "nuvlabox.commission.completed", NULL, NULL, NULL, x);
	get_ok(b, x, &ev);
	assert_string_equal(ev.parent_local, "");
	nbe_event_clear(&ev);

	/* explicit device event id parent; its fallback is the parent's parent */
	tu_append(b, "custom.child", NULL, NULL, done, x);
	get_ok(b, x, &ev);
	assert_string_equal(ev.parent_local, done);
	assert_string_equal(ev.parent, done);
	assert_string_equal(ev.parent_fallback, JOB);
	nbe_event_clear(&ev);

	/* an unknown device event id is an error and stores nothing */
	tu_event(&ev, "custom.orphan", NULL, NULL, "5e1d7a4c-0c1b-4d43-9a8b-6f3e7d8a1b22");
	assert_int_equal(nbe_buffer_append(b, &ev, &err), -ENOENT);
	assert_non_null(strstr(err.msg, "no such device event"));
	assert_int_equal(ev.seq, 0);
	nbe_event_clear(&ev);
	nbe_buffer_close(b);
}

static void test_resolve_parent(void **state)
{
	const char *dir = *state;
	struct nbe_buffer *b = tu_open(dir, BIG, 1000);
	struct nbe_error err = { { 0 } };
	char start[NBE_UUID_LEN + 1], done[NBE_UUID_LEN + 1], grand[NBE_UUID_LEN + 1];
	struct nbe_event ev;
	char *href = NULL, sql[256];
	bool wait = false;
	int64_t sstart, sdone;

	sstart = tu_append(b, "nuvlabox.reboot", NULL, JOB, NULL, start);
	sdone = tu_append(b, "nuvlabox.reboot.completed", NULL, JOB, NULL, done);
	tu_append(b, "custom.after", NULL, NULL, done, grand);

	/* the start's parent is its job */
	get_ok(b, start, &ev);
	assert_int_equal(nbe_buffer_resolve_parent(b, &ev, &href, &wait, &err), 0);
	assert_string_equal(href, JOB);
	assert_false(wait);
	nbe_free(href);
	nbe_event_clear(&ev);

	/* the completion waits while the start is pending */
	get_ok(b, done, &ev);
	assert_int_equal(nbe_buffer_resolve_parent(b, &ev, &href, &wait, &err), 0);
	assert_null(href);
	assert_true(wait);

	/* ...and takes its server id once it is sent */
	snprintf(sql, sizeof(sql),
		 "UPDATE events SET state = 1, server_id = 'event/s-1' WHERE seq = %lld",
		 (long long)sstart);
	raw_sql(dir, sql);
	assert_int_equal(nbe_buffer_resolve_parent(b, &ev, &href, &wait, &err), 0);
	assert_string_equal(href, "event/s-1");
	assert_false(wait);
	nbe_free(href);

	/* a dead-lettered parent: fall back to the parent's own parent */
	snprintf(sql, sizeof(sql), "UPDATE events SET state = 2 WHERE seq = %lld",
		 (long long)sstart);
	raw_sql(dir, sql);
	assert_int_equal(nbe_buffer_resolve_parent(b, &ev, &href, &wait, &err), 0);
	assert_string_equal(href, JOB);
	nbe_free(href);
	nbe_event_clear(&ev);

	/* two dead generations up: the grandchild lands on the job too */
	snprintf(sql, sizeof(sql), "UPDATE events SET state = 2 WHERE seq = %lld",
		 (long long)sdone);
	raw_sql(dir, sql);
	get_ok(b, grand, &ev);
	assert_int_equal(nbe_buffer_resolve_parent(b, &ev, &href, &wait, &err), 0);
	assert_string_equal(href, JOB);
	nbe_free(href);

	/* an evicted parent: the fallback saved at capture */
	snprintf(sql, sizeof(sql), "DELETE FROM events WHERE seq IN (%lld, %lld)",
		 (long long)sstart, (long long)sdone);
	raw_sql(dir, sql);
	assert_int_equal(nbe_buffer_resolve_parent(b, &ev, &href, &wait, &err), 0);
	assert_string_equal(href, JOB);
	assert_false(wait);
	nbe_free(href);
	nbe_event_clear(&ev);
	nbe_buffer_close(b);
}

static void test_batch_all_or_nothing(void **state)
{
	const char *dir = *state;
	struct nbe_buffer *b = tu_open(dir, BIG, 1000);
	struct nbe_error err = { { 0 } };
	struct nbe_buffer_stats st;
	struct nbe_event evs[3];

	tu_event(&evs[0], "a", NULL, NULL, NULL);
	tu_event(&evs[1], "b", NULL, NULL, NULL);
	tu_event(&evs[2], "c", NULL, NULL, "5e1d7a4c-0c1b-4d43-9a8b-6f3e7d8a1b22");
	assert_int_equal(nbe_buffer_append_batch(b, evs, 3, &err), -ENOENT);
	for (int i = 0; i < 3; i++)
		assert_int_equal(evs[i].seq, 0);
	assert_int_equal(nbe_buffer_stats(b, &st, &err), 0);
	assert_int_equal(st.pending, 0);

	nbe_free(evs[2].parent);
	evs[2].parent = nbe_strdup(evs[0].id); /* a parent earlier in the same batch */
	assert_int_equal(nbe_buffer_append_batch(b, evs, 3, &err), 0);
	assert_true(evs[0].seq < evs[1].seq && evs[1].seq < evs[2].seq);
	assert_int_equal(evs[2].parent_seq, evs[0].seq);
	assert_int_equal(nbe_buffer_stats(b, &st, &err), 0);
	assert_int_equal(st.pending, 3);
	/* the same events again: ids are unique */
	assert_int_equal(nbe_buffer_append_batch(b, evs, 1, &err), -EEXIST);
	for (int i = 0; i < 3; i++)
		nbe_event_clear(&evs[i]);
	nbe_buffer_close(b);
}

/* Severity of each event, oldest first, as one string ("lmhc", s=sent, d=dead). */
static int describe_ev(const struct nbe_event *ev, void *userdata)
{
	char *out = userdata, c;

	if (strcmp(ev->name, NBE_EVENT_DROPPED) == 0)
		c = 'R';
	else if (ev->state == NBE_STATE_SENT)
		c = 's';
	else if (ev->state == NBE_STATE_DEAD)
		c = 'd';
	else
		c = "lmhc"[ev->severity];
	out[strlen(out)] = c;
	return 0;
}

static void describe(struct nbe_buffer *b, char *out)
{
	struct nbe_error err = { { 0 } };

	memset(out, 0, 128);
	assert_int_equal(nbe_buffer_foreach(b, NBE_STATE_MASK_ALL, 0, describe_ev, out, &err), 0);
}

static void test_eviction_order(void **state)
{
	const char *dir = *state;
	struct nbe_buffer *b = tu_open(dir, BIG, 10);
	struct nbe_buffer_stats st;
	struct nbe_error err = { { 0 } };
	char d[128];

	/* 10 events: s s d d l m h c l m (s/d made by raw SQL below) */
	for (int i = 0; i < 4; i++)
		tu_append(b, "x", "low", NULL, NULL, NULL);
	tu_append(b, "x", "low", NULL, NULL, NULL);
	tu_append(b, "x", "medium", NULL, NULL, NULL);
	tu_append(b, "x", "high", NULL, NULL, NULL);
	tu_append(b, "x", "critical", NULL, NULL, NULL);
	tu_append(b, "x", "low", NULL, NULL, NULL);
	tu_append(b, "x", "medium", NULL, NULL, NULL);
	raw_sql(dir, "UPDATE events SET state = 1, server_id = 'event/x' WHERE seq IN (1, 2);"
		     "UPDATE events SET state = 2 WHERE seq IN (3, 4);");
	describe(b, d);
	assert_string_equal(d, "ssddlmhclm");

	/* full: each new event evicts sent first, oldest first */
	tu_append(b, "x", "high", NULL, NULL, NULL);
	describe(b, d);
	assert_string_equal(d, "sddlmhclmh");
	tu_append(b, "x", "high", NULL, NULL, NULL);
	describe(b, d);
	assert_string_equal(d, "ddlmhclmhh");
	assert_int_equal(nbe_buffer_stats(b, &st, &err), 0);
	assert_int_equal(st.dropped, 0); /* sent ones are delivered, not lost */

	/* then dead (lost: reported); the report needs room too, under the
	 * same cap: both dead ones go, the report follows the new event */
	tu_append(b, "x", "high", NULL, NULL, NULL);
	describe(b, d);
	assert_string_equal(d, "lmhclmhhhR");
	assert_int_equal(nbe_buffer_stats(b, &st, &err), 0);
	assert_int_equal(st.dropped, 2);
	/* then the lowest severity present, oldest first */
	tu_append(b, "x", "high", NULL, NULL, NULL);
	describe(b, d);
	assert_string_equal(d, "mhclmhhhRh");
	tu_append(b, "x", "high", NULL, NULL, NULL);
	describe(b, d);
	assert_string_equal(d, "mhcmhhhRhh");
	tu_append(b, "x", "high", NULL, NULL, NULL);
	tu_append(b, "x", "high", NULL, NULL, NULL);
	describe(b, d);
	assert_string_equal(d, "hchhhRhhhh");
	tu_append(b, "x", "medium", NULL, NULL, NULL); /* evicts the oldest high */
	describe(b, d);
	assert_string_equal(d, "chhhRhhhhm");

	/* one drop report, coalesced */
	assert_int_equal(nbe_buffer_stats(b, &st, &err), 0);
	assert_int_equal(st.dropped, 7);
	assert_int_equal(st.pending, 10);
	nbe_buffer_close(b);
}

static int find_report(const struct nbe_event *ev, void *userdata)
{
	struct nbe_event *out = userdata;

	if (strcmp(ev->name, NBE_EVENT_DROPPED) != 0)
		return 0;
	nbe_event_clear(out);
	*out = *ev;
	out->details = nbe_strdup(ev->details);
	out->message = NULL;
	out->job = NULL;
	out->parent = NULL;
	out->links = NULL;
	out->parent_fallback = NULL;
	out->server_id = NULL;
	out->last_error = NULL;
	return 0;
}

static int64_t json_num(const char *json, const char *key)
{
	cJSON *d = cJSON_Parse(json), *it;
	int64_t v;

	assert_non_null(d);
	it = cJSON_GetObjectItem(d, key);
	v = cJSON_IsNumber(it) ? (int64_t)it->valuedouble : 0;
	cJSON_Delete(d);
	return v;
}

static void test_critical_never_evicted(void **state)
{
	const char *dir = *state;
	struct nbe_buffer *b = tu_open(dir, BIG, 10);
	struct nbe_error err = { { 0 } };
	struct nbe_event ev, report = { 0 };
	int reports = 0;
	char d[128];

	for (int i = 0; i < 3; i++)
		tu_append(b, "x", "low", NULL, NULL, NULL);
	tu_append(b, "x", "medium", NULL, NULL, NULL);
	for (int i = 0; i < 9; i++)
		tu_append(b, "x", "critical", NULL, NULL, NULL);
	describe(b, d);
	assert_string_equal(d, "cccccccRcc");
	assert_int_equal(nbe_buffer_foreach(b, NBE_STATE_MASK_ALL, 0, find_report, &report, &err),
			 0);
	assert_int_equal(json_num(report.details, "total"), 4);
	assert_int_equal(json_num(report.details, "low"), 3);
	assert_int_equal(json_num(report.details, "medium"), 1);
	assert_int_equal(json_num(report.details, "high"), 0);
	assert_int_equal(report.severity, NBE_SEV_HIGH);
	nbe_event_clear(&report);
	for (const char *p = d; *p; p++)
		reports += *p == 'R';
	assert_int_equal(reports, 1);

	/* only never-evicted events remain: a clear error, nothing changes */
	tu_event(&ev, "x", "critical", NULL, NULL);
	assert_int_equal(nbe_buffer_append(b, &ev, &err), -ENOBUFS);
	assert_non_null(strstr(err.msg, "never evicted"));
	nbe_event_clear(&ev);
	tu_event(&ev, "x", "low", NULL, NULL);
	assert_int_equal(nbe_buffer_append(b, &ev, &err), -ENOBUFS);
	nbe_event_clear(&ev);
	describe(b, d);
	assert_string_equal(d, "cccccccRcc");

	/* once the report was tried, later drops go into a new one */
	raw_sql(dir, "UPDATE events SET state = 1, server_id = 'event/r' WHERE name = "
		     "'" NBE_EVENT_DROPPED "'");
	tu_append(b, "x", "critical", NULL, NULL, NULL); /* evicts the sent report */
	describe(b, d);
	assert_string_equal(d, "cccccccccc");
	nbe_buffer_close(b);
}

static void test_byte_cap(void **state)
{
	const char *dir = *state;
	const int64_t cap = 256 * 1024;
	struct nbe_buffer *b = tu_open(dir, cap, 1000000);
	struct nbe_error err = { { 0 } };
	struct nbe_buffer_stats st;
	char details[1600];
	int64_t max_seen = 0;

	snprintf(details, sizeof(details), "{\"pad\":\"%01500d\"}", 7);
	for (int i = 0; i < 1500; i++) {
		struct nbe_event_input in = { .name = "flood",
					      .severity = i % 3 == 0 ? "medium" : "low",
					      .details_json = details };
		struct nbe_event ev = { 0 };

		assert_int_equal(
			nbe_event_init_capture(&ev, &in, 1772360142123, 1, TU_BOOT_ID, true, &err),
			0);
		if (nbe_buffer_append(b, &ev, &err) != 0)
			fail_msg("append %d: %s", i, err.msg);
		nbe_event_clear(&ev);
		if (i % 100 == 99) {
			int64_t total;
			assert_int_equal(nbe_buffer_checkpoint(b, &err), 0);
			total = file_bytes(dir, "") + file_bytes(dir, "-wal");
			if (total > max_seen)
				max_seen = total;
			if (total > cap)
				fail_msg("after %d events: %lld bytes > cap %lld", i + 1,
					 (long long)total, (long long)cap);
		}
	}
	assert_int_equal(nbe_buffer_stats(b, &st, &err), 0);
	assert_true(st.dropped > 1000);
	assert_true(st.pending > 50); /* the cap is used, not wasted */
	/* at least 60% of the cap holds events */
	assert_true(max_seen > cap * 6 / 10);
	nbe_buffer_close(b);
	/* reopening a full buffer keeps it within the cap */
	b = tu_open(dir, cap, 1000000);
	assert_int_equal(nbe_buffer_checkpoint(b, &err), 0);
	assert_true(file_bytes(dir, "") + file_bytes(dir, "-wal") <= cap);
	assert_int_equal(nbe_buffer_integrity_check(b, &err), 0);
	nbe_buffer_close(b);
}

static void write_garbage(const char *path, size_t n, int seed)
{
	unsigned char *buf = malloc(n);
	int fd;

	srand((unsigned)seed);
	for (size_t i = 0; i < n; i++)
		buf[i] = (unsigned char)rand();
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0640);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, buf, n), (ssize_t)n);
	close(fd);
	free(buf);
}

static int count_corrupt_files(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	int n = 0;

	assert_non_null(d);
	while ((e = readdir(d)) != NULL) {
		const char *p = e->d_name;
		if (strncmp(p, "events.db.corrupt-", 18) != 0)
			continue;
		p += 18;
		if (*p && strspn(p, "0123456789") == strlen(p))
			n++;
	}
	closedir(d);
	return n;
}

static int find_reset(const struct nbe_event *ev, void *userdata)
{
	struct nbe_event *out = userdata;

	if (strcmp(ev->name, NBE_EVENT_BUFFER_RESET) != 0)
		return 0;
	memcpy(out->name, ev->name, sizeof(out->name));
	out->severity = ev->severity;
	nbe_free(out->details);
	out->details = nbe_strdup(ev->details);
	return 0;
}

static void open_expect_reset(const char *dir, bool full_check, int64_t *ret_salvaged)
{
	struct nbe_buffer_opts o = { 0 };
	struct nbe_buffer_open_info info = { 0 };
	struct nbe_error err = { { 0 } };
	struct nbe_buffer *b = NULL;
	char path[4200], *boot = tu_boot_id_file(dir, TU_BOOT_ID);
	struct nbe_event report = { 0 };
	int r;

	snprintf(path, sizeof(path), "%s/events.db", dir);
	o.path = path;
	o.max_bytes = BIG;
	o.max_events = 100000;
	o.busy_timeout_ms = 1000;
	o.full_check = full_check;
	o.boot_id_file = boot;
	r = nbe_buffer_open(&o, &b, &info, &err);
	free(boot);
	if (r != 0)
		fail_msg("open: %s", err.msg);
	assert_true(info.reset);
	assert_non_null(strstr(info.quarantined, "events.db.corrupt-"));
	assert_true(info.reason[0] != '\0');
	assert_int_equal(access(info.quarantined, F_OK), 0); /* kept, never deleted */
	assert_int_equal(nbe_buffer_integrity_check(b, &err), 0);
	/* the reset is reported by one event, with the salvage count */
	assert_int_equal(nbe_buffer_foreach(b, NBE_STATE_MASK_ALL, 0, find_reset, &report, &err),
			 0);
	assert_string_equal(report.name, NBE_EVENT_BUFFER_RESET);
	assert_int_equal(report.severity, NBE_SEV_HIGH);
	assert_int_equal(json_num(report.details, "salvaged"), info.salvaged);
	nbe_event_clear(&report);
	*ret_salvaged = info.salvaged;
	nbe_buffer_close(b);
}

static void test_quarantine_garbage(void **state)
{
	const char *dir = *state;
	char path[4200];
	int64_t salvaged;
	struct nbe_buffer *b;

	snprintf(path, sizeof(path), "%s/events.db", dir);
	write_garbage(path, 64 * 1024, 1);
	open_expect_reset(dir, true, &salvaged);
	assert_int_equal(salvaged, 0);
	assert_int_equal(count_corrupt_files(dir), 1);
	/* the fresh buffer is fine afterwards: no second reset */
	b = tu_open(dir, BIG, 1000);
	tu_append(b, "x", NULL, NULL, NULL, NULL);
	nbe_buffer_close(b);
	assert_int_equal(count_corrupt_files(dir), 1);

	/* the cheap check of record's open path catches garbage too (with no
	 * WAL left that would still hold the real pages) */
	snprintf(path, sizeof(path), "%s/events.db-wal", dir);
	unlink(path);
	snprintf(path, sizeof(path), "%s/events.db-shm", dir);
	unlink(path);
	snprintf(path, sizeof(path), "%s/events.db", dir);
	write_garbage(path, 8192, 2);
	open_expect_reset(dir, false, &salvaged);
	assert_int_equal(count_corrupt_files(dir) >= 1, 1);
}

static void test_quarantine_truncated(void **state)
{
	const char *dir = *state;
	struct nbe_error err = { { 0 } };
	struct nbe_buffer *b = tu_open(dir, BIG, 100000);
	char path[4200], details[600];
	int64_t size, salvaged;
	sqlite3 *db;

	snprintf(details, sizeof(details), "{\"pad\":\"%0500d\"}", 1);
	for (int i = 0; i < 400; i++) {
		struct nbe_event_input in = { .name = "keep", .details_json = details };
		struct nbe_event ev = { 0 };
		assert_int_equal(
			nbe_event_init_capture(&ev, &in, 1772360142123, 1, TU_BOOT_ID, true, &err),
			0);
		assert_int_equal(nbe_buffer_append(b, &ev, &err), 0);
		nbe_event_clear(&ev);
	}
	assert_int_equal(nbe_buffer_checkpoint(b, &err), 0);
	nbe_buffer_close(b);
	/* fold the WAL in and remove it, as a clean shutdown would */
	snprintf(path, sizeof(path), "%s/events.db", dir);
	assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
	sqlite3_exec(db, "PRAGMA wal_checkpoint(TRUNCATE)", NULL, NULL, NULL);
	sqlite3_close(db);
	size = file_bytes(dir, "");
	assert_int_equal(truncate(path, (off_t)(size / 2)), 0);

	open_expect_reset(dir, false, &salvaged);
	assert_true(salvaged > 50);
	assert_true(salvaged < 400);
}

static void test_foreign_and_newer(void **state)
{
	const char *dir = *state;
	struct nbe_buffer_opts o = { 0 };
	struct nbe_error err = { { 0 } };
	struct nbe_buffer *b = NULL;
	char path[4200], *boot = tu_boot_id_file(dir, TU_BOOT_ID);
	int64_t salvaged;

	/* a file of a newer agent: refused, untouched */
	{
		char sql[128];
		snprintf(
			sql, sizeof(sql),
			"CREATE TABLE t (x); PRAGMA application_id = %d; PRAGMA user_version = 99;",
			NBE_BUFFER_APPLICATION_ID);
		raw_sql(dir, sql);
	}
	snprintf(path, sizeof(path), "%s/events.db", dir);
	o.path = path;
	o.max_bytes = BIG;
	o.max_events = 1000;
	o.full_check = true;
	o.boot_id_file = boot;
	assert_int_equal(nbe_buffer_open(&o, &b, NULL, &err), -EPROTO);
	assert_non_null(strstr(err.msg, "newer agent"));
	assert_null(b);
	assert_int_equal(count_corrupt_files(dir), 0);
	free(boot);

	/* another program's SQLite file in our place: quarantined */
	unlink(path);
	raw_sql(dir, "CREATE TABLE other (x); INSERT INTO other VALUES (1);");
	open_expect_reset(dir, true, &salvaged);
	assert_int_equal(salvaged, 0);
	assert_int_equal(count_corrupt_files(dir), 1);
}

static void test_migration_from_empty(void **state)
{
	const char *dir = *state;
	struct nbe_buffer *b;
	char path[4200];
	int fd;

	/* an empty file (e.g. created by a package script) is a new buffer */
	snprintf(path, sizeof(path), "%s/events.db", dir);
	fd = open(path, O_WRONLY | O_CREAT, 0640);
	close(fd);
	b = tu_open(dir, BIG, 1000);
	tu_append(b, "x", NULL, NULL, NULL, NULL);
	nbe_buffer_close(b);
	assert_int_equal(count_corrupt_files(dir), 0);
}

static void test_corruption_on_append(void **state)
{
	const char *dir = *state;
	struct nbe_buffer_opts o = { 0 };
	struct nbe_error err = { { 0 } };
	struct nbe_buffer *b = tu_open(dir, BIG, 100000);
	char path[4200], *boot;
	struct nbe_event ev;
	unsigned char junk[4096];
	sqlite3 *db;
	int fd;

	for (int i = 0; i < 300; i++)
		tu_append(b, "keep", NULL, JOB, NULL, NULL);
	nbe_buffer_close(b);
	snprintf(path, sizeof(path), "%s/events.db", dir);
	assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
	sqlite3_exec(db, "PRAGMA wal_checkpoint(TRUNCATE)", NULL, NULL, NULL);
	sqlite3_close(db);
	/* garble pages 3-12: the roots of the tables and indexes (page 1 keeps
	 * the header valid, page 2 is auto_vacuum's pointer map) */
	memset(junk, 0xA5, sizeof(junk));
	fd = open(path, O_WRONLY);
	for (int pg = 3; pg <= 12; pg++)
		assert_int_equal(pwrite(fd, junk, sizeof(junk), (off_t)(pg - 1) * 4096),
				 (ssize_t)sizeof(junk));
	close(fd);

	/* record's path: no quick_check at open, the append itself finds it */
	boot = tu_boot_id_file(dir, TU_BOOT_ID);
	o.path = path;
	o.max_bytes = BIG;
	o.max_events = 100000;
	o.full_check = false;
	o.boot_id_file = boot;
	assert_int_equal(nbe_buffer_open(&o, &b, NULL, &err), 0);
	tu_event(&ev, "nuvlabox.reboot.completed", NULL, JOB, NULL);
	if (nbe_buffer_append(b, &ev, &err) != 0)
		fail_msg("append on a corrupt buffer: %s", err.msg);
	assert_true(ev.seq > 0);
	nbe_buffer_close(b);
	assert_int_equal(count_corrupt_files(dir), 1);
	/* the event is in the fresh buffer */
	b = tu_open(dir, BIG, 100000);
	{
		struct nbe_event got;
		get_ok(b, ev.id, &got);
		nbe_event_clear(&got);
	}
	assert_int_equal(nbe_buffer_integrity_check(b, &err), 0);
	nbe_event_clear(&ev);
	nbe_buffer_close(b);
	free(boot);
}

/* A file as schema version 1 wrote it opens as version 2 with its events. */
static void test_migration_v1_to_v2(void **state)
{
	const char *dir = *state;
	struct nbe_error err = { { 0 } };
	struct nbe_buffer *b;
	struct nbe_event ev;
	char sql[4096];
	int64_t v;

	snprintf(
		sql, sizeof(sql),
		"PRAGMA auto_vacuum = INCREMENTAL; PRAGMA journal_mode = WAL;"
		"CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL "
		"UNIQUE, name TEXT NOT NULL, severity INTEGER NOT NULL, phase INTEGER NOT NULL, "
		"message TEXT, details TEXT NOT NULL, job TEXT, parent TEXT, links TEXT, wall_ms "
		"INTEGER NOT NULL, boottime_ms INTEGER NOT NULL, boot_id TEXT NOT NULL, "
		"clock_synced INTEGER NOT NULL, parent_seq INTEGER, parent_fallback TEXT, state "
		"INTEGER NOT NULL DEFAULT 0, server_id TEXT, attempts INTEGER NOT NULL DEFAULT 0, "
		"next_attempt_ms INTEGER NOT NULL DEFAULT 0, last_error TEXT, in_doubt INTEGER NOT "
		"NULL DEFAULT 0);"
		"CREATE INDEX events_state ON events (state, severity, seq);"
		"CREATE INDEX events_name ON events (name, job, seq);"
		"CREATE INDEX events_parent ON events (parent_seq) WHERE parent_seq IS NOT NULL;"
		"CREATE INDEX events_server_id ON events (server_id) WHERE server_id IS NOT NULL;"
		"CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;"
		"CREATE TABLE counts (state INTEGER PRIMARY KEY, n INTEGER NOT NULL);"
		"INSERT INTO counts VALUES (0, 1), (1, 0), (2, 0);"
		"INSERT INTO events (id, name, severity, phase, details, wall_ms, boottime_ms, "
		"boot_id, clock_synced) VALUES ('5e1d7a4c-0c1b-4d43-9a8b-6f3e7d8a1b22', "
		"'nuvlabox.reboot', 1, 1, '{}', 1772360142123, 5, '%s', 1);"
		"PRAGMA application_id = %d; PRAGMA user_version = 1;",
		TU_BOOT_ID, NBE_BUFFER_APPLICATION_ID);
	raw_sql(dir, sql);
	b = tu_open(dir, BIG, 1000);
	assert_int_equal(nbe_buffer_setting(b, "user_version", &v, &err), 0);
	assert_int_equal(v, 2);
	get_ok(b, "5e1d7a4c-0c1b-4d43-9a8b-6f3e7d8a1b22", &ev);
	assert_string_equal(ev.name, "nuvlabox.reboot");
	assert_null(ev.wire);
	nbe_event_clear(&ev);
	tu_append(b, "x", NULL, NULL, NULL, NULL);
	assert_int_equal(count_corrupt_files(dir), 0);
	nbe_buffer_close(b);
}

static void test_upload_states(void **state)
{
	const char *dir = *state;
	struct nbe_buffer *b = tu_open(dir, BIG, 1000);
	struct nbe_error err = { { 0 } };
	struct nbe_event evs[8] = { 0 }, ev;
	struct nbe_buffer_stats st;
	int64_t s[6], mark, n;
	size_t got;

	for (int i = 0; i < 6; i++)
		s[i] = tu_append(b, "x", NULL, NULL, NULL, NULL);
	assert_int_equal(nbe_buffer_pending(b, 0, 4, evs, &got, &err), 0);
	assert_int_equal(got, 4);
	assert_int_equal(evs[0].seq, s[0]);
	assert_int_equal(evs[3].seq, s[3]);
	for (size_t i = 0; i < got; i++)
		nbe_event_clear(&evs[i]);
	assert_int_equal(nbe_buffer_pending(b, s[3], 8, evs, &got, &err), 0);
	assert_int_equal(got, 2);
	for (size_t i = 0; i < got; i++)
		nbe_event_clear(&evs[i]);

	/* sent: server id and the posted body kept */
	{
		const struct nbe_ack acks[] = { { s[0], "event/a", "{\"name\":\"x\"}" },
						{ s[1], "event/b", NULL } };
		assert_int_equal(nbe_buffer_mark_sent(b, acks, 2, &err), 0);
	}
	get_ok(b, "event/a", &ev);
	assert_int_equal(ev.state, NBE_STATE_SENT);
	assert_int_equal(ev.attempts, 1);
	assert_string_equal(ev.wire, "{\"name\":\"x\"}");
	nbe_event_clear(&ev);

	/* dead with the server's reason; retry with in-doubt and next time */
	assert_int_equal(nbe_buffer_mark_dead(b, s[2], "400: bad", &err), 0);
	assert_int_equal(nbe_buffer_mark_retry(b, s[3], true, 12345, "timeout", NULL, &err), 0);
	get_ok(b, "4", &ev);
	assert_true(ev.in_doubt);
	assert_int_equal(ev.next_attempt_ms, 12345);
	assert_string_equal(ev.last_error, "timeout");
	nbe_event_clear(&ev);
	assert_int_equal(nbe_buffer_stats(b, &st, &err), 0);
	assert_int_equal(st.sent, 2);
	assert_int_equal(st.dead, 1);
	assert_int_equal(st.pending, 3);

	/* retry-dead by reference and all; a not-dead reference is refused */
	{
		const char *refs[] = { "5" };
		assert_int_equal(nbe_buffer_retry_dead(b, refs, 1, &n, &err), -ENOENT);
		assert_non_null(strstr(err.msg, "not dead"));
	}
	assert_int_equal(nbe_buffer_retry_dead(b, NULL, 0, &n, &err), 0);
	assert_int_equal(n, 1);
	get_ok(b, "3", &ev);
	assert_int_equal(ev.state, NBE_STATE_PENDING);
	assert_string_equal(ev.last_error, "400: bad"); /* the history stays */
	nbe_event_clear(&ev);

	/* the in-flight mark: pending events at or below it become in doubt */
	assert_int_equal(nbe_buffer_inflight_mark(b, &mark, &err), 0);
	assert_int_equal(mark, 0);
	assert_int_equal(nbe_buffer_set_inflight_mark(b, s[4], &err), 0);
	assert_int_equal(nbe_buffer_recover_inflight(b, 2000, &n, &err), 0);
	assert_int_equal(n, 3); /* s[2], s[3], s[4]; sent ones are not touched */
	get_ok(b, "5", &ev);
	assert_true(ev.in_doubt);
	nbe_event_clear(&ev);
	get_ok(b, "6", &ev);
	assert_false(ev.in_doubt);
	nbe_event_clear(&ev);
	assert_int_equal(nbe_buffer_inflight_mark(b, &mark, &err), 0);
	assert_int_equal(mark, 0);
	nbe_buffer_close(b);
}

static void test_keep_sent(void **state)
{
	const char *dir = *state;
	struct nbe_buffer_opts o = { 0 };
	struct nbe_error err = { { 0 } };
	struct nbe_buffer *b = NULL;
	struct nbe_buffer_stats st;
	char path[4200], *boot = tu_boot_id_file(dir, TU_BOOT_ID), sid[32];

	snprintf(path, sizeof(path), "%s/events.db", dir);
	o.path = path;
	o.max_bytes = BIG;
	o.max_events = 1000;
	o.keep_sent = 3;
	o.boot_id_file = boot;
	assert_int_equal(nbe_buffer_open(&o, &b, NULL, &err), 0);
	for (int i = 0; i < 8; i++) {
		int64_t seq = tu_append(b, "x", NULL, NULL, NULL, NULL);
		struct nbe_ack a = { seq, sid, NULL };
		snprintf(sid, sizeof(sid), "event/s%d", i);
		assert_int_equal(nbe_buffer_mark_sent(b, &a, 1, &err), 0);
	}
	assert_int_equal(nbe_buffer_stats(b, &st, &err), 0);
	assert_int_equal(st.sent, 3);
	{
		struct nbe_event ev = { 0 };
		assert_int_equal(nbe_buffer_get(b, "event/s4", &ev, &err), -ENOENT);
		get_ok(b, "event/s5", &ev);
		nbe_event_clear(&ev);
	}
	nbe_buffer_close(b);

	/* keep 64: pruned in steps of 4, never below 64, never above 68 */
	o.keep_sent = 64;
	assert_int_equal(nbe_buffer_open(&o, &b, NULL, &err), 0);
	bool stepped = false;
	for (int i = 8; i < 200; i++) {
		int64_t seq = tu_append(b, "x", NULL, NULL, NULL, NULL);
		struct nbe_ack a = { seq, sid, NULL };
		snprintf(sid, sizeof(sid), "event/s%d", i);
		assert_int_equal(nbe_buffer_mark_sent(b, &a, 1, &err), 0);
		assert_int_equal(nbe_buffer_stats(b, &st, &err), 0);
		assert_true(st.sent <= 68);
		/* 3 were kept above */
		assert_true(st.sent >= (i - 4 < 64 ? i - 4 : 64));
		stepped = stepped || st.sent > 64;
	}
	assert_true(stepped); /* not pruned at every commit */
	{
		/* the newest 64 are always there; the oldest go first */
		struct nbe_event ev = { 0 };
		get_ok(b, "event/s136", &ev);
		nbe_event_clear(&ev);
		assert_int_equal(nbe_buffer_get(b, "event/s100", &ev, &err), -ENOENT);
	}
	nbe_buffer_close(b);
	free(boot);
}

/* Review findings: children keep a pruned parent's server id; stored bodies
 * stay under the byte cap; a report in flight takes no more drops and
 * in-flight events are not evicted; a replaced file is followed. */
static void test_child_keeps_pruned_parent(void **state)
{
	const char *dir = *state;
	struct nbe_buffer_opts o = { 0 };
	struct nbe_error err = { { 0 } };
	struct nbe_buffer *b = NULL;
	char path[4200], *boot = tu_boot_id_file(dir, TU_BOOT_ID), *href = NULL;
	char child[NBE_UUID_LEN + 1];
	struct nbe_event ev;
	bool wait;
	int64_t p;

	snprintf(path, sizeof(path), "%s/events.db", dir);
	o.path = path;
	o.max_bytes = BIG;
	o.max_events = 1000;
	o.keep_sent = 0; /* a sent parent is pruned at once */
	o.boot_id_file = boot;
	assert_int_equal(nbe_buffer_open(&o, &b, NULL, &err), 0);
	free(boot);
	p = tu_append(b, "nuvlabox.reboot", NULL, JOB, NULL, NULL);
	tu_append(b, "nuvlabox.reboot.completed", NULL, JOB, NULL, child);
	{
		struct nbe_ack a = { p, "event/parent-1", NULL };
		assert_int_equal(nbe_buffer_mark_sent(b, &a, 1, &err), 0);
	}
	assert_int_equal(nbe_buffer_get(b, "event/parent-1", &ev, &err), -ENOENT);
	get_ok(b, child, &ev);
	assert_int_equal(nbe_buffer_resolve_parent(b, &ev, &href, &wait, &err), 0);
	assert_string_equal(href, "event/parent-1");
	nbe_free(href);
	nbe_event_clear(&ev);
	nbe_buffer_close(b);
}

static void test_stored_bodies_stay_under_the_cap(void **state)
{
	const char *dir = *state;
	const int64_t cap = 256 * 1024;
	struct nbe_buffer *b = tu_open(dir, cap, 100000);
	struct nbe_error err = { { 0 } };
	char body[2048];

	memset(body, 'w', sizeof(body) - 1);
	body[sizeof(body) - 1] = '\0';
	for (int i = 0; i < 400; i++) {
		int64_t seq = tu_append(b, "x", NULL, NULL, NULL, NULL);
		char sid[32];
		struct nbe_ack a = { seq, sid, body };
		snprintf(sid, sizeof(sid), "event/s%d", i);
		assert_int_equal(nbe_buffer_mark_sent(b, &a, 1, &err), 0);
	}
	assert_int_equal(nbe_buffer_checkpoint(b, &err), 0);
	assert_true(file_bytes(dir, "") + file_bytes(dir, "-wal") <= cap);
	nbe_buffer_close(b);
}

static int count_reports(const struct nbe_event *ev, void *userdata)
{
	if (strcmp(ev->name, NBE_EVENT_DROPPED) == 0)
		(*(int *)userdata)++;
	return 0;
}

static void test_in_flight_is_spared(void **state)
{
	const char *dir = *state;
	struct nbe_buffer *b = tu_open(dir, BIG, 10);
	struct nbe_error err = { { 0 } };
	struct nbe_event ev;
	int64_t s[10];
	int reports = 0;

	for (int i = 0; i < 10; i++)
		s[i] = tu_append(b, "x", "low", NULL, NULL, NULL);
	/* the uploader has the first five in flight */
	assert_int_equal(nbe_buffer_set_inflight_mark(b, s[4], &err), 0);
	tu_append(b, "x", "low", NULL, NULL, NULL); /* evicts two (one for the report) */
	for (int i = 0; i < 5; i++) {
		char ref[32];
		snprintf(ref, sizeof(ref), "%lld", (long long)s[i]);
		get_ok(b, ref, &ev); /* in flight: spared */
		nbe_event_clear(&ev);
	}
	assert_int_equal(
		nbe_buffer_foreach(b, NBE_STATE_MASK_ALL, 0, count_reports, &reports, &err), 0);
	assert_int_equal(reports, 1);
	/* the report itself goes in flight: later drops need a new one */
	assert_int_equal(nbe_buffer_set_inflight_mark(b, INT64_C(1) << 40, &err), 0);
	assert_int_equal(nbe_buffer_set_inflight_mark(b, s[9] + 10, &err), 0);
	tu_event(&ev, "x", "low", NULL, NULL);
	/* everything is in flight: nothing to evict, a temporary refusal */
	assert_int_equal(nbe_buffer_append(b, &ev, &err), -ENOBUFS);
	assert_non_null(strstr(err.msg, "being uploaded"));
	nbe_event_clear(&ev);
	reports = 0;
	assert_int_equal(
		nbe_buffer_foreach(b, NBE_STATE_MASK_ALL, 0, count_reports, &reports, &err), 0);
	/* no drop was merged into the report in flight */
	assert_int_equal(reports, 1);
	nbe_buffer_close(b);
}

static void test_follow_a_replaced_file(void **state)
{
	const char *dir = *state;
	struct nbe_buffer *b1 = tu_open(dir, BIG, 1000), *b2;
	struct nbe_error err = { { 0 } };
	char path[4200], aside[4300], id[NBE_UUID_LEN + 1];
	struct nbe_event ev;
	bool reopened = true;

	tu_append(b1, "old", NULL, NULL, NULL, NULL);
	assert_int_equal(nbe_buffer_follow(b1, &reopened, &err), 0);
	assert_false(reopened);
	/* another process moves it aside and starts afresh */
	snprintf(path, sizeof(path), "%s/events.db", dir);
	snprintf(aside, sizeof(aside), "%s/events.db.corrupt-1", dir);
	assert_int_equal(rename(path, aside), 0);
	b2 = tu_open(dir, BIG, 1000);
	tu_append(b2, "new", NULL, NULL, NULL, id);
	nbe_buffer_close(b2);
	assert_int_equal(nbe_buffer_follow(b1, &reopened, &err), 0);
	assert_true(reopened);
	get_ok(b1, id, &ev);
	assert_string_equal(ev.name, "new");
	nbe_event_clear(&ev);
	nbe_buffer_close(b1);
}

static void test_purge_and_meta(void **state)
{
	const char *dir = *state;
	struct nbe_buffer *b = tu_open(dir, BIG, 1000);
	struct nbe_error err = { { 0 } };
	struct nbe_buffer_stats st;
	int64_t removed;
	char *v = NULL;

	for (int i = 0; i < 6; i++)
		tu_append(b, "x", NULL, NULL, NULL, NULL);
	raw_sql(dir, "UPDATE events SET state = 1, server_id = 'event/x' WHERE seq IN (1, 2);"
		     "UPDATE events SET state = 2 WHERE seq = 3;");
	assert_int_equal(nbe_buffer_purge(b, false, &removed, &err), 0);
	assert_int_equal(removed, 3);
	assert_int_equal(nbe_buffer_stats(b, &st, &err), 0);
	assert_int_equal(st.pending, 3);
	assert_int_equal(st.sent + st.dead, 0);
	assert_int_equal(nbe_buffer_purge(b, true, &removed, &err), 0);
	assert_int_equal(removed, 3);
	assert_int_equal(nbe_buffer_stats(b, &st, &err), 0);
	assert_int_equal(st.pending, 0);

	assert_int_equal(nbe_buffer_meta_get(b, "owner", &v, &err), 0);
	assert_null(v);
	assert_int_equal(nbe_buffer_meta_set(b, "owner", "user/abc", &err), 0);
	assert_int_equal(nbe_buffer_meta_get(b, "owner", &v, &err), 0);
	assert_string_equal(v, "user/abc");
	nbe_free(v);
	assert_int_equal(nbe_buffer_meta_set(b, "owner", NULL, &err), 0);
	assert_int_equal(nbe_buffer_meta_get(b, "owner", &v, &err), 0);
	assert_null(v);
	nbe_buffer_close(b);
}

static void test_alloc_failures(void **state)
{
	const char *dir = *state;
	struct nbe_buffer *b = tu_open(dir, BIG, 1000);
	struct nbe_error err;
	struct nbe_event ev;
	char start[NBE_UUID_LEN + 1];
	unsigned long total;

	tu_append(b, "nuvlabox.reboot", NULL, JOB, NULL, start);
	nbe_alloc_fail_at(0, 0);
	tu_append(b, "nuvlabox.reboot.completed", NULL, JOB, NULL, NULL);
	total = nbe_alloc_fail_at(0, 0);
	for (unsigned long n = 1; n <= total + 2; n++) {
		int r;
		tu_event(&ev, "nuvlabox.reboot.completed", NULL, JOB, NULL);
		nbe_alloc_fail_at(n, 0);
		r = nbe_buffer_append(b, &ev, &err);
		nbe_alloc_fail_at(0, 0);
		assert_true(r == 0 || r == -ENOMEM);
		if (r == -ENOMEM)
			assert_int_equal(ev.seq, 0);
		nbe_event_clear(&ev);
	}
	assert_int_equal(nbe_buffer_integrity_check(b, &err), 0);
	nbe_buffer_close(b);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_settings, setup, teardown),
		cmocka_unit_test_setup_teardown(test_append_get, setup, teardown),
		cmocka_unit_test_setup_teardown(test_foreach, setup, teardown),
		cmocka_unit_test_setup_teardown(test_linkage, setup, teardown),
		cmocka_unit_test_setup_teardown(test_resolve_parent, setup, teardown),
		cmocka_unit_test_setup_teardown(test_batch_all_or_nothing, setup, teardown),
		cmocka_unit_test_setup_teardown(test_eviction_order, setup, teardown),
		cmocka_unit_test_setup_teardown(test_critical_never_evicted, setup, teardown),
		cmocka_unit_test_setup_teardown(test_byte_cap, setup, teardown),
		cmocka_unit_test_setup_teardown(test_quarantine_garbage, setup, teardown),
		cmocka_unit_test_setup_teardown(test_quarantine_truncated, setup, teardown),
		cmocka_unit_test_setup_teardown(test_foreign_and_newer, setup, teardown),
		cmocka_unit_test_setup_teardown(test_migration_from_empty, setup, teardown),
		cmocka_unit_test_setup_teardown(test_corruption_on_append, setup, teardown),
		cmocka_unit_test_setup_teardown(test_migration_v1_to_v2, setup, teardown),
		cmocka_unit_test_setup_teardown(test_upload_states, setup, teardown),
		cmocka_unit_test_setup_teardown(test_keep_sent, setup, teardown),
		cmocka_unit_test_setup_teardown(test_child_keeps_pruned_parent, setup, teardown),
		cmocka_unit_test_setup_teardown(test_stored_bodies_stay_under_the_cap, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_in_flight_is_spared, setup, teardown),
		cmocka_unit_test_setup_teardown(test_follow_a_replaced_file, setup, teardown),
		cmocka_unit_test_setup_teardown(test_purge_and_meta, setup, teardown),
		cmocka_unit_test_setup_teardown(test_alloc_failures, setup, teardown),
	};

	nbe_json_install_hooks();
	return cmocka_run_group_tests(tests, NULL, NULL);
}
