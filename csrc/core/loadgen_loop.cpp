// The load generator's event loop: one per I/O thread, over the connections the thread owns.
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <random>

#include "core/loadgen.hpp"
#include "core/thread_name.hpp"

namespace stoker {
namespace {

constexpr int64_t kLateNs = 1'000'000;
constexpr int64_t kRetryNs = 10'000'000;  // between failed connects, so a dead server is no spin
constexpr size_t kMaxBacklog = size_t{1} << 20;
constexpr size_t kMaxMetrics = 64;  // distinct Server-Timing names kept per thread
constexpr size_t kInitialBuffer = 4096;
constexpr size_t kMaxBuffer = 2 * ResponseParser::kMaxHeaderBytes;
constexpr int kMaxEvents = 256;

double thread_cpu_s() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + double(ts.tv_nsec) * 1e-9;
}

}  // namespace

// One I/O thread's event loop. `now_` is refreshed before each event so that latencies do not
// absorb the time spent on the other events of the same wake-up.
class LoadGenerator::EventLoop {
 public:
  using Worker = LoadGenerator::Worker;
  using Connection = Worker::Connection;
  using State = Worker::State;

  EventLoop(LoadGenerator& g, Worker& w)
      : g_(g),
        w_(w),
        requests_(g.config_.requests),
        address_(reinterpret_cast<const sockaddr*>(g.address_.data())),
        address_len_(socklen_t(g.address_.size())),
        open_loop_(g.config_.rate > 0),
        mean_gap_ns_(open_loop_ ? 1e9 * double(g.config_.threads) / g.config_.rate : 0),
        timeout_ns_(std::max<int64_t>(1, LoadGenerator::to_ns(g.config_.timeout_s))),
        scan_ns_(std::clamp<int64_t>(timeout_ns_ / 8, 1'000'000, 10'000'000)),
        window_start_(g.window_start_ns_),
        window_end_(window_start_ + LoadGenerator::to_ns(g.config_.duration_s)),
        max_requests_(g.config_.max_requests) {
    head_.resize(requests_.size());
    for (size_t i = 0; i < requests_.size(); ++i) head_[i] = requests_[i].starts_with("HEAD ");
  }

  void run();

 private:
  bool counting() const { return now_ >= window_start_; }
  bool sending() const { return now_ < window_end_; }
  bool watch(Connection& c, uint32_t i, int op, bool write);
  void open(uint32_t i);
  void reopen(uint32_t i, bool backoff);
  void fail(uint32_t i, bool timeout);
  void ready(uint32_t i);
  void send(uint32_t i, int64_t scheduled);
  void write_some(uint32_t i);
  void on_event(uint32_t i, uint32_t events);
  void on_readable(uint32_t i);
  bool consume(uint32_t i);
  void complete(uint32_t i);
  bool admit();
  void record(const Connection& c);
  void arrivals();
  void scan();

  LoadGenerator& g_;
  Worker& w_;
  const std::vector<std::string>& requests_;
  const sockaddr* address_;
  const socklen_t address_len_;
  const bool open_loop_;
  const double mean_gap_ns_;
  const int64_t timeout_ns_, scan_ns_, window_start_, window_end_;
  const uint64_t max_requests_;
  std::vector<uint8_t> head_;  // whether each request is a HEAD (its response has no body)
  std::exponential_distribution<double> gap_{1.0};
  double next_arrival_ = 0;
  int64_t now_ = 0;
};

bool LoadGenerator::EventLoop::watch(Connection& c, uint32_t i, int op, bool write) {
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLRDHUP | (write ? uint32_t(EPOLLOUT) : 0u);
  ev.data.u64 = (uint64_t(c.generation) << 32) | i;
  c.want_write = write;
  return epoll_ctl(w_.epfd, op, c.fd, &ev) == 0;
}

