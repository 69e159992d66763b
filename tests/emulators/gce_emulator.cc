#include "emulators/gce_emulator.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <filesystem>

#include "common/random.h"
#include "provider/local.h"

namespace dumont::emulators {
namespace {

using nlohmann::json;

constexpr const char* kLinkBase = "https://www.googleapis.com/compute/v1/";
constexpr const char* kJwtBearer = "urn:ietf:params:oauth:grant-type:jwt-bearer";

http::Response Json(int status, const json& body) { return http::JsonResponse(status, body); }

// The standard Google JSON error (providers.md 3.6).
http::Response GoogleError(int code, const std::string& reason, const std::string& message,
                           const std::string& domain = "global") {
  json err = {{"code", code},
              {"message", message},
              {"errors", {{{"message", message}, {"domain", domain}, {"reason", reason}}}}};
  return Json(code, {{"error", err}});
}
// The OAuth 2 token endpoint's error (3.1).
http::Response OAuthError(int code, const std::string& error, const std::string& description) {
  return Json(code, {{"error", error}, {"error_description", description}});
}

std::string Str(const json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : "";
}

bool ValidName(const std::string& n) {  // RFC 1035, as GCE resource names
  if (n.empty() || n.size() > 63 || n[0] < 'a' || n[0] > 'z' || n.back() == '-') return false;
  return std::all_of(n.begin(), n.end(), [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-'; });
}
bool ValidLabelPart(const std::string& s, bool key) {
  if (s.size() > 63 || (key && (s.empty() || s[0] < 'a' || s[0] > 'z'))) return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
  });
}

// Resource links compare from "projects/..." on: compute.googleapis.com and www.googleapis.com name
// the same resource (3.2).
std::string LinkPath(const std::string& link) {
  auto p = link.find("/compute/v1/");
  return p == std::string::npos ? link : link.substr(p + 12);
}

// RFC 3339 in the -07:00 offset of Google's own fixtures.
std::string Timestamp() {
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
  std::time_t local = static_cast<std::time_t>(ms / 1000) - 7 * 3600;
  std::tm tm{};
  gmtime_r(&local, &tm);
  char buf[48];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03d-07:00", tm.tm_year + 1900, tm.tm_mon + 1,
                tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(ms % 1000));
  return buf;
}

// The metadata item dumont-agent-env: KEY='value' lines, with ' written as '\'' (shell quoting).
std::map<std::string, std::string> ParseEnvFile(const std::string& text) {
  std::map<std::string, std::string> out;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t eol = text.find('\n', pos);
    std::string line = text.substr(pos, eol == std::string::npos ? std::string::npos : eol - pos);
    pos = eol == std::string::npos ? text.size() : eol + 1;
    auto eq = line.find('=');
    if (eq == std::string::npos || eq == 0) continue;
    std::string value;
    bool quoted = false;
    for (size_t i = eq + 1; i < line.size(); ++i) {
      char c = line[i];
      if (c == '\'') quoted = !quoted;
      else if (c == '\\' && !quoted && i + 1 < line.size()) value += line[++i];
      else value += c;
    }
    out[line.substr(0, eq)] = value;
  }
  return out;
}

