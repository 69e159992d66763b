// Backend: where a repository's files live (restic's model). Implementations: mem (tests), local
// (a directory), s3 (any S3-compatible server over libcurl). Files are written once and never
// modified (except locks); the repository layer above decides names and contents.
//
// Layout (the same on every backend, relative to the repository root or bucket prefix):
//   config              the repository config (encrypted)
//   keys/<id>           key files (the master key wrapped by a password-derived key)
//   data/<id[0:2]>/<id> packs
//   index/<id>          index files
//   snapshots/<id>      snapshot manifests
//   locks/<id>          locks
//
// Contract (every implementation MUST):
//  - Save is atomic: a reader sees the whole object or nothing, never a prefix, even if the process is
//    killed mid-write. Saving an existing name replaces it.
//  - Load returns exactly the requested range or an error: NotFound when the object is missing,
//    Corruption when it is shorter than the range asked for. length 0 means "to the end".
//  - Remove of a missing object succeeds (idempotent).
//  - List returns every object of a type with its size, in no particular order.
//  - Errors say whether a retry can help (Status::retryable()): network trouble, 5xx, 429 and
//    timeouts are retryable; 403, 404 and malformed answers are not.
//  - Thread-safe: up to Connections() operations run concurrently.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace dumont::snapshot {

enum class FileType { kConfig, kKey, kPack, kIndex, kSnapshot, kLock };
std::string_view FileTypeName(FileType t);  // "config", "keys", "data", "index", "snapshots", "locks"

struct Handle {
  FileType type;
  std::string name;  // hex id; ignored for kConfig
  // Save only: the caller vouches that `name` is the hex SHA-256 of the bytes saved (packs, index,
  // snapshot and key files are named so). The S3 backend then sends it as the SigV4 payload hash
  // instead of hashing the body again, and the server refuses the upload if it does not match.
  bool name_is_sha256 = false;
};

struct FileInfo {
  std::string name;
  int64_t size = 0;
};

// "data/ab/ab12..." for packs, "snapshots/<id>", "config".
std::string ObjectPath(const Handle& h);

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string Location() const = 0;  // for messages: a path or s3:URL (no secrets)
  // Prepares an empty repository location (creates directories, or checks the bucket exists and
  // creates it if allowed). Fails with AlreadyExists if a config is already there.
  virtual Status Create() = 0;
  virtual Status Save(const Handle& h, std::string_view data) = 0;
  virtual Result<std::string> Load(const Handle& h, int64_t offset = 0, int64_t length = 0) = 0;
  // Load into *out, reusing its capacity where the backend can (S3 writes the response body into
  // it). Restore refills a few range buffers: a fresh 16 MiB allocation per range cost page faults
  // and page zeroing. The default calls Load. On error *out is unspecified.
  virtual Status LoadInto(const Handle& h, int64_t offset, int64_t length, std::string* out) {
    auto r = Load(h, offset, length);
    if (!r) return r.error();
    *out = std::move(*r);
    return Status::Ok();
  }
  virtual Result<FileInfo> Stat(const Handle& h) = 0;
  virtual Status Remove(const Handle& h) = 0;
  virtual Result<std::vector<FileInfo>> List(FileType t) = 0;
  virtual int Connections() const = 0;
};

// Opens "DIR", "local:DIR", "mem:" (process-local, for tests) or "s3:http(s)://host[:port]/bucket[/prefix]".
// S3 credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_DEFAULT_REGION.
Result<std::unique_ptr<Backend>> OpenBackend(const std::string& location);

std::unique_ptr<Backend> NewMemBackend();
std::unique_ptr<Backend> NewLocalBackend(const std::string& dir);
// s3:http(s)://host[:port]/bucket[/prefix], wrapped in retries (backend_s3.cc).
Result<std::unique_ptr<Backend>> OpenS3Backend(const std::string& location);

}  // namespace dumont::snapshot
