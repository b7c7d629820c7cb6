#include "core/gateway.hpp"

#include <algorithm>
#include <charconv>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <utility>

namespace stoker {

namespace {

constexpr int kMinStatus = 100;
constexpr int kStatuses = 500;  // 100..599
constexpr size_t kStages = kGatewayStages.size();
constexpr uint64_t kElementMask = (uint64_t{1} << Gateway::kElementBits) - 1;

bool parse_count(const std::string& text, size_t& out) {
  if (text.empty() || text.size() > 18) return false;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
  return ec == std::errc() && end == text.data() + text.size();
}

// Constant time in the length of the expected token, so a comparison leaks nothing about it.
bool same_secret(std::string_view given, std::string_view expected) {
  unsigned char diff = given.size() == expected.size() ? 0 : 1;
  for (size_t i = 0; i < expected.size(); ++i) {
    const unsigned char g = i < given.size() ? static_cast<unsigned char>(given[i]) : 0;
    diff |= g ^ static_cast<unsigned char>(expected[i]);
  }
  return diff == 0;
}

bool authorized(const HttpRequest& request, const std::string& token) {
  if (token.empty()) return true;
  const std::string* header = request.header("authorization");
  if (header == nullptr || header->size() < 7) return false;
  std::string scheme = header->substr(0, 7);
  std::transform(scheme.begin(), scheme.end(), scheme.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return scheme == "bearer " && same_secret(std::string_view(*header).substr(7), token);
}

void append_ms(std::string& out, double us) {
  char buffer[32];
  const auto [end, ec] =
      std::to_chars(buffer, buffer + sizeof(buffer), us / 1000.0, std::chars_format::fixed, 3);
  if (ec == std::errc()) out.append(buffer, end);
}

}  // namespace

struct Gateway::Pending {
  uint64_t token = 0;
  uint64_t sequence = 0;
  size_t model = 0;
  size_t feeder = 0;    // index into the model's feeders
  HttpRequest request;  // owns the body the feeder's requests point into
  KsImageRequest parsed;
  size_t elements = 0;
  size_t remaining = 0;  // elements not yet settled (answered, failed or cancelled)
  bool responded = false;
  int error_status = 0;
  std::string error;
  std::vector<std::string> rows;  // per output: elements × row bytes
  std::vector<RowOutput> layout;  // per output: name, datatype, row shape (no data)
  std::array<double, kStages> stages{};
};

Gateway::Gateway(GatewayConfig config, std::vector<GatewayModel> models)
    : config_(std::move(config)), models_(std::move(models)) {
  for (const GatewayModel& m : models_) {
    if (m.feeders.empty()) throw std::invalid_argument("model " + m.name + " has no feeder");
    for (const auto& f : m.feeders) {
      if (!f) throw std::invalid_argument("model " + m.name + " has a null feeder");
    }
    routed_.push_back(std::make_unique<std::atomic<uint64_t>[]>(m.feeders.size()));
  }
  if (config_.max_images_per_request == 0 ||
      config_.max_images_per_request > (size_t{1} << kElementBits)) {
    throw std::invalid_argument("max_images_per_request must be in 1..65536");
  }
  counts_ = std::make_unique<std::atomic<uint64_t>[]>(models_.size() * kStatuses);
  server_ = std::make_unique<HttpServer>(
      config_.http, [this](uint64_t token, HttpRequest&& r) { on_request(token, std::move(r)); },
      [this](uint64_t token) { on_abandon(token); });
}

Gateway::~Gateway() { shutdown(std::chrono::milliseconds(0)); }

void Gateway::shutdown(std::chrono::milliseconds drain) {
  server_->shutdown(drain);
  {
    std::lock_guard<std::mutex> lock(forward_mutex_);
    closed_ = true;
  }
  forward_cv_.notify_all();
}

void Gateway::count(size_t model, int status) {
  if (model >= models_.size() || status < kMinStatus || status >= kMinStatus + kStatuses) return;
  counts_[model * kStatuses + size_t(status - kMinStatus)].fetch_add(1, std::memory_order_relaxed);
}

std::vector<std::pair<int, uint64_t>> Gateway::counts(size_t m) const {
  std::vector<std::pair<int, uint64_t>> out;
  if (m >= models_.size()) return out;
  for (int s = 0; s < kStatuses; ++s) {
    const uint64_t n = counts_[m * kStatuses + size_t(s)].load(std::memory_order_relaxed);
    if (n != 0) out.emplace_back(s + kMinStatus, n);
  }
  return out;
}

size_t Gateway::pending() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return pending_.size();
}

void Gateway::on_request(uint64_t token, HttpRequest&& request) {
  constexpr std::string_view prefix = "/v2/models/";
  constexpr std::string_view suffix = "/infer";
  const std::string_view path = request.path;
  if (request.method == "POST" && path.size() > prefix.size() + suffix.size() &&
      path.starts_with(prefix) && path.ends_with(suffix)) {
    const std::string_view name =
        path.substr(prefix.size(), path.size() - prefix.size() - suffix.size());
    for (size_t m = 0; m < models_.size(); ++m) {
      if (models_[m].name == name) {
        if (try_infer(token, m, request)) return;
        break;
      }
    }
  }
  forward(token, std::move(request));
}

void Gateway::forward(uint64_t token, HttpRequest&& request) {
  forwarded_.fetch_add(1, std::memory_order_relaxed);
  {
    std::lock_guard<std::mutex> lock(forward_mutex_);
    if (!closed_) {
      forward_queue_.emplace_back(token, std::move(request));
      forward_cv_.notify_one();
      return;
    }
  }
  HttpResponse response;
  response.status = 503;
  response.headers.push_back({"content-type", "application/json"});
  response.headers.push_back({"retry-after", "1"});
  response.body = encode_error("the server is shutting down");
  server_->respond(token, std::move(response));
}

bool Gateway::next_forwarded(std::vector<std::pair<uint64_t, HttpRequest>>& out,
                             std::vector<uint64_t>& abandoned) {
  std::unique_lock<std::mutex> lock(forward_mutex_);
  forward_cv_.wait(
      lock, [this] { return closed_ || !forward_queue_.empty() || !forward_abandoned_.empty(); });
  if (forward_queue_.empty() && forward_abandoned_.empty()) return false;
  out.assign(std::make_move_iterator(forward_queue_.begin()),
             std::make_move_iterator(forward_queue_.end()));
  forward_queue_.clear();
  abandoned.swap(forward_abandoned_);
  forward_abandoned_.clear();
  return true;
}

void Gateway::reply_error(uint64_t token, size_t model, int status, std::string_view message,
                          bool retry_after) {
  HttpResponse response;
  response.status = status;
  response.headers.push_back({"content-type", "application/json"});
  if (retry_after) response.headers.push_back({"retry-after", "1"});
  if (status == 401) response.headers.push_back({"www-authenticate", "Bearer"});
  response.body = encode_error(message);
  count(model, status);
  server_->respond(token, std::move(response));
}

// Returns false to leave the request to the Python application, untouched.
bool Gateway::try_infer(uint64_t token, size_t model, HttpRequest& request) {
  if (!authorized(request, config_.token)) {
    reply_error(token, model, 401, "missing or wrong bearer token");
    return true;
  }
  const std::string* header = request.header("inference-header-content-length");
  size_t header_length = 0;
  if (header == nullptr || !parse_count(*header, header_length)) return false;
  auto p = std::make_unique<Pending>();
  if (parse_image_infer(request.body, header_length, p->parsed) != KsParse::kOk) return false;
  const size_t n = p->parsed.elements.size();
  if (n == 0 || n > config_.max_images_per_request) return false;
  const GatewayModel& m = models_[model];
  for (const KsRequestedOutput& o : p->parsed.outputs) {
    if (std::find(m.outputs.begin(), m.outputs.end(), o.name) == m.outputs.end()) return false;
  }

  p->token = token;
  p->model = model;
  p->feeder = pick_feeder(model);
  p->elements = n;
  p->remaining = n;
  p->request = std::move(request);
  Pending& req = *p;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    req.sequence = next_sequence_++;
    by_token_.emplace(token, req.sequence);
    pending_.emplace(req.sequence, std::move(p));
  }
  const SteadyClock::time_point deadline = config_.timeout.count() > 0
                                               ? SteadyClock::now() + config_.timeout
                                               : SteadyClock::time_point::max();
  const auto* body = reinterpret_cast<const uint8_t*>(req.request.body.data());
  const uint64_t base = kIdBit | (req.sequence << kElementBits);
  // Once its last element is queued, an engine may answer and free the request at any moment:
  // nothing of it is read after that submit.
  const size_t f = req.feeder;
  Feeder& feeder = *m.feeders[f];
  std::atomic<uint64_t>& routed = routed_[model][f];
  for (size_t i = 0; i < n; ++i) {
    const KsSpan span = req.parsed.elements[i];
    Admission a;
    try {
      a = feeder.submit(base | i, Priority::kNormal, deadline, body + span.offset, span.size);
    } catch (...) {
      // Settled before the error travels on: otherwise the request would wait forever for
      // elements that were never queued.
      withdraw(req, token, model, base, i);
      throw;
    }
    if (a == Admission::kAccepted) {
      routed.fetch_add(1, std::memory_order_relaxed);
      continue;
    }
    withdraw(req, token, model, base, i);
    reply_error(token, model, 503, a == Admission::kFull ? "queue full" : "the engine is closed",
                true);
    return true;
  }
  return true;
}

