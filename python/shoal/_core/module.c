/* The shoal._core module: multi-phase init, module state, fork detection and
 * the one function that maps engine errors to Python exceptions. */
#include "core.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>

/* ---- fork detection ---- */

static atomic_uint fork_gen;
static int atfork_registered; /* guarded by the GIL (module exec) */

static void atfork_child_cb(void) { atomic_fetch_add(&fork_gen, 1); }

unsigned sh_core_fork_gen(void) {
  return atomic_load_explicit(&fork_gen, memory_order_relaxed);
}

/* ---- error mapping ---- */

/* shoal.exceptions.GetTimeoutError when importable (it is a TimeoutError),
 * else TimeoutError. Imported on demand: errors are rare and importing at
 * module init would tie _core to the package layout. */
static PyObject *timeout_type(void) {
  PyObject *mod = PyImport_ImportModule("shoal.exceptions");
  PyObject *t = mod ? PyObject_GetAttrString(mod, "GetTimeoutError") : NULL;
  Py_XDECREF(mod);
  if (t && PyType_Check(t)) return t;
  Py_XDECREF(t);
  PyErr_Clear();
  return Py_NewRef(PyExc_TimeoutError);
}

/* shoal.exceptions.AuthenticationError when importable, else
 * ConnectionError (see timeout_type). */
static PyObject *auth_type(void) {
  PyObject *mod = PyImport_ImportModule("shoal.exceptions");
  PyObject *t = mod ? PyObject_GetAttrString(mod, "AuthenticationError") : NULL;
  Py_XDECREF(mod);
  if (t && PyType_Check(t)) return t;
  Py_XDECREF(t);
  PyErr_Clear();
  return Py_NewRef(PyExc_ConnectionError);
}

PyObject *sh_core_raise(int rc, const char *fmt, ...) {
  char msg[2048];
  if (fmt) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
  } else {
    snprintf(msg, sizeof msg, "%s", sh_strerror(rc));
  }
  PyObject *type;
  switch (rc) {
    case -ETIMEDOUT: type = timeout_type(); break;
    case -ENOMEM: type = Py_NewRef(PyExc_MemoryError); break;
    case -E2BIG:
    case -EINVAL: type = Py_NewRef(PyExc_ValueError); break;
    case SH_EFORKED: type = Py_NewRef(PyExc_RuntimeError); break;
    case SH_EAUTH: case SH_ETLS: type = auth_type(); break;
    default: type = Py_NewRef(PyExc_ConnectionError); break;
  }
  PyErr_SetString(type, msg);
  Py_DECREF(type);
  return NULL;
}

/* ---- module functions ---- */

static PyObject *close_all(PyObject *module, PyObject *unused) {
  sh_core_state_t *st = PyModule_GetState(module);
  sh_client_close_all(st);
  Py_RETURN_NONE;
}

PyDoc_STRVAR(worker_main_doc,
"worker_main(fd, support)\n--\n\n"
"Runs the worker loop on the socket `fd` until it reaches end of file.\n\n"
"Args:\n"
"    fd: the worker's end of the agent's socketpair (3 in shoal.worker).\n"
"    support: the shoal._serial module (loads, dumps, dumps_exception, DepRef).\n"
"Returns:\n"
"    None once the agent closed the connection.\n"
"Raises:\n"
"    Exceptions raised by signal handlers while idle (KeyboardInterrupt is\n"
"    ignored there), MemoryError.");

static PyMethodDef module_methods[] = {
    {"worker_main", (PyCFunction)(void (*)(void))sh_worker_main, METH_FASTCALL,
     worker_main_doc},
    {"current_task", sh_worker_current_task, METH_NOARGS,
     "current_task()\n--\n\nThe id (int) of the task, actor creation or actor call this "
     "worker\nprocess is running, or None outside one."},
    {"_close_all", close_all, METH_NOARGS,
     "Closes every open Client (registered with atexit)."},
    {NULL, NULL, 0, NULL},
};

