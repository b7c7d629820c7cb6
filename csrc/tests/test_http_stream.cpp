// Streamed responses: a head now, body pieces later (server-sent events of generated tokens).
#include <gtest/gtest.h>

#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/http_server.hpp"
#include "tests/http_client.hpp"

namespace stoker {
namespace {

using namespace stoker::test;

HttpResponse events_head() {
  HttpResponse r;
  r.headers.push_back({"Content-Type", "text/event-stream"});
  return r;
}

void pieces(HttpServer& server, std::vector<HttpPiece> list) {
  server.respond_pieces(std::move(list));
}

TEST(HttpStream, ChunkedPiecesArriveAsSentAndTheConnectionStaysOpen) {
  ParkedServer s;
  auto& [parked, server] = s;
  Client c(server.port());
  const uint64_t token = ask(parked, c, "GET /s HTTP/1.1\r\nHost: t\r\n\r\n");
  ASSERT_NE(token, 0u);
  HttpResponse head = events_head();
  head.body = "first";
  server.respond_start(token, std::move(head));
  const std::string got = c.read_until("first\r\n");
  EXPECT_NE(got.find("HTTP/1.1 200 OK\r\n"), std::string::npos);
  EXPECT_NE(got.find("Transfer-Encoding: chunked\r\n"), std::string::npos);
  EXPECT_EQ(got.find("Content-Length"), std::string::npos);
  EXPECT_TRUE(got.ends_with("\r\n\r\n5\r\nfirst\r\n"));
  pieces(server, {{token, "second piece", false}});
  EXPECT_EQ(c.read_until("piece\r\n"), "c\r\nsecond piece\r\n");
  pieces(server, {{token, "", false}});  // nothing: an empty chunk would end the body
  pieces(server, {{token, "third", true}});
  EXPECT_EQ(c.read_until("0\r\n\r\n"), "5\r\nthird\r\n0\r\n\r\n");
  pieces(server, {{token, "after the end", false}});  // ignored
  const uint64_t next = ask(parked, c, "GET /next HTTP/1.1\r\nHost: t\r\n\r\n");
  ASSERT_NE(next, 0u);
  server.respond(next, text("whole"));
  const Reply r = c.read();
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "whole");
  EXPECT_EQ(server.connections(), 1u);
}

TEST(HttpStream, OneCallCarriesPiecesOfManyStreamsOnSeveralThreads) {
  constexpr int kClients = 12, kPieces = 40;
  ParkedServer s(config(3));
  auto& [parked, server] = s;
  std::vector<std::unique_ptr<Client>> clients;
  std::vector<uint64_t> tokens;
  for (int i = 0; i < kClients; ++i) {
    clients.push_back(std::make_unique<Client>(server.port()));
    clients.back()->send("GET /" + std::to_string(i) + " HTTP/1.1\r\nHost: t\r\n\r\n");
    const auto [token, request] = parked.next();
    ASSERT_EQ(request.path, "/" + std::to_string(i));
    tokens.push_back(token);
    server.respond_start(token, events_head());
  }
  for (int p = 0; p < kPieces; ++p) {
    std::vector<HttpPiece> step;
    for (int i = 0; i < kClients; ++i) {
      step.push_back(
          {tokens[size_t(i)], std::to_string(i) + ":" + std::to_string(p) + ";", p == kPieces - 1});
    }
    pieces(server, std::move(step));
  }
  for (int i = 0; i < kClients; ++i) {
    const std::string all = clients[size_t(i)]->read_until("0\r\n\r\n");
    std::string body;
    size_t at = all.find("\r\n\r\n") + 4;
    while (true) {  // de-chunk
      const size_t line = all.find("\r\n", at);
      const size_t size = std::stoul(all.substr(at, line - at), nullptr, 16);
      if (size == 0) break;
      body += all.substr(line + 2, size);
      at = line + 2 + size + 2;
    }
    std::string expected;
    for (int p = 0; p < kPieces; ++p) expected += std::to_string(i) + ":" + std::to_string(p) + ";";
    EXPECT_EQ(body, expected);
  }
}

TEST(HttpStream, HttpTenGetsRawBytesAndTheEndClosesTheConnection) {
  ParkedServer s;
  auto& [parked, server] = s;
  Client c(server.port());
  const uint64_t token = ask(parked, c, "GET /s HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
  ASSERT_NE(token, 0u);
  server.respond_start(token, events_head());
  pieces(server, {{token, "data: a\n\n", false}, {token, "data: b\n\n", true}});
  const std::string all = c.read_to_end();
  EXPECT_NE(all.find("Connection: close\r\n"), std::string::npos);
  EXPECT_EQ(all.find("Transfer-Encoding"), std::string::npos);
  EXPECT_EQ(all.find("Content-Length"), std::string::npos);
  EXPECT_TRUE(all.ends_with("\r\n\r\ndata: a\n\ndata: b\n\n"));
}

TEST(HttpStream, HeadRequestsGetTheHeadOnly) {
  ParkedServer s;
  auto& [parked, server] = s;
  Client c(server.port());
  const uint64_t token = ask(parked, c, "HEAD /s HTTP/1.1\r\nHost: t\r\n\r\n");
  ASSERT_NE(token, 0u);
  server.respond_start(token, events_head());
  pieces(server, {{token, "never sent", false}, {token, "nor this", true}});
  const uint64_t next = ask(parked, c, "GET /next HTTP/1.1\r\nHost: t\r\n\r\n");
  ASSERT_NE(next, 0u);
  server.respond(next, text("after"));
  const std::string head = c.read_until("\r\n\r\n");
  EXPECT_NE(head.find("Transfer-Encoding: chunked\r\n"), std::string::npos);
  const Reply r = c.read();
  EXPECT_EQ(r.body, "after");
}

TEST(HttpStream, ResponsesThatDoNotFitTheRequestsStateAreIgnored) {
  ParkedServer s;
  auto& [parked, server] = s;
  Client c(server.port());
  const uint64_t a = ask(parked, c, "GET /a HTTP/1.1\r\nHost: t\r\n\r\n");
  ASSERT_NE(a, 0u);
  pieces(server, {{a, "not started", true}});  // ignored: the request is still unanswered
  server.respond(a, text("whole"));
  EXPECT_EQ(c.read().body, "whole");
  const uint64_t b = ask(parked, c, "GET /b HTTP/1.1\r\nHost: t\r\n\r\n");
  ASSERT_NE(b, 0u);
  server.respond_start(b, events_head());
  server.respond(b, text("a whole answer too"));  // ignored: the response has started
  server.respond_start(b, events_head());         // and so is a second start
  pieces(server, {{b, "end", true}});
  const std::string got = c.read_until("0\r\n\r\n");
  EXPECT_TRUE(got.ends_with("\r\n\r\n3\r\nend\r\n0\r\n\r\n"));
  EXPECT_EQ(got.find("whole"), std::string::npos);
}

TEST(HttpStream, AClientLeavingMidStreamAbandonsItsRequest) {
  ParkedServer s(config(), true);
  auto& [parked, server] = s;
  uint64_t token;
  {
    Client c(server.port());
    token = ask(parked, c, "GET /s HTTP/1.1\r\nHost: t\r\n\r\n");
    ASSERT_NE(token, 0u);
    HttpResponse head = events_head();
    head.body = "x";
    server.respond_start(token, std::move(head));
    EXPECT_FALSE(c.read_until("x\r\n").empty());
  }
  ASSERT_TRUE(parked.wait_abandoned(1));
  EXPECT_EQ(parked.abandoned[0], token);
  pieces(server, {{token, "to nobody", true}});  // ignored
  EXPECT_TRUE(eventually([&] { return server.connections() == 0; }));
}

TEST(HttpStream, AReaderThatStallsIsCutOffAtTheUnsentLimit) {
  HttpServerConfig cfg = config();
  cfg.max_unsent_bytes = 1 << 20;
  ParkedServer s(cfg, true);
  auto& [parked, server] = s;
  Client c(server.port());  // never reads
  const uint64_t token = ask(parked, c, "GET /s HTTP/1.1\r\nHost: t\r\n\r\n");
  ASSERT_NE(token, 0u);
  server.respond_start(token, events_head());
  // Far more than the socket's buffers and the limit together can hold.
  for (int i = 0; i < 256; ++i) {
    pieces(server, {{token, std::string(64 * 1024, 'x'), false}});
    std::this_thread::sleep_for(1ms);
    std::lock_guard<std::mutex> lock(parked.mutex);
    if (!parked.abandoned.empty()) break;
  }
  ASSERT_TRUE(parked.wait_abandoned(1));
  EXPECT_EQ(parked.abandoned[0], token);
}

TEST(HttpStream, ShutdownLetsAStreamInFlightFinish) {
  ParkedServer s;
  auto& [parked, server] = s;
  Client c(server.port());
  const uint64_t token = ask(parked, c, "GET /s HTTP/1.1\r\nHost: t\r\n\r\n");
  ASSERT_NE(token, 0u);
  server.respond_start(token, events_head());
  std::thread stopper([&] { server.shutdown(10s); });
  std::this_thread::sleep_for(50ms);
  pieces(server, {{token, "during the drain", false}});
  pieces(server, {{token, "last", true}});
  stopper.join();
  const std::string all = c.read_to_end();
  EXPECT_TRUE(all.ends_with("10\r\nduring the drain\r\n4\r\nlast\r\n0\r\n\r\n"));
}

}  // namespace
}  // namespace stoker
