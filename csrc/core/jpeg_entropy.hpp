// stoker's own decoder of baseline Huffman-coded JPEG data. Entropy decoding is most of the time
// of a DCT-scaled decode; stoker decodes the coefficients itself and hands them to libjpeg, whose
// IDCT, upsampling and colour conversion make the pixels. Include after jpeglib.h.
#pragma once

#include <csetjmp>
#include <cstdint>

namespace stoker::detail {

struct FastEntropy;

// This thread's decoder state.
FastEntropy& thread_fast_entropy();

// How many images this thread's decoder has given back to libjpeg (see below).
uint64_t thread_fast_entropy_handed_back();

// Takes over entropy decoding of a single-scan baseline JPEG after jpeg_start_decompress (other
// files are left to libjpeg). Data the decoder does not handle (a bad code, a coefficient past a
// block, a misplaced marker) sets `redo` and unwinds to `jump`: the caller then decodes the whole
// image again through libjpeg alone, so damaged files get libjpeg's exact results and errors.
void install_fast_entropy(jpeg_decompress_struct& c, FastEntropy& e, std::jmp_buf& jump,
                          bool& redo);

}  // namespace stoker::detail
