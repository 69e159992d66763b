#include "provider/vast.h"

#include <algorithm>
#include <mutex>
#include <optional>
#include <thread>

#include "http/client.h"
#include "provider/retry.h"

namespace dumont::provider {
namespace {

using nlohmann::json;

// ---------------------------------------------------------------------------------------------------
// Vendor state -> MachineState: THE table (providers.md 1.6, 1.7 and the section 4 state machine).
// Evaluated top to bottom on (actual_status, intended_status); first match wins. "*" matches anything,
// "" is actual_status null (provisioning). Two rules come before the table:
//   - cur_state == "unloaded"                                  -> terminated (destroyed)
//   - status_msg contains "Error" / "OCI runtime create failed" and the container is not running
//                                                               -> failed (the CLI's wait_for_instance
//                                                                  and dstack's provisioning checks)
//
//   actual_status | intended_status | MachineState | why
//   null          | *               | pending      | provisioning
//   created       | *               | pending      | container created, not yet provisioned
//   loading       | *               | pending      | image pull / container start (GPU not billed)
//   rebooting     | *               | pending      | transient
//   running       | *               | running      | up, GPU billed (ready: intended == actual == running)
//   stopped       | running         | pending      | a start waiting for its GPUs ("Scheduling")
//   stopped       | *               | stopped      | stopped by us, outbid (is_bid) or out of credit
//   frozen        | running         | pending      | resuming
//   frozen        | *               | stopped      | paused with memory
//   exited        | stopped         | stopped      | a stopped/outbid instance may show exited
//   exited        | *               | failed       | container exited on its own: never reaches running
//   unknown       | *               | failed       | no host heartbeat: "will never reach running"
//   offline       | *               | failed       | host disconnected
//   anything else | *               | unknown      |
// Preemption (an outbid interruptible) is therefore "stopped", with details.interrupted = is_bid: Vast
// has no push notification and does not say who stopped it; the fleet knows whether it asked.
// ---------------------------------------------------------------------------------------------------
struct StateRow {
  const char* actual;
  const char* intended;
  MachineState state;
};
constexpr StateRow kVastStates[] = {
    {"", "*", MachineState::kPending},
    {"created", "*", MachineState::kPending},
    {"loading", "*", MachineState::kPending},
    {"rebooting", "*", MachineState::kPending},
    {"running", "*", MachineState::kRunning},
    {"stopped", "running", MachineState::kPending},
    {"stopped", "*", MachineState::kStopped},
    {"frozen", "running", MachineState::kPending},
    {"frozen", "*", MachineState::kStopped},
    {"exited", "stopped", MachineState::kStopped},
    {"exited", "*", MachineState::kFailed},
    {"unknown", "*", MachineState::kFailed},
    {"offline", "*", MachineState::kFailed},
};

std::string Str(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return "";
  if (it->is_string()) return it->get<std::string>();
  return it->dump();
}
double Num(const json& j, const char* key, double def = 0) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_number()) return def;
  return it->get<double>();
}
bool Bool(const json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_boolean() && it->get<bool>();
}
std::string Trim(std::string s) {
  auto b = s.find_first_not_of(" \t\r\n");
  auto e = s.find_last_not_of(" \t\r\n");
  return b == std::string::npos ? "" : s.substr(b, e - b + 1);
}

