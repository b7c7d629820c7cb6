#include "core/scheduler.hpp"

#include <algorithm>
#include <stdexcept>
#include <string>
#include <utility>

namespace stoker {

Scheduler::Scheduler(int64_t num_blocks, int64_t block_size, int64_t max_num_batched_tokens,
                     int64_t max_num_seqs)
    : blocks_(num_blocks, block_size),
      max_tokens_(max_num_batched_tokens),
      max_seqs_(max_num_seqs) {
  if (max_num_seqs <= 0) throw std::invalid_argument("max_num_seqs must be positive");
  if (max_num_batched_tokens < max_num_seqs) {
    throw std::invalid_argument("max_num_batched_tokens must be at least max_num_seqs");
  }
}

void Scheduler::check_idle(const char* what) const {
  if (!owed_.empty()) {
    throw std::logic_error(std::string(what) + " needs update() with the last step's tokens");
  }
}

void Scheduler::add(SeqId seq, std::vector<TokenId> prompt, SamplingParams params) {
  if (seqs_.count(seq) != 0) {
    throw std::invalid_argument("sequence " + std::to_string(seq) + " already exists");
  }
  if (prompt.empty()) throw std::invalid_argument("the prompt is empty");
  if (std::any_of(prompt.begin(), prompt.end(), [](TokenId t) { return t < 0; })) {
    throw std::invalid_argument("token ids must not be negative");
  }
  if (params.max_new_tokens < 1) throw std::invalid_argument("max_new_tokens must be positive");
  const int64_t capacity = blocks_.num_blocks() * blocks_.block_size();
  if (params.max_new_tokens - 1 > capacity - int64_t(prompt.size())) {
    throw std::invalid_argument("sequence " + std::to_string(seq) +
                                " needs more KV than the whole cache holds");
  }
  Seq s;
  s.prompt_len = prompt.size();
  s.tokens = std::move(prompt);
  s.params = std::move(params);
  seqs_.emplace(seq, std::move(s));
  waiting_.push_back(seq);
}

int64_t Scheduler::room(SeqId seq) const {
  const int64_t bs = blocks_.block_size();
  return int64_t(blocks_.block_table(seq).size()) * bs - blocks_.num_tokens(seq) +
         blocks_.num_free_blocks() * bs;
}

template <typename Fits>
bool Scheduler::make_room(SeqId seq, Fits fits, SchedulerStep& out) {
  while (!fits()) {
    auto victim = std::find_if(running_.rbegin(), running_.rend(),
                               [&](SeqId s) { return seqs_.at(s).scheduled_in != steps_; });
    const SeqId v = *victim;  // `seq` itself is unscheduled, so there is one
    blocks_.free(v);
    running_.erase(std::next(victim).base());
    Seq& s = seqs_.at(v);
    s.prefilling = true;
    s.unconfirmed = false;
    waiting_.push_front(v);
    out.preempted.push_back(v);
    if (v == seq) return false;
  }
  return true;
}

void Scheduler::propose(SeqId seq, std::vector<TokenId> draft) {
  check_idle("propose()");
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) throw std::out_of_range("unknown sequence " + std::to_string(seq));
  Seq& s = it->second;
  if (s.prefilling) {  // waiting sequences are prefilling too
    throw std::invalid_argument("sequence " + std::to_string(seq) + " is not decoding");
  }
  if (std::any_of(draft.begin(), draft.end(), [](TokenId t) { return t < 0; })) {
    throw std::invalid_argument("token ids must not be negative");
  }
  if (s.draft.empty()) proposed_.push_back(seq);
  s.draft = std::move(draft);
}

void Scheduler::emit(SeqId seq, Seq& s, int64_t from, int64_t to, SchedulerStep& out,
                     int32_t draft_len, int32_t pending) {
  // Every position in [from, to) got its slot from the block manager just before, so the block
  // table covers it; the slots are computed here rather than looked up one vector at a time.
  const std::vector<BlockId>& table = blocks_.block_table(seq);
  const int64_t bs = blocks_.block_size();
  const int64_t known = int64_t(s.tokens.size());
  for (int64_t p = from; p < to; ++p) {
    TokenId token = 0;  // a pending token (scheduled ahead) is the only one past the known
    if (p < known) {
      token = s.tokens[size_t(p)];
    } else if (pending < 0) {
      token = s.draft[size_t(p - known)];
    }
    out.input_ids.push_back(token);
    out.positions.push_back(p);
    out.slot_mapping.push_back(int64_t(table[size_t(p / bs)]) * bs + p % bs);
  }
  out.seqs.push_back({seq, int32_t(to - from), int32_t(to), draft_len});
  out.pending.push_back(pending);
  if (!s.prefilling) out.sample.push_back(seq);
  s.scheduled_in = steps_;
}

