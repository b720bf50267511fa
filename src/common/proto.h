/* Message bodies: layouts, encoders and validating decoders for every frame
 * type that carries structure. docs/protocol.md is the reference; this header
 * and that page change together. Decoders never allocate: views point into
 * the frame body they were given. */
#ifndef SH_PROTO_H
#define SH_PROTO_H

#include <stdint.h>

#include "common/auth.h"
#include "common/buf.h"
#include "common/frame.h"

/* HELLO roles and flags. */
enum { SH_ROLE_DRIVER = 1, SH_ROLE_WORKER = 2, SH_ROLE_CLI = 3, SH_ROLE_NODE = 4, SH_ROLE_PEER = 5 };
#define SH_HELLO_OWNER 0x1u      /* the daemon exits when this connection closes */
#define SH_HELLO_WAIT_NODES 0x2u /* driver: an infeasible request waits for nodes
                                  * to join instead of failing */
#define SH_HELLO_RESUME 0x4u     /* driver: give me back the client id in HELLO's
                                  * client_id field (a reconnect after a head
                                  * restart); the daemon grants it when free */
#define SH_HELLO_LANES 0x8u      /* driver on the agent's unix socket: it takes
                                  * lanes (LANE frames with a socket attached) */

/* SUBMIT kinds and flags. */
enum { SH_KIND_TASK = 0, SH_KIND_ACTOR_CREATE = 1, SH_KIND_ACTOR_CALL = 2 };
#define SH_SUBMIT_RETRY_EXC 0x1u /* retry when the user function raises */
/* SUBMIT frame header flag: sent again by a driver that reconnected to a
 * restarted head (the task may have been queued or running there). */
#define SH_SUBMIT_RESENT 0x1u
/* SUBMIT frame header flag: a submit that came alone (a synchronous caller);
 * the agent may lease the worker that runs it to the driver (a lane). */
#define SH_SUBMIT_WANT_LANE 0x2u

/* LANE frame flags (docs/protocol.md, "Lanes"). A lane is a socketpair the
 * agent makes between a driver and one idle pool worker it leases to that
 * driver; the driver sends FUNC and EXEC frames down it and the worker
 * answers with RESULT frames, so a synchronous call crosses two processes
 * instead of three. */
#define SH_LANE_GRANT 0x1u  /* agent to driver (body u32 worker pid) and to worker
                             * (body u32 client id): id is the lease; one end of the
                             * socketpair rides along (SCM_RIGHTS) */
#define SH_LANE_REVOKE 0x2u /* agent to worker: end the lease once idle */
#define SH_LANE_END 0x4u    /* worker to driver on the lane, and to the agent (body
                             * u64 tasks run): the lease is over */
#define SH_LANE_LOST 0x8u   /* driver to agent: the lane broke with task (body u64 id)
                             * on it; its SUBMIT follows, to run again or fail */
#define SH_LANE_DONE 0x10u  /* driver to agent: the outcome of lane task `id` (a
                             * RESULT body), for tasks submitted with it as a
                             * dependency */

/* CANCEL / KILL_ACTOR frame flags. */
#define SH_CANCEL_FORCE 0x1u
#define SH_CANCEL_QUEUED_ONLY 0x2u /* leave a running task alone (Future.cancel) */
#define SH_CANCEL_LANE 0x4u        /* the task runs on the driver's lane (lane.c) */
/* KILL_ACTOR frame flags. */
#define SH_KILL_NO_RESTART 0x1u
#define SH_KILL_WHEN_IDLE 0x2u /* after the calls already submitted (last handle dropped) */
/* CANCEL_REPLY outcomes. */
enum { SH_CANCEL_NONE = 0, SH_CANCEL_QUEUED = 1, SH_CANCEL_RUNNING = 2 };

/* Object store. A value above the inline threshold lives in a segment file,
 * STORE_DIR/<16 hex digits of its id>, that the writer (driver or worker)
 * creates and the agent then seals, spills and frees. */
#define SH_PUT_STORED 0x1u    /* PUT flag: body is u64 segment size; PUT_REPLY follows */
#define SH_PUT_SEGMENT 0x2u   /* PUT flag (head to node): body is the u64 size of a segment
                               * whose bytes came before in CHUNK frames */
