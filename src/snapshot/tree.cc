#include "snapshot/tree.h"

#include <algorithm>
#include <charconv>
#include <iterator>
#include <set>

#include <nlohmann/json.hpp>

#include "common/random.h"
#include "snapshot/json_scan.h"

namespace dumont::snapshot {

using nlohmann::json;

bool ValidName(const std::string& n) {
  return !n.empty() && n != "." && n != ".." && n.find('/') == std::string::npos && n.find('\0') == std::string::npos;
}

bool ValidUtf8(std::string_view s) {
  size_t i = 0, n = s.size();
  while (i < n) {
    unsigned char c = s[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len = c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3 : c >= 0xf0 && c <= 0xf4 ? 4 : 0;
    if (!len || i + len > n) return false;
    unsigned char c1 = s[i + 1];
    // The second byte's range excludes overlong forms, surrogates and code points past U+10FFFF.
    unsigned char lo = c == 0xe0 ? 0xa0 : c == 0xf0 ? 0x90 : 0x80;
    unsigned char hi = c == 0xed ? 0x9f : c == 0xf4 ? 0x8f : 0xbf;
    if (c1 < lo || c1 > hi) return false;
    for (size_t k = 2; k < len; ++k) {
      if ((static_cast<unsigned char>(s[i + k]) & 0xc0) != 0x80) return false;
    }
    i += len;
  }
  return true;
}

namespace {
// Names and link targets are bytes, not text: one that is not valid UTF-8 (JSON cannot carry it)
// is stored exactly in "<key>_raw" (base64url), with a readable U+FFFD-replaced copy in "<key>".
void PutBytes(json& j, const char* key, const std::string& v) {
  j[key] = v;
  if (!ValidUtf8(v)) j[std::string(key) + "_raw"] = Base64UrlEncode(v);
}

std::string EncodeTreeGeneral(const std::vector<Node>& nodes) {
  json arr = json::array();
  for (const auto& n : nodes) {
    json j = {{"type", n.type}, {"type", n.type}, {"mode", n.mode}, {"uid", n.uid}, {"gid", n.gid},
              {"mtime_ns", n.mtime_ns}, {"ctime_ns", n.ctime_ns}, {"inode", n.inode}, {"dev", n.dev},
              {"nlink", n.nlink}, {"size", n.size}};
    PutBytes(j, "name", n.name);
    if (n.type == "file") {
      json c = json::array();
      for (const auto& id : n.content) c.push_back(IdHex(id));
      j["content"] = c;
    }
    if (n.subtree) j["subtree"] = IdHex(*n.subtree);
    if (n.type == "symlink") PutBytes(j, "target", n.target);
    arr.push_back(j);
  }
  return json{{"nodes", arr}}.dump(-1, ' ', false, json::error_handler_t::replace);
}

// Strings that nlohmann writes as they are: printable ASCII without quote or backslash.
bool Plain(std::string_view s) {
  for (unsigned char c : s) {
    if (c < 0x20 || c > 0x7e || c == '"' || c == '\\') return false;
  }
  return true;
}

// The same bytes as EncodeTreeGeneral (keys in nlohmann's sorted order, no spaces) for trees
// whose strings are all plain; false otherwise. Encoding changed directories with the DOM was a
// fifth of a 2 % mutated re-backup.
bool FastEncodeTree(const std::vector<Node>& nodes, std::string* out) {
  out->clear();
  out->reserve(64 + nodes.size() * 320);
  char num[24];
  auto put_num = [&](auto v) {
    auto r = std::to_chars(num, num + sizeof num, v);
    out->append(num, r.ptr);
  };
  auto put_id = [&](const Id& id) { out->append("\"").append(IdHex(id)).push_back('"'); };
  out->append("{\"nodes\":[");
  for (size_t i = 0; i < nodes.size(); ++i) {
    const Node& n = nodes[i];
    if (!Plain(n.name) || !Plain(n.type) || !Plain(n.target)) return false;
    bool file = n.type == "file", link = n.type == "symlink";
    if (i) out->push_back(',');
    out->push_back('{');
    if (file) {
      out->append("\"content\":[");
      for (size_t c = 0; c < n.content.size(); ++c) {
        if (c) out->push_back(',');
        put_id(n.content[c]);
      }
      out->append("],");
    }
    out->append("\"ctime_ns\":"), put_num(n.ctime_ns);
    out->append(",\"dev\":"), put_num(n.dev);
    out->append(",\"gid\":"), put_num(n.gid);
    out->append(",\"inode\":"), put_num(n.inode);
    out->append(",\"mode\":"), put_num(n.mode);
    out->append(",\"mtime_ns\":"), put_num(n.mtime_ns);
    out->append(",\"name\":\"").append(n.name);
    out->append("\",\"nlink\":"), put_num(n.nlink);
    out->append(",\"size\":"), put_num(n.size);
    if (n.subtree) out->append(",\"subtree\":"), put_id(*n.subtree);
    if (link) out->append(",\"target\":\"").append(n.target).push_back('"');
    out->append(",\"type\":\"").append(n.type);
    out->append("\",\"uid\":"), put_num(n.uid);
    out->push_back('}');
  }
  out->append("]}");
  return true;
}
}  // namespace

std::string EncodeTree(std::vector<Node> nodes) {
  std::sort(nodes.begin(), nodes.end(), [](const Node& a, const Node& b) { return a.name < b.name; });
  std::string out;
  if (FastEncodeTree(nodes, &out)) return out;
  return EncodeTreeGeneral(nodes);
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
  // "<key>_raw" (base64url of the exact bytes) wins over the readable "<key>".
  auto bytes = [&](const json& e, const std::string& key, std::string* out) {
    if (!e.contains(key + "_raw")) return *out = e.at(key).get<std::string>(), true;
    const json& raw = e.at(key + "_raw");
    return raw.is_string() && Base64UrlDecode(raw.get<std::string>(), out);
  };
  try {
    for (const auto& e : j["nodes"]) {
      Node n;
      if (!bytes(e, "name", &n.name)) return bad("an entry's name_raw is not base64url");
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
        if (!bytes(e, "target", &n.target)) return bad("target_raw of '" + n.name + "' is not base64url");
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
