/* TaskSpec: an immutable, validated template of a SUBMIT request, built once
 * per remote function or actor method so that submit only adds arguments. */
#include "core.h"

#include <stdio.h>
#include <string.h>

/* Converts a Python int to a u64 in [0, max]; ValueError or TypeError naming
 * `what` otherwise. Returns 0 or -1. */
static int get_u64(PyObject *o, const char *what, uint64_t max, uint64_t *out) {
  if (!PyLong_Check(o)) {
    PyErr_Format(PyExc_TypeError, "TaskSpec: %s must be an int, not %.100s",
                 what, Py_TYPE(o)->tp_name);
    return -1;
  }
  int overflow;
  long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
  if (v == -1 && PyErr_Occurred()) return -1;
  uint64_t u = (uint64_t)v;
  if (overflow > 0) {
    u = PyLong_AsUnsignedLongLong(o);
    if (u == (uint64_t)-1 && PyErr_Occurred()) {
      PyErr_Clear();
      overflow = 2; /* beyond u64 */
    }
  }
  if (overflow < 0 || (overflow == 0 && v < 0)) {
    PyErr_Format(PyExc_ValueError, "TaskSpec: %s must be >= 0, got %R", what, o);
    return -1;
  }
  if (overflow == 2 || u > max) {
    PyErr_Format(PyExc_ValueError, "TaskSpec: %s must be at most %llu, got %R",
                 what, (unsigned long long)max, o);
    return -1;
  }
  *out = u;
  return 0;
}

/* Parses one (name, milli) pair into s->custom[s->ncustom]. Returns the
 * normalized pair as a new tuple, or NULL with an exception set. */
static PyObject *parse_custom_item(sh_submit_t *s, PyObject *item) {
  PyObject *pair = PySequence_Fast(item, "TaskSpec: custom items must be (name, amount) pairs");
  if (!pair) return NULL;
  PyObject *res = NULL;
  if (PySequence_Fast_GET_SIZE(pair) != 2) {
    PyErr_Format(PyExc_ValueError, "TaskSpec: custom items must be (name, amount) pairs, got %R", item);
    goto done;
  }
  PyObject *name = PySequence_Fast_GET_ITEM(pair, 0);
  PyObject *amount = PySequence_Fast_GET_ITEM(pair, 1);
  if (!PyUnicode_Check(name)) {
    PyErr_Format(PyExc_TypeError, "TaskSpec: custom resource names must be str, got %R", name);
    goto done;
  }
  Py_ssize_t n;
  const char *utf8 = PyUnicode_AsUTF8AndSize(name, &n);
  if (!utf8) goto done;
  if (n < 1 || n >= SH_NAME_MAX || memchr(utf8, 0, (size_t)n)) {
    PyErr_Format(PyExc_ValueError,
                 "TaskSpec: custom resource name %R must be 1 to %d bytes of "
                 "UTF-8 without NUL", name, SH_NAME_MAX - 1);
    goto done;
  }
  for (uint32_t i = 0; i < s->ncustom; i++) {
    if (strcmp(s->custom[i].name, utf8) == 0) {
      PyErr_Format(PyExc_ValueError, "TaskSpec: custom resource %R given twice", name);
      goto done;
    }
  }
  if (s->ncustom == SH_MAX_CUSTOM) {
    PyErr_Format(PyExc_ValueError, "TaskSpec: at most %d custom resources per task",
                 SH_MAX_CUSTOM);
    goto done;
  }
  sh_custom_t *c = &s->custom[s->ncustom];
  if (get_u64(amount, "a custom resource amount", UINT64_MAX, &c->milli) < 0) goto done;
  memcpy(c->name, utf8, (size_t)n + 1);
  s->ncustom++;
  res = PyTuple_Pack(2, name, amount);
done:
  Py_DECREF(pair);
  return res;
}

/* Fills s->custom from an iterable of pairs (or a dict). Returns the
 * normalized tuple of pairs, or NULL. */
static PyObject *parse_custom(sh_submit_t *s, PyObject *custom) {
  PyObject *src = PyDict_Check(custom) ? PyDict_Items(custom)
                                        : PySequence_Fast(custom, "TaskSpec: custom must be a sequence of (name, amount) pairs");
  if (!src) return NULL;
  PyObject *seq = PySequence_Fast(src, "TaskSpec: custom must be a sequence");
  Py_DECREF(src);
  if (!seq) return NULL;
  Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
  PyObject *out = PyTuple_New(n);
  for (Py_ssize_t i = 0; out && i < n; i++) {
    PyObject *pair = parse_custom_item(s, PySequence_Fast_GET_ITEM(seq, i));
    if (!pair) Py_CLEAR(out);
    else PyTuple_SET_ITEM(out, i, pair);
  }
  Py_DECREF(seq);
  return out;
}

