#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "core/json.hpp"

namespace stoker {
namespace {

using namespace std::string_literals;

// The decoded string of a document that is one JSON string.
std::string decode(const std::string& text) {
  JsonDocument doc;
  EXPECT_TRUE(doc.parse(text)) << text << ": " << doc.error();
  EXPECT_TRUE(doc.root().is_string());
  return std::string(doc.root().as_string());
}

std::string escaped(std::string_view s) {
  std::string out;
  append_json_string(out, s);
  return out;
}

TEST(Json, Scalars) {
  JsonDocument doc;
  ASSERT_TRUE(doc.parse("null"));
  EXPECT_TRUE(doc.root().is_null());
  ASSERT_TRUE(doc.parse(" true "));
  EXPECT_TRUE(doc.root().is_bool());
  EXPECT_TRUE(doc.root().as_bool());
  ASSERT_TRUE(doc.parse("\t\r\nfalse\n"));
  EXPECT_TRUE(doc.root().is_bool());
  EXPECT_FALSE(doc.root().as_bool());
  ASSERT_TRUE(doc.parse("\"hi\""));
  EXPECT_EQ(doc.root().as_string(), "hi");
  EXPECT_EQ(doc.root().size(), 0u);
  EXPECT_EQ(doc.root().as_int64(), 0);
}

TEST(Json, ObjectsAndArrays) {
  JsonDocument doc;
  ASSERT_TRUE(doc.parse(R"( { "a" : [1, [], {}, [2, [3]], "x"], "b": {"c": null}, "": true } )"));
  const JsonValue root = doc.root();
  ASSERT_TRUE(root.is_object());
  EXPECT_EQ(root.size(), 3u);
  std::vector<std::string> keys;
  for (const auto& [key, value] : root.members()) keys.emplace_back(key);
  EXPECT_EQ(keys, (std::vector<std::string>{"a", "b", ""}));

  const JsonValue a = *root.find("a");
  ASSERT_TRUE(a.is_array());
  EXPECT_EQ(a.size(), 5u);
  std::vector<JsonType> types;
  for (const JsonValue& v : a.elements()) types.push_back(v.type());
  EXPECT_EQ(types, (std::vector<JsonType>{JsonType::kNumber, JsonType::kArray, JsonType::kObject,
                                          JsonType::kArray, JsonType::kString}));
  auto it = a.elements().begin();
  EXPECT_EQ((*it).as_int64(), 1);
  ++it;
  EXPECT_EQ((*it).size(), 0u);
  ++it;
  ++it;
  const JsonValue nested = *it;
  EXPECT_EQ(nested.size(), 2u);
  EXPECT_EQ((*++nested.elements().begin()).size(), 1u);
  ++it;
  EXPECT_EQ((*it).as_string(), "x");

  EXPECT_TRUE(root.find("b")->find("c")->is_null());
  EXPECT_TRUE(root.find("")->as_bool());
  EXPECT_FALSE(root.find("missing").has_value());
  EXPECT_FALSE(a.find("a").has_value());  // not an object
  EXPECT_EQ(a.members().begin(), a.members().end());
  EXPECT_EQ(root.elements().begin(), root.elements().end());
}

TEST(Json, RepeatedKeyFindsTheLast) {
  JsonDocument doc;
  ASSERT_TRUE(doc.parse(R"({"k": 1, "k": 2})"));
  EXPECT_EQ(doc.root().size(), 2u);
  EXPECT_EQ(doc.root().find("k")->as_int64(), 2);
}

TEST(Json, ParsingAgainReplacesTheDocument) {
  JsonDocument doc;
  ASSERT_TRUE(doc.parse(R"({"a": "first"})"));
  ASSERT_TRUE(doc.parse(R"(["second"])"));
  ASSERT_TRUE(doc.root().is_array());
  EXPECT_EQ((*doc.root().elements().begin()).as_string(), "second");
  EXPECT_FALSE(doc.parse("[1,"));
  ASSERT_TRUE(doc.parse("7"));
  EXPECT_EQ(doc.root().as_int64(), 7);
  EXPECT_TRUE(doc.error().empty());
}

TEST(Json, StringEscapes) {
  EXPECT_EQ(decode(R"("\" \\ \/ \b \f \n \r \t")"), "\" \\ / \b \f \n \r \t");
  EXPECT_EQ(decode(R"("\u0041\u00e9\u20AC")"), "A\xc3\xa9\xe2\x82\xac");
  EXPECT_EQ(decode(R"("\u0000")"), "\0"s);
  EXPECT_EQ(decode(R"("\ud83d\ude00")"), "\xf0\x9f\x98\x80");  // a surrogate pair: U+1F600
  EXPECT_EQ(decode(R"("\uDBFF\uDFFF")"), "\xf4\x8f\xbf\xbf");  // U+10FFFF
  EXPECT_EQ(decode(R"("\uffff")"), "\xef\xbf\xbf");
  EXPECT_EQ(decode("\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\""),
            "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80");
  EXPECT_EQ(decode(R"("a\nb" )"), "a\nb");
  EXPECT_EQ(decode("\"\x7f\""), "\x7f");
}

TEST(Json, KeysAreDecodedToo) {
  JsonDocument doc;
  ASSERT_TRUE(doc.parse(R"({"na\u006de": 1})"));
  EXPECT_EQ(doc.root().find("name")->as_int64(), 1);
}

TEST(Json, Numbers) {
  JsonDocument doc;
  struct Case {
    const char* text;
    bool integer;
    int64_t value;
    double number;
  };
  const Case cases[] = {
      {"0", true, 0, 0.0},
      {"-1", true, -1, -1.0},
      {"123456789", true, 123456789, 123456789.0},
      {"9223372036854775807", true, INT64_MAX, 9223372036854775807.0},
      {"-9223372036854775808", true, INT64_MIN, -9223372036854775808.0},
      {"9223372036854775808", false, 0, 9223372036854775808.0},
      {"18446744073709551616", false, 0, 18446744073709551616.0},
      {"1.5", false, 0, 1.5},
      {"-0.25", false, 0, -0.25},
      {"1e3", false, 0, 1000.0},
      {"1E+3", false, 0, 1000.0},
      {"25e-1", false, 0, 2.5},
      {"0.1", false, 0, 0.1},
      {"1.7976931348623157e308", false, 0, 1.7976931348623157e308},
      {"4.9e-324", false, 0, 4.9e-324},
      {"1e-400", false, 0, 0.0},
      {"0.0000000000000000000000000000000001e-400", false, 0, 0.0},
  };
  for (const Case& c : cases) {
    ASSERT_TRUE(doc.parse(c.text)) << c.text << ": " << doc.error();
    ASSERT_TRUE(doc.root().is_number()) << c.text;
    EXPECT_EQ(doc.root().is_integer(), c.integer) << c.text;
    EXPECT_EQ(doc.root().as_int64(), c.value) << c.text;
    EXPECT_EQ(doc.root().as_double(), c.number) << c.text;
  }
}

TEST(Json, NegativeZero) {
  JsonDocument doc;
  ASSERT_TRUE(doc.parse("-0"));
  EXPECT_TRUE(doc.root().is_integer());
  EXPECT_EQ(doc.root().as_int64(), 0);
  EXPECT_TRUE(std::signbit(doc.root().as_double()));
  ASSERT_TRUE(doc.parse("-0.0e5"));
  EXPECT_FALSE(doc.root().is_integer());
  EXPECT_TRUE(std::signbit(doc.root().as_double()));
  ASSERT_TRUE(doc.parse("-1e-999"));
  EXPECT_EQ(doc.root().as_double(), 0.0);
  EXPECT_TRUE(std::signbit(doc.root().as_double()));
}

TEST(Json, InvalidDocumentsAreRejected) {
  const std::string cases[] = {
      "",
      " ",
      "{",
      "}",
      "[",
      "]",
      "[1,]",
      "[,1]",
      "[1 2]",
      "{\"a\":1,}",
      "{\"a\" 1}",
      "{\"a\":}",
      "{1:2}",
      "{a:1}",
      "{'a':1}",
      "[1]]",
      "{}}",
      "[1] x",
      "1 2",
      "nul",
      "tru",
      "falsey",
      "True",
      "NULL",
      "NaN",
      "Infinity",
      "-Infinity",
      "+1",
      "01",
      "-01",
      "00",
      "1.",
      ".5",
      "-",
      "-a",
      "1e",
      "1e+",
      "1.e3",
      "0x10",
      "1e400",
      "-1e400",
      "123456789e999999999999",
      "\"abc",
      "\"\\\"",
      "\"\\x\"",
      "\"\\u12\"",
      "\"\\u12g4\"",
      "\"\\U0041\"",
      "\"\\ud800\"",
      "\"\\udc00\"",
      "\"\\ud800\\u0041\"",
      "\"\\ud800\\ud800\"",
      "\"\\ud800x\"",
      "\"a\tb\"",
      "\"a\nb\"",
      "\"\x01\"",
      "\"\x1f\"",
      "\"\xff\"",
      "\"\x80\"",
      "\"\xc0\xaf\"",
      "\"\xc1\xbf\"",
      "\"\xe0\x80\xaf\"",
      "\"\xed\xa0\x80\"",
      "\"\xe2\x82\"",
      "\"\xf0\x8f\xbf\xbf\"",
      "\"\xf4\x90\x80\x80\"",
      "\"\xf5\x80\x80\x80\"",
      "\"\xe2\x82\xac",
      "\xef\xbb\xbf{}",
      "[1]\0"s,
      "\0"s,
      "/* */ 1",
      "[1, // c\n 2]",
      "{\"a\":1 \"b\":2}",
      "[\"a\" \"b\"]",
  };
  JsonDocument doc;
  for (const std::string& text : cases) {
    EXPECT_FALSE(doc.parse(text)) << "accepted: " << text;
    EXPECT_NE(doc.error().find("invalid JSON at byte"), std::string::npos) << doc.error();
  }
}

TEST(Json, ErrorsSayWhereAndWhy) {
  JsonDocument doc;
  ASSERT_FALSE(doc.parse("[1, 2,, 3]"));
  EXPECT_EQ(doc.error(), "invalid JSON at byte 6: unexpected character");
  ASSERT_FALSE(doc.parse("{\"a\": \"x\ty\"}"));
  EXPECT_EQ(doc.error(), "invalid JSON at byte 8: control character in string");
  ASSERT_FALSE(doc.parse("[\"\\ud800\"]"));
  EXPECT_EQ(doc.error(), "invalid JSON at byte 2: lone high surrogate");
  ASSERT_FALSE(doc.parse("[1e999]"));
  EXPECT_EQ(doc.error(), "invalid JSON at byte 1: number out of range");
  ASSERT_FALSE(doc.parse("{} {}"));
  EXPECT_EQ(doc.error(), "invalid JSON at byte 3: unexpected text after the value");
}

TEST(Json, DepthLimit) {
  JsonDocument doc;  // 64 levels by default
  const auto nested = [](size_t depth) {
    std::string text;
    for (size_t i = 0; i < depth; ++i) text += i % 2 ? "{\"k\":" : "[";
    text += "0";
    for (size_t i = depth; i-- > 0;) text += i % 2 ? "}" : "]";
    return text;
  };
  EXPECT_TRUE(doc.parse(nested(64))) << doc.error();
  EXPECT_FALSE(doc.parse(nested(65)));
  EXPECT_NE(doc.error().find("nesting too deep"), std::string::npos);

  // Far deeper than any stack would survive recursively: refused at the limit, not crashed.
  EXPECT_FALSE(doc.parse(std::string(1'000'000, '[')));
  EXPECT_NE(doc.error().find("nesting too deep"), std::string::npos);

  JsonDocument shallow(JsonLimits{1024, 2, 1024});
  EXPECT_TRUE(shallow.parse("[[1]]"));
  EXPECT_FALSE(shallow.parse("[[[1]]]"));
  EXPECT_TRUE(shallow.parse("[1, 2, [3], {\"a\": 4}]"));
}

TEST(Json, SizeAndValueLimits) {
  JsonDocument small(JsonLimits{16, 64, 4});
  EXPECT_TRUE(small.parse("[1, 2, 3]"));  // four values: the array and three numbers
  EXPECT_FALSE(small.parse("[1, 2, 3, 4]"));
  EXPECT_NE(small.error().find("too many values"), std::string::npos);
  EXPECT_FALSE(small.parse("{\"a\": 1, \"b\": 2}"));  // keys count as values
  EXPECT_FALSE(small.parse("\"" + std::string(15, 'x') + "\""));
  EXPECT_EQ(small.error(), "the JSON text is 17 bytes; the limit is 16");

  // A large but valid document parses under the default limits...
  std::string big = "[";
  for (int i = 0; i < 200'000; ++i) big += std::to_string(i) + ",";
  big.back() = ']';
  JsonDocument doc;
  ASSERT_TRUE(doc.parse(big)) << doc.error();
  EXPECT_EQ(doc.root().size(), 200'000u);
  int64_t sum = 0;
  for (const JsonValue& v : doc.root().elements()) sum += v.as_int64();
  EXPECT_EQ(sum, int64_t{199'999} * 200'000 / 2);

  // ...and beyond them is refused cleanly, before any work proportional to the text.
  std::string many = "[" + std::string(2 * (size_t{1} << 20), '0');
  for (size_t i = 2; i < many.size(); i += 2) many[i] = ',';
  many += "]";
  EXPECT_FALSE(doc.parse(many));
  EXPECT_NE(doc.error().find("too many values"), std::string::npos);
  EXPECT_FALSE(doc.parse(std::string((size_t{64} << 20) + 1, ' ')));
  EXPECT_NE(doc.error().find("the limit is"), std::string::npos);
}

TEST(JsonString, Escaping) {
  EXPECT_EQ(escaped(""), "\"\"");
  EXPECT_EQ(escaped("plain text"), "\"plain text\"");
  EXPECT_EQ(escaped("a\"b\\c"), R"("a\"b\\c")");
  EXPECT_EQ(escaped("\n\r\t\b\f"), R"("\n\r\t\b\f")");
  EXPECT_EQ(escaped("\x01\x1f\0"s), R"("\u0001\u001f\u0000")");
  EXPECT_EQ(escaped("/ \x7f"), "\"/ \x7f\"");
  EXPECT_EQ(escaped("caf\xc3\xa9 \xf0\x9f\x98\x80"), "\"caf\xc3\xa9 \xf0\x9f\x98\x80\"");
  // Malformed UTF-8 becomes U+FFFD, one per byte, so the output is always valid JSON.
  EXPECT_EQ(escaped("a\xff"
                    "b"),
            R"("a\ufffdb")");
  EXPECT_EQ(escaped("\xe2\x82"), R"("\ufffd\ufffd")");
  EXPECT_EQ(escaped("\xed\xa0\x80"), R"("\ufffd\ufffd\ufffd")");

  std::string out = "prefix:";
  append_json_string(out, "x");
  EXPECT_EQ(out, "prefix:\"x\"");
}

TEST(JsonString, RandomStringsRoundTrip) {
  std::mt19937 rng(7);
  JsonDocument doc;
  for (int round = 0; round < 2000; ++round) {
    std::string s(rng() % 40, '\0');
    for (char& c : s) c = char(rng() % 2 ? rng() % 128 : rng() % 256);
    const std::string text = escaped(s);
    ASSERT_TRUE(doc.parse(text)) << doc.error();
    // Well-formed input comes back as it was; malformed input reads back as valid UTF-8.
    std::string again;
    append_json_string(again, doc.root().as_string());
    JsonDocument check;
    ASSERT_TRUE(check.parse(again));
    EXPECT_EQ(check.root().as_string(), doc.root().as_string());
    bool ascii = true;
    for (char c : s) ascii = ascii && static_cast<unsigned char>(c) < 0x80;
    if (ascii) {
      EXPECT_EQ(doc.root().as_string(), s);
    }
  }
}

TEST(Json, RandomBytesNeverCrash) {
  std::mt19937 rng(11);
  const std::string alphabet = "[]{}\",:\\ u0123456789abcdefe.E+-truefalsenul\xc3\xa9\xff\x01";
  JsonDocument doc(JsonLimits{4096, 8, 256});
  int accepted = 0;
  for (int round = 0; round < 20000; ++round) {
    std::string text(rng() % 24, ' ');
    for (char& c : text) c = alphabet[rng() % alphabet.size()];
    if (doc.parse(text)) {
      ++accepted;
      EXPECT_TRUE(doc.error().empty());
    } else {
      EXPECT_FALSE(doc.error().empty());
    }
  }
  EXPECT_GT(accepted, 0);
}

}  // namespace
}  // namespace stoker
