#include "emulators/vast_emulator.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <sstream>

#include "provider/local.h"

namespace dumont::emulators {
namespace {

using nlohmann::json;

http::Response Json(int status, const json& body) { return http::JsonResponse(status, body); }

http::Response NoSuchInstance(const std::string& id) {
  return Json(404, {{"success", false}, {"error", "no_such_instance"},
                    {"msg", "error 404/3603: no_such_instance Instance " + id + " not found."}});
}

bool ParseId(const std::string& s, int64_t* out) {
  if (s.empty() || s.size() > 18 || !std::all_of(s.begin(), s.end(), ::isdigit)) return false;
  *out = std::stoll(s);
  return true;
}

// Compares an offer/instance value with a query operand (numbers as numbers, else JSON equality).
int Compare(const json& a, const json& b, bool* comparable) {
  *comparable = true;
  if (a.is_number() && b.is_number()) {
    double x = a.get<double>(), y = b.get<double>();
    return x < y ? -1 : x > y ? 1 : 0;
  }
  if (a.is_string() && b.is_string()) return a.get<std::string>().compare(b.get<std::string>());
  if (a == b) return 0;
  *comparable = false;
  return 1;
}

// providers.md 1.3: {"field": {"op": value}} with eq neq gt gte lt lte in notin.
bool Matches(const json& row, const json& filters, std::string* bad) {
  for (const auto& [field, cond] : filters.items()) {
    if (!cond.is_object()) continue;  // order, type, limit, allocated_storage ...
    auto it = row.find(field);
    if (it == row.end()) continue;  // unknown columns are ignored
    for (const auto& [op, v] : cond.items()) {
      bool cmp = true;
      int c = Compare(*it, v, &cmp);
      bool ok;
      if (op == "eq") ok = cmp && c == 0;
      else if (op == "neq") ok = !(cmp && c == 0);
      else if (op == "gt") ok = cmp && c > 0;
      else if (op == "gte") ok = cmp && c >= 0;
      else if (op == "lt") ok = cmp && c < 0;
      else if (op == "lte") ok = cmp && c <= 0;
      else if (op == "in" || op == "notin") {
        bool found = false;
        if (v.is_array()) {
          for (const auto& e : v) {
            bool ec = true;
            found = found || (Compare(*it, e, &ec) == 0 && ec);
          }
        }
        ok = op == "in" ? found : !found;
      } else {
        *bad = "unknown operator '" + op + "' on " + field;
        return false;
      }
      if (!ok) return false;
    }
  }
  return true;
}

const char kB64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
std::string B64(const std::string& in) {
  std::string out;
  int val = 0, bits = -6;
  for (unsigned char c : in) {
    val = (val << 8) + c;
    bits += 8;
    while (bits >= 0) {
      out.push_back(kB64[(val >> bits) & 0x3F]);
      bits -= 6;
    }
  }
  if (bits > -6) out.push_back(kB64[((val << 8) >> (bits + 8)) & 0x3F]);
  return out;
}
bool UnB64(const std::string& in, std::string* out) {
  int val = 0, bits = -8;
  for (char c : in) {
    const char* p = std::strchr(kB64, c);
    if (!p || c == 0) return false;
    val = (val << 6) + static_cast<int>(p - kB64);
    bits += 6;
    if (bits >= 0) {
      out->push_back(static_cast<char>((val >> bits) & 0xFF));
      bits -= 8;
    }
  }
  return true;
}

// The env of a create request: a dict, or a docker-style string "-e A=B -p 8000:8000" (1.4).
std::map<std::string, std::string> ParseEnv(const json& env) {
  std::map<std::string, std::string> out;
  if (env.is_object()) {
    for (const auto& [k, v] : env.items()) out[k] = v.is_string() ? v.get<std::string>() : v.dump();
  } else if (env.is_string()) {
    std::istringstream in(env.get<std::string>());
    std::string tok;
    while (in >> tok) {
      std::string val;
      if (tok == "-e" && in >> val) {
        auto eq = val.find('=');
        if (eq != std::string::npos) out[val.substr(0, eq)] = val.substr(eq + 1);
      } else if ((tok == "-p" || tok == "-h") && in >> val) {
        out[tok + " " + val] = "1";
      }
    }
  }
  return out;
}

}  // namespace

VastEmulator::VastEmulator(VastEmulatorOptions opts)
    : o_(std::move(opts)), logger_(stderr, LogLevel::kWarn), t0_(std::chrono::steady_clock::now()), rng_(o_.seed) {
  provider::LocalOptions lo;
  lo.root = o_.state_dir + "/machines";
  lo.agent_path = o_.agent_path;
  std::error_code ec;
  std::filesystem::create_directories(lo.root, ec);
  local_ = provider::NewLocalProvider(lo);

  static const std::pair<const char*, int> kGpus[] = {
      {"RTX 4090", 24564}, {"RTX 3090", 24576}, {"A100 SXM4", 81920}, {"H100 SXM", 81559}, {"RTX A6000", 49140}};
  static const char* kGeo[] = {"California, US", "Quebec, CA", "Bavaria, DE", "Taiwan, TW"};
  std::uniform_real_distribution<double> price(0.10, 2.50), rel(0.90, 0.9999), net(100, 9000);
  for (int i = 0; i < o_.offers; ++i) {
    const auto& g = kGpus[i % 5];
    int n = 1 + i % 2;
    double base = std::round(price(rng_) * 1e4) / 1e4;
    double r = rel(rng_);
    json off = {{"id", 12345678 + i * 11},
                {"machine_id", 88888 + i},
                {"host_id", 55555 + i},
                {"num_gpus", n},
                {"gpu_name", g.first},
                {"gpu_ram", g.second},
                {"gpu_total_ram", g.second * n},
                {"cpu_cores_effective", 8.0 * n},
                {"cpu_ram", 65536 * n},
                {"disk_space", 512.5 * n},
                {"inet_down", std::round(net(rng_))},
                {"inet_up", std::round(net(rng_))},
                {"dph_base", base},
                {"dph_total", base + 0.0125},
                {"min_bid", std::round(base * 0.45 * 1e4) / 1e4},
                {"is_bid", false},
                {"reliability", r},
                {"reliability2", r},
                {"geolocation", kGeo[i % 4]},
                {"verification", "verified"},
                {"verified", true},
                {"external", false},
                {"rentable", true},
                {"rented", false},
                {"direct_port_count", 42},
                {"public_ipaddr", "127.0.0.1"},
                {"static_ip", true},
                {"cuda_max_good", 12.4},
                {"score", 100.0 + i},
                {"start_date", 1893450000.5},
                {"end_date", 1924986000.5},
                {"duration", 31536000.0}};
    offers_.push_back(off);
  }
}

VastEmulator::~VastEmulator() {
  Stop();
  std::vector<std::string> locals;
  {
    std::lock_guard l(mu_);
    for (auto& [id, i] : instances_) {
      if (!i.local_id.empty()) locals.push_back(i.local_id);
    }
  }
  for (const auto& id : locals) (void)local_->Destroy(id);
}

double VastEmulator::Now() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
}

