#include "snapshot/backend.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>

#include "common/big_alloc.h"
#include "common/random.h"

namespace dumont::snapshot {

std::string_view FileTypeName(FileType t) {
  switch (t) {
    case FileType::kConfig: return "config";
    case FileType::kKey: return "keys";
    case FileType::kPack: return "data";
    case FileType::kIndex: return "index";
    case FileType::kSnapshot: return "snapshots";
    case FileType::kLock: return "locks";
  }
  return "unknown";
}

std::string ObjectPath(const Handle& h) {
  if (h.type == FileType::kConfig) return "config";
  std::string dir(FileTypeName(h.type));
  if (h.type == FileType::kPack) return dir + "/" + h.name.substr(0, 2) + "/" + h.name;
  return dir + "/" + h.name;
}

namespace {

Status CheckRange(const std::string& what, int64_t size, int64_t offset, int64_t length) {
  if (offset < 0 || length < 0) return Status::InvalidArgument("negative range reading " + what);
  if (offset > size || (length > 0 && offset + length > size)) {
    return Status::Corruption(what + " is " + std::to_string(size) + " bytes, shorter than the range " +
                              std::to_string(offset) + "+" + std::to_string(length) + " that the index expects");
  }
  return Status::Ok();
}

class MemBackend final : public Backend {
 public:
  std::string Location() const override { return "mem:"; }
  Status Create() override {
    std::lock_guard l(mu_);
    if (objects_.count("config")) return Status::AlreadyExists("mem: repository already initialised");
    return Status::Ok();
  }
  Status Save(const Handle& h, std::string_view data) override {
    std::lock_guard l(mu_);
    objects_[ObjectPath(h)] = std::string(data);
    return Status::Ok();
  }
  Result<std::string> Load(const Handle& h, int64_t offset, int64_t length) override {
    std::lock_guard l(mu_);
    auto it = objects_.find(ObjectPath(h));
    if (it == objects_.end()) return Err(Status::NotFound("mem:" + ObjectPath(h) + " does not exist"));
    int64_t size = static_cast<int64_t>(it->second.size());
    DUMONT_RETURN_IF_ERROR(CheckRange("mem:" + ObjectPath(h), size, offset, length));
    return it->second.substr(offset, length == 0 ? std::string::npos : static_cast<size_t>(length));
  }
  Result<FileInfo> Stat(const Handle& h) override {
    std::lock_guard l(mu_);
    auto it = objects_.find(ObjectPath(h));
    if (it == objects_.end()) return Err(Status::NotFound("mem:" + ObjectPath(h) + " does not exist"));
    return FileInfo{h.name, static_cast<int64_t>(it->second.size())};
  }
  Status Remove(const Handle& h) override {
    std::lock_guard l(mu_);
    objects_.erase(ObjectPath(h));
    return Status::Ok();
  }
  Result<std::vector<FileInfo>> List(FileType t) override {
    std::lock_guard l(mu_);
    std::vector<FileInfo> out;
    std::string prefix = std::string(FileTypeName(t)) + "/";
    for (const auto& [k, v] : objects_) {
      if (t == FileType::kConfig) {
        if (k == "config") out.push_back({"config", static_cast<int64_t>(v.size())});
      } else if (k.rfind(prefix, 0) == 0) {
        out.push_back({k.substr(k.rfind('/') + 1), static_cast<int64_t>(v.size())});
      }
    }
    return out;
  }
  int Connections() const override { return 8; }

 private:
  std::mutex mu_;
  std::map<std::string, std::string> objects_;
};

class LocalBackend final : public Backend {
 public:
  explicit LocalBackend(std::string dir) : root_(std::move(dir)) {}
  std::string Location() const override { return root_; }