std::map<std::string, std::string> ParseForm(const std::string& body) {
  std::map<std::string, std::string> out;
  size_t pos = 0;
  while (pos <= body.size()) {
    size_t amp = body.find('&', pos);
    std::string pair = body.substr(pos, amp == std::string::npos ? std::string::npos : amp - pos);
    pos = amp == std::string::npos ? body.size() + 1 : amp + 1;
    auto eq = pair.find('=');
    if (eq == std::string::npos) continue;
    bool ok = true;
    std::string k = http::PercentDecode(pair.substr(0, eq), &ok, true);
    std::string v = http::PercentDecode(pair.substr(eq + 1), &ok, true);
    if (ok) out[k] = v;
  }
  return out;
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

bool VerifyRs256(const std::string& public_pem, const std::string& data, const std::string& sig) {
  std::unique_ptr<BIO, BioFree> bio(BIO_new_mem_buf(public_pem.data(), static_cast<int>(public_pem.size())));
  std::unique_ptr<EVP_PKEY, PkeyFree> key(bio ? PEM_read_bio_PUBKEY(bio.get(), nullptr, nullptr, nullptr) : nullptr);
  std::unique_ptr<EVP_MD_CTX, MdCtxFree> ctx(EVP_MD_CTX_new());
  bool ok = key && ctx && EVP_PKEY_get_base_id(key.get()) == EVP_PKEY_RSA &&
            EVP_DigestVerifyInit(ctx.get(), nullptr, EVP_sha256(), nullptr, key.get()) == 1 &&
            EVP_DigestVerify(ctx.get(), reinterpret_cast<const unsigned char*>(sig.data()), sig.size(),
                             reinterpret_cast<const unsigned char*>(data.data()), data.size()) == 1;
  ERR_clear_error();
  return ok;
}

std::string BioText(BIO* b) {
  char* p = nullptr;
  long n = BIO_get_mem_data(b, &p);
  return n > 0 ? std::string(p, static_cast<size_t>(n)) : "";
}

// A list filter (providers.md 4): terms joined by AND, each field=value, field!=value or
// field:value (contains; "*" = has any value); values quoted or not; parentheses around terms ignored.
struct Term {
  std::string field, op, value;
};
bool ParseFilter(const std::string& f, std::vector<Term>* out) {
  std::vector<std::string> parts;
  std::string cur;
  bool quoted = false;
  for (size_t i = 0; i < f.size(); ++i) {
    char c = f[i];
    if (c == '"') quoted = !quoted;
    if (!quoted && f.compare(i, 5, " AND ") == 0) {
      parts.push_back(cur);
      cur.clear();
      i += 4;
      continue;
    }
    cur += c;
  }
  if (quoted) return false;
  parts.push_back(cur);
  for (std::string p : parts) {
    auto b = p.find_first_not_of(" ()");
    auto e = p.find_last_not_of(" ()");
    if (b == std::string::npos) continue;
    p = p.substr(b, e - b + 1);
    size_t at = p.find_first_of("!=:");
    if (at == std::string::npos || at == 0) return false;
    Term t;
    t.field = p.substr(0, at);
    t.field.erase(t.field.find_last_not_of(' ') + 1);
    if (p[at] == '!') {
      if (at + 1 >= p.size() || p[at + 1] != '=') return false;
      t.op = "!=";
      ++at;
    } else {
      t.op = std::string(1, p[at]);
    }
    std::string v = p.substr(at + 1);
    v.erase(0, v.find_first_not_of(' '));
    if (v.size() >= 2 && v.front() == '"' && v.back() == '"') v = v.substr(1, v.size() - 2);
    t.value = v;
    out->push_back(t);
  }
  return true;
}
bool Matches(const json& item, const std::vector<Term>& terms) {
  for (const auto& t : terms) {
    std::string v;
    bool present;
    if (t.field.rfind("labels.", 0) == 0) {
      const json& labels = item.contains("labels") ? item["labels"] : json::object();
      std::string key = t.field.substr(7);
      present = labels.is_object() && labels.contains(key);
      v = present ? Str(labels, key.c_str()) : "";
    } else {
      present = item.contains(t.field);
      v = Str(item, t.field.c_str());
    }
    bool link = t.field == "targetLink" || t.field == "selfLink";
    bool eq = link ? LinkPath(v) == LinkPath(t.value) : v == t.value;
    bool ok = t.op == "=" ? present && eq
              : t.op == "!=" ? !(present && eq)
                             : present && (t.value == "*" || v.find(t.value) != std::string::npos);
    if (!ok) return false;
  }
  return true;
}

// One page of a list: items sorted by key, after the key in pageToken (base64url), at most maxResults.
http::Response Page(const http::Request& req, std::vector<std::pair<std::string, json>> rows, int cap,
                    const std::string& kind, const std::string& self) {
  std::vector<Term> terms;
  if (auto f = req.query.find("filter"); f != req.query.end() && !ParseFilter(f->second, &terms)) {
    return GoogleError(400, "invalid", "Invalid value for field 'filter': '" + f->second + "'. Invalid list filter expression.");
  }
  int max = cap;
  if (auto m = req.query.find("maxResults"); m != req.query.end()) {
    char* end = nullptr;
    long v = std::strtol(m->second.c_str(), &end, 10);
    if (m->second.empty() || *end || v < 0 || v > 500) {
      return GoogleError(400, "invalid", "Invalid value for field 'maxResults': '" + m->second + "'. Must be 0..500.");
    }
    if (v > 0) max = std::min<int>(static_cast<int>(v), cap);
  }
  std::string after;
  if (auto t = req.query.find("pageToken"); t != req.query.end() && !t->second.empty()) {
    if (!Base64UrlDecode(t->second, &after) || after.empty()) {
      return GoogleError(400, "invalid", "Invalid value for field 'pageToken': '" + t->second + "'.");
    }
  }
  std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  json items = json::array();
  std::string last;
  bool more = false;
  for (const auto& [key, item] : rows) {
    if (!after.empty() && key <= after) continue;
    if (!Matches(item, terms)) continue;
    if (static_cast<int>(items.size()) >= max) {
      more = true;
      break;
    }
    items.push_back(item);
    last = key;
  }
  json out = {{"kind", kind}, {"id", LinkPath(self)}, {"selfLink", self}};
  if (!items.empty()) out["items"] = items;  // GCE omits an empty list
  if (more) out["nextPageToken"] = Base64UrlEncode(last);
  return Json(200, out);
}

}  // namespace

Result<GceServiceAccount> NewGceServiceAccount(const std::string& client_email, const std::string& project,
                                               const std::string& token_uri) {
  std::unique_ptr<EVP_PKEY, PkeyFree> key(EVP_RSA_gen(2048));
  std::unique_ptr<BIO, BioFree> priv(BIO_new(BIO_s_mem())), pub(BIO_new(BIO_s_mem()));
  if (!key || !priv || !pub || PEM_write_bio_PrivateKey(priv.get(), key.get(), nullptr, nullptr, 0, nullptr, nullptr) != 1 ||
      PEM_write_bio_PUBKEY(pub.get(), key.get()) != 1) {
    ERR_clear_error();
    return Err(Status::Internal("generating an RSA key for the emulated service account failed (OpenSSL)"));
  }
  GceServiceAccount sa;
  sa.client_email = client_email;
  sa.private_key_pem = BioText(priv.get());
  sa.public_key_pem = BioText(pub.get());
  sa.key_json = json{{"type", "service_account"},
                     {"project_id", project},
                     {"private_key_id", HexEncode(RandomBytes(20))},
                     {"private_key", sa.private_key_pem},
                     {"client_email", client_email},
                     {"client_id", "100000000000000000001"},
                     {"token_uri", token_uri}}
                    .dump(2);
  return sa;
}

GceEmulator::GceEmulator(GceEmulatorOptions opts)
    : o_(std::move(opts)), logger_(stderr, LogLevel::kWarn), t0_(std::chrono::steady_clock::now()), rng_(o_.seed) {
  provider::LocalOptions lo;
  lo.root = o_.state_dir + "/machines";
  lo.agent_path = o_.agent_path;
  std::error_code ec;
  std::filesystem::create_directories(lo.root, ec);
  local_ = provider::NewLocalProvider(lo);
}

