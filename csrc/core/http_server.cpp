#include "core/http_server.hpp"

#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <deque>
#include <stdexcept>
#include <system_error>
#include <unordered_map>
#include <utility>

namespace stoker {
namespace {

using Clock = std::chrono::steady_clock;

constexpr uint64_t kListenerId = 0;
constexpr uint64_t kWakeId = 1;
constexpr size_t kReadChunk = 64 * 1024;
constexpr int kReadsPerEvent = 4;  // then other connections get a turn (epoll is level-triggered)
constexpr size_t kInlineBody = 4096;  // smaller bodies are copied behind the head: one iovec less
constexpr auto kLinger = std::chrono::seconds(1);
constexpr auto kAcceptBackoff = std::chrono::milliseconds(100);
constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";

std::system_error sys_error(const std::string& what) {
  return std::system_error(errno, std::generic_category(), what);
}

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
}

// One I/O thread: its own epoll set, connections and response inbox. Everything but post() and
// stop() runs on that thread only.
class HttpServer::Loop {
 public:
  Loop(HttpServer& server, size_t index);
  ~Loop();
  void run();
  void post(uint64_t token, HttpResponse&& response);
  void stop(Clock::time_point deadline);
  // Responses can no longer be delivered (the loop never ran or has finished).
  void retire();

 private:
  struct Conn {
    int fd = -1;
    uint64_t id = 0;
    HttpParser parser;
    std::string in;  // received but not yet parsed: pipelined bytes while a request is in flight
    size_t in_off = 0;
    std::vector<std::string> out;  // queued response bytes, written in order
    size_t out_index = 0, out_off = 0;
    uint64_t token = 0;  // the request in flight, 0 when none
    bool head = false, keep_alive = true, http10 = false;
    bool closing = false;    // no further requests: close once the last response is written
    bool lingering = false;  // write side shut; draining what the client still sends
    uint32_t events = 0;     // as registered with epoll
  };
  using Posted = std::vector<std::pair<uint64_t, HttpResponse>>;

  void accept_all();
  void set_listening(bool on);
  void on_event(uint64_t id, uint32_t events);
  bool on_readable(Conn& c);
  bool receive(Conn& c, std::string_view bytes);
  bool advance(Conn& c);
  bool after_feed(Conn& c);
  void dispatch(Conn& c);
  void answer(uint64_t token, HttpResponse&& response);
  bool flush(Conn& c);
  bool start_linger(Conn& c);
  void update_events(Conn& c);
  void close_conn(Conn& c);
  void begin_drain();
  bool drained() const;
  void expire_timers(Clock::time_point now);
  int timeout_ms(Clock::time_point now) const;
  void deliver_posted();

  HttpServer& server_;
  const size_t index_;
  const size_t cap_;  // unparsed bytes buffered per connection before reading pauses
  int epfd_ = -1;
  int wakefd_ = -1;
  bool listening_ = false;
  std::unordered_map<uint64_t, std::unique_ptr<Conn>> conns_;
  std::unordered_map<uint64_t, uint64_t> inflight_;  // token -> connection id
  uint64_t next_conn_ = 2;                           // 0 and 1 name the listener and the wakeup
  uint64_t next_seq_ = 1;
  std::unique_ptr<char[]> scratch_;
  Posted local_;  // responses posted from this thread (by the handler itself)
  std::deque<std::pair<Clock::time_point, uint64_t>> lingering_;
  Clock::time_point accept_retry_ = Clock::time_point::max();
  bool draining_ = false;
  Clock::time_point drain_deadline_;

  static thread_local Loop* current;  // the loop running on this thread, if any

  std::mutex mutex_;  // guards the members below, shared with other threads
  Posted inbox_;
  bool retired_ = false;
  bool stop_requested_ = false;
  Clock::time_point stop_deadline_;
};

thread_local HttpServer::Loop* HttpServer::Loop::current = nullptr;

HttpServer::Loop::Loop(HttpServer& server, size_t index)
    : server_(server),
      index_(index),
      cap_(server.config_.limits.max_header_bytes),
      scratch_(new char[kReadChunk]) {
  epfd_ = epoll_create1(EPOLL_CLOEXEC);
  if (epfd_ < 0) throw sys_error("epoll_create1");
  wakefd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (wakefd_ < 0) throw sys_error("eventfd");
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = kWakeId;
  if (epoll_ctl(epfd_, EPOLL_CTL_ADD, wakefd_, &ev) != 0) throw sys_error("epoll_ctl");
}

HttpServer::Loop::~Loop() {
  for (auto& [id, c] : conns_) ::close(c->fd);
  if (wakefd_ >= 0) ::close(wakefd_);
  if (epfd_ >= 0) ::close(epfd_);
}

void HttpServer::Loop::post(uint64_t token, HttpResponse&& response) {
  if (current == this) {
    local_.emplace_back(token, std::move(response));
    return;
  }
  bool wake;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (retired_) return;
    wake = inbox_.empty();  // a non-empty inbox already has a wakeup on its way
    inbox_.emplace_back(token, std::move(response));
  }
  if (wake) {
    const uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(wakefd_, &one, sizeof one);
  }
}

