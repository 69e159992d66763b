#include "snapshot/restorer.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <filesystem>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "snapshot/compress.h"
#include "snapshot/tree.h"

namespace dumont::snapshot {

using nlohmann::json;

json RestoreSummary::ToJson() const {
  return {{"files", files}, {"dirs", dirs}, {"symlinks", symlinks}, {"hardlinks", hardlinks},
          {"bytes", bytes}, {"bytes_downloaded", bytes_downloaded}, {"bytes_written_direct", bytes_written_direct},
          {"files_written_whole", files_written_whole},
          {"duration_s", duration_s}};
}

namespace {

Status ErrnoStatus(const std::string& what) {
  int e = errno;
  std::string msg = what + ": " + std::strerror(e);
  if (e == ENOSPC || e == EDQUOT) return Status::IOError(msg + " (the disk is full; free space and run the restore again)");
  if (e == EACCES || e == EPERM || e == EROFS) return Status::PermissionDenied(msg);
  return Status::IOError(msg);
}

struct Item {
  std::string path;  // absolute, under target
  Node node;
  int depth = 0;
};

struct Dest {
  size_t file;
  uint64_t offset;
};

// Blobs at least this large are written with O_DIRECT (smaller ones would be mostly partial pages).
constexpr size_t kDirectMin = 64 * 1024;
// One-blob files up to this size are created and written whole by a worker.
constexpr uint64_t kWholeMax = 1 << 20;

// Page-aligned memory that grows and is kept (no fault or zero-fill per blob once warm).
class AlignedBuffer {
 public:
  char* Get(size_t n) {
    if (cap_ < n) {
      size_t want = (n + 4095) / 4096 * 4096;
      buf_.reset(static_cast<char*>(std::aligned_alloc(4096, want)));
      cap_ = buf_ ? want : 0;
    }
    return buf_.get();
  }

 private:
  struct Free {
    void operator()(char* p) const { std::free(p); }
  };
  std::unique_ptr<char, Free> buf_;
  size_t cap_ = 0;
};

// The buffers one blob needs on its way from the pack to the file: the decrypted (still
// compressed) bytes, the plain bytes (aligned, shifted like their file offset, for O_DIRECT), and
// the lane-grouped bytes before they are ungrouped.
struct BlobBuffers {
  AlignedBuffer sealed_out, plain, lanes;
};

// A fixed set of BlobBuffers shared by the workers. Workers wait on the network or the disk and
// there are many of them (32 through S3), but only a few decode at once: buffers per worker (and
// the allocator arenas of 32 threads) took an S3 restore past 1 GB of memory.
class BufferPool {
 public:
  explicit BufferPool(size_t n) : all_(n) {
    for (auto& b : all_) free_.push_back(&b);
  }
  class Lease {
   public:
    explicit Lease(BufferPool& p) : p_(p) {
      std::unique_lock l(p_.mu_);
      p_.cv_.wait(l, [&] { return !p_.free_.empty(); });
      b_ = p_.free_.back();
      p_.free_.pop_back();
    }
    ~Lease() {
      std::lock_guard l(p_.mu_);
      p_.free_.push_back(b_);
      p_.cv_.notify_one();
    }
    BlobBuffers* operator->() { return b_; }

   private:
    BufferPool& p_;
    BlobBuffers* b_;
  };

