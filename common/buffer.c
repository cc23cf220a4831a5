#include "buffer.h"

#include "alloc.h"
#include "random.h"
#include "clock.h"
#include "fsutil.h"
#include "json.h"
#include "parse.h"
#include "sysinfo.h"
#include "wire.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

/* Pages reserved on top of a row's own size for index entries and splits. */
#define ROW_OVERHEAD_PAGES 3
/* Bounds of the WAL share of max_bytes. */
#define WAL_RESERVE_MIN (32 * 1024)
#define WAL_RESERVE_MAX (4 * 1024 * 1024)
/* SQLite's page cache per connection, KiB (SQLite's default: 2000). */
#define CACHE_KIB 512
/* How far salvage jumps over unreadable rows before giving up. */
#define SALVAGE_MAX_JUMPS 64

/* The columns every event query returns, in row_to_event() order; @wire is
 * the expression for the wire column (NULL for schema version 1 files). */
#define EVENT_COLS_WITH(wire)                                                                      \
	"seq, id, name, severity, phase, message, details, job, parent, links, wall_ms, "          \
	"boottime_ms, boot_id, clock_synced, parent_seq, parent_fallback, state, server_id, "      \
	"attempts, next_attempt_ms, last_error, in_doubt, " wire ", "                              \
	"(SELECT p.id FROM events p WHERE p.seq = events.parent_seq)"
#define EVENT_COLS EVENT_COLS_WITH("wire")

enum stmt_id {
	ST_BEGIN,
	ST_COMMIT,
	ST_ROLLBACK,
	ST_INSERT,
	ST_BY_ID,
	ST_BY_SEQ,
	ST_BY_SERVER_ID,
	ST_AUTOLINK_JOB,
	ST_AUTOLINK_NOJOB,
	ST_PAGE_COUNT,
	ST_FREELIST_COUNT,
	ST_COUNTS,
	ST_VICTIM_SENT,
	ST_VICTIM_DEAD,
	ST_VICTIM_PENDING,
	ST_DELETE,
	ST_DROPPED_OPEN,
	ST_UPDATE_DETAILS,
	ST_META_GET,
	ST_META_SET,
	ST_META_DEL,
	ST_META_ADD,
	ST_OLDEST_PENDING,
	ST_NEXT_ATTEMPT,
	ST_FOREACH,
	ST_PARENT_STATE,
	ST_PENDING,
	ST_MARK_SENT,
	ST_CHILD_FALLBACK,
	ST_MARK_DEAD,
	ST_MARK_RETRY,
	ST_RETRY_DEAD_ALL,
	ST_RETRY_DEAD_ONE,
	ST_PRUNE_SENT,
	ST_RECOVER,
	ST_CLEAR_DOUBT,
	ST_FIND_OPEN,
	ST_FIND_OPEN_DETAIL,
	ST__MAX,
};

static const char *const stmt_sql[ST__MAX] = {
	[ST_BEGIN] = "BEGIN IMMEDIATE",
	[ST_COMMIT] = "COMMIT",
	[ST_ROLLBACK] = "ROLLBACK",
	[ST_INSERT] = "INSERT INTO events (seq, id, name, severity, phase, message, details, job, "
		      "parent, links, wall_ms, boottime_ms, boot_id, clock_synced, parent_seq, "
		      "parent_fallback, state, server_id, attempts, next_attempt_ms, last_error, "
		      "in_doubt, wire) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, "
		      "?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23)",
	[ST_BY_ID] = "SELECT " EVENT_COLS " FROM events WHERE id = ?1",
	[ST_BY_SEQ] = "SELECT " EVENT_COLS " FROM events WHERE seq = ?1",
	[ST_BY_SERVER_ID] = "SELECT " EVENT_COLS " FROM events WHERE server_id = ?1",
	[ST_AUTOLINK_JOB] = "SELECT " EVENT_COLS " FROM events WHERE name = ?1 AND job = ?2 "
			    "ORDER BY seq DESC LIMIT 1",
	/* without a job: the latest start of that operation in this boot that no
	 * completion or failure claimed yet */
	[ST_AUTOLINK_NOJOB] = "SELECT " EVENT_COLS " FROM events WHERE name = ?1 AND job IS NULL "
			      "AND boot_id = ?2 AND NOT EXISTS (SELECT 1 FROM events c WHERE "
			      "c.parent_seq = events.seq) ORDER BY seq DESC LIMIT 1",
	/* the table-valued forms: PRAGMA statements are re-prepared after writes */
	[ST_PAGE_COUNT] = "SELECT page_count FROM pragma_page_count()",
	[ST_FREELIST_COUNT] = "SELECT freelist_count FROM pragma_freelist_count()",
	[ST_COUNTS] = "SELECT state, n FROM counts",
	[ST_VICTIM_SENT] = "SELECT seq, severity, state FROM events WHERE state = 1 ORDER BY seq "
			   "LIMIT 1",
	[ST_VICTIM_DEAD] = "SELECT seq, severity, state FROM events WHERE state = 2 ORDER BY seq "
			   "LIMIT 1",
	/* pending events the uploader may have in flight (at or below its
	 * mark) are not evicted: they may well be delivered already */
	[ST_VICTIM_PENDING] =
		"SELECT seq, severity, state FROM events WHERE state = 0 AND "
		"severity < 3 AND name <> '" NBE_EVENT_DROPPED "' AND seq > "
		"coalesce((SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'inflight_mark'), 0)"
		" ORDER BY severity, seq LIMIT 1",
	[ST_DELETE] = "DELETE FROM events WHERE seq = ?1",
	/* a report the uploader may be posting (at or below its mark) is closed */
	[ST_DROPPED_OPEN] =
		"SELECT seq, details FROM events WHERE name = '" NBE_EVENT_DROPPED "' "
		"AND state = 0 AND attempts = 0 AND in_doubt = 0 AND seq > "
		"coalesce((SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'inflight_mark'), 0)"
		" ORDER BY seq DESC LIMIT 1",
	[ST_UPDATE_DETAILS] = "UPDATE events SET details = ?2 WHERE seq = ?1",
	[ST_META_GET] = "SELECT value FROM meta WHERE key = ?1",
	[ST_META_SET] = "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO "
			"UPDATE SET value = excluded.value",
	[ST_META_DEL] = "DELETE FROM meta WHERE key = ?1",
	[ST_META_ADD] = "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO "
			"UPDATE SET value = CAST(value AS INTEGER) + excluded.value",
	[ST_OLDEST_PENDING] = "SELECT wall_ms FROM events WHERE state = 0 ORDER BY seq LIMIT 1",
	[ST_NEXT_ATTEMPT] = "SELECT min(next_attempt_ms) FROM events WHERE state = 0",
	[ST_FOREACH] = "SELECT " EVENT_COLS " FROM events WHERE ((1 << state) & ?1) != 0 AND "
		       "seq > ?2 ORDER BY seq LIMIT ?3",
	/* "+state": walk the rowid range, not the state index and a sort of the
	 * whole backlog (12-15 ms per refill at 100k pending, 0.2 ms this way) */
	[ST_PENDING] =
		"SELECT " EVENT_COLS " FROM events WHERE +state = 0 AND seq > ?1 ORDER BY seq "
		"LIMIT ?2",
	[ST_MARK_SENT] = "UPDATE events SET state = 1, server_id = ?2, wire = ?3, in_doubt = 0, "
			 "last_error = NULL, attempts = attempts + 1 WHERE seq = ?1 AND state = 0",
	/* its children link to it by server id even if it is pruned first */
	[ST_CHILD_FALLBACK] = "UPDATE events SET parent_fallback = ?2 WHERE parent_seq = ?1 AND "
			      "state = 0",
	[ST_MARK_DEAD] = "UPDATE events SET state = 2, last_error = ?2, in_doubt = 0, attempts = "
			 "attempts + 1 WHERE seq = ?1 AND state = 0",
	[ST_MARK_RETRY] =
		"UPDATE events SET attempts = attempts + 1, last_error = ?2, in_doubt = ?3, "
		"next_attempt_ms = ?4 WHERE seq = ?1 AND state = 0",
	[ST_RETRY_DEAD_ALL] =
		"UPDATE events SET state = 0, in_doubt = 0, next_attempt_ms = 0 WHERE "
		"state = 2",
	[ST_RETRY_DEAD_ONE] =
		"UPDATE events SET state = 0, in_doubt = 0, next_attempt_ms = 0 WHERE "
		"seq = ?1 AND state = 2",
	/* keep the newest keep_sent sent events */
	[ST_PRUNE_SENT] = "DELETE FROM events WHERE state = 1 AND seq <= (SELECT seq FROM events "
			  "WHERE state = 1 ORDER BY seq DESC LIMIT 1 OFFSET ?1)",
	[ST_RECOVER] = "UPDATE events SET in_doubt = 1, next_attempt_ms = ?2 WHERE state = 0 AND "
		       "seq <= ?1",
	[ST_FIND_OPEN] = "SELECT " EVENT_COLS " FROM events WHERE name = ?1 AND boot_id = ?2 AND "
			 "NOT EXISTS (SELECT 1 FROM events c WHERE c.parent_seq = events.seq) "
			 "ORDER BY seq DESC LIMIT 1",
	[ST_FIND_OPEN_DETAIL] = "SELECT " EVENT_COLS " FROM events WHERE name = ?1 AND "
				"json_extract(details, '$.' || ?2) = ?3 AND NOT EXISTS (SELECT 1 "
				"FROM events c WHERE c.parent_seq = events.seq) ORDER BY seq DESC "
				"LIMIT 1",
	[ST_CLEAR_DOUBT] = "UPDATE events SET in_doubt = 0 WHERE seq = ?1 AND state = 0",
	[ST_PARENT_STATE] = "SELECT state, server_id, parent, parent_seq, parent_fallback, job "
			    "FROM events WHERE seq = ?1",
};