std::string UrlEncode(const std::string& s) {
  static const char* kHex = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

// An id segment for a URL path: Vast ids are integers; anything else is refused before any request.
bool ValidId(const std::string& id) {
  return !id.empty() && id.size() < 20 && std::all_of(id.begin(), id.end(), [](char c) { return c >= '0' && c <= '9'; });
}

Machine ToMachine(const json& in) {
  Machine m;
  m.id = Str(in, "id");
  m.label = Str(in, "label");
  m.state = VastMachineState(in);
  m.price_per_hour = Num(in, "dph_total");
  // providers.md 1.6 "SSH endpoint": direct when ports["22/tcp"] exists, else the proxy.
  std::string ip = Trim(Str(in, "public_ipaddr"));
  auto ports = in.find("ports");
  bool direct = false;
  if (ports != in.end() && ports->is_object() && ports->contains("22/tcp")) {
    const json& p22 = (*ports)["22/tcp"];
    if (p22.is_array() && !p22.empty() && p22[0].is_object()) {
      std::string hp = Str(p22[0], "HostPort");
      if (!hp.empty() && !ip.empty()) {
        m.ssh_host = ip;
        m.ssh_port = std::atoi(hp.c_str());
        direct = true;
      }
    }
  }
  if (!direct && !Str(in, "ssh_host").empty()) {
    m.ssh_host = Str(in, "ssh_host");
    m.ssh_port = static_cast<int>(Num(in, "ssh_port"));
    if (Str(in, "image_runtype").find("jupyter") != std::string::npos) m.ssh_port += 1;
  }
  bool is_bid = Bool(in, "is_bid");
  m.details = {{"vast_id", m.id},
               {"machine_id", Str(in, "machine_id")},
               {"actual_status", Str(in, "actual_status")},
               {"intended_status", Str(in, "intended_status")},
               {"cur_state", Str(in, "cur_state")},
               {"next_state", Str(in, "next_state")},
               {"status_msg", Str(in, "status_msg")},
               {"is_bid", is_bid},
               {"interrupted", is_bid && m.state == MachineState::kStopped},
               {"gpu_name", Str(in, "gpu_name")},
               {"num_gpus", static_cast<int>(Num(in, "num_gpus"))},
               {"public_ipaddr", ip},
               {"geolocation", Str(in, "geolocation")},
               {"start_date", Num(in, "start_date")},
               {"image", Str(in, "image_uuid")}};
  return m;
}

Offer ToOffer(const json& o) {
  Offer off;
  off.id = Str(o, "id");
  off.provider = "vast";
  off.gpu_name = Str(o, "gpu_name");
  off.num_gpus = static_cast<int>(Num(o, "num_gpus"));
  off.gpu_ram_gb = Num(o, "gpu_ram") / 1024.0;  // MB per GPU
  off.cpu_cores = static_cast<int>(std::lround(Num(o, "cpu_cores_effective")));
  off.ram_gb = Num(o, "cpu_ram") / 1024.0;  // MB
  off.disk_gb = Num(o, "disk_space");       // GB
  off.price_per_hour = Num(o, "dph_total");
  off.spot_price_per_hour = Num(o, "min_bid");  // the lowest bid an interruptible instance can win with
  off.reliability = Num(o, "reliability", Num(o, "reliability2"));
  off.location = Str(o, "geolocation");
  off.inet_down_mbps = Num(o, "inet_down");
  off.inet_up_mbps = Num(o, "inet_up");
  return off;
}

class VastProvider final : public Provider {
 public:
  explicit VastProvider(VastOptions o) : o_(std::move(o)), backoff_(o_.base_delay, o_.backoff_multiplier, o_.max_delay, o_.jitter_seed, o_.sleep) {
    while (!o_.base_url.empty() && o_.base_url.back() == '/') o_.base_url.pop_back();
    if (o_.max_attempts < 1) o_.max_attempts = 1;
  }
  std::string Name() const override { return "vast"; }

  Result<std::vector<Offer>> Offers() override {
    auto raw = SearchOffers(json::object(), "searching Vast offers");
    if (!raw) return Err(raw.error());
    std::vector<Offer> out;
    for (const auto& o : *raw) out.push_back(ToOffer(o));
    return out;
  }

  std::map<std::string, Capability> Capabilities() const override {
    return {{"stop", {true, ""}},
            {"ssh", {true, ""}},
            {"spot", {true, "interruptible instances bid min_bid; an outbid instance is stopped, not destroyed"}},
            {"virtual_gpu", {false, "Vast machines have real GPUs; the simulated GPU exists only on the local provider"}}};
  }

  Result<Machine> Create(const MachineSpec& spec) override {
    if (spec.label.empty() || spec.label.size() > 1024) {
      return Err(Status::InvalidArgument("Vast create: the machine label must be 1..1024 characters"));
    }
    // Idempotent per label: a machine we already created (its answer lost, or a crash before we saved
    // its id) is returned instead of renting a second one.
    auto existing = FindByLabel(spec.label, "creating Vast instance '" + spec.label + "'");
    if (!existing) return Err(existing.error());
    if (*existing) return **existing;

    std::string offer_id = spec.offer_id;
    std::optional<double> bid;
    if (offer_id.empty() || o_.interruptible) {
      json filters = json::object();
      if (!offer_id.empty()) {
        if (!ValidId(offer_id)) return Err(Status::InvalidArgument("Vast offer id '" + offer_id + "' is not a number"));
        filters["id"] = {{"eq", std::stoll(offer_id)}};
      }
      auto offers = SearchOffers(filters, offer_id.empty() ? "choosing the cheapest Vast offer"
                                                           : "reading Vast offer " + offer_id);
      if (!offers) return Err(offers.error());
      if (offers->empty()) {
        return Err(Status(Code::kResourceExhausted,
                          offer_id.empty() ? "Vast has no rentable offer matching the filters"
                                           : "Vast offer " + offer_id + " is no longer available; choose another offer"));
      }
      const json& chosen = offers->front();
      offer_id = Str(chosen, "id");
      if (o_.interruptible) bid = Num(chosen, "min_bid", Num(chosen, "dph_total"));
    }
    if (!ValidId(offer_id)) return Err(Status::InvalidArgument("Vast offer id '" + offer_id + "' is not a number"));

    std::map<std::string, std::string> env = spec.env;
    if (o_.enrollment_env) {
      for (auto& [k, v] : o_.enrollment_env(spec)) env[k] = v;
    }
    // providers.md 1.4: the body the CLI sends. price set = interruptible (spot) at that bid.
    json body = {{"client_id", "me"},
                 {"image", spec.image.empty() ? o_.image : spec.image},
                 {"env", env},
                 {"price", bid ? json(*bid) : json(nullptr)},
                 {"disk", o_.disk_gb},
                 {"label", spec.label},
                 {"extra", nullptr},
                 {"onstart", o_.onstart},
                 {"image_login", nullptr},
                 {"python_utf8", false},
                 {"lang_utf8", false},
                 {"use_jupyter_lab", false},
                 {"jupyter_dir", nullptr},
                 {"force", false},
                 {"cancel_unavail", !bid.has_value()},
                 {"template_hash_id", nullptr},
                 {"user", nullptr},
                 {"runtype", o_.runtype},
                 {"target_state", "running"}};
    const std::string what = "creating Vast instance '" + spec.label + "' on offer " + offer_id;
    const std::string url = o_.base_url + "/asks/" + offer_id + "/";
    Status last;
    for (int attempt = 1; attempt <= o_.max_attempts; ++attempt) {
      if (attempt > 1) Sleep(Backoff(attempt - 1));
      auto r = Send("PUT", url, body.dump());
      if (!r || r->status >= 500) {
        // Ambiguous: Vast may have created the instance and the answer was lost. Look before retrying.
        last = r ? HttpError(what, *r) : Clean(r.error()).Annotate(what);
        auto found = FindByLabel(spec.label, what + " (looking for it after a lost answer)");
        if (!found) return Err(found.error());
        if (*found) {
          Machine m = **found;
          m.offer_id = offer_id;
          return m;
        }
        continue;
      }
      if (r->status == 429) {
        last = HttpError(what, *r);
        continue;
      }
      json j = json::parse(r->body, nullptr, false);
      std::string contract = j.is_object() ? Str(j, "new_contract") : "";
      if (r->status == 200 && j.is_object() && Bool(j, "success") && ValidId(contract)) {
        return AfterCreate(contract, spec.label, offer_id);
      }
      if (ValidId(contract)) {
        // "success":false with new_contract: a spot bid Vast found insufficient; the instance exists
        // (stopped) and would bill storage. dstack's rule: destroy it.
        Status d = Destroy(contract);
        std::string msg = what + ": Vast refused (" + ErrorText(*r) + ") but created instance " + contract +
                          (d.ok() ? ", which was destroyed" : ", which could not be destroyed: " + d.message());
        return Err(Status(Code::kResourceExhausted, msg));
      }
      if (r->status == 404 || r->status == 410) {
        return Err(Status(Code::kResourceExhausted, what + ": offer " + offer_id +
                                                        " is no longer available (stockout: " + ErrorText(*r) +
                                                        "); choose another offer"));
      }
      if (r->status == 200) {
        return Err(Status::Internal(what + ": unexpected answer from Vast: " + ErrorText(*r)));
      }
      return Err(HttpError(what, *r));
    }
    return Err(last.Annotate("giving up after " + std::to_string(o_.max_attempts) + " attempts"));
  }

  Result<Machine> Get(const std::string& id) override {
    const std::string what = "reading Vast instance " + id;
    if (!ValidId(id)) return Err(Status::NotFound(what + ": no such instance (Vast ids are numbers)"));
    auto r = WithRetries(what, "GET", o_.base_url + "/instances/" + id + "/?owner=me", "");
    if (!r) return Err(r.error());
    if (r->status == 404) return Err(Status::NotFound(what + ": the instance does not exist"));
    if (r->status != 200) return Err(HttpError(what, *r));
    json j = json::parse(r->body, nullptr, false);
    if (!j.is_object() || !j.contains("instances")) {
      return Err(Status::Internal(what + ": Vast answered with an unexpected body"));
    }
    json inst = j["instances"];
    if (inst.is_array()) inst = inst.empty() ? json(nullptr) : inst[0];
    if (!inst.is_object()) return Err(Status::NotFound(what + ": the instance does not exist (destroyed or never created)"));
    Machine m = ToMachine(inst);
    if (m.state == MachineState::kTerminated) return Err(Status::NotFound(what + ": the instance was destroyed"));
    return m;
  }

  Result<std::vector<Machine>> ListByLabelPrefix(const std::string& prefix) override {
    auto all = ListAll("listing Vast instances with label prefix '" + prefix + "'");
    if (!all) return Err(all.error());
    std::vector<Machine> out;
    for (auto& m : *all) {
      if (m.label.rfind(prefix, 0) == 0 && m.state != MachineState::kTerminated) out.push_back(std::move(m));
    }
    return out;
  }

  Status Stop(const std::string& id) override { return SetState(id, "stopped", "stopping Vast instance " + id); }
  Status Start(const std::string& id) override { return SetState(id, "running", "starting Vast instance " + id); }

  Status Destroy(const std::string& id) override {
    const std::string what = "destroying Vast instance " + id;
    if (!ValidId(id)) return Status::Ok();  // never a Vast instance: nothing to destroy
    auto r = WithRetries(what, "DELETE", o_.base_url + "/instances/" + id + "/", "{}");
    if (!r) return r.error();
    if (r->status == 404 || r->status == 410 || r->body.find("no_such_instance") != std::string::npos) {
      return Status::Ok();  // already gone
    }
    if (r->status != 200) return HttpError(what, *r);
    json j = json::parse(r->body, nullptr, false);
    if (j.is_object() && j.contains("success") && !Bool(j, "success")) {
      return Status::FailedPrecondition(what + ": Vast refused: " + ErrorText(*r));
    }
    return Status::Ok();
  }

 private:
  // One HTTP request, no retries. The key travels only in the Authorization header.
  Result<http::ClientResponse> Send(const std::string& method, const std::string& url, const std::string& body) {
    http::ClientRequest req;
    req.method = method;
    req.url = url;
    req.body = method == "GET" ? "" : (body.empty() ? "{}" : body);
    req.headers = {{"Authorization", "Bearer " + o_.api_key},
                   {"Accept", "application/json"},
                   {"User-Agent", "dumont-vast/1"}};
    if (method != "GET") req.headers.emplace_back("Content-Type", "application/json");
    req.timeout = o_.request_timeout;
    return http::Fetch(req);
  }

  static bool Retryable(const Result<http::ClientResponse>& r) {
    return !r || r->status == 429 || r->status >= 500;
  }

  // Retries 429, 5xx and network errors. Returns the last response (the caller maps its status) or the
  // last network error (annotated with the operation).
  Result<http::ClientResponse> WithRetries(const std::string& what, const std::string& method,
                                           const std::string& url, const std::string& body) {
    for (int attempt = 1;; ++attempt) {
      auto r = Send(method, url, body);
      if (!Retryable(r) || attempt >= o_.max_attempts) {
        if (!r) {
          return Err(Clean(r.error()).Annotate(what + " (after " + std::to_string(attempt) + " attempts)"));
        }
        if (Retryable(r)) return Err(HttpError(what + " (after " + std::to_string(attempt) + " attempts)", *r));
        return r;
      }
      Sleep(Backoff(attempt));
    }
  }

  std::chrono::milliseconds Backoff(int attempt) { return backoff_.Delay(attempt); }
  void Sleep(std::chrono::milliseconds d) { backoff_.Sleep(d); }

  // The API key must never appear in an error: scrub it from anything that came from elsewhere.
  std::string Redact(std::string s) const { return ScrubSecret(std::move(s), o_.api_key, "[api key]"); }
  Status Clean(const Status& st) const { return Status(st.code(), Redact(st.message())); }

  // Vast error bodies: {"success":false,"error":...,"msg":...}, sometimes only msg/message/detail, and
  // 429s in plain text.
  std::string ErrorText(const http::ClientResponse& r) const {
    std::string text;
    json j = json::parse(r.body, nullptr, false);
    if (j.is_object()) {
      std::string err = Str(j, "error");
      std::string msg = Str(j, "msg");
      if (msg.empty()) msg = Str(j, "message");
      if (msg.empty()) msg = Str(j, "detail");
      text = err.empty() ? msg : msg.empty() ? err : err + ": " + msg;
    }
    if (text.empty()) text = Trim(r.body.substr(0, 200));
    if (text.empty()) text = "empty body";
    return Redact("HTTP " + std::to_string(r.status) + ", " + text);
  }

  Status HttpError(const std::string& what, const http::ClientResponse& r) const {
    std::string msg = what + ": " + ErrorText(r);
    switch (r.status) {
      case 400: return Status::InvalidArgument(msg);
      case 401: return Status::Unauthenticated(msg + "; check the Vast API key");
      case 403: return Status::PermissionDenied(msg + "; the Vast API key may not do this");
      case 404: return Status::NotFound(msg);
      case 429: return Status(Code::kResourceExhausted, msg + "; Vast rate limit (it sends no Retry-After)");
      default: break;
    }
    if (r.status >= 500) return Status::Unavailable(msg + "; Vast is failing, try again later");
    return Status::Internal(msg);
  }

  Result<std::vector<json>> SearchOffers(const json& extra_filters, const std::string& what) {
    // providers.md 1.3: the CLI's default filters and a flat query object.
    json q = {{"verified", {{"eq", true}}},
              {"external", {{"eq", false}}},
              {"rentable", {{"eq", true}}},
              {"rented", {{"eq", false}}}};
    for (const auto& [k, v] : o_.offer_filters.items()) q[k] = v;
    for (const auto& [k, v] : extra_filters.items()) q[k] = v;
    q["order"] = json::array({json::array({"dph_total", "asc"})});
    q["type"] = o_.interruptible ? "bid" : "on-demand";
    q["limit"] = o_.offer_limit;
    q["allocated_storage"] = o_.disk_gb;
    auto r = WithRetries(what, "POST", o_.base_url + "/bundles/", q.dump());
    if (!r) return Err(r.error());
    if (r->status != 200) return Err(HttpError(what, *r));
    json j = json::parse(r->body, nullptr, false);
    if (!j.is_object() || !j.contains("offers") || !j["offers"].is_array()) {
      return Err(Status::Internal(what + ": Vast answered without an offers list"));
    }
    std::vector<json> out;
    for (const auto& o : j["offers"]) {
      if (o.is_object()) out.push_back(o);
    }
    return out;
  }

  // GET /api/v1/instances/ with keyset pagination when base_url is .../api/v0; else the legacy v0 list.
  Result<std::vector<Machine>> ListAll(const std::string& what) {
    std::vector<Machine> out;
    const std::string v0 = "/api/v0";
    bool v1 = o_.base_url.size() >= v0.size() && o_.base_url.compare(o_.base_url.size() - v0.size(), v0.size(), v0) == 0;
    if (!v1) {
      auto r = WithRetries(what, "GET", o_.base_url + "/instances/?owner=me", "");
      if (!r) return Err(r.error());
      if (r->status != 200) return Err(HttpError(what, *r));
      json j = json::parse(r->body, nullptr, false);
      if (!j.is_object() || !j["instances"].is_array()) return Err(Status::Internal(what + ": unexpected list body"));
      for (const auto& i : j["instances"]) out.push_back(ToMachine(i));
      return out;
    }
    std::string root = o_.base_url.substr(0, o_.base_url.size() - v0.size()) + "/api/v1/instances/";
    std::string token;
    for (int page = 0; page < 10000; ++page) {
      // Query values are JSON-encoded then URL-encoded; strings go raw (providers.md 1.1).
      std::string url = root + "?limit=25";
      if (!token.empty()) url += "&after_token=" + UrlEncode(token);
      auto r = WithRetries(what, "GET", url, "");
      if (!r) return Err(r.error());
      if (r->status != 200) return Err(HttpError(what, *r));
      json j = json::parse(r->body, nullptr, false);
      if (!j.is_object() || !j.contains("instances") || !j["instances"].is_array()) {
        return Err(Status::Internal(what + ": Vast answered without an instances list"));
      }
      for (const auto& i : j["instances"]) {
        if (i.is_object()) out.push_back(ToMachine(i));
      }
      auto nt = j.find("next_token");
      if (nt == j.end() || !nt->is_string() || nt->get<std::string>().empty()) return out;
      token = nt->get<std::string>();
    }
    return Err(Status::Internal(what + ": too many pages"));
  }

  Result<std::optional<Machine>> FindByLabel(const std::string& label, const std::string& what) {
    auto all = ListAll(what);
    if (!all) return Err(all.error());
    for (auto& m : *all) {
      if (m.label == label && m.state != MachineState::kTerminated) return std::optional<Machine>(m);
    }
    return std::optional<Machine>();
  }

  Result<Machine> AfterCreate(const std::string& id, const std::string& label, const std::string& offer_id) {
    auto m = Get(id);
    if (m) {
      m->offer_id = offer_id;
      return *m;
    }
    // Created, but not readable yet: report it as provisioning; the reconciler reads it later.
    Machine p;
    p.id = id;
    p.label = label;
    p.offer_id = offer_id;
    p.state = MachineState::kPending;
    p.details = {{"vast_id", id}};
    return p;
  }

  Status SetState(const std::string& id, const std::string& state, const std::string& what) {
    if (!ValidId(id)) return Status::NotFound(what + ": no such instance");
    auto r = WithRetries(what, "PUT", o_.base_url + "/instances/" + id + "/", json{{"state", state}}.dump());
    if (!r) return r.error();
    if (r->status == 404 || r->body.find("no_such_instance") != std::string::npos) {
      return Status::NotFound(what + ": the instance does not exist");
    }
    if (r->status != 200) return HttpError(what, *r);
    json j = json::parse(r->body, nullptr, false);
    if (j.is_object() && j.contains("success") && !Bool(j, "success")) {
      return Status::FailedPrecondition(what + ": Vast refused: " + ErrorText(*r));
    }
    return Status::Ok();
  }

  VastOptions o_;
  RetryBackoff backoff_;
};

}  // namespace

MachineState VastMachineState(const json& in) {
  if (!in.is_object()) return MachineState::kUnknown;
  if (Str(in, "cur_state") == "unloaded") return MachineState::kTerminated;
  std::string actual = Str(in, "actual_status");
  std::string intended = Str(in, "intended_status");
  std::string msg = Str(in, "status_msg");
  if (actual != "running" &&
      (msg.find("Error") != std::string::npos || msg.find("OCI runtime create failed") != std::string::npos)) {
    return MachineState::kFailed;
  }
  for (const auto& row : kVastStates) {
    if (actual == row.actual && (std::string_view(row.intended) == "*" || intended == row.intended)) return row.state;
  }
  return MachineState::kUnknown;
}

std::unique_ptr<Provider> NewVastProvider(const VastOptions& opts) { return std::make_unique<VastProvider>(opts); }

}  // namespace dumont::provider
