// Walks every route in the router with the abuse a public API gets: no token, other users' tokens,
// readonly tokens, tampered/expired/alg-none JWTs, malformed JSON, wrong types, missing and unknown
// fields, oversized bodies. The route table is the source, so a new route is covered the day it lands
// (an owned route without a creator below fails the test).
#include <fstream>
#include <functional>
#include <map>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "auth/crypto.h"
#include "common/random.h"
#include "test_util.h"

namespace dumont {
namespace {

using nlohmann::json;
using testing::TestServer;

class Api : public ::testing::Test {
 protected:
  void SetUp() override {
    cfg_ = testing::TestConfig(dir_.path());
    server_ = std::make_unique<TestServer>(cfg_, clock_);
    auto admin = server_->app().auth().EnsureInitialAdmin();
    ASSERT_TRUE(admin && admin->has_value());
    admin_ = Login((*admin)->first, (*admin)->second);
    alice_ = RegisterAndLogin("alice@example.com");
    bob_ = RegisterAndLogin("bob@example.com");
    reader_ = RegisterAndLogin("reader@example.com");
    auto me = Json(server_->Call("GET", "/api/v1/auth/me", "", reader_));
    auto r = server_->Call("PATCH", "/api/v1/admin/users/" + me["user"]["id"].get<std::string>(),
                           R"({"role":"readonly"})", admin_);
    ASSERT_EQ(r.status, 200) << r.body;
  }

  static json Json(const http::ClientResponse& r) { return json::parse(r.body, nullptr, false); }

  std::string Login(const std::string& email, const std::string& pw = "correct horse") {
    auto r = server_->Call("POST", "/api/v1/auth/login", json{{"email", email}, {"password", pw}}.dump());
    EXPECT_EQ(r.status, 200) << r.body;
    return Json(r).value("access_token", "");
  }
  std::string RegisterAndLogin(const std::string& email) {
    auto r = server_->Call("POST", "/api/v1/auth/register", json{{"email", email}, {"password", "correct horse"}}.dump());
    EXPECT_EQ(r.status, 201) << r.body;
    return Login(email);
  }
  std::string SigningKey() {
    std::ifstream in(dir_ / "jwt-signing.key");
    std::string hex, key;
    std::getline(in, hex);
    HexDecode(hex, &key);
    return key;
  }
  void ExpectError(const http::ClientResponse& r, int status, const std::string& what,
                   const std::string& field = "") {
    EXPECT_EQ(r.status, status) << what << ": " << r.body;
    json j = Json(r);
    ASSERT_TRUE(j.is_object() && j.contains("error")) << what << ": " << r.body;
    EXPECT_TRUE(j["error"]["code"].is_string()) << what;
    EXPECT_FALSE(j["error"]["message"].get<std::string>().empty()) << what;
    if (!field.empty()) {
      EXPECT_EQ(j["error"].value("field", ""), field) << what << ": " << r.body;
    }
  }
  void ExpectAlive() {
    auto h = server_->Call("GET", "/health");
    ASSERT_EQ(h.status, 200);
  }

