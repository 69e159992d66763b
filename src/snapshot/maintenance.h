// check, forget (retention policy) and prune.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "snapshot/repository.h"

namespace dumont::snapshot {

struct CheckReport {
  std::vector<std::string> errors;    // the repository is damaged
  std::vector<std::string> warnings;  // harmless leftovers (e.g. packs of an interrupted backup)
  uint64_t packs = 0, blobs = 0, snapshots = 0, trees = 0, bytes_read = 0;
  nlohmann::json ToJson() const;
};

// Structure: every indexed pack exists and is long enough, every snapshot's trees and data blobs are
// indexed. With read_data: every pack is downloaded, its hash, header and every blob verified.
Result<CheckReport> Check(Repository& repo, bool read_data,
                          const std::function<void(const std::string&)>& progress = nullptr);

struct RetentionPolicy {
  int keep_last = 0, keep_hourly = 0, keep_daily = 0, keep_weekly = 0;
  bool Empty() const { return !keep_last && !keep_hourly && !keep_daily && !keep_weekly; }
};

// Pure: which of `times` (Unix nanoseconds, any order) to keep. Each rule keeps the newest snapshot of
// each of its N most recent periods (UTC hours, days, ISO weeks); keep_last keeps the N newest.
std::vector<bool> ApplyRetention(const std::vector<int64_t>& times, const RetentionPolicy& p);

struct ForgetResult {
  std::vector<std::string> kept, removed;  // snapshot ids
};
// Applies the policy per group (hostname + paths) and removes the other manifests.
Result<ForgetResult> Forget(Repository& repo, const RetentionPolicy& p, bool dry_run);

struct PruneResult {
  uint64_t packs_deleted = 0, packs_repacked = 0, blobs_removed = 0, bytes_freed = 0;
  nlohmann::json ToJson() const;
};
struct RepairIndexResult {
  uint64_t packs = 0, blobs = 0, index_files_replaced = 0;
  std::vector<std::string> unreadable;  // packs whose header cannot be read, with the reason
  nlohmann::json ToJson() const;
};
// Rebuilds the index from the packs' headers, for a repository whose index files are lost or
// damaged (open it with load_index = false), under an exclusive lock taken by the caller. Reads
// only each pack's tail. The new index is written before the old files go, so a crash leaves a
// repository that opens. Packs whose header cannot be read are reported and left in place.
Result<RepairIndexResult> RepairIndex(Repository& repo, const std::function<void(const std::string&)>& progress = nullptr);

// Removes data no snapshot uses. Order: new packs -> new index -> old indexes -> old packs, under an
// exclusive lock (taken by the caller).
Result<PruneResult> Prune(Repository& repo);

}  // namespace dumont::snapshot