/* Schema version 1. Each later version adds one entry to migrations[]. */
static const char schema_v1[] =
	"CREATE TABLE events ("
	" seq INTEGER PRIMARY KEY AUTOINCREMENT,"
	" id TEXT NOT NULL UNIQUE,"
	" name TEXT NOT NULL,"
	" severity INTEGER NOT NULL,"
	" phase INTEGER NOT NULL,"
	" message TEXT,"
	" details TEXT NOT NULL,"
	" job TEXT,"
	" parent TEXT,"
	" links TEXT,"
	" wall_ms INTEGER NOT NULL,"
	" boottime_ms INTEGER NOT NULL,"
	" boot_id TEXT NOT NULL,"
	" clock_synced INTEGER NOT NULL,"
	" parent_seq INTEGER,"
	" parent_fallback TEXT,"
	" state INTEGER NOT NULL DEFAULT 0,"
	" server_id TEXT,"
	" attempts INTEGER NOT NULL DEFAULT 0,"
	" next_attempt_ms INTEGER NOT NULL DEFAULT 0,"
	" last_error TEXT,"
	" in_doubt INTEGER NOT NULL DEFAULT 0);"
	"CREATE INDEX events_state ON events (state, severity, seq);"
	"CREATE INDEX events_name ON events (name, job, seq);"
	"CREATE INDEX events_parent ON events (parent_seq) WHERE parent_seq IS NOT NULL;"
	"CREATE INDEX events_server_id ON events (server_id) WHERE server_id IS NOT NULL;"
	"CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;"
	/* per-state counts kept by triggers, so caps and status are O(1) */
	"CREATE TABLE counts (state INTEGER PRIMARY KEY, n INTEGER NOT NULL);"
	"INSERT INTO counts VALUES (0, 0), (1, 0), (2, 0);"
	"CREATE TRIGGER events_ai AFTER INSERT ON events BEGIN"
	" UPDATE counts SET n = n + 1 WHERE state = NEW.state; END;"
	"CREATE TRIGGER events_ad AFTER DELETE ON events BEGIN"
	" UPDATE counts SET n = n - 1 WHERE state = OLD.state; END;"
	"CREATE TRIGGER events_au AFTER UPDATE OF state ON events WHEN OLD.state <> NEW.state BEGIN"
	" UPDATE counts SET n = n - 1 WHERE state = OLD.state;"
	" UPDATE counts SET n = n + 1 WHERE state = NEW.state; END;";

/* Version 2: the body as posted, so `show` prints what the server got. */
static const char schema_v2[] = "ALTER TABLE events ADD COLUMN wire TEXT;";

static const char *const migrations[] = {
	schema_v1, /* 0 -> 1 */
	schema_v2, /* 1 -> 2 */
};

struct nbe_buffer {
	sqlite3 *db;
	sqlite3_stmt *st[ST__MAX];
	char *path;
	char *wal_path;
	struct nbe_buffer_opts opts;
	char *boot_id_file;
	char *timesync_file;
	int64_t page_size;
	int64_t budget_pages; /* database pages allowed, WAL reserve excluded */
	int64_t wal_reserve;  /* the WAL's share of max_bytes */
	int64_t recover_delay_ms;
	dev_t dev; /* the file open now, to notice it being replaced */
	ino_t ino;
};

/* Evictions made while admitting events, by what was evicted. */
struct drop_count {
	int64_t pending[4]; /* by severity */
	int64_t dead;
	int64_t sent;
	bool checked_report; /* looked for a report that can take more counts */
	bool need_report;    /* none: room must be made for a new one too */
};

static int64_t file_size_of(const char *path)
{
	struct stat st;

	return stat(path, &st) == 0 ? (int64_t)st.st_size : 0;
}

/* Maps an SQLite result code to a negative errno. */
static int sqlite_errno(sqlite3 *db, int rc)
{
	switch (rc & 0xff) {
	case SQLITE_OK:
	case SQLITE_DONE:
	case SQLITE_ROW:
		return 0;
	case SQLITE_NOMEM:
		return -ENOMEM;
	case SQLITE_FULL:
		return -ENOSPC;
	case SQLITE_BUSY:
	case SQLITE_LOCKED:
		return -EBUSY;
	case SQLITE_CORRUPT:
	case SQLITE_NOTADB:
		return -EBADMSG;
	case SQLITE_READONLY:
		return -EROFS;
	case SQLITE_PERM:
	case SQLITE_AUTH:
		return -EACCES;
	case SQLITE_CANTOPEN: {
		int e = db ? sqlite3_system_errno(db) : 0;
		return e > 0 ? -e : -EACCES;
	}
	case SQLITE_CONSTRAINT:
		return -EEXIST;
	case SQLITE_IOERR: {
		int e = db ? sqlite3_system_errno(db) : 0;
		if (e == ENOSPC || e == EDQUOT)
			return -ENOSPC;
		return -EIO;
	}
	default:
		return -EIO;
	}
}

static int db_error(struct nbe_buffer *b, int rc, struct nbe_error *err, const char *what)
{
	int r = sqlite_errno(b->db, rc);
	int e = b->db ? sqlite3_system_errno(b->db) : 0;

	/* "disk I/O error" or "unable to open database file" alone does not
	 * say that the disk is full: add the system's reason */
	if (e > 0 && ((rc & 0xff) == SQLITE_IOERR || (rc & 0xff) == SQLITE_CANTOPEN))
		return nbe_error_set(err, r ? r : -EIO, "%s: %s: %s (%s)", b->path, what,
				     sqlite3_errmsg(b->db), strerror(e));
	return nbe_error_set(err, r ? r : -EIO, "%s: %s: %s", b->path, what,
			     b->db ? sqlite3_errmsg(b->db) : sqlite3_errstr(rc));
}

static int exec(struct nbe_buffer *b, const char *sql, struct nbe_error *err)
{
	int rc = sqlite3_exec(b->db, sql, NULL, NULL, NULL);

	return rc == SQLITE_OK ? 0 : db_error(b, rc, err, sql);
}

/* Runs a query that returns one integer. */
static int query_int(struct nbe_buffer *b, const char *sql, int64_t *ret, struct nbe_error *err)
{
	sqlite3_stmt *st;
	int rc = sqlite3_prepare_v2(b->db, sql, -1, &st, NULL);

	if (rc != SQLITE_OK)
		return db_error(b, rc, err, sql);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW || rc == SQLITE_DONE) {
		*ret = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
		sqlite3_finalize(st);
		return 0;
	}
	sqlite3_finalize(st);
	return db_error(b, rc, err, sql);
}

static int step_int(struct nbe_buffer *b, sqlite3_stmt *st, int64_t *ret, struct nbe_error *err)
{
	int rc = sqlite3_step(st);

	*ret = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
	sqlite3_reset(st);
	if (rc != SQLITE_ROW && rc != SQLITE_DONE)
		return db_error(b, rc, err, "query");
	return 0;
}

/* Steps a write statement to completion and resets it. */
static int step_done(struct nbe_buffer *b, sqlite3_stmt *st, struct nbe_error *err,
		     const char *what)
{
	int rc = sqlite3_step(st);

	sqlite3_reset(st);
	sqlite3_clear_bindings(st);
	if (rc != SQLITE_DONE)
		return db_error(b, rc, err, what);
	return 0;
}

static void bind_text_or_null(sqlite3_stmt *st, int i, const char *s)
{
	if (s)
		sqlite3_bind_text(st, i, s, -1, SQLITE_STATIC);
	else
		sqlite3_bind_null(st, i);
}

static char *column_strdup(sqlite3_stmt *st, int i, bool *oom)
{
	const unsigned char *t = sqlite3_column_text(st, i);
	char *s;

	if (!t)
		return NULL;
	s = nbe_strdup((const char *)t);
	if (!s)
		*oom = true;
	return s;
}

static void column_copy(sqlite3_stmt *st, int i, char *dst, size_t size)
{
	const unsigned char *t = sqlite3_column_text(st, i);

	snprintf(dst, size, "%s", t ? (const char *)t : "");
}

/* Reads one row of EVENT_COLS into @ev (zeroed). Returns 0 or -ENOMEM. */
static int row_to_event(sqlite3_stmt *st, struct nbe_event *ev)
{
	bool oom = false;

	ev->seq = sqlite3_column_int64(st, 0);
	column_copy(st, 1, ev->id, sizeof(ev->id));
	column_copy(st, 2, ev->name, sizeof(ev->name));
	ev->severity = (enum nbe_severity)(sqlite3_column_int(st, 3) & 3);
	ev->phase = (enum nbe_phase)(sqlite3_column_int(st, 4) & 3);
	ev->message = column_strdup(st, 5, &oom);
	ev->details = column_strdup(st, 6, &oom);
	ev->job = column_strdup(st, 7, &oom);
	ev->parent = column_strdup(st, 8, &oom);
	ev->links = column_strdup(st, 9, &oom);
	ev->wall_ms = sqlite3_column_int64(st, 10);
	ev->boottime_ms = sqlite3_column_int64(st, 11);
	column_copy(st, 12, ev->boot_id, sizeof(ev->boot_id));
	ev->clock_synced = sqlite3_column_int(st, 13) != 0;
	ev->parent_seq = sqlite3_column_int64(st, 14);
	ev->parent_fallback = column_strdup(st, 15, &oom);
	ev->state = (enum nbe_state)sqlite3_column_int(st, 16);
	if ((unsigned)ev->state > NBE_STATE_DEAD)
		ev->state = NBE_STATE_PENDING;
	ev->server_id = column_strdup(st, 17, &oom);
	ev->attempts = sqlite3_column_int64(st, 18);
	ev->next_attempt_ms = sqlite3_column_int64(st, 19);
	ev->last_error = column_strdup(st, 20, &oom);
	ev->in_doubt = sqlite3_column_int(st, 21) != 0;
	ev->wire = column_strdup(st, 22, &oom);
	column_copy(st, 23, ev->parent_local, sizeof(ev->parent_local));
	if (!ev->details && !oom)
		ev->details = nbe_strdup("{}");
	if (oom || !ev->details) {
		nbe_event_clear(ev);
		return -ENOMEM;
	}
	return 0;
}

static void finalize_all(struct nbe_buffer *b)
{
	for (int i = 0; i < ST__MAX; i++) {
		sqlite3_finalize(b->st[i]);
		b->st[i] = NULL;
	}
}

static int prepare_all(struct nbe_buffer *b, struct nbe_error *err)
{
	for (int i = 0; i < ST__MAX; i++) {
		int rc = sqlite3_prepare_v3(b->db, stmt_sql[i], -1, SQLITE_PREPARE_PERSISTENT,
					    &b->st[i], NULL);
		if (rc != SQLITE_OK)
			return db_error(b, rc, err, "preparing statements");
	}
	return 0;
}

static void close_db(struct nbe_buffer *b)
{
	finalize_all(b);
	if (b->db) {
		sqlite3_close_v2(b->db);
		b->db = NULL;
	}
}

static int header_check(const char *path, const char *wal_path, struct nbe_error *err);

/* Creates the database file with the agent's mode before SQLite touches it,
 * so -wal and -shm (which SQLite creates with the main file's mode and owner)
 * follow. Returns 1 when created, 0 when it existed, or -errno. */
