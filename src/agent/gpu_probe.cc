#include "agent/gpu_probe.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstring>
#include <mutex>
#include <string_view>
#include <utility>

extern char** environ;

namespace dumont::agent {

nlohmann::json GpuReading::ToJson() const {
  nlohmann::json gpus_json = nlohmann::json::array();
  for (const GpuSample& g : gpus) {
    nlohmann::json procs = nlohmann::json::array();
    for (const GpuProcess& p : g.processes) {
      procs.push_back({{"pid", p.pid}, {"used_mem_mb", p.used_mem_mb}});
    }
    gpus_json.push_back({{"index", g.index},
                         {"name", g.name},
                         {"uuid", g.uuid},
                         {"util_pct", g.util_pct},
                         {"mem_used_mb", g.mem_used_mb},
                         {"mem_total_mb", g.mem_total_mb},
                         {"processes", std::move(procs)}});
  }
  return {{"source", source}, {"gpus", std::move(gpus_json)}};
}

namespace {

constexpr double kBytesPerMb = 1024.0 * 1024.0;

// ---------------------------------------------------------------------------------------------
// NVML: our own declarations of the C ABI (nvml.h is not needed to build).

extern "C" {
using nvmlReturn_t = int;
struct nvmlDevice_st;
using nvmlDevice_t = nvmlDevice_st*;
struct nvmlUtilization_t {
  unsigned int gpu;
  unsigned int memory;
};
struct nvmlMemory_t {
  unsigned long long total;
  unsigned long long free;
  unsigned long long used;
};
// Taken by the plain nvmlDeviceGetComputeRunningProcesses.
struct nvmlProcessInfo_v1_t {
  unsigned int pid;
  unsigned long long usedGpuMemory;
};
// Taken by nvmlDeviceGetComputeRunningProcesses_v2 and _v3 (nvmlProcessInfo_t in NVML 12).
struct nvmlProcessInfo_v2_t {
  unsigned int pid;
  unsigned long long usedGpuMemory;
  unsigned int gpuInstanceId;
  unsigned int computeInstanceId;
};
}  // extern "C"

static_assert(sizeof(nvmlProcessInfo_v1_t) == 16);
static_assert(sizeof(nvmlProcessInfo_v2_t) == 24);

constexpr nvmlReturn_t kNvmlSuccess = 0;
constexpr nvmlReturn_t kNvmlErrorInsufficientSize = 7;
constexpr unsigned long long kNvmlValueNotAvailable = ~0ULL;
constexpr unsigned int kNvmlStringBuffer = 96;  // NVML_DEVICE_NAME_V2_BUFFER_SIZE, ..._UUID_V2_...

struct NvmlApi {
  nvmlReturn_t (*init)() = nullptr;
  nvmlReturn_t (*shutdown)() = nullptr;
  nvmlReturn_t (*get_count)(unsigned int*) = nullptr;
  nvmlReturn_t (*get_handle)(unsigned int, nvmlDevice_t*) = nullptr;
  nvmlReturn_t (*get_name)(nvmlDevice_t, char*, unsigned int) = nullptr;
  nvmlReturn_t (*get_uuid)(nvmlDevice_t, char*, unsigned int) = nullptr;
  nvmlReturn_t (*get_utilization)(nvmlDevice_t, nvmlUtilization_t*) = nullptr;
  nvmlReturn_t (*get_memory)(nvmlDevice_t, nvmlMemory_t*) = nullptr;
  // The info array's element type depends on the symbol found; process_stride says which.
  nvmlReturn_t (*get_processes)(nvmlDevice_t, unsigned int*, void*) = nullptr;
  size_t process_stride = 0;
  const char* (*error_string)(nvmlReturn_t) = nullptr;  // optional

  std::string Describe(const char* call, nvmlReturn_t rc) const {
    std::string what;
    if (error_string != nullptr) {
      const char* s = error_string(rc);
      if (s != nullptr) what = s;
    }
    if (what.empty()) what = "NVML error";
    return std::string(call) + " failed: " + what + " (NVML code " + std::to_string(rc) + ")";
  }
};

template <typename Fn>
bool LoadSymbol(void* handle, const char* name, Fn* out) {
  void* sym = dlsym(handle, name);
  if (sym == nullptr) return false;
  *out = reinterpret_cast<Fn>(sym);
  return true;
}

class NvmlProbe final : public GpuProbe {
 public:
  NvmlProbe(void* handle, NvmlApi api) : handle_(handle), api_(api) {}
  ~NvmlProbe() override {
    api_.shutdown();
    dlclose(handle_);
  }
  NvmlProbe(const NvmlProbe&) = delete;
  NvmlProbe& operator=(const NvmlProbe&) = delete;

