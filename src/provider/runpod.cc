#include "provider/runpod.h"

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
// Vendor state -> MachineState: THE table (providers.md 2.3, 2.4, 2.5 and the section 4 state machine).
// Evaluated top to bottom on (desiredStatus, runtime); first match wins. "*" matches anything.
//
//   desiredStatus | runtime | MachineState | why
//   CREATED       | *       | pending      | not started yet
//   RUNNING       | null    | pending      | image pull / container start. A pod can also stay like this
//                 |         |              | forever ("never ready"): only a timeout tells, the fleet's
//   RUNNING       | object  | running      | container up; SSH is ready once runtime.ports has a public
//                 |         |              | 22/tcp (ports may lag by a few polls: details.ssh_ready)
//   RESTARTING    | *       | pending      | transient
//   EXITED        | *       | stopped      | stopped by us, interrupted (spot) or out of balance
//   PAUSED        | *       | stopped      |
//   DEAD          | *       | failed       | will not run again
//   TERMINATED    | *       | terminated   | gone (the pod query usually answers null instead)
//   anything else | *       | unknown      |
// Interruption of a spot pod is therefore "stopped", with details.interrupted = (podType ==
// INTERRUPTABLE): RunPod sends no event and does not say who stopped it; the fleet knows whether it asked.
// ---------------------------------------------------------------------------------------------------
struct StateRow {
  const char* desired;
  const char* runtime;  // "*", "null" or "set"
  MachineState state;
};
constexpr StateRow kRunPodStates[] = {
    {"CREATED", "*", MachineState::kPending},   {"RUNNING", "null", MachineState::kPending},
    {"RUNNING", "set", MachineState::kRunning}, {"RESTARTING", "*", MachineState::kPending},
    {"EXITED", "*", MachineState::kStopped},    {"PAUSED", "*", MachineState::kStopped},
    {"DEAD", "*", MachineState::kFailed},       {"TERMINATED", "*", MachineState::kTerminated},
};

// The pod fields we read (runpod-python's generate_pod_query, providers.md 2.2).
constexpr const char* kPodFields =
    "id name containerDiskInGb costPerHr desiredStatus dockerArgs env gpuCount imageName "
    "lastStatusChange machineId memoryInGb podType ports uptimeSeconds vcpuCount volumeInGb "
    "volumeMountPath "
    "runtime { uptimeInSeconds ports { ip isIpPublic privatePort publicPort type } } "
    "machine { gpuDisplayName podHostId }";

constexpr const char* kNoCapacity = "no longer any instances available";
constexpr const char* kNoFreeGpus = "not enough free GPUs";

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
bool Contains(const std::string& s, const char* part) { return s.find(part) != std::string::npos; }

std::string Dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

// A GraphQL string literal: GraphQL's escapes are JSON's.
std::string Quote(const std::string& s) { return Dump(json(s)); }

// RunPod pod ids are short lowercase alphanumerics ("fkjbybgpwuvmhk"); anything else is refused
// before it reaches a query.
bool ValidPodId(const std::string& id) {
  return !id.empty() && id.size() <= 64 && std::all_of(id.begin(), id.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
  });
}

// Offer ids: "<CLOUD>/<gpuCount>/<gpuTypeId>", stable for as long as RunPod keeps the GPU type id.
struct OfferKey {
  std::string cloud;
  int gpu_count = 0;
  std::string gpu_type;
};
std::string OfferId(const OfferKey& k) {
  return k.cloud + "/" + std::to_string(k.gpu_count) + "/" + k.gpu_type;
}
std::optional<OfferKey> ParseOfferId(const std::string& id) {
  auto a = id.find('/');
  auto b = a == std::string::npos ? a : id.find('/', a + 1);
  if (b == std::string::npos || b + 1 >= id.size()) return std::nullopt;
  OfferKey k{id.substr(0, a), 0, id.substr(b + 1)};
  std::string count = id.substr(a + 1, b - a - 1);
  if (k.cloud != "ALL" && k.cloud != "SECURE" && k.cloud != "COMMUNITY") return std::nullopt;
  if (count.empty() || count.size() > 3 || !std::all_of(count.begin(), count.end(), ::isdigit))
    return std::nullopt;
  k.gpu_count = std::stoi(count);
  if (k.gpu_count < 1) return std::nullopt;
  return k;
}

