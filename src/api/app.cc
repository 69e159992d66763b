#include "api/app.h"

#include <filesystem>
#include <fstream>
#include <unistd.h>

#include <dumont/version.h>

#include "provider/local.h"
#include "provider/sim.h"
#include "provider/gce.h"
#include "provider/runpod.h"
#include "provider/vast.h"

namespace dumont::api {
namespace {

using http::Auth;
using http::Context;
using http::Field;
using http::JsonResponse;
using http::JsonType;
using http::Response;
using http::RouteSpec;
using nlohmann::json;

json UserJson(const store::User& u) {
  return {{"id", u.id}, {"email", u.email}, {"role", u.role}, {"created_at", u.created_at}};
}

json KeyJson(const store::ApiKey& k) {
  json j = {{"id", k.id}, {"name", k.name}, {"prefix", k.prefix}, {"created_at", k.created_at},
            {"last_used_at", nullptr}};
  if (k.last_used_at) j["last_used_at"] = *k.last_used_at;
  return j;
}

json TokensJson(const auth::Tokens& t) {
  return {{"access_token", t.access_token}, {"refresh_token", t.refresh_token},
          {"token_type", "bearer"},         {"expires_in", t.expires_in}};
}

class BearerAuthenticator final : public http::Authenticator {
 public:
  explicit BearerAuthenticator(auth::AuthService& auth) : auth_(auth) {}
  Result<http::Principal> Authenticate(const http::Request& req) override {
    std::string token;
    if (auto h = req.headers.Get("authorization")) {
      std::string_view v(*h);
      if (v.size() > 7 && (v.substr(0, 7) == "Bearer " || v.substr(0, 7) == "bearer ")) {
        token = std::string(v.substr(7));
      } else {
        return Err(Status::Unauthenticated("the Authorization header must be 'Bearer <token>'"));
      }
    } else if (auto k = req.headers.Get("x-api-key")) {
      token = *k;
    } else {
      return Err(Status::Unauthenticated(
          "missing credentials: send 'Authorization: Bearer <token>' (get one with POST /api/v1/auth/login) "
          "or an API key"));
    }
    auto id = auth_.Authenticate(token);
    if (!id) return Err(id.error());
    return http::Principal{id->user_id, id->email, id->role, id->session_id, id->api_key_id};
  }

 private:
  auth::AuthService& auth_;
};


auth::Identity ToIdentity(const http::Principal& p) {
  return auth::Identity{p.user_id, p.email, p.role, p.session_id, p.api_key_id};
}

}  // namespace

// dumont-agent lives beside the running binary (build/bin/ or the install prefix's bin/).
std::string AgentBinaryPath() {
  char buf[4096];
  ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) return "dumont-agent";
  buf[n] = 0;
  return (std::filesystem::path(buf).parent_path() / "dumont-agent").string();
}

App::App(const Config& cfg, const Clock& clock, Logger* logger)
    : cfg_(cfg), clock_(clock), logger_(logger), start_time_(clock.NowUnixMillis() / 1000.0) {}

App::~App() = default;

