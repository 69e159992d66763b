#include "snapshot/tree.h"

#include <algorithm>
#include <iterator>
#include <set>

#include <nlohmann/json.hpp>

#include "snapshot/json_scan.h"

namespace dumont::snapshot {

using nlohmann::json;

bool ValidName(const std::string& n) {
  return !n.empty() && n != "." && n != ".." && n.find('/') == std::string::npos && n.find('\0') == std::string::npos;
}

std::string EncodeTree(std::vector<Node> nodes) {
  std::sort(nodes.begin(), nodes.end(), [](const Node& a, const Node& b) { return a.name < b.name; });
  json arr = json::array();
  for (const auto& n : nodes) {
    json j = {{"name", n.name}, {"type", n.type}, {"mode", n.mode}, {"uid", n.uid}, {"gid", n.gid},
              {"mtime_ns", n.mtime_ns}, {"ctime_ns", n.ctime_ns}, {"inode", n.inode}, {"dev", n.dev},
              {"nlink", n.nlink}, {"size", n.size}};
    if (n.type == "file") {
      json c = json::array();
      for (const auto& id : n.content) c.push_back(IdHex(id));
      j["content"] = c;
    }
    if (n.subtree) j["subtree"] = IdHex(*n.subtree);
    if (n.type == "symlink") j["target"] = n.target;
    arr.push_back(j);
  }
  return json{{"nodes", arr}}.dump(-1, ' ', false, json::error_handler_t::replace);
}

namespace {
// The fast path for the trees EncodeTree writes (every backup with a parent and every restore
// decodes all of a snapshot's trees: nlohmann's DOM was ~45 % of an unchanged re-backup). Accepts
// only known keys and sorted, unique, valid names; anything else goes to the general parser below.
bool FastDecodeTree(std::string_view blob, std::vector<Node>* out) {
  JsonScan j(blob);
  auto node = [&] {
    Node n;
    unsigned seen = 0;
    bool ok = j.Object([&](std::string_view k) {
      static constexpr std::string_view kKeys[] = {"name",  "type",  "mode",  "uid",     "gid",     "mtime_ns", "ctime_ns",
                                                   "inode", "dev",   "nlink", "size",    "content", "subtree",  "target"};
      unsigned bit = 0;
      for (unsigned i = 0; i < std::size(kKeys); ++i) {
        if (k == kKeys[i]) bit = 1u << i;
      }
      if (!bit || (seen & bit)) return false;
      seen |= bit;
      std::string_view v;
      switch (bit) {
        case 1: return j.Str(&v) && (n.name.assign(v), true);
        case 2: return j.Str(&v) && (n.type.assign(v), true);
        case 4: return j.Int(&n.mode);
        case 8: return j.Int(&n.uid);
        case 16: return j.Int(&n.gid);
        case 32: return j.Int(&n.mtime_ns);
        case 64: return j.Int(&n.ctime_ns);
        case 128: return j.Int(&n.inode);
        case 256: return j.Int(&n.dev);
        case 512: return j.Int(&n.nlink);
        case 1024: return j.Int(&n.size);
        case 2048: return j.Array([&] { return j.IdValue(&n.content.emplace_back()); });
        case 4096: return j.IdValue(&n.subtree.emplace());
        default: return j.Str(&v) && (n.target.assign(v), true);
      }
    });
    if (!ok || (seen & 2047) != 2047 || !ValidName(n.name)) return false;
    bool fits = n.type == "file"      ? (seen & 2048) && !(seen & (4096 | 8192))
                : n.type == "dir"     ? (seen & 4096) && !(seen & (2048 | 8192))
                : n.type == "symlink" ? (seen & 8192) && !(seen & (2048 | 4096))
                                      : false;
    if (!fits || (!out->empty() && !(out->back().name < n.name))) return false;  // unsorted or duplicate
    out->push_back(std::move(n));
    return true;
  };
  bool ok = j.Object([&](std::string_view k) { return k == "nodes" && j.Array(node); });
  return ok && j.AtEnd();
}
}  // namespace

Result<std::vector<Node>> DecodeTree(std::string_view blob, const std::string& where) {
  {
    std::vector<Node> fast;
    if (FastDecodeTree(blob, &fast)) return fast;
  }
  auto bad = [&](const std::string& why) {
    return Err(Status::Corruption("tree of '" + (where.empty() ? std::string("/") : where) + "' is invalid: " + why));
  };
  json j = json::parse(blob, nullptr, false);
  if (!j.is_object() || !j.contains("nodes") || !j["nodes"].is_array()) return bad("not a node list");
  std::vector<Node> out;
  std::set<std::string> seen;
  try {
    for (const auto& e : j["nodes"]) {
      Node n;
      n.name = e.at("name");
      if (!ValidName(n.name)) return bad("entry name '" + n.name + "' is not a single path component");
      if (!seen.insert(n.name).second) return bad("entry name '" + n.name + "' appears twice");
      n.type = e.at("type");
      n.mode = e.at("mode");
      n.uid = e.at("uid");
      n.gid = e.at("gid");
      n.mtime_ns = e.at("mtime_ns");
      n.ctime_ns = e.at("ctime_ns");
      n.inode = e.at("inode");
      n.dev = e.at("dev");
      n.nlink = e.at("nlink");
      n.size = e.at("size");
      if (n.type == "file") {
        for (const auto& c : e.at("content")) {
          Id id;
          if (!c.is_string() || !ParseId(c.get<std::string>(), &id)) return bad("bad content id in '" + n.name + "'");
          n.content.push_back(id);
        }
      } else if (n.type == "dir") {
        Id id;
        if (!ParseId(e.at("subtree").get<std::string>(), &id)) return bad("bad subtree id in '" + n.name + "'");
        n.subtree = id;
      } else if (n.type == "symlink") {
        n.target = e.at("target");
      } else {
        return bad("unknown node type '" + n.type + "'");
      }
      out.push_back(std::move(n));
    }
  } catch (const std::exception& ex) {
    return bad(ex.what());
  }
  return out;
}

}  // namespace dumont::snapshot
