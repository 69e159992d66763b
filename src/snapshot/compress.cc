#include "snapshot/compress.h"

#include <lz4.h>
#include <zstd.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <memory>
#include <cstring>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "common/big_alloc.h"

namespace dumont::snapshot {

bool ParseCompressionMode(std::string_view s, CompressionMode* out) {
  if (s == "auto") *out = CompressionMode::kAuto;
  else if (s == "zstd") *out = CompressionMode::kZstd;
  else if (s == "lz4") *out = CompressionMode::kLz4;
  else if (s == "off") *out = CompressionMode::kOff;
  else return false;
  return true;
}

std::string_view CompressionModeName(CompressionMode m) {
  switch (m) {
    case CompressionMode::kAuto: return "auto";
    case CompressionMode::kZstd: return "zstd";
    case CompressionMode::kLz4: return "lz4";
    case CompressionMode::kOff: return "off";
  }
  return "auto";
}

namespace {
double Entropy(const uint32_t* hist, size_t total) {
  if (total == 0) return 0;
  double h = 0;
  for (size_t i = 0; i < 256; ++i) {
    if (!hist[i]) continue;
    double p = static_cast<double>(hist[i]) / static_cast<double>(total);
    h -= p * std::log2(p);
  }
  return h;
}

// Calls fn(offset) for the sampled bytes: up to 16 windows of 512 bytes spread over the data.
template <typename Fn>
size_t ForSample(std::string_view data, Fn fn) {
  const size_t windows = 16, win = 512;
  if (data.size() <= windows * win) {
    for (size_t i = 0; i < data.size(); ++i) fn(i);
    return data.size();
  }
  size_t stride = data.size() / windows;
  for (size_t w = 0; w < windows; ++w) {
    for (size_t i = 0; i < win; ++i) fn(w * stride + i);
  }
  return windows * win;
}

// Bytes grouped by lane: out = lane 0 bytes, lane 1 bytes, ..., then the remainder. The stride is
// a template argument so the scalar loops compile to fixed-pattern code; with SSE2 (every x86-64)
// 16 rows at a time are (de)interleaved with pack/unpack instructions, which took the unshuffle
// from 5 % of a restore's CPU to noise.
template <size_t S>
void ShuffleT(const char* in, size_t n, char* out) {
  size_t rows = n / S, i = 0;
#if defined(__SSE2__)
  const __m128i lo = _mm_set1_epi16(0x00ff);
  auto even = [&](__m128i x, __m128i y) { return _mm_packus_epi16(_mm_and_si128(x, lo), _mm_and_si128(y, lo)); };
  auto odd = [&](__m128i x, __m128i y) { return _mm_packus_epi16(_mm_srli_epi16(x, 8), _mm_srli_epi16(y, 8)); };
  auto load = [&](size_t at) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + at)); };
  auto store = [&](size_t lane, __m128i v) { _mm_storeu_si128(reinterpret_cast<__m128i*>(out + lane * rows + i), v); };
  for (; i + 16 <= rows; i += 16) {
    if constexpr (S == 2) {
      __m128i x0 = load(2 * i), x1 = load(2 * i + 16);
      store(0, even(x0, x1));
      store(1, odd(x0, x1));
    } else {
      __m128i x0 = load(4 * i), x1 = load(4 * i + 16), x2 = load(4 * i + 32), x3 = load(4 * i + 48);
      __m128i e01 = even(x0, x1), o01 = odd(x0, x1), e23 = even(x2, x3), o23 = odd(x2, x3);
      store(0, even(e01, e23));
      store(1, even(o01, o23));
      store(2, odd(e01, e23));
      store(3, odd(o01, o23));
    }
  }
