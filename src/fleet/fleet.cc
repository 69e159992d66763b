#include "fleet/fleet.h"

#include <filesystem>
#include <fstream>
#include <functional>

#include "auth/crypto.h"
#include "fleet/history.h"
#include "common/random.h"
#include "snapshot/backend.h"
#include "snapshot/repository.h"

namespace dumont::fleet {

using nlohmann::json;
using store::Instance;

namespace {

json ParseCmd(const std::string& s) {
  if (s.empty()) return nullptr;
  json j = json::parse(s, nullptr, false);
  return j.is_object() ? j : json(nullptr);
}

Status ValidateName(const std::string& n) {
  if (n.empty() || n.size() > 64) return Status::InvalidField("name", "name must be 1 to 64 characters");
  for (char c : n) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_' && c != '.' && c != ' ') {
      return Status::InvalidField("name", "name may contain letters, digits, spaces, '-', '_' and '.'");
    }
  }
  return Status::Ok();
}

// Applies a "hibernation" object onto an instance; errors name the nested field.
Status ApplyHibernation(const json& h, Instance* i) {
  if (h.is_null()) return Status::Ok();
  if (!h.is_object()) return Status::InvalidField("hibernation", "hibernation must be an object");
  for (const auto& [k, v] : h.items()) {
    std::string f = "hibernation." + k;
    if (k == "enabled") {
      if (!v.is_boolean()) return Status::InvalidField(f, f + " must be a boolean");
      i->hib_enabled = v.get<bool>();
    } else if (k == "gpu_threshold_pct") {
      if (!v.is_number() || v.get<double>() < 0 || v.get<double>() > 100) {
        return Status::InvalidField(f, f + " must be a number from 0 to 100");
      }
      i->gpu_threshold_pct = v.get<double>();
    } else if (k == "idle_seconds") {
      if (!v.is_number_integer() || v.get<int64_t>() < 1 || v.get<int64_t>() > 7 * 86400) {
        return Status::InvalidField(f, f + " must be an integer from 1 to 604800");
      }
      i->idle_seconds = v.get<int64_t>();
    } else if (k == "release_after_seconds") {
      if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > 30 * 86400) {
        return Status::InvalidField(f, f + " must be an integer from 0 to 2592000");
      }
      i->release_after_seconds = v.get<int64_t>();
    } else {
      return Status::InvalidField(f, "unknown field '" + f +
                                         "'; hibernation accepts enabled, gpu_threshold_pct, idle_seconds, "
                                         "release_after_seconds");
    }
  }
  return Status::Ok();
}

}  // namespace

Fleet::Fleet(store::Store& store, const Clock& clock, Logger* log, FleetOptions opts)
    : store_(store), clock_(clock), log_(log), opts_(std::move(opts)), queue_(clock) {}

Fleet::~Fleet() { Stop(); }

void Fleet::AddProvider(std::unique_ptr<provider::Provider> p) {
  std::string name = p->Name();
  providers_[name] = std::shared_ptr<provider::Provider>(std::move(p));
}

provider::Provider* Fleet::FindProvider(const std::string& name) {
  auto it = providers_.find(name);
  return it == providers_.end() ? nullptr : it->second.get();
}

std::vector<provider::Provider*> Fleet::Providers() {
  std::vector<provider::Provider*> out;
  for (auto& [n, p] : providers_) out.push_back(p.get());
  return out;
}

void Fleet::ForgetTokens(const std::string& instance_id) {
  std::lock_guard tl(token_mu_);
  for (auto it = token_cache_.begin(); it != token_cache_.end();) {
    it = it->second.instance_id == instance_id ? token_cache_.erase(it) : std::next(it);
  }
}

std::mutex& Fleet::LockFor(const std::string& id) { return locks_[std::hash<std::string>{}(id) % locks_.size()]; }

std::string Fleet::RepoLocation(const std::string& id) const {
  return (std::filesystem::absolute(opts_.data_dir) / "repos" / id).lexically_normal().string();
}

Status Fleet::Record(const Instance& i, const std::string& type, const std::string& message) {
  if (log_) log_->Info("instance event", {{"instance", i.id}, {"event", type}, {"message", message}});
  return store_.AddEvent({NewId("evt_"), i.id, i.owner, clock_.NowUnixMillis(), type, message});
}

Status Fleet::SaveStatus(Instance& i) {
  i.updated_at = clock_.NowUnix();
  return store_.UpdateInstanceStatus(i);
}

Status Fleet::SetState(Instance& i, const std::string& state, const std::string& message) {
  std::string from = i.state;
  i.state = state;
  i.message = message;
  i.state_since = clock_.NowUnix();
  DUMONT_RETURN_STATUS_IF_ERROR(SaveStatus(i));
  queue_.Add(i.id);  // a new state may allow the next step at once
  return Record(i, "state", from + " -> " + state + (message.empty() ? "" : ": " + message));
}

