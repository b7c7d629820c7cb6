#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/http.hpp"

namespace stoker {
namespace {

using namespace std::string_literals;

// Feeds `input` in pieces of `step` bytes (0: all at once) until the request completes or fails;
// returns the number of bytes consumed.
size_t feed_in_steps(HttpParser& p, std::string_view input, size_t step = 0) {
  size_t used = 0;
  while (used < input.size() && !p.complete() && !p.failed()) {
    const size_t n = step == 0 ? input.size() - used : std::min(step, input.size() - used);
    const size_t took = p.feed(input.substr(used, n));
    EXPECT_LE(took, n);
    used += took;
    if (took < n) break;
  }
  return used;
}

int error_of(std::string_view input, HttpLimits limits = {}) {
  HttpParser p(limits);
  feed_in_steps(p, input);
  return p.failed() ? p.error_status() : 0;
}

const std::string kPost =
    "POST /v1/models/resnet:predict?x=1&y=2 HTTP/1.1\r\n"
    "Host: localhost\r\n"
    "Content-Type:application/octet-stream \r\n"
    "X-Request-ID:  abc\t\r\n"
    "Content-Length: 11\r\n"
    "\r\n"
    "hello world";

const std::string kChunked =
    "POST /upload HTTP/1.1\r\n"
    "Host: h\r\n"
    "Transfer-Encoding: chunked\r\n"
    "\r\n"
    "5;name=value\r\nhello\r\n"
    "1\r\n \r\n"
    "A\r\n0123456789\r\n"
    "0\r\n"
    "X-Trailer: ignored\r\n"
    "\r\n";

TEST(HttpParser, CompleteRequest) {
  HttpParser p;
  EXPECT_EQ(p.feed(kPost), kPost.size());
  ASSERT_TRUE(p.complete());
  HttpRequest r = p.take();
  EXPECT_EQ(r.method, "POST");
  EXPECT_EQ(r.path, "/v1/models/resnet:predict");
  EXPECT_EQ(r.query, "x=1&y=2");
  EXPECT_EQ(r.version_minor, 1);
  EXPECT_TRUE(r.keep_alive);
  EXPECT_EQ(r.body, "hello world");
  ASSERT_EQ(r.headers.size(), 4u);
  EXPECT_EQ(r.headers[1].name, "content-type");
  EXPECT_EQ(r.headers[1].value, "application/octet-stream");
  ASSERT_NE(r.header("x-request-id"), nullptr);
  EXPECT_EQ(*r.header("x-request-id"), "abc");
  EXPECT_EQ(r.header("X-Request-ID"), nullptr);  // lookups take lower-case names
  EXPECT_FALSE(p.started());
}

TEST(HttpParser, EverySplitGivesTheSameRequest) {
  for (const std::string* input : {&kPost, &kChunked}) {
    HttpParser whole;
    ASSERT_EQ(whole.feed(*input), input->size());
    const HttpRequest expected = whole.take();
    for (size_t step : {1, 2, 3, 7, 64}) {
      HttpParser p;
      EXPECT_EQ(feed_in_steps(p, *input, step), input->size()) << "step " << step;
      ASSERT_TRUE(p.complete()) << "step " << step << ": " << p.error();
      const HttpRequest r = p.take();
      EXPECT_EQ(r.path, expected.path);
      EXPECT_EQ(r.body, expected.body);
      EXPECT_EQ(r.headers.size(), expected.headers.size());
    }
  }
}

TEST(HttpParser, ChunkedBodyIsDechunked) {
  HttpParser p;
  EXPECT_EQ(p.feed(kChunked), kChunked.size());
  ASSERT_TRUE(p.complete()) << p.error();
  EXPECT_EQ(p.request().body, "hello 0123456789");
}

TEST(HttpParser, PipelinedRequestsStopAtEachEnd) {
  const std::string second = "GET /b HTTP/1.1\r\nHost: h\r\n\r\n";
  const std::string third = "\r\nHEAD /c HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n";
  const std::string all = kPost + second + kChunked + third;
  HttpParser p;
  std::vector<HttpRequest> got;
  size_t used = 0;
  while (used < all.size()) {
    const size_t n = p.feed(std::string_view(all).substr(used));
    ASSERT_TRUE(p.complete()) << p.error();
    got.push_back(p.take());
    used += n;
  }
  ASSERT_EQ(got.size(), 4u);
  EXPECT_EQ(got[0].body, "hello world");
  EXPECT_EQ(got[1].path, "/b");
  EXPECT_EQ(got[2].body, "hello 0123456789");
  EXPECT_EQ(got[3].method, "HEAD");
  EXPECT_FALSE(got[3].keep_alive);
  // Nothing is consumed past a complete request until it is taken.
  HttpParser q;
  q.feed(second + second);
  EXPECT_EQ(q.feed(second), 0u);
}

TEST(HttpParser, KeepAliveFollowsVersionAndConnection) {
  const auto keep = [](const std::string& version, const std::string& connection) {
    HttpParser p;
    std::string req = "GET / " + version + "\r\nHost: h\r\n";
    if (!connection.empty()) req += "Connection: " + connection + "\r\n";
    p.feed(req + "\r\n");
    EXPECT_TRUE(p.complete()) << p.error();
    return p.request().keep_alive;
  };
  EXPECT_TRUE(keep("HTTP/1.1", ""));
  EXPECT_FALSE(keep("HTTP/1.1", "close"));
  EXPECT_FALSE(keep("HTTP/1.1", "Upgrade, CLOSE"));
  EXPECT_FALSE(keep("HTTP/1.0", ""));
  EXPECT_TRUE(keep("HTTP/1.0", "Keep-Alive"));
  EXPECT_FALSE(keep("HTTP/1.0", "keep-alive, close"));
}

TEST(HttpParser, TargetForms) {
  HttpParser p;
  p.feed("GET http://example.com:8080/a/b?q=1 HTTP/1.1\r\nHost: example.com\r\n\r\n");
  ASSERT_TRUE(p.complete());
  EXPECT_EQ(p.request().path, "/a/b");
  EXPECT_EQ(p.request().query, "q=1");
  p.reset();
  p.feed("OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n");
  ASSERT_TRUE(p.complete());
  EXPECT_EQ(p.request().path, "*");
  p.reset();
  p.feed("GET /%7Euser? HTTP/1.0\r\n\r\n");  // HTTP/1.0 needs no Host
  ASSERT_TRUE(p.complete());
  EXPECT_EQ(p.request().path, "/%7Euser");
  EXPECT_EQ(p.request().query, "");
  EXPECT_EQ(p.request().version_minor, 0);
}

TEST(HttpParser, MalformedRequestsAre400) {
  const std::vector<std::string> bad = {
      "GET\r\nHost: h\r\n\r\n",
      "GET  / HTTP/1.1\r\nHost: h\r\n\r\n",
      "GET / HTTP/1.1 \r\nHost: h\r\n\r\n",
      "G(T / HTTP/1.1\r\nHost: h\r\n\r\n",
      "GET / HTTQ/1.1\r\nHost: h\r\n\r\n",
      "GET / HTTP/1.x\r\nHost: h\r\n\r\n",
      "GET foo HTTP/1.1\r\nHost: h\r\n\r\n",
      "GET * HTTP/1.1\r\nHost: h\r\n\r\n",
      "GET /a\0b HTTP/1.1\r\nHost: h\r\n\r\n"s,
      "GET / HTTP/1.1\nHost: h\r\n\r\n",
      "GET / HTTP/1.1\r\nHost: h\n\n",
      "GET / HTTP/1.1\r\nHost: h\r\n folded\r\n\r\n",
      "GET / HTTP/1.1\r\nHost : h\r\n\r\n",
      "GET / HTTP/1.1\r\n: h\r\n\r\n",
      "GET / HTTP/1.1\r\nno colon\r\n\r\n",
      "GET / HTTP/1.1\r\nHost: h\rx\r\n\r\n",
      "GET / HTTP/1.1\r\nHost: a\x01z\r\n\r\n",
      "GET / HTTP/1.1\r\n\r\n",
      "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
      "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: abc\r\n\r\n",
      "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n",
      "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1 2\r\n\r\n",
      "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
      "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999999\r\n\r\n",
      "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
      "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
      "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
  };
  for (const std::string& input : bad) EXPECT_EQ(error_of(input), 400) << input;
  // Equal duplicate lengths are one length.
  EXPECT_EQ(error_of("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2, 2\r\n\r\nab"), 0);
}

TEST(HttpParser, BadChunksAre400) {
  const std::string head = "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n";
  for (const std::string body :
       {"g\r\n", "\r\n", "5 x\r\nhello\r\n0\r\n\r\n", "5\nhello\r\n", "5\r\nhelloXX0\r\n\r\n",
        "5\r\nhello\r0\r\n\r\n", "0\r\nbad trailer\n\r\n"}) {
    EXPECT_EQ(error_of(head + body), 400) << body;
  }
  HttpLimits tight;
  tight.max_header_bytes = 256;
  EXPECT_EQ(error_of(head + "1;" + std::string(5000, 'x') + "\r\n", tight), 400);
  EXPECT_EQ(error_of(head + "0\r\nX: " + std::string(300, 'x') + "\r\n\r\n", tight), 431);
}

TEST(HttpParser, UnsupportedCodingsAndVersions) {
  EXPECT_EQ(error_of("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n"), 501);
  EXPECT_EQ(error_of("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            501);
  EXPECT_EQ(error_of("GET / HTTP/2.0\r\nHost: h\r\n\r\n"), 505);
  EXPECT_EQ(error_of("GET / HTTP/1.1\r\nHost: h\r\nExpect: magic\r\n\r\n"), 417);
}

TEST(HttpParser, Limits) {
  HttpLimits limits;
  limits.max_header_bytes = 128;
  limits.max_body_bytes = 16;
  limits.max_headers = 3;
  const std::string big_header =
      "GET / HTTP/1.1\r\nHost: h\r\nX: " + std::string(200, 'a') + "\r\n\r\n";
  EXPECT_EQ(error_of(big_header, limits), 431);
  for (size_t step : {1, 5, 100}) {  // detected without waiting for the end of the head
    HttpParser p(limits);
    feed_in_steps(p, big_header.substr(0, 150), step);
    EXPECT_TRUE(p.failed()) << step;
    EXPECT_EQ(p.error_status(), 431);
  }
  EXPECT_EQ(error_of("GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n", limits), 431);
  EXPECT_EQ(error_of("GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\n\r\n", limits), 0);
  // A body over the limit is refused from its head alone: 413 before any body byte.
  HttpParser p(limits);
  const std::string head = "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 17\r\n\r\n";
  EXPECT_EQ(p.feed(head), head.size());
  EXPECT_TRUE(p.failed());
  EXPECT_EQ(p.error_status(), 413);
  EXPECT_EQ(
      error_of("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 16\r\n\r\n" + std::string(16, 'b'),
               limits),
      0);
  const std::string chunked = "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n";
  EXPECT_EQ(error_of(chunked + "a\r\n0123456789\r\n7\r\n", limits), 413);
  EXPECT_EQ(error_of(chunked + "ffffffffffffffffffff\r\n", limits), 413);
  EXPECT_EQ(error_of(chunked + "a\r\n0123456789\r\n6\r\n012345\r\n0\r\n\r\n", limits), 0);
  // With a limit near the top of the range, a long chunk size must not wrap around to a small one.
  HttpLimits huge;
  huge.max_body_bytes = uint64_t{1} << 62;
  EXPECT_EQ(error_of(chunked + "10000000000000000\r\n", huge), 413);
  EXPECT_EQ(error_of(chunked + "ffffffffffffffff0\r\n", huge), 413);
}

TEST(HttpParser, LargeDeclaredBodyIsNotReservedUpFront) {
  HttpParser p;
  p.feed("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 60000000\r\n\r\nab");
  EXPECT_TRUE(p.head_done());
  EXPECT_FALSE(p.complete());
  EXPECT_LT(p.request().body.capacity(), size_t{1} << 20);
}

TEST(HttpParser, ExpectContinue) {
  HttpParser p;
  const std::string head =
      "PUT /x HTTP/1.1\r\nHost: h\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n";
  EXPECT_EQ(p.feed(head), head.size());
  EXPECT_TRUE(p.head_done());
  EXPECT_TRUE(p.take_continue());
  EXPECT_FALSE(p.take_continue());
  p.feed("abc");
  ASSERT_TRUE(p.complete());
  // Nothing to wait for without a body, and HTTP/1.0 has no interim responses.
  HttpParser q;
  q.feed("GET / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n\r\n");
  EXPECT_TRUE(q.complete());
  EXPECT_FALSE(q.take_continue());
  HttpParser r;
  r.feed("PUT / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n");
  EXPECT_FALSE(r.take_continue());
}

TEST(HttpParser, ArbitraryBytesNeverCrashAndStayBounded) {
  uint64_t state = 12345;
  const auto next = [&state] {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return uint32_t(state >> 33);
  };
  HttpLimits limits;
  limits.max_header_bytes = 512;
  limits.max_body_bytes = 1024;
  const std::string alphabet = "GET POST / HTTP/1.1\r\n:;0123456789abcdefchunked\x00\xff \t"s;
  for (int round = 0; round < 3000; ++round) {
    // Mutations of valid requests reach deep states; pure noise exercises the first checks.
    std::string input = round % 2 ? kChunked : kPost;
    for (uint32_t m = next() % 8; m > 0; --m) {
      const size_t at = next() % input.size();
      input[at] = alphabet[next() % alphabet.size()];
    }
    if (round % 5 == 0) {
      for (char& c : input) c = char(next());
    }
    HttpParser p(limits);
    const size_t used = feed_in_steps(p, input, 1 + next() % 16);
    EXPECT_LE(used, input.size());
    if (p.failed()) {
      EXPECT_TRUE(p.error_status() >= 400 && p.error_status() <= 505);
      EXPECT_FALSE(p.error().empty());
    }
    EXPECT_LE(p.request().body.size(), limits.max_body_bytes);
  }
}

TEST(HttpResponse, Serialization) {
  HttpResponse r;
  r.headers = {{"Content-Type", "text/plain"},    {"Content-Length", "999"},
               {"Transfer-Encoding", "chunked"},  {"Bad Name", "x"},
               {"X-Split", "a\r\nInjected: yes"}, {"Date", "Mon, 01 Jan 2024 00:00:00 GMT"}};
  r.body = "hi";
  const std::string out = serialize_response(r);
  EXPECT_EQ(out,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
            "Date: Mon, 01 Jan 2024 00:00:00 GMT\r\nContent-Length: 2\r\n\r\nhi");

  ResponseFraming head_only;
  head_only.omit_body = true;
  head_only.close = true;
  r.headers.clear();
  const std::string head = serialize_response(r, head_only);
  EXPECT_NE(head.find("Content-Length: 2\r\n"), std::string::npos);
  EXPECT_NE(head.find("Connection: close\r\n"), std::string::npos);
  EXPECT_NE(head.find("\r\nDate: "), std::string::npos);
  EXPECT_EQ(head.substr(head.size() - 4), "\r\n\r\n");

  ResponseFraming ka;
  ka.keep_alive_header = true;
  EXPECT_NE(serialize_response(r, ka).find("Connection: keep-alive\r\n"), std::string::npos);

  r.status = 204;
  const std::string no_content = serialize_response(r);
  EXPECT_EQ(no_content.rfind("HTTP/1.1 204 No Content\r\n", 0), 0u);
  EXPECT_EQ(no_content.find("Content-Length"), std::string::npos);
  EXPECT_EQ(no_content.substr(no_content.size() - 4), "\r\n\r\n");

  r.status = 42;  // not a final status: never put on the wire as is
  EXPECT_EQ(serialize_response(r).rfind("HTTP/1.1 500 Internal Server Error\r\n", 0), 0u);
}

TEST(HttpResponse, ReasonsAndErrors) {
  const std::vector<std::pair<int, std::string>> reasons = {
      {200, "OK"},
      {400, "Bad Request"},
      {401, "Unauthorized"},
      {404, "Not Found"},
      {405, "Method Not Allowed"},
      {411, "Length Required"},
      {413, "Content Too Large"},
      {415, "Unsupported Media Type"},
      {429, "Too Many Requests"},
      {431, "Request Header Fields Too Large"},
      {499, "Client Closed Request"},
      {500, "Internal Server Error"},
      {501, "Not Implemented"},
      {503, "Service Unavailable"},
      {504, "Gateway Timeout"}};
  for (const auto& [code, reason] : reasons) EXPECT_EQ(http_reason(code), reason) << code;
  EXPECT_STREQ(http_reason(299), "");

  const HttpResponse e = http_error_response(400, "bad \"x\"\\\n");
  EXPECT_EQ(e.status, 400);
  EXPECT_EQ(e.body, "{\"error\": \"bad \\\"x\\\"\\\\\\u000a\"}");
  ASSERT_EQ(e.headers.size(), 1u);
  EXPECT_EQ(e.headers[0].value, "application/json");

  HttpResponse c;
  EXPECT_FALSE(response_wants_close(c));
  c.headers = {{"Connection", "keep-alive, Close"}};
  EXPECT_TRUE(response_wants_close(c));
}

}  // namespace
}  // namespace stoker