Result<std::unique_ptr<App>> App::Create(const Config& cfg, const Clock& clock, Logger* logger) {
  std::unique_ptr<App> app(new App(cfg, clock, logger));
  std::error_code ec;
  std::filesystem::create_directories(cfg.data_dir, ec);
  if (ec) return Err(Status::IOError("cannot create data directory " + cfg.data_dir + ": " + ec.message()));
  std::filesystem::permissions(cfg.data_dir, std::filesystem::perms::owner_all,
                               std::filesystem::perm_options::replace, ec);

  auto store = store::OpenStore(cfg.DatabaseUrl(), clock.NowUnix());
  if (!store) return Err(store.error().Annotate("opening database " + store::RedactUrl(cfg.DatabaseUrl())));
  app->store_ = std::move(*store);

  auto key = auth::LoadOrCreateSigningKey((std::filesystem::path(cfg.data_dir) / "jwt-signing.key").string());
  if (!key) return Err(key.error());
  auth::AuthOptions opts;
  opts.access_ttl_s = cfg.auth_access_ttl_s;
  opts.refresh_ttl_s = cfg.auth_refresh_ttl_s;
  opts.allow_signup = cfg.auth_allow_signup;
  opts.max_failures_per_account = static_cast<int>(cfg.auth_login_max_failures_per_account);
  opts.max_failures_per_address = static_cast<int>(cfg.auth_login_max_failures_per_address);
  opts.window_s = cfg.auth_login_window_s;
  auth::ParseHashCost(cfg.auth_password_hash, &opts.hash_cost);
  app->auth_ = std::make_unique<auth::AuthService>(*app->store_, clock, std::move(*key), opts);

  fleet::FleetOptions fo;
  fo.data_dir = cfg.data_dir;
  fo.heartbeat_interval_s = cfg.fleet_heartbeat_interval_s;
  fo.resync_interval_s = cfg.fleet_resync_interval_s;
  app->fleet_ = std::make_unique<fleet::Fleet>(*app->store_, clock, logger, fo);
  provider::LocalOptions lo;
  lo.root = (std::filesystem::absolute(cfg.data_dir) / "machines").lexically_normal().string();
  lo.agent_path = AgentBinaryPath();
  lo.price_per_hour = cfg.fleet_local_price_per_hour;
  std::filesystem::create_directories(lo.root, ec);
  app->fleet_->AddProvider(provider::NewLocalProvider(lo));
  if (cfg.fleet_sim_provider) app->fleet_->AddProvider(provider::NewSimProvider({}, clock));
  // Provider credentials: each user's own, sealed with a key that lives only in the data directory.
  auto sealer = auth::Sealer::OpenOrCreate((std::filesystem::path(cfg.data_dir) / "credentials.key").string());
  if (!sealer) return Err(sealer.error());
  app->fleet_->SetSealer(std::move(*sealer));
  std::string vast_url = cfg.vast_base_url;
  app->fleet_->RegisterProviderFactory(
      "vast", {"Vast.ai", {"api_key"}, {}},
      [vast_url](const nlohmann::json& creds) -> Result<std::unique_ptr<provider::Provider>> {
        provider::VastOptions vo;
        vo.base_url = vast_url;
        vo.api_key = creds.value("api_key", "");
        return provider::NewVastProvider(vo);
      });
  std::string runpod_url = cfg.runpod_base_url;
  app->fleet_->RegisterProviderFactory(
      "runpod", {"RunPod", {"api_key"}, {}},
      [runpod_url](const nlohmann::json& creds) -> Result<std::unique_ptr<provider::Provider>> {
        provider::RunPodOptions ro;
        ro.base_url = runpod_url;
        ro.api_key = creds.value("api_key", "");
        return provider::NewRunPodProvider(ro);
      });
  std::string gce_url = cfg.gce_base_url, gce_token = cfg.gce_token_url;
  app->fleet_->RegisterProviderFactory(
      "gce", {"Google Compute Engine (CPU standby)", {"service_account_json"}, {"project", "zone"}},
      [gce_url, gce_token](const nlohmann::json& creds) -> Result<std::unique_ptr<provider::Provider>> {
        auto key = nlohmann::json::parse(creds.value("service_account_json", ""), nullptr, false);
        if (!key.is_object() || !key.contains("client_email") || !key.contains("private_key")) {
          return Err(Status::InvalidField("service_account_json",
                                          "service_account_json must be a service-account key file's JSON (with "
                                          "client_email and private_key)"));
        }
        provider::GceOptions go;
        go.base_url = gce_url;
        if (gce_token != provider::GceOptions{}.token_url) go.token_url = gce_token;
        go.service_account_json = creds.value("service_account_json", "");
        go.project = creds.value("project", key.value("project_id", ""));
        if (go.project.empty()) {
          return Err(Status::InvalidField("project", "project is required (the key file has no project_id)"));
        }
        if (!creds.value("zone", "").empty()) go.zones = {creds.value("zone", "")};
        return provider::NewGceProvider(go);
      });
  if (!cfg.runpod_api_key.empty()) {
    provider::RunPodOptions ro;
    ro.base_url = cfg.runpod_base_url;
    ro.api_key = cfg.runpod_api_key;
    app->fleet_->AddProvider(provider::NewRunPodProvider(ro));
  }
  if (!cfg.vast_api_key.empty()) {  // a server-wide key: every user without their own uses it
    provider::VastOptions vo;
    vo.base_url = cfg.vast_base_url;
    vo.api_key = cfg.vast_api_key;
    app->fleet_->AddProvider(provider::NewVastProvider(vo));
  }
  if (cfg.market_enabled) {
    app->market_ = std::make_unique<fleet::MarketMonitor>(
        *app->store_, clock, logger, app->fleet_->Providers(),
        fleet::MarketOptions{.interval_s = cfg.market_interval_s, .retention_days = cfg.market_retention_days});
  }

  app->metrics_ = std::make_unique<http::Metrics>(DUMONT_VERSION, DUMONT_GIT_COMMIT, app->start_time_);
  app->authenticator_ = std::make_unique<BearerAuthenticator>(*app->auth_);
  app->router_ = std::make_unique<http::Router>(app->metrics_.get(), logger);
  app->router_->SetAuthenticator(app->authenticator_.get());
  app->RegisterRoutes();
  app->SetupWebConsole();
  return app;
}

