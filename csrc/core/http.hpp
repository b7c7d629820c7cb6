// HTTP/1.1 messages over plain byte buffers: an incremental request parser that takes bytes in any
// split (one at a time or many requests at once) and stops at the end of each request, and the
// response serializer. No sockets here, so every framing rule is testable byte by byte.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace stoker {

struct HttpHeader {
  std::string name;  // lower-cased by the parser
  std::string value;
};

struct HttpLimits {
  size_t max_header_bytes = 64 * 1024;  // request line + headers
  size_t max_body_bytes = 64 * 1024 * 1024;
  size_t max_headers = 100;
  // RFC 9112 makes Host mandatory in HTTP/1.1; requests without exactly one are answered 400.
  bool require_host = true;
};

struct HttpRequest {
  std::string method;  // as sent, e.g. "POST"
  std::string path;    // target before '?', not percent-decoded
  std::string query;   // after '?', empty when none
  int version_minor = 1;
  std::vector<HttpHeader> headers;
  std::string body;  // whole body (Content-Length, or de-chunked Transfer-Encoding: chunked)
  bool keep_alive = true;

  // First header with this (lower-case) name, or nullptr.
  const std::string* header(std::string_view lower_name) const;
};

struct HttpResponse {
  int status = 200;
  // The serializer adds Content-Length, Date (unless given) and Connection; Content-Length,
  // Transfer-Encoding and Connection given here are not sent (Connection: close is honoured).
  std::vector<HttpHeader> headers;
  std::string body;
};

// The standard reason phrase for `status`, or "" for a code without one.
const char* http_reason(int status);

// {"error": "<message>"} with Content-Type: application/json.
HttpResponse http_error_response(int status, std::string_view message);

// True when the response carries a Connection header with the "close" option.
bool response_wants_close(const HttpResponse& response);

struct ResponseFraming {
  bool omit_body = false;          // HEAD: the body's Content-Length, but no body bytes
  bool close = false;              // the connection closes after this response
  bool keep_alive_header = false;  // an HTTP/1.0 client asked to keep the connection
  // The body follows in pieces of unknown total length: Transfer-Encoding: chunked (HTTP/1.1
  // clients) or, with neither header, bytes until the connection closes (HTTP/1.0).
  bool streamed = false;
  bool chunked = false;
};

// Appends the status line and header section. A status outside 200..599 becomes 500; headers whose
// name or value could split the response are dropped. 204 and 304 carry no Content-Length.
void append_response_head(const HttpResponse& response, const ResponseFraming& framing,
                          std::string& out);

// One piece of a chunked body: size line, bytes, CRLF. Empty bytes append nothing, since an empty
// chunk would end the body.
void append_chunk(std::string_view bytes, std::string& out);
inline constexpr std::string_view kLastChunk = "0\r\n\r\n";

// Head and body (unless omitted) in one string.
std::string serialize_response(const HttpResponse& response, const ResponseFraming& framing = {});

class HttpParser {
 public:
  explicit HttpParser(HttpLimits limits = {});

  // Consumes bytes of the current request and returns how many; it stops right after the request's
  // last byte, so bytes of a pipelined next request are left to the caller. Consumes nothing once
  // complete() or failed() until take() or reset().
  size_t feed(std::string_view data);

  bool complete() const { return state_ == State::kComplete; }
  bool failed() const { return state_ == State::kError; }
  // The request line and headers are parsed: request() shows them while the body arrives.
  bool head_done() const { return state_ != State::kHead && state_ != State::kError; }
  // Some bytes of a request arrived (it may be incomplete or complete).
  bool started() const { return state_ != State::kHead || !head_.empty(); }
  // True once per request, right after a head with Expect: 100-continue whose body is still due.
  bool take_continue();
  // After failed(): the status to answer (400, 413, 417, 431, 501, 505) and why.
  int error_status() const { return error_status_; }
  const std::string& error() const { return error_; }

  const HttpRequest& request() const { return request_; }
  // Moves the complete request out and gets ready for the next one.
  HttpRequest take();
  void reset();

 private:
  enum class State : uint8_t {
    kHead,
    kBody,       // Content-Length bytes
    kChunkSize,  // a chunk-size line
    kChunkData,
    kChunkEnd,  // the CRLF after chunk data
    kTrailer,   // trailer lines up to the blank line
    kComplete,
    kError,
  };

  size_t feed_head(std::string_view data);
  size_t feed_chunked(std::string_view data);
  void parse_head(std::string_view head);
  bool parse_request_line(std::string_view line);
  bool parse_header_line(std::string_view line);
  bool apply_headers();
  bool on_chunk_size_line();
  void append_body(std::string_view bytes);
  bool fail(int status, const char* message);

  HttpLimits limits_;
  State state_ = State::kHead;
  HttpRequest request_;
  std::string head_;             // a head split across feeds, kept until its blank line arrives
  std::string line_;             // a chunk-size or trailer line split across feeds
  uint64_t remaining_ = 0;       // body or chunk bytes still due
  uint64_t content_length_ = 0;  // the declared body size, bounding its buffer's growth
  size_t trailer_bytes_ = 0;
  uint8_t crlf_seen_ = 0;  // bytes of the CRLF after chunk data seen so far
  bool continue_ = false;
  int error_status_ = 0;
  std::string error_;
};

}  // namespace stoker