void LoadGenerator::EventLoop::open(uint32_t i) {
  Connection& c = w_.conns[i];
  ++c.generation;
  c.begin = c.end = 0;
  c.fresh = true;
  c.request = nullptr;
  c.fd = socket(address_->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int rc = -1;
  if (c.fd >= 0) {
    const int one = 1;
    setsockopt(c.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    rc = connect(c.fd, address_, address_len_);
  }
  if (rc == 0 && watch(c, i, EPOLL_CTL_ADD, false)) return ready(i);
  if (rc < 0 && c.fd >= 0 && errno == EINPROGRESS && watch(c, i, EPOLL_CTL_ADD, true)) {
    c.state = State::kConnecting;
    c.deadline_ns = now_ + timeout_ns_;
    return;
  }
  c.state = State::kConnecting;
  fail(i, false);
}

void LoadGenerator::EventLoop::reopen(uint32_t i, bool backoff) {
  Connection& c = w_.conns[i];
  if (c.fd >= 0) close(c.fd);
  c.fd = -1;
  c.state = State::kDown;
  c.retry_ns = now_ + kRetryNs;
  if (!backoff) open(i);
}

void LoadGenerator::EventLoop::fail(uint32_t i, bool timeout) {
  Connection& c = w_.conns[i];
  const bool in_flight = c.state == State::kWriting || c.state == State::kReading;
  if (in_flight && c.measured) {
    --w_.in_flight;
    ++(timeout ? w_.timeouts : w_.errors);
  } else if (!in_flight && counting()) {
    ++w_.errors;  // a failed connect, or bytes from a server that was not asked anything
  }
  // A server that closes or refuses fresh connections would otherwise be hammered in a spin.
  reopen(i, c.fresh);
}

void LoadGenerator::EventLoop::ready(uint32_t i) {
  Connection& c = w_.conns[i];
  c.state = State::kIdle;
  if (!sending()) return;
  if (!open_loop_) return send(i, now_);
  if (!w_.backlog.empty()) {
    const int64_t scheduled = w_.backlog.front();
    w_.backlog.pop_front();
    return send(i, scheduled);
  }
  if (!c.in_idle) {
    c.in_idle = true;
    w_.idle.push_back(i);
  }
}

void LoadGenerator::EventLoop::send(uint32_t i, int64_t scheduled) {
  Connection& c = w_.conns[i];
  const size_t k = c.next_request;
  c.next_request = k + 1 == requests_.size() ? 0 : k + 1;
  c.request = &requests_[k];
  c.parser.reset(head_[k] != 0);
  c.start_ns = scheduled;
  c.deadline_ns = now_ + timeout_ns_;
  c.measured = scheduled >= window_start_;
  c.written = 0;
  c.state = State::kWriting;
  if (c.measured) {
    ++w_.sent;
    ++w_.in_flight;
    if (open_loop_ && now_ - scheduled > kLateNs) ++w_.late;
  }
  write_some(i);
}

void LoadGenerator::EventLoop::write_some(uint32_t i) {
  Connection& c = w_.conns[i];
  const std::string& r = *c.request;
  while (c.written < r.size()) {
    const ssize_t n = ::send(c.fd, r.data() + c.written, r.size() - c.written, MSG_NOSIGNAL);
    if (n > 0) {
      c.written += size_t(n);
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (!c.want_write && !watch(c, i, EPOLL_CTL_MOD, true)) fail(i, false);
      return;
    } else {
      return fail(i, false);
    }
  }
  if (c.want_write && !watch(c, i, EPOLL_CTL_MOD, false)) return fail(i, false);
  c.state = State::kReading;
}

void LoadGenerator::EventLoop::on_event(uint32_t i, uint32_t events) {
  Connection& c = w_.conns[i];
  if (c.state == State::kConnecting) {
    int error = 0;
    socklen_t len = sizeof error;
    if (getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &error, &len) != 0 || error != 0) {
      return fail(i, false);
    }
    if (!watch(c, i, EPOLL_CTL_MOD, false)) return fail(i, false);
    return ready(i);
  }
  const uint32_t generation = c.generation;
  if ((events & EPOLLOUT) && c.state == State::kWriting) write_some(i);
  if (c.generation == generation && (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))) {
    on_readable(i);
  }
}

