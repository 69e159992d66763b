#include "common/big_alloc.h"

#include <sys/mman.h>

#include <cstdint>
#include <cstdlib>

namespace dumont {
namespace {
constexpr size_t kPage = 4096;
size_t RoundUp(size_t n, size_t to) { return (n + to - 1) / to * to; }
}  // namespace

void* BigAlloc(size_t bytes) {
  if (bytes < kHugePage) return std::aligned_alloc(kPage, RoundUp(bytes ? bytes : 1, kPage));
  size_t size = RoundUp(bytes, kHugePage);
  // Over-map by one huge page and trim, so the region starts on a 2 MiB boundary and every page
  // of it can be a huge page.
  void* raw = ::mmap(nullptr, size + kHugePage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return nullptr;
  auto start = reinterpret_cast<uintptr_t>(raw);
  uintptr_t aligned = RoundUp(start, kHugePage);
  if (aligned > start) ::munmap(raw, aligned - start);
  uintptr_t end = start + size + kHugePage;
  if (end > aligned + size) ::munmap(reinterpret_cast<void*>(aligned + size), end - (aligned + size));
  void* p = reinterpret_cast<void*>(aligned);
  ::madvise(p, size, MADV_HUGEPAGE);  // advice only: without THP these are ordinary pages
  return p;
}

void BigFree(void* p, size_t bytes) {
  if (!p) return;
  if (bytes < kHugePage) {
    std::free(p);
    return;
  }
  ::munmap(p, RoundUp(bytes, kHugePage));
}

}  // namespace dumont
