#include "provider/local.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

namespace dumont::provider {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

bool ValidLabel(const std::string& l) {
  if (l.empty() || l.size() > 100) return false;
  for (char c : l) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_') return false;
  }
  return true;
}

bool Alive(pid_t pid) {
  if (pid <= 0) return false;
  if (::kill(pid, 0) != 0) return errno == EPERM;
  // A zombie child (when dumontd itself spawned it) is dead too.
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  std::getline(stat, line);
  auto close = line.rfind(')');
  return close == std::string::npos || close + 2 >= line.size() || line[close + 2] != 'Z';
}

class LocalProvider final : public Provider {
 public:
  explicit LocalProvider(LocalOptions o) : o_(std::move(o)) {}
  std::string Name() const override { return "local"; }

  Result<std::vector<Offer>> Offers() override {
    Offer o;
    o.id = "local-1";
    o.provider = "local";
    o.gpu_name = "virtual";
    o.num_gpus = 1;
    o.cpu_cores = static_cast<int>(std::thread::hardware_concurrency());
    o.price_per_hour = o_.price_per_hour;
    o.reliability = 1.0;
    o.location = "localhost";
    return std::vector<Offer>{o};
  }

  std::map<std::string, Capability> Capabilities() const override {
    return {{"stop", {true, ""}},
            {"virtual_gpu", {true, ""}},
            {"ssh", {false, "the local provider runs no sshd of its own; the workspace is a directory on this host"}},
            {"spot", {false, "local machines are never preempted"}}};
  }

  Result<Machine> Create(const MachineSpec& spec) override {
    if (!ValidLabel(spec.label)) return Err(Status::InvalidArgument("invalid machine label '" + spec.label + "'"));
    std::string dir = o_.root + "/" + spec.label;
    if (fs::exists(dir + "/machine.json")) return Load(spec.label);  // created already (or a damaged file, named)
    json meta = {{"label", spec.label}, {"offer_id", spec.offer_id.empty() ? "local-1" : spec.offer_id},
                 {"price_per_hour", o_.price_per_hour}, {"env", spec.env}, {"stopped", false}};
    // Built under a private name and renamed into place with its machine.json, so a kill at any
    // moment leaves either nothing under the label or a complete machine that List shows (and the
    // fleet's orphan sweep adopts or destroys): a bare directory was invisible to both. A bare
    // directory already there (left by an older dumontd) is removed first.
    std::string tmp = Scratch(kCreating, spec.label);
    std::error_code ec;
    KillAgent(dir);
    fs::remove_all(dir, ec);
    fs::remove_all(tmp, ec);
    fs::create_directories(tmp + "/workspace", ec);
    fs::create_directories(tmp + "/agent", ec);
    if (ec) return Err(Status::IOError("cannot create machine directory " + tmp + ": " + ec.message()));
    DUMONT_RETURN_IF_ERROR(WriteMeta(tmp, meta));
    fs::rename(tmp, dir, ec);
    if (ec) return Err(Status::IOError("cannot create machine directory " + dir + ": " + ec.message()));
    DUMONT_RETURN_IF_ERROR(SpawnAgent(dir, meta));
    return Load(spec.label);
  }

  Result<Machine> Get(const std::string& id) override {
    if (!ValidLabel(id)) return Err(Status::NotFound("machine " + id + " does not exist"));
    return Load(id);
  }

  Result<std::vector<Machine>> ListByLabelPrefix(const std::string& prefix) override {
    std::vector<Machine> out;
    std::vector<std::string> debris;
    std::error_code ec;
    for (auto it = fs::directory_iterator(o_.root, ec); !ec && it != fs::directory_iterator(); it.increment(ec)) {
      std::string name = it->path().filename().string();
      if (IsStaleScratch(name)) {
        debris.push_back(it->path().string());
        continue;
      }
      if (name.rfind(prefix, 0) != 0) continue;
      auto m = Load(name);
      if (m) out.push_back(*m);
      // No machine.json under a label: left by a Create or Destroy killed before this layout.
      else if (m.error().code() == Code::kNotFound && ValidLabel(name)) debris.push_back(it->path().string());
    }
    // Removed after the listing (not while iterating the directory).
    for (const auto& d : debris) {
      KillAgent(d);
      fs::remove_all(d, ec);
    }
    return out;
  }