static int create_db_file(const char *path)
{
	int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0660);
	int r;

	if (fd < 0)
		return errno == EEXIST ? 0 : -errno;
	/* the mode must not depend on the caller's umask; group members record
	 * too; and a file root creates belongs to the state directory's owner */
	r = fchmod(fd, 0660) == 0 ? 0 : -errno;
	if (r == 0)
		r = nbe_chown_like_parent(fd, path);
	close(fd);
	if (r < 0) {
		unlink(path);
		return r;
	}
	r = nbe_fsync_parent_dir(path);
	return r < 0 ? r : 1;
}

/* Opens the connection and applies the per-connection settings of DESIGN §9.
 * With @check_header, an existing file's header is checked first. */
static int open_db(struct nbe_buffer *b, bool *ret_created, bool check_header,
		   struct nbe_error *err)
{
	char sql[160];
	int64_t wal_reserve;
	int rc, r;

	r = create_db_file(b->path);
	if (r < 0)
		return nbe_error_set(err, r, "%s: cannot create: %s", b->path, strerror(-r));
	*ret_created = r == 1;
	if (check_header && r == 0) {
		r = header_check(b->path, b->wal_path, err);
		if (r < 0)
			return r;
	}
	rc = sqlite3_open_v2(b->path, &b->db,
			     SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_EXRESCODE,
			     NULL);
	if (rc != SQLITE_OK)
		return db_error(b, rc, err, "cannot open");
	sqlite3_extended_result_codes(b->db, 1);
	{
		struct stat st;
		if (stat(b->path, &st) == 0) {
			b->dev = st.st_dev;
			b->ino = st.st_ino;
		}
	}
	sqlite3_busy_timeout(b->db, (int)b->opts.busy_timeout_ms);
	/* a short-lived producer must not pay for a checkpoint when it closes:
	 * the WAL stays, bounded by wal_autocheckpoint and journal_size_limit */
	sqlite3_db_config(b->db, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, NULL);

	/* the first statement that reads the file: corruption shows up here */
	r = exec(b, "PRAGMA secure_delete = OFF", err);
	if (r < 0)
		return r;
	r = query_int(b, "PRAGMA page_size", &b->page_size, err);
	if (r < 0)
		return r;
	if (b->page_size <= 0)
		b->page_size = 4096;
	wal_reserve = b->opts.max_bytes / 8;
	if (wal_reserve < WAL_RESERVE_MIN)
		wal_reserve = WAL_RESERVE_MIN;
	if (wal_reserve > WAL_RESERVE_MAX)
		wal_reserve = WAL_RESERVE_MAX;
	b->budget_pages = (b->opts.max_bytes - wal_reserve) / b->page_size;
	b->wal_reserve = wal_reserve;

	snprintf(sql, sizeof(sql),
		 "PRAGMA journal_size_limit = %" PRId64 "; PRAGMA wal_autocheckpoint = %" PRId64
		 ";",
		 wal_reserve, wal_reserve / b->page_size / 2);
	r = exec(b, sql, err);
	if (r < 0)
		return r;
	/* SQLite's default page cache is 2 MiB, most of a long-lived holder's
	 * heap; the uploader reads rowid ranges and the kernel caches the file */
	snprintf(sql, sizeof(sql), "PRAGMA cache_size = -%d", CACHE_KIB);
	r = exec(b, sql, err);
	if (r < 0)
		return r;
	return exec(b, "PRAGMA synchronous = FULL", err);
}

/*
 * A cheap stand-in for quick_check on the hot path (record): a file that is
 * not an SQLite database, or shorter than its header says with no WAL that
 * could hold the rest, is corrupt. It reads the header BEFORE SQLite opens
 * the file: closing any descriptor of a file drops every POSIX lock this
 * process holds on it, SQLite's included, and another process could then
 * checkpoint and delete the WAL under us.
 */
static int header_check(const char *path, const char *wal_path, struct nbe_error *err)
{
	static const char magic[16] = "SQLite format 3";
	unsigned char h[100];
	struct stat st;
	int64_t pages, size, page_size;
	ssize_t n;
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);

	if (fd < 0)
		return 0; /* open_db() reports what matters */
	n = pread(fd, h, sizeof(h), 0);
	if (fstat(fd, &st) != 0)
		st.st_size = 0;
	close(fd);
	size = (int64_t)st.st_size;
	if (size == 0)
		return 0; /* new, or created empty: a fresh buffer */
	if (n != (ssize_t)sizeof(h) || memcmp(h, magic, sizeof(magic)) != 0)
		return nbe_error_set(err, -EBADMSG, "%s: not an SQLite database", path);
	page_size = (int64_t)h[16] << 8 | h[17];
	if (page_size == 1)
		page_size = 65536;
	pages = (int64_t)h[28] << 24 | (int64_t)h[29] << 16 | (int64_t)h[30] << 8 | h[31];
	if (page_size < 512 || (page_size & (page_size - 1)) != 0 || size % page_size != 0 ||
	    (pages > 0 && size < pages * page_size && file_size_of(wal_path) == 0))
		return nbe_error_set(err, -EBADMSG,
				     "%s: truncated (%" PRId64 " bytes, header says %" PRId64
				     " pages of %" PRId64 ")",
				     path, size, pages, page_size);
	return 0;
}

/*
 * Brings a file to the current schema. A new file gets auto_vacuum (only
 * possible before the first table) and WAL mode. Returns -EPROTO for a file
 * of a newer agent and -EBADMSG for a file that is not ours.
 */
/*
 * Turns WAL on. Two processes creating the buffer at once can meet here
 * both holding a shared lock and both wanting the exclusive one; SQLite
 * then answers SQLITE_BUSY at once, without the busy handler (waiting would
 * deadlock). The one that lost drops its lock with the failed statement:
 * try again after a short random pause, within busy_timeout.
 */
static int set_wal(struct nbe_buffer *b, struct nbe_error *err)
{
	int64_t waited = 0;
	int r;

	for (;;) {
		r = exec(b, "PRAGMA journal_mode = WAL", err);
		if (r != -EBUSY || waited >= b->opts.busy_timeout_ms)
			return r;
		{
			int64_t ms = 5 + (int64_t)nbe_random_below(20);
			struct timespec ts = { 0, (long)ms * 1000000L };
			nanosleep(&ts, NULL);
			waited += ms;
		}
	}
}

static int migrate(struct nbe_buffer *b, struct nbe_error *err)
{
	int64_t version = 0, app_id = 0, tables = 0;
	char sql[96];
	int r;

	r = query_int(b, "PRAGMA application_id", &app_id, err);
	if (r < 0)
		return r;
	r = query_int(b, "PRAGMA user_version", &version, err);
	if (r < 0)
		return r;
	r = query_int(b, "SELECT count(*) FROM sqlite_schema", &tables, err);
	if (r < 0)
		return r;
	if (app_id != NBE_BUFFER_APPLICATION_ID && (app_id != 0 || tables != 0))
		return nbe_error_set(err, -EBADMSG,
				     "%s: not an event buffer (application_id %#" PRIx64 ")",
				     b->path, (uint64_t)app_id);
	if (version > NBE_BUFFER_SCHEMA_VERSION)
		return nbe_error_set(err, -EPROTO,
				     "%s: written by a newer agent (schema %" PRId64
				     ", this agent knows up to %d); refusing to touch it",
				     b->path, version, NBE_BUFFER_SCHEMA_VERSION);
	if (version == NBE_BUFFER_SCHEMA_VERSION) {
		/* WAL is persistent, but a file restored from elsewhere may lack it */
		return set_wal(b, err);
	}
	if (version == 0 && tables == 0) {
		r = exec(b, "PRAGMA auto_vacuum = INCREMENTAL", err);
		if (r < 0)
			return r;
	}
	r = set_wal(b, err);
	if (r < 0)
		return r;
	r = exec(b, "BEGIN IMMEDIATE", err);
	if (r < 0)
		return r;
	/* re-read under the write lock: another process may have migrated */
	r = query_int(b, "PRAGMA user_version", &version, err);
	if (r < 0)
		goto err_rollback;
	for (; version < NBE_BUFFER_SCHEMA_VERSION; version++) {
		r = exec(b, migrations[version], err);
		if (r < 0)
			goto err_rollback;
	}
	snprintf(sql, sizeof(sql), "PRAGMA application_id = %d; PRAGMA user_version = %d;",
		 NBE_BUFFER_APPLICATION_ID, NBE_BUFFER_SCHEMA_VERSION);
	r = exec(b, sql, err);
	if (r < 0)
		goto err_rollback;
	return exec(b, "COMMIT", err);

err_rollback:
	sqlite3_exec(b->db, "ROLLBACK", NULL, NULL, NULL);
	return r;
}

static int quick_check(struct nbe_buffer *b, struct nbe_error *err)
{
	sqlite3_stmt *st;
	int rc = sqlite3_prepare_v2(b->db, "PRAGMA quick_check(1)", -1, &st, NULL);
	int r = 0;

	if (rc != SQLITE_OK)
		return db_error(b, rc, err, "quick_check");
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		const char *res = (const char *)sqlite3_column_text(st, 0);
		if (!res || strcmp(res, "ok") != 0)
			r = nbe_error_set(err, -EBADMSG, "%s: quick_check: %.200s", b->path,
					  res ? res : "no result");
	} else {
		r = db_error(b, rc, err, "quick_check");
	}
	sqlite3_finalize(st);
	return r;
}

/* Builds one of the agent's own events (agent.*). */
static int make_agent_event(struct nbe_buffer *b, const char *name, enum nbe_severity sev,
			    const char *details_json, struct nbe_event *ev, struct nbe_error *err)
{
	struct nbe_event_input in = { .name = name, .details_json = details_json };
	char boot_id[NBE_UUID_LEN + 1];
	int r = nbe_boot_id_read(b->boot_id_file, boot_id, sizeof(boot_id));

	if (r < 0)
		return nbe_error_set(err, r, "%s: cannot read the boot id: %s", b->boot_id_file,
				     strerror(-r));
	r = nbe_event_init_capture(ev, &in, nbe_clock_wall_ms(), nbe_clock_boottime_ms(), boot_id,
				   nbe_clock_synced(b->timesync_file), err);
	if (r < 0)
		return r;
	ev->severity = sev;
	return 0;
}