  Status Create() override {
    std::error_code ec;
    if (std::filesystem::exists(Path({FileType::kConfig, ""}))) {
      return Status::AlreadyExists("a repository already exists at " + root_);
    }
    std::filesystem::create_directories(root_, ec);
    for (auto t : {FileType::kKey, FileType::kIndex, FileType::kSnapshot, FileType::kLock}) {
      std::filesystem::create_directories(root_ + "/" + std::string(FileTypeName(t)), ec);
    }
    static const char* kHex = "0123456789abcdef";
    for (int i = 0; i < 256 && !ec; ++i) {
      std::filesystem::create_directories(root_ + "/data/" + kHex[i >> 4] + kHex[i & 15], ec);
    }
    std::filesystem::create_directories(root_ + "/tmp", ec);
    if (ec) return Status::IOError("cannot create repository directories in " + root_ + ": " + ec.message());
    return Status::Ok();
  }

  // Write to tmp/, fsync, rename: readers never see a partial file, even after kill -9.
  Status Save(const Handle& h, std::string_view data) override {
    std::string final_path = Path(h);
    std::string tmp = root_ + "/tmp/" + NewId("") + ".tmp";
    int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0 && errno == ENOENT) {
      std::error_code ec;
      std::filesystem::create_directories(root_ + "/tmp", ec);
      fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    }
    if (fd < 0) return Errno("cannot create " + tmp);
    if (!WriteAll(fd, data)) {
      Status st = Errno("cannot write " + final_path);
      ::close(fd);
      ::unlink(tmp.c_str());
      return st;
    }
    if (::fdatasync(fd) != 0) {
      Status st = Errno("cannot sync " + final_path);
      ::close(fd);
      ::unlink(tmp.c_str());
      return st;
    }
    ::close(fd);
    if (::rename(tmp.c_str(), final_path.c_str()) != 0) {
      if (errno == ENOENT) {  // data/xx missing (a repository copied without empty dirs)
        std::error_code ec;
        std::filesystem::create_directories(std::filesystem::path(final_path).parent_path(), ec);
        if (::rename(tmp.c_str(), final_path.c_str()) == 0) return Status::Ok();
      }
      Status st = Errno("cannot rename into " + final_path);
      ::unlink(tmp.c_str());
      return st;
    }
    return Status::Ok();
  }

  // Writes data to fd. Large objects (packs) go around the page cache with O_DIRECT, the unaligned
  // tail with a buffered write: on VMs a buffered write costs a kernel copy into freshly faulted
  // pages, ~1 s of CPU per GB, and the data is synced at once anyway. Page-aligned data (the
  // repository's pack buffers, PackBuffer) is written as it is; other data through an aligned
  // bounce buffer. Falls back to buffered writes where O_DIRECT is refused (tmpfs, some FUSE).
  static bool WriteAll(int fd, std::string_view data) {
    constexpr size_t kAlign = 4096, kBounce = 4 << 20;
    size_t off = 0;
    auto plain = [&](size_t upto) {
      while (off < upto) {
        ssize_t n = ::write(fd, data.data() + off, upto - off);
        if (n < 0) {
          if (errno == EINTR) continue;
          return false;
        }
        off += static_cast<size_t>(n);
      }
      return true;
    };
    size_t aligned = data.size() - data.size() % kAlign;
    int fl = ::fcntl(fd, F_GETFL);
    if (aligned >= 16 * kAlign && fl >= 0 && ::fcntl(fd, F_SETFL, fl | O_DIRECT) == 0) {
      bool in_place = reinterpret_cast<uintptr_t>(data.data()) % kAlign == 0;
      thread_local BigBuffer bounce_buf;
      char* bounce = in_place ? nullptr : bounce_buf.TryGet(kBounce);
      bool direct_ok = in_place || bounce != nullptr;
      while (direct_ok && off < aligned) {
        size_t n = in_place ? aligned - off : std::min(kBounce, aligned - off);
        const char* src = data.data() + off;
        if (!in_place) {
          std::memcpy(bounce, src, n);
          src = bounce;
        }
        size_t done = 0;
        while (done < n) {
          ssize_t w = ::write(fd, src + done, n - done);
          if (w < 0 && errno == EINTR) continue;
          if (w < 0 && errno == EINVAL && off == 0 && done == 0) {  // O_DIRECT not supported here
            direct_ok = false;
            break;
          }
          if (w < 0) return false;
          done += static_cast<size_t>(w);
        }
        if (direct_ok) off += n;
      }
      ::fcntl(fd, F_SETFL, fl);
    }
    return plain(data.size());
  }