  std::string Name() const override { return "nvml"; }

  Result<GpuReading> Read() override {
    std::lock_guard<std::mutex> lock(mu_);
    GpuReading reading;
    reading.source = "nvml";
    unsigned int count = 0;
    nvmlReturn_t rc = api_.get_count(&count);
    if (rc != kNvmlSuccess)
      return Err(Status::Unavailable(api_.Describe("nvmlDeviceGetCount_v2", rc)));
    for (unsigned int i = 0; i < count; ++i) {
      auto sample = ReadDevice(i);
      if (!sample) return Err(sample.error());
      reading.gpus.push_back(std::move(*sample));
    }
    return reading;
  }

 private:
  Result<GpuSample> ReadDevice(unsigned int i) {
    const std::string where = "GPU " + std::to_string(i) + ": ";
    GpuSample s;
    s.index = static_cast<int>(i);
    nvmlDevice_t dev = nullptr;
    nvmlReturn_t rc = api_.get_handle(i, &dev);
    if (rc != kNvmlSuccess) {
      return Err(Status::Unavailable(where + api_.Describe("nvmlDeviceGetHandleByIndex_v2", rc)));
    }
    char buf[kNvmlStringBuffer + 1];
    std::memset(buf, 0, sizeof buf);
    if (api_.get_name(dev, buf, kNvmlStringBuffer) == kNvmlSuccess) s.name = buf;
    std::memset(buf, 0, sizeof buf);
    if (api_.get_uuid(dev, buf, kNvmlStringBuffer) == kNvmlSuccess) s.uuid = buf;

    nvmlUtilization_t util{};
    rc = api_.get_utilization(dev, &util);
    if (rc != kNvmlSuccess) {
      return Err(Status::Unavailable(where + api_.Describe("nvmlDeviceGetUtilizationRates", rc)));
    }
    s.util_pct = std::min(100.0, static_cast<double>(util.gpu));

    nvmlMemory_t mem{};
    rc = api_.get_memory(dev, &mem);
    if (rc != kNvmlSuccess) {
      return Err(Status::Unavailable(where + api_.Describe("nvmlDeviceGetMemoryInfo", rc)));
    }
    s.mem_used_mb = static_cast<double>(mem.used) / kBytesPerMb;
    s.mem_total_mb = static_cast<double>(mem.total) / kBytesPerMb;
    s.processes = ReadProcesses(dev);
    return s;
  }

  // NVML's two-call protocol: too small a buffer gives INSUFFICIENT_SIZE and the needed count.
  // Processes can start between the calls, so retry a few times with room to spare. Any other
  // error (commonly NO_PERMISSION or NOT_SUPPORTED in containers) gives an empty list.
  std::vector<GpuProcess> ReadProcesses(nvmlDevice_t dev) {
    constexpr unsigned int kMaxProcesses = 1u << 16;
    const size_t stride = api_.process_stride;
    unsigned int capacity = 32;
    for (int attempt = 0; attempt < 5; ++attempt) {
      std::vector<unsigned char> buf(static_cast<size_t>(capacity) * stride);
      unsigned int n = capacity;
      nvmlReturn_t rc = api_.get_processes(dev, &n, buf.data());
      if (rc == kNvmlErrorInsufficientSize) {
        if (n <= capacity) n = capacity;  // a driver that does not say how many it needs
        capacity = std::min(kMaxProcesses, n + n / 2 + 8);
        continue;
      }
      if (rc != kNvmlSuccess) return {};
      std::vector<GpuProcess> out;
      n = std::min(n, capacity);
      out.reserve(n);
      for (unsigned int k = 0; k < n; ++k) {
        // memcpy: the buffer is bytes, and both layouts start with {pid, usedGpuMemory}.
        nvmlProcessInfo_v1_t info{};
        std::memcpy(&info.pid, buf.data() + k * stride + offsetof(nvmlProcessInfo_v1_t, pid),
                    sizeof info.pid);
        std::memcpy(&info.usedGpuMemory,
                    buf.data() + k * stride + offsetof(nvmlProcessInfo_v1_t, usedGpuMemory),
                    sizeof info.usedGpuMemory);
        GpuProcess p;
        p.pid = info.pid;
        p.used_mem_mb = info.usedGpuMemory == kNvmlValueNotAvailable
                            ? 0.0
                            : static_cast<double>(info.usedGpuMemory) / kBytesPerMb;
        out.push_back(p);
      }
      return out;
    }
    return {};
  }