static int insert_event(struct nbe_buffer *b, const struct nbe_event *ev, bool keep_seq,
			int64_t *ret_seq, struct nbe_error *err)
{
	sqlite3_stmt *st = b->st[ST_INSERT];
	int r;

	if (keep_seq)
		sqlite3_bind_int64(st, 1, ev->seq);
	else
		sqlite3_bind_null(st, 1);
	sqlite3_bind_text(st, 2, ev->id, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 3, ev->name, -1, SQLITE_STATIC);
	sqlite3_bind_int(st, 4, (int)ev->severity);
	sqlite3_bind_int(st, 5, (int)ev->phase);
	bind_text_or_null(st, 6, ev->message);
	sqlite3_bind_text(st, 7, ev->details ? ev->details : "{}", -1, SQLITE_STATIC);
	bind_text_or_null(st, 8, ev->job);
	bind_text_or_null(st, 9, ev->parent);
	bind_text_or_null(st, 10, ev->links);
	sqlite3_bind_int64(st, 11, ev->wall_ms);
	sqlite3_bind_int64(st, 12, ev->boottime_ms);
	sqlite3_bind_text(st, 13, ev->boot_id, -1, SQLITE_STATIC);
	sqlite3_bind_int(st, 14, ev->clock_synced);
	if (ev->parent_seq > 0)
		sqlite3_bind_int64(st, 15, ev->parent_seq);
	else
		sqlite3_bind_null(st, 15);
	bind_text_or_null(st, 16, ev->parent_fallback);
	sqlite3_bind_int(st, 17, (int)ev->state);
	bind_text_or_null(st, 18, ev->server_id);
	sqlite3_bind_int64(st, 19, ev->attempts);
	sqlite3_bind_int64(st, 20, ev->next_attempt_ms);
	bind_text_or_null(st, 21, ev->last_error);
	sqlite3_bind_int(st, 22, ev->in_doubt);
	bind_text_or_null(st, 23, ev->wire);
	r = step_done(b, st, err, "inserting an event");
	if (r < 0)
		return r;
	*ret_seq = sqlite3_last_insert_rowid(b->db);
	return 0;
}

/* The href an event falls back to when its local parent never gets a
 * server id: the parent's own parent. */
static char *fallback_of(const struct nbe_event *p, bool *oom)
{
	const char *f = NULL;
	char *s;

	if (p->parent && !nbe_uuid_valid(p->parent))
		f = p->parent;
	else if (p->parent_seq > 0 && p->parent_fallback)
		f = p->parent_fallback;
	else if (p->job)
		f = p->job;
	if (!f)
		return NULL;
	s = nbe_strdup(f);
	if (!s)
		*oom = true;
	return s;
}

/* Sets ev->parent_seq etc. from an explicit device event id parent or the
 * automatic link of "<op>.completed" / "<op>.failed". */
static int link_parent(struct nbe_buffer *b, struct nbe_event *ev, struct nbe_error *err)
{
	struct nbe_event p = { 0 };
	sqlite3_stmt *st;
	char base[NBE_NAME_MAX + 1];
	bool oom = false;
	int rc, r;

	if (ev->parent && nbe_uuid_valid(ev->parent)) {
		st = b->st[ST_BY_ID];
		sqlite3_bind_text(st, 1, ev->parent, -1, SQLITE_STATIC);
	} else if (!ev->parent &&
		   (ev->phase == NBE_PHASE_COMPLETED || ev->phase == NBE_PHASE_FAILED)) {
		size_t n =
			strlen(ev->name) - (ev->phase == NBE_PHASE_COMPLETED ? strlen(".completed")
									     : strlen(".failed"));
		memcpy(base, ev->name, n);
		base[n] = '\0';
		if (ev->job) {
			st = b->st[ST_AUTOLINK_JOB];
			sqlite3_bind_text(st, 2, ev->job, -1, SQLITE_STATIC);
		} else {
			st = b->st[ST_AUTOLINK_NOJOB];
			sqlite3_bind_text(st, 2, ev->boot_id, -1, SQLITE_STATIC);
		}
		sqlite3_bind_text(st, 1, base, -1, SQLITE_STATIC);
	} else {
		return 0;
	}
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		r = row_to_event(st, &p);
		sqlite3_reset(st);
		sqlite3_clear_bindings(st);
		if (r < 0)
			return nbe_error_set(err, r, "out of memory");
	} else {
		sqlite3_reset(st);
		sqlite3_clear_bindings(st);
		if (rc != SQLITE_DONE)
			return db_error(b, rc, err, "looking up the parent event");
		if (ev->parent)
			return nbe_error_set(err, -ENOENT,
					     "parent %s: no such device event in the buffer",
					     ev->parent);
		return 0; /* no start recorded: the job (if any) is the parent */
	}
	ev->parent_seq = p.seq;
	memcpy(ev->parent_local, p.id, sizeof(ev->parent_local));
	nbe_free(ev->parent_fallback);
	ev->parent_fallback = fallback_of(&p, &oom);
	nbe_event_clear(&p);
	return oom ? nbe_error_set(err, -ENOMEM, "out of memory") : 0;
}

static int read_counts(struct nbe_buffer *b, int64_t counts[3], struct nbe_error *err)
{
	sqlite3_stmt *st = b->st[ST_COUNTS];
	int rc;

	counts[0] = counts[1] = counts[2] = 0;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		int s = sqlite3_column_int(st, 0);
		if (s >= 0 && s < 3)
			counts[s] = sqlite3_column_int64(st, 1);
	}
	sqlite3_reset(st);
	return rc == SQLITE_DONE ? 0 : db_error(b, rc, err, "reading counts");
}

/* Picks the next event to evict: oldest sent, oldest dead, then pending of
 * the lowest severity present, oldest first; never critical, never the
 * drop report. Returns 1 with *ret_seq etc. set, 0 when there is none. */
static int pick_victim(struct nbe_buffer *b, int64_t *ret_seq, int *ret_sev, int *ret_state,
		       struct nbe_error *err)
{
	static const enum stmt_id order[] = { ST_VICTIM_SENT, ST_VICTIM_DEAD, ST_VICTIM_PENDING };

	for (size_t i = 0; i < sizeof(order) / sizeof(order[0]); i++) {
		sqlite3_stmt *st = b->st[order[i]];
		int rc = sqlite3_step(st);

		if (rc == SQLITE_ROW) {
			*ret_seq = sqlite3_column_int64(st, 0);
			*ret_sev = sqlite3_column_int(st, 1) & 3;
			*ret_state = sqlite3_column_int(st, 2);
			sqlite3_reset(st);
			return 1;
		}
		sqlite3_reset(st);
		if (rc != SQLITE_DONE)
			return db_error(b, rc, err, "choosing an event to evict");
	}
	return 0;
}

static int64_t row_bytes(const struct nbe_event *ev)
{
	int64_t n = 256; /* fixed columns, record header, index keys */

	n += (int64_t)strlen(ev->name) * 2 + 3 * NBE_UUID_LEN;
	if (ev->message)
		n += (int64_t)strlen(ev->message);
	if (ev->details)
		n += (int64_t)strlen(ev->details);
	if (ev->job)
		n += (int64_t)strlen(ev->job) * 2;
	if (ev->parent)
		n += (int64_t)strlen(ev->parent);
	if (ev->links)
		n += (int64_t)strlen(ev->links);
	if (ev->parent_fallback)
		n += (int64_t)strlen(ev->parent_fallback);
	return n;
}

/*
 * Evicts until @ev fits under both caps. The measure is SQLite's own page
 * accounting (pages in use = page_count - freelist_count), so the file, whose
 * free pages are reused before it grows, never exceeds the budget.
 */
static int open_report_exists(struct nbe_buffer *b, bool *ret, struct nbe_error *err)
{
	int rc = sqlite3_step(b->st[ST_DROPPED_OPEN]);

	sqlite3_reset(b->st[ST_DROPPED_OPEN]);
	if (rc != SQLITE_ROW && rc != SQLITE_DONE)
		return db_error(b, rc, err, "finding the drop report");
	*ret = rc == SQLITE_ROW;
	return 0;
}

/*
 * Evicts until @ev fits under both caps. The measure is SQLite's own page
 * accounting (pages in use = page_count - freelist_count), so the file, whose
 * free pages are reused before it grows, never exceeds the budget. When the
 * first event that never reached the server is evicted and no drop report
 * can take the count, room is made for a new report as well: the report
 * lives under the same caps as everything else.
 */
static int make_room(struct nbe_buffer *b, const struct nbe_event *ev, struct drop_count *dc,
		     struct nbe_error *err)
{
	int64_t need = row_bytes(ev) / b->page_size + ROW_OVERHEAD_PAGES;

	for (;;) {
		int64_t pages, freelist, counts[3], seq = 0, extra = dc->need_report ? 1 : 0;
		int sev = 0, state = 0, r;

		r = step_int(b, b->st[ST_PAGE_COUNT], &pages, err);
		if (r < 0)
			return r;
		r = step_int(b, b->st[ST_FREELIST_COUNT], &freelist, err);
		if (r < 0)
			return r;
		r = read_counts(b, counts, err);
		if (r < 0)
			return r;
		if (pages - freelist + need + extra * ROW_OVERHEAD_PAGES <= b->budget_pages &&
		    counts[0] + counts[1] + counts[2] + extra < b->opts.max_events)
			return 0;
		r = pick_victim(b, &seq, &sev, &state, err);
		if (r < 0)
			return r;
		if (r == 0)
			return nbe_error_set(
				err, -ENOBUFS,
				"%s: the buffer is full (%" PRId64 " events, cap %" PRId64
				" bytes / %" PRId64 " events) and holds only events that are never "
				"evicted (critical, drop reports, or being uploaded now); "
				"upload or purge them",
				b->path, counts[0] + counts[1] + counts[2], b->opts.max_bytes,
				b->opts.max_events);
		sqlite3_bind_int64(b->st[ST_DELETE], 1, seq);
		r = step_done(b, b->st[ST_DELETE], err, "evicting an event");
		if (r < 0)
			return r;
		if (state == NBE_STATE_SENT) {
			dc->sent++;
			continue;
		}
		if (state == NBE_STATE_DEAD)
			dc->dead++;
		else
			dc->pending[sev]++;
		if (!dc->checked_report) {
			bool exists = false;
			r = open_report_exists(b, &exists, err);
			if (r < 0)
				return r;
			dc->checked_report = true;
			dc->need_report = !exists;
		}
	}
}

static int64_t json_int(cJSON *obj, const char *key)
{
	cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, key);

	return cJSON_IsNumber(it) ? (int64_t)it->valuedouble : 0;
}

