// Private to the http*.cpp files: the RFC 9110 character classes and list syntax shared by the
// request parser and the response serializer.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace stoker::http_syntax {

enum CharClass : uint8_t { kToken = 1, kFieldValue = 2, kTarget = 4 };

constexpr std::array<uint8_t, 256> make_char_classes() {
  std::array<uint8_t, 256> t{};
  for (int c = 0; c < 256; ++c) {
    const bool alnum = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
    bool token = alnum;
    for (char s : std::string_view("!#$%&'*+-.^_`|~")) token = token || c == s;
    const bool visible = (c > 0x20 && c < 0x7f) || c >= 0x80;  // obs-text allowed
    t[c] = uint8_t((token ? kToken : 0) | (visible || c == ' ' || c == '\t' ? kFieldValue : 0) |
                   (visible ? kTarget : 0));
  }
  return t;
}
inline constexpr std::array<uint8_t, 256> kChars = make_char_classes();

inline bool all_of_class(std::string_view s, uint8_t cls) {
  for (char c : s) {
    if ((kChars[uint8_t(c)] & cls) == 0) return false;
  }
  return true;
}

inline char lower(char c) { return c >= 'A' && c <= 'Z' ? char(c - 'A' + 'a') : c; }

inline bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (lower(a[i]) != lower(b[i])) return false;
  }
  return true;
}

inline std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// Calls f on each trimmed, non-empty element of a comma-separated list; stops when f returns false.
template <class F>
bool each_element(std::string_view list, F f) {
  while (true) {
    const size_t comma = list.find(',');
    const std::string_view item = trim(list.substr(0, comma));
    if (!item.empty() && !f(item)) return false;
    if (comma == std::string_view::npos) return true;
    list.remove_prefix(comma + 1);
  }
}

}  // namespace stoker::http_syntax