SchedulerStep Scheduler::schedule() {
  if (owed_.size() > 1) {
    throw std::logic_error("schedule() needs update() with an earlier step's tokens");
  }
  if (!owed_.empty() && std::any_of(owed_.back().drafts.begin(), owed_.back().drafts.end(),
                                    [](const auto& d) { return !d.empty(); })) {
    throw std::logic_error("schedule() ahead of a step with drafts needs its update() first");
  }
  ++steps_;
  SchedulerStep out;
  out.seqs.reserve(running_.size());
  out.sample.reserve(running_.size());
  int64_t budget = max_tokens_;
  int64_t spare = 0;     // for drafts, once every decoding sequence has its row
  int64_t decoders = 0;  // decoding sequences whose row is still to come
  if (!proposed_.empty()) {
    for (SeqId seq : running_) decoders += seqs_.at(seq).prefilling ? 0 : 1;
    spare = budget - decoders;
  }
  std::vector<std::pair<size_t, std::vector<TokenId>>> drafts;  // by index in out.sample
  auto append = [&](SeqId seq, TokenId token, bool tentative = false) {
    AppendResult r = blocks_.append_slot(seq, token, tentative);
    if (!r.appended) throw std::logic_error("append_slot failed after room was made");
    if (r.copy) out.copies.push_back(*r.copy);
  };

  for (size_t i = 0; i < running_.size(); ++i) {
    const SeqId seq = running_[i];
    Seq& s = seqs_.at(seq);
    if (s.prefilling) continue;
    const bool ahead = s.owed > 0;
    const int64_t generated = int64_t(s.tokens.size() - s.prompt_len);
    if (ahead && generated + 1 >= s.params.max_new_tokens) {
      s.scheduled_in = steps_;  // stops at the owed step: no row, and not worth preempting
      continue;
    }
    if (!make_room(seq, [&] { return blocks_.can_append(seq); }, out)) break;
    const int64_t n = blocks_.num_tokens(seq);
    append(seq, ahead ? 0 : s.tokens[size_t(n)], ahead);
    s.unconfirmed = ahead;
    --decoders;
    const int64_t left = s.params.max_new_tokens - int64_t(s.tokens.size() - s.prompt_len) - 1;
    const int64_t limit = std::min({int64_t(s.draft.size()), spare, left});
    int64_t k = 0;
    auto fits = [&] {
      return !blocks_.append_needs_block(seq) || blocks_.num_free_blocks() > decoders;
    };
    for (; k < limit && fits(); ++k) append(seq, s.draft[size_t(k)], true);
    emit(seq, s, n, n + 1 + k, out, int32_t(k), ahead ? s.owed_row : -1);
    if (k > 0) {
      s.draft.resize(size_t(k));
      drafts.emplace_back(out.sample.size() - 1, std::move(s.draft));
    }
    spare -= k;
    budget -= 1 + k;
  }
  for (size_t i = 0; i < running_.size() && budget > 0; ++i) {
    const SeqId seq = running_[i];
    Seq& s = seqs_.at(seq);
    if (!s.prefilling) continue;
    if (!make_room(seq, [&] { return room(seq) > 0; }, out)) break;
    const int64_t done = blocks_.num_tokens(seq);
    const int64_t chunk = std::min({int64_t(s.prefill_target) - done, budget, room(seq)});
    for (int64_t p = done; p < done + chunk; ++p) append(seq, s.tokens[size_t(p)]);
    s.prefilling = done + chunk < int64_t(s.prefill_target);
    emit(seq, s, done, done + chunk, out);
    budget -= chunk;
  }
  while (out.preempted.empty() && budget > 0 && !waiting_.empty() &&
         int64_t(running_.size()) < max_seqs_) {
    const SeqId seq = waiting_.front();
    Seq& s = seqs_.at(seq);
    if (s.owed > 0) break;  // preempted while its last token is still to come
    const int64_t n = std::min(int64_t(s.tokens.size()), budget);
    const auto cached = blocks_.allocate(seq, std::span<const TokenId>(s.tokens.data(), size_t(n)));
    if (!cached) break;
    waiting_.pop_front();
    running_.push_back(seq);
    s.prefill_target = s.tokens.size();
    s.prefilling = n < int64_t(s.prefill_target);
    const int64_t done = std::min(*cached, n - 1);
    emit(seq, s, done, n, out);
    budget -= n - done;
  }

  for (const ScheduledSeq& row : out.seqs) {
    out.table_width = std::max(out.table_width, int64_t(blocks_.block_table(row.seq).size()));
  }
  out.block_tables.reserve(out.seqs.size() * size_t(out.table_width));
  for (const ScheduledSeq& row : out.seqs) {
    const std::vector<BlockId>& table = blocks_.block_table(row.seq);
    out.block_tables.insert(out.block_tables.end(), table.begin(), table.end());
    out.block_tables.insert(out.block_tables.end(), size_t(out.table_width) - table.size(), -1);
  }
  if (!out.sample.empty()) {
    Owed& owed = owed_.emplace_back();
    owed.sample = out.sample;
    owed.drafts.resize(out.sample.size());
    for (auto& [row, draft] : drafts) owed.drafts[row] = std::move(draft);
    for (size_t i = 0; i < out.sample.size(); ++i) {
      Seq& s = seqs_.at(out.sample[i]);
      ++s.owed;
      s.owed_row = int32_t(i);
    }
  }
  for (SeqId seq : proposed_) {
    auto it = seqs_.find(seq);
    if (it != seqs_.end()) it->second.draft.clear();
  }
  proposed_.clear();
  return out;
}