void LoadGenerator::EventLoop::on_readable(uint32_t i) {
  Connection& c = w_.conns[i];
  for (;;) {
    if (c.end == c.buffer.size()) {
      if (c.buffer.size() >= kMaxBuffer) return fail(i, false);
      c.buffer.resize(std::max(kInitialBuffer, 2 * c.buffer.size()));
    }
    const size_t space = c.buffer.size() - c.end;
    const ssize_t n = recv(c.fd, c.buffer.data() + c.end, space, 0);
    if (n > 0) {
      c.end += size_t(n);
      // A short read drained the socket; level-triggered epoll reports whatever comes next.
      if (!consume(i) || size_t(n) < space) return;
    } else if (n == 0) {
      const bool asked = c.state == State::kWriting || c.state == State::kReading;
      if (!asked) return reopen(i, c.fresh);
      if (c.parser.finish_eof() != ResponseParser::Result::kDone) return fail(i, false);
      return complete(i);
    } else if (errno != EINTR) {
      if (errno != EAGAIN && errno != EWOULDBLOCK) fail(i, false);
      return;
    }
  }
}

bool LoadGenerator::EventLoop::consume(uint32_t i) {
  Connection& c = w_.conns[i];
  if (c.state != State::kWriting && c.state != State::kReading) {
    fail(i, false);
    return false;
  }
  size_t used = 0;
  const auto result = c.parser.parse(c.buffer.data() + c.begin, c.end - c.begin, used);
  c.begin += used;
  switch (result) {
    case ResponseParser::Result::kNeedMore: {
      const size_t left = c.end - c.begin;
      if (left > 0 && c.begin > 0) std::memmove(c.buffer.data(), c.buffer.data() + c.begin, left);
      c.begin = 0;
      c.end = left;
      return true;
    }
    case ResponseParser::Result::kDone:
      // Only one request is outstanding, so bytes past its response are a broken server.
      if (c.begin != c.end) {
        fail(i, false);
      } else {
        complete(i);
      }
      return false;
    case ResponseParser::Result::kError:
      break;
  }
  fail(i, false);
  return false;
}

bool LoadGenerator::EventLoop::admit() {
  auto& completed = g_.completed_;
  if (max_requests_ == 0) {
    completed.fetch_add(1, std::memory_order_relaxed);
    return true;
  }
  uint64_t seen = completed.load(std::memory_order_relaxed);
  do {
    if (seen >= max_requests_) return false;
  } while (!completed.compare_exchange_weak(seen, seen + 1, std::memory_order_relaxed));
  if (seen + 1 == max_requests_) g_.stop();
  return true;
}

void LoadGenerator::EventLoop::record(const Connection& c) {
  w_.latency.record(uint64_t(std::max<int64_t>(0, now_ - c.start_ns)) / 1000);
  ++w_.statuses[size_t(c.parser.status())];
  for (const ResponseParser::Timing& t : c.parser.timings()) {
    Histogram* h = nullptr;
    for (auto& [name, metric] : w_.metrics) {
      if (name == t.name) {
        h = metric.get();
        break;
      }
    }
    if (h == nullptr && w_.metrics.size() < kMaxMetrics) {
      h = w_.metrics.emplace_back(std::string(t.name), std::make_unique<Histogram>()).second.get();
    }
    if (h != nullptr) h->record(t.us);
  }
}

void LoadGenerator::EventLoop::complete(uint32_t i) {
  Connection& c = w_.conns[i];
  if (c.measured) {
    --w_.in_flight;
    if (admit()) record(c);
  }
  c.fresh = false;
  const bool keep = c.parser.keep_alive() && c.written == c.request->size();
  c.begin = c.end = 0;
  if (keep) return ready(i);
  reopen(i, false);
}