uint16_t VastEmulator::port() const { return server_ ? server_->port() : 0; }
std::string VastEmulator::BaseUrl() const { return "http://" + o_.host + ":" + std::to_string(port()) + "/api/v0"; }

Status VastEmulator::Start() {
  router_ = std::make_unique<http::Router>(nullptr, &logger_);
  auto body = [](const http::Request& req) {
    json j = json::parse(req.body.empty() ? "{}" : req.body, nullptr, false);
    return j;
  };
  AddRoute("POST", "/api/v0/bundles", "search", [this, body](http::Request& req, const auto&) {
    json q = body(req);
    if (!q.is_object()) return Json(400, {{"success", false}, {"error", "invalid_args"}, {"msg", "query must be a JSON object"}});
    return Search(q);
  });
  AddRoute("PUT", "/api/v0/search/asks", "search", [this, body](http::Request& req, const auto&) {
    json b = body(req);
    if (!b.is_object() || !b.contains("q") || !b["q"].is_object()) {
      return Json(400, {{"success", false}, {"error", "invalid_args"}, {"msg", "body must be {\"select_cols\":[...],\"q\":{...}}"}});
    }
    return Search(b["q"]);
  });
  AddRoute("PUT", "/api/v0/asks/{id}", "create",
           [this](http::Request& req, const auto& p) { return Create(req, p.at("id")); });
  AddRoute("GET", "/api/v0/instances/{id}", "show", [this](http::Request&, const auto& p) { return Show(p.at("id")); });
  AddRoute("GET", "/api/v0/instances", "list", [this](http::Request&, const auto&) { return ListV0(); });
  AddRoute("GET", "/api/v1/instances", "list", [this](http::Request& req, const auto&) { return ListV1(req); });
  AddRoute("PUT", "/api/v0/instances/{id}", "manage",
           [this](http::Request& req, const auto& p) { return Manage(req, p.at("id")); });
  AddRoute("DELETE", "/api/v0/instances/{id}", "destroy",
           [this](http::Request&, const auto& p) { return Destroy(p.at("id")); });
  AddRoute("PUT", "/api/v0/instances/bid_price/{id}", "bid",
           [this](http::Request& req, const auto& p) { return ChangeBid(req, p.at("id")); });
  AddRoute("GET", "/api/v0/users/current", "user", [](http::Request&, const auto&) {
    return Json(200, {{"id", 1}, {"username", "emulator"}, {"email", "emulator@example.invalid"}, {"credit", 100.0}});
  });

  http::ServerOptions so;
  so.host = o_.host;
  so.port = o_.port;
  so.threads = 4;
  so.shutdown_grace = std::chrono::seconds(2);
  server_ = std::make_unique<http::Server>(
      so,
      [this](http::Request& req) {
        // The Router treats /api/X as an alias of /api/v1/X (dumontd's convention), which Vast's
        // /api/v0 paths must not hit: the Vast paths are mounted under an internal /vast prefix.
        if (req.path.rfind("/api/", 0) == 0) req.path = "/vast/" + req.path.substr(5);
        return router_->Handle(req);
      },
      &logger_);
  DUMONT_RETURN_STATUS_IF_ERROR(server_->Start());
  started_ = true;
  serve_thread_ = std::thread([this] { server_->Run(); });
  tick_thread_ = std::thread([this] { TickLoop(); });
  return Status::Ok();
}

