// The KServe v2 fast path: the first two input bytes are the Inference-Header-Content-Length
// (little-endian), the rest is the request body. An accepted request must describe its body
// exactly: the header is a JSON object, the elements tile the binary part with their length
// prefixes, and the element count is the shape's.
#include <cstring>
#include <string_view>

#include "check.hpp"
#include "core/json.hpp"
#include "core/kserve.hpp"

namespace {

using namespace stoker;

bool same_request(const KsImageRequest& a, const KsImageRequest& b) {
  if (a.id != b.id || a.input_name != b.input_name ||
      a.binary_data_output != b.binary_data_output || a.elements.size() != b.elements.size() ||
      a.outputs.size() != b.outputs.size()) {
    return false;
  }
  for (size_t i = 0; i < a.elements.size(); ++i) {
    if (a.elements[i].offset != b.elements[i].offset || a.elements[i].size != b.elements[i].size) {
      return false;
    }
  }
  for (size_t i = 0; i < a.outputs.size(); ++i) {
    if (a.outputs[i].name != b.outputs[i].name || a.outputs[i].binary != b.outputs[i].binary) {
      return false;
    }
  }
  return true;
}

void check_accepted(std::string_view body, size_t header_length, const KsImageRequest& r) {
  FUZZ_CHECK(header_length > 0 && header_length <= body.size());
  FUZZ_CHECK(!r.elements.empty());
  size_t at = header_length;
  for (const KsSpan& e : r.elements) {
    FUZZ_CHECK(at <= body.size() && body.size() - at >= 4);
    uint32_t prefix;
    std::memcpy(&prefix, body.data() + at, 4);
    FUZZ_CHECK(e.offset == at + 4 && e.size == prefix);
    FUZZ_CHECK(e.offset <= body.size() && e.size <= body.size() - e.offset);
    at = e.offset + e.size;
  }
  FUZZ_CHECK(at == body.size());

  JsonDocument doc;
  FUZZ_CHECK(doc.parse(body.substr(0, header_length)) && doc.root().is_object());
  const auto inputs = doc.root().find("inputs");
  FUZZ_CHECK(inputs && inputs->is_array() && inputs->size() == 1);
  const JsonValue input = *(*inputs).elements().begin();
  const auto datatype = input.find("datatype");
  FUZZ_CHECK(datatype && datatype->as_string() == "BYTES");
  const auto name = input.find("name");
  FUZZ_CHECK(name && name->as_string() == r.input_name);
  const auto shape = input.find("shape");
  FUZZ_CHECK(shape && shape->size() >= 1);
  FUZZ_CHECK((*shape->elements().begin()).as_int64() == int64_t(r.elements.size()));
  const auto id = doc.root().find("id");
  FUZZ_CHECK(id ? id->as_string() == r.id : r.id.empty());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const size_t header_length = size_t(data[0]) | size_t(data[1]) << 8;
  const std::string_view body(reinterpret_cast<const char*>(data) + 2, size - 2);
  // Callers reuse one request object, and a refused parse leaves it half written: a later parse
  // must not depend on what an earlier one left there.
  static KsImageRequest reused;
  KsImageRequest fresh;
  const KsParse a = parse_image_infer(body, header_length, fresh);
  const KsParse b = parse_image_infer(body, header_length, reused);
  FUZZ_CHECK(a == b);
  if (a != KsParse::kOk) return 0;
  FUZZ_CHECK(same_request(fresh, reused));
  check_accepted(body, header_length, fresh);
  return 0;
}
