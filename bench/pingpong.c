/* Context-switch-heavy workload: two processes ping-pong one byte over two pipes, for
 * SECONDS seconds; prints round trips per second. Pin it to one core with taskset so every
 * round trip is two context switches on that core. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <sys/wait.h>

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	double secs = argc > 1 ? atof(argv[1]) : 5;
	int a[2], b[2];
	char c = 'x';
	if (pipe(a) || pipe(b))
		return 1;
	pid_t child = fork();
	if (child == 0) {
		close(a[1]);
		close(b[0]);
		while (read(a[0], &c, 1) == 1)
			if (write(b[1], &c, 1) != 1)
				break;
		_exit(0);
	}
	close(a[0]);
	close(b[1]);
	long n = 0;
	double start = now(), end = start + secs;
	while (1) {
		if (write(a[1], &c, 1) != 1 || read(b[0], &c, 1) != 1)
			break;
		n++;
		if ((n & 1023) == 0 && now() >= end)
			break;
	}
	double t = now() - start;
	close(a[1]);
	waitpid(child, 0, 0);
	printf("%.0f\n", n / t);
	return 0;
}