json Fleet::InstanceJson(const Instance& i) {
  json machine = json::parse(i.machine_json, nullptr, false);
  if (!machine.is_object()) machine = json::object();
  json m = {{"id", i.machine_id.empty() ? json(nullptr) : json(i.machine_id)},
            {"attempt", i.attempt},
            {"price_per_hour", i.price_per_hour}};
  if (machine.contains("workspace")) m["workspace"] = machine["workspace"];
  if (machine.contains("ssh_host") && machine.contains("ssh_port")) {
    m["ssh_host"] = machine["ssh_host"];
    m["ssh_port"] = machine["ssh_port"];
  }
  json j = {{"id", i.id},
            {"name", i.name},
            {"provider", i.provider},
            {"offer_id", i.offer_id},
            {"gpu", i.gpu},
            {"image", i.image},
            {"state", i.state},
            {"desired", i.desired},
            {"message", i.message},
            {"state_since", i.state_since},
            {"hibernation",
             {{"enabled", i.hib_enabled},
              {"gpu_threshold_pct", i.gpu_threshold_pct},
              {"idle_seconds", i.idle_seconds},
              {"release_after_seconds", i.release_after_seconds},
              {"released", i.released}}},
            {"machine", m},
            {"last_snapshot", i.last_snapshot.empty() ? json(nullptr) : json(i.last_snapshot)},
            {"created_at", i.created_at}};
  auto t = TelemetryOf(i.id);
  if (t) {
    j["telemetry"] = {{"last_heartbeat_ms", t->last_heartbeat_ms}, {"max_gpu_util", t->max_gpu_util},
                      {"gpu_count", t->gpu_count},
                      {"idle_since_ms", t->idle_since_ms ? json(t->idle_since_ms) : json(nullptr)}};
  } else {
    j["telemetry"] = nullptr;
  }
  return j;
}

// ---- user operations

Result<Instance> Fleet::Create(const std::string& owner, const json& req) {
  return CreateInstance(owner, req, nullptr);
}

Result<Instance> Fleet::CreateInstance(const std::string& owner, const json& req, store::Deploy* first_deploy) {
  Instance i;
  i.name = req.value("name", "");
  DUMONT_RETURN_IF_ERROR(ValidateName(i.name));
  i.provider = req.value("provider", "local");
  auto p = ProviderFor(owner, i.provider);
  if (!p) return Err(p.error());
  i.offer_id = req.value("offer_id", "");
  i.gpu = req.value("gpu", "");
  i.image = req.value("image", "");
  if (req.contains("hibernation")) DUMONT_RETURN_IF_ERROR(ApplyHibernation(req["hibernation"], &i));
  json dj = json::object();
  for (const char* k : {"requirements", "strategy", "offer_id"}) {
    if (req.contains(k)) dj[k] = req[k];
  }
  auto dr = ParseDeployRequest(dj);
  if (!dr) return Err(dr.error());
  if (dr->req.gpu.empty()) dr->req.gpu = i.gpu;
  i.deploy_json = dr->ToJson().dump();
  i.id = NewId("ins_");
  i.owner = owner;
  i.desired = "running";
  i.state = "provisioning";
  i.repo_password = HexEncode(RandomBytes(32));
  i.created_at = i.updated_at = i.state_since = clock_.NowUnix();
  DUMONT_RETURN_IF_ERROR(store_.CreateInstance(i));
  DUMONT_RETURN_IF_ERROR(Record(i, "created", "on provider " + i.provider));
  auto d = NewDeployRow(i, "create");
  if (!d) return Err(d.error());
  if (first_deploy) *first_deploy = *d;
  queue_.Add(i.id);
  return i;
}

Result<std::vector<Instance>> Fleet::List(const std::string& owner) { return store_.ListInstances(owner); }

Result<Instance> Fleet::Get(const std::string& owner, const std::string& id) {
  return store_.GetInstanceOwned(id, owner);
}

Result<Instance> Fleet::Patch(const std::string& owner, const std::string& id, const json& req) {
  std::lock_guard lock(LockFor(id));
  auto i = store_.GetInstanceOwned(id, owner);
  if (!i) return Err(i.error());
  if (i->state == "destroyed") return Err(Status::Conflict("instance " + id + " is destroyed"));
  if (req.contains("name")) {
    i->name = req["name"].get<std::string>();
    DUMONT_RETURN_IF_ERROR(ValidateName(i->name));
  }
  if (req.contains("hibernation")) DUMONT_RETURN_IF_ERROR(ApplyHibernation(req["hibernation"], &*i));
  i->updated_at = clock_.NowUnix();
  DUMONT_RETURN_IF_ERROR(store_.UpdateInstanceSpec(*i));
  queue_.Add(id);
  return i;
}

Result<Instance> Fleet::Destroy(const std::string& owner, const std::string& id) {
  std::lock_guard lock(LockFor(id));
  auto i = store_.GetInstanceOwned(id, owner);
  if (!i) return Err(i.error());
  if (i->desired != "destroyed") {
    i->desired = "destroyed";
    i->updated_at = clock_.NowUnix();
    DUMONT_RETURN_IF_ERROR(store_.UpdateInstanceSpec(*i));
    DUMONT_RETURN_IF_ERROR(Record(*i, "destroy_requested", ""));
  }
  queue_.Add(id);
  return i;
}

