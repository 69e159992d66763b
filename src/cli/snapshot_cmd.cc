#include "cli/snapshot_cmd.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <set>

#include <nlohmann/json.hpp>

#include "snapshot/archiver.h"
#include "snapshot/maintenance.h"
#include "snapshot/repository.h"
#include "snapshot/restorer.h"
#include "snapshot/tree.h"

namespace dumont::cli {

using nlohmann::json;
using namespace dumont::snapshot;

struct SnapshotArgs {
  CLI::App *init, *backup, *snapshots, *restore, *ls, *diff, *forget, *prune, *check, *stats, *key, *passwd, *unlock,
      *repair, *repair_index;
  std::string repo, password_file, new_password_file, compression = "auto";
  std::vector<std::string> paths, tags, excludes;
  std::string parent, host, target, include, snap_a, snap_b, ls_path;
  bool force = false, read_data = false, do_prune = false, dry_run = false, remove_all = false;
  int keep_last = 0, keep_hourly = 0, keep_daily = 0, keep_weekly = 0;
};

namespace {

struct Fail {
  int code;
  std::string message;
};

std::string Human(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (bytes >= 1024 && u < 4) {
    bytes /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.2f %s", bytes, units[u]);
  return buf;
}

std::string ReadPassword(const std::string& file, const char* env, const char* what) {
  if (!file.empty()) {
    std::ifstream in(file);
    if (!in) throw Fail{2, "cannot read the password file " + file};
    std::string pw;
    std::getline(in, pw);
    return pw;
  }
  if (const char* p = std::getenv(env); p && *p) return p;
  throw Fail{2, std::string("no ") + what + ": set " + env + " or pass --password-file"};
}

std::unique_ptr<Backend> MustBackend(const SnapshotArgs& a) {
  std::string loc = a.repo;
  if (loc.empty()) {
    if (const char* r = std::getenv("DUMONT_REPOSITORY"); r && *r) loc = r;
  }
  if (loc.empty()) throw Fail{2, "no repository: pass --repo DIR or --repo s3:http(s)://host/bucket[/prefix] (or set DUMONT_REPOSITORY)"};
  auto b = OpenBackend(loc);
  if (!b) throw Fail{1, b.error().message()};
  return std::move(*b);
}

std::unique_ptr<Repository> MustOpen(const SnapshotArgs& a, bool load_index = true) {
  auto backend = MustBackend(a);
  auto repo = Repository::Open(std::move(backend), ReadPassword(a.password_file, "DUMONT_REPO_PASSWORD", "repository password"),
                               load_index);
  if (!repo) throw Fail{repo.error().code() == Code::kUnauthenticated ? 4 : 1, repo.error().message()};
  CompressionMode mode;
  if (!ParseCompressionMode(a.compression, &mode)) throw Fail{2, "--compression must be auto, zstd, lz4 or off"};
  (*repo)->SetCompression(mode);
  return std::move(*repo);
}

template <typename T>
T Must(Result<T> r) {
  if (!r) throw Fail{1, r.error().message()};
  return std::move(*r);
}
void Must(const Status& s) {
  if (!s.ok()) throw Fail{1, s.message()};
}

std::string Eta(double done, double total, double rate) {
  if (rate <= 0 || total <= done) return "--";
  int s = static_cast<int>((total - done) / rate);
  char buf[32];
  std::snprintf(buf, sizeof buf, "%d:%02d", s / 60, s % 60);
  return buf;
}

json SnapshotJson(const Id& id, const SnapshotManifest& m) {
  return {{"id", IdHex(id)}, {"short_id", IdHex(id).substr(0, 8)}, {"time", m.time}, {"hostname", m.hostname},
          {"username", m.username}, {"paths", m.paths}, {"tags", m.tags},
          {"parent", m.parent ? json(IdHex(*m.parent)) : json(nullptr)}, {"tree", IdHex(m.tree)},
          {"summary", m.summary}};
}

// Walks a snapshot tree calling fn(path, node).
void WalkTree(Repository& repo, const Id& tree, const std::string& where,
              const std::function<void(const std::string&, const Node&)>& fn) {
  auto blob = Must(repo.LoadBlob(tree));
  auto nodes = Must(DecodeTree(blob, where));
  for (const auto& n : nodes) {
    std::string path = where.empty() ? n.name : where + "/" + n.name;
    fn(path, n);
    if (n.type == "dir") WalkTree(repo, *n.subtree, path, fn);
  }
}

// Names are bytes: one that is not UTF-8 is shown with U+FFFD instead of aborting the output.
std::string Dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

std::string ModeString(const Node& n) {
  std::string s = n.type == "dir" ? "d" : n.type == "symlink" ? "l" : "-";
  const char* rwx = "rwxrwxrwx";
  for (int i = 0; i < 9; ++i) s += (n.mode & (0400 >> i)) ? rwx[i] : '-';
  return s;
}

int Run(SnapshotArgs& a, bool json_out) {
  auto out = [&](const json& j, const std::string& human) {
    if (json_out) std::printf("%s\n", Dump(j).c_str());
    else std::printf("%s\n", human.c_str());
  };
  bool tty = isatty(STDERR_FILENO);

  if (*a.init) {
    auto backend = MustBackend(a);
    std::string where = backend->Location();
    auto repo = Repository::Init(std::move(backend), ReadPassword(a.password_file, "DUMONT_REPO_PASSWORD", "repository password"));
    if (!repo) throw Fail{1, repo.error().message()};
    out({{"initialized", true}, {"id", (*repo)->config().id}, {"repository", where}},
        "created repository " + (*repo)->config().id.substr(0, 10) + " at " + where +
            "\nKeep the password safe: without it the data cannot be read back.");
    return 0;
  }

  if (*a.repair_index) {  // the index may be what is damaged: open without it
    auto repo = MustOpen(a, false);
    auto lock = Must(repo->LockRepo(true));
    auto r = Must(RepairIndex(*repo, [&](const std::string& line) {
      if (tty && !json_out) std::fprintf(stderr, "\r\033[K%s", line.c_str());
    }));
    if (tty && !json_out) std::fprintf(stderr, "\r\033[K");
    std::string human;
    for (const auto& u : r.unreadable) human += "warning: skipped: " + u + "\n";
    human += "index rebuilt from " + std::to_string(r.packs) + " pack(s): " + std::to_string(r.blobs) + " blob(s); " +
             std::to_string(r.index_files_replaced) + " old index file(s) replaced";
    if (!r.unreadable.empty()) human += "\nrun `dumont snapshot check` to see which snapshots miss data";
    out(r.ToJson(), human);
    return r.unreadable.empty() ? 0 : 3;
  }

  // A backup's walk waits on the disk when the cache is cold; list and stat the tree while the
  // repository opens (key derivation, index), and stop right before the backup walks it.
  std::optional<MetadataPrefetch> prefetch;
  if (*a.backup) prefetch.emplace(a.paths);
  auto repo = MustOpen(a);

  if (*a.backup) {
    auto lock = Must(repo->LockRepo(false));
    BackupOptions o;
    o.paths = a.paths;
    o.tags = a.tags;
    o.excludes = a.excludes;
    if (!a.parent.empty()) o.parent = a.parent;
    o.no_parent = a.force;
    o.hostname = a.host;
    auto progress = [&](const BackupProgress& p) {
      double rate = p.elapsed_s > 0 ? p.bytes_done / p.elapsed_s : 0;
      if (json_out) {
        std::printf("%s\n", Dump(json({{"message_type", "status"}, {"files_done", p.files_done}, {"files_total", p.files_total},
                                  {"bytes_done", p.bytes_done}, {"bytes_total", p.bytes_total},
                                  {"totals_final", p.totals_final}, {"seconds_elapsed", p.elapsed_s},
                                  {"bytes_per_second", rate}})).c_str());
        std::fflush(stdout);
      } else if (tty) {
        std::fprintf(stderr, "\r\033[K[%ds] %llu/%llu files, %s / %s, %s/s, ETA %s", static_cast<int>(p.elapsed_s),
                     static_cast<unsigned long long>(p.files_done), static_cast<unsigned long long>(p.files_total),
                     Human(p.bytes_done).c_str(), Human(p.bytes_total).c_str(), Human(rate).c_str(),
                     p.totals_final ? Eta(p.bytes_done, p.bytes_total, rate).c_str() : "? (still listing)");
      }
    };
    prefetch.reset();
    // No callback when nothing would be shown.
    auto s = Must(Backup(*repo, o, json_out || tty ? std::function<void(const BackupProgress&)>(progress) : nullptr));
    if (tty && !json_out) std::fprintf(stderr, "\r\033[K");
    json j = s.ToJson();
    j["message_type"] = "summary";
    double ratio = s.bytes_added ? static_cast<double>(s.bytes_total) / s.bytes_added : 0;
    char line[512];
    std::snprintf(line, sizeof line,
                  "Files: %llu new, %llu changed, %llu unchanged\nDirs: %llu\n"
                  "Added to the repository: %s (%s read, %s in the snapshot; dedup+compression ratio %.1fx)\n"
                  "Took %.2f s\nsnapshot %s saved",
                  (unsigned long long)s.files_new, (unsigned long long)s.files_changed, (unsigned long long)s.files_unchanged,
                  (unsigned long long)s.dirs, Human(s.bytes_added).c_str(), Human(s.bytes_read).c_str(),
                  Human(s.bytes_total).c_str(), ratio, s.duration_s, IdHex(s.snapshot).substr(0, 8).c_str());
    for (const auto& w : s.warnings) std::fprintf(stderr, "warning: %s\n", w.c_str());
    out(j, line);
    return s.warnings.empty() ? 0 : 3;
  }

  if (*a.snapshots) {
    auto all = Must(repo->ListSnapshots());
    json arr = json::array();
    std::string human = "ID        Time                  Host             Tags        Paths\n";
    for (const auto& [id, m] : all) {
      arr.push_back(SnapshotJson(id, m));
      std::string tags;
      for (const auto& t : m.tags) tags += (tags.empty() ? "" : ",") + t;
      std::string paths;
      for (const auto& p : m.paths) paths += (paths.empty() ? "" : " ") + p;
      char buf[1024];
      std::snprintf(buf, sizeof buf, "%-9s %-21s %-16s %-11s %s\n", IdHex(id).substr(0, 8).c_str(), m.time.c_str(),
                    m.hostname.substr(0, 16).c_str(), tags.c_str(), paths.c_str());
      human += buf;
    }
    human += std::to_string(all.size()) + " snapshot(s)";
    out(arr, human);
    return 0;
  }

  if (*a.restore) {
    auto [id, m] = Must(repo->FindSnapshot(a.snap_a));
    RestoreOptions o;
    o.target = a.target;
    o.include = a.include;
    auto progress = [&](const RestoreProgress& p) {
      double rate = p.elapsed_s > 0 ? p.bytes_done / p.elapsed_s : 0;
      if (json_out) {
        std::printf("%s\n", Dump(json({{"message_type", "status"}, {"bytes_done", p.bytes_done}, {"bytes_total", p.bytes_total},
                                  {"seconds_elapsed", p.elapsed_s}})).c_str());
      } else if (tty) {
        std::fprintf(stderr, "\r\033[K%s / %s, %s/s, ETA %s", Human(p.bytes_done).c_str(), Human(p.bytes_total).c_str(),
                     Human(rate).c_str(), Eta(p.bytes_done, p.bytes_total, rate).c_str());
      }
    };
    auto s = Must(Restore(*repo, m.tree, o, progress));
    if (tty && !json_out) std::fprintf(stderr, "\r\033[K");
    json j = s.ToJson();
    j["message_type"] = "summary";
    j["snapshot"] = IdHex(id);
    char line[256];
    std::snprintf(line, sizeof line, "restored snapshot %s to %s: %llu files, %llu dirs, %s in %.2f s",
                  IdHex(id).substr(0, 8).c_str(), a.target.c_str(), (unsigned long long)s.files,
                  (unsigned long long)s.dirs, Human(s.bytes).c_str(), s.duration_s);
    out(j, line);
    return 0;
  }

  if (*a.ls) {
    auto [id, m] = Must(repo->FindSnapshot(a.snap_a));
    std::string prefix = a.ls_path;
    while (!prefix.empty() && prefix.front() == '/') prefix.erase(0, 1);
    while (!prefix.empty() && prefix.back() == '/') prefix.pop_back();
    json arr = json::array();
    std::string human;
    bool any = false;
    WalkTree(*repo, m.tree, "", [&](const std::string& path, const Node& n) {
      if (!prefix.empty() && path != prefix && path.rfind(prefix + "/", 0) != 0) return;
      any = true;
      arr.push_back({{"path", path}, {"type", n.type}, {"mode", n.mode}, {"size", n.size}, {"uid", n.uid},
                     {"gid", n.gid}, {"mtime", Rfc3339(n.mtime_ns / 1'000'000'000)}});
      char buf[64];
      std::snprintf(buf, sizeof buf, "%s %12llu %s ", ModeString(n).c_str(), (unsigned long long)n.size,
                    Rfc3339(n.mtime_ns / 1'000'000'000).c_str());
      human += buf + path + (n.type == "symlink" ? " -> " + n.target : "") + "\n";
    });
    if (!prefix.empty() && !any) throw Fail{1, "'" + prefix + "' is not in snapshot " + IdHex(id).substr(0, 8)};
    if (!human.empty()) human.pop_back();
    out(arr, human);
    return 0;
  }

  if (*a.diff) {
    auto [ida, ma] = Must(repo->FindSnapshot(a.snap_a));
    auto [idb, mb] = Must(repo->FindSnapshot(a.snap_b));
    std::map<std::string, Node> left, right;
    WalkTree(*repo, ma.tree, "", [&](const std::string& p, const Node& n) { left[p] = n; });
    WalkTree(*repo, mb.tree, "", [&](const std::string& p, const Node& n) { right[p] = n; });
    json changes = json::array();
    std::string human;
    auto add = [&](const char* kind, const std::string& p) {
      changes.push_back({{"change", kind}, {"path", p}});
      human += std::string(kind[0] == 'a' ? "+    " : kind[0] == 'r' ? "-    " : "M    ") + p + "\n";
    };
    for (const auto& [p, n] : left) {
      auto it = right.find(p);
      if (it == right.end()) add("removed", p);
      else if (it->second.type != n.type || it->second.content != n.content || it->second.mode != n.mode ||
               it->second.target != n.target) add("modified", p);
    }
    for (const auto& [p, n] : right) {
      if (!left.count(p)) add("added", p);
    }
    human += std::to_string(changes.size()) + " change(s)";
    out({{"from", IdHex(ida)}, {"to", IdHex(idb)}, {"changes", changes}}, human);
    return 0;
  }

  if (*a.forget) {
    auto lock = Must(repo->LockRepo(true));
    RetentionPolicy p{a.keep_last, a.keep_hourly, a.keep_daily, a.keep_weekly};
    auto r = Must(Forget(*repo, p, a.dry_run));
    json j = {{"kept", r.kept}, {"removed", r.removed}, {"dry_run", a.dry_run}};
    std::string human = (a.dry_run ? "would keep " : "kept ") + std::to_string(r.kept.size()) + ", " +
                        (a.dry_run ? "would remove " : "removed ") + std::to_string(r.removed.size()) + " snapshot(s)";
    if (a.do_prune && !a.dry_run) {
      auto pr = Must(Prune(*repo));
      j["prune"] = pr.ToJson();
      human += "\npruned: " + std::to_string(pr.packs_deleted) + " pack(s) deleted, " + Human(pr.bytes_freed) + " freed";
    }
    out(j, human);
    return 0;
  }

  if (*a.prune) {
    auto lock = Must(repo->LockRepo(true));
    auto pr = Must(Prune(*repo));
    out(pr.ToJson(), std::to_string(pr.packs_deleted) + " pack(s) deleted (" + std::to_string(pr.packs_repacked) +
                         " repacked), " + std::to_string(pr.blobs_removed) + " blob(s) removed, " + Human(pr.bytes_freed) +
                         " freed");
    return 0;
  }

  if (*a.check) {
    auto lock = Must(repo->LockRepo(false));
    auto r = Must(Check(*repo, a.read_data, [&](const std::string& pack) {
      if (tty && !json_out) std::fprintf(stderr, "\r\033[Kreading pack %s", pack.substr(0, 12).c_str());
    }));
    if (tty && !json_out) std::fprintf(stderr, "\r\033[K");
    std::string human;
    for (const auto& e : r.errors) human += "error: " + e + "\n";
    for (const auto& w : r.warnings) human += "warning: " + w + "\n";
    human += std::to_string(r.snapshots) + " snapshot(s), " + std::to_string(r.packs) + " pack(s), " +
             std::to_string(r.blobs) + " blob(s), " + std::to_string(r.trees) + " tree(s) checked" +
             (a.read_data ? ", " + Human(r.bytes_read) + " read" : "") + ": " +
             (r.errors.empty() ? "no errors" : std::to_string(r.errors.size()) + " error(s)");
    out(r.ToJson(), human);
    return r.errors.empty() ? 0 : 1;
  }

  if (*a.stats) {
    auto by_pack = repo->IndexByPack();
    uint64_t stored = 0, raw = 0, blobs = 0;
    for (const auto& [p, v] : by_pack) {
      for (const auto& [id, l] : v) {
        stored += l.length;
        raw += l.raw_length;
        ++blobs;
      }
    }
    auto snaps = Must(repo->ListSnapshots());
    json j = {{"snapshots", snaps.size()}, {"packs", by_pack.size()}, {"blobs", blobs},
              {"stored_bytes", stored}, {"unique_raw_bytes", raw},
              {"compression_ratio", stored ? static_cast<double>(raw) / stored : 0.0}};
    if (!snaps.empty()) j["latest_snapshot_bytes"] = snaps.back().second.summary.value("bytes_total", 0);
    out(j, std::to_string(snaps.size()) + " snapshot(s), " + std::to_string(by_pack.size()) + " pack(s), " +
               std::to_string(blobs) + " blob(s)\nunique data " + Human(raw) + ", stored " + Human(stored) +
               (stored ? " (compression " + std::to_string(static_cast<double>(raw) / stored).substr(0, 4) + "x)" : ""));
    return 0;
  }

  if (*a.passwd) {
    std::string next = ReadPassword(a.new_password_file, "DUMONT_NEW_REPO_PASSWORD", "new password");
    Must(repo->ChangePassword(next, false));
    out({{"changed", true}}, "password changed; the old password no longer opens the repository");
    return 0;
  }

  if (*a.unlock) {
    Must(repo->RemoveStaleLocks(a.remove_all));
    out({{"unlocked", true}}, a.remove_all ? "removed every lock" : "removed stale locks");
    return 0;
  }
  return 2;
}

}  // namespace

SnapshotArgs* AddSnapshotCommands(CLI::App& parent) {
  auto* a = new SnapshotArgs();
  auto* s = parent.add_subcommand("snapshot", "work directly on a snapshot repository (like restic)");
  s->require_subcommand(1);
  s->add_option("--repo,-r", a->repo, "DIR or s3:http(s)://host[:port]/bucket[/prefix] (else $DUMONT_REPOSITORY)");
  s->add_option("--password-file", a->password_file, "read the repository password from FILE (else $DUMONT_REPO_PASSWORD)");
  s->add_option("--compression", a->compression, "auto (fast zstd) | zstd | lz4 | off");
  s->footer("S3 credentials come from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_DEFAULT_REGION;\n"
            "DUMONT_S3_CONNECTIONS sets the parallel S3 requests (1-256, default 32).");
  a->init = s->add_subcommand("init", "create a new repository");
  a->backup = s->add_subcommand("backup", "back up PATHs into a new snapshot");
  a->backup->add_option("paths", a->paths, "files or directories")->required();
  a->backup->add_option("--tag", a->tags, "tag the snapshot (repeatable)");
  a->backup->add_option("--exclude", a->excludes, "skip names or paths matching GLOB (repeatable)");
  a->backup->add_option("--parent", a->parent, "compare with this snapshot (default: latest of this host and paths)");
  a->backup->add_flag("--force", a->force, "read every file, even unchanged ones");
  a->backup->add_option("--host", a->host, "hostname to record (default: this host)");
  a->snapshots = s->add_subcommand("snapshots", "list snapshots");
  a->restore = s->add_subcommand("restore", "restore a snapshot into --target");
  a->restore->add_option("snapshot", a->snap_a, "ID, ID prefix or latest")->required();
  a->restore->add_option("--target,-t", a->target, "directory to restore into")->required();
  a->restore->add_option("--include", a->include, "restore only this path of the snapshot");
  a->ls = s->add_subcommand("ls", "list the files of a snapshot");
  a->ls->add_option("snapshot", a->snap_a, "ID, ID prefix or latest")->required();
  a->ls->add_option("path", a->ls_path, "only under this path");
  a->diff = s->add_subcommand("diff", "show what changed between two snapshots");
  a->diff->add_option("from", a->snap_a, "snapshot")->required();
  a->diff->add_option("to", a->snap_b, "snapshot")->required();
  a->forget = s->add_subcommand("forget", "remove snapshots by a retention policy (per host and paths)");
  a->forget->add_option("--keep-last", a->keep_last, "keep the N newest");
  a->forget->add_option("--keep-hourly", a->keep_hourly, "keep the newest of each of the last N hours");
  a->forget->add_option("--keep-daily", a->keep_daily, "keep the newest of each of the last N days");
  a->forget->add_option("--keep-weekly", a->keep_weekly, "keep the newest of each of the last N weeks");
  a->forget->add_flag("--prune", a->do_prune, "prune afterwards");
  a->forget->add_flag("--dry-run,-n", a->dry_run, "only show what would be removed");
  a->prune = s->add_subcommand("prune", "delete data that no snapshot uses");
  a->check = s->add_subcommand("check", "verify the repository's structure (and data with --read-data)");
  a->check->add_flag("--read-data", a->read_data, "download and verify every pack");
  a->stats = s->add_subcommand("stats", "sizes, dedup and compression");
  a->key = s->add_subcommand("key", "manage repository keys");
  a->key->require_subcommand(1);
  a->passwd = a->key->add_subcommand("passwd", "change the password (new one from $DUMONT_NEW_REPO_PASSWORD or --new-password-file)");
  a->passwd->add_option("--new-password-file", a->new_password_file, "read the new password from FILE");
  a->unlock = s->add_subcommand("unlock", "remove stale locks");
  a->unlock->add_flag("--remove-all", a->remove_all, "remove every lock, even live ones");
  a->repair = s->add_subcommand("repair", "rebuild damaged repository metadata");
  a->repair->require_subcommand(1);
  a->repair_index = a->repair->add_subcommand(
      "index", "rebuild the index from the packs' headers (when index files are lost or damaged); exit 3 if some packs were unreadable");
  return a;
}

int RunSnapshotCommand(SnapshotArgs* a, bool json_out) {
  try {
    return Run(*a, json_out);
  } catch (const Fail& f) {
    if (json_out) {
      std::printf("%s\n", Dump(json({{"error", {{"code", f.code == 4 ? "unauthenticated" : "error"}, {"message", f.message}}}})).c_str());
    } else {
      std::fprintf(stderr, "error: %s\n", f.message.c_str());
    }
    return f.code;
  }
}

}  // namespace dumont::cli
