// stoker's HTTP/1.1 front door: epoll I/O threads parse requests and hand each complete one to a
// C++ handler, which answers later from any thread. Each connection has at most one request in
// flight, so responses keep request order and pipelined bytes wait in the connection's buffer.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <latch>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/http.hpp"

namespace stoker {

struct HttpServerConfig {
  std::string host = "127.0.0.1";  // numeric address or resolvable name; "" listens on all
  uint16_t port = 0;               // 0: any free port; HttpServer::port() tells which
  size_t io_threads = 1;
  HttpLimits limits;
  size_t max_connections = 16384;  // beyond it new connections are accepted and closed at once
  int backlog = 4096;
  // Slow-loris protection: a connection with no request in flight closes once this long has passed
  // since it was accepted, last answered or last sent response bytes, so a request must arrive
  // whole within it (one partly received is answered 408). Connections are checked every quarter
  // of it, so one may close up to a quarter late. Zero disables it.
  std::chrono::milliseconds idle_timeout = std::chrono::seconds(60);
  // A streamed response's bytes waiting for a client that does not read them: beyond this the
  // connection closes and its request is abandoned, so a stalled reader cannot hold memory.
  size_t max_unsent_bytes = 16 * 1024 * 1024;

  // Throws std::invalid_argument on an unusable configuration.
  void validate() const;
};

// A piece of a streamed response's body; `last` ends the response after its bytes.
struct HttpPiece {
  uint64_t token = 0;
  std::string bytes;
  bool last = false;
};

class HttpServer {
 public:
  // Runs on an I/O thread for each complete request and must not block. The request is answered
  // later, from any thread, by exactly one respond(token, ...).
  using Handler = std::function<void(uint64_t token, HttpRequest&& request)>;
  // Runs on an I/O thread when a connection closes while its request is unanswered.
  using Abandon = std::function<void(uint64_t token)>;

  // Binds and listens; throws std::system_error (e.g. address in use) or std::invalid_argument.
  HttpServer(HttpServerConfig config, Handler handler, Abandon abandon = {});
  ~HttpServer();  // shutdown(0) if still running
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  uint16_t port() const { return port_; }
  const HttpServerConfig& config() const { return config_; }
  void start();  // launches the I/O threads; later calls do nothing
  // Thread-safe and cheap: the response goes to the connection's I/O thread through a queue. A
  // token whose connection has closed, or that was already answered, is ignored.
  void respond(uint64_t token, HttpResponse&& response);
  // Starts a response whose body follows in pieces (`response.body`, if any, is the first): its
  // head goes out now, with Transfer-Encoding: chunked to HTTP/1.1 clients; an HTTP/1.0 client
  // gets the bytes as they are and the connection closes at the end. The token stays in flight
  // (a closing connection abandons it) until a piece marked last. Thread-safe, like respond().
  void respond_start(uint64_t token, HttpResponse&& response);
  // Pieces of started responses, in order per token; one hand-over per I/O thread. Pieces of a
  // token not started, finished or gone are ignored.
  void respond_pieces(std::vector<HttpPiece>&& pieces);
  // Closes the listener and idle connections, lets requests in flight be answered and written for
  // up to `drain`, then closes everything (abandoning what is left) and joins the threads.
  // Idempotent; concurrent callers return once the first has finished. Not from an I/O thread
  // (a handler or abandon callback): it joins them.
  void shutdown(std::chrono::milliseconds drain);

  size_t connections() const { return connections_.load(std::memory_order_relaxed); }
  uint64_t requests() const { return requests_.load(std::memory_order_relaxed); }
  uint64_t protocol_errors() const { return protocol_errors_.load(std::memory_order_relaxed); }

 private:
  class Loop;

  HttpServerConfig config_;
  Handler handler_;
  Abandon abandon_;
  int listen_fd_ = -1;
  uint16_t port_ = 0;
  std::vector<std::unique_ptr<Loop>> loops_;  // fixed at construction; respond() reads it freely
  std::vector<std::thread> threads_;
  std::latch unlistened_;  // each running loop counts down once it no longer accepts
  std::mutex lifecycle_;
  bool started_ = false;
  bool stopped_ = false;
  std::atomic<size_t> connections_{0};
  std::atomic<uint64_t> requests_{0};
  std::atomic<uint64_t> protocol_errors_{0};
};

}  // namespace stoker
