// Writes the seed corpus of every fuzz target under the directory given as the only argument:
// valid inputs of each kind the targets read, so that fuzzing starts from deep inside the parsers
// instead of rediscovering each format's magic bytes. Built from the native tests' encoders, so the
// images come from the same libraries (and the same modes) the tests use.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "image_target.hpp"
#include "test_util.hpp"

namespace {

using namespace stoker;
using namespace stoker::test;
namespace fs = std::filesystem;

fs::path g_root;

void write(const std::string& target, const std::string& name, const Bytes& bytes) {
  const fs::path dir = g_root / target;
  fs::create_directories(dir);
  std::ofstream(dir / name, std::ios::binary)
      .write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
}

void write(const std::string& target, const std::string& name, const std::string& prefix,
           const std::string& text) {
  const std::string all = prefix + text;
  write(target, name, Bytes(all.begin(), all.end()));
}

// Each image is written with a few parameter blocks (see image_target.hpp): specs, scales and
// regions differ between the copies.
void write_image(const std::string& target, const std::string& name, const Bytes& image) {
  static Rng rng(7);
  for (int i = 0; i < 3; ++i) {
    Bytes b(fuzz::kParamBytes);
    for (uint8_t& c : b) c = rng.byte();
    b.insert(b.end(), image.begin(), image.end());
    write(target, name + "-" + std::to_string(i), b);
  }
}

void jpeg_seeds() {
  const Image rgb = make_rgb(37, 29, 1);
  const struct {
    const char* name;
    JpegOptions options;
  } kinds[] = {
      {"baseline-420", {90, Sampling::k420}},
      {"baseline-422", {75, Sampling::k422}},
      {"baseline-444", {95, Sampling::k444}},
      {"gray", {90, Sampling::kGray}},
      {"progressive", {85, Sampling::k420, true}},
      {"progressive-gray", {85, Sampling::kGray, true}},
      {"arithmetic", {90, Sampling::k420, false, true}},
      {"restart", {90, Sampling::k420, false, false, 1}},
      {"restart-444", {90, Sampling::k444, false, false, 2}},
      {"exif-6", {90, Sampling::k420, false, false, 0, 6}},
      {"exif-3-le", {90, Sampling::k422, false, false, 0, 3, true}},
      {"fitted-huffman", {90, Sampling::k420, false, false, 0, 0, false, true}},
  };
  for (const auto& k : kinds) write_image("jpeg", k.name, encode_jpeg(rgb, k.options));
  Image cmyk(23, 19, 4);
  Rng rng(3);
  for (uint8_t& c : cmyk.px) c = rng.byte();
  write_image("jpeg", "cmyk", encode_jpeg_cmyk(cmyk, false));
  write_image("jpeg", "ycck", encode_jpeg_cmyk(cmyk, true));
}

void png_seeds() {
  const Image rgb = make_rgb(19, 13, 2);
  for (PngKind kind : {PngKind::kRgb8, PngKind::kRgba8, PngKind::kGray8, PngKind::kGrayAlpha8,
                       PngKind::kPalette8, PngKind::kRgb16, PngKind::kGray16, PngKind::kGray1}) {
    write_image("png", png_kind_name(kind), encode_png(rgb, kind, false).data);
  }
  write_image("png", "interlaced", encode_png(rgb, PngKind::kRgba8, true).data);
  write_image("png", "exif-8",
              encode_png(rgb, PngKind::kRgb8, false, make_exif_tiff(8, true)).data);
}

void webp_seeds() {
#ifdef STOKER_HAVE_WEBP
  const Image rgb = make_rgb(21, 15, 3);
  const Bytes lossy = encode_webp(rgb, false);
  write_image("webp", "lossy", lossy);
  write_image("webp", "lossless", encode_webp(rgb, true));
  write_image("webp", "exif-5", webp_with_exif(lossy, 21, 15, make_exif_tiff(5, false)));
#endif
}

// The two header-length bytes, then the body.
void kserve_seed(const std::string& name, const std::string& header,
                 const std::vector<std::string>& elements) {
  std::string body = header;
  for (const std::string& e : elements) {
    const uint32_t n = uint32_t(e.size());
    body.append(reinterpret_cast<const char*>(&n), 4);
    body += e;
  }
  const std::string prefix{char(header.size() & 0xFF), char(header.size() >> 8)};
  write("kserve", name, prefix, body);
}

std::string infer_header(const std::string& extra, const std::string& shape, size_t binary_size) {
  return R"({"id":"r1","inputs":[{"name":"image","shape":)" + shape +
         R"(,"datatype":"BYTES","parameters":{"binary_data_size":)" + std::to_string(binary_size) +
         "}}]" + extra + "}";
}

void kserve_seeds() {
  const std::string a = "\xFF\xD8\xFF\xE0jpeg", b = "\x89PNG\r\n\x1a\npng";
  const size_t ab = a.size() + b.size() + 8;
  kserve_seed("one", infer_header("", "[1]", a.size() + 4), {a});
  kserve_seed("two", infer_header("", "[2,1]", ab), {a, b});
  kserve_seed("outputs",
              infer_header(R"(,"outputs":[{"name":"probs","parameters":{"binary_data":true}},)"
                           R"({"name":"label"}],"parameters":{"binary_data_output":true})",
                           "[2]", ab),
              {a, b});
  kserve_seed("empty-element", infer_header("", "[1]", 4), {""});
}

void json_seeds() {
  const char* docs[] = {
      R"({"a":1,"b":[true,false,null],"c":{"d":"e"}})",
      R"([0,-0,1.5,-2e-3,1E+10,9223372036854775807,-9223372036854775808,18446744073709551616])",
      R"("esc \" \\ \/ \b \f \n \r \t \u00e9 \ud83d\ude00 caf\u00e9")",
      "\"utf-8: \xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80\"",
      R"({"k":1,"k":2,"nested":[[[[{"x":[]}]]]],"":{}})",
      " \t\r\n 42 \n",
  };
  int i = 0;
  for (const char* d : docs) write("json", "doc" + std::to_string(i++), "", d);
}

