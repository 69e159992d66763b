#include "snapshot/tree.h"

#include <algorithm>
#include <set>

#include <nlohmann/json.hpp>

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

Result<std::vector<Node>> DecodeTree(std::string_view blob, const std::string& where) {
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
