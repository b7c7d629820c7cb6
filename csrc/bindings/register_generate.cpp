// Generative-serving bindings: the paged KV-cache block manager and the continuous-batching
// scheduler. Every call holds the GIL: each is cheap (proportional to one prompt, one block table
// or one step's tokens), and both rely on their callers being serialized, which the GIL provides
// for free.
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "bindings/bindings.hpp"
#include "bindings/inputs.hpp"
#include "core/kv_blocks.hpp"
#include "core/ngram.hpp"
#include "core/scheduler.hpp"

namespace stoker::bindings {
namespace {

template <typename T>
nb::ndarray<nb::numpy, T> to_numpy(std::vector<T>&& values, size_t width = 0) {
  auto* owned = new std::vector<T>(std::move(values));
  nb::capsule owner(owned, [](void* p) noexcept { delete static_cast<std::vector<T>*>(p); });
  if (width == 0) {
    const size_t shape[1] = {owned->size()};
    return nb::ndarray<nb::numpy, T>(owned->data(), 1, shape, owner);
  }
  const size_t shape[2] = {owned->size() / width, width};
  return nb::ndarray<nb::numpy, T>(owned->data(), 2, shape, owner);
}

template <typename T, typename F>
std::vector<T> column(const std::vector<ScheduledSeq>& rows, F field) {
  std::vector<T> values;
  for (const ScheduledSeq& r : rows) values.push_back(T(field(r)));
  return values;
}

const char* reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::kEos:
      return "eos";
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kLength:
      break;
  }
  return "length";
}

