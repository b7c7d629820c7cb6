#include "bindings/bindings.hpp"

NB_MODULE(_native, m) {
  m.doc() = "stoker's native data plane";
  stoker::bindings::register_image(m);
  stoker::bindings::register_runtime(m);
}
