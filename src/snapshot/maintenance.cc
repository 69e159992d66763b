#include "snapshot/maintenance.h"

#include <algorithm>
#include <atomic>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "snapshot/tree.h"

namespace dumont::snapshot {

using nlohmann::json;

json CheckReport::ToJson() const {
  return {{"ok", errors.empty()}, {"errors", errors}, {"warnings", warnings}, {"packs", packs},
          {"blobs", blobs}, {"snapshots", snapshots}, {"trees", trees}, {"bytes_read", bytes_read}};
}

json PruneResult::ToJson() const {
  return {{"packs_deleted", packs_deleted}, {"packs_repacked", packs_repacked}, {"blobs_removed", blobs_removed},
          {"bytes_freed", bytes_freed}};
}

json RepairIndexResult::ToJson() const {
  return {{"packs", packs}, {"blobs", blobs}, {"index_files_replaced", index_files_replaced}, {"unreadable_packs", unreadable}};
}

Result<RepairIndexResult> RepairIndex(Repository& repo, const std::function<void(const std::string&)>& progress) {
  auto old = repo.backend().List(FileType::kIndex);
  if (!old) return Err(old.error());
  auto packs = repo.backend().List(FileType::kPack);
  if (!packs) return Err(packs.error());
  RepairIndexResult r;
  std::map<Id, std::vector<std::pair<Id, BlobLocation>>> by_pack;
  std::mutex mu;
  // Each header is one or two small ranged reads: run as many as the backend allows, up to 16.
  size_t n = std::clamp<size_t>(static_cast<size_t>(repo.backend().Connections()), 1, 16);
  ParallelFor(packs->size(), n, [&](size_t i) {
    const FileInfo& f = (*packs)[i];
    Id pack;
    auto header = ParseId(f.name, &pack) ? LoadPackHeader(repo.backend(), repo.key(), f.name, f.size, repo.config().version)
                                         : Result<std::vector<PackHeaderEntry>>(Err(Status::Corruption("'" + f.name + "' is not a pack name")));
    std::lock_guard l(mu);
    if (!header) {
      r.unreadable.push_back(header.error().message());
      return;
    }
    auto& blobs = by_pack[pack];
    for (const auto& e : *header) {
      BlobLocation loc;
      loc.pack = pack;
      loc.type = e.type;
      loc.offset = e.offset;
      loc.length = e.length;
      loc.raw_length = e.raw_length;
      loc.compression = e.compression;
      blobs.emplace_back(e.id, loc);
    }
    ++r.packs;
    r.blobs += header->size();
    if (progress && r.packs % 100 == 0) progress("read " + std::to_string(r.packs) + " of " + std::to_string(packs->size()) + " pack headers");
  });
  std::sort(r.unreadable.begin(), r.unreadable.end());
  std::vector<std::string> remove;
  for (const auto& f : *old) remove.push_back(f.name);
  r.index_files_replaced = remove.size();
  DUMONT_RETURN_IF_ERROR(repo.RewriteIndex(by_pack, &remove));
  return r;
}

namespace {

// Walks every tree reachable from the snapshots, collecting used blobs; problems go to `errors`.
void MarkUsed(Repository& repo, const std::vector<std::pair<Id, SnapshotManifest>>& snaps,
              std::set<Id>* used, std::vector<std::string>* errors, uint64_t* trees) {
  std::set<Id> seen_trees;
  std::function<void(const Id&, const std::string&, const std::string&)> walk =
      [&](const Id& tree, const std::string& snap, const std::string& where) {
        if (!seen_trees.insert(tree).second) return;
        used->insert(tree);
        ++*trees;
        auto blob = repo.LoadBlob(tree);
        if (!blob) {
          errors->push_back("snapshot " + snap + ": tree of '" + where + "': " + blob.error().message());
          return;
        }
        auto nodes = DecodeTree(*blob, where);
        if (!nodes) {
          errors->push_back("snapshot " + snap + ": " + nodes.error().message());
          return;
        }
        for (const auto& n : *nodes) {
          std::string path = where.empty() ? n.name : where + "/" + n.name;
          if (n.type == "dir") {
            walk(*n.subtree, snap, path);
          } else if (n.type == "file") {
            for (const auto& id : n.content) {
              used->insert(id);
              if (!repo.Lookup(id)) errors->push_back("snapshot " + snap + ": file '" + path + "': blob " + IdHex(id) + " is missing");
            }
          }
        }
      };
  for (const auto& [id, m] : snaps) walk(m.tree, IdHex(id).substr(0, 8), "");
}

}  // namespace

Result<CheckReport> Check(Repository& repo, bool read_data, const std::function<void(const std::string&)>& progress) {
  CheckReport r;
  auto by_pack = repo.IndexByPack();
  auto listed = repo.backend().List(FileType::kPack);
  if (!listed) return Err(listed.error());
  std::map<std::string, int64_t> present;
  for (const auto& f : *listed) present[f.name] = f.size;
  for (const auto& [pack, blobs] : by_pack) {
    std::string name = IdHex(pack);
    r.blobs += blobs.size();
    auto it = present.find(name);
    if (it == present.end()) {
      r.errors.push_back("pack " + name + " is referenced by the index but missing");
      continue;
    }
    int64_t need = 0;
    for (const auto& [id, l] : blobs) need = std::max<int64_t>(need, int64_t{l.offset} + l.length);
    if (it->second < need + 4) r.errors.push_back("pack " + name + " is truncated (" + std::to_string(it->second) + " bytes)");
  }
  for (const auto& [name, size] : present) {
    Id id;
    if (!ParseId(name, &id) || !by_pack.count(id)) {
      r.warnings.push_back("pack " + name + " is not indexed (left by an interrupted backup; `prune` removes it)");
    }
  }
  r.packs = by_pack.size();
  auto snaps = repo.ListSnapshots();
  if (!snaps) {
    r.errors.push_back(snaps.error().message());
  } else {
    r.snapshots = snaps->size();
    std::set<Id> used;
    MarkUsed(repo, *snaps, &used, &r.errors, &r.trees);
  }
  if (read_data) {
    for (const auto& [pack, blobs] : by_pack) {
      std::string name = IdHex(pack);
      if (!present.count(name)) continue;
      if (progress) progress(name);
      auto data = repo.backend().Load({FileType::kPack, name});
      if (!data) {
        r.errors.push_back("pack " + name + ": " + data.error().message());
        continue;
      }
      r.bytes_read += data->size();
      if (Status v = VerifyPackBytes(pack, *data, repo.config().version); !v.ok()) {
        r.errors.push_back(v.message());
        continue;
      }
      auto header = ReadPackHeader(repo.key(), name, *data, repo.config().version);
      if (!header) {
        r.errors.push_back(header.error().message());
        continue;
      }
      std::map<Id, PackHeaderEntry> by_id;
      for (const auto& e : *header) by_id[e.id] = e;
      for (const auto& [id, l] : blobs) {
        auto h = by_id.find(id);
        if (h == by_id.end() || h->second.offset != l.offset || h->second.length != l.length) {
          r.errors.push_back("pack " + name + ": blob " + IdHex(id) + " is indexed but not where the pack says");
          continue;
        }
        auto body = Unseal(repo.key(), std::string_view(*data).substr(l.offset, l.length),
                           repo.BlobAad(id, l.compression, l.raw_length));
        auto plain = body ? Decompress(*body, l.compression, l.raw_length) : Result<std::string>(Err(body.error()));
        if (!plain || repo.BlobId(*plain) != id) {
          r.errors.push_back("pack " + name + ": blob " + IdHex(id) + " is damaged");
        }
      }
    }
  }
  return r;
}

std::vector<bool> ApplyRetention(const std::vector<int64_t>& times, const RetentionPolicy& p) {
  std::vector<size_t> order(times.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return times[a] > times[b]; });
  std::vector<bool> keep(times.size(), false);
  for (int i = 0; i < p.keep_last && i < static_cast<int>(order.size()); ++i) keep[order[i]] = true;
  auto bucket_rule = [&](int n, auto bucket_of) {
    std::set<int64_t> buckets;
    for (size_t idx : order) {
      if (static_cast<int>(buckets.size()) >= n) break;
      int64_t b = bucket_of(times[idx]);
      if (buckets.insert(b).second) keep[idx] = true;
    }
  };
  auto floor_div = [](int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); };
  const int64_t s = 1'000'000'000;
  if (p.keep_hourly) bucket_rule(p.keep_hourly, [&](int64_t t) { return floor_div(t, 3600 * s); });
  if (p.keep_daily) bucket_rule(p.keep_daily, [&](int64_t t) { return floor_div(t, 86400 * s); });
  // ISO weeks start on Monday; 1970-01-01 was a Thursday, so shift by 3 days.
  if (p.keep_weekly) bucket_rule(p.keep_weekly, [&](int64_t t) { return floor_div(t + 3 * 86400 * s, 7 * 86400 * s); });
  return keep;
}