GceEmulator::~GceEmulator() {
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

double GceEmulator::Now() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
}

uint16_t GceEmulator::port() const { return server_ ? server_->port() : 0; }
std::string GceEmulator::BaseUrl() const { return "http://" + o_.host + ":" + std::to_string(port()) + "/compute/v1"; }
std::string GceEmulator::TokenUrl() const { return "http://" + o_.host + ":" + std::to_string(port()) + "/token"; }

Status GceEmulator::Start() {
  router_ = std::make_unique<http::Router>(nullptr, &logger_);
  const std::string zone = "/compute/v1/projects/{project}/zones/{zone}";
  AddRoute("POST", "/token", "token", [this](http::Request& req, const auto&) { return Token(req); });
  auto scoped = [this](auto fn) {
    return [this, fn](http::Request& req, const std::map<std::string, std::string>& p) {
      std::string z;
      if (auto refused = CheckScope(p, &z)) return *refused;
      return fn(req, p, z);
    };
  };
  AddRoute("POST", zone + "/instances", "insert",
           scoped([this](http::Request& req, const auto&, const std::string& z) { return Insert(req, z); }));
  AddRoute("GET", zone + "/instances", "list",
           scoped([this](http::Request& req, const auto&, const std::string& z) { return List(req, z); }));
  AddRoute("GET", zone + "/instances/{name}", "get", scoped([this](http::Request&, const auto& p, const std::string& z) {
             return GetInstance(z, p.at("name"));
           }));
  for (const char* verb : {"stop", "start"}) {
    AddRoute("POST", zone + "/instances/{name}/" + verb, verb,
             scoped([this, verb](http::Request& req, const auto& p, const std::string& z) { return Mutate(req, z, p.at("name"), verb); }));
  }
  AddRoute("DELETE", zone + "/instances/{name}", "delete",
           scoped([this](http::Request& req, const auto& p, const std::string& z) { return Mutate(req, z, p.at("name"), "delete"); }));
  AddRoute("GET", zone + "/operations", "op_list",
           scoped([this](http::Request& req, const auto&, const std::string& z) { return ListOps(req, z); }));
  AddRoute("GET", zone + "/operations/{op}", "op_get",
           scoped([this](http::Request&, const auto& p, const std::string& z) { return GetOp(z, p.at("op")); }));
  AddRoute("POST", zone + "/operations/{op}/wait", "op_wait",
           scoped([this](http::Request&, const auto& p, const std::string& z) { return WaitOp(z, p.at("op")); }));

  http::ServerOptions so;
  so.host = o_.host;
  so.port = o_.port;
  so.threads = 4;
  so.shutdown_grace = std::chrono::seconds(2);
  server_ = std::make_unique<http::Server>(so, [this](http::Request& req) { return router_->Handle(req); }, &logger_);
  DUMONT_RETURN_STATUS_IF_ERROR(server_->Start());
  started_ = true;
  serve_thread_ = std::thread([this] { server_->Run(); });
  tick_thread_ = std::thread([this] { TickLoop(); });
  return Status::Ok();
}

void GceEmulator::Stop() {
  if (!started_) return;
  started_ = false;
  stopping_ = true;
  server_->Stop();
  if (serve_thread_.joinable()) serve_thread_.join();
  if (tick_thread_.joinable()) tick_thread_.join();
}

void GceEmulator::AddRoute(const std::string& method, const std::string& path, const std::string& endpoint, Handler h) {
  http::RouteSpec spec;
  spec.method = method;
  spec.path = path;
  spec.summary = "GCE emulator: " + endpoint;
  spec.tag = "gce-emulator";
  spec.auth = http::Auth::kNone;  // the bearer token is checked by Gate(), as Google does
  router_->Add(spec, [this, endpoint, h](http::Context& ctx) -> Result<http::Response> {
    if (auto refused = Gate(ctx.request, endpoint)) return *refused;
    return h(ctx.request, ctx.params);
  });
}

