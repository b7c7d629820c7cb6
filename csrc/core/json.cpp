#include "core/json.hpp"

#include <algorithm>
#include <charconv>
#include <cstring>
#include <limits>
#include <system_error>

namespace stoker {

namespace {

using json_detail::Node;

// The length of the well-formed UTF-8 sequence at `s` (Unicode's table 3-7: no overlong forms,
// no surrogates, nothing above U+10FFFF), or 0 when there is none.
size_t utf8_length(const unsigned char* s, const unsigned char* end) {
  const unsigned c = s[0];
  if (c < 0x80) return 1;
  const size_t left = size_t(end - s);
  auto continuation = [&](size_t i, unsigned lo = 0x80, unsigned hi = 0xbf) {
    return i < left && s[i] >= lo && s[i] <= hi;
  };
  if (c < 0xc2) return 0;
  if (c < 0xe0) return continuation(1) ? 2 : 0;
  if (c < 0xf0) {
    const unsigned lo = c == 0xe0 ? 0xa0 : 0x80, hi = c == 0xed ? 0x9f : 0xbf;
    return continuation(1, lo, hi) && continuation(2) ? 3 : 0;
  }
  if (c < 0xf5) {
    const unsigned lo = c == 0xf0 ? 0x90 : 0x80, hi = c == 0xf4 ? 0x8f : 0xbf;
    return continuation(1, lo, hi) && continuation(2) && continuation(3) ? 4 : 0;
  }
  return 0;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out.push_back(char(cp));
  } else if (cp < 0x800) {
    out.push_back(char(0xc0 | cp >> 6));
    out.push_back(char(0x80 | (cp & 0x3f)));
  } else if (cp < 0x10000) {
    out.push_back(char(0xe0 | cp >> 12));
    out.push_back(char(0x80 | (cp >> 6 & 0x3f)));
    out.push_back(char(0x80 | (cp & 0x3f)));
  } else {
    out.push_back(char(0xf0 | cp >> 18));
    out.push_back(char(0x80 | (cp >> 12 & 0x3f)));
    out.push_back(char(0x80 | (cp >> 6 & 0x3f)));
    out.push_back(char(0x80 | (cp & 0x3f)));
  }
}

// Four hex digits at `p` (the caller checked they are there), or -1.
int32_t hex4(const char* p) {
  int32_t value = 0;
  for (int i = 0; i < 4; ++i) {
    const char c = p[i];
    int digit;
    if (c >= '0' && c <= '9') {
      digit = c - '0';
    } else if (c >= 'a' && c <= 'f') {
      digit = c - 'a' + 10;
    } else if (c >= 'A' && c <= 'F') {
      digit = c - 'A' + 10;
    } else {
      return -1;
    }
    value = value << 4 | digit;
  }
  return value;
}

bool is_digit(char c) { return c >= '0' && c <= '9'; }

// The two-character escapes: the letter after the backslash, and the character it stands for.
constexpr std::string_view kEscapeLetters = "\"\\/bfnrt";
constexpr std::string_view kEscaped = "\"\\/\b\f\n\r\t";

}  // namespace

struct JsonDocument::Parser {
  JsonDocument& doc;
  const char* begin;
  const char* p;
  const char* end;
  const char* error_at = nullptr;
  const char* reason = nullptr;

  bool fail(const char* at, const char* why) {
    error_at = at;
    reason = why;
    return false;
  }