void App::RegisterRoutes() {
  RegisterSystemRoutes();
  RegisterAuthRoutes();
  RegisterFleetRoutes();
  RegisterDeployRoutes();
  RegisterSettingsRoutes();
  RegisterMarketRoutes();
  RegisterDemoRoutes();
}

void App::Start(const std::string& public_url) {
  fleet_->SetPublicUrl(cfg_.public_url.empty() ? public_url : cfg_.public_url);
  fleet_->Start();
  if (market_) market_->Start();
}

void App::Shutdown() {
  if (market_) market_->Stop();  // it reads the fleet's providers
  fleet_->Stop();
}

void App::SetupWebConsole() {
  std::string dir = cfg_.web_dir;
  if (dir.empty()) {
    // build/bin/dumontd -> <source tree>/web/dist
    auto guess = std::filesystem::path(AgentBinaryPath()).parent_path() / ".." / ".." / "web" / "dist";
    std::error_code ec;
    if (std::filesystem::exists(guess / "index.html", ec)) dir = std::filesystem::canonical(guess, ec).string();
  }
  if (dir.empty()) {
    router_->SetFallback([](const http::Request& req) -> std::optional<Response> {
      if (req.path != "/") return std::nullopt;
      return Response::Text(200,
                            "<!doctype html><title>Dumont Cloud</title><h1>Dumont Cloud</h1><p>The web console is "
                            "not built (run <code>make web</code>). The API is at <a href=\"/docs\">/docs</a>.</p>",
                            "text/html; charset=utf-8");
    });
    return;
  }
  if (logger_) logger_->Info("serving the web console", {{"dir", dir}});
  router_->SetFallback([dir](const http::Request& req) { return ServeStatic(dir, req); });
}

