#include "snapshot/archiver.h"

#include <dirent.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <sys/stat.h>
#include <liburing.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <future>
#include <map>
#include <mutex>
#include <pwd.h>
#include <thread>

#include "common/big_alloc.h"
#include "snapshot/tree.h"

namespace dumont::snapshot {

using nlohmann::json;
namespace fs = std::filesystem;

json BackupSummary::ToJson() const {
  double ratio = bytes_added ? static_cast<double>(bytes_total) / static_cast<double>(bytes_added) : 0.0;
  json j = {{"snapshot", IdHex(snapshot)}, {"files_new", files_new}, {"files_changed", files_changed},
            {"files_unchanged", files_unchanged}, {"dirs", dirs}, {"bytes_total", bytes_total},
            {"bytes_read", bytes_read}, {"bytes_added", bytes_added}, {"blobs_new", blobs_new}, {"files_read_direct", files_read_direct},
            {"files_read_batched", files_read_batched},
            {"dedup_ratio", ratio}, {"duration_s", duration_s}, {"warnings", warnings}};
  j["parent"] = parent ? json(IdHex(*parent)) : json(nullptr);
  return j;
}

namespace {
constexpr size_t kDirectAlign = 4096;

// Whether to read this file with O_DIRECT: at least 4 MiB, and its first page not in the page
// cache. Turns O_DIRECT on for fd. `size` is the file's size when the caller knows it (the walk's
// stat), else UINT64_MAX.
bool UseDirectRead(int fd, uint64_t size) {
  if (size == UINT64_MAX) {
    struct stat st{};
    if (::fstat(fd, &st) != 0) return false;
    size = static_cast<uint64_t>(st.st_size);
  }
  if (size < (4 << 20)) return false;
  // mincore() on a one-page mapping tells without reading (a probing read would start readahead).
  void* map = ::mmap(nullptr, kDirectAlign, PROT_READ, MAP_SHARED, fd, 0);
  if (map == MAP_FAILED) return false;
  unsigned char resident = 1;
  int rc = ::mincore(map, kDirectAlign, &resident);
  ::munmap(map, kDirectAlign);
  if (rc != 0 || (resident & 1)) return false;  // cached (or the kernel cannot tell): buffered
  int fl = ::fcntl(fd, F_GETFL);
  return fl >= 0 && ::fcntl(fd, F_SETFL, fl | O_DIRECT) == 0;
}

// Opens a file to back up: no atime update where the kernel allows it (only the owner or root may
// ask), and never through a symlink that replaced the file since the walk.
int OpenForRead(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NOATIME);
  if (fd < 0 && errno == EPERM) fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  return fd;
}

// One io_uring per reader thread, for batches of small-file reads. Set up on first use; when the
// kernel refuses (io_uring disabled by sysctl, or blocked by a container's seccomp profile) the
// reads are plain preads.
class ReadRing {
 public:
  static constexpr unsigned kDepth = 64;
  ReadRing() {
    io_uring_params p{};
    // Completions are processed when this thread waits for them, not by interrupting it.
    p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
    int rc = io_uring_queue_init_params(kDepth, &ring_, &p);
    if (rc == -EINVAL) rc = io_uring_queue_init(kDepth, &ring_, 0);  // kernels before 6.1
    ok_ = rc == 0;
  }
  ~ReadRing() {
    if (ok_) io_uring_queue_exit(&ring_);
  }
  ReadRing(const ReadRing&) = delete;
  ReadRing& operator=(const ReadRing&) = delete;
  bool ok() const { return ok_; }

  // Reads want[i] bytes of fds[i] (skipped when negative) from offset 0 into bufs[i]; got[i] is
  // the read's result (bytes, or -errno). False if the ring failed: then got is untouched and the
  // ring is not used again.
  bool ReadAll(const std::vector<int>& fds, const std::vector<char*>& bufs, const std::vector<size_t>& want,
               std::vector<int64_t>* got) {
    unsigned queued = 0;
    for (size_t i = 0; i < fds.size(); ++i) {
      if (fds[i] < 0) continue;
      io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
      if (!sqe) return Broken();  // more than kDepth: the caller batches at most kDepth
      io_uring_prep_read(sqe, fds[i], bufs[i], static_cast<unsigned>(want[i]), 0);
      io_uring_sqe_set_data64(sqe, i);
      ++queued;
    }
    unsigned submitted = 0;
    while (submitted < queued) {
      int rc = io_uring_submit(&ring_);
      if (rc == -EINTR || rc == -EAGAIN || rc == -EBUSY) continue;
      if (rc <= 0) return Broken();
      submitted += static_cast<unsigned>(rc);
    }
    for (unsigned done = 0; done < queued;) {
      io_uring_cqe* cqe = nullptr;
      int rc = io_uring_wait_cqe(&ring_, &cqe);
      if (rc == -EINTR) continue;
      if (rc < 0) return Broken();
      (*got)[io_uring_cqe_get_data64(cqe)] = cqe->res;
      io_uring_cqe_seen(&ring_, cqe);
      ++done;
    }
    return true;
  }