void HttpServer::Loop::stop(Clock::time_point deadline) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_requested_ = true;
    stop_deadline_ = deadline;
  }
  const uint64_t one = 1;
  [[maybe_unused]] ssize_t n = ::write(wakefd_, &one, sizeof one);
}

void HttpServer::Loop::retire() {
  std::lock_guard<std::mutex> lock(mutex_);
  retired_ = true;
  inbox_.clear();
}

void HttpServer::Loop::set_listening(bool on) {
  if (on == listening_) return;
  epoll_event ev{};
  // Level-triggered and exclusive: one loop wakes per burst of connections, not all of them.
  ev.events = EPOLLIN | EPOLLEXCLUSIVE;
  ev.data.u64 = kListenerId;
  epoll_ctl(epfd_, on ? EPOLL_CTL_ADD : EPOLL_CTL_DEL, server_.listen_fd_, &ev);
  listening_ = on;
}

void HttpServer::Loop::run() {
  current = this;
  set_listening(true);
  epoll_event events[128];
  while (true) {
    const int n = epoll_wait(epfd_, events, 128, timeout_ms(Clock::now()));
    if (n < 0 && errno != EINTR) break;
    for (int i = 0; i < n; ++i) {
      const uint64_t id = events[i].data.u64;
      if (id == kListenerId) {
        accept_all();
      } else if (id == kWakeId) {
        uint64_t count;
        [[maybe_unused]] ssize_t r = ::read(wakefd_, &count, sizeof count);
      } else {
        on_event(id, events[i].events);
      }
    }
    if (!draining_) {
      std::unique_lock<std::mutex> lock(mutex_);
      if (stop_requested_) {
        drain_deadline_ = stop_deadline_;
        lock.unlock();
        begin_drain();  // first, so responses that arrived with the stop already say close
      }
    }
    deliver_posted();
    const auto now = Clock::now();
    expire_timers(now);
    if (draining_ && (drained() || now >= drain_deadline_)) break;
  }
  if (!draining_) server_.unlistened_.count_down();  // left early: never make shutdown() wait
  set_listening(false);
  while (!conns_.empty()) close_conn(*conns_.begin()->second);
  retire();
  current = nullptr;
}

void HttpServer::Loop::deliver_posted() {
  // Answering can dispatch a pipelined request whose handler answers at once: repeat until quiet.
  while (true) {
    Posted batch;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      batch.swap(inbox_);
    }
    if (batch.empty() && local_.empty()) return;
    for (auto& [token, response] : batch) answer(token, std::move(response));
    while (!local_.empty()) {
      Posted mine;
      mine.swap(local_);
      for (auto& [token, response] : mine) answer(token, std::move(response));
    }
  }
}

void HttpServer::Loop::accept_all() {
  for (int i = 0; i < 64 && listening_; ++i) {
    const int fd = accept4(server_.listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) {
        // Out of descriptors or memory: the listener stays readable, so back off, don't spin.
        set_listening(false);
        accept_retry_ = Clock::now() + kAcceptBackoff;
      }
      return;
    }
    if (server_.connections_.fetch_add(1) >= server_.config_.max_connections) {
      server_.connections_.fetch_sub(1);
      ::close(fd);
      continue;
    }
    const int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    auto c = std::make_unique<Conn>();
    c->fd = fd;
    c->id = next_conn_++;
    c->parser = HttpParser(server_.config_.limits);
    c->events = EPOLLIN;
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = c->id;
    if (epoll_ctl(epfd_, EPOLL_CTL_ADD, fd, &ev) != 0) {
      server_.connections_.fetch_sub(1);
      ::close(fd);
      continue;
    }
    conns_.emplace(c->id, std::move(c));
  }
}

void HttpServer::Loop::on_event(uint64_t id, uint32_t events) {
  const auto it = conns_.find(id);
  if (it == conns_.end()) return;
  Conn& c = *it->second;
  // Both directions are finished (reset, or the client closed after a lingering FIN).
  if (events & (EPOLLERR | EPOLLHUP)) return close_conn(c);
  if ((events & EPOLLOUT) && (!flush(c) || !advance(c))) return;
  if ((events & EPOLLIN) && !on_readable(c)) return;
  update_events(c);
}

