// Multi-start deploys inside the fleet controller: the pure engine (multistart.h) decides, this file
// executes its orders against a provider, observes the machines (provider state, agent heartbeats,
// SSH banners) and records everything: the deploy row and its events (the SSE stream), machine
// history (one attempt per machine, feeding host reliability and the automatic blacklist) and
// instance events.
//
// Every create and wake of an instance runs through a deploy. The engine lives in memory while the
// deploy runs; the deploy row and each machine's label (dc-<instance>-<attempt>) are in the database
// before any create call, so a dumontd that dies mid-deploy marks the deploy failed at its next start
// and its orphan sweep adopts or destroys the machines (no invisible billing).
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <fcntl.h>
#include <future>

#include "auth/crypto.h"
#include "common/random.h"
#include "fleet/fleet.h"
#include "fleet/history.h"

namespace dumont::fleet {

using nlohmann::json;
using provider::MachineState;
using store::Instance;

// ---- request parsing

json DeployRequest::ToJson() const {
  json j = {{"requirements",
             {{"gpu", req.gpu},
              {"num_gpus", req.num_gpus},
              {"min_vram_gb", req.min_vram_gb},
              {"max_price", req.max_price},
              {"region", req.region},
              {"sort", req.sort}}},
            {"strategy",
             {{"batch_size", strategy.batch_size},
              {"max_batches", strategy.max_batches},
              {"batch_timeout_s", strategy.batch_timeout_s},
              {"carry_over", strategy.carry_over}}}};
  if (!offer_id.empty()) j["offer_id"] = offer_id;
  return j;
}

namespace {

Status Known(const json& obj, const std::string& where, std::initializer_list<const char*> keys) {
  for (const auto& [k, _] : obj.items()) {
    if (std::none_of(keys.begin(), keys.end(), [&](const char* x) { return k == x; })) {
      return Status::InvalidField(where + k, "unknown field '" + where + k + "'");
    }
  }
  return Status::Ok();
}

template <typename T>
Status Num(const json& obj, const std::string& where, const char* key, T* out, double lo, double hi) {
  if (!obj.contains(key)) return Status::Ok();
  const auto& v = obj[key];
  std::string name = where + key;
  if (!v.is_number()) return Status::InvalidField(name, name + " must be a number");
  double d = v.get<double>();
  if (std::is_integral_v<T> && d != static_cast<double>(static_cast<int64_t>(d))) {
    return Status::InvalidField(name, name + " must be a whole number");
  }
  if (d < lo || d > hi) {
    return Status::InvalidField(name, name + " must be between " + std::to_string(static_cast<int64_t>(lo)) + " and " +
                                          std::to_string(static_cast<int64_t>(hi)));
  }
  *out = static_cast<T>(d);
  return Status::Ok();
}

Status Str(const json& obj, const std::string& where, const char* key, std::string* out) {
  if (!obj.contains(key)) return Status::Ok();
  std::string name = where + key;
  if (!obj[key].is_string()) return Status::InvalidField(name, name + " must be a string");
  *out = obj[key].get<std::string>();
  if (out->size() > 200) return Status::InvalidField(name, name + " is longer than 200 characters");
  return Status::Ok();
}

int64_t AttemptOf(const std::string& label) {
  auto dash = label.rfind('-');
  return dash == std::string::npos ? 0 : std::atoll(label.c_str() + dash + 1);
}

// Connects and reads the server's identification line ("SSH-2.0-..."): the machine's sshd is up.
bool SshBannerSeen(const std::string& host, int port, int timeout_ms) {
  if (host.empty() || port <= 0 || port > 65535) return false;
  addrinfo hints{}, *res = nullptr;
  hints.ai_socktype = SOCK_STREAM;
  if (getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res) != 0 || !res) return false;
  int fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  bool ok = false;
  if (fd >= 0) {
    int rc = connect(fd, res->ai_addr, res->ai_addrlen);
    pollfd p{fd, POLLOUT, 0};
    if (rc == 0 || (errno == EINPROGRESS && poll(&p, 1, timeout_ms) == 1 && (p.revents & POLLOUT))) {
      int err = 0;
      socklen_t len = sizeof err;
      getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
      p = {fd, POLLIN, 0};
      char buf[8] = {};
      if (err == 0 && poll(&p, 1, timeout_ms) == 1 && read(fd, buf, 4) == 4) ok = std::string(buf, 4) == "SSH-";
    }
    close(fd);
  }
  freeaddrinfo(res);
  return ok;
}

class ProbeView final : public ProviderView {
 public:
  explicit ProbeView(const std::map<std::string, Probe>& probes) : probes_(probes) {}
  std::optional<Probe> Observe(const std::string& label) const override {
    auto it = probes_.find(label);
    if (it == probes_.end()) return std::nullopt;
    return it->second;
  }