std::optional<http::Response> GceEmulator::Gate(http::Request& req, const std::string& endpoint) {
  std::lock_guard l(mu_);
  ++requests_[endpoint];
  double now = Now();
  bool compute = endpoint != "token";
  if (compute) {
    auto h = req.headers.Get("authorization");
    auto it = h && h->rfind("Bearer ", 0) == 0 ? tokens_.find(h->substr(7)) : tokens_.end();
    if (it == tokens_.end() || it->second <= now) {
      ++auth_failures_;
      return GoogleError(401, "authError",
                         "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie "
                         "or other valid authentication credential.");
    }
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
  if (take(rate_limit_) || (compute && o_.rate_limit_rate > 0 && u(rng_) < o_.rate_limit_rate)) {
    ++faults_[endpoint];
    if (!compute) return OAuthError(429, "rate_limit_exceeded", "Rate Limit Exceeded");
    return GoogleError(rate_limit_status_, "rateLimitExceeded", "Rate Limit Exceeded", "usageLimits");
  }
  if (compute && o_.requests_per_minute > 0) {
    if (now - quota_window_start_ >= o_.quota_window_seconds) {
      quota_window_start_ = now;
      quota_used_ = 0;
    }
    if (++quota_used_ > o_.requests_per_minute) {
      ++faults_[endpoint];
      return GoogleError(403, "rateLimitExceeded",
                         "Quota exceeded for quota metric 'Queries' and limit 'Queries per minute' of service "
                         "'compute.googleapis.com' for consumer 'project_number:" + o_.project + "'.",
                         "usageLimits");
    }
  }
  if (take(server_errors_) || (o_.server_error_rate > 0 && u(rng_) < o_.server_error_rate)) {
    ++faults_[endpoint];
    if (!compute) return OAuthError(503, "temporarily_unavailable", "The service is currently unavailable.");
    return GoogleError(503, "backendError", "The service is currently unavailable.");
  }
  return std::nullopt;
}

std::optional<http::Response> GceEmulator::CheckScope(const std::map<std::string, std::string>& p, std::string* zone) {
  if (p.at("project") != o_.project) {
    return GoogleError(404, "notFound", "The resource 'projects/" + p.at("project") + "' was not found");
  }
  *zone = p.at("zone");
  if (std::find(o_.zones.begin(), o_.zones.end(), *zone) == o_.zones.end()) {
    return GoogleError(404, "notFound", "The resource 'projects/" + o_.project + "/zones/" + *zone + "' was not found");
  }
  return std::nullopt;
}

std::string GceEmulator::Link(const std::string& zone, const std::string& kind, const std::string& name) const {
  std::string link = std::string(kLinkBase) + "projects/" + o_.project + "/zones/" + zone;
  if (!kind.empty()) link += "/" + kind;
  if (!name.empty()) link += "/" + name;
  return link;
}

// ---- token endpoint (3.1)

http::Response GceEmulator::Token(const http::Request& req) {
  auto form = ParseForm(req.body);
  auto refuse = [this](int code, const std::string& error, const std::string& description) {
    std::lock_guard l(mu_);
    ++auth_failures_;
    return OAuthError(code, error, description);
  };
  if (form["grant_type"] != kJwtBearer) return refuse(400, "unsupported_grant_type", "Invalid grant_type: " + form["grant_type"]);
  const std::string& assertion = form["assertion"];
  auto d1 = assertion.find('.');
  auto d2 = d1 == std::string::npos ? std::string::npos : assertion.find('.', d1 + 1);
  std::string header_raw, claims_raw, sig;
  if (d2 == std::string::npos || !Base64UrlDecode(assertion.substr(0, d1), &header_raw) ||
      !Base64UrlDecode(assertion.substr(d1 + 1, d2 - d1 - 1), &claims_raw) || !Base64UrlDecode(assertion.substr(d2 + 1), &sig)) {
    return refuse(400, "invalid_grant", "Invalid JWT: the assertion is not a JWS compact serialization");
  }
  json header = json::parse(header_raw, nullptr, false), claims = json::parse(claims_raw, nullptr, false);
  if (!header.is_object() || !claims.is_object()) return refuse(400, "invalid_grant", "Invalid JWT: not JSON");
  if (Str(header, "alg") != "RS256") return refuse(400, "invalid_grant", "Invalid JWT: alg must be RS256");
  auto account = o_.service_accounts.find(Str(claims, "iss"));
  if (account == o_.service_accounts.end()) return refuse(400, "invalid_grant", "Invalid grant: account not found");
  if (!VerifyRs256(account->second, assertion.substr(0, d2), sig)) return refuse(400, "invalid_grant", "Invalid JWT Signature.");
  if (Str(claims, "aud") != TokenUrl()) {
    return refuse(400, "invalid_grant", "Invalid JWT: the aud claim must be " + TokenUrl());
  }
  int64_t now = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
  bool times = claims.contains("iat") && claims["iat"].is_number_integer() && claims.contains("exp") && claims["exp"].is_number_integer();
  int64_t iat = times ? claims["iat"].get<int64_t>() : 0, exp = times ? claims["exp"].get<int64_t>() : 0;
  if (!times || exp <= iat || exp - iat > 3600 || iat > now + 60 || exp <= now) {
    return refuse(400, "invalid_grant",
                  "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check "
                  "your iat and exp values in the JWT claim.");
  }
  std::string scope = " " + Str(claims, "scope") + " ";
  if (scope.find(" https://www.googleapis.com/auth/compute ") == std::string::npos &&
      scope.find(" https://www.googleapis.com/auth/cloud-platform ") == std::string::npos) {
    return refuse(400, "invalid_scope", "The scope does not allow Compute Engine.");
  }
  std::lock_guard l(mu_);
  std::string token = "ya29.emu-" + HexEncode(RandomBytes(24));
  tokens_[token] = Now() + o_.token_ttl_seconds + o_.token_grace_seconds;
  last_claims_ = claims;
  return Json(200, {{"access_token", token},
                    {"expires_in", static_cast<int64_t>(std::llround(o_.token_ttl_seconds))},
                    {"token_type", "Bearer"}});
}

// ---- instances

GceEmulator::Inst* GceEmulator::Find(const std::string& zone, const std::string& name) {
  for (auto& [id, i] : instances_) {
    if (!i.deleted && i.zone == zone && i.name == name) return &i;
  }
  return nullptr;
}

bool GceEmulator::StockedOut(const std::string& zone, const std::string& type) const {
  auto it = stockouts_.find(zone);
  if (it == stockouts_.end()) return false;
  return std::any_of(it->second.begin(), it->second.end(), [&](const std::string& t) { return t.empty() || t == type; });
}

GceEmulator::Op& GceEmulator::NewOp(const std::string& zone, const std::string& type, const Inst* target,
                                    const std::string& target_name, const std::string& request_id) {
  Op o;
  o.id = std::to_string(next_id_++);
  char name[64];
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
  std::snprintf(name, sizeof name, "operation-%013lld-%08llx-%08llx", static_cast<long long>(ms),
                static_cast<unsigned long long>(ops_.size()), static_cast<unsigned long long>(rng_() & 0xffffffff));
  o.name = name;
  o.zone = zone;
  o.type = type;
  o.target = Link(zone, "instances", target_name);
  o.target_id = target ? target->id : "";
  o.user = "emulated-service-account@" + o_.project + ".iam.gserviceaccount.com";
  o.request_id = request_id;
  o.insert_time = Timestamp();
  o.created = Now();
  if (!request_id.empty()) request_ids_[request_id] = o.name;
  return ops_[o.name] = o;
}

json GceEmulator::RenderOp(const Op& o) const {
  json j = {{"kind", "compute#operation"},
            {"id", o.id},
            {"name", o.name},
            {"zone", Link(o.zone, "", "")},
            {"operationType", o.type},
            {"targetLink", o.target},
            {"status", o.status},
            {"user", o.user},
            {"progress", o.status == "DONE" ? 100 : 0},
            {"insertTime", o.insert_time},
            {"selfLink", Link(o.zone, "operations", o.name)}};
  if (!o.target_id.empty()) j["targetId"] = o.target_id;
  if (!o.start_time.empty()) j["startTime"] = o.start_time;
  if (o.status == "DONE") {
    j["endTime"] = o.end_time;
    if (!o.error.is_null()) {
      // A failed operation is still DONE (3.2).
      j["error"] = o.error;
      j["httpErrorStatusCode"] = o.http_error;
      j["httpErrorMessage"] = std::string(http::ReasonPhrase(o.http_error));
    }
  }
  return j;
}

json GceEmulator::RenderInstance(const Inst& i) const {
  bool has_ip = i.status == "STAGING" || i.status == "RUNNING" || i.status == "STOPPING";
  json access = {{"kind", "compute#accessConfig"}, {"type", "ONE_TO_ONE_NAT"}, {"name", "External NAT"}, {"networkTier", "PREMIUM"}};
  if (has_ip) access["natIP"] = "127.0.0.1";  // the local machine behind it runs on this host
  json sched = i.spot ? json{{"provisioningModel", "SPOT"},
                             {"instanceTerminationAction", i.termination_action},
                             {"automaticRestart", false},
                             {"onHostMaintenance", "TERMINATE"},
                             {"preemptible", true}}
                      : json{{"provisioningModel", "STANDARD"},
                             {"automaticRestart", true},
                             {"onHostMaintenance", "MIGRATE"},
                             {"preemptible", false}};
  const json& init = i.body["disks"][0]["initializeParams"];
  json j = {{"kind", "compute#instance"},
            {"id", i.id},
            {"creationTimestamp", i.created},
            {"name", i.name},
            {"machineType", Link(i.zone, "machineTypes", i.machine_type)},
            {"status", i.status},
            {"zone", Link(i.zone, "", "")},
            {"canIpForward", false},
            {"networkInterfaces",
             {{{"kind", "compute#networkInterface"},
               {"name", "nic0"},
               {"network", std::string(kLinkBase) + "projects/" + o_.project + "/global/networks/default"},
               {"networkIP", "10.128.0." + std::to_string(i.ip)},
               {"accessConfigs", {access}}}}},
            {"disks",
             {{{"kind", "compute#attachedDisk"},
               {"type", "PERSISTENT"},
               {"mode", "READ_WRITE"},
               {"source", Link(i.zone, "disks", i.name)},
               {"deviceName", "persistent-disk-0"},
               {"index", 0},
               {"boot", true},
               {"autoDelete", true},
               {"diskSizeGb", init.contains("diskSizeGb") ? init["diskSizeGb"] : json("10")}}}},
            {"metadata", {{"kind", "compute#metadata"}, {"fingerprint", "emu" + i.id.substr(i.id.size() - 6)}, {"items", i.body["metadata"]["items"]}}},
            {"labels", i.body.contains("labels") ? i.body["labels"] : json::object()},
            {"scheduling", sched},
            {"selfLink", Link(i.zone, "instances", i.name)}};
  if (!i.status_message.empty()) j["statusMessage"] = i.status_message;
  if (!i.last_start.empty()) j["lastStartTimestamp"] = i.last_start;
  if (!i.last_stop.empty()) j["lastStopTimestamp"] = i.last_stop;
  return j;
}

http::Response GceEmulator::Insert(http::Request& req, const std::string& zone) {
  json b = json::parse(req.body.empty() ? "{}" : req.body, nullptr, false);
  auto rid = req.query.find("requestId");
  std::string request_id = rid == req.query.end() ? "" : rid->second;
  std::unique_lock l(mu_);
  if (!request_id.empty() && request_ids_.count(request_id)) {
    return Json(200, RenderOp(ops_.at(request_ids_.at(request_id))));  // a retried insert runs once
  }
  if (!b.is_object()) return GoogleError(400, "parseError", "Invalid JSON payload received.");
  auto invalid = [](const std::string& field, const std::string& why) {
    return GoogleError(400, "invalid", "Invalid value for field '" + field + "': " + why);
  };
  std::string name = Str(b, "name");
  if (!ValidName(name)) {
    return invalid("resource.name", "'" + name + "'. Must be a match of regex '(?:[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?)'");
  }
  std::string mt = LinkPath(Str(b, "machineType"));
  const std::string prefix = "zones/" + zone + "/machineTypes/";
  std::string type = mt.rfind(prefix, 0) == 0 ? mt.substr(prefix.size()) : "";
  if (mt.rfind("projects/" + o_.project + "/" + prefix, 0) == 0) type = mt.substr(prefix.size() + o_.project.size() + 10);
  if (std::find(o_.machine_types.begin(), o_.machine_types.end(), type) == o_.machine_types.end()) {
    return invalid("resource.machineType", "'" + Str(b, "machineType") + "'. Machine type does not exist in zone " + zone + ".");
  }
  const json& disks = b.contains("disks") ? b["disks"] : json();
  if (!disks.is_array() || disks.empty() || !disks[0].is_object() || !disks[0].value("boot", false) ||
      !disks[0].contains("initializeParams") || Str(disks[0]["initializeParams"], "sourceImage").empty()) {
    return invalid("resource.disks", "a boot disk with initializeParams.sourceImage is required.");
  }
  if (!b.contains("networkInterfaces") || !b["networkInterfaces"].is_array() || b["networkInterfaces"].empty()) {
    return invalid("resource.networkInterfaces", "at least one network interface is required.");
  }
  json sched = b.contains("scheduling") && b["scheduling"].is_object() ? b["scheduling"] : json::object();
  bool spot = Str(sched, "provisioningModel") == "SPOT";
  std::string action = Str(sched, "instanceTerminationAction");
  if (spot && sched.value("automaticRestart", false)) {
    return invalid("resource.scheduling.automaticRestart", "You cannot set the automatic restart and host maintenance options for a Spot VM.");
  }
  if (spot && !action.empty() && action != "STOP" && action != "DELETE") {
    return invalid("resource.scheduling.instanceTerminationAction", "'" + action + "'. Must be STOP or DELETE.");
  }
  if (b.contains("labels")) {
    if (!b["labels"].is_object()) return invalid("resource.labels", "must be a map.");
    for (const auto& [k, v] : b["labels"].items()) {
      if (!ValidLabelPart(k, true) || !v.is_string() || !ValidLabelPart(v.get<std::string>(), false)) {
        return invalid("resource.labels", "label '" + k + "' does not match [a-z][a-z0-9_-]{0,62} = [a-z0-9_-]{0,63}.");
      }
    }
  }
  json items = b.contains("metadata") && b["metadata"].is_object() && b["metadata"].contains("items") ? b["metadata"]["items"] : json::array();
  std::map<std::string, std::string> env;
  if (!items.is_array()) return invalid("resource.metadata.items", "must be a list.");
  for (const auto& it : items) {
    std::string key = it.is_object() ? Str(it, "key") : "";
    bool ok = !key.empty() && key.size() <= 128 && std::all_of(key.begin(), key.end(), [](char c) {
      return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_';
    });
    if (!ok) return invalid("resource.metadata.items", "keys must match [a-zA-Z0-9-_]{1,128}.");
    if (key == "dumont-agent-env") env = ParseEnvFile(Str(it, "value"));
  }
  if (Find(zone, name)) {
    return GoogleError(409, "alreadyExists", "The resource 'projects/" + o_.project + "/zones/" + zone + "/instances/" + name + "' already exists");
  }
  last_create_ = b;

  Op* op;
  if (StockedOut(zone, type)) {
    // The operation ends DONE with the error; no instance is created (providers.md 4).
    op = &NewOp(zone, "insert", nullptr, name, request_id);
    op->error = {{"errors", {{{"code", "ZONE_RESOURCE_POOL_EXHAUSTED"},
                              {"message", "The zone 'projects/" + o_.project + "/zones/" + zone +
                                              "' does not have enough resources available to fulfill the request.  "
                                              "Try a different zone, or try again later."}}}}};
    op->http_error = 503;
  } else {
    Inst i;
    i.id = std::to_string(next_id_++);
    i.name = name;
    i.zone = zone;
    i.machine_type = type;
    i.body = b;
    i.body["metadata"] = {{"items", items}};
    i.env = env;
    i.spot = spot;
    i.termination_action = action.empty() ? "STOP" : action;
    i.created = Timestamp();
    i.phase_since = Now();
    i.ip = next_ip_++;
    std::uniform_real_distribution<double> u(0, 1);
    i.fault = next_fault_;
    next_fault_ = CreateFault::kNone;
    if (i.fault == CreateFault::kNone) {
      double r = u(rng_);
      if (r < o_.fail_at_boot_rate) i.fault = CreateFault::kFailAtBoot;
      else if (r < o_.fail_at_boot_rate + o_.never_ready_rate) i.fault = CreateFault::kNeverReady;
    }
    std::string id = i.id;
    instances_[id] = std::move(i);
    op = &NewOp(zone, "insert", &instances_[id], name, request_id);
  }
  json answer = RenderOp(*op);
  std::uniform_real_distribution<double> u(0, 1);
  bool lose = false;
  LostMode mode = lost_mode_;
  if (lost_creates_ > 0) {
    --lost_creates_;
    lose = true;
  } else if (o_.lost_create_rate > 0 && u(rng_) < o_.lost_create_rate) {
    lose = true;
  }
  if (lose) ++faults_["insert"];
  l.unlock();
  if (!lose) return Json(200, answer);
  if (mode == LostMode::kBodyless502) return http::Response::Text(502, "", "text/plain");
  // The answer arrives after the client has given up.
  auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(o_.lost_response_delay_s);
  while (!stopping_ && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  return Json(200, answer);
}

http::Response GceEmulator::GetInstance(const std::string& zone, const std::string& name) {
  std::lock_guard l(mu_);
  if (Inst* i = Find(zone, name)) return Json(200, RenderInstance(*i));
  return GoogleError(404, "notFound", "The resource 'projects/" + o_.project + "/zones/" + zone + "/instances/" + name + "' was not found");
}


http::Response GceEmulator::List(const http::Request& req, const std::string& zone) {
  std::lock_guard l(mu_);
  std::vector<std::pair<std::string, json>> rows;
  for (const auto& [id, i] : instances_) {
    if (!i.deleted && i.zone == zone) rows.emplace_back(i.name, RenderInstance(i));
  }
  return Page(req, std::move(rows), std::max(1, o_.list_page_cap), "compute#instanceList", Link(zone, "instances", ""));
}

http::Response GceEmulator::Mutate(const http::Request& req, const std::string& zone, const std::string& name,
                                   const std::string& verb) {
  auto rid = req.query.find("requestId");
  std::string request_id = rid == req.query.end() ? "" : rid->second;
  std::lock_guard l(mu_);
  if (!request_id.empty() && request_ids_.count(request_id)) return Json(200, RenderOp(ops_.at(request_ids_.at(request_id))));
  Inst* i = Find(zone, name);
  if (!i) {
    return GoogleError(404, "notFound", "The resource 'projects/" + o_.project + "/zones/" + zone + "/instances/" + name + "' was not found");
  }
  bool up = i->status == "PROVISIONING" || i->status == "STAGING" || i->status == "RUNNING";
  if (verb == "start" && i->status == "STOPPING") {
    return GoogleError(400, "resourceNotReady", "The resource 'projects/" + o_.project + "/zones/" + zone + "/instances/" + name + "' is not ready");
  }
  Op& op = NewOp(zone, verb, i, name, request_id);
  if (verb == "stop" && up) {
    i->status = "STOPPING";
    i->phase_since = Now();
    i->want_local = false;
  } else if (verb == "start" && i->status == "TERMINATED") {
    if (StockedOut(zone, i->machine_type)) {
      op.error = {{"errors", {{{"code", "ZONE_RESOURCE_POOL_EXHAUSTED"},
                               {"message", "The zone 'projects/" + o_.project + "/zones/" + zone +
                                               "' does not have enough resources available to fulfill the request."}}}}};
      op.http_error = 503;
    } else {
      i->status = "STAGING";
      i->status_message.clear();
      i->phase_since = Now();
    }
  } else if (verb == "delete") {
    i->deleting = true;
    i->want_local = false;
    if (i->status != "STOPPING") {
      i->status = "STOPPING";
      i->phase_since = Now();
    }
  }
  return Json(200, RenderOp(op));
}

// ---- operations

http::Response GceEmulator::GetOp(const std::string& zone, const std::string& name) {
  std::lock_guard l(mu_);
  auto it = ops_.find(name);
  if (it == ops_.end() || it->second.zone != zone) {
    return GoogleError(404, "notFound", "The resource 'projects/" + o_.project + "/zones/" + zone + "/operations/" + name + "' was not found");
  }
  return Json(200, RenderOp(it->second));
}

http::Response GceEmulator::WaitOp(const std::string& zone, const std::string& name) {
  // Blocks until DONE or wait_cap_seconds (GCE: about 2 minutes, best effort), whichever comes first.
  auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(o_.wait_cap_seconds);
  for (;;) {
    {
      std::lock_guard l(mu_);
      auto it = ops_.find(name);
      if (it == ops_.end() || it->second.zone != zone) {
        return GoogleError(404, "notFound", "The resource 'projects/" + o_.project + "/zones/" + zone + "/operations/" + name + "' was not found");
      }
      if (it->second.status == "DONE" || stopping_ || std::chrono::steady_clock::now() >= until) return Json(200, RenderOp(it->second));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

http::Response GceEmulator::ListOps(const http::Request& req, const std::string& zone) {
  std::lock_guard l(mu_);
  std::vector<std::pair<std::string, json>> rows;
  for (const auto& [name, op] : ops_) {
    if (op.zone == zone) rows.emplace_back(name, RenderOp(op));
  }
  return Page(req, std::move(rows), std::max(1, o_.list_page_cap), "compute#operationList", Link(zone, "operations", ""));
}

// ---- time

void GceEmulator::TickLoop() {
  while (!stopping_) {
    Tick();
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

void GceEmulator::Tick() {
  struct Boot {
    std::string id;
    std::string existing;  // local machine to restart
    provider::MachineSpec spec;
  };
  std::vector<Boot> boots;
  std::vector<std::string> stops, destroys;
  {
    std::lock_guard l(mu_);
    double now = Now();
    for (auto& [name, op] : ops_) {
      if (op.status == "PENDING" && now - op.created >= o_.op_pending_seconds) {
        op.status = "RUNNING";
        op.start_time = Timestamp();
      }
      if (op.status == "RUNNING" && now - op.created >= o_.op_done_seconds) {
        op.status = "DONE";
        op.end_time = Timestamp();
      }
    }
    for (auto& [id, i] : instances_) {
      if (i.deleted || i.want_local) continue;
      double in_phase = now - i.phase_since;
      if (i.status == "PROVISIONING" && in_phase >= o_.provision_seconds) {
        i.status = "STAGING";
        i.phase_since = now;
      } else if (i.status == "STAGING" && in_phase >= o_.staging_seconds) {
        if (i.fault == CreateFault::kNeverReady) continue;  // stuck in STAGING forever
        if (i.fault == CreateFault::kFailAtBoot) {
          i.status = "TERMINATED";
          i.status_message = "Instance failed to start: the boot disk could not be read (emulated)";
          i.last_stop = Timestamp();
          continue;
        }
        if (!o_.spawn_agents) {
          i.status = "RUNNING";
          i.last_start = Timestamp();
          i.phase_since = i.running_since = now;
          continue;
        }
        i.want_local = true;
        Boot b;
        b.id = id;
        b.existing = i.local_id;
        b.spec.label = "gce-" + id;
        b.spec.offer_id = i.zone + ":" + i.machine_type;
        b.spec.env = i.env;
        boots.push_back(std::move(b));
      } else if (i.status == "RUNNING" && i.spot && o_.spot_lifetime_seconds > 0 &&
                 now - i.running_since >= o_.spot_lifetime_seconds) {
        BeginPreemption(i);
      } else if (i.status == "STOPPING" && in_phase >= (i.preempting ? o_.preempt_grace_seconds : o_.stopping_seconds)) {
        i.preempting = false;
        if (i.deleting) {
          i.deleted = true;
          if (!i.local_id.empty()) destroys.push_back(i.local_id);
          i.local_id.clear();
        } else {
          i.status = "TERMINATED";
          i.last_stop = Timestamp();
          i.phase_since = now;
          if (!i.local_id.empty()) stops.push_back(i.local_id);
        }
      }
    }
  }
  for (const auto& id : stops) (void)local_->Stop(id);
  for (const auto& id : destroys) (void)local_->Destroy(id);
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
      if (it == instances_.end() || it->second.deleted) {
        undo_destroy = st.ok();
      } else {
        Inst& i = it->second;
        if (st.ok()) i.local_id = local_id;
        if (i.status != "STAGING") {
          undo_stop = st.ok();  // stopped or deleted while the machine was starting
        } else if (!st.ok()) {
          i.status = "TERMINATED";
          i.status_message = "Instance failed to start: " + st.message();
          i.last_stop = Timestamp();
        } else {
          i.status = "RUNNING";
          i.last_start = Timestamp();
          i.phase_since = i.running_since = Now();
        }
        i.want_local = false;
      }
    }
    if (undo_destroy) (void)local_->Destroy(local_id);
    if (undo_stop) (void)local_->Stop(local_id);
  }
}

// ---- fault injection and inspection

void GceEmulator::InjectRateLimit(int n, const std::string& endpoint, int http_status) {
  std::lock_guard l(mu_);
  rate_limit_[endpoint] += n;
  rate_limit_status_ = http_status;
}
void GceEmulator::InjectServerErrors(int n, const std::string& endpoint) {
  std::lock_guard l(mu_);
  server_errors_[endpoint] += n;
}
void GceEmulator::LoseNextCreates(int n, LostMode mode) {
  std::lock_guard l(mu_);
  lost_creates_ += n;
  lost_mode_ = mode;
}
void GceEmulator::SetNextCreateFault(CreateFault f) {
  std::lock_guard l(mu_);
  next_fault_ = f;
}
void GceEmulator::Stockout(const std::string& zone, const std::string& machine_type, bool on) {
  std::lock_guard l(mu_);
  auto& types = stockouts_[zone];
  types.erase(std::remove(types.begin(), types.end(), machine_type), types.end());
  if (on) types.push_back(machine_type);
}
void GceEmulator::ExpireTokens() {
  std::lock_guard l(mu_);
  for (auto& [t, expiry] : tokens_) expiry = 0;
}

// ACPI soft off, the grace period for shutdown scripts (the agent runs on), then TERMINATED (action
// STOP) or gone (DELETE); the zone records a compute.instances.preempted operation (providers.md 3.5).
void GceEmulator::BeginPreemption(Inst& i) {
  i.status = "STOPPING";
  i.preempting = true;
  i.deleting = i.termination_action == "DELETE";
  i.want_local = false;
  i.phase_since = Now();
  Op& op = NewOp(i.zone, "compute.instances.preempted", &i, i.name, "");
  op.status = "DONE";
  op.start_time = op.end_time = op.insert_time;
  op.user = "system";
}

Status GceEmulator::Preempt(const std::string& name) {
  std::lock_guard l(mu_);
  for (auto& [id, i] : instances_) {
    if (i.deleted || i.name != name) continue;
    if (!i.spot) return Status::FailedPrecondition("instance " + name + " is not a Spot VM; only Spot VMs are preempted");
    if (i.status != "RUNNING" && i.status != "STAGING") {
      return Status::FailedPrecondition("instance " + name + " is " + i.status + "; only a running Spot VM is preempted");
    }
    BeginPreemption(i);
    return Status::Ok();
  }
  return Status::NotFound("no instance named " + name);
}

int GceEmulator::InstanceCount() const {
  std::lock_guard l(mu_);
  return static_cast<int>(std::count_if(instances_.begin(), instances_.end(), [](const auto& e) { return !e.second.deleted; }));
}
int GceEmulator::RequestCount(const std::string& endpoint) const {
  std::lock_guard l(mu_);
  auto it = requests_.find(endpoint);
  return it == requests_.end() ? 0 : it->second;
}
int GceEmulator::FaultCount(const std::string& endpoint) const {
  std::lock_guard l(mu_);
  auto it = faults_.find(endpoint);
  return it == faults_.end() ? 0 : it->second;
}
int GceEmulator::AuthFailureCount() const {
  std::lock_guard l(mu_);
  return auth_failures_;
}
std::optional<json> GceEmulator::Instance(const std::string& name) const {
  std::lock_guard l(mu_);
  for (const auto& [id, i] : instances_) {
    if (!i.deleted && i.name == name) return RenderInstance(i);
  }
  return std::nullopt;
}
json GceEmulator::LastCreateBody() const {
  std::lock_guard l(mu_);
  return last_create_;
}
json GceEmulator::LastTokenClaims() const {
  std::lock_guard l(mu_);
  return last_claims_;
}
std::optional<provider::Machine> GceEmulator::LocalMachine(const std::string& name) {
  std::string local;
  {
    std::lock_guard l(mu_);
    for (const auto& [id, i] : instances_) {
      if (i.name == name && !i.local_id.empty()) local = i.local_id;
    }
  }
  if (local.empty()) return std::nullopt;
  auto m = local_->Get(local);
  if (!m) return std::nullopt;
  return *m;
}

}  // namespace dumont::emulators
