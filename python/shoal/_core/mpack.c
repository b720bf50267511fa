/* Converts a msgpack document from the daemon (STATUS_REPLY) into Python
 * objects: map -> dict, array -> list, str, bin -> bytes, int, float, bool,
 * nil -> None. Parsing is msgpack-c's; this file only walks its tree. */
#include "core.h"

#include <msgpack.h>

#define MAX_DEPTH 64

static PyObject *to_py(const msgpack_object *o, int depth);

static PyObject *map_to_py(const msgpack_object_map *m, int depth) {
  PyObject *d = PyDict_New();
  for (uint32_t i = 0; d && i < m->size; i++) {
    PyObject *k = to_py(&m->ptr[i].key, depth + 1);
    PyObject *v = k ? to_py(&m->ptr[i].val, depth + 1) : NULL;
    if (!v || PyDict_SetItem(d, k, v) < 0) Py_CLEAR(d);
    Py_XDECREF(k);
    Py_XDECREF(v);
  }
  return d;
}

static PyObject *array_to_py(const msgpack_object_array *a, int depth) {
  PyObject *l = PyList_New(a->size);
  for (uint32_t i = 0; l && i < a->size; i++) {
    PyObject *v = to_py(&a->ptr[i], depth + 1);
    if (!v) Py_CLEAR(l);
    else PyList_SET_ITEM(l, i, v);
  }
  return l;
}

static PyObject *to_py(const msgpack_object *o, int depth) {
  if (depth > MAX_DEPTH) {
    PyErr_SetString(PyExc_ValueError, "status reply nests too deeply");
    return NULL;
  }
  switch (o->type) {
    case MSGPACK_OBJECT_NIL: Py_RETURN_NONE;
    case MSGPACK_OBJECT_BOOLEAN: return PyBool_FromLong(o->via.boolean);
    case MSGPACK_OBJECT_POSITIVE_INTEGER: return PyLong_FromUnsignedLongLong(o->via.u64);
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: return PyLong_FromLongLong(o->via.i64);
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64: return PyFloat_FromDouble(o->via.f64);
    case MSGPACK_OBJECT_STR:
      return PyUnicode_DecodeUTF8(o->via.str.ptr, o->via.str.size, "replace");
    case MSGPACK_OBJECT_BIN:
      return PyBytes_FromStringAndSize(o->via.bin.ptr, o->via.bin.size);
    case MSGPACK_OBJECT_ARRAY: return array_to_py(&o->via.array, depth);
    case MSGPACK_OBJECT_MAP: return map_to_py(&o->via.map, depth);
    default:
      PyErr_Format(PyExc_ValueError, "status reply holds an unsupported msgpack type %d",
                   (int)o->type);
      return NULL;
  }
}

PyObject *sh_mpack_to_py(const uint8_t *p, size_t n) {
  msgpack_unpacked u;
  msgpack_unpacked_init(&u);
  size_t off = 0;
  msgpack_unpack_return rc = msgpack_unpack_next(&u, (const char *)p, n, &off);
  PyObject *r = NULL;
  if (rc == MSGPACK_UNPACK_NOMEM_ERROR)
    PyErr_NoMemory();
  else if (rc != MSGPACK_UNPACK_SUCCESS || off != n)
    PyErr_SetString(PyExc_ValueError, "the daemon's status reply is not one msgpack document");
  else
    r = to_py(&u.data, 0);
  msgpack_unpacked_destroy(&u);
  if (!r && PyErr_ExceptionMatches(PyExc_TypeError)) {
    /* an unhashable key (a map or array used as a key) */
    PyErr_Clear();
    PyErr_SetString(PyExc_ValueError, "the daemon's status reply has a map with an unhashable key");
  }
  return r;
}