Result<Instance> Fleet::Action(const std::string& owner, const std::string& id, const std::string& action) {
  std::lock_guard lock(LockFor(id));
  auto i = store_.GetInstanceOwned(id, owner);
  if (!i) return Err(i.error());
  auto conflict = [&](const std::string& what) {
    return Err(Status::Conflict("cannot " + action + " instance " + id + ": it is " + i->state + what));
  };
  if (i->desired == "destroyed") return conflict(" (being destroyed)");
  if (action == "retry") {
    if (i->state != "error") return conflict("; only an instance in error can be retried");
    // A retry repeats the failed request as it was (the same pinned offer, if any).
    auto d = NewDeployRow(*i, i->last_snapshot.empty() ? "retry" : "wake");
    if (!d) return Err(d.error());
    DUMONT_RETURN_IF_ERROR(SetState(*i, i->last_snapshot.empty() ? "provisioning" : "waking",
                                    "retry requested (deploy " + d->id + ")"));
    return i;
  }
  if (action == "pause") {
    auto p = ProviderFor(i->owner, i->provider);
    if (!p || !(*p)->Capabilities()["stop"].supported) {
      return Err(Status::Conflict("provider " + i->provider + " cannot stop machines: " +
                                  (p ? (*p)->Capabilities()["stop"].reason : p.error().message())));
    }
    if (i->state != "running") return conflict("; only a running instance can be paused");
    i->desired = "paused";
  } else if (action == "resume") {
    if (i->state != "paused" && i->state != "pausing") return conflict("; only a paused instance can be resumed");
    i->desired = "running";
  } else if (action == "hibernate") {
    if (i->state != "running") return conflict("; only a running instance can hibernate");
    i->desired = "hibernated";
  } else if (action == "wake") {
    if (i->state != "hibernated" && i->state != "hibernating") return conflict("; only a hibernated instance can wake");
    i->desired = "running";
  } else if (action == "snapshot") {
    if (i->state != "running") return conflict("; only a running instance can be snapshotted");
    json cmd = ParseCmd(i->command_json);
    if (!cmd.is_null() && !cmd.value("done", false) && !cmd.value("failed", false)) {
      return Err(Status::Conflict("instance " + id + " is busy with a " + cmd.value("type", "?") + " command"));
    }
    i->command_json = json{{"id", NewId("cmd_")}, {"type", "snapshot"}, {"reason", "manual"}}.dump();
    DUMONT_RETURN_IF_ERROR(SaveStatus(*i));
    DUMONT_RETURN_IF_ERROR(Record(*i, "snapshot_requested", "manual"));
    queue_.Add(id);
    return i;
  } else {
    return Err(Status::NotFound("unknown action " + action));
  }
  i->updated_at = clock_.NowUnix();
  DUMONT_RETURN_IF_ERROR(store_.UpdateInstanceSpec(*i));
  DUMONT_RETURN_IF_ERROR(Record(*i, action + "_requested", ""));
  queue_.Add(id);
  return i;
}

Result<json> Fleet::Snapshots(const std::string& owner, const std::string& id) {
  auto i = store_.GetInstanceOwned(id, owner);
  if (!i) return Err(i.error());
  json arr = json::array();
  std::string loc = RepoLocation(id);
  if (!std::filesystem::exists(loc + "/config")) return arr;
  auto repo = snapshot::Repository::Open(snapshot::NewLocalBackend(loc), i->repo_password);
  if (!repo) return Err(repo.error());
  auto snaps = (*repo)->ListSnapshots();
  if (!snaps) return Err(snaps.error());
  for (auto it = snaps->rbegin(); it != snaps->rend(); ++it) {
    const auto& m = it->second;
    arr.push_back({{"id", snapshot::IdHex(it->first)},
                   {"short_id", snapshot::IdHex(it->first).substr(0, 8)},
                   {"time", m.time},
                   {"time_unix", m.time_unix},
                   {"tags", m.tags},
                   {"bytes_total", m.summary.value("bytes_total", 0)},
                   {"bytes_added", m.summary.value("bytes_added", 0)},
                   {"files", m.summary.value("files_new", 0) + m.summary.value("files_changed", 0) +
                                 m.summary.value("files_unchanged", 0)}});
  }
  return arr;
}

Result<std::vector<store::Event>> Fleet::Events(const std::string& owner, const std::string& id, int limit) {
  auto i = store_.GetInstanceOwned(id, owner);
  if (!i) return Err(i.error());
  return store_.ListEvents(id, limit);
}

Status Fleet::SetVirtualGpu(const std::string& owner, const std::string& id, double util) {
  auto i = store_.GetInstanceOwned(id, owner);
  if (!i) return i.error();
  auto p = ProviderFor(i->owner, i->provider);
  if (!p || !(*p)->Capabilities()["virtual_gpu"].supported) {
    return Status::Conflict("instance " + id + " runs on provider " + i->provider +
                            ", which has real GPUs or none to simulate: " +
                            (p ? (*p)->Capabilities()["virtual_gpu"].reason : p.error().message()));
  }
  if (util < 0 || util > 100) return Status::InvalidField("util", "util must be a number from 0 to 100");
  json machine = json::parse(i->machine_json, nullptr, false);
  std::string file = machine.is_object() ? machine.value("virtual_gpu_file", "") : "";
  if (i->machine_id.empty() || file.empty()) {
    return Status::Conflict("instance " + id + " has no machine right now (it is " + i->state + ")");
  }
  std::string tmp = file + ".tmp";
  {
    std::ofstream out(tmp);
    out << json{{"util", util}, {"count", 1}}.dump();
    if (!out) return Status::IOError("cannot write " + tmp);
  }
  std::error_code ec;
  std::filesystem::rename(tmp, file, ec);
  if (ec) return Status::IOError("cannot write " + file + ": " + ec.message());
  return Record(*i, "virtual_gpu", "utilisation set to " + std::to_string(static_cast<int>(util)) + " % (simulated)");
}

// ---- savings