bool HttpServer::Loop::on_readable(Conn& c) {
  for (int round = 0; round < kReadsPerEvent; ++round) {
    if (!c.lingering && c.in.size() - c.in_off >= cap_) break;
    const ssize_t n = ::recv(c.fd, scratch_.get(), kReadChunk, 0);
    if (n > 0) {
      if (!c.lingering && !receive(c, std::string_view(scratch_.get(), size_t(n)))) return false;
      if (size_t(n) < kReadChunk) break;
    } else if (n == 0) {
      close_conn(c);  // the client went away; a request in flight is abandoned
      return false;
    } else if (errno == EINTR) {
      continue;
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
      break;
    } else {
      close_conn(c);
      return false;
    }
  }
  return true;
}

bool HttpServer::Loop::receive(Conn& c, std::string_view bytes) {
  if (c.in_off == c.in.size()) {
    // Nothing buffered: feed the parser straight from the read buffer, keep only the leftover.
    while (!bytes.empty() && c.token == 0 && !c.closing && c.out_index == c.out.size()) {
      bytes.remove_prefix(c.parser.feed(bytes));
      if (!after_feed(c)) return false;
    }
    if (bytes.empty()) return true;
  }
  c.in.append(bytes);
  return advance(c);
}

bool HttpServer::Loop::advance(Conn& c) {
  while (c.in_off < c.in.size() && c.token == 0 && !c.closing && c.out_index == c.out.size()) {
    c.in_off += c.parser.feed(std::string_view(c.in).substr(c.in_off));
    if (!after_feed(c)) return false;
  }
  if (c.in_off == c.in.size()) {
    c.in.clear();
    c.in_off = 0;
  }
  return true;
}

bool HttpServer::Loop::after_feed(Conn& c) {
  HttpParser& p = c.parser;
  if (p.failed()) {
    server_.protocol_errors_.fetch_add(1, std::memory_order_relaxed);
    ResponseFraming framing;
    framing.close = true;
    c.out.push_back(serialize_response(http_error_response(p.error_status(), p.error()), framing));
    c.closing = true;
    return flush(c);
  }
  if (p.take_continue()) {
    c.out.emplace_back(kContinue);
    if (!flush(c)) return false;
  }
  if (p.complete()) dispatch(c);
  return true;
}

void HttpServer::Loop::dispatch(Conn& c) {
  HttpRequest request = c.parser.take();
  const uint64_t token = next_seq_++ * server_.loops_.size() + index_;
  c.token = token;
  c.head = request.method == "HEAD";
  c.keep_alive = request.keep_alive;
  c.http10 = request.version_minor == 0;
  inflight_.emplace(token, c.id);
  server_.requests_.fetch_add(1, std::memory_order_relaxed);
  try {
    server_.handler_(token, std::move(request));
  } catch (...) {
    // Answered like any response, so a respond() the handler made before throwing still wins.
    local_.emplace_back(token, http_error_response(500, "request handler failed"));
  }
}

void HttpServer::Loop::answer(uint64_t token, HttpResponse&& response) {
  const auto fit = inflight_.find(token);
  if (fit == inflight_.end()) return;
  const auto it = conns_.find(fit->second);
  inflight_.erase(fit);
  if (it == conns_.end()) return;
  Conn& c = *it->second;
  c.token = 0;
  const bool close = c.closing || !c.keep_alive || draining_ || response_wants_close(response);
  ResponseFraming framing;
  framing.omit_body = c.head;
  framing.close = close;
  framing.keep_alive_header = c.http10 && !close;
  std::string head;
  append_response_head(response, framing, head);
  const bool body =
      !c.head && !response.body.empty() && response.status != 204 && response.status != 304;
  if (body && response.body.size() <= kInlineBody) head += response.body;
  c.out.push_back(std::move(head));
  if (body && response.body.size() > kInlineBody) c.out.push_back(std::move(response.body));
  c.closing = close;
  if (!flush(c) || !advance(c)) return;
  update_events(c);
}

bool HttpServer::Loop::flush(Conn& c) {
  while (c.out_index < c.out.size()) {
    iovec iov[16];
    size_t k = 0;
    for (size_t i = c.out_index; i < c.out.size() && k < 16; ++i, ++k) {
      const size_t skip = i == c.out_index ? c.out_off : 0;
      iov[k].iov_base = c.out[i].data() + skip;
      iov[k].iov_len = c.out[i].size() - skip;
    }
    msghdr msg{};
    msg.msg_iov = iov;
    msg.msg_iovlen = k;
    ssize_t n = ::sendmsg(c.fd, &msg, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;  // EPOLLOUT resumes it
      close_conn(c);
      return false;
    }
    while (n > 0) {
      const size_t left = c.out[c.out_index].size() - c.out_off;
      if (size_t(n) < left) {
        c.out_off += size_t(n);
        break;
      }
      n -= ssize_t(left);
      c.out_off = 0;
      ++c.out_index;
    }
  }
  if (c.out_index < c.out.size()) return true;
  c.out.clear();
  c.out_index = c.out_off = 0;
  if (c.closing && c.token == 0 && !c.lingering) return start_linger(c);
  return true;
}

