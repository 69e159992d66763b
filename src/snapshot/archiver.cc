#include "snapshot/archiver.h"

#include <fcntl.h>
#include <fnmatch.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <deque>
#include <filesystem>
#include <future>
#include <map>
#include <pwd.h>
#include <thread>

#include "snapshot/tree.h"

namespace dumont::snapshot {

using nlohmann::json;
namespace fs = std::filesystem;

json BackupSummary::ToJson() const {
  double ratio = bytes_added ? static_cast<double>(bytes_total) / static_cast<double>(bytes_added) : 0.0;
  json j = {{"snapshot", IdHex(snapshot)}, {"files_new", files_new}, {"files_changed", files_changed},
            {"files_unchanged", files_unchanged}, {"dirs", dirs}, {"bytes_total", bytes_total},
            {"bytes_read", bytes_read}, {"bytes_added", bytes_added}, {"blobs_new", blobs_new},
            {"dedup_ratio", ratio}, {"duration_s", duration_s}, {"warnings", warnings}};
  j["parent"] = parent ? json(IdHex(*parent)) : json(nullptr);
  return j;
}

namespace {

int64_t Ns(const timespec& t) { return static_cast<int64_t>(t.tv_sec) * 1'000'000'000 + t.tv_nsec; }

Node NodeFromStat(const std::string& name, const struct stat& st) {
  Node n;
  n.name = name;
  n.mode = st.st_mode & 07777;
  n.uid = st.st_uid;
  n.gid = st.st_gid;
  n.mtime_ns = Ns(st.st_mtim);
  n.ctime_ns = Ns(st.st_ctim);
  n.inode = st.st_ino;
  n.dev = st.st_dev;
  n.nlink = st.st_nlink;
  n.size = S_ISREG(st.st_mode) ? static_cast<uint64_t>(st.st_size) : 0;
  if (S_ISREG(st.st_mode)) n.type = "file";
  else if (S_ISDIR(st.st_mode)) n.type = "dir";
  else if (S_ISLNK(st.st_mode)) n.type = "symlink";
  return n;
}

class Run {
 public:
  Run(Repository& repo, const BackupOptions& opts, const std::function<void(const BackupProgress&)>& cb)
      : repo_(repo), opts_(opts), cb_(cb), chunker_(repo.MakeChunker()) {
    unsigned hw = std::max(1u, std::thread::hardware_concurrency());
    readers_n_ = opts.readers > 0 ? opts.readers : static_cast<int>(std::min(4u, hw));
    workers_n_ = opts.workers > 0 ? opts.workers : static_cast<int>(hw);
    readers_ = std::make_unique<ThreadPool>(readers_n_);
    workers_ = std::make_unique<ThreadPool>(workers_n_);
    start_ = std::chrono::steady_clock::now();
  }
  ~Run() {
    readers_->Stop();
    workers_->Stop();
  }

  bool Excluded(const std::string& path, const std::string& name) const {
    for (const auto& g : opts_.excludes) {
      if (fnmatch(g.c_str(), name.c_str(), 0) == 0 || fnmatch(g.c_str(), path.c_str(), 0) == 0) return true;
    }
    return false;
  }

  void Scan(const std::string& path) {
    struct stat st{};
    if (lstat(path.c_str(), &st) != 0) return;
    if (S_ISREG(st.st_mode)) {
      ++scan_files_;
      scan_bytes_ += static_cast<uint64_t>(st.st_size);
    } else if (S_ISDIR(st.st_mode)) {
      std::error_code ec;
      for (auto it = fs::directory_iterator(path, ec); !ec && it != fs::directory_iterator(); it.increment(ec)) {
        std::string child = it->path().string();
        if (stop_scan_) return;
        if (!Excluded(child, it->path().filename().string())) Scan(child);
      }
    }
  }

  // Hash, dedup, compress, seal one chunk (runs on a worker).
  Result<Id> StoreChunk(std::string data) {
    Id id = repo_.BlobId(data);
    if (repo_.HasBlob(id)) return id;
    uint64_t stored = 0;
    auto saved = repo_.SaveBlob(BlobType::kData, id, data, &stored);
    if (!saved) return Err(saved.error());
    if (*saved) {
      bytes_added_ += stored;
      ++blobs_new_;
    }
    return id;
  }

  // Reads and chunks one file (runs on a reader). Returns the content list.
  Result<std::vector<Id>> ReadFile(const std::string& path, uint64_t* size_read) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NOATIME);
    if (fd < 0 && errno == EPERM) fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) return Err(Status::IOError("cannot open " + path + ": " + std::strerror(errno)));
    posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    const size_t max = chunker_.params().max_size;
    // One raw buffer per reader thread, allocated once and never zero-filled: small files must not
    // pay for clearing megabytes they do not use.
    const size_t cap = 2 * max;
    thread_local std::unique_ptr<char[]> tl_buf;
    thread_local size_t tl_cap = 0;
    if (tl_cap < cap) {
      tl_buf.reset(new char[cap]);
      tl_cap = cap;
    }
    char* buf = tl_buf.get();
    size_t start = 0, end = 0;
    std::deque<std::future<Result<Id>>> inflight;
    std::vector<Id> content;
    Status err;
    bool eof = false;
    auto drain_one = [&]() {
      auto r = inflight.front().get();
      inflight.pop_front();
      if (!r) {
        if (err.ok()) err = r.error();
      } else {
        content.push_back(*r);
      }
    };
    while (err.ok()) {
      // Fill until we hold max bytes past `start` or reach EOF.
      while (!eof && end - start < max) {
        if (start > 0 && end + max > cap) {
          std::memmove(buf, buf + start, end - start);
          end -= start;
          start = 0;
        }
        ssize_t n = ::read(fd, buf + end, cap - end);
        if (n < 0) {
          if (errno == EINTR) continue;
          err = Status::IOError("cannot read " + path + ": " + std::strerror(errno));
          break;
        }
        if (n == 0) eof = true;
        end += static_cast<size_t>(n);
        *size_read += static_cast<uint64_t>(n);
        progress_bytes_ += static_cast<uint64_t>(n);
      }
      if (!err.ok()) break;
      size_t avail = end - start;
      if (avail == 0) break;
      size_t cut = chunker_.Cut(reinterpret_cast<const uint8_t*>(buf + start), avail);
      std::string chunk(buf + start, cut);
      start += cut;
      auto task = std::make_shared<std::packaged_task<Result<Id>()>>(
          [this, c = std::move(chunk)]() mutable { return StoreChunk(std::move(c)); });
      inflight.push_back(task->get_future());
      workers_->Submit([task] { (*task)(); });
      // Bound the chunks a file keeps in flight (memory) while keeping every worker busy.
      if (inflight.size() >= static_cast<size_t>(2 * workers_n_)) drain_one();
    }
    while (!inflight.empty()) drain_one();
    ::close(fd);
    if (!err.ok()) return Err(err);
    return content;
  }

