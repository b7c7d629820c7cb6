// The crash test: real-world and generated images, every kind of truncation and deterministic
// random corruption through Preprocessor::run and decode_rgb, under AddressSanitizer and UBSan.
// Each call must succeed or report an error status: never crash, hang, leak or throw otherwise.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "core/image.hpp"
#include "core/pipeline.hpp"
#include "test_util.hpp"

namespace stoker {
namespace {

using test::Bytes;

struct Input {
  std::string name;
  Bytes data;
};

int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::atoi(v) : fallback;
}

// Counts of the fuzz run (statuses seen), shared between worker threads.
struct Tally {
  std::mutex mutex;
  std::map<std::string, size_t> counts;
  std::vector<std::string> notes;
  void add(const std::string& key) {
    std::lock_guard<std::mutex> lock(mutex);
    ++counts[key];
  }
  void note(const std::string& what) {
    std::lock_guard<std::mutex> lock(mutex);
    notes.push_back(what);
  }
};

// One mutation of `b`; positions favour the first bytes, where the headers are.
void mutate(Bytes& b, test::Rng& rng) {
  auto pos = [&](size_t limit) -> size_t {
    if (limit == 0) return 0;
    const size_t header = std::min<size_t>(limit, 640);
    return rng.chance(0.7) ? rng.below(header) : rng.below(limit);
  };
  switch (b.empty() ? 2 : rng.below(6)) {
    case 0:  // bit flip
      b[pos(b.size())] ^= uint8_t(1u << rng.below(8));
      break;
    case 1: {  // byte set to something interesting or random
      static const uint8_t interesting[] = {0x00, 0xFF, 0x7F, 0x80, 0x01, 0xD8, 0xD9, 0xDA, 0xC0};
      b[pos(b.size())] = rng.chance(0.5) ? interesting[rng.below(sizeof(interesting))] : rng.byte();
      break;
    }
    case 2: {  // insert bytes
      const size_t at = pos(b.size() + 1);
      const size_t n = 1 + rng.below(8);
      Bytes ins(n);
      for (auto& v : ins) v = rng.byte();
      b.insert(b.begin() + ptrdiff_t(at), ins.begin(), ins.end());
      break;
    }
    case 3: {  // delete bytes
      const size_t at = pos(b.size());
      const size_t n = std::min<size_t>(1 + rng.below(16), b.size() - at);
      b.erase(b.begin() + ptrdiff_t(at), b.begin() + ptrdiff_t(at + n));
      break;
    }
    case 4: {  // overwrite a 4-byte run (lengths, sizes, offsets)
      if (b.size() < 4) {
        b[0] ^= 0xFF;
        break;
      }
      static const uint32_t values[] = {0u,          0xFFFFFFFFu, 0x7FFFFFFFu, 0x80000000u,
                                        0x0000FFFFu, 0xFFFF0000u, 0x00010000u, 0x00000001u};
      const uint32_t v = rng.chance(0.6) ? values[rng.below(8)] : uint32_t(rng.next());
      const size_t at = pos(b.size() - 3);
      for (int i = 0; i < 4; ++i) b[at + size_t(i)] = uint8_t(v >> (8 * (3 - i)));
      break;
    }
    default: {  // copy a block over another place
      const size_t from = rng.below(b.size()), to = pos(b.size());
      const size_t n = std::min<size_t>({1 + rng.below(64), b.size() - from, b.size() - to});
      std::memmove(b.data() + to, b.data() + from, n);
      break;
    }
  }
}

class Fuzzer {
 public:
  Fuzzer() {
    Spec a;
    a.resize_h = 48;
    a.crop_h = a.crop_w = 40;
    a.max_pixels = kFuzzMaxPixels;
    specs_.emplace_back(a);
    Spec b;
    b.resize_h = 33;
    b.crop_h = 31;
    b.crop_w = 29;
    b.interp = Interp::kBicubic;
    b.layout = Layout::kNHWC;
    b.dtype = DType::kFloat16;
    b.reduce_gap = 1.0;
    b.normalize = true;
    b.mean = {0.485f, 0.456f, 0.406f};
    b.std = {0.229f, 0.224f, 0.225f};
    b.max_pixels = kFuzzMaxPixels;
    specs_.emplace_back(b);
    Spec c;
    c.resize_mode = ResizeMode::kExact;
    c.resize_h = 17;
    c.resize_w = 23;
    c.crop = false;
    c.interp = Interp::kNearest;
    c.dtype = DType::kUInt8;
    c.max_pixels = kFuzzMaxPixels;
    specs_.emplace_back(c);
  }