Result<json> Fleet::Savings(const std::string& owner) {
  auto hibs = store_.ListHibernations(owner);
  if (!hibs) return Err(hibs.error());
  int64_t now = clock_.NowUnix();
  std::map<std::string, std::pair<double, double>> per;  // instance -> hours, dollars
  double hours = 0, dollars = 0;
  for (const auto& h : *hibs) {
    double hh = h.ended_at ? h.hours : std::max<int64_t>(0, now - h.started_at) / 3600.0;
    double dd = h.ended_at ? h.dollars : hh * h.price_per_hour;
    per[h.instance_id].first += hh;
    per[h.instance_id].second += dd;
    hours += hh;
    dollars += dd;
  }
  json arr = json::array();
  for (const auto& [id, v] : per) arr.push_back({{"instance_id", id}, {"hours", v.first}, {"dollars", v.second}});
  return json{{"total_hours", hours}, {"total_dollars", dollars}, {"hibernations", hibs->size()}, {"per_instance", arr}};
}

Result<json> Fleet::HibernationEvents(const std::string& owner) {
  auto hibs = store_.ListHibernations(owner);
  if (!hibs) return Err(hibs.error());
  json arr = json::array();
  for (const auto& h : *hibs) {
    arr.push_back({{"id", h.id}, {"instance_id", h.instance_id}, {"price_per_hour", h.price_per_hour},
                   {"started_at", h.started_at}, {"ended_at", h.ended_at ? json(*h.ended_at) : json(nullptr)},
                   {"hours", h.hours}, {"dollars", h.dollars}});
  }
  return arr;
}

// ---- agent protocol

Result<json> Fleet::Enroll(const std::string& token) {
  auto bad = []() { return Err(Status::Unauthenticated("invalid or already used enrollment token")); };
  if (token.rfind("det_", 0) != 0) return bad();
  std::string hash = auth::Sha256Hex(token);
  auto t = store_.GetAgentToken(hash);
  if (!t || t->kind != "enroll" || t->revoked_at || t->expires_at < clock_.NowUnix()) return bad();
  std::lock_guard lock(LockFor(t->instance_id));
  auto used = store_.UseEnrollToken(hash, clock_.NowUnix());
  if (!used) return Err(used.error());
  if (!*used) return bad();
  auto i = store_.GetInstance(t->instance_id);
  if (!i) return Err(i.error());
  std::string agent_token = "dat_" + Base64UrlEncode(RandomBytes(32));
  int64_t now = clock_.NowUnix();
  DUMONT_RETURN_IF_ERROR(store_.CreateAgentToken(
      {auth::Sha256Hex(agent_token), i->id, "agent", t->attempt, now, now + 365 * 86400, std::nullopt, std::nullopt}));
  DUMONT_RETURN_IF_ERROR(Record(*i, "agent_enrolled", "attempt " + std::to_string(t->attempt)));
  queue_.Add(i->id);
  return json{{"agent_token", agent_token},
              {"instance_id", i->id},
              {"heartbeat_interval_s", opts_.heartbeat_interval_s},
              {"repository", {{"location", RepoLocation(i->id)}, {"password", i->repo_password}}}};
}