static int set_json_int(cJSON *obj, const char *key, int64_t v)
{
	cJSON *n = cJSON_CreateNumber((double)v);

	if (!n)
		return -ENOMEM;
	if (cJSON_GetObjectItemCaseSensitive(obj, key))
		return cJSON_ReplaceItemInObjectCaseSensitive(obj, key, n) ? 0 : -ENOMEM;
	if (!cJSON_AddItemToObject(obj, key, n)) {
		cJSON_Delete(n);
		return -ENOMEM;
	}
	return 0;
}

/*
 * Reports evictions of events that never reached the server (pending and
 * dead) in an agent.events.dropped event. While such a report has not been
 * tried yet, later drops are added to it, so a flood leaves one report and
 * not one per evicted event.
 */
static int report_drops(struct nbe_buffer *b, const struct drop_count *dc, struct nbe_error *err)
{
	static const char *const keys[] = { "low", "medium", "high", "critical" };
	int64_t lost = dc->dead, open_seq = 0, seq;
	struct nbe_event ev = { 0 };
	cJSON *details = NULL;
	char *text = NULL, num[32];
	int rc, r;

	for (int i = 0; i < 4; i++)
		lost += dc->pending[i];
	if (lost == 0)
		return 0;

	rc = sqlite3_step(b->st[ST_DROPPED_OPEN]);
	if (rc == SQLITE_ROW) {
		open_seq = sqlite3_column_int64(b->st[ST_DROPPED_OPEN], 0);
		details = cJSON_Parse((const char *)sqlite3_column_text(b->st[ST_DROPPED_OPEN], 1));
	}
	sqlite3_reset(b->st[ST_DROPPED_OPEN]);
	if (rc != SQLITE_ROW && rc != SQLITE_DONE)
		return db_error(b, rc, err, "finding the drop report");
	if (!details || !cJSON_IsObject(details)) {
		cJSON_Delete(details);
		open_seq = 0;
		details = cJSON_CreateObject();
		if (!details)
			return nbe_error_set(err, -ENOMEM, "out of memory");
	}
	r = set_json_int(details, "total", json_int(details, "total") + lost);
	for (int i = 0; i < 4 && r == 0; i++) {
		if (dc->pending[i])
			r = set_json_int(details, keys[i],
					 json_int(details, keys[i]) + dc->pending[i]);
	}
	if (r == 0 && dc->dead)
		r = set_json_int(details, "dead", json_int(details, "dead") + dc->dead);
	if (r == 0 && !(text = cJSON_PrintUnformatted(details)))
		r = -ENOMEM;
	cJSON_Delete(details);
	if (r < 0)
		return nbe_error_set(err, r, "out of memory");

	if (open_seq) {
		sqlite3_bind_int64(b->st[ST_UPDATE_DETAILS], 1, open_seq);
		sqlite3_bind_text(b->st[ST_UPDATE_DETAILS], 2, text, -1, SQLITE_STATIC);
		r = step_done(b, b->st[ST_UPDATE_DETAILS], err, "updating the drop report");
	} else {
		r = make_agent_event(b, NBE_EVENT_DROPPED, NBE_SEV_HIGH, text, &ev, err);
		if (r == 0)
			r = insert_event(b, &ev, false, &seq, err);
		nbe_event_clear(&ev);
	}
	nbe_free(text);
	if (r < 0)
		return r;
	snprintf(num, sizeof(num), "%" PRId64, lost);
	sqlite3_bind_text(b->st[ST_META_ADD], 1, "dropped", -1, SQLITE_STATIC);
	sqlite3_bind_text(b->st[ST_META_ADD], 2, num, -1, SQLITE_TRANSIENT);
	return step_done(b, b->st[ST_META_ADD], err, "counting drops");
}

static int quarantine(struct nbe_buffer *b, const char *reason, struct nbe_buffer_open_info *info,
		      struct nbe_error *err);

static int set_sync(struct nbe_buffer *b, bool full, struct nbe_error *err);

static int begin(struct nbe_buffer *b, struct nbe_error *err)
{
	return step_done(b, b->st[ST_BEGIN], err, "starting a transaction");
}

static void rollback(struct nbe_buffer *b)
{
	if (!sqlite3_get_autocommit(b->db)) {
		sqlite3_step(b->st[ST_ROLLBACK]);
		sqlite3_reset(b->st[ST_ROLLBACK]);
	}
}

static int commit(struct nbe_buffer *b, struct nbe_error *err)
{
	int r = step_done(b, b->st[ST_COMMIT], err, "committing");

	if (r < 0)
		rollback(b);
	return r;
}

/* Links, makes room for and inserts one event inside an open transaction. */
static int append_one(struct nbe_buffer *b, struct nbe_event *ev, struct drop_count *dc,
		      struct nbe_error *err)
{
	int64_t seq;
	int r;

	r = nbe_wire_check_fits(ev, err);
	if (r < 0)
		return r;
	r = link_parent(b, ev, err);
	if (r < 0)
		return r;
	r = make_room(b, ev, dc, err);
	if (r < 0)
		return r;
	r = insert_event(b, ev, false, &seq, err);
	if (r == -EEXIST)
		return nbe_error_set(err, r, "event %s is already in the buffer", ev->id);
	if (r < 0)
		return r;
	ev->seq = seq;
	return 0;
}

static int append_batch(struct nbe_buffer *b, struct nbe_event *evs, size_t n, const char *key,
			const char *value, struct nbe_error *err)
{
	struct drop_count dc = { 0 };
	size_t i;
	int r;

	r = begin(b, err);
	if (r < 0)
		return r;
	for (i = 0; i < n; i++) {
		r = append_one(b, &evs[i], &dc, err);
		if (r < 0)
			goto err_rollback;
	}
	r = report_drops(b, &dc, err);
	if (r < 0)
		goto err_rollback;
	if (key) {
		r = nbe_buffer_meta_set(b, key, value, err);
		if (r < 0)
			goto err_rollback;
	}
	r = commit(b, err);
	if (r < 0)
		goto err_unseq;
	return 0;

err_rollback:
	rollback(b);
err_unseq:
	/* nothing was stored: no event may look stored */
	for (size_t k = 0; k < n && k <= i; k++) {
		evs[k].seq = 0;
		evs[k].parent_seq = 0;
		evs[k].parent_local[0] = '\0';
	}
	return r;
}

static int append_checked(struct nbe_buffer *b, struct nbe_event *evs, size_t n, const char *key,
			  const char *value, struct nbe_error *err)
{
	struct nbe_error cerr = { { 0 } };
	int r = append_batch(b, evs, n, key, value, &cerr);

	if (r == -EBADMSG) {
		/* the append's own queries ran into corruption that the cheap
		 * open-time check did not see: reset as a full check would, then
		 * append to the fresh buffer */
		r = quarantine(b, cerr.msg, NULL, err);
		if (r < 0)
			return r;
		return append_batch(b, evs, n, key, value, err);
	}
	if (r < 0)
		nbe_error_set(err, r, "%s", cerr.msg);
	return r;
}

int nbe_buffer_append_batch(struct nbe_buffer *b, struct nbe_event *evs, size_t n,
			    struct nbe_error *err)
{
	return append_checked(b, evs, n, NULL, NULL, err);
}

int nbe_buffer_append_with_meta(struct nbe_buffer *b, struct nbe_event *ev, const char *key,
				const char *value, struct nbe_error *err)
{
	return append_checked(b, ev, 1, key, value, err);
}

int nbe_buffer_append_batch_with_meta(struct nbe_buffer *b, struct nbe_event *evs, size_t n,
				      const char *key, const char *value, struct nbe_error *err)
{
	return append_checked(b, evs, n, key, value, err);
}

int nbe_buffer_append(struct nbe_buffer *b, struct nbe_event *ev, struct nbe_error *err)
{
	return nbe_buffer_append_batch(b, ev, 1, err);
}

int nbe_buffer_get(struct nbe_buffer *b, const char *ref, struct nbe_event *ret,
		   struct nbe_error *err)
{
	sqlite3_stmt *st;
	int64_t seq;
	int rc, r;

	if (nbe_uuid_valid(ref)) {
		char id[NBE_UUID_LEN + 1];
		for (int i = 0; i <= NBE_UUID_LEN; i++)
			id[i] = (char)((ref[i] >= 'A' && ref[i] <= 'F') ? ref[i] + 32 : ref[i]);
		st = b->st[ST_BY_ID];
		sqlite3_bind_text(st, 1, id, -1, SQLITE_TRANSIENT);
	} else if (nbe_href_is(ref, "event")) {
		st = b->st[ST_BY_SERVER_ID];
		sqlite3_bind_text(st, 1, ref, -1, SQLITE_STATIC);
	} else if (nbe_parse_int64(ref, 1, INT64_MAX, &seq) == 0) {
		st = b->st[ST_BY_SEQ];
		sqlite3_bind_int64(st, 1, seq);
	} else {
		return nbe_error_set(err, -EINVAL,
				     "'%.64s' is not a device event id, a sequence number or an "
				     "event/<uuid> server id",
				     ref);
	}
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW)
		r = row_to_event(st, ret);
	else if (rc == SQLITE_DONE)
		r = nbe_error_set(err, -ENOENT, "no event %.64s in the buffer", ref);
	else
		r = db_error(b, rc, err, "looking up an event");
	if (r == -ENOMEM)
		nbe_error_set(err, r, "out of memory");
	sqlite3_reset(st);
	sqlite3_clear_bindings(st);
	return r;
}

int nbe_buffer_foreach(struct nbe_buffer *b, unsigned state_mask, int64_t limit,
		       nbe_buffer_visit_fn fn, void *userdata, struct nbe_error *err)
{
	sqlite3_stmt *st = b->st[ST_FOREACH];
	int64_t last = 0, seen = 0;

	/* pages of rows, so no read transaction stays open across callbacks */
	for (;;) {
		int64_t page = 256, got = 0;
		int rc;

		if (limit > 0 && limit - seen < page)
			page = limit - seen;
		if (page <= 0)
			return 0;
		sqlite3_bind_int64(st, 1, state_mask);
		sqlite3_bind_int64(st, 2, last);
		sqlite3_bind_int64(st, 3, page);
		while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
			struct nbe_event ev = { 0 };
			int r = row_to_event(st, &ev);

			if (r < 0) {
				sqlite3_reset(st);
				return nbe_error_set(err, r, "out of memory");
			}
			last = ev.seq;
			got++;
			r = fn(&ev, userdata);
			nbe_event_clear(&ev);
			if (r != 0) {
				sqlite3_reset(st);
				return r;
			}
		}
		sqlite3_reset(st);
		if (rc != SQLITE_DONE)
			return db_error(b, rc, err, "reading events");
		seen += got;
		if (got < page)
			return 0;
	}
}