 private:
  const std::map<std::string, Probe>& probes_;
};

json OfferJson(const provider::Offer& o) {
  return {{"id", o.id}, {"gpu", o.gpu_name}, {"num_gpus", o.num_gpus}, {"price_per_hour", o.price_per_hour},
          {"reliability", o.reliability}, {"location", o.location}};
}

}  // namespace

Result<DeployRequest> ParseDeployRequest(const json& j) {
  DeployRequest d;
  if (!j.is_object()) return Err(Status::InvalidArgument("deploy request must be a JSON object"));
  if (j.contains("requirements")) {
    const auto& r = j["requirements"];
    if (!r.is_object()) return Err(Status::InvalidField("requirements", "requirements must be an object"));
    DUMONT_RETURN_IF_ERROR(
        Known(r, "requirements.", {"gpu", "num_gpus", "min_vram_gb", "max_price", "region", "sort"}));
    DUMONT_RETURN_IF_ERROR(Str(r, "requirements.", "gpu", &d.req.gpu));
    DUMONT_RETURN_IF_ERROR(Num(r, "requirements.", "num_gpus", &d.req.num_gpus, 0, 64));
    DUMONT_RETURN_IF_ERROR(Num(r, "requirements.", "min_vram_gb", &d.req.min_vram_gb, 0, 4096));
    DUMONT_RETURN_IF_ERROR(Num(r, "requirements.", "max_price", &d.req.max_price, 0, 10000));
    DUMONT_RETURN_IF_ERROR(Str(r, "requirements.", "region", &d.req.region));
    DUMONT_RETURN_IF_ERROR(Str(r, "requirements.", "sort", &d.req.sort));
    if (Status v = ValidateRequirements(d.req); !v.ok()) return Err(Status::InvalidField("requirements." + v.field().value_or(""), v.message()));
  }
  if (j.contains("strategy")) {
    const auto& s = j["strategy"];
    if (!s.is_object()) return Err(Status::InvalidField("strategy", "strategy must be an object"));
    DUMONT_RETURN_IF_ERROR(Known(s, "strategy.", {"batch_size", "max_batches", "batch_timeout_s", "carry_over"}));
    DUMONT_RETURN_IF_ERROR(Num(s, "strategy.", "batch_size", &d.strategy.batch_size, 1, 16));
    DUMONT_RETURN_IF_ERROR(Num(s, "strategy.", "max_batches", &d.strategy.max_batches, 1, 10));
    DUMONT_RETURN_IF_ERROR(Num(s, "strategy.", "batch_timeout_s", &d.strategy.batch_timeout_s, 1, 3600));
    if (s.contains("carry_over")) {
      if (!s["carry_over"].is_boolean()) return Err(Status::InvalidField("strategy.carry_over", "strategy.carry_over must be true or false"));
      d.strategy.carry_over = s["carry_over"].get<bool>();
    }
  }
  DUMONT_RETURN_IF_ERROR(Str(j, "", "offer_id", &d.offer_id));
  return d;
}

// ---- the running deploy

struct Fleet::ActiveDeploy {
  store::Deploy row;
  std::shared_ptr<provider::Provider> p;
  std::unique_ptr<MultiStartDeploy> engine;
  std::map<std::string, Probe> probes;          // label -> what we last saw
  std::map<std::string, std::string> announced;  // label -> last state reported in an event
  // Guarded by Fleet::deploys_mu_ (heartbeats touch them without the instance lock):
  std::set<int64_t> live_attempts;  // attempts of the machines still in the race
  std::set<int64_t> beats;          // attempts whose agent has sent a heartbeat
  int batches_announced = 0;

  json MachinesJson() const {
    json arr = json::array();
    for (const auto& m : engine->machines()) {
      auto pr = probes.find(m.label);
      arr.push_back({{"label", m.label},
                     {"machine_id", pr != probes.end() ? pr->second.machine_id : m.machine_id},
                     {"batch", m.batch},
                     {"offer", OfferJson(m.offer)},
                     {"state", std::string(provider::MachineStateName(m.last_state))},
                     {"reachable", m.last_reachable},
                     {"alive", m.alive()},
                     {"end", m.end == EndReason::kNone ? json(nullptr) : json(std::string(EndReasonName(m.end)))},
                     {"billed_seconds", m.BilledSeconds()},
                     {"cost_usd", m.CostUsd()}});
    }
    return arr;
  }
};

