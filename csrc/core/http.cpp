#include "core/http.hpp"

#include <algorithm>
#include <array>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <utility>

namespace stoker {
namespace {

constexpr size_t kMaxChunkLine = 4096;  // a chunk size with extensions; clients send a few bytes

enum CharClass : uint8_t { kToken = 1, kFieldValue = 2, kTarget = 4 };

constexpr std::array<uint8_t, 256> make_char_classes() {
  std::array<uint8_t, 256> t{};
  for (int c = 0; c < 256; ++c) {
    const bool alnum = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
    bool token = alnum;
    for (char s : std::string_view("!#$%&'*+-.^_`|~")) token = token || c == s;
    const bool visible = (c > 0x20 && c < 0x7f) || c >= 0x80;  // obs-text allowed
    t[c] = uint8_t((token ? kToken : 0) | (visible || c == ' ' || c == '\t' ? kFieldValue : 0) |
                   (visible ? kTarget : 0));
  }
  return t;
}
constexpr std::array<uint8_t, 256> kChars = make_char_classes();

bool all_of_class(std::string_view s, uint8_t cls) {
  for (char c : s) {
    if ((kChars[uint8_t(c)] & cls) == 0) return false;
  }
  return true;
}

char lower(char c) { return c >= 'A' && c <= 'Z' ? char(c - 'A' + 'a') : c; }

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (lower(a[i]) != lower(b[i])) return false;
  }
  return true;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// Calls f on each trimmed, non-empty element of a comma-separated list; stops when f returns false.
template <class F>
bool each_element(std::string_view list, F f) {
  while (true) {
    const size_t comma = list.find(',');
    const std::string_view item = trim(list.substr(0, comma));
    if (!item.empty() && !f(item)) return false;
    if (comma == std::string_view::npos) return true;
    list.remove_prefix(comma + 1);
  }
}

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

bool valid_response_header(const HttpHeader& h) {
  if (h.name.empty() || !all_of_class(h.name, kToken)) return false;
  return all_of_class(h.value, kFieldValue);
}

// A Date header for the current second, formatted once per second per thread: the day and month
// names are spelled out here because strftime would follow the process locale.
void append_date(std::string& out) {
  static constexpr const char* kDays[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
  static constexpr const char* kMonths[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                            "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  thread_local time_t cached_second = -1;
  thread_local char cached[64];
  const time_t now = time(nullptr);
  if (now != cached_second) {
    struct tm tm;
    gmtime_r(&now, &tm);
    snprintf(cached, sizeof cached, "Date: %s, %02d %s %04d %02d:%02d:%02d GMT\r\n",
             kDays[tm.tm_wday % 7], tm.tm_mday, kMonths[tm.tm_mon % 12], tm.tm_year + 1900,
             tm.tm_hour, tm.tm_min, tm.tm_sec);
    cached_second = now;
  }
  out += cached;
}

void append_number(std::string& out, uint64_t v) {
  char buf[24];
  const auto r = std::to_chars(buf, buf + sizeof buf, v);
  out.append(buf, r.ptr);
}

}  // namespace

const std::string* HttpRequest::header(std::string_view lower_name) const {
  for (const HttpHeader& h : headers) {
    if (h.name == lower_name) return &h.value;
  }
  return nullptr;
}

const char* http_reason(int status) {
  static constexpr std::pair<int, const char*> kReasons[] = {
      {100, "Continue"},
      {101, "Switching Protocols"},
      {200, "OK"},
      {201, "Created"},
      {202, "Accepted"},
      {204, "No Content"},
      {206, "Partial Content"},
      {301, "Moved Permanently"},
      {302, "Found"},
      {303, "See Other"},
      {304, "Not Modified"},
      {307, "Temporary Redirect"},
      {308, "Permanent Redirect"},
      {400, "Bad Request"},
      {401, "Unauthorized"},
      {403, "Forbidden"},
      {404, "Not Found"},
      {405, "Method Not Allowed"},
      {406, "Not Acceptable"},
      {408, "Request Timeout"},
      {409, "Conflict"},
      {410, "Gone"},
      {411, "Length Required"},
      {412, "Precondition Failed"},
      {413, "Content Too Large"},
      {414, "URI Too Long"},
      {415, "Unsupported Media Type"},
      {416, "Range Not Satisfiable"},
      {417, "Expectation Failed"},
      {421, "Misdirected Request"},
      {422, "Unprocessable Content"},
      {426, "Upgrade Required"},
      {428, "Precondition Required"},
      {429, "Too Many Requests"},
      {431, "Request Header Fields Too Large"},
      {499, "Client Closed Request"},
      {500, "Internal Server Error"},
      {501, "Not Implemented"},
      {502, "Bad Gateway"},
      {503, "Service Unavailable"},
      {504, "Gateway Timeout"},
      {505, "HTTP Version Not Supported"},
      {507, "Insufficient Storage"}};
  for (const auto& [code, reason] : kReasons) {
    if (code == status) return reason;
  }
  return "";
}

HttpResponse http_error_response(int status, std::string_view message) {
  HttpResponse r;
  r.status = status;
  r.headers.push_back({"Content-Type", "application/json"});
  r.body.reserve(message.size() + 16);
  r.body += "{\"error\": \"";
  for (char c : message) {
    if (c == '"' || c == '\\') {
      r.body += '\\';
      r.body += c;
    } else if (uint8_t(c) < 0x20) {
      char esc[8];
      snprintf(esc, sizeof esc, "\\u%04x", unsigned(uint8_t(c)));
      r.body += esc;
    } else {
      r.body += c;
    }
  }
  r.body += "\"}";
  return r;
}

bool response_wants_close(const HttpResponse& response) {
  for (const HttpHeader& h : response.headers) {
    if (!iequals(h.name, "connection")) continue;
    if (!each_element(h.value, [](std::string_view t) { return !iequals(t, "close"); })) {
      return true;
    }
  }
  return false;
}

void append_response_head(const HttpResponse& response, const ResponseFraming& framing,
                          std::string& out) {
  const int status = response.status >= 200 && response.status <= 599 ? response.status : 500;
  out += "HTTP/1.1 ";
  append_number(out, uint64_t(status));
  out += ' ';
  out += http_reason(status);
  out += "\r\n";
  bool has_date = false;
  for (const HttpHeader& h : response.headers) {
    if (!valid_response_header(h) || iequals(h.name, "content-length") ||
        iequals(h.name, "transfer-encoding") || iequals(h.name, "connection")) {
      continue;
    }
    has_date = has_date || iequals(h.name, "date");
    out += h.name;
    out += ": ";
    out += h.value;
    out += "\r\n";
  }
  if (!has_date) append_date(out);
  if (status != 204 && status != 304) {
    out += "Content-Length: ";
    append_number(out, response.body.size());
    out += "\r\n";
  }
  if (framing.close) {
    out += "Connection: close\r\n";
  } else if (framing.keep_alive_header) {
    out += "Connection: keep-alive\r\n";
  }
  out += "\r\n";
}

std::string serialize_response(const HttpResponse& response, const ResponseFraming& framing) {
  std::string out;
  append_response_head(response, framing, out);
  const bool bodiless = response.status == 204 || response.status == 304;
  if (!framing.omit_body && !bodiless) out += response.body;
  return out;
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
    size = size * 16 + uint64_t(d);
    if (size > limits_.max_body_bytes) return fail(413, "request body too large");
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
