// JPEG decoding on an NVIDIA GPU through nvJPEG, loaded at run time: stoker neither links nor
// needs the CUDA toolkit to build. The hardware backend runs on the GPU's JPEG engines (A100,
// H100, H200), which leaves the SMs to the model; elsewhere the CUDA backend decodes on the SMs.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "core/batch.hpp"

namespace stoker {

struct NvJpegApi;

enum class NvJpegBackend : uint8_t { kAuto, kHardware, kCuda };

// What the decoder found in a JPEG's header.
struct NvJpegHeader {
  int width = 0;
  int height = 0;
  bool batched = false;  // the batched decoder takes it (the hardware engines' constraints)
  std::string error;     // non-empty: the header could not be read
};

// Where `decode` put an item: planes at out + offset, or the reason it failed.
struct NvJpegResult {
  int width = 0;
  int height = 0;
  size_t offset = 0;
  std::string error;
};

// One nvJPEG handle and decode state for the CUDA device current on the constructing thread.
// Every call must run with that device current. Calls are serialized.
class NvJpegDecoder {
 public:
  // Opens the first of `libraries` that loads (or the default library names when empty) and
  // creates a handle. kAuto takes the hardware engines where the GPU has them. Images of more
  // than `max_pixels` pixels are refused (0: no limit). Throws std::runtime_error naming each
  // failure.
  NvJpegDecoder(NvJpegBackend backend, const std::vector<std::string>& libraries,
                uint64_t max_pixels);
  ~NvJpegDecoder();
  NvJpegDecoder(const NvJpegDecoder&) = delete;
  NvJpegDecoder& operator=(const NvJpegDecoder&) = delete;

  bool hardware() const { return hardware_; }
  const std::string& library() const { return library_; }

  std::vector<NvJpegHeader> inspect(const std::vector<ByteSpan>& items);

  // Decodes the items to planar RGB (3 planes of height x width bytes each) laid out one after
  // another in device memory at `out`, on `stream` (a cudaStream_t). The headers are read again
  // here, so the layout never trusts the caller: std::invalid_argument when `capacity` bytes do
  // not hold it (`output_bytes` says how many do). A bad item fails alone, with its error set.
  std::vector<NvJpegResult> decode(const std::vector<ByteSpan>& items, uint8_t* out,
                                   size_t capacity, void* stream);

  // Bytes of output `decode` needs for items with these headers.
  static size_t output_bytes(const std::vector<NvJpegHeader>& headers);

 private:
  std::vector<NvJpegHeader> inspect_locked(const std::vector<ByteSpan>& items);
  int batched(const std::vector<ByteSpan>& items, const std::vector<NvJpegResult>& results,
              uint8_t* out, const std::vector<size_t>& which, void* stream);

  std::shared_ptr<const NvJpegApi> api_;
  std::string library_;
  void* handle_ = nullptr;
  void* state_ = nullptr;
  void* jpeg_stream_ = nullptr;
  uint64_t max_pixels_ = 0;
  bool hardware_ = false;
  std::mutex mutex_;
};

// nvJPEG's name for a status code.
const char* nvjpeg_status_name(int status);

}  // namespace stoker
