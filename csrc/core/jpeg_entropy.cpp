// stoker's decoder of baseline Huffman-coded JPEG data (see jpeg_entropy.hpp).
#include <csetjmp>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>

// clang-format off
#include <jpeglib.h>
// clang-format on

#include "core/jpeg_entropy.hpp"

// jpeglib.h leaves the entropy decoder opaque; this layout is the one every libjpeg and
// libjpeg-turbo release uses (jpegint.h), and stoker replaces only its decode_mcu (see
// FastEntropy).
struct jpeg_entropy_decoder {
  void (*start_pass)(j_decompress_ptr cinfo);
  boolean (*decode_mcu)(j_decompress_ptr cinfo, JBLOCKROW* MCU_data);
  boolean insufficient_data;
};

namespace stoker::detail {
namespace {

// Baseline Huffman decoding is most of the time of a DCT-scaled decode, and libjpeg spends
// several steps per coefficient (code lookup, then magnitude bits, then sign extension). stoker
// decodes the entropy-coded data itself and hands libjpeg the same coefficients, so the IDCT,
// upsampling and colour conversion (and thus the pixels) stay libjpeg's. It handles only
// well-formed data: a bad code, a coefficient past the end of a block, running into a marker or a
// restart marker out of place makes the whole image decode again through libjpeg, so damaged
// files give exactly the results and errors libjpeg gives them.
constexpr int kPeekBits = 11;

// The natural (row-major) index of each zigzag position, derived by walking the anti-diagonals.
// Positions past the block (an end of block adds kEndOfBlock) land on the DC slot, which is
// written last.
struct Zigzag {
  uint8_t natural[256] = {};
  Zigzag() {
    int k = 0;
    for (int d = 0; d < 15; ++d) {
      for (int i = 0; i <= d; ++i) {
        const int row = d % 2 == 0 ? d - i : i;
        const int col = d - row;
        if (row < 8 && col < 8) natural[k++] = uint8_t(row * 8 + col);
      }
    }
  }
};
const Zigzag kZigzag;

// An AC step is one lookup by the next kPeekBits bits that yields up to two coefficients whose
// codes and magnitude bits all fit: bits used (0-6) | kWhole (7) | zero run before the first
// (8-15) | first value (16-31) | bits of the first alone (32-38) | whether there is a second (39) |
// zero run before the second (40-47) | second value (48-63). An end of block counts as a run of
// kEndOfBlock; a run of 16 zeros writes a zero. Without kWhole, `symbol` decodes the code.
constexpr uint64_t kWhole = 0x80;
constexpr int kEndOfBlock = 128;

struct HuffTable {
  uint16_t symbol[1 << kPeekBits];  // code length << 8 | symbol; 0 for longer codes
  // AC tables: the steps above. DC tables: kWhole | bits used | difference << 16 where the code
  // and its magnitude bits fit.
  uint64_t steps[1 << kPeekBits];
  int32_t max_code[17];     // the largest code of each length, -1 when there is none
  int32_t first_index[17];  // position in `values` of code 0 of each length (may be negative)
  uint8_t values[256];
};

inline int extend(int bits, int size) {
  return bits < (1 << (size - 1)) ? bits - (1 << size) + 1 : bits;
}

// The coefficient a symbol codes at the top of `avail` known bits of `peek`: false when its code
// and magnitude do not fit or it needs the slow path.
bool ac_coefficient(const HuffTable& t, int peek, int avail, int& used, int& advance, int& value) {
  const int hit = t.symbol[(peek << (kPeekBits - avail)) & ((1 << kPeekBits) - 1)];
  const int len = hit >> 8, sym = hit & 0xFF, run = sym >> 4, size = sym & 15;
  if (len == 0 || len + size > avail || (size == 0 && run != 0 && run != 15)) return false;
  const int bits = size != 0 ? (peek >> (avail - len - size)) & ((1 << size) - 1) : 0;
  used = len + size;
  value = size != 0 ? extend(bits, size) : 0;
  advance = size == 0 && run == 0 ? kEndOfBlock : run;
  return true;
}

// libjpeg has already validated the table (jpeg_start_decompress builds its own from it).
void build_table(const JHUFF_TBL& spec, bool ac, HuffTable& t) {
  std::memset(t.symbol, 0, sizeof(t.symbol));
  int code = 0, index = 0;
  for (int len = 1; len <= 16; ++len) {
    t.first_index[len] = index - code;
    for (int i = 0; i < spec.bits[len]; ++i, ++code, ++index) {
      if (len > kPeekBits) continue;
      const int first = code << (kPeekBits - len);
      for (int peek = first; peek < first + (1 << (kPeekBits - len)); ++peek)
        t.symbol[peek] = uint16_t(len << 8 | spec.huffval[index]);
    }
    t.max_code[len] = spec.bits[len] ? code - 1 : -1;
    code <<= 1;
  }
  std::memcpy(t.values, spec.huffval, sizeof(t.values));
  if (!ac) {
    for (int peek = 0; peek < (1 << kPeekBits); ++peek) {
      const int len = t.symbol[peek] >> 8, size = t.symbol[peek] & 15;
      t.steps[peek] = 0;
      if (len == 0 || len + size > kPeekBits) continue;
      const int bits = (peek >> (kPeekBits - len - size)) & ((1 << size) - 1);
      const int diff = size != 0 ? extend(bits, size) : 0;
      t.steps[peek] = kWhole | uint64_t(len + size) | uint64_t(uint16_t(diff)) << 16;
    }
    return;
  }
  for (int peek = 0; peek < (1 << kPeekBits); ++peek) {
    int used1, advance1, value1;
    t.steps[peek] = 0;
    if (!ac_coefficient(t, peek, kPeekBits, used1, advance1, value1)) continue;
    uint64_t step =
        kWhole | uint64_t(advance1) << 8 | uint64_t(uint16_t(value1)) << 16 | uint64_t(used1) << 32;
    int used = used1;
    const int rest = kPeekBits - used1;
    int used2, advance2, value2;
    if (advance1 != kEndOfBlock && rest > 0 &&
        ac_coefficient(t, peek & ((1 << rest) - 1), rest, used2, advance2, value2)) {
      used += used2;
      step |= uint64_t(1) << 39 | uint64_t(advance2) << 40 | uint64_t(uint16_t(value2)) << 48;
    }
    t.steps[peek] = step | uint64_t(used);
  }
}

// MSB-first bits of the entropy-coded data with byte stuffing removed. At a marker (or the end of
// the input) it supplies zero bytes and counts them, so the caller can tell whether it consumed
// any of them.
struct BitReader;
BitReader refill_bytewise(BitReader in);

struct BitReader {
  const uint8_t* pos;
  const uint8_t* end;
  uint64_t bits;
  int count;
  int filler;
  bool at_marker;

