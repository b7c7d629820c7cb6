// The native half of stoker's KServe v2 / Open Inference Protocol codec, with Triton's binary
// tensor data extension: a fast path for the one request form that carries nearly all traffic
// (encoded images as one binary BYTES input), and the infer response encoder. Anything outside the
// fast path's form is handed to the Python codec, which stays the full implementation and writes
// the precise 400 messages; so the fast path may refuse any request, but must never accept one
// that the Python codec would read differently.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace stoker {

struct KsSpan {  // a byte range inside the request body
  size_t offset = 0;
  size_t size = 0;
};

struct KsRequestedOutput {
  std::string name;
  // Whether to send it as binary data: its own "binary_data" when it has one, else the request's
  // "binary_data_output".
  bool binary = false;
};

struct KsImageRequest {
  std::string id;  // the request's "id", echoed in the response ("" when absent or null)
  std::string input_name;
  std::vector<KsSpan> elements;            // each element of the single BYTES input, in order
  std::vector<KsRequestedOutput> outputs;  // requested outputs in order; empty = all outputs
  bool binary_data_output = false;         // request "parameters": {"binary_data_output": true}
};

enum class KsParse { kOk, kFallback };

// Reads the common form only: a JSON header of `header_length` bytes (the
// Inference-Header-Content-Length value; 0 when the header is absent, and then the request is
// never the common form) holding one input of datatype BYTES whose data is binary
// ("parameters": {"binary_data_size": n}), shape [N] or [N, 1] with N >= 1; the binary part after
// the header holding exactly N length-prefixed elements (4-byte little-endian length, then the
// bytes) totalling n bytes, and nothing after them. Outputs may carry "binary_data": true/false
// and no other parameter; the request's parameters may hold only "binary_data_output". Unknown or
// repeated keys, an empty "id", and headers over 64 KiB are left to the Python codec too (a null
// "id" counts as absent).
// Anything else, malformed input included, returns kFallback and leaves `out` unspecified.
// Never throws on any bytes; `out`'s spans point into `body`.
KsParse parse_image_infer(std::string_view body, size_t header_length, KsImageRequest& out);

struct KsOutputTensor {
  std::string name;
  std::string datatype;  // "BOOL", "UINT8".."UINT64", "INT8".."INT64", "FP16", "FP32", "FP64"
  std::vector<int64_t> shape;
  const void* data = nullptr;  // row-major, little-endian, element size from datatype
  size_t nbytes = 0;           // must equal product(shape) * element size
  bool binary = false;         // raw bytes after the JSON header instead of a JSON "data" array
};

// The infer response body: the JSON header, then the data of the binary outputs in output order.
// `header_length` is set to the JSON part's length when any output is binary (the server then
// sends Inference-Header-Content-Length), else 0. "model_version" is always written and "id" only
// when non-empty. Floats are written as Python's json module writes them (the shortest text that
// reads back as the same double; FP16 and FP32 widened exactly first; NaN, Infinity, -Infinity),
// so that a Python client reads the same values either codec writes. Throws
// std::invalid_argument for an unknown datatype, a negative dimension, or data whose size does
// not match its shape.
std::string encode_infer_response(std::string_view model_name, std::string_view model_version,
                                  std::string_view id, const std::vector<KsOutputTensor>& outputs,
                                  size_t& header_length);

// {"error":"<message>"} with the message JSON-escaped.
std::string encode_error(std::string_view message);

}  // namespace stoker
