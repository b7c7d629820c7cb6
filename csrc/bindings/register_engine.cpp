// Engine bindings: the native feeder (batcher + staging ring) and latency histograms. Requests are
// borrowed bytes objects that the Python engine keeps alive until it answers them; waiting for a
// batch releases the GIL, and a batch crosses into Python as one object with array fields.
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/shared_ptr.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/unique_ptr.h>
#include <nanobind/stl/vector.h>

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "bindings/bindings.hpp"
#include "core/feeder.hpp"
#include "core/histogram.hpp"

namespace stoker::bindings {
namespace {

template <typename T>
nb::ndarray<nb::numpy, T> to_numpy(std::vector<T>&& values) {
  auto* owned = new std::vector<T>(std::move(values));
  nb::capsule owner(owned, [](void* p) noexcept { delete static_cast<std::vector<T>*>(p); });
  const size_t shape[1] = {owned->size()};
  return nb::ndarray<nb::numpy, T>(owned->data(), 1, shape, owner);
}

template <typename T, typename F>
nb::ndarray<nb::numpy, T> column(const std::vector<Request>& requests, F field) {
  std::vector<T> values;
  values.reserve(requests.size());
  for (const Request& r : requests) values.push_back(field(r));
  return to_numpy(std::move(values));
}

std::shared_ptr<Feeder> make_feeder(std::shared_ptr<Preprocessor> pre, size_t max_batch_size,
                                    int64_t max_delay_us, std::vector<size_t> preferred_sizes,
                                    size_t capacity, size_t slots, bool pinned) {
  FeederConfig config;
  config.batcher.max_batch_size = max_batch_size;
  config.batcher.max_delay = std::chrono::microseconds(max_delay_us);
  config.batcher.preferred_sizes = std::move(preferred_sizes);
  config.batcher.capacity = capacity;
  config.slots = slots;
  config.pinned = pinned && arena().pinning_enabled();
  return std::make_shared<Feeder>(std::move(config), std::move(pre), pool(), arena());
}

}  // namespace

void register_engine(nb::module_& m) {
  nb::class_<PreparedBatch>(m, "PreparedBatch", "A preprocessed batch in a staging slot.")
      .def_ro("sequence", &PreparedBatch::sequence)
      .def_ro("slot", &PreparedBatch::slot, "Index of the staging slot holding the batch.")
      .def_prop_ro("size", [](const PreparedBatch& b) { return b.requests.size(); })
      .def_prop_ro(
          "ids",
          [](const PreparedBatch& b) {
            return column<uint64_t>(b.requests, [](const Request& r) { return r.id; });
          },
          nb::rv_policy::move)
      .def_prop_ro(
          "enqueued_ns",
          [](const PreparedBatch& b) {
            return column<int64_t>(b.requests,
                                   [](const Request& r) { return steady_ns(r.enqueued); });
          },
          nb::rv_policy::move)
      .def_ro("deferred", &PreparedBatch::deferred, "Rows left for the GPU decoder.")
      .def_prop_ro(
          "errors",
          [](const PreparedBatch& b) {
            std::vector<std::tuple<size_t, std::string, std::string>> errors;
            for (size_t i = 0; i < b.items.size(); ++i) {
              const ItemResult& it = b.items[i];
              if (it.status != Status::kOk)
                errors.emplace_back(i, status_name(it.status), it.message);
            }
            return errors;
          },
          "[(row, kind, message)] for rows that failed to preprocess.")
      .def_ro("formed_ns", &PreparedBatch::formed_ns)
      .def_ro("prep_start_ns", &PreparedBatch::prep_start_ns)
      .def_ro("prep_end_ns", &PreparedBatch::prep_end_ns);

  nb::class_<Feeder>(m, "Feeder",
                     "Native batcher feeding a ring of staging buffers with preprocessed batches.")
      .def(nb::new_(&make_feeder), nb::arg("pre"), nb::arg("max_batch_size"),
           nb::arg("max_delay_us"), nb::arg("preferred_sizes"), nb::arg("capacity"),
           nb::arg("slots"), nb::arg("pinned"))
      .def(
          "submit",
          [](Feeder& f, uint64_t id, nb::handle data, bool high, int64_t deadline_ns) {
            const SteadyClock::time_point deadline =
                deadline_ns > 0 ? SteadyClock::time_point(std::chrono::nanoseconds(deadline_ns))
                                : SteadyClock::time_point::max();
            // The pointer outlives this buffer export: the caller keeps `data` (bytes, or a
            // memoryview, which pins its own export of the underlying object) until answered.
            Py_buffer view;
            if (PyObject_GetBuffer(data.ptr(), &view, PyBUF_SIMPLE) != 0) {
              PyErr_Clear();
              throw nb::type_error("data must be a contiguous bytes-like object");
            }
            const auto* ptr = static_cast<const uint8_t*>(view.buf);
            const size_t size = size_t(view.len);
            PyBuffer_Release(&view);
            return int(
                f.submit(id, high ? Priority::kHigh : Priority::kNormal, deadline, ptr, size));
          },
          nb::arg("id"), nb::arg("data"), nb::arg("high"), nb::arg("deadline_ns"),
          "Queue a request (bytes or a contiguous memoryview); the caller keeps `data` alive and\n"
          "unchanged until it is answered.\n"
          "Returns 0 accepted, 1 queue full, 2 closed, 3 duplicate id.")
      .def("cancel", &Feeder::cancel, nb::arg("id"),
           "Remove a waiting request; False when it already left the queue.")
      .def(
          "next",
          [](Feeder& f) -> std::unique_ptr<PreparedBatch> {
            auto batch = std::make_unique<PreparedBatch>();
            bool got;
            {
              nb::gil_scoped_release release;
              got = f.next(*batch);
            }
            if (!got) return nullptr;
            return batch;
          },
          "Wait for the next prepared batch; None once closed and drained.")
      .def(
          "next_expired",
          [](Feeder& f) -> std::optional<nb::ndarray<nb::numpy, uint64_t>> {
            std::vector<Request> expired;
            bool got;
            {
              nb::gil_scoped_release release;
              got = f.next_expired(expired);
            }
            if (!got) return std::nullopt;
            return column<uint64_t>(expired, [](const Request& r) { return r.id; });
          },
          "Wait for ids of requests that expired in the queue; None once closed.")
      .def("release", &Feeder::release, nb::arg("slot"), "Return a staging slot to the ring.")
      .def("close", &Feeder::close, "Stop admissions; queued requests are still handed out.")
      .def("set_gpu_share", &Feeder::set_gpu_share, nb::arg("share"))
      .def_prop_ro("gpu_share", &Feeder::gpu_share)
      .def_prop_ro("waiting", &Feeder::waiting)
      .def_prop_ro("slots", &Feeder::slots)
      .def_prop_ro("pinned", &Feeder::pinned)
      .def_prop_ro("max_batch_size",
                   [](const Feeder& f) { return f.batcher_config().max_batch_size; })
      .def(
          "slot",
          [](Feeder& f, size_t i) {
            if (i >= f.slots()) throw nb::index_error("no such staging slot");
            const Spec& s = f.preprocessor().spec();
            const size_t n = f.batcher_config().max_batch_size;
            const size_t total = n * s.item_bytes();
            const size_t shape[1] = {total};
            // A flat byte view; the engine reinterprets it with the spec's dtype and shape.
            return nb::ndarray<nb::numpy, uint8_t>(f.slot_data(i), 1, shape);
          },
          nb::arg("i"), nb::rv_policy::reference_internal,
          "Flat uint8 view of a staging slot (valid while the feeder lives).");

  nb::class_<Histogram>(m, "Histogram",
                        "Log-linear latency histogram (8 buckets per power of two), lock-free.")
      .def(nb::init<>())
      .def(
          "record", [](Histogram& h, uint64_t value) { h.record(value); }, nb::arg("value"))
      .def(
          "record_many",
          [](Histogram& h, nb::ndarray<const int64_t, nb::ndim<1>, nb::c_contig> values) {
            const int64_t* v = values.data();
            for (size_t i = 0; i < values.shape(0); ++i) h.record(v[i] < 0 ? 0 : uint64_t(v[i]));
          },
          nb::arg("values"), "Record every value of an int64 array (negatives count as 0).")
      .def("reset", &Histogram::reset)
      .def(
          "snapshot",
          [](const Histogram& h) {
            Histogram::Snapshot s = h.snapshot();
            return std::make_tuple(to_numpy(std::move(s.counts)), s.count, s.sum, s.max);
          },
          "(bucket counts, count, sum, max).")
      .def_static(
          "upper_bounds",
          [] {
            std::vector<uint64_t> bounds(Histogram::kBuckets);
            for (size_t i = 0; i < bounds.size(); ++i) bounds[i] = Histogram::upper_bound(i);
            return to_numpy(std::move(bounds));
          },
          "The largest value each bucket holds.");

  m.def(
      "jpeg_gpu_friendly",
      [](nb::bytes data) {
        return jpeg_gpu_friendly(static_cast<const uint8_t*>(data.data()), data.size());
      },
      nb::arg("data"), "Whether a GPU JPEG decoder gives this image the CPU path's pixels.");
}

}  // namespace stoker::bindings