  std::mutex mu_;
  void* handle_;
  NvmlApi api_;
};

// ---------------------------------------------------------------------------------------------
// Running a command with a deadline (nvidia-smi can hang when the driver is wedged).

struct CommandResult {
  int wait_status = 0;
  std::string out;
  std::string err;
};

class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  ~Fd() { Close(); }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  void Close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_;
};

std::string Errno(int err) { return std::strerror(err); }

Result<CommandResult> RunCommand(const std::vector<std::string>& argv,
                                 std::chrono::milliseconds timeout) {
  constexpr size_t kMaxOutput = 1 << 20;
  const std::string& binary = argv.at(0);
  int out_pipe[2], err_pipe[2];
  if (pipe2(out_pipe, O_CLOEXEC) != 0) {
    return Err(Status::Unavailable("cannot run '" + binary + "': pipe: " + Errno(errno)));
  }
  Fd out_r(out_pipe[0]), out_w(out_pipe[1]);
  if (pipe2(err_pipe, O_CLOEXEC) != 0) {
    return Err(Status::Unavailable("cannot run '" + binary + "': pipe: " + Errno(errno)));
  }
  Fd err_r(err_pipe[0]), err_w(err_pipe[1]);

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, out_w.get(), 1);
  posix_spawn_file_actions_adddup2(&actions, err_w.get(), 2);

  // Its own process group (so a timeout kills everything it started), no inherited signal mask,
  // default dispositions for signals the agent may ignore or handle.
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  posix_spawnattr_setflags(&attr,
                           POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  posix_spawnattr_setpgroup(&attr, 0);
  sigset_t mask;
  sigemptyset(&mask);
  posix_spawnattr_setsigmask(&attr, &mask);
  sigset_t defaults;
  sigemptyset(&defaults);
  for (int sig : {SIGPIPE, SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGCHLD}) sigaddset(&defaults, sig);
  posix_spawnattr_setsigdefault(&attr, &defaults);

  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = -1;
  int rc = posix_spawnp(&pid, binary.c_str(), &actions, &attr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  if (rc != 0) return Err(Status::Unavailable("cannot run '" + binary + "': " + Errno(rc)));
  out_w.Close();
  err_w.Close();

  CommandResult result;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  bool out_open = true, err_open = true, timed_out = false;
  int poll_error = 0;
  char buf[4096];
  while (out_open || err_open) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      timed_out = true;
      break;
    }
    pollfd fds[2];
    nfds_t nfds = 0;
    if (out_open) fds[nfds++] = {out_r.get(), POLLIN, 0};
    if (err_open) fds[nfds++] = {err_r.get(), POLLIN, 0};
    int ready = poll(fds, nfds, static_cast<int>(std::min<long long>(left.count(), 1000)));
    if (ready < 0 && errno != EINTR) {
      poll_error = errno;
      break;
    }
    if (ready <= 0) continue;
    for (nfds_t k = 0; k < nfds; ++k) {
      if (fds[k].revents == 0) continue;
      bool is_out = fds[k].fd == out_r.get();
      ssize_t got = ::read(fds[k].fd, buf, sizeof buf);
      if (got < 0 && (errno == EINTR || errno == EAGAIN)) continue;
      if (got <= 0) {
        (is_out ? out_open : err_open) = false;
        continue;
      }
      std::string& dest = is_out ? result.out : result.err;
      if (dest.size() < kMaxOutput) {
        dest.append(buf, std::min(static_cast<size_t>(got), kMaxOutput - dest.size()));
      }
    }
  }
  // Both pipes are closed (or we gave up): reap it, still within the deadline.
  int status = 0;
  bool reaped = false;
  while (!timed_out && poll_error == 0) {
    pid_t w = waitpid(pid, &status, WNOHANG);
    if (w == pid) {
      reaped = true;
      break;
    }
    if (w < 0 && errno != EINTR) break;
    if (std::chrono::steady_clock::now() >= deadline) {
      timed_out = true;
      break;
    }
    usleep(5000);
  }
  if (!reaped) {
    ::kill(-pid, SIGKILL);  // its whole process group
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
  }
  if (poll_error != 0) {
    return Err(Status::Unavailable("reading from '" + binary + "': poll: " + Errno(poll_error)));
  }
  if (timed_out) {
    return Err(Status::Unavailable("'" + binary + "' did not finish within " +
                                   std::to_string(timeout.count()) + " ms (killed)"));
  }
  result.wait_status = status;
  return result;
}

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t' || s.front() == '\r'))
    s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r'))
    s.remove_suffix(1);
  return s;
}