Result<json> Fleet::Heartbeat(const std::string& agent_token, const json& body) {
  if (agent_token.rfind("dat_", 0) != 0) return Err(Status::Unauthenticated("not an agent token"));
  std::string hash = auth::Sha256Hex(agent_token);
  std::optional<CachedToken> tok;
  {
    std::lock_guard tl(token_mu_);
    if (auto it = token_cache_.find(hash); it != token_cache_.end()) tok = it->second;
  }
  if (!tok) {
    auto t = store_.GetAgentToken(hash);
    if (!t || t->kind != "agent" || t->revoked_at) {
      return Err(Status::Unauthenticated("unknown or revoked agent token (the machine was destroyed or replaced)"));
    }
    tok = CachedToken{t->instance_id, t->attempt};
    std::lock_guard tl(token_mu_);
    if (token_cache_.size() > 1'000'000) token_cache_.clear();
    token_cache_[hash] = *tok;
  }
  std::string claimed = body.value("instance_id", "");
  if (claimed != tok->instance_id) {
    return Err(Status::PermissionDenied("this agent token belongs to another machine; it cannot report for " + claimed));
  }
  if (NoteDeployBeat(tok->instance_id, tok->attempt)) {
    // A machine of a running multi-start deploy: its first heartbeat makes it reachable. It gets no
    // commands until (unless) it wins. No instance lock here: a deploy step may hold it for as long
    // as its provider's create calls take, and heartbeats must never wait for that.
    queue_.Add(tok->instance_id);
    return json{{"commands", json::array()}, {"heartbeat_interval_s", opts_.heartbeat_interval_s}, {"next_heartbeat_s", 1}};
  }
  std::lock_guard lock(LockFor(tok->instance_id));
  auto i = store_.GetInstance(tok->instance_id);
  if (!i) return Err(i.error());
  if (i->machine_id.empty()) {
    // The machine was destroyed (hibernation, replacement) while this heartbeat waited for the lock:
    // its token was valid when read, but nothing it says may reach the next machine's telemetry.
    return Err(Status::PermissionDenied("this machine was destroyed or replaced; the instance has no machine now"));
  }
  if (tok->attempt != i->attempt) {
    return Err(Status::PermissionDenied("this agent belongs to a replaced machine (attempt " +
                                        std::to_string(tok->attempt) + ", current " + std::to_string(i->attempt) + ")"));
  }
  int64_t now_ms = clock_.NowUnixMillis();
  std::vector<double> utils;
  if (body.contains("gpus") && body["gpus"].is_array()) {
    for (const auto& g : body["gpus"]) {
      if (g.is_object() && g.contains("util_pct") && g["util_pct"].is_number()) {
        utils.push_back(std::clamp(g["util_pct"].get<double>(), 0.0, 100.0));
      }
    }
  }
  bool wake_controller = i->state != "running" || i->desired != "running";
  {
    std::lock_guard tl(telemetry_mu_);
    std::optional<Telemetry> prev;
    if (auto it = telemetry_.find(i->id); it != telemetry_.end()) prev = it->second;
    Telemetry next = ApplyHeartbeat(prev, utils, i->gpu_threshold_pct, now_ms, StaleMs());
    // The controller only needs to look when the idle window opens or closes (it then schedules
    // itself for the window's end); steady heartbeats change nothing it decides on.
    if (!prev || (prev->idle_since_ms == 0) != (next.idle_since_ms == 0)) wake_controller = true;
    telemetry_[i->id] = next;
  }
  // Write-behind: heartbeat times reach the database in batches (FlushHeartbeats, every few
  // seconds, one transaction), never one write per heartbeat.
  {
    std::lock_guard bl(beats_mu_);
    pending_beats_[i->id] = clock_.NowUnix();
  }

  json cmd = ParseCmd(i->command_json);
  if (!cmd.is_null() && body.contains("command_results") && body["command_results"].is_array()) {
    for (const auto& r : body["command_results"]) {
      if (!r.is_object() || r.value("id", "") != cmd.value("id", "") || cmd.value("done", false) ||
          cmd.value("failed", false)) {
        continue;
      }
      if (r.value("ok", false)) {
        cmd["done"] = true;
        if (cmd["type"] == "snapshot") {
          i->last_snapshot = r.value("snapshot_id", "");
          cmd["snapshot_id"] = i->last_snapshot;
          DUMONT_RETURN_IF_ERROR(Record(*i, "snapshot_committed",
                                        i->last_snapshot.substr(0, 8) + " (" + cmd.value("reason", "") + ", " +
                                            std::to_string(r.value("bytes_added", 0)) + " bytes added)"));
        } else {
          DUMONT_RETURN_IF_ERROR(Record(*i, cmd.value("type", "command") + "_done", ""));
        }
      } else {
        cmd["failed"] = true;
        cmd["error"] = r.value("error", "unknown error");
        DUMONT_RETURN_IF_ERROR(Record(*i, "command_failed", cmd.value("type", "") + ": " + cmd.value("error", "")));
      }
      i->command_json = cmd.dump();
      DUMONT_RETURN_IF_ERROR(SaveStatus(*i));
      wake_controller = true;
    }
  }
  json commands = json::array();
  if (!cmd.is_null() && !cmd.value("done", false) && !cmd.value("failed", false)) commands.push_back(cmd);
  if (wake_controller) queue_.Add(i->id);
  // Commands travel on heartbeat answers, so come back sooner when one may be coming: during a
  // hibernation or wake, right after the idle window ends, or while a command runs.
  double next_s = static_cast<double>(opts_.heartbeat_interval_s);
  if (i->state == "hibernating" || i->state == "waking" || i->desired != "running" || !commands.empty()) next_s = 1;
  auto tel = TelemetryOf(i->id);
  if (i->hib_enabled && tel && tel->idle_since_ms > 0) {
    double until_window = (tel->idle_since_ms + i->idle_seconds * 1000 - now_ms) / 1000.0 + 0.3;
    if (until_window > 0 && until_window < next_s) next_s = until_window;
  }
  return json{{"commands", commands},
              {"heartbeat_interval_s", opts_.heartbeat_interval_s},
              {"next_heartbeat_s", std::max(0.2, next_s)}};
}

std::optional<Telemetry> Fleet::TelemetryOf(const std::string& id) {
  std::lock_guard l(telemetry_mu_);
  auto it = telemetry_.find(id);
  if (it == telemetry_.end()) return std::nullopt;
  return it->second;
}

// ---- controller

Status Fleet::Reconcile(const std::string& id) {
  std::lock_guard lock(LockFor(id));
  auto i = store_.GetInstance(id);
  if (!i) return i.error().code() == Code::kNotFound ? Status::Ok() : i.error();
  return ReconcileLocked(*i);
}