  // Runs `data` through a Preprocessor and decode_rgb; returns "status/status" for the tally.
  std::string feed(const Bytes& data, size_t variant, Scratch& scratch) {
    const Preprocessor& pre = specs_[variant % specs_.size()];
    const size_t bytes = pre.spec().item_bytes();
    std::vector<uint8_t> out(bytes + 32, 0xA5);
    ItemResult result;
    const uint8_t* p = data.empty() ? nullptr : data.data();
    pre.run(p, data.size(), out.data() + 16, scratch, result);
    for (size_t i = 0; i < 16; ++i) {
      if (out[i] != 0xA5 || out[16 + bytes + i] != 0xA5) {
        ADD_FAILURE() << "Preprocessor::run wrote outside its item";
        break;
      }
    }
    if (result.status != Status::kOk && result.message.empty()) {
      ADD_FAILURE() << "status " << status_name(result.status) << " without a message";
    }
    std::string key = std::string("run:") + status_name(result.status);
    try {
      ImageInfo info;
      const std::vector<uint8_t> rgb = decode_rgb(p, data.size(), kFuzzMaxPixels, &info);
      if (rgb.size() != size_t(info.oriented_width()) * size_t(info.oriented_height()) * 3) {
        ADD_FAILURE() << "decode_rgb returned " << rgb.size() << " bytes for "
                      << info.oriented_width() << "x" << info.oriented_height();
      }
      if (info.orientation < 1 || info.orientation > 8) {
        ADD_FAILURE() << "orientation " << info.orientation;
      }
      key += " decode:ok";
    } catch (const ImageError& e) {
      if (e.status() == Status::kOk) ADD_FAILURE() << "ImageError with status ok";
      if (std::string(e.what()).empty()) ADD_FAILURE() << "ImageError without a message";
      key += std::string(" decode:") + status_name(e.status());
    } catch (const std::exception& e) {
      ADD_FAILURE() << "decode_rgb threw something other than ImageError: " << e.what();
    }
    return key;
  }

  // The file, ~40 truncations and `mutations` mutated copies.
  void fuzz(const Input& input, int truncations, int mutations, Tally& tally, test::Watchdog& dog) {
    Scratch scratch;
    const Bytes& file = input.data;
    size_t variant = test::hash_string(input.name);
    auto run = [&](const Bytes& data, const std::string& what) {
      dog.arm(input.name + " " + what);
      SCOPED_TRACE(input.name + " " + what);
      const std::string key = feed(data, variant++, scratch);
      tally.add(key);
      if (key.rfind("run:ok", 0) == 0 && key != "run:ok decode:ok") {
        tally.note(input.name + " " + what + " (" + key + ")");
      }
      dog.disarm();
    };
    run(file, "as is");
    for (int k = 0; k < truncations; ++k) {
      const size_t n = file.size() * size_t(k) / size_t(truncations);
      // Exact-size copies, so reads past the end are AddressSanitizer errors.
      run(Bytes(file.begin(), file.begin() + ptrdiff_t(n)), "cut to " + std::to_string(n));
    }
    test::Rng rng(test::hash_string(input.name) ^ 0xF00Dull);
    for (int m = 0; m < mutations; ++m) {
      Bytes b = file;
      const int ops = 1 + int(rng.below(3));
      for (int i = 0; i < ops; ++i) mutate(b, rng);
      if (rng.chance(0.1)) b.resize(rng.below(b.size() + 1));
      run(b, "mutation " + std::to_string(m));
    }
  }

  // Spreads the inputs over two threads.
  void fuzz_all(const std::vector<Input>& inputs, Tally& tally) {
    const int truncations = env_int("STOKER_FUZZ_TRUNCATIONS", 40);
    const int mutations = env_int("STOKER_FUZZ_MUTATIONS", 200);
    std::atomic<size_t> next{0};
    auto worker = [&] {
      test::Watchdog dog(30.0);
      for (size_t i; (i = next.fetch_add(1)) < inputs.size();) {
        fuzz(inputs[i], truncations, mutations, tally, dog);
      }
    };
    std::thread other(worker);
    worker();
    other.join();
  }

