#include "snapshot/restorer.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>
#include <thread>

#include "snapshot/tree.h"

namespace dumont::snapshot {

using nlohmann::json;

json RestoreSummary::ToJson() const {
  return {{"files", files}, {"dirs", dirs}, {"symlinks", symlinks}, {"hardlinks", hardlinks},
          {"bytes", bytes}, {"bytes_downloaded", bytes_downloaded}, {"duration_s", duration_s}};
}

namespace {

Status ErrnoStatus(const std::string& what) {
  int e = errno;
  std::string msg = what + ": " + std::strerror(e);
  if (e == ENOSPC || e == EDQUOT) return Status::IOError(msg + " (the disk is full; free space and run the restore again)");
  if (e == EACCES || e == EPERM || e == EROFS) return Status::PermissionDenied(msg);
  return Status::IOError(msg);
}

struct Item {
  std::string path;  // absolute, under target
  Node node;
  int depth = 0;
};

struct Dest {
  size_t file;
  uint64_t offset;
};

class Restore_ {
 public:
  Restore_(Repository& repo, const RestoreOptions& opts, const std::function<void(const RestoreProgress&)>& cb)
      : repo_(repo), opts_(opts), cb_(cb) {}

  bool Included(const std::string& rel) const {
    if (include_.empty()) return true;
    return rel == include_ || rel.rfind(include_ + "/", 0) == 0 || include_.rfind(rel + "/", 0) == 0;
  }

  Status Walk(const Id& tree, const std::string& rel_dir, const std::string& abs_dir, int depth) {
    auto blob = repo_.LoadBlob(tree);
    if (!blob) return blob.error().Annotate("tree of '" + (rel_dir.empty() ? "/" : rel_dir) + "'");
    auto nodes = DecodeTree(*blob, rel_dir);
    if (!nodes) return nodes.error();
    for (auto& n : *nodes) {
      std::string rel = rel_dir.empty() ? n.name : rel_dir + "/" + n.name;
      if (!Included(rel)) continue;
      std::string abs = abs_dir + "/" + n.name;
      if (n.type == "dir") {
        // Ancestors of the include path are created but keep their metadata untouched.
        bool inside = include_.empty() || rel == include_ || rel.rfind(include_ + "/", 0) == 0;
        if (inside) dirs_.push_back({abs, n, depth});
        else bare_dirs_.push_back(abs);
        DUMONT_RETURN_STATUS_IF_ERROR(Walk(*n.subtree, rel, abs, depth + 1));
      } else if (n.type == "symlink") {
        links_.push_back({abs, n, depth});
      } else {
        files_.push_back({abs, n, depth});
      }
    }
    return Status::Ok();
  }

  Status MakeDir(const std::string& path) {
    struct stat st{};
    if (lstat(path.c_str(), &st) == 0) {
      if (S_ISDIR(st.st_mode)) return Status::Ok();
      return Status::FailedPrecondition("cannot restore directory " + path + ": something else is in the way" +
                                        (S_ISLNK(st.st_mode) ? " (a symlink; refusing to follow it)" : ""));
    }
    if (::mkdir(path.c_str(), 0700) != 0 && errno != EEXIST) return ErrnoStatus("cannot create directory " + path);
    return Status::Ok();
  }