void App::RegisterSystemRoutes() {
  router_->Add(RouteSpec{.method = "GET", .path = "/health", .summary = "Process and database health",
                         .tag = "system", .auth = Auth::kNone,
                         .response_description = "healthy (503 when the database is unreachable)"},
               [this](Context&) -> Result<Response> {
                 Status db = store_->Ping();
                 auto version = store_->SchemaVersion();
                 json j = {{"status", db.ok() ? "ok" : "degraded"},
                           {"version", DUMONT_VERSION},
                           {"commit", DUMONT_GIT_COMMIT},
                           {"uptime_s", clock_.NowUnixMillis() / 1000.0 - start_time_},
                           {"database",
                            {{"backend", store_->Backend()},
                             {"status", db.ok() ? "ok" : "unreachable"},
                             {"schema_version", version ? *version : 0}}}};
                 if (!db.ok()) j["database"]["error"] = db.message();
                 return JsonResponse(db.ok() ? 200 : 503, j);
               });
  router_->Add(RouteSpec{.method = "GET", .path = "/metrics", .summary = "Prometheus metrics",
                         .tag = "system", .auth = Auth::kNone,
                         .produces = "text/plain; version=0.0.4"},
               [this](Context&) -> Result<Response> {
                 return Response::Text(200, metrics_->Render(), "text/plain; version=0.0.4; charset=utf-8");
               });
  router_->Add(RouteSpec{.method = "GET", .path = "/api/v1/openapi.json",
                         .summary = "OpenAPI 3 description of every route", .tag = "system",
                         .auth = Auth::kNone},
               [this](Context&) -> Result<Response> {
                 return JsonResponse(200, http::OpenApiDocument(*router_, DUMONT_VERSION));
               });
  router_->Add(RouteSpec{.method = "GET", .path = "/docs", .summary = "API reference page",
                         .tag = "system", .auth = Auth::kNone, .produces = "text/html"},
               [](Context&) -> Result<Response> {
                 return Response::Text(200, DocsPageHtml(), "text/html; charset=utf-8");
               });
}