bool HttpServer::Loop::start_linger(Conn& c) {
  // Closing with unread bytes would reset the connection and could destroy the response before
  // the client reads it: send FIN, then discard what still arrives until the client closes.
  if (draining_ || ::shutdown(c.fd, SHUT_WR) != 0) {
    close_conn(c);
    return false;
  }
  c.lingering = true;
  c.in.clear();
  c.in_off = 0;
  lingering_.emplace_back(Clock::now() + kLinger, c.id);
  return true;
}

void HttpServer::Loop::update_events(Conn& c) {
  const bool read = c.lingering || c.in.size() - c.in_off < cap_;
  const uint32_t want = (read ? EPOLLIN : 0u) | (c.out_index < c.out.size() ? EPOLLOUT : 0u);
  if (want == c.events) return;
  epoll_event ev{};
  ev.events = want;
  ev.data.u64 = c.id;
  epoll_ctl(epfd_, EPOLL_CTL_MOD, c.fd, &ev);
  c.events = want;
}

void HttpServer::Loop::close_conn(Conn& c) {
  const uint64_t token = c.token;
  ::close(c.fd);
  conns_.erase(c.id);  // destroys c
  server_.connections_.fetch_sub(1);
  if (token == 0) return;
  inflight_.erase(token);
  if (!server_.abandon_) return;
  try {
    server_.abandon_(token);
  } catch (...) {
    // The connection is gone either way; a failing callback must not take the I/O thread down.
  }
}

void HttpServer::Loop::begin_drain() {
  draining_ = true;
  set_listening(false);
  accept_retry_ = Clock::time_point::max();
  server_.unlistened_.count_down();
  std::vector<Conn*> idle;
  for (auto& [id, c] : conns_) {
    c->closing = true;  // a request in flight is answered with Connection: close
    if (c->token == 0 && c->out_index == c->out.size()) idle.push_back(c.get());
  }
  for (Conn* c : idle) close_conn(*c);
}

bool HttpServer::Loop::drained() const {
  for (const auto& [id, c] : conns_) {
    if (c->token != 0 || c->out_index < c->out.size()) return false;
  }
  return true;
}

void HttpServer::Loop::expire_timers(Clock::time_point now) {
  while (!lingering_.empty() && lingering_.front().first <= now) {
    const auto it = conns_.find(lingering_.front().second);
    lingering_.pop_front();
    if (it != conns_.end()) close_conn(*it->second);
  }
  if (accept_retry_ <= now) {
    accept_retry_ = Clock::time_point::max();
    set_listening(true);
  }
}

int HttpServer::Loop::timeout_ms(Clock::time_point now) const {
  Clock::time_point next = accept_retry_;
  if (!lingering_.empty()) next = std::min(next, lingering_.front().first);
  if (draining_) next = std::min(next, drain_deadline_);
  if (next == Clock::time_point::max()) return -1;
  if (next <= now) return 0;
  const auto ms = std::chrono::ceil<std::chrono::milliseconds>(next - now).count();
  return int(std::min<int64_t>(ms, 60 * 1000));
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
  if (listen_fd_ < 0) throw sys_error("socket for " + where);
  try {
    const int one = 1;
    setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (::bind(listen_fd_, found->ai_addr, found->ai_addrlen) != 0) {
      throw sys_error("bind " + where);
    }
    if (::listen(listen_fd_, config_.backlog) != 0) throw sys_error("listen on " + where);
    sockaddr_storage bound{};
    socklen_t len = sizeof bound;
    if (getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&bound), &len) != 0) {
      throw sys_error("getsockname");
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
  for (auto& loop : loops_) threads_.emplace_back([l = loop.get()] { l->run(); });
}

void HttpServer::respond(uint64_t token, HttpResponse&& response) {
  loops_[token % loops_.size()]->post(token, std::move(response));
}

void HttpServer::shutdown(std::chrono::milliseconds drain) {
  std::lock_guard<std::mutex> lock(lifecycle_);
  if (stopped_) return;
  stopped_ = true;
  if (started_) {
    const auto deadline = Clock::now() + std::max(drain, std::chrono::milliseconds(0));
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
