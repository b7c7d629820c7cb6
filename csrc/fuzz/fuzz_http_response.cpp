// The load generator's response parser. Input: a seed for the chunking, a byte whose bits mark
// which responses answer HEAD requests, then the bytes a server sent on one connection. They are
// fed as the load generator feeds them (unconsumed bytes are passed again with the next read),
// whole and in random chunks, and both must give the same responses and end the same way. The
// bytes held back for the next read stay bounded whatever the server sends.
#include <string>
#include <string_view>
#include <vector>

#include "check.hpp"
#include "core/loadgen.hpp"

namespace {

using namespace stoker;

struct Response {
  int status = 0;
  bool keep_alive = false;
  std::vector<std::pair<std::string, uint64_t>> timings;
  bool operator==(const Response&) const = default;
};

struct Outcome {
  std::vector<Response> responses;
  bool error = false;
  bool eof_done = false;  // the last response was delimited by the connection's close
  bool operator==(const Outcome&) const = default;
};

Response record(const ResponseParser& p) {
  Response r;
  r.status = p.status();
  r.keep_alive = p.keep_alive();
  FUZZ_CHECK(r.status >= 200 && r.status <= 599);
  FUZZ_CHECK(p.timings().size() <= ResponseParser::kMaxTimings);
  for (const ResponseParser::Timing& t : p.timings()) {
    FUZZ_CHECK(!t.name.empty() && t.name.size() <= ResponseParser::kMaxTimingName);
    FUZZ_CHECK(t.name.find_first_of(" \t\"") == std::string_view::npos);
    r.timings.emplace_back(std::string(t.name), t.us);
  }
  return r;
}

template <typename Chunker>
Outcome run(std::string_view stream, uint8_t head_bits, Chunker chunk) {
  ResponseParser parser;
  size_t index = 0;
  const auto head = [&] { return index < 8 && (head_bits >> index & 1) != 0; };
  parser.reset(head());
  Outcome o;
  std::string pending;
  size_t pos = 0;
  while (pos < stream.size()) {
    size_t n = chunk();
    if (n == 0 || n > stream.size() - pos) n = stream.size() - pos;
    pending.append(stream.substr(pos, n));
    pos += n;
    for (;;) {
      size_t used = 0;
      const ResponseParser::Result r = parser.parse(pending.data(), pending.size(), used);
      FUZZ_CHECK(used <= pending.size());
      pending.erase(0, used);
      if (r == ResponseParser::Result::kError) {
        o.error = true;
        return o;
      }
      if (r == ResponseParser::Result::kNeedMore) {
        // What waits for more bytes is part of one header block or chunk line.
        FUZZ_CHECK(pending.size() < ResponseParser::kMaxHeaderBytes);
        break;
      }
      o.responses.push_back(record(parser));
      ++index;
      parser.reset(head());
      if (pending.empty()) break;
    }
  }
  const ResponseParser::Result end = parser.finish_eof();
  FUZZ_CHECK(end != ResponseParser::Result::kNeedMore);
  if (end == ResponseParser::Result::kDone) {
    o.responses.push_back(record(parser));
    FUZZ_CHECK(!o.responses.back().keep_alive);
    o.eof_done = true;
  }
  return o;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  uint64_t rng = data[0];
  const uint8_t head_bits = data[1];
  const std::string_view stream(reinterpret_cast<const char*>(data) + 2, size - 2);
  const Outcome whole = run(stream, head_bits, [] { return size_t{0}; });
  // SplitMix64 steps: slices of 1 to 16 bytes.
  const Outcome split = run(stream, head_bits, [&rng] {
    uint64_t z = (rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return size_t((z ^ (z >> 31)) % 16 + 1);
  });
  FUZZ_CHECK(whole == split);
  return 0;
}