 private:
  std::vector<BlobBuffers> all_;
  std::vector<BlobBuffers*> free_;
  std::mutex mu_;
  std::condition_variable cv_;
};

// Strings that pack ranges are loaded into, handed back and refilled (Backend::LoadInto): a fresh
// 16 MiB allocation per range was a page fault and a page zeroing per 4 KiB, ~7 % of the machine's
// CPU in an S3 restore. A lease takes the smallest free string that already holds the range (packs
// are 16-24 MiB, so an exact-size string rarely fits the next one) and reserves capacity rounded up
// to 2 MiB, so strings settle at a few sizes and are reused instead of reallocated. Free strings
// are kept while their capacities add up to at most `keep` bytes; the ones in use are bounded by
// the in-flight budget.
class RangePool {
 public:
  static constexpr size_t kGrain = size_t{2} << 20;
  explicit RangePool(uint64_t keep) : keep_(keep) {}
  class Lease {
   public:
    Lease(RangePool& p, size_t want) : p_(p) {
      {
        std::lock_guard l(p_.mu_);
        // The smallest string that holds the range; if none does, the smallest of all is regrown
        // (the larger ones are likelier to fit the next ranges).
        size_t best = p_.free_.size(), smallest = p_.free_.size();
        for (size_t i = 0; i < p_.free_.size(); ++i) {
          size_t cap = p_.free_[i].capacity();
          if (cap >= want && (best == p_.free_.size() || cap < p_.free_[best].capacity())) best = i;
          if (smallest == p_.free_.size() || cap < p_.free_[smallest].capacity()) smallest = i;
        }
        if (best == p_.free_.size()) best = smallest;
        if (best < p_.free_.size()) {
          s_ = std::move(p_.free_[best]);
          p_.free_[best] = std::move(p_.free_.back());
          p_.free_.pop_back();
          p_.kept_ -= s_.capacity();
        }
      }
      if (s_.capacity() < want) {
        s_.clear();
        s_.shrink_to_fit();  // no copy of stale bytes into the bigger allocation
        s_.reserve((want + kGrain - 1) / kGrain * kGrain);
      }
    }
    ~Lease() {
      std::lock_guard l(p_.mu_);
      if (p_.kept_ + s_.capacity() > p_.keep_) return;
      p_.kept_ += s_.capacity();
      p_.free_.push_back(std::move(s_));
    }
    std::string& str() { return s_; }

   private:
    RangePool& p_;
    std::string s_;
  };

 private:
  uint64_t keep_, kept_ = 0;
  std::vector<std::string> free_;
  std::mutex mu_;
};

class Restore_ {
 public:
  Restore_(Repository& repo, const RestoreOptions& opts, const std::function<void(const RestoreProgress&)>& cb)
      : repo_(repo), opts_(opts), cb_(cb) {}

  bool Included(const std::string& rel) const {
    if (include_.empty()) return true;
    return rel == include_ || rel.rfind(include_ + "/", 0) == 0 || include_.rfind(rel + "/", 0) == 0;
  }

  Status Walk(const Id& tree, const std::string& rel_dir, const std::string& abs_dir, int depth) {
    auto blob = repo_.LoadBlob(tree);
    if (!blob) return blob.error().Annotate("tree of '" + (rel_dir.empty() ? "/" : rel_dir) + "'");
    auto nodes = DecodeTree(*blob, rel_dir);
    if (!nodes) return nodes.error();
    for (auto& n : *nodes) {
      std::string rel = rel_dir.empty() ? n.name : rel_dir + "/" + n.name;
      if (!Included(rel)) continue;
      std::string abs = abs_dir + "/" + n.name;
      if (n.type == "dir") {
        // Ancestors of the include path are created but keep their metadata untouched.
        bool inside = include_.empty() || rel == include_ || rel.rfind(include_ + "/", 0) == 0;
        if (inside) dirs_.push_back({abs, n, depth});
        else bare_dirs_.push_back(abs);
        DUMONT_RETURN_STATUS_IF_ERROR(Walk(*n.subtree, rel, abs, depth + 1));
      } else if (n.type == "symlink") {
        links_.push_back({abs, n, depth});
      } else {
        files_.push_back({abs, n, depth});
      }
    }
    return Status::Ok();
  }

  Status MakeDir(const std::string& path) {
    struct stat st{};
    if (lstat(path.c_str(), &st) == 0) {
      if (S_ISDIR(st.st_mode)) return Status::Ok();
      return Status::FailedPrecondition("cannot restore directory " + path + ": something else is in the way" +
                                        (S_ISLNK(st.st_mode) ? " (a symlink; refusing to follow it)" : ""));
    }
    if (::mkdir(path.c_str(), 0700) != 0 && errno != EEXIST) return ErrnoStatus("cannot create directory " + path);
    return Status::Ok();
  }

  static bool IsZero(const char* p, size_t n) { return n == 0 || (p[0] == 0 && std::memcmp(p, p + 1, n - 1) == 0); }

  static Status PwriteAll(int fd, const char* p, size_t n, uint64_t at, const std::string& path) {
    size_t done = 0;
    while (done < n) {
      ssize_t w = ::pwrite(fd, p + done, n - done, static_cast<off_t>(at + done));
      if (w < 0) {
        if (errno == EINTR) continue;
        return ErrnoStatus("cannot write " + path);
      }
      done += static_cast<size_t>(w);
    }
    return Status::Ok();
  }

