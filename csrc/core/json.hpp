// A strict, bounded JSON reader (RFC 8259) into a flat document, and the string escaper used when
// writing JSON. Strict: no comments, no trailing commas, no NaN or Infinity literals, no lone
// surrogates, only well-formed UTF-8; anything else is an error, never a guess. Bounded: the text's
// size, the nesting depth and the number of values are limited, so hostile input costs at most a
// known amount of memory and stack. The document is a vector of nodes in document order (a
// container's subtree follows it), which keeps parsing free of per-value allocations.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace stoker {

enum class JsonType : uint8_t { kNull, kBool, kNumber, kString, kArray, kObject };

struct JsonLimits {
  size_t max_bytes = size_t{64} << 20;  // of text
  size_t max_depth = 64;                // nested arrays and objects
  size_t max_values = size_t{1} << 20;  // values, object keys included
};

class JsonDocument;

namespace json_detail {
struct Node {
  JsonType type = JsonType::kNull;
  bool flag = false;    // a bool's value; for a number, whether it is an integer (see is_integer)
  uint32_t end = 0;     // index one past this node's subtree
  uint32_t count = 0;   // elements, members, or a string's length
  uint32_t offset = 0;  // a string's start in the document's string buffer
  int64_t integer = 0;
  double number = 0;
};
}  // namespace json_detail

// A view of one value of a JsonDocument; valid while the document is neither destroyed nor
// parses again.
class JsonValue {
 public:
  JsonType type() const { return node().type; }
  bool is_null() const { return type() == JsonType::kNull; }
  bool is_bool() const { return type() == JsonType::kBool; }
  bool is_number() const { return type() == JsonType::kNumber; }
  bool is_string() const { return type() == JsonType::kString; }
  bool is_array() const { return type() == JsonType::kArray; }
  bool is_object() const { return type() == JsonType::kObject; }

  // True only for `true`.
  bool as_bool() const { return is_bool() && node().flag; }
  // A number written without fraction or exponent whose value fits in int64 (-0 included).
  bool is_integer() const { return is_number() && node().flag; }
  int64_t as_int64() const { return is_integer() ? node().integer : 0; }
  // Any number, rounded to nearest; 0 for other types.
  double as_double() const { return is_number() ? node().number : 0.0; }
  // A string's decoded UTF-8 (possibly holding NUL bytes); empty for other types.
  std::string_view as_string() const;
  // Elements of an array, members of an object; 0 for other types.
  size_t size() const { return is_array() || is_object() ? node().count : 0; }
  // An object's member of that name (the last one when the name repeats, as most readers do).
  std::optional<JsonValue> find(std::string_view key) const;

  class ElementIterator {
   public:
    JsonValue operator*() const { return JsonValue(doc_, index_); }
    ElementIterator& operator++();
    bool operator==(const ElementIterator& other) const { return index_ == other.index_; }

   private:
    friend class JsonValue;
    ElementIterator(const JsonDocument* doc, uint32_t index) : doc_(doc), index_(index) {}
    const JsonDocument* doc_;
    uint32_t index_;
  };

  class MemberIterator {
   public:
    // The key and the value of one member.
    std::pair<std::string_view, JsonValue> operator*() const;
    MemberIterator& operator++();
    bool operator==(const MemberIterator& other) const { return index_ == other.index_; }

   private:
    friend class JsonValue;
    MemberIterator(const JsonDocument* doc, uint32_t index) : doc_(doc), index_(index) {}
    const JsonDocument* doc_;
    uint32_t index_;  // the member's key node
  };

  template <typename Iterator>
  struct Range {
    Iterator first, last;
    Iterator begin() const { return first; }
    Iterator end() const { return last; }
  };
  // Empty ranges for values of other types.
  Range<ElementIterator> elements() const;
  Range<MemberIterator> members() const;

 private:
  friend class JsonDocument;
  JsonValue(const JsonDocument* doc, uint32_t index) : doc_(doc), index_(index) {}
  const json_detail::Node& node() const;
  // Where this value's children start and end; equal for scalars, which have none.
  uint32_t first_child() const;
  uint32_t subtree_end() const;

  const JsonDocument* doc_;
  uint32_t index_;
};

class JsonDocument {
 public:
  explicit JsonDocument(JsonLimits limits = {});

  // Replaces the document with the one `text` holds. The document keeps its own copy of what it
  // needs, so `text` may go away afterwards. On failure returns false and error() says where and
  // why; the document is then empty. Memory from earlier parses is reused, not returned.
  bool parse(std::string_view text);
  // The top-level value; only after a successful parse.
  JsonValue root() const { return JsonValue(this, 0); }
  const std::string& error() const { return error_; }

 private:
  friend class JsonValue;
  struct Parser;

  JsonLimits limits_;
  std::vector<json_detail::Node> nodes_;
  std::string strings_;  // decoded strings and keys, back to back
  std::string error_;
};

inline const json_detail::Node& JsonValue::node() const { return doc_->nodes_[index_]; }
inline uint32_t JsonValue::first_child() const { return index_ + 1; }
inline uint32_t JsonValue::subtree_end() const { return node().end; }

inline std::string_view JsonValue::as_string() const {
  if (!is_string()) return {};
  return std::string_view(doc_->strings_).substr(node().offset, node().count);
}

inline JsonValue::ElementIterator& JsonValue::ElementIterator::operator++() {
  index_ = doc_->nodes_[index_].end;
  return *this;
}

inline std::pair<std::string_view, JsonValue> JsonValue::MemberIterator::operator*() const {
  return {JsonValue(doc_, index_).as_string(), JsonValue(doc_, index_ + 1)};
}

inline JsonValue::MemberIterator& JsonValue::MemberIterator::operator++() {
  index_ = doc_->nodes_[index_ + 1].end;
  return *this;
}

inline JsonValue::Range<JsonValue::ElementIterator> JsonValue::elements() const {
  const uint32_t last = is_array() ? subtree_end() : first_child();
  return {ElementIterator(doc_, first_child()), ElementIterator(doc_, last)};
}

inline JsonValue::Range<JsonValue::MemberIterator> JsonValue::members() const {
  const uint32_t last = is_object() ? subtree_end() : first_child();
  return {MemberIterator(doc_, first_child()), MemberIterator(doc_, last)};
}

// Appends `s` as a quoted JSON string: quotes, backslashes and control characters escaped,
// well-formed UTF-8 kept as it is, and each byte of malformed UTF-8 written as U+FFFD so that the
// output is always valid JSON.
void append_json_string(std::string& out, std::string_view s);

}  // namespace stoker