void LoadGenerator::EventLoop::arrivals() {
  while (next_arrival_ <= double(now_) && next_arrival_ < double(window_end_)) {
    const auto scheduled = int64_t(next_arrival_);
    if (w_.backlog.size() < kMaxBacklog) {
      w_.backlog.push_back(scheduled);
    } else if (scheduled >= window_start_) {
      ++w_.unsent;
    }
    next_arrival_ += gap_(w_.rng) * mean_gap_ns_;
  }
  while (!w_.backlog.empty() && !w_.idle.empty()) {
    const uint32_t i = w_.idle.back();
    w_.idle.pop_back();
    Connection& c = w_.conns[i];
    c.in_idle = false;
    if (c.state != State::kIdle) continue;
    const int64_t scheduled = w_.backlog.front();
    w_.backlog.pop_front();
    send(i, scheduled);
  }
}

void LoadGenerator::EventLoop::scan() {
  for (uint32_t i = 0; i < w_.conns.size(); ++i) {
    Connection& c = w_.conns[i];
    if (c.state == State::kDown) {
      if (now_ >= c.retry_ns) open(i);
    } else if (c.state != State::kIdle && now_ >= c.deadline_ns) {
      fail(i, true);
    }
  }
}

void LoadGenerator::EventLoop::run() {
  name_this_thread("stoker-loadgen");
  prctl(PR_SET_TIMERSLACK, 1UL);  // open-loop arrivals need timers finer than the default 50 µs
  now_ = LoadGenerator::now_ns();
  next_arrival_ = double(now_) + gap_(w_.rng) * mean_gap_ns_;
  for (uint32_t i = 0; i < w_.conns.size(); ++i) open(i);
  int64_t next_scan = now_ + scan_ns_;
  bool in_window = false;
  bool coarse_wait = false;
  double cpu_start = 0;
  std::array<epoll_event, kMaxEvents> events;
  while (!g_.stop_.load(std::memory_order_acquire)) {
    now_ = LoadGenerator::now_ns();
    if (!in_window && counting()) {
      in_window = true;
      cpu_start = thread_cpu_s();
    }
    if (!sending() && w_.in_flight == 0) break;
    if (open_loop_ && sending()) arrivals();
    if (now_ >= next_scan) {
      scan();
      next_scan = now_ + scan_ns_;
    }
    int64_t wake = next_scan;
    if (!in_window) wake = std::min(wake, window_start_);
    if (sending()) wake = std::min(wake, window_end_);
    // With no connection free, an arrival has nothing to do until a response frees one.
    if (open_loop_ && sending() && !w_.idle.empty()) wake = std::min(wake, int64_t(next_arrival_));
    const int64_t wait_ns = std::max<int64_t>(0, wake - LoadGenerator::now_ns());
    int n = -1;
    if (!coarse_wait) {
      const timespec ts{time_t(wait_ns / 1'000'000'000), long(wait_ns % 1'000'000'000)};
      n = epoll_pwait2(w_.epfd, events.data(), kMaxEvents, &ts, nullptr);
      coarse_wait = n < 0 && errno == ENOSYS;
    }
    if (coarse_wait) {
      n = epoll_wait(w_.epfd, events.data(), kMaxEvents, int((wait_ns + 999'999) / 1'000'000));
    }
    for (int e = 0; e < n; ++e) {
      const uint64_t tag = events[size_t(e)].data.u64;
      const auto i = uint32_t(tag);
      if (i >= w_.conns.size() || w_.conns[i].generation != uint32_t(tag >> 32)) continue;
      now_ = LoadGenerator::now_ns();
      on_event(i, events[size_t(e)].events);
    }
  }
  if (in_window) w_.cpu_s = thread_cpu_s() - cpu_start;
  for (const int64_t scheduled : w_.backlog)
    if (scheduled >= window_start_) ++w_.unsent;
  w_.backlog.clear();
}

void LoadGenerator::run_worker(Worker& w) {
  EventLoop(*this, w).run();
  finished_.fetch_add(1, std::memory_order_release);
}

}  // namespace stoker