#define SH_EXEC_DEVICES 0x1u  /* EXEC flag: the body ends in a u64 mask of GPU devices */
#define SH_RELEASE_UNMAP 0x1u /* RELEASE flag: the ids are mappings dropped, not handles */
#define SH_STATUS_OBJECTS 0x1u /* STATUS flag: include the object list */
#define SH_CODE_STORED 1      /* RESULT code of an OK value that is in the store:
                               * payload is its u64 segment size */
#define SH_CODE_SEGMENT 2     /* RESULT code of an OK value from a node (node to head):
                               * payload is the u64 size of a segment whose bytes came
                               * before in CHUNK frames */
#define SH_CODE_ON_NODE 3     /* RESULT code of an OK value a node keeps in its own store
                               * (node to head): payload is its u64 segment size */
#define SH_CODE_PULL_FAILED 4 /* RESULT code of a LOST task (node to head): a dependency
                               * could not be pulled; the task did not run */
#define SH_CODE_ACTOR_GONE 5  /* RESULT code (node to head) for an actor's own id, status
                               * ACTOR_DIED: the actor's worker died on a node that lives
                               * on; the node forgot the actor (the head may restart it) */
/* CHUNK body: u64 total size, u64 offset, bytes; chunks of one segment come
 * in order, each at most SH_CHUNK_MAX bytes (and within the frame limit). */
#define SH_CHUNK_HDR 16
#define SH_CHUNK_MAX (4u << 20)
#define SH_DEP_STORED 0x80000000u /* EXEC dependency length bit: stored, u64 id and
                                   * u64 segment size follow */
#define SH_STORE_DIR_MAX 256

/* OUTPUT streams. */
enum { SH_STREAM_STDOUT = 1, SH_STREAM_STDERR = 2 };

/* Task outcome statuses. X(name, value, summary). */
#define SH_STATUS_TYPES(X)                                                     \
  X(OK, 0, "payload is the pickled return value")                             \
  X(ERROR, 1, "payload is the pickled exception the function raised")         \
  X(CRASHED, 2, "the worker died; code is the signal (>0) or -exit status")   \
  X(TIMEOUT, 3, "the task ran past its timeout and its worker was replaced")  \
  X(CANCELLED, 4, "the task was cancelled")                                   \
  X(INFEASIBLE, 5, "no node can ever satisfy the resource request")           \
  X(ACTOR_DIED, 6, "the actor the call was for is dead")                      \
  X(LOST, 7, "an object the task needs is unknown or was released")           \
  X(BAD_REQUEST, 8, "the request was malformed; payload says how")           \
  X(STORE_FULL, 9, "the object store is full and nothing more can be spilled")

typedef enum {
#define SH_X(name, val, doc) SH_ST_##name = val,
  SH_STATUS_TYPES(SH_X)
#undef SH_X
  SH_ST_MAX_
} sh_status_t;

const char *sh_status_name(unsigned status);

/* Resource amounts. CPU and GPU in thousandths, memory in bytes. Custom
 * resources are counted in thousandths too. */
#define SH_MAX_CUSTOM 16
#define SH_NAME_MAX 64

typedef struct sh_custom_s {
  char name[SH_NAME_MAX]; /* NUL-terminated */
  uint64_t milli;
} sh_custom_t;

/* A set of resources: CPU and GPU in thousandths, memory in bytes, custom
 * names in thousandths. What a node offers or has free; head/head.h does the
 * arithmetic. */
typedef struct sh_res_s {
  uint64_t cpu_milli, gpu_milli, memory;
  uint32_t ncustom;
  sh_custom_t custom[SH_MAX_CUSTOM];
} sh_res_t;

typedef struct sh_hello_s {
  uint32_t role, pid, flags;
  uint32_t client_id; /* with SH_HELLO_RESUME: the id asked for; else 0 */
} sh_hello_t;

typedef struct sh_hello_ok_s {
  uint32_t client_id, node_id, num_workers;
  uint64_t cpu_milli, gpu_milli, memory;
  uint64_t inline_threshold;  /* values at or above this many bytes go to the store */
  uint64_t store_capacity;    /* object store memory in bytes */
  char store_dir[SH_STORE_DIR_MAX]; /* NUL-terminated; "" when there is no store */
} sh_hello_ok_t;

/* SUBMIT body view. Header id is the task id (the actor id for
 * SH_KIND_ACTOR_CREATE). */
