#include "bindings/dlpack.hpp"

#include <cstdint>

#include "bindings/bindings.hpp"

namespace stoker::bindings {
namespace {

// DLPack's C ABI (dlpack.h, v0.8), declared here because only these structs are needed.
struct DLDevice {
  int32_t device_type;
  int32_t device_id;
};
struct DLDataType {
  uint8_t code;
  uint8_t bits;
  uint16_t lanes;
};
struct DLTensor {
  void* data;
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;
  int64_t* strides;
  uint64_t byte_offset;
};
struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(DLManagedTensor*);
};

// Owns one arena block for as long as the consumer's tensor lives.
struct ManagedBlock {
  DLManagedTensor managed;
  HostBlock block;
  int64_t shape[4];
};

// Runs when the consumer frees its tensor, possibly during interpreter shutdown or on a thread
// without the GIL: it touches no Python state, only the arena.
void release_managed(DLManagedTensor* t) {
  auto* m = static_cast<ManagedBlock*>(t->manager_ctx);
  arena().release(m->block);
  delete m;
}

}  // namespace

nb::object dlpack_capsule(HostBlock block, const std::vector<size_t>& shape, nb::dlpack::dtype dt) {
  auto* m = new ManagedBlock{};
  m->block = block;
  for (size_t d = 0; d < shape.size(); ++d) m->shape[d] = int64_t(shape[d]);
  m->managed.dl_tensor = DLTensor{block.ptr,
                                  DLDevice{1, 0},
                                  int32_t(shape.size()),
                                  DLDataType{dt.code, dt.bits, dt.lanes},
                                  m->shape,
                                  nullptr,
                                  0};
  m->managed.manager_ctx = m;
  m->managed.deleter = release_managed;
  PyObject* capsule = PyCapsule_New(&m->managed, "dltensor", [](PyObject* self) {
    // A consumer renames the capsule to "used_dltensor" and takes over the deleter.
    if (PyCapsule_IsValid(self, "dltensor")) {
      auto* t = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(self, "dltensor"));
      t->deleter(t);
    }
  });
  if (capsule == nullptr) {
    release_managed(&m->managed);
    throw nb::python_error();
  }
  return nb::steal(capsule);
}

}  // namespace stoker::bindings
