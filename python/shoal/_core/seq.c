/* A compact encoding for the items and results of map chunks: a list of
 * plain ints or of plain floats as one array of fixed-size numbers instead of
 * a pickle of each element, so that the driver and the workers of a map
 * spend their time on the user's function rather than on (un)pickling.
 *
 * Format (little-endian; the values start 8-byte aligned in the bytes):
 *
 *    0  u8  kind: 'i' int32, 'q' int64, 'd' IEEE double
 *    1  7 bytes zero
 *    8  count x value (4 bytes for 'i', else 8)
 *
 * Only exact int and float objects are encoded (a bool, an int subclass or a
 * mix of ints and floats is not: decoding must give back equal objects of the
 * same type); anything else makes seq_pack answer None and the caller pickles
 * the items as usual. Measured on the 2-core machine with the project's
 * Python 3.11 (1M ints in chunks of 16k, medians of 9): pickle.dumps of the
 * slices 28 ms, pickle.loads 65 ms; seq_pack straight from the list 12 ms,
 * seq_unpack 53 ms, most of it allocating and freeing the int objects
 * (pymalloc, page faults of new arenas), which pickle.loads pays as well.
 *
 * Sections: packing; unpacking; the module functions. */
#include "core.h"

#include <endian.h>
#include <string.h>

#define SEQ_HDR 8u

enum { SEQ_I32 = 'i', SEQ_I64 = 'q', SEQ_F64 = 'd' };

/* ---- packing ---- */

static void put_header(uint8_t *out, int kind) {
  memset(out, 0, SEQ_HDR);
  out[0] = (uint8_t)kind;
}

/* Floats: a new bytes object, or None (a non-float item), or NULL. */
static PyObject *pack_floats(PyObject *const *items, Py_ssize_t n) {
  for (Py_ssize_t i = 0; i < n; i++)
    if (!PyFloat_CheckExact(items[i])) Py_RETURN_NONE;
  PyObject *out = PyBytes_FromStringAndSize(NULL, SEQ_HDR + 8 * n);
  if (!out) return NULL;
  uint8_t *p = (uint8_t *)PyBytes_AS_STRING(out);
  put_header(p, SEQ_F64);
  p += SEQ_HDR;
  for (Py_ssize_t i = 0; i < n; i++, p += 8) {
    double d = PyFloat_AS_DOUBLE(items[i]);
    uint64_t u;
    memcpy(&u, &d, 8);
    u = htole64(u);
    memcpy(p, &u, 8);
  }
  return out;
}

/* The int32 encoding of items[0..k) (already written) widened into a new
 * int64 encoding with room for n values; NULL on MemoryError. */
static PyObject *widen(PyObject *narrow, Py_ssize_t k, Py_ssize_t n) {
  PyObject *out = PyBytes_FromStringAndSize(NULL, SEQ_HDR + 8 * n);
  if (!out) return NULL;
  uint8_t *p = (uint8_t *)PyBytes_AS_STRING(out);
  const uint8_t *q = (const uint8_t *)PyBytes_AS_STRING(narrow) + SEQ_HDR;
  put_header(p, SEQ_I64);
  p += SEQ_HDR;
  for (Py_ssize_t i = 0; i < k; i++, p += 8, q += 4) {
    uint32_t u;
    memcpy(&u, q, 4);
    uint64_t w = htole64((uint64_t)(int64_t)(int32_t)le32toh(u));
    memcpy(p, &w, 8);
  }
  return out;
}

/* Ints: a new bytes object (int32 while every value fits, else int64), or
 * None (an item that is not an exact int of at most 64 bits), or NULL. One
 * pass: reading the int objects (scattered in memory) is what costs. */
static PyObject *pack_ints(PyObject *const *items, Py_ssize_t n) {
  PyObject *out = PyBytes_FromStringAndSize(NULL, SEQ_HDR + 4 * n);
  if (!out) return NULL;
  uint8_t *base = (uint8_t *)PyBytes_AS_STRING(out);
  put_header(base, SEQ_I32);
  int wide = 0;
  for (Py_ssize_t i = 0; i < n; i++) {
    int overflow = 0;
    long long v = PyLong_CheckExact(items[i])
                      ? PyLong_AsLongLongAndOverflow(items[i], &overflow) : (overflow = 1, 0);
    if (overflow) {
      Py_DECREF(out);
      Py_RETURN_NONE;
    }
    if (!wide && (v < INT32_MIN || v > INT32_MAX)) {
      PyObject *w = widen(out, i, n);
      Py_DECREF(out);
      if (!(out = w)) return NULL;
      base = (uint8_t *)PyBytes_AS_STRING(out);
      wide = 1;
    }
    if (wide) {
      uint64_t u = htole64((uint64_t)v);
      memcpy(base + SEQ_HDR + 8 * i, &u, 8);
    } else {
      uint32_t u = htole32((uint32_t)(int32_t)v);
      memcpy(base + SEQ_HDR + 4 * i, &u, 4);
    }
  }
  return out;
}

