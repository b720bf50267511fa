/* Intrusive circular doubly linked queues: a node lives inside the struct it
 * links, so queuing never allocates. An empty queue points at itself. */
#ifndef SH_QUEUE_H
#define SH_QUEUE_H

#include <stddef.h>

typedef struct sh_queue_s {
  struct sh_queue_s *next, *prev;
} sh_queue_t;

#define sh_queue_data(ptr, type, field) ((type *)((char *)(ptr)-offsetof(type, field)))

static inline void sh_queue_init(sh_queue_t *q) { q->next = q->prev = q; }
static inline int sh_queue_empty(const sh_queue_t *q) { return q->next == q; }
static inline sh_queue_t *sh_queue_head(const sh_queue_t *q) { return q->next; }
/* A node not on any queue points at itself (after sh_queue_init/remove). */
static inline int sh_queue_linked(const sh_queue_t *n) { return n->next != n; }

static inline void sh_queue_insert_tail(sh_queue_t *q, sh_queue_t *n) {
  n->next = q;
  n->prev = q->prev;
  q->prev->next = n;
  q->prev = n;
}

static inline void sh_queue_insert_head(sh_queue_t *q, sh_queue_t *n) {
  n->next = q->next;
  n->prev = q;
  q->next->prev = n;
  q->next = n;
}

static inline void sh_queue_remove(sh_queue_t *n) {
  n->prev->next = n->next;
  n->next->prev = n->prev;
  n->next = n->prev = n;
}

/* Moves every node of `from` to the front of `to`, keeping their order. */
static inline void sh_queue_prepend_all(sh_queue_t *to, sh_queue_t *from) {
  if (sh_queue_empty(from)) return;
  sh_queue_t *first = from->next, *last = from->prev;
  last->next = to->next;
  to->next->prev = last;
  to->next = first;
  first->prev = to;
  sh_queue_init(from);
}

#define sh_queue_foreach(n, q) for ((n) = (q)->next; (n) != (q); (n) = (n)->next)

#endif
