// The response side of core/http.hpp: reason phrases, error bodies and the serializer.
#include <charconv>
#include <cstdio>
#include <ctime>
#include <utility>

#include "core/http.hpp"
#include "core/http_syntax.hpp"

namespace stoker {
namespace {

using http_syntax::all_of_class;
using http_syntax::each_element;
using http_syntax::iequals;
using http_syntax::kFieldValue;
using http_syntax::kToken;

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
  const bool bodiless = status == 204 || status == 304;
  if (!bodiless && !framing.streamed) {
    out += "Content-Length: ";
    append_number(out, response.body.size());
    out += "\r\n";
  } else if (!bodiless && framing.chunked) {
    out += "Transfer-Encoding: chunked\r\n";
  }
  if (framing.close) {
    out += "Connection: close\r\n";
  } else if (framing.keep_alive_header) {
    out += "Connection: keep-alive\r\n";
  }
  out += "\r\n";
}

void append_chunk(std::string_view bytes, std::string& out) {
  if (bytes.empty()) return;
  static constexpr char kHex[] = "0123456789abcdef";
  char digits[16];
  size_t n = 0;
  for (size_t v = bytes.size(); v != 0; v >>= 4) digits[n++] = kHex[v & 15];
  while (n != 0) out += digits[--n];
  out += "\r\n";
  out += bytes;
  out += "\r\n";
}

std::string serialize_response(const HttpResponse& response, const ResponseFraming& framing) {
  std::string out;
  append_response_head(response, framing, out);
  const bool bodiless = response.status == 204 || response.status == 304;
  if (!framing.omit_body && !bodiless) out += response.body;
  return out;
}

}  // namespace stoker