int nbe_buffer_stats(struct nbe_buffer *b, struct nbe_buffer_stats *ret, struct nbe_error *err)
{
	struct nbe_buffer_stats s = { 0 };
	int64_t counts[3];
	char *dropped = NULL;
	int r;

	r = read_counts(b, counts, err);
	if (r < 0)
		return r;
	s.pending = counts[0];
	s.sent = counts[1];
	s.dead = counts[2];
	r = step_int(b, b->st[ST_OLDEST_PENDING], &s.oldest_pending_wall_ms, err);
	if (r < 0)
		return r;
	r = step_int(b, b->st[ST_NEXT_ATTEMPT], &s.next_attempt_ms, err);
	if (r < 0)
		return r;
	r = nbe_buffer_meta_get(b, "dropped", &dropped, err);
	if (r < 0)
		return r;
	if (dropped) {
		s.dropped = strtoll(dropped, NULL, 10);
		nbe_free(dropped);
	}
	s.db_bytes = file_size_of(b->path);
	s.wal_bytes = file_size_of(b->wal_path);
	s.max_bytes = b->opts.max_bytes;
	s.max_events = b->opts.max_events;
	*ret = s;
	return 0;
}

int nbe_buffer_checkpoint(struct nbe_buffer *b, struct nbe_error *err)
{
	int rc = sqlite3_wal_checkpoint_v2(b->db, NULL, SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL);

	if (rc != SQLITE_OK && rc != SQLITE_BUSY)
		return db_error(b, rc, err, "checkpoint");
	rc = exec(b, "PRAGMA incremental_vacuum", err);
	/* a holder going idle gives its page cache back (it refills on use) */
	sqlite3_db_release_memory(b->db);
	return rc;
}

int nbe_buffer_purge(struct nbe_buffer *b, bool include_pending, int64_t *ret_removed,
		     struct nbe_error *err)
{
	const char *sql =
		include_pending ? "DELETE FROM events" : "DELETE FROM events WHERE state IN (1, 2)";
	int r = exec(b, sql, err);

	if (r < 0)
		return r;
	*ret_removed = sqlite3_changes64(b->db);
	return nbe_buffer_checkpoint(b, err);
}

int nbe_buffer_meta_get(struct nbe_buffer *b, const char *key, char **ret, struct nbe_error *err)
{
	sqlite3_stmt *st = b->st[ST_META_GET];
	int rc, r = 0;
	char *v = NULL;

	sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL) {
		v = nbe_strdup((const char *)sqlite3_column_text(st, 0));
		if (!v)
			r = nbe_error_set(err, -ENOMEM, "out of memory");
	} else if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
		r = db_error(b, rc, err, "reading meta");
	}
	sqlite3_reset(st);
	sqlite3_clear_bindings(st);
	if (r == 0)
		*ret = v;
	return r;
}

int64_t nbe_buffer_meta_get_int(struct nbe_buffer *b, const char *key)
{
	char *v = NULL;
	int64_t n = 0;

	if (nbe_buffer_meta_get(b, key, &v, NULL) == 0 && v)
		nbe_parse_int64(v, INT64_MIN, INT64_MAX, &n);
	nbe_free(v);
	return n;
}

int nbe_buffer_meta_set(struct nbe_buffer *b, const char *key, const char *value,
			struct nbe_error *err)
{
	sqlite3_stmt *st = b->st[value ? ST_META_SET : ST_META_DEL];

	sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
	if (value)
		sqlite3_bind_text(st, 2, value, -1, SQLITE_STATIC);
	return step_done(b, st, err, "writing meta");
}

int nbe_buffer_meta_set_lazy(struct nbe_buffer *b, const char *key, const char *value,
			     struct nbe_error *err)
{
	int r = set_sync(b, false, err);

	if (r == 0)
		r = nbe_buffer_meta_set(b, key, value, err);
	set_sync(b, true, NULL);
	return r;
}

int nbe_buffer_resolve_parent(struct nbe_buffer *b, const struct nbe_event *ev, char **ret_href,
			      bool *ret_wait, struct nbe_error *err)
{
	int64_t seq = ev->parent_seq;
	const char *fallback = ev->parent_fallback;
	char *own_fallback = NULL, *href = NULL;
	bool wait = false;
	int depth = 0;

	if (seq <= 0) {
		const char *h = ev->parent ? ev->parent : ev->job;
		if (h && !(href = nbe_strdup(h)))
			return nbe_error_set(err, -ENOMEM, "out of memory");
		*ret_href = href;
		*ret_wait = false;
		return 0;
	}
	/* walk up local parents that were dead-lettered */
	while (seq > 0 && depth++ < 64) {
		sqlite3_stmt *st = b->st[ST_PARENT_STATE];
		int rc;

		sqlite3_bind_int64(st, 1, seq);
		rc = sqlite3_step(st);
		if (rc == SQLITE_DONE) {
			/* evicted or purged: its fallback was saved at capture */
			sqlite3_reset(st);
			break;
		}
		if (rc != SQLITE_ROW) {
			sqlite3_reset(st);
			nbe_free(own_fallback);
			return db_error(b, rc, err, "resolving a parent");
		}
		{
			int state = sqlite3_column_int(st, 0);
			const char *sid = (const char *)sqlite3_column_text(st, 1);
			const char *pp = (const char *)sqlite3_column_text(st, 2);
			int64_t pseq = sqlite3_column_int64(st, 3);
			const char *pfb = (const char *)sqlite3_column_text(st, 4);
			const char *pjob = (const char *)sqlite3_column_text(st, 5);
			const char *next_fb = NULL;

			if (state == NBE_STATE_SENT && sid) {
				href = nbe_strdup(sid);
			} else if (state == NBE_STATE_PENDING) {
				wait = true;
			} else {
				/* dead: take the dead parent's own parent */
				if (pseq > 0) {
					next_fb = pfb;
				} else if (pp && !nbe_uuid_valid(pp)) {
					next_fb = pp;
				} else {
					next_fb = pjob;
				}
				nbe_free(own_fallback);
				own_fallback = next_fb ? nbe_strdup(next_fb) : NULL;
				fallback = own_fallback;
				seq = pseq;
				sqlite3_reset(st);
				if (next_fb && !own_fallback)
					return nbe_error_set(err, -ENOMEM, "out of memory");
				continue;
			}
			sqlite3_reset(st);
			if (state == NBE_STATE_SENT && sid && !href) {
				nbe_free(own_fallback);
				return nbe_error_set(err, -ENOMEM, "out of memory");
			}
			break;
		}
	}
	if (!href && !wait && fallback && !(href = nbe_strdup(fallback))) {
		nbe_free(own_fallback);
		return nbe_error_set(err, -ENOMEM, "out of memory");
	}
	nbe_free(own_fallback);
	*ret_href = href;
	*ret_wait = wait;
	return 0;
}

int nbe_buffer_pending(struct nbe_buffer *b, int64_t after_seq, size_t max, struct nbe_event *ret,
		       size_t *ret_n, struct nbe_error *err)
{
	sqlite3_stmt *st = b->st[ST_PENDING];
	size_t n = 0;
	int rc, r = 0;

	sqlite3_bind_int64(st, 1, after_seq);
	sqlite3_bind_int64(st, 2, (sqlite3_int64)max);
	while (n < max && (rc = sqlite3_step(st)) == SQLITE_ROW) {
		r = row_to_event(st, &ret[n]);
		if (r < 0)
			break;
		n++;
	}
	sqlite3_reset(st);
	if (r == 0 && n < max && rc != SQLITE_DONE)
		r = db_error(b, rc, err, "reading pending events");
	else if (r < 0)
		nbe_error_set(err, r, "out of memory");
	if (r < 0) {
		for (size_t i = 0; i < n; i++)
			nbe_event_clear(&ret[i]);
		return r;
	}
	*ret_n = n;
	return 0;
}

int nbe_buffer_inflight_mark(struct nbe_buffer *b, int64_t *ret, struct nbe_error *err)
{
	char *v = NULL;
	int64_t mark = 0;
	int r = nbe_buffer_meta_get(b, "inflight_mark", &v, err);

	if (r < 0)
		return r;
	if (v && nbe_parse_int64(v, 0, INT64_MAX, &mark) < 0)
		mark = INT64_MAX; /* unreadable: assume everything may be in flight */
	nbe_free(v);
	*ret = mark;
	return 0;
}

int nbe_buffer_set_inflight_mark(struct nbe_buffer *b, int64_t seq, struct nbe_error *err)
{
	char num[32];

	snprintf(num, sizeof(num), "%" PRId64, seq);
	return nbe_buffer_meta_set(b, "inflight_mark", num, err); /* durable: FULL */
}

int nbe_buffer_recover_inflight(struct nbe_buffer *b, int64_t delay_ms, int64_t *ret_n,
				struct nbe_error *err)
{
	int64_t mark;
	int r = nbe_buffer_inflight_mark(b, &mark, err);

	if (r < 0)
		return r;
	*ret_n = 0;
	if (mark == 0)
		return 0;
	b->recover_delay_ms = delay_ms;
	r = begin(b, err);
	if (r < 0)
		return r;
	sqlite3_bind_int64(b->st[ST_RECOVER], 1, mark);
	/* when it was in flight is not known: its lookup waits a full delay
	 * from now (the uploader's lookup_delay) */
	sqlite3_bind_int64(b->st[ST_RECOVER], 2, nbe_clock_wall_ms() + b->recover_delay_ms);
	r = step_done(b, b->st[ST_RECOVER], err, "marking in-flight events in doubt");
	if (r == 0) {
		*ret_n = sqlite3_changes64(b->db);
		r = nbe_buffer_meta_set(b, "inflight_mark", NULL, err);
	}
	if (r == 0)
		return commit(b, err);
	rollback(b);
	return r;
}

/* Runs @sql-style work with synchronous=NORMAL: atomic and safe against a
 * crash of the process, rolled back (never corrupted) by a power loss. */
static int set_sync(struct nbe_buffer *b, bool full, struct nbe_error *err)
{
	return exec(b, full ? "PRAGMA synchronous = FULL" : "PRAGMA synchronous = NORMAL", err);
}

/* The bodies kept with sent events grow rows after make_room() admitted
 * them: drop the oldest sent events (delivered: nothing is lost) until the
 * buffer is back within its byte budget. */