// For error messages: at most 120 characters, control characters shown as '?'.
std::string Excerpt(std::string_view s) {
  std::string out(s.substr(0, 120));
  for (char& c : out) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = '?';
  }
  if (s.size() > 120) out += "...";
  return out;
}

std::string FirstLine(const std::string& s) {
  std::string_view v = Trim(s);
  return Excerpt(v.substr(0, v.find('\n')));
}

bool ParseNumber(std::string_view s, double* out) {
  s = Trim(s);
  if (s.empty()) return false;
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), *out);
  return ec == std::errc() && ptr == s.data() + s.size() && std::isfinite(*out);
}

class NvidiaSmiProbe final : public GpuProbe {
 public:
  NvidiaSmiProbe(std::string binary, std::chrono::milliseconds timeout)
      : binary_(std::move(binary)), timeout_(timeout) {}

  std::string Name() const override { return "nvidia-smi"; }

  Result<GpuReading> Read() override {
    auto run =
        RunCommand({binary_, "--query-gpu=index,name,uuid,utilization.gpu,memory.used,memory.total",
                    "--format=csv,noheader,nounits"},
                   timeout_);
    if (!run) return Err(run.error());
    const int st = run->wait_status;
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
      std::string how = WIFEXITED(st) ? "exited with status " + std::to_string(WEXITSTATUS(st))
                                      : "was killed by signal " + std::to_string(WTERMSIG(st));
      std::string said = FirstLine(run->out);
      if (said.empty()) said = FirstLine(run->err);
      return Err(
          Status::Unavailable("'" + binary_ + "' " + how + (said.empty() ? "" : ": " + said)));
    }
    auto gpus = ParseNvidiaSmiCsv(run->out);
    if (!gpus) return Err(gpus.error().Annotate("'" + binary_ + "' output"));
    GpuReading reading;
    reading.source = "nvidia-smi";
    reading.gpus = std::move(*gpus);
    return reading;
  }

 private:
  const std::string binary_;
  const std::chrono::milliseconds timeout_;
};

// ---------------------------------------------------------------------------------------------
// The simulated GPU.

constexpr double kVirtualDefaultMemTotalMb = 24576;
constexpr int64_t kVirtualMaxCount = 64;

class VirtualGpuProbe final : public GpuProbe {
 public:
  explicit VirtualGpuProbe(std::string file) : file_(std::move(file)) {}

  std::string Name() const override { return "virtual"; }

  Result<GpuReading> Read() override {
    double util = 0;
    int64_t count = 1;
    double mem_total = kVirtualDefaultMemTotalMb;

    std::string text;
    bool exists = true;
    DUMONT_RETURN_IF_ERROR(ReadSmallFile(&text, &exists));
    if (exists) {
      auto bad = [&](const std::string& why) {
        return Err(Status::InvalidArgument("virtual GPU file '" + file_ + "': " + why));
      };
      nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
      if (j.is_discarded()) return bad("not valid JSON");
      if (!j.is_object()) return bad("expected a JSON object like {\"util\": 50, \"count\": 1}");
      if (auto it = j.find("util"); it != j.end()) {
        if (!it->is_number()) return bad("\"util\" must be a number (0..100)");
        util = it->get<double>();
      }
      if (auto it = j.find("count"); it != j.end()) {
        if (!it->is_number_integer()) return bad("\"count\" must be an integer");
        if (it->is_number_unsigned()
                ? it->get<uint64_t>() > kVirtualMaxCount
                : (it->get<int64_t>() < 0 || it->get<int64_t>() > kVirtualMaxCount)) {
          return bad("\"count\" must be between 0 and " + std::to_string(kVirtualMaxCount));
        }
        count = it->get<int64_t>();
      }
      if (auto it = j.find("mem_total_mb"); it != j.end()) {
        if (!it->is_number()) return bad("\"mem_total_mb\" must be a number");
        mem_total = it->get<double>();
        if (!(mem_total >= 0) || !std::isfinite(mem_total)) {
          return bad("\"mem_total_mb\" must be a finite number >= 0");
        }
      }
    }
    if (std::isnan(util)) util = 0;
    util = std::clamp(util, 0.0, 100.0);

    GpuReading reading;
    reading.source = "virtual";
    for (int64_t i = 0; i < count; ++i) {
      GpuSample s;
      s.index = static_cast<int>(i);
      s.name = "Dumont Virtual GPU (simulated)";
      s.uuid = "GPU-virtual-" + std::to_string(i);
      s.util_pct = util;
      s.mem_used_mb = 0;
      s.mem_total_mb = mem_total;
      reading.gpus.push_back(std::move(s));
    }
    return reading;
  }

