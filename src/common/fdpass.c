/* Descriptor passing over unix-domain sockets (see fdpass.h). */
#include "common/fdpass.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

ssize_t sh_send_with_fd(int sock, const void *p, size_t n, int fd) {
  union {
    struct cmsghdr h;
    char b[CMSG_SPACE(sizeof(int))];
  } ctl;
  memset(&ctl, 0, sizeof ctl);
  struct iovec iov = {.iov_base = (void *)p, .iov_len = n};
  struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.b,
                     .msg_controllen = sizeof ctl.b};
  struct cmsghdr *c = CMSG_FIRSTHDR(&m);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int));
  memcpy(CMSG_DATA(c), &fd, sizeof fd);
  ssize_t w;
  do w = sendmsg(sock, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
  while (w < 0 && errno == EINTR);
  return w < 0 ? -errno : w;
}

ssize_t sh_recv_fds(int sock, void *p, size_t n, int flags, sh_fdq_t *q) {
  union {
    struct cmsghdr h;
    char b[CMSG_SPACE(SH_FDQ_MAX * sizeof(int))];
  } ctl;
  struct iovec iov = {.iov_base = p, .iov_len = n};
  struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.b,
                     .msg_controllen = sizeof ctl.b};
  ssize_t r;
  do r = recvmsg(sock, &m, flags | MSG_CMSG_CLOEXEC);
  while (r < 0 && errno == EINTR);
  if (r < 0) return -errno;
  for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < k; i++) {
      int fd;
      memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
      if (q && q->n < SH_FDQ_MAX) q->fd[q->n++] = fd;
      else close(fd);
    }
  }
  return r;
}

int sh_fdq_take(sh_fdq_t *q) {
  if (!q->n) return -1;
  int fd = q->fd[0];
  memmove(q->fd, q->fd + 1, (size_t)(q->n - 1) * sizeof(int));
  q->n--;
  return fd;
}

void sh_fdq_close(sh_fdq_t *q) {
  while (q->n) close(sh_fdq_take(q));
}
