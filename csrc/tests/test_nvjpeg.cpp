// The nvJPEG loader's failures (the decode itself needs a GPU and runs in tests/test_nvjpeg.py).
#include <gtest/gtest.h>

#include <stdexcept>
#include <string>

#include "core/nvjpeg.hpp"

namespace stoker {
namespace {

std::string load_error(const std::vector<std::string>& libraries) {
  try {
    NvJpegDecoder decoder(NvJpegBackend::kAuto, libraries, 0);
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  return "";
}

TEST(NvJpeg, EveryLibraryThatFailsIsNamed) {
  const std::string error = load_error({"/nowhere/libnvjpeg.so.1", "/nowhere/libnvjpeg.so.2"});
  EXPECT_NE(error.find("nvJPEG could not be loaded"), std::string::npos) << error;
  EXPECT_NE(error.find("/nowhere/libnvjpeg.so.1"), std::string::npos) << error;
  EXPECT_NE(error.find("/nowhere/libnvjpeg.so.2"), std::string::npos) << error;
}

TEST(NvJpeg, ALibraryWithoutTheEntryPointsIsRefused) {
  const std::string error = load_error({"libc.so.6"});
  EXPECT_NE(error.find("libc.so.6: no symbol nvjpegCreateEx"), std::string::npos) << error;
}

TEST(NvJpeg, StatusNames) {
  EXPECT_STREQ(nvjpeg_status_name(0), "success");
  EXPECT_STREQ(nvjpeg_status_name(5), "allocator failure");
  EXPECT_STREQ(nvjpeg_status_name(10), "incomplete bitstream");
  EXPECT_STREQ(nvjpeg_status_name(99), "unknown status");
}

}  // namespace
}  // namespace stoker
