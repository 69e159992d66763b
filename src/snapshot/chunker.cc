#include "snapshot/chunker.h"

#include <algorithm>

namespace dumont::snapshot {
namespace {
uint64_t SplitMix64(uint64_t& x) {
  uint64_t z = (x += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}
// The gear hash shifts left, so the high bits mix the most recent ~64 bytes: test those.
uint64_t HighMask(size_t bits) { return bits == 0 ? 0 : ~0ULL << (64 - bits); }
}  // namespace

Chunker::Chunker(const ChunkerParams& p, uint64_t seed) : p_(p) {
  mask_small_ = HighMask(p.avg_bits + 2);
  mask_large_ = HighMask(p.avg_bits - 2);
  uint64_t s = seed;
  for (auto& g : gear_) g = SplitMix64(s);
}

size_t Chunker::Cut(const uint8_t* data, size_t n) const {
  if (n <= p_.min_size) return n;
  size_t end = std::min(n, p_.max_size);
  size_t normal = std::min(end, size_t{1} << p_.avg_bits);
  uint64_t fp = 0;
  size_t i = p_.min_size;
  // Warm the hash over the 64 bytes before min_size so the first candidate is well mixed.
  for (size_t j = p_.min_size - 64; j < p_.min_size; ++j) fp = (fp << 1) + gear_[data[j]];
  for (; i < normal; ++i) {
    fp = (fp << 1) + gear_[data[i]];
    if (!(fp & mask_small_)) return i + 1;
  }
  for (; i < end; ++i) {
    fp = (fp << 1) + gear_[data[i]];
    if (!(fp & mask_large_)) return i + 1;
  }
  return end;
}

}  // namespace dumont::snapshot