/* ---- state ---- */

static int intern_names(sh_core_state_t *st) {
  struct { PyObject **slot; const char *s; } names[] = {
      {&st->s_complete, "_complete"}, {&st->s_result, "result"},
      {&st->s_state, "_state"},       {&st->s_raw, "_raw"},
      {&st->s_client, "_client"},     {&st->s_id, "_id"},
      {&st->s_finished, "FINISHED"},  {&st->s_write, "write"},
      {&st->s_flush, "flush"},        {&st->s_i, "i"},
      {&st->s_loads, "loads"},        {&st->s_dumps, "dumps"},
      {&st->s_dumps_exception, "dumps_exception"},
      {&st->s_DepRef, "DepRef"},
  };
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
    *names[i].slot = PyUnicode_InternFromString(names[i].s);
    if (!*names[i].slot) return -1;
  }
  return 0;
}

static int register_atexit(PyObject *m) {
  PyObject *atexit = PyImport_ImportModule("atexit");
  if (!atexit) return -1;
  PyObject *fn = PyObject_GetAttrString(m, "_close_all");
  PyObject *r = fn ? PyObject_CallMethod(atexit, "register", "O", fn) : NULL;
  Py_XDECREF(fn);
  Py_DECREF(atexit);
  Py_XDECREF(r);
  return r ? 0 : -1;
}

static int module_exec(PyObject *m) {
  sh_core_state_t *st = PyModule_GetState(m);
  if (intern_names(st) < 0) return -1;
  if (sh_spec_add_type(m, st) < 0) return -1;
  if (sh_client_add_type(m, st) < 0) return -1;
  if (sh_store_add_type(m, st) < 0) return -1;
  if (sh_seq_add_functions(m) < 0) return -1;
  if (PyModule_AddIntConstant(m, "ST_DISCONNECTED", SH_ST_DISCONNECTED) < 0)
    return -1;
  if (!atfork_registered) {
    if (pthread_atfork(NULL, NULL, atfork_child_cb) != 0) {
      PyErr_SetString(PyExc_RuntimeError, "pthread_atfork failed");
      return -1;
    }
    atfork_registered = 1;
  }
  return register_atexit(m);
}

static int module_traverse(PyObject *m, visitproc visit, void *arg) {
  sh_core_state_t *st = PyModule_GetState(m);
  if (!st) return 0;
  Py_VISIT(st->spec_type);
  Py_VISIT(st->client_type);
  Py_VISIT(st->segment_type);
  return 0;
}

static int module_clear(PyObject *m) {
  sh_core_state_t *st = PyModule_GetState(m);
  if (!st) return 0;
  Py_CLEAR(st->spec_type);
  Py_CLEAR(st->client_type);
  Py_CLEAR(st->segment_type);
  PyObject **names[] = {&st->s_complete, &st->s_result, &st->s_state,
                        &st->s_raw, &st->s_client, &st->s_id, &st->s_finished,
                        &st->s_write, &st->s_flush, &st->s_i, &st->s_loads,
                        &st->s_dumps, &st->s_dumps_exception, &st->s_DepRef};
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) Py_CLEAR(*names[i]);
  return 0;
}

/* An open client holds its type, which holds this module, so the module is
 * only freed once every client is gone: nothing to close here. */
static void module_free(void *m) { module_clear(m); }

static PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, module_exec},
    {0, NULL},
};

PyDoc_STRVAR(module_doc,
"The C core of shoal: the driver's connection to the daemon (Client), task\n"
"templates (TaskSpec) and the worker loop (worker_main).");

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "shoal._core",
    .m_doc = module_doc,
    .m_size = sizeof(sh_core_state_t),
    .m_methods = module_methods,
    .m_slots = module_slots,
    .m_traverse = module_traverse,
    .m_clear = module_clear,
    .m_free = module_free,
};

PyMODINIT_FUNC PyInit__core(void) { return PyModuleDef_Init(&module_def); }
