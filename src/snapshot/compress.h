// Per-blob compression. Incompressible data (already-compressed archives, model weights in some
// formats, random data) is detected cheaply with a byte-entropy estimate on a sample, and stored raw
// without spending a compression pass; anything that does not shrink by 3 % is stored raw too.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "common/status.h"

namespace dumont::snapshot {

// kZstdShuffle2/4: zstd of the data with its bytes grouped by position modulo 2 (fp16/bf16) or 4
// (fp32) - all first bytes, then all second bytes, ... - and any remainder after them unchanged.
// Model weights keep their exponents in the high bytes: grouped, those compress; interleaved with
// random mantissa bytes, they barely do (measured on fp16-like shards: 0.905 -> 0.813 of raw).
enum class Compression : uint8_t { kNone = 0, kZstd = 1, kLz4 = 2, kZstdShuffle2 = 3, kZstdShuffle4 = 4 };
constexpr Compression kMaxCompression = Compression::kZstdShuffle4;
enum class CompressionMode { kAuto, kZstd, kLz4, kOff };  // auto = fast zstd

bool ParseCompressionMode(std::string_view s, CompressionMode* out);
std::string_view CompressionModeName(CompressionMode m);

// Bits of entropy per byte of a sample of data (0..8).
double SampleEntropy(std::string_view data);
// The same, averaged over the `stride` byte lanes (bytes i, i+stride, ...), each estimated alone.
double SampleLaneEntropy(std::string_view data, size_t stride);

// Returns the stored form and sets *used.
std::string Compress(std::string_view raw, CompressionMode mode, Compression* used);
// The same without allocating or copying: the result is `raw` itself (stored raw) or bytes in a
// per-thread buffer, valid until this thread's next call (the backup's hot path).
std::string_view CompressView(std::string_view raw, CompressionMode mode, Compression* used);
Result<std::string> Decompress(std::string_view stored, Compression c, size_t raw_length);
// The same into out[0, raw_length) (the restorer decompresses into aligned buffers for O_DIRECT).
// `scratch`, when given, holds raw_length bytes for the lane-grouped types (else a per-thread
// buffer is used); it must not overlap `out`.
Status DecompressInto(std::string_view stored, Compression c, size_t raw_length, char* out, char* scratch = nullptr);

}  // namespace dumont::snapshot
