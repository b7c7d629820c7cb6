// The engine of `stoker bench`: an HTTP/1.1 load generator over persistent keep-alive connections,
// driven by epoll on a few threads so that it sustains several times the rate it measures. Requests
// are sent from prebuilt bytes; responses are parsed incrementally without keeping their bodies.
// Open-loop latency is measured from each request's scheduled time, so a stalled server shows up
// as latency rather than as a lower offered rate.
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "core/histogram.hpp"

namespace stoker {

struct LoadConfig {
  std::string host = "127.0.0.1";  // numeric address or a name the resolver knows
  uint16_t port = 0;
  // Complete HTTP/1.1 requests (request line, headers with Content-Length, body). Connection i
  // starts at request i % n and walks them round-robin.
  std::vector<std::string> requests;
  size_t connections = 64;    // persistent keep-alive connections
  size_t threads = 1;         // I/O threads; connections are spread over them
  double rate = 0;            // open loop: Poisson arrivals per second; 0 = closed loop
  double warmup_s = 1.0;      // requests started during warm-up are not counted
  double duration_s = 10.0;   // measured window after warm-up
  uint64_t max_requests = 0;  // stop after this many measured completions (0 = no limit)
  double timeout_s = 30.0;    // per request; a timeout reopens the connection
  uint64_t seed = 1;

  // Throws std::invalid_argument on an inconsistent configuration.
  void validate() const;
};

// Everything counts only requests started inside the measured window. Requests still in flight
// when the window closes are waited for (up to their timeout) unless the run was stopped.
struct LoadReport {
  double elapsed_s = 0;  // the measured window
  uint64_t sent = 0;
  uint64_t completed = 0;  // responses fully read, whatever their status
  uint64_t timeouts = 0;
  uint64_t transport_errors = 0;  // failed connects, resets, malformed responses
  uint64_t late = 0;              // open loop: sent more than 1 ms after the scheduled time
  uint64_t unsent = 0;            // open loop: scheduled in the window but never given a connection
  std::map<int, uint64_t> statuses;
  Histogram::Snapshot latency;  // µs
  // Per Server-Timing metric name, its `dur` (milliseconds on the wire) in µs.
  std::map<std::string, Histogram::Snapshot> server_timing;
  double cpu_s = 0;  // CPU time of the generator's threads from the window's start to their end
};

// Incremental parser of one HTTP/1.x response at a time, skipping interim 1xx responses. It keeps
// no body bytes and needs the whole header block in one buffer; anything malformed or oversized
// is an error, never a crash or unbounded growth.
class ResponseParser {
 public:
  enum class Result { kNeedMore, kDone, kError };
  static constexpr size_t kMaxHeaderBytes = 64 * 1024;
  static constexpr size_t kMaxTimings = 32;
  static constexpr size_t kMaxTimingName = 64;

  struct Timing {
    std::string_view name;  // valid until the next reset()
    uint64_t us = 0;
  };

  // Prepares for the response to a new request; a HEAD request's response has no body.
  void reset(bool head_request = false);
  // Consumes a prefix of `data` and reports how much in `used`. kDone leaves the bytes after the
  // response unconsumed; kNeedMore with used < size means the rest is an incomplete header block
  // or chunk line that must be passed again with more bytes after it.
  Result parse(const char* data, size_t size, size_t& used);
  // The peer closed the connection: completes a response delimited by the close.
  Result finish_eof();

  int status() const { return status_; }
  bool keep_alive() const { return keep_alive_; }
  const std::vector<Timing>& timings() const { return timings_; }

 private:
  enum class State { kHeaders, kBody, kChunkSize, kChunkData, kChunkEnd, kTrailers, kUntilEof };
  Result parse_headers(const char* data, size_t size, size_t& used);
  bool header(std::string_view name, std::string_view value);
  void server_timing(std::string_view value);

  State state_ = State::kHeaders;
  bool head_ = false;
  int status_ = 0;
  bool keep_alive_ = true;
  bool chunked_ = false;
  bool has_length_ = false;
  uint64_t remaining_ = 0;
  std::vector<Timing> timings_;
  std::string names_;  // storage of the timing names
};

class LoadGenerator {
 public:
  // Throws std::invalid_argument on a bad configuration or an unresolvable host.
  explicit LoadGenerator(LoadConfig config);
  ~LoadGenerator();
  LoadGenerator(const LoadGenerator&) = delete;
  LoadGenerator& operator=(const LoadGenerator&) = delete;

  // Launches the I/O threads; the warm-up starts now. Throws std::logic_error when called twice.
  void start();
  // Measured completions so far: cheap enough to poll for progress.
  uint64_t completed() const { return completed_.load(std::memory_order_relaxed); }
  // Ends the run early; requests in flight are abandoned. Idempotent, callable from any thread.
  void stop();
  // Whether every I/O thread has finished, so that wait() returns at once.
  bool done() const;
  // Blocks until the run ends and returns its report (the same report on later calls).
  LoadReport wait();

  // One I/O thread's state. Everything in it is touched by that thread alone until it ends.
  struct Worker {
    enum class State : uint8_t { kDown, kConnecting, kIdle, kWriting, kReading };
    struct Connection {
      int fd = -1;
      State state = State::kDown;
      uint32_t generation = 0;  // tells events of a closed socket from those of its successor
      bool want_write = false;
      bool in_idle = false;
      bool fresh = true;  // no response read on this socket yet
      bool measured = false;
      size_t next_request = 0;
      size_t written = 0;
      const std::string* request = nullptr;
      int64_t start_ns = 0;  // scheduled (open loop) or sent (closed loop)
      int64_t deadline_ns = 0;
      int64_t retry_ns = 0;
      ResponseParser parser;
      std::vector<char> buffer;
      size_t begin = 0, end = 0;
    };

    Worker() = default;
    Worker(const Worker&) = delete;
    Worker& operator=(const Worker&) = delete;
    ~Worker();

    std::thread thread;
    int epfd = -1;
    std::vector<Connection> conns;
    std::vector<uint32_t> idle;   // open loop: connections ready for a request
    std::deque<int64_t> backlog;  // open loop: scheduled times waiting for a connection
    std::mt19937_64 rng;
    uint64_t in_flight = 0;  // measured requests awaiting their outcome
    uint64_t sent = 0, timeouts = 0, errors = 0, late = 0, unsent = 0;
    std::array<uint64_t, 600> statuses{};
    Histogram latency;
    std::vector<std::pair<std::string, std::unique_ptr<Histogram>>> metrics;
    double cpu_s = 0;
  };

 private:
  class EventLoop;  // defined with the I/O threads' code
  static int64_t now_ns();
  static int64_t to_ns(double seconds);
  void run_worker(Worker& w);

  LoadConfig config_;
  std::vector<char> address_;  // the resolved sockaddr
  std::atomic<bool> stop_{false};
  std::atomic<int64_t> stopped_ns_{0};  // when the run was cut short, on the steady clock
  std::atomic<uint64_t> completed_{0};
  std::atomic<size_t> finished_{0};  // I/O threads that have returned
  std::mutex wait_mutex_;
  std::vector<std::unique_ptr<Worker>> workers_;
  bool started_ = false;
  bool joined_ = false;
  int64_t window_start_ns_ = 0;
  LoadReport report_;
};

}  // namespace stoker
