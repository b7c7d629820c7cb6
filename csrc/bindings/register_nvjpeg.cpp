// nvJPEG bindings. Device memory and the stream come from torch as integers (pointers); the
// decoder never allocates the output, so torch's caching allocator keeps doing that.
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "bindings/bindings.hpp"
#include "bindings/inputs.hpp"
#include "core/nvjpeg.hpp"

namespace stoker::bindings {
namespace {

NvJpegBackend parse_backend(const std::string& name) {
  if (name == "auto") return NvJpegBackend::kAuto;
  if (name == "hardware") return NvJpegBackend::kHardware;
  if (name == "cuda") return NvJpegBackend::kCuda;
  throw std::invalid_argument("backend must be one of auto, hardware, cuda, got '" + name + "'");
}

// Runs `fn` on the borrowed items with the GIL released; the borrow ends with the GIL held.
template <typename Fn>
auto with_items(nb::handle items, Fn&& fn) {
  Inputs inputs(items);
  try {
    nb::gil_scoped_release release;
    auto result = fn(inputs.spans);
    nb::gil_scoped_acquire acquire;
    inputs.release();
    return result;
  } catch (...) {
    inputs.release();
    throw;
  }
}

}  // namespace

void register_nvjpeg(nb::module_& m) {
  using Header = std::tuple<int, int, bool, std::string>;
  using Result = std::tuple<int, int, size_t, std::string>;
  nb::class_<NvJpegDecoder>(m, "NvJpegDecoder",
                            "nvJPEG for the CUDA device current when it is made;\n"
                            "every call must run with that device current.")
      .def(
          "__init__",
          [](NvJpegDecoder* self, const std::string& backend,
             const std::vector<std::string>& libraries, int64_t max_pixels) {
            if (max_pixels < 0) throw std::invalid_argument("max_pixels must be >= 0");
            const NvJpegBackend b = parse_backend(backend);
            nb::gil_scoped_release release;
            new (self) NvJpegDecoder(b, libraries, uint64_t(max_pixels));
          },
          nb::arg("backend") = "auto", nb::arg("libraries") = std::vector<std::string>{},
          nb::arg("max_pixels") = 0,
          "Loads the first of `libraries` that opens (default names when empty).\n"
          "'auto' takes the GPU's JPEG engines where it has them.")
      .def_prop_ro("hardware", &NvJpegDecoder::hardware,
                   "Whether the GPU's hardware JPEG engines decode.")
      .def_prop_ro("library", &NvJpegDecoder::library, "The nvJPEG library loaded.")
      .def(
          "inspect",
          [](NvJpegDecoder& d, nb::handle items) {
            return with_items(items, [&](const std::vector<ByteSpan>& spans) {
              std::vector<Header> out;
              for (NvJpegHeader& h : d.inspect(spans)) {
                out.emplace_back(h.width, h.height, h.batched, std::move(h.error));
              }
              return out;
            });
          },
          nb::arg("items"),
          "(width, height, batched, error) per item; batched: the batched decoder takes it.")
      .def(
          "decode",
          [](NvJpegDecoder& d, nb::handle items, uintptr_t out, size_t capacity, uintptr_t stream) {
            return with_items(items, [&](const std::vector<ByteSpan>& spans) {
              std::vector<Result> results;
              for (NvJpegResult& r : d.decode(spans, reinterpret_cast<uint8_t*>(out), capacity,
                                              reinterpret_cast<void*>(stream))) {
                results.emplace_back(r.width, r.height, r.offset, std::move(r.error));
              }
              return results;
            });
          },
          nb::arg("items"), nb::arg("out"), nb::arg("capacity"), nb::arg("stream"),
          "Decodes to planar RGB, one image after another in the device memory at\n"
          "`out` (`capacity` bytes), on the CUDA stream `stream`:\n"
          "(width, height, offset, error) per item; a bad item fails alone.");
}

}  // namespace stoker::bindings