Machine ToMachine(const json& pod) {
  Machine m;
  m.id = Str(pod, "id");
  m.label = Str(pod, "name");
  m.state = RunPodMachineState(pod);
  m.price_per_hour = Num(pod, "costPerHr");
  // providers.md 2.4: SSH is ready once runtime.ports has privatePort 22, tcp, isIpPublic.
  const json runtime = pod.value("runtime", json());
  if (runtime.is_object() && runtime.contains("ports") && runtime["ports"].is_array()) {
    for (const auto& p : runtime["ports"]) {
      if (p.is_object() && Num(p, "privatePort") == 22 && Str(p, "type") == "tcp" &&
          Bool(p, "isIpPublic") && !Str(p, "ip").empty()) {
        m.ssh_host = Str(p, "ip");
        m.ssh_port = static_cast<int>(Num(p, "publicPort"));
        break;
      }
    }
  }
  const json machine = pod.value("machine", json());
  bool spot = Str(pod, "podType") == "INTERRUPTABLE";
  m.details = {{"runpod_id", m.id},
               {"desired_status", Str(pod, "desiredStatus")},
               {"pod_type", Str(pod, "podType")},
               {"interruptible", spot},
               {"interrupted", spot && m.state == MachineState::kStopped},
               {"runtime", runtime.is_object()},
               {"ssh_ready", !m.ssh_host.empty()},
               {"machine_id", Str(pod, "machineId")},
               {"pod_host_id", machine.is_object() ? Str(machine, "podHostId") : ""},
               {"gpu_name", machine.is_object() ? Str(machine, "gpuDisplayName") : ""},
               {"gpu_count", static_cast<int>(Num(pod, "gpuCount"))},
               {"uptime_seconds", runtime.is_object() ? Num(runtime, "uptimeInSeconds") : 0.0},
               {"last_status_change", Str(pod, "lastStatusChange")},
               {"image", Str(pod, "imageName")}};
  return m;
}

// One entry of the catalog: an offer plus what a create needs from it.
struct CatalogEntry {
  Offer offer;
  OfferKey key;
  double min_bid_per_gpu = 0;
};

class RunPodProvider final : public Provider {
 public:
  explicit RunPodProvider(RunPodOptions o)
      : o_(std::move(o)), backoff_(o_.base_delay, o_.backoff_multiplier, o_.max_delay, o_.jitter_seed, o_.sleep) {
    if (o_.max_attempts < 1) o_.max_attempts = 1;
    if (o_.gpu_count < 1) o_.gpu_count = 1;
  }
  std::string Name() const override { return "runpod"; }

  Result<std::vector<Offer>> Offers() override {
    auto cat = Catalog("", "listing RunPod GPU types");
    if (!cat) return Err(cat.error());
    std::vector<Offer> out;
    for (auto& e : *cat) out.push_back(std::move(e.offer));
    return out;
  }

  std::map<std::string, Capability> Capabilities() const override {
    return {{"stop", {true, ""}},
            {"ssh", {true, ""}},
            {"spot",
             {true,
              "podRentInterruptable at a bid per GPU; an interrupted pod is stopped (EXITED), not "
              "destroyed"}},
            {"virtual_gpu",
             {false,
              "RunPod pods have real GPUs; the simulated GPU exists only on the local provider"}}};
  }

