#pragma once

#include <cstddef>
#include <new>

namespace dumont {

// Buffers of megabytes (read buffers, packs, restore ranges), backed by transparent huge pages
// where the kernel offers them (THP "madvise" mode, Debian's default). On the VMs we run on a 4 KiB
// page fault costs 10-20 us, so first touching a 32 MiB buffer cost ~0.15 s of CPU; with 2 MiB
// pages it is 16 faults. Below 2 MiB this is plain page-aligned memory.
//
// BigFree must get the same size BigAlloc was given. Returns nullptr when out of memory.
void* BigAlloc(size_t bytes);
void BigFree(void* p, size_t bytes);

inline constexpr size_t kHugePage = size_t{2} << 20;

// A growable scratch buffer (typically thread_local): Get(n) returns at least n bytes, keeping
// the memory (and its contents) when it is already large enough. Not zero-filled.
class BigBuffer {
 public:
  BigBuffer() = default;
  BigBuffer(const BigBuffer&) = delete;
  BigBuffer& operator=(const BigBuffer&) = delete;
  ~BigBuffer() { BigFree(p_, cap_); }
  char* Get(size_t n) {
    char* p = TryGet(n);
    if (!p) throw std::bad_alloc();
    return p;
  }
  // The same, nullptr (and an empty buffer) when out of memory.
  char* TryGet(size_t n) {
    if (n > cap_) {
      BigFree(p_, cap_);
      p_ = static_cast<char*>(BigAlloc(n));
      cap_ = p_ ? n : 0;
    }
    return p_;
  }
  size_t capacity() const { return cap_; }

 private:
  char* p_ = nullptr;
  size_t cap_ = 0;
};

// An allocator for containers of such buffers (std::basic_string<char, ..., BigAllocator<char>>).
template <class T>
struct BigAllocator {
  using value_type = T;
  BigAllocator() = default;
  template <class U>
  BigAllocator(const BigAllocator<U>&) {}
  T* allocate(size_t n);
  void deallocate(T* p, size_t n) { BigFree(p, n * sizeof(T)); }
  template <class U>
  bool operator==(const BigAllocator<U>&) const { return true; }
};

}  // namespace dumont

template <class T>
T* dumont::BigAllocator<T>::allocate(size_t n) {
  void* p = BigAlloc(n * sizeof(T));
  if (!p) throw std::bad_alloc();
  return static_cast<T*>(p);
}
