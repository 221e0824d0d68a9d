// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* Threads make syscalls as fast as they can, in bursts that move from
 * syscall to syscall with short pauses between (rows go quiet, then come
 * back). Usage: hammer RUN_MS THREADS BURST NR... ; waits for a line on
 * stdin before starting; prints "nr count" per syscall at the end. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>

#define MAX_NRS 16
#define MAX_THREADS 16
static long nrs[MAX_NRS];
static int n_nrs, burst;
static volatile int stop;
static unsigned long long made[MAX_THREADS][MAX_NRS];

static void *work(void *arg)
{
	long t = (long)arg;
	unsigned seed = (unsigned)t * 7919u + 1;
	int j = (int)t % n_nrs;

	while (!stop) {
		j = (j + 1) % n_nrs;
		for (int k = 0; k < burst; k++)
			syscall(nrs[j], -1L);
		made[t][j] += burst;
		seed = seed * 1103515245u + 12345u;
		struct timespec ts = { 0, (long)((seed >> 8) % 2000) * 1000L }; /* 0-2 ms */
		nanosleep(&ts, NULL);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	int run_ms = atoi(argv[1]), threads = atoi(argv[2]);
	pthread_t tid[MAX_THREADS];
	char line[16];

	burst = atoi(argv[3]);
	for (int i = 4; i < argc && n_nrs < MAX_NRS; i++)
		nrs[n_nrs++] = atol(argv[i]);
	printf("ready\n");
	fflush(stdout);
	if (!fgets(line, sizeof(line), stdin))
		return 1;
	for (long t = 0; t < threads; t++)
		pthread_create(&tid[t], NULL, work, (void *)t);
	usleep(run_ms * 1000);
	stop = 1;
	for (int t = 0; t < threads; t++)
		pthread_join(tid[t], NULL);
	for (int j = 0; j < n_nrs; j++) {
		unsigned long long sum = 0;
		for (int t = 0; t < threads; t++)
			sum += made[t][j];
		printf("%ld %llu\n", nrs[j], sum);
	}
	fflush(stdout);
	return 0;
}
