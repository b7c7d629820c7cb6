// WebP through libwebp; animations decode their first frame onto the canvas.
#include "core/codecs.hpp"

#ifdef STOKER_HAVE_WEBP
#include <webp/decode.h>
#include <webp/demux.h>

#include <cstring>
#include <memory>

namespace stoker::detail {
namespace {

struct DemuxDeleter {
  void operator()(WebPDemuxer* d) const { WebPDemuxDelete(d); }
};
using Demux = std::unique_ptr<WebPDemuxer, DemuxDeleter>;

Demux open_demux(const uint8_t* data, size_t size) {
  WebPData wd{data, size};
  Demux demux(WebPDemux(&wd));
  if (!demux) throw ImageError(Status::kCorrupt, "WebP: malformed container");
  return demux;
}

WebPBitstreamFeatures features(const uint8_t* data, size_t size) {
  WebPBitstreamFeatures f;
  const VP8StatusCode code = WebPGetFeatures(data, size, &f);
  if (code == VP8_STATUS_UNSUPPORTED_FEATURE) {
    throw ImageError(Status::kUnsupported, "WebP: unsupported feature");
  }
  if (code != VP8_STATUS_OK) throw ImageError(Status::kCorrupt, "WebP: malformed header");
  return f;
}

}  // namespace

ImageInfo webp_info(const uint8_t* data, size_t size) {
  const WebPBitstreamFeatures f = features(data, size);
  ImageInfo info;
  info.format = ImageFormat::kWebp;
  info.width = f.width;
  info.height = f.height;
  // Only the extended format (VP8X) carries metadata chunks.
  if (size >= 16 && std::memcmp(data + 12, "VP8X", 4) == 0) {
    Demux demux = open_demux(data, size);
    WebPChunkIterator it;
    if (WebPDemuxGetChunk(demux.get(), "EXIF", 1, &it)) {
      const uint8_t* exif = it.chunk.bytes;
      size_t n = it.chunk.size;
      if (n >= 6 && std::memcmp(exif, "Exif\0\0", 6) == 0) {
        exif += 6;
        n -= 6;
      }
      info.orientation = parse_exif_orientation(exif, n);
      WebPDemuxReleaseChunkIterator(&it);
    }
  }
  return info;
}

PixelView webp_decode(const uint8_t* data, size_t size, Buffer& buffer) {
  const WebPBitstreamFeatures f = features(data, size);
  PixelView view;
  view.width = f.width;
  view.height = f.height;
  view.stride = size_t(f.width) * 4;
  const size_t bytes = view.stride * size_t(f.height);
  uint8_t* pixels = buffer.reserve(bytes + kBufferSlack);
  view.data = pixels;
  if (!f.has_animation) {
    if (WebPDecodeRGBAInto(data, size, pixels, bytes, int(view.stride)) == nullptr) {
      throw ImageError(Status::kCorrupt, "WebP: corrupt or truncated image data");
    }
    return view;
  }
  Demux demux = open_demux(data, size);
  WebPIterator it;
  if (!WebPDemuxGetFrame(demux.get(), 1, &it)) {
    throw ImageError(Status::kCorrupt, "WebP: animation without frames");
  }
  const int fx = it.x_offset, fy = it.y_offset, fw = it.width, fh = it.height;
  const bool fits =
      fx >= 0 && fy >= 0 && fw > 0 && fh > 0 && fx + fw <= f.width && fy + fh <= f.height;
  uint8_t* at = pixels + size_t(fy) * view.stride + size_t(fx) * 4;
  std::memset(pixels, 0, bytes);
  const bool ok =
      fits && WebPDecodeRGBAInto(it.fragment.bytes, it.fragment.size, at,
                                 bytes - (size_t(at - pixels)), int(view.stride)) != nullptr;
  WebPDemuxReleaseIterator(&it);
  if (!ok) throw ImageError(Status::kCorrupt, "WebP: corrupt first animation frame");
  return view;
}

}  // namespace stoker::detail

#else

namespace stoker::detail {

ImageInfo webp_info(const uint8_t*, size_t) {
  throw ImageError(Status::kUnsupported, "WebP: this build of stoker has no WebP support");
}

PixelView webp_decode(const uint8_t*, size_t, Buffer&) {
  throw ImageError(Status::kUnsupported, "WebP: this build of stoker has no WebP support");
}

}  // namespace stoker::detail

#endif
