// Batch outputs handed to consumers (torch.from_dlpack) as plain DLPack capsules.
#pragma once

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <vector>

#include "core/arena.hpp"

namespace stoker::bindings {

// A "dltensor" capsule over an arena block (C-contiguous, on the CPU). The block returns to the
// arena when the consumer frees its tensor, or when the capsule dies unconsumed.
nanobind::object dlpack_capsule(HostBlock block, const std::vector<size_t>& shape,
                                nanobind::dlpack::dtype dt);

}  // namespace stoker::bindings
