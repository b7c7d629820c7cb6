#include "core/kserve.hpp"

#include <algorithm>
#include <bit>
#include <charconv>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>
#include <stdexcept>

#include "core/json.hpp"

namespace stoker {

// Tensor data is read in place from the wire's little-endian bytes, without swapping.
static_assert(std::endian::native == std::endian::little, "stoker's KServe codec needs a LE host");

namespace {

// The common form's header is a few hundred bytes; larger ones, or ones with many values or deep
// nesting, are not the common form and are left to the Python codec. These limits also bound the
// memory each thread's reused document keeps.
constexpr size_t kMaxHeaderBytes = size_t{64} << 10;
constexpr size_t kMaxHeaderValues = 4096;
constexpr size_t kMaxHeaderDepth = 8;
constexpr size_t kMaxOutputs = 64;

JsonDocument& thread_document() {
  // A fresh document per request would cost a few allocations; a per-thread one keeps its buffers.
  thread_local JsonDocument doc(JsonLimits{kMaxHeaderBytes, kMaxHeaderDepth, kMaxHeaderValues});
  return doc;
}

// Marks `bit` as seen; false when it already was (a repeated key, which JSON readers resolve
// differently, so the fast path leaves it alone).
bool first_time(unsigned& seen, unsigned bit) {
  if (seen & bit) return false;
  seen |= bit;
  return true;
}

bool read_request_parameters(const JsonValue& parameters, bool& binary_data_output) {
  if (!parameters.is_object() || parameters.size() > 1) return false;
  for (const auto& [key, value] : parameters.members()) {
    if (key != "binary_data_output" || !value.is_bool()) return false;
    binary_data_output = value.as_bool();
  }
  return true;
}

// [N] or [N, 1] with N >= 1.
bool read_shape(const JsonValue& shape, size_t& count) {
  if (!shape.is_array() || shape.size() < 1 || shape.size() > 2) return false;
  bool first = true;
  for (const JsonValue& dim : shape.elements()) {
    if (!dim.is_integer()) return false;
    if (first ? dim.as_int64() < 1 : dim.as_int64() != 1) return false;
    if (first) count = size_t(dim.as_int64());
    first = false;
  }
  return true;
}

bool read_input(const JsonValue& input, std::string& name, size_t& count, uint64_t& size) {
  if (!input.is_object()) return false;
  unsigned seen = 0;
  for (const auto& [key, value] : input.members()) {
    if (key == "name") {
      if (!first_time(seen, 1) || !value.is_string() || value.as_string().empty()) return false;
      name.assign(value.as_string());
    } else if (key == "datatype") {
      if (!first_time(seen, 2) || !value.is_string() || value.as_string() != "BYTES") return false;
    } else if (key == "shape") {
      if (!first_time(seen, 4) || !read_shape(value, count)) return false;
    } else if (key == "parameters") {
      if (!first_time(seen, 8) || !value.is_object() || value.size() != 1) return false;
      const auto [parameter, bytes] = *value.members().begin();
      if (parameter != "binary_data_size" || !bytes.is_integer() || bytes.as_int64() < 0) {
        return false;
      }
      size = uint64_t(bytes.as_int64());
    } else {
      return false;
    }
  }
  return seen == 15;
}

bool read_outputs(const JsonValue& list, bool binary_data_output,
                  std::vector<KsRequestedOutput>& outputs) {
  if (!list.is_array() || list.size() > kMaxOutputs) return false;
  // Resized rather than rebuilt so that a reused request keeps its strings' buffers.
  outputs.resize(list.size());
  size_t index = 0;
  for (const JsonValue& item : list.elements()) {
    if (!item.is_object()) return false;
    std::string_view name;
    bool binary = binary_data_output;
    unsigned seen = 0;
    for (const auto& [key, value] : item.members()) {
      if (key == "name") {
        if (!first_time(seen, 1) || !value.is_string()) return false;
        name = value.as_string();
      } else if (key == "parameters") {
        if (!first_time(seen, 2) || !value.is_object() || value.size() > 1) return false;
        for (const auto& [parameter, flag] : value.members()) {
          if (parameter != "binary_data" || !flag.is_bool()) return false;
          binary = flag.as_bool();
        }
      } else {
        return false;
      }
    }
    if (name.empty()) return false;
    for (size_t i = 0; i < index; ++i) {
      if (outputs[i].name == name) return false;  // the Python codec answers 400
    }
    outputs[index].name.assign(name);
    outputs[index].binary = binary;
    ++index;
  }
  return true;
}

// Splits body[offset:] into exactly `count` length-prefixed elements that use every byte.
bool split_elements(std::string_view body, size_t offset, size_t count,
                    std::vector<KsSpan>& elements) {
  const size_t end = body.size();
  if (count > (end - offset) / 4) return false;  // each element needs its prefix: bounds reserve()
  elements.clear();
  elements.reserve(count);
  const auto* bytes = reinterpret_cast<const unsigned char*>(body.data());
  for (size_t i = 0; i < count; ++i) {
    if (end - offset < 4) return false;
    const unsigned char* prefix = bytes + offset;
    const size_t length = size_t(prefix[0]) | size_t(prefix[1]) << 8 | size_t(prefix[2]) << 16 |
                          size_t(prefix[3]) << 24;
    offset += 4;
    if (length > end - offset) return false;
    elements.push_back(KsSpan{offset, length});
    offset += length;
  }
  return offset == end;
}

enum class Kind : uint8_t { kBool, kUnsigned, kSigned, kFloat };

struct Datatype {
  std::string_view name;
  Kind kind;
  size_t size;
};

constexpr Datatype kDatatypes[] = {
    {"BOOL", Kind::kBool, 1},       {"UINT8", Kind::kUnsigned, 1},  {"UINT16", Kind::kUnsigned, 2},
    {"UINT32", Kind::kUnsigned, 4}, {"UINT64", Kind::kUnsigned, 8}, {"INT8", Kind::kSigned, 1},
    {"INT16", Kind::kSigned, 2},    {"INT32", Kind::kSigned, 4},    {"INT64", Kind::kSigned, 8},
    {"FP16", Kind::kFloat, 2},      {"FP32", Kind::kFloat, 4},      {"FP64", Kind::kFloat, 8},
};

std::invalid_argument output_error(const KsOutputTensor& t, const std::string& what) {
  return std::invalid_argument("output '" + t.name + "': " + what);
}

// Checks the tensor and returns its datatype and element count.
const Datatype& check(const KsOutputTensor& t, size_t& count) {
  const Datatype* type = nullptr;
  for (const Datatype& d : kDatatypes) {
    if (d.name == t.datatype) type = &d;
  }
  if (type == nullptr) throw output_error(t, "unknown datatype '" + t.datatype + "'");
  count = 1;
  for (const int64_t dim : t.shape) {
    if (dim < 0) throw output_error(t, "negative dimension " + std::to_string(dim));
    if (__builtin_mul_overflow(count, uint64_t(dim), &count)) throw output_error(t, "too large");
  }
  size_t expected;
  if (__builtin_mul_overflow(count, type->size, &expected) || expected != t.nbytes) {
    throw output_error(t, std::to_string(t.nbytes) + " bytes of data for " + t.datatype + " [" +
                              std::to_string(count) + " elements]");
  }
  if (t.data == nullptr && t.nbytes != 0) throw output_error(t, "no data");
  return *type;
}

template <typename T>
T load(const unsigned char* p) {
  T value;
  std::memcpy(&value, p, sizeof value);
  return value;
}

double half_to_double(uint16_t h) {
  const double sign = h & 0x8000u ? -1.0 : 1.0;
  const int exponent = h >> 10 & 0x1f;
  const int mantissa = h & 0x3ff;
  if (exponent == 0) return sign * std::ldexp(mantissa, -24);
  if (exponent == 31) {
    return mantissa != 0 ? std::numeric_limits<double>::quiet_NaN()
                         : sign * std::numeric_limits<double>::infinity();
  }
  return sign * std::ldexp(mantissa + 1024, exponent - 25);
}

template <typename T>
void append_integer(std::string& out, T value) {
  char buffer[24];
  const auto result = std::to_chars(buffer, buffer + sizeof buffer, value);
  out.append(buffer, result.ptr);
}

// As Python's json module writes a float: repr's shortest round trip, always with a '.' or an
// exponent so that it reads back as a float, and NaN / Infinity literals.
void append_double(std::string& out, double value) {
  if (std::isnan(value)) {
    out += "NaN";
    return;
  }
  if (std::isinf(value)) {
    out += value > 0 ? "Infinity" : "-Infinity";
    return;
  }
  char buffer[40];
  char* end = std::to_chars(buffer, buffer + sizeof buffer, value).ptr;
  if (std::find_if(buffer, end, [](char c) { return c == '.' || c == 'e'; }) == end) {
    *end++ = '.';
    *end++ = '0';
  }
  out.append(buffer, end);
}

template <typename T, typename Append>
void append_values(std::string& out, const void* data, size_t count, Append append) {
  const auto* bytes = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < count; ++i) {
    if (i != 0) out.push_back(',');
    append(out, load<T>(bytes + i * sizeof(T)));
  }
}

void append_data(std::string& out, const KsOutputTensor& t, const Datatype& type, size_t count) {
  const void* data = t.data;
  switch (type.kind) {
    case Kind::kBool:
      return append_values<uint8_t>(
          out, data, count, [](std::string& o, uint8_t v) { o += v != 0 ? "true" : "false"; });
    case Kind::kUnsigned:
      if (type.size == 1) return append_values<uint8_t>(out, data, count, append_integer<uint8_t>);
      if (type.size == 2)
        return append_values<uint16_t>(out, data, count, append_integer<uint16_t>);
      if (type.size == 4)
        return append_values<uint32_t>(out, data, count, append_integer<uint32_t>);
      return append_values<uint64_t>(out, data, count, append_integer<uint64_t>);
    case Kind::kSigned:
      if (type.size == 1) return append_values<int8_t>(out, data, count, append_integer<int8_t>);
      if (type.size == 2) return append_values<int16_t>(out, data, count, append_integer<int16_t>);
      if (type.size == 4) return append_values<int32_t>(out, data, count, append_integer<int32_t>);
      return append_values<int64_t>(out, data, count, append_integer<int64_t>);
    case Kind::kFloat:
      if (type.size == 2) {
        return append_values<uint16_t>(out, data, count, [](std::string& o, uint16_t v) {
          append_double(o, half_to_double(v));
        });
      }
      if (type.size == 4) {
        return append_values<float>(out, data, count,
                                    [](std::string& o, float v) { append_double(o, v); });
      }
      return append_values<double>(out, data, count, append_double);
  }
}

}  // namespace