/* Validates the kind/actor/method combination and fills the method view. */
static int parse_kind(sh_spec_obj_t *self, PyObject *method) {
  sh_submit_t *s = &self->s;
  if (s->kind > SH_KIND_ACTOR_CALL) {
    PyErr_Format(PyExc_ValueError,
                 "TaskSpec: kind must be 0 (task), 1 (actor creation) or 2 "
                 "(actor call), got %u", s->kind);
    return -1;
  }
  if (method != Py_None && !PyUnicode_Check(method)) {
    PyErr_Format(PyExc_TypeError, "TaskSpec: method must be str or None, not %.100s",
                 Py_TYPE(method)->tp_name);
    return -1;
  }
  if (s->kind == SH_KIND_ACTOR_CALL) {
    if (method == Py_None || !s->actor_id) {
      PyErr_SetString(PyExc_ValueError,
                      "TaskSpec: an actor call (kind 2) needs actor_id and method");
      return -1;
    }
  } else if (method != Py_None) {
    PyErr_SetString(PyExc_ValueError, "TaskSpec: method is only for actor calls (kind 2)");
    return -1;
  }
  self->method = Py_NewRef(method);
  if (method == Py_None) return 0;
  Py_ssize_t n;
  s->method = PyUnicode_AsUTF8AndSize(method, &n);
  if (!s->method) return -1;
  if (n < 1 || n > 1024) {
    PyErr_Format(PyExc_ValueError, "TaskSpec: method name %R must be 1 to 1024 bytes", method);
    return -1;
  }
  s->method_len = (uint32_t)n;
  return 0;
}

static PyObject *spec_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
  static char *kwlist[] = {"fn_id", "kind", "actor_id", "method", "cpu_milli",
                           "gpu_milli", "memory", "custom", "max_retries",
                           "retry_exceptions", "timeout_ms", "name", NULL};
  PyObject *fn_id, *kind, *actor_id = NULL, *method = Py_None, *cpu = NULL,
           *gpu = NULL, *mem = NULL, *custom = NULL, *retries = NULL,
           *timeout = NULL, *name = Py_None;
  int retry_exc = 0;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|$OOOOOOOpOO:TaskSpec", kwlist,
                                   &fn_id, &kind, &actor_id, &method, &cpu, &gpu,
                                   &mem, &custom, &retries, &retry_exc, &timeout,
                                   &name))
    return NULL;
  if (name != Py_None && !PyUnicode_Check(name)) {
    return PyErr_Format(PyExc_TypeError, "TaskSpec: name must be str or None, not %.100s",
                        Py_TYPE(name)->tp_name);
  }
  sh_spec_obj_t *self = (sh_spec_obj_t *)type->tp_alloc(type, 0);
  if (!self) return NULL;
  sh_submit_t *s = &self->s;
  uint64_t k = 0, r = 3, t = 0;
  s->cpu_milli = 1000;
  if (get_u64(fn_id, "fn_id", UINT64_MAX, &s->fn_id) < 0 ||
      get_u64(kind, "kind", UINT32_MAX, &k) < 0 ||
      (actor_id && get_u64(actor_id, "actor_id", UINT64_MAX, &s->actor_id) < 0) ||
      (cpu && get_u64(cpu, "cpu_milli", UINT64_MAX, &s->cpu_milli) < 0) ||
      (gpu && get_u64(gpu, "gpu_milli", UINT64_MAX, &s->gpu_milli) < 0) ||
      (mem && get_u64(mem, "memory", UINT64_MAX, &s->memory) < 0) ||
      (timeout && get_u64(timeout, "timeout_ms", UINT32_MAX, &t) < 0))
    goto fail;
  /* -1 asks for unlimited retries (as in Ray); the agent sees UINT32_MAX. */
  if (retries) {
    long v = PyLong_Check(retries) ? PyLong_AsLong(retries) : 0;
    if (v == -1 && PyErr_Occurred()) {
      PyErr_Clear();
      v = 0;
    }
    if (v == -1) r = UINT32_MAX;
    else if (get_u64(retries, "max_retries (or -1)", UINT32_MAX, &r) < 0) goto fail;
  }
  s->kind = (uint32_t)k;
  s->max_retries = (uint32_t)r;
  s->timeout_ms = (uint32_t)t;
  s->flags = retry_exc ? SH_SUBMIT_RETRY_EXC : 0;
  if (parse_kind(self, method) < 0) goto fail;
  self->custom = custom ? parse_custom(s, custom) : PyTuple_New(0);
  if (!self->custom) goto fail;
  self->name = Py_NewRef(name);
  return (PyObject *)self;
fail:
  Py_DECREF(self);
  return NULL;
}

static void spec_dealloc(sh_spec_obj_t *self) {
  PyTypeObject *tp = Py_TYPE(self);
  Py_XDECREF(self->method);
  Py_XDECREF(self->name);
  Py_XDECREF(self->custom);
  tp->tp_free((PyObject *)self);
  Py_DECREF(tp);
}

enum { F_FN_ID, F_KIND, F_ACTOR_ID, F_CPU, F_GPU, F_MEMORY, F_RETRIES,
       F_RETRY_EXC, F_TIMEOUT, F_METHOD, F_NAME, F_CUSTOM };

