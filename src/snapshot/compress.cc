#include "snapshot/compress.h"

#include <lz4.h>
#include <zstd.h>

#include <array>
#include <cmath>
#include <cstring>

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

double SampleEntropy(std::string_view data) {
  // Up to 16 windows of 512 bytes spread over the data.
  std::array<uint32_t, 256> hist{};
  size_t total = 0;
  const size_t windows = 16, win = 512;
  if (data.size() <= windows * win) {
    for (unsigned char c : data) ++hist[c];
    total = data.size();
  } else {
    size_t stride = data.size() / windows;
    for (size_t w = 0; w < windows; ++w) {
      for (size_t i = 0; i < win; ++i) ++hist[static_cast<unsigned char>(data[w * stride + i])];
    }
    total = windows * win;
  }
  if (total == 0) return 0;
  double h = 0;
  for (uint32_t c : hist) {
    if (!c) continue;
    double p = static_cast<double>(c) / total;
    h -= p * std::log2(p);
  }
  return h;
}

std::string Compress(std::string_view raw, CompressionMode mode, Compression* used) {
  *used = Compression::kNone;
  if (mode == CompressionMode::kOff || raw.size() < 64) return std::string(raw);
  // 8192 samples of a uniform source give ~7.97 bits; real compressible data sits well below 7.5.
  if (SampleEntropy(raw) > 7.5) return std::string(raw);
  std::string out;
  if (mode == CompressionMode::kLz4) {
    out.resize(LZ4_compressBound(static_cast<int>(raw.size())));
    int n = LZ4_compress_default(raw.data(), out.data(), static_cast<int>(raw.size()), static_cast<int>(out.size()));
    if (n <= 0) return std::string(raw);
    out.resize(n);
    *used = Compression::kLz4;
  } else {
    int level = mode == CompressionMode::kZstd ? 3 : 1;
    out.resize(ZSTD_compressBound(raw.size()));
    thread_local ZSTD_CCtx* cctx = ZSTD_createCCtx();
    size_t n = ZSTD_compressCCtx(cctx, out.data(), out.size(), raw.data(), raw.size(), level);
    if (ZSTD_isError(n)) return std::string(raw);
    out.resize(n);
    *used = Compression::kZstd;
  }
  if (out.size() > raw.size() - raw.size() / 32) {
    *used = Compression::kNone;
    return std::string(raw);
  }
  return out;
}

Status DecompressInto(std::string_view stored, Compression c, size_t raw_length, char* out) {
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
  if (c == Compression::kZstd) {
    thread_local ZSTD_DCtx* dctx = ZSTD_createDCtx();
    size_t n = ZSTD_decompressDCtx(dctx, out, raw_length, stored.data(), stored.size());
    if (ZSTD_isError(n) || n != raw_length) return Status::Corruption("zstd data is damaged");
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