  std::map<std::string, Node> LoadParentTree(const std::optional<Id>& tree, const std::string& where) {
    std::map<std::string, Node> out;
    if (!tree) return out;
    auto blob = repo_.LoadBlob(*tree);
    if (!blob) return out;  // a damaged parent only costs a full read
    auto nodes = DecodeTree(*blob, where);
    if (!nodes) return out;
    for (auto& n : *nodes) out.emplace(n.name, std::move(n));
    return out;
  }

  bool Unchanged(const Node& now, const std::map<std::string, Node>& parent) {
    auto it = parent.find(now.name);
    if (it == parent.end()) return false;
    const Node& p = it->second;
    if (p.type != "file" || p.size != now.size || p.mtime_ns != now.mtime_ns || p.ctime_ns != now.ctime_ns ||
        p.inode != now.inode) {
      return false;
    }
    for (const auto& id : p.content) {
      if (!repo_.HasBlob(id)) return false;
    }
    return true;
  }

  // A directory walked but not yet saved: its nodes, the reads in flight for its files, and its
  // subdirectories. Walking submits every file read of the whole tree before any tree is built, so
  // the readers never wait for one directory to finish before the next directory's files start.
  struct PendingFile {
    size_t node;
    std::future<Result<std::vector<Id>>> content;
    std::shared_ptr<uint64_t> read;
  };
  struct DirPlan {
    std::string path, where;
    std::vector<Node> nodes;
    std::vector<PendingFile> files;
    std::vector<std::pair<size_t, std::unique_ptr<DirPlan>>> subdirs;  // node index -> plan
  };

