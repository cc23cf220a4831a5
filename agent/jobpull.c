#include "jobpull.h"

#include "alloc.h"
#include "helper.h"
#include "ids.h"
#include "job.h"
#include "json.h"
#include "log.h"
#include "spawn.h"
#include "upload_setup.h"
#include "version.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdint.h>
#include <string.h>
#include <sys/timerfd.h>
#include <sys/wait.h>
#include <sysexits.h>
#include <unistd.h>

/* Ids remembered as run (the server deletes final jobs after 7 days). */
#define SEEN_MAX  128
#define QUEUE_MAX 32
#define META_SEEN "jobs_run"
#define JOB_JAR	  "jobs.cookie"

struct jobpull {
	struct jobpull_opts o;
	struct nbe_nuvla *n; /* made on first use, dropped on reload */
	int timer_fd;
	pid_t child;
	int child_fd;
	char running[NBE_HREF_MAX + 1];
	char seen[SEEN_MAX][NBE_HREF_MAX + 1]; /* oldest first */
	unsigned nseen;
	char queue[QUEUE_MAX][NBE_HREF_MAX + 1];
	unsigned nqueue;
	char last_problem[600]; /* logged once per episode */
};

static void arm(struct jobpull *jp, int64_t ms)
{
	struct itimerspec its = { 0 };

	if (ms > 0) {
		its.it_value.tv_sec = (time_t)(ms / 1000);
		its.it_value.tv_nsec = (long)(ms % 1000) * 1000000L;
		its.it_interval = its.it_value;
	}
	timerfd_settime(jp->timer_fd, 0, &its, NULL);
}

static bool seen(const struct jobpull *jp, const char *id)
{
	for (unsigned i = 0; i < jp->nseen; i++) {
		if (strcmp(jp->seen[i], id) == 0)
			return true;
	}
	return false;
}

static void load_seen(struct jobpull *jp)
{
	char *text = NULL;
	cJSON *arr, *it;

	if (nbe_buffer_meta_get(jp->o.buf, META_SEEN, &text, NULL) < 0 || !text)
		return;
	arr = cJSON_Parse(text);
	cJSON_ArrayForEach(it, arr)
	{
		if (cJSON_IsString(it) && nbe_href_is(it->valuestring, "job") &&
		    strlen(it->valuestring) <= NBE_HREF_MAX && jp->nseen < SEEN_MAX)
			snprintf(jp->seen[jp->nseen++], sizeof(jp->seen[0]), "%s", it->valuestring);
	}
	cJSON_Delete(arr);
	nbe_free(text);
}

/* Keeps the list in the buffer. Returns 0 or -errno (logged). */
static int save_seen(struct jobpull *jp)
{
	struct nbe_error err = { { 0 } };
	cJSON *arr = cJSON_CreateArray();
	char *text = NULL;
	int r;

	for (unsigned i = 0; arr && i < jp->nseen; i++) {
		if (!cJSON_AddItemToArray(arr, cJSON_CreateString(jp->seen[i]))) {
			cJSON_Delete(arr);
			arr = NULL;
		}
	}
	text = arr ? cJSON_PrintUnformatted(arr) : NULL;
	cJSON_Delete(arr);
	if (!text) {
		log_error("jobs: out of memory");
		return -ENOMEM;
	}
	r = nbe_buffer_meta_set(jp->o.buf, META_SEEN, text, &err);
	nbe_free(text);
	if (r < 0)
		log_error("jobs: cannot keep the list of jobs run: %s", err.msg);
	return r;
}

static void forget(struct jobpull *jp, const char *id)
{
	for (unsigned i = 0; i < jp->nseen; i++) {
		if (strcmp(jp->seen[i], id) == 0) {
			memmove(jp->seen[i], jp->seen[i + 1],
				(jp->nseen - i - 1) * sizeof(jp->seen[0]));
			jp->nseen--;
			return;
		}
	}
}

/* Remembers @id as run, durably, before it runs (the oldest id goes when
 * the list is full). Returns 0, or -errno with nothing remembered. */
static int mark_seen(struct jobpull *jp, const char *id)
{
	int r;

	if (jp->nseen == SEEN_MAX) {
		memmove(jp->seen[0], jp->seen[1], (SEEN_MAX - 1) * sizeof(jp->seen[0]));
		jp->nseen--;
	}
	snprintf(jp->seen[jp->nseen++], sizeof(jp->seen[0]), "%s", id);
	r = save_seen(jp);
	if (r < 0)
		forget(jp, id);
	return r;
}

