// Shared helpers of the HTTP server's tests: a blocking client and a handler that parks requests
// for the test to answer.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "core/http_server.hpp"

namespace stoker::test {

using namespace std::chrono_literals;

struct Reply {
  int status = -1;  // -1: the connection closed (or timed out) before a response
  std::string head;
  std::string body;
  bool has(std::string_view header_line) const { return head.find(header_line) != npos; }
  static constexpr size_t npos = std::string::npos;
};

// A blocking client with a receive timeout, so a broken server fails tests instead of hanging them.
class Client {
 public:
  explicit Client(uint16_t port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    timeval tv{10, 0};
    setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  }
  ~Client() { ::close(fd_); }
  bool connected() const { return connected_; }

  void send(std::string_view data) {
    while (!data.empty()) {
      const ssize_t n = ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
      if (n <= 0) return;
      data.remove_prefix(size_t(n));
    }
  }

  Reply read(bool head_request = false) {
    Reply r;
    size_t end;
    while ((end = buf_.find("\r\n\r\n")) == std::string::npos) {
      if (!fill()) return r;
    }
    r.head = buf_.substr(0, end + 4);
    buf_.erase(0, end + 4);
    r.status = std::stoi(r.head.substr(9, 3));
    const size_t cl = r.head.find("Content-Length: ");
    const size_t length =
        cl == std::string::npos || head_request ? 0 : std::stoul(r.head.substr(cl + 16));
    while (buf_.size() < length) {
      if (!fill()) return Reply{};
    }
    r.body = buf_.substr(0, length);
    buf_.erase(0, length);
    return r;
  }

  // The bytes up to and including the next `marker` ("" if the connection ends first).
  std::string read_until(std::string_view marker) {
    size_t at;
    while ((at = buf_.find(marker)) == std::string::npos) {
      if (!fill()) return "";
    }
    std::string out = buf_.substr(0, at + marker.size());
    buf_.erase(0, at + marker.size());
    return out;
  }

  // Everything until the server closes the connection.
  std::string read_to_end() {
    while (fill()) {
    }
    return std::exchange(buf_, {});
  }

  // True once the server has closed the connection (EOF or reset) with nothing left unread.
  bool closed() {
    char c;
    const ssize_t n = ::recv(fd_, &c, 1, 0);
    return buf_.empty() && (n == 0 || (n < 0 && errno == ECONNRESET));
  }

  Reply request(const std::string& raw, bool head_request = false) {
    send(raw);
    return read(head_request);
  }

 private:
  bool fill() {
    char chunk[65536];
    const ssize_t n = ::recv(fd_, chunk, sizeof chunk, 0);
    if (n <= 0) return false;
    buf_.append(chunk, size_t(n));
    return true;
  }

  int fd_ = -1;
  bool connected_ = false;
  std::string buf_;
};

inline std::string post(const std::string& path, const std::string& body,
                        const std::string& extra = "") {
  return "POST " + path + " HTTP/1.1\r\nHost: t\r\n" + extra +
         "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
}

inline HttpResponse text(std::string body, int status = 200) {
  HttpResponse r;
  r.status = status;
  r.headers.push_back({"Content-Type", "text/plain"});
  r.body = std::move(body);
  return r;
}

// Requests the handler parked for the test to answer, and the tokens reported abandoned.
struct Parked {
  std::mutex mutex;
  std::condition_variable cv;
  std::deque<std::pair<uint64_t, HttpRequest>> requests;
  std::vector<uint64_t> abandoned;

  HttpServer::Handler handler() {
    return [this](uint64_t token, HttpRequest&& r) {
      std::lock_guard<std::mutex> lock(mutex);
      requests.emplace_back(token, std::move(r));
      cv.notify_all();
    };
  }
  HttpServer::Abandon abandon() {
    return [this](uint64_t token) {
      std::lock_guard<std::mutex> lock(mutex);
      abandoned.push_back(token);
      cv.notify_all();
    };
  }
  // Waits for the next parked request; token 0 on timeout.
  std::pair<uint64_t, HttpRequest> next() {
    std::unique_lock<std::mutex> lock(mutex);
    if (!cv.wait_for(lock, 10s, [&] { return !requests.empty(); })) return {};
    auto r = std::move(requests.front());
    requests.pop_front();
    return r;
  }
  bool wait_abandoned(size_t n) {
    std::unique_lock<std::mutex> lock(mutex);
    return cv.wait_for(lock, 10s, [&] { return abandoned.size() >= n; });
  }
};

template <class F>
bool eventually(F f) {
  for (int i = 0; i < 1000 && !f(); ++i) std::this_thread::sleep_for(10ms);
  return f();
}

inline HttpServerConfig config(size_t io_threads = 1) {
  HttpServerConfig c;
  c.io_threads = io_threads;
  return c;
}

// A started server whose handler parks every request; with `abandons`, the tokens of requests
// whose clients left are recorded in `parked` too. Tests bind both: auto& [parked, server] = s.
struct ParkedServer {
  explicit ParkedServer(HttpServerConfig cfg = config(), bool abandons = false)
      : server(std::move(cfg), parked.handler(),
               abandons ? parked.abandon() : HttpServer::Abandon{}) {
    server.start();
  }
  Parked parked;
  HttpServer server;
};

// Sends `request` from `c` and waits for the server to park it: its token, 0 on timeout.
inline uint64_t ask(Parked& parked, Client& c, const std::string& request) {
  c.send(request);
  return parked.next().first;
}

}  // namespace stoker::test