// Elements [0, queued) of the request are in the feeder, the rest never will be: those still
// waiting are cancelled, and the request is released once the others come back from their batch.
void Gateway::withdraw(Pending& req, uint64_t token, size_t model, uint64_t base, size_t queued) {
  Finished done;
  size_t withdrawn = req.elements - queued;
  Feeder& feeder = *models_[model].feeders[req.feeder];
  for (size_t j = 0; j < queued; ++j) withdrawn += feeder.cancel(base | j) ? 1 : 0;
  std::lock_guard<std::mutex> lock(mutex_);
  req.responded = true;
  by_token_.erase(token);
  req.remaining -= withdrawn;
  if (req.remaining == 0) {
    auto it = pending_.find(req.sequence);
    done.push_back(std::move(it->second));
    pending_.erase(it);
  }
}

void Gateway::on_abandon(uint64_t token) {
  Finished done;
  std::vector<uint64_t> ids;
  std::shared_ptr<Feeder> feeder;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto t = by_token_.find(token);
    if (t != by_token_.end()) {
      Pending& p = *pending_.at(t->second);
      by_token_.erase(t);
      p.responded = true;
      count(p.model, 499);
      feeder = models_[p.model].feeders[p.feeder];
      const uint64_t base = kIdBit | (p.sequence << kElementBits);
      for (size_t i = 0; i < p.elements; ++i) ids.push_back(base | i);
    }
  }
  if (!feeder) return forward_abandon(token);
  // The client went away: its queued elements never run. Cancelling one already handed out
  // fails, and that element is settled when its batch is answered.
  for (uint64_t id : ids) {
    if (!feeder->cancel(id)) continue;
    std::lock_guard<std::mutex> lock(mutex_);
    settle(id, done, [](Pending&, size_t) {});
  }
}