Status Fleet::EmitDeploy(ActiveDeploy& d, const std::string& type, json data) {
  auto seq = store_.AddDeployEvent(d.row.id, clock_.NowUnixMillis(), type, data.dump());
  return seq ? Status::Ok() : seq.error();
}

Status Fleet::SaveDeploy(ActiveDeploy& d) {
  d.row.machines_json = d.MachinesJson().dump();
  d.row.loser_cost_usd = d.engine->LoserCostUsd();
  d.row.total_cost_usd = d.engine->TotalCostUsd();
  return store_.UpdateDeploy(d.row);
}

Result<store::Deploy> Fleet::NewDeployRow(const Instance& i, const std::string& reason) {
  store::Deploy row;
  row.id = NewId("dep_");
  row.owner = i.owner;
  row.instance_id = i.id;
  row.reason = reason;
  row.provider = i.provider;
  row.request_json = i.deploy_json;
  if (reason != "create" && reason != "retry") {
    // A wake or a replacement goes to any machine that meets the requirements: the offer picked at
    // create time may be rented by someone else now. Same GPU model unless the user asked otherwise.
    auto dr = ParseDeployRequest(json::parse(i.deploy_json, nullptr, false));
    if (dr) {
      dr->offer_id.clear();
      if (dr->req.gpu.empty()) dr->req.gpu = i.gpu;
      row.request_json = dr->ToJson().dump();
    }
  }
  row.created_ms = clock_.NowUnixMillis();
  DUMONT_RETURN_IF_ERROR(store_.CreateDeploy(row));
  return row;
}

Status Fleet::BeginDeploy(Instance& i, const std::shared_ptr<provider::Provider>& p) {
  int64_t now_ms = clock_.NowUnixMillis();
  auto open = store_.OpenDeployOf(i.id);
  if (!open) return open.error();
  store::Deploy row;
  if (*open && (*open)->state == "pending") {
    row = **open;
  } else {
    if (*open) {  // "running" with no engine in memory: the dumontd that ran it is gone
      auto old = **open;
      old.state = "failed";
      old.message = "interrupted: dumontd restarted during this deploy; a new deploy takes over";
      old.finished_ms = now_ms;
      DUMONT_RETURN_STATUS_IF_ERROR(store_.UpdateDeploy(old));
      (void)store_.AddDeployEvent(old.id, now_ms, "deploy_failed", json{{"reason", old.message}}.dump());
    }
    std::string reason = i.state == "waking" ? "wake" : (i.attempt > 0 ? "replace" : "create");
    auto made = NewDeployRow(i, reason);
    if (!made) return made.error();
    row = *made;
  }
  auto d = std::make_shared<ActiveDeploy>();
  d->row = row;
  d->p = p;
  auto fail = [&](const std::string& why) -> Status {
    d->row.state = "failed";
    d->row.message = why;
    d->row.finished_ms = now_ms;
    DUMONT_RETURN_STATUS_IF_ERROR(store_.UpdateDeploy(d->row));
    (void)store_.AddDeployEvent(d->row.id, now_ms, "deploy_failed", json{{"reason", why}}.dump());
    return SetState(i, "error", "deploy " + d->row.id + " failed: " + why);
  };
  auto dr = ParseDeployRequest(json::parse(row.request_json, nullptr, false));
  if (!dr) return fail("invalid deploy request: " + dr.error().message());
  auto offers = p->Offers();
  if (!offers) return offers.error().Annotate("listing offers of " + p->Name());  // retried with backoff
  if (!dr->offer_id.empty()) {
    std::erase_if(*offers, [&](const provider::Offer& o) { return o.id != dr->offer_id; });
    if (offers->empty()) return fail("offer " + dr->offer_id + " is no longer offered by " + p->Name());
  }
  std::set<std::string> blacklist;
  if (auto bl = store_.ListBlacklist()) {
    for (const auto& b : *bl) {
      if (b.provider == p->Name()) blacklist.insert(b.host_id);
    }
  } else {
    return bl.error();
  }
  d->engine = std::make_unique<MultiStartDeploy>(dr->strategy, *offers, dr->req, blacklist, i.id, i.attempt + 1);
  d->row.state = "running";
  DUMONT_RETURN_STATUS_IF_ERROR(SaveDeploy(*d));
  DUMONT_RETURN_STATUS_IF_ERROR(EmitDeploy(*d, "deploy_started",
                                           {{"reason", row.reason},
                                            {"provider", p->Name()},
                                            {"instance_id", i.id},
                                            {"request", dr->ToJson()},
                                            {"offers", offers->size()},
                                            {"blacklisted", blacklist.size()}}));
  DUMONT_RETURN_STATUS_IF_ERROR(Record(i, "deploy_started", d->row.id + " (" + row.reason + ") on " + p->Name()));
  std::lock_guard l(deploys_mu_);
  active_[i.id] = d;
  return Status::Ok();
}