  std::unique_ptr<DirPlan> Walk(const std::string& path, const std::string& where, const std::optional<Id>& parent_tree) {
    auto plan = std::make_unique<DirPlan>();
    plan->path = path;
    plan->where = where;
    auto parent = LoadParentTree(parent_tree, where);
    std::vector<std::string> names;
    std::error_code ec;
    for (auto it = fs::directory_iterator(path, ec); !ec && it != fs::directory_iterator(); it.increment(ec)) {
      names.push_back(it->path().filename().string());
    }
    if (ec) Warn("cannot list " + path + ": " + ec.message());
    std::sort(names.begin(), names.end());
    std::vector<std::pair<size_t, std::pair<std::string, std::optional<Id>>>> dirs;
    for (const auto& name : names) {
      std::string child = path + "/" + name;
      if (Excluded(child, name)) continue;
      struct stat st{};
      if (lstat(child.c_str(), &st) != 0) {
        Warn("cannot stat " + child + ": " + std::strerror(errno));
        continue;
      }
      Node n = NodeFromStat(name, st);
      if (n.type.empty()) continue;  // sockets, fifos, devices are not backed up
      if (n.type == "symlink") {
        std::string target(4096, '\0');
        ssize_t len = readlink(child.c_str(), target.data(), target.size());
        if (len < 0) {
          Warn("cannot read link " + child);
          continue;
        }
        target.resize(len);
        n.target = target;
        plan->nodes.push_back(std::move(n));
      } else if (n.type == "dir") {
        std::optional<Id> sub_parent;
        if (auto it = parent.find(name); it != parent.end() && it->second.type == "dir") sub_parent = it->second.subtree;
        plan->nodes.push_back(std::move(n));
        dirs.push_back({plan->nodes.size() - 1, {child, sub_parent}});
      } else {
        if (!opts_.no_parent && Unchanged(n, parent)) {
          n.content = parent.at(name).content;
          ++summary_.files_unchanged;
          ++progress_.files_done;
          progress_bytes_ += n.size;
          summary_.bytes_total += n.size;
          plan->nodes.push_back(std::move(n));
          continue;
        }
        (parent.count(name) ? summary_.files_changed : summary_.files_new) += 1;
        plan->nodes.push_back(std::move(n));
        auto read = std::make_shared<uint64_t>(0);
        auto task = std::make_shared<std::packaged_task<Result<std::vector<Id>>()>>(
            [this, child, read] { return ReadFile(child, read.get()); });
        plan->files.push_back({plan->nodes.size() - 1, task->get_future(), read});
        readers_->Submit([task] { (*task)(); });
      }
      Report(child);
    }
    // Files of this directory are queued; now the subdirectories (their files queue behind ours).
    for (auto& [idx, d] : dirs) {
      plan->subdirs.emplace_back(idx, Walk(d.first, where + "/" + plan->nodes[idx].name, d.second));
    }
    return plan;
  }

