/* Passing sockets between processes over unix-domain stream sockets
 * (SCM_RIGHTS), for lanes: the agent hands one end of a socketpair to a
 * driver and the other to a worker, each attached to the bytes of a LANE
 * frame. A descriptor arrives with the first byte of the write that carried
 * it, so a receiver queues what comes and the LANE frame, parsed later,
 * takes the oldest. */
#ifndef SH_FDPASS_H
#define SH_FDPASS_H

#include <stddef.h>
#include <sys/types.h>

#define SH_FDQ_MAX 4

/* Descriptors received and not yet taken, oldest first. */
typedef struct sh_fdq_s {
  int fd[SH_FDQ_MAX];
  int n;
} sh_fdq_t;

/* send(2) of p[0..n) with `fd` attached (MSG_NOSIGNAL|MSG_DONTWAIT). Bytes
 * sent (the descriptor went with them) or -errno. */
ssize_t sh_send_with_fd(int sock, const void *p, size_t n, int fd);
/* recv(2) into p that also takes descriptors that come along into q (ones
 * that do not fit are closed). `flags` as for recv. Bytes read, 0 at end of
 * file, or -errno. Received descriptors are close-on-exec. */
ssize_t sh_recv_fds(int sock, void *p, size_t n, int flags, sh_fdq_t *q);
/* The oldest queued descriptor, or -1. */
int sh_fdq_take(sh_fdq_t *q);
/* Closes every queued descriptor. */
void sh_fdq_close(sh_fdq_t *q);

#endif
