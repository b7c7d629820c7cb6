// Error vocabulary of the native core. Decoding failures are per image: they carry a Status so the
// batch layer can report each failed item by kind without unwinding the whole batch.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

namespace stoker {

enum class Status : uint8_t {
  kOk = 0,
  kEmpty,        // zero-length input
  kUnsupported,  // not a format stoker decodes, or a feature of it that is not supported
  kCorrupt,      // the data is malformed or truncated
  kTooLarge,     // more pixels than the configured limit
  kInternal,     // allocation failure or another error that is not the input's fault
};

const char* status_name(Status s);

class ImageError : public std::runtime_error {
 public:
  ImageError(Status status, const std::string& message)
      : std::runtime_error(message), status_(status) {}
  Status status() const { return status_; }

 private:
  Status status_;
};

}  // namespace stoker