void App::RegisterAuthRoutes() {
  const std::vector<Field> credentials = {
      {"email", JsonType::kString, true, "account email"},
      {"password", JsonType::kString, true, "at least 10 characters"}};

  router_->Add(RouteSpec{.method = "POST", .path = "/api/v1/auth/register", .summary = "Create an account",
                         .tag = "auth", .auth = Auth::kNone, .body = credentials, .success_status = 201,
                         .response_description = "the new user"},
               [this](Context& c) -> Result<Response> {
                 if (!auth_->options().allow_signup) {
                   return Err(Status::PermissionDenied("sign-up is disabled on this server; ask an admin"));
                 }
                 auto u = auth_->Register(c.body["email"].get<std::string>(), c.body["password"].get<std::string>());
                 if (!u) return Err(u.error());
                 return JsonResponse(201, {{"user", UserJson(*u)}});
               });
  router_->Add(RouteSpec{.method = "POST", .path = "/api/v1/auth/login", .summary = "Log in: access and refresh tokens",
                         .tag = "auth", .auth = Auth::kNone, .body = credentials,
                         .response_description = "{access_token, refresh_token, token_type, expires_in, user}"},
               [this](Context& c) -> Result<Response> {
                 auto t = auth_->Login(c.body["email"].get<std::string>(), c.body["password"].get<std::string>(),
                                       c.request.client_address);
                 if (!t) return Err(t.error());
                 json j = TokensJson(*t);
                 return JsonResponse(200, j);
               });
  router_->Add(RouteSpec{.method = "POST", .path = "/api/v1/auth/refresh",
                         .summary = "Exchange a refresh token for new tokens (rotation; reuse revokes the session)",
                         .tag = "auth", .auth = Auth::kNone,
                         .body = {{"refresh_token", JsonType::kString, true, "from login or the last refresh"}}},
               [this](Context& c) -> Result<Response> {
                 auto t = auth_->Refresh(c.body["refresh_token"].get<std::string>());
                 if (!t) return Err(t.error());
                 return JsonResponse(200, TokensJson(*t));
               });
  // Logging out only ends the caller's own session, so readonly users may do it too.
  router_->Add(RouteSpec{.method = "POST", .path = "/api/v1/auth/logout", .summary = "End the current session",
                         .tag = "auth", .auth = Auth::kUser,
                         .body = {{"refresh_token", JsonType::kString, false, "also end this token's session"}}},
               [this](Context& c) -> Result<Response> {
                 std::optional<std::string> rt;
                 if (c.body.contains("refresh_token")) rt = c.body["refresh_token"].get<std::string>();
                 DUMONT_RETURN_IF_ERROR(auth_->Logout(ToIdentity(*c.principal), rt));
                 return JsonResponse(200, {{"logged_out", true}});
               });
  router_->Add(RouteSpec{.method = "GET", .path = "/api/v1/auth/me", .summary = "The current user",
                         .tag = "auth", .auth = Auth::kUser},
               [this](Context& c) -> Result<Response> {
                 auto u = store_->GetUser(c.principal->user_id);
                 if (!u) return Err(u.error());
                 json j = {{"user", UserJson(*u)}, {"auth", c.principal->api_key_id.empty() ? "token" : "api_key"}};
                 return JsonResponse(200, j);
               });
  router_->Add(RouteSpec{.method = "POST", .path = "/api/v1/auth/password", .summary = "Change your password (ends every session)",
                         .tag = "auth", .auth = Auth::kUser, .mutation = true,
                         .body = {{"current_password", JsonType::kString, true, ""},
                                  {"new_password", JsonType::kString, true, "at least 10 characters"}}},
               [this](Context& c) -> Result<Response> {
                 DUMONT_RETURN_IF_ERROR(auth_->ChangePassword(c.principal->user_id,
                                                              c.body["current_password"].get<std::string>(),
                                                              c.body["new_password"].get<std::string>()));
                 return JsonResponse(200, {{"changed", true}});
               });
  router_->Add(RouteSpec{.method = "GET", .path = "/api/v1/auth/api-keys", .summary = "Your active API keys",
                         .tag = "auth", .auth = Auth::kUser},
               [this](Context& c) -> Result<Response> {
                 auto keys = auth_->ListApiKeys(c.principal->user_id);
                 if (!keys) return Err(keys.error());
                 json arr = json::array();
                 for (const auto& k : *keys) arr.push_back(KeyJson(k));
                 return JsonResponse(200, {{"api_keys", arr}});
               });
  router_->Add(RouteSpec{.method = "POST", .path = "/api/v1/auth/api-keys",
                         .summary = "Create an API key (the secret is shown only in this response)", .tag = "auth",
                         .auth = Auth::kUser, .mutation = true,
                         .body = {{"name", JsonType::kString, true, "what the key is for"}}, .success_status = 201},
               [this](Context& c) -> Result<Response> {
                 auto r = auth_->CreateApiKey(c.principal->user_id, c.body["name"].get<std::string>());
                 if (!r) return Err(r.error());
                 json j = KeyJson(r->first);
                 j["key"] = r->second;
                 return JsonResponse(201, {{"api_key", j}});
               });
  router_->Add(RouteSpec{.method = "DELETE", .path = "/api/v1/auth/api-keys/{id}", .summary = "Revoke an API key",
                         .tag = "auth", .auth = Auth::kUser, .mutation = true, .owned_resource = "api_key"},
               [this](Context& c) -> Result<Response> {
                 DUMONT_RETURN_IF_ERROR(auth_->RevokeApiKey(c.principal->user_id, c.params["id"]));
                 return JsonResponse(200, {{"revoked", c.params["id"]}});
               });
  router_->Add(RouteSpec{.method = "GET", .path = "/api/v1/admin/users", .summary = "Every account (admin)",
                         .tag = "admin", .auth = Auth::kAdmin},
               [this](Context&) -> Result<Response> {
                 auto users = store_->ListUsers();
                 if (!users) return Err(users.error());
                 json arr = json::array();
                 for (const auto& u : *users) arr.push_back(UserJson(u));
                 return JsonResponse(200, {{"users", arr}});
               });
  router_->Add(RouteSpec{.method = "PATCH", .path = "/api/v1/admin/users/{id}", .summary = "Change a user's role (admin)",
                         .tag = "admin", .auth = Auth::kAdmin, .mutation = true,
                         .body = {{"role", JsonType::kString, true, "admin | user | readonly"}}},
               [this](Context& c) -> Result<Response> {
                 DUMONT_RETURN_IF_ERROR(auth_->SetRole(c.params["id"], c.body["role"].get<std::string>()));
                 auto u = store_->GetUser(c.params["id"]);
                 if (!u) return Err(u.error());
                 return JsonResponse(200, {{"user", UserJson(*u)}});
               });
}

}  // namespace dumont::api
