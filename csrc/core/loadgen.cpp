// The load generator's setup and report. Each I/O thread owns its connections and an epoll set and
// keeps its own counters and histograms, so the per-request path touches no shared state except
// the progress counter; the report merges them after the threads end.
#include "core/loadgen.hpp"

#include <netdb.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <ctime>
#include <stdexcept>

namespace stoker {
namespace {

void merge(Histogram::Snapshot& into, const Histogram::Snapshot& from) {
  if (into.counts.empty()) into.counts.assign(Histogram::kBuckets, 0);
  for (size_t i = 0; i < from.counts.size(); ++i) into.counts[i] += from.counts[i];
  into.count += from.count;
  into.sum += from.sum;
  into.max = std::max(into.max, from.max);
}

}  // namespace

int64_t LoadGenerator::now_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

int64_t LoadGenerator::to_ns(double s) { return int64_t(std::llround(s * 1e9)); }

LoadGenerator::Worker::~Worker() {
  for (Connection& c : conns)
    if (c.fd >= 0) close(c.fd);
  if (epfd >= 0) close(epfd);
}

void LoadConfig::validate() const {
  auto bad = [](const char* what) { throw std::invalid_argument(what); };
  if (host.empty()) bad("host must not be empty");
  if (port == 0) bad("port must be set");
  if (requests.empty()) bad("at least one request is needed");
  for (const std::string& r : requests)
    if (r.empty()) bad("requests must not be empty");
  if (connections == 0 || connections > 100'000) bad("connections must be in [1, 100000]");
  if (threads == 0 || threads > 256) bad("threads must be in [1, 256]");
  if (threads > connections) bad("threads must not exceed connections");
  if (!std::isfinite(rate) || rate < 0 || rate > 1e8) bad("rate must be in [0, 1e8]");
  if (!std::isfinite(warmup_s) || warmup_s < 0 || warmup_s > 1e6) bad("warmup_s out of range");
  if (!std::isfinite(duration_s) || duration_s <= 0 || duration_s > 1e6) {
    bad("duration_s must be positive");
  }
  if (!std::isfinite(timeout_s) || timeout_s <= 0 || timeout_s > 1e6) {
    bad("timeout_s must be positive");
  }
}

LoadGenerator::LoadGenerator(LoadConfig config) : config_(std::move(config)) {
  config_.validate();
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* found = nullptr;
  const std::string service = std::to_string(config_.port);
  const int rc = getaddrinfo(config_.host.c_str(), service.c_str(), &hints, &found);
  if (rc != 0 || found == nullptr) {
    throw std::invalid_argument("cannot resolve " + config_.host + ": " + gai_strerror(rc));
  }
  const auto* bytes = reinterpret_cast<const char*>(found->ai_addr);
  address_.assign(bytes, bytes + found->ai_addrlen);
  freeaddrinfo(found);
}

LoadGenerator::~LoadGenerator() {
  stop();
  for (auto& w : workers_)
    if (w->thread.joinable()) w->thread.join();
}

void LoadGenerator::start() {
  if (started_) throw std::logic_error("the load generator was already started");
  const size_t n = config_.threads;
  std::vector<std::unique_ptr<Worker>> workers;
  for (size_t t = 0; t < n; ++t) {
    auto w = std::make_unique<Worker>();
    w->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (w->epfd < 0) throw std::runtime_error(std::string("epoll_create1: ") + strerror(errno));
    w->conns.resize(config_.connections / n + (t < config_.connections % n ? 1 : 0));
    for (size_t i = 0; i < w->conns.size(); ++i) {
      w->conns[i].next_request = (t + i * n) % config_.requests.size();
    }
    std::seed_seq seq{config_.seed, uint64_t(t)};
    w->rng.seed(seq);
    workers.push_back(std::move(w));
  }
  workers_ = std::move(workers);
  started_ = true;
  window_start_ns_ = now_ns() + to_ns(config_.warmup_s);
  for (auto& w : workers_) w->thread = std::thread([this, p = w.get()] { run_worker(*p); });
}

void LoadGenerator::stop() {
  int64_t expected = 0;
  stopped_ns_.compare_exchange_strong(expected, now_ns(), std::memory_order_relaxed);
  stop_.store(true, std::memory_order_release);
}

bool LoadGenerator::done() const {
  return started_ && finished_.load(std::memory_order_acquire) == config_.threads;
}

LoadReport LoadGenerator::wait() {
  if (!started_) throw std::logic_error("the load generator was not started");
  std::lock_guard lock(wait_mutex_);
  if (joined_) return report_;
  for (auto& w : workers_)
    if (w->thread.joinable()) w->thread.join();
  joined_ = true;
  LoadReport& r = report_;
  const int64_t planned_end = window_start_ns_ + to_ns(config_.duration_s);
  const int64_t stopped = stopped_ns_.load(std::memory_order_relaxed);
  const int64_t end = stopped > 0 ? std::min(stopped, planned_end) : planned_end;
  r.elapsed_s = double(std::max<int64_t>(0, end - window_start_ns_)) * 1e-9;
  r.latency.counts.assign(Histogram::kBuckets, 0);
  for (auto& w : workers_) {
    r.sent += w->sent;
    r.timeouts += w->timeouts;
    r.transport_errors += w->errors;
    r.late += w->late;
    r.unsent += w->unsent;
    r.cpu_s += w->cpu_s;
    for (size_t s = 0; s < w->statuses.size(); ++s)
      if (w->statuses[s] > 0) r.statuses[int(s)] += w->statuses[s];
    merge(r.latency, w->latency.snapshot());
    for (auto& [name, h] : w->metrics) merge(r.server_timing[name], h->snapshot());
  }
  r.completed = r.latency.count;
  return r;
}

}  // namespace stoker