#endif
  for (; i < rows; ++i) {
    for (size_t l = 0; l < S; ++l) out[l * rows + i] = in[i * S + l];
  }
  std::memcpy(out + rows * S, in + rows * S, n - rows * S);
}
template <size_t S>
void UnshuffleT(const char* in, size_t n, char* out) {
  size_t rows = n / S, i = 0;
#if defined(__SSE2__)
  auto load = [&](size_t lane) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + lane * rows + i)); };
  auto store = [&](size_t at, __m128i v) { _mm_storeu_si128(reinterpret_cast<__m128i*>(out + at), v); };
  for (; i + 16 <= rows; i += 16) {
    if constexpr (S == 2) {
      __m128i a = load(0), b = load(1);
      store(2 * i, _mm_unpacklo_epi8(a, b));
      store(2 * i + 16, _mm_unpackhi_epi8(a, b));
    } else {
      __m128i a = load(0), b = load(1), c = load(2), d = load(3);
      __m128i ab_lo = _mm_unpacklo_epi8(a, b), ab_hi = _mm_unpackhi_epi8(a, b);
      __m128i cd_lo = _mm_unpacklo_epi8(c, d), cd_hi = _mm_unpackhi_epi8(c, d);
      store(4 * i, _mm_unpacklo_epi16(ab_lo, cd_lo));
      store(4 * i + 16, _mm_unpackhi_epi16(ab_lo, cd_lo));
      store(4 * i + 32, _mm_unpacklo_epi16(ab_hi, cd_hi));
      store(4 * i + 48, _mm_unpackhi_epi16(ab_hi, cd_hi));
    }
  }
#endif
  for (; i < rows; ++i) {
    for (size_t l = 0; l < S; ++l) out[i * S + l] = in[l * rows + i];
  }
  std::memcpy(out + rows * S, in + rows * S, n - rows * S);
}
void Shuffle(const char* in, size_t n, size_t stride, char* out) {
  stride == 4 ? ShuffleT<4>(in, n, out) : ShuffleT<2>(in, n, out);
}
void Unshuffle(const char* in, size_t n, size_t stride, char* out) {
  stride == 4 ? UnshuffleT<4>(in, n, out) : UnshuffleT<2>(in, n, out);
}

char* ThreadBuffer(size_t n) {
  thread_local BigBuffer buf;
  return buf.Get(n);
}
}  // namespace

double SampleEntropy(std::string_view data) {
  uint32_t hist[256] = {};
  size_t total = ForSample(data, [&](size_t i) { ++hist[static_cast<unsigned char>(data[i])]; });
  return Entropy(hist, total);
}

double SampleLaneEntropy(std::string_view data, size_t stride) {
  uint32_t hist[4][256] = {};
  size_t total = ForSample(data, [&](size_t i) { ++hist[i % stride][static_cast<unsigned char>(data[i])]; });
  double h = 0;
  for (size_t l = 0; l < stride; ++l) h += Entropy(hist[l], total / stride);
  return h / static_cast<double>(stride);
}

std::string Compress(std::string_view raw, CompressionMode mode, Compression* used) {
  return std::string(CompressView(raw, mode, used));
}

