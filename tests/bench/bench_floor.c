/*
 * bench_floor: the memory floor under the daemon's RSS (bench_daemon.py
 * measures it next to the daemon, in the same run). Built three times:
 *
 *   bench_floor_libc    links the C library only
 *   bench_floor_sqlite  + SQLite: opens a WAL database and commits one row,
 *                       as the daemon's buffer does, and keeps it open
 *   bench_floor_libs    + every library the daemon links (libcurl as the
 *                       build found it, mbedTLS, cJSON), each initialised:
 *                       curl_global_init(), a multi handle, a cJSON parse,
 *                       an mbedTLS random generator seeded
 *
 * Usage: bench_floor_* [DATABASE]. Prints "ready" when done, then sleeps
 * until a signal ends it. Not a test: it only gives bench_daemon.py a
 * process to read /proc/PID/status of.
 */
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

#if defined(FLOOR_SQLITE) || defined(FLOOR_LIBS)
#include <sqlite3.h>
#endif
#ifdef FLOOR_LIBS
#include <cJSON.h>
#include <curl/curl.h>
#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#endif

int main(int argc, char **argv)
{
	sigset_t set;
	int sig = 0;
#ifdef FLOOR_LIBS
	CURLM *multi = NULL;
#endif
#if defined(FLOOR_SQLITE) || defined(FLOOR_LIBS)
	sqlite3 *db = NULL;
	char *msg = NULL;

	if (argc < 2) {
		fprintf(stderr, "usage: %s DATABASE\n", argv[0]);
		return 64;
	}
	if (sqlite3_open(argv[1], &db) != SQLITE_OK ||
	    sqlite3_exec(db,
			 "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;"
			 "CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v TEXT);"
			 "INSERT INTO t(v) VALUES ('one durable row');",
			 NULL, NULL, &msg) != SQLITE_OK) {
		fprintf(stderr, "%s: %s\n", argv[1], msg ? msg : sqlite3_errmsg(db));
		return 74;
	}
#else
	(void)argc;
	(void)argv;
#endif
#ifdef FLOOR_LIBS
	{
		static const char pers[] = "bench_floor";
		mbedtls_entropy_context entropy;
		mbedtls_ctr_drbg_context drbg;
		cJSON *doc = cJSON_Parse("{\"status\":201,\"resource-id\":\"event/1\"}");

		if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK ||
		    !(multi = curl_multi_init()) || !doc) {
			fprintf(stderr, "libcurl or cJSON set-up failed\n");
			return 70;
		}
		cJSON_Delete(doc);
		mbedtls_entropy_init(&entropy);
		mbedtls_ctr_drbg_init(&drbg);
		if (mbedtls_ctr_drbg_seed(&drbg, mbedtls_entropy_func, &entropy,
					  (const unsigned char *)pers, sizeof(pers) - 1) != 0) {
			fprintf(stderr, "mbedTLS random generator set-up failed\n");
			return 70;
		}
		printf("libcurl %s\n", curl_version_info(CURLVERSION_NOW)->ssl_version);
	}
#endif
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigprocmask(SIG_BLOCK, &set, NULL);
	printf("ready\n");
	fflush(stdout);
	sigwait(&set, &sig);
#ifdef FLOOR_LIBS
	curl_multi_cleanup(multi); /* what the floor held until now */
#endif
	return 0;
}