Result<ForgetResult> Forget(Repository& repo, const RetentionPolicy& p, bool dry_run) {
  if (p.Empty()) {
    return Err(Status::InvalidArgument("no retention rule given: use --keep-last, --keep-hourly, --keep-daily or --keep-weekly"));
  }
  auto snaps = repo.ListSnapshots();
  if (!snaps) return Err(snaps.error());
  std::map<std::string, std::vector<size_t>> groups;
  for (size_t i = 0; i < snaps->size(); ++i) {
    const auto& m = (*snaps)[i].second;
    std::string key = m.hostname;
    for (const auto& path : m.paths) key += "\n" + path;
    groups[key].push_back(i);
  }
  ForgetResult out;
  for (const auto& [key, idxs] : groups) {
    std::vector<int64_t> times;
    for (size_t i : idxs) times.push_back((*snaps)[i].second.time_ns);
    auto keep = ApplyRetention(times, p);
    for (size_t k = 0; k < idxs.size(); ++k) {
      std::string id = IdHex((*snaps)[idxs[k]].first);
      if (keep[k]) {
        out.kept.push_back(id);
      } else {
        out.removed.push_back(id);
        if (!dry_run) DUMONT_RETURN_IF_ERROR(repo.backend().Remove({FileType::kSnapshot, id}));
      }
    }
  }
  return out;
}