void VastEmulator::Stop() {
  if (!started_) return;
  started_ = false;
  stopping_ = true;
  server_->Stop();
  if (serve_thread_.joinable()) serve_thread_.join();
  if (tick_thread_.joinable()) tick_thread_.join();
}

void VastEmulator::AddRoute(const std::string& method, const std::string& path, const std::string& endpoint, Handler h) {
  http::RouteSpec spec;
  spec.method = method;
  spec.path = "/vast/" + path.substr(5);  // see Start(): /api/vN/... is served as /vast/vN/...
  spec.summary = "Vast.ai emulator: " + endpoint;
  spec.tag = "vast-emulator";
  spec.auth = http::Auth::kNone;  // the Vast API key is checked by Gate(), as Vast does
  router_->Add(spec, [this, endpoint, h](http::Context& ctx) -> Result<http::Response> {
    if (auto refused = Gate(ctx.request, endpoint)) return *refused;
    return h(ctx.request, ctx.params);
  });
}

bool VastEmulator::Authorized(const http::Request& req) const {
  auto h = req.headers.Get("authorization");
  if (h && *h == "Bearer " + o_.api_key) return true;
  auto q = req.query.find("api_key");  // the older query form is still accepted (providers.md 1.1)
  return q != req.query.end() && q->second == o_.api_key;
}

std::optional<http::Response> VastEmulator::Gate(http::Request& req, const std::string& endpoint) {
  std::lock_guard l(mu_);
  ++requests_[endpoint];
  if (!Authorized(req)) {
    return Json(401, {{"success", false}, {"error", "auth_error"}, {"msg", "Invalid user key"}});
  }
  auto take = [&](std::map<std::string, int>& m) {
    for (const std::string& k : {endpoint, std::string()}) {
      auto it = m.find(k);
      if (it != m.end() && it->second > 0) {
        --it->second;
        return true;
      }
    }
    return false;
  };
  std::uniform_real_distribution<double> u(0, 1);
  double now = Now();
  bool too_soon = o_.min_interval_s > 0 && last_request_.count(endpoint) && now - last_request_[endpoint] < o_.min_interval_s;
  if (take(rate_limit_) || too_soon || (o_.rate_limit_rate > 0 && u(rng_) < o_.rate_limit_rate)) {
    ++faults_[endpoint];
    // Plain text, no Retry-After (providers.md 1.8).
    char buf[96];
    std::snprintf(buf, sizeof buf, "API requests too frequent endpoint threshold=%.1f",
                  o_.min_interval_s > 0 ? o_.min_interval_s : 2.0);
    return http::Response::Text(429, buf, "text/plain");
  }
  last_request_[endpoint] = now;
  if (take(server_errors_) || (o_.server_error_rate > 0 && u(rng_) < o_.server_error_rate)) {
    ++faults_[endpoint];
    return http::Response::Text(503, "<html><body><h1>503 Service Temporarily Unavailable</h1></body></html>", "text/html");
  }
  return std::nullopt;
}

