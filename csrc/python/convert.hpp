// What every binding file of the _core module shares: Python errors from C++ messages, and the
// conversions of arguments (arrays, shapes, counts) with errors that name the argument.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <string>
#include <vector>

#include "replay_buffer.hpp"

namespace pydpg::python {

namespace py = pybind11;

using Shape = std::vector<std::int64_t>;
using pydpg::shape_str;  // Python's tuple spelling, "(3,)" and "(2, 3)", as the buffer's own errors use

inline Shape shape_of(const py::array& a) { return Shape(a.shape(), a.shape() + a.ndim()); }

inline std::string type_name(py::handle h) { return py::str(py::type::handle_of(h).attr("__name__")); }

// The message of the pending Python error, which is then cleared.
inline std::string take_python_error() {
  py::error_already_set e;
  return e.what();
}

// Sets a Python error from a C++ message. Messages can quote bytes from a damaged file (a metadata
// document, an entry name) and Python strings must be valid UTF-8: invalid bytes are shown escaped
// (\xff) instead of turning the error into a UnicodeDecodeError that names nothing.
inline void set_error(PyObject* type, const char* what) {
  PyObject* msg = PyUnicode_DecodeUTF8(what, static_cast<Py_ssize_t>(std::strlen(what)), "backslashreplace");
  if (msg == nullptr) {
    PyErr_Clear();
    msg = PyUnicode_FromString("(a message that could not be decoded)");
  }
  PyErr_SetObject(type, msg);
  Py_DECREF(msg);
}

// A C++ error type as a Python exception class of `name` (a subclass of `base`) whose messages go
// through set_error. The class object lives as long as the process (the module is never unloaded).
template <class E>
void register_error(py::module_& m, const char* name, PyObject* base) {
  static py::exception<E>* type = new py::exception<E>(m, name, base);
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const E& e) {
      set_error(type->ptr(), e.what());
    }
  });
}

// A C++ error type raised as an existing Python exception (ValueError, OSError, ...).
template <class E>
void map_error(PyObject* python_type) {
  static PyObject* type = python_type;
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const E& e) {
      set_error(type, e.what());
    }
  });
}

// Any array-like of real numbers as a C-contiguous array of T. Read in place when it already is
// one; converted (one copy) otherwise; complex, object and string data are refused by name.
template <class T>
py::array_t<T, py::array::c_style | py::array::forcecast> as_array(py::handle h, const char* name) {
  using Arr = py::array_t<T, py::array::c_style | py::array::forcecast>;
  if (Arr::check_(h)) return py::reinterpret_borrow<Arr>(h);
  if (h.is_none()) throw py::type_error(std::string(name) + " must be an array of real numbers, got None");
  py::array raw = py::array::ensure(h);
  if (!raw) {
    // ensure() swallows the reason (e.g. a CUDA tensor, or one that requires grad): ask NumPy
    // again, on this error path only, to report it.
    std::string why = "not convertible";
    try {
      py::module_::import("numpy").attr("asarray")(h);
    } catch (py::error_already_set& e) {
      why = e.what();
    }
    throw py::type_error(std::string(name) +
                         " must be a NumPy array, CPU torch tensor or sequence "
                         "of real numbers, got " +
                         type_name(h) + " (" + why + ")");
  }
  const char kind = raw.dtype().kind();
  if (kind != 'f' && kind != 'i' && kind != 'u' && kind != 'b')
    throw py::type_error(std::string(name) + " must hold real numbers, got dtype " + std::string(py::str(raw.dtype())));
  return Arr::ensure(raw);
}

// Transition ids: integers only (a float id would be truncated to another transition's).
inline py::array_t<std::int64_t, py::array::c_style | py::array::forcecast> as_ids(py::handle h, const char* name) {
  using Ids = py::array_t<std::int64_t, py::array::c_style | py::array::forcecast>;
  if (Ids::check_(h)) return py::reinterpret_borrow<Ids>(h);  // what sample returns: no second look
  if (!h.is_none()) {
    py::array raw = py::array::ensure(h);
    if (raw && raw.size() > 0 && raw.dtype().kind() != 'i' && raw.dtype().kind() != 'u')
      throw py::type_error(std::string(name) + " must hold integer ids, got dtype " +
                           std::string(py::str(raw.dtype())));
  }
  return as_array<std::int64_t>(h, name);
}

inline bool has_shape(const py::array& a, const Shape& expected) {
  if (static_cast<std::size_t>(a.ndim()) != expected.size()) return false;
  for (std::size_t i = 0; i < expected.size(); ++i)
    if (a.shape(static_cast<py::ssize_t>(i)) != expected[i]) return false;
  return true;
}

inline void expect_shape(const py::array& a, const Shape& expected, const char* name) {
  if (!has_shape(a, expected))
    throw py::value_error(std::string(name) + " has shape " + shape_str(shape_of(a)) + ", expected " +
                          shape_str(expected));
}

inline Shape with_lead(std::int64_t n, const Shape& shape) {
  Shape s{n};
  s.insert(s.end(), shape.begin(), shape.end());
  return s;
}

inline std::int64_t as_count(py::handle h, const char* name) {
  if (PyBool_Check(h.ptr()) || !PyIndex_Check(h.ptr()))
    throw py::type_error(std::string(name) + " must be an integer, got " + type_name(h));
  const long long v = PyLong_AsLongLong(h.ptr());
  if (v == -1 && PyErr_Occurred())
    throw py::value_error(std::string(name) + " is out of range: " + take_python_error());
  return v;
}

inline bool is_numpy_bool_scalar(py::handle h) {
  const char* name = Py_TYPE(h.ptr())->tp_name;
  return std::strcmp(name, "numpy.bool") == 0 || std::strcmp(name, "numpy.bool_") == 0;
}

}  // namespace pydpg::python