bool Fleet::NoteDeployBeat(const std::string& instance_id, int64_t attempt) {
  std::lock_guard l(deploys_mu_);
  auto it = active_.find(instance_id);
  if (it == active_.end() || !it->second->live_attempts.count(attempt)) return false;
  it->second->beats.insert(attempt);
  return true;
}

Status Fleet::DeployStep(Instance& i, const std::shared_ptr<provider::Provider>& p) {
  std::shared_ptr<ActiveDeploy> d;
  {
    std::lock_guard l(deploys_mu_);
    if (auto it = active_.find(i.id); it != active_.end()) d = it->second;
  }
  if (!d) {
    DUMONT_RETURN_STATUS_IF_ERROR(BeginDeploy(i, p));
    std::lock_guard l(deploys_mu_);
    if (auto it = active_.find(i.id); it != active_.end()) d = it->second;
    if (!d) return Status::Ok();  // failed before it started (the instance says why)
  }
  provider::Provider& prov = *d->p;
  bool ssh = prov.Capabilities()["ssh"].supported;
  std::set<int64_t> beats;
  {
    std::lock_guard l(deploys_mu_);
    beats = d->beats;
  }

  // Observe every live machine: provider state, then reachability (agent heartbeat or SSH banner).
  for (const auto& m : d->engine->machines()) {
    if (!m.alive()) continue;
    auto& pr = d->probes[m.label];
    if (pr.machine_id.empty()) continue;  // the create was refused: already reported as failed
    auto got = prov.Get(pr.machine_id);
    if (got) {
      pr.state = got->state;
      if (!pr.reachable && pr.state == MachineState::kRunning) {
        pr.reachable = beats.count(AttemptOf(m.label)) > 0 ||
                       (ssh && SshBannerSeen(got->ssh_host, got->ssh_port, 1500));
      }
    } else if (got.error().code() == Code::kNotFound) {
      pr.state = MachineState::kTerminated;
    }  // other errors: keep the last observation; the next step looks again
    std::string now_state = std::string(provider::MachineStateName(pr.state)) + (pr.reachable ? "+reachable" : "");
    if (d->announced[m.label] != now_state) {
      d->announced[m.label] = now_state;
      DUMONT_RETURN_STATUS_IF_ERROR(EmitDeploy(*d, "machine_state",
                                               {{"label", m.label},
                                                {"machine_id", pr.machine_id},
                                                {"state", provider::MachineStateName(pr.state)},
                                                {"reachable", pr.reachable}}));
    }
  }

  int64_t now_ms = clock_.NowUnixMillis();
  int64_t now_s = clock_.NowUnix();
  Decision dec = d->engine->Step(now_ms, ProbeView(d->probes));
  // Before any create: an agent may heartbeat before its Create call even returns.
  {
    std::lock_guard l(deploys_mu_);
    d->live_attempts.clear();
    for (const auto& m : d->engine->machines()) {
      if (m.alive() || m.end == EndReason::kWinner) d->live_attempts.insert(AttemptOf(m.label));
    }
  }


  // Destroy first and in parallel: every second a loser lives is billed.
  std::vector<std::future<Status>> destroys;
  for (const auto& o : dec.destroy) {
    std::string mid = o.machine_id.empty() ? d->probes[o.label].machine_id : o.machine_id;
    if (mid.empty()) continue;
    destroys.push_back(std::async(std::launch::async, [&prov, mid] { return prov.Destroy(mid); }));
  }
  Status destroy_status;
  for (auto& f : destroys) {
    Status st = f.get();
    if (!st.ok() && destroy_status.ok()) destroy_status = st;
  }
  for (const auto& o : dec.destroy) {
    std::string mid = o.machine_id.empty() ? d->probes[o.label].machine_id : o.machine_id;
    const DeployMachine* dm = nullptr;
    for (const auto& m : d->engine->machines()) {
      if (m.label == o.label) dm = &m;
    }
    std::string outcome = "failed", why;
    switch (o.reason) {
      case EndReason::kLoser: outcome = "cancelled"; why = "another machine of the deploy was ready first"; break;
      case EndReason::kCancelled: outcome = "cancelled"; why = "deploy cancelled"; break;
      case EndReason::kFailed: why = "machine " + std::string(provider::MachineStateName(d->probes[o.label].state)); break;
      default: why = "not ready within the batch timeout"; break;
    }
    if (!mid.empty()) {
      DUMONT_RETURN_STATUS_IF_ERROR(store_.FinishMachineAttempt(prov.Name(), mid, outcome, why, now_s));
      if (outcome == "failed") DUMONT_RETURN_STATUS_IF_ERROR(MaybeAutoBlacklist(store_, prov.Name(), o.offer_id, now_s));
    }
    DUMONT_RETURN_STATUS_IF_ERROR(EmitDeploy(*d, "machine_destroyed",
                                             {{"label", o.label},
                                              {"machine_id", mid},
                                              {"offer_id", o.offer_id},
                                              {"reason", EndReasonName(o.reason)},
                                              {"billed_seconds", dm ? dm->BilledSeconds() : 0},
                                              {"cost_usd", dm ? dm->CostUsd() : 0.0}}));
  }
  if (!destroy_status.ok()) {
    // The engine considers them gone; the orphan sweep and the next resync destroy what remains.
    if (log_) log_->Warn("destroying a deploy machine failed", {{"deploy", d->row.id}, {"error", destroy_status.ToString()}});
  }

  // Start the new batch: labels and enrollment tokens are durable before any create call.
  if (!dec.start.empty()) {
    int batch = dec.start.front().batch;
    if (batch > d->batches_announced) {
      d->batches_announced = batch;
      json offers = json::array();
      for (const auto& o : dec.start) offers.push_back(OfferJson(o.offer));
      DUMONT_RETURN_STATUS_IF_ERROR(EmitDeploy(*d, "batch_started", {{"batch", batch}, {"offers", offers}}));
    }
    for (const auto& o : dec.start) i.attempt = std::max(i.attempt, AttemptOf(o.label));
    DUMONT_RETURN_STATUS_IF_ERROR(SaveStatus(i));
    std::vector<provider::MachineSpec> specs;
    for (const auto& o : dec.start) {
      std::string token = "det_" + Base64UrlEncode(RandomBytes(32));
      DUMONT_RETURN_STATUS_IF_ERROR(store_.CreateAgentToken({auth::Sha256Hex(token), i.id, "enroll", AttemptOf(o.label),
                                                             now_s, now_s + 86400, std::nullopt, std::nullopt}));
      provider::MachineSpec spec;
      spec.label = o.label;
      spec.offer_id = o.offer.id;
      spec.image = i.image;
      spec.env = {{"DUMONT_AGENT_SERVER", opts_.public_url},
                  {"DUMONT_AGENT_ENROLL_TOKEN", token},
                  {"DUMONT_AGENT_INSTANCE", i.id}};
      specs.push_back(std::move(spec));
    }
    std::vector<std::future<Result<provider::Machine>>> creates;
    for (const auto& spec : specs) {
      creates.push_back(std::async(std::launch::async, [&prov, &spec] { return prov.Create(spec); }));
    }
    for (size_t k = 0; k < creates.size(); ++k) {
      auto m = creates[k].get();
      const auto& o = dec.start[k];
      if (m) {
        d->probes[o.label] = Probe{m->state, false, m->id};
        DUMONT_RETURN_STATUS_IF_ERROR(store_.AddAttempt({NewId("att_"), i.owner, i.id, prov.Name(), o.offer.id,
                                                         o.offer.id, m->id, now_s, std::nullopt, std::nullopt,
                                                         "pending", ""}));
        DUMONT_RETURN_STATUS_IF_ERROR(EmitDeploy(*d, "machine_created",
                                                 {{"label", o.label},
                                                  {"machine_id", m->id},
                                                  {"batch", o.batch},
                                                  {"offer", OfferJson(o.offer)}}));
      } else {
        d->probes[o.label] = Probe{MachineState::kFailed, false, ""};
        DUMONT_RETURN_STATUS_IF_ERROR(store_.AddAttempt({NewId("att_"), i.owner, i.id, prov.Name(), o.offer.id,
                                                         o.offer.id, "", now_s, std::nullopt, now_s, "failed",
                                                         m.error().message()}));
        DUMONT_RETURN_STATUS_IF_ERROR(MaybeAutoBlacklist(store_, prov.Name(), o.offer.id, now_s));
        DUMONT_RETURN_STATUS_IF_ERROR(EmitDeploy(*d, "machine_failed",
                                                 {{"label", o.label},
                                                  {"offer", OfferJson(o.offer)},
                                                  {"error", m.error().message()}}));
      }
    }
  }

  if (dec.phase == DeployPhase::kSucceeded) {
    const DeployMachine* w = d->engine->winner();
    const Probe& wp = d->probes[w->label];
    auto got = prov.Get(wp.machine_id);
    i.machine_id = wp.machine_id;
    i.attempt = AttemptOf(w->label);
    i.price_per_hour = got ? got->price_per_hour : w->offer.price_per_hour;
    if (i.price_per_hour <= 0) i.price_per_hour = w->offer.price_per_hour;
    json details = got && got->details.is_object() ? got->details : json::object();
    details["offer_id"] = w->offer.id;  // vendors do not all say which offer a machine came from
    if (got && !got->ssh_host.empty() && got->ssh_port > 0) {
      details["ssh_host"] = got->ssh_host;
      details["ssh_port"] = got->ssh_port;
    }
    i.machine_json = details.dump();
    if (i.gpu.empty()) i.gpu = w->offer.gpu_name;
    {
      std::lock_guard tl(telemetry_mu_);
      telemetry_.erase(i.id);  // the idle clock starts with the new machine's own heartbeats
    }
    DUMONT_RETURN_STATUS_IF_ERROR(SaveStatus(i));
    DUMONT_RETURN_STATUS_IF_ERROR(store_.FinishMachineAttempt(prov.Name(), wp.machine_id, "ready", "", now_s));
    double ready_s = static_cast<double>(d->engine->finished_ms() - d->engine->started_ms()) / 1000.0;
    d->row.state = "succeeded";
    d->row.winner_machine_id = wp.machine_id;
    d->row.finished_ms = now_ms;
    d->row.message = w->label + " on offer " + w->offer.id + " was ready first";
    DUMONT_RETURN_STATUS_IF_ERROR(SaveDeploy(*d));
    DUMONT_RETURN_STATUS_IF_ERROR(EmitDeploy(*d, "deploy_succeeded",
                                             {{"winner", {{"label", w->label}, {"machine_id", wp.machine_id},
                                                          {"offer", OfferJson(w->offer)}}},
                                              {"time_to_ready_s", ready_s},
                                              {"machines_started", d->engine->machines().size()},
                                              {"loser_cost_usd", d->engine->LoserCostUsd()},
                                              {"total_cost_usd", d->engine->TotalCostUsd()}}));
    char msg[160];
    std::snprintf(msg, sizeof msg, "%s: %s ready in %.1f s; %zu machine(s) started, losers cost $%.4f",
                  d->row.id.c_str(), wp.machine_id.c_str(), ready_s, d->engine->machines().size(),
                  d->engine->LoserCostUsd());
    DUMONT_RETURN_STATUS_IF_ERROR(Record(i, "deploy_succeeded", msg));
    std::lock_guard l(deploys_mu_);
    active_.erase(i.id);
    return Status::Ok();
  }
  if (dec.phase == DeployPhase::kFailed) {
    std::string why = d->engine->failure().message();
    d->row.state = "failed";
    d->row.message = why;
    d->row.finished_ms = now_ms;
    DUMONT_RETURN_STATUS_IF_ERROR(SaveDeploy(*d));
    DUMONT_RETURN_STATUS_IF_ERROR(EmitDeploy(*d, "deploy_failed",
                                             {{"reason", why},
                                              {"machines_started", d->engine->machines().size()},
                                              {"total_cost_usd", d->engine->TotalCostUsd()}}));
    {
      std::lock_guard l(deploys_mu_);
      active_.erase(i.id);
    }
    return SetState(i, "error", "deploy " + d->row.id + " failed: " + why + " (retry: POST .../actions/retry)");
  }
  if (!dec.start.empty() || !dec.destroy.empty()) DUMONT_RETURN_STATUS_IF_ERROR(SaveDeploy(*d));
  // Poll the machines at least every 2 s; heartbeats wake us sooner.
  int64_t wait_ms = std::clamp<int64_t>(dec.next_step_at_ms - now_ms, 100, 2000);
  queue_.AddAfter(i.id, std::chrono::milliseconds(dec.start.empty() ? wait_ms : 100));
  return Status::Ok();
}

