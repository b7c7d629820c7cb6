#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "core/gateway.hpp"
#include "test_util.hpp"
#include "tests/http_client.hpp"

namespace stoker {
namespace {

using namespace std::chrono_literals;

// A blocking loopback client: one request, one whole response (Content-Length framed).
std::string round_trip(uint16_t port, const std::string& request) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return "";
  }
  size_t sent = 0;
  while (sent < request.size()) {
    const ssize_t n = ::send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) break;
    sent += size_t(n);
  }
  std::string response;
  char buffer[4096];
  for (;;) {
    const size_t head = response.find("\r\n\r\n");
    if (head != std::string::npos) {
      const size_t at = response.find("Content-Length: ");
      const size_t length = at == std::string::npos ? 0 : std::stoul(response.substr(at + 16));
      if (response.size() >= head + 4 + length) break;
    }
    const ssize_t n = ::recv(fd, buffer, sizeof(buffer), 0);
    if (n <= 0) break;
    response.append(buffer, size_t(n));
  }
  ::close(fd);
  return response;
}

std::string infer_request(const std::vector<test::Bytes>& images, const std::string& token) {
  std::string data;
  for (const test::Bytes& image : images) {
    const uint32_t size = uint32_t(image.size());
    data.append(reinterpret_cast<const char*>(&size), 4);
    data.append(image.begin(), image.end());
  }
  const std::string header =
      R"({"id":"r1","inputs":[{"name":"image","datatype":"BYTES","shape":[)" +
      std::to_string(images.size()) + R"(],"parameters":{"binary_data_size":)" +
      std::to_string(data.size()) + "}}]}";
  std::string out = "POST /v2/models/m/infer HTTP/1.1\r\nHost: t\r\nContent-Length: " +
                    std::to_string(header.size() + data.size()) +
                    "\r\nInference-Header-Content-Length: " + std::to_string(header.size()) +
                    "\r\n";
  if (!token.empty()) out += "Authorization: Bearer " + token + "\r\n";
  return out + "\r\n" + header + data;
}

struct Fixture {
  std::shared_ptr<ThreadPool> pool = std::make_shared<ThreadPool>(2);
  HostArena arena;
  std::vector<std::shared_ptr<Feeder>> feeders;
  std::unique_ptr<Gateway> gateway;
  std::vector<std::thread> consumers;
  std::atomic<int> batches{0};

  explicit Fixture(size_t capacity = 64, size_t engines = 1) {
    Spec s;
    s.resize_h = s.resize_w = 40;
    s.crop_h = s.crop_w = 32;
    s.layout = Layout::kNHWC;
    s.dtype = DType::kUInt8;
    FeederConfig fc;
    fc.batcher.max_batch_size = 4;
    fc.batcher.max_delay = 500us;
    fc.batcher.capacity = capacity;
    fc.slots = 2;
    for (size_t e = 0; e < engines; ++e) {
      feeders.push_back(
          std::make_shared<Feeder>(fc, std::make_shared<Preprocessor>(s), pool, arena));
    }
    GatewayConfig gc;
    gc.token = "secret";
    gateway = std::make_unique<Gateway>(gc, std::vector<GatewayModel>{{"m", feeders, {"sum"}}});
    gateway->start();
    for (const auto& feeder : feeders) consumers.emplace_back([this, feeder] { consume(*feeder); });
  }

  // Plays an engine: each row's answer is the sum of its preprocessed bytes.
  void consume(Feeder& feeder) {
    PreparedBatch b;
    while (feeder.next(b)) {
      std::vector<uint64_t> ids;
      std::vector<int64_t> sums;
      std::vector<RowError> errors;
      const size_t row_bytes = 32 * 32 * 3;
      for (size_t r = 0; r < b.requests.size(); ++r) {
        ids.push_back(b.requests[r].id);
        int64_t sum = 0;
        const uint8_t* px = feeder.slot_data(size_t(b.slot)) + r * row_bytes;
        for (size_t i = 0; i < row_bytes; ++i) sum += px[i];
        sums.push_back(sum);
        if (b.items[r].status != Status::kOk) errors.push_back({r, 400, b.items[r].message});
      }
      feeder.release(b.slot);
      RowOutput out{"sum", "INT64", {1}, reinterpret_cast<const uint8_t*>(sums.data()), 8};
      std::vector<int64_t> queue(ids.size(), 2), total(ids.size(), 9);
      gateway->answer(ids, {out}, {queue, total, {1.5, 1.5, 1.5, 1.5, 1.5}}, errors);
      batches.fetch_add(1);
    }
  }

  ~Fixture() {
    gateway->shutdown(1000ms);
    for (const auto& feeder : feeders) feeder->close();
    for (auto& t : consumers) t.join();
  }
};

TEST(Gateway, AnswersBinaryInferNatively) {
  Fixture f;
  const test::Image rgb = test::make_rgb(48, 44, 5);
  const test::Bytes jpeg = test::encode_jpeg(rgb, {});
  const std::string response = round_trip(f.gateway->port(), infer_request({jpeg, jpeg}, "secret"));
  ASSERT_EQ(response.rfind("HTTP/1.1 200", 0), 0u) << response;
  EXPECT_NE(response.find(R"("id":"r1")"), std::string::npos);
  EXPECT_NE(response.find(R"("shape":[2,1])"), std::string::npos);
  EXPECT_NE(response.find("queue;dur=0.002, batch;dur=0.002"), std::string::npos);
  EXPECT_EQ(f.gateway->forwarded(), 0u);
  EXPECT_EQ(f.gateway->counts(0), (std::vector<std::pair<int, uint64_t>>{{200, 1}}));
}

