/*
 * replay: runs a harness's LLVMFuzzerTestOneInput() over files, in ordinary
 * builds (gcc or clang, with or without sanitizers): every argument is a
 * file or a directory of files (dot files skipped, names in order). A
 * directory that does not exist is skipped (a harness without regressions
 * has none); finding no input at all is a failure.
 */
#include "fuzz.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define INPUT_MAX (4 * 1024 * 1024)

static int run_file(const char *path)
{
	FILE *f = fopen(path, "rbe");
	uint8_t *data;
	size_t n;

	if (!f) {
		fprintf(stderr, "replay: %s: %s\n", path, strerror(errno));
		return -1;
	}
	data = malloc(INPUT_MAX + 1);
	if (!data) {
		fclose(f);
		fprintf(stderr, "replay: out of memory\n");
		return -1;
	}
	n = fread(data, 1, INPUT_MAX + 1, f);
	if (ferror(f) || n > INPUT_MAX) {
		fprintf(stderr, "replay: %s: unreadable or larger than %d bytes\n", path,
			INPUT_MAX);
		fclose(f);
		free(data);
		return -1;
	}
	fclose(f);
	LLVMFuzzerTestOneInput(data, n);
	free(data);
	return 0;
}

static int by_name(const struct dirent **a, const struct dirent **b)
{
	return strcmp((*a)->d_name, (*b)->d_name);
}

static int skip_dot(const struct dirent *d)
{
	return d->d_name[0] != '.';
}

/* Runs every file of @dir; returns the count or -1. */
static long run_dir(const char *dir)
{
	struct dirent **names;
	long count = 0;
	int n = scandir(dir, &names, skip_dot, by_name);

	if (n < 0) {
		fprintf(stderr, "replay: %s: %s\n", dir, strerror(errno));
		return -1;
	}
	for (int i = 0; i < n; i++) {
		char path[4096];
		struct stat st;

		snprintf(path, sizeof(path), "%s/%s", dir, names[i]->d_name);
		if (count >= 0 && stat(path, &st) == 0 && S_ISREG(st.st_mode))
			count = run_file(path) < 0 ? -1 : count + 1;
		free(names[i]);
	}
	free(names);
	return count;
}

int main(int argc, char **argv)
{
	long total = 0;

	for (int i = 1; i < argc; i++) {
		struct stat st;
		long n;

		if (stat(argv[i], &st) != 0) {
			if (errno == ENOENT) {
				printf("replay: %s: none\n", argv[i]);
				continue;
			}
			fprintf(stderr, "replay: %s: %s\n", argv[i], strerror(errno));
			return 1;
		}
		n = S_ISDIR(st.st_mode) ? run_dir(argv[i]) : run_file(argv[i]) < 0 ? -1 : 1;
		if (n < 0)
			return 1;
		printf("replay: %s: %ld inputs\n", argv[i], n);
		total += n;
	}
	if (total == 0) {
		fprintf(stderr, "replay: no input found\n");
		return 1;
	}
	return 0;
}