Status Fleet::ReconcileLocked(Instance& i) {
  int64_t now_s = clock_.NowUnix();
  int64_t now_ms = clock_.NowUnixMillis();
  auto pp = ProviderFor(i.owner, i.provider);
  if (!pp) {
    if (pp.error().code() == Code::kUnavailable) return pp.error();  // the database: retried
    if (i.desired == "destroyed" && i.machine_id.empty()) {
      (void)CancelDeploy(i, "instance destroyed");
      return i.state == "destroyed" ? Status::Ok() : SetState(i, "destroyed", "");
    }
    if (i.state != "error") return SetState(i, "error", pp.error().message());
    return Status::Ok();
  }
  provider::Provider* p = pp->get();
  auto heard_since_state = [&]() {
    auto t = TelemetryOf(i.id);
    return t && t->last_heartbeat_ms >= i.state_since * 1000;
  };
  json cmd = ParseCmd(i.command_json);

  if (i.desired == "destroyed") {
    if (i.state == "destroyed") return Status::Ok();
    if (i.state != "destroying") DUMONT_RETURN_STATUS_IF_ERROR(SetState(i, "destroying", ""));
    DUMONT_RETURN_STATUS_IF_ERROR(CancelDeploy(i, "instance destroyed"));
    if (!i.machine_id.empty()) DUMONT_RETURN_STATUS_IF_ERROR(p->Destroy(i.machine_id));
    DUMONT_RETURN_STATUS_IF_ERROR(store_.RevokeAgentTokens(i.id, now_s));
    ForgetTokens(i.id);
    DUMONT_RETURN_STATUS_IF_ERROR(store_.EndHibernation(i.id, now_s));
    i.machine_id.clear();
    i.machine_json = "{}";
    i.command_json.clear();
    {
      std::lock_guard tl(telemetry_mu_);
      telemetry_.erase(i.id);
    }
    return SetState(i, "destroyed", "");
  }

  if (i.state == "provisioning" || i.state == "waking") {
    if (i.machine_id.empty()) {
      DUMONT_RETURN_STATUS_IF_ERROR(DeployStep(i, *pp));
      if (i.machine_id.empty()) return Status::Ok();  // still deploying (or failed: state error)
    }
    auto m = p->Get(i.machine_id);
    if (!m || m->state == provider::MachineState::kFailed || m->state == provider::MachineState::kTerminated) {
      DUMONT_RETURN_STATUS_IF_ERROR(Record(i, "machine_lost", i.machine_id + " is gone or failed; starting another"));
      DUMONT_RETURN_STATUS_IF_ERROR(store_.FinishAttempt(i.id, "failed", m ? "machine failed" : "machine gone", now_s));
      if (m) {
        json details = json::parse(i.machine_json, nullptr, false);
        std::string offer = details.is_object() ? details.value("offer_id", m->offer_id) : m->offer_id;
        if (!offer.empty()) DUMONT_RETURN_STATUS_IF_ERROR(MaybeAutoBlacklist(store_, p->Name(), offer, now_s));
      }
      (void)p->Destroy(i.machine_id);
      i.machine_id.clear();
      i.machine_json = "{}";
      DUMONT_RETURN_STATUS_IF_ERROR(SaveStatus(i));
      queue_.AddAfter(i.id, std::chrono::milliseconds(500));
      return Status::Ok();
    }
    if (!heard_since_state()) {
      queue_.AddAfter(i.id, std::chrono::seconds(2));
      return Status::Ok();
    }
    if (i.state == "waking" && !i.last_snapshot.empty()) {
      if (cmd.is_null() || cmd.value("type", "") != "restore") {
        i.command_json = json{{"id", NewId("cmd_")}, {"type", "restore"}, {"snapshot", i.last_snapshot}}.dump();
        DUMONT_RETURN_STATUS_IF_ERROR(SaveStatus(i));
        return Record(i, "restore_requested", i.last_snapshot.substr(0, 8));
      }
      if (cmd.value("failed", false)) return SetState(i, "error", "restore failed: " + cmd.value("error", ""));
      if (!cmd.value("done", false)) return Status::Ok();  // the heartbeat that reports it re-enqueues us
      i.command_json.clear();
      DUMONT_RETURN_STATUS_IF_ERROR(store_.EndHibernation(i.id, now_s));
    }
    DUMONT_RETURN_STATUS_IF_ERROR(store_.FinishAttempt(i.id, "ready", "", now_s));
    return SetState(i, "running", "");
  }

  if (i.state == "running") {
    // A finished manual snapshot leaves the command slot free again.
    if (!cmd.is_null() && (cmd.value("done", false) || cmd.value("failed", false)) &&
        cmd.value("reason", "") == "manual") {
      i.command_json.clear();
      DUMONT_RETURN_STATUS_IF_ERROR(SaveStatus(i));
      cmd = nullptr;
    }
    auto m = p->Get(i.machine_id);
    // Gone, failed, or stopped without our asking (a spot machine outbid or preempted): replace it,
    // from the last snapshot when there is one. Pausing is the only stop we order from here.
    bool gone = !m && m.error().code() == Code::kNotFound;
    bool interrupted = m && (m->state == provider::MachineState::kFailed ||
                             m->state == provider::MachineState::kTerminated ||
                             m->state == provider::MachineState::kStopped);
    if (gone || interrupted) {
      std::string what = gone ? " disappeared (interrupted?)"
                              : " is " + std::string(provider::MachineStateName(m->state)) + " (interrupted by the provider)";
      DUMONT_RETURN_STATUS_IF_ERROR(Record(i, "machine_lost", i.machine_id + what));
      if (interrupted) DUMONT_RETURN_STATUS_IF_ERROR(p->Destroy(i.machine_id));  // a stopped spot machine still bills storage
      DUMONT_RETURN_STATUS_IF_ERROR(store_.RevokeAgentTokens(i.id, now_s));
      ForgetTokens(i.id);
      {
        std::lock_guard tl(telemetry_mu_);
        telemetry_.erase(i.id);
      }
      i.machine_id.clear();
      i.machine_json = "{}";
      i.command_json.clear();
      return SetState(i, i.last_snapshot.empty() ? "provisioning" : "waking",
                      "replacing a lost machine" + std::string(i.last_snapshot.empty() ? "" : " from the last snapshot"));
    }
    if (i.desired == "running") {
      auto d = DecideIdle(i.hib_enabled, i.idle_seconds, TelemetryOf(i.id), now_ms, StaleMs());
      if (d.hibernate && (cmd.is_null() || cmd.value("done", false) || cmd.value("failed", false))) {
        i.desired = "hibernated";
        i.updated_at = now_s;
        DUMONT_RETURN_STATUS_IF_ERROR(store_.UpdateInstanceSpec(i));
        DUMONT_RETURN_STATUS_IF_ERROR(Record(i, "idle", "every GPU under " + std::to_string(static_cast<int>(i.gpu_threshold_pct)) +
                                                           " % for " + std::to_string(i.idle_seconds) + " s: hibernating"));
      } else {
        if (d.recheck_at_ms) queue_.AddAfter(i.id, std::chrono::milliseconds(d.recheck_at_ms - now_ms));
        return Status::Ok();
      }
    }
    if (i.desired == "hibernated") {
      i.command_json = json{{"id", NewId("cmd_")}, {"type", "snapshot"}, {"reason", "hibernate"}}.dump();
      return SetState(i, "hibernating", "taking the final snapshot");
    }
    if (i.desired == "paused") {
      DUMONT_RETURN_STATUS_IF_ERROR(SetState(i, "pausing", ""));
      DUMONT_RETURN_STATUS_IF_ERROR(p->Stop(i.machine_id));
      return SetState(i, "paused", "");
    }
    return Status::Ok();
  }

  if (i.state == "hibernating") {
    if (i.desired == "running" && !(cmd.is_object() && cmd.value("done", false))) {
      i.command_json.clear();
      return SetState(i, "running", "hibernation cancelled");
    }
    if (cmd.is_null() || cmd.value("type", "") != "snapshot" || cmd.value("reason", "") != "hibernate") {
      i.command_json = json{{"id", NewId("cmd_")}, {"type", "snapshot"}, {"reason", "hibernate"}}.dump();
      return SaveStatus(i);
    }
    if (cmd.value("failed", false)) {
      i.desired = "running";
      i.updated_at = now_s;
      DUMONT_RETURN_STATUS_IF_ERROR(store_.UpdateInstanceSpec(i));
      i.command_json.clear();
      return SetState(i, "running", "final snapshot failed, the machine keeps running: " + cmd.value("error", ""));
    }
    if (!cmd.value("done", false)) {
      auto t = TelemetryOf(i.id);
      if (!t || now_ms - t->last_heartbeat_ms > StaleMs()) {
        if (i.message.find("waiting for the agent") == std::string::npos) {
          i.message = "waiting for the agent to take the final snapshot (no heartbeat); the machine is kept";
          DUMONT_RETURN_STATUS_IF_ERROR(SaveStatus(i));
        }
      }
      queue_.AddAfter(i.id, std::chrono::seconds(2));
      return Status::Ok();
    }
    // The final snapshot is committed: now the machine can go and billing stops.
    DUMONT_RETURN_STATUS_IF_ERROR(p->Destroy(i.machine_id));
    DUMONT_RETURN_STATUS_IF_ERROR(store_.RevokeAgentTokens(i.id, now_s));
    ForgetTokens(i.id);
    DUMONT_RETURN_STATUS_IF_ERROR(
        store_.StartHibernation({NewId("hib_"), i.id, i.owner, i.price_per_hour, now_s, std::nullopt, 0, 0}));
    DUMONT_RETURN_STATUS_IF_ERROR(Record(i, "machine_destroyed", i.machine_id + " (hibernated)"));
    i.machine_id.clear();
    i.machine_json = "{}";
    i.command_json.clear();
    i.released = false;
    {
      std::lock_guard tl(telemetry_mu_);
      telemetry_.erase(i.id);
    }
    DUMONT_RETURN_STATUS_IF_ERROR(SetState(i, "hibernated", "snapshot " + i.last_snapshot.substr(0, 8)));
    queue_.AddAfter(i.id, std::chrono::seconds(std::max<int64_t>(1, i.release_after_seconds)));
    return Status::Ok();
  }

  if (i.state == "hibernated") {
    if (i.desired == "running") return SetState(i, "waking", "restoring snapshot " + i.last_snapshot.substr(0, 8));
    if (ShouldRelease(i.state_since, i.release_after_seconds, now_s, i.released)) {
      i.released = true;
      DUMONT_RETURN_STATUS_IF_ERROR(SaveStatus(i));
      return Record(i, "released", "nothing held by provider " + i.provider + " beyond the snapshot");
    }
    if (!i.released) {
      queue_.AddAfter(i.id, std::chrono::seconds(std::max<int64_t>(1, i.state_since + i.release_after_seconds - now_s)));
    }
    return Status::Ok();
  }

  if (i.state == "paused" || i.state == "pausing") {
    if (i.desired == "running") {
      DUMONT_RETURN_STATUS_IF_ERROR(p->Start(i.machine_id));
      return SetState(i, "running", "resumed");
    }
    if (i.state == "pausing") {
      DUMONT_RETURN_STATUS_IF_ERROR(p->Stop(i.machine_id));
      return SetState(i, "paused", "");
    }
  }
  return Status::Ok();
}

