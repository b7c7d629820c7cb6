#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/json.hpp"
#include "core/kserve.hpp"

namespace stoker {
namespace {

using namespace std::string_literals;

std::string prefixed(const std::vector<std::string>& items) {
  std::string out;
  for (const std::string& item : items) {
    const auto n = uint32_t(item.size());
    for (int shift = 0; shift < 32; shift += 8) out.push_back(char(n >> shift & 0xff));
    out += item;
  }
  return out;
}

// A JPEG-like element: NUL bytes and invalid UTF-8 included, as in any real image.
std::string jpeg_like(size_t size, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string out = "\xff\xd8\xff\xe0\x00\x10JFIF\x00"s;
  while (out.size() < size) out.push_back(char(rng()));
  return out;
}

struct Body {
  std::string bytes;
  size_t header_length;
};

// `header` with "%SIZE%" standing for the binary part's size, followed by the elements.
Body body_of(std::string header, const std::vector<std::string>& items) {
  const std::string data = prefixed(items);
  const size_t at = header.find("%SIZE%");
  if (at != std::string::npos) header.replace(at, 6, std::to_string(data.size()));
  return Body{header + data, header.size()};
}

// The header tritonclient's HTTP client writes for one binary BYTES input and two outputs, with
// Python's default JSON separators.
const char kTritonHeader[] =
    R"({"inputs": [{"name": "image", "shape": [%N%], "datatype": "BYTES", )"
    R"("parameters": {"binary_data_size": %SIZE%}}], "outputs": [{"name": "class_ids", )"
    R"("parameters": {"binary_data": true}}, {"name": "scores", "parameters": )"
    R"({"binary_data": false}}]})";

std::string triton_header(size_t n) {
  std::string header = kTritonHeader;
  header.replace(header.find("%N%"), 3, std::to_string(n));
  return header;
}

std::string element(const Body& body, const KsSpan& span) {
  return body.bytes.substr(span.offset, span.size);
}

KsParse parse(const Body& body, KsImageRequest& out) {
  return parse_image_infer(body.bytes, body.header_length, out);
}

KsParse parse(const Body& body) {
  KsImageRequest out;
  return parse(body, out);
}

TEST(KserveParse, CompactHeaderFromTheTask) {
  const std::string image = jpeg_like(54321, 1);
  const Body body =
      body_of(R"({"inputs":[{"name":"image","shape":[1],"datatype":"BYTES","parameters":)"
              R"({"binary_data_size":%SIZE%}}],"outputs":[{"name":"class_ids","parameters":)"
              R"({"binary_data":false}}]})",
              {image});
  KsImageRequest out;
  ASSERT_EQ(parse(body, out), KsParse::kOk);
  EXPECT_EQ(out.id, "");
  EXPECT_EQ(out.input_name, "image");
  ASSERT_EQ(out.elements.size(), 1u);
  EXPECT_EQ(out.elements[0].offset, body.header_length + 4);
  EXPECT_EQ(out.elements[0].size, image.size());
  EXPECT_EQ(element(body, out.elements[0]), image);
  ASSERT_EQ(out.outputs.size(), 1u);
  EXPECT_EQ(out.outputs[0].name, "class_ids");
  EXPECT_FALSE(out.outputs[0].binary);
  EXPECT_FALSE(out.binary_data_output);
}

TEST(KserveParse, TritonClientRequestWithSeveralImages) {
  const std::vector<std::string> images = {jpeg_like(300, 2), jpeg_like(17, 3), "", "x"};
  const Body body = body_of(triton_header(images.size()), images);
  KsImageRequest out;
  ASSERT_EQ(parse(body, out), KsParse::kOk);
  ASSERT_EQ(out.elements.size(), images.size());
  for (size_t i = 0; i < images.size(); ++i) EXPECT_EQ(element(body, out.elements[i]), images[i]);
  ASSERT_EQ(out.outputs.size(), 2u);
  EXPECT_EQ(out.outputs[0].name, "class_ids");
  EXPECT_TRUE(out.outputs[0].binary);
  EXPECT_EQ(out.outputs[1].name, "scores");
  EXPECT_FALSE(out.outputs[1].binary);

  // The same request object serves the next request: nothing stale is kept.
  const Body single = body_of(triton_header(1), {"only"});
  ASSERT_EQ(parse(single, out), KsParse::kOk);
  ASSERT_EQ(out.elements.size(), 1u);
  EXPECT_EQ(element(single, out.elements[0]), "only");
  EXPECT_EQ(out.outputs.size(), 2u);
}

TEST(KserveParse, NoOutputsAskForBinaryOutputs) {
  // tritonclient's form when no outputs are named: all outputs, as binary data.
  const Body body = body_of(
      R"({"id": "req-7", "inputs": [{"name": "image", "shape": [2, 1], "datatype": "BYTES", )"
      R"("parameters": {"binary_data_size": %SIZE%}}], "parameters": {"binary_data_output": true}})",
      {"a", "bc"});
  KsImageRequest out;
  ASSERT_EQ(parse(body, out), KsParse::kOk);
  EXPECT_EQ(out.id, "req-7");
  EXPECT_TRUE(out.binary_data_output);
  EXPECT_TRUE(out.outputs.empty());
  ASSERT_EQ(out.elements.size(), 2u);
  EXPECT_EQ(element(body, out.elements[1]), "bc");
}

TEST(KserveParse, OutputsWithoutBinaryDataFollowTheRequestDefault) {
  for (const bool default_binary : {false, true}) {
    const std::string flag = default_binary ? "true" : "false";
    const Body body =
        body_of(R"({"parameters":{"binary_data_output":)" + flag +
                    R"(},"outputs":[{"name":"a"},{"name":"b","parameters":{}},)"
                    R"({"name":"c","parameters":{"binary_data":false}}],"inputs":[{"parameters":)"
                    R"({"binary_data_size":%SIZE%},"datatype":"BYTES","shape":[1],"name":"in"}]})",
                {"img"});
    KsImageRequest out;
    ASSERT_EQ(parse(body, out), KsParse::kOk);
    EXPECT_EQ(out.binary_data_output, default_binary);
    ASSERT_EQ(out.outputs.size(), 3u);
    EXPECT_EQ(out.outputs[0].binary, default_binary);
    EXPECT_EQ(out.outputs[1].binary, default_binary);
    EXPECT_FALSE(out.outputs[2].binary);
    EXPECT_EQ(out.input_name, "in");
  }
}

TEST(KserveParse, IdAndNamesAreDecoded) {
  const Body body =
      body_of(R"({"id":"a\"b\u00e9","inputs":[{"name":"im\u0061ge","shape":[1],"datatype":"BYTES",)"
              R"("parameters":{"binary_data_size":%SIZE%}}],"outputs":[{"name":"\u00fcber"}]})",
              {"z"});
  KsImageRequest out;
  ASSERT_EQ(parse(body, out), KsParse::kOk);
  EXPECT_EQ(out.id, "a\"b\xc3\xa9");
  EXPECT_EQ(out.input_name, "image");
  EXPECT_EQ(out.outputs[0].name,
            "\xc3\xbc"
            "ber");

  const Body null_id = body_of(R"({"id":null,"inputs":[{"name":"i","shape":[1],"datatype":"BYTES",)"
                               R"("parameters":{"binary_data_size":%SIZE%}}]})",
                               {"z"});
  ASSERT_EQ(parse(null_id, out), KsParse::kOk);
  EXPECT_EQ(out.id, "");
}

// A valid request with one part of it replaced; each such request must go to the Python codec.
struct Fallback {
  const char* why;
  std::string header;
  std::vector<std::string> items = {"img1", "image-two"};
};

std::string header_with(const std::string& input, const std::string& rest = "") {
  return R"({"inputs":[)" + input + "]" + rest + "}";
}

// The common form's input with some fields changed: added when new, removed when set to "".
std::string input_with(const std::vector<std::pair<std::string, std::string>>& changes = {}) {
  std::vector<std::pair<std::string, std::string>> fields = {
      {"name", R"("image")"},
      {"shape", "[2]"},
      {"datatype", R"("BYTES")"},
      {"parameters", R"({"binary_data_size":%SIZE%})"}};
  for (const auto& change : changes) {
    auto same = [&](const auto& field) { return field.first == change.first; };
    const auto at = std::find_if(fields.begin(), fields.end(), same);
    if (at == fields.end()) {
      fields.push_back(change);
    } else {
      at->second = change.second;
    }
  }
  std::string out;
  for (const auto& [name, value] : fields) {
    if (!value.empty()) out += (out.empty() ? "{\"" : ",\"") + name + "\":" + value;
  }
  return out + "}";
}

TEST(KserveParse, EveryOtherFormFallsBack) {
  const std::string ok = input_with();
  ASSERT_EQ(parse(body_of(header_with(ok), {"img1", "image-two"})), KsParse::kOk);
  const std::vector<Fallback> cases = {
      {"JSON data", header_with(input_with({{"parameters", ""}, {"data", R"(["a","b"])"}})), {}},
      {"data and binary", header_with(input_with({{"data", R"(["a","b"])"}}))},
      {"two inputs",
       header_with(ok + "," + input_with({{"parameters", R"({"binary_data_size":0})"}}))},
      {"no inputs", header_with("")},
      {"inputs not a list", R"({"inputs":{"name":"image"}})"},
      {"input not an object", header_with("[]")},
      {"FP32 input", header_with(input_with({{"datatype", R"("FP32")"}}))},
      {"UINT8 input", header_with(input_with({{"datatype", R"("UINT8")"}}))},
      {"datatype not a string", header_with(input_with({{"datatype", "1"}}))},
      {"no datatype", header_with(input_with({{"datatype", ""}}))},
      {"no name", header_with(input_with({{"name", ""}}))},
      {"empty name", header_with(input_with({{"name", R"("")"}}))},
      {"name not a string", header_with(input_with({{"name", "null"}}))},
      {"no shape", header_with(input_with({{"shape", ""}}))},
      {"shape too short", header_with(input_with({{"shape", "[3]"}}))},
      {"shape too long", header_with(input_with({{"shape", "[1]"}}))},
      {"shape of zero", header_with(input_with({{"shape", "[0]"}})), {}},
      {"shape [1, 2]", header_with(input_with({{"shape", "[1,2]"}}))},
      {"shape [2, 1, 1]", header_with(input_with({{"shape", "[2,1,1]"}}))},
      {"empty shape", header_with(input_with({{"shape", "[]"}}))},
      {"shape of floats", header_with(input_with({{"shape", "[2.0]"}}))},
      {"shape in exponent form", header_with(input_with({{"shape", "[2e0]"}}))},
      {"negative shape", header_with(input_with({{"shape", "[-2]"}}))},
      {"huge shape", header_with(input_with({{"shape", "[99999999999999999999]"}}))},
      {"no binary_data_size", header_with(input_with({{"parameters", "{}"}}))},
      {"input parameters null", header_with(input_with({{"parameters", "null"}}))},
      {"size too small", header_with(input_with({{"parameters", R"({"binary_data_size":3})"}}))},
      {"size too large", header_with(input_with({{"parameters", R"({"binary_data_size":9999})"}}))},
      {"negative size", header_with(input_with({{"parameters", R"({"binary_data_size":-21})"}}))},
      {"size as a string",
       header_with(input_with({{"parameters", R"({"binary_data_size":"%SIZE%"})"}}))},
      {"size as a float",
       header_with(input_with({{"parameters", R"({"binary_data_size":%SIZE%.0})"}}))},
      {"unknown input parameter",
       header_with(
           input_with({{"parameters", R"({"binary_data_size":%SIZE%,"content_type":"x"})"}}))},
      {"unknown input key", header_with(input_with({{"x", "1"}}))},
      {"repeated input key", header_with(input_with({{"shape", R"([2],"shape":[2])"}}))},
      {"unknown request parameter", header_with(ok, R"(,"parameters":{"priority":1})")},
      {"two request parameters",
       header_with(ok, R"(,"parameters":{"binary_data_output":true,"timeout":5})")},
      {"binary_data_output not a bool",
       header_with(ok, R"(,"parameters":{"binary_data_output":1})")},
      {"request parameters not an object", header_with(ok, R"(,"parameters":[])")},
      {"unknown request key", header_with(ok, R"(,"model_name":"m")")},
      {"repeated request key", header_with(ok, R"(,"id":"a","id":"b")")},
      {"repeated inputs", header_with(ok, R"(,"inputs":[])")},
      {"empty id", header_with(ok, R"(,"id":"")")},
      {"numeric id", header_with(ok, R"(,"id":7)")},
      {"outputs not a list", header_with(ok, R"(,"outputs":{"name":"a"})")},
      {"outputs null", header_with(ok, R"(,"outputs":null)")},
      {"output not an object", header_with(ok, R"(,"outputs":["a"])")},
      {"output without name", header_with(ok, R"(,"outputs":[{"parameters":{}}])")},
      {"output with empty name", header_with(ok, R"(,"outputs":[{"name":""}])")},
      {"output name not a string", header_with(ok, R"(,"outputs":[{"name":3}])")},
      {"output requested twice", header_with(ok, R"(,"outputs":[{"name":"a"},{"name":"a"}])")},
      {"unknown output parameter",
       header_with(ok, R"(,"outputs":[{"name":"a","parameters":{"class_count":3}}])")},
      {"binary_data not a bool",
       header_with(ok, R"(,"outputs":[{"name":"a","parameters":{"binary_data":"yes"}}])")},
      {"unknown output key", header_with(ok, R"(,"outputs":[{"name":"a","shape":[1]}])")},
      {"not an object", R"(["inputs"])"},
      {"invalid JSON", header_with(ok) + ","},
      {"NaN in the header", header_with(ok, R"(,"parameters":{"binary_data_output":NaN})")},
  };
  JsonDocument doc;
  for (const Fallback& c : cases) {
    const Body body = body_of(c.header, c.items);
    EXPECT_EQ(parse(body), KsParse::kFallback) << c.why;
    // Refused for the form, not for a typo in the case: only the last two are meant to be invalid.
    const bool meant_invalid = &c >= &cases[cases.size() - 2];
    EXPECT_EQ(doc.parse(std::string_view(body.bytes).substr(0, body.header_length)), !meant_invalid)
        << c.why << ": " << doc.error();
  }
}

TEST(KserveParse, BadBinaryPartsFallBack) {
  const std::string header = header_with(input_with());
  const Body good = body_of(header, {"img1", "image-two"});
  ASSERT_EQ(parse(good), KsParse::kOk);
  const std::string json = good.bytes.substr(0, good.header_length);
  const std::string data = good.bytes.substr(good.header_length);
  const auto with_data = [&](const std::string& d) {
    const std::string size = std::to_string(d.size());
    const std::string h =
        header_with(input_with({{"parameters", R"({"binary_data_size":)" + size + "}"}}));
    return Body{h + d, h.size()};
  };
  EXPECT_EQ(parse(with_data(data)), KsParse::kOk);
  // Sizes that agree with the header but not with the elements.
  EXPECT_EQ(parse(with_data(data.substr(0, data.size() - 1))), KsParse::kFallback) << "truncated";
  EXPECT_EQ(parse(with_data(data + "x")), KsParse::kFallback) << "a byte after the elements";
  EXPECT_EQ(parse(with_data(data + prefixed({"3rd"}))), KsParse::kFallback) << "a third element";
  EXPECT_EQ(parse(with_data(data.substr(0, 8))), KsParse::kFallback) << "one element only";
  EXPECT_EQ(parse(with_data(data + "\0\0"s)), KsParse::kFallback) << "half a prefix after";
  std::string bad_prefix = data;
  bad_prefix[0] = char(0xff);  // the first element claims ~4 GB
  EXPECT_EQ(parse(with_data(bad_prefix)), KsParse::kFallback) << "bad prefix";
  bad_prefix = data;
  bad_prefix[0] = 5;  // one byte too long, so the second prefix is misread
  EXPECT_EQ(parse(with_data(bad_prefix)), KsParse::kFallback) << "misaligned prefix";
  EXPECT_EQ(parse(with_data("")), KsParse::kFallback) << "no data";

  // The header's size against the body as sent.
  KsImageRequest out;
  EXPECT_EQ(parse_image_infer(good.bytes.substr(0, good.bytes.size() - 1), good.header_length, out),
            KsParse::kFallback)
      << "truncated body";
  EXPECT_EQ(parse_image_infer(good.bytes + "x", good.header_length, out), KsParse::kFallback);
  EXPECT_EQ(parse_image_infer(good.bytes, good.header_length - 1, out), KsParse::kFallback);
  EXPECT_EQ(parse_image_infer(good.bytes, good.header_length + 1, out), KsParse::kFallback);
  EXPECT_EQ(parse_image_infer(good.bytes, good.bytes.size() + 1, out), KsParse::kFallback)
      << "header_length beyond the body";
  EXPECT_EQ(parse_image_infer(good.bytes, 0, out), KsParse::kFallback) << "no header length";
  EXPECT_EQ(parse_image_infer(json, 0, out), KsParse::kFallback) << "all JSON";
  EXPECT_EQ(parse_image_infer("", 0, out), KsParse::kFallback);
  EXPECT_EQ(parse_image_infer("", 5, out), KsParse::kFallback);
}

TEST(KserveParse, OversizedHeadersFallBack) {
  const std::string padding(70'000, ' ');  // valid JSON whitespace, beyond the header limit
  const Body body = body_of(header_with(input_with()) + padding, {"img1", "image-two"});
  EXPECT_EQ(parse(body), KsParse::kFallback);
  std::string deep = header_with(input_with(), R"(,"outputs":[[[[[[[[[[]]]]]]]]]])");
  EXPECT_EQ(parse(body_of(deep, {"img1", "image-two"})), KsParse::kFallback);
  std::string many = R"(,"outputs":[)";
  for (int i = 0; i < 100; ++i) many += R"({"name":"o)" + std::to_string(i) + R"("},)";
  many.back() = ']';
  EXPECT_EQ(parse(body_of(header_with(input_with(), many), {"img1", "image-two"})),
            KsParse::kFallback);
}

// A parse that succeeds must describe the body exactly: spans in order, inside the body, and
// together with their prefixes covering the binary part.
void expect_consistent(std::string_view body, size_t header_length, const KsImageRequest& out) {
  ASSERT_FALSE(out.elements.empty());
  size_t offset = header_length;
  for (const KsSpan& span : out.elements) {
    ASSERT_EQ(span.offset, offset + 4);
    uint32_t length;
    std::memcpy(&length, body.data() + offset, 4);
    ASSERT_EQ(span.size, length);
    offset = span.offset + span.size;
    ASSERT_LE(offset, body.size());
  }
  EXPECT_EQ(offset, body.size());
  EXPECT_FALSE(out.input_name.empty());
}

TEST(KserveParse, MutatedRequestsNeverCrash) {
  std::mt19937 rng(2024);
  const std::vector<std::string> images = {jpeg_like(40, 4), jpeg_like(9, 5), "ab"};
  const Body base = body_of(
      R"({"id": "r1", "inputs": [{"name": "image", "shape": [3, 1], "datatype": "BYTES", )"
      R"("parameters": {"binary_data_size": %SIZE%}}], "outputs": [{"name": "class_ids", )"
      R"("parameters": {"binary_data": true}}], "parameters": {"binary_data_output": false}})",
      images);
  int ok = 0;
  KsImageRequest out, again;
  for (int round = 0; round < 20000; ++round) {
    std::string body = base.bytes;
    size_t header_length = base.header_length;
    for (int edits = 1 + int(rng() % 3); edits > 0; --edits) {
      const size_t at = body.empty() ? 0 : rng() % body.size();
      switch (rng() % 5) {
        case 0:
          if (!body.empty()) body[at] = char(rng());
          break;
        case 1:
          if (!body.empty()) body[at] = "{}[]\",:0123456789 -.e"[rng() % 21];
          break;
        case 2:
          body.insert(at, 1, char(rng()));
          break;
        case 3:
          if (!body.empty()) body.erase(at, 1 + rng() % 4);
          break;
        default:
          header_length = rng() % 2 ? rng() % (body.size() + 8) : header_length + rng() % 3 - 1;
      }
    }
    const KsParse result = parse_image_infer(body, header_length, out);
    ASSERT_EQ(parse_image_infer(body, header_length, again), result);
    if (result != KsParse::kOk) continue;
    ++ok;
    expect_consistent(body, header_length, out);
    EXPECT_EQ(again.id, out.id);
    EXPECT_EQ(again.elements.size(), out.elements.size());
  }
  EXPECT_GT(ok, 0);
}

template <typename T>
KsOutputTensor tensor(const std::string& name, const std::string& datatype,
                      std::vector<int64_t> shape, const std::vector<T>& values,
                      bool binary = false) {
  return KsOutputTensor{name,  datatype, std::move(shape), values.data(), values.size() * sizeof(T),
                        binary};
}

std::string encode(const std::vector<KsOutputTensor>& outputs, size_t* header_length = nullptr) {
  size_t length = 12345;
  std::string body = encode_infer_response("m", "1", "", outputs, length);
  if (header_length != nullptr) *header_length = length;
  return body;
}

// The text of the single output's "data" array.
template <typename T>
std::string data_text(const std::string& datatype, const std::vector<T>& values) {
  size_t length;
  const std::string body =
      encode({tensor("x", datatype, {int64_t(values.size())}, values)}, &length);
  EXPECT_EQ(length, 0u);
  const size_t start = body.find("\"data\":[") + 8;
  return body.substr(start, body.size() - 4 - start);
}

TEST(KserveEncode, TwoSmallTensorsAsJson) {
  const std::vector<int64_t> ids = {3, 1, 4, 1, 5};
  const std::vector<float> scores = {0.5f, 0.25f, 0.1f, 1.0f, -2.0f};
  size_t length;
  const std::string body = encode_infer_response(
      "tiny", "1", "req-1",
      {tensor("class_ids", "INT64", {1, 5}, ids), tensor("scores", "FP32", {1, 5}, scores)},
      length);
  EXPECT_EQ(length, 0u);
  EXPECT_EQ(body, R"({"model_name":"tiny","model_version":"1","id":"req-1","outputs":[)"
                  R"({"name":"class_ids","datatype":"INT64","shape":[1,5],"data":[3,1,4,1,5]},)"
                  R"({"name":"scores","datatype":"FP32","shape":[1,5],)"
                  R"("data":[0.5,0.25,0.10000000149011612,1.0,-2.0]}]})");
}

TEST(KserveEncode, EveryDatatypeAsJson) {
  EXPECT_EQ(data_text("BOOL", std::vector<uint8_t>{1, 0, 2}), "true,false,true");
  EXPECT_EQ(data_text("UINT8", std::vector<uint8_t>{0, 255}), "0,255");
  EXPECT_EQ(data_text("UINT16", std::vector<uint16_t>{7, 65535}), "7,65535");
  EXPECT_EQ(data_text("UINT32", std::vector<uint32_t>{UINT32_MAX}), "4294967295");
  EXPECT_EQ(data_text("UINT64", std::vector<uint64_t>{UINT64_MAX}), "18446744073709551615");
  EXPECT_EQ(data_text("INT8", std::vector<int8_t>{-128, 0, 127}), "-128,0,127");
  EXPECT_EQ(data_text("INT16", std::vector<int16_t>{-32768, 32767}), "-32768,32767");
  EXPECT_EQ(data_text("INT32", std::vector<int32_t>{INT32_MIN, INT32_MAX}),
            "-2147483648,2147483647");
  EXPECT_EQ(data_text("INT64", std::vector<int64_t>{INT64_MIN, INT64_MAX}),
            "-9223372036854775808,9223372036854775807");
  // Half bit patterns: 1, 0.5, max, smallest subnormal, -0, nearest to 1/3, ±inf, NaN.
  EXPECT_EQ(data_text("FP16", std::vector<uint16_t>{0x3c00, 0x3800, 0x7bff, 0x0001, 0x8000, 0x3555,
                                                    0x7c00, 0xfc00, 0x7e00}),
            "1.0,0.5,65504.0,5.960464477539063e-08,-0.0,0.333251953125,Infinity,-Infinity,NaN");
  // FP32 widened to double first, as float(np.float32(x)) is, then the shortest repr.
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(data_text("FP32", std::vector<float>{0.1f, 100.0f, 3.4028235e38f, 1e-45f, -0.0f, inf,
                                                 -inf, std::nanf("")}),
            "0.10000000149011612,100.0,3.4028234663852886e+38,1.401298464324817e-45,-0.0,"
            "Infinity,-Infinity,NaN");
  const double dinf = std::numeric_limits<double>::infinity();
  EXPECT_EQ(data_text("FP64", std::vector<double>{0.1, 1e300, 5e-324, 123456789.125, 1e22, -1.5e-7,
                                                  -dinf, std::nan("")}),
            "0.1,1e+300,5e-324,123456789.125,1e+22,-1.5e-07,-Infinity,NaN");
}

TEST(KserveEncode, FloatsReadBackExactly) {
  std::mt19937 rng(3);
  std::vector<float> floats(2000);
  for (float& f : floats) {
    do {
      const uint32_t bits = uint32_t(rng());
      std::memcpy(&f, &bits, 4);
    } while (!std::isfinite(f));
  }
  JsonDocument doc;
  const std::string body = encode({tensor("f", "FP32", {2000}, floats)});
  ASSERT_TRUE(doc.parse(body)) << doc.error();
  const JsonValue data = *(*doc.root().find("outputs")->elements().begin()).find("data");
  ASSERT_EQ(data.size(), floats.size());
  size_t i = 0;
  for (const JsonValue& v : data.elements()) {
    EXPECT_FALSE(v.is_integer());  // written as floats even when whole
    EXPECT_EQ(v.as_double(), double(floats[i++]));
  }
}

TEST(KserveEncode, BinaryOutputsFollowTheHeaderInOrder) {
  const std::vector<int64_t> ids = {3, 1, 4};
  const std::vector<float> scores = {0.5f, -1.0f};
  const std::vector<uint16_t> halves = {0x3c00};
  size_t length;
  const std::string body =
      encode({tensor("ids", "INT64", {3}, ids, true), tensor("scores", "FP32", {1, 2}, scores),
              tensor("h", "FP16", {1, 1}, halves, true)},
             &length);
  ASSERT_EQ(length, body.size() - 24 - 2);
  EXPECT_EQ(
      body.substr(0, length),
      R"({"model_name":"m","model_version":"1","outputs":[)"
      R"({"name":"ids","datatype":"INT64","shape":[3],"parameters":{"binary_data_size":24}},)"
      R"({"name":"scores","datatype":"FP32","shape":[1,2],"data":[0.5,-1.0]},)"
      R"({"name":"h","datatype":"FP16","shape":[1,1],"parameters":{"binary_data_size":2}}]})");
  std::string expected(reinterpret_cast<const char*>(ids.data()), 24);
  expected += "\x00\x3c"s;
  EXPECT_EQ(body.substr(length), expected);
}

TEST(KserveEncode, EmptyAndScalarShapes) {
  const std::vector<int32_t> one = {42};
  const std::vector<float> none;
  size_t length;
  const std::string body = encode({tensor("s", "INT32", {}, one), tensor("e", "FP32", {0, 3}, none),
                                   tensor("b", "UINT8", {0}, std::vector<uint8_t>{}, true)},
                                  &length);
  EXPECT_EQ(body.substr(0, length),
            R"({"model_name":"m","model_version":"1","outputs":[)"
            R"({"name":"s","datatype":"INT32","shape":[],"data":[42]},)"
            R"({"name":"e","datatype":"FP32","shape":[0,3],"data":[]},)"
            R"({"name":"b","datatype":"UINT8","shape":[0],"parameters":{"binary_data_size":0}}]})");
  EXPECT_EQ(length, body.size());  // a binary output, though of no bytes
  EXPECT_EQ(encode({}), R"({"model_name":"m","model_version":"1","outputs":[]})");
}

TEST(KserveEncode, NamesAndIdsAreEscaped) {
  const std::vector<uint8_t> flag = {1};
  size_t length;
  const std::string body = encode_infer_response("mo\"del", "", "id\n\xc3\xa9\x01",
                                                 {tensor("out\\put", "BOOL", {1}, flag)}, length);
  EXPECT_EQ(
      body,
      R"({"model_name":"mo\"del","model_version":"","id":"id\n)"
      "\xc3\xa9"
      R"(\u0001","outputs":[{"name":"out\\put","datatype":"BOOL","shape":[1],"data":[true]}]})");
  JsonDocument doc;
  ASSERT_TRUE(doc.parse(body));
  EXPECT_EQ(doc.root().find("id")->as_string(), "id\n\xc3\xa9\x01");
  EXPECT_EQ(doc.root().find("model_name")->as_string(), "mo\"del");
}

TEST(KserveEncode, InconsistentTensorsAreRefused) {
  const std::vector<float> four(4, 1.0f);
  const auto refuses = [](const KsOutputTensor& t) {
    size_t length;
    EXPECT_THROW(encode_infer_response("m", "1", "", {t}, length), std::invalid_argument) << t.name;
  };
  refuses(tensor("too few elements", "FP32", {5}, four));
  refuses(tensor("too many elements", "FP32", {3}, four));
  refuses(tensor("wrong element size", "FP64", {4}, four));
  refuses(tensor("unknown datatype", "FP8", {4}, four));
  refuses(tensor("BYTES is not numeric", "BYTES", {4}, four));
  refuses(tensor("negative dimension", "FP32", {-4}, four));
  refuses(tensor("overflowing shape", "FP32", {INT64_MAX, INT64_MAX, 4}, four));
  refuses(KsOutputTensor{"no data", "FP32", {4}, nullptr, 16, false});
}

TEST(KserveEncode, Errors) {
  EXPECT_EQ(encode_error("bad"), R"({"error":"bad"})");
  EXPECT_EQ(encode_error("input \"x\"\tis\n\\wrong\x02"),
            R"({"error":"input \"x\"\tis\n\\wrong\u0002"})");
}

}  // namespace
}  // namespace stoker
