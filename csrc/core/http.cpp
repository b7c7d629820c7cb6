// The request side of core/http.hpp: the incremental parser.
#include "core/http.hpp"

#include <algorithm>
#include <charconv>
#include <cstring>
#include <utility>

#include "core/http_syntax.hpp"

namespace stoker {
namespace {

using http_syntax::all_of_class;
using http_syntax::each_element;
using http_syntax::iequals;
using http_syntax::kFieldValue;
using http_syntax::kTarget;
using http_syntax::kToken;
using http_syntax::lower;
using http_syntax::trim;

constexpr size_t kMaxChunkLine = 4096;  // a chunk size with extensions; clients send a few bytes

// The end of the header section (just past its blank line), searching from `from`, or npos.
size_t find_head_end(std::string_view s, size_t from) {
  while (from < s.size()) {
    const void* p = std::memchr(s.data() + from, '\n', s.size() - from);
    if (p == nullptr) return std::string_view::npos;
    const size_t i = size_t(static_cast<const char*>(p) - s.data());
    if (i + 1 < s.size() && s[i + 1] == '\n') return i + 2;
    if (i + 2 < s.size() && s[i + 1] == '\r' && s[i + 2] == '\n') return i + 3;
    from = i + 1;
  }
  return std::string_view::npos;
}

}  // namespace

const std::string* HttpRequest::header(std::string_view lower_name) const {
  for (const HttpHeader& h : headers) {
    if (h.name == lower_name) return &h.value;
  }
  return nullptr;
}

HttpParser::HttpParser(HttpLimits limits) : limits_(limits) {}

void HttpParser::reset() {
  state_ = State::kHead;
  request_ = HttpRequest{};
  head_.clear();
  line_.clear();
  remaining_ = content_length_ = 0;
  trailer_bytes_ = 0;
  crlf_seen_ = 0;
  continue_ = false;
  error_status_ = 0;
  error_.clear();
}

HttpRequest HttpParser::take() {
  HttpRequest r = std::move(request_);
  reset();
  return r;
}

bool HttpParser::take_continue() {
  const bool c = continue_;
  continue_ = false;
  return c;
}

bool HttpParser::fail(int status, const char* message) {
  state_ = State::kError;
  error_status_ = status;
  error_ = message;
  continue_ = false;
  return false;
}

size_t HttpParser::feed(std::string_view data) {
  size_t used = 0;
  if (state_ == State::kHead) used = feed_head(data);
  while (used < data.size()) {
    if (state_ == State::kBody) {
      const size_t take = size_t(std::min<uint64_t>(remaining_, data.size() - used));
      append_body(data.substr(used, take));
      used += take;
      remaining_ -= take;
      if (remaining_ == 0) state_ = State::kComplete;
    } else if (state_ >= State::kChunkSize && state_ <= State::kTrailer) {
      used += feed_chunked(data.substr(used));
    } else {
      break;
    }
  }
  return used;
}

size_t HttpParser::feed_head(std::string_view data) {
  const size_t max = limits_.max_header_bytes;
  size_t skipped = 0;
  if (head_.empty()) {
    // Empty lines before a request line are ignored (RFC 9112 2.2), e.g. a CRLF after a body.
    while (skipped < data.size() && (data[skipped] == '\r' || data[skipped] == '\n')) ++skipped;
    data.remove_prefix(skipped);
    if (data.empty()) return skipped;
    // Common case: the whole head is in this buffer, parse it in place without copying.
    const size_t end = find_head_end(data, 0);
    if (end != std::string_view::npos && end <= max) {
      parse_head(data.substr(0, end));
      return skipped + end;
    }
    if (end != std::string_view::npos || data.size() >= max) {
      fail(431, "request header section too large");
      return skipped + data.size();
    }
    head_.assign(data);
    return skipped + data.size();
  }
  const size_t old = head_.size();
  const size_t take = std::min(data.size(), max - old);
  head_.append(data.substr(0, take));
  // A terminator may straddle the previous feed: rescan its last two bytes.
  const size_t end = find_head_end(head_, old >= 2 ? old - 2 : 0);
  if (end == std::string_view::npos) {
    if (head_.size() >= max) fail(431, "request header section too large");
    return take;
  }
  head_.resize(end);
  parse_head(head_);
  head_.clear();
  return end - old;
}

void HttpParser::parse_head(std::string_view head) {
  bool first = true;
  size_t pos = 0;
  while (pos < head.size()) {
    const size_t nl = head.find('\n', pos);
    if (nl == pos || head[nl - 1] != '\r') {
      fail(400, "header line not terminated by CRLF");
      return;
    }
    const std::string_view line = head.substr(pos, nl - 1 - pos);
    pos = nl + 1;
    if (line.empty()) break;
    if (!(first ? parse_request_line(line) : parse_header_line(line))) return;
    first = false;
  }
  if (!apply_headers()) return;
  continue_ = continue_ && state_ != State::kComplete;
}

bool HttpParser::parse_request_line(std::string_view line) {
  const size_t sp1 = line.find(' ');
  if (sp1 == std::string_view::npos || sp1 == 0) return fail(400, "malformed request line");
  const std::string_view method = line.substr(0, sp1);
  const size_t sp2 = line.find(' ', sp1 + 1);
  if (sp2 == std::string_view::npos || sp2 == sp1 + 1) return fail(400, "malformed request line");
  std::string_view target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  const std::string_view v = line.substr(sp2 + 1);
  if (!all_of_class(method, kToken)) return fail(400, "malformed request method");
  if (!all_of_class(target, kTarget)) return fail(400, "malformed request target");
  if (v.size() != 8 || v.substr(0, 5) != "HTTP/" || v[5] < '0' || v[5] > '9' || v[6] != '.' ||
      v[7] < '0' || v[7] > '9') {
    return fail(400, "malformed HTTP version");
  }
  if (v[5] != '1') return fail(505, "only HTTP/1.x is supported");
  request_.version_minor = v[7] == '0' ? 0 : 1;  // a later 1.x minor is served as 1.1
  request_.method.assign(method);

  if (target == "*") {
    if (method != "OPTIONS") return fail(400, "asterisk target outside OPTIONS");
  } else if (target[0] != '/') {
    // absolute-form: scheme "://" authority [path-abempty] ["?" query]
    const size_t scheme_end = target.find("://");
    if (scheme_end == std::string_view::npos || scheme_end == 0 ||
        !all_of_class(target.substr(0, scheme_end), kToken)) {
      return fail(400, "malformed request target");
    }
    const size_t path_start = target.find_first_of("/?", scheme_end + 3);
    target = path_start == std::string_view::npos ? "/" : target.substr(path_start);
  }
  const size_t q = target.find('?');
  request_.path.assign(target.substr(0, q));
  if (request_.path.empty()) request_.path.assign(1, '/');
  if (q != std::string_view::npos) request_.query.assign(target.substr(q + 1));
  return true;
}

bool HttpParser::parse_header_line(std::string_view line) {
  if (line[0] == ' ' || line[0] == '\t') return fail(400, "obsolete header line folding");
  const size_t colon = line.find(':');
  if (colon == std::string_view::npos || colon == 0) return fail(400, "malformed header line");
  const std::string_view name = line.substr(0, colon);
  const std::string_view value = trim(line.substr(colon + 1));
  if (!all_of_class(name, kToken)) return fail(400, "malformed header name");
  if (!all_of_class(value, kFieldValue)) return fail(400, "invalid character in header value");
  if (request_.headers.size() >= limits_.max_headers) return fail(431, "too many headers");
  HttpHeader& h = request_.headers.emplace_back();
  h.name.resize(name.size());
  for (size_t i = 0; i < name.size(); ++i) h.name[i] = lower(name[i]);
  h.value.assign(value);
  return true;
}

bool HttpParser::apply_headers() {
  bool has_length = false, has_te = false, chunked = false, unknown_coding = false;
  bool chunked_not_last = false, close = false, keep_alive = false, expect = false;
  uint64_t length = 0;
  int hosts = 0;
  for (const HttpHeader& h : request_.headers) {
    if (h.name == "content-length") {
      // A list of equal values is one length (RFC 9112 6.3); anything else is ambiguous.
      bool any = false;
      const bool ok = each_element(h.value, [&](std::string_view t) {
        uint64_t v = 0;
        const auto r = std::from_chars(t.data(), t.data() + t.size(), v);
        if (r.ec != std::errc() || r.ptr != t.data() + t.size()) return false;
        if (has_length && v != length) return false;
        has_length = any = true;
        length = v;
        return true;
      });
      if (!ok || !any) return fail(400, "invalid Content-Length");
    } else if (h.name == "transfer-encoding") {
      has_te = true;
      each_element(h.value, [&](std::string_view t) {
        if (chunked) chunked_not_last = true;
        if (iequals(t, "chunked")) {
          chunked = true;
        } else {
          unknown_coding = true;
        }
        return true;
      });
    } else if (h.name == "connection") {
      each_element(h.value, [&](std::string_view t) {
        close = close || iequals(t, "close");
        keep_alive = keep_alive || iequals(t, "keep-alive");
        return true;
      });
    } else if (h.name == "expect") {
      if (!iequals(h.value, "100-continue")) return fail(417, "unsupported expectation");
      expect = true;
    } else if (h.name == "host") {
      ++hosts;
    }
  }
  const bool http11 = request_.version_minor == 1;
  if (has_te && has_length) return fail(400, "both Content-Length and Transfer-Encoding");
  if (has_te && !http11) return fail(400, "Transfer-Encoding in an HTTP/1.0 request");
  if (unknown_coding) return fail(501, "unsupported transfer coding");
  if (has_te && (!chunked || chunked_not_last)) return fail(400, "invalid Transfer-Encoding");
  if (limits_.require_host && http11 && hosts != 1) {
    return fail(400, hosts == 0 ? "missing Host header" : "multiple Host headers");
  }
  if (has_length && length > limits_.max_body_bytes) return fail(413, "request body too large");
  request_.keep_alive = http11 ? !close : keep_alive && !close;
  continue_ = expect && http11;
  if (chunked) {
    state_ = State::kChunkSize;
  } else if (length > 0) {
    state_ = State::kBody;
    remaining_ = content_length_ = length;
  } else {
    state_ = State::kComplete;
  }
  return true;
}

void HttpParser::append_body(std::string_view bytes) {
  std::string& body = request_.body;
  // Grow towards the declared length as bytes arrive rather than reserving it up front: a claim
  // costs nothing until the bytes are actually sent.
  const size_t need = body.size() + bytes.size();
  if (content_length_ > 0 && need > body.capacity()) {
    body.reserve(size_t(std::min<uint64_t>(content_length_, std::max(need, 2 * body.capacity()))));
  }
  body.append(bytes);
}

size_t HttpParser::feed_chunked(std::string_view data) {
  size_t used = 0;
  while (used < data.size() && state_ != State::kComplete && state_ != State::kError) {
    if (state_ == State::kChunkData) {
      const size_t take = size_t(std::min<uint64_t>(remaining_, data.size() - used));
      append_body(data.substr(used, take));
      used += take;
      remaining_ -= take;
      if (remaining_ == 0) state_ = State::kChunkEnd;
    } else if (state_ == State::kChunkEnd) {
      const char c = data[used++];
      if (c != (crlf_seen_ == 0 ? '\r' : '\n')) return fail(400, "chunk data not followed by CRLF");
      if (++crlf_seen_ == 2) {
        crlf_seen_ = 0;
        state_ = State::kChunkSize;
      }
    } else {
      const size_t nl = data.find('\n', used);
      const size_t end = nl == std::string_view::npos ? data.size() : nl + 1;
      const bool size_line = state_ == State::kChunkSize;
      const size_t limit = size_line ? kMaxChunkLine : limits_.max_header_bytes - trailer_bytes_;
      if (line_.size() + (end - used) > limit) {
        return size_line ? fail(400, "chunk size line too long")
                         : fail(431, "request trailer section too large");
      }
      line_.append(data.substr(used, end - used));
      used = end;
      if (nl == std::string_view::npos) break;
      if (line_.size() < 2 || line_[line_.size() - 2] != '\r') {
        return fail(400, "chunk line not terminated by CRLF");
      }
      if (size_line) {
        if (!on_chunk_size_line()) return used;
      } else if (line_.size() == 2) {
        state_ = State::kComplete;
      } else {
        trailer_bytes_ += line_.size();  // trailer fields are not used: bounded, then dropped
      }
      line_.clear();
    }
  }
  return used;
}

bool HttpParser::on_chunk_size_line() {
  std::string_view s(line_.data(), line_.size() - 2);
  size_t digits = 0;
  uint64_t size = 0;
  for (; digits < s.size(); ++digits) {
    const char c = lower(s[digits]);
    const int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
    if (d < 0) break;
    // Checked before the step, so that no number of digits can wrap the size around.
    if (size > (limits_.max_body_bytes - uint64_t(d)) / 16 ||
        uint64_t(d) > limits_.max_body_bytes) {
      return fail(413, "request body too large");
    }
    size = size * 16 + uint64_t(d);
  }
  if (digits == 0) return fail(400, "malformed chunk size");
  // Chunk extensions carry nothing stoker uses: checked for stray control bytes, then ignored.
  const std::string_view ext = trim(s.substr(digits));
  if (!ext.empty() && (ext[0] != ';' || !all_of_class(ext, kFieldValue))) {
    return fail(400, "malformed chunk extension");
  }
  if (size > limits_.max_body_bytes - request_.body.size()) {
    return fail(413, "request body too large");
  }
  remaining_ = size;
  state_ = size == 0 ? State::kTrailer : State::kChunkData;
  return true;
}

}  // namespace stoker
