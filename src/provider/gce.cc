#include "provider/gce.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include <algorithm>
#include <ctime>
#include <deque>
#include <mutex>
#include <sstream>
#include <thread>

#include "common/random.h"
#include "http/client.h"
#include "provider/retry.h"

namespace dumont::provider {
namespace {

using nlohmann::json;
using SteadyClock = std::chrono::steady_clock;

// ---------------------------------------------------------------------------------------------------
// Instance.status -> MachineState: THE table (providers.md 3.3, 3.4, 3.5 and the section 4 state
// machine). One rule comes before it:
//   - TERMINATED without lastStartTimestamp                   -> failed (the VM never ran: it failed
//                                                                to boot, or was preempted while being
//                                                                created; dstack treats any non-RUNNING
//                                                                end of provisioning as an error)
//
//   status          | MachineState | why
//   PROVISIONING    | pending      | resources being allocated
//   STAGING         | pending      | allocated, starting (natIP assigned)
//   PENDING         | pending      | Flex-start / DWS waiting for capacity
//   REPAIRING       | pending      | in repair; comes back by itself
//   RUNNING         | running      | running (sshd may lag: probe TCP/22, 3.4)
//   STOPPING        | terminating  | on its way down: a stop, a delete or a preemption (GCE says not which)
//   PENDING_STOP    | terminating  |
//   SUSPENDING      | terminating  |
//   DEPROVISIONING  | terminating  |
//   TERMINATED      | stopped      | stopped by us, or a preempted Spot VM (action STOP); can be started
//   STOPPED         | stopped      | newer enum value
//   SUSPENDED       | stopped      | suspended with memory
//   anything else   | unknown      |
// A preempted Spot VM is therefore "stopped", with details.interrupted = true when the zone's
// operations hold a compute.instances.preempted for it since its last start (3.5). With action
// DELETE a preempted VM is gone: Get answers NotFound.
// ---------------------------------------------------------------------------------------------------
struct StateRow {
  const char* status;
  MachineState state;
};
constexpr StateRow kGceStates[] = {
    {"PROVISIONING", MachineState::kPending},      {"STAGING", MachineState::kPending},
    {"PENDING", MachineState::kPending},           {"REPAIRING", MachineState::kPending},
    {"RUNNING", MachineState::kRunning},           {"STOPPING", MachineState::kTerminating},
    {"PENDING_STOP", MachineState::kTerminating},  {"SUSPENDING", MachineState::kTerminating},
    {"DEPROVISIONING", MachineState::kTerminating}, {"TERMINATED", MachineState::kStopped},
    {"STOPPED", MachineState::kStopped},           {"SUSPENDED", MachineState::kStopped},
};

// Operation error codes that mean "no capacity here now" (3.6; SkyPilot's per-zone capacity list).
constexpr const char* kStockoutCodes[] = {"ZONE_RESOURCE_POOL_EXHAUSTED", "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS",
                                          "UNSUPPORTED_OPERATION", "insufficientCapacity"};

constexpr const char* kDefaultTokenUrl = "https://oauth2.googleapis.com/token";
constexpr const char* kLinkBase = "https://www.googleapis.com/compute/v1/";
constexpr const char* kLabelKey = "dumont-label";
constexpr const char* kEnvItem = "dumont-agent-env";

std::string Str(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return "";
  if (it->is_string()) return it->get<std::string>();
  return it->dump();
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

std::string LastSegment(const std::string& url) {
  auto slash = url.rfind('/');
  return slash == std::string::npos ? url : url.substr(slash + 1);
}

// Resource links may name compute.googleapis.com or www.googleapis.com (3.2): compare them from
// "projects/..." on.
std::string LinkPath(const std::string& link) {
  auto p = link.find("/compute/v1/");
  return p == std::string::npos ? link : link.substr(p + 12);
}

// A zone, machine type, instance or operation name as a URL path segment: RFC 1035-ish, nothing
// that could change the path.
bool ValidSegment(const std::string& s) {
  return !s.empty() && s.size() <= 63 &&
         std::all_of(s.begin(), s.end(), [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-'; });
}

// RFC 3339 ("2013-06-26T16:12:51.492-07:00") to Unix milliseconds.
std::optional<int64_t> ParseTimestampMs(const std::string& s) {
  std::tm tm{};
  int ms = 0, consumed = 0;
  if (std::sscanf(s.c_str(), "%4d-%2d-%2dT%2d:%2d:%2d%n", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &tm.tm_hour, &tm.tm_min,
                  &tm.tm_sec, &consumed) != 6) {
    return std::nullopt;
  }
  size_t i = static_cast<size_t>(consumed);
  if (i < s.size() && s[i] == '.') {
    int digits = 0;
    for (++i; i < s.size() && std::isdigit(static_cast<unsigned char>(s[i])); ++i, ++digits) {
      if (digits < 3) ms = ms * 10 + (s[i] - '0');
    }
    for (; digits < 3; ++digits) ms *= 10;
  }
  int offset_min = 0;
  if (i < s.size() && (s[i] == '+' || s[i] == '-')) {
    int h = 0, m = 0;
    if (std::sscanf(s.c_str() + i + 1, "%2d:%2d", &h, &m) != 2) return std::nullopt;
    offset_min = (s[i] == '-' ? -1 : 1) * (h * 60 + m);
  } else if (i >= s.size() || (s[i] != 'Z' && s[i] != 'z')) {
    return std::nullopt;
  }
  tm.tm_year -= 1900;
  tm.tm_mon -= 1;
  int64_t secs = static_cast<int64_t>(timegm(&tm)) - offset_min * 60;
  return secs * 1000 + ms;
}

// The agent's environment as the metadata item the startup script sources: KEY='value' lines.
Result<std::string> EnvFile(const std::map<std::string, std::string>& env) {
  std::string out;
  for (const auto& [k, v] : env) {
    bool ok = !k.empty() && !std::isdigit(static_cast<unsigned char>(k[0])) &&
              std::all_of(k.begin(), k.end(), [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; });
    if (!ok) return Err(Status::InvalidArgument("environment variable name '" + k + "' is not a shell name"));
    out += k + "='";
    for (char c : v) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
    out += "'\n";
  }
  return out;
}

// ---- service account key and the RS256 JWT assertion (3.1)

struct ServiceAccount {
  std::string client_email, private_key, private_key_id, token_uri;
};

Result<ServiceAccount> ParseKey(const std::string& text) {
  // Nothing of the key's text goes into a message: it holds the private key.
  const std::string what = "the GCE service account key is unusable: ";
  json j = json::parse(text, nullptr, false);
  if (!j.is_object()) return Err(Status::Unauthenticated(what + "it is not a JSON object"));
  ServiceAccount sa{Str(j, "client_email"), Str(j, "private_key"), Str(j, "private_key_id"), Str(j, "token_uri")};
  if (sa.client_email.empty()) return Err(Status::Unauthenticated(what + "client_email is missing"));
  if (sa.private_key.find("PRIVATE KEY-----") == std::string::npos) {
    return Err(Status::Unauthenticated(what + "private_key is not a PEM private key"));
  }
  return sa;
}

struct PkeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
struct MdCtxFree {
  void operator()(EVP_MD_CTX* c) const { EVP_MD_CTX_free(c); }
};
struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};

// RSASSA-PKCS1-v1_5 SHA-256 over data with the PEM key. The key's text never reaches a message.
Result<std::string> SignRs256(const std::string& pem, const std::string& data) {
  std::unique_ptr<BIO, BioFree> bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  // An encrypted key must not make OpenSSL prompt on the terminal: no password.
  auto no_password = [](char*, int, int, void*) { return 0; };
  std::unique_ptr<EVP_PKEY, PkeyFree> key(bio ? PEM_read_bio_PrivateKey(bio.get(), nullptr, no_password, nullptr) : nullptr);
  ERR_clear_error();
  if (!key || EVP_PKEY_get_base_id(key.get()) != EVP_PKEY_RSA) {
    return Err(Status::Unauthenticated("the GCE service account key is unusable: private_key is not an unencrypted RSA key"));
  }
  std::unique_ptr<EVP_MD_CTX, MdCtxFree> ctx(EVP_MD_CTX_new());
  size_t len = 0;
  const auto* in = reinterpret_cast<const unsigned char*>(data.data());
  if (!ctx || EVP_DigestSignInit(ctx.get(), nullptr, EVP_sha256(), nullptr, key.get()) != 1 ||
      EVP_DigestSign(ctx.get(), nullptr, &len, in, data.size()) != 1) {
    ERR_clear_error();
    return Err(Status::Internal("signing the GCE token request failed (OpenSSL)"));
  }
  std::string sig(len, '\0');
  if (EVP_DigestSign(ctx.get(), reinterpret_cast<unsigned char*>(sig.data()), &len, in, data.size()) != 1) {
    ERR_clear_error();
    return Err(Status::Internal("signing the GCE token request failed (OpenSSL)"));
  }
  sig.resize(len);
  return sig;
}

std::string NewRequestId() {  // a random UUID (v4): makes retried mutations idempotent (3.2)
  std::string b = RandomBytes(16);
  b[6] = static_cast<char>((b[6] & 0x0F) | 0x40);
  b[8] = static_cast<char>((b[8] & 0x3F) | 0x80);
  std::string h = HexEncode(b);
  return h.substr(0, 8) + "-" + h.substr(8, 4) + "-" + h.substr(12, 4) + "-" + h.substr(16, 4) + "-" + h.substr(20);
}

struct Place {
  std::string zone, name;
};
// "<zone>:<name>" (Machine ids) and "<zone>:<machine type>" (offer ids).
std::optional<Place> SplitId(const std::string& id) {
  auto colon = id.find(':');
  if (colon == std::string::npos) return std::nullopt;
  Place p{id.substr(0, colon), id.substr(colon + 1)};
  if (!ValidSegment(p.zone) || !ValidSegment(p.name)) return std::nullopt;
  return p;
}

class GceProvider final : public Provider {
 public:
  explicit GceProvider(GceOptions o) : o_(std::move(o)), backoff_(o_.base_delay, o_.backoff_multiplier, o_.max_delay, o_.jitter_seed, o_.sleep) {
    while (!o_.base_url.empty() && o_.base_url.back() == '/') o_.base_url.pop_back();
    if (o_.max_attempts < 1) o_.max_attempts = 1;
    auto sa = ParseKey(o_.service_account_json);
    if (sa) {
      sa_ = *sa;
      token_url_ = o_.token_url == kDefaultTokenUrl && !sa_.token_uri.empty() ? sa_.token_uri : o_.token_url;
      // The key, line by line, is scrubbed from anything shown (a fragment is as secret as the whole).
      std::istringstream lines(sa_.private_key);
      for (std::string line; std::getline(lines, line);) {
        if (Trim(line).size() >= 16) key_lines_.push_back(Trim(line));
      }
    } else {
      key_status_ = sa.error();
    }
    o_.service_account_json.clear();
  }
  std::string Name() const override { return "gce"; }

  Result<std::vector<Offer>> Offers() override {
    std::vector<Offer> out;
    for (const auto& zone : o_.zones) {
      for (const auto& mt : o_.machine_types) {
        Offer off;
        off.id = zone + ":" + mt.name;
        off.provider = "gce";
        off.cpu_cores = mt.cpus;
        off.ram_gb = mt.ram_gb;
        off.disk_gb = o_.disk_gb;
        off.price_per_hour = mt.price_per_hour;
        off.location = zone;
        out.push_back(off);
      }
    }
    std::stable_sort(out.begin(), out.end(), [](const Offer& a, const Offer& b) { return a.price_per_hour < b.price_per_hour; });
    return out;
  }

  std::map<std::string, Capability> Capabilities() const override {
    // ssh: natIP:22 once RUNNING (sshd may come up later: probe TCP/22). spot: a preempted VM is
    // stopped (instanceTerminationAction STOP) or deleted, never moved.
    return {{"stop", {true, ""}},
            {"ssh", {true, ""}},
            {"spot", {o_.spot, o_.spot ? "" : "standard VMs: GceOptions::spot is off"}},
            {"virtual_gpu", {false, "GCE standby VMs are CPU machines; the simulated GPU exists only on the local provider"}}};
  }

  Result<Machine> Create(const MachineSpec& spec) override {
    auto name = GceInstanceName(spec.label);
    if (!name) {
      return Err(Status::InvalidArgument("GCE create: label '" + spec.label +
                                         "' has no GCE instance name (lower-case letters, digits, single '-' and '_' "
                                         "not next to '-', starting with a letter, at most 63 characters)"));
    }
    const std::string what = "creating GCE instance '" + *name + "'";
    DUMONT_RETURN_IF_ERROR(Configured(what));
    // Idempotent per label: a VM we already created (its answer lost, or a crash before we saved its
    // id) is returned instead of creating a second one.
    for (const auto& zone : o_.zones) {
      auto found = GetInstance(zone, *name, what);
      if (!found) return Err(found.error());
      if (*found) return ToMachine(**found, zone, false);
    }

    std::string offer_id = spec.offer_id;
    if (offer_id.empty()) {
      auto offers = Offers();
      if (offers->empty()) return Err(Status::FailedPrecondition(what + ": no zone or machine type is configured"));
      offer_id = offers->front().id;
    }
    auto offer = SplitId(offer_id);
    if (!offer || std::find(o_.zones.begin(), o_.zones.end(), offer->zone) == o_.zones.end() || !Type(offer->name)) {
      return Err(Status::InvalidArgument(what + ": offer '" + offer_id + "' is not one of this provider's offers"));
    }
    const std::string zone = offer->zone;
    const std::string where = what + " in " + zone + " as " + offer->name;

    std::map<std::string, std::string> env = spec.env;
    if (o_.enrollment_env) {
      for (auto& [k, v] : o_.enrollment_env(spec)) env[k] = v;
    }
    auto env_file = EnvFile(env);
    if (!env_file) return Err(env_file.error().Annotate(what));
    json body = InsertBody(spec, *name, zone, offer->name, *env_file);

    // One requestId for every try: GCE runs a retried insert once (3.2).
    const std::string url = ZoneUrl(zone) + "/instances?requestId=" + NewRequestId();
    Status last;
    for (int attempt = 1; attempt <= o_.max_attempts; ++attempt) {
      if (attempt > 1) Sleep(Backoff(attempt - 1));
      auto once = Once("POST", url, body.dump());
      if (!once) return Err(once.error().Annotate(where));
      Reply& r = *once;
      if (!r || r->status >= 500) {
        // Ambiguous: GCE may have accepted the insert and the answer was lost. Look before retrying.
        last = r ? HttpError(where, *r) : Clean(r.error()).Annotate(where);
        auto found = GetInstance(zone, *name, where + " (looking for it after a lost answer)");
        if (!found) return Err(found.error());
        if (*found) return ToMachine(**found, zone, false);
        continue;
      }
      if (RateLimited(*r)) {
        last = HttpError(where, *r);
        continue;
      }
      if (r->status == 409) return Existing(zone, *name, where, *r);
      if (r->status < 200 || r->status >= 300) return Err(HttpError(where, *r));
      json op = json::parse(r->body, nullptr, false);
      if (!op.is_object()) return Err(Status::Internal(where + ": GCE answered without an Operation"));
      auto done = WaitOperation(zone, op, where);
      if (!done) return Err(done.error());
      if (OpErrorCode(*done) == "RESOURCE_ALREADY_EXISTS") return Existing(zone, *name, where, std::nullopt);
      if (!OpErrorCode(*done).empty()) return Err(OpError(where, *done));
      auto inst = GetInstance(zone, *name, where);
      if (!inst) return Err(inst.error());
      if (*inst) return ToMachine(**inst, zone, false);
      // Accepted, not readable yet (the operation is still running): provisioning; Get tells the rest.
      Machine p;
      p.id = zone + ":" + *name;
      p.label = spec.label;
      p.offer_id = offer_id;
      p.state = MachineState::kPending;
      p.price_per_hour = Type(offer->name)->price_per_hour;
      p.details = {{"name", *name}, {"zone", zone}, {"operation", Str(*done, "name")}, {"interrupted", false}};
      return p;
    }
    return Err(last.Annotate("giving up after " + std::to_string(o_.max_attempts) + " attempts"));
  }

  Result<Machine> Get(const std::string& id) override {
    const std::string what = "reading GCE instance " + id;
    auto place = SplitId(id);
    if (!place) return Err(Status::NotFound(what + ": no such instance (GCE machine ids are <zone>:<name>)"));
    DUMONT_RETURN_IF_ERROR(Configured(what));
    auto inst = GetInstance(place->zone, place->name, what);
    if (!inst) return Err(inst.error());
    if (!*inst) return Err(Status::NotFound(what + ": the instance does not exist"));
    bool interrupted = false;
    if (MaybePreempted(**inst)) {
      auto pre = Preemptions(place->zone, TargetLink(**inst, place->zone), what);
      if (!pre) return Err(pre.error());
      interrupted = Interrupted(**inst, place->zone, *pre);
    }
    return ToMachine(**inst, place->zone, interrupted);
  }

  Result<std::vector<Machine>> ListByLabelPrefix(const std::string& prefix) override {
    const std::string what = "listing GCE instances with label prefix '" + prefix + "'";
    DUMONT_RETURN_IF_ERROR(Configured(what));
    std::vector<Machine> out;
    for (const auto& zone : o_.zones) {
      auto all = ListZone(zone, what);
      if (!all) return Err(all.error());
      std::vector<json> mine;
      bool any_preempted = false;
      for (auto& i : *all) {
        std::string label = LabelOf(i);
        if (label.empty() || label.rfind(prefix, 0) != 0) continue;
        any_preempted = any_preempted || MaybePreempted(i);
        mine.push_back(std::move(i));
      }
      std::map<std::string, int64_t> pre;
      if (any_preempted) {
        auto p = Preemptions(zone, "", what);
        if (!p) return Err(p.error());
        pre = std::move(*p);
      }
      for (const auto& i : mine) out.push_back(ToMachine(i, zone, Interrupted(i, zone, pre)));
    }
    return out;
  }

  Status Stop(const std::string& id) override { return Mutate(id, "stop", "stopping GCE instance " + id); }
  Status Start(const std::string& id) override { return Mutate(id, "start", "starting GCE instance " + id); }
  Status Destroy(const std::string& id) override { return Mutate(id, "delete", "deleting GCE instance " + id); }

 private:
  // A request's outcome: a response (any status) or a network error.
  using Reply = Result<http::ClientResponse>;

  Status Configured(const std::string& what) const {
    if (!key_status_.ok()) return key_status_.Annotate(what);
    if (!ValidProject(o_.project)) return Status::FailedPrecondition(what + ": GceOptions::project is not a GCE project id");
    for (const auto& zone : o_.zones) {
      if (!ValidSegment(zone)) return Status::FailedPrecondition(what + ": GceOptions::zones has an invalid zone '" + zone + "'");
    }
    return Status::Ok();
  }
  static bool ValidProject(const std::string& p) {
    return !p.empty() && p.size() <= 63 &&
           std::all_of(p.begin(), p.end(), [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.' || c == ':'; });
  }
  std::string ZoneUrl(const std::string& zone) const { return o_.base_url + "/projects/" + o_.project + "/zones/" + zone; }

  const GceMachineType* Type(const std::string& name) const {
    for (const auto& mt : o_.machine_types) {
      if (mt.name == name) return &mt;
    }
    return nullptr;
  }

  json InsertBody(const MachineSpec& spec, const std::string& name, const std::string& zone, const std::string& type,
                  const std::string& env_file) const {
    // MachineSpec::image is a GCE image only when it names one; a container image (meant for Vast) is not.
    const std::string& img = spec.image;
    bool gce_image = img.rfind("projects/", 0) == 0 || img.rfind("global/", 0) == 0 || img.rfind("https://", 0) == 0;
    json items = json::array({{{"key", "startup-script"}, {"value", o_.startup_script}}, {{"key", kEnvItem}, {"value", env_file}}});
    if (!o_.ssh_keys.empty()) items.push_back({{"key", "ssh-keys"}, {"value", o_.ssh_keys}});
    json scheduling = o_.spot ? json{{"provisioningModel", "SPOT"}, {"instanceTerminationAction", o_.termination_action}}
                              : json{{"provisioningModel", "STANDARD"}, {"automaticRestart", true}, {"onHostMaintenance", "MIGRATE"}};
    // providers.md 3.2: the insert body of a Spot standby VM.
    return {{"name", name},
            {"machineType", "zones/" + zone + "/machineTypes/" + type},
            {"disks", {{{"boot", true},
                        {"autoDelete", true},
                        {"initializeParams", {{"sourceImage", gce_image ? img : o_.image},
                                              {"diskSizeGb", std::to_string(o_.disk_gb)},
                                              {"diskType", "zones/" + zone + "/diskTypes/" + o_.disk_type}}}}}},
            {"networkInterfaces", {{{"network", o_.network}, {"accessConfigs", {{{"type", "ONE_TO_ONE_NAT"}, {"name", "External NAT"}}}}}}},
            {"metadata", {{"items", items}}},
            {"labels", {{kLabelKey, spec.label}}},
            {"scheduling", scheduling}};
  }

  std::string LabelOf(const json& inst) const {
    auto labels = inst.find("labels");
    if (labels != inst.end() && labels->is_object() && labels->contains(kLabelKey) && (*labels)[kLabelKey].is_string()) {
      return (*labels)[kLabelKey].get<std::string>();
    }
    return GceLabelFromName(Str(inst, "name")).value_or("");
  }

  Machine ToMachine(const json& in, const std::string& zone, bool interrupted) const {
    Machine m;
    std::string name = Str(in, "name");
    m.id = zone + ":" + name;
    m.label = LabelOf(in);
    std::string type = LastSegment(Str(in, "machineType"));
    m.offer_id = zone + ":" + type;
    m.state = GceMachineState(in);
    if (const GceMachineType* mt = Type(type)) m.price_per_hour = mt->price_per_hour;
    // 3.4: the SSH endpoint is networkInterfaces[0].accessConfigs[0].natIP once RUNNING.
    std::string nat_ip, network_ip;
    auto nics = in.find("networkInterfaces");
    if (nics != in.end() && nics->is_array() && !nics->empty() && (*nics)[0].is_object()) {
      const json& nic = (*nics)[0];
      network_ip = Str(nic, "networkIP");
      auto acs = nic.find("accessConfigs");
      if (acs != nic.end() && acs->is_array() && !acs->empty() && (*acs)[0].is_object()) nat_ip = Str((*acs)[0], "natIP");
    }
    if (m.state == MachineState::kRunning && !nat_ip.empty()) {
      m.ssh_host = nat_ip;
      m.ssh_port = 22;
    }
    json sched = in.contains("scheduling") && in["scheduling"].is_object() ? in["scheduling"] : json::object();
    m.details = {{"gce_id", Str(in, "id")},
                 {"name", name},
                 {"zone", zone},
                 {"status", Str(in, "status")},
                 {"status_message", Str(in, "statusMessage")},
                 {"machine_type", type},
                 {"nat_ip", nat_ip},
                 {"network_ip", network_ip},
                 {"provisioning_model", Str(sched, "provisioningModel")},
                 {"termination_action", Str(sched, "instanceTerminationAction")},
                 {"interrupted", interrupted},
                 {"creation_timestamp", Str(in, "creationTimestamp")},
                 {"last_start_timestamp", Str(in, "lastStartTimestamp")},
                 {"last_stop_timestamp", Str(in, "lastStopTimestamp")}};
    return m;
  }

  // ---- preemption (3.5): a stopped Spot VM is confirmed preempted by a compute.instances.preempted
  // operation on it since its last start.
  static bool MaybePreempted(const json& inst) {
    return GceMachineState(inst) == MachineState::kStopped && inst.contains("scheduling") &&
           inst["scheduling"].is_object() && Str(inst["scheduling"], "provisioningModel") == "SPOT";
  }
  std::string TargetLink(const json& inst, const std::string& zone) const {
    std::string self = Str(inst, "selfLink");
    if (self.rfind("https://", 0) == 0) return self;
    return kLinkBase + std::string("projects/") + o_.project + "/zones/" + zone + "/instances/" + Str(inst, "name");
  }
  bool Interrupted(const json& inst, const std::string& zone, const std::map<std::string, int64_t>& preempted) const {
    if (!MaybePreempted(inst)) return false;
    auto it = preempted.find(LinkPath(TargetLink(inst, zone)));
    if (it == preempted.end()) return false;
    auto started = ParseTimestampMs(Str(inst, "lastStartTimestamp"));
    return !started || it->second >= *started;
  }

  // Preemption operations of a zone (all, or those of one target): instance link path -> latest time.
  Result<std::map<std::string, int64_t>> Preemptions(const std::string& zone, const std::string& target, const std::string& what) {
    std::string filter = "operationType=\"compute.instances.preempted\"";
    if (!target.empty()) filter += " AND targetLink=\"" + target + "\"";
    std::map<std::string, int64_t> out;
    auto ops = ListPages(ZoneUrl(zone) + "/operations?filter=" + UrlEncode(filter), what + " (reading preemptions)");
    if (!ops) return Err(ops.error());
    for (const auto& op : *ops) {
      if (Str(op, "operationType") != "compute.instances.preempted") continue;  // "the filter is not 100% accurate"
      int64_t t = ParseTimestampMs(Str(op, "insertTime")).value_or(0);
      auto& slot = out[LinkPath(Str(op, "targetLink"))];
      slot = std::max(slot, t);
    }
    return out;
  }

  // ---- HTTP

  // One request with a valid access token, and one new token on a 401 (google-auth's refresh rule).
  // The outer error means no token could be had (final); the inner result is the request's outcome.
  Result<Reply> Once(const std::string& method, const std::string& url, const std::string& body) {
    auto token = AccessToken("");
    if (!token) return Err(token.error());
    Reply r = Send(method, url, body, *token);
    if (r && r->status == 401) {
      token = AccessToken(*token);
      if (!token) return Err(token.error());
      r = Send(method, url, body, *token);
    }
    return r;
  }

  Reply Send(const std::string& method, const std::string& url, const std::string& body, const std::string& token) const {
    http::ClientRequest req;
    req.method = method;
    req.url = url;
    req.body = body;
    req.headers = {{"Authorization", "Bearer " + token}, {"Accept", "application/json"}, {"User-Agent", "dumont-gce/1"}};
    if (!body.empty()) req.headers.emplace_back("Content-Type", "application/json");
    req.timeout = o_.request_timeout;
    return http::Fetch(req);
  }

  // The reason of a Google JSON error: {"error":{"code":..,"message":..,"errors":[{"reason":..}]}}.
  static std::string Reason(const http::ClientResponse& r) {
    json j = json::parse(r.body, nullptr, false);
    if (!j.is_object() || !j.contains("error") || !j["error"].is_object()) return "";
    const json& e = j["error"];
    if (e.contains("errors") && e["errors"].is_array() && !e["errors"].empty() && e["errors"][0].is_object()) {
      return Str(e["errors"][0], "reason");
    }
    return "";
  }
  static bool RateLimited(const http::ClientResponse& r) {
    if (r.status == 429) return true;
    std::string reason = r.status == 403 ? Reason(r) : "";
    return reason == "rateLimitExceeded" || reason == "userRateLimitExceeded";
  }
  static bool Retryable(const Reply& r) { return !r || r->status >= 500 || RateLimited(*r); }

  // Retries 429, 403 rateLimitExceeded, 5xx and network errors. Returns the last response (the caller
  // maps its status) or the last error (annotated with the operation).
  Result<http::ClientResponse> WithRetries(const std::string& what, const std::string& method, const std::string& url,
                                           const std::string& body) {
    for (int attempt = 1;; ++attempt) {
      auto once = Once(method, url, body);
      if (!once) return Err(once.error().Annotate(what));
      Reply& r = *once;
      if (!Retryable(r) || attempt >= o_.max_attempts) {
        std::string after = what + " (after " + std::to_string(attempt) + " attempts)";
        if (!r) return Err(Clean(r.error()).Annotate(after));
        if (Retryable(r)) return Err(HttpError(after, *r));
        return r;
      }
      Sleep(Backoff(attempt));
    }
  }

  std::chrono::milliseconds Backoff(int attempt) { return backoff_.Delay(attempt); }
  void Sleep(std::chrono::milliseconds d) { backoff_.Sleep(d); }

  // ---- access token (3.1)

  // The cached token, or a new one when it is about to expire or equals `rejected` (a 401 answer).
  Result<std::string> AccessToken(const std::string& rejected) {
    std::lock_guard l(token_mu_);
    if (!key_status_.ok()) return Err(key_status_);
    if (!token_.empty() && token_ != rejected && SteadyClock::now() + o_.token_refresh_margin < token_expiry_) return token_;
    token_.clear();
    const std::string what = "getting a Google access token for " + sa_.client_email;
    int64_t now = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
    json header = {{"alg", "RS256"}, {"typ", "JWT"}};
    if (!sa_.private_key_id.empty()) header["kid"] = sa_.private_key_id;
    json claims = {{"iss", sa_.client_email}, {"scope", o_.scope}, {"aud", token_url_}, {"iat", now}, {"exp", now + 3600}};
    std::string input = Base64UrlEncode(header.dump()) + "." + Base64UrlEncode(claims.dump());
    auto sig = SignRs256(sa_.private_key, input);
    if (!sig) return Err(sig.error().Annotate(what));
    std::string assertion = input + "." + Base64UrlEncode(*sig);
    AddSecret(assertion);
    http::ClientRequest req;
    req.method = "POST";
    req.url = token_url_;
    req.body = "grant_type=" + UrlEncode("urn:ietf:params:oauth:grant-type:jwt-bearer") + "&assertion=" + UrlEncode(assertion);
    req.headers = {{"Content-Type", "application/x-www-form-urlencoded"}, {"Accept", "application/json"}, {"User-Agent", "dumont-gce/1"}};
    req.timeout = o_.request_timeout;
    for (int attempt = 1;; ++attempt) {
      auto r = http::Fetch(req);
      json j = r ? json::parse(r->body, nullptr, false) : json();
      std::string err = j.is_object() ? Str(j, "error") : "";
      // google-auth retries 500, 503, 504, 408, 429 and these error values.
      bool retry = !r || r->status == 408 || r->status == 429 || r->status >= 500 || err == "internal_failure" ||
                   err == "server_error" || err == "temporarily_unavailable";
      if (r && r->status == 200 && j.is_object() && !Str(j, "access_token").empty()) {
        auto ttl = j.find("expires_in");  // a number, or a number in a string
        double secs = ttl == j.end() ? 3600 : ttl->is_number() ? ttl->get<double>() : std::atof(Str(j, "expires_in").c_str());
        token_ = Str(j, "access_token");
        AddSecret(token_);
        token_expiry_ = SteadyClock::now() + std::chrono::milliseconds(static_cast<int64_t>(secs * 1000));
        return token_;
      }
      if (!retry || attempt >= o_.max_attempts) {
        std::string after = what + (attempt > 1 ? " (after " + std::to_string(attempt) + " attempts)" : "");
        if (!r) return Err(Clean(r.error()).Annotate(after));
        std::string detail = err.empty() ? Trim(r->body.substr(0, 200)) : err + ": " + Str(j, "error_description");
        std::string msg = Redact(after + ": HTTP " + std::to_string(r->status) + ", " + (detail.empty() ? "empty body" : detail));
        if (r->status == 200) return Err(Status::Internal(msg + " (no access_token in the answer)"));
        if (r->status == 400 || r->status == 401 || r->status == 403) {
          return Err(Status::Unauthenticated(msg + "; check the service account key and that the account is enabled"));
        }
        if (r->status == 429) return Err(Status(Code::kResourceExhausted, msg));
        return Err(Status::Unavailable(msg + "; Google's token endpoint is failing, try again later"));
      }
      Sleep(Backoff(attempt));
    }
  }

  // ---- secrets never shown: the private key (line by line), assertions and tokens.
  void AddSecret(const std::string& s) {
    std::lock_guard l(secrets_mu_);
    secrets_.push_back(s);
    if (secrets_.size() > 8) secrets_.pop_front();
  }
  std::string Redact(std::string s) const {
    std::lock_guard l(secrets_mu_);
    for (const auto& t : secrets_) s = ScrubSecret(std::move(s), t, "[credential]", 8);
    for (const auto& k : key_lines_) s = ScrubSecret(std::move(s), k, "[private key]", 8);
    return s;
  }
  Status Clean(const Status& st) const { return Status(st.code(), Redact(st.message())); }

  std::string ErrorText(const http::ClientResponse& r) const {
    std::string text;
    json j = json::parse(r.body, nullptr, false);
    if (j.is_object() && j.contains("error") && j["error"].is_object()) {
      std::string reason = Reason(r);
      std::string msg = Str(j["error"], "message");
      text = reason.empty() ? msg : msg.empty() ? reason : reason + ": " + msg;
    }
    if (text.empty()) text = Trim(r.body.substr(0, 200));
    if (text.empty()) text = "empty body";
    return Redact("HTTP " + std::to_string(r.status) + ", " + text);
  }

  Status HttpError(const std::string& what, const http::ClientResponse& r) const {
    std::string msg = what + ": " + ErrorText(r);
    if (RateLimited(r)) return Status(Code::kResourceExhausted, msg + "; GCE rate limit (its advice: wait a minute)");
    switch (r.status) {
      case 400: return Status::InvalidArgument(msg);
      case 401: return Status::Unauthenticated(msg + "; the access token was refused twice: check the service account");
      case 403:
        if (Reason(r) == "quotaExceeded") return Status(Code::kResourceExhausted, msg + "; a GCE quota is exhausted");
        return Status::PermissionDenied(msg + "; the service account may not do this");
      case 404: return Status::NotFound(msg);
      case 409: return Status::AlreadyExists(msg);
      default: break;
    }
    if (r.status >= 500) return Status::Unavailable(msg + "; GCE is failing, try again later");
    return Status::Internal(msg);
  }

  // ---- operations (3.2): a failed operation is still DONE, with error.errors[].code.
  // The first entry of error.errors (an empty object when there is none).
  static json FirstOpError(const json& op) {
    auto e = op.find("error");
    if (e == op.end() || !e->is_object()) return json::object();
    auto errs = e->find("errors");
    if (errs == e->end() || !errs->is_array() || errs->empty() || !(*errs)[0].is_object()) return json{{"code", "UNKNOWN"}};
    return (*errs)[0];
  }
  static std::string OpErrorCode(const json& op) {
    json first = FirstOpError(op);
    if (first.empty()) return "";
    std::string code = Str(first, "code");
    return code.empty() ? "UNKNOWN" : code;
  }

  Status OpError(const std::string& what, const json& op) const {
    std::string code = OpErrorCode(op);
    std::string message = Str(FirstOpError(op), "message");
    std::string msg = Redact(what + ": operation " + Str(op, "name") + " failed: " + code + (message.empty() ? "" : ": " + message));
    for (const char* c : kStockoutCodes) {
      if (code == c) return Status(Code::kResourceExhausted, msg + "; stockout: try another zone or machine type (offer)");
    }
    if (code == "QUOTA_EXCEEDED") return Status(Code::kResourceExhausted, msg + "; a GCE quota is exhausted");
    if (code == "RESOURCE_NOT_READY") return Status::FailedPrecondition(msg);
    int http = op.contains("httpErrorStatusCode") && op["httpErrorStatusCode"].is_number() ? op["httpErrorStatusCode"].get<int>() : 0;
    if (http == 400) return Status::InvalidArgument(msg);
    if (http == 403) return Status::PermissionDenied(msg);
    if (http == 404) return Status::NotFound(msg);
    if (http >= 500) return Status::Unavailable(msg);
    return Status::Internal(msg);
  }

  // Waits (zoneOperations.wait, asked again while the server returns early) until the operation is DONE
  // or operation_timeout has passed; returns the operation as last seen.
  Result<json> WaitOperation(const std::string& zone, json op, const std::string& what) {
    auto deadline = SteadyClock::now() + o_.operation_timeout;
    while (Str(op, "status") != "DONE" && SteadyClock::now() < deadline) {
      std::string name = Str(op, "name");
      if (!ValidSegment(name)) return Err(Status::Internal(what + ": GCE answered with an operation without a valid name"));
      auto t0 = SteadyClock::now();
      auto r = WithRetries(what + " (waiting for operation " + name + ")", "POST", ZoneUrl(zone) + "/operations/" + name + "/wait", "");
      if (!r) return Err(r.error());
      if (r->status != 200) return Err(HttpError(what + " (waiting for operation " + name + ")", *r));
      op = json::parse(r->body, nullptr, false);
      if (!op.is_object()) return Err(Status::Internal(what + ": GCE answered the operation wait with an unexpected body"));
      auto spent = SteadyClock::now() - t0;
      if (Str(op, "status") != "DONE" && spent < o_.operation_poll_interval) std::this_thread::sleep_for(o_.operation_poll_interval - spent);
    }
    return op;
  }

  // ---- reads

  Result<std::optional<json>> GetInstance(const std::string& zone, const std::string& name, const std::string& what) {
    auto r = WithRetries(what, "GET", ZoneUrl(zone) + "/instances/" + name, "");
    if (!r) return Err(r.error());
    if (r->status == 404) return std::optional<json>();
    if (r->status != 200) return Err(HttpError(what, *r));
    json j = json::parse(r->body, nullptr, false);
    if (!j.is_object() || Str(j, "name") != name) return Err(Status::Internal(what + ": GCE answered with an unexpected body"));
    return std::optional<json>(std::move(j));
  }

  // An insert refused because the name exists (409 alreadyExists, or RESOURCE_ALREADY_EXISTS in the
  // operation): ours from an earlier try whose answer was lost. Found, not duplicated.
  Result<Machine> Existing(const std::string& zone, const std::string& name, const std::string& what,
                           const std::optional<http::ClientResponse>& r) {
    auto found = GetInstance(zone, name, what + " (reading the instance that already exists)");
    if (!found) return Err(found.error());
    if (*found) return ToMachine(**found, zone, false);
    return Err(Status::AlreadyExists(what + ": GCE says the name is taken but the instance cannot be read" +
                                     (r ? " (" + ErrorText(*r) + ")" : std::string()) + "; try again later"));
  }

  // Every item of a paginated list (maxResults + pageToken -> nextPageToken).
  Result<std::vector<json>> ListPages(const std::string& url, const std::string& what) {
    std::vector<json> out;
    std::string token;
    const char* sep = url.find('?') == std::string::npos ? "?" : "&";
    for (int page = 0; page < 10000; ++page) {
      std::string u = url + sep + "maxResults=" + std::to_string(o_.list_page_size);
      if (!token.empty()) u += "&pageToken=" + UrlEncode(token);
      auto r = WithRetries(what, "GET", u, "");
      if (!r) return Err(r.error());
      if (r->status != 200) return Err(HttpError(what, *r));
      json j = json::parse(r->body, nullptr, false);
      if (!j.is_object()) return Err(Status::Internal(what + ": GCE answered with an unexpected list body"));
      if (j.contains("items") && j["items"].is_array()) {
        for (const auto& i : j["items"]) {
          if (i.is_object()) out.push_back(i);
        }
      }
      token = Str(j, "nextPageToken");
      if (token.empty()) return out;
    }
    return Err(Status::Internal(what + ": too many pages"));
  }

  Result<std::vector<json>> ListZone(const std::string& zone, const std::string& what) {
    return ListPages(ZoneUrl(zone) + "/instances", what + " in " + zone);
  }

  // stop, start and delete: the request (one requestId for all tries), then its operation.
  Status Mutate(const std::string& id, const std::string& verb, const std::string& what) {
    auto place = SplitId(id);
    if (!place) return verb == "delete" ? Status::Ok() : Status::NotFound(what + ": no such instance");  // never a GCE id
    DUMONT_RETURN_STATUS_IF_ERROR(Configured(what));
    std::string url = ZoneUrl(place->zone) + "/instances/" + place->name;
    if (verb != "delete") url += "/" + verb;
    url += "?requestId=" + NewRequestId();
    auto r = WithRetries(what, verb == "delete" ? "DELETE" : "POST", url, "");
    if (!r) return r.error();
    if (r->status == 404) return verb == "delete" ? Status::Ok() : Status::NotFound(what + ": the instance does not exist");
    if (r->status < 200 || r->status >= 300) return HttpError(what, *r);
    json op = json::parse(r->body, nullptr, false);
    if (!op.is_object()) return Status::Internal(what + ": GCE answered without an Operation");
    auto done = WaitOperation(place->zone, op, what);
    if (!done) return done.error();
    if (!OpErrorCode(*done).empty()) return OpError(what, *done);
    return Status::Ok();
  }

  GceOptions o_;
  ServiceAccount sa_;
  Status key_status_;
  std::string token_url_;
  std::vector<std::string> key_lines_;

  std::mutex token_mu_;
  std::string token_;
  SteadyClock::time_point token_expiry_;

  mutable std::mutex secrets_mu_;
  std::deque<std::string> secrets_;

  RetryBackoff backoff_;
};

}  // namespace

MachineState GceMachineState(const json& in) {
  if (!in.is_object()) return MachineState::kUnknown;
  std::string status = Str(in, "status");
  if (status == "TERMINATED" && Str(in, "lastStartTimestamp").empty()) return MachineState::kFailed;
  for (const auto& row : kGceStates) {
    if (status == row.status) return row.state;
  }
  return MachineState::kUnknown;
}

std::optional<std::string> GceInstanceName(const std::string& label) {
  if (label.empty() || label[0] < 'a' || label[0] > 'z' || label.back() == '-' || label.back() == '_') return std::nullopt;
  std::string out;
  for (size_t i = 0; i < label.size(); ++i) {
    char c = label[i];
    char next = i + 1 < label.size() ? label[i + 1] : '\0';
    if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')) {
      out += c;
    } else if (c == '-' && next != '-' && next != '_') {
      out += '-';
    } else if (c == '_' && next != '-') {
      out += "--";
    } else {
      return std::nullopt;
    }
  }
  if (out.size() > 63) return std::nullopt;
  return out;
}

std::optional<std::string> GceLabelFromName(const std::string& name) {
  if (name.empty() || name.size() > 63 || name[0] < 'a' || name[0] > 'z' || name.back() == '-') return std::nullopt;
  std::string out;
  for (size_t i = 0; i < name.size();) {
    char c = name[i];
    if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')) {
      out += c;
      ++i;
      continue;
    }
    if (c != '-') return std::nullopt;
    size_t run = name.find_first_not_of('-', i) - i;
    if (run == 1) out += '-';
    else if (run % 2 == 0) out.append(run / 2, '_');
    else return std::nullopt;  // no label maps to an odd run of 3 or more
    i += run;
  }
  return out;
}

std::unique_ptr<Provider> NewGceProvider(const GceOptions& opts) { return std::make_unique<GceProvider>(opts); }

}  // namespace dumont::provider