  static constexpr int64_t kFuzzMaxPixels = 4'000'000;

 private:
  std::vector<Preprocessor> specs_;
};

std::vector<Input> generated_inputs() {
  std::vector<Input> in;
  const test::Image a = test::make_rgb(96, 64, 61);
  const test::Image b = test::make_rgb(33, 47, 62);
  test::JpegOptions o;
  in.push_back({"gen_baseline_420.jpg", test::encode_jpeg(a, o)});
  o.progressive = true;
  o.orientation = 6;
  in.push_back({"gen_progressive_exif6.jpg", test::encode_jpeg(b, o)});
  o = {};
  o.sampling = test::Sampling::kGray;
  o.restart_rows = 1;
  in.push_back({"gen_gray_restart.jpg", test::encode_jpeg(b, o)});
  o = {};
  o.arithmetic = true;
  o.sampling = test::Sampling::k444;
  in.push_back({"gen_arith_444.jpg", test::encode_jpeg(b, o)});
  in.push_back({"gen_rgba_interlaced.png", test::encode_png(a, test::PngKind::kRgba8, true).data});
  in.push_back(
      {"gen_palette_exif.png",
       test::encode_png(b, test::PngKind::kPalette8, false, test::make_exif_tiff(3, true)).data});
  in.push_back({"gen_gray16.png", test::encode_png(b, test::PngKind::kGray16, false).data});
#ifdef STOKER_HAVE_WEBP
  in.push_back({"gen_lossy.webp", test::encode_webp(a, false)});
  in.push_back({"gen_lossless.webp", test::encode_webp(b, true)});
  in.push_back({"gen_exif5.webp", test::webp_with_exif(test::encode_webp(b, false), 33, 47,
                                                       test::make_exif_tiff(5, false))});
#endif
  return in;
}

void print_tally(const char* what, const Tally& tally) {
  std::ostringstream s;
  s << what << " outcomes:";
  for (const auto& [k, n] : tally.counts) s << "\n  " << k << ": " << n;
  if (!tally.notes.empty()) {
    s << "\n  preprocessed although decode_rgb failed (" << tally.notes.size() << "), e.g.:";
    std::vector<std::string> notes = tally.notes;
    std::sort(notes.begin(), notes.end());
    for (size_t i = 0; i < notes.size() && i < 8; ++i) s << "\n    " << notes[i];
  }
  std::cout << s.str() << std::endl;
}

TEST(Robustness, GeneratedImagesTruncatedAndMutated) {
  const std::vector<Input> inputs = generated_inputs();
  Fuzzer fuzzer;
  // The originals decode.
  for (const Input& in : inputs) {
    Scratch scratch;
    const std::string key = fuzzer.feed(in.data, 0, scratch);
    EXPECT_EQ(key, "run:ok decode:ok") << in.name;
  }
  Tally tally;
  fuzzer.fuzz_all(inputs, tally);
  print_tally("generated", tally);
  EXPECT_GT(tally.counts.size(), 1u);
}

TEST(Robustness, CorpusTruncatedAndMutated) {
  const char* corpus = std::getenv("STOKER_CORPUS");
  if (corpus == nullptr || *corpus == '\0') GTEST_SKIP() << "STOKER_CORPUS is not set";
  const std::filesystem::path dir = std::filesystem::path(corpus) / "images";
  if (!std::filesystem::is_directory(dir)) GTEST_SKIP() << dir << " is not a directory";
  std::vector<Input> inputs;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (entry.is_regular_file()) {
      inputs.push_back({entry.path().filename().string(), test::read_file(entry.path().string())});
    }
  }
  std::sort(inputs.begin(), inputs.end(),
            [](const Input& a, const Input& b) { return a.name < b.name; });
  ASSERT_FALSE(inputs.empty());
  Fuzzer fuzzer;
  std::ostringstream summary;
  for (const Input& in : inputs) {
    Scratch scratch;
    summary << "\n  " << in.name << ": " << fuzzer.feed(in.data, 0, scratch);
  }
  std::cout << "corpus files as is:" << summary.str() << std::endl;
  Tally tally;
  fuzzer.fuzz_all(inputs, tally);
  print_tally("corpus", tally);
}