static int trim_sent(struct nbe_buffer *b, struct nbe_error *err)
{
	for (;;) {
		int64_t pages = 0, freelist = 0, seq;
		int rc, r;

		r = step_int(b, b->st[ST_PAGE_COUNT], &pages, err);
		if (r == 0)
			r = step_int(b, b->st[ST_FREELIST_COUNT], &freelist, err);
		if (r < 0)
			return r;
		if (pages - freelist <= b->budget_pages)
			return 0;
		rc = sqlite3_step(b->st[ST_VICTIM_SENT]);
		seq = rc == SQLITE_ROW ? sqlite3_column_int64(b->st[ST_VICTIM_SENT], 0) : 0;
		sqlite3_reset(b->st[ST_VICTIM_SENT]);
		if (rc != SQLITE_ROW)
			return rc == SQLITE_DONE ? 0 : db_error(b, rc, err, "trimming sent events");
		sqlite3_bind_int64(b->st[ST_DELETE], 1, seq);
		r = step_done(b, b->st[ST_DELETE], err, "trimming sent events");
		if (r < 0)
			return r;
	}
}

int nbe_buffer_mark_sent(struct nbe_buffer *b, const struct nbe_ack *acks, size_t n,
			 struct nbe_error *err)
{
	int r = set_sync(b, false, err);

	if (r < 0)
		return r;
	r = begin(b, err);
	for (size_t i = 0; r == 0 && i < n; i++) {
		sqlite3_stmt *st = b->st[ST_MARK_SENT];
		sqlite3_bind_int64(st, 1, acks[i].seq);
		sqlite3_bind_text(st, 2, acks[i].server_id, -1, SQLITE_STATIC);
		bind_text_or_null(st, 3, acks[i].wire);
		r = step_done(b, st, err, "marking events sent");
		if (r == 0) {
			st = b->st[ST_CHILD_FALLBACK];
			sqlite3_bind_int64(st, 1, acks[i].seq);
			sqlite3_bind_text(st, 2, acks[i].server_id, -1, SQLITE_STATIC);
			r = step_done(b, st, err, "linking children");
		}
	}
	if (r == 0) {
		/* prune in steps of keep_sent/16 (the walk over keep_sent index
		 * entries is most of a small commit's work), not at every commit */
		int64_t counts[3];
		r = read_counts(b, counts, err);
		if (r == 0 && counts[NBE_STATE_SENT] > b->opts.keep_sent + b->opts.keep_sent / 16) {
			sqlite3_bind_int64(b->st[ST_PRUNE_SENT], 1, b->opts.keep_sent);
			r = step_done(b, b->st[ST_PRUNE_SENT], err, "pruning sent events");
		}
	}
	if (r == 0)
		r = trim_sent(b, err);
	if (r == 0)
		r = commit(b, err);
	else
		rollback(b);
	set_sync(b, true, NULL);
	return r;
}

/* One UPDATE on one pending event in its own transaction, without an fsync. */
static int update_one(struct nbe_buffer *b, sqlite3_stmt *st, struct nbe_error *err,
		      const char *what)
{
	int r = set_sync(b, false, err);

	if (r == 0)
		r = step_done(b, st, err, what);
	else {
		sqlite3_reset(st);
		sqlite3_clear_bindings(st);
	}
	set_sync(b, true, NULL);
	return r;
}

int nbe_buffer_mark_dead(struct nbe_buffer *b, int64_t seq, const char *reason,
			 struct nbe_error *err)
{
	sqlite3_stmt *st = b->st[ST_MARK_DEAD];

	sqlite3_bind_int64(st, 1, seq);
	bind_text_or_null(st, 2, reason);
	return update_one(b, st, err, "dead-lettering an event");
}

int nbe_buffer_mark_retry(struct nbe_buffer *b, int64_t seq, bool in_doubt, int64_t next_ms,
			  const char *error, const char *wire, struct nbe_error *err)
{
	sqlite3_stmt *st = b->st[ST_MARK_RETRY];

	sqlite3_bind_int64(st, 1, seq);
	bind_text_or_null(st, 2, error);
	sqlite3_bind_int(st, 3, in_doubt);
	sqlite3_bind_int64(st, 4, next_ms);
	bind_text_or_null(st, 5, wire);
	return update_one(b, st, err, "recording an attempt");
}

int nbe_buffer_clear_doubt(struct nbe_buffer *b, int64_t seq, struct nbe_error *err)
{
	sqlite3_stmt *st = b->st[ST_CLEAR_DOUBT];

	sqlite3_bind_int64(st, 1, seq);
	return update_one(b, st, err, "clearing a doubt");
}

int nbe_buffer_retry_dead(struct nbe_buffer *b, const char *const *refs, size_t n, int64_t *ret_n,
			  struct nbe_error *err)
{
	int64_t total = 0;
	int r = begin(b, err);

	if (r < 0)
		return r;
	if (n == 0) {
		r = step_done(b, b->st[ST_RETRY_DEAD_ALL], err, "re-queueing dead events");
		total = sqlite3_changes64(b->db);
	}
	for (size_t i = 0; r == 0 && i < n; i++) {
		struct nbe_event ev = { 0 };

		r = nbe_buffer_get(b, refs[i], &ev, err);
		if (r == 0 && ev.state != NBE_STATE_DEAD)
			r = nbe_error_set(err, -ENOENT, "event %s is %s, not dead", ev.id,
					  nbe_state_str(ev.state));
		if (r == 0) {
			sqlite3_bind_int64(b->st[ST_RETRY_DEAD_ONE], 1, ev.seq);
			r = step_done(b, b->st[ST_RETRY_DEAD_ONE], err, "re-queueing a dead event");
			total += sqlite3_changes64(b->db);
		}
		nbe_event_clear(&ev);
	}
	if (r == 0)
		r = commit(b, err);
	else
		rollback(b);
	if (r == 0)
		*ret_n = total;
	return r;
}

static int find_open(struct nbe_buffer *b, sqlite3_stmt *st, struct nbe_event *ret,
		     struct nbe_error *err)
{
	int rc, r;

	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW)
		r = row_to_event(st, ret) < 0 ? nbe_error_set(err, -ENOMEM, "out of memory") : 0;
	else if (rc == SQLITE_DONE)
		r = -ENOENT;
	else
		r = db_error(b, rc, err, "looking for an open operation");
	sqlite3_reset(st);
	sqlite3_clear_bindings(st);
	return r;
}

int nbe_buffer_find_open(struct nbe_buffer *b, const char *name, const char *boot_id,
			 struct nbe_event *ret, struct nbe_error *err)
{
	sqlite3_stmt *st = b->st[ST_FIND_OPEN];

	sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, boot_id, -1, SQLITE_STATIC);
	return find_open(b, st, ret, err);
}

int nbe_buffer_find_open_detail(struct nbe_buffer *b, const char *name, const char *key,
				const char *value, struct nbe_event *ret, struct nbe_error *err)
{
	sqlite3_stmt *st = b->st[ST_FIND_OPEN_DETAIL];

	sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, key, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 3, value, -1, SQLITE_STATIC);
	return find_open(b, st, ret, err);
}

int nbe_buffer_setting(struct nbe_buffer *b, const char *name, int64_t *ret, struct nbe_error *err)
{
	static const char *const allowed[] = {
		"synchronous",	      "secure_delete",	"auto_vacuum",	"journal_size_limit",
		"wal_autocheckpoint", "application_id", "user_version", "page_size",
		"busy_timeout",	      "cache_size",
	};
	char sql[64];

	if (strcmp(name, "journal_mode") == 0) {
		sqlite3_stmt *st;
		int rc = sqlite3_prepare_v2(b->db, "PRAGMA journal_mode", -1, &st, NULL);
		if (rc != SQLITE_OK)
			return db_error(b, rc, err, "journal_mode");
		rc = sqlite3_step(st);
		*ret = rc == SQLITE_ROW &&
		       strcmp((const char *)sqlite3_column_text(st, 0), "wal") == 0;
		sqlite3_finalize(st);
		return 0;
	}
	for (size_t i = 0; i < sizeof(allowed) / sizeof(allowed[0]); i++) {
		if (strcmp(name, allowed[i]) == 0) {
			snprintf(sql, sizeof(sql), "PRAGMA %s", name);
			return query_int(b, sql, ret, err);
		}
	}
	return nbe_error_set(err, -EINVAL, "unknown setting '%s'", name);
}

int nbe_buffer_integrity_check(struct nbe_buffer *b, struct nbe_error *err)
{
	sqlite3_stmt *st;
	int rc = sqlite3_prepare_v2(b->db, "PRAGMA integrity_check(1)", -1, &st, NULL);
	int r = 0;

	if (rc != SQLITE_OK)
		return db_error(b, rc, err, "integrity_check");
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		const char *res = (const char *)sqlite3_column_text(st, 0);
		if (!res || strcmp(res, "ok") != 0)
			r = nbe_error_set(err, -EBADMSG, "integrity_check: %.200s",
					  res ? res : "no result");
	} else {
		r = db_error(b, rc, err, "integrity_check");
	}
	sqlite3_finalize(st);
	return r;
}

/* ---- quarantine and salvage ---------------------------------------------- */

static bool salvage_row_valid(const struct nbe_event *ev)
{
	cJSON *d;
	bool ok;

	if (!nbe_uuid_valid(ev->id) || !nbe_event_name_valid(ev->name) ||
	    !nbe_uuid_valid(ev->boot_id) || ev->seq <= 0)
		return false;
	if (ev->job && !nbe_href_is(ev->job, "job"))
		return false;
	if (ev->server_id && !nbe_href_is(ev->server_id, "event"))
		return false;
	d = nbe_json_parse_object(ev->details);
	ok = d != NULL;
	cJSON_Delete(d);
	return ok;
}