int jobpull_new(const struct jobpull_opts *o, struct jobpull **ret, struct nbe_error *err)
{
	struct jobpull *jp = nbe_calloc(1, sizeof(*jp));

	if (!jp)
		return nbe_error_set(err, -ENOMEM, "out of memory");
	jp->o = *o;
	jp->child_fd = -1;
	jp->timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
	if (jp->timer_fd < 0) {
		int e = errno;
		nbe_free(jp);
		return nbe_error_set(err, -e, "timerfd: %s", strerror(e));
	}
	load_seen(jp);
	jobpull_reload(jp);
	*ret = jp;
	return 0;
}

void jobpull_free(struct jobpull *jp)
{
	if (!jp)
		return;
	nbe_nuvla_free(jp->n);
	if (jp->child_fd >= 0)
		close(jp->child_fd);
	close(jp->timer_fd);
	nbe_free(jp);
}

void jobpull_reload(struct jobpull *jp)
{
	nbe_nuvla_free(jp->n);
	jp->n = NULL;
	jp->last_problem[0] = '\0';
	if (jp->o.cfg->job_pull) {
		log_info("jobs: pulling, a heartbeat every %" PRId64 " ms",
			 jp->o.cfg->heartbeat_interval_ms);
		arm(jp, jp->o.cfg->heartbeat_interval_ms);
	} else {
		/* a job still running without a pidfd is reaped on the ticks */
		arm(jp, jp->child > 0 && jp->child_fd < 0 ? 1000 : 0);
	}
}

int jobpull_timer_fd(const struct jobpull *jp)
{
	return jp->timer_fd;
}

int jobpull_child_fd(const struct jobpull *jp)
{
	return jp->child_fd;
}

/* Logs @msg once until the problem changes or goes away. */
static void problem(struct jobpull *jp, const char *msg)
{
	if (strcmp(jp->last_problem, msg) != 0) {
		log_warning("jobs: %s", msg);
		snprintf(jp->last_problem, sizeof(jp->last_problem), "%s", msg);
	}
}

static int client(struct jobpull *jp)
{
	struct nbe_error err = { { 0 } };

	if (jp->n)
		return 0;
	if (nuvla_client_new(jp->o.cfg, JOB_JAR, 1, "nuvlabox-event/" NBE_VERSION, &jp->n, &err) <
	    0) {
		problem(jp, err.msg);
		return -1;
	}
	nbe_nuvla_set_interrupt(jp->n, jp->o.wake_fds, jp->o.n_wake, jp->o.interrupt,
				jp->o.interrupt_userdata);
	return 0;
}

/* POSTs the heartbeat, logging in once on 403. Returns 0 with @resp set
 * (any class), or -1 (logged). */
static int heartbeat(struct jobpull *jp, struct nbe_http_response *resp)
{
	const struct nbe_config *cfg = jp->o.cfg;
	struct nbe_error err = { { 0 } };
	char path[NBE_HREF_MAX + 32];

	snprintf(path, sizeof(path), "/api/%s/heartbeat", cfg->nuvlabox_id);
	for (int attempt = 0; attempt < 2; attempt++) {
		nbe_http_response_clear(resp);
		if (nbe_nuvla_request(jp->n, "POST", path, NULL, resp, &err) < 0) {
			problem(jp, err.msg);
			return -1;
		}
		if (attempt == 0 && resp->cls == NBE_HTTP_NUVLA_ERROR && resp->status == 403) {
			const char *secret = *jp->o.secret;
			nbe_nuvla_drop_session(jp->n);
			if (!secret || !cfg->api_key) {
				problem(jp, "no credential to send heartbeats with");
				return -1;
			}
			nbe_http_response_clear(resp);
			if (nbe_nuvla_login(jp->n, cfg->api_key, secret, resp, &err) < 0) {
				problem(jp, err.msg);
				return -1;
			}
			if (resp->cls != NBE_HTTP_OK)
				return 0; /* the login's failure is the outcome */
			continue;
		}
		break;
	}
	return 0;
}

/* Queues the new job ids of a heartbeat answer, oldest first. */
static void take_jobs(struct jobpull *jp, const char *body, size_t len)
{
	char ids[QUEUE_MAX][NBE_HREF_MAX + 1];
	unsigned n = 0;

	jp->nqueue = 0;
	if (nbe_heartbeat_jobs(body ? body : "", body ? len : 0, ids, QUEUE_MAX, &n) < 0)
		return;
	for (unsigned i = 0; i < n; i++) {
		if (!seen(jp, ids[i]) && strcmp(ids[i], jp->running) != 0)
			memcpy(jp->queue[jp->nqueue++], ids[i], sizeof(ids[i]));
	}
}