typedef struct sh_submit_s {
  uint64_t fn_id;      /* FUNC id of the function or class; 0 for calls */
  uint64_t actor_id;   /* target actor for SH_KIND_ACTOR_CALL */
  uint32_t kind;       /* SH_KIND_* */
  uint32_t flags;      /* SH_SUBMIT_* */
  uint32_t max_retries;
  uint32_t timeout_ms; /* 0: none */
  uint64_t cpu_milli, gpu_milli, memory;
  uint32_t ndeps;
  uint32_t ncustom;
  const uint8_t *deps;   /* ndeps little-endian u64 object ids */
  sh_custom_t custom[SH_MAX_CUSTOM];
  const char *method;    /* not NUL-terminated */
  uint32_t method_len;
  const uint8_t *args;   /* pickled (args, kwargs) with deps as placeholders */
  uint32_t args_len;
} sh_submit_t;

#define SH_SUBMIT_FIXED 72

/* Appends a whole SUBMIT frame. 0, or -ENOMEM/-E2BIG, or -EINVAL for more
 * than SH_MAX_CUSTOM custom resources or a name that is empty or too long
 * (b unchanged). */
int sh_submit_append(sh_buf_t *b, uint64_t task_id, const sh_submit_t *s);
/* Decodes a SUBMIT body. 0 or SH_EBODY (malformed, too many custom
 * resources, a custom name that is empty or too long). */
int sh_submit_decode(const uint8_t *body, size_t len, sh_submit_t *s);

/* RESULT body: u32 status, i32 code, payload. */
typedef struct sh_result_s {
  uint32_t status;
  int32_t code;
  const uint8_t *payload;
  uint32_t payload_len;
} sh_result_t;

int sh_result_append(sh_buf_t *b, uint64_t task_id, uint32_t status,
                     int32_t code, const void *payload, size_t len);
int sh_result_decode(const uint8_t *body, size_t len, sh_result_t *r);

/* EXEC body (agent to worker). Dependencies travel resolved, in order. */
typedef struct sh_exec_dep_s {
  const uint8_t *data; /* pickled value (NULL when stored) */
  uint32_t len;
  int stored;          /* the value is the dependency's segment in the store */
  uint64_t id, size;   /* the object and its segment size, when stored */
} sh_exec_dep_t;

typedef struct sh_exec_s {
  uint64_t fn_id, actor_id;
  uint32_t kind;
  uint32_t ndeps;
  const uint8_t *deps; /* raw: ndeps x { u32 len, bytes }; walk with sh_exec_dep_next */
  uint32_t deps_len;
  const char *method;
  uint32_t method_len;
  const uint8_t *args;
  uint32_t args_len;
} sh_exec_t;

/* Begins an EXEC frame; the caller then calls sh_exec_add_dep ndeps times and
 * sh_exec_finish. Returns the frame offset or -ENOMEM. */
long sh_exec_begin(sh_buf_t *b, uint64_t task_id, uint64_t fn_id,
                   uint64_t actor_id, uint32_t kind, uint32_t ndeps,
                   uint32_t method_len, uint32_t args_len);
int sh_exec_add_dep(sh_buf_t *b, const void *data, uint32_t len);
/* A dependency whose value is its segment in the store. */
int sh_exec_add_stored_dep(sh_buf_t *b, uint64_t id, uint64_t size);
int sh_exec_finish(sh_buf_t *b, long at, const char *method, uint32_t method_len,
                   const void *args, uint32_t args_len);
int sh_exec_decode(const uint8_t *body, size_t len, sh_exec_t *e);
/* Appends the GPU devices the task may use (bit i: device i) to the EXEC
 * frame at `at`, already finished by sh_exec_finish, and sets its DEVICES
 * flag. 0 or -ENOMEM (the frame is then unusable: abort it). */
int sh_exec_add_devices(sh_buf_t *b, long at, uint64_t mask);
/* sh_exec_decode for a frame with header flags `flags`: with SH_EXEC_DEVICES
 * the body ends in the u64 device mask, returned in *devices (else 0). */
int sh_exec_decode_flags(const uint8_t *body, size_t len, unsigned flags, sh_exec_t *e,
                         uint64_t *devices);
/* Walks the dependency list: returns 1 and fills *d, 0 at the end, or
 * SH_EBODY. `r` must start as sh_rd_init(r, e->deps, e->deps_len). */
int sh_exec_dep_next(sh_rd_t *r, sh_exec_dep_t *d);