KsParse parse_image_infer(std::string_view body, size_t header_length, KsImageRequest& out) {
  if (header_length == 0 || header_length > body.size() || header_length > kMaxHeaderBytes) {
    return KsParse::kFallback;
  }
  JsonDocument& doc = thread_document();
  if (!doc.parse(body.substr(0, header_length)) || !doc.root().is_object()) {
    return KsParse::kFallback;
  }
  std::optional<JsonValue> inputs, outputs, parameters;
  unsigned seen = 0;
  out.id.clear();
  for (const auto& [key, value] : doc.root().members()) {
    if (key == "id") {
      // An empty id is echoed by the Python codec but not by encode_infer_response.
      const bool usable = value.is_null() || (value.is_string() && !value.as_string().empty());
      if (!first_time(seen, 1) || !usable) return KsParse::kFallback;
      out.id.assign(value.as_string());
    } else if (key == "inputs") {
      if (!first_time(seen, 2)) return KsParse::kFallback;
      inputs = value;
    } else if (key == "outputs") {
      if (!first_time(seen, 4)) return KsParse::kFallback;
      outputs = value;
    } else if (key == "parameters") {
      if (!first_time(seen, 8)) return KsParse::kFallback;
      parameters = value;
    } else {
      return KsParse::kFallback;
    }
  }
  out.binary_data_output = false;
  if (parameters && !read_request_parameters(*parameters, out.binary_data_output)) {
    return KsParse::kFallback;
  }
  if (!inputs || !inputs->is_array() || inputs->size() != 1) return KsParse::kFallback;
  size_t count = 0;
  uint64_t size = 0;
  if (!read_input(*inputs->elements().begin(), out.input_name, count, size)) {
    return KsParse::kFallback;
  }
  out.outputs.clear();
  if (outputs && !read_outputs(*outputs, out.binary_data_output, out.outputs)) {
    return KsParse::kFallback;
  }
  if (size != body.size() - header_length ||
      !split_elements(body, header_length, count, out.elements)) {
    return KsParse::kFallback;
  }
  return KsParse::kOk;
}

