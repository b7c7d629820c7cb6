#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <functional>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "core/loadgen.hpp"

namespace stoker {
namespace {

using Result = ResponseParser::Result;

// Feeds `bytes` in pieces of `step`, keeping unconsumed bytes the way a connection buffer does.
Result feed(ResponseParser& p, const std::string& bytes, size_t step, size_t* left = nullptr) {
  std::string pending;
  Result r = Result::kNeedMore;
  for (size_t at = 0; at < bytes.size() && r == Result::kNeedMore; at += step) {
    pending += bytes.substr(at, step);
    size_t used = 0;
    r = p.parse(pending.data(), pending.size(), used);
    pending.erase(0, used);
  }
  if (left != nullptr) *left = pending.size();
  return r;
}

TEST(ResponseParser, ContentLengthInAnyPieces) {
  const std::string response = "HTTP/1.1 201 Created\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello";
  for (size_t step : {size_t{1}, size_t{7}, response.size()}) {
    ResponseParser p;
    p.reset();
    size_t left = 99;
    EXPECT_EQ(feed(p, response, step, &left), Result::kDone) << step;
    EXPECT_EQ(left, 0u);
    EXPECT_EQ(p.status(), 201);
    EXPECT_TRUE(p.keep_alive());
  }
}

TEST(ResponseParser, ChunkedBodyWithExtensionsAndTrailers) {
  const std::string response =
      "HTTP/1.1 200 OK\r\ntransfer-ENCODING: gzip, chunked\r\n\r\n"
      "5;ext=1\r\nhello\r\nA\r\n0123456789\r\n0\r\nX-Trailer: 1\r\n\r\n";
  for (size_t step : {size_t{1}, size_t{3}, response.size()}) {
    ResponseParser p;
    p.reset();
    size_t left = 99;
    EXPECT_EQ(feed(p, response, step, &left), Result::kDone) << step;
    EXPECT_EQ(left, 0u);
  }
  ResponseParser p;
  p.reset();
  size_t used = 0;
  const std::string stop_early =
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n";
  EXPECT_EQ(p.parse(stop_early.data(), stop_early.size(), used), Result::kNeedMore);
  EXPECT_EQ(used, stop_early.size());
}

TEST(ResponseParser, SkipsInterimResponses) {
  const std::string response =
      "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nServer-Timing: a;dur=9\r\n\r\n"
      "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
  ResponseParser p;
  p.reset();
  EXPECT_EQ(feed(p, response, 4), Result::kDone);
  EXPECT_EQ(p.status(), 404);
  EXPECT_TRUE(p.timings().empty()) << "interim responses' headers are not the final response's";
}

TEST(ResponseParser, ServerTiming) {
  const std::string response =
      "HTTP/1.1 200 OK\r\nserver-timing: queue;dur=0.123, compute;desc=\"a, b;c\";DUR=2.5\r\n"
      "Content-Length: 0\r\nServer-Timing: nodur;desc=x, neg;dur=-1, bad;dur=1x, "
      "total;dur=\"4\"\r\n"
      "Server-Timing: ,cache, miss;dur=0\r\n\r\n";
  ResponseParser p;
  p.reset();
  ASSERT_EQ(feed(p, response, response.size()), Result::kDone);
  std::vector<std::pair<std::string, uint64_t>> got;
  for (const auto& t : p.timings()) got.emplace_back(std::string(t.name), t.us);
  const std::vector<std::pair<std::string, uint64_t>> want = {
      {"queue", 123}, {"compute", 2500}, {"total", 4000}, {"miss", 0}};
  EXPECT_EQ(got, want);
}

TEST(ResponseParser, ServerTimingIsBounded) {
  std::string value;
  for (int i = 0; i < 100; ++i) value += "m" + std::to_string(i) + ";dur=1,";
  value += std::string(200, 'x') + ";dur=1";
  const std::string response = "HTTP/1.1 200 OK\r\nServer-Timing: " + value + "\r\n\r\n";
  ResponseParser p;
  p.reset();
  size_t used = 0;
  ASSERT_EQ(p.parse(response.data(), response.size(), used), Result::kNeedMore);
  ASSERT_EQ(p.timings().size(), ResponseParser::kMaxTimings);
  EXPECT_EQ(p.timings().back().name, "m31");
  EXPECT_EQ(p.finish_eof(), Result::kDone) << "no length: the body runs to the close";
}

TEST(ResponseParser, ConnectionHandling) {
  auto keep = [](const std::string& head) {
    ResponseParser p;
    p.reset();
    const std::string response = head + "Content-Length: 0\r\n\r\n";
    EXPECT_EQ(feed(p, response, response.size()), Result::kDone) << head;
    return p.keep_alive();
  };
  EXPECT_TRUE(keep("HTTP/1.1 200 OK\r\n"));
  EXPECT_FALSE(keep("HTTP/1.1 200 OK\r\nConnection: Close\r\n"));
  EXPECT_FALSE(keep("HTTP/1.1 200 OK\r\nconnection: upgrade, close\r\n"));
  EXPECT_FALSE(keep("HTTP/1.0 200 OK\r\n"));
  EXPECT_TRUE(keep("HTTP/1.0 200 OK\r\nConnection: keep-alive\n"));
}

TEST(ResponseParser, BodilessResponses) {
  ResponseParser p;
  p.reset(/*head_request=*/true);
  const std::string head = "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n";
  size_t used = 0;
  EXPECT_EQ(p.parse(head.data(), head.size(), used), Result::kDone);
  EXPECT_EQ(used, head.size());
  p.reset();
  const std::string empty = "HTTP/1.1 204 No Content\n\nHTTP/1.1";
  EXPECT_EQ(p.parse(empty.data(), empty.size(), used), Result::kDone);
  EXPECT_EQ(used, empty.size() - 8) << "the next bytes are not this response's";
}

TEST(ResponseParser, MalformedIsAnError) {
  const std::vector<std::string> bad = {
      "HTTP/2 200 OK\r\n\r\n",
      "HTTP/1.1 20 OK\r\n\r\n",
      "HTTP/1.1 2000 OK\r\n\r\n",
      "HTTP/1.1 099 Low\r\n\r\n",
      "HTTP/1.1 101 Switching Protocols\r\n\r\n",
      "http/1.1 200 OK\r\n\r\n",
      "\r\nHTTP/1.1 200 OK\r\n\r\n",
      "HTTP/1.1 200 OK\r\nNoColon\r\n\r\n",
      "HTTP/1.1 200 OK\r\n: empty\r\n\r\n",
      "HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
      "HTTP/1.1 200 OK\r\nX: a\r\n folded\r\n\r\n",
      "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
      "HTTP/1.1 200 OK\r\nContent-Length: 1 2\r\n\r\n",
      "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
      "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFFFFF\r\n",
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n",
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + std::string(2000, '1'),
      std::string(ResponseParser::kMaxHeaderBytes, 'H'),
      "HTTP/1.1 200 OK\r\nX: " + std::string(ResponseParser::kMaxHeaderBytes, 'x') + "\r\n\r\n",
  };
  for (const std::string& b : bad) {
    for (size_t step : {size_t{1}, b.size()}) {
      if (step == 1 && b.size() > 4096) continue;
      ResponseParser p;
      p.reset();
      EXPECT_EQ(feed(p, b, step), Result::kError) << b.substr(0, 80) << " step " << step;
    }
  }
  ResponseParser p;
  p.reset();
  const std::string cut = "HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc";
  size_t used = 0;
  EXPECT_EQ(p.parse(cut.data(), cut.size(), used), Result::kNeedMore);
  EXPECT_EQ(p.finish_eof(), Result::kError) << "a close inside a sized body truncates it";
}

TEST(ResponseParser, SurvivesArbitraryBytes) {
  uint64_t state = 12345;
  for (int round = 0; round < 2000; ++round) {
    std::string junk = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n";
    const size_t n = 1 + (state >> 33) % 300;
    for (size_t i = 0; i < n; ++i) {
      state = state * 6364136223846793005ULL + 1442695040888963407ULL;
      const char alphabet[] = "0123456789abcdefXHTP/ :;,=\r\n\r\n\"";
      junk += alphabet[(state >> 40) % (sizeof alphabet - 1)];
    }
    ResponseParser p;
    p.reset();
    size_t left = 0;
    const Result r = feed(p, junk, 1 + round % 5, &left);
    EXPECT_LE(left, junk.size());
    if (r == Result::kNeedMore) p.finish_eof();
  }
}

// A blocking HTTP server on a thread per connection. `respond` gets each request and returns the
// bytes to answer with; an empty answer means: say nothing, and close the connection if `close`.
class TestServer {
 public:
  using Handler = std::function<std::string(const std::string& request, bool& close)>;