  testing::TempDir dir_;
  Config cfg_;
  RealClock clock_;
  std::unique_ptr<TestServer> server_;
  std::string admin_, alice_, bob_, reader_;
};

json SampleValue(http::JsonType t) {
  switch (t) {
    case http::JsonType::kString: return "sample";
    case http::JsonType::kInteger: return 1;
    case http::JsonType::kNumber: return 1.5;
    case http::JsonType::kBoolean: return true;
    case http::JsonType::kObject: return json::object();
    case http::JsonType::kArray: return json::array();
  }
  return nullptr;
}
json WrongValue(http::JsonType t) {
  return t == http::JsonType::kString ? json(12345) : json("not-the-right-type");
}

TEST_F(Api, ProviderCredentialsAreWriteOnlySealedAndPrivate) {
  const std::string secret = "vast-secret-0123456789abcdef";
  auto put = server_->Call("PUT", "/api/v1/settings/providers/vast", json{{"api_key", secret}}.dump(), alice_);
  ASSERT_EQ(put.status, 200) << put.body;
  EXPECT_EQ(put.body.find(secret), std::string::npos) << "never returned";
  EXPECT_EQ(Json(put)["hint"], "...cdef");
  auto mine = server_->Call("GET", "/api/v1/settings/providers", "", alice_);
  EXPECT_EQ(mine.body.find(secret), std::string::npos);
  bool configured = false;
  json mine_j = Json(mine), bobs = Json(server_->Call("GET", "/api/v1/settings/providers", "", bob_));
  for (const auto& p : mine_j["providers"]) {
    if (p["provider"] == "vast") configured = p["configured"];
  }
  EXPECT_TRUE(configured);
  ASSERT_FALSE(bobs["providers"].empty());
  for (const auto& p : bobs["providers"]) {
    EXPECT_FALSE(p["configured"].get<bool>()) << "bob sees none of alice's credentials: " << p.dump();
  }
  // Sealed at rest: the database row holds no plaintext, and it does not open for another account.
  std::string alice_id = Json(server_->Call("GET", "/api/v1/auth/me", "", alice_))["user"]["id"];
  auto row = server_->app().store().GetCredential(alice_id, "vast");
  ASSERT_TRUE(row) << alice_id << ": " << row.error().ToString();
  EXPECT_EQ(row->sealed.find(secret), std::string::npos);
  // Wrong fields and unknown providers are clear 400/404s.
  ExpectError(server_->Call("PUT", "/api/v1/settings/providers/vast", R"({"api_key":""})", alice_), 400, "empty key", "api_key");
  ExpectError(server_->Call("PUT", "/api/v1/settings/providers/vast", R"({"project":"p"})", alice_), 400, "field of another provider", "project");
  ExpectError(server_->Call("PUT", "/api/v1/settings/providers/gce", R"({"service_account_json":"{}"})", alice_), 400,
              "not a key file", "service_account_json");
  ExpectError(server_->Call("PUT", "/api/v1/settings/providers/nope", R"({"api_key":"x"})", alice_), 404, "unknown provider");
  ExpectError(server_->Call("PUT", "/api/v1/settings/providers/vast", json{{"api_key", secret}}.dump(), reader_), 403, "readonly");
  ASSERT_EQ(server_->Call("DELETE", "/api/v1/settings/providers/vast", "", alice_).status, 200);
  ExpectError(server_->Call("DELETE", "/api/v1/settings/providers/vast", "", alice_), 404, "already gone");
}

TEST_F(Api, DeployEventsStreamAsServerSentEvents) {
  auto r = server_->Call("POST", "/api/v1/deploys",
                         R"({"name":"sse","provider":"sim","strategy":{"batch_size":2,"max_batches":1,"batch_timeout_s":1}})", alice_);
  ASSERT_EQ(r.status, 202) << r.body;
  std::string id = Json(r)["deploy"]["id"];
  ExpectError(server_->Call("POST", "/api/v1/deploys", R"({"name":"x","strategy":{"batch_size":99}})", alice_), 400,
              "batch too large", "strategy.batch_size");
  // Sim machines have no agent: the batch times out after 1 s and the deploy fails; the stream ends.
  auto sse = server_->Call("GET", "/api/v1/deploys/" + id + "/events", "", alice_);
  EXPECT_EQ(sse.status, 200);
  EXPECT_EQ(sse.headers["content-type"], "text/event-stream");
  EXPECT_NE(sse.body.find("id: 1\nevent: deploy_started\ndata: {"), std::string::npos) << sse.body;
  EXPECT_NE(sse.body.find("event: machine_created"), std::string::npos) << sse.body;
  EXPECT_NE(sse.body.find("event: deploy_failed"), std::string::npos) << sse.body;
  auto j = Json(server_->Call("GET", "/api/v1/deploys/" + id + "/events?format=json&after=1", "", alice_));
  EXPECT_EQ(j["state"], "failed");
  EXPECT_EQ(j["events"][0]["seq"], 2);
  ExpectError(server_->Call("GET", "/api/v1/deploys/" + id + "/events?after=-3", "", alice_), 400, "bad after", "after");
  ExpectError(server_->Call("GET", "/api/v1/deploys/" + id + "/events", "", bob_), 404, "another user's deploy");
  auto d = Json(server_->Call("GET", "/api/v1/deploys/" + id, "", alice_))["deploy"];
  EXPECT_EQ(d["machines"].size(), 2u);
  EXPECT_GT(d["total_cost_usd"].get<double>(), 0);
}

TEST_F(Api, EveryRouteRejectsAbuseAndTheServerStaysUp) {
  // Owned resources, created as alice; {id} of owned routes points at them.
  std::map<std::string, std::function<std::string()>> creators = {
      {"instance", [&] {
         // The sim provider: no real machine or agent process is started by the walk.
         auto r = server_->Call("POST", "/api/v1/instances", R"({"name":"walk","provider":"sim"})", alice_);
         EXPECT_EQ(r.status, 201) << r.body;
         return Json(r)["instance"]["id"].get<std::string>();
       }},
      {"deploy", [&] {
         auto r = server_->Call("POST", "/api/v1/deploys", R"({"name":"walk","provider":"sim"})", alice_);
         EXPECT_EQ(r.status, 202) << r.body;
         return Json(r)["deploy"]["id"].get<std::string>();
       }},
      {"api_key", [&] {
         auto r = server_->Call("POST", "/api/v1/auth/api-keys", R"({"name":"walk"})", alice_);
         EXPECT_EQ(r.status, 201) << r.body;
         return Json(r)["api_key"]["id"].get<std::string>();
       }},
  };
  std::string key = SigningKey();
  ASSERT_EQ(key.size(), 32u);
  int64_t now = clock_.NowUnix();
  auto alice_claims = auth::VerifyJwt(alice_, key, now);
  ASSERT_TRUE(alice_claims);
  json expired_claims = *alice_claims;
  expired_claims["exp"] = now - 10;
  const std::string expired = auth::SignJwt(expired_claims, key);
  std::string tampered = alice_;
  tampered[tampered.size() - 3] = tampered[tampered.size() - 3] == 'A' ? 'B' : 'A';
  const std::string alg_none = Base64UrlEncode(R"({"alg":"none","typ":"JWT"})") + "." +
                               Base64UrlEncode(alice_claims->dump()) + ".";
  std::string forged_other_key = auth::SignJwt(*alice_claims, std::string(32, 'z'));

  const std::string big(2 * 1024 * 1024, 'x');
  int routes = 0;
  for (const auto& route : server_->app().router().routes()) {
    const auto& s = route.spec;
    ++routes;
    SCOPED_TRACE(s.method + " " + s.path);
    std::string path = s.path;
    std::string owned_id;
    if (!s.owned_resource.empty()) {
      ASSERT_TRUE(creators.count(s.owned_resource)) << "no creator for owned resource " << s.owned_resource;
      owned_id = creators[s.owned_resource]();
    }
    // Fill path parameters.
    for (size_t b; (b = path.find('{')) != std::string::npos;) {
      path.replace(b, path.find('}', b) - b + 1, owned_id.empty() ? "x_missing" : owned_id);
    }

    json valid = json::object();
    for (const auto& f : s.body) valid[f.name] = SampleValue(f.type);
    const std::string valid_body = s.body.empty() ? "" : valid.dump();

    if (s.auth != http::Auth::kNone) {
      ExpectError(server_->Call(s.method, path, valid_body), 401, "no token");
      ExpectError(server_->Call(s.method, path, valid_body, tampered), 401, "tampered JWT");
      ExpectError(server_->Call(s.method, path, valid_body, expired), 401, "expired JWT");
      ExpectError(server_->Call(s.method, path, valid_body, alg_none), 401, "alg none");
      ExpectError(server_->Call(s.method, path, valid_body, forged_other_key), 401, "JWT signed with another key");
      ExpectError(server_->Call(s.method, path, valid_body, "dk_not_a_real_key"), 401, "unknown API key");
      // The /api alias answers the same.
      if (path.rfind("/api/v1/", 0) == 0) {
        ExpectError(server_->Call(s.method, "/api/" + path.substr(8), valid_body), 401, "alias without token");
      }
    }
    if (s.auth == http::Auth::kAdmin) {
      ExpectError(server_->Call(s.method, path, valid_body, alice_), 403, "non-admin on admin route");
    }
    if (s.mutation) {
      ExpectError(server_->Call(s.method, path, valid_body, reader_), 403, "readonly on mutation");
    }
    if (!s.owned_resource.empty()) {
      ExpectError(server_->Call(s.method, path, valid_body, bob_), 404, "another user's resource");
      ExpectError(server_->Call(s.method, path, valid_body, admin_), 404, "admin on another user's resource");
    }
    const std::string& good = s.auth == http::Auth::kAdmin ? admin_ : alice_;
    const std::string token = s.auth == http::Auth::kNone ? "" : good;
    if (!s.body.empty()) {
      ExpectError(server_->Call(s.method, path, "{\"email\": ", token), 400, "malformed JSON");
      ExpectError(server_->Call(s.method, path, "[1,2]", token), 400, "array body");
      ExpectError(server_->Call(s.method, path, "\xff\xfe{}", token), 400, "invalid UTF-8");
      for (const auto& f : s.body) {
        json wrong = valid;
        wrong[f.name] = WrongValue(f.type);
        ExpectError(server_->Call(s.method, path, wrong.dump(), token), 400, "wrong type of " + f.name, f.name);
        if (f.required) {
          json missing = valid;
          missing.erase(f.name);
          ExpectError(server_->Call(s.method, path, missing.dump(), token), 400, "missing " + f.name, f.name);
        }
      }
      json extra = valid;
      extra["surprise"] = 1;
      ExpectError(server_->Call(s.method, path, extra.dump(), token), 400, "unknown field", "surprise");
    }
    ExpectError(server_->Call(s.method, path, big, token), 413, "oversized body");
    ExpectAlive();
  }
  EXPECT_GE(routes, 35);

  // The owned resources survived other users' attempts.
  auto keys = Json(server_->Call("GET", "/api/v1/auth/api-keys", "", alice_));
  EXPECT_EQ(keys["api_keys"].size(), 1u) << keys.dump();
}

TEST_F(Api, UnknownRoutesAndMethods) {
  ExpectError(server_->Call("GET", "/api/v1/nothing-here"), 404, "unknown route");
  auto r = server_->Call("PUT", "/health");
  EXPECT_EQ(r.status, 405);
  EXPECT_NE(r.headers["allow"].find("GET"), std::string::npos);
  ExpectError(server_->Call("GET", "/api/v1/%zz"), 400, "bad percent-encoding");
}

TEST_F(Api, OpenApiListsExactlyTheRouterRoutes) {
  auto r = server_->Call("GET", "/api/v1/openapi.json");
  ASSERT_EQ(r.status, 200);
  json doc = Json(r);
  EXPECT_EQ(doc["openapi"], "3.0.3");
  size_t ops = 0;
  for (const auto& [path, methods] : doc["paths"].items()) ops += methods.size();
  EXPECT_EQ(ops, server_->app().router().routes().size());
  for (const auto& route : server_->app().router().routes()) {
    const auto& s = route.spec;
    std::string m = s.method;
    for (auto& c : m) c = static_cast<char>(std::tolower(c));
    SCOPED_TRACE(s.method + " " + s.path);
    ASSERT_TRUE(doc["paths"].contains(s.path));
    ASSERT_TRUE(doc["paths"][s.path].contains(m));
    const json& op = doc["paths"][s.path][m];
    EXPECT_FALSE(op["summary"].get<std::string>().empty());
    EXPECT_EQ(op["security"].empty(), s.auth == http::Auth::kNone);
    EXPECT_TRUE(op["responses"].contains(std::to_string(s.success_status)));
    if (s.body.empty()) {
      EXPECT_FALSE(op.contains("requestBody"));
    } else {
      const json& props = op["requestBody"]["content"]["application/json"]["schema"]["properties"];
      EXPECT_EQ(props.size(), s.body.size());
      for (const auto& f : s.body) EXPECT_TRUE(props.contains(f.name)) << f.name;
    }
  }
  auto docs = server_->Call("GET", "/docs");
  EXPECT_EQ(docs.status, 200);
  EXPECT_EQ(docs.headers["content-type"].rfind("text/html", 0), 0u);
  EXPECT_NE(docs.body.find("/api/v1/openapi.json"), std::string::npos);
}

TEST_F(Api, AuthFlowOverHttp) {
  // Register validation names the field.
  ExpectError(server_->Call("POST", "/api/v1/auth/register", R"({"email":"nope","password":"correct horse"})"), 400,
              "bad email", "email");
  ExpectError(server_->Call("POST", "/api/v1/auth/register", R"({"email":"z@example.com","password":"short"})"), 400,
              "short password", "password");
  ExpectError(server_->Call("POST", "/api/v1/auth/register", R"({"email":"ALICE@example.com","password":"correct horse"})"),
              409, "duplicate");

  auto login = server_->Call("POST", "/api/v1/auth/login", R"({"email":"alice@example.com","password":"correct horse"})");
  ASSERT_EQ(login.status, 200);
  json t = Json(login);
  EXPECT_EQ(t["token_type"], "bearer");
  EXPECT_EQ(t["expires_in"], 24 * 3600);
  EXPECT_FALSE(t["refresh_token"].get<std::string>().empty());

  auto me = Json(server_->Call("GET", "/api/v1/auth/me", "", t["access_token"]));
  EXPECT_EQ(me["user"]["email"], "alice@example.com");
  EXPECT_FALSE(me["user"].contains("password_hash"));

  auto refreshed = server_->Call("POST", "/api/v1/auth/refresh", json{{"refresh_token", t["refresh_token"]}}.dump());
  ASSERT_EQ(refreshed.status, 200) << refreshed.body;
  json t2 = Json(refreshed);
  ExpectError(server_->Call("POST", "/api/v1/auth/refresh", json{{"refresh_token", t["refresh_token"]}}.dump()), 401,
              "reused refresh token");
  ExpectError(server_->Call("GET", "/api/v1/auth/me", "", t2["access_token"]), 401, "family revoked by reuse");

  // API keys: secret shown once, works as a bearer, never listed.
  auto created = server_->Call("POST", "/api/v1/auth/api-keys", R"({"name":"ci"})", alice_);
  ASSERT_EQ(created.status, 201);
  std::string secret = Json(created)["api_key"]["key"];
  auto via_key = server_->Call("GET", "/api/v1/auth/me", "", secret);
  ASSERT_EQ(via_key.status, 200);
  EXPECT_EQ(Json(via_key)["auth"], "api_key");
  auto listed = server_->Call("GET", "/api/v1/auth/api-keys", "", alice_);
  EXPECT_EQ(listed.body.find(secret), std::string::npos);
  // Readonly users cannot create keys but can read.
  ExpectError(server_->Call("POST", "/api/v1/auth/api-keys", R"({"name":"x"})", reader_), 403, "readonly");
  EXPECT_EQ(server_->Call("GET", "/api/v1/auth/me", "", reader_).status, 200);

  // Logout ends the session.
  std::string fresh = Login("bob@example.com");
  EXPECT_EQ(server_->Call("POST", "/api/v1/auth/logout", "", fresh).status, 200);
  ExpectError(server_->Call("GET", "/api/v1/auth/me", "", fresh), 401, "after logout");

  // Throttling: 429 with Retry-After over HTTP.
  http::ClientResponse last;
  for (int i = 0; i < 6; ++i) {
    last = server_->Call("POST", "/api/v1/auth/login", R"({"email":"bob@example.com","password":"wrong password"})");
  }
  ExpectError(last, 429, "throttled");
  EXPECT_GT(std::stoi(last.headers["retry-after"]), 0);
}

TEST_F(Api, MetricsCountRequestsByRouteAndCode) {
  server_->Call("GET", "/api/v1/auth/me");
  auto m = server_->Call("GET", "/metrics");
  ASSERT_EQ(m.status, 200);
  EXPECT_NE(m.body.find("dumont_http_requests_total{method=\"GET\",route=\"/api/v1/auth/me\",code=\"401\"}"),
            std::string::npos);
  EXPECT_NE(m.body.find("dumont_http_request_duration_seconds_bucket"), std::string::npos);
  EXPECT_NE(m.body.find("dumont_build_info{"), std::string::npos);
}

}  // namespace
}  // namespace dumont