http::Response VastEmulator::Search(const json& q) {
  std::lock_guard l(mu_);
  last_search_ = q;
  bool bid = q.value("type", std::string("on-demand")) == "bid" || q.value("type", std::string()) == "interruptible";
  std::vector<json> rows;
  for (auto row : offers_) {
    if (bid) {
      row["is_bid"] = true;
      row["dph_total"] = row["min_bid"].get<double>() + 0.0125;
    }
    std::string bad;
    if (Matches(row, q, &bad)) rows.push_back(row);
    if (!bad.empty()) return Json(400, {{"success", false}, {"error", "invalid_args"}, {"msg", bad}});
  }
  if (q.contains("order") && q["order"].is_array()) {
    std::vector<std::pair<std::string, bool>> keys;
    for (const auto& o : q["order"]) {
      if (o.is_array() && !o.empty() && o[0].is_string()) {
        keys.emplace_back(o[0].get<std::string>(), o.size() > 1 && o[1] == "desc");
      }
    }
    std::stable_sort(rows.begin(), rows.end(), [&](const json& a, const json& b) {
      for (const auto& [k, desc] : keys) {
        if (!a.contains(k) || !b.contains(k)) continue;
        bool cmp = true;
        int c = Compare(a[k], b[k], &cmp);
        if (cmp && c != 0) return desc ? c > 0 : c < 0;
      }
      return false;
    });
  }
  size_t limit = q.contains("limit") && q["limit"].is_number_integer() ? q["limit"].get<size_t>() : 64;
  if (rows.size() > limit) rows.resize(limit);
  return Json(200, {{"offers", rows}});
}