  Status Stop(const std::string& id) override {
    auto m = Load(id);
    if (!m) return m.error();
    std::string dir = o_.root + "/" + id;
    KillAgent(dir);
    auto meta = ReadMeta(dir);
    if (!meta) return meta.error();
    (*meta)["stopped"] = true;
    return WriteMeta(dir, *meta);
  }

  Status Start(const std::string& id) override {
    auto m = Load(id);
    if (!m) return m.error();
    std::string dir = o_.root + "/" + id;
    auto meta = ReadMeta(dir);
    if (!meta) return meta.error();
    (*meta)["stopped"] = false;
    DUMONT_RETURN_STATUS_IF_ERROR(WriteMeta(dir, *meta));
    if (!Alive(ReadPid(dir))) return SpawnAgent(dir, *meta);
    return Status::Ok();
  }

  Status Destroy(const std::string& id) override {
    if (!ValidLabel(id)) return Status::Ok();
    std::string dir = o_.root + "/" + id;
    if (!fs::exists(dir)) return Status::Ok();
    KillAgent(dir);
    // Renamed away first, so a kill during the removal leaves no half machine under the label.
    std::string trash = Scratch(kDestroying, id);
    std::error_code ec;
    fs::remove_all(trash, ec);
    fs::rename(dir, trash, ec);
    if (ec) return Status::IOError("cannot remove machine directory " + dir + ": " + ec.message());
    fs::remove_all(trash, ec);
    if (ec) return Status::IOError("cannot remove machine directory " + trash + ": " + ec.message());
    return Status::Ok();
  }

 private:
  static constexpr const char* kCreating = ".creating-";
  static constexpr const char* kDestroying = ".destroying-";
  // A private directory of this process for a machine being created or destroyed:
  // <root>/.creating-<pid>-<label> or <root>/.destroying-<pid>-<label>.
  std::string Scratch(const char* kind, const std::string& label) const {
    return o_.root + "/" + kind + std::to_string(::getpid()) + "-" + label;
  }
  // Whether `name` is such a directory of a process that no longer runs (killed mid-way).
  static bool IsStaleScratch(const std::string& name) {
    for (const char* kind : {kCreating, kDestroying}) {
      std::string k = kind;
      if (name.rfind(k, 0) != 0) continue;
      pid_t pid = static_cast<pid_t>(std::atol(name.c_str() + k.size()));
      return pid > 0 && pid != ::getpid() && !Alive(pid);
    }
    return false;
  }
  static Status WriteMeta(const std::string& dir, const json& meta) {
    std::string tmp = dir + "/machine.json.tmp";
    {
      std::ofstream out(tmp);
      out << meta.dump(2);
      if (!out) return Status::IOError("cannot write " + tmp);
    }
    std::error_code ec;
    fs::rename(tmp, dir + "/machine.json", ec);
    if (ec) return Status::IOError("cannot write " + dir + "/machine.json: " + ec.message());
    return Status::Ok();
  }
  static Result<json> ReadMeta(const std::string& dir) {
    std::ifstream in(dir + "/machine.json");
    if (!in) return Err(Status::NotFound("machine " + fs::path(dir).filename().string() + " does not exist"));
    json j = json::parse(in, nullptr, false);
    if (!j.is_object()) return Err(Status::Corruption(dir + "/machine.json is damaged"));
    return j;
  }
  static pid_t ReadPid(const std::string& dir) {
    std::ifstream in(dir + "/agent.pid");
    long pid = 0;
    in >> pid;
    return static_cast<pid_t>(pid);
  }

  Result<Machine> Load(const std::string& label) {
    std::string dir = o_.root + "/" + label;
    auto meta = ReadMeta(dir);
    if (!meta) return Err(meta.error());
    Machine m;
    m.id = label;
    m.label = label;
    m.offer_id = meta->value("offer_id", "local-1");
    m.price_per_hour = meta->value("price_per_hour", 0.0);
    bool stopped = meta->value("stopped", false);
    bool alive = Alive(ReadPid(dir));
    m.state = stopped ? MachineState::kStopped : alive ? MachineState::kRunning : MachineState::kFailed;
    m.details = {{"workspace", dir + "/workspace"}, {"agent_log", dir + "/agent.log"},
                 {"virtual_gpu_file", dir + "/virtual-gpu.json"}, {"pid", ReadPid(dir)}};
    return m;
  }