  Result<Machine> Create(const MachineSpec& spec) override {
    if (spec.label.empty() || spec.label.size() > 1024) {
      return Err(
          Status::InvalidArgument("RunPod create: the machine label must be 1..1024 characters"));
    }
    // Idempotent per label: a pod we already created (its answer lost, or a crash before we saved its
    // id) is returned instead of renting a second one.
    auto existing = FindByLabel(spec.label, "creating RunPod pod '" + spec.label + "'");
    if (!existing) return Err(existing.error());
    if (*existing) return **existing;

    std::optional<OfferKey> key;
    std::optional<double> bid;
    if (!spec.offer_id.empty()) {
      key = ParseOfferId(spec.offer_id);
      if (!key) {
        return Err(Status::InvalidArgument("RunPod offer id '" + spec.offer_id +
                                           "' is not <CLOUD>/<gpuCount>/<gpuTypeId>"));
      }
    }
    if (!key || o_.interruptible) {
      auto cat =
          Catalog(key ? key->gpu_type : "", key ? "reading RunPod GPU type '" + key->gpu_type + "'"
                                                : "choosing the cheapest RunPod GPU type");
      if (!cat) return Err(cat.error());
      const CatalogEntry* chosen = nullptr;
      for (const auto& e : *cat) {
        if (!key || OfferId(e.key) == spec.offer_id) {
          chosen = &e;
          break;
        }
      }
      if (!chosen) {
        return Err(Status(Code::kResourceExhausted,
                          key ? "RunPod offer '" + spec.offer_id +
                                    "' is out of stock or no longer offered; choose another offer"
                              : "RunPod has no GPU type in stock matching the options"));
      }
      key = chosen->key;
      if (o_.interruptible) bid = o_.bid_per_gpu > 0 ? o_.bid_per_gpu : chosen->min_bid_per_gpu;
    }
    const std::string offer_id = OfferId(*key);

    std::map<std::string, std::string> env = spec.env;
    if (o_.enrollment_env) {
      for (auto& [k, v] : o_.enrollment_env(spec)) env[k] = v;
    }
    std::string env_list;
    for (const auto& [k, v] : env) {
      env_list += (env_list.empty() ? "" : ", ") + std::string("{key: ") + Quote(k) +
                  ", value: " + Quote(v) + "}";
    }
    // providers.md 2.2: the input runpod-python / dstack send. bidPerGpu + podRentInterruptable = spot.
    std::string input = "name: " + Quote(spec.label) +
                        ", imageName: " + Quote(spec.image.empty() ? o_.image : spec.image) +
                        ", gpuTypeId: " + Quote(key->gpu_type) + ", cloudType: " + key->cloud +
                        ", gpuCount: " + std::to_string(key->gpu_count) +
                        ", volumeInGb: " + std::to_string(o_.volume_gb) +
                        ", containerDiskInGb: " + std::to_string(o_.container_disk_gb) +
                        ", startSsh: true, supportPublicIp: true, ports: " + Quote(o_.ports) +
                        ", dockerArgs: " + Quote(o_.docker_args) +
                        ", volumeMountPath: " + Quote(o_.volume_mount_path) + ", env: [" +
                        env_list + "]";
    if (o_.min_vcpu_count > 0) input += ", minVcpuCount: " + std::to_string(o_.min_vcpu_count);
    if (o_.min_memory_gb > 0) input += ", minMemoryInGb: " + std::to_string(o_.min_memory_gb);
    if (!o_.data_center_id.empty()) input += ", dataCenterId: " + Quote(o_.data_center_id);
    if (!o_.country_code.empty()) input += ", countryCode: " + Quote(o_.country_code);
    if (bid) input += ", bidPerGpu: " + Dump(json(*bid));
    const std::string mutation = bid ? "podRentInterruptable" : "podFindAndDeployOnDemand";
    const std::string query = "mutation { " + mutation + "(input: {" + input +
                              "}) { id imageName env machineId machine { podHostId } } }";

    const std::string what = "creating RunPod pod '" + spec.label + "' on offer " + offer_id;
    Status last;
    for (int attempt = 1; attempt <= o_.max_attempts; ++attempt) {
      if (attempt > 1) Sleep(Backoff(attempt - 1));
      Reply r = Post(query);
      if (r.ok()) {
        json pod = r.data.value(mutation, json());
        std::string id = pod.is_object() ? Str(pod, "id") : "";
        if (!ValidPodId(id))
          return Err(Status::Internal(what + ": RunPod answered without a pod id"));
        return AfterCreate(id, spec.label, offer_id);
      }
      last = r.status.Annotate(what);
      if (!r.retry) return Err(last);
      if (r.ambiguous) {
        // RunPod may have created the pod and the answer was lost. Look before retrying.
        auto found = FindByLabel(spec.label, what + " (looking for it after a lost answer)");
        if (!found) return Err(found.error());
        if (*found) {
          Machine m = **found;
          m.offer_id = offer_id;
          return m;
        }
      }
    }
    return Err(last.Annotate("giving up after " + std::to_string(o_.max_attempts) + " attempts"));
  }

