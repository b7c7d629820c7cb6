// Bytes-like Python objects borrowed through the buffer protocol, without copies.
#pragma once

#include <nanobind/nanobind.h>

#include <string>
#include <vector>

#include "core/batch.hpp"

namespace stoker::bindings {

namespace nb = nanobind;

// Borrowed input buffers; released with the GIL held.
struct Inputs {
  std::vector<Py_buffer> views;
  std::vector<ByteSpan> spans;

  explicit Inputs(nb::handle items) {
    nb::sequence seq = nb::borrow<nb::sequence>(items);
    const size_t n = nb::len(seq);
    views.reserve(n);
    spans.reserve(n);
    for (size_t i = 0; i < n; ++i) {
      nb::object item = seq[i];
      Py_buffer view;
      if (PyObject_GetBuffer(item.ptr(), &view, PyBUF_SIMPLE) != 0) {
        PyErr_Clear();
        release();
        throw nb::type_error(("item " + std::to_string(i) + " is not a contiguous bytes-like " +
                              "object (got " + nb::type_name(item.type()).c_str() + ")")
                                 .c_str());
      }
      views.push_back(view);
      spans.push_back(ByteSpan{static_cast<const uint8_t*>(view.buf), size_t(view.len)});
    }
  }
  void release() {
    for (Py_buffer& v : views) PyBuffer_Release(&v);
    views.clear();
  }
};

}  // namespace stoker::bindings
