/* The real node's sandbox ("pause") container: holds the pod's namespaces and does
 * nothing else. registry.k8s.io cannot be reached here, so this is built with gcc
 * -static and packaged by hack/realnode.py. PID 1 gets no default signal handlers,
 * so SIGTERM and SIGINT are handled explicitly, and orphans are reaped. */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) { (void)sig; _exit(0); }

static void reap(int sig) {
  (void)sig;
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
}

int main(void) {
  signal(SIGTERM, stop);
  signal(SIGINT, stop);
  signal(SIGCHLD, reap);
  for (;;) pause();
}