Result<PruneResult> Prune(Repository& repo) {
  auto snaps = repo.ListSnapshots();
  if (!snaps) return Err(snaps.error());
  std::set<Id> used;
  std::vector<std::string> errors;
  uint64_t trees = 0;
  MarkUsed(repo, *snaps, &used, &errors, &trees);
  if (!errors.empty()) {
    return Err(Status::Corruption("refusing to prune a damaged repository (" + errors.front() +
                                  "); run `dumont snapshot check`"));
  }
  PruneResult r;
  auto by_pack = repo.IndexByPack();
  std::vector<Id> remove_packs;
  for (auto& [pack, blobs] : by_pack) {
    uint64_t total = 0, unused = 0;
    for (const auto& [id, l] : blobs) {
      total += l.length;
      if (!used.count(id)) unused += l.length;
    }
    if (unused == 0) {
      continue;
    } else if (unused == total) {
      remove_packs.push_back(pack);
      r.blobs_removed += blobs.size();
      r.bytes_freed += total;
    } else if (unused * 5 > total) {  // more than 20 % waste: copy the live blobs into new packs
      std::vector<std::pair<std::pair<Id, BlobType>, std::string>> live;
      for (const auto& [id, l] : blobs) {
        if (!used.count(id)) {
          ++r.blobs_removed;
          continue;
        }
        auto plain = repo.LoadBlob(id);
        if (!plain) return Err(plain.error());
        live.push_back({{id, l.type}, std::move(*plain)});
      }
      remove_packs.push_back(pack);
      ++r.packs_repacked;
      r.bytes_freed += unused;
      repo.ForgetPack(pack);
      for (auto& [key, data] : live) {
        auto saved = repo.SaveBlob(key.second, key.first, data);
        if (!saved) return Err(saved.error());
      }
    }
    // Packs with a little waste are kept whole; rewriting them would cost more than it frees.
  }
  // Packs no index mentions were left by interrupted backups; under the exclusive lock no backup
  // is running, so they can go.
  auto listed = repo.backend().List(FileType::kPack);
  if (!listed) return Err(listed.error());
  std::vector<FileInfo> orphans;
  for (const auto& f : *listed) {
    Id id;
    if (!ParseId(f.name, &id) || !by_pack.count(id)) orphans.push_back(f);
  }
  if (remove_packs.empty() && orphans.empty()) return r;
  for (const auto& p : remove_packs) repo.ForgetPack(p);
  DUMONT_RETURN_IF_ERROR(repo.Flush());
  // The index now holds kept packs plus the new ones.
  DUMONT_RETURN_IF_ERROR(repo.RewriteIndex(repo.IndexByPack()));
  for (const auto& p : remove_packs) {
    DUMONT_RETURN_IF_ERROR(repo.backend().Remove({FileType::kPack, IdHex(p)}));
    ++r.packs_deleted;
  }
  for (const auto& f : orphans) {
    DUMONT_RETURN_IF_ERROR(repo.backend().Remove({FileType::kPack, f.name}));
    ++r.packs_deleted;
    r.bytes_freed += static_cast<uint64_t>(f.size);
  }
  return r;
}

}  // namespace dumont::snapshot