void register_scheduler(nb::module_& m) {
  // The arrays are fresh copies that own their memory, not views into the step.
  const auto kOwned = nb::rv_policy::move;
  nb::class_<SchedulerStep>(m, "SchedulerStep",
                            "One step's batch, as flat arrays for the model runner.")
      .def_prop_ro(
          "input_ids", [](const SchedulerStep& s) { return to_numpy(std::vector(s.input_ids)); },
          kOwned)
      .def_prop_ro(
          "positions", [](const SchedulerStep& s) { return to_numpy(std::vector(s.positions)); },
          kOwned)
      .def_prop_ro(
          "seq_ids",
          [](const SchedulerStep& s) {
            return to_numpy(column<int64_t>(s.seqs, [](const ScheduledSeq& r) { return r.seq; }));
          },
          "One row per scheduled sequence, in the order of its query tokens in input_ids.", kOwned)
      .def_prop_ro(
          "query_lens",
          [](const SchedulerStep& s) {
            return to_numpy(
                column<int32_t>(s.seqs, [](const ScheduledSeq& r) { return r.query_len; }));
          },
          kOwned)
      .def_prop_ro(
          "context_lens",
          [](const SchedulerStep& s) {
            return to_numpy(
                column<int32_t>(s.seqs, [](const ScheduledSeq& r) { return r.context_len; }));
          },
          kOwned)
      .def_prop_ro(
          "draft_lens",
          [](const SchedulerStep& s) {
            return to_numpy(
                column<int32_t>(s.seqs, [](const ScheduledSeq& r) { return r.draft_len; }));
          },
          "Speculative draft tokens at the end of each row's query tokens.", kOwned)
      .def_prop_ro(
          "block_tables",
          [](const SchedulerStep& s) {
            // Every row holds a block, so width 0 means no rows; to_numpy reads 0 as 1-D.
            const size_t width = size_t(std::max<int64_t>(s.table_width, 1));
            return to_numpy(std::vector(s.block_tables), width);
          },
          "(rows, width) int32, padded with -1; (0, 1) for an empty step.", kOwned)
      .def_prop_ro(
          "slot_mapping",
          [](const SchedulerStep& s) { return to_numpy(std::vector(s.slot_mapping)); }, kOwned)
      .def_prop_ro(
          "copies",
          [](const SchedulerStep& s) {
            std::vector<BlockId> flat;
            for (const BlockCopy& c : s.copies) flat.insert(flat.end(), {c.src, c.dst});
            return to_numpy(std::move(flat), 2);
          },
          "(n, 2) int32 copy-on-write (src, dst) block copies to do before the step.", kOwned)
      .def_prop_ro(
          "sample", [](const SchedulerStep& s) { return to_numpy(std::vector(s.sample)); },
          "The sequences update() expects a sampled token for, in this order.", kOwned)
      .def_prop_ro(
          "preempted", [](const SchedulerStep& s) { return to_numpy(std::vector(s.preempted)); },
          kOwned)
      .def_prop_ro(
          "pending", [](const SchedulerStep& s) { return to_numpy(std::vector(s.pending)); },
          "Per row (int32): -1, or the row of the owed step's sample whose token is this row's\n"
          "input (scheduled ahead; the input id is 0 until the runner puts the token there).",
          kOwned);

  nb::class_<Scheduler>(
      m, "Scheduler",
      "Continuous batching over paged KV blocks: decode rows first, then chunked prefills, with\n"
      "preemption by recompute. The policies are documented in csrc/core/scheduler.hpp.")
      .def(nb::init<int64_t, int64_t, int64_t, int64_t>(), nb::arg("num_blocks"),
           nb::arg("block_size"), nb::arg("max_num_batched_tokens"), nb::arg("max_num_seqs"))
      .def(
          "add",
          [](Scheduler& s, SeqId seq, std::vector<TokenId> prompt, int64_t max_new_tokens,
             std::optional<TokenId> eos_token_id, std::vector<TokenId> stop_token_ids) {
            s.add(seq, std::move(prompt),
                  SamplingParams{max_new_tokens, eos_token_id, std::move(stop_token_ids)});
          },
          nb::arg("seq"), nb::arg("prompt"), nb::arg("max_new_tokens"),
          nb::arg("eos_token_id") = nb::none(), nb::arg("stop_token_ids") = std::vector<TokenId>{},
          "Queues a sequence at the back of waiting.")
      .def("propose", &Scheduler::propose, nb::arg("seq"), nb::arg("draft"),
           "Speculative draft tokens for a decoding sequence's next step.")
      .def("schedule", &Scheduler::schedule)
      .def(
          "update",
          [](Scheduler& s, const std::vector<TokenId>& sampled,
             std::optional<std::vector<int32_t>> counts) {
            std::vector<std::tuple<SeqId, std::vector<TokenId>, std::string>> finished;
            const std::vector<int32_t> per_row = counts.value_or(std::vector<int32_t>{});
            for (FinishedSeq& f : s.update(sampled, per_row)) {
              finished.emplace_back(f.seq, std::move(f.tokens), reason_name(f.reason));
            }
            return finished;
          },
          nb::arg("sampled"), nb::arg("counts") = nb::none(),
          "The tokens of the last step's sample, one per sequence or `counts[i]` for the i-th\n"
          "(its accepted drafts, then the model's own); returns the finished sequences as\n"
          "(seq, generated tokens, reason), reason being 'eos', 'stop' or 'length'.")
      .def("abort", &Scheduler::abort, nb::arg("seq"))
      .def_prop_ro("num_waiting", &Scheduler::num_waiting)
      .def_prop_ro("num_running", &Scheduler::num_running)
      .def_prop_ro("num_free_blocks",
                   [](const Scheduler& s) { return s.blocks().num_free_blocks(); })
      .def_prop_ro("prefix_hits", [](const Scheduler& s) { return s.blocks().prefix_hits(); })
      .def_prop_ro("prefix_misses", [](const Scheduler& s) { return s.blocks().prefix_misses(); });
}

}  // namespace