  // Post-order: waits for a directory's file reads and subtrees, then stores its tree blob.
  Result<Id> Build(DirPlan& plan) {
    for (auto& [idx, sub] : plan.subdirs) {
      auto id = Build(*sub);
      if (!id) return Err(id.error());
      plan.nodes[idx].subtree = *id;
      ++summary_.dirs;
    }
    std::vector<size_t> failed;
    for (auto& p : plan.files) {
      auto content = p.content.get();
      Node& n = plan.nodes[p.node];
      summary_.bytes_read += *p.read;
      ++progress_.files_done;
      if (!content) {
        if (content.error().code() == Code::kIOError) {
          Warn(content.error().message());
          failed.push_back(p.node);
          continue;
        }
        return Err(content.error());
      }
      n.content = std::move(*content);
      n.size = *p.read;
      summary_.bytes_total += n.size;
    }
    Report(plan.path);
    std::sort(failed.begin(), failed.end());
    for (auto it = failed.rbegin(); it != failed.rend(); ++it) plan.nodes.erase(plan.nodes.begin() + static_cast<long>(*it));
    std::string blob = EncodeTree(std::move(plan.nodes));
    Id id = repo_.BlobId(blob);
    auto saved = repo_.SaveBlob(BlobType::kTree, id, blob);
    if (!saved) return Err(saved.error());
    return id;
  }

  Result<Id> SaveDir(const std::string& path, const std::string& where, const std::optional<Id>& parent_tree) {
    auto plan = Walk(path, where, parent_tree);
    return Build(*plan);
  }

  void Warn(const std::string& w) {
    std::lock_guard l(warn_mu_);
    summary_.warnings.push_back(w);
  }

  void Report(const std::string& current) {
    if (!cb_) return;
    auto now = std::chrono::steady_clock::now();
    if (now - last_report_ < std::chrono::milliseconds(200)) return;
    last_report_ = now;
    BackupProgress p = progress_;
    p.files_total = scan_files_.load();
    p.bytes_total = scan_bytes_.load();
    p.bytes_done = progress_bytes_.load();
    p.elapsed_s = std::chrono::duration<double>(now - start_).count();
    p.current = current;
    cb_(p);
  }