 private:
  Status ReadSmallFile(std::string* text, bool* exists) const {
    constexpr size_t kMaxBytes = 64 * 1024;
    int fd = ::open(file_.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      if (errno == ENOENT) {
        *exists = false;
        return Status::Ok();
      }
      return Status::IOError("cannot open virtual GPU file '" + file_ + "': " + Errno(errno));
    }
    Fd guard(fd);
    char buf[4096];
    while (true) {
      ssize_t got = ::read(fd, buf, sizeof buf);
      if (got < 0 && errno == EINTR) continue;
      if (got < 0) {
        return Status::IOError("cannot read virtual GPU file '" + file_ + "': " + Errno(errno));
      }
      if (got == 0) break;
      text->append(buf, static_cast<size_t>(got));
      if (text->size() > kMaxBytes) {
        return Status::InvalidArgument("virtual GPU file '" + file_ + "': larger than " +
                                       std::to_string(kMaxBytes) + " bytes");
      }
    }
    *exists = true;
    return Status::Ok();
  }

  const std::string file_;
};

}  // namespace

// ---------------------------------------------------------------------------------------------

Result<std::unique_ptr<GpuProbe>> OpenNvmlProbe(const std::string& library) {
  dlerror();
  void* handle = dlopen(library.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    const char* e = dlerror();
    return Err(Status::Unavailable("cannot load NVML library '" + library +
                                   "': " + (e != nullptr ? e : "dlopen failed")));
  }
  NvmlApi api;
  const char* missing = nullptr;
  auto need = [&](const char* name, auto* fn) {
    if (missing == nullptr && !LoadSymbol(handle, name, fn)) missing = name;
  };
  need("nvmlInit_v2", &api.init);
  need("nvmlShutdown", &api.shutdown);
  need("nvmlDeviceGetCount_v2", &api.get_count);
  need("nvmlDeviceGetHandleByIndex_v2", &api.get_handle);
  need("nvmlDeviceGetName", &api.get_name);
  need("nvmlDeviceGetUUID", &api.get_uuid);
  need("nvmlDeviceGetUtilizationRates", &api.get_utilization);
  need("nvmlDeviceGetMemoryInfo", &api.get_memory);
  if (missing == nullptr) {
    if (LoadSymbol(handle, "nvmlDeviceGetComputeRunningProcesses_v3", &api.get_processes) ||
        LoadSymbol(handle, "nvmlDeviceGetComputeRunningProcesses_v2", &api.get_processes)) {
      api.process_stride = sizeof(nvmlProcessInfo_v2_t);
    } else if (LoadSymbol(handle, "nvmlDeviceGetComputeRunningProcesses", &api.get_processes)) {
      api.process_stride = sizeof(nvmlProcessInfo_v1_t);
    } else {
      missing = "nvmlDeviceGetComputeRunningProcesses";
    }
  }
  if (missing != nullptr) {
    dlclose(handle);
    return Err(Status::Unavailable("NVML library '" + library + "' has no symbol " + missing +
                                   " (not NVML, or a driver too old)"));
  }
  LoadSymbol(handle, "nvmlErrorString", &api.error_string);

  nvmlReturn_t rc = api.init();
  if (rc != kNvmlSuccess) {
    std::string msg = api.Describe("nvmlInit_v2", rc);
    dlclose(handle);
    return Err(Status::Unavailable("NVML library '" + library + "': " + msg));
  }
  unsigned int count = 0;
  rc = api.get_count(&count);
  if (rc != kNvmlSuccess) {
    std::string msg = api.Describe("nvmlDeviceGetCount_v2", rc);
    api.shutdown();
    dlclose(handle);
    return Err(Status::Unavailable("NVML library '" + library + "': " + msg));
  }
  return std::unique_ptr<GpuProbe>(std::make_unique<NvmlProbe>(handle, api));
}

