// The load generator's response parser. It is strict where leniency could hide a broken server
// (status line, Content-Length, chunk framing) and lenient where servers differ harmlessly (bare LF
// line ends, unknown headers, Server-Timing parameters other than `dur`).
#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>

#include "core/loadgen.hpp"

namespace stoker {
namespace {

// Longest chunk-size line accepted (hex size plus extensions).
constexpr size_t kMaxChunkLine = 1024;
// Bodies this large are not something a benchmark target sends; the cap keeps arithmetic safe.
constexpr uint64_t kMaxBodyBytes = uint64_t{1} << 50;

char lower(char c) { return (c >= 'A' && c <= 'Z') ? char(c - 'A' + 'a') : c; }

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (lower(a[i]) != lower(b[i])) return false;
  return true;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// The line starting at `data` without its "\n" or "\r\n"; npos-sized `next` when incomplete.
std::string_view line_at(const char* data, size_t size, size_t& next) {
  const void* nl = std::memchr(data, '\n', size);
  if (nl == nullptr) {
    next = std::string_view::npos;
    return {};
  }
  size_t len = size_t(static_cast<const char*>(nl) - data);
  next = len + 1;
  if (len > 0 && data[len - 1] == '\r') --len;
  return {data, len};
}

bool is_digit(char c) { return c >= '0' && c <= '9'; }

bool parse_decimal(std::string_view s, uint64_t& out) {
  if (s.empty() || s.size() > 15) return false;
  out = 0;
  for (char c : s) {
    if (!is_digit(c)) return false;
    out = out * 10 + uint64_t(c - '0');
  }
  return true;
}

// Splits `s` at `sep` characters outside double-quoted strings, calling `f` on each trimmed part.
template <typename F>
void split_unquoted(std::string_view s, char sep, F f) {
  bool quoted = false;
  size_t begin = 0;
  for (size_t i = 0; i <= s.size(); ++i) {
    if (i < s.size()) {
      if (s[i] == '"') quoted = !quoted;
      if (s[i] == '\\' && quoted) {
        ++i;
        continue;
      }
      if (quoted || s[i] != sep) continue;
    }
    if (!f(trim(s.substr(begin, i - begin)))) return;
    begin = i + 1;
  }
}

}  // namespace

void ResponseParser::reset(bool head_request) {
  state_ = State::kHeaders;
  head_ = head_request;
  status_ = 0;
  keep_alive_ = true;
  chunked_ = false;
  has_length_ = false;
  remaining_ = 0;
  timings_.clear();
  names_.clear();
}

ResponseParser::Result ResponseParser::parse(const char* data, size_t size, size_t& used) {
  used = 0;
  for (;;) {
    const char* p = data + used;
    const size_t n = size - used;
    switch (state_) {
      case State::kHeaders: {
        size_t taken = 0;
        const Result r = parse_headers(p, n, taken);
        if (r != Result::kDone) return r;
        used += taken;
        break;
      }
      case State::kBody: {
        const uint64_t take = std::min<uint64_t>(remaining_, n);
        used += size_t(take);
        remaining_ -= take;
        if (remaining_ > 0) return Result::kNeedMore;
        return Result::kDone;
      }
      case State::kChunkSize: {
        size_t next;
        std::string_view line = line_at(p, std::min(n, kMaxChunkLine), next);
        if (next == std::string_view::npos) {
          return n >= kMaxChunkLine ? Result::kError : Result::kNeedMore;
        }
        line = trim(line.substr(0, line.find(';')));
        if (line.empty() || line.size() > 12) return Result::kError;
        uint64_t chunk = 0;
        const auto [end, ec] = std::from_chars(line.data(), line.data() + line.size(), chunk, 16);
        if (ec != std::errc() || end != line.data() + line.size()) return Result::kError;
        used += next;
        remaining_ = chunk;
        state_ = chunk == 0 ? State::kTrailers : State::kChunkData;
        break;
      }
      case State::kChunkData: {
        const uint64_t take = std::min<uint64_t>(remaining_, n);
        used += size_t(take);
        remaining_ -= take;
        if (remaining_ > 0) return Result::kNeedMore;
        state_ = State::kChunkEnd;
        break;
      }
      case State::kChunkEnd:
      case State::kTrailers: {
        size_t next;
        const std::string_view line = line_at(p, std::min(n, kMaxChunkLine), next);
        if (next == std::string_view::npos) {
          return n >= kMaxChunkLine ? Result::kError : Result::kNeedMore;
        }
        used += next;
        if (state_ == State::kChunkEnd) {
          if (!line.empty()) return Result::kError;
          state_ = State::kChunkSize;
        } else if (line.empty()) {
          return Result::kDone;
        } else {
          // Trailer fields are skipped, but not without bound.
          remaining_ += next;
          if (remaining_ > kMaxHeaderBytes) return Result::kError;
        }
        break;
      }
      case State::kUntilEof:
        used = size;
        return Result::kNeedMore;
    }
  }
}

ResponseParser::Result ResponseParser::finish_eof() {
  return state_ == State::kUntilEof ? Result::kDone : Result::kError;
}

ResponseParser::Result ResponseParser::parse_headers(const char* data, size_t size, size_t& used) {
  // The block must be complete before anything in it takes effect.
  const size_t limit = std::min(size, kMaxHeaderBytes);
  size_t end = std::string_view::npos;
  for (size_t i = 0; i < limit;) {
    const void* nl = std::memchr(data + i, '\n', limit - i);
    if (nl == nullptr) break;
    const size_t at = size_t(static_cast<const char*>(nl) - data);
    if (at + 1 < limit && data[at + 1] == '\n') {
      end = at + 2;
      break;
    }
    if (at + 2 < limit && data[at + 1] == '\r' && data[at + 2] == '\n') {
      end = at + 3;
      break;
    }
    i = at + 1;
  }
  if (end == std::string_view::npos) {
    return size >= kMaxHeaderBytes ? Result::kError : Result::kNeedMore;
  }

  size_t next;
  std::string_view line = line_at(data, end, next);
  // "HTTP/1.x NNN", then a reason phrase after a space or nothing.
  if (line.size() < 12 || line.substr(0, 7) != "HTTP/1." || !is_digit(line[7]) || line[8] != ' ' ||
      !is_digit(line[9]) || !is_digit(line[10]) || !is_digit(line[11]) ||
      (line.size() > 12 && line[12] != ' ')) {
    return Result::kError;
  }
  const int status = (line[9] - '0') * 100 + (line[10] - '0') * 10 + (line[11] - '0');
  if (status < 100 || status > 599 || status == 101) return Result::kError;
  status_ = status;
  keep_alive_ = line[7] != '0';
  chunked_ = false;
  has_length_ = false;
  bool has_encoding = false;
  timings_.clear();
  names_.clear();
  // Timing names are views into names_, so it must never reallocate while they live.
  names_.reserve(kMaxTimings * kMaxTimingName);

  for (size_t pos = next; pos < end;) {
    line = line_at(data + pos, end - pos, next);
    pos += next;
    if (line.empty()) break;
    if (line.front() == ' ' || line.front() == '\t') return Result::kError;  // obsolete folding
    const size_t colon = line.find(':');
    if (colon == 0 || colon == std::string_view::npos) return Result::kError;
    const std::string_view name = line.substr(0, colon);
    if (name.find_first_of(" \t") != std::string_view::npos) return Result::kError;
    const std::string_view value = trim(line.substr(colon + 1));
    if (iequals(name, "transfer-encoding")) {
      has_encoding = true;
      std::string_view last;
      split_unquoted(value, ',', [&](std::string_view part) {
        if (!part.empty()) last = part;
        return true;
      });
      chunked_ = iequals(last, "chunked");
    } else if (!header(name, value)) {
      return Result::kError;
    }
  }
  used = end;

  if (status < 200) {
    // An interim response: the final one follows on the same connection.
    keep_alive_ = true;
    return Result::kDone;
  }
  if (head_ || status == 204 || status == 304) {
    state_ = State::kBody;
    remaining_ = 0;
  } else if (chunked_) {
    state_ = State::kChunkSize;
    remaining_ = 0;
  } else if (has_encoding || !has_length_) {
    state_ = State::kUntilEof;
    keep_alive_ = false;
  } else {
    state_ = State::kBody;
  }
  return Result::kDone;
}

bool ResponseParser::header(std::string_view name, std::string_view value) {
  if (iequals(name, "content-length")) {
    uint64_t length;
    if (!parse_decimal(value, length) || length > kMaxBodyBytes) return false;
    if (has_length_ && length != remaining_) return false;
    has_length_ = true;
    remaining_ = length;
  } else if (iequals(name, "connection")) {
    split_unquoted(value, ',', [&](std::string_view token) {
      if (iequals(token, "close")) keep_alive_ = false;
      if (iequals(token, "keep-alive")) keep_alive_ = true;
      return true;
    });
  } else if (iequals(name, "server-timing")) {
    server_timing(value);
  }
  return true;
}

void ResponseParser::server_timing(std::string_view value) {
  split_unquoted(value, ',', [&](std::string_view entry) {
    if (timings_.size() >= kMaxTimings) return false;
    std::string_view metric;
    bool first = true;
    bool has_dur = false;
    double ms = 0;
    split_unquoted(entry, ';', [&](std::string_view part) {
      if (first) {
        first = false;
        metric = part;
        return true;
      }
      const size_t eq = part.find('=');
      if (eq == std::string_view::npos || !iequals(trim(part.substr(0, eq)), "dur")) return true;
      std::string_view number = trim(part.substr(eq + 1));
      if (number.size() >= 2 && number.front() == '"' && number.back() == '"') {
        number = number.substr(1, number.size() - 2);
      }
      const auto [end, ec] = std::from_chars(number.data(), number.data() + number.size(), ms);
      has_dur = ec == std::errc() && end == number.data() + number.size();
      return true;
    });
    // 2^40 µs is the histogram's top bucket; anything past it is noise from a broken server.
    if (!has_dur || !std::isfinite(ms) || ms < 0 || ms > 1e12) return true;
    if (metric.empty() || metric.size() > kMaxTimingName) return true;
    if (metric.find_first_of(" \t\"") != std::string_view::npos) return true;
    const size_t offset = names_.size();
    names_.append(metric);
    timings_.push_back({std::string_view(names_).substr(offset), uint64_t(std::llround(ms * 1e3))});
    return true;
  });
}

}  // namespace stoker