  Result<BackupSummary> Go() {
    std::string host = opts_.hostname;
    if (host.empty()) {
      char buf[256] = {0};
      gethostname(buf, sizeof buf - 1);
      host = buf;
    }
    if (opts_.paths.empty()) return Err(Status::InvalidArgument("nothing to back up: give at least one PATH"));
    std::vector<std::string> abs;
    std::map<std::string, std::string> by_name;
    for (const auto& p : opts_.paths) {
      std::error_code ec;
      std::string a = fs::absolute(p, ec).lexically_normal().string();
      while (a.size() > 1 && a.back() == '/') a.pop_back();
      struct stat st{};
      if (lstat(a.c_str(), &st) != 0) {
        return Err(Status::InvalidArgument("cannot back up " + p + ": " + std::strerror(errno)));
      }
      std::string name = fs::path(a).filename().string();
      if (name.empty()) name = "root";
      if (by_name.count(name)) {
        return Err(Status::InvalidArgument("two paths have the same name '" + name + "' (" + by_name[name] + " and " + a +
                                           "); back them up separately or from a common parent"));
      }
      by_name[name] = a;
      abs.push_back(a);
    }
    std::sort(abs.begin(), abs.end());
    // Parent: explicit, else the latest snapshot of the same host and paths.
    std::optional<std::pair<Id, SnapshotManifest>> parent;
    if (!opts_.no_parent) {
      if (opts_.parent) {
        auto p = repo_.FindSnapshot(*opts_.parent);
        if (!p) return Err(p.error());
        parent = *p;
      } else {
        auto all = repo_.ListSnapshots();
        if (!all) return Err(all.error());
        for (auto it = all->rbegin(); it != all->rend(); ++it) {
          if (it->second.hostname == host && it->second.paths == abs) {
            parent = *it;
            break;
          }
        }
      }
    }
    std::map<std::string, Node> parent_root;
    if (parent) {
      repo_.PrefetchTrees(parent->second.tree, 16);  // the walk reads the parent's trees one per directory
      parent_root = LoadParentTree(parent->second.tree, "");
      summary_.parent = parent->first;
    }
    // Totals for the progress line come from a scan that runs beside the backup (not before it:
    // with a cold cache a serial pre-scan of 80k files cost about a second of every backup).
    std::thread scanner;
    if (cb_) {
      scanner = std::thread([this, abs] {
        for (const auto& a : abs) Scan(a);
      });
    }
    struct Joiner {
      std::thread& t;
      std::atomic<bool>& stop;
      ~Joiner() {
        stop = true;
        if (t.joinable()) t.join();
      }
    } joiner{scanner, stop_scan_};

    std::vector<Node> root;
    for (const auto& a : abs) {
      struct stat st{};
      lstat(a.c_str(), &st);
      std::string name = fs::path(a).filename().string();
      if (name.empty()) name = "root";
      Node n = NodeFromStat(name, st);
      if (n.type == "dir") {
        std::optional<Id> sub_parent;
        if (auto it = parent_root.find(name); it != parent_root.end() && it->second.type == "dir") {
          sub_parent = it->second.subtree;
        }
        auto sub = SaveDir(a, name, sub_parent);
        if (!sub) return Err(sub.error());
        n.subtree = *sub;
        ++summary_.dirs;
      } else if (n.type == "file") {
        uint64_t read = 0;
        auto content = ReadFile(a, &read);
        if (!content) return Err(content.error());
        n.content = *content;
        n.size = read;
        summary_.bytes_total += read;
        summary_.bytes_read += read;
        ++summary_.files_new;
      } else if (n.type == "symlink") {
        std::string target(4096, '\0');
        ssize_t len = readlink(a.c_str(), target.data(), target.size());
        target.resize(len > 0 ? len : 0);
        n.target = target;
      } else {
        return Err(Status::InvalidArgument("cannot back up " + a + ": not a file, directory or symlink"));
      }
      root.push_back(std::move(n));
    }
    std::string blob = EncodeTree(std::move(root));
    Id root_id = repo_.BlobId(blob);
    auto saved = repo_.SaveBlob(BlobType::kTree, root_id, blob);
    if (!saved) return Err(saved.error());
    // Packs and index first, then the manifest that points at them.
    DUMONT_RETURN_IF_ERROR(repo_.Flush());
    summary_.duration_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    summary_.bytes_added = bytes_added_.load();
    summary_.blobs_new = blobs_new_.load();
    SnapshotManifest m;
    m.time_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
    m.time_unix = m.time_ns / 1'000'000'000;
    m.time = Rfc3339(m.time_unix);
    m.tree = root_id;
    m.paths = abs;
    m.hostname = host;
    if (auto* pw = getpwuid(getuid())) m.username = pw->pw_name;
    m.tags = opts_.tags;
    if (parent) m.parent = parent->first;
    m.summary = summary_.ToJson();
    m.summary.erase("snapshot");
    auto id = repo_.SaveSnapshot(m);
    if (!id) return Err(id.error());
    summary_.snapshot = *id;
    if (cb_) {
      BackupProgress p = progress_;
      p.files_total = std::max<uint64_t>(scan_files_.load(), p.files_done);
      p.bytes_total = std::max<uint64_t>(scan_bytes_.load(), progress_bytes_.load());
      p.bytes_done = progress_bytes_.load();
      p.elapsed_s = summary_.duration_s;
      cb_(p);
    }
    return summary_;
  }

 private:
  Repository& repo_;
  const BackupOptions& opts_;
  std::function<void(const BackupProgress&)> cb_;
  Chunker chunker_;
  int readers_n_ = 1, workers_n_ = 1;
  std::unique_ptr<ThreadPool> readers_, workers_;
  std::chrono::steady_clock::time_point start_, last_report_;
  BackupProgress progress_;
  std::atomic<uint64_t> scan_files_{0}, scan_bytes_{0};
  std::atomic<bool> stop_scan_{false};
  std::atomic<uint64_t> progress_bytes_{0}, bytes_added_{0}, blobs_new_{0};
  BackupSummary summary_;
  std::mutex warn_mu_;
};

}  // namespace

Result<BackupSummary> Backup(Repository& repo, const BackupOptions& opts,
                             const std::function<void(const BackupProgress&)>& progress) {
  Run run(repo, opts, progress);
  return run.Go();
}

}  // namespace dumont::snapshot