  // Reads [offset, offset + n) of a large object that is not in the page cache with O_DIRECT (the
  // aligned span around it into an aligned buffer, then the range out of it): a restore reads
  // every pack once, and on VMs the buffered read's copy out of freshly faulted page-cache pages
  // cost more CPU than decrypting. nullopt = use a buffered read (cached, or O_DIRECT refused).
  // Reads [offset, offset + n) with O_DIRECT into *out when the range is not cached; false (and
  // nothing read) when it is cached or O_DIRECT is refused, and the buffered path runs instead.
  static bool LoadDirect(int fd, const std::string& path, int64_t offset, size_t n, std::string* out) {
    constexpr uint64_t kAlign = 4096;
    uint64_t lo = static_cast<uint64_t>(offset) / kAlign * kAlign;
    uint64_t hi = (static_cast<uint64_t>(offset) + n + kAlign - 1) / kAlign * kAlign;
    void* map = ::mmap(nullptr, kAlign, PROT_READ, MAP_SHARED, fd, static_cast<off_t>(lo));
    if (map == MAP_FAILED) return false;
    unsigned char resident = 1;
    int rc = ::mincore(map, kAlign, &resident);
    ::munmap(map, kAlign);
    if (rc != 0 || (resident & 1)) return false;
    int dfd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_DIRECT);
    if (dfd < 0) return false;
    // Read into *out itself, at its first 4 KiB-aligned address, then slide the range down: no
    // second buffer. A reused *out (restore's range pool) is only zero-filled where it grows.
    size_t need = hi - lo + kAlign;
    if (out->size() < need) out->resize(need);
    size_t adj = (kAlign - reinterpret_cast<uintptr_t>(out->data()) % kAlign) % kAlign;
    char* buf = out->data() + adj;
    uint64_t got = 0, want = static_cast<uint64_t>(offset) + n - lo;
    while (got < want) {
      ssize_t r = ::pread(dfd, buf + got, hi - lo - got, static_cast<off_t>(lo + got));
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0 || (static_cast<uint64_t>(r) % kAlign != 0 && got + static_cast<uint64_t>(r) < want)) {
        ::close(dfd);
        return false;  // an error or an odd short read: the buffered path reports it
      }
      got += static_cast<uint64_t>(r);
    }
    ::close(dfd);
    size_t skip = adj + (static_cast<uint64_t>(offset) - lo);
    std::memmove(out->data(), out->data() + skip, n);
    out->resize(n);
    return true;
  }

  Result<std::string> Load(const Handle& h, int64_t offset, int64_t length) override {
    std::string out;
    DUMONT_RETURN_IF_ERROR(LoadInto(h, offset, length, &out));
    return out;
  }

  Status LoadInto(const Handle& h, int64_t offset, int64_t length, std::string* out) override {
    std::string path = Path(h);
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      if (errno == ENOENT) return Status::NotFound(path + " does not exist");
      return Errno("cannot open " + path);
    }
    struct stat st{};
    ::fstat(fd, &st);
    Status range = CheckRange(path, st.st_size, offset, length);
    if (!range.ok()) {
      ::close(fd);
      return range;
    }
    size_t n = length == 0 ? static_cast<size_t>(st.st_size - offset) : static_cast<size_t>(length);
    if (n >= (1 << 20) && LoadDirect(fd, path, offset, n, out)) {
      ::close(fd);
      return Status::Ok();
    }
    out->resize(n);
    size_t got = 0;
    while (got < n) {
      ssize_t r = ::pread(fd, out->data() + got, n - got, offset + static_cast<int64_t>(got));
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) {
        Status e = r == 0 ? Status::Corruption(path + " ended early") : Errno("cannot read " + path);
        ::close(fd);
        return e;
      }
      got += static_cast<size_t>(r);
    }
    ::close(fd);
    return Status::Ok();
  }

  Result<FileInfo> Stat(const Handle& h) override {
    struct stat st{};
    std::string path = Path(h);
    if (::stat(path.c_str(), &st) != 0) {
      if (errno == ENOENT) return Err(Status::NotFound(path + " does not exist"));
      return Err(Errno("cannot stat " + path));
    }
    return FileInfo{h.name, st.st_size};
  }

  Status Remove(const Handle& h) override {
    std::string path = Path(h);
    if (::unlink(path.c_str()) != 0 && errno != ENOENT) return Errno("cannot remove " + path);
    return Status::Ok();
  }

  Result<std::vector<FileInfo>> List(FileType t) override {
    std::vector<FileInfo> out;
    if (t == FileType::kConfig) {
      auto st = Stat({t, ""});
      if (st) out.push_back({"config", st->size});
      return out;
    }
    std::string dir = root_ + "/" + std::string(FileTypeName(t));
    std::error_code ec;
    auto add_dir = [&](const std::string& d) -> Status {
      for (auto it = std::filesystem::directory_iterator(d, ec); !ec && it != std::filesystem::directory_iterator();
           it.increment(ec)) {
        if (!it->is_regular_file()) continue;
        std::string name = it->path().filename().string();
        if (name.find(".tmp") != std::string::npos) continue;
        out.push_back({name, static_cast<int64_t>(it->file_size())});
      }
      if (ec && ec != std::errc::no_such_file_or_directory) {
        return Status::IOError("cannot list " + d + ": " + ec.message());
      }
      ec.clear();
      return Status::Ok();
    };
    if (t == FileType::kPack) {
      for (auto it = std::filesystem::directory_iterator(dir, ec); !ec && it != std::filesystem::directory_iterator();
           it.increment(ec)) {
        if (it->is_directory()) DUMONT_RETURN_IF_ERROR(add_dir(it->path().string()));
      }
      if (ec && ec != std::errc::no_such_file_or_directory) {
        return Err(Status::IOError("cannot list " + dir + ": " + ec.message()));
      }
    } else {
      DUMONT_RETURN_IF_ERROR(add_dir(dir));
    }
    return out;
  }

  int Connections() const override { return 4; }

 private:
  std::string Path(const Handle& h) const { return root_ + "/" + ObjectPath(h); }
  static Status Errno(const std::string& what) {
    int e = errno;
    std::string msg = what + ": " + std::strerror(e);
    if (e == ENOSPC || e == EDQUOT) return Status::IOError(msg + " (the disk is full)");
    if (e == EACCES || e == EPERM || e == EROFS) return Status::PermissionDenied(msg);
    return Status::IOError(msg);
  }

  std::string root_;
};

}  // namespace

std::unique_ptr<Backend> NewMemBackend() { return std::make_unique<MemBackend>(); }
std::unique_ptr<Backend> NewLocalBackend(const std::string& dir) { return std::make_unique<LocalBackend>(dir); }

Result<std::unique_ptr<Backend>> OpenBackend(const std::string& location) {
  if (location.empty()) return Err(Status::InvalidArgument("no repository given: pass --repo DIR or --repo s3:URL"));
  if (location == "mem:") return NewMemBackend();
  if (location.rfind("s3:", 0) == 0) return OpenS3Backend(location);
  std::string dir = location.rfind("local:", 0) == 0 ? location.substr(6) : location;
  return NewLocalBackend(std::filesystem::absolute(dir).lexically_normal().string());
}

}  // namespace dumont::snapshot