int sh_hello_append(sh_buf_t *b, const sh_hello_t *h);
int sh_hello_decode(const uint8_t *body, size_t len, sh_hello_t *h);
int sh_hello_ok_append(sh_buf_t *b, const sh_hello_ok_t *h);
int sh_hello_ok_decode(const uint8_t *body, size_t len, sh_hello_ok_t *h);

/* The authentication handshake on TCP (docs/protocol.md, "Authentication").
 * Bodies are fixed: AUTH_CHALLENGE u32 scheme, u32 reserved, nonce (40
 * bytes); AUTH_RESPONSE client nonce, proof (64); AUTH_OK proof (32). */
#define SH_AUTH_CHALLENGE_LEN (8 + SH_AUTH_NONCE)
#define SH_AUTH_RESPONSE_LEN (SH_AUTH_NONCE + SH_AUTH_MAC)
#define SH_AUTH_OK_LEN SH_AUTH_MAC

/* Appends an AUTH_CHALLENGE with scheme SH_AUTH_SCHEME. 0 or -ENOMEM. */
int sh_auth_challenge_append(sh_buf_t *b, const uint8_t nonce[SH_AUTH_NONCE]);
/* Decodes an AUTH_CHALLENGE into nonce. 0, or SH_EBODY for a wrong length or
 * a scheme other than SH_AUTH_SCHEME. */
int sh_auth_challenge_decode(const uint8_t *body, size_t len,
                             uint8_t nonce[SH_AUTH_NONCE]);
/* Appends an AUTH_RESPONSE (client nonce, client proof). 0 or -ENOMEM. */
int sh_auth_response_append(sh_buf_t *b, const uint8_t cnonce[SH_AUTH_NONCE],
                            const uint8_t mac[SH_AUTH_MAC]);
/* 0, or SH_EBODY for a wrong length. */
int sh_auth_response_decode(const uint8_t *body, size_t len,
                            uint8_t cnonce[SH_AUTH_NONCE], uint8_t mac[SH_AUTH_MAC]);
/* Appends an AUTH_OK (server proof). 0 or -ENOMEM. */
int sh_auth_ok_append(sh_buf_t *b, const uint8_t mac[SH_AUTH_MAC]);
/* 0, or SH_EBODY for a wrong length. */
int sh_auth_ok_decode(const uint8_t *body, size_t len, uint8_t mac[SH_AUTH_MAC]);

/* OUTPUT body: u32 pid, u32 stream, bytes. */
int sh_output_append(sh_buf_t *b, uint64_t task_id, uint32_t pid,
                     uint32_t stream, const void *data, size_t len);

/* PUT_REPLY body: u32 status, UTF-8 text. MAP_REPLY body: u32 status, u64
 * segment size, UTF-8 text. */
int sh_put_reply_append(sh_buf_t *b, uint64_t id, uint32_t status, const char *text);
int sh_map_reply_append(sh_buf_t *b, uint64_t id, uint32_t status, uint64_t size,
                        const char *text);

/* NODE_REGISTER body (node to head, right after its HELLO with role NODE):
 * u32 node_id, u32 pid, u32 num_workers, u32 host_len, resources, host.
 * Resources on the wire: u64 cpu_milli, u64 gpu_milli, u64 memory, u32
 * ncustom, then ncustom x { u32 n, bytes[n] name, u64 milli }. */
#define SH_HOST_MAX 256
typedef struct sh_register_s {
  uint32_t node_id;      /* the node's own id (kept across reconnects), not 0 or 1 */
  uint32_t pid, num_workers;
  sh_res_t total;        /* what the node offers */
  char host[SH_HOST_MAX]; /* its host name, NUL-terminated */
  uint32_t node_port;    /* TCP port other nodes pull objects from; 0: none (optional
                            trailing u32 on the wire) */
} sh_register_t;

/* Appends a NODE_REGISTER frame. 0, -ENOMEM, or -EINVAL for a bad custom name
 * or more than SH_MAX_CUSTOM of them (b unchanged). */
int sh_register_append(sh_buf_t *b, const sh_register_t *r);
/* 0, or SH_EBODY: short, trailing bytes (other than a u32 node port 1-65535),
 * node_id 0, host_len >= SH_HOST_MAX,
 * a NUL in the host, or bad resources (as SUBMIT's custom list). */
int sh_register_decode(const uint8_t *body, size_t len, sh_register_t *r);