// Known corpus files whose outcome the format rules fix.
TEST(Robustness, CorpusExpectations) {
  const char* corpus = std::getenv("STOKER_CORPUS");
  if (corpus == nullptr || *corpus == '\0') GTEST_SKIP() << "STOKER_CORPUS is not set";
  const std::filesystem::path dir = std::filesystem::path(corpus) / "images";
  if (!std::filesystem::is_directory(dir)) GTEST_SKIP() << dir << " is not a directory";
  auto load = [&](const std::string& name) { return test::read_file((dir / name).string()); };
  for (int o = 2; o <= 8; ++o) {
    const std::string name = "pillow__hopper_orientation_" + std::to_string(o) + ".jpg";
    if (!std::filesystem::exists(dir / name)) continue;
    const Bytes data = load(name);
    const ImageInfo info = read_info(data.data(), data.size(), kDefaultMaxPixels);
    EXPECT_EQ(info.orientation, o) << name;
  }
  // EXIF in a WebP EXIF chunk, ImageMagick's PNG text profile and a 2x1 JPEG (values from Pillow).
  struct Oriented {
    const char* name;
    int orientation, oriented_w, oriented_h;
  };
  for (const Oriented& o : {Oriented{"pillow__hopper_orientation_6.webp", 6, 128, 128},
                            Oriented{"pillow__exif_imagemagick_orientation.png", 3, 512, 512},
                            Oriented{"pillow__orientation_rectangle.jpg", 8, 1, 2}}) {
    if (!std::filesystem::exists(dir / o.name)) continue;
    const Bytes data = load(o.name);
    ImageInfo info;
    const std::vector<uint8_t> rgb = decode_rgb(data.data(), data.size(), kDefaultMaxPixels, &info);
    EXPECT_EQ(info.orientation, o.orientation) << o.name;
    EXPECT_EQ(info.oriented_width(), o.oriented_w) << o.name;
    EXPECT_EQ(info.oriented_height(), o.oriented_h) << o.name;
    EXPECT_EQ(rgb.size(), size_t(o.oriented_w) * size_t(o.oriented_h) * 3) << o.name;
  }
  if (std::filesystem::exists(dir / "libjpeg-turbo__monkey12.jpg")) {
    const Bytes data = load("libjpeg-turbo__monkey12.jpg");
    try {
      decode_rgb(data.data(), data.size(), kDefaultMaxPixels, nullptr);
      // A decoder that can decode 12-bit JPEG may; the 8-bit libjpeg cannot.
    } catch (const ImageError& e) {
      EXPECT_EQ(e.status(), Status::kUnsupported) << "12-bit JPEG: " << e.what();
    }
  }
  if (std::filesystem::exists(dir / "pillow__truncated_jpeg.jpg")) {
    const Bytes data = load("pillow__truncated_jpeg.jpg");
    try {
      decode_rgb(data.data(), data.size(), kDefaultMaxPixels, nullptr);
      ADD_FAILURE() << "truncated JPEG decoded";
    } catch (const ImageError& e) {
      EXPECT_EQ(e.status(), Status::kCorrupt) << e.what();
    }
  }
}

// Header-declared sizes
// -----------------------------------------------------------------------------

Bytes jpeg_with_size(uint16_t w, uint16_t h) {
  Bytes j = test::encode_jpeg(test::make_rgb(16, 16, 1), {});
  size_t pos = 2;
  while (pos + 4 <= j.size() && j[pos] == 0xFF) {
    const uint8_t marker = j[pos + 1];
    const size_t len = size_t(j[pos + 2]) << 8 | j[pos + 3];
    if (marker >= 0xC0 && marker <= 0xC2) {
      j[pos + 5] = uint8_t(h >> 8);
      j[pos + 6] = uint8_t(h);
      j[pos + 7] = uint8_t(w >> 8);
      j[pos + 8] = uint8_t(w);
      return j;
    }
    pos += 2 + len;
  }
  ADD_FAILURE() << "no SOF marker in the generated JPEG";
  return j;
}

