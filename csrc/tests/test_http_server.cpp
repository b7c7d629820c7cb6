#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "core/http_server.hpp"
#include "tests/http_client.hpp"

namespace stoker {
namespace {

using namespace std::chrono_literals;
using namespace stoker::test;

TEST(HttpServer, RoundTripKeepAliveAndHead) {
  HttpServer* self = nullptr;
  HttpServer server(config(), [&self](uint64_t token, HttpRequest&& r) {
    self->respond(token, text(r.method + " " + r.path + "?" + r.query + " " + r.body));
  });
  self = &server;
  server.start();
  Client c(server.port());
  ASSERT_TRUE(c.connected());
  Reply r = c.request("GET /a?b=1 HTTP/1.1\r\nHost: t\r\n\r\n");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "GET /a?b=1 ");
  EXPECT_TRUE(r.has("HTTP/1.1 200 OK\r\n"));
  EXPECT_TRUE(r.has("Content-Type: text/plain\r\n"));
  EXPECT_TRUE(r.has("\r\nDate: "));
  EXPECT_FALSE(r.has("Connection:"));
  EXPECT_EQ(c.request(post("/p", "payload")).body, "POST /p? payload");
  r = c.request("HEAD /h HTTP/1.1\r\nHost: t\r\n\r\n", true);
  EXPECT_TRUE(r.has("Content-Length: 9\r\n"));  // the length of "HEAD /h? ", no body bytes
  EXPECT_EQ(c.request("GET /after HTTP/1.1\r\nHost: t\r\n\r\n").body, "GET /after? ");
  EXPECT_EQ(server.requests(), 4u);
  EXPECT_EQ(server.connections(), 1u);
  EXPECT_EQ(server.protocol_errors(), 0u);
}

TEST(HttpServer, ManyConcurrentClientsAnsweredFromAPool) {
  constexpr int kClients = 32, kRequests = 200;
  ParkedServer s(config(2));
  auto& [parked, server] = s;
  std::atomic<bool> done{false};
  std::vector<std::thread> workers;
  for (int w = 0; w < 4; ++w) {
    workers.emplace_back([&] {
      while (!done) {
        std::unique_lock<std::mutex> lock(parked.mutex);
        if (!parked.cv.wait_for(lock, 20ms, [&] { return !parked.requests.empty(); })) continue;
        auto [token, request] = std::move(parked.requests.front());
        parked.requests.pop_front();
        lock.unlock();
        server.respond(token, text(request.path + "/" + request.body));
      }
    });
  }
  std::atomic<int> matched{0};
  std::vector<std::thread> clients;
  for (int i = 0; i < kClients; ++i) {
    clients.emplace_back([&, i] {
      Client c(server.port());
      for (int j = 0; j < kRequests; ++j) {
        const std::string path = "/c" + std::to_string(i), body = "r" + std::to_string(j);
        const Reply r = c.request(post(path, body));
        if (r.status == 200 && r.body == path + "/" + body) ++matched;
      }
    });
  }
  for (std::thread& t : clients) t.join();
  done = true;
  for (std::thread& t : workers) t.join();
  EXPECT_EQ(matched.load(), kClients * kRequests);
  EXPECT_EQ(server.requests(), uint64_t(kClients * kRequests));
}

TEST(HttpServer, PipelinedRequestsWaitForTheResponseBefore) {
  ParkedServer s;
  auto& [parked, server] = s;
  Client c(server.port());
  c.send(post("/1", "a") + post("/2", "bb") + "GET /3 HTTP/1.1\r\nHost: t\r\n\r\n");
  for (const char* path : {"/1", "/2", "/3"}) {
    auto [token, request] = parked.next();
    ASSERT_NE(token, 0u);
    EXPECT_EQ(request.path, path);
    std::this_thread::sleep_for(20ms);
    {
      std::lock_guard<std::mutex> lock(parked.mutex);
      EXPECT_TRUE(parked.requests.empty());  // the next one is not handed out yet
    }
    server.respond(token, text(path));
    server.respond(token, text("answered twice"));  // ignored
    EXPECT_EQ(c.read().body, path);
  }
}

TEST(HttpServer, ProtocolErrorsAreAnsweredAndClosed) {
  HttpServerConfig cfg = config();
  cfg.limits.max_header_bytes = 1024;
  cfg.limits.max_body_bytes = 1000;
  ParkedServer s(cfg);
  auto& [parked, server] = s;
  const std::vector<std::pair<std::string, int>> cases = {
      {"garbage\r\n\r\n", 400},
      {"GET / HTTP/1.1\r\nHost: t\r\nX: " + std::string(2000, 'x') + "\r\n\r\n", 431},
      {"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1001\r\n\r\n", 413},
      {"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n", 501},
      {"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
       400},
      {"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400},
      // Sent together with much of a body the server refuses to read: still answered, not reset.
      {"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5000000\r\n\r\n" + std::string(200000, 'b'),
       413},
  };
  for (const auto& [input, status] : cases) {
    Client c(server.port());
    const Reply r = c.request(input);
    EXPECT_EQ(r.status, status) << input.substr(0, 60);
    EXPECT_TRUE(r.has("Content-Type: application/json\r\n"));
    EXPECT_TRUE(r.has("Connection: close\r\n"));
    EXPECT_EQ(r.body.rfind("{\"error\": \"", 0), 0u) << r.body;
    EXPECT_TRUE(c.closed());
  }
  EXPECT_EQ(server.protocol_errors(), cases.size());
  EXPECT_EQ(server.requests(), 0u);
  EXPECT_TRUE(parked.requests.empty());
}

TEST(HttpServer, ExpectContinue) {
  HttpServer* self = nullptr;
  HttpServerConfig cfg = config();
  cfg.limits.max_body_bytes = 100;
  HttpServer server(cfg, [&self](uint64_t t, HttpRequest&& r) { self->respond(t, text(r.body)); });
  self = &server;
  server.start();
  Client c(server.port());
  c.send("PUT /x HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n");
  const Reply interim = c.read();
  EXPECT_EQ(interim.status, 100);
  EXPECT_EQ(interim.head, "HTTP/1.1 100 Continue\r\n\r\n");
  c.send("data");
  EXPECT_EQ(c.read().body, "data");
  Client big(server.port());
  const Reply r = big.request(
      "PUT /x HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 101\r\n\r\n");
  EXPECT_EQ(r.status, 413);
  EXPECT_TRUE(big.closed());
}

TEST(HttpServer, ConnectionPersistence) {
  HttpServer* self = nullptr;
  HttpServer server(config(), [&self](uint64_t token, HttpRequest&& r) {
    HttpResponse response = text("ok");
    if (r.path == "/bye") response.headers.push_back({"Connection", "close"});
    self->respond(token, std::move(response));
  });
  self = &server;
  server.start();
  {
    Client c(server.port());
    EXPECT_TRUE(c.request("GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                    .has("Connection: close\r\n"));
    EXPECT_TRUE(c.closed());
  }
  {
    Client c(server.port());
    EXPECT_EQ(c.request("GET / HTTP/1.0\r\n\r\n").body, "ok");
    EXPECT_TRUE(c.closed());
  }
  {
    Client c(server.port());
    const std::string keep = "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n";
    EXPECT_TRUE(c.request(keep).has("Connection: keep-alive\r\n"));
    EXPECT_EQ(c.request(keep).status, 200);
    EXPECT_TRUE(c.request("GET /bye HTTP/1.1\r\nHost: t\r\n\r\n").has("Connection: close\r\n"));
    EXPECT_TRUE(c.closed());
  }
  EXPECT_TRUE(eventually([&] { return server.connections() == 0; }));
}

TEST(HttpServer, AbandonWhenTheClientLeaves) {
  ParkedServer s(config(), true);
  auto& [parked, server] = s;
  uint64_t token;
  {
    Client c(server.port());
    c.send(post("/slow", "x"));
    token = parked.next().first;
    ASSERT_NE(token, 0u);
  }
  ASSERT_TRUE(parked.wait_abandoned(1));
  EXPECT_EQ(parked.abandoned[0], token);
  server.respond(token, text("too late"));
  server.respond(0, text("never issued"));
  server.respond(~uint64_t{0}, text("never issued"));
  EXPECT_TRUE(eventually([&] { return server.connections() == 0; }));
  Client next(server.port());  // the server still serves
  next.send(post("/again", "y"));
  const uint64_t second = parked.next().first;
  EXPECT_NE(second, token);
  server.respond(second, text("fine"));
  EXPECT_EQ(next.read().body, "fine");
}

TEST(HttpServer, ShutdownAnswersRequestsInFlight) {
  ParkedServer s(config(2), true);
  auto& [parked, server] = s;
  const uint16_t port = server.port();
  std::vector<std::unique_ptr<Client>> busy;
  for (int i = 0; i < 3; ++i) {
    busy.push_back(std::make_unique<Client>(port));
    busy.back()->send(post("/q" + std::to_string(i), "x"));
  }
  std::vector<uint64_t> tokens;
  for (int i = 0; i < 3; ++i) tokens.push_back(parked.next().first);
  Client idle(port);
  Client partial(port);
  partial.send("GET / HT");
  ASSERT_TRUE(eventually([&] { return server.connections() == 5; }));
  std::thread stopper([&] { server.shutdown(10s); });
  EXPECT_TRUE(idle.closed());  // idle connections close at once; requests in flight stay
  EXPECT_TRUE(partial.closed());
  // The listener closes once every I/O thread is draining.
  ASSERT_TRUE(eventually([&] { return !Client(port).connected(); }));
  for (uint64_t t : tokens) server.respond(t, text("late but answered"));
  for (auto& c : busy) {
    const Reply r = c->read();
    EXPECT_EQ(r.body, "late but answered");
    EXPECT_TRUE(r.has("Connection: close\r\n"));
  }
  stopper.join();
  EXPECT_TRUE(parked.abandoned.empty());
  EXPECT_EQ(server.connections(), 0u);
  Client refused(port);
  EXPECT_FALSE(refused.connected());
  server.shutdown(10s);  // idempotent
  server.respond(tokens[0], text("after shutdown"));
}

TEST(HttpServer, ShutdownDeadlineAbandonsWhatIsLeft) {
  ParkedServer s(config(), true);
  auto& [parked, server] = s;
  Client c(server.port());
  c.send(post("/never", "x"));
  const uint64_t token = parked.next().first;
  const auto t0 = std::chrono::steady_clock::now();
  server.shutdown(100ms);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 5s);
  ASSERT_EQ(parked.abandoned.size(), 1u);
  EXPECT_EQ(parked.abandoned[0], token);
  EXPECT_TRUE(c.closed());
}

TEST(HttpServer, LargeBodiesBothWays) {
  HttpServer* self = nullptr;
  HttpServer server(config(), [&self](uint64_t token, HttpRequest&& r) {
    std::string body(8 << 20, 'z');
    for (size_t i = 0; i < body.size(); i += 4096) body[i] = char('a' + (i / 4096) % 26);
    body += std::to_string(r.body.size());
    self->respond(token, text(std::move(body)));
  });
  self = &server;
  server.start();
  Client c(server.port());
  c.send(post("/big", std::string(3 << 20, 'q')));
  std::this_thread::sleep_for(100ms);  // the response fills the socket buffer: partial writes
  const Reply r = c.read();
  ASSERT_EQ(r.body.size(), (8u << 20) + 7);
  EXPECT_EQ(r.body.substr(8 << 20), "3145728");
  for (size_t i = 0; i < (8u << 20); i += 4096) ASSERT_EQ(r.body[i], char('a' + (i / 4096) % 26));
}

TEST(HttpServer, HandlerFailureAnswers500) {
  HttpServer server(config(), [](uint64_t, HttpRequest&&) { throw std::runtime_error("boom"); });
  server.start();
  Client c(server.port());
  EXPECT_EQ(c.request(post("/", "")).status, 500);
  EXPECT_EQ(c.request(post("/", "")).status, 500);  // the connection stays usable
}

TEST(HttpServer, ConnectionLimitAndSlowClients) {
  HttpServer* self = nullptr;
  HttpServerConfig cfg = config();
  cfg.max_connections = 2;
  HttpServer server(cfg, [&self](uint64_t t, HttpRequest&&) { self->respond(t, text("ok")); });
  self = &server;
  server.start();
  Client slow(server.port());
  slow.send("GET / HTTP/1.1\r\nHo");  // holds a partial head: costs its buffer only
  Client fast(server.port());
  EXPECT_EQ(fast.request("GET / HTTP/1.1\r\nHost: t\r\n\r\n").body, "ok");
  Client over(server.port());
  EXPECT_TRUE(over.closed());
  slow.send("st: t\r\n\r\n");
  EXPECT_EQ(slow.read().body, "ok");
}

HttpServerConfig idle_config() {
  HttpServerConfig c = config();
  c.idle_timeout = 100ms;
  return c;
}

TEST(HttpServer, IdleConnectionsAreClosedSilently) {
  HttpServer* self = nullptr;
  HttpServer server(idle_config(),
                    [&self](uint64_t t, HttpRequest&&) { self->respond(t, text("ok")); });
  self = &server;
  server.start();
  Client silent(server.port());
  Client c(server.port());
  // Each answer restarts the clock: requests spaced under the timeout outlast it together.
  for (int i = 0; i < 6; ++i) {
    EXPECT_EQ(c.request("GET / HTTP/1.1\r\nHost: t\r\n\r\n").body, "ok");
    std::this_thread::sleep_for(30ms);
  }
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_TRUE(c.closed());  // no 408: nothing of a request had arrived
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 50ms);
  EXPECT_TRUE(silent.closed());
  EXPECT_TRUE(eventually([&] { return server.connections() == 0; }));
  EXPECT_EQ(server.requests(), 6u);
}

TEST(HttpServer, PartlyReceivedRequestsTimeOutWith408) {
  ParkedServer s(idle_config());
  auto& [parked, server] = s;
  Client head(server.port());
  head.send("GET / HTTP/1.1\r\nHost: t\r\n");
  Client body(server.port());
  const std::string whole = post("/", "0123456789");
  body.send(whole.substr(0, whole.size() - 3));
  // Bytes trickling in are no progress: the request still has to arrive whole in time.
  Client trickle(server.port());
  trickle.send("GET / HTTP/1.1\r\nX-Slow: ");
  for (int i = 0; i < 15; ++i) {
    trickle.send("a");
    std::this_thread::sleep_for(20ms);
  }
  for (Client* c : {&head, &body, &trickle}) {
    const Reply r = c->read();
    EXPECT_EQ(r.status, 408);
    EXPECT_TRUE(r.has("Connection: close\r\n"));
    EXPECT_TRUE(c->closed());
  }
  EXPECT_EQ(server.requests(), 0u);
  EXPECT_TRUE(parked.requests.empty());
}

TEST(HttpServer, RequestsInFlightOutliveTheIdleTimeout) {
  ParkedServer s(idle_config(), true);
  auto& [parked, server] = s;
  Client c(server.port());
  c.send(post("/slow", "x"));
  uint64_t token = parked.next().first;
  ASSERT_NE(token, 0u);
  std::this_thread::sleep_for(300ms);
  server.respond(token, text("late"));
  const Reply r = c.read();
  EXPECT_EQ(r.body, "late");
  EXPECT_FALSE(r.has("Connection:"));
  // Answering restarted the clock, however long the request took.
  c.send(post("/next", "y"));
  token = parked.next().first;
  ASSERT_NE(token, 0u);
  server.respond(token, text("again"));
  EXPECT_EQ(c.read().body, "again");
  EXPECT_TRUE(c.closed());
  EXPECT_TRUE(parked.abandoned.empty());
}

TEST(HttpServer, ConfigurationErrors) {
  const auto handler = [](uint64_t, HttpRequest&&) {};
  HttpServerConfig bad = config(0);
  EXPECT_THROW((HttpServer{bad, handler}), std::invalid_argument);
  bad = config();
  bad.idle_timeout = -1ms;
  EXPECT_THROW((HttpServer{bad, handler}), std::invalid_argument);
  bad.idle_timeout = std::chrono::hours(25);
  EXPECT_THROW((HttpServer{bad, handler}), std::invalid_argument);
  EXPECT_THROW((HttpServer{config(), HttpServer::Handler{}}), std::invalid_argument);
  HttpServer first(config(), handler);
  HttpServerConfig same = config();
  same.port = first.port();
  try {
    HttpServer second(same, handler);
    ADD_FAILURE() << "bound a port that is in use";
  } catch (const std::system_error& e) {
    EXPECT_EQ(e.code(), std::errc::address_in_use);
  }
  // Never started: shutting down and destroying are still clean.
  first.shutdown(0ms);
}

}  // namespace
}  // namespace stoker