static PyObject *spec_get(sh_spec_obj_t *self, void *closure) {
  const sh_submit_t *s = &self->s;
  switch ((int)(intptr_t)closure) {
    case F_FN_ID: return PyLong_FromUnsignedLongLong(s->fn_id);
    case F_KIND: return PyLong_FromUnsignedLong(s->kind);
    case F_ACTOR_ID: return PyLong_FromUnsignedLongLong(s->actor_id);
    case F_CPU: return PyLong_FromUnsignedLongLong(s->cpu_milli);
    case F_GPU: return PyLong_FromUnsignedLongLong(s->gpu_milli);
    case F_MEMORY: return PyLong_FromUnsignedLongLong(s->memory);
    case F_RETRIES:
      return s->max_retries == UINT32_MAX ? PyLong_FromLong(-1)
                                          : PyLong_FromUnsignedLong(s->max_retries);
    case F_RETRY_EXC: return PyBool_FromLong(s->flags & SH_SUBMIT_RETRY_EXC);
    case F_TIMEOUT: return PyLong_FromUnsignedLong(s->timeout_ms);
    case F_METHOD: return Py_NewRef(self->method);
    case F_NAME: return Py_NewRef(self->name);
    default: return Py_NewRef(self->custom);
  }
}

#define GETTER(name, field, doc) \
  {name, (getter)spec_get, NULL, doc, (void *)(intptr_t)field}

static PyGetSetDef spec_getset[] = {
    GETTER("fn_id", F_FN_ID, "id of the registered function or class"),
    GETTER("kind", F_KIND, "0 task, 1 actor creation, 2 actor call"),
    GETTER("actor_id", F_ACTOR_ID, "the actor (actor calls and creations)"),
    GETTER("method", F_METHOD, "method name of an actor call, or None"),
    GETTER("cpu_milli", F_CPU, "CPUs requested, in thousandths"),
    GETTER("gpu_milli", F_GPU, "GPUs requested, in thousandths"),
    GETTER("memory", F_MEMORY, "memory requested, in bytes"),
    GETTER("custom", F_CUSTOM, "custom resources: tuple of (name, thousandths)"),
    GETTER("max_retries", F_RETRIES, "retries after a worker crash (-1: unlimited)"),
    GETTER("retry_exceptions", F_RETRY_EXC, "also retry when the function raises"),
    GETTER("timeout_ms", F_TIMEOUT, "run-time limit in milliseconds (0: none)"),
    GETTER("name", F_NAME, "a name for messages and reprs, or None"),
    {NULL, NULL, NULL, NULL, NULL},
};

static PyObject *spec_repr(sh_spec_obj_t *self) {
  char ids[64]; /* PyUnicode_FromFormat has no %llx */
  snprintf(ids, sizeof ids, "fn_id=%#llx actor_id=%#llx", (unsigned long long)self->s.fn_id,
           (unsigned long long)self->s.actor_id);
  return PyUnicode_FromFormat("<shoal._core.TaskSpec %R kind=%u %s cpu_milli=%llu>", self->name,
                              self->s.kind, ids, (unsigned long long)self->s.cpu_milli);
}

PyDoc_STRVAR(spec_doc,
"TaskSpec(fn_id, kind, *, actor_id=0, method=None, cpu_milli=1000, gpu_milli=0,\n"
"         memory=0, custom=(), max_retries=3, retry_exceptions=False,\n"
"         timeout_ms=0, name=None)\n--\n\n"
"An immutable, validated template of a task, actor creation or actor call.\n\n"
"Args:\n"
"    fn_id: id of the function or class registered with Client.register.\n"
"    kind: 0 task, 1 actor creation, 2 actor call.\n"
"    actor_id: the actor an actor call goes to (required for kind 2).\n"
"    method: the method name of an actor call (required for kind 2 only).\n"
"    cpu_milli, gpu_milli: CPUs and GPUs in thousandths; memory: bytes.\n"
"    custom: (name, thousandths) pairs, at most 16, names 1..63 UTF-8 bytes.\n"
"    max_retries: retries after a worker crash; -1 for unlimited.\n"
"    retry_exceptions: also retry when the function raises.\n"
"    timeout_ms: run-time limit (0: none).\n"
"    name: used in messages and future reprs.\n"
"Raises:\n"
"    ValueError, TypeError: an argument is out of range or of the wrong type.");

static PyType_Slot spec_slots[] = {
    {Py_tp_new, spec_new},
    {Py_tp_dealloc, spec_dealloc},
    {Py_tp_getset, spec_getset},
    {Py_tp_repr, spec_repr},
    {Py_tp_doc, (void *)spec_doc},
    {0, NULL},
};

static PyType_Spec spec_spec = {
    .name = "shoal._core.TaskSpec",
    .basicsize = sizeof(sh_spec_obj_t),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = spec_slots,
};

int sh_spec_add_type(PyObject *m, sh_core_state_t *st) {
  st->spec_type = PyType_FromModuleAndSpec(m, &spec_spec, NULL);
  if (!st->spec_type) return -1;
  return PyModule_AddType(m, (PyTypeObject *)st->spec_type);
}
