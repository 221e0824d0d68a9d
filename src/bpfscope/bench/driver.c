// SPDX-License-Identifier: Apache-2.0
/*
 * bpfscope bench driver: make one system call N times and report the CPU
 * time this process measured itself with clock() (the "inside" view).
 *
 *   driver raw  <syscall-nr> <N>   syscall(nr, ...) through glibc's syscall()
 *   driver libc <name> <N>         the libc wrapper (getpid(), times(), ...)
 *
 * Output, one line on stdout:
 *   calls=<N> clock=<clock_t> clocks_per_sec=<CLOCKS_PER_SEC> ret=<first
 *   return value> errno=<errno of the first call, 0 on success>
 *
 * Built by bpfscope with the system C compiler at first use and cached.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/times.h>
#include <time.h>
#include <unistd.h>

static struct timeval tv;
static struct tms tms_buf;

/* Known syscalls get real buffers, like a program would pass them. */
static long raw_call(long nr)
{
	if (nr == SYS_gettimeofday)
		return syscall(nr, &tv, NULL);
	if (nr == SYS_times)
		return syscall(nr, &tms_buf);
	return syscall(nr, 0, 0, 0, 0, 0, 0);
}

typedef long (*wrapper_fn)(void);

static long w_getpid(void) { return getpid(); }
static long w_getppid(void) { return getppid(); }
static long w_getuid(void) { return getuid(); }
static long w_geteuid(void) { return geteuid(); }
static long w_getgid(void) { return getgid(); }
static long w_getegid(void) { return getegid(); }
static long w_gettid(void) { return gettid(); }
static long w_times(void) { return (long)times(&tms_buf); }
static long w_gettimeofday(void) { return gettimeofday(&tv, NULL); }
static long w_time(void) { return (long)time(NULL); }
static long w_sched_yield(void) { return sched_yield(); }

static const struct {
	const char *name;
	wrapper_fn fn;
} wrappers[] = {
	{ "getpid", w_getpid },	  { "getppid", w_getppid },
	{ "getuid", w_getuid },	  { "geteuid", w_geteuid },
	{ "getgid", w_getgid },	  { "getegid", w_getegid },
	{ "gettid", w_gettid },	  { "times", w_times },
	{ "gettimeofday", w_gettimeofday },
	{ "time", w_time },	  { "sched_yield", w_sched_yield },
};

static int usage(void)
{
	fprintf(stderr, "usage: driver raw <syscall-nr> <N> | driver libc <name> <N>\n");
	return 2;
}

int main(int argc, char **argv)
{
	wrapper_fn fn = NULL;
	long nr = -1, first = 0, n, i;
	int first_errno = 0;
	clock_t c0, c1;
	char *end;

	if (argc != 4)
		return usage();
	n = strtol(argv[3], &end, 10);
	if (*end || n <= 0)
		return usage();
	if (strcmp(argv[1], "raw") == 0) {
		nr = strtol(argv[2], &end, 10);
		if (*end || nr < 0)
			return usage();
	} else if (strcmp(argv[1], "libc") == 0) {
		for (i = 0; i < (long)(sizeof(wrappers) / sizeof(wrappers[0])); i++)
			if (strcmp(wrappers[i].name, argv[2]) == 0)
				fn = wrappers[i].fn;
		if (!fn) {
			fprintf(stderr, "no libc wrapper for %s in this driver\n", argv[2]);
			return 3;
		}
	} else {
		return usage();
	}

	/* The first call outside the timed loop: its result says whether the
	 * syscall works here at all (ENOSYS, EPERM, ...). */
	errno = 0;
	first = fn ? fn() : raw_call(nr);
	first_errno = errno;

	c0 = clock();
	if (fn) {
		for (i = 1; i < n; i++)
			fn();
	} else {
		for (i = 1; i < n; i++)
			raw_call(nr);
	}
	c1 = clock();

	printf("calls=%ld clock=%ld clocks_per_sec=%ld ret=%ld errno=%d\n", n,
	       (long)(c1 - c0), (long)CLOCKS_PER_SEC, first, first_errno);
	return 0;
}
