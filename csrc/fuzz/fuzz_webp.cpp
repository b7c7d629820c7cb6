// WebP decode through the entry the Preprocessor uses, then the Preprocessor itself with a spec
// taken from the input (see image_target.hpp).
#include "image_target.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace stoker;
  using namespace stoker::fuzz;
  if (size < kParamBytes) return 0;
  const ImageInput in{data, data + kParamBytes, size - kParamBytes};
  if (sniff_format(in.image, in.size) != ImageFormat::kWebp) return 0;
  Status status;
  check_image(in, status);
  return 0;
}