 private:
  bool Broken() {
    // Reads still in flight would write into buffers the caller reuses: tear the ring down, which
    // waits for them, and read synchronously from now on.
    io_uring_queue_exit(&ring_);
    ok_ = false;
    return false;
  }
  io_uring ring_{};
  bool ok_ = false;
};

int64_t Ns(const timespec& t) { return static_cast<int64_t>(t.tv_sec) * 1'000'000'000 + t.tv_nsec; }

Node NodeFromStat(const std::string& name, const struct stat& st) {
  Node n;
  n.name = name;
  n.mode = st.st_mode & 07777;
  n.uid = st.st_uid;
  n.gid = st.st_gid;
  n.mtime_ns = Ns(st.st_mtim);
  n.ctime_ns = Ns(st.st_ctim);
  n.inode = st.st_ino;
  n.dev = st.st_dev;
  n.nlink = st.st_nlink;
  n.size = S_ISREG(st.st_mode) ? static_cast<uint64_t>(st.st_size) : 0;
  if (S_ISREG(st.st_mode)) n.type = "file";
  else if (S_ISDIR(st.st_mode)) n.type = "dir";
  else if (S_ISLNK(st.st_mode)) n.type = "symlink";
  return n;
}

// Whether an entry is excluded by one of the globs (fnmatch against its name and its full path).
bool IsExcluded(const std::vector<std::string>& globs, const std::string& path, const std::string& name) {
  for (const auto& g : globs) {
    if (fnmatch(g.c_str(), name.c_str(), 0) == 0 || fnmatch(g.c_str(), path.c_str(), 0) == 0) return true;
  }
  return false;
}

class Run {
 public:
  Run(Repository& repo, const BackupOptions& opts, const std::function<void(const BackupProgress&)>& cb)
      : repo_(repo), opts_(opts), cb_(cb), chunker_(repo.MakeChunker()) {
    unsigned hw = std::max(1u, std::thread::hardware_concurrency());
    // Readers mostly wait on the disk (large files are read with O_DIRECT, synchronously), so there
    // are more of them than cores: on 2 cores, 8 readers cut the 7 GB first backup from 25 to 19 s.
    readers_n_ = opts.readers > 0 ? opts.readers : static_cast<int>(std::clamp(4 * hw, 4u, 16u));
    workers_n_ = opts.workers > 0 ? opts.workers : static_cast<int>(hw);
    // Chunks one file may have queued for the workers: all readers together keep about 4 per worker.
    inflight_per_file_ = static_cast<size_t>(std::max(2, (4 * workers_n_ + readers_n_ - 1) / readers_n_));
    readers_ = std::make_unique<ThreadPool>(readers_n_);
    // Walkers list and stat directories in parallel. On a cold cache they mostly wait for inode
    // reads, so there are many; warm, the 82k-file workspace's unchanged walk is CPU work that
    // both cores now share (one walker took 0.5 s of the 0.9 s re-backup).
    walkers_ = std::make_unique<ThreadPool>(8);
    workers_ = std::make_unique<ThreadPool>(workers_n_);
    start_ = std::chrono::steady_clock::now();
  }
  ~Run() {
    abort_walk_ = true;  // after an error, queued walks return at once
    walkers_->Stop();    // before the readers: a walk queues reads
    readers_->Stop();
    workers_->Stop();
  }

  bool Excluded(const std::string& path, const std::string& name) const {
    return IsExcluded(opts_.excludes, path, name);
  }

  // Hash, dedup, compress, seal one chunk (runs on a worker).
  static constexpr size_t kInlineChunk = 256 * 1024;

  Result<Id> StoreChunk(std::string_view data) {
    Id id = repo_.BlobId(data);
    if (repo_.HasBlob(id)) return id;
    uint64_t stored = 0;
    auto saved = repo_.SaveBlob(BlobType::kData, id, data, &stored);
    if (!saved) return Err(saved.error());
    if (*saved) {
      bytes_added_ += stored;
      ++blobs_new_;
    }
    return id;
  }

  // One raw buffer per reader thread, allocated once, page-aligned (O_DIRECT), on huge pages
  // (BigAlloc) and never zero-filled: small files must not pay for clearing megabytes they do not
  // use. nullptr when out of memory.
  size_t ReaderBufferSize() const { return 4 * chunker_.params().max_size + kDirectAlign; }
  char* ReaderBuffer() {
    thread_local BigBuffer buf;
    return buf.TryGet(ReaderBufferSize());
  }

  // Small files are read in batches. One at a time, each file cost a read syscall that started its
  // own disk request and a virtio notification (a VM exit): the 82k files of a virtualenv took ~4
  // CPU-seconds of kernel time with 8 readers. A batch is submitted to io_uring at once, so the
  // block layer dispatches its requests together; the same files took ~1.5 CPU-seconds and less
  // than half the wall time (docs/decisions/0008-small-files-through-io-uring.md).
  //
  // Walkers queue the files and a drain task per queued group on the readers; a drain takes up to
  // kBatchFiles files (up to BatchBytesMax bytes) from the queue until it is empty, so files of several
  // directories share a batch when the readers are busy, and no queued file is ever left behind
  // (the drain queued after it either takes it or finds that another drain did).
  static constexpr size_t kBatchFiles = ReadRing::kDepth;
  // Files up to 256 KiB (one chunk with the default min chunk of 512 KiB), batches up to 8 MiB;
  // both bounded by the reader's buffer, which is smaller in repositories made with small chunks.
  uint64_t BatchFileMax() const { return std::min<uint64_t>(kInlineChunk, ReaderBufferSize() / 4); }
  size_t BatchBytesMax() const { return std::min<size_t>(8 << 20, ReaderBufferSize()); }

  struct SmallFile {
    std::string path;
    uint64_t stat_size = 0;
    std::shared_ptr<uint64_t> read;
    std::promise<Result<std::vector<Id>>> done;
  };

  void QueueSmall(std::vector<std::unique_ptr<SmallFile>>* files) {
    if (files->empty()) return;
    {
      std::lock_guard l(small_mu_);
      for (auto& f : *files) small_q_.push_back(std::move(f));
    }
    files->clear();
    readers_->Submit([this] { DrainSmall(); });
  }

  void DrainSmall() {
    std::vector<std::unique_ptr<SmallFile>> batch;
    for (;;) {
      batch.clear();
      {
        std::lock_guard l(small_mu_);
        size_t bytes = 0;
        const size_t limit = BatchBytesMax();
        while (!small_q_.empty() && batch.size() < kBatchFiles && bytes + small_q_.front()->stat_size + 1 <= limit) {
          bytes += small_q_.front()->stat_size + 1;
          batch.push_back(std::move(small_q_.front()));
          small_q_.pop_front();
        }
      }
      if (batch.empty()) return;
      ReadSmall(batch);
    }
  }

  // Reads a batch of small files (stat size + 1 bytes each, so growth since the walk shows), then
  // chunks and stores each on this reader. A file that grew is read again by ReadFile.
  void ReadSmall(std::vector<std::unique_ptr<SmallFile>>& batch) {
    char* buf = ReaderBuffer();
    if (!buf) {
      for (auto& f : batch) f->done.set_value(Err(Status::IOError("out of memory for the read buffer of " + f->path)));
      return;
    }
    const size_t n = batch.size();
    std::vector<int> fds(n, -1);
    std::vector<char*> at(n);
    std::vector<size_t> want(n);
    std::vector<int64_t> got(n, 0);
    std::vector<int> open_errno(n, 0);
    for (size_t i = 0, pos = 0; i < n; pos += want[i], ++i) {
      want[i] = batch[i]->stat_size + 1;
      at[i] = buf + pos;
      if (opts_.before_read) opts_.before_read(batch[i]->path);
      fds[i] = OpenForRead(batch[i]->path);
      if (fds[i] < 0) open_errno[i] = errno;
    }
    thread_local ReadRing ring;
    bool batched = opts_.io_uring && ring.ok() && ring.ReadAll(fds, at, want, &got);
    if (batched) {
      files_read_batched_ += static_cast<uint64_t>(std::count_if(fds.begin(), fds.end(), [](int fd) { return fd >= 0; }));
    } else {
      for (size_t i = 0; i < n; ++i) {
        if (fds[i] < 0) continue;
        ssize_t r;
        do r = ::pread(fds[i], at[i], want[i], 0);
        while (r < 0 && errno == EINTR);
        got[i] = r < 0 ? -errno : r;
      }
    }
    std::vector<size_t> grew;
    for (size_t i = 0; i < n; ++i) {
      SmallFile& f = *batch[i];
      if (fds[i] < 0) {
        f.done.set_value(Err(Status::IOError("cannot open " + f.path + ": " + std::strerror(open_errno[i]))));
        continue;
      }
      // A read short of the stat size is continued: the file may have shrunk (then a read
      // returns 0), or the kernel returned part of it.
      while (got[i] >= 0 && static_cast<uint64_t>(got[i]) < f.stat_size) {
        ssize_t r = ::pread(fds[i], at[i] + got[i], want[i] - static_cast<size_t>(got[i]), got[i]);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
          if (r < 0) got[i] = -errno;
          break;
        }
        got[i] += r;
      }
      ::close(fds[i]);
      if (got[i] < 0) {
        f.done.set_value(Err(Status::IOError("cannot read " + f.path + ": " + std::strerror(static_cast<int>(-got[i])))));
        continue;
      }
      if (static_cast<size_t>(got[i]) == want[i]) {
        grew.push_back(i);
        continue;
      }
      uint64_t size = static_cast<uint64_t>(got[i]);
      *f.read = size;
      progress_bytes_ += size;
      // One chunk with the default chunker (min 512 KiB); a repository made with smaller chunks
      // cuts small files too, exactly where ReadFile would.
      std::vector<Id> content;
      Status st;
      for (size_t off = 0; off < size && st.ok();) {
        size_t cut = chunker_.Cut(reinterpret_cast<const uint8_t*>(at[i] + off), size - off);
        auto id = StoreChunk(std::string_view(at[i] + off, cut));
        if (!id) st = id.error();
        else content.push_back(*id);
        off += cut;
      }
      if (!st.ok()) f.done.set_value(Err(st));
      else f.done.set_value(std::move(content));
    }
    Report(batch.back()->path);
    // After the batch: ReadFile reuses the buffer the batch was read into.
    for (size_t i : grew) {
      SmallFile& f = *batch[i];
      f.done.set_value(ReadFile(f.path, f.read.get()));
    }
  }

  // Reads and chunks one file (runs on a reader). Returns the content list.
  //
  // Large files that are not in the page cache are read with O_DIRECT: on the machines we run on
  // (VMs), a buffered read costs a kernel copy into freshly faulted page-cache pages that was a
  // third of the first backup's CPU. A file whose first page is cached (a checkpoint just written)
  // is read through the cache, which is faster than the disk. See docs/repository-format.md.
  //
  // `stat_size` is the size the walk saw. A small file (most of a virtualenv) then costs open,
  // one read and close: no fstat, no fadvise below 1 MiB, and a short read that reaches that size
  // is taken as the end of the file (a file that grew since is read on until a read returns
  // nothing).
  Result<std::vector<Id>> ReadFile(const std::string& path, uint64_t* size_read, uint64_t stat_size = UINT64_MAX) {
    if (opts_.before_read) opts_.before_read(path);
    int fd = OpenForRead(path);
    if (fd < 0) return Err(Status::IOError("cannot open " + path + ": " + std::strerror(errno)));
    bool direct = opts_.direct_io && UseDirectRead(fd, stat_size);
    if (direct) ++files_read_direct_;
    if (!direct && stat_size >= (1 << 20)) posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    const size_t max = chunker_.params().max_size;
    // The reader's buffer (ReaderBuffer). Chunks go to the workers as views into it (no copy, no fresh pages to fault in per chunk), so the bytes
    // of chunks in flight are never moved or overwritten: before the unconsumed tail moves to the
    // front (the chunker needs `max` bytes ahead), the file's chunks in flight are waited for.
    // At 4 x max the tail moves once per ~3 x max bytes read, and the buffer also holds what the
    // chunk copies in flight used to (worst case the same: docs/repository-format.md, "Memory
    // bounds").
    const size_t cap = ReaderBufferSize();
    char* buf = ReaderBuffer();
    if (!buf) {
      ::close(fd);
      return Err(Status::IOError("out of memory for the read buffer of " + path));
    }
    size_t start = 0, end = 0;
    std::deque<std::future<Result<Id>>> inflight;
    std::vector<Id> content;
    Status err;
    bool eof = false;
    auto drain_one = [&]() {
      auto r = inflight.front().get();
      inflight.pop_front();
      if (!r) {
        if (err.ok()) err = r.error();
      } else {
        content.push_back(*r);
      }
    };
    while (err.ok()) {
      // Fill until we hold max bytes past `start` or reach EOF.
      while (!eof && end - start < max) {
        if (start > 0 && end + max > cap - kDirectAlign) {
          // Keep the unconsumed bytes but end them on an aligned address, so the next read (a
          // multiple of the alignment, at an aligned file offset) stays valid for O_DIRECT. The
          // chunks in flight are views of the bytes this overwrites: they finish first.
          while (!inflight.empty()) drain_one();
          if (!err.ok()) break;
          size_t keep = end - start;
          size_t dst = direct ? (kDirectAlign - keep % kDirectAlign) % kDirectAlign : 0;
          std::memmove(buf + dst, buf + start, keep);
          start = dst;
          end = dst + keep;
        }
        size_t want = std::min(cap - end, max);  // reads of up to max: chunks start sooner
        if (direct) want -= want % kDirectAlign;
        ssize_t n = ::read(fd, buf + end, want);
        if (n < 0) {
          if (errno == EINTR) continue;
          if (errno == EINVAL && direct) {  // the filesystem took O_DIRECT but refuses the read
            int fl = ::fcntl(fd, F_GETFL);
            if (fl >= 0 && ::fcntl(fd, F_SETFL, fl & ~O_DIRECT) == 0) {
              direct = false;
              continue;
            }
          }
          err = Status::IOError("cannot read " + path + ": " + std::strerror(errno));
          break;
        }
        if (n == 0) eof = true;
        end += static_cast<size_t>(n);
        *size_read += static_cast<uint64_t>(n);
        progress_bytes_ += static_cast<uint64_t>(n);
        // Large files take seconds each: without this the status line stood still until one
        // finished (10 s at the same byte count in the 7 GB benchmark).
        if (n > 0) Report(path);
        // A short O_DIRECT read leaves the file offset unaligned; only EOF may do that.
        if (direct && n > 0 && static_cast<size_t>(n) % kDirectAlign != 0) eof = true;
        if (n > 0 && static_cast<size_t>(n) < want && *size_read >= stat_size) eof = true;
      }
      if (!err.ok()) break;
      size_t avail = end - start;
      if (avail == 0) break;
      size_t cut = chunker_.Cut(reinterpret_cast<const uint8_t*>(buf + start), avail);
      if (eof && inflight.empty() && cut == avail && cut <= kInlineChunk) {
        // A small file, whole in one chunk: stored on this reader. Handing it to a worker and
        // waiting for it cost ~4 futex calls and two context switches per file.
        auto id = StoreChunk(std::string_view(buf + start, cut));
        if (!id) {
          err = id.error();
          break;
        }
        content.push_back(*id);
        start += cut;
        break;
      }
      std::string_view chunk(buf + start, cut);  // stays valid until drained (see above)
      start += cut;
      auto task = std::make_shared<std::packaged_task<Result<Id>()>>([this, chunk] { return StoreChunk(chunk); });
      inflight.push_back(task->get_future());
      workers_->Submit([task] { (*task)(); });
      // Bound the chunks a file keeps in flight (memory) while keeping every worker busy.
      if (inflight.size() >= inflight_per_file_) drain_one();
    }
    while (!inflight.empty()) drain_one();
    ::close(fd);
    if (!err.ok()) return Err(err);
    return content;
  }

  // The parent snapshot's entries of one directory, sorted by name (a vector, not a map: one
  // allocation per directory instead of one per entry).
  struct ParentDir {
    std::vector<Node> nodes;
    const Node* Find(const std::string& name) const {
      auto it = std::lower_bound(nodes.begin(), nodes.end(), name, [](const Node& n, const std::string& k) { return n.name < k; });
      return it != nodes.end() && it->name == name ? &*it : nullptr;
    }
    size_t size() const { return nodes.size(); }
    bool empty() const { return nodes.empty(); }
  };

  ParentDir LoadParentTree(const std::optional<Id>& tree, const std::string& where) {
    ParentDir out;
    if (!tree) return out;
    auto blob = repo_.LoadBlob(*tree);
    if (!blob) return out;  // a damaged parent only costs a full read
    auto nodes = DecodeTree(*blob, where);
    if (!nodes) return out;
    out.nodes = std::move(*nodes);
    auto by_name = [](const Node& a, const Node& b) { return a.name < b.name; };
    if (!std::is_sorted(out.nodes.begin(), out.nodes.end(), by_name)) {
      std::stable_sort(out.nodes.begin(), out.nodes.end(), by_name);
    }
    // A name twice (not written by dumont) would match twice: keep the first, as lookups would.
    out.nodes.erase(std::unique(out.nodes.begin(), out.nodes.end(), [](const Node& a, const Node& b) { return a.name == b.name; }),
                    out.nodes.end());
    return out;
  }

  bool Unchanged(const Node& now, const ParentDir& parent) {
    const Node* found = parent.Find(now.name);
    if (!found) return false;
    const Node& p = *found;
    if (p.type != "file" || p.size != now.size || p.mtime_ns != now.mtime_ns || p.ctime_ns != now.ctime_ns ||
        p.inode != now.inode) {
      return false;
    }
    for (const auto& id : p.content) {
      if (!repo_.HasBlob(id)) return false;
    }
    return true;
  }

  // A directory walked but not yet saved: its nodes, the reads in flight for its files, and its
  // subdirectories. Walking submits every file read of the whole tree before any tree is built, so
  // the readers never wait for one directory to finish before the next directory's files start.
  struct PendingFile {
    size_t node;
    std::future<Result<std::vector<Id>>> content;
    std::shared_ptr<uint64_t> read;
  };
  struct DirPlan {
    std::string path, where;
    std::vector<Node> nodes;
    std::vector<PendingFile> files;
    std::vector<std::pair<size_t, std::future<std::unique_ptr<DirPlan>>>> subdirs;  // node index -> plan
    uint64_t files_new = 0, files_changed = 0, files_unchanged = 0, bytes_unchanged = 0;
    // The parent snapshot's tree of this directory, and whether every entry so far is identical to
    // it (same names, metadata and content; subtrees are checked in Build). Such a directory keeps
    // the parent's tree id: nothing is encoded, hashed or looked up again.
    std::optional<Id> parent_tree;
    bool same_as_parent = false;
  };

  // Lists and stats one directory (relative to its descriptor: no path lookups), queues the reads of
  // its new and changed files, and queues the walks of its subdirectories on the walkers. It never
  // waits for anything, so walkers cannot deadlock; Build, on the calling thread, waits.
  std::unique_ptr<DirPlan> Walk(const std::string& path, const std::string& where, const std::optional<Id>& parent_tree) {
    struct Done {  // the walk of this directory has queued everything below it
      std::atomic<int64_t>& pending;
      ~Done() { --pending; }
    } done{walks_pending_};
    auto plan = std::make_unique<DirPlan>();
    plan->path = path;
    plan->where = where;
    if (abort_walk_) return plan;
    auto parent = LoadParentTree(parent_tree, where);
    plan->parent_tree = parent_tree;
    plan->same_as_parent = parent_tree.has_value() && !parent.empty();
    size_t parent_matched = 0;
    // Whether node n equals the parent's entry of the same name (dirs: all but the subtree).
    auto matches_parent = [&](const Node& n) {
      const Node* found = parent.Find(n.name);
      if (!found) return false;
      const Node& p = *found;
      return p.type == n.type && p.mode == n.mode && p.uid == n.uid && p.gid == n.gid && p.mtime_ns == n.mtime_ns &&
             p.ctime_ns == n.ctime_ns && p.inode == n.inode && p.dev == n.dev && p.nlink == n.nlink &&
             p.size == n.size && p.target == n.target && (n.type != "file" || p.content == n.content);
    };
    auto note_node = [&](const Node& n) {
      if (!plan->same_as_parent) return;
      if (matches_parent(n)) {
        ++parent_matched;
      } else {
        plan->same_as_parent = false;
      }
    };
    // O_NOFOLLOW: a directory swapped for a symlink since its parent was listed is not followed.
    int dfd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
    DIR* dp = dfd >= 0 ? ::fdopendir(dfd) : nullptr;
    if (!dp) {
      Warn("cannot list " + path + ": " + std::strerror(errno));
      if (dfd >= 0) ::close(dfd);
      plan->same_as_parent = false;
      return plan;
    }
    struct DirCloser {
      DIR* d;
      ~DirCloser() { ::closedir(d); }
    } closer{dp};
    std::vector<std::string> names;
    errno = 0;
    while (struct dirent* e = ::readdir(dp)) {
      std::string_view name = e->d_name;
      if (name != "." && name != "..") names.emplace_back(name);
    }
    if (errno != 0) Warn("cannot list " + path + ": " + std::strerror(errno));
    std::sort(names.begin(), names.end());
    int fd = ::dirfd(dp);
    std::vector<std::unique_ptr<SmallFile>> small;  // queued for the readers in groups (QueueSmall)
    for (const auto& name : names) {
      std::string child = path + "/" + name;
      if (Excluded(child, name)) continue;
      struct stat st{};
      if (::fstatat(fd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
        Warn("cannot stat " + child + ": " + std::strerror(errno));
        continue;
      }
      Node n = NodeFromStat(name, st);
      if (n.type.empty()) continue;  // sockets, fifos, devices are not backed up
      CountFound(n);
      if (n.type == "symlink") {
        std::string target(4096, '\0');
        ssize_t len = ::readlinkat(fd, name.c_str(), target.data(), target.size());
        if (len < 0) {
          Warn("cannot read link " + child);
          continue;
        }
        target.resize(len);
        n.target = target;
        note_node(n);
        plan->nodes.push_back(std::move(n));
      } else if (n.type == "dir") {
        std::optional<Id> sub_parent;
        if (const Node* p = parent.Find(name); p && p->type == "dir") sub_parent = p->subtree;
        note_node(n);
        plan->nodes.push_back(std::move(n));
        size_t idx = plan->nodes.size() - 1;
        auto task = std::make_shared<std::packaged_task<std::unique_ptr<DirPlan>()>>(
            [this, child, sub_where = where + "/" + name, sub_parent] { return Walk(child, sub_where, sub_parent); });
        plan->subdirs.emplace_back(idx, task->get_future());
        ++walks_pending_;
        walkers_->Submit([task] { (*task)(); });
      } else {
        if (!opts_.no_parent && Unchanged(n, parent)) {
          n.content = parent.Find(name)->content;
          ++plan->files_unchanged;
          ++files_done_;
          progress_bytes_ += n.size;
          plan->bytes_unchanged += n.size;
          note_node(n);
          plan->nodes.push_back(std::move(n));
          continue;
        }
        plan->same_as_parent = false;
        ++(parent.Find(name) ? plan->files_changed : plan->files_new);
        plan->nodes.push_back(std::move(n));
        auto read = std::make_shared<uint64_t>(0);
        uint64_t size = plan->nodes.back().size;
        if (size <= BatchFileMax()) {
          auto f = std::make_unique<SmallFile>();
          f->path = child;
          f->stat_size = size;
          f->read = read;
          plan->files.push_back({plan->nodes.size() - 1, f->done.get_future(), read});
          small.push_back(std::move(f));
          if (small.size() >= kBatchFiles) QueueSmall(&small);
        } else {
          auto task = std::make_shared<std::packaged_task<Result<std::vector<Id>>()>>(
              [this, child, read, size] { return ReadFile(child, read.get(), size); });
          plan->files.push_back({plan->nodes.size() - 1, task->get_future(), read});
          readers_->Submit([task] { (*task)(); });
        }
      }
      Report(child);
    }
    QueueSmall(&small);
    if (parent_matched != parent.size()) plan->same_as_parent = false;  // an entry was removed
    return plan;
  }

  // Post-order: waits for a directory's file reads and subtrees, then stores its tree blob.
  Result<Id> Build(DirPlan& plan) {
    bool same = plan.same_as_parent;
    summary_.files_new += plan.files_new;
    summary_.files_changed += plan.files_changed;
    summary_.files_unchanged += plan.files_unchanged;
    summary_.bytes_total += plan.bytes_unchanged;
    for (auto& [idx, pending] : plan.subdirs) {
      auto sub = pending.get();
      auto id = Build(*sub);
      if (!id) return Err(id.error());
      if (!sub->parent_tree || *sub->parent_tree != *id) same = false;
      plan.nodes[idx].subtree = *id;
      ++summary_.dirs;
    }
    if (same && plan.files.empty() && repo_.HasBlob(*plan.parent_tree)) {
      Report(plan.path);
      return *plan.parent_tree;
    }
    std::vector<size_t> failed;
    for (auto& p : plan.files) {
      auto content = p.content.get();
      Node& n = plan.nodes[p.node];
      summary_.bytes_read += *p.read;
      ++files_done_;
      if (!content) {
        if (content.error().code() == Code::kIOError) {
          Warn(content.error().message());
          failed.push_back(p.node);
          continue;
        }
        return Err(content.error());
      }
      n.content = std::move(*content);
      n.size = *p.read;
      summary_.bytes_total += n.size;
    }
    Report(plan.path);
    std::sort(failed.begin(), failed.end());
    for (auto it = failed.rbegin(); it != failed.rend(); ++it) plan.nodes.erase(plan.nodes.begin() + static_cast<long>(*it));
    std::string blob = EncodeTree(std::move(plan.nodes));
    Id id = repo_.BlobId(blob);
    auto saved = repo_.SaveBlob(BlobType::kTree, id, blob);
    if (!saved) return Err(saved.error());
    return id;
  }

  void Warn(const std::string& w) {
    std::lock_guard l(warn_mu_);
    summary_.warnings.push_back(w);
  }

  void Report(const std::string& current) {
    if (!cb_) return;
    std::unique_lock l(report_mu_, std::try_to_lock);  // walkers report too; one report at a time
    if (!l.owns_lock()) return;
    auto now = std::chrono::steady_clock::now();
    if (now - last_report_ < std::chrono::milliseconds(opts_.progress_interval_ms)) return;
    last_report_ = now;
    BackupProgress p;
    p.files_done = files_done_.load();
    p.files_total = TotalFiles();
    p.bytes_total = TotalBytes();
    p.bytes_done = progress_bytes_.load();
    p.totals_final = WalkDone();
    p.elapsed_s = std::chrono::duration<double>(now - start_).count();
    p.current = current;
    cb_(p);
  }

  Result<BackupSummary> Go() {
    std::string host = opts_.hostname;
    if (host.empty()) {
      char buf[256] = {0};
      gethostname(buf, sizeof buf - 1);
      host = buf;
    }
    if (opts_.paths.empty()) return Err(Status::InvalidArgument("nothing to back up: give at least one PATH"));
    std::vector<std::string> abs;
    std::map<std::string, std::string> by_name;
    for (const auto& p : opts_.paths) {
      std::error_code ec;
      std::string a = fs::absolute(p, ec).lexically_normal().string();
      while (a.size() > 1 && a.back() == '/') a.pop_back();
      struct stat st{};
      if (lstat(a.c_str(), &st) != 0) {
        return Err(Status::InvalidArgument("cannot back up " + p + ": " + std::strerror(errno)));
      }
      std::string name = fs::path(a).filename().string();
      if (name.empty()) name = "root";
      if (by_name.count(name)) {
        return Err(Status::InvalidArgument("two paths have the same name '" + name + "' (" + by_name[name] + " and " + a +
                                           "); back them up separately or from a common parent"));
      }
      by_name[name] = a;
      abs.push_back(a);
    }
    std::sort(abs.begin(), abs.end());
    // Parent: explicit, else the latest snapshot of the same host and paths.
    std::optional<std::pair<Id, SnapshotManifest>> parent;
    if (!opts_.no_parent) {
      if (opts_.parent) {
        auto p = repo_.FindSnapshot(*opts_.parent);
        if (!p) return Err(p.error());
        parent = *p;
      } else {
        auto all = repo_.ListSnapshots();
        if (!all) return Err(all.error());
        for (auto it = all->rbegin(); it != all->rend(); ++it) {
          if (it->second.hostname == host && it->second.paths == abs) {
            parent = *it;
            break;
          }
        }
      }
    }
    // The progress totals are what the walk has found so far (it runs far ahead of the reads, and
    // is complete once every directory is listed); until then, at least the parent's totals.
    if (cb_ && parent) {
      const auto& ps = parent->second.summary;
      auto num = [&](const char* k) { return ps.contains(k) && ps[k].is_number_unsigned() ? ps[k].get<uint64_t>() : 0; };
      parent_files_ = num("files_new") + num("files_changed") + num("files_unchanged");
      parent_bytes_ = num("bytes_total");
    }
    ParentDir parent_root;
    if (parent) {
      repo_.PrefetchTrees(parent->second.tree, 16);  // the walk reads the parent's trees one per directory
      parent_root = LoadParentTree(parent->second.tree, "");
      summary_.parent = parent->first;
    }
    // Every root's walk is queued before any tree is built, so the readers and the totals see the
    // files of all roots from the start.
    std::vector<Node> root;
    std::vector<std::unique_ptr<DirPlan>> plans(abs.size());
    ++walks_pending_;  // until every root is queued
    for (size_t i = 0; i < abs.size(); ++i) {
      struct stat st{};
      lstat(abs[i].c_str(), &st);
      std::string name = fs::path(abs[i]).filename().string();
      if (name.empty()) name = "root";
      root.push_back(NodeFromStat(name, st));
      CountFound(root.back());
      if (root.back().type == "dir") {
        std::optional<Id> sub_parent;
        if (const Node* p = parent_root.Find(name); p && p->type == "dir") sub_parent = p->subtree;
        ++walks_pending_;
        plans[i] = Walk(abs[i], name, sub_parent);
      }
    }
    --walks_pending_;
    for (size_t i = 0; i < abs.size(); ++i) {
      const std::string& a = abs[i];
      Node& n = root[i];
      if (n.type == "dir") {
        auto sub = Build(*plans[i]);
        plans[i].reset();
        if (!sub) return Err(sub.error());
        n.subtree = *sub;
        ++summary_.dirs;
      } else if (n.type == "file") {
        uint64_t read = 0;
        auto content = ReadFile(a, &read);
        if (!content) return Err(content.error());
        ++files_done_;
        n.content = *content;
        n.size = read;
        summary_.bytes_total += read;
        summary_.bytes_read += read;
        ++summary_.files_new;
      } else if (n.type == "symlink") {
        std::string target(4096, '\0');
        ssize_t len = readlink(a.c_str(), target.data(), target.size());
        target.resize(len > 0 ? len : 0);
        n.target = target;
      } else {
        return Err(Status::InvalidArgument("cannot back up " + a + ": not a file, directory or symlink"));
      }
    }
    std::string blob = EncodeTree(std::move(root));
    Id root_id = repo_.BlobId(blob);
    auto saved = repo_.SaveBlob(BlobType::kTree, root_id, blob);
    if (!saved) return Err(saved.error());
    // Packs and index first, then the manifest that points at them.
    DUMONT_RETURN_IF_ERROR(repo_.Flush());
    summary_.duration_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    summary_.bytes_added = bytes_added_.load();
    summary_.blobs_new = blobs_new_.load();
    summary_.files_read_direct = files_read_direct_.load();
    summary_.files_read_batched = files_read_batched_.load();
    SnapshotManifest m;
    m.time_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
    m.time_unix = m.time_ns / 1'000'000'000;
    m.time = Rfc3339(m.time_unix);
    m.tree = root_id;
    m.paths = abs;
    m.hostname = host;
    if (auto* pw = getpwuid(getuid())) m.username = pw->pw_name;
    m.tags = opts_.tags;
    if (parent) m.parent = parent->first;
    m.summary = summary_.ToJson();
    m.summary.erase("snapshot");
    auto id = repo_.SaveSnapshot(m);
    if (!id) return Err(id.error());
    summary_.snapshot = *id;
    if (cb_) {
      std::lock_guard l(report_mu_);
      BackupProgress p;
      p.files_done = files_done_.load();
      p.files_total = std::max<uint64_t>(TotalFiles(), p.files_done);
      p.bytes_total = std::max<uint64_t>(TotalBytes(), progress_bytes_.load());
      p.bytes_done = progress_bytes_.load();
      p.totals_final = true;
      p.elapsed_s = summary_.duration_s;
      cb_(p);
    }
    return summary_;
  }

 private:
  Repository& repo_;
  const BackupOptions& opts_;
  std::function<void(const BackupProgress&)> cb_;
  Chunker chunker_;
  size_t inflight_per_file_ = 2;
  int readers_n_ = 1, workers_n_ = 1;
  std::unique_ptr<ThreadPool> readers_, workers_;
  std::chrono::steady_clock::time_point start_, last_report_;
  std::mutex report_mu_;
  std::atomic<uint64_t> files_done_{0};
  std::unique_ptr<ThreadPool> walkers_;
  std::atomic<bool> abort_walk_{false};
  void CountFound(const Node& n) {  // a regular file for the progress totals
    if (n.type != "file") return;
    ++walk_files_;
    walk_bytes_ += n.size;
  }
  bool WalkDone() const { return walks_pending_.load() == 0; }
  uint64_t TotalFiles() const { return WalkDone() ? walk_files_.load() : std::max(walk_files_.load(), parent_files_); }
  uint64_t TotalBytes() const { return WalkDone() ? walk_bytes_.load() : std::max(walk_bytes_.load(), parent_bytes_); }
  uint64_t parent_files_ = 0, parent_bytes_ = 0;  // totals from the parent's summary
  std::atomic<uint64_t> walk_files_{0}, walk_bytes_{0};  // regular files the walk has found
  std::atomic<int64_t> walks_pending_{0};               // directory walks queued or running
  std::atomic<uint64_t> files_read_direct_{0}, files_read_batched_{0};
  std::mutex small_mu_;
  std::deque<std::unique_ptr<SmallFile>> small_q_;  // small files waiting for a batch (DrainSmall)
  std::atomic<uint64_t> progress_bytes_{0}, bytes_added_{0}, blobs_new_{0};
  BackupSummary summary_;
  std::mutex warn_mu_;
};

}  // namespace

Result<BackupSummary> Backup(Repository& repo, const BackupOptions& opts,
                             const std::function<void(const BackupProgress&)>& progress) {
  Run run(repo, opts, progress);
  return run.Go();
}

MetadataPrefetch::MetadataPrefetch(const std::vector<std::string>& paths, int threads) {
  for (const auto& p : paths) {
    struct stat st{};
    if (::lstat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) dirs_.push_back(p);
  }
  if (dirs_.empty()) return;
  for (int i = 0; i < std::max(1, threads); ++i) threads_.emplace_back([this] { Run(); });
}

MetadataPrefetch::~MetadataPrefetch() {
  {
    std::lock_guard l(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  for (auto& t : threads_) t.join();
}

void MetadataPrefetch::WaitDone() {
  std::unique_lock l(mu_);
  cv_.wait(l, [&] { return stop_ || (dirs_.empty() && busy_ == 0); });
}

void MetadataPrefetch::Run() {
  // Below normal priority (Linux nice values are per thread): this only saves waiting later, so it
  // must not slow the password's key derivation it runs beside when the cache is already warm.
  ::setpriority(PRIO_PROCESS, static_cast<id_t>(::syscall(SYS_gettid)), 10);
  std::vector<std::string> found;
  for (;;) {
    std::string dir;
    {
      std::unique_lock l(mu_);
      cv_.wait(l, [&] { return stop_ || !dirs_.empty() || busy_ == 0; });
      if (stop_ || dirs_.empty()) {  // stopped, or nothing left and nobody listing
        cv_.notify_all();
        return;
      }
      dir = std::move(dirs_.back());
      dirs_.pop_back();
      ++busy_;
    }
    found.clear();
    int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (DIR* d = fd >= 0 ? ::fdopendir(fd) : nullptr) {
      while (!stop_.load(std::memory_order_relaxed)) {
        const dirent* e = ::readdir(d);
        if (!e) break;
        if (std::strcmp(e->d_name, ".") == 0 || std::strcmp(e->d_name, "..") == 0) continue;
        struct stat st{};
        if (::fstatat(::dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) continue;
        entries_.fetch_add(1, std::memory_order_relaxed);
        if (S_ISDIR(st.st_mode)) found.push_back(dir + "/" + e->d_name);
      }
      ::closedir(d);
    } else if (fd >= 0) {
      ::close(fd);
    }
    {
      std::lock_guard l(mu_);
      for (auto& f : found) dirs_.push_back(std::move(f));
      --busy_;
    }
    cv_.notify_all();
  }
}

}  // namespace dumont::snapshot