  Status SpawnAgent(const std::string& dir, const json& meta) {
    if (o_.agent_path.empty() || ::access(o_.agent_path.c_str(), X_OK) != 0) {
      return Status::FailedPrecondition("dumont-agent not found at '" + o_.agent_path + "'; build it with `make build`");
    }
    std::vector<std::string> env_strings;
    for (char** e = environ; e && *e; ++e) {
      if (std::strncmp(*e, "DUMONT_AGENT_", 13) == 0) continue;  // ours win
      env_strings.emplace_back(*e);
    }
    for (const auto& [k, v] : meta["env"].items()) env_strings.push_back(k + "=" + v.get<std::string>());
    env_strings.push_back("DUMONT_AGENT_WORKSPACE=" + dir + "/workspace");
    env_strings.push_back("DUMONT_AGENT_STATE_DIR=" + dir + "/agent");
    env_strings.push_back("DUMONT_AGENT_VIRTUAL_GPU=" + dir + "/virtual-gpu.json");
    std::string log = dir + "/agent.log";
    // A restart must not report the previous agent's pid (dead) until the new one writes its own:
    // the wait below is for a pid file that is there again.
    std::error_code ec;
    fs::remove(dir + "/agent.pid", ec);
    pid_t pid = ::fork();
    if (pid < 0) return Status::Unavailable(std::string("fork failed: ") + std::strerror(errno));
    if (pid == 0) {
      // Child: a session of its own (survives dumontd), output to the machine's log.
      ::setsid();
      int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
      if (fd >= 0) {
        ::dup2(fd, 1);
        ::dup2(fd, 2);
      }
      int devnull = ::open("/dev/null", O_RDONLY);
      if (devnull >= 0) ::dup2(devnull, 0);
      // Nothing of dumontd's may leak into the machine: above all not its listening socket, which
      // would keep the port busy after dumontd exits.
      if (::close_range(3, ~0U, 0) != 0) {
        for (int fd = 3; fd < 65536; ++fd) ::close(fd);
      }
      // Second fork: the agent is reparented to init, so dumontd never has to reap it.
      pid_t grandchild = ::fork();
      if (grandchild != 0) _exit(grandchild < 0 ? 1 : 0);
      std::vector<char*> envp;
      for (auto& s : env_strings) envp.push_back(s.data());
      envp.push_back(nullptr);
      std::string pidfile = dir + "/agent.pid";
      {
        std::ofstream(pidfile) << ::getpid() << "\n";
      }
      char* argv[] = {const_cast<char*>(o_.agent_path.c_str()), nullptr};
      ::execve(o_.agent_path.c_str(), argv, envp.data());
      _exit(127);
    }
    int status = 0;
    ::waitpid(pid, &status, 0);
    // Wait briefly for the pid file so Get() reports the machine as running.
    for (int i = 0; i < 100 && ReadPid(dir) <= 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    return Status::Ok();
  }

  static void KillAgent(const std::string& dir) {
    pid_t pid = ReadPid(dir);
    if (pid <= 0 || !Alive(pid)) return;
    // The workspace is already snapshotted when a machine is destroyed: a short grace period is
    // enough (an agent blocked in a request to us would otherwise hold the destroy up).
    ::kill(pid, SIGTERM);
    for (int i = 0; i < 25 && Alive(pid); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    if (Alive(pid)) ::kill(pid, SIGKILL);
    for (int i = 0; i < 50 && Alive(pid); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }

  LocalOptions o_;
};

}  // namespace

std::unique_ptr<Provider> NewLocalProvider(const LocalOptions& opts) { return std::make_unique<LocalProvider>(opts); }

std::string LocalVirtualGpuFile(const Machine& m) { return m.details.value("virtual_gpu_file", ""); }

}  // namespace dumont::provider
