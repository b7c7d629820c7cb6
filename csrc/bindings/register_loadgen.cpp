// Load generator bindings for `stoker bench`: a run is configured with keyword arguments, polled
// for progress without blocking, and waited for with the GIL released. Histograms cross as the
// same (bucket counts, count, sum, max) tuple that Histogram.snapshot() returns, so Python reads
// them with the same helpers and Histogram.upper_bounds().
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <string>
#include <utility>
#include <vector>

#include "bindings/bindings.hpp"
#include "core/loadgen.hpp"

namespace stoker::bindings {
namespace {

nb::tuple snapshot_tuple(Histogram::Snapshot&& s) {
  auto* owned = new std::vector<uint64_t>(std::move(s.counts));
  nb::capsule owner(owned, [](void* p) noexcept { delete static_cast<std::vector<uint64_t>*>(p); });
  const size_t shape[1] = {owned->size()};
  nb::ndarray<nb::numpy, uint64_t> counts(owned->data(), 1, shape, owner);
  return nb::make_tuple(counts, s.count, s.sum, s.max);
}

nb::dict report_dict(LoadReport&& r) {
  nb::dict d;
  d["elapsed_s"] = r.elapsed_s;
  d["sent"] = r.sent;
  d["completed"] = r.completed;
  d["timeouts"] = r.timeouts;
  d["transport_errors"] = r.transport_errors;
  d["late"] = r.late;
  d["unsent"] = r.unsent;
  d["cpu_s"] = r.cpu_s;
  nb::dict statuses;
  for (const auto& [status, count] : r.statuses) statuses[nb::int_(status)] = count;
  d["statuses"] = statuses;
  d["latency"] = snapshot_tuple(std::move(r.latency));
  nb::dict timing;
  for (auto& [name, snapshot] : r.server_timing) {
    timing[nb::str(name.data(), name.size())] = snapshot_tuple(std::move(snapshot));
  }
  d["server_timing"] = timing;
  return d;
}

}  // namespace

void register_loadgen(nb::module_& m) {
  nb::class_<LoadGenerator>(m, "LoadGenerator",
                            "Native HTTP/1.1 load generator over keep-alive connections (epoll).")
      .def(
          "__init__",
          [](LoadGenerator* self, std::vector<nb::bytes> requests, std::string host, uint16_t port,
             size_t connections, size_t threads, double rate, double warmup_s, double duration_s,
             uint64_t max_requests, double timeout_s, uint64_t seed) {
            LoadConfig c;
            c.requests.reserve(requests.size());
            for (const nb::bytes& r : requests) c.requests.emplace_back(r.c_str(), r.size());
            c.host = std::move(host);
            c.port = port;
            c.connections = connections;
            c.threads = threads;
            c.rate = rate;
            c.warmup_s = warmup_s;
            c.duration_s = duration_s;
            c.max_requests = max_requests;
            c.timeout_s = timeout_s;
            c.seed = seed;
            new (self) LoadGenerator(std::move(c));
          },
          nb::kw_only(), nb::arg("requests"), nb::arg("host") = "127.0.0.1", nb::arg("port"),
          nb::arg("connections") = 64, nb::arg("threads") = 1, nb::arg("rate") = 0.0,
          nb::arg("warmup_s") = 1.0, nb::arg("duration_s") = 10.0, nb::arg("max_requests") = 0,
          nb::arg("timeout_s") = 30.0, nb::arg("seed") = 1,
          "requests: complete HTTP/1.1 requests as bytes; connection i starts at request i % n\n"
          "and walks them round-robin. rate: Poisson arrivals per second (open loop; latency\n"
          "from the scheduled time), or 0 for a closed loop. Raises ValueError on a bad setting.")
      .def("start", &LoadGenerator::start, "Launch the I/O threads; the warm-up starts now.")
      .def_prop_ro("completed", &LoadGenerator::completed, "Measured completions so far.")
      .def_prop_ro("done", &LoadGenerator::done, "Whether wait() would return at once.")
      .def("stop", &LoadGenerator::stop, "End the run early; idempotent.")
      .def(
          "wait",
          [](LoadGenerator& g) {
            LoadReport report;
            {
              nb::gil_scoped_release release;
              report = g.wait();
            }
            return report_dict(std::move(report));
          },
          "Wait for the run to end and return its report: a dict of elapsed_s, sent, completed,\n"
          "timeouts, transport_errors, late, unsent, cpu_s, statuses {status: count}, latency\n"
          "and server_timing {name: histogram}, histograms (µs) as Histogram.snapshot() tuples.");
}

}  // namespace stoker::bindings
