// Trees: one blob (type tree) per directory, holding its entries sorted by name as JSON. A node's
// name is one path component; names are validated on read, so a manifest can never direct a restore
// outside its target ("..", "/", empty names and duplicates are rejected as corruption).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "snapshot/crypto.h"

namespace dumont::snapshot {

struct Node {
  std::string name;
  std::string type;  // file | dir | symlink
  uint32_t mode = 0;  // permission bits (07777)
  uint32_t uid = 0, gid = 0;
  int64_t mtime_ns = 0, ctime_ns = 0;
  uint64_t inode = 0, dev = 0, nlink = 1;
  uint64_t size = 0;
  std::vector<Id> content;       // files
  std::optional<Id> subtree;     // dirs
  std::string target;            // symlinks
};

std::string EncodeTree(std::vector<Node> nodes);  // sorts by name
// Errors name `where` (the directory's path in the snapshot).
Result<std::vector<Node>> DecodeTree(std::string_view blob, const std::string& where);
bool ValidName(const std::string& name);
bool ValidUtf8(std::string_view s);

}  // namespace dumont::snapshot
