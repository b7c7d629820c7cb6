// Image preprocessing bindings. Inputs are borrowed through the buffer protocol (no copies), the
// batch runs on the native pool with the GIL released, and outputs leave as DLPack-capable arrays
// over pooled arena memory.
#include <nanobind/ndarray.h>
#include <nanobind/stl/array.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/shared_ptr.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "bindings/bindings.hpp"
#include "bindings/dlpack.hpp"
#include "bindings/inputs.hpp"
#include "core/batch.hpp"
#include "core/image.hpp"
#include "core/pipeline.hpp"

namespace stoker::bindings {
namespace {

using ErrorList = std::vector<std::tuple<size_t, std::string, std::string>>;

template <typename E>
E parse_enum(const std::string& value, std::initializer_list<std::pair<const char*, E>> options,
             const char* field) {
  for (const auto& [name, e] : options) {
    if (value == name) return e;
  }
  std::string names;
  for (const auto& [name, e] : options) names += std::string(names.empty() ? "" : ", ") + name;
  throw std::invalid_argument(std::string(field) + " must be one of " + names + ", got '" + value +
                              "'");
}

nb::dlpack::dtype dlpack_dtype(DType d) {
  switch (d) {
    case DType::kUInt8:
      return nb::dtype<uint8_t>();
    case DType::kFloat32:
      return nb::dtype<float>();
    case DType::kFloat16:
      return nb::dlpack::dtype{uint8_t(nb::dlpack::dtype_code::Float), 16, 1};
    case DType::kBFloat16:
      return nb::dlpack::dtype{uint8_t(nb::dlpack::dtype_code::Bfloat), 16, 1};
  }
  return nb::dtype<uint8_t>();
}

std::vector<size_t> batch_shape(const Spec& s, size_t n) {
  const size_t h = size_t(s.out_height()), w = size_t(s.out_width());
  if (s.layout == Layout::kNCHW) return {n, 3, h, w};
  return {n, h, w, 3};
}

// The output of a batch: the caller's array, or a fresh block of the arena.
struct Output {
  uint8_t* data = nullptr;
  HostBlock block;
  bool owned = false;
};

Output prepare_output(const Preprocessor& pre, size_t n, nb::handle out, bool pinned) {
  const Spec& spec = pre.spec();
  Output o;
  if (out.is_none()) {
    o.block = arena().acquire(spec.item_bytes() * (n == 0 ? 1 : n), pinned);
    o.data = static_cast<uint8_t*>(o.block.ptr);
    o.owned = true;
    return o;
  }
  nb::ndarray<> arr = nb::cast<nb::ndarray<>>(out);
  const int device = arr.device_type();
  if (device != nb::device::cpu::value && device != nb::device::cuda_host::value) {
    throw std::invalid_argument("out must be in host memory");
  }
  const std::vector<size_t> shape = batch_shape(spec, n);
  bool ok = arr.ndim() == shape.size();
  for (size_t d = 0; ok && d < shape.size(); ++d) ok = arr.shape(d) == shape[d];
  if (!ok) throw std::invalid_argument("out has the wrong shape for this batch and spec");
  if (arr.dtype() != dlpack_dtype(spec.dtype)) {
    throw std::invalid_argument("out has the wrong dtype for this spec");
  }
  int64_t expected = 1;
  for (size_t d = shape.size(); d-- > 0;) {
    if (shape[d] != 1 && arr.stride(d) != expected) {
      throw std::invalid_argument("out must be C-contiguous");
    }
    expected *= int64_t(shape[d]);
  }
  o.data = static_cast<uint8_t*>(arr.data());
  return o;
}

// A DLPack capsule (torch.from_dlpack takes it), or a numpy array when `numpy` is set.
nb::object wrap_output(const Preprocessor& pre, size_t n, Output& o, bool numpy) {
  if (!o.owned) return nb::none();
  o.owned = false;
  const std::vector<size_t> shape = batch_shape(pre.spec(), n);
  if (!numpy) return dlpack_capsule(o.block, shape, dlpack_dtype(pre.spec().dtype));
  auto* block = new HostBlock(o.block);
  nb::capsule owner(block, [](void* p) noexcept {
    auto* b = static_cast<HostBlock*>(p);
    arena().release(*b);
    delete b;
  });
  return nb::cast(nb::ndarray<nb::numpy>(block->ptr, shape.size(), shape.data(), owner, nullptr,
                                         dlpack_dtype(pre.spec().dtype), nb::device::cpu::value));
}

// Borrows the inputs and readies the output; on failure nothing stays borrowed.
std::pair<std::shared_ptr<Inputs>, Output> prepare(const Preprocessor& pre, nb::handle items,
                                                   nb::handle out, bool pinned) {
  auto inputs = std::make_shared<Inputs>(items);
  try {
    return {inputs, prepare_output(pre, inputs->spans.size(), out, pinned)};
  } catch (...) {
    inputs->release();
    throw;
  }
}

ErrorList error_list(const BatchResult& r) {
  ErrorList errors;
  for (size_t i = 0; i < r.items.size(); ++i) {
    const ItemResult& it = r.items[i];
    if (it.status != Status::kOk) errors.emplace_back(i, status_name(it.status), it.message);
  }
  return errors;
}

std::shared_ptr<Preprocessor> make_preprocessor(const std::string& resize_mode, int resize_h,
                                                int resize_w, bool crop, int crop_h, int crop_w,
                                                const std::string& interpolation, bool antialias,
                                                bool normalize, std::array<float, 3> mean,
                                                std::array<float, 3> std, const std::string& layout,
                                                const std::string& dtype, double reduce_gap,
                                                int64_t max_pixels) {
  Spec s;
  s.resize_mode = parse_enum<ResizeMode>(resize_mode,
                                         {{"none", ResizeMode::kNone},
                                          {"shorter", ResizeMode::kShorterSide},
                                          {"exact", ResizeMode::kExact}},
                                         "resize_mode");
  s.resize_h = resize_h;
  s.resize_w = resize_w;
  s.crop = crop;
  s.crop_h = crop_h;
  s.crop_w = crop_w;
  s.interp = parse_enum<Interp>(interpolation,
                                {{"nearest", Interp::kNearest},
                                 {"bilinear", Interp::kBilinear},
                                 {"bicubic", Interp::kBicubic}},
                                "interpolation");
  s.antialias = antialias;
  s.normalize = normalize;
  s.mean = mean;
  s.std = std;
  s.layout =
      parse_enum<Layout>(layout, {{"NCHW", Layout::kNCHW}, {"NHWC", Layout::kNHWC}}, "layout");
  s.dtype = parse_enum<DType>(dtype,
                              {{"uint8", DType::kUInt8},
                               {"float32", DType::kFloat32},
                               {"float16", DType::kFloat16},
                               {"bfloat16", DType::kBFloat16}},
                              "dtype");
  s.reduce_gap = reduce_gap;
  s.max_pixels = max_pixels;
  return std::make_shared<Preprocessor>(s);
}

}  // namespace

void register_image(nb::module_& m) {
  nb::class_<Preprocessor>(m, "Preprocessor",
                           "A compiled ImageSpec: decode, resize, crop and normalize settings.")
      .def(nb::new_(&make_preprocessor), nb::arg("resize_mode"), nb::arg("resize_h"),
           nb::arg("resize_w"), nb::arg("crop"), nb::arg("crop_h"), nb::arg("crop_w"),
           nb::arg("interpolation"), nb::arg("antialias"), nb::arg("normalize"), nb::arg("mean"),
           nb::arg("std"), nb::arg("layout"), nb::arg("dtype"), nb::arg("reduce_gap"),
           nb::arg("max_pixels"))
      .def_prop_ro("item_bytes", [](const Preprocessor& p) { return p.spec().item_bytes(); })
      .def(
          "batch_shape", [](const Preprocessor& p, size_t n) { return batch_shape(p.spec(), n); },
          nb::arg("n"));

  m.def(
      "run_batch",
      [](std::shared_ptr<Preprocessor> pre, nb::handle items, nb::handle out, bool pinned,
         bool numpy) {
        auto [inputs, o] = prepare(*pre, items, out, pinned);
        const size_t n = inputs->spans.size();
        BatchResult result;
        {
          nb::gil_scoped_release release;
          result = run_batch(*pool(), pre, inputs->spans, o.data);
        }
        inputs->release();
        return std::make_pair(wrap_output(*pre, n, o, numpy), error_list(result));
      },
      nb::arg("pre"), nb::arg("items"), nb::arg("out").none(), nb::arg("pinned"),
      nb::arg("numpy") = false,
      "Preprocess a batch; returns (output or None when `out` was given, [(index, kind, "
      "message)]).");

  m.def(
      "submit_batch",
      [](std::shared_ptr<Preprocessor> pre, nb::handle items, nb::handle out, bool pinned,
         nb::callable callback) {
        auto [inputs, o] = prepare(*pre, items, out, pinned);
        const size_t n = inputs->spans.size();
        // The completion holds the callback, the inputs and the output until it runs.
        auto cb = std::make_shared<nb::object>(std::move(callback));
        std::vector<ByteSpan> spans = inputs->spans;
        run_batch_async(*pool(), pre, std::move(spans), o.data,
                        [pre, inputs, cb, o, n](BatchResult&& result) mutable {
                          nb::gil_scoped_acquire acquire;
                          inputs->release();
                          try {
                            (*cb)(wrap_output(*pre, n, o, false), error_list(result));
                          } catch (nb::python_error& e) {
                            e.restore();
                            PyErr_WriteUnraisable(cb->ptr());
                          }
                          cb.reset();
                        });
      },
      nb::arg("pre"), nb::arg("items"), nb::arg("out").none(), nb::arg("pinned"),
      nb::arg("callback"),
      "Start a batch; callback(output or None, errors) runs on a worker thread when it is done.");

  m.def(
      "decode",
      [](nb::bytes data, int64_t max_pixels) {
        ImageInfo info;
        auto* rgb = new std::vector<uint8_t>();
        try {
          nb::gil_scoped_release release;
          *rgb =
              decode_rgb(static_cast<const uint8_t*>(data.data()), data.size(), max_pixels, &info);
        } catch (...) {
          delete rgb;
          throw;
        }
        nb::capsule owner(rgb,
                          [](void* p) noexcept { delete static_cast<std::vector<uint8_t>*>(p); });
        const size_t shape[3] = {size_t(info.oriented_height()), size_t(info.oriented_width()), 3};
        return nb::ndarray<nb::numpy, uint8_t>(rgb->data(), 3, shape, owner);
      },
      nb::arg("data"), nb::arg("max_pixels"),
      "Decode one image to (H, W, 3) uint8 RGB with EXIF orientation applied.");

  m.def(
      "image_info",
      [](nb::bytes data, int64_t max_pixels) {
        const ImageInfo info =
            read_info(static_cast<const uint8_t*>(data.data()), data.size(), max_pixels);
        return std::make_tuple(std::string(format_name(info.format)), info.oriented_width(),
                               info.oriented_height(), info.orientation);
      },
      nb::arg("data"), nb::arg("max_pixels"),
      "(format, width, height, orientation) of one image from its header.");

  m.def(
      "supported_formats",
      [] {
        std::vector<std::string> formats{"jpeg", "png"};
#ifdef STOKER_HAVE_WEBP
        formats.emplace_back("webp");
#endif
        return formats;
      },
      "Formats this build decodes.");

  nb::register_exception_translator([](const std::exception_ptr& p, void*) {
    try {
      std::rethrow_exception(p);
    } catch (const ImageError& e) {
      // Surfaces as ValueError("<kind>: <message>"); the Python layer maps kinds to subclasses.
      PyErr_SetString(PyExc_ValueError,
                      (std::string(status_name(e.status())) + ": " + e.what()).c_str());
    }
  });
}

}  // namespace stoker::bindings