Bytes png_with_size(uint32_t w, uint32_t h) {
  Bytes p = test::encode_png(test::make_rgb(16, 16, 1), test::PngKind::kRgb8, false).data;
  for (int i = 0; i < 4; ++i) {
    p[16 + size_t(i)] = uint8_t(w >> (8 * (3 - i)));
    p[20 + size_t(i)] = uint8_t(h >> (8 * (3 - i)));
  }
  const uint32_t crc = test::crc32(p.data() + 12, 17);  // "IHDR" and its 13 data bytes
  for (int i = 0; i < 4; ++i) p[29 + size_t(i)] = uint8_t(crc >> (8 * (3 - i)));
  return p;
}

void expect_too_large(const std::string& name, const Bytes& data, int64_t max_pixels) {
  SCOPED_TRACE(name);
  try {
    read_info(data.data(), data.size(), max_pixels);
    ADD_FAILURE() << "read_info accepted it";
  } catch (const ImageError& e) {
    EXPECT_EQ(e.status(), Status::kTooLarge) << e.what();
  }
  try {
    decode_rgb(data.data(), data.size(), max_pixels, nullptr);
    ADD_FAILURE() << "decode_rgb accepted it";
  } catch (const ImageError& e) {
    EXPECT_EQ(e.status(), Status::kTooLarge) << e.what();
  }
  Spec spec;  // max_pixels as given
  spec.max_pixels = max_pixels;
  const Preprocessor pre(spec);
  std::vector<uint8_t> out(spec.item_bytes());
  Scratch scratch;
  ItemResult result;
  pre.run(data.data(), data.size(), out.data(), scratch, result);
  EXPECT_EQ(result.status, Status::kTooLarge) << result.message;
  EXPECT_FALSE(result.message.empty());
}

TEST(Robustness, HeaderDeclaredHugeSizes) {
  const Bytes jpeg = jpeg_with_size(60000, 60000);
  const Bytes png = png_with_size(100000, 100000);
  // The patched headers still parse (the limit is what stops them) ...
  EXPECT_EQ(read_info(jpeg.data(), jpeg.size(), int64_t(1) << 40).width, 60000);
  EXPECT_EQ(read_info(png.data(), png.size(), int64_t(1) << 40).height, 100000);
  // ... and the default limit refuses them before anything is allocated.
  EXPECT_EQ(Spec{}.max_pixels, kDefaultMaxPixels);
  expect_too_large("jpeg 60000x60000", jpeg, kDefaultMaxPixels);
  expect_too_large("png 100000x100000", png, kDefaultMaxPixels);
  expect_too_large("jpeg 8000x7000", jpeg_with_size(8000, 7000), kDefaultMaxPixels);
#ifdef STOKER_HAVE_WEBP
  Bytes webp = test::encode_webp(test::make_rgb(16, 16, 1), true);
  ASSERT_EQ(std::string(webp.begin() + 12, webp.begin() + 16), "VP8L");
  uint32_t bits = uint32_t(webp[21]) | uint32_t(webp[22]) << 8 | uint32_t(webp[23]) << 16 |
                  uint32_t(webp[24]) << 24;
  bits = (bits & ~((1u << 28) - 1)) | 16383u | 16383u << 14;  // 16384 x 16384
  for (int i = 0; i < 4; ++i) webp[21 + size_t(i)] = uint8_t(bits >> (8 * i));
  expect_too_large("webp 16384x16384", webp, kDefaultMaxPixels);
#endif
  // A small configured limit is respected for ordinary images too.
  const Bytes small = test::encode_jpeg(test::make_rgb(200, 100, 2), {});
  expect_too_large("jpeg 200x100 over 19999", small, 19999);
  EXPECT_NO_THROW(read_info(small.data(), small.size(), 20000));
}

TEST(Robustness, ZeroSizedHeaders) {
  for (const auto& [name, data] :
       {std::pair<std::string, Bytes>{"jpeg 0x16", jpeg_with_size(0, 16)},
        {"png 0x0", png_with_size(0, 0)},
        {"png 2^31x1", png_with_size(0x80000000u, 1)}}) {
    SCOPED_TRACE(name);
    try {
      decode_rgb(data.data(), data.size(), kDefaultMaxPixels, nullptr);
      ADD_FAILURE() << "decoded";
    } catch (const ImageError& e) {
      EXPECT_NE(e.status(), Status::kOk);
    }
  }
}

}  // namespace
}  // namespace stoker