  // [begin, end) ranges of plain's non-zero 4 KiB pages (the last page may be partial).
  static std::vector<std::pair<size_t, size_t>> NonZeroRuns(std::string_view plain) {
    constexpr size_t kPage = 4096;
    std::vector<std::pair<size_t, size_t>> runs;
    for (size_t off = 0; off < plain.size(); off += kPage) {
      size_t end = std::min(plain.size(), off + kPage);
      if (IsZero(plain.data() + off, end - off)) continue;
      if (!runs.empty() && runs.back().second == off) runs.back().second = end;
      else runs.emplace_back(off, end);
    }
    return runs;
  }

  // Writes the non-zero 4 KiB pages of a blob; zero pages are skipped, so the pre-sized file keeps
  // holes where the source had them (or had zeros: restored files may be sparser than the source).
  // Large blobs whose memory is aligned like their file offset go through WriteDirect.
  Status WriteBlob(std::string_view plain, const std::vector<Dest>& dests) {
    constexpr size_t kPage = 4096;
    std::vector<std::pair<size_t, size_t>> runs;  // of non-zero data, computed once when needed
    bool runs_done = false;
    for (const auto& d : dests) {
      progress_bytes_ += plain.size();
      if (WrittenWhole(files_[d.file].node)) {
        DUMONT_RETURN_STATUS_IF_ERROR(WriteWhole(files_[d.file], plain));
        continue;
      }
      DUMONT_RETURN_STATUS_IF_ERROR(WaitCreated(d.file));
      const std::string& path = files_[d.file].path;
      if (opts_.direct_io && plain.size() >= kDirectMin &&
          reinterpret_cast<uintptr_t>(plain.data()) % kPage == d.offset % kPage) {
        auto wrote = WriteDirect(path, plain, d.offset);
        if (!wrote) return wrote.error();
        if (*wrote) continue;  // else O_DIRECT is not supported here: buffered below
      }
      if (!runs_done) {
        runs_done = true;
        runs = NonZeroRuns(plain);
      }
      if (runs.empty()) continue;
      int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC | O_NOFOLLOW);
      if (fd < 0) return ErrnoStatus("cannot open " + path);
      for (const auto& [b, e] : runs) {
        Status st = PwriteAll(fd, plain.data() + b, e - b, d.offset + b, path);
        if (!st.ok()) {
          ::close(fd);
          return st;
        }
      }
      ::close(fd);
    }
    return Status::Ok();
  }

  // A small file whose content is one blob is created, written and given its metadata by the worker
  // that holds the blob, through one descriptor: no pre-create by the creator thread, and no path
  // lookups afterwards. (The 7 GB workspace has 82k files, most of them one blob; creating them all
  // on one thread kept the workers waiting for the first ~3 s of a restore.)
  static bool WrittenWhole(const Node& n) { return n.content.size() == 1 && n.size <= kWholeMax && n.nlink <= 1; }

  Status WriteWhole(const Item& f, std::string_view plain) {
    const std::string& p = f.path;
    const int flags = O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW;
    int fd = ::open(p.c_str(), flags, 0600);
    if (fd < 0 && errno == ELOOP) {  // a symlink where the file goes: replace it, never write through it
      ::unlink(p.c_str());
      fd = ::open(p.c_str(), flags, 0600);
    }
    if (fd < 0 && errno == EISDIR) return Status::FailedPrecondition("cannot restore file " + p + ": a directory is in the way");
    if (fd < 0) return ErrnoStatus("cannot create " + p);
    struct Closer {
      int fd;
      ~Closer() { ::close(fd); }
    } closer{fd};
    auto runs = NonZeroRuns(plain);
    for (const auto& [b, e] : runs) DUMONT_RETURN_STATUS_IF_ERROR(PwriteAll(fd, plain.data() + b, e - b, b, p));
    if ((runs.empty() || runs.back().second != plain.size()) && ::ftruncate(fd, static_cast<off_t>(plain.size())) != 0) {
      return ErrnoStatus("cannot size " + p);  // a zero tail stays a hole
    }
    const Node& n = f.node;
    if (geteuid() == 0 && ::fchown(fd, n.uid, n.gid) != 0) return ErrnoStatus("cannot set owner of " + p);
    if (::fchmod(fd, n.mode) != 0) return ErrnoStatus("cannot set mode of " + p);
    auto ts = Times(n);
    if (::futimens(fd, ts.data()) != 0) return ErrnoStatus("cannot set times of " + p);
    ++whole_written_;
    return Status::Ok();
  }