http::Response VastEmulator::Create(http::Request& req, const std::string& offer_str) {
  json b = json::parse(req.body.empty() ? "{}" : req.body, nullptr, false);
  int64_t offer_id = 0;
  if (!b.is_object() || !ParseId(offer_str, &offer_id)) {
    return Json(400, {{"success", false}, {"error", "invalid_args"}, {"msg", "error 400/3467: Invalid args: body must be a JSON object"}, {"ask_id", offer_str}});
  }
  std::unique_lock l(mu_);
  last_create_ = b;
  json* offer = nullptr;
  for (auto& o : offers_) {
    if (o["id"].get<int64_t>() == offer_id) offer = &o;
  }
  bool cancel_unavail = b.value("cancel_unavail", false);
  if (!offer) {
    return Json(404, {{"success", false}, {"error", "invalid_args"},
                      {"msg", "error 404/3603: no_such_ask Instance type by id " + offer_str + " is not available."}});
  }
  if ((*offer)["rented"].get<bool>() || !(*offer)["rentable"].get<bool>()) {
    if (cancel_unavail) {
      return Json(410, {{"success", false}, {"error", "no_such_ask"},
                        {"msg", "error 410/3907: no_such_ask Instance type " + offer_str + " is no longer available."}});
    }
    return Json(404, {{"success", false}, {"error", "invalid_args"},
                      {"msg", "error 404/3603: no_such_ask Instance type by id " + offer_str + " is not available."}});
  }
  std::optional<double> price;
  if (b.contains("price") && !b["price"].is_null()) {
    if (!b["price"].is_number() || b["price"].get<double>() < 0.001 || b["price"].get<double>() > 128) {
      return Json(400, {{"success", false}, {"error", "invalid_price"}, {"msg", "error 400/3467: Invalid args: price must be 0.001-128"}});
    }
    price = b["price"].get<double>();
  }
  Inst i;
  i.id = next_id_++;
  i.offer_id = offer_id;
  i.offer = *offer;
  i.machine_id = (*offer)["machine_id"].get<int64_t>();
  i.label = b.contains("label") && b["label"].is_string() ? b["label"].get<std::string>() : "";
  i.image = b.value("image", std::string("pytorch/pytorch"));
  i.onstart = b.contains("onstart") && b["onstart"].is_string() ? b["onstart"].get<std::string>() : "";
  i.runtype = b.contains("runtype") && b["runtype"].is_string() ? b["runtype"].get<std::string>() : "ssh_proxy";
  i.env = ParseEnv(b.contains("env") ? b["env"] : json());
  i.disk = b.contains("disk") && b["disk"].is_number() ? b["disk"].get<double>() : 10.0;
  i.is_bid = price.has_value();
  i.bid = price.value_or(0);
  i.phase_since = Now();
  i.ssh_port = 20000 + static_cast<int>(i.id % 40000);
  static const char* kHex = "0123456789abcdef";
  for (int k = 0; k < 64; ++k) i.instance_api_key += kHex[rng_() % 16];
  std::uniform_real_distribution<double> u(0, 1);
  i.fault = next_fault_;
  next_fault_ = CreateFault::kNone;
  if (i.fault == CreateFault::kNone) {
    double r = u(rng_);
    if (r < o_.fail_at_boot_rate) i.fault = CreateFault::kFailAtBoot;
    else if (r < o_.fail_at_boot_rate + o_.never_ready_rate) i.fault = CreateFault::kNeverReady;
  }
  (*offer)["rented"] = true;
  (*offer)["rentable"] = false;
  bool low_bid = price && *price < (*offer)["min_bid"].get<double>();
  if (low_bid) {
    // Spot create below min_bid: the instance exists, stopped, and the answer says success:false.
    i.intended = i.cur_state = i.next_state = "stopped";
    i.actual = "stopped";
    i.outbid = true;
  }
  int64_t id = i.id;
  std::string key = i.instance_api_key;
  instances_[id] = std::move(i);
  json ok = low_bid ? json{{"success", false}, {"error", "insufficient_bid"},
                           {"msg", "Your bid is below the minimum bid for this machine; the instance was created stopped."},
                           {"new_contract", id}}
                    : json{{"success", true}, {"new_contract", id}, {"instance_api_key", key}};
  bool lose = false;
  LostMode mode = lost_mode_;
  if (lost_creates_ > 0) {
    --lost_creates_;
    lose = true;
  } else if (o_.lost_create_rate > 0 && u(rng_) < o_.lost_create_rate) {
    lose = true;
  }
  if (lose) ++faults_["create"];
  l.unlock();
  if (!lose) return Json(200, ok);
  if (mode == LostMode::kBodyless502) return http::Response::Text(502, "", "text/plain");
  // The answer arrives after the client has given up.
  auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(o_.lost_response_delay_s);
  while (!stopping_ && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  return Json(200, ok);
}

json VastEmulator::Render(const Inst& i) const {
  bool running = i.actual == "running";
  json extra_env = json::array();
  for (const auto& [k, v] : i.env) extra_env.push_back({k, v});
  double dph = i.is_bid ? i.bid + 0.0125 : i.offer["dph_total"].get<double>();
  return {{"id", i.id},
          {"machine_id", i.machine_id},
          {"host_id", i.offer["host_id"]},
          {"actual_status", i.actual.empty() ? json(nullptr) : json(i.actual)},
          {"intended_status", i.intended},
          {"cur_state", i.destroyed ? "unloaded" : i.cur_state},
          {"next_state", i.next_state},
          {"status_msg", i.status_msg.empty() ? json(nullptr) : json(i.status_msg)},
          {"label", i.label.empty() ? json(nullptr) : json(i.label)},
          {"image_uuid", i.image},
          {"image_runtype", i.runtype},
          {"gpu_name", i.offer["gpu_name"]},
          {"num_gpus", i.offer["num_gpus"]},
          {"gpu_ram", i.offer["gpu_ram"]},
          {"gpu_totalram", i.offer["gpu_total_ram"]},
          {"gpu_util", running ? json(0.0) : json(nullptr)},
          {"gpu_temp", running ? json(35.0) : json(nullptr)},
          {"cpu_cores_effective", i.offer["cpu_cores_effective"]},
          {"cpu_ram", i.offer["cpu_ram"]},
          {"cpu_util", 0.0},
          {"disk_space", i.disk},
          {"disk_usage", -1},
          {"disk_util", -1},
          {"inet_up", i.offer["inet_up"]},
          {"inet_down", i.offer["inet_down"]},
          {"public_ipaddr", running ? "127.0.0.1" : ""},
          {"ssh_host", "ssh" + std::to_string(i.id % 10000) + ".emulator.invalid"},
          {"ssh_port", 10000 + static_cast<int>(i.id % 50000)},
          {"ssh_idx", std::to_string(i.id % 10000)},
          {"ports", running ? json{{"22/tcp", {{{"HostIp", "0.0.0.0"}, {"HostPort", std::to_string(i.ssh_port)}}}}}
                            : json(nullptr)},
          {"direct_port_start", running ? i.ssh_port : -1},
          {"direct_port_end", running ? i.ssh_port + 41 : -1},
          {"direct_port_count", running ? 42 : -1},
          {"dph_total", dph},
          {"dph_base", i.offer["dph_base"]},
          {"is_bid", i.is_bid},
          {"min_bid", i.offer["min_bid"]},
          {"reliability2", i.offer["reliability2"]},
          {"geolocation", i.offer["geolocation"]},
          {"verification", "verified"},
          {"start_date", i.start_date > 0 ? json(i.start_date) : json(nullptr)},
          {"end_date", i.offer["end_date"]},
          {"uptime_mins", running ? json((Now() - i.phase_since) / 60) : json(nullptr)},
          {"extra_env", extra_env},
          {"onstart", i.onstart},
          {"jupyter_token", ""},
          {"template_id", nullptr},
          {"template_hash_id", nullptr},
          {"template_name", nullptr}};
}

http::Response VastEmulator::Show(const std::string& id_str) {
  int64_t id = 0;
  std::lock_guard l(mu_);
  if (!ParseId(id_str, &id)) return Json(200, {{"instances", nullptr}});
  auto it = instances_.find(id);
  if (it == instances_.end() || it->second.destroyed) return Json(200, {{"instances", nullptr}});
  return Json(200, {{"instances", Render(it->second)}});
}

http::Response VastEmulator::ListV0() {
  std::lock_guard l(mu_);
  json out = json::array();
  for (const auto& [id, i] : instances_) {
    if (!i.destroyed) out.push_back(Render(i));
  }
  return Json(200, {{"instances", out}});
}

http::Response VastEmulator::ListV1(const http::Request& req) {
  // Query values are JSON-encoded (strings raw): limit=25, after_token=<raw>, select_filters={...}.
  int limit = 25;
  if (auto it = req.query.find("limit"); it != req.query.end()) {
    json v = json::parse(it->second, nullptr, false);
    if (!v.is_number_integer()) return Json(400, {{"success", false}, {"error", "invalid_args"}, {"msg", "limit must be an integer"}});
    limit = v.get<int>();
  }
  if (limit <= 0) limit = 5;
  limit = std::min({limit, 25, std::max(1, o_.list_page_cap)});
  int64_t after = 0;
  if (auto it = req.query.find("after_token"); it != req.query.end() && !it->second.empty()) {
    std::string raw;
    json t = UnB64(it->second, &raw) ? json::parse(raw, nullptr, false) : json();
    if (!t.is_object() || !t.contains("id") || !t["id"].is_number_integer()) {
      return Json(400, {{"error", "invalid_token"}});
    }
    after = t["id"].get<int64_t>();
  }
  json filters = json::object();
  if (auto it = req.query.find("select_filters"); it != req.query.end()) {
    filters = json::parse(it->second, nullptr, false);
    if (!filters.is_object()) return Json(400, {{"success", false}, {"error", "invalid_args"}, {"msg", "select_filters must be a JSON object"}});
    if (filters.contains("dph_total")) {
      return Json(400, {{"success", false}, {"error", "invalid_args"}, {"msg", "dph_total is a computed column and cannot be filtered"}});
    }
  }
  std::lock_guard l(mu_);
  json page = json::array(), labels = json::object();
  int total = 0;
  bool more = false;
  int64_t last = 0;
  for (const auto& [id, i] : instances_) {
    if (i.destroyed) continue;
    json r = Render(i);
    std::string bad;
    if (!Matches(r, filters, &bad)) continue;
    ++total;
    std::string lbl = i.label;
    labels[lbl] = labels.value(lbl, 0) + 1;
    if (id <= after) continue;
    if (static_cast<int>(page.size()) < limit) {
      page.push_back(r);
      last = id;
    } else {
      more = true;
    }
  }
  json next = more ? json(B64(json{{"id", last}}.dump())) : json(nullptr);
  return Json(200, {{"success", true}, {"instances", page}, {"instances_found", page.size()},
                    {"total_instances", total}, {"label_counts", labels}, {"next_token", next}});
}

void VastEmulator::StopLocal(const std::string& local_id) {
  if (!local_id.empty()) (void)local_->Stop(local_id);
}

http::Response VastEmulator::Manage(http::Request& req, const std::string& id_str) {
  json b = json::parse(req.body.empty() ? "{}" : req.body, nullptr, false);
  int64_t id = 0;
  std::unique_lock l(mu_);
  auto it = ParseId(id_str, &id) ? instances_.find(id) : instances_.end();
  if (it == instances_.end() || it->second.destroyed) return NoSuchInstance(id_str);
  if (!b.is_object()) return Json(400, {{"success", false}, {"error", "invalid_args"}, {"msg", "body must be a JSON object"}});
  Inst& i = it->second;
  if (b.contains("label")) {
    if (!b["label"].is_string() || b["label"].get<std::string>().size() > 1024) {
      return Json(400, {{"success", false}, {"error", "invalid_args"}, {"msg", "label must be a string of at most 1024 characters"}});
    }
    i.label = b["label"].get<std::string>();
  }
  if (b.contains("state")) {
    std::string s = b["state"].is_string() ? b["state"].get<std::string>() : "";
    if (s == "stopped") {
      i.intended = i.cur_state = i.next_state = "stopped";
      i.actual = "stopped";
      i.want_local = false;
      std::string local = i.local_id;
      l.unlock();
      StopLocal(local);
      return Json(200, {{"success", true}});
    }
    if (s == "running") {
      if (i.outbid) {
        // Still outbid: the start waits ("Scheduling") until priority returns.
        i.intended = "running";
        return Json(200, {{"success", true}});
      }
      if (i.intended != "running" || i.actual != "running") {
        i.intended = i.cur_state = i.next_state = "running";
        i.actual = "loading";
        i.status_msg.clear();
        i.phase_since = Now();
      }
      return Json(200, {{"success", true}});
    }
    return Json(400, {{"success", false}, {"error", "invalid_args"}, {"msg", "state must be running or stopped"}});
  }
  return Json(200, {{"success", true}});
}

http::Response VastEmulator::ChangeBid(http::Request& req, const std::string& id_str) {
  json b = json::parse(req.body.empty() ? "{}" : req.body, nullptr, false);
  int64_t id = 0;
  std::lock_guard l(mu_);
  auto it = ParseId(id_str, &id) ? instances_.find(id) : instances_.end();
  if (it == instances_.end() || it->second.destroyed) return NoSuchInstance(id_str);
  if (!b.is_object() || !b.contains("price") || !b["price"].is_number() || b["price"].get<double>() < 0.001 ||
      b["price"].get<double>() > 32) {
    return Json(400, {{"success", false}, {"error", "invalid_price"}, {"msg", "price must be 0.001-32"}});
  }
  Inst& i = it->second;
  i.bid = b["price"].get<double>();
  i.is_bid = true;
  if (i.outbid && i.bid > i.offer["min_bid"].get<double>() * 1.5) {
    // Above the competitor (the emulator's competitor bids 1.5 x min_bid): resume.
    i.outbid = false;
    i.intended = i.cur_state = i.next_state = "running";
    i.actual = "loading";
    i.phase_since = Now();
  }
  return Json(200, {{"success", true}});
}

http::Response VastEmulator::Destroy(const std::string& id_str) {
  int64_t id = 0;
  std::string local;
  {
    std::lock_guard l(mu_);
    auto it = ParseId(id_str, &id) ? instances_.find(id) : instances_.end();
    if (it == instances_.end() || it->second.destroyed) return NoSuchInstance(id_str);
    Inst& i = it->second;
    i.destroyed = true;
    i.cur_state = "unloaded";
    i.want_local = false;
    local = i.local_id;
    i.local_id.clear();
    for (auto& o : offers_) {
      if (o["id"].get<int64_t>() == i.offer_id && o.value("taken_by_other", false) == false) {
        o["rented"] = false;
        o["rentable"] = true;
      }
    }
  }
  if (!local.empty()) (void)local_->Destroy(local);
  return Json(200, {{"success", true}, {"msg", "Instance " + id_str + " destroyed."}});
}

void VastEmulator::TickLoop() {
  while (!stopping_) {
    Tick();
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
  }
}

void VastEmulator::Tick() {
  struct Boot {
    int64_t id;
    std::string existing;  // local machine to restart
    provider::MachineSpec spec;
  };
  std::vector<Boot> boots;
  {
    std::lock_guard l(mu_);
    double now = Now();
    for (auto& [id, i] : instances_) {
      if (i.destroyed || i.intended != "running" || i.want_local) continue;
      if (i.actual.empty() && now - i.phase_since >= o_.boot_seconds) {
        i.phase_since = now;
        if (i.fault == CreateFault::kFailAtBoot) {
          i.actual = "created";
          i.status_msg = "Error response from daemon: failed to create shim task: OCI runtime create failed: "
                         "runc create failed: unable to start container process (emulated)";
        } else {
          i.actual = "loading";
        }
      } else if (i.actual == "loading" && now - i.phase_since >= o_.pull_seconds) {
        if (i.fault == CreateFault::kNeverReady) continue;  // stuck in loading forever
        if (i.fault == CreateFault::kExited) {
          i.actual = "exited";
          i.status_msg = "container exited with code 1 (emulated)";
          continue;
        }
        if (!o_.spawn_agents) {
          i.actual = "running";
          i.status_msg = "success, running " + i.image + "/ssh";
          if (i.start_date == 0) i.start_date = std::time(nullptr);
          continue;
        }
        i.want_local = true;
        Boot b;
        b.id = id;
        b.existing = i.local_id;
        b.spec.label = "vast-" + std::to_string(id);
        b.spec.offer_id = std::to_string(i.offer_id);
        b.spec.image = i.image;
        for (const auto& [k, v] : i.env) {
          if (!k.empty() && k[0] != '-') b.spec.env[k] = v;  // docker options are not env
        }
        b.spec.env["CONTAINER_API_KEY"] = i.instance_api_key;
        boots.push_back(std::move(b));
      }
    }
  }
  for (auto& b : boots) {
    Status st;
    std::string local_id = b.spec.label;
    if (!b.existing.empty()) {
      st = local_->Start(b.existing);
    } else {
      auto m = local_->Create(b.spec);
      st = m ? Status::Ok() : m.error();
    }
    bool undo_destroy = false, undo_stop = false;
    {
      std::lock_guard l(mu_);
      auto it = instances_.find(b.id);
      if (it == instances_.end() || it->second.destroyed) {
        undo_destroy = st.ok();
      } else {
        Inst& i = it->second;
        if (!i.want_local || i.intended != "running") {
          undo_stop = st.ok();
          if (st.ok()) i.local_id = local_id;
        } else if (!st.ok()) {
          i.actual = "exited";
          i.status_msg = "Error: the emulated container could not start: " + st.message();
        } else {
          i.local_id = local_id;
          i.actual = "running";
          i.cur_state = i.next_state = "running";
          i.status_msg = "success, running " + i.image + "/ssh";
          i.phase_since = Now();
          if (i.start_date == 0) i.start_date = static_cast<double>(std::time(nullptr));
        }
        i.want_local = false;
      }
    }
    if (undo_destroy) (void)local_->Destroy(local_id);
    if (undo_stop) StopLocal(local_id);
  }
}

// ---- fault injection and inspection

void VastEmulator::InjectRateLimit(int n, const std::string& endpoint) {
  std::lock_guard l(mu_);
  rate_limit_[endpoint] += n;
}
void VastEmulator::InjectServerErrors(int n, const std::string& endpoint) {
  std::lock_guard l(mu_);
  server_errors_[endpoint] += n;
}
void VastEmulator::LoseNextCreates(int n, LostMode mode) {
  std::lock_guard l(mu_);
  lost_creates_ += n;
  lost_mode_ = mode;
}
void VastEmulator::SetNextCreateFault(CreateFault f) {
  std::lock_guard l(mu_);
  next_fault_ = f;
}
void VastEmulator::TakeOffer(int64_t offer_id) {
  std::lock_guard l(mu_);
  for (auto& o : offers_) {
    if (o["id"].get<int64_t>() == offer_id) {
      o["rented"] = true;
      o["rentable"] = false;
      o["taken_by_other"] = true;
    }
  }
}

Status VastEmulator::Preempt(int64_t id) {
  std::string local;
  {
    std::lock_guard l(mu_);
    auto it = instances_.find(id);
    if (it == instances_.end() || it->second.destroyed) return Status::NotFound("no instance " + std::to_string(id));
    Inst& i = it->second;
    if (!i.is_bid) {
      return Status::FailedPrecondition("instance " + std::to_string(id) + " is on-demand; only interruptibles are outbid");
    }
    // providers.md 4: cur_state = next_state = intended_status = stopped, actual stopped, is_bid.
    i.outbid = true;
    i.intended = i.cur_state = i.next_state = "stopped";
    i.actual = "stopped";
    i.want_local = false;
    local = i.local_id;
  }
  StopLocal(local);
  return Status::Ok();
}

Status VastEmulator::SetActualStatus(int64_t id, const std::string& actual, const std::string& status_msg) {
  std::string local;
  {
    std::lock_guard l(mu_);
    auto it = instances_.find(id);
    if (it == instances_.end() || it->second.destroyed) return Status::NotFound("no instance " + std::to_string(id));
    it->second.actual = actual;
    it->second.status_msg = status_msg;
    if (actual != "running") local = it->second.local_id;  // host gone / container dead: the agent stops
  }
  StopLocal(local);
  return Status::Ok();
}

int VastEmulator::InstanceCount() const {
  std::lock_guard l(mu_);
  int n = 0;
  for (const auto& [id, i] : instances_) n += i.destroyed ? 0 : 1;
  return n;
}
int VastEmulator::RequestCount(const std::string& endpoint) const {
  std::lock_guard l(mu_);
  auto it = requests_.find(endpoint);
  return it == requests_.end() ? 0 : it->second;
}
int VastEmulator::FaultCount(const std::string& endpoint) const {
  std::lock_guard l(mu_);
  auto it = faults_.find(endpoint);
  return it == faults_.end() ? 0 : it->second;
}
std::optional<json> VastEmulator::Instance(int64_t id) const {
  std::lock_guard l(mu_);
  auto it = instances_.find(id);
  if (it == instances_.end() || it->second.destroyed) return std::nullopt;
  return Render(it->second);
}
std::vector<json> VastEmulator::OfferPool() const {
  std::lock_guard l(mu_);
  return offers_;
}
json VastEmulator::LastSearchBody() const {
  std::lock_guard l(mu_);
  return last_search_;
}
json VastEmulator::LastCreateBody() const {
  std::lock_guard l(mu_);
  return last_create_;
}
std::optional<provider::Machine> VastEmulator::LocalMachine(int64_t id) {
  std::string local;
  {
    std::lock_guard l(mu_);
    auto it = instances_.find(id);
    if (it == instances_.end()) return std::nullopt;
    local = it->second.local_id;
  }
  if (local.empty()) return std::nullopt;
  auto m = local_->Get(local);
  if (!m) return std::nullopt;
  return *m;
}

}  // namespace dumont::emulators