  Result<Machine> Get(const std::string& id) override {
    const std::string what = "reading RunPod pod " + id;
    if (!ValidPodId(id)) return Err(Status::NotFound(what + ": no such pod (not a RunPod pod id)"));
    auto data =
        Call(what, "query { pod(input: {podId: " + Quote(id) + "}) { " + kPodFields + " } }");
    if (!data) return Err(data.error());
    json pod = data->value("pod", json());
    if (!pod.is_object())
      return Err(Status::NotFound(what + ": the pod does not exist (terminated or never created)"));
    Machine m = ToMachine(pod);
    if (m.state == MachineState::kTerminated)
      return Err(Status::NotFound(what + ": the pod was terminated"));
    return m;
  }

  Result<std::vector<Machine>> ListByLabelPrefix(const std::string& prefix) override {
    auto all = ListAll("listing RunPod pods with name prefix '" + prefix + "'");
    if (!all) return Err(all.error());
    std::vector<Machine> out;
    for (auto& m : *all) {
      if (m.label.rfind(prefix, 0) == 0 && m.state != MachineState::kTerminated)
        out.push_back(std::move(m));
    }
    return out;
  }

  Status Stop(const std::string& id) override {
    const std::string what = "stopping RunPod pod " + id;
    if (!ValidPodId(id)) return Status::NotFound(what + ": no such pod");
    auto data =
        Call(what, "mutation { podStop(input: {podId: " + Quote(id) + "}) { id desiredStatus } }");
    return data ? Status::Ok() : data.error();
  }

  Status Start(const std::string& id) override {
    const std::string what = "starting RunPod pod " + id;
    auto pod = Get(id);
    if (!pod) return pod.error();
    if (pod->details["desired_status"] == "RUNNING") return Status::Ok();
    int gpus = std::max(1, pod->details["gpu_count"].get<int>());
    std::string query;
    if (pod->details["interruptible"].get<bool>()) {
      // providers.md 2.5: a spot pod resumes at a bid. Our configured bid, else the one it had.
      double bid = o_.bid_per_gpu > 0 ? o_.bid_per_gpu : pod->price_per_hour / gpus;
      query = "mutation { podBidResume(input: {podId: " + Quote(id) +
              ", bidPerGpu: " + Dump(json(bid)) + ", gpuCount: " + std::to_string(gpus) +
              "}) { id desiredStatus } }";
    } else {
      query = "mutation { podResume(input: {podId: " + Quote(id) +
              ", gpuCount: " + std::to_string(gpus) + "}) { id desiredStatus } }";
    }
    auto data = Call(what, query);
    return data ? Status::Ok() : data.error();
  }

  Status Destroy(const std::string& id) override {
    const std::string what = "terminating RunPod pod " + id;
    if (!ValidPodId(id)) return Status::Ok();  // never a RunPod pod: nothing to terminate
    auto data = Call(what, "mutation { podTerminate(input: {podId: " + Quote(id) + "}) }");
    if (!data && data.error().code() == Code::kNotFound)
      return Status::Ok();  // "pod not found to terminate"
    return data ? Status::Ok() : data.error();
  }

