/* Shared declarations of the shoal._core extension: module state, the types
 * it defines and the helpers its files call into one another.
 *
 * Files: module.c (module, state, error mapping), spec.c (TaskSpec),
 * client.c (Client methods), io.c (connecting and the I/O thread),
 * mpack.c (msgpack to Python), seq.c (packed map chunks), worker.c (the
 * worker loop). */
#ifndef SH_CORE_H
#define SH_CORE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>

#include "common/proto.h"

/* Status of a future completed on the client side only (never on the wire);
 * shoal._future.ST_DISCONNECTED. */
#define SH_ST_DISCONNECTED 100

/* Engine error codes of the extension itself (besides -errno and SH_E*). */
#define SH_EFORKED (-1101) /* the client belongs to the parent of a fork */
#define SH_ECLOSED (-1102) /* the client was closed */
#define SH_ELOST (-1103)   /* the connection to the daemon was lost */

typedef struct sh_client_obj_s sh_client_obj_t;

/* Per-module state. Interned names are created once so the hot paths look
 * attributes up without building strings. */
typedef struct sh_core_state_s {
  PyObject *spec_type;   /* TaskSpec */
  PyObject *client_type; /* Client */
  PyObject *segment_type; /* Segment */
  PyObject *s_complete, *s_result, *s_state, *s_raw, *s_client, *s_id,
      *s_finished, *s_write, *s_flush, *s_i, *s_loads, *s_dumps,
      *s_dumps_exception, *s_DepRef;
  sh_client_obj_t *open; /* clients not yet closed (GIL-protected list) */
} sh_core_state_t;

/* ---- module.c ---- */

/* Incremented in the child of every fork; a client remembers the value it
 * was created under and refuses to work when it changed. */
unsigned sh_core_fork_gen(void);

/* The one place that maps engine error codes to Python exceptions. Sets an
 * exception built from `rc` and the printf-style message (sh_strerror(rc)
 * when fmt is NULL) and returns NULL. */
PyObject *sh_core_raise(int rc, const char *fmt, ...);

/* ---- spec.c ---- */

/* The TaskSpec object: an immutable, pre-validated SUBMIT template. */
typedef struct sh_spec_obj_s {
  PyObject_HEAD
  sh_submit_t s;    /* all fields but deps/args; method points into `method` */
  PyObject *method; /* str or None */
  PyObject *name;   /* str or None */
  PyObject *custom; /* tuple of (name, milli) as given, normalized */
} sh_spec_obj_t;

/* Creates the TaskSpec type into st and adds it to module m. 0 or -1. */
int sh_spec_add_type(PyObject *m, sh_core_state_t *st);

/* ---- client.c / io.c ---- */

/* Creates the Client type into st and adds it to module m. 0 or -1. */
int sh_client_add_type(PyObject *m, sh_core_state_t *st);
/* Closes every open client of the module (atexit, module free). */
void sh_client_close_all(sh_core_state_t *st);

/* ---- store.c ---- */

/* Creates the Segment type into st and adds it, store_write and store_map to
 * module m. 0 or -1. */
int sh_store_add_type(PyObject *m, sh_core_state_t *st);

/* ---- seq.c ---- */

/* Adds seq_pack and seq_unpack (packed map chunks) to module m. 0 or -1. */
int sh_seq_add_functions(PyObject *m);

/* ---- mpack.c ---- */

/* Converts one msgpack document (the whole of p[0..n)) to Python objects.
 * Returns a new reference, or NULL with ValueError set. */
PyObject *sh_mpack_to_py(const uint8_t *p, size_t n);

/* ---- worker.c ---- */

/* worker_main(fd, support): the worker loop (see its docstring in module.c).
 * Returns None at end of file, or NULL with an exception. */
/* current_task(): the id of the request this worker process is running, or
 * None outside one (the driver, or the worker between requests). */
PyObject *sh_worker_current_task(PyObject *module, PyObject *unused);
PyObject *sh_worker_main(PyObject *module, PyObject *const *args,
                         Py_ssize_t nargs);

#endif