Status Fleet::CancelDeploy(Instance& i, const std::string& why) {
  std::shared_ptr<ActiveDeploy> d;
  {
    std::lock_guard l(deploys_mu_);
    if (auto it = active_.find(i.id); it != active_.end()) d = it->second;
    active_.erase(i.id);
  }
  int64_t now_ms = clock_.NowUnixMillis();
  if (!d) {
    auto open = store_.OpenDeployOf(i.id);
    if (!open) return open.error();
    if (!*open) return Status::Ok();
    auto row = **open;
    row.state = "failed";
    row.message = "cancelled: " + why;
    row.finished_ms = now_ms;
    DUMONT_RETURN_STATUS_IF_ERROR(store_.UpdateDeploy(row));
    auto seq = store_.AddDeployEvent(row.id, now_ms, "deploy_failed", json{{"reason", row.message}}.dump());
    return seq ? Status::Ok() : seq.error();
  }
  Decision dec = d->engine->Cancel(now_ms, why);
  for (const auto& o : dec.destroy) {
    std::string mid = o.machine_id.empty() ? d->probes[o.label].machine_id : o.machine_id;
    if (mid.empty()) continue;
    DUMONT_RETURN_STATUS_IF_ERROR(d->p->Destroy(mid));
    DUMONT_RETURN_STATUS_IF_ERROR(store_.FinishMachineAttempt(d->p->Name(), mid, "cancelled", why, clock_.NowUnix()));
    DUMONT_RETURN_STATUS_IF_ERROR(EmitDeploy(*d, "machine_destroyed",
                                             {{"label", o.label}, {"machine_id", mid}, {"reason", "cancelled"}}));
  }
  d->row.state = "failed";
  d->row.message = "cancelled: " + why;
  d->row.finished_ms = now_ms;
  DUMONT_RETURN_STATUS_IF_ERROR(SaveDeploy(*d));
  return EmitDeploy(*d, "deploy_failed", {{"reason", d->row.message}, {"total_cost_usd", d->engine->TotalCostUsd()}});
}