void register_generate(nb::module_& m) {
  nb::class_<KVBlockManager>(
      m, "KVBlockManager",
      "Paged KV-cache blocks for generation: block tables per sequence, copy-on-write forks and\n"
      "a prefix cache of full blocks (evicted least recently freed first). Not thread-safe.")
      .def(nb::init<int64_t, int64_t>(), nb::arg("num_blocks"), nb::arg("block_size"))
      .def("can_allocate", &KVBlockManager::can_allocate, nb::arg("n_tokens"),
           "Whether allocate() of any prompt of n_tokens tokens would succeed now.")
      .def(
          "allocate",
          [](KVBlockManager& k, SeqId seq, const std::vector<TokenId>& tokens) {
            return k.allocate(seq, tokens);
          },
          nb::arg("seq"), nb::arg("tokens"),
          "Blocks for a new sequence's prompt, reusing cached leading full blocks. Returns how\n"
          "many prompt tokens are already cached, or None when out of blocks (nothing changed).")
      .def("can_append", &KVBlockManager::can_append, nb::arg("seq"))
      .def("append_needs_block", &KVBlockManager::append_needs_block, nb::arg("seq"),
           "Whether append_slot() takes a block from the pool (a new one or a private copy).")
      .def(
          "append_slot",
          [](KVBlockManager& k, SeqId seq, TokenId token, bool tentative) {
            AppendResult r = k.append_slot(seq, token, tentative);
            std::optional<std::pair<BlockId, BlockId>> copy;
            if (r.copy) copy.emplace(r.copy->src, r.copy->dst);
            return std::make_pair(r.appended, copy);
          },
          nb::arg("seq"), nb::arg("token"), nb::arg("tentative") = false,
          "Room for one decoded token: (appended, copy). appended is False when out of blocks\n"
          "(nothing changed); copy is (src, dst) when a shared last block was copied on write.\n"
          "A tentative token (a speculative draft) fills no cache entry until settle().")
      .def("settle", &KVBlockManager::settle, nb::arg("seq"), nb::arg("n"),
           "Keeps the first n tokens (every settled one at least), releases the blocks past\n"
           "them and caches the full blocks they complete.")
      .def("confirm", &KVBlockManager::confirm, nb::arg("seq"), nb::arg("token"),
           "The first tentative token becomes `token` and is kept; any after it are dropped.")
      .def("fork", &KVBlockManager::fork, nb::arg("parent"), nb::arg("child"),
           "A new sequence sharing all of the parent's blocks.")
      .def("free", &KVBlockManager::free, nb::arg("seq"))
      .def(
          "block_table",
          [](const KVBlockManager& k, SeqId seq) {
            return to_numpy(std::vector<BlockId>(k.block_table(seq)));
          },
          nb::arg("seq"), "The sequence's block ids (int32), in token order.")
      .def("num_tokens", &KVBlockManager::num_tokens, nb::arg("seq"))
      .def("__contains__", &KVBlockManager::contains, nb::arg("seq"))
      .def(
          "slot_mapping",
          [](const KVBlockManager& k, SeqId seq,
             nb::ndarray<const int64_t, nb::ndim<1>, nb::c_contig> positions) {
            return to_numpy(k.slot_mapping(seq, {positions.data(), positions.shape(0)}));
          },
          nb::arg("seq"), nb::arg("positions"),
          "Flat KV slots (block * block_size + offset, int64) of token positions.")
      .def(
          "slot_mapping",
          [](const KVBlockManager& k, SeqId seq, const std::vector<int64_t>& positions) {
            return to_numpy(k.slot_mapping(seq, positions));
          },
          nb::arg("seq"), nb::arg("positions"))
      .def_prop_ro("num_blocks", &KVBlockManager::num_blocks)
      .def_prop_ro("block_size", &KVBlockManager::block_size)
      .def_prop_ro("num_free_blocks", &KVBlockManager::num_free_blocks,
                   "Blocks nobody holds, cached ones included.")
      .def_prop_ro("num_cached_blocks", &KVBlockManager::num_cached_blocks,
                   "Blocks the prefix cache can find, held or not.")
      .def_prop_ro("prefix_hits", &KVBlockManager::prefix_hits)
      .def_prop_ro("prefix_misses", &KVBlockManager::prefix_misses);
  register_scheduler(m);

  m.def(
      "ngram_propose",
      [](nb::handle histories, int max_ngram, int min_ngram, int num_tokens) {
        Inputs inputs(histories);
        std::vector<std::vector<TokenId>> drafts(inputs.spans.size());
        try {
          nb::gil_scoped_release release;
          std::vector<TokenId> tokens;
          for (size_t i = 0; i < inputs.spans.size(); ++i) {
            const ByteSpan& b = inputs.spans[i];
            if (b.size % sizeof(TokenId) != 0) {
              throw std::invalid_argument("history " + std::to_string(i) +
                                          " is not a whole number of int32 tokens");
            }
            tokens.resize(b.size / sizeof(TokenId));
            if (b.size > 0) std::memcpy(tokens.data(), b.data, b.size);
            drafts[i] = ngram_propose(tokens, max_ngram, min_ngram, num_tokens);
          }
        } catch (...) {
          inputs.release();
          throw;
        }
        inputs.release();
        return drafts;
      },
      nb::arg("histories"), nb::arg("max_ngram"), nb::arg("min_ngram"), nb::arg("num_tokens"),
      "Prompt-lookup drafts for each history (native-endian int32 tokens, bytes-like): what\n"
      "followed the latest earlier occurrence of its last n tokens, n from max_ngram down.");
}

}  // namespace stoker::bindings