void Gateway::forward_abandon(uint64_t token) {
  // Not one of the gateway's own requests, so a forwarded one (or one answered an instant ago,
  // which the application no longer knows and ignores): the application is told, so that it
  // stops working for a client that has gone.
  {
    std::lock_guard<std::mutex> lock(forward_mutex_);
    if (closed_) return;
    forward_abandoned_.push_back(token);
  }
  forward_cv_.notify_one();
}

size_t Gateway::pick_feeder(size_t model) {
  const auto& feeders = models_[model].feeders;
  const size_t n = feeders.size();
  if (n == 1) return 0;
  const size_t start = turn_.fetch_add(1, std::memory_order_relaxed) % n;
  size_t best = start;
  size_t fewest = feeders[start]->waiting();
  for (size_t k = 1; k < n && fewest > 0; ++k) {
    const size_t f = (start + k) % n;
    const size_t waiting = feeders[f]->waiting();
    if (waiting < fewest) {
      best = f;
      fewest = waiting;
    }
  }
  return best;
}

uint64_t Gateway::routed(size_t m, size_t f) const {
  if (m >= models_.size() || f >= models_[m].feeders.size()) {
    throw std::out_of_range("no such model or feeder");
  }
  return routed_[m][f].load(std::memory_order_relaxed);
}

std::span<const uint8_t> Gateway::payload(uint64_t id) const {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = pending_.find((id & ~kIdBit) >> kElementBits);
  const size_t element = id & kElementMask;
  if (it == pending_.end() || element >= it->second->elements) return {};
  const Pending& p = *it->second;
  const KsSpan span = p.parsed.elements[element];
  return {reinterpret_cast<const uint8_t*>(p.request.body.data()) + span.offset, span.size};
}

void Gateway::settle(uint64_t id, Finished& done,
                     const std::function<void(Pending&, size_t)>& apply) {
  if (!owns(id)) return;
  auto it = pending_.find((id & ~kIdBit) >> kElementBits);
  const size_t element = id & kElementMask;
  if (it == pending_.end() || element >= it->second->elements) return;
  Pending& p = *it->second;
  if (!p.responded) apply(p, element);
  if (--p.remaining > 0) return;
  if (!p.responded) by_token_.erase(p.token);
  done.push_back(std::move(it->second));
  pending_.erase(it);
}