  // Writes plain at file offset `at`: the non-zero whole pages in the middle with O_DIRECT (plain's
  // memory is aligned like `at`), the partial pages at both ends through the page cache. Returns
  // false, having written nothing, when the filesystem refuses O_DIRECT.
  Result<bool> WriteDirect(const std::string& path, std::string_view plain, uint64_t at) {
    constexpr uint64_t kPage = 4096;
    const uint64_t fs = at, fe = at + plain.size();
    const uint64_t a = (fs + kPage - 1) / kPage * kPage, b = fe / kPage * kPage;
    if (a >= b) return false;
    auto mem = [&](uint64_t file_off) { return plain.data() + (file_off - fs); };
    int dfd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC | O_NOFOLLOW | O_DIRECT);
    if (dfd < 0) {
      if (errno == EINVAL) return false;
      return Err(ErrnoStatus("cannot open " + path));
    }
    uint64_t direct = 0;
    for (uint64_t x = a; x < b;) {
      if (IsZero(mem(x), kPage)) {
        x += kPage;
        continue;
      }
      uint64_t y = x + kPage;
      while (y < b && !IsZero(mem(y), kPage)) y += kPage;
      ssize_t w;
      do {
        w = ::pwrite(dfd, mem(x), y - x, static_cast<off_t>(x));
      } while (w < 0 && errno == EINTR);
      if (w < 0 && errno == EINVAL && direct == 0) {
        ::close(dfd);
        return false;
      }
      if (w < 0) {
        Status st = ErrnoStatus("cannot write " + path);
        ::close(dfd);
        return Err(st);
      }
      if (static_cast<uint64_t>(w) != y - x) {  // a short direct write: finish through the cache
        Status st = Status::Ok();
        int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC | O_NOFOLLOW);
        if (fd < 0) st = ErrnoStatus("cannot open " + path);
        else st = PwriteAll(fd, mem(x + w), y - x - w, x + w, path), ::close(fd);
        if (!st.ok()) {
          ::close(dfd);
          return Err(st);
        }
      }
      direct += static_cast<uint64_t>(w);
      x = y;
    }
    ::close(dfd);
    bytes_direct_ += direct;
    // The partial pages at the ends.
    bool head = fs < a && !IsZero(mem(fs), a - fs), tail = b < fe && !IsZero(mem(b), fe - b);
    if (head || tail) {
      int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC | O_NOFOLLOW);
      if (fd < 0) return Err(ErrnoStatus("cannot open " + path));
      Status st = Status::Ok();
      if (head) st = PwriteAll(fd, mem(fs), a - fs, fs, path);
      if (st.ok() && tail) st = PwriteAll(fd, mem(b), fe - b, b, path);
      ::close(fd);
      if (!st.ok()) return Err(st);
    }
    return true;
  }

  // Bytes of pack data fetched and not yet written, across workers, stay under
  // opts_.max_bytes_in_flight (one range is always allowed): with 32 S3 connections, 32 ranges of
  // 16 MiB and their decrypted copies took a 7 GB restore past 1 GiB of memory.
  struct Budget {
    Restore_& r;
    uint64_t n;
    Budget(Restore_& owner, uint64_t bytes) : r(owner), n(bytes) {
      std::unique_lock l(r.budget_mu_);
      r.budget_cv_.wait(l, [&] { return r.in_flight_ == 0 || r.in_flight_ + n <= r.opts_.max_bytes_in_flight; });
      r.in_flight_ += n;
    }
    ~Budget() {
      std::lock_guard l(r.budget_mu_);
      r.in_flight_ -= n;
      r.budget_cv_.notify_all();
    }
  };

  // Fetches the blobs of one pack: one ranged read when the wanted blobs cover most of the span,
  // else one read per blob.
  Status FetchPack(const Id& pack, std::vector<std::pair<BlobLocation, std::pair<Id, std::vector<Dest>>>>& wants) {
    std::sort(wants.begin(), wants.end(), [](const auto& a, const auto& b) { return a.first.offset < b.first.offset; });
    uint64_t lo = wants.front().first.offset;
    uint64_t hi = 0, need = 0;
    for (const auto& w : wants) {
      hi = std::max<uint64_t>(hi, w.first.offset + w.first.length);
      need += w.first.length;
    }
    std::string name = IdHex(pack);
    auto handle_one = [&](const BlobLocation& l, const Id& id, const std::vector<Dest>& dests,
                          std::string_view sealed) -> Status {
      if (sealed.size() < kSealOverhead || l.raw_length > (uint64_t{1} << 31)) {
        return Status::Corruption("blob " + IdHex(id) + " in pack " + name + " has an impossible length");
      }
      BufferPool::Lease buf(*pool_);
      // Large blobs are decompressed into an aligned buffer, shifted to match the first
      // destination's offset within its page, so that WriteDirect can use the memory as it is.
      size_t shift = opts_.direct_io && l.raw_length >= kDirectMin && !dests.empty() ? dests.front().offset % 4096 : 0;
      size_t body_len = sealed.size() - kSealOverhead;
      bool raw = l.compression == Compression::kNone;
      if (raw && body_len != l.raw_length) return Status::Corruption("blob " + IdHex(id) + " in pack " + name + " has the wrong length");
      char* plain_base = buf->plain.Get(l.raw_length + shift + 1);
      char* plain_at = plain_base ? plain_base + shift : nullptr;
      char* body = raw ? plain_at : buf->sealed_out.Get(body_len + 1);
      if (!plain_at || !body) return Status::IOError("out of memory restoring blob " + IdHex(id));
      Status st = UnsealInto(repo_.key(), sealed, body, repo_.BlobAad(id, l.compression, l.raw_length));
      if (!st.ok()) return st.Annotate("blob " + IdHex(id) + " in pack " + name);
      if (!raw) {
        bool lanes = l.compression == Compression::kZstdShuffle2 || l.compression == Compression::kZstdShuffle4;
        char* scratch = lanes ? buf->lanes.Get(l.raw_length + 1) : nullptr;
        if (lanes && !scratch) return Status::IOError("out of memory restoring blob " + IdHex(id));
        st = DecompressInto(std::string_view(body, body_len), l.compression, l.raw_length, plain_at, scratch);
        if (!st.ok()) return st.Annotate("blob " + IdHex(id) + " in pack " + name);
      }
      std::string_view plain(plain_at, l.raw_length);
      // A version 1 blob is checked against its id here; a version 2 blob's tag already bound it
      // to its id (Repository::BlobsBound).
      if (!repo_.BlobsBound() && repo_.BlobId(plain) != id) {
        return Status::Corruption("blob " + IdHex(id) + " in pack " + name + " does not match its id");
      }
      return WriteBlob(plain, dests);
    };
    if (need * 2 >= hi - lo) {
      Budget hold(*this, hi - lo);
      RangePool::Lease data(*ranges_, hi - lo);
      DUMONT_RETURN_STATUS_IF_ERROR(repo_.backend().LoadInto({FileType::kPack, name}, static_cast<int64_t>(lo),
                                                             static_cast<int64_t>(hi - lo), &data.str()));
      downloaded_ += data.str().size();
      for (const auto& [l, rest] : wants) {
        DUMONT_RETURN_STATUS_IF_ERROR(
            handle_one(l, rest.first, rest.second, std::string_view(data.str()).substr(l.offset - lo, l.length)));
        Report();
      }
      return Status::Ok();
    }
    for (const auto& [l, rest] : wants) {
      Budget hold(*this, l.length);
      RangePool::Lease data(*ranges_, l.length);
      DUMONT_RETURN_STATUS_IF_ERROR(repo_.backend().LoadInto({FileType::kPack, name}, l.offset, l.length, &data.str()));
      downloaded_ += data.str().size();
      DUMONT_RETURN_STATUS_IF_ERROR(handle_one(l, rest.first, rest.second, data.str()));
      Report();
    }
    return Status::Ok();
  }

  void Report() {
    if (!cb_) return;
    std::lock_guard l(report_mu_);
    auto now = std::chrono::steady_clock::now();
    if (now - last_report_ < std::chrono::milliseconds(200)) return;
    last_report_ = now;
    cb_({progress_bytes_.load(), total_bytes_, files_.size(), std::chrono::duration<double>(now - start_).count()});
  }

  // Waits until the creator thread has created file i (or failed).
  Status WaitCreated(size_t i) {
    size_t pos = create_pos_[i];
    if (created_.load(std::memory_order_acquire) > pos) return Status::Ok();
    std::unique_lock l(create_mu_);
    create_cv_.wait(l, [&] { return created_.load(std::memory_order_acquire) > pos || !create_error_.ok() || creator_done_; });
    if (created_.load(std::memory_order_acquire) > pos) return Status::Ok();
    if (!create_error_.ok()) return create_error_;
    return Status::Internal("file " + files_[i].path + " was never created");
  }

  static Status CreateFile(const Item& f) {
    const std::string& p = f.path;
    struct stat st{};
    if (lstat(p.c_str(), &st) == 0 && !S_ISREG(st.st_mode)) {
      if (S_ISLNK(st.st_mode)) ::unlink(p.c_str());  // never write through a link
      else return Status::FailedPrecondition("cannot restore file " + p + ": a directory is in the way");
    }
    int fd = ::open(p.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) return ErrnoStatus("cannot create " + p);
    if (::ftruncate(fd, static_cast<off_t>(f.node.size)) != 0) {
      Status s = ErrnoStatus("cannot size " + p);
      ::close(fd);
      return s;
    }
    ::close(fd);
    return Status::Ok();
  }

  // Runs fn(0..n-1) on up to 8 threads; returns the first error (and stops handing out work).
  static Status ForEachParallel(size_t n, const std::function<Status(size_t)>& fn) {
    std::atomic<size_t> next{0};
    std::atomic<bool> failed{false};
    std::mutex mu;
    Status first = Status::Ok();
    auto work = [&] {
      for (size_t k; !failed && (k = next++) < n;) {
        Status st = fn(k);
        if (!st.ok()) {
          std::lock_guard l(mu);
          if (first.ok()) first = st;
          failed = true;
        }
      }
    };
    size_t threads = std::min<size_t>(8, n / 64 + 1);
    std::vector<std::thread> pool;
    for (size_t t = 1; t < threads; ++t) pool.emplace_back(work);
    work();
    for (auto& t : pool) t.join();
    return first;
  }

  // Access and modification time, both the node's mtime.
  static std::array<timespec, 2> Times(const Node& n) {
    timespec t{};
    // Floor division: a time before 1970 (negative ns) still needs 0 <= tv_nsec < 1e9.
    t.tv_sec = n.mtime_ns / 1'000'000'000;
    t.tv_nsec = n.mtime_ns % 1'000'000'000;
    if (t.tv_nsec < 0) t.tv_nsec += 1'000'000'000, t.tv_sec -= 1;
    return {t, t};
  }

  static Status ApplyMeta(const std::string& path, const Node& n, bool is_link) {
    if (geteuid() == 0) {
      if (::lchown(path.c_str(), n.uid, n.gid) != 0) return ErrnoStatus("cannot set owner of " + path);
    }
    if (!is_link && ::chmod(path.c_str(), n.mode) != 0) return ErrnoStatus("cannot set mode of " + path);
    auto ts = Times(n);
    if (::utimensat(AT_FDCWD, path.c_str(), ts.data(), AT_SYMLINK_NOFOLLOW) != 0) return ErrnoStatus("cannot set times of " + path);
    return Status::Ok();
  }

  Result<RestoreSummary> Go(const Id& root) {
    start_ = std::chrono::steady_clock::now();
    if (opts_.target.empty()) return Err(Status::InvalidArgument("no --target directory given"));
    std::error_code ec;
    std::string target = std::filesystem::absolute(opts_.target, ec).lexically_normal().string();
    while (target.size() > 1 && target.back() == '/') target.pop_back();
    include_ = opts_.include;
    while (!include_.empty() && include_.front() == '/') include_.erase(0, 1);
    while (!include_.empty() && include_.back() == '/') include_.pop_back();
    std::filesystem::create_directories(target, ec);
    if (ec) return Err(Status::IOError("cannot create target " + target + ": " + ec.message()));
    repo_.PrefetchTrees(root, 16);
    DUMONT_RETURN_IF_ERROR(Walk(root, "", target, 0));
    if (!include_.empty() && dirs_.empty() && files_.empty() && links_.empty()) {
      return Err(Status::NotFound("'" + include_ + "' is not in the snapshot"));
    }

    // Directories (parents before children), then pre-sized files, then the data plan.
    for (const auto& d : bare_dirs_) DUMONT_RETURN_IF_ERROR(MakeDir(d));
    for (const auto& d : dirs_) DUMONT_RETURN_IF_ERROR(MakeDir(d.path));
    std::map<std::pair<uint64_t, uint64_t>, size_t> first_of_inode;  // (dev, inode) -> file index
    std::map<Id, std::map<Id, std::pair<BlobLocation, std::vector<Dest>>>> plan;
    std::vector<std::pair<size_t, size_t>> hardlinks;  // (file, target file)
    std::vector<size_t> to_create;
    for (size_t i = 0; i < files_.size(); ++i) {
      const Node& n = files_[i].node;
      if (n.nlink > 1) {
        auto key = std::make_pair(n.dev, n.inode);
        auto it = first_of_inode.find(key);
        if (it != first_of_inode.end()) {
          hardlinks.emplace_back(i, it->second);
          continue;
        }
        first_of_inode[key] = i;
      }
      const std::string& p = files_[i].path;
      // Small one-blob files are created by the worker that writes them (WriteWhole).
      if (!WrittenWhole(n)) to_create.push_back(i);
      uint64_t off = 0;
      for (const auto& id : n.content) {
        auto loc = repo_.Lookup(id);
        if (!loc) return Err(Status::NotFound("data of " + p + " is missing from the repository (blob " + IdHex(id) +
                                              "); run `dumont snapshot check`"));
        auto& slot = plan[loc->pack][id];
        slot.first = *loc;
        slot.second.push_back({i, off});
        off += loc->raw_length;
      }
      total_bytes_ += n.size;
    }

    std::vector<std::pair<Id, std::vector<std::pair<BlobLocation, std::pair<Id, std::vector<Dest>>>>>> work;
    for (auto& [pack, blobs] : plan) {
      std::vector<std::pair<BlobLocation, std::pair<Id, std::vector<Dest>>>> v;
      for (auto& [id, slot] : blobs) v.push_back({slot.first, {id, std::move(slot.second)}});
      work.emplace_back(pack, std::move(v));
    }
    // Packs in the order of the first file they write, which is about the order the files are
    // created in (and the order the backup wrote them), so the writers rarely wait for a create.
    {
      std::vector<size_t> first_file(work.size(), SIZE_MAX);
      for (size_t k = 0; k < work.size(); ++k) {
        for (const auto& b : work[k].second) {
          for (const auto& d : b.second.second) first_file[k] = std::min(first_file[k], d.file);
        }
      }
      std::vector<size_t> order(work.size());
      for (size_t k = 0; k < order.size(); ++k) order[k] = k;
      std::stable_sort(order.begin(), order.end(), [&](size_t x, size_t y) { return first_file[x] < first_file[y]; });
      decltype(work) sorted;
      sorted.reserve(work.size());
      for (size_t k : order) sorted.push_back(std::move(work[k]));
      work = std::move(sorted);
    }
    // Files are created and sized by one thread, in tree order, while the data is fetched; a write
    // waits until its file exists. (In parallel, creates were 3x slower on ext4 - inode allocation
    // contends - and before the fetch they cost 2 s of a 7 GB restore.)
    create_pos_.assign(files_.size(), 0);
    for (size_t k = 0; k < to_create.size(); ++k) create_pos_[to_create[k]] = k;
    std::thread creator([&] {
      Status st = Status::Ok();
      for (size_t k = 0; k < to_create.size() && st.ok() && !abort_; ++k) {
        st = CreateFile(files_[to_create[k]]);
        if (st.ok()) created_.store(k + 1, std::memory_order_release);
        if ((k & 63) == 63 || k + 1 == to_create.size() || !st.ok()) {
          std::lock_guard l(create_mu_);
          if (!st.ok()) create_error_ = st;
          create_cv_.notify_all();
        }
      }
      std::lock_guard l(create_mu_);
      creator_done_ = true;
      create_cv_.notify_all();
    });
    struct JoinCreator {
      std::thread& t;
      Restore_& r;
      ~JoinCreator() {
        {
          std::lock_guard l(r.create_mu_);
          r.abort_ = true;
        }
        if (t.joinable()) t.join();
      }
    } join_creator{creator, *this};
    // Workers block on reads and O_DIRECT writes, so there are more of them than cores (on 2 cores,
    // 8 workers restore 7 GB in ~12.5 s, 4 in ~15 s), and at least one per backend connection.
    unsigned hw = std::max(1u, std::thread::hardware_concurrency());
    int n_workers = opts_.workers > 0 ? opts_.workers
                                      : std::max<int>(static_cast<int>(std::min(4 * hw, 8u)), repo_.backend().Connections());
    // Decoding and writing need a buffer set; waiting on the network does not. 8 sets (as many as
    // the local workers) whatever the number of S3 connections.
    pool_ = std::make_unique<BufferPool>(std::min<size_t>(static_cast<size_t>(n_workers), std::max(8u, 2 * hw)));
    // Kept capacity may exceed the budget by the rounding of each string (<= 2 MiB each).
    ranges_ = std::make_unique<RangePool>(opts_.max_bytes_in_flight + opts_.max_bytes_in_flight / 4);
    std::atomic<size_t> next{0};
    std::mutex err_mu;
    Status first_error;
    std::vector<std::thread> threads;
    for (int t = 0; t < n_workers; ++t) {
      threads.emplace_back([&] {
        for (;;) {
          size_t i = next++;
          if (i >= work.size()) return;
          {
            std::lock_guard l(err_mu);
            if (!first_error.ok()) return;
          }
          Status st = FetchPack(work[i].first, work[i].second);
          if (!st.ok()) {
            std::lock_guard l(err_mu);
            if (first_error.ok()) first_error = st;
            return;
          }
        }
      });
    }
    for (auto& t : threads) t.join();
    if (!first_error.ok()) return Err(first_error);
    {  // files without data (empty, all holes) may still be in the creator's queue
      std::unique_lock l(create_mu_);
      create_cv_.wait(l, [&] { return creator_done_; });
      if (!create_error_.ok()) return Err(create_error_);
    }

    RestoreSummary s;
    std::set<size_t> linked;
    for (const auto& h : hardlinks) linked.insert(h.first);
    std::vector<size_t> plain_files;
    for (size_t i = 0; i < files_.size(); ++i) {
      if (linked.count(i)) continue;
      if (!WrittenWhole(files_[i].node)) plain_files.push_back(i);  // whole files have their metadata already
      ++s.files;
      s.bytes += files_[i].node.size;
    }
    DUMONT_RETURN_IF_ERROR(ForEachParallel(plain_files.size(), [&](size_t k) {
      return ApplyMeta(files_[plain_files[k]].path, files_[plain_files[k]].node, false);
    }));
    for (const auto& [i, target_file] : hardlinks) {
      ::unlink(files_[i].path.c_str());
      if (::link(files_[target_file].path.c_str(), files_[i].path.c_str()) != 0) {
        return Err(ErrnoStatus("cannot create hard link " + files_[i].path));
      }
      ++s.hardlinks;
    }
    for (const auto& l : links_) {
      struct stat st{};
      if (lstat(l.path.c_str(), &st) == 0) {
        if (S_ISDIR(st.st_mode)) return Err(Status::FailedPrecondition("cannot restore symlink " + l.path + ": a directory is in the way"));
        ::unlink(l.path.c_str());
      }
      if (::symlink(l.node.target.c_str(), l.path.c_str()) != 0) return Err(ErrnoStatus("cannot create symlink " + l.path));
      DUMONT_RETURN_IF_ERROR(ApplyMeta(l.path, l.node, true));
      ++s.symlinks;
    }
    std::sort(dirs_.begin(), dirs_.end(), [](const Item& a, const Item& b) { return a.depth > b.depth; });
    for (const auto& d : dirs_) {
      DUMONT_RETURN_IF_ERROR(ApplyMeta(d.path, d.node, false));
      ++s.dirs;
    }
    s.bytes_downloaded = downloaded_.load();
    s.bytes_written_direct = bytes_direct_.load();
    s.files_written_whole = whole_written_.load();
    s.duration_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    if (cb_) cb_({progress_bytes_.load(), total_bytes_, files_.size(), s.duration_s});
    return s;
  }

 private:
  Repository& repo_;
  const RestoreOptions& opts_;
  std::function<void(const RestoreProgress&)> cb_;
  std::string include_;
  std::vector<Item> dirs_, files_, links_;
  std::vector<std::string> bare_dirs_;
  uint64_t total_bytes_ = 0;
  std::atomic<uint64_t> progress_bytes_{0}, downloaded_{0}, bytes_direct_{0};
  std::mutex budget_mu_;
  std::condition_variable budget_cv_;
  uint64_t in_flight_ = 0;
  std::unique_ptr<BufferPool> pool_;
  std::unique_ptr<RangePool> ranges_;
  std::atomic<uint64_t> whole_written_{0};
  // The creator thread: files_[to_create[0..created_)] exist.
  std::vector<size_t> create_pos_;
  std::atomic<size_t> created_{0};
  std::mutex create_mu_;
  std::condition_variable create_cv_;
  Status create_error_ = Status::Ok();
  bool creator_done_ = false;
  std::atomic<bool> abort_{false};
  std::mutex report_mu_;
  std::chrono::steady_clock::time_point start_, last_report_;
};

}  // namespace

Result<RestoreSummary> Restore(Repository& repo, const Id& tree, const RestoreOptions& opts,
                               const std::function<void(const RestoreProgress&)>& progress) {
  Restore_ r(repo, opts, progress);
  return r.Go(tree);
}

}  // namespace dumont::snapshot
