// The native hot path of the server. An HTTP server hands every request to the gateway on its I/O
// thread; KServe v2 binary infer requests in their common form (encoded images as one BYTES input)
// go straight into the model's feeder, and their answers are encoded and written natively, so no
// Python runs per request. Everything else (other routes, JSON tensors, unusual parameters and the
// precise errors for malformed requests) is forwarded to the Python application.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/feeder.hpp"
#include "core/http_server.hpp"
#include "core/kserve.hpp"

namespace stoker {

struct GatewayModel {
  std::string name;
  // One per engine of the model (one engine per device); each request goes whole to the one
  // with the fewest requests waiting.
  std::vector<std::shared_ptr<Feeder>> feeders;
  // The outputs the model answers with, in the order answers carry them.
  std::vector<std::string> outputs;
};

struct GatewayConfig {
  HttpServerConfig http;
  std::string token;  // empty: no authentication
  size_t max_images_per_request = 64;
  std::chrono::microseconds timeout{0};  // 0: requests never expire in the queue
};

// One output of a batch of answered rows: row r's value is `row_bytes` bytes at data + r *
// row_bytes.
struct RowOutput {
  std::string name;
  std::string datatype;
  std::vector<int64_t> row_shape;
  const uint8_t* data = nullptr;
  size_t row_bytes = 0;
};

struct RowTimings {
  std::span<const int64_t> queue_us;  // one per row
  std::span<const int64_t> total_us;  // one per row
  std::array<double, 5> shared{};     // µs, the same for every row of the batch
};

struct RowError {
  size_t row = 0;
  int status = 500;
  std::string message;
};

// Per-request stage durations in µs, in the order of the Server-Timing header.
inline constexpr std::array<const char*, 7> kGatewayStages = {
    "queue", "batch", "preprocess", "h2d", "compute", "postprocess", "total"};

class Gateway {
 public:
  // Feeder ids of gateway requests have this bit set, so an engine can tell them from its own.
  static constexpr uint64_t kIdBit = uint64_t{1} << 63;
  static constexpr unsigned kElementBits = 16;
  static bool owns(uint64_t id) { return (id & kIdBit) != 0; }

  // Binds the listening socket; throws std::system_error or std::invalid_argument.
  Gateway(GatewayConfig config, std::vector<GatewayModel> models);
  ~Gateway();
  Gateway(const Gateway&) = delete;
  Gateway& operator=(const Gateway&) = delete;

  uint16_t port() const { return server_->port(); }
  void start() { server_->start(); }
  // Stops accepting, lets requests in flight finish for up to `drain`, then closes everything.
  void shutdown(std::chrono::milliseconds drain);

  // --- the Python application's side ---
  // Blocks until requests are forwarded or forwarded ones abandoned (their clients left before
  // the answer ended); moves them all into `out` and `abandoned`. False once shut down.
  bool next_forwarded(std::vector<std::pair<uint64_t, HttpRequest>>& out,
                      std::vector<uint64_t>& abandoned);
  void respond(uint64_t token, HttpResponse&& response) {
    server_->respond(token, std::move(response));
  }
  // A forwarded request's answer in pieces, as HttpServer::respond_start and respond_pieces.
  void respond_start(uint64_t token, HttpResponse&& response) {
    server_->respond_start(token, std::move(response));
  }
  void respond_pieces(std::vector<HttpPiece>&& pieces) {
    server_->respond_pieces(std::move(pieces));
  }

  // --- the engine's side ---
  // The image bytes of a queued element; valid until the element is answered.
  std::span<const uint8_t> payload(uint64_t id) const;
  // Row r of the batch answers element ids[r]. Its Server-Timing comes from its own queue and
  // total µs and the stages its batch shared (batch, preprocess, h2d, compute, postprocess).
  void answer(std::span<const uint64_t> ids, const std::vector<RowOutput>& outputs,
              const RowTimings& timings, const std::vector<RowError>& errors);
  void fail(std::span<const uint64_t> ids, int status, const std::string& message);

  // Images model `m`'s feeder `f` was given (index into the models and their feeders).
  uint64_t routed(size_t m, size_t f) const;
  // Answered requests of model `m` (index into the models given) by HTTP status.
  std::vector<std::pair<int, uint64_t>> counts(size_t m) const;
  uint64_t forwarded() const { return forwarded_.load(std::memory_order_relaxed); }
  // Requests holding images in the queue or in a batch (answered or not).
  size_t pending() const;

 private:
  struct Pending;
  using Finished = std::vector<std::unique_ptr<Pending>>;

  void on_request(uint64_t token, HttpRequest&& request);
  void on_abandon(uint64_t token);
  void forward_abandon(uint64_t token);
  bool try_infer(uint64_t token, size_t model, HttpRequest& request);
  void forward(uint64_t token, HttpRequest&& request);
  void withdraw(Pending& req, uint64_t token, size_t model, uint64_t base, size_t queued);
  // Settles one element (under mutex_); a request whose last element settles moves to `done`.
  void settle(uint64_t id, Finished& done, const std::function<void(Pending&, size_t)>& apply);
  void finish(Pending& p);
  void reply_error(uint64_t token, size_t model, int status, std::string_view message,
                   bool retry_after = false);
  void count(size_t model, int status);

  GatewayConfig config_;
  std::vector<GatewayModel> models_;
  std::unique_ptr<HttpServer> server_;

  mutable std::mutex mutex_;
  std::unordered_map<uint64_t, std::unique_ptr<Pending>> pending_;  // by request sequence
  std::unordered_map<uint64_t, uint64_t> by_token_;                 // token → sequence
  uint64_t next_sequence_ = 1;

  std::mutex forward_mutex_;
  std::condition_variable forward_cv_;
  std::deque<std::pair<uint64_t, HttpRequest>> forward_queue_;
  std::vector<uint64_t> forward_abandoned_;
  bool closed_ = false;
  std::atomic<uint64_t> forwarded_{0};

  // The feeder of `model` with the fewest requests waiting; ties go round the feeders.
  size_t pick_feeder(size_t model);

  // Images handed to each feeder, by model then feeder.
  std::vector<std::unique_ptr<std::atomic<uint64_t>[]>> routed_;
  std::atomic<size_t> turn_{0};
  // Answered requests by model and status (100..599), counted without locks.
  std::unique_ptr<std::atomic<uint64_t>[]> counts_;
};

}  // namespace stoker