  // Writes the non-zero 4 KiB pages of a blob; zero pages are skipped, so the pre-sized file keeps
  // holes where the source had them (or had zeros: restored files may be sparser than the source).
  Status WriteBlob(const std::string& plain, const std::vector<Dest>& dests) {
    constexpr size_t kPage = 4096;
    std::vector<std::pair<size_t, size_t>> runs;  // [begin, end) of non-zero data
    for (size_t off = 0; off < plain.size(); off += kPage) {
      size_t end = std::min(plain.size(), off + kPage);
      bool zero = true;
      for (size_t i = off; i < end && zero; i += 8) {
        uint64_t w = 0;
        std::memcpy(&w, plain.data() + i, std::min<size_t>(8, end - i));
        zero = w == 0;
      }
      if (zero) continue;
      if (!runs.empty() && runs.back().second == off) runs.back().second = end;
      else runs.emplace_back(off, end);
    }
    for (const auto& d : dests) {
      progress_bytes_ += plain.size();
      if (runs.empty()) continue;
      const std::string& path = files_[d.file].path;
      int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC | O_NOFOLLOW);
      if (fd < 0) return ErrnoStatus("cannot open " + path);
      for (const auto& [b, e] : runs) {
        size_t off = b;
        while (off < e) {
          ssize_t n = ::pwrite(fd, plain.data() + off, e - off, static_cast<off_t>(d.offset + off));
          if (n < 0) {
            if (errno == EINTR) continue;
            Status st = ErrnoStatus("cannot write " + path);
            ::close(fd);
            return st;
          }
          off += static_cast<size_t>(n);
        }
      }
      ::close(fd);
    }
    return Status::Ok();
  }

  // Fetches the blobs of one pack: one ranged read when the wanted blobs cover most of the span,
  // else one read per blob.
  Status FetchPack(const Id& pack, std::vector<std::pair<BlobLocation, std::pair<Id, std::vector<Dest>>>>& wants) {
    std::sort(wants.begin(), wants.end(), [](const auto& a, const auto& b) { return a.first.offset < b.first.offset; });
    uint64_t lo = wants.front().first.offset;
    uint64_t hi = 0, need = 0;
    for (const auto& w : wants) {
      hi = std::max<uint64_t>(hi, w.first.offset + w.first.length);
      need += w.first.length;
    }
    std::string name = IdHex(pack);
    auto handle_one = [&](const BlobLocation& l, const Id& id, const std::vector<Dest>& dests,
                          std::string_view sealed) -> Status {
      auto body = Unseal(repo_.key(), sealed);
      if (!body) return body.error().Annotate("blob " + IdHex(id) + " in pack " + name);
      auto plain = Decompress(*body, l.compression, l.raw_length);
      if (!plain) return plain.error().Annotate("blob " + IdHex(id) + " in pack " + name);
      if (repo_.BlobId(*plain) != id) return Status::Corruption("blob " + IdHex(id) + " in pack " + name + " does not match its id");
      return WriteBlob(*plain, dests);
    };
    if (need * 2 >= hi - lo) {
      auto data = repo_.backend().Load({FileType::kPack, name}, static_cast<int64_t>(lo), static_cast<int64_t>(hi - lo));
      if (!data) return data.error();
      downloaded_ += data->size();
      for (const auto& [l, rest] : wants) {
        DUMONT_RETURN_STATUS_IF_ERROR(
            handle_one(l, rest.first, rest.second, std::string_view(*data).substr(l.offset - lo, l.length)));
        Report();
      }
      return Status::Ok();
    }
    for (const auto& [l, rest] : wants) {
      auto data = repo_.backend().Load({FileType::kPack, name}, l.offset, l.length);
      if (!data) return data.error();
      downloaded_ += data->size();
      DUMONT_RETURN_STATUS_IF_ERROR(handle_one(l, rest.first, rest.second, *data));
      Report();
    }
    return Status::Ok();
  }

  void Report() {
    if (!cb_) return;
    std::lock_guard l(report_mu_);
    auto now = std::chrono::steady_clock::now();
    if (now - last_report_ < std::chrono::milliseconds(200)) return;
    last_report_ = now;
    cb_({progress_bytes_.load(), total_bytes_, files_.size(), std::chrono::duration<double>(now - start_).count()});
  }