std::vector<FinishedSeq> Scheduler::update(std::span<const TokenId> sampled,
                                           std::span<const int32_t> counts) {
  static const Owed kNothing;
  const Owed& owed = owed_.empty() ? kNothing : owed_.front();
  const size_t rows = owed.sample.size();
  if (!counts.empty() && counts.size() != rows) {
    throw std::invalid_argument("expected " + std::to_string(rows) + " counts, got " +
                                std::to_string(counts.size()));
  }
  auto count = [&](size_t i) { return counts.empty() ? size_t(1) : size_t(counts[i]); };
  size_t total = 0;
  for (size_t i = 0; i < rows; ++i) {
    const std::vector<TokenId>& draft = owed.drafts[i];
    if (!counts.empty() && (counts[i] < 1 || size_t(counts[i]) > draft.size() + 1)) {
      throw std::invalid_argument("sequence " + std::to_string(owed.sample[i]) + " carried " +
                                  std::to_string(draft.size()) + " drafts, so it takes 1 to " +
                                  std::to_string(draft.size() + 1) + " tokens, not " +
                                  std::to_string(counts[i]));
    }
    for (size_t j = 0; j + 1 < count(i) && total + j < sampled.size(); ++j) {
      if (sampled[total + j] != draft[j]) {
        throw std::invalid_argument("the accepted tokens of sequence " +
                                    std::to_string(owed.sample[i]) + " differ from its draft");
      }
    }
    total += count(i);
  }
  if (sampled.size() != total) {
    throw std::invalid_argument("expected " + std::to_string(total) + " sampled tokens, got " +
                                std::to_string(sampled.size()));
  }
  if (std::any_of(sampled.begin(), sampled.end(), [](TokenId t) { return t < 0; })) {
    throw std::invalid_argument("token ids must not be negative");
  }
  std::vector<FinishedSeq> finished;
  size_t offset = 0;
  for (size_t i = 0; i < rows; ++i) {
    const SeqId seq = owed.sample[i];
    const size_t c = count(i);
    const std::span<const TokenId> tokens = sampled.subspan(offset, c);
    offset += c;
    auto it = seqs_.find(seq);
    if (it == seqs_.end()) continue;  // aborted, or stopped at an earlier step
    Seq& s = it->second;
    --s.owed;
    if (!owed.drafts[i].empty()) {
      // KV stays for the input token and the accepted drafts, the first c - 1.
      const int64_t drafts = int64_t(owed.drafts[i].size());
      blocks_.settle(seq, blocks_.num_tokens(seq) - drafts + int64_t(c) - 1);
    }
    std::optional<FinishReason> reason;
    for (TokenId t : tokens) {
      s.tokens.push_back(t);
      const auto& stops = s.params.stop_token_ids;
      if (s.params.eos_token_id == t) {
        reason = FinishReason::kEos;
      } else if (std::find(stops.begin(), stops.end(), t) != stops.end()) {
        reason = FinishReason::kStop;
      } else if (int64_t(s.tokens.size() - s.prompt_len) >= s.params.max_new_tokens) {
        reason = FinishReason::kLength;
      }
      if (reason) break;
    }
    if (!reason) {
      // The step scheduled ahead gave this token a slot before it was known.
      if (s.unconfirmed) blocks_.confirm(seq, tokens[0]);
      s.unconfirmed = false;
      continue;
    }
    finished.push_back(
        {seq, {s.tokens.begin() + ptrdiff_t(s.prompt_len), s.tokens.end()}, *reason});
    drop(seq);  // it may be waiting: preempted by the step scheduled ahead
  }
  if (!owed_.empty()) owed_.pop_front();
  return finished;
}

void Scheduler::abort(SeqId seq) {
  if (seqs_.count(seq) == 0) throw std::out_of_range("unknown sequence " + std::to_string(seq));
  drop(seq);
}

void Scheduler::drop(SeqId seq) {
  seqs_.erase(seq);
  if (blocks_.contains(seq)) blocks_.free(seq);
  std::erase(running_, seq);
  std::erase(waiting_, seq);
}

}  // namespace stoker
