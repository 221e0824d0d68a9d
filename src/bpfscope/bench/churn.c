// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * Connection churn at a fixed rate (the agent bench): PROCS processes each
 * open RATE/PROCS TCP connections per second to HOST:PORT, send one
 * HTTP/1.0 request (the server answers and closes first), read to EOF and
 * close. RATE 0: as fast as each process can. Prints what it made:
 *   made=N failed=M seconds=S
 * wrk cannot hold a rate; this paces each connection to its slot.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/prctl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

/* One connection: 0 made, -1 failed. */
static int one(const struct sockaddr_in *to)
{
	static const char req[] = "GET / HTTP/1.0\r\n\r\n";
	char buf[4096];
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0)
		return -1;
	if (connect(fd, (const struct sockaddr *)to, sizeof(*to)) < 0) {
		close(fd);
		return -1;
	}
	if (write(fd, req, sizeof(req) - 1) != (ssize_t)(sizeof(req) - 1)) {
		close(fd);
		return 0; /* established all the same */
	}
	while (read(fd, buf, sizeof(buf)) > 0)
		;
	close(fd);
	return 0;
}

static void worker(const struct sockaddr_in *to, double rate, double seconds, int out)
{
	long made = 0, failed = 0;
	double t0 = now(), end = t0 + seconds;
	for (long i = 0;; i++) {
		double t = now();
		if (t >= end)
			break;
		if (rate > 0) {
			double due = t0 + i / rate;
			if (due >= end)
				break;
			if (due > t) {
				struct timespec ts;
				double d = due - t;
				ts.tv_sec = (time_t)d;
				ts.tv_nsec = (long)((d - ts.tv_sec) * 1e9);
				nanosleep(&ts, NULL);
			}
		}
		if (one(to) == 0)
			made++;
		else
			failed++;
	}
	long res[2] = {made, failed};
	if (write(out, res, sizeof(res)) != sizeof(res))
		_exit(2);
	_exit(0);
}

int main(int argc, char **argv)
{
	if (argc != 6) {
		fprintf(stderr, "usage: %s HOST PORT RATE SECONDS PROCS\n", argv[0]);
		return 2;
	}
	struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
	if (inet_pton(AF_INET, argv[1], &to.sin_addr) != 1) {
		fprintf(stderr, "bad address %s\n", argv[1]);
		return 2;
	}
	double rate = atof(argv[3]), seconds = atof(argv[4]);
	int procs = atoi(argv[5]);
	if (procs < 1 || seconds <= 0 || rate < 0) {
		fprintf(stderr, "bad arguments\n");
		return 2;
	}
	/* the command name the agent's metrics carry, whatever the binary's name */
	prctl(PR_SET_NAME, "bpfscope-churn", 0, 0, 0);
	int fds[2];
	if (pipe(fds) < 0)
		return 1;
	double t0 = now();
	for (int p = 0; p < procs; p++) {
		pid_t pid = fork();
		if (pid < 0)
			return 1;
		if (pid == 0) {
			close(fds[0]);
			worker(&to, rate / procs, seconds, fds[1]);
		}
	}
	close(fds[1]);
	long made = 0, failed = 0, res[2];
	while (read(fds[0], res, sizeof(res)) == sizeof(res)) {
		made += res[0];
		failed += res[1];
	}
	while (wait(NULL) > 0)
		;
	printf("made=%ld failed=%ld seconds=%.3f\n", made, failed, now() - t0);
	return 0;
}