Result<std::vector<GpuSample>> ParseNvidiaSmiCsv(const std::string& output) {
  std::vector<GpuSample> gpus;
  std::string_view rest(output);
  int line_no = 0;
  while (!rest.empty()) {
    size_t nl = rest.find('\n');
    std::string_view line = Trim(rest.substr(0, nl));
    rest = nl == std::string_view::npos ? std::string_view() : rest.substr(nl + 1);
    ++line_no;
    if (line.empty()) continue;
    const std::string where = "line " + std::to_string(line_no) + " (\"" + Excerpt(line) + "\"): ";

    std::vector<std::string_view> f;
    std::vector<size_t> commas;
    for (size_t start = 0;;) {
      size_t comma = line.find(',', start);
      f.push_back(Trim(line.substr(start, comma - start)));
      if (comma == std::string_view::npos) break;
      commas.push_back(comma);
      start = comma + 1;
    }
    if (f.size() < 6) {
      return Err(Status::Unavailable(where + "expected 6 comma-separated fields, got " +
                                     std::to_string(f.size())));
    }
    // index, name (may itself contain commas), uuid, utilization.gpu, memory.used, memory.total
    const size_t n = f.size();
    GpuSample s;
    {
      std::string_view idx = f[0];
      auto [ptr, ec] = std::from_chars(idx.data(), idx.data() + idx.size(), s.index);
      if (idx.empty() || ec != std::errc() || ptr != idx.data() + idx.size() || s.index < 0) {
        return Err(Status::Unavailable(where + "index is not a number"));
      }
    }
    // The name is everything between the first comma and the uuid's comma, as printed.
    s.name = std::string(Trim(line.substr(commas[0] + 1, commas[n - 5] - commas[0] - 1)));
    s.uuid = std::string(f[n - 4]);
    struct Field {
      const char* name;
      std::string_view text;
      double* out;
    };
    for (const Field& field : {Field{"utilization.gpu", f[n - 3], &s.util_pct},
                               Field{"memory.used", f[n - 2], &s.mem_used_mb},
                               Field{"memory.total", f[n - 1], &s.mem_total_mb}}) {
      if (!ParseNumber(field.text, field.out) || *field.out < 0) {
        return Err(Status::Unavailable(where + field.name + " is not a number >= 0: \"" +
                                       Excerpt(field.text) + "\""));
      }
    }
    if (s.util_pct > 100) {
      return Err(Status::Unavailable(where + "utilization.gpu is above 100"));
    }
    gpus.push_back(std::move(s));
  }
  return gpus;
}

Result<std::unique_ptr<GpuProbe>> OpenNvidiaSmiProbe(const std::string& binary,
                                                     std::chrono::milliseconds timeout) {
  auto probe = std::make_unique<NvidiaSmiProbe>(binary, timeout);
  auto first = probe->Read();
  if (!first) return Err(first.error());
  return std::unique_ptr<GpuProbe>(std::move(probe));
}

std::unique_ptr<GpuProbe> NewVirtualGpuProbe(const std::string& file) {
  return std::make_unique<VirtualGpuProbe>(file);
}

std::unique_ptr<GpuProbe> OpenBestProbe(const std::string& nvml_library,
                                        const std::string& nvidia_smi,
                                        const std::string& virtual_file,
                                        std::vector<std::string>* why) {
  auto skipped = [&](const char* source, const Status& st) {
    if (why != nullptr) why->push_back(std::string(source) + ": " + st.ToString());
  };
  if (auto nvml = OpenNvmlProbe(nvml_library); !nvml) {
    skipped("nvml", nvml.error());
  } else if (auto first = (*nvml)->Read(); !first) {
    skipped("nvml", first.error());
  } else {
    return std::move(*nvml);
  }
  // OpenNvidiaSmiProbe already made one successful Read.
  if (auto smi = OpenNvidiaSmiProbe(nvidia_smi); !smi) {
    skipped("nvidia-smi", smi.error());
  } else {
    return std::move(*smi);
  }
  return NewVirtualGpuProbe(virtual_file);
}

}  // namespace dumont::agent