void http_request_seeds() {
  const std::string options[] = {std::string("\x00\x00", 2), std::string("\x05\x01", 2)};
  const std::pair<const char*, const char*> streams[] = {
      {"get", "GET /v2/health/ready?verbose=1 HTTP/1.1\r\nHost: localhost\r\n\r\n"},
      {"post",
       "POST /v2/models/m/infer HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\n"
       "Content-Length: 11\r\n\r\n{\"inputs\":1}"},
      {"chunked",
       "POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
       "5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nTrailer: t\r\n\r\n"},
      {"pipelined",
       "GET /a HTTP/1.1\r\nHost: h\r\n\r\nHEAD /b HTTP/1.1\r\nHost: h\r\n"
       "Connection: close\r\n\r\n\r\nGET /c HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"},
      {"continue",
       "PUT /u HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n"
       "abc"},
      {"absolute",
       "OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\nGET http://h:8000/p?q HTTP/1.1\r\n"
       "Host: h\r\nServer-Timing: x;dur=1.5\r\n\r\n"},
  };
  for (const std::string& o : options) {
    for (const auto& [name, text] : streams) {
      write("http_request", std::string(name) + "-" + std::to_string(uint8_t(o[1])), o, text);
    }
  }
}

void http_response_seeds() {
  const std::pair<const char*, const char*> streams[] = {
      {"length",
       "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nServer-Timing: decode;dur=1.25, "
       "infer;desc=\"a,b\";dur=\"3\"\r\n\r\nhello"},
      {"chunked",
       "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n4;x=y\r\nabcd\r\n"
       "0\r\nX-Trailer: 1\r\n\r\nHTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"},
      {"interim",
       "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"
       "HTTP/1.1 304 Not Modified\r\n\r\n"},
      {"head",
       "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nHTTP/1.1 500 Oops\r\n"
       "Content-Length: 2\r\nConnection: close\r\n\r\nno"},
      {"eof", "HTTP/1.0 200\nContent-Type: text/plain\n\nuntil the connection closes"},
  };
  for (const auto& [name, text] : streams) {
    write("http_response", name, std::string("\x00\x01", 2), text);
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s OUTPUT_DIR\n", argv[0]);
    return 2;
  }
  g_root = argv[1];
  jpeg_seeds();
  png_seeds();
  webp_seeds();
  kserve_seeds();
  json_seeds();
  http_request_seeds();
  http_response_seeds();
  return 0;
}