TEST(Gateway, RefusesAWrongTokenAndFailsABadImageAlone) {
  Fixture f;
  const test::Bytes jpeg = test::encode_jpeg(test::make_rgb(40, 40, 1), {});
  std::string r = round_trip(f.gateway->port(), infer_request({jpeg}, "wrong"));
  EXPECT_EQ(r.rfind("HTTP/1.1 401", 0), 0u) << r;
  const test::Bytes junk = {0xff, 0xd8, 0xff, 0x00, 0x01};
  r = round_trip(f.gateway->port(), infer_request({jpeg, junk}, "secret"));
  EXPECT_EQ(r.rfind("HTTP/1.1 400", 0), 0u) << r;
  r = round_trip(f.gateway->port(), infer_request({jpeg}, "secret"));
  EXPECT_EQ(r.rfind("HTTP/1.1 200", 0), 0u) << r;
}

TEST(Gateway, ForwardsWhatItDoesNotHandle) {
  Fixture f;
  std::thread app([&f] {
    std::vector<std::pair<uint64_t, HttpRequest>> batch;
    std::vector<uint64_t> abandoned;
    while (f.gateway->next_forwarded(batch, abandoned)) {
      for (auto& [token, request] : batch) {
        HttpResponse response;
        response.body = request.method + " " + request.path;
        f.gateway->respond(token, std::move(response));
      }
      batch.clear();
    }
  });
  const std::string r =
      round_trip(f.gateway->port(), "GET /v2/health/ready HTTP/1.1\r\nHost: t\r\n\r\n");
  EXPECT_NE(r.find("GET /v2/health/ready"), std::string::npos) << r;
  EXPECT_EQ(f.gateway->forwarded(), 1u);
  f.gateway->shutdown(100ms);
  app.join();
}

TEST(Gateway, StreamsForwardedAnswersAndTellsWhenTheirClientsLeave) {
  Fixture f;
  std::vector<std::pair<uint64_t, HttpRequest>> batch;
  std::vector<uint64_t> abandoned;
  uint64_t token;
  {
    test::Client c(f.gateway->port());
    c.send("POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}");
    ASSERT_TRUE(f.gateway->next_forwarded(batch, abandoned));
    ASSERT_EQ(batch.size(), 1u);
    EXPECT_TRUE(abandoned.empty());
    token = batch[0].first;
    HttpResponse head;
    head.headers.push_back({"content-type", "text/event-stream"});
    f.gateway->respond_start(token, std::move(head));
    f.gateway->respond_pieces({{token, "data: 1\n\n", false}});
    const std::string got = c.read_until("data: 1\n\n");
    EXPECT_NE(got.find("Transfer-Encoding: chunked"), std::string::npos) << got;
  }
  batch.clear();
  ASSERT_TRUE(f.gateway->next_forwarded(batch, abandoned));
  EXPECT_TRUE(batch.empty());
  EXPECT_EQ(abandoned, std::vector<uint64_t>{token});
  f.gateway->shutdown(100ms);
  EXPECT_FALSE(f.gateway->next_forwarded(batch, abandoned));
}

TEST(Gateway, ManyClientsEachGetTheirOwnAnswer) {
  Fixture f(1024);
  std::vector<test::Bytes> images;
  for (int i = 0; i < 4; ++i)
    images.push_back(test::encode_jpeg(test::make_rgb(40 + i, 40, i), {}));
  std::atomic<int> ok{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < 8; ++c) {
    clients.emplace_back([&, c] {
      for (int k = 0; k < 10; ++k) {
        const std::string r =
            round_trip(f.gateway->port(), infer_request({images[size_t(c + k) % 4]}, "secret"));
        if (r.rfind("HTTP/1.1 200", 0) == 0) ok.fetch_add(1);
      }
    });
  }
  for (auto& t : clients) t.join();
  EXPECT_EQ(ok.load(), 80);
  EXPECT_EQ(f.gateway->pending(), 0u);
  EXPECT_EQ(f.gateway->counts(0), (std::vector<std::pair<int, uint64_t>>{{200, 80}}));
}

TEST(Gateway, SpreadsAModelsRequestsOverItsEngines) {
  Fixture f(1024, 2);
  const test::Bytes jpeg = test::encode_jpeg(test::make_rgb(40, 40, 3), {});
  std::atomic<int> ok{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < 8; ++c) {
    clients.emplace_back([&] {
      for (int k = 0; k < 10; ++k) {
        const std::string r = round_trip(f.gateway->port(), infer_request({jpeg, jpeg}, "secret"));
        if (r.rfind("HTTP/1.1 200", 0) == 0 && r.find(R"("shape":[2,1])") != std::string::npos) {
          ok.fetch_add(1);
        }
      }
    });
  }
  for (auto& t : clients) t.join();
  EXPECT_EQ(ok.load(), 80);
  EXPECT_EQ(f.gateway->pending(), 0u);
  // Both engines took images; a request's images go whole to one engine.
  const uint64_t first = f.gateway->routed(0, 0), second = f.gateway->routed(0, 1);
  EXPECT_EQ(first + second, 160u);
  EXPECT_GT(first, 0u);
  EXPECT_GT(second, 0u);
  EXPECT_EQ(first % 2, 0u);
  EXPECT_THROW(f.gateway->routed(0, 2), std::out_of_range);
}

TEST(Gateway, RefusesAModelWithoutFeeders) {
  GatewayConfig gc;
  EXPECT_THROW(Gateway(gc, std::vector<GatewayModel>{{"m", {}, {"sum"}}}), std::invalid_argument);
  EXPECT_THROW(Gateway(gc, std::vector<GatewayModel>{{"m", {nullptr}, {"sum"}}}),
               std::invalid_argument);
}

}  // namespace
}  // namespace stoker