  void skip_space() {
    while (p < end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t')) ++p;
  }

  // Appends a node with no children; a container sets its end and count once they are in.
  bool add(JsonType type) {
    if (doc.nodes_.size() >= doc.limits_.max_values) return fail(p, "too many values");
    Node node;
    node.type = type;
    node.end = uint32_t(doc.nodes_.size() + 1);
    doc.nodes_.push_back(node);
    return true;
  }

  bool value(size_t depth) {
    skip_space();
    if (p == end) return fail(p, "unexpected end of text");
    switch (*p) {
      case '{':
        return object(depth + 1);
      case '[':
        return array(depth + 1);
      case '"':
        return string();
      case 't':
        return literal("true", JsonType::kBool, true);
      case 'f':
        return literal("false", JsonType::kBool, false);
      case 'n':
        return literal("null", JsonType::kNull, false);
      default:
        if (*p == '-' || is_digit(*p)) return number();
        return fail(p, "unexpected character");
    }
  }

  bool literal(std::string_view word, JsonType type, bool flag) {
    if (size_t(end - p) < word.size() || std::memcmp(p, word.data(), word.size()) != 0) {
      return fail(p, "unexpected character");
    }
    if (!add(type)) return false;
    doc.nodes_.back().flag = flag;
    p += word.size();
    return true;
  }

  // Arrays and objects share their shape: an opening bracket, items separated by commas, a
  // closing bracket; `item` parses one element or one member.
  template <typename Item>
  bool container(size_t depth, JsonType type, char close, const char* expected, Item item) {
    if (depth > doc.limits_.max_depth) return fail(p, "nesting too deep");
    if (!add(type)) return false;
    const size_t index = doc.nodes_.size() - 1;
    uint32_t count = 0;
    ++p;
    skip_space();
    if (p < end && *p == close) {
      ++p;
    } else {
      while (true) {
        if (!item()) return false;
        ++count;
        skip_space();
        if (p < end && *p == ',') {
          ++p;
        } else if (p < end && *p == close) {
          ++p;
          break;
        } else {
          return fail(p, expected);
        }
      }
    }
    doc.nodes_[index].count = count;
    doc.nodes_[index].end = uint32_t(doc.nodes_.size());
    return true;
  }

  bool array(size_t depth) {
    return container(depth, JsonType::kArray, ']', "expected ',' or ']'",
                     [&] { return value(depth); });
  }

  bool object(size_t depth) {
    return container(depth, JsonType::kObject, '}', "expected ',' or '}'", [&] {
      skip_space();
      if (p == end || *p != '"') return fail(p, "expected a string key");
      if (!string()) return false;
      skip_space();
      if (p == end || *p != ':') return fail(p, "expected ':'");
      ++p;
      return value(depth);
    });
  }

  bool string() {
    const char* const start = p++;
    std::string& out = doc.strings_;
    const size_t offset = out.size();
    const char* run = p;
    while (true) {
      if (p == end) return fail(start, "unterminated string");
      const auto c = static_cast<unsigned char>(*p);
      if (c == '"') break;
      if (c == '\\') {
        out.append(run, p);
        if (!escape()) return false;
        run = p;
      } else if (c < 0x20) {
        return fail(p, "control character in string");
      } else if (c < 0x80) {
        ++p;
      } else {
        const auto* u = reinterpret_cast<const unsigned char*>(p);
        const size_t n = utf8_length(u, reinterpret_cast<const unsigned char*>(end));
        if (n == 0) return fail(p, "invalid UTF-8");
        p += n;
      }
    }
    out.append(run, p);
    ++p;
    if (!add(JsonType::kString)) return false;
    doc.nodes_.back().offset = uint32_t(offset);
    doc.nodes_.back().count = uint32_t(out.size() - offset);
    return true;
  }

  // Decodes the escape at p (a backslash) into the string buffer.
  bool escape() {
    if (end - p < 2) return fail(p, "unterminated string");
    if (p[1] == 'u') return unicode_escape();
    const size_t which = kEscapeLetters.find(p[1]);
    if (which == std::string_view::npos) return fail(p, "invalid escape");
    doc.strings_.push_back(kEscaped[which]);
    p += 2;
    return true;
  }

  bool unicode_escape() {
    const int32_t unit = end - p >= 6 ? hex4(p + 2) : -1;
    if (unit < 0) return fail(p, "invalid \\u escape");
    uint32_t cp = uint32_t(unit);
    size_t length = 6;
    if (cp >= 0xdc00 && cp <= 0xdfff) return fail(p, "lone low surrogate");
    if (cp >= 0xd800 && cp <= 0xdbff) {
      const int32_t low = end - p >= 12 && p[6] == '\\' && p[7] == 'u' ? hex4(p + 8) : -1;
      if (low < 0xdc00 || low > 0xdfff) return fail(p, "lone high surrogate");
      cp = 0x10000 + ((cp - 0xd800) << 10) + (uint32_t(low) - 0xdc00);
      length = 12;
    }
    append_utf8(doc.strings_, cp);
    p += length;
    return true;
  }

  bool number() {
    const char* const start = p;
    if (*p == '-') ++p;
    if (p == end || !is_digit(*p)) return fail(p, "expected a digit");
    const char* const first_digit = p;
    if (*p == '0') {
      ++p;
      if (p < end && is_digit(*p)) return fail(p, "leading zero");
    } else {
      while (p < end && is_digit(*p)) ++p;
    }
    bool integer = true;
    if (p < end && *p == '.') {
      ++p;
      if (p == end || !is_digit(*p)) return fail(p, "expected a digit");
      while (p < end && is_digit(*p)) ++p;
      integer = false;
    }
    const char* const mantissa_end = p;
    if (p < end && (*p == 'e' || *p == 'E')) {
      ++p;
      if (p < end && (*p == '+' || *p == '-')) ++p;
      if (p == end || !is_digit(*p)) return fail(p, "expected a digit");
      while (p < end && is_digit(*p)) ++p;
      integer = false;
    }
    if (!add(JsonType::kNumber)) return false;
    Node& node = doc.nodes_.back();
    if (integer) {
      const auto [ptr, ec] = std::from_chars(start, p, node.integer);
      node.flag = ec == std::errc() && ptr == p;  // beyond int64 it stays a double only
    }
    const auto [ptr, ec] = std::from_chars(start, p, node.number);
    if (ec == std::errc::result_out_of_range) {
      if (overflows(first_digit, mantissa_end)) return fail(start, "number out of range");
      node.number = *start == '-' ? -0.0 : 0.0;
    } else if (ec != std::errc() || ptr != p) {
      return fail(start, "invalid number");
    }
    return true;
  }

  // For a number that is out of double's range: whether it is too large rather than too small,
  // from the decimal position of its first significant digit.
  bool overflows(const char* digits, const char* mantissa_end) const {
    const char* const point = std::find(digits, mantissa_end, '.');
    const char* first = digits;  // nonzero: zero is never out of range
    while (first < mantissa_end && (*first == '0' || *first == '.')) ++first;
    const int64_t position = first < point ? point - first - 1 : point - first;
    int64_t exponent = 0;
    if (mantissa_end < p) {
      const char* q = mantissa_end + 1;
      const bool negative = *q == '-';
      if (*q == '+' || *q == '-') ++q;
      for (; q < p; ++q) exponent = std::min<int64_t>(exponent * 10 + (*q - '0'), 1'000'000'000);
      if (negative) exponent = -exponent;
    }
    return position + exponent > 0;
  }
};

JsonDocument::JsonDocument(JsonLimits limits) : limits_(limits) {
  // Node indices are 32-bit.
  limits_.max_values = std::min<size_t>(limits_.max_values, std::numeric_limits<uint32_t>::max());
  limits_.max_bytes = std::min<size_t>(limits_.max_bytes, std::numeric_limits<uint32_t>::max());
}

bool JsonDocument::parse(std::string_view text) {
  nodes_.clear();
  strings_.clear();
  error_.clear();
  if (text.size() > limits_.max_bytes) {
    error_ = "the JSON text is " + std::to_string(text.size()) + " bytes; the limit is " +
             std::to_string(limits_.max_bytes);
    return false;
  }
  // Decoded strings are never longer than their JSON form, so this buffer never grows mid-parse.
  strings_.reserve(text.size());
  Parser parser{*this, text.data(), text.data(), text.data() + text.size()};
  bool ok = parser.value(0);
  if (ok) {
    parser.skip_space();
    if (parser.p != parser.end) ok = parser.fail(parser.p, "unexpected text after the value");
  }
  if (ok) return true;
  error_ = std::string("invalid JSON at byte ") + std::to_string(parser.error_at - parser.begin) +
           ": " + parser.reason;
  nodes_.clear();
  strings_.clear();
  return false;
}

std::optional<JsonValue> JsonValue::find(std::string_view key) const {
  std::optional<JsonValue> found;
  for (const auto& [name, value] : members()) {
    if (name == key) found = value;
  }
  return found;
}

void append_json_string(std::string& out, std::string_view s) {
  static constexpr char kHex[] = "0123456789abcdef";
  out.push_back('"');
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const auto* const end = p + s.size();
  const auto* run = p;
  while (p < end) {
    const unsigned c = *p;
    if (c >= 0x20 && c != '"' && c != '\\' && c < 0x80) {
      ++p;
      continue;
    }
    if (c >= 0x80) {
      const size_t n = utf8_length(p, end);
      if (n != 0) {
        p += n;
        continue;
      }
    }
    out.append(reinterpret_cast<const char*>(run), reinterpret_cast<const char*>(p));
    const size_t which = kEscaped.find(char(c));
    if (c >= 0x80) {
      out += "\\ufffd";
    } else if (which != std::string_view::npos) {
      const char escaped[] = {'\\', kEscapeLetters[which]};
      out.append(escaped, sizeof escaped);
    } else {
      const char escaped[] = {'\\', 'u', '0', '0', kHex[c >> 4], kHex[c & 15]};
      out.append(escaped, sizeof escaped);
    }
    run = ++p;
  }
  out.append(reinterpret_cast<const char*>(run), reinterpret_cast<const char*>(p));
  out.push_back('"');
}

}  // namespace stoker
