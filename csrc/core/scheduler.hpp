// Continuous-batching scheduler for generative serving: each step picks which sequences run and
// how many of their tokens, on top of the paged KV block manager, and flattens the choice into the
// arrays a model runner consumes.
//
// Policies (tests/_scheduler_reference.py implements the same ones; the two are tested against
// each other, so a change here needs the same change there):
// - Queues: waiting (FIFO) and running (in admission order). A running sequence is either
//   prefilling (part of its prompt has KV) or decoding (one new token per step).
// - A step spends at most max_num_batched_tokens query tokens on at most max_num_seqs running
//   sequences. The constructor insists on max_num_batched_tokens >= max_num_seqs, so the decode
//   rows of a step always fit its budget.
// - Order within a step: first one decode row per decoding sequence (in admission order), then
//   the next chunk of every prefilling sequence (in admission order) while budget lasts, then
//   admissions from the head of waiting while budget and max_num_seqs allow. Admission stops at
//   the first sequence whose first chunk gets no blocks (no skipping ahead), and nothing is
//   admitted in a step that preempted: the blocks freed by preemption were needed by running work.
// - Chunked prefill: a chunk is min(rest of the prompt, remaining budget) tokens, and for a
//   sequence already admitted also no more than its free block room; blocks are taken when the
//   chunk is scheduled. Prefix-cache hits are looked up when the first chunk is allocated (the
//   manager has no lookup without allocation), so only the first chunk's full blocks can hit.
//   Hits are skipped, except that a chunk always keeps at least its last token as a query token
//   (a fully cached chunk still has to produce logits, and rewriting a cached slot with the KV it
//   already holds is harmless).
// - A sequence samples in a step when it decodes, or when its chunk completes its prompt.
// - The sampled token's slot is taken in the next step's decode row (the token is its input),
//   so a sequence that stops never holds a slot for its last token.
// - Preemption by recompute: when a running sequence scheduled in this step cannot get a block,
//   the most recently admitted running sequence not yet scheduled this step is preempted (it may
//   be the one asking) until the request fits: its blocks are freed and it goes to the front of
//   waiting with its generated tokens appended to its prompt, to be prefilled again. Victims are
//   freed newest first and each is pushed to the front, so waiting keeps their admission order.
// - Stop conditions, checked after each sampled token, first match wins: eos, a stop token, then
//   max_new_tokens. The reported tokens include the one that stopped the sequence. A finished
//   sequence's blocks are freed at once.
// - add() rejects a sequence that could never finish alone: its prompt plus max_new_tokens - 1
//   tokens (all but the last get KV) must fit the whole cache. That also keeps preemption from
//   looping: the oldest running sequence, alone, always fits.
// - Speculative drafts: propose() gives a decoding sequence draft tokens for the next step. Its
//   decode row then carries them after its input token, as many as (a) the budget spares once
//   every decoding sequence has its row, (b) fit without taking a block that a later decode row
//   of the step may need (a draft takes a new block only while more blocks are free than
//   decoding sequences still wait for their row), and (c) can still be emitted
//   (max_new_tokens - generated - 1).
//   Their slots are tentative in the block manager. The next schedule() forgets every proposal,
//   used or not.
// - update() must follow every schedule() that samples, with one token per sampling sequence in
//   the step's order, or with `counts`: a row with d drafts gets 1..d+1 tokens, the drafts it
//   accepted (equal to the first ones proposed) and then the model's own. KV is kept for the
//   input token and the accepted drafts; tokens go in one at a time, and those after a stop
//   condition are dropped. A bad update() changes nothing. propose() refuses to run while an
//   update() is owed.
// - Scheduling ahead: schedule() may run once more while one step's update() is owed, so that
//   the next step is on its way before the last one's tokens are known. A sequence that samples
//   in the owed step decodes in the new step with its token still unknown: its input id is 0 and
//   `pending` names the owed step's sample row whose token the runner puts there; its slot is
//   tentative until update() confirms the token. A sequence certain to stop at the owed step
//   (it reaches max_new_tokens) gets no row and is not preempted; one that stops there on eos
//   or a stop token has run one row for nothing, and update() ignores that row's token. A
//   step's updates come in the order of the steps. No scheduling ahead of a step with drafts,
//   and not more than one step ahead. abort() may run while updates are owed; the rows of an
//   aborted sequence are ignored by them. Sequence ids must not be reused while a step that
//   scheduled them is owed.
// Not thread-safe: one engine loop owns it.
#pragma once

#include <cstdint>
#include <deque>
#include <optional>
#include <span>
#include <unordered_map>
#include <vector>

#include "core/kv_blocks.hpp"

