// Repository: keys, config, the in-memory index, blob storage in packs, snapshot manifests and locks,
// on top of a Backend. The on-disk format is docs/repository-format.md; this file implements it.
//
// Write ordering (the crash-safety invariant): a blob is referenced by an index only after its pack
// is stored; a snapshot is stored only after the index that covers all its blobs. Deletion (prune)
// runs in reverse under an exclusive lock. A crash therefore leaves at worst unreferenced packs
// (reported by check, removed by prune), never a snapshot that points at missing data.
//
// Thread safety: SaveBlob, LoadBlob, HasBlob may be called from many threads; Flush and the snapshot
// methods from one thread at a time.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/big_alloc.h"
#include "common/status.h"
#include "common/thread_pool.h"
#include "snapshot/backend.h"
#include "snapshot/chunker.h"
#include "snapshot/compress.h"
#include "snapshot/crypto.h"

namespace dumont::snapshot {

// Pack buffers are page-aligned (the local backend writes them with O_DIRECT as they are, without
// copying them through an aligned bounce buffer) and backed by huge pages (common/big_alloc.h).
using PackBuffer = std::basic_string<char, std::char_traits<char>, BigAllocator<char>>;

// 3: a pack is named by the SHA-256 of its header and trailer; the trailer carries the XXH3-128 of
// its blobs (VerifyPackBytes). 2: blobs are sealed with their index entry as GCM associated data
// (BlobAad); packs are named by the SHA-256 of all their bytes. 1 (no associated data) and 2 are
// still read and written: a repository keeps the version it was created with.
inline constexpr int kRepoVersion = 3;
inline constexpr int kOldestRepoVersion = 1;

enum class BlobType : uint8_t { kData = 0, kTree = 1 };

struct BlobLocation {
  Id pack;
  BlobType type = BlobType::kData;
  uint32_t offset = 0;
  uint32_t length = 0;      // stored (sealed) length in the pack
  uint32_t raw_length = 0;  // plaintext length
  Compression compression = Compression::kNone;
};

struct RepoConfig {
  int version = kRepoVersion;
  std::string id;
  ChunkerParams chunker;
  uint64_t gear_seed = 0;
  std::string created;
};

struct SnapshotManifest {
  std::string time;  // RFC 3339 UTC
  int64_t time_unix = 0;
  int64_t time_ns = 0;  // orders snapshots taken within one second
  Id tree{};
  std::vector<std::string> paths;
  std::string hostname;
  std::string username;
  std::vector<std::string> tags;
  std::optional<Id> parent;
  nlohmann::json summary = nlohmann::json::object();
};

struct InitOptions {
  bool fast_kdf = false;  // tests only
  ChunkerParams chunker;
  int version = kRepoVersion;  // tests make version 1 repositories to check they still work
};

struct PackHeaderEntry {
  Id id;
  BlobType type;
  uint32_t offset, length, raw_length;
  Compression compression;
};

// Bytes after a pack's sealed header: its length (4), and from version 3 first the XXH3-128 of the
// blobs before the header (16).
inline constexpr size_t kPackChecksumSize = 16;
inline size_t PackTrailerSize(int version) { return version >= 3 ? kPackChecksumSize + 4 : 4; }
// Parses a pack file of a repository `version`: trailer, sealed header. Errors name the pack.
Result<std::vector<PackHeaderEntry>> ReadPackHeader(const MasterKey& key, const std::string& pack_name,
                                                    std::string_view pack, int version);
// The same reading only the pack's tail from `backend` (pack_size from List or Stat).
Result<std::vector<PackHeaderEntry>> LoadPackHeader(Backend& backend, const MasterKey& key, const std::string& pack_name,
                                                    int64_t pack_size, int version);
// Checks a whole pack's bytes against its name without the key. Versions 1-2: the name is the
// SHA-256 of the pack. Version 3: the name is the SHA-256 of the header and trailer, and the trailer
// holds the XXH3-128 of the blobs. A Corruption error names the pack and what does not match.
Status VerifyPackBytes(const Id& name, std::string_view pack, int version);

class Repository {
 public:
  static Result<std::unique_ptr<Repository>> Init(std::unique_ptr<Backend> backend, std::string_view password,
                                                  const InitOptions& opts = {});
  // load_index false: for `repair index`, which must open a repository whose index is damaged.
  static Result<std::unique_ptr<Repository>> Open(std::unique_ptr<Backend> backend, std::string_view password,
                                                  bool load_index = true);
  ~Repository();