// ---- API

Result<store::Deploy> Fleet::StartDeploy(const std::string& owner, const json& req) {
  store::Deploy first;
  auto i = CreateInstance(owner, req, &first);
  if (!i) return Err(i.error());
  return first;
}

Result<store::Deploy> Fleet::GetDeploy(const std::string& owner, const std::string& id) {
  return store_.GetDeployOwned(id, owner);
}

Result<std::vector<store::Deploy>> Fleet::ListDeploys(const std::string& owner, int limit) {
  return store_.ListDeploys(owner, limit);
}

Result<std::vector<store::DeployEvent>> Fleet::DeployEvents(const std::string& owner, const std::string& id,
                                                             int64_t after_seq, int limit) {
  auto d = store_.GetDeployOwned(id, owner);
  if (!d) return Err(d.error());
  return store_.ListDeployEvents(id, after_seq, limit);
}

json Fleet::DeployJson(const store::Deploy& d) {
  json machines = json::parse(d.machines_json, nullptr, false);
  json request = json::parse(d.request_json, nullptr, false);
  return {{"id", d.id},
          {"instance_id", d.instance_id},
          {"reason", d.reason},
          {"provider", d.provider},
          {"state", d.state},
          {"message", d.message},
          {"request", request.is_discarded() ? json::object() : request},
          {"winner_machine_id", d.winner_machine_id.empty() ? json(nullptr) : json(d.winner_machine_id)},
          {"loser_cost_usd", d.loser_cost_usd},
          {"total_cost_usd", d.total_cost_usd},
          {"machines", machines.is_discarded() ? json::array() : machines},
          {"created_ms", d.created_ms},
          {"finished_ms", d.finished_ms ? json(*d.finished_ms) : json(nullptr)},
          {"events_url", "/api/v1/deploys/" + d.id + "/events"}};
}

}  // namespace dumont::fleet