namespace stoker {

struct SamplingParams {
  int64_t max_new_tokens = 1;
  std::optional<TokenId> eos_token_id;
  std::vector<TokenId> stop_token_ids;
};

// One sequence's row of a step: its query tokens are a contiguous run of the step's inputs.
struct ScheduledSeq {
  SeqId seq = 0;
  int32_t query_len = 0;
  int32_t context_len = 0;  // tokens with KV once this step ran, the query ones included
  int32_t draft_len = 0;    // speculative tokens at the end of the query ones
  bool operator==(const ScheduledSeq&) const = default;
};

struct SchedulerStep {
  std::vector<TokenId> input_ids;
  std::vector<int64_t> positions;
  std::vector<ScheduledSeq> seqs;
  // Row-major, one row per entry of seqs, padded with -1 to table_width.
  std::vector<BlockId> block_tables;
  int64_t table_width = 0;
  std::vector<int64_t> slot_mapping;  // per input token
  std::vector<BlockCopy> copies;      // for the runner to do before the step
  std::vector<SeqId> sample;          // the sequences update() expects a token for, in this order
  // Per row of seqs: -1, or the row of the owed step's sample whose token is this row's input.
  std::vector<int32_t> pending;
  std::vector<SeqId> preempted;
};

enum class FinishReason { kLength, kEos, kStop };

struct FinishedSeq {
  SeqId seq = 0;
  std::vector<TokenId> tokens;  // generated ones
  FinishReason reason = FinishReason::kLength;
  bool operator==(const FinishedSeq&) const = default;
};

class Scheduler {
 public:
  // Throws std::invalid_argument for non-positive sizes or max_num_batched_tokens < max_num_seqs.
  Scheduler(int64_t num_blocks, int64_t block_size, int64_t max_num_batched_tokens,
            int64_t max_num_seqs);

  // Queues a sequence at the back of waiting. Throws std::invalid_argument for a known id, an
  // empty prompt, a negative token, max_new_tokens < 1 or a sequence the cache can never hold.
  void add(SeqId seq, std::vector<TokenId> prompt, SamplingParams params);
  // Draft tokens for a decoding sequence's next step. std::out_of_range for an unknown sequence,
  // std::invalid_argument for one that is not running and decoding or a negative token.
  void propose(SeqId seq, std::vector<TokenId> draft);
  SchedulerStep schedule();
  // The tokens sampled for the last step's `sample`, in order (`counts`: how many per sequence,
  // one each when empty); returns the sequences that stopped.
  std::vector<FinishedSeq> update(std::span<const TokenId> sampled,
                                  std::span<const int32_t> counts = {});
  // Drops a sequence wherever it is; std::out_of_range for an unknown one.
  void abort(SeqId seq);

  int64_t num_waiting() const { return int64_t(waiting_.size()); }
  int64_t num_running() const { return int64_t(running_.size()); }
  const KVBlockManager& blocks() const { return blocks_; }

 private:
  struct Seq {
    std::vector<TokenId> tokens;  // prompt, then generated
    size_t prompt_len = 0;
    SamplingParams params;
    size_t prefill_target = 0;  // tokens to prefill since the last admission
    bool prefilling = true;
    uint64_t scheduled_in = 0;  // the step that last scheduled it (steps count from 1)
    int32_t owed = 0;           // owed steps that sample it
    int32_t owed_row = 0;       // its row in the latest of them
    bool unconfirmed = false;   // its last slot waits for the owed step's token
    std::vector<TokenId> draft;
  };
  struct Owed {
    std::vector<SeqId> sample;
    std::vector<std::vector<TokenId>> drafts;  // the drafts each row carried
  };

  void check_idle(const char* what) const;
  // Forgets the sequence wherever it is, freeing its blocks.
  void drop(SeqId seq);
  // Tokens the sequence can still take without new blocks plus those the free blocks hold.
  int64_t room(SeqId seq) const;
  // Preempts until fits() holds; false when `seq` itself was preempted.
  template <typename Fits>
  bool make_room(SeqId seq, Fits fits, SchedulerStep& out);
  // Positions past the sequence's tokens take their tokens from its draft.
  void emit(SeqId seq, Seq& s, int64_t from, int64_t to, SchedulerStep& out, int32_t draft_len = 0,
            int32_t pending = -1);

  KVBlockManager blocks_;
  int64_t max_tokens_;
  int64_t max_seqs_;
  std::unordered_map<SeqId, Seq> seqs_;
  std::deque<SeqId> waiting_;
  std::vector<SeqId> running_;  // admission order
  std::deque<Owed> owed_;       // oldest first, at most two
  std::vector<SeqId> proposed_;
  uint64_t steps_ = 0;
};

}  // namespace stoker