  Backend& backend() { return *backend_; }
  const RepoConfig& config() const { return config_; }
  const MasterKey& key() const { return key_; }
  Chunker MakeChunker() const { return Chunker(config_.chunker, config_.gear_seed); }

  void SetCompression(CompressionMode m) { compression_ = m; }
  void SetPackSize(size_t bytes) { pack_target_ = bytes; }

  Id BlobId(std::string_view plaintext) const { return ContentId(key_, plaintext); }
  // The associated data a blob is sealed with: from version 2, its id, compression and plaintext
  // length, so a tag that verifies proves the key holder stored these bytes as this blob. Empty
  // for version 1.
  std::string BlobAad(const Id& id, Compression c, uint64_t raw_length) const;
  // Version 2: a blob whose tag verifies against BlobAad is the blob its id names (unless the
  // writer hashed other bytes than it sealed), so restore skips re-hashing; check --read-data
  // still recomputes every id.
  bool BlobsBound() const { return config_.version >= 2; }
  bool HasBlob(const Id& id);
  // Stores the blob unless the repository already has it (or it is being stored). Returns true if
  // this call stored it. `stored_bytes` (optional) receives the sealed size added.
  Result<bool> SaveBlob(BlobType t, const Id& id, std::string_view plaintext, uint64_t* stored_bytes = nullptr);
  Result<std::string> LoadBlob(const Id& id);
  // Loads the whole tree graph under `root` breadth-first, every tree of a level in parallel
  // (`parallelism` loads at once), into a cache that LoadBlob answers from once per tree. On a remote
  // backend a directory walk is otherwise one round trip per directory, in sequence. Best effort: a
  // tree that fails to load here is loaded (and its error reported) by the walk itself.
  void PrefetchTrees(const Id& root, int parallelism);
  std::optional<BlobLocation> Lookup(const Id& id);
  // Writes every pending pack, then an index file covering them. After Flush returns ok, every
  // saved blob is durable and indexed.
  Status Flush();

  Result<Id> SaveSnapshot(const SnapshotManifest& m);
  Result<std::vector<std::pair<Id, SnapshotManifest>>> ListSnapshots();  // oldest first
  Result<SnapshotManifest> LoadSnapshot(const Id& id);
  // "latest", a full id or a unique prefix (at least 4 hex characters).
  Result<std::pair<Id, SnapshotManifest>> FindSnapshot(const std::string& ref);

  // Loads every index file; called by Open. Errors name the index file.
  Status LoadIndex();
  size_t IndexedBlobs();
  std::vector<std::string> IndexFiles() const { return index_files_; }
  // Snapshot of the whole index (pack -> blobs), for check and prune.
  std::map<Id, std::vector<std::pair<Id, BlobLocation>>> IndexByPack();
  // Drops a pack's blobs from the in-memory index (prune, before copying or deleting it).
  void ForgetPack(const Id& pack);
  // Replaces all index files with one covering exactly `keep` (prune): writes it, removes the
  // loaded index files (or the `remove` list: repair index, whose old files may not load), reloads.
  Status RewriteIndex(const std::map<Id, std::vector<std::pair<Id, BlobLocation>>>& keep,
                      const std::vector<std::string>* remove = nullptr);

  // Keys
  Status AddKey(std::string_view password, bool fast_kdf);
  Status RemoveKey(const std::string& key_name);
  // Adds a key for `password`, switches to it and removes the key this repository was opened with.
  Status ChangePassword(std::string_view password, bool fast_kdf);
  const std::string& key_name() const { return key_name_; }

  // Locks: shared for backup, exclusive for forget/prune. Stale locks (not refreshed for 30 min,
  // or held by a dead process on this host) are ignored and removed. A held lock is re-saved with
  // a new time every 5 min, so a backup that runs for hours is never taken for stale (a prune
  // elsewhere would delete its packs, uploaded but not yet indexed, as leftovers).
  class Lock {
   public:
    Lock(Repository* r, std::string name, std::string body);
    ~Lock();
    int64_t refreshes() const { return refreshes_.load(); }