/* Copies every readable, valid event and meta row of @src into @b. */
static int64_t salvage_from(struct nbe_buffer *b, const char *src)
{
	sqlite3 *sdb = NULL;
	sqlite3_stmt *st = NULL;
	int64_t last = 0, salvaged = 0, jump = 1;
	int jumps = 0;

	if (sqlite3_open_v2(src, &sdb, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL) !=
	    SQLITE_OK)
		goto out;
	/* read a file shorter than its header says (truncated) up to where it
	 * ends instead of refusing it whole; harmless on a read-only handle */
	sqlite3_exec(sdb, "PRAGMA writable_schema = ON; PRAGMA query_only = ON;", NULL, NULL, NULL);
	if (sqlite3_prepare_v2(sdb, "SELECT " EVENT_COLS " FROM events WHERE seq > ?1 ORDER BY seq",
			       -1, &st, NULL) != SQLITE_OK &&
	    sqlite3_prepare_v2(sdb,
			       "SELECT " EVENT_COLS_WITH("NULL") " FROM events WHERE seq > ?1 "
								 "ORDER BY seq",
			       -1, &st, NULL) != SQLITE_OK)
		goto meta;
	while (jumps < SALVAGE_MAX_JUMPS) {
		int rc;

		sqlite3_bind_int64(st, 1, last);
		while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
			struct nbe_event ev = { 0 };
			int64_t seq;

			if (row_to_event(st, &ev) < 0)
				continue;
			last = ev.seq;
			jump = 1;
			ev.parent_local[0] = '\0';
			if (salvage_row_valid(&ev) && insert_event(b, &ev, true, &seq, NULL) == 0)
				salvaged++;
			nbe_event_clear(&ev);
		}
		sqlite3_reset(st);
		if (rc == SQLITE_DONE)
			break;
		/* an unreadable stretch: skip forward, further each time */
		if (jump > INT64_MAX / 2 || last > INT64_MAX - jump)
			break;
		last += jump;
		jump *= 2;
		jumps++;
	}
	sqlite3_finalize(st);
meta:
	if (sqlite3_prepare_v2(sdb, "SELECT key, value FROM meta", -1, &st, NULL) == SQLITE_OK) {
		while (sqlite3_step(st) == SQLITE_ROW) {
			const char *k = (const char *)sqlite3_column_text(st, 0);
			const char *v = (const char *)sqlite3_column_text(st, 1);
			if (k && v)
				nbe_buffer_meta_set(b, k, v, NULL);
		}
		sqlite3_finalize(st);
	}
out:
	sqlite3_close_v2(sdb);
	return salvaged;
}

static int rename_aside(const char *from, const char *to)
{
	if (rename(from, to) == 0 || errno == ENOENT)
		return 0;
	return -errno;
}

/*
 * Renames the corrupt file (and its -wal and -shm) aside, opens a fresh
 * buffer at the original path, salvages what is readable and records
 * agent.buffer.reset. Serialised with other processes by a lock file, and
 * re-checked under it: another process may have done it already.
 */
static int quarantine(struct nbe_buffer *b, const char *reason, struct nbe_buffer_open_info *info,
		      struct nbe_error *err)
{
	char q[512], from[560], to[600], *lock_path = NULL, *details = NULL;
	struct nbe_event ev = { 0 };
	bool created;
	int64_t salvaged = 0, seq;
	int lock_fd, r, n;
	cJSON *d;

	close_db(b);
	n = snprintf(q, sizeof(q), "%s.corrupt-%" PRId64, b->path, nbe_clock_wall_ms());
	if (n < 0 || (size_t)n >= sizeof(q))
		return nbe_error_set(err, -ENAMETOOLONG, "%s: path too long", b->path);
	lock_path = nbe_malloc(strlen(b->path) + sizeof(".quarantine-lock"));
	if (!lock_path)
		return nbe_error_set(err, -ENOMEM, "out of memory");
	snprintf(lock_path, strlen(b->path) + sizeof(".quarantine-lock"), "%s.quarantine-lock",
		 b->path);
	lock_fd = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0660);
	if (lock_fd >= 0) {
		fchmod(lock_fd, 0660);
		nbe_chown_like_parent(lock_fd, lock_path);
	}
	nbe_free(lock_path);
	if (lock_fd < 0)
		return nbe_error_set(err, -errno, "%s: cannot lock for quarantine: %s", b->path,
				     strerror(errno));
	while (flock(lock_fd, LOCK_EX) != 0 && errno == EINTR)
		;

	/* under the lock: is it still corrupt? */
	r = open_db(b, &created, false, NULL);
	if (r == 0)
		r = quick_check(b, NULL);
	if (r == 0)
		r = migrate(b, NULL);
	if (r == 0) {
		close(lock_fd);
		return prepare_all(b, err); /* someone else reset it meanwhile */
	}
	close_db(b);

	r = rename_aside(b->path, q);
	if (r < 0) {
		nbe_error_set(err, r, "%s: cannot move the corrupt buffer aside: %s", b->path,
			      strerror(-r));
		goto out;
	}
	snprintf(from, sizeof(from), "%s-wal", b->path);
	snprintf(to, sizeof(to), "%s-wal", q);
	rename_aside(from, to);
	snprintf(from, sizeof(from), "%s-shm", b->path);
	snprintf(to, sizeof(to), "%s-shm", q);
	rename_aside(from, to);
	nbe_fsync_parent_dir(b->path);

	r = open_db(b, &created, false, err);
	if (r == 0)
		r = migrate(b, err);
	if (r == 0)
		r = prepare_all(b, err);
	if (r < 0)
		goto out;
	r = begin(b, err);
	if (r < 0)
		goto out;
	salvaged = salvage_from(b, q);

	d = cJSON_CreateObject();
	if (d) {
		const char *base = strrchr(q, '/');
		cJSON_AddStringToObject(d, "quarantined", base ? base + 1 : q);
		cJSON_AddNumberToObject(d, "salvaged", (double)salvaged);
		cJSON_AddStringToObject(d, "reason", reason);
		details = cJSON_PrintUnformatted(d);
		cJSON_Delete(d);
	}
	if (!details) {
		rollback(b);
		r = nbe_error_set(err, -ENOMEM, "out of memory");
		goto out;
	}
	r = make_agent_event(b, NBE_EVENT_BUFFER_RESET, NBE_SEV_HIGH, details, &ev, err);
	if (r == 0)
		r = insert_event(b, &ev, false, &seq, err);
	nbe_event_clear(&ev);
	nbe_free(details);
	if (r == 0)
		r = commit(b, err);
	else
		rollback(b);
	if (r < 0)
		goto out;
	if (info) {
		info->reset = true;
		snprintf(info->quarantined, sizeof(info->quarantined), "%s", q);
		snprintf(info->reason, sizeof(info->reason), "%s", reason);
		info->salvaged = salvaged;
	}
out:
	close(lock_fd);
	return r;
}

/* The WAL a closing process may leave behind: the next process to open the
 * buffer reads all of it to rebuild the WAL index (about 6 ms per MiB). */
#define CLOSE_WAL_MAX (512 * 1024)

static int64_t close_wal_limit(const struct nbe_buffer *b)
{
	return b->wal_reserve < CLOSE_WAL_MAX ? b->wal_reserve : CLOSE_WAL_MAX;
}

int nbe_buffer_follow(struct nbe_buffer *b, bool *ret_reopened, struct nbe_error *err)
{
	struct stat st;
	bool created;
	int r;

	*ret_reopened = false;
	if (stat(b->path, &st) == 0 && st.st_dev == b->dev && st.st_ino == b->ino)
		return 0;
	close_db(b);
	r = open_db(b, &created, false, err);
	if (r == 0)
		r = migrate(b, err);
	if (r == 0)
		r = prepare_all(b, err);
	if (r == -EBADMSG)
		r = quarantine(b, err ? err->msg : "corrupt", NULL, err);
	if (r == 0)
		*ret_reopened = true;
	return r;
}

int nbe_buffer_quarantine(struct nbe_buffer *b, const char *reason, struct nbe_error *err)
{
	char why[256];

	snprintf(why, sizeof(why), "%s", reason);
	return quarantine(b, why, NULL, err);
}

void nbe_buffer_close(struct nbe_buffer *b)
{
	if (!b)
		return;
	/*
	 * Short-lived producers never checkpoint at close, and the next one
	 * rebuilds the WAL index, forgetting how much of the WAL the last
	 * automatic checkpoint copied back: the WAL would never restart. Once
	 * it is past its share of the cap, fold it in and truncate it (another
	 * process using the buffer makes this a no-op: BUSY, ignored).
	 */
	if (b->db && b->wal_path && b->wal_reserve > 0 &&
	    file_size_of(b->wal_path) > close_wal_limit(b))
		sqlite3_wal_checkpoint_v2(b->db, NULL, SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL);
	close_db(b);
	nbe_free(b->path);
	nbe_free(b->wal_path);
	nbe_free(b->boot_id_file);
	nbe_free(b->timesync_file);
	nbe_free(b);
}

int nbe_buffer_open(const struct nbe_buffer_opts *opts, struct nbe_buffer **ret,
		    struct nbe_buffer_open_info *ret_info, struct nbe_error *err)
{
	struct nbe_buffer_open_info info = { 0 };
	struct nbe_error cerr = { { 0 } };
	struct nbe_buffer *b;
	size_t plen;
	int r;

	if (opts->max_bytes < NBE_BUFFER_MIN_BYTES)
		return nbe_error_set(err, -EINVAL, "max_buffer_bytes: at least %d bytes",
				     NBE_BUFFER_MIN_BYTES);
	if (opts->max_events < 1)
		return nbe_error_set(err, -EINVAL, "max_events: at least 1");
	b = nbe_calloc(1, sizeof(*b));
	if (!b)
		return nbe_error_set(err, -ENOMEM, "out of memory");
	b->opts = *opts;
	plen = strlen(opts->path);
	b->path = nbe_strdup(opts->path);
	b->wal_path = nbe_malloc(plen + 5);
	b->boot_id_file = nbe_strdup(opts->boot_id_file ? opts->boot_id_file : NBE_BOOT_ID_FILE);
	b->timesync_file = nbe_strdup(opts->timesync_file);
	if (!b->path || !b->wal_path || !b->boot_id_file ||
	    (opts->timesync_file && !b->timesync_file)) {
		r = nbe_error_set(err, -ENOMEM, "out of memory");
		goto err_close;
	}
	snprintf(b->wal_path, plen + 5, "%s-wal", opts->path);
	b->opts.path = b->path;
	b->opts.boot_id_file = b->boot_id_file;
	b->opts.timesync_file = b->timesync_file;

	r = open_db(b, &info.created, !opts->full_check, &cerr);
	if (r == 0 && !info.created && opts->full_check)
		r = quick_check(b, &cerr);
	if (r == 0)
		r = migrate(b, &cerr);
	if (r == 0)
		r = prepare_all(b, &cerr);
	if (r == -EBADMSG) {
		/* corrupt or foreign: never refuse to start because of it */
		r = quarantine(b, cerr.msg, &info, err);
	} else if (r < 0) {
		nbe_error_set(err, r, "%s", cerr.msg);
	}
	if (r < 0)
		goto err_close;
	if (ret_info)
		*ret_info = info;
	*ret = b;
	return 0;

err_close:
	nbe_buffer_close(b);
	return r;
}
