// nvJPEG through dlopen: the few entry points stoker calls, declared from nvJPEG's documented C API
// (opaque handles, int status codes, enums as their documented values).
#include "core/nvjpeg.hpp"

#include <dlfcn.h>

#include <algorithm>
#include <stdexcept>
#include <type_traits>

namespace stoker {

namespace {

constexpr int kSuccess = 0;
constexpr int kBackendCudaHybrid = 2;  // NVJPEG_BACKEND_GPU_HYBRID: Huffman decode on the SMs too
constexpr int kBackendHardware = 3;    // NVJPEG_BACKEND_HARDWARE: the JPEG engines
constexpr int kOutputRgb = 3;          // NVJPEG_OUTPUT_RGB: three planes
constexpr int kMaxComponents = 4;
constexpr unsigned kMaxSide = 65535;  // JPEG's own limit
constexpr size_t kMaxBatch = 64;

struct Image {  // nvjpegImage_t
  unsigned char* channel[kMaxComponents];
  size_t pitch[kMaxComponents];
};

const char* const kDefaultLibraries[] = {"libnvjpeg.so.13", "libnvjpeg.so.12", "libnvjpeg.so.11",
                                         "libnvjpeg.so"};

}  // namespace

struct NvJpegApi {
  int (*create_ex)(int, void*, void*, unsigned, void**) = nullptr;
  int (*destroy)(void*) = nullptr;
  int (*state_create)(void*, void**) = nullptr;
  int (*state_destroy)(void*) = nullptr;
  int (*stream_create)(void*, void**) = nullptr;
  int (*stream_destroy)(void*) = nullptr;
  int (*parse_header)(void*, const unsigned char*, size_t, void*) = nullptr;
  int (*frame_dimensions)(void*, unsigned*, unsigned*) = nullptr;
  int (*batched_supported)(void*, void*, int*) = nullptr;
  int (*batched_initialize)(void*, void*, int, int, int) = nullptr;
  int (*batched_decode)(void*, void*, const unsigned char* const*, const size_t*, Image*,
                        void*) = nullptr;

  // Resolves every entry point from an opened library; false names the first one missing.
  bool resolve(void* lib, std::string& missing) {
    bool ok = true;
    auto get = [&](auto& fn, const char* name) {
      void* sym = dlsym(lib, name);
      if (sym == nullptr && ok) {
        missing = name;
        ok = false;
      }
      fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(sym);
    };
    get(create_ex, "nvjpegCreateEx");
    get(destroy, "nvjpegDestroy");
    get(state_create, "nvjpegJpegStateCreate");
    get(state_destroy, "nvjpegJpegStateDestroy");
    get(stream_create, "nvjpegJpegStreamCreate");
    get(stream_destroy, "nvjpegJpegStreamDestroy");
    get(parse_header, "nvjpegJpegStreamParseHeader");
    get(frame_dimensions, "nvjpegJpegStreamGetFrameDimensions");
    get(batched_supported, "nvjpegDecodeBatchedSupported");
    get(batched_initialize, "nvjpegDecodeBatchedInitialize");
    get(batched_decode, "nvjpegDecodeBatched");
    return ok;
  }
};

const char* nvjpeg_status_name(int status) {
  switch (status) {
    case 0:
      return "success";
    case 1:
      return "not initialized";
    case 2:
      return "invalid parameter";
    case 3:
      return "bad JPEG";
    case 4:
      return "JPEG not supported";
    case 5:
      return "allocator failure";
    case 6:
      return "execution failed";
    case 7:
      return "architecture mismatch";
    case 8:
      return "internal error";
    case 9:
      return "implementation not supported";
    case 10:
      return "incomplete bitstream";
    default:
      return "unknown status";
  }
}

namespace {

std::string failure(const char* what, int status) {
  return std::string(what) + ": " + nvjpeg_status_name(status) + " (" + std::to_string(status) +
         ")";
}

}  // namespace

NvJpegDecoder::NvJpegDecoder(NvJpegBackend backend, const std::vector<std::string>& libraries,
                             uint64_t max_pixels)
    : max_pixels_(max_pixels) {
  std::vector<std::string> names = libraries;
  if (names.empty()) names.assign(std::begin(kDefaultLibraries), std::end(kDefaultLibraries));
  std::string errors;
  auto api = std::make_shared<NvJpegApi>();
  for (const std::string& name : names) {
    // Never closed: CUDA libraries must not unload while the process may still use the device.
    void* lib = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr) {
      const char* why = dlerror();
      errors += "\n  " + (why != nullptr ? std::string(why) : name + ": dlopen failed");
      continue;
    }
    std::string missing;
    if (!api->resolve(lib, missing)) {
      errors += "\n  " + name + ": no symbol " + missing;
      continue;
    }
    library_ = name;
    break;
  }
  if (library_.empty()) throw std::runtime_error("nvJPEG could not be loaded:" + errors);
  api_ = api;

  int status = -1;
  if (backend != NvJpegBackend::kCuda) {
    status = api_->create_ex(kBackendHardware, nullptr, nullptr, 0, &handle_);
    hardware_ = status == kSuccess;
    if (!hardware_ && backend == NvJpegBackend::kHardware) {
      throw std::runtime_error(failure("this GPU has no nvJPEG hardware decoder", status));
    }
  }
  if (!hardware_) {
    handle_ = nullptr;
    status = api_->create_ex(kBackendCudaHybrid, nullptr, nullptr, 0, &handle_);
    if (status != kSuccess) throw std::runtime_error(failure("nvjpegCreateEx", status));
  }
  if ((status = api_->state_create(handle_, &state_)) != kSuccess ||
      (status = api_->stream_create(handle_, &jpeg_stream_)) != kSuccess) {
    if (state_ != nullptr) api_->state_destroy(state_);
    api_->destroy(handle_);
    throw std::runtime_error(failure("nvJPEG decode state", status));
  }
}