  static Status ApplyMeta(const std::string& path, const Node& n, bool is_link) {
    if (geteuid() == 0) {
      if (::lchown(path.c_str(), n.uid, n.gid) != 0) return ErrnoStatus("cannot set owner of " + path);
    }
    if (!is_link && ::chmod(path.c_str(), n.mode) != 0) return ErrnoStatus("cannot set mode of " + path);
    timespec ts[2];
    ts[0].tv_sec = n.mtime_ns / 1'000'000'000;
    ts[0].tv_nsec = n.mtime_ns % 1'000'000'000;
    ts[1] = ts[0];
    if (::utimensat(AT_FDCWD, path.c_str(), ts, AT_SYMLINK_NOFOLLOW) != 0) return ErrnoStatus("cannot set times of " + path);
    return Status::Ok();
  }

  Result<RestoreSummary> Go(const Id& root) {
    start_ = std::chrono::steady_clock::now();
    if (opts_.target.empty()) return Err(Status::InvalidArgument("no --target directory given"));
    std::error_code ec;
    std::string target = std::filesystem::absolute(opts_.target, ec).lexically_normal().string();
    while (target.size() > 1 && target.back() == '/') target.pop_back();
    include_ = opts_.include;
    while (!include_.empty() && include_.front() == '/') include_.erase(0, 1);
    while (!include_.empty() && include_.back() == '/') include_.pop_back();
    std::filesystem::create_directories(target, ec);
    if (ec) return Err(Status::IOError("cannot create target " + target + ": " + ec.message()));
    repo_.PrefetchTrees(root, 16);
    DUMONT_RETURN_IF_ERROR(Walk(root, "", target, 0));
    if (!include_.empty() && dirs_.empty() && files_.empty() && links_.empty()) {
      return Err(Status::NotFound("'" + include_ + "' is not in the snapshot"));
    }

    // Directories (parents before children), then pre-sized files, then the data plan.
    for (const auto& d : bare_dirs_) DUMONT_RETURN_IF_ERROR(MakeDir(d));
    for (const auto& d : dirs_) DUMONT_RETURN_IF_ERROR(MakeDir(d.path));
    std::map<std::pair<uint64_t, uint64_t>, size_t> first_of_inode;  // (dev, inode) -> file index
    std::map<Id, std::map<Id, std::pair<BlobLocation, std::vector<Dest>>>> plan;
    std::vector<std::pair<size_t, size_t>> hardlinks;  // (file, target file)
    for (size_t i = 0; i < files_.size(); ++i) {
      const Node& n = files_[i].node;
      if (n.nlink > 1) {
        auto key = std::make_pair(n.dev, n.inode);
        auto it = first_of_inode.find(key);
        if (it != first_of_inode.end()) {
          hardlinks.emplace_back(i, it->second);
          continue;
        }
        first_of_inode[key] = i;
      }
      const std::string& p = files_[i].path;
      struct stat st{};
      if (lstat(p.c_str(), &st) == 0 && !S_ISREG(st.st_mode)) {
        if (S_ISLNK(st.st_mode)) ::unlink(p.c_str());  // never write through a link
        else return Err(Status::FailedPrecondition("cannot restore file " + p + ": a directory is in the way"));
      }
      int fd = ::open(p.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
      if (fd < 0) return Err(ErrnoStatus("cannot create " + p));
      if (::ftruncate(fd, static_cast<off_t>(n.size)) != 0) {
        Status s = ErrnoStatus("cannot size " + p);
        ::close(fd);
        return Err(s);
      }
      ::close(fd);
      uint64_t off = 0;
      for (const auto& id : n.content) {
        auto loc = repo_.Lookup(id);
        if (!loc) return Err(Status::NotFound("data of " + p + " is missing from the repository (blob " + IdHex(id) +
                                              "); run `dumont snapshot check`"));
        auto& slot = plan[loc->pack][id];
        slot.first = *loc;
        slot.second.push_back({i, off});
        off += loc->raw_length;
      }
      total_bytes_ += n.size;
    }

    std::vector<std::pair<Id, std::vector<std::pair<BlobLocation, std::pair<Id, std::vector<Dest>>>>>> work;
    for (auto& [pack, blobs] : plan) {
      std::vector<std::pair<BlobLocation, std::pair<Id, std::vector<Dest>>>> v;
      for (auto& [id, slot] : blobs) v.push_back({slot.first, {id, std::move(slot.second)}});
      work.emplace_back(pack, std::move(v));
    }
    int n_workers = opts_.workers > 0 ? opts_.workers
                                      : std::max<int>(static_cast<int>(std::thread::hardware_concurrency()),
                                                      repo_.backend().Connections());
    std::atomic<size_t> next{0};
    std::mutex err_mu;
    Status first_error;
    std::vector<std::thread> threads;
    for (int t = 0; t < n_workers; ++t) {
      threads.emplace_back([&] {
        for (;;) {
          size_t i = next++;
          if (i >= work.size()) return;
          {
            std::lock_guard l(err_mu);
            if (!first_error.ok()) return;
          }
          Status st = FetchPack(work[i].first, work[i].second);
          if (!st.ok()) {
            std::lock_guard l(err_mu);
            if (first_error.ok()) first_error = st;
            return;
          }
        }
      });
    }
    for (auto& t : threads) t.join();
    if (!first_error.ok()) return Err(first_error);

    RestoreSummary s;
    std::set<size_t> linked;
    for (const auto& h : hardlinks) linked.insert(h.first);
    for (size_t i = 0; i < files_.size(); ++i) {
      if (linked.count(i)) continue;
      DUMONT_RETURN_IF_ERROR(ApplyMeta(files_[i].path, files_[i].node, false));
      ++s.files;
      s.bytes += files_[i].node.size;
    }
    for (const auto& [i, target_file] : hardlinks) {
      ::unlink(files_[i].path.c_str());
      if (::link(files_[target_file].path.c_str(), files_[i].path.c_str()) != 0) {
        return Err(ErrnoStatus("cannot create hard link " + files_[i].path));
      }
      ++s.hardlinks;
    }
    for (const auto& l : links_) {
      struct stat st{};
      if (lstat(l.path.c_str(), &st) == 0) {
        if (S_ISDIR(st.st_mode)) return Err(Status::FailedPrecondition("cannot restore symlink " + l.path + ": a directory is in the way"));
        ::unlink(l.path.c_str());
      }
      if (::symlink(l.node.target.c_str(), l.path.c_str()) != 0) return Err(ErrnoStatus("cannot create symlink " + l.path));
      DUMONT_RETURN_IF_ERROR(ApplyMeta(l.path, l.node, true));
      ++s.symlinks;
    }
    std::sort(dirs_.begin(), dirs_.end(), [](const Item& a, const Item& b) { return a.depth > b.depth; });
    for (const auto& d : dirs_) {
      DUMONT_RETURN_IF_ERROR(ApplyMeta(d.path, d.node, false));
      ++s.dirs;
    }
    s.bytes_downloaded = downloaded_.load();
    s.duration_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    if (cb_) cb_({progress_bytes_.load(), total_bytes_, files_.size(), s.duration_s});
    return s;
  }

 private:
  Repository& repo_;
  const RestoreOptions& opts_;
  std::function<void(const RestoreProgress&)> cb_;
  std::string include_;
  std::vector<Item> dirs_, files_, links_;
  std::vector<std::string> bare_dirs_;
  uint64_t total_bytes_ = 0;
  std::atomic<uint64_t> progress_bytes_{0}, downloaded_{0};
  std::mutex report_mu_;
  std::chrono::steady_clock::time_point start_, last_report_;
};

}  // namespace

Result<RestoreSummary> Restore(Repository& repo, const Id& tree, const RestoreOptions& opts,
                               const std::function<void(const RestoreProgress&)>& progress) {
  Restore_ r(repo, opts, progress);
  return r.Go(tree);
}

}  // namespace dumont::snapshot
