#include "agent/agent.h"

#include <fcntl.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>

#include "http/client.h"
#include "snapshot/archiver.h"
#include "snapshot/backend.h"
#include "snapshot/repository.h"
#include "snapshot/restorer.h"

namespace dumont::agent {

using nlohmann::json;
namespace fs = std::filesystem;

Agent::Agent(AgentOptions o, Logger* log) : o_(std::move(o)), log_(log) {
  std::vector<std::string> why;
  probe_ = OpenBestProbe(o_.nvml_library, o_.nvidia_smi, o_.virtual_gpu_file, &why);
  for (const auto& w : why) log_->Info("gpu probe", {{"skipped", w}});
  log_->Info("gpu probe", {{"using", probe_->Name()}});
}

Agent::~Agent() {
  Stop();
  std::lock_guard l(mu_);
  for (auto& [id, t] : running_) {
    if (t.joinable()) t.join();
  }
}

void Agent::Stop() { stop_ = true; }

Result<json> Agent::Post(const std::string& path, const json& body, bool authed) {
  http::ClientRequest req;
  req.method = "POST";
  req.url = o_.server + path;
  req.body = body.dump();
  req.headers.emplace_back("Content-Type", "application/json");
  if (authed) req.headers.emplace_back("Authorization", "Bearer " + agent_token_);
  req.timeout = std::chrono::milliseconds(15000);
  auto r = http::Fetch(req);
  if (!r) return Err(r.error());
  json j = json::parse(r->body, nullptr, false);
  if (r->status == 200) return j;
  std::string msg = j.is_object() && j.contains("error") ? j["error"].value("message", "") : r->body.substr(0, 200);
  if (r->status == 401) return Err(Status::Unauthenticated(msg));
  if (r->status == 403) return Err(Status::PermissionDenied(msg));
  if (r->status >= 500 || r->status == 429) return Err(Status::Unavailable("server answered " + std::to_string(r->status) + ": " + msg));
  return Err(Status::InvalidArgument("server answered " + std::to_string(r->status) + ": " + msg));
}

Status Agent::LoadState() {
  std::ifstream in(o_.state_dir + "/agent.json");
  if (!in) return Status::NotFound("not enrolled");
  json j = json::parse(in, nullptr, false);
  if (!j.is_object()) return Status::Corruption(o_.state_dir + "/agent.json is damaged");
  agent_token_ = j.value("agent_token", "");
  instance_id_ = j.value("instance_id", "");
  repo_location_ = j["repository"].value("location", "");
  repo_password_ = j["repository"].value("password", "");
  interval_s_ = j.value("heartbeat_interval_s", int64_t{10});
  std::ifstream rin(o_.state_dir + "/results.json");
  json r = json::parse(rin, nullptr, false);
  if (r.is_object()) {
    for (const auto& [k, v] : r.items()) results_[k] = v;
  }
  return Status::Ok();
}

Status Agent::Enroll() {
  if (o_.enroll_token.empty()) return Status::InvalidArgument("no enrollment token (DUMONT_AGENT_ENROLL_TOKEN)");
  auto r = Post("/api/v1/agent/enroll", {{"token", o_.enroll_token}}, false);
  if (!r) return r.error();
  fs::create_directories(o_.state_dir);
  std::string path = o_.state_dir + "/agent.json";
  int fd = ::open((path + ".tmp").c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return Status::IOError("cannot write " + path);
  std::string data = r->dump();
  bool ok = ::write(fd, data.data(), data.size()) == static_cast<ssize_t>(data.size());
  ::close(fd);
  if (!ok || ::rename((path + ".tmp").c_str(), path.c_str()) != 0) return Status::IOError("cannot write " + path);
  return LoadState();
}

json Agent::Sample() {
  json gpus = json::array();
  json procs = json::array();
  std::string source = probe_->Name();
  auto reading = probe_->Read();
  std::string gpu_error;
  if (!reading) gpu_error = reading.error().message();  // no GPUs reported: never read as idle
  if (reading) {
    source = reading->source;
    for (const auto& g : reading->gpus) {
      gpus.push_back({{"index", g.index}, {"name", g.name}, {"util_pct", g.util_pct},
                      {"mem_used_mb", g.mem_used_mb}, {"mem_total_mb", g.mem_total_mb}});
      for (const auto& p : g.processes) procs.push_back({{"gpu", g.index}, {"pid", p.pid}, {"used_mem_mb", p.used_mem_mb}});
    }
  }
  // CPU and RAM from /proc; disk from the workspace's filesystem.
  double load1 = 0;
  {
    std::ifstream in("/proc/loadavg");
    in >> load1;
  }
  long total_kb = 0, avail_kb = 0;
  {
    std::ifstream in("/proc/meminfo");
    std::string key;
    long val;
    std::string unit;
    while (in >> key >> val >> unit) {
      if (key == "MemTotal:") total_kb = val;
      if (key == "MemAvailable:") avail_kb = val;
    }
  }
  struct statvfs vfs{};
  double disk_total = 0, disk_used = 0;
  if (::statvfs(o_.workspace.c_str(), &vfs) == 0) {
    disk_total = static_cast<double>(vfs.f_blocks) * vfs.f_frsize / 1e9;
    disk_used = disk_total - static_cast<double>(vfs.f_bavail) * vfs.f_frsize / 1e9;
  }
  json results = json::array();
  {
    std::lock_guard l(mu_);
    for (const auto& [id, r] : results_) results.push_back(r);
  }
  return {{"instance_id", instance_id_},
          {"gpu_source", source},
          {"gpu_error", gpu_error},
          {"gpus", gpus},
          {"gpu_processes", procs},
          {"load_1m", load1},
          {"cpu_cores", static_cast<int>(std::thread::hardware_concurrency())},
          {"ram_total_mb", total_kb / 1024},
          {"ram_used_mb", (total_kb - avail_kb) / 1024},
          {"disk_total_gb", disk_total},
          {"disk_used_gb", disk_used},
          {"command_results", results}};
}

json Agent::RunCommand(const json& cmd) {
  std::string id = cmd.value("id", "");
  std::string type = cmd.value("type", "");
  json result = {{"id", id}, {"type", type}, {"ok", false}};
  auto backend = snapshot::OpenBackend(repo_location_);
  if (!backend) {
    result["error"] = backend.error().message();
    return result;
  }
  auto repo = snapshot::Repository::Open(std::move(*backend), repo_password_);
  if (!repo && repo.error().code() == Code::kNotFound && type == "snapshot") {
    repo = snapshot::Repository::Init(std::move(*snapshot::OpenBackend(repo_location_)), repo_password_);
  }
  if (!repo) {
    result["error"] = repo.error().message();
    return result;
  }
  if (type == "snapshot") {
    auto lock = (*repo)->LockRepo(false);
    if (!lock) {
      result["error"] = lock.error().message();
      return result;
    }
    snapshot::BackupOptions bo;
    bo.paths = {o_.workspace};
    bo.tags = {"instance:" + instance_id_, cmd.value("reason", "manual")};
    auto s = snapshot::Backup(**repo, bo);
    if (!s) {
      result["error"] = s.error().message();
      return result;
    }
    result["ok"] = true;
    result["snapshot_id"] = snapshot::IdHex(s->snapshot);
    result["bytes_added"] = s->bytes_added;
    result["bytes_total"] = s->bytes_total;
    result["warnings"] = s->warnings;
  } else if (type == "restore") {
    auto snap = (*repo)->FindSnapshot(cmd.value("snapshot", "latest"));
    if (!snap) {
      result["error"] = snap.error().message();
      return result;
    }
    fs::path ws = fs::absolute(o_.workspace).lexically_normal();
    std::string name = ws.filename().string();
    snapshot::RestoreOptions ro;
    ro.target = ws.parent_path().string();
    // The snapshot's root holds the workspace under its own last path component.
    for (const auto& p : snap->second.paths) {
      if (!p.empty()) ro.include = fs::path(p).filename().string();
    }
    if (ro.include != name) {
      // Restored under another directory name (a new machine's workspace): restore beside, then move.
      ro.target = ws.parent_path().string() + "/.restore-" + id;
    }
    auto r = snapshot::Restore(**repo, snap->second.tree, ro);
    if (!r) {
      result["error"] = r.error().message();
      return result;
    }
    if (ro.include != name) {
      std::error_code ec;
      fs::remove_all(ws, ec);
      fs::rename(ro.target + "/" + ro.include, ws, ec);
      fs::remove_all(ro.target, ec);
      if (ec) {
        result["error"] = "cannot move the restored workspace into place: " + ec.message();
        return result;
      }
    }
    result["ok"] = true;
    result["bytes"] = r->bytes;
    result["files"] = r->files;
  } else {
    result["error"] = "unknown command type '" + type + "'";
  }
  return result;
}

void Agent::StartCommand(const json& cmd) {
  std::string id = cmd.value("id", "");
  std::lock_guard l(mu_);
  if (id.empty() || results_.count(id) || running_.count(id)) return;
  log_->Info("command", {{"id", id}, {"type", cmd.value("type", "")}});
  running_[id] = std::thread([this, cmd, id] {
    json r = RunCommand(cmd);
    log_->Info("command finished", {{"id", id}, {"ok", r.value("ok", false) ? "true" : "false"},
                                     {"error", r.value("error", "")}});
    {
      std::lock_guard l2(mu_);
      results_[id] = r;
    }
    SaveResults();
    wake_ = true;  // report at once
  });
}

void Agent::SaveResults() {
  json j = json::object();
  {
    std::lock_guard l(mu_);
    for (const auto& [k, v] : results_) j[k] = v;
  }
  std::ofstream(o_.state_dir + "/results.json.tmp") << j.dump();
  std::error_code ec;
  fs::rename(o_.state_dir + "/results.json.tmp", o_.state_dir + "/results.json", ec);
}

Status Agent::Run() {
  std::mt19937_64 rng(std::random_device{}());
  auto sleep_for = [&](std::chrono::milliseconds d) {
    auto until = std::chrono::steady_clock::now() + d;
    while (!stop_ && !wake_ && std::chrono::steady_clock::now() < until) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    wake_ = false;
  };
  int failures = 0;
  auto backoff = [&]() {
    int64_t cap = std::min<int64_t>(30000, 500LL << std::min(failures, 6));
    std::uniform_int_distribution<int64_t> d(cap / 2, cap);
    return std::chrono::milliseconds(d(rng));
  };
  while (!stop_ && LoadState().code() == Code::kNotFound) {
    Status st = Enroll();
    if (st.ok()) break;
    if (st.code() == Code::kUnauthenticated) return st.Annotate("enrollment refused");
    ++failures;
    log_->Warn("enrollment failed; retrying", {{"error", st.message()}});
    sleep_for(backoff());
  }
  log_->Info("agent running", {{"instance", instance_id_}, {"server", o_.server}});
  failures = 0;
  while (!stop_) {
    auto r = Post("/api/v1/agent/status", Sample(), true);
    if (!r) {
      if (r.error().code() == Code::kUnauthenticated || r.error().code() == Code::kPermissionDenied) {
        log_->Info("token revoked: this machine is being replaced or destroyed; stopping", {{"reason", r.error().message()}});
        return r.error();
      }
      ++failures;
      log_->Warn("heartbeat failed; retrying", {{"error", r.error().message()}});
      sleep_for(backoff());
      continue;
    }
    failures = 0;
    if (r->contains("heartbeat_interval_s")) interval_s_ = (*r)["heartbeat_interval_s"].get<int64_t>();
    std::set<std::string> pending;
    for (const auto& c : (*r)["commands"]) {
      pending.insert(c.value("id", ""));
      StartCommand(c);
    }
    {
      // Results the server no longer asks about have been recorded: forget them.
      std::lock_guard l(mu_);
      for (auto it = results_.begin(); it != results_.end();) {
        it = pending.count(it->first) ? std::next(it) : results_.erase(it);
      }
    }
    double s = static_cast<double>(o_.interval_override_s > 0 ? o_.interval_override_s : interval_s_);
    // The server may ask for the next heartbeat sooner (a command is likely to come).
    if (r->contains("next_heartbeat_s") && (*r)["next_heartbeat_s"].is_number()) {
      s = std::min(s, std::max(0.2, (*r)["next_heartbeat_s"].get<double>()));
    }
    sleep_for(std::chrono::milliseconds(static_cast<int64_t>(s * 1000)));
  }
  return Status::Ok();
}

}  // namespace dumont::agent
