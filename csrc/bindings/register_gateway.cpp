// Gateway bindings: the native HTTP hot path. Python only sees requests the gateway forwards
// (other routes, unusual requests) and one answer call per batch; waiting and answering release
// the GIL.
#include <nanobind/ndarray.h>
#include <nanobind/stl/array.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
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
#include "core/gateway.hpp"

namespace stoker::bindings {
namespace {

using Ids = nb::ndarray<const uint64_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using Rows = nb::ndarray<nb::ro, nb::c_contig, nb::device::cpu>;
using ModelSpec =
    std::tuple<std::string, std::vector<std::shared_ptr<Feeder>>, std::vector<std::string>>;
using Header = std::pair<std::string, std::string>;

std::unique_ptr<Gateway> make_gateway(std::string host, uint16_t port, size_t io_threads,
                                      std::string token, size_t max_body_bytes,
                                      size_t max_images_per_request, int64_t timeout_us,
                                      std::vector<ModelSpec> models) {
  GatewayConfig config;
  config.http.host = std::move(host);
  config.http.port = port;
  config.http.io_threads = io_threads;
  config.http.limits.max_body_bytes = max_body_bytes;
  config.token = std::move(token);
  config.max_images_per_request = max_images_per_request;
  config.timeout = std::chrono::microseconds(timeout_us);
  std::vector<GatewayModel> list;
  for (auto& [name, feeders, outputs] : models) {
    list.push_back({std::move(name), std::move(feeders), std::move(outputs)});
  }
  return std::make_unique<Gateway>(std::move(config), std::move(list));
}

std::optional<std::pair<nb::list, std::vector<uint64_t>>> forwarded(Gateway& g) {
  std::vector<std::pair<uint64_t, HttpRequest>> batch;
  std::vector<uint64_t> abandoned;
  bool got;
  {
    nb::gil_scoped_release release;
    got = g.next_forwarded(batch, abandoned);
  }
  if (!got) return std::nullopt;
  nb::list out;
  for (auto& [token, r] : batch) {
    nb::list headers;
    for (const HttpHeader& h : r.headers) {
      headers.append(nb::make_tuple(nb::bytes(h.name.data(), h.name.size()),
                                    nb::bytes(h.value.data(), h.value.size())));
    }
    // Bytes, not str: a request target may hold any octet (obs-text), UTF-8 or not.
    out.append(nb::make_tuple(token, nb::bytes(r.method.data(), r.method.size()),
                              nb::bytes(r.path.data(), r.path.size()),
                              nb::bytes(r.query.data(), r.query.size()), headers,
                              nb::bytes(r.body.data(), r.body.size())));
  }
  return std::make_pair(std::move(out), std::move(abandoned));
}

HttpResponse response_of(int status, std::vector<Header>&& headers, nb::bytes body) {
  HttpResponse r;
  r.status = status;
  for (auto& [k, v] : headers) r.headers.push_back({std::move(k), std::move(v)});
  r.body.assign(body.c_str(), body.size());
  return r;
}

// An answer from Python's (status, headers, body) through one of the gateway's ways to send it.
template <void (Gateway::*Send)(uint64_t, HttpResponse&&)>
void send_response(Gateway& g, uint64_t token, int status, std::vector<Header> headers,
                   nb::bytes body) {
  (g.*Send)(token, response_of(status, std::move(headers), body));
}

// Pieces of streamed answers, as (token, bytes, last) tuples.
void respond_pieces(Gateway& g, const nb::list& items) {
  std::vector<HttpPiece> pieces;
  pieces.reserve(items.size());
  for (nb::handle item : items) {
    const auto [token, bytes, last] = nb::cast<std::tuple<uint64_t, nb::bytes, bool>>(item);
    pieces.push_back({token, std::string(bytes.c_str(), bytes.size()), last});
  }
  // Handing over takes a lock and a wakeup: releasing the GIL for that long would cost more, as
  // getting it back can wait a whole switch interval for another thread.
  g.respond_pieces(std::move(pieces));
}

using Micros = nb::ndarray<const int64_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;

void answer(Gateway& g, Ids ids, std::vector<std::tuple<std::string, std::string, Rows>> outputs,
            Micros queue_us, Micros total_us, std::array<double, 5> shared,
            std::vector<std::tuple<size_t, int, std::string>> errors) {
  const size_t rows = ids.shape(0);
  if (queue_us.shape(0) != rows || total_us.shape(0) != rows) {
    throw nb::value_error("queue_us and total_us need one value per id");
  }
  std::vector<RowOutput> outs;
  for (auto& [name, datatype, data] : outputs) {
    if (data.ndim() < 1 || data.shape(0) != rows) {
      throw nb::value_error("every output needs one row per id");
    }
    RowOutput o;
    o.name = name;
    o.datatype = datatype;
    size_t per_row = 1;
    for (size_t d = 1; d < data.ndim(); ++d) {
      o.row_shape.push_back(int64_t(data.shape(d)));
      per_row *= data.shape(d);
    }
    o.row_bytes = per_row * data.itemsize();
    o.data = static_cast<const uint8_t*>(data.data());
    outs.push_back(std::move(o));
  }
  std::vector<RowError> errs;
  for (auto& [row, status, message] : errors) errs.push_back({row, status, std::move(message)});
  nb::gil_scoped_release release;
  const RowTimings timings{{queue_us.data(), rows}, {total_us.data(), rows}, shared};
  g.answer({ids.data(), rows}, outs, timings, errs);
}

}  // namespace

void register_gateway(nb::module_& m) {
  nb::class_<Gateway>(m, "Gateway", "Native HTTP server feeding models' feeders directly.")
      .def(nb::new_(&make_gateway), nb::arg("host"), nb::arg("port"), nb::arg("io_threads"),
           nb::arg("token"), nb::arg("max_body_bytes"), nb::arg("max_images_per_request"),
           nb::arg("timeout_us"), nb::arg("models"),
           "Bind host:port (0: any free port). `models` holds (name, feeders, output names):\n"
           "one feeder per engine of the model; each request goes to the one with the fewest\n"
           "requests waiting.")
      .def_prop_ro("port", &Gateway::port)
      .def_prop_ro("forwarded", &Gateway::forwarded, "Requests handed to Python so far.")
      .def_prop_ro("pending", &Gateway::pending,
                   "Requests whose images are still queued or in a batch.")
      .def_ro_static("id_bit", &Gateway::kIdBit)
      .def("start", &Gateway::start, "Start serving.")
      .def(
          "shutdown",
          [](Gateway& g, double drain_s) {
            g.shutdown(std::chrono::milliseconds(int64_t(drain_s * 1000)));
          },
          nb::arg("drain_s"), nb::call_guard<nb::gil_scoped_release>(),
          "Stop accepting, let requests in flight finish for up to drain_s, close.")
      .def("next_forwarded", &forwarded,
           "Wait for requests left to Python and forwarded requests whose clients left:\n"
           "([(token, method, path, query, headers, body)], [abandoned token]), all but the\n"
           "tokens as bytes; None once shut down.")
      .def("respond", &send_response<&Gateway::respond>, nb::arg("token"), nb::arg("status"),
           nb::arg("headers"), nb::arg("body"), "Answer a forwarded request.")
      .def("respond_start", &send_response<&Gateway::respond_start>, nb::arg("token"),
           nb::arg("status"), nb::arg("headers"), nb::arg("body"),
           "Start a forwarded request's answer whose body follows in pieces (body: the first).")
      .def("respond_pieces", &respond_pieces, nb::arg("pieces"),
           "Pieces of started answers, [(token, bytes, last)] in order per token; `last` ends\n"
           "that answer. One hand-over per I/O thread.")
      .def(
          "payload",
          [](const Gateway& g, uint64_t id) {
            const std::span<const uint8_t> bytes = g.payload(id);
            return nb::bytes(reinterpret_cast<const char*>(bytes.data()), bytes.size());
          },
          nb::arg("id"), "A queued element's image bytes (empty when unknown).")
      .def("answer", &answer, nb::arg("ids"), nb::arg("outputs"), nb::arg("queue_us"),
           nb::arg("total_us"), nb::arg("shared"), nb::arg("errors"),
           "Answer elements: outputs are (name, datatype, array with one row per id); queue_us\n"
           "and total_us per id, shared the batch's (batch, preprocess, h2d, compute,\n"
           "postprocess) µs; errors (row, status, message).")
      .def(
          "fail",
          [](Gateway& g, Ids ids, int status, const std::string& message) {
            nb::gil_scoped_release release;
            g.fail({ids.data(), ids.shape(0)}, status, message);
          },
          nb::arg("ids"), nb::arg("status"), nb::arg("message"), "Fail elements.")
      .def("counts", &Gateway::counts, nb::arg("model"),
           "[(status, answered requests)] of the model at that index.")
      .def("routed", &Gateway::routed, nb::arg("model"), nb::arg("feeder"),
           "Images given to that feeder of that model.");
}

}  // namespace stoker::bindings