 private:
  // The outcome of one GraphQL request.
  struct Reply {
    json data;               // the "data" object, when ok
    Status status;           // the error, not yet naming the operation
    bool retry = false;      // trying again can help
    bool ambiguous = false;  // the server may have acted (lost answer, 5xx, internal error)
    bool ok() const { return status.ok(); }
  };

  // One HTTP request, no retries. The key travels only in the Authorization header.
  Reply Post(const std::string& query) {
    http::ClientRequest req;
    req.method = "POST";
    req.url = o_.base_url;
    req.body = Dump(json{{"query", query}});
    req.headers = {{"Authorization", "Bearer " + o_.api_key},
                   {"Content-Type", "application/json"},
                   {"Accept", "application/json"},
                   {"User-Agent", "dumont-runpod/1"}};
    req.timeout = o_.request_timeout;
    auto r = http::Fetch(req);
    Reply out;
    if (!r) {
      out.status = Status(r.error().code(), Redact(r.error().message()));
      out.retry = out.ambiguous = true;
      return out;
    }
    json j = json::parse(r->body, nullptr, false);
    std::string text = ErrorText(*r, j);
    switch (r->status) {
      case 200:
        break;
      case 400:
        out.status = Status::InvalidArgument(text + "; RunPod rejected the query");
        return out;
      case 401:
        out.status = Status::Unauthenticated(text + "; check the RunPod API key");
        return out;
      case 403:
        out.status = Status::PermissionDenied(text + "; the RunPod API key may not do this");
        return out;
      case 429:
        out.status = Status(Code::kResourceExhausted, text + "; RunPod rate limit");
        out.retry = true;
        return out;
      default:
        if (r->status >= 500) {
          out.status = Status::Unavailable(text + "; RunPod is failing, try again later");
          out.retry = out.ambiguous = true;
        } else {
          out.status = Status::Internal(text);
        }
        return out;
    }
    if (!j.is_object()) {
      out.status = Status::Internal(text + ": not a GraphQL answer");
      return out;
    }
    if (j.contains("errors") && j["errors"].is_array() && !j["errors"].empty()) {
      // "Runpod returns 200 on client errors" (dstack): the message says what it was.
      const json& e = j["errors"][0];
      std::string code = e.is_object() && e.contains("extensions") && e["extensions"].is_object()
                             ? Str(e["extensions"], "code")
                             : "";
      if (code == "INTERNAL_SERVER_ERROR") {
        out.status = Status::Unavailable(text + "; RunPod is failing, try again later");
        out.retry = out.ambiguous = true;
      } else if (code == "UNAUTHENTICATED") {
        out.status = Status::Unauthenticated(text + "; check the RunPod API key");
      } else if (code == "FORBIDDEN") {
        out.status = Status::PermissionDenied(text + "; the RunPod API key may not do this");
      } else if (Contains(text, kNoCapacity)) {
        out.status =
            Status(Code::kResourceExhausted,
                   text + " (stockout: no capacity for this GPU type; choose another offer)");
      } else if (Contains(text, kNoFreeGpus)) {
        out.status =
            Status(Code::kResourceExhausted,
                   text + " (the pod's host has no free GPUs now; try later or recreate it)");
      } else if (Contains(text, "not found")) {
        out.status = Status::NotFound(text);
      } else {
        out.status = Status::FailedPrecondition("RunPod refused: " + text);
      }
      return out;
    }
    if (!j.contains("data") || !j["data"].is_object()) {
      out.status = Status::Internal(text + ": a GraphQL answer without data");
      return out;
    }
    out.data = j["data"];
    return out;
  }

  // Retries what Post says can be retried; the error names the operation.
  Result<json> Call(const std::string& what, const std::string& query) {
    for (int attempt = 1;; ++attempt) {
      Reply r = Post(query);
      if (r.ok()) return r.data;
      if (!r.retry) return Err(r.status.Annotate(what));
      if (attempt >= o_.max_attempts) {
        return Err(r.status.Annotate(what + " (after " + std::to_string(attempt) + " attempts)"));
      }
      Sleep(Backoff(attempt));
    }
  }

