// Private to the http_server*.cpp files: the I/O thread behind HttpServer. http_server_loop.cpp
// runs the epoll loop, accepting, timers and the hand-over of responses from other threads;
// http_server_conn.cpp reads, parses and writes one connection.
#pragma once

#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <system_error>
#include <unordered_map>
#include <utility>
#include <vector>

#include "core/http.hpp"
#include "core/http_server.hpp"

namespace stoker {

// One I/O thread: its own epoll set, connections and response inbox. Everything but post() and
// stop() runs on that thread only.
class HttpServer::Loop {
 public:
  using Clock = std::chrono::steady_clock;

  Loop(HttpServer& server, size_t index);
  ~Loop();
  // What another thread hands the loop for a request in flight.
  enum class Part : uint8_t { kWhole, kStart, kPiece, kLast };
  struct Post {
    uint64_t token;
    Part part;
    HttpResponse response;  // a piece's bytes are its body
  };

  void run();
  void post(Post&& post);
  void post_many(std::vector<Post>&& posts);
  void stop(Clock::time_point deadline);
  // Responses can no longer be delivered (the loop never ran or has finished).
  void retire();

  static std::system_error sys_error(const std::string& what) {
    return std::system_error(errno, std::generic_category(), what);
  }

 private:
  static constexpr size_t kReadChunk = 64 * 1024;

  struct Conn {
    int fd = -1;
    uint64_t id = 0;
    HttpParser parser;
    std::string in;  // received but not yet parsed: pipelined bytes while a request is in flight
    size_t in_off = 0;
    std::vector<std::string> out;  // queued response bytes, written in order
    size_t out_index = 0, out_off = 0;
    uint64_t token = 0;  // the request in flight, 0 when none
    bool head = false, keep_alive = true, http10 = false;
    bool streaming = false;    // the request in flight's response is started, its body follows
    bool chunked = false;      // ... in chunked transfer coding
    bool omit_pieces = false;  // ... but carries no body (HEAD, 204, 304)
    size_t unsent = 0;         // bytes in `out` not yet written
    bool closing = false;      // no further requests: close once the last response is written
    bool lingering = false;    // write side shut; draining what the client still sends
    uint32_t events = 0;       // as registered with epoll
    // When the client last saw progress: accepted, answered, or response bytes sent. Bytes it
    // sends do not count, so a request trickled in slowly cannot hold the connection.
    Clock::time_point active;
  };
  using Posted = std::vector<Post>;

  // http_server_loop.cpp
  void accept_all();
  void set_listening(bool on);
  void deliver_posted();
  void begin_drain();
  bool drained() const;
  void expire_timers();
  void expire_idle();
  int timeout_ms() const;

  // http_server_conn.cpp; those returning bool return false once they closed the connection.
  void on_event(uint64_t id, uint32_t events);
  bool on_readable(Conn& c);
  bool receive(Conn& c, std::string_view bytes);
  bool advance(Conn& c);
  bool after_feed(Conn& c);
  void dispatch(Conn& c);
  void deliver(Post&& post);
  void answer(Conn& c, HttpResponse&& response);
  void start(Conn& c, HttpResponse&& response);
  void continue_stream(Conn& c, Post&& post);
  bool finish(Conn& c);
  void queue(Conn& c, std::string&& bytes);
  bool reject(Conn& c, int status, std::string_view message);
  bool flush(Conn& c);
  bool start_linger(Conn& c);
  void update_events(Conn& c);
  void close_conn(Conn& c);

  HttpServer& server_;
  const size_t index_;
  const size_t cap_;  // unparsed bytes buffered per connection before reading pauses
  const Clock::duration idle_timeout_;  // zero: never
  int epfd_ = -1;
  int wakefd_ = -1;
  bool listening_ = false;
  std::unordered_map<uint64_t, std::unique_ptr<Conn>> conns_;
  std::unordered_map<uint64_t, uint64_t> inflight_;  // token -> connection id
  uint64_t next_conn_ = 2;                           // 0 and 1 name the listener and the wakeup
  uint64_t next_seq_ = 1;
  std::unique_ptr<char[]> scratch_;
  Posted local_;  // responses posted from this thread (by the handler itself)
  // Read once per wakeup and again before the timers: idle clocks only need this coarse a time.
  Clock::time_point now_;
  std::deque<std::pair<Clock::time_point, uint64_t>> lingering_;
  Clock::time_point accept_retry_ = Clock::time_point::max();
  Clock::time_point next_idle_scan_ = Clock::time_point::max();
  bool draining_ = false;
  Clock::time_point drain_deadline_;

  static thread_local Loop* current;  // the loop running on this thread, if any

  std::mutex mutex_;  // guards the members below, shared with other threads
  Posted inbox_;
  bool retired_ = false;
  bool stop_requested_ = false;
  Clock::time_point stop_deadline_;
};

}  // namespace stoker
