// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * Loopback TCP workload for `bpfscope flows --bench`.
 *   netbench rr SECONDS [CPU]      1-byte request/response; prints "rr <round trips> <seconds> <cpu>"
 *   netbench stream SECONDS [CPU]  64 KiB writes one way;   prints "stream <bytes> <seconds> <cpu>"
 * A forked child is the peer; both ends are plain blocking sockets. <cpu> is
 * the CPU time (user + system) both processes used, so the work per CPU
 * second can be compared even when other jobs take turns on the CPUs. With
 * CPU, both processes are pinned to that CPU: every run then has the same
 * shape (no mix of same-CPU and cross-CPU wakeups decided by other load).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <sched.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double cpu_seconds(int who)
{
	struct rusage ru;

	getrusage(who, &ru);
	return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec +
	       ru.ru_stime.tv_usec / 1e6;
}

static void die(const char *what)
{
	perror(what);
	exit(1);
}

int main(int argc, char **argv)
{
	struct sockaddr_in addr = { .sin_family = AF_INET };
	socklen_t len = sizeof(addr);
	static char buf[65536];
	int one = 1, srv, cl, stream;
	double seconds, t0, t, c0;
	unsigned long long n = 0;
	pid_t child;

	if (argc != 3 && argc != 4)
		return fprintf(stderr, "usage: netbench rr|stream SECONDS [CPU]\n"), 2;
	if (argc == 4) {
		cpu_set_t set;

		CPU_ZERO(&set);
		CPU_SET(atoi(argv[3]), &set);
		if (sched_setaffinity(0, sizeof(set), &set))
			die("sched_setaffinity");
	}
	stream = strcmp(argv[1], "stream") == 0;
	seconds = atof(argv[2]);
	addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	srv = socket(AF_INET, SOCK_STREAM, 0);
	if (srv < 0 || bind(srv, (struct sockaddr *)&addr, sizeof(addr)) || listen(srv, 1) ||
	    getsockname(srv, (struct sockaddr *)&addr, &len))
		die("listen");
	child = fork();
	if (child < 0)
		die("fork");
	if (child == 0) {
		int c = accept(srv, NULL, NULL);
		ssize_t r;

		setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		if (stream) {
			while ((r = read(c, buf, sizeof(buf))) > 0)
				;
		} else {
			while ((r = read(c, buf, 1)) == 1)
				if (write(c, buf, 1) != 1)
					break;
		}
		_exit(0);
	}
	close(srv);
	cl = socket(AF_INET, SOCK_STREAM, 0);
	if (connect(cl, (struct sockaddr *)&addr, sizeof(addr)))
		die("connect");
	setsockopt(cl, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	c0 = cpu_seconds(RUSAGE_SELF);
	t0 = now();
	do {
		for (int i = 0; i < 256; i++) {
			if (stream) {
				if (write(cl, buf, sizeof(buf)) != sizeof(buf))
					die("write");
				n += sizeof(buf);
			} else {
				if (write(cl, buf, 1) != 1 || read(cl, buf, 1) != 1)
					die("ping-pong");
				n++;
			}
		}
		t = now() - t0;
	} while (t < seconds);
	close(cl);
	waitpid(child, NULL, 0);
	/* the peer's CPU before the loop (accept) is negligible */
	printf("%s %llu %.6f %.6f\n", stream ? "stream" : "rr", n, t,
	       cpu_seconds(RUSAGE_SELF) - c0 + cpu_seconds(RUSAGE_CHILDREN));
	return 0;
}
