// Restorer: plans every read from the index up front (grouped by pack), fetches packs in parallel
// with ranged reads, verifies every chunk against its id, and pwrite()s into pre-sized files (the
// page-aligned middle of a large chunk with O_DIRECT: on VMs the kernel's copy into fresh page-cache
// pages was over half of a restore's CPU). All-zero pages are not written, so holes stay holes. Then symlinks, hard links, modes, owners (when root)
// and mtimes, directories last. Names come only from validated tree nodes and nothing is written
// through a symlink, so nothing lands outside the target.
#pragma once

#include <functional>
#include <string>

#include <nlohmann/json.hpp>

#include "snapshot/repository.h"

namespace dumont::snapshot {

struct RestoreOptions {
  std::string target;
  std::string include;  // a path inside the snapshot ("ws/data/x"); empty = everything
  int workers = 0;      // 0 = max(cores, backend connections)
  bool direct_io = true;  // write the page-aligned middle of large chunks with O_DIRECT
  uint64_t max_bytes_in_flight = 256ull << 20;  // pack data fetched and not yet written, all workers
};

struct RestoreProgress {
  uint64_t bytes_done = 0, bytes_total = 0;
  uint64_t files_total = 0;
  double elapsed_s = 0;
};

struct RestoreSummary {
  uint64_t files = 0, dirs = 0, symlinks = 0, hardlinks = 0;
  uint64_t bytes = 0, bytes_downloaded = 0;
  uint64_t bytes_written_direct = 0;  // of bytes, written around the page cache (O_DIRECT)
  uint64_t files_written_whole = 0;   // small one-blob files created and written in one go
  double duration_s = 0;
  nlohmann::json ToJson() const;
};

Result<RestoreSummary> Restore(Repository& repo, const Id& tree, const RestoreOptions& opts,
                               const std::function<void(const RestoreProgress&)>& progress = nullptr);

}  // namespace dumont::snapshot