void Fleet::SweepOrphans() {
  // Server-wide providers, then each user's own (their machines can only belong to their instances).
  struct Account {
    std::string name, owner;  // owner empty: server-wide
    std::shared_ptr<provider::Provider> p;
  };
  std::vector<Account> accounts;
  for (auto& [name, p] : providers_) accounts.push_back({name, "", p});
  if (auto creds = store_.ListAllCredentials()) {
    for (const auto& c : *creds) {
      auto p = ProviderFor(c.owner, c.provider);
      if (p) accounts.push_back({c.provider, c.owner, *p});
      else if (log_) log_->Warn("cannot check a user's machines", {{"provider", c.provider}, {"error", p.error().message()}});
    }
  }
  for (auto& [name, owner, p] : accounts) {
    auto machines = p->ListByLabelPrefix("dc-");
    if (!machines) continue;
    for (const auto& m : *machines) {
      auto dash = m.label.rfind('-');
      if (dash == std::string::npos || dash < 4) continue;
      std::string id = m.label.substr(3, dash - 3);
      int64_t attempt = std::atoll(m.label.c_str() + dash + 1);
      std::lock_guard lock(LockFor(id));
      {
        std::lock_guard dl(deploys_mu_);
        if (active_.count(id)) continue;  // a running deploy owns every machine of its instance
      }
      if (!p->Get(m.id)) continue;  // removed meanwhile (e.g. by a hibernation that held the lock)
      auto i = store_.GetInstance(id);
      bool known = i && i->provider == name && (owner.empty() || i->owner == owner) && i->state != "destroyed" &&
                   i->state != "hibernated";
      if (known && i->machine_id == m.id) continue;
      if (known && i->machine_id.empty() && attempt == i->attempt) {
        i->machine_id = m.id;
        i->price_per_hour = m.price_per_hour;
        i->machine_json = m.details.dump();
        if (SaveStatus(*i).ok()) (void)Record(*i, "machine_adopted", m.id + " (created before a restart)");
        continue;
      }
      if (log_) log_->Warn("destroying orphan machine", {{"provider", name}, {"machine", m.id}, {"label", m.label}});
      (void)p->Destroy(m.id);
      if (i) (void)Record(*i, "orphan_destroyed", m.id);
    }
  }
}