std::string_view CompressView(std::string_view raw, CompressionMode mode, Compression* used) {
  *used = Compression::kNone;
  if (mode == CompressionMode::kOff || raw.size() < 64) return raw;
  double h = SampleEntropy(raw);
  // Binary data whose byte lanes are much more predictable than the bytes overall (the exponent
  // bytes of fp16/bf16/fp32 weights) is grouped by lane first. Estimated on the same sample.
  size_t stride = 1;
  if (mode != CompressionMode::kLz4 && h > 6.0 && raw.size() >= 4096) {
    double h2 = SampleLaneEntropy(raw, 2), h4 = SampleLaneEntropy(raw, 4);
    double best = std::min(h2, h4);
    if (best < h - 0.3 && best < 7.3) stride = h4 < h2 - 0.1 ? 4 : 2;
  }
  // 8192 samples of a uniform source give ~7.97 bits; real compressible data sits well below 7.5.
  if (stride == 1 && h > 7.5) return raw;
  // The output buffer is per thread and never cleared: zero-filling a compress bound per chunk
  // (a std::string resize) was ~1.4 % of a first backup's CPU.
  thread_local BigBuffer out_buf;
  size_t bound = std::max<size_t>(LZ4_compressBound(static_cast<int>(raw.size())), ZSTD_compressBound(raw.size()));
  char* out = out_buf.Get(bound);
  size_t out_len = 0;
  if (mode == CompressionMode::kLz4) {
    int n = LZ4_compress_default(raw.data(), out, static_cast<int>(raw.size()), static_cast<int>(bound));
    if (n <= 0) return raw;
    out_len = static_cast<size_t>(n);
    *used = Compression::kLz4;
  } else {
    int level = mode == CompressionMode::kZstd ? 3 : 1;
    const char* src = raw.data();
    if (stride > 1) {
      char* sh = ThreadBuffer(raw.size());
      Shuffle(raw.data(), raw.size(), stride, sh);
      src = sh;
    }
    // Freed when the thread ends: backups and restores run on fresh thread pools, so a bare
    // pointer leaked one context per worker thread per run in long-lived processes (the agent).
    thread_local std::unique_ptr<ZSTD_CCtx, decltype(&ZSTD_freeCCtx)> cctx_owner(ZSTD_createCCtx(), ZSTD_freeCCtx);
    ZSTD_CCtx* cctx = cctx_owner.get();
    if (!cctx) return raw;  // out of memory for a context: store the chunk as it is
    size_t n = ZSTD_compressCCtx(cctx, out, bound, src, raw.size(), level);
    if (ZSTD_isError(n)) return raw;
    out_len = n;
    *used = stride == 4 ? Compression::kZstdShuffle4 : stride == 2 ? Compression::kZstdShuffle2 : Compression::kZstd;
  }
  if (out_len > raw.size() - raw.size() / 32) {
    *used = Compression::kNone;
    return raw;
  }
  return {out, out_len};
}

Status DecompressInto(std::string_view stored, Compression c, size_t raw_length, char* out, char* scratch) {
  if (raw_length > (size_t{1} << 31)) return Status::Corruption("blob length out of range");
  if (c == Compression::kNone) {
    if (stored.size() != raw_length) return Status::Corruption("stored blob has the wrong length");
    std::memcpy(out, stored.data(), raw_length);
    return Status::Ok();
  }
  if (c == Compression::kLz4) {
    int n = LZ4_decompress_safe(stored.data(), out, static_cast<int>(stored.size()), static_cast<int>(raw_length));
    if (n < 0 || static_cast<size_t>(n) != raw_length) return Status::Corruption("lz4 data is damaged");
    return Status::Ok();
  }
  if (c == Compression::kZstd || c == Compression::kZstdShuffle2 || c == Compression::kZstdShuffle4) {
    thread_local std::unique_ptr<ZSTD_DCtx, decltype(&ZSTD_freeDCtx)> dctx_owner(ZSTD_createDCtx(), ZSTD_freeDCtx);
    ZSTD_DCtx* dctx = dctx_owner.get();
    if (!dctx) return Status::ResourceExhausted("out of memory for a zstd context", 1);
    size_t stride = c == Compression::kZstdShuffle4 ? 4 : c == Compression::kZstdShuffle2 ? 2 : 1;
    char* dst = stride == 1 ? out : scratch ? scratch : ThreadBuffer(raw_length);
    size_t n = ZSTD_decompressDCtx(dctx, dst, raw_length, stored.data(), stored.size());
    if (ZSTD_isError(n) || n != raw_length) return Status::Corruption("zstd data is damaged");
    if (stride > 1) Unshuffle(dst, raw_length, stride, out);
    return Status::Ok();
  }
  return Status::Corruption("unknown compression type " + std::to_string(static_cast<int>(c)));
}

Result<std::string> Decompress(std::string_view stored, Compression c, size_t raw_length) {
  if (c == Compression::kNone) {
    if (stored.size() != raw_length) return Err(Status::Corruption("stored blob has the wrong length"));
    return std::string(stored);
  }
  if (raw_length > (size_t{1} << 31)) return Err(Status::Corruption("blob length out of range"));
  std::string out(raw_length, '\0');
  Status st = DecompressInto(stored, c, raw_length, out.data());
  if (!st.ok()) return Err(st);
  return out;
}

}  // namespace dumont::snapshot