/* Starts the next queued job, if none runs. */
static void start_next(struct jobpull *jp)
{
	char helper[4200], *argv[7];
	/* the job reads nothing; its output goes where the daemon's goes */
	struct nbe_spawn_opts so = { .argv = argv, .std_in = NBE_SPAWN_DEVNULL };
	pid_t pid;
	int r;

	if (jp->child > 0)
		return;
	do {
		if (jp->nqueue == 0)
			return;
		snprintf(jp->running, sizeof(jp->running), "%s", jp->queue[0]);
		memmove(jp->queue[0], jp->queue[1], (jp->nqueue - 1) * sizeof(jp->queue[0]));
		jp->nqueue--;
	} while (seen(jp, jp->running));
	if (mark_seen(jp, jp->running) < 0) {
		/* not run: without the mark a restart could run it twice */
		jp->running[0] = '\0';
		return;
	}
	nbe_net_helper_path(helper, sizeof(helper));
	argv[0] = helper;
	argv[1] = (char *)(uintptr_t) "--config";
	argv[2] = (char *)(uintptr_t)jp->o.config_path;
	argv[3] = (char *)(uintptr_t) "job";
	argv[4] = (char *)(uintptr_t) "run";
	argv[5] = jp->running;
	argv[6] = NULL;
	r = nbe_spawn(&so, &pid, &jp->child_fd);
	if (r < 0) {
		log_error("jobs: cannot start %s (%s): %s", jp->running, helper, strerror(-r));
		jp->running[0] = '\0';
		return;
	}
	jp->child = pid;
	log_info("jobs: running %s (pid %ld)", jp->running, (long)pid);
}

void jobpull_tick(struct jobpull *jp)
{
	struct nbe_http_response resp = { 0 };
	uint64_t x;

	if (read(jp->timer_fd, &x, sizeof(x)) < 0 && errno != EAGAIN)
		return;
	if (jp->child > 0 && jp->child_fd < 0)
		jobpull_reap(jp); /* no pidfd: look now and then */
	if (!jp->o.cfg->job_pull || !jp->o.cfg->nuvlabox_id || client(jp) < 0)
		return;
	if (heartbeat(jp, &resp) < 0)
		goto out;
	if (resp.cls != NBE_HTTP_OK) {
		char msg[sizeof(resp.message) + 32];
		snprintf(msg, sizeof(msg), "heartbeat: %s", resp.message);
		problem(jp, msg);
		goto out;
	}
	if (jp->last_problem[0])
		log_notice("jobs: heartbeats answered again");
	jp->last_problem[0] = '\0';
	take_jobs(jp, resp.body, resp.body_len);
	start_next(jp);
out:
	nbe_http_response_clear(&resp);
}

void jobpull_reap(struct jobpull *jp)
{
	int status = 0;
	pid_t r;

	if (jp->child <= 0)
		return;
	r = waitpid(jp->child, &status, jp->child_fd >= 0 ? 0 : WNOHANG);
	if (r == 0)
		return;
	if (r == jp->child) {
		/* the network, the server or a stop got in the way (69, 75, a
		 * signal): the job may not have run at all, and running it again
		 * is safe (a final job is skipped, a reboot job is final before
		 * the reboot, key edits are idempotent), so the next heartbeat
		 * that lists it runs it again */
		bool again = (WIFEXITED(status) && (WEXITSTATUS(status) == EX_UNAVAILABLE ||
						    WEXITSTATUS(status) == EX_TEMPFAIL)) ||
			     WIFSIGNALED(status);
		if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
			log_info("jobs: %s done", jp->running);
		else if (WIFEXITED(status))
			log_warning("jobs: %s ended with exit status %d%s", jp->running,
				    WEXITSTATUS(status),
				    again ? "; it runs again when listed" : "");
		else
			log_warning("jobs: %s was killed by signal %d; it runs again when listed",
				    jp->running, WIFSIGNALED(status) ? WTERMSIG(status) : 0);
		if (again) {
			forget(jp, jp->running);
			save_seen(jp);
		}
	}
	if (jp->child_fd >= 0)
		close(jp->child_fd);
	jp->child_fd = -1;
	jp->child = 0;
	jp->running[0] = '\0';
	start_next(jp);
}
