/* The frame codec: a fixed 24-byte little-endian header and a body. The parser
 * is fed bytes and does no I/O; the header is validated before any caller
 * allocates room for the body. docs/protocol.md is the reference. */
#ifndef SH_FRAME_H
#define SH_FRAME_H

#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"

#define SH_FRAME_MAGIC 0x4c4f4853u /* "SHOL" read as little-endian u32 */
#define SH_FRAME_VERSION 1
#define SH_FRAME_HDR 24
/* Default largest body accepted; daemons may be configured lower or higher. */
#define SH_FRAME_MAX_DEFAULT (1024u * 1024u * 1024u)

/* Message types. X(name, value, summary). Values are wire-stable. */
#define SH_MSG_TYPES(X)                                                        \
  X(HELLO, 1, "client introduces itself (role, pid, flags)")                   \
  X(HELLO_OK, 2, "agent accepts a client and describes the node")              \
  X(FUNC, 3, "registers a pickled function or class under an id")             \
  X(SUBMIT, 4, "a task, actor creation or actor call")                        \
  X(RESULT, 5, "the outcome of a task (value, error or engine failure)")      \
  X(PUT, 6, "stores a pickled value under an object id")                      \
  X(RELEASE, 7, "the client no longer holds these object ids")                \
  X(CANCEL, 8, "cancel a task (flag FORCE kills the worker running it)")      \
  X(CANCEL_REPLY, 9, "what cancelling found")                                 \
  X(KILL_ACTOR, 10, "stop an actor and fail its pending calls")               \
  X(STATUS, 11, "ask for the node's state")                                   \
  X(STATUS_REPLY, 12, "the node's state as a msgpack map")                    \
  X(STOP, 13, "ask the daemon to shut down")                                  \
  X(OUTPUT, 14, "a worker's stdout or stderr bytes for a driver")             \
  X(EXEC, 15, "agent asks a worker to run a task")                            \
  X(ERROR, 16, "connection-level error text before the peer closes")          \
  X(PUT_REPLY, 17, "outcome of a PUT of a stored object (status, text)")       \
  X(MAP, 18, "a driver maps a stored object: make it resident, count it")     \
  X(MAP_REPLY, 19, "outcome of MAP (status, segment size, text)")             \
  X(AUTH_CHALLENGE, 20, "agent's nonce: first frame on a TCP connection")     \
  X(AUTH_RESPONSE, 21, "peer's nonce and proof that it holds the token")      \
  X(AUTH_OK, 22, "agent's proof that it holds the token")                    \
  X(NODE_REGISTER, 23, "a node agent joins the head: id, resources, host")    \
  X(HEARTBEAT, 24, "liveness both ways; from a node: free, load, running")    \
  X(DRAIN, 25, "stop sending new work to a node")                             \
  X(DRAIN_REPLY, 26, "outcome of DRAIN (status, text)")                       \
  X(CHUNK, 27, "a piece of a segment between head and node (total, offset, bytes)") \
  X(NODE_HOLDS, 28, "a node rejoining its head: the head's tasks and actors it kept")      \
  X(PULL, 32, "asks the holder of a stored object for its segment")           \
  X(PULL_REPLY, 33, "outcome of PULL after its CHUNKs (status, size, text)")  \
  X(LOCATE, 34, "head to node: where a stored object it needs is (size, node, address)") \
  X(HAVE, 35, "node to head: the stored objects it now holds (u64 ids)")        \
  X(LANE, 36, "a driver's direct lane to a leased worker: grant, revoke, end, lost, done")

typedef enum {
#define SH_X(name, val, doc) SH_MSG_##name = val,
  SH_MSG_TYPES(SH_X)
#undef SH_X
  SH_MSG_MAX_
} sh_msg_type_t;

/* Name of a message type ("SUBMIT"), or "?" for an unknown value. */
const char *sh_msg_name(unsigned type);

typedef struct sh_frame_hdr_s {
  uint32_t magic;   /* SH_FRAME_MAGIC */
  uint8_t version;  /* SH_FRAME_VERSION */
  uint8_t type;     /* sh_msg_type_t */
  uint16_t flags;   /* per-type flags, unknown bits must be zero */
  uint64_t id;      /* task, object, function or request id */
  uint32_t len;     /* body bytes following the header */
  uint32_t reserved; /* zero */
} sh_frame_hdr_t;

/* Frame-level errors (negative, distinct from -errno values). */
#define SH_EMAGIC (-1001)
#define SH_EVERSION (-1002)
#define SH_ETYPE (-1003)
#define SH_ETOOBIG (-1004)
#define SH_ERESERVED (-1005)
#define SH_EBODY (-1006) /* body does not decode for its type */
#define SH_EAUTH (-1007) /* the peer did not prove it holds the cluster token */
#define SH_ETLS (-1008)  /* TLS failed: no TLS where it is required, a refused certificate */

/* Human-readable text for an engine error code (frame or -errno). */
const char *sh_strerror(int rc);

/* Decodes and validates a header from `p` (SH_FRAME_HDR bytes). Returns 0 or a
 * SH_E* code; `max_body` bounds hdr->len. */
int sh_frame_hdr_decode(const uint8_t *p, size_t max_body, sh_frame_hdr_t *hdr);

/* Writes a header into `p` (SH_FRAME_HDR bytes). */
void sh_frame_hdr_encode(uint8_t *p, unsigned type, unsigned flags, uint64_t id,
                         uint32_t len);

/* A parsed frame: header plus a pointer to its body inside the parser input. */
typedef struct sh_frame_s {
  sh_frame_hdr_t hdr;
  const uint8_t *body;
} sh_frame_t;

/* Parses one frame from the front of `p[0..n)`. Returns 1 and sets *out and
 * *used when a whole frame is there, 0 when more bytes are needed (*used is
 * then the total bytes the frame needs if known, else SH_FRAME_HDR), or a
 * negative SH_E* code for a frame that must close the connection. */
int sh_frame_parse(const uint8_t *p, size_t n, size_t max_body, sh_frame_t *out,
                   size_t *used);

/* Appends a header and body to `b`. 0 or -ENOMEM (b unchanged). */
int sh_frame_append(sh_buf_t *b, unsigned type, unsigned flags, uint64_t id,
                    const void *body, size_t len);

/* Appends a header for a body the caller appends next; returns the header's
 * position (relative to the buffer's unconsumed front, so it stays valid when
 * appending moves the bytes) for sh_frame_finish. -ENOMEM on failure. Nothing
 * may be consumed from `b` between begin and finish or abort. */
long sh_frame_begin(sh_buf_t *b, unsigned type, unsigned flags, uint64_t id);
/* Patches the length of the frame begun at `at` to cover all bytes since. */
void sh_frame_finish(sh_buf_t *b, long at);
/* Drops the frame begun at `at` and everything appended after it. */
void sh_frame_abort(sh_buf_t *b, long at);

#endif
