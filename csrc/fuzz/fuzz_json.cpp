// The JSON reader and the string escaper. An accepted text must be UTF-8, within the limits, and
// read back to the same document once written out again; find() must agree with member order;
// and whatever the escaper writes must read back as a string.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>

#include "check.hpp"
#include "core/json.hpp"

namespace {

using namespace stoker;

// RFC 3629: no overlong forms, no surrogates, nothing past U+10FFFF.
bool valid_utf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const uint8_t c = uint8_t(s[i]);
    size_t n;
    uint32_t cp;
    if (c < 0x80) {
      ++i;
      continue;
    } else if (c >= 0xC2 && c <= 0xDF) {
      n = 1;
      cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
      n = 2;
      cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      n = 3;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (s.size() - i <= n) return false;
    for (size_t k = 1; k <= n; ++k) {
      const uint8_t d = uint8_t(s[i + k]);
      if ((d & 0xC0) != 0x80) return false;
      cp = cp << 6 | (d & 0x3F);
    }
    if ((n == 2 && cp < 0x800) || (n == 3 && (cp < 0x10000 || cp > 0x10FFFF)) ||
        (cp >= 0xD800 && cp <= 0xDFFF)) {
      return false;
    }
    i += n + 1;
  }
  return true;
}

// A canonical text of `v`. Numbers that are not integers keep a fraction or exponent so that they
// read back as non-integers (-0.0 included), and infinite ones (a literal too large for a double)
// are written as a literal that overflows again.
void dump(const JsonValue& v, std::string& out) {
  switch (v.type()) {
    case JsonType::kNull:
      out += "null";
      return;
    case JsonType::kBool:
      out += v.as_bool() ? "true" : "false";
      return;
    case JsonType::kNumber: {
      char text[40];
      if (v.is_integer()) {
        std::snprintf(text, sizeof text, "%lld", static_cast<long long>(v.as_int64()));
      } else if (std::isinf(v.as_double())) {
        std::snprintf(text, sizeof text, "%s", v.as_double() < 0 ? "-1e999" : "1e999");
      } else {
        std::snprintf(text, sizeof text, "%.17g", v.as_double());
        if (std::string_view(text).find_first_of(".e") == std::string_view::npos) {
          std::strcat(text, ".0");
        }
      }
      out += text;
      return;
    }
    case JsonType::kString:
      append_json_string(out, v.as_string());
      return;
    case JsonType::kArray: {
      out += '[';
      size_t n = 0;
      for (const JsonValue& e : v.elements()) {
        if (n++ > 0) out += ',';
        dump(e, out);
      }
      out += ']';
      return;
    }
    case JsonType::kObject: {
      out += '{';
      size_t n = 0;
      for (const auto& [key, value] : v.members()) {
        if (n++ > 0) out += ',';
        append_json_string(out, key);
        out += ':';
        dump(value, out);
      }
      out += '}';
      return;
    }
  }
}

std::string dump(const JsonValue& v) {
  std::string out;
  dump(v, out);
  return out;
}

// Counts values (keys included) and checks each one's own invariants.
void check(const JsonValue& v, size_t depth, size_t& values) {
  ++values;
  FUZZ_CHECK(depth <= JsonLimits{}.max_depth);
  if (v.is_number()) {
    FUZZ_CHECK(!std::isnan(v.as_double()));
    if (v.is_integer()) FUZZ_CHECK(v.as_double() == double(v.as_int64()));
  } else if (v.is_string()) {
    FUZZ_CHECK(valid_utf8(v.as_string()));
  } else if (v.is_array()) {
    size_t n = 0;
    for (const JsonValue& e : v.elements()) {
      check(e, depth + 1, values);
      ++n;
    }
    FUZZ_CHECK(n == v.size());
  } else if (v.is_object()) {
    size_t n = 0;
    for (const auto& [key, value] : v.members()) {
      FUZZ_CHECK(valid_utf8(key));
      ++values;
      check(value, depth + 1, values);
      // find() returns the last member of a repeated name.
      std::optional<JsonValue> last;
      for (const auto& [k, later] : v.members()) {
        if (k == key) last = later;
      }
      const auto hit = v.find(key);
      FUZZ_CHECK(hit.has_value() && dump(*hit) == dump(*last));
      ++n;
    }
    FUZZ_CHECK(n == v.size());
  } else {
    FUZZ_CHECK(v.is_null() || v.is_bool());
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);

  // A document parses the same whether fresh or reusing the memory of earlier parses.
  static JsonDocument reused;
  JsonDocument fresh;
  const bool ok = fresh.parse(text);
  FUZZ_CHECK(reused.parse(text) == ok);
  if (ok) {
    FUZZ_CHECK(valid_utf8(text));
    size_t values = 0;
    check(fresh.root(), 0, values);
    FUZZ_CHECK(values <= JsonLimits{}.max_values);
    const std::string once = dump(fresh.root());
    FUZZ_CHECK(dump(reused.root()) == once);
    JsonDocument round_trip;
    FUZZ_CHECK(round_trip.parse(once) && dump(round_trip.root()) == once);
  } else {
    FUZZ_CHECK(!fresh.error().empty());
  }

  std::string quoted;
  append_json_string(quoted, text);
  JsonDocument str;
  FUZZ_CHECK(str.parse(quoted) && str.root().is_string());
  FUZZ_CHECK(valid_utf8(str.root().as_string()));
  if (valid_utf8(text)) FUZZ_CHECK(str.root().as_string() == text);
  return 0;
}
