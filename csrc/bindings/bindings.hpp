// Shared state of the Python bindings: the worker pool and the output arena.
#pragma once

#include <nanobind/nanobind.h>

#include <memory>

#include "core/arena.hpp"
#include "core/thread_pool.hpp"

namespace stoker::bindings {

namespace nb = nanobind;

std::shared_ptr<ThreadPool> pool();
HostArena& arena();

void register_image(nb::module_& m);
void register_runtime(nb::module_& m);
void register_engine(nb::module_& m);
void register_loadgen(nb::module_& m);
void register_gateway(nb::module_& m);
void register_generate(nb::module_& m);
void register_nvjpeg(nb::module_& m);

}  // namespace stoker::bindings
