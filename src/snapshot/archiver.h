// Archiver: backs up paths into a snapshot. Pipeline: walkers (a pool listing and stat-ing
// directories; the calling thread builds the trees, post-order) -> file readers (a pool) that
// chunk each file -> chunk workers (a second pool) that hash, dedup, compress, seal and hand
// blobs to the repository's packer -> the repository's uploaders. Every stage is bounded, so memory
// stays under the bound in docs/repository-format.md ("Memory bounds"). Large uncached files are
// read with O_DIRECT ("I/O around the page cache").
// Files whose size, mtime, ctime and inode match the parent snapshot reuse its chunk list unread.
// Engines never print: progress goes to a callback.
#pragma once

#include <atomic>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "snapshot/repository.h"

namespace dumont::snapshot {

struct BackupOptions {
  std::vector<std::string> paths;
  std::vector<std::string> tags;
  std::vector<std::string> excludes;  // globs, matched against the name and the full path
  std::optional<std::string> parent;  // snapshot ref; default: latest with the same host and paths
  bool no_parent = false;
  std::string hostname;               // default: this host
  int readers = 0;                    // 0 = clamp(4 x cores, 4, 16)
  int workers = 0;                    // 0 = cores
  bool direct_io = true;              // O_DIRECT reads of large uncached files
  bool io_uring = true;               // small files read in batches through io_uring (when the kernel allows)
  int progress_interval_ms = 200;     // at most one progress callback per interval (0: every event)
  // Tests: called with a file's path just before it is opened for reading (after the walk's stat),
  // to change the file in that window.
  std::function<void(const std::string&)> before_read;
};

struct BackupProgress {
  uint64_t files_done = 0, files_total = 0;
  uint64_t bytes_done = 0, bytes_total = 0;  // totals: what the walk has found so far
  bool totals_final = false;                  // the walk is complete: the totals are exact
  double elapsed_s = 0;
  std::string current;
};

struct BackupSummary {
  Id snapshot{};
  std::optional<Id> parent;
  uint64_t files_new = 0, files_changed = 0, files_unchanged = 0, dirs = 0;
  uint64_t bytes_total = 0;   // logical size of the files in the snapshot
  uint64_t bytes_read = 0;    // what had to be read
  uint64_t bytes_added = 0;   // sealed bytes added to the repository
  uint64_t blobs_new = 0;
  uint64_t files_read_direct = 0;  // large files read around the page cache (O_DIRECT)
  uint64_t files_read_batched = 0; // small files read in batches through io_uring
  double duration_s = 0;
  std::vector<std::string> warnings;  // files that could not be read (the snapshot has the rest)
  nlohmann::json ToJson() const;
};

Result<BackupSummary> Backup(Repository& repo, const BackupOptions& opts,
                             const std::function<void(const BackupProgress&)>& progress = nullptr);

// Lists and stats the trees under `paths` on background threads until destroyed (or done), only to
// bring their directory entries and inodes into the kernel's caches. Opening a repository takes
// ~0.2 s of CPU (the password's argon2id, the index); on a cold cache the walk that follows waits
// on the disk for most of an unchanged re-backup. Started before Repository::Open and destroyed
// right before Backup, it lets the two overlap. It reads no file content, follows no symlinks,
// ignores excludes and errors, and stops within one directory entry of being destroyed.
class MetadataPrefetch {
 public:
  explicit MetadataPrefetch(const std::vector<std::string>& paths, int threads = 4);
  ~MetadataPrefetch();
  MetadataPrefetch(const MetadataPrefetch&) = delete;
  MetadataPrefetch& operator=(const MetadataPrefetch&) = delete;
  // Waits until every directory has been listed (tests), or returns at once when stopped.
  void WaitDone();
  uint64_t entries() const { return entries_.load(); }  // stat-ed so far

 private:
  void Run();
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::string> dirs_;  // to list
  int busy_ = 0;                   // threads listing a directory
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> entries_{0};
  std::vector<std::thread> threads_;
};

}  // namespace dumont::snapshot
