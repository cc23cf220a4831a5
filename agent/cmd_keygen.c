/*
 * keygen: a device key (EC P-256, 0600, never overwritten) and its CSR for
 * the operator's CA.
 */
#include "cli.h"

#include "alloc.h"
#include "crypto.h"
#include "fsutil.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

struct keygen_args {
	const char *out;
	const char *subject;
};

static int keygen_opt(struct cli *c, int opt, const char *arg, void *userdata)
{
	struct keygen_args *a = userdata;

	(void)c;
	if (opt == 'o')
		a->out = arg;
	else if (opt == 's')
		a->subject = arg;
	return 0;
}

int cmd_keygen(struct cli *c, int argc, char **argv)
{
	static const struct option opts[] = {
		{ "out", required_argument, NULL, 'o' },
		{ "subject", required_argument, NULL, 's' },
		CLI_GLOBAL_OPTIONS,
		{ NULL, 0, NULL, 0 },
	};
	struct keygen_args a = { 0 };
	struct nbe_error err = { { 0 } };
	char subject[300], *key = NULL, *csr = NULL;
	int r;

	r = cli_parse(c, argc, argv, opts, keygen_opt, NULL, &a);
	if (r)
		return r;
	if (!a.out)
		return cli_usage_error(c, "--out DIR is required");
	if (a.subject && !strchr(a.subject, '='))
		return cli_usage_error(c, "--subject '%s': expected an X.509 name such as CN=...",
				       a.subject);
	if (!a.subject) {
		r = cli_load_config(c);
		if (r)
			return r;
		if (!c->cfg.nuvlabox_id)
			return cli_usage_error(c,
					       "no --subject and no nuvlabox_id to name the key");
		snprintf(subject, sizeof(subject), "CN=%s", c->cfg.nuvlabox_id);
		a.subject = subject;
	}
	r = nbe_mkdir_exist_ok(a.out, 0700);
	if (r < 0) {
		cli_err(c, "%s: %s", a.out, strerror(-r));
		return EX_CANTCREAT;
	}
	key = nbe_path_join(a.out, "device.key");
	csr = nbe_path_join(a.out, "device.csr");
	if (!key || !csr) {
		r = EX_OSERR;
		goto out;
	}
	r = nbe_crypto_keygen(key, csr, a.subject, &err);
	if (r < 0) {
		cli_err(c, "%s", err.msg);
		r = r == -EINVAL ? EX_DATAERR : r == -EEXIST ? EX_CANTCREAT : EX_IOERR;
		goto out;
	}
	printf("%s\n%s\n", key, csr);
	r = EX_OK;
out:
	nbe_free(key);
	nbe_free(csr);
	return r;
}
