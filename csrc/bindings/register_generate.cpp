// Generative-serving bindings: the paged KV-cache block manager. Every call holds the GIL: each is
// cheap (proportional to one prompt or one block table), and the manager relies on its callers
// being serialized, which the GIL provides for free.
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/vector.h>

#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

#include "bindings/bindings.hpp"
#include "core/kv_blocks.hpp"

namespace stoker::bindings {
namespace {

template <typename T>
nb::ndarray<nb::numpy, T> to_numpy(std::vector<T>&& values) {
  auto* owned = new std::vector<T>(std::move(values));
  nb::capsule owner(owned, [](void* p) noexcept { delete static_cast<std::vector<T>*>(p); });
  const size_t shape[1] = {owned->size()};
  return nb::ndarray<nb::numpy, T>(owned->data(), 1, shape, owner);
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
      .def(
          "append_slot",
          [](KVBlockManager& k, SeqId seq, TokenId token) {
            AppendResult r = k.append_slot(seq, token);
            std::optional<std::pair<BlockId, BlockId>> copy;
            if (r.copy) copy.emplace(r.copy->src, r.copy->dst);
            return std::make_pair(r.appended, copy);
          },
          nb::arg("seq"), nb::arg("token"),
          "Room for one decoded token: (appended, copy). appended is False when out of blocks\n"
          "(nothing changed); copy is (src, dst) when a shared last block was copied on write.")
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
}

}  // namespace stoker::bindings
