#include "core/http_server_loop.hpp"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>

namespace stoker {
namespace {

constexpr uint64_t kListenerId = 0;
constexpr uint64_t kWakeId = 1;
constexpr auto kAcceptBackoff = std::chrono::milliseconds(100);
// Idle connections are found by scanning them all this often per timeout: cheaper than keeping a
// timer per connection current on every request, at the price of closing up to a quarter late.
constexpr int kIdleScansPerTimeout = 4;

}  // namespace

thread_local HttpServer::Loop* HttpServer::Loop::current = nullptr;

HttpServer::Loop::Loop(HttpServer& server, size_t index)
    : server_(server),
      index_(index),
      cap_(server.config_.limits.max_header_bytes),
      idle_timeout_(server.config_.idle_timeout),
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

void HttpServer::Loop::post(Post&& post) {
  if (current == this) {
    local_.push_back(std::move(post));
    return;
  }
  bool wake;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (retired_) return;
    wake = inbox_.empty();  // a non-empty inbox already has a wakeup on its way
    inbox_.push_back(std::move(post));
  }
  if (wake) {
    const uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(wakefd_, &one, sizeof one);
  }
}

void HttpServer::Loop::post_many(std::vector<Post>&& posts) {
  if (current == this) {
    for (Post& p : posts) local_.push_back(std::move(p));
    return;
  }
  bool wake;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (retired_) return;
    wake = inbox_.empty();
    if (wake) {
      inbox_.swap(posts);
    } else {
      for (Post& p : posts) inbox_.push_back(std::move(p));
    }
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
  now_ = Clock::now();
  if (idle_timeout_ > Clock::duration::zero()) next_idle_scan_ = now_;
  while (true) {
    const int n = epoll_wait(epfd_, events, 128, timeout_ms());
    if (n < 0 && errno != EINTR) break;
    now_ = Clock::now();
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
    now_ = Clock::now();
    expire_timers();
    if (draining_ && (drained() || now_ >= drain_deadline_)) break;
  }
  // Off the listener before telling shutdown(), which then closes it.
  set_listening(false);
  if (!draining_) server_.unlistened_.count_down();  // left early: never make shutdown() wait
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
    for (Post& p : batch) deliver(std::move(p));
    while (!local_.empty()) {
      Posted mine;
      mine.swap(local_);
      for (Post& p : mine) deliver(std::move(p));
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
    c->active = now_;
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

void HttpServer::Loop::expire_timers() {
  while (!lingering_.empty() && lingering_.front().first <= now_) {
    const auto it = conns_.find(lingering_.front().second);
    lingering_.pop_front();
    if (it != conns_.end()) close_conn(*it->second);
  }
  if (accept_retry_ <= now_) {
    accept_retry_ = Clock::time_point::max();
    set_listening(true);
  }
  if (next_idle_scan_ <= now_) expire_idle();
}

void HttpServer::Loop::expire_idle() {
  next_idle_scan_ = now_ + idle_timeout_ / kIdleScansPerTimeout;
  std::vector<Conn*> expired;
  for (auto& [id, c] : conns_) {
    if (c->token == 0 && !c->lingering && now_ - c->active >= idle_timeout_) {
      expired.push_back(c.get());
    }
  }
  for (Conn* c : expired) {
    // Unread responses ahead of a 408 mean the client is not reading: just close.
    if (c->parser.started() && c->out_index == c->out.size()) {
      if (reject(*c, 408, "request not received in time")) update_events(*c);
    } else {
      close_conn(*c);
    }
  }
}

int HttpServer::Loop::timeout_ms() const {
  Clock::time_point next = accept_retry_;
  if (!lingering_.empty()) next = std::min(next, lingering_.front().first);
  if (draining_) next = std::min(next, drain_deadline_);
  // Without connections there is nothing to scan for: sleep until one arrives.
  if (!conns_.empty()) next = std::min(next, next_idle_scan_);
  if (next == Clock::time_point::max()) return -1;
  if (next <= now_) return 0;
  const auto ms = std::chrono::ceil<std::chrono::milliseconds>(next - now_).count();
  return int(std::min<int64_t>(ms, 60 * 1000));
}

}  // namespace stoker