std::string encode_infer_response(std::string_view model_name, std::string_view model_version,
                                  std::string_view id, const std::vector<KsOutputTensor>& outputs,
                                  size_t& header_length) {
  // One reservation for the whole body: the widest text an element can take is 24 characters.
  size_t reserve = 64 + model_name.size() + model_version.size() + id.size();
  for (const KsOutputTensor& t : outputs) {
    size_t count;
    const Datatype& type = check(t, count);
    reserve += 96 + t.name.size() + 21 * t.shape.size();
    reserve += t.binary ? t.nbytes : count * (type.kind == Kind::kFloat ? 25 : 21);
  }
  std::string out;
  out.reserve(reserve);
  out += "{\"model_name\":";
  append_json_string(out, model_name);
  out += ",\"model_version\":";
  append_json_string(out, model_version);
  if (!id.empty()) {
    out += ",\"id\":";
    append_json_string(out, id);
  }
  out += ",\"outputs\":[";
  bool any_binary = false;
  for (size_t i = 0; i < outputs.size(); ++i) {
    const KsOutputTensor& t = outputs[i];
    size_t count;
    const Datatype& type = check(t, count);
    out += i == 0 ? "{\"name\":" : ",{\"name\":";
    append_json_string(out, t.name);
    out += ",\"datatype\":\"";
    out += type.name;
    out += "\",\"shape\":[";
    for (size_t d = 0; d < t.shape.size(); ++d) {
      if (d != 0) out.push_back(',');
      append_integer(out, t.shape[d]);
    }
    if (t.binary) {
      out += "],\"parameters\":{\"binary_data_size\":";
      append_integer(out, t.nbytes);
      out += "}}";
      any_binary = true;
    } else {
      out += "],\"data\":[";
      append_data(out, t, type, count);
      out += "]}";
    }
  }
  out += "]}";
  header_length = any_binary ? out.size() : 0;
  for (const KsOutputTensor& t : outputs) {
    if (t.binary && t.nbytes != 0) out.append(static_cast<const char*>(t.data), t.nbytes);
  }
  return out;
}

std::string encode_error(std::string_view message) {
  std::string out;
  out.reserve(message.size() + 16);
  out += "{\"error\":";
  append_json_string(out, message);
  out += '}';
  return out;
}

}  // namespace stoker
