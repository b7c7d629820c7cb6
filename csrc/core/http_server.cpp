#include "core/http_server.hpp"

#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <stdexcept>
#include <utility>

#include "core/http_server_loop.hpp"
#include "core/thread_name.hpp"

namespace stoker {
namespace {

HttpServerConfig validated(HttpServerConfig c) {
  c.validate();
  return c;
}

}  // namespace

void HttpServerConfig::validate() const {
  if (io_threads == 0 || io_threads > 256) {
    throw std::invalid_argument("io_threads must be between 1 and 256");
  }
  if (max_connections == 0) throw std::invalid_argument("max_connections must be at least 1");
  if (backlog <= 0) throw std::invalid_argument("backlog must be positive");
  if (limits.max_header_bytes < 64) throw std::invalid_argument("max_header_bytes is too small");
  if (limits.max_headers == 0) throw std::invalid_argument("max_headers must be at least 1");
  if (max_unsent_bytes == 0) throw std::invalid_argument("max_unsent_bytes must be at least 1");
  // Bounded so that it stays representable once converted to the clock's nanoseconds.
  if (idle_timeout.count() < 0 || idle_timeout > std::chrono::hours(24)) {
    throw std::invalid_argument("idle_timeout must be between 0 and 24 hours");
  }
}

HttpServer::HttpServer(HttpServerConfig config, Handler handler, Abandon abandon)
    : config_(validated(std::move(config))),
      handler_(std::move(handler)),
      abandon_(std::move(abandon)),
      unlistened_(ptrdiff_t(config_.io_threads)) {
  if (!handler_) throw std::invalid_argument("a request handler is required");
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  const std::string port = std::to_string(config_.port);
  const int rc = getaddrinfo(config_.host.empty() ? nullptr : config_.host.c_str(), port.c_str(),
                             &hints, &found);
  if (rc != 0 || found == nullptr) {
    throw std::invalid_argument("cannot resolve listen address '" + config_.host +
                                "': " + gai_strerror(rc));
  }
  std::unique_ptr<addrinfo, void (*)(addrinfo*)> addresses(found, freeaddrinfo);
  const std::string where = config_.host + ":" + port;
  listen_fd_ = ::socket(found->ai_family, found->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                        found->ai_protocol);
  if (listen_fd_ < 0) throw Loop::sys_error("socket for " + where);
  try {
    const int one = 1;
    setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (::bind(listen_fd_, found->ai_addr, found->ai_addrlen) != 0) {
      throw Loop::sys_error("bind " + where);
    }
    if (::listen(listen_fd_, config_.backlog) != 0) throw Loop::sys_error("listen on " + where);
    sockaddr_storage bound{};
    socklen_t len = sizeof bound;
    if (getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&bound), &len) != 0) {
      throw Loop::sys_error("getsockname");
    }
    port_ = ntohs(bound.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port
                                              : reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
    for (size_t i = 0; i < config_.io_threads; ++i) {
      loops_.push_back(std::make_unique<Loop>(*this, i));
    }
  } catch (...) {
    ::close(listen_fd_);
    throw;
  }
}

HttpServer::~HttpServer() { shutdown(std::chrono::milliseconds(0)); }

void HttpServer::start() {
  std::lock_guard<std::mutex> lock(lifecycle_);
  if (started_ || stopped_) return;
  started_ = true;
  size_t launched = 0;
  try {
    for (auto& loop : loops_) {
      threads_.emplace_back([l = loop.get()] {
        name_this_thread("stoker-http");
        l->run();
      });
      ++launched;
    }
  } catch (...) {
    // Loops that never ran never report that they stopped listening; shutdown() must not wait
    // for them.
    unlistened_.count_down(std::ptrdiff_t(loops_.size() - launched));
    throw;
  }
}

void HttpServer::respond(uint64_t token, HttpResponse&& response) {
  loops_[token % loops_.size()]->post({token, Loop::Part::kWhole, std::move(response)});
}

void HttpServer::respond_start(uint64_t token, HttpResponse&& response) {
  loops_[token % loops_.size()]->post({token, Loop::Part::kStart, std::move(response)});
}

void HttpServer::respond_pieces(std::vector<HttpPiece>&& pieces) {
  std::vector<std::vector<Loop::Post>> by_loop(loops_.size());
  for (HttpPiece& p : pieces) {
    HttpResponse r;
    r.body = std::move(p.bytes);
    by_loop[p.token % loops_.size()].push_back(
        {p.token, p.last ? Loop::Part::kLast : Loop::Part::kPiece, std::move(r)});
  }
  for (size_t i = 0; i < loops_.size(); ++i) {
    if (!by_loop[i].empty()) loops_[i]->post_many(std::move(by_loop[i]));
  }
}

void HttpServer::shutdown(std::chrono::milliseconds drain) {
  std::lock_guard<std::mutex> lock(lifecycle_);
  if (stopped_) return;
  stopped_ = true;
  if (started_) {
    const auto deadline = Loop::Clock::now() + std::max(drain, std::chrono::milliseconds(0));
    for (auto& loop : loops_) loop->stop(deadline);
    // No loop may be inside accept4() when the descriptor closes and its number is reused.
    unlistened_.wait();
  }
  ::close(listen_fd_);
  listen_fd_ = -1;
  for (std::thread& t : threads_) t.join();
  for (auto& loop : loops_) loop->retire();
}

}  // namespace stoker
