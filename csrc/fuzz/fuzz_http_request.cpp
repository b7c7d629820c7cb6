// The HTTP/1.1 request parser. Input: a seed for the chunking, a byte of options (tight limits,
// Host optional), then a stream of pipelined requests. The stream is fed whole and in random
// chunks, and both must yield the same requests and the same error: framing may not depend on how
// TCP splits bytes. Each request is then served back through the response serializer and read by
// the load generator's parser, which must see exactly one response.
#include <charconv>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "check.hpp"
#include "core/http.hpp"
#include "core/loadgen.hpp"

namespace {

using namespace stoker;

struct Outcome {
  std::vector<HttpRequest> requests;
  int error_status = 0;
  std::string error;
  bool pending = false;  // the stream ended inside a request
};

bool same(const HttpRequest& a, const HttpRequest& b) {
  if (a.method != b.method || a.path != b.path || a.query != b.query ||
      a.version_minor != b.version_minor || a.body != b.body || a.keep_alive != b.keep_alive ||
      a.headers.size() != b.headers.size()) {
    return false;
  }
  for (size_t i = 0; i < a.headers.size(); ++i) {
    if (a.headers[i].name != b.headers[i].name || a.headers[i].value != b.headers[i].value) {
      return false;
    }
  }
  return true;
}

void check_request(const HttpRequest& r, const HttpLimits& limits) {
  FUZZ_CHECK(!r.method.empty());
  FUZZ_CHECK(!r.path.empty() && (r.path[0] == '/' || r.path == "*"));
  FUZZ_CHECK(r.version_minor == 0 || r.version_minor == 1);
  FUZZ_CHECK(r.headers.size() <= limits.max_headers);
  FUZZ_CHECK(r.body.size() <= limits.max_body_bytes);
  for (const HttpHeader& h : r.headers) {
    FUZZ_CHECK(!h.name.empty());
    for (char c : h.name) FUZZ_CHECK(!(c >= 'A' && c <= 'Z'));
    FUZZ_CHECK(h.value.find_first_of("\r\n") == std::string::npos);
  }
  // A single Content-Length is the body's size (a list of equal values is also valid).
  const std::string* length = r.header("content-length");
  uint64_t declared = 0;
  if (length != nullptr && !length->empty() &&
      std::from_chars(length->data(), length->data() + length->size(), declared).ptr ==
          length->data() + length->size()) {
    FUZZ_CHECK(r.body.size() == declared);
  }
}

// chunk(i) gives the size of the next slice; 0 means the rest of the stream.
template <typename Chunker>
Outcome run(std::string_view stream, const HttpLimits& limits, Chunker chunk) {
  HttpParser parser(limits);
  Outcome o;
  size_t pos = 0;
  while (pos < stream.size()) {
    size_t n = chunk();
    if (n == 0 || n > stream.size() - pos) n = stream.size() - pos;
    const std::string_view slice = stream.substr(pos, n);
    pos += n;
    size_t off = 0;
    while (off < slice.size()) {
      const size_t used = parser.feed(slice.substr(off));
      FUZZ_CHECK(used <= slice.size() - off);
      off += used;
      if (parser.complete()) {
        if (off < slice.size()) FUZZ_CHECK(parser.feed(slice.substr(off)) == 0);
        check_request(parser.request(), limits);
        o.requests.push_back(parser.take());
        continue;
      }
      if (parser.failed()) {
        FUZZ_CHECK(parser.feed(stream) == 0);
        const int s = parser.error_status();
        FUZZ_CHECK(s == 400 || s == 413 || s == 417 || s == 431 || s == 501 || s == 505);
        FUZZ_CHECK(!parser.error().empty());
        o.error_status = s;
        o.error = parser.error();
        return o;
      }
      // An unfinished request takes every byte it is given.
      FUZZ_CHECK(off == slice.size());
    }
  }
  o.pending = parser.started();
  return o;
}

void check_served(const HttpRequest& r, int status) {
  HttpResponse response;
  response.status = status;
  response.headers = r.headers;
  response.body = r.body;
  ResponseFraming framing;
  framing.omit_body = r.method == "HEAD";
  framing.close = !r.keep_alive;
  framing.keep_alive_header = r.version_minor == 0 && r.keep_alive;
  std::string head;
  append_response_head(response, framing, head);
  // Request heads may fill the request limit, and a response head adds a little to them.
  if (head.size() >= ResponseParser::kMaxHeaderBytes) return;
  const std::string wire = serialize_response(response, framing);
  ResponseParser reader;
  reader.reset(framing.omit_body);
  size_t used = 0;
  FUZZ_CHECK(reader.parse(wire.data(), wire.size(), used) == ResponseParser::Result::kDone);
  FUZZ_CHECK(used == wire.size());
  FUZZ_CHECK(reader.status() == (status >= 200 && status <= 599 ? status : 500));
  FUZZ_CHECK(reader.keep_alive() == !framing.close);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  uint64_t rng = data[0];
  const uint8_t options = data[1];
  const std::string_view stream(reinterpret_cast<const char*>(data) + 2, size - 2);
  HttpLimits limits;
  if (options & 1) {
    limits.max_header_bytes = 256;
    limits.max_body_bytes = 64;
    limits.max_headers = 4;
  }
  limits.require_host = (options & 2) == 0;

  const Outcome whole = run(stream, limits, [] { return size_t{0}; });
  // SplitMix64 steps: slices of 1 to 16 bytes.
  const Outcome split = run(stream, limits, [&rng] {
    uint64_t z = (rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return size_t((z ^ (z >> 31)) % 16 + 1);
  });
  FUZZ_CHECK(whole.requests.size() == split.requests.size());
  for (size_t i = 0; i < whole.requests.size(); ++i) {
    FUZZ_CHECK(same(whole.requests[i], split.requests[i]));
  }
  FUZZ_CHECK(whole.error_status == split.error_status && whole.error == split.error);
  FUZZ_CHECK(whole.pending == split.pending);

  for (size_t i = 0; i < whole.requests.size(); ++i) {
    check_served(whole.requests[i], 100 + int((options >> 2) * 7 + i * 97) % 520);
  }
  return 0;
}