NvJpegDecoder::~NvJpegDecoder() {
  api_->stream_destroy(jpeg_stream_);
  api_->state_destroy(state_);
  api_->destroy(handle_);
}

std::vector<NvJpegHeader> NvJpegDecoder::inspect(const std::vector<ByteSpan>& items) {
  std::lock_guard<std::mutex> lock(mutex_);
  return inspect_locked(items);
}

std::vector<NvJpegHeader> NvJpegDecoder::inspect_locked(const std::vector<ByteSpan>& items) {
  std::vector<NvJpegHeader> headers(items.size());
  for (size_t i = 0; i < items.size(); ++i) {
    NvJpegHeader& h = headers[i];
    if (items[i].size == 0) {
      h.error = "empty image data";
      continue;
    }
    int status = api_->parse_header(handle_, items[i].data, items[i].size, jpeg_stream_);
    unsigned w = 0, hgt = 0;
    if (status == kSuccess) status = api_->frame_dimensions(jpeg_stream_, &w, &hgt);
    if (status != kSuccess) {
      h.error = failure("JPEG header", status);
      continue;
    }
    if (w == 0 || hgt == 0 || w > kMaxSide || hgt > kMaxSide) {
      h.error = "JPEG header: width " + std::to_string(w) + ", height " + std::to_string(hgt) +
                " out of range";
      continue;
    }
    if (max_pixels_ != 0 && uint64_t(w) * hgt > max_pixels_) {
      h.error = "image of " + std::to_string(w) + "x" + std::to_string(hgt) + " exceeds the " +
                std::to_string(max_pixels_) + "-pixel limit";
      continue;
    }
    h.width = int(w);
    h.height = int(hgt);
    int unsupported = 1;
    h.batched = api_->batched_supported(handle_, jpeg_stream_, &unsupported) == kSuccess &&
                unsupported == 0;
  }
  return headers;
}

size_t NvJpegDecoder::output_bytes(const std::vector<NvJpegHeader>& headers) {
  size_t total = 0;
  for (const NvJpegHeader& h : headers) {
    if (h.error.empty()) total += 3 * size_t(h.width) * size_t(h.height);
  }
  return total;
}

int NvJpegDecoder::batched(const std::vector<ByteSpan>& items,
                           const std::vector<NvJpegResult>& results, uint8_t* out,
                           const std::vector<size_t>& which, void* stream) {
  int status = api_->batched_initialize(handle_, state_, int(which.size()), 1, kOutputRgb);
  if (status != kSuccess) return status;
  std::vector<const unsigned char*> data(which.size());
  std::vector<size_t> lengths(which.size());
  std::vector<Image> images(which.size());
  for (size_t k = 0; k < which.size(); ++k) {
    const NvJpegResult& r = results[which[k]];
    data[k] = items[which[k]].data;
    lengths[k] = items[which[k]].size;
    const size_t plane = size_t(r.width) * size_t(r.height);
    for (int c = 0; c < kMaxComponents; ++c) {
      images[k].channel[c] = c < 3 ? out + r.offset + size_t(c) * plane : nullptr;
      images[k].pitch[c] = c < 3 ? size_t(r.width) : 0;
    }
  }
  return api_->batched_decode(handle_, state_, data.data(), lengths.data(), images.data(), stream);
}

std::vector<NvJpegResult> NvJpegDecoder::decode(const std::vector<ByteSpan>& items, uint8_t* out,
                                                size_t capacity, void* stream) {
  std::lock_guard<std::mutex> lock(mutex_);
  const std::vector<NvJpegHeader> headers = inspect_locked(items);
  const size_t needed = output_bytes(headers);
  if (needed > capacity || (needed > 0 && out == nullptr)) {
    throw std::invalid_argument("the output holds " + std::to_string(capacity) +
                                " bytes; these images need " + std::to_string(needed));
  }
  std::vector<NvJpegResult> results(items.size());
  std::vector<size_t> which;
  size_t offset = 0;
  for (size_t i = 0; i < items.size(); ++i) {
    NvJpegResult& r = results[i];
    if (!headers[i].error.empty()) {
      r.error = headers[i].error;
      continue;
    }
    r.width = headers[i].width;
    r.height = headers[i].height;
    r.offset = offset;
    offset += 3 * size_t(r.width) * size_t(r.height);
    which.push_back(i);
  }
  // Calls of at most kMaxBatch images, the sizes the benchmarks and device tests cover.
  for (size_t begin = 0; begin < which.size(); begin += kMaxBatch) {
    const std::vector<size_t> chunk(which.begin() + begin,
                                    which.begin() + std::min(which.size(), begin + kMaxBatch));
    if (batched(items, results, out, chunk, stream) == kSuccess) continue;
    // One bad image fails the whole batched call: decode one by one so that it fails alone.
    for (size_t i : chunk) {
      const int status = batched(items, results, out, {i}, stream);
      if (status != kSuccess) results[i].error = failure("nvJPEG decode", status);
    }
  }
  return results;
}

}  // namespace stoker
