#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>

#include "core/http_server_loop.hpp"

namespace stoker {
namespace {

constexpr int kReadsPerEvent = 4;  // then other connections get a turn (epoll is level-triggered)
constexpr size_t kInlineBody = 4096;  // smaller bodies are copied behind the head: one iovec less
constexpr auto kLinger = std::chrono::seconds(1);
constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";

}  // namespace

void HttpServer::Loop::on_event(uint64_t id, uint32_t events) {
  const auto it = conns_.find(id);
  if (it == conns_.end()) return;
  Conn& c = *it->second;
  // Both directions are finished (reset, or the client closed after a lingering FIN).
  if (events & (EPOLLERR | EPOLLHUP)) return close_conn(c);
  if ((events & EPOLLOUT) && (!flush(c) || !advance(c))) return;
  if ((events & EPOLLIN) && !on_readable(c)) return;
  update_events(c);
}

bool HttpServer::Loop::on_readable(Conn& c) {
  for (int round = 0; round < kReadsPerEvent; ++round) {
    if (!c.lingering && c.in.size() - c.in_off >= cap_) break;
    const ssize_t n = ::recv(c.fd, scratch_.get(), kReadChunk, 0);
    if (n > 0) {
      if (!c.lingering && !receive(c, std::string_view(scratch_.get(), size_t(n)))) return false;
      if (size_t(n) < kReadChunk) break;
    } else if (n == 0) {
      // The client went away; a request in flight is abandoned (and its queued work cancelled).
      // A half-close looks the same from here, so a client must keep its side open until it has
      // read its answer, as HTTP/1.1 clients do.
      close_conn(c);
      return false;
    } else if (errno == EINTR) {
      continue;
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
      break;
    } else {
      close_conn(c);
      return false;
    }
  }
  return true;
}

bool HttpServer::Loop::receive(Conn& c, std::string_view bytes) {
  if (c.in_off == c.in.size()) {
    // Nothing buffered: feed the parser straight from the read buffer, keep only the leftover.
    while (!bytes.empty() && c.token == 0 && !c.closing && c.out_index == c.out.size()) {
      bytes.remove_prefix(c.parser.feed(bytes));
      if (!after_feed(c)) return false;
    }
    if (bytes.empty()) return true;
  }
  c.in.append(bytes);
  return advance(c);
}

bool HttpServer::Loop::advance(Conn& c) {
  while (c.in_off < c.in.size() && c.token == 0 && !c.closing && c.out_index == c.out.size()) {
    c.in_off += c.parser.feed(std::string_view(c.in).substr(c.in_off));
    if (!after_feed(c)) return false;
  }
  if (c.in_off == c.in.size()) {
    c.in.clear();
    c.in_off = 0;
  }
  return true;
}

bool HttpServer::Loop::after_feed(Conn& c) {
  HttpParser& p = c.parser;
  if (p.failed()) {
    server_.protocol_errors_.fetch_add(1, std::memory_order_relaxed);
    return reject(c, p.error_status(), p.error());
  }
  if (p.take_continue()) {
    queue(c, std::string(kContinue));
    if (!flush(c)) return false;
  }
  if (p.complete()) dispatch(c);
  return true;
}

void HttpServer::Loop::dispatch(Conn& c) {
  HttpRequest request = c.parser.take();
  const uint64_t token = next_seq_++ * server_.loops_.size() + index_;
  c.token = token;
  c.head = request.method == "HEAD";
  c.keep_alive = request.keep_alive;
  c.http10 = request.version_minor == 0;
  inflight_.emplace(token, c.id);
  server_.requests_.fetch_add(1, std::memory_order_relaxed);
  try {
    server_.handler_(token, std::move(request));
  } catch (...) {
    // Answered like any response, so a respond() the handler made before throwing still wins.
    local_.push_back({token, Part::kWhole, http_error_response(500, "request handler failed")});
  }
}

void HttpServer::Loop::deliver(Post&& post) {
  const auto fit = inflight_.find(post.token);
  if (fit == inflight_.end()) return;
  const auto it = conns_.find(fit->second);
  if (it == conns_.end()) {
    inflight_.erase(fit);
    return;
  }
  Conn& c = *it->second;
  // A response that does not fit the request's state (answered twice, a piece of a response
  // never started) is ignored, as a token already answered is.
  const bool piece = post.part == Part::kPiece || post.part == Part::kLast;
  if (piece != c.streaming) return;
  if (post.part == Part::kWhole) return answer(c, std::move(post.response));
  if (post.part == Part::kStart) return start(c, std::move(post.response));
  continue_stream(c, std::move(post));
}

void HttpServer::Loop::queue(Conn& c, std::string&& bytes) {
  c.unsent += bytes.size();
  c.out.push_back(std::move(bytes));
}

void HttpServer::Loop::answer(Conn& c, HttpResponse&& response) {
  const bool close = c.closing || !c.keep_alive || draining_ || response_wants_close(response);
  ResponseFraming framing;
  framing.omit_body = c.head;
  framing.close = close;
  framing.keep_alive_header = c.http10 && !close;
  std::string head;
  append_response_head(response, framing, head);
  const bool body =
      !c.head && !response.body.empty() && response.status != 204 && response.status != 304;
  if (body && response.body.size() <= kInlineBody) head += response.body;
  queue(c, std::move(head));
  if (body && response.body.size() > kInlineBody) queue(c, std::move(response.body));
  c.closing = close;
  if (finish(c)) update_events(c);
}

void HttpServer::Loop::start(Conn& c, HttpResponse&& response) {
  // Without chunked coding only the connection's end can tell an HTTP/1.0 client the body ended.
  const bool close =
      c.closing || !c.keep_alive || draining_ || c.http10 || response_wants_close(response);
  ResponseFraming framing;
  framing.close = close;
  framing.streamed = true;
  framing.chunked = !c.http10;
  std::string head;
  append_response_head(response, framing, head);
  c.streaming = true;
  c.chunked = framing.chunked;
  c.omit_pieces = c.head || response.status == 204 || response.status == 304;
  c.closing = close;
  c.active = now_;
  queue(c, std::move(head));
  continue_stream(c, {0, Part::kPiece, std::move(response)});
}

void HttpServer::Loop::continue_stream(Conn& c, Post&& post) {
  std::string& bytes = post.response.body;
  if (!c.omit_pieces && !bytes.empty()) {
    if (!c.chunked) {
      queue(c, std::move(bytes));
    } else if (bytes.size() <= kInlineBody) {
      std::string framed;
      framed.reserve(bytes.size() + 24);
      append_chunk(bytes, framed);
      queue(c, std::move(framed));
    } else {
      char hex[24];
      const int n = std::snprintf(hex, sizeof hex, "%zx\r\n", bytes.size());
      queue(c, std::string(hex, size_t(n)));
      queue(c, std::move(bytes));
      queue(c, std::string("\r\n"));
    }
  }
  if (post.part == Part::kLast) {
    if (c.chunked && !c.omit_pieces) queue(c, std::string(kLastChunk));
    c.streaming = false;
    if (finish(c)) update_events(c);
    return;
  }
  if (c.unsent > server_.config_.max_unsent_bytes) return close_conn(c);
  if (flush(c)) update_events(c);
}

bool HttpServer::Loop::finish(Conn& c) {
  inflight_.erase(c.token);
  c.token = 0;
  c.active = now_;
  return flush(c) && advance(c);
}

bool HttpServer::Loop::reject(Conn& c, int status, std::string_view message) {
  ResponseFraming framing;
  framing.close = true;
  queue(c, serialize_response(http_error_response(status, message), framing));
  c.closing = true;
  return flush(c);
}

bool HttpServer::Loop::flush(Conn& c) {
  while (c.out_index < c.out.size()) {
    iovec iov[16];
    size_t k = 0;
    for (size_t i = c.out_index; i < c.out.size() && k < 16; ++i, ++k) {
      const size_t skip = i == c.out_index ? c.out_off : 0;
      iov[k].iov_base = c.out[i].data() + skip;
      iov[k].iov_len = c.out[i].size() - skip;
    }
    msghdr msg{};
    msg.msg_iov = iov;
    msg.msg_iovlen = k;
    ssize_t n = ::sendmsg(c.fd, &msg, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;  // EPOLLOUT resumes it
      close_conn(c);
      return false;
    }
    c.active = now_;
    c.unsent -= size_t(n);
    while (n > 0) {
      const size_t left = c.out[c.out_index].size() - c.out_off;
      if (size_t(n) < left) {
        c.out_off += size_t(n);
        break;
      }
      n -= ssize_t(left);
      c.out_off = 0;
      ++c.out_index;
    }
  }
  if (c.out_index < c.out.size()) return true;
  c.out.clear();
  c.out_index = c.out_off = 0;
  if (c.closing && c.token == 0 && !c.lingering) return start_linger(c);
  return true;
}

bool HttpServer::Loop::start_linger(Conn& c) {
  // Closing with unread bytes would reset the connection and could destroy the response before
  // the client reads it: send FIN, then discard what still arrives until the client closes.
  if (draining_ || ::shutdown(c.fd, SHUT_WR) != 0) {
    close_conn(c);
    return false;
  }
  c.lingering = true;
  c.in.clear();
  c.in_off = 0;
  lingering_.emplace_back(Clock::now() + kLinger, c.id);
  return true;
}

void HttpServer::Loop::update_events(Conn& c) {
  const bool read = c.lingering || c.in.size() - c.in_off < cap_;
  const uint32_t want = (read ? EPOLLIN : 0u) | (c.out_index < c.out.size() ? EPOLLOUT : 0u);
  if (want == c.events) return;
  epoll_event ev{};
  ev.events = want;
  ev.data.u64 = c.id;
  epoll_ctl(epfd_, EPOLL_CTL_MOD, c.fd, &ev);
  c.events = want;
}

void HttpServer::Loop::close_conn(Conn& c) {
  const uint64_t token = c.token;
  ::close(c.fd);
  conns_.erase(c.id);  // destroys c
  server_.connections_.fetch_sub(1);
  if (token == 0) return;
  inflight_.erase(token);
  if (!server_.abandon_) return;
  try {
    server_.abandon_(token);
  } catch (...) {
    // The connection is gone either way; a failing callback must not take the I/O thread down.
  }
}

}  // namespace stoker