   private:
    void Refresh();
    Repository* repo_;
    std::string name_;
    nlohmann::json body_;
    std::mutex mu_;
    std::condition_variable cv_;
    bool stop_ = false;
    std::atomic<int64_t> refreshes_{0};
    std::thread refresher_;
  };
  Result<std::unique_ptr<Lock>> LockRepo(bool exclusive);
  Status RemoveStaleLocks(bool all);
  // Tests shorten these (seconds): how often a held lock is refreshed, and the age past which
  // another process treats a lock as stale.
  void SetLockTiming(double refresh_s, int64_t stale_s) { lock_refresh_s_ = refresh_s, lock_stale_s_ = stale_s; }

 private:
  explicit Repository(std::unique_ptr<Backend> b);
  struct PendingPack;
  Status SealAndQueueLocked(std::unique_lock<std::mutex>& lock, std::shared_ptr<PendingPack>& open);
  Status WritePack(const Id& id, const PendingPack& p, bool name_is_sha256);
  // Unseals, decompresses and verifies one blob read from its pack.
  Result<std::string> OpenBlob(const Id& id, const BlobLocation& loc, std::string_view sealed) const;
  Status WriteIndexLocked(std::unique_lock<std::mutex>& lock);
  Result<std::string> SaveJsonFile(FileType t, const nlohmann::json& j);
  Result<std::string> SaveJsonText(FileType t, std::string_view text);  // text: valid JSON
  Result<std::string> LoadJsonText(const Handle& h);  // verified, unsealed, decompressed
  Result<nlohmann::json> LoadJsonFile(const Handle& h);
  // Open starts loading the index and snapshot files (their sealed bytes) while it derives the key,
  // which is ~0.1 s of CPU; on a remote repository those were sequential round trips after it.
  // LoadJsonText takes a fetched copy instead of loading the file. Such files are named by the
  // SHA-256 of their bytes and never change, so a copy is the file, and it is verified the same
  // way; which files are read is always decided by a fresh listing, never by the fetch's.
  struct FileFetch;
  void StartFileFetch();
  std::optional<std::string> TakeFetched(const Handle& h);

  std::unique_ptr<Backend> backend_;
  RepoConfig config_;
  MasterKey key_;
  std::string key_name_;
  CompressionMode compression_ = CompressionMode::kAuto;
  size_t pack_target_ = 16 * 1024 * 1024;
  static constexpr size_t kMaxUploadBytes = 256 << 20;  // packs uploading at once (SealAndQueueLocked)
  double lock_refresh_s_ = 5 * 60;
  int64_t lock_stale_s_ = 30 * 60;

  std::mutex mu_;
  std::mutex tree_cache_mu_;
  std::unordered_map<Id, std::string, IdHash> tree_cache_;  // filled by PrefetchTrees, drained by LoadBlob
  std::condition_variable cv_;
  std::unordered_map<Id, BlobLocation, IdHash> index_;
  std::unordered_set<Id, IdHash> pending_ids_;  // in an open or uploading pack
  std::shared_ptr<PendingPack> open_packs_[2];  // data, trees
  // Buffers of uploaded data packs, reused for the next ones (at most kSparePacks): a fresh 17 MiB
  // buffer per pack was either page faults (mmap) or, allocated by many threads, memory that each
  // thread's malloc arena kept.
  static constexpr size_t kSparePacks = 4;
  std::vector<PackBuffer> spare_packs_;
  int uploads_in_flight_ = 0;
  Status upload_error_;  // sticky
  std::vector<std::pair<Id, std::vector<std::pair<Id, BlobLocation>>>> unindexed_;  // uploaded packs
  std::vector<std::string> index_files_;
  std::unique_ptr<ThreadPool> uploaders_;
  std::shared_ptr<FileFetch> fetch_;  // set by Open before the repository is shared
  std::thread fetch_thread_;
};

std::string Rfc3339(int64_t unix_seconds);

}  // namespace dumont::snapshot