/* ---- unpacking ---- */

/* A new list of the values in data[0..len) (a whole encoding), or NULL with
 * ValueError for a malformed one (or MemoryError). */
static PyObject *seq_read(const uint8_t *data, Py_ssize_t len) {
  if (len < (Py_ssize_t)SEQ_HDR) goto bad;
  int kind = data[0];
  Py_ssize_t width = kind == SEQ_I32 ? 4 : (kind == SEQ_I64 || kind == SEQ_F64) ? 8 : 0;
  if (!width || (len - SEQ_HDR) % width) goto bad;
  Py_ssize_t n = (len - SEQ_HDR) / width;
  PyObject *list = PyList_New(n);
  if (!list) return NULL;
  const uint8_t *p = data + SEQ_HDR;
  for (Py_ssize_t i = 0; i < n; i++, p += width) {
    PyObject *v;
    if (kind == SEQ_I32) {
      uint32_t u;
      memcpy(&u, p, 4);
      v = PyLong_FromLong((long)(int32_t)le32toh(u));
    } else {
      uint64_t u;
      memcpy(&u, p, 8);
      u = le64toh(u);
      if (kind == SEQ_I64) {
        v = PyLong_FromLongLong((long long)u);
      } else {
        double d;
        memcpy(&d, &u, 8);
        v = PyFloat_FromDouble(d);
      }
    }
    if (!v) {
      Py_DECREF(list);
      return NULL;
    }
    PyList_SET_ITEM(list, i, v);
  }
  return list;
bad:
  PyErr_Format(PyExc_ValueError, "seq_unpack(): not a packed sequence (%zd bytes)", len);
  return NULL;
}

/* ---- the module functions ---- */

static PyObject *seq_pack(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
  if (nargs < 1 || nargs > 3) {
    PyErr_SetString(PyExc_TypeError, "seq_pack(items, start=0, stop=None)");
    return NULL;
  }
  PyObject *seq = args[0];
  if (!PyList_CheckExact(seq) && !PyTuple_CheckExact(seq)) Py_RETURN_NONE;
  Py_ssize_t size = PySequence_Fast_GET_SIZE(seq), start = 0, stop = size;
  if (nargs > 1 && (start = PyNumber_AsSsize_t(args[1], PyExc_OverflowError)) == -1 &&
      PyErr_Occurred())
    return NULL;
  if (nargs > 2 && args[2] != Py_None &&
      (stop = PyNumber_AsSsize_t(args[2], PyExc_OverflowError)) == -1 && PyErr_Occurred())
    return NULL;
  if (start < 0) start = 0;
  if (stop > size) stop = size;
  if (stop <= start) Py_RETURN_NONE;
  /* No Python code runs below (exact ints and floats only), so the list
   * cannot change under the item pointer. */
  PyObject *const *items = PySequence_Fast_ITEMS(seq) + start;
  Py_ssize_t n = stop - start;
  if (n > (PY_SSIZE_T_MAX - (Py_ssize_t)SEQ_HDR) / 8) Py_RETURN_NONE;
  return PyFloat_CheckExact(items[0]) ? pack_floats(items, n) : pack_ints(items, n);
}

static PyObject *seq_unpack(PyObject *module, PyObject *arg) {
  Py_buffer view;
  if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
  PyObject *list = seq_read(view.buf, view.len);
  PyBuffer_Release(&view);
  return list;
}

static PyMethodDef seq_methods[] = {
    {"seq_pack", (PyCFunction)(void (*)(void))seq_pack, METH_FASTCALL,
     "seq_pack(items, start=0, stop=None)\n--\n\n"
     "Packs items[start:stop] compactly when they are all exact ints (within\n"
     "64 bits) or all exact floats.\n\n"
     "Args:\n"
     "    items: a list or tuple (anything else: None).\n"
     "    start, stop: the slice to pack (clamped like a slice).\n"
     "Returns:\n"
     "    bytes for seq_unpack, or None when the slice is empty or cannot be\n"
     "    packed exactly (bools, big ints, mixed or other types)."},
    {"seq_unpack", seq_unpack, METH_O,
     "seq_unpack(data)\n--\n\n"
     "The list that seq_pack packed into data.\n\n"
     "Raises:\n"
     "    ValueError: data is not a packed sequence."},
    {NULL, NULL, 0, NULL},
};

int sh_seq_add_functions(PyObject *m) { return PyModule_AddFunctions(m, seq_methods); }