void Fleet::Start() {
  if (running_.exchange(true)) return;
  SweepOrphans();
  auto live = store_.ListLiveInstanceIds();
  if (live) {
    for (const auto& id : *live) {
      // No deploy runs before Start: a "running" one was cut short by the previous process.
      if (auto open = store_.OpenDeployOf(id); open && *open && (*open)->state == "running") {
        auto d = **open;
        d.state = "failed";
        d.message = "interrupted: dumontd restarted during this deploy; its machines were adopted or destroyed";
        d.finished_ms = clock_.NowUnixMillis();
        if (store_.UpdateDeploy(d).ok()) {
          (void)store_.AddDeployEvent(d.id, *d.finished_ms, "deploy_failed", json{{"reason", d.message}}.dump());
        }
      }
      queue_.Add(id);
    }
  }
  for (int w = 0; w < std::max(1, opts_.workers); ++w) threads_.emplace_back([this] { WorkerLoop(); });
  threads_.emplace_back([this] { ResyncLoop(); });
}

void Fleet::Stop() {
  if (!running_.exchange(false)) return;
  queue_.ShutDown();
  stop_cv_.notify_all();
  for (auto& t : threads_) t.join();
  threads_.clear();
  (void)FlushHeartbeats();  // a clean stop loses no heartbeat time
}

void Fleet::WorkerLoop() {
  while (running_) {
    auto key = queue_.Get(std::chrono::milliseconds(200));
    if (!key) continue;
    Status st;
    try {
      st = Reconcile(*key);
    } catch (const std::exception& e) {
      st = Status::Internal(e.what());
    }
    if (!st.ok()) {
      if (log_) log_->Warn("reconcile failed", {{"instance", *key}, {"error", st.ToString()}});
      queue_.AddRateLimited(*key);
    } else {
      queue_.Forget(*key);
    }
    queue_.Done(*key);
  }
}

Status Fleet::FlushHeartbeats() {
  std::vector<std::pair<std::string, int64_t>> batch;
  {
    std::lock_guard bl(beats_mu_);
    batch.assign(pending_beats_.begin(), pending_beats_.end());
    pending_beats_.clear();
  }
  return store_.TouchHeartbeats(batch);
}

void Fleet::ResyncLoop() {
  std::unique_lock lock(stop_mu_);
  auto next_resync = std::chrono::steady_clock::now() + std::chrono::seconds(opts_.resync_interval_s);
  while (running_) {
    stop_cv_.wait_for(lock, std::chrono::seconds(2), [&] { return !running_.load(); });
    lock.unlock();
    Status flushed = FlushHeartbeats();
    if (!flushed.ok() && log_) log_->Warn("heartbeat flush failed", {{"error", flushed.ToString()}});
    lock.lock();
    if (!running_ || std::chrono::steady_clock::now() < next_resync) continue;
    lock.unlock();
    SweepOrphans();
    auto live = store_.ListLiveInstanceIds();
    size_t n = live ? live->size() : 0;
    if (live) {
      for (const auto& id : *live) queue_.Add(id);
    }
    // The resync is a safety net; with very many instances, space it out (2000 instances a second).
    int64_t interval = std::max<int64_t>(opts_.resync_interval_s, static_cast<int64_t>(n / 2000));
    next_resync = std::chrono::steady_clock::now() + std::chrono::seconds(interval);
    lock.lock();
  }
}

}  // namespace dumont::fleet