  void refill() {
    if (count > 56) return;
    if (!at_marker && end - pos >= 8) {
      uint64_t word = 0;
      for (int i = 0; i < 8; ++i) word = word << 8 | pos[i];
      // Eight bytes without an 0xFF need no unstuffing: take as many as fit at once.
      if (((~word - 0x0101010101010101ULL) & word & 0x8080808080808080ULL) == 0) {
        const int n = (64 - count) >> 3;
        bits |= (word >> (64 - 8 * n)) << (64 - count - 8 * n);
        count += 8 * n;
        pos += n;
        return;
      }
    }
    *this = refill_bytewise(*this);
  }
  uint32_t peek(int n) const { return uint32_t(bits >> (64 - n)); }
  void drop(int n) {
    bits <<= n;
    count -= n;
  }
  int take(int n) {
    const int v = int(peek(n));
    drop(n);
    return v;
  }
};

// Out of line and by value, so the decoding loop keeps its reader in registers.
[[gnu::noinline]] BitReader refill_bytewise(BitReader in) {
  while (in.count <= 56) {
    unsigned byte = 0;
    if (!in.at_marker) {
      if (in.pos < in.end && *in.pos != 0xFF) {
        byte = *in.pos++;
      } else if (in.end - in.pos >= 2 && in.pos[1] == 0) {
        byte = 0xFF;
        in.pos += 2;
      } else {
        in.at_marker = true;
      }
    }
    if (in.at_marker) in.filler += 8;
    in.bits |= uint64_t(byte) << (56 - in.count);
    in.count += 8;
  }
  return in;
}

}  // namespace

struct FastEntropy {
  BitReader in;
  const HuffTable* dc[D_MAX_BLOCKS_IN_MCU];
  const HuffTable* ac[D_MAX_BLOCKS_IN_MCU];
  int last_dc[MAX_COMPS_IN_SCAN];
  unsigned restarts_to_go;
  int next_restart;
  JDIMENSION mcus_left;
  std::jmp_buf* jump;  // where the decode was set up to unwind to
  bool* redo;
  uint64_t handed_back = 0;  // images this thread gave back to libjpeg
  HuffTable tables[2 * NUM_HUFF_TBLS];
  // What each table was built from: a table is a function of these bytes alone.
  struct Source {
    bool valid = false;
    bool ac = false;
    uint8_t bits[17];
    uint8_t huffval[256];
  } sources[2 * NUM_HUFF_TBLS];
};

namespace {

[[noreturn]] void redo_with_libjpeg(FastEntropy& e) {
  ++e.handed_back;
  *e.redo = true;
  std::longjmp(*e.jump, 1);
}

// A code longer than kPeekBits; -1 for one not in the table.
int decode_long_symbol(BitReader& in, const HuffTable& t) {
  for (int len = kPeekBits + 1; len <= 16; ++len) {
    const int code = int(in.peek(len));
    if (code <= t.max_code[len]) {
      in.drop(len);
      return t.values[(t.first_index[len] + code) & 0xFF];
    }
  }
  return -1;
}

// A symbol; needs at least 16 bits in the reader. -1 for a code not in the table.
inline int decode_symbol(BitReader& in, const HuffTable& t) {
  const int hit = t.symbol[in.peek(kPeekBits)];
  if (hit == 0) return decode_long_symbol(in, t);
  in.drop(hit >> 8);
  return hit & 0xFF;
}

// One block into `block` (zeroed by libjpeg), or only past it when Store is false. Positions
// past the block map to the DC slot, written last.
// DC predictions add up differences without bound; crafted data can push the sum past int's
// range. libjpeg's sum wraps there (and only the low 16 bits reach the coefficient), so this one
// wraps the same way, without the undefined behaviour of signed overflow.
inline int wrap_add(int a, int b) { return int(unsigned(a) + unsigned(b)); }

template <bool Store>
inline bool decode_block(BitReader& in, const HuffTable& dc, const HuffTable& ac, int& last_dc,
                         JCOEF* block) {
  // 32 bits cover the longest code (16) with the longest magnitude (15).
  if (in.count < 32) in.refill();
  const uint64_t dc_step = dc.steps[in.peek(kPeekBits)];
  if (dc_step & kWhole) {
    last_dc = wrap_add(last_dc, int16_t(dc_step >> 16));
    in.drop(int(dc_step & 0x7F));
  } else {
    const int size = decode_symbol(in, dc);
    if (size < 0) return false;
    last_dc = wrap_add(last_dc, size != 0 ? extend(in.take(size), size) : 0);
  }
  int k = 1;
  do {
    if (in.count < 32) in.refill();
    const uint64_t step = ac.steps[in.peek(kPeekBits)];
    if (step & kWhole) {
      const int k1 = k + int((step >> 8) & 0xFF);
      if (Store) block[kZigzag.natural[k1]] = JCOEF(int16_t(step >> 16));
      // The block ends here, so a second coefficient would belong to the next block.
      if (k1 >= 63) {
        in.drop(int((step >> 32) & 0x7F));
        k = k1 + 1;
        continue;
      }
      // Without a second coefficient this writes a zero where no coefficient was yet.
      const int k2 = k1 + 1 + int((step >> 40) & 0xFF);
      if (Store) block[kZigzag.natural[k2]] = JCOEF(int64_t(step) >> 48);
      k = k2 + int((step >> 39) & 1);
      in.drop(int(step & 0x7F));
      continue;
    }
    const int sym = decode_symbol(in, ac);
    if (sym < 0) return false;
    const int run = sym >> 4, mag = sym & 15;
    if (mag == 0) {
      k += run == 15 ? 16 : kEndOfBlock;
      continue;
    }
    k += run;
    if (k > 63) return false;
    const int v = extend(in.take(mag), mag);
    if (Store) block[kZigzag.natural[k]] = JCOEF(v);
    ++k;
  } while (k < 64);
  if (Store) block[0] = JCOEF(last_dc);
  // Past 64 without an end of block: a coefficient or zero run beyond the block.
  return k == 64 || k > kEndOfBlock;
}

boolean fast_decode_mcu(j_decompress_ptr cinfo, JBLOCKROW* mcu) {
  FastEntropy& e = *static_cast<FastEntropy*>(cinfo->client_data);
  BitReader in = e.in;
  if (cinfo->restart_interval != 0) {
    if (e.restarts_to_go == 0) {
      // Only padding may remain before the expected RSTn.
      in.refill();
      if (!in.at_marker || in.count - in.filler >= 8 || in.end - in.pos < 2 ||
          in.pos[1] != JPEG_RST0 + e.next_restart) {
        redo_with_libjpeg(e);
      }
      in.pos += 2;
      in.bits = 0;
      in.count = in.filler = 0;
      in.at_marker = false;
      for (int& v : e.last_dc) v = 0;
      e.next_restart = (e.next_restart + 1) & 7;
      e.restarts_to_go = cinfo->restart_interval;
    }
    --e.restarts_to_go;
  }
  for (int b = 0; b < cinfo->blocks_in_MCU; ++b) {
    int& last_dc = e.last_dc[cinfo->MCU_membership[b]];
    const bool ok = mcu != nullptr ? decode_block<true>(in, *e.dc[b], *e.ac[b], last_dc, mcu[b][0])
                                   : decode_block<false>(in, *e.dc[b], *e.ac[b], last_dc, nullptr);
    if (!ok) redo_with_libjpeg(e);
  }
  if (in.count < in.filler) redo_with_libjpeg(e);
  e.in = in;
  // libjpeg reads the markers after the scan from its source; leave it at the first one.
  if (--e.mcus_left == 0) {
    cinfo->src->next_input_byte = in.pos;
    cinfo->src->bytes_in_buffer = size_t(in.end - in.pos);
  }
  return TRUE;
}

}  // namespace

FastEntropy& thread_fast_entropy() {
  // Its tables are large (about 170 KB), so each decoding thread keeps one rather than one per
  // image.
  thread_local FastEntropy fast;
  return fast;
}

namespace {

// Images from one encoder carry the same Huffman tables in the same order, so a slot keeps its
// table while the source bytes match: a comparison of 273 bytes instead of 2,048 entries built
// (measured: about 4% of the CPU time of a 500x375 image's decode, resize and output).
void build_once(const JHUFF_TBL& spec, bool ac, FastEntropy& e, int slot) {
  FastEntropy::Source& src = e.sources[slot];
  static_assert(sizeof(src.bits) == sizeof(spec.bits) &&
                sizeof(src.huffval) == sizeof(spec.huffval));
  if (src.valid && src.ac == ac && std::memcmp(src.bits, spec.bits, sizeof(src.bits)) == 0 &&
      std::memcmp(src.huffval, spec.huffval, sizeof(src.huffval)) == 0) {
    return;
  }
  build_table(spec, ac, e.tables[slot]);
  src.valid = true;
  src.ac = ac;
  std::memcpy(src.bits, spec.bits, sizeof(src.bits));
  std::memcpy(src.huffval, spec.huffval, sizeof(src.huffval));
}

}  // namespace

uint64_t thread_fast_entropy_handed_back() { return thread_fast_entropy().handed_back; }

// Takes over entropy decoding of a single-scan baseline JPEG after jpeg_start_decompress, which
// leaves the source at the first byte of the scan's data.
void install_fast_entropy(jpeg_decompress_struct& c, FastEntropy& e, std::jmp_buf& jump,
                          bool& redo) {
  if (c.progressive_mode || c.arith_code || c.comps_in_scan != c.num_components ||
      c.data_precision != 8 || c.buffered_image) {
    return;
  }
  int built_dc[NUM_HUFF_TBLS], built_ac[NUM_HUFF_TBLS];
  for (int i = 0; i < NUM_HUFF_TBLS; ++i) built_dc[i] = built_ac[i] = -1;
  int used = 0;
  for (int b = 0; b < c.blocks_in_MCU; ++b) {
    const jpeg_component_info* comp = c.cur_comp_info[c.MCU_membership[b]];
    const int dc = comp->dc_tbl_no, ac = comp->ac_tbl_no;
    if (built_dc[dc] < 0) {
      built_dc[dc] = used;
      build_once(*c.dc_huff_tbl_ptrs[dc], false, e, used++);
    }
    if (built_ac[ac] < 0) {
      built_ac[ac] = used;
      build_once(*c.ac_huff_tbl_ptrs[ac], true, e, used++);
    }
    e.dc[b] = &e.tables[built_dc[dc]];
    e.ac[b] = &e.tables[built_ac[ac]];
  }
  e.in = BitReader{
      c.src->next_input_byte, c.src->next_input_byte + c.src->bytes_in_buffer, 0, 0, 0, false};
  for (int& v : e.last_dc) v = 0;
  e.restarts_to_go = c.restart_interval;
  e.next_restart = 0;
  e.mcus_left = c.MCUs_per_row * c.MCU_rows_in_scan;
  e.jump = &jump;
  e.redo = &redo;
  c.client_data = &e;
  c.entropy->decode_mcu = fast_decode_mcu;
}

}  // namespace stoker::detail
