/*
 * A STAND-IN for libkrun.so.1, built by the libkrun backend's tests (this host has
 * no hardware KVM and no libkrun package). It is not a VMM: every call appends one
 * line with its name and arguments to $KRUN_STANDIN_LOG, and krun_start_enter then
 * plays the guest of the vmm conformance suite over the host socket registered for
 * the bootstrap port (dial, send a line, exit 0 on "bye" or SIGTERM). Built with
 * -DOLD_LIBKRUN it lacks the calls an older libkrun lacks.
 * $KRUN_STANDIN_FAIL=<call name> makes that call return -EINVAL.
 */
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define BOOTSTRAP_PORT 1025

static char bootstrap_path[108];

static int32_t record(const char *fn, const char *fmt, ...)
{
	const char *log = getenv("KRUN_STANDIN_LOG");
	if (log) {
		FILE *f = fopen(log, "a");
		if (f) {
			va_list ap;
			fprintf(f, "%s", fn);
			if (fmt[0]) {
				fputc(' ', f);
				va_start(ap, fmt);
				vfprintf(f, fmt, ap);
				va_end(ap);
			}
			fputc('\n', f);
			fclose(f);
		}
	}
	const char *fail = getenv("KRUN_STANDIN_FAIL");
	if (fail && strcmp(fail, fn) == 0)
		return -EINVAL;
	return 0;
}

static const char *s(const char *p) { return p ? p : "(null)"; }

int32_t krun_set_log_level(uint32_t level) { return record(__func__, "level=%u", level); }

int32_t krun_create_ctx(void)
{
	int32_t rc = record(__func__, "");
	return rc < 0 ? rc : 7; /* any context id */
}

int32_t krun_set_vm_config(uint32_t ctx, uint8_t vcpus, uint32_t ram_mib)
{
	return record(__func__, "ctx=%u vcpus=%u ram_mib=%u", ctx, vcpus, ram_mib);
}

int32_t krun_set_kernel(uint32_t ctx, const char *kernel, uint32_t format, const char *initramfs, const char *cmdline)
{
	return record(__func__, "ctx=%u kernel=%s format=%u initramfs=%s cmdline=%s", ctx, s(kernel), format, s(initramfs), s(cmdline));
}

int32_t krun_add_disk(uint32_t ctx, const char *block_id, const char *path, bool read_only)
{
	return record(__func__, "ctx=%u block_id=%s path=%s read_only=%d", ctx, s(block_id), s(path), read_only);
}

int32_t krun_add_virtiofs(uint32_t ctx, const char *tag, const char *path)
{
	return record(__func__, "ctx=%u tag=%s path=%s", ctx, s(tag), s(path));
}

#ifndef OLD_LIBKRUN
int32_t krun_disable_implicit_vsock(uint32_t ctx) { return record(__func__, "ctx=%u", ctx); }

int32_t krun_add_vsock(uint32_t ctx, uint32_t tsi_features)
{
	return record(__func__, "ctx=%u tsi_features=%u", ctx, tsi_features);
}
#endif

int32_t krun_add_vsock_port2(uint32_t ctx, uint32_t port, const char *path, bool listen)
{
	if (port == BOOTSTRAP_PORT && path)
		snprintf(bootstrap_path, sizeof bootstrap_path, "%s", path);
	return record(__func__, "ctx=%u port=%u path=%s listen=%d", ctx, port, s(path), listen);
}

int32_t krun_set_console_output(uint32_t ctx, const char *path)
{
	return record(__func__, "ctx=%u path=%s", ctx, s(path));
}

static void on_term(int sig) { (void)sig; _exit(0); }

int32_t krun_start_enter(uint32_t ctx)
{
	int32_t rc = record(__func__, "ctx=%u", ctx);
	if (rc < 0)
		return rc;
	signal(SIGTERM, on_term);
	/* The "guest": dial the bootstrap port's host socket until it listens. */
	int fd = -1;
	for (int i = 0; i < 1000 && bootstrap_path[0]; i++) {
		struct sockaddr_un a = {.sun_family = AF_UNIX};
		snprintf(a.sun_path, sizeof a.sun_path, "%s", bootstrap_path);
		fd = socket(AF_UNIX, SOCK_STREAM, 0);
		if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0)
			break;
		close(fd);
		fd = -1;
		usleep(10000);
	}
	if (fd < 0)
		for (;;)
			pause();
	const char hello[] = "hello from the libkrun stand-in\n";
	if (write(fd, hello, sizeof hello - 1) < 0)
		_exit(3);
	char buf[64];
	size_t n = 0;
	while (n < sizeof buf - 1) {
		ssize_t r = read(fd, buf + n, 1);
		if (r <= 0)
			break;
		if (buf[n++] == '\n')
			break;
	}
	buf[n] = 0;
	if (strcmp(buf, "bye\n") == 0)
		exit(0); /* libkrun exits the process with the guest */
	for (;;)
		pause();
}