  std::chrono::milliseconds Backoff(int attempt) { return backoff_.Delay(attempt); }
  void Sleep(std::chrono::milliseconds d) { backoff_.Sleep(d); }

  // The API key must never appear in an error: scrub it from anything that came from elsewhere.
  std::string Redact(std::string s) const { return ScrubSecret(std::move(s), o_.api_key, "[api key]"); }

  // "HTTP <status>, <first GraphQL error message | body excerpt>".
  std::string ErrorText(const http::ClientResponse& r, const json& j) const {
    std::string text;
    if (j.is_object() && j.contains("errors") && j["errors"].is_array() && !j["errors"].empty() &&
        j["errors"][0].is_object()) {
      text = Str(j["errors"][0], "message");
    } else if (j.is_object()) {
      text = Str(j, "message");
      if (text.empty()) text = Str(j, "error");
    }
    if (text.empty()) text = r.body.substr(0, 200);
    auto b = text.find_first_not_of(" \t\r\n");
    auto e = text.find_last_not_of(" \t\r\n");
    text = b == std::string::npos ? "empty body" : text.substr(b, e - b + 1);
    return Redact("HTTP " + std::to_string(r.status) + ", " + text);
  }

  // gpuTypes (all, or the one id) -> offers for our cloud type and GPU count, cheapest first. GPU types
  // the cloud does not offer, or with no stock for that count, are left out (providers.md 2.2).
  Result<std::vector<CatalogEntry>> Catalog(const std::string& gpu_type, const std::string& what) {
    const std::string& cloud = o_.cloud_type;
    if (cloud != "ALL" && cloud != "SECURE" && cloud != "COMMUNITY") {
      return Err(Status::InvalidArgument(
          what + ": cloud_type must be ALL, SECURE or COMMUNITY, not '" + cloud + "'"));
    }
    std::string price_input = "gpuCount: " + std::to_string(o_.gpu_count);
    if (cloud == "SECURE") price_input += ", secureCloud: true";
    if (cloud == "COMMUNITY") price_input += ", secureCloud: false";
    std::string query =
        std::string("query { gpuTypes") +
        (gpu_type.empty() ? "" : "(input: {id: " + Quote(gpu_type) + "})") +
        " { id displayName memoryInGb maxGpuCount secureCloud communityCloud securePrice "
        "communityPrice "
        "secureSpotPrice communitySpotPrice lowestPrice(input: {" +
        price_input +
        "}) { minimumBidPrice uninterruptablePrice stockStatus availableGpuCounts } } }";
    auto data = Call(what, query);
    if (!data) return Err(data.error());
    if (!data->contains("gpuTypes") || !(*data)["gpuTypes"].is_array()) {
      return Err(Status::Internal(what + ": RunPod answered without a gpuTypes list"));
    }
    std::vector<CatalogEntry> out;
    for (const auto& g : (*data)["gpuTypes"]) {
      if (!g.is_object() || Str(g, "id").empty()) continue;
      if (!o_.gpu_types.empty() &&
          std::find(o_.gpu_types.begin(), o_.gpu_types.end(), Str(g, "id")) == o_.gpu_types.end()) {
        continue;
      }
      bool secure = Bool(g, "secureCloud"), community_ok = Bool(g, "communityCloud");
      if ((cloud == "SECURE" && !secure) || (cloud == "COMMUNITY" && !community_ok) ||
          (!secure && !community_ok))
        continue;
      if (Num(g, "maxGpuCount", o_.gpu_count) < o_.gpu_count) continue;
      json lp = g.value("lowestPrice", json());
      if (!lp.is_object() || Str(lp, "stockStatus") == "None" || Str(lp, "stockStatus").empty())
        continue;
      if (lp.contains("availableGpuCounts") && lp["availableGpuCounts"].is_array()) {
        const json& counts = lp["availableGpuCounts"];
        if (std::find(counts.begin(), counts.end(), json(o_.gpu_count)) == counts.end()) continue;
      }
      bool community = cloud == "COMMUNITY";
      double on_demand =
          Num(lp, "uninterruptablePrice", Num(g, community ? "communityPrice" : "securePrice"));
      double min_bid =
          Num(lp, "minimumBidPrice", Num(g, community ? "communitySpotPrice" : "secureSpotPrice"));
      CatalogEntry e;
      e.key = {cloud, o_.gpu_count, Str(g, "id")};
      e.min_bid_per_gpu = min_bid;
      Offer& off = e.offer;
      off.id = OfferId(e.key);
      off.provider = "runpod";
      off.gpu_name = Str(g, "displayName").empty() ? e.key.gpu_type : Str(g, "displayName");
      off.num_gpus = o_.gpu_count;
      off.gpu_ram_gb = Num(g, "memoryInGb");
      off.cpu_cores = o_.min_vcpu_count;  // what a create asks for: RunPod gives at least this
      off.ram_gb = o_.min_memory_gb;
      off.disk_gb = o_.container_disk_gb + o_.volume_gb;
      // Prices are per GPU and hour; a spot pod costs its bid (dstack bids offer price / gpu count).
      off.price_per_hour =
          (o_.interruptible ? (o_.bid_per_gpu > 0 ? o_.bid_per_gpu : min_bid) : on_demand) *
          o_.gpu_count;
      off.spot_price_per_hour = min_bid > 0 ? min_bid * o_.gpu_count : 0;  // the lowest bid that wins now
      off.reliability = 0;  // RunPod reports none
      off.location = !o_.data_center_id.empty() ? o_.data_center_id : o_.country_code;
      if (off.price_per_hour <= 0) continue;
      out.push_back(std::move(e));
    }
    std::stable_sort(out.begin(), out.end(), [](const CatalogEntry& a, const CatalogEntry& b) {
      return a.offer.price_per_hour < b.offer.price_per_hour;
    });
    return out;
  }