namespace dumont {
namespace {

TEST(WebConsole, ServesTheBuiltAppWithClientRoutesAndNothingOutside) {
  testing::TempDir dir;
  std::filesystem::create_directories(dir / "web/assets");
  std::ofstream(dir / "web/index.html") << "<!doctype html><div id=root></div>";
  std::ofstream(dir / "web/assets/app-1234.js") << "console.log(1)";
  std::ofstream(dir / "secret.txt") << "do not serve";
  Config cfg = testing::TestConfig(dir / "data");
  cfg.web_dir = dir / "web";
  RealClock clock;
  testing::TestServer server(cfg, clock);
  auto index = server.Call("GET", "/");
  EXPECT_EQ(index.status, 200);
  EXPECT_NE(index.body.find("id=root"), std::string::npos);
  EXPECT_EQ(index.headers["cache-control"], "no-cache");
  auto route = server.Call("GET", "/machines/ins_123");
  EXPECT_EQ(route.status, 200);
  EXPECT_NE(route.body.find("id=root"), std::string::npos) << "client-side routes get the app";
  auto js = server.Call("GET", "/assets/app-1234.js");
  EXPECT_EQ(js.status, 200);
  EXPECT_EQ(js.headers["content-type"].rfind("text/javascript", 0), 0u);
  EXPECT_NE(js.headers["cache-control"].find("immutable"), std::string::npos);
  EXPECT_EQ(server.Call("GET", "/assets/missing.js").status, 404);
  EXPECT_EQ(server.Call("GET", "/../secret.txt").status, 404);
  EXPECT_EQ(server.Call("GET", "/assets/%2e%2e/%2e%2e/secret.txt").status, 404);
  auto api = server.Call("GET", "/api/v1/nothing");
  EXPECT_EQ(api.status, 404);
  EXPECT_NE(api.body.find("\"error\""), std::string::npos) << "API paths never fall back to the app";
}

}  // namespace
}  // namespace dumont