void Gateway::answer(std::span<const uint64_t> ids, const std::vector<RowOutput>& outputs,
                     const RowTimings& timings, const std::vector<RowError>& errors) {
  if (timings.queue_us.size() != ids.size() || timings.total_us.size() != ids.size()) {
    throw std::invalid_argument("timings must hold one queue and one total time per id");
  }
  std::vector<const RowError*> error_of(ids.size(), nullptr);
  for (const RowError& e : errors) {
    if (e.row < ids.size()) error_of[e.row] = &e;
  }
  Finished done;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (size_t r = 0; r < ids.size(); ++r) {
      settle(ids[r], done, [&](Pending& p, size_t element) {
        if (const RowError* e = error_of[r]; e != nullptr) {
          if (p.error_status == 0) {
            p.error_status = e->status;
            p.error = e->message;
          }
          return;
        }
        if (p.rows.empty()) {
          p.rows.resize(outputs.size());
          p.layout = outputs;
          for (size_t o = 0; o < outputs.size(); ++o) {
            p.layout[o].data = nullptr;
            p.rows[o].resize(outputs[o].row_bytes * p.elements);
          }
        }
        for (size_t o = 0; o < outputs.size() && o < p.rows.size(); ++o) {
          const size_t bytes = std::min(outputs[o].row_bytes, p.layout[o].row_bytes);
          std::memcpy(p.rows[o].data() + element * p.layout[o].row_bytes,
                      outputs[o].data + r * outputs[o].row_bytes, bytes);
        }
        // A request of several images waited as long as its slowest image in each stage.
        p.stages[0] = std::max(p.stages[0], double(timings.queue_us[r]));
        for (size_t s = 0; s < timings.shared.size(); ++s) {
          p.stages[s + 1] = std::max(p.stages[s + 1], timings.shared[s]);
        }
        p.stages[kStages - 1] = std::max(p.stages[kStages - 1], double(timings.total_us[r]));
      });
    }
  }
  for (auto& p : done) {
    if (!p->responded) finish(*p);
  }
}

void Gateway::fail(std::span<const uint64_t> ids, int status, const std::string& message) {
  Finished done;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (uint64_t id : ids) {
      settle(id, done, [&](Pending& p, size_t) {
        if (p.error_status == 0) {
          p.error_status = status;
          p.error = message;
        }
      });
    }
  }
  for (auto& p : done) {
    if (!p->responded) finish(*p);
  }
}

void Gateway::finish(Pending& p) {
  if (p.error_status != 0) {
    reply_error(p.token, p.model, p.error_status, p.error, p.error_status == 503);
    return;
  }
  std::vector<KsOutputTensor> tensors;
  auto add = [&](size_t o, bool binary) {
    const RowOutput& l = p.layout[o];
    KsOutputTensor t;
    t.name = l.name;
    t.datatype = l.datatype;
    t.shape.push_back(int64_t(p.elements));
    t.shape.insert(t.shape.end(), l.row_shape.begin(), l.row_shape.end());
    t.data = p.rows[o].data();
    t.nbytes = p.rows[o].size();
    t.binary = binary;
    tensors.push_back(std::move(t));
  };
  if (p.parsed.outputs.empty()) {
    for (size_t o = 0; o < p.layout.size(); ++o) add(o, p.parsed.binary_data_output);
  } else {
    for (const KsRequestedOutput& want : p.parsed.outputs) {
      for (size_t o = 0; o < p.layout.size(); ++o) {
        if (p.layout[o].name == want.name) add(o, want.binary);
      }
    }
  }
  HttpResponse response;
  size_t header_length = 0;
  try {
    response.body =
        encode_infer_response(models_[p.model].name, "1", p.parsed.id, tensors, header_length);
  } catch (const std::exception& e) {
    reply_error(p.token, p.model, 500, std::string("internal error: ") + e.what());
    return;
  }
  if (header_length > 0) {
    response.headers.push_back({"content-type", "application/octet-stream"});
    response.headers.push_back({"inference-header-content-length", std::to_string(header_length)});
  } else {
    response.headers.push_back({"content-type", "application/json"});
  }
  std::string timing;
  timing.reserve(160);
  for (size_t s = 0; s < kStages; ++s) {
    if (s > 0) timing += ", ";
    timing += kGatewayStages[s];
    timing += ";dur=";
    append_ms(timing, p.stages[s]);
  }
  response.headers.push_back({"server-timing", std::move(timing)});
  count(p.model, 200);
  server_->respond(p.token, std::move(response));
}

}  // namespace stoker
