// Content-defined chunking, FastCDC style (Xia et al., USENIX ATC 2016): a gear rolling hash with
// normalized chunking (a stricter mask before the average size, a looser one after). Cut points
// depend only on nearby content, so inserting bytes shifts at most the chunks around the insert.
// The gear table is derived from a per-repository secret seed, so chunk boundaries (and thus sizes)
// do not fingerprint known files across repositories.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>

namespace dumont::snapshot {

struct ChunkerParams {
  size_t min_size = 512 * 1024;
  size_t avg_bits = 20;  // average 1 MiB
  size_t max_size = 8 * 1024 * 1024;
};

class Chunker {
 public:
  Chunker(const ChunkerParams& p, uint64_t seed);
  // Returns the length of the next chunk at the start of [data, data+n). The caller passes
  // n >= max_size bytes unless the input ends within them (then all that remains). Always returns
  // a value in [1, n]; n itself when n <= min_size.
  size_t Cut(const uint8_t* data, size_t n) const;
  const ChunkerParams& params() const { return p_; }

 private:
  ChunkerParams p_;
  uint64_t mask_small_, mask_large_;
  std::array<uint64_t, 256> gear_;
};

}  // namespace dumont::snapshot