  Result<std::vector<Machine>> ListAll(const std::string& what) {
    auto data = Call(what, std::string("query { myself { pods { ") + kPodFields + " } } }");
    if (!data) return Err(data.error());
    json myself = data->value("myself", json());
    if (!myself.is_object() || !myself.contains("pods") || !myself["pods"].is_array()) {
      return Err(Status::Internal(what + ": RunPod answered without a pods list"));
    }
    std::vector<Machine> out;
    for (const auto& p : myself["pods"]) {
      if (p.is_object()) out.push_back(ToMachine(p));
    }
    return out;
  }

  Result<std::optional<Machine>> FindByLabel(const std::string& label, const std::string& what) {
    auto all = ListAll(what);
    if (!all) return Err(all.error());
    for (auto& m : *all) {
      if (m.label == label && m.state != MachineState::kTerminated)
        return std::optional<Machine>(m);
    }
    return std::optional<Machine>();
  }

  Result<Machine> AfterCreate(const std::string& id, const std::string& label,
                              const std::string& offer_id) {
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
    p.details = {{"runpod_id", id}};
    return p;
  }

  RunPodOptions o_;
  RetryBackoff backoff_;
};

}  // namespace

MachineState RunPodMachineState(const json& pod) {
  if (!pod.is_object()) return MachineState::kUnknown;
  std::string desired = Str(pod, "desiredStatus");
  bool runtime = pod.contains("runtime") && pod["runtime"].is_object();
  for (const auto& row : kRunPodStates) {
    std::string_view rt = row.runtime;
    if (desired == row.desired && (rt == "*" || (rt == "set") == runtime)) return row.state;
  }
  return MachineState::kUnknown;
}

std::unique_ptr<Provider> NewRunPodProvider(const RunPodOptions& opts) {
  return std::make_unique<RunPodProvider>(opts);
}

}  // namespace dumont::provider