/* NODE_HOLDS body (node to head, right after NODE_REGISTER when the node
 * kept work across losing its head): u32 ntasks, u32 nactors, then ntasks
 * task ids and nactors actor ids, each u64; then, optionally, nactors
 * resource sets (as in NODE_REGISTER): what each actor holds on the node.
 * `ids` and `held` point into the body. */
typedef struct sh_holds_s {
  uint32_t ntasks, nactors;
  const uint8_t *ids;  /* (ntasks + nactors) little-endian u64 */
  const uint8_t *held; /* nactors resource sets (sh_holds_held_next); NULL if absent */
  size_t held_len;
} sh_holds_t;

/* Appends a NODE_HOLDS frame; `held` (nactors sets, or NULL for none) the
 * resources each actor holds. 0, -ENOMEM (b unchanged), or -EINVAL for a
 * bad custom resource name. */
int sh_holds_append(sh_buf_t *b, const uint64_t *tasks, uint32_t ntasks,
                    const uint64_t *actors, uint32_t nactors, const sh_res_t *held);
/* 0, or SH_EBODY: short, fewer bytes than 8 + 8 x (ntasks + nactors), or
 * bytes after the ids that are not exactly nactors valid resource sets. */
int sh_holds_decode(const uint8_t *body, size_t len, sh_holds_t *h);
/* Reads the next resource set of a NODE_HOLDS's `held` (r initialised on
 * held/held_len). 0 or SH_EBODY. */
int sh_holds_held_next(sh_rd_t *r, sh_res_t *out);

/* HEARTBEAT body from a node: u32 load_milli, u32 running, resources free
 * (as in NODE_REGISTER). From the head the body is empty. */
typedef struct sh_heartbeat_s {
  uint32_t load_milli;   /* measured load x 1000 (1-minute load average) */
  uint32_t running;      /* tasks on its workers now */
  sh_res_t free;         /* its free resources as it sees them */
} sh_heartbeat_t;

/* h NULL: the head's empty heartbeat. 0, -ENOMEM or -EINVAL (b unchanged). */
int sh_heartbeat_append(sh_buf_t *b, const sh_heartbeat_t *h);
/* Decodes a node's heartbeat. 0 or SH_EBODY. */
int sh_heartbeat_decode(const uint8_t *body, size_t len, sh_heartbeat_t *h);

/* DRAIN_REPLY body: u32 status (SH_ST_OK, or SH_ST_BAD_REQUEST for an unknown
 * node), UTF-8 text. Header id: the node id. */
int sh_drain_reply_append(sh_buf_t *b, uint64_t node_id, uint32_t status, const char *text);

/* PULL_REPLY body (holder to puller, after the segment's CHUNKs when OK):
 * u32 status, u64 size, UTF-8 text. Header id: the object. */
int sh_pull_reply_append(sh_buf_t *b, uint64_t id, uint32_t status, uint64_t size,
                         const char *text);
typedef struct sh_pull_reply_s {
  uint32_t status;       /* SH_ST_OK, or SH_ST_LOST etc. */
  uint64_t size;         /* the segment's size when OK */
  const char *text;      /* why (not NUL-terminated) */
  uint32_t text_len;
} sh_pull_reply_t;
/* 0, or SH_EBODY (short, status >= SH_ST_MAX_). */
int sh_pull_reply_decode(const uint8_t *body, size_t len, sh_pull_reply_t *r);

/* LOCATE body (head to node): u64 size, u32 holder node id, u32 addr_len,
 * bytes[addr_len] the holder's node port as "HOST:PORT". Header id: object. */
#define SH_ADDR_MAX 80
typedef struct sh_locate_s {
  uint64_t size;
  uint32_t node_id;           /* the holder, not 0 */
  char addr[SH_ADDR_MAX];     /* NUL-terminated, not empty */
} sh_locate_t;
int sh_locate_append(sh_buf_t *b, uint64_t id, const sh_locate_t *l);
/* 0, or SH_EBODY: short, trailing bytes, node_id 0, an address that is
 * empty, SH_ADDR_MAX bytes or longer, or holds a NUL. */
int sh_locate_decode(const uint8_t *body, size_t len, sh_locate_t *l);

/* ERROR body: u32 code, UTF-8 text. */
int sh_error_append(sh_buf_t *b, int code, const char *text);

#endif