  explicit TestServer(Handler respond) : respond_(std::move(respond)) {
    listener_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    if (listener_ < 0 || bind(listener_, reinterpret_cast<sockaddr*>(&addr), len) != 0 ||
        listen(listener_, 128) != 0 ||
        getsockname(listener_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
      throw std::runtime_error("cannot listen");
    }
    port_ = ntohs(addr.sin_port);
    acceptor_ = std::thread([this] { accept_loop(); });
  }

  ~TestServer() {
    shutdown(listener_, SHUT_RDWR);
    acceptor_.join();
    close(listener_);
    std::lock_guard lock(mutex_);
    for (int fd : fds_) shutdown(fd, SHUT_RDWR);
    for (std::thread& t : threads_) t.join();
    for (int fd : fds_) close(fd);
  }

  uint16_t port() const { return port_; }
  int accepted() const { return accepted_.load(); }

 private:
  void accept_loop() {
    for (;;) {
      const int fd = accept(listener_, nullptr, nullptr);
      if (fd < 0) return;
      ++accepted_;
      std::lock_guard lock(mutex_);
      fds_.push_back(fd);
      threads_.emplace_back([this, fd] { serve(fd); });
    }
  }

  void serve(int fd) {
    std::string in;
    char chunk[4096];
    for (;;) {
      const size_t head_end = in.find("\r\n\r\n");
      if (head_end != std::string::npos) {
        size_t body = 0;
        const size_t cl = in.find("Content-Length: ");
        if (cl != std::string::npos && cl < head_end) body = std::stoul(in.substr(cl + 16));
        const size_t total = head_end + 4 + body;
        if (in.size() >= total) {
          bool close_after = false;
          const std::string answer = respond_(in.substr(0, total), close_after);
          in.erase(0, total);
          if (!answer.empty() && ::send(fd, answer.data(), answer.size(), MSG_NOSIGNAL) < 0) return;
          if (close_after) return void(shutdown(fd, SHUT_RDWR));
          continue;
        }
      }
      const ssize_t n = recv(fd, chunk, sizeof chunk, 0);
      if (n <= 0) return;
      in.append(chunk, size_t(n));
    }
  }

  Handler respond_;
  int listener_ = -1;
  uint16_t port_ = 0;
  std::thread acceptor_;
  std::atomic<int> accepted_{0};
  std::mutex mutex_;
  std::vector<int> fds_;
  std::vector<std::thread> threads_;
};

std::string ok(const std::string& extra = "") {
  return "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n" + extra + "\r\nok";
}

LoadConfig config(uint16_t port, size_t connections, uint64_t max_requests) {
  LoadConfig c;
  c.port = port;
  c.requests = {"GET /a HTTP/1.1\r\nHost: x\r\n\r\n",
                "POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"};
  c.connections = connections;
  c.warmup_s = 0;
  c.duration_s = 20;
  c.max_requests = max_requests;
  return c;
}

LoadReport run(LoadConfig c) {
  LoadGenerator g(std::move(c));
  g.start();
  return g.wait();
}

TEST(LoadGenerator, ClosedLoopStopsAtExactlyMaxRequests) {
  TestServer server([](const std::string&, bool&) { return ok(); });
  LoadConfig c = config(server.port(), 8, 1000);
  c.threads = 2;
  const LoadReport r = run(c);
  EXPECT_EQ(r.completed, 1000u);
  EXPECT_EQ(r.latency.count, 1000u);
  EXPECT_EQ(r.statuses, (std::map<int, uint64_t>{{200, 1000}}));
  EXPECT_GE(r.sent, 1000u);
  EXPECT_EQ(r.transport_errors + r.timeouts, 0u);
  EXPECT_GT(r.elapsed_s, 0);
  EXPECT_LT(r.elapsed_s, 20);
  EXPECT_GT(r.cpu_s, 0);
  EXPECT_EQ(server.accepted(), 8);
}

TEST(LoadGenerator, CountsStatusesOfEachRequest) {
  TestServer server([](const std::string& req, bool&) {
    if (req.starts_with("GET /a")) return ok();
    return std::string(
        "HTTP/1.1 503 Busy\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nbusy\r\n0\r\n\r\n");
  });
  const LoadReport r = run(config(server.port(), 1, 300));
  EXPECT_EQ(r.statuses, (std::map<int, uint64_t>{{200, 150}, {503, 150}}));
  EXPECT_EQ(r.transport_errors, 0u);
}

TEST(LoadGenerator, ReadsServerTiming) {
  TestServer server([](const std::string&, bool&) {
    return ok("Server-Timing: queue;dur=1.5, compute;dur=0.25;desc=\"x\"\r\n");
  });
  const LoadReport r = run(config(server.port(), 4, 200));
  ASSERT_EQ(r.server_timing.size(), 2u);
  EXPECT_EQ(r.server_timing.at("queue").count, 200u);
  EXPECT_EQ(r.server_timing.at("queue").sum, 200u * 1500);
  EXPECT_EQ(r.server_timing.at("compute").max, 250u);
}

TEST(LoadGenerator, ReconnectsAfterConnectionClose) {
  TestServer server([](const std::string&, bool& close) {
    close = true;
    return ok("Connection: close\r\n");
  });
  const LoadReport r = run(config(server.port(), 2, 100));
  EXPECT_EQ(r.completed, 100u);
  EXPECT_EQ(r.transport_errors, 0u);
  EXPECT_GE(server.accepted(), 100);
}

TEST(LoadGenerator, MalformedResponsesAreTransportErrors) {
  std::atomic<int> n{0};
  TestServer server([&](const std::string&, bool&) {
    return ++n % 2 ? ok() : std::string("HTTP/1.1 banana\r\n\r\n");
  });
  LoadConfig c = config(server.port(), 2, 0);
  c.duration_s = 0.3;
  const LoadReport r = run(c);
  EXPECT_GT(r.completed, 10u);
  EXPECT_GT(r.transport_errors, 10u);
  EXPECT_EQ(r.statuses.at(200), r.completed);
  EXPECT_EQ(r.sent, r.completed + r.transport_errors);
}

TEST(LoadGenerator, SilentServerTimesOut) {
  TestServer server([](const std::string&, bool&) { return std::string(); });
  LoadConfig c = config(server.port(), 3, 0);
  c.duration_s = 0.5;
  c.timeout_s = 0.1;
  const LoadReport r = run(c);
  EXPECT_EQ(r.completed, 0u);
  EXPECT_GE(r.timeouts, 9u);
  EXPECT_EQ(r.sent, r.timeouts);
}

TEST(LoadGenerator, RefusedConnectionsAreErrorsNotCrashes) {
  uint16_t port;
  {
    port = TestServer([](const std::string&, bool&) { return ok(); }).port();
  }
  LoadConfig c = config(port, 4, 0);
  c.duration_s = 0.2;
  const LoadReport r = run(c);
  EXPECT_EQ(r.completed, 0u);
  EXPECT_GT(r.transport_errors, 0u);
  EXPECT_LT(r.transport_errors, 4u * 40) << "failed connects back off";
}

TEST(LoadGenerator, OpenLoopHoldsTheRate) {
  TestServer server([](const std::string&, bool&) { return ok(); });
  LoadConfig c = config(server.port(), 16, 0);
  c.rate = 2000;
  c.warmup_s = 0.2;
  c.duration_s = 1.0;
  c.threads = 2;
  const LoadReport r = run(c);
  EXPECT_NEAR(double(r.sent), 2000.0, 200.0);
  EXPECT_EQ(r.completed, r.sent);
  EXPECT_LT(r.late, r.sent / 10);
  EXPECT_NEAR(r.elapsed_s, 1.0, 1e-6);
}

TEST(LoadGenerator, OpenLoopMeasuresFromTheSchedule) {
  TestServer server([](const std::string&, bool&) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    return ok();
  });
  LoadConfig c = config(server.port(), 1, 0);
  c.rate = 200;  // four times what one connection to this server can carry
  c.duration_s = 0.5;
  const LoadReport r = run(c);
  EXPECT_GT(r.late, r.sent / 2);
  EXPECT_GT(r.unsent, 0u);
  EXPECT_GT(r.latency.max, 100'000u) << "queueing behind a slow server is latency";
}

TEST(LoadGenerator, StopEndsEarly) {
  TestServer server([](const std::string&, bool&) { return ok(); });
  LoadGenerator g(config(server.port(), 4, 0));
  g.start();
  while (g.completed() < 50) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  g.stop();
  g.stop();
  const LoadReport r = g.wait();
  EXPECT_GE(r.completed, 50u);
  EXPECT_LT(r.elapsed_s, 10);
  EXPECT_EQ(g.wait().completed, r.completed);
  EXPECT_THROW(g.start(), std::logic_error);
}

TEST(LoadGenerator, RejectsBadConfigurations) {
  auto rejects = [](auto change) {
    LoadConfig c = config(8080, 4, 0);
    change(c);
    EXPECT_THROW(LoadGenerator{c}, std::invalid_argument);
  };
  rejects([](LoadConfig& c) { c.requests.clear(); });
  rejects([](LoadConfig& c) { c.requests.push_back(""); });
  rejects([](LoadConfig& c) { c.port = 0; });
  rejects([](LoadConfig& c) { c.connections = 0; });
  rejects([](LoadConfig& c) { c.threads = 5; });
  rejects([](LoadConfig& c) { c.rate = -1; });
  rejects([](LoadConfig& c) { c.duration_s = 0; });
  rejects([](LoadConfig& c) { c.timeout_s = std::nan(""); });
  rejects([](LoadConfig& c) { c.host = "no such host.invalid"; });
}

}  // namespace
}  // namespace stoker
