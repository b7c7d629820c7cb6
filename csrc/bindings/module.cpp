#include "bindings/bindings.hpp"

NB_MODULE(_native, m) {
  m.doc() = "stoker's native data plane";
  // Specs held in module globals (stoker's default spec among them) may outlive the module at
  // interpreter exit; Python does not promise to collect them, so such "leaks" are expected.
  nanobind::set_leak_warnings(false);
  stoker::bindings::register_image(m);
  stoker::bindings::register_runtime(m);
  stoker::bindings::register_engine(m);
  stoker::bindings::register_loadgen(m);
  stoker::bindings::register_gateway(m);
  stoker::bindings::register_generate(m);
  stoker::bindings::register_nvjpeg(m);
}
