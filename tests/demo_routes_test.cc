// Demo mode: POST /api/v1/demo/session (src/api/demo_routes.cc) on an in-process dumontd.
#include <chrono>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "test_util.h"

namespace dumont {
namespace {

using nlohmann::json;
using testing::TestServer;

json Json(const http::ClientResponse& r) { return json::parse(r.body, nullptr, false); }

class DemoApi : public ::testing::Test {
 protected:
  void Start(bool enabled, int64_t per_hour = 30) {
    cfg_ = testing::TestConfig(dir_.path());
    cfg_.demo_enabled = enabled;
    cfg_.demo_session_ttl_s = 7200;
    cfg_.demo_sessions_per_address_per_hour = per_hour;
    server_ = std::make_unique<TestServer>(cfg_, clock_);
  }
  json Session() {
    auto r = server_->Call("POST", "/api/v1/demo/session");
    EXPECT_EQ(r.status, 200) << r.body;
    return Json(r);
  }
  size_t MarketPoints(const std::string& token) {
    auto r = server_->Call("GET", "/api/v1/metrics/market?hours=72", "", token);
    EXPECT_EQ(r.status, 200) << r.body;
    size_t n = 0;
    json body = Json(r);
    for (const auto& s : body["series"]) n += s["points"].size();
    return n;
  }

  testing::TempDir dir_;
  Config cfg_;
  FakeClock clock_{std::chrono::duration_cast<std::chrono::seconds>(
                       std::chrono::system_clock::now().time_since_epoch()).count()};
  std::unique_ptr<TestServer> server_;
};

TEST_F(DemoApi, DisabledAnswers404WithAReason) {
  Start(false);
  auto r = server_->Call("POST", "/api/v1/demo/session");
  EXPECT_EQ(r.status, 404) << r.body;
  EXPECT_NE(Json(r)["error"]["message"].get<std::string>().find("demo.enabled"), std::string::npos) << r.body;
}

TEST_F(DemoApi, EachSessionIsItsOwnUserAndSeesOnlyItsOwnData) {
  Start(true);
  json a = Session(), b = Session();
  EXPECT_EQ(a["expires_in"], 7200);
  EXPECT_EQ(a["demo"], true);
  EXPECT_EQ(a["token_type"], "bearer");
  EXPECT_TRUE(a["refresh_token"].is_string());
  std::string ta = a["access_token"], tb = b["access_token"];
  json me_a = Json(server_->Call("GET", "/api/v1/auth/me", "", ta));
  json me_b = Json(server_->Call("GET", "/api/v1/auth/me", "", tb));
  EXPECT_EQ(me_a["user"]["role"], "user");
  EXPECT_NE(me_a["user"]["id"], me_b["user"]["id"]);
  EXPECT_NE(me_a["user"]["email"].get<std::string>().find("@demo.dumont.invalid"), std::string::npos);

  auto created = server_->Call("POST", "/api/v1/instances", R"({"name":"demo-box","provider":"sim"})", ta);
  ASSERT_EQ(created.status, 201) << created.body;
  std::string id = Json(created)["instance"]["id"];
  EXPECT_EQ(Json(server_->Call("GET", "/api/v1/instances", "", ta))["instances"].size(), 1u);
  EXPECT_EQ(Json(server_->Call("GET", "/api/v1/instances", "", tb))["instances"].size(), 0u);
  EXPECT_EQ(server_->Call("GET", "/api/v1/instances/" + id, "", tb).status, 404);
}

TEST_F(DemoApi, SeedsSampleMarketHistoryOnceOnAFreshServer) {
  Start(true);
  json a = Session();
  size_t points = MarketPoints(a["access_token"]);
  EXPECT_GE(points, 48u * 12u);  // 48 hourly samples of 6 models on 2 providers (+ the sim monitor's own)
  const json summary = Json(server_->Call("GET", "/api/v1/metrics/market/summary", "", a["access_token"].get<std::string>()));
  bool h100 = false;
  for (const auto& g : summary["gpus"]) h100 |= g["gpu"] == "H100 SXM";
  EXPECT_TRUE(h100) << summary.dump();
  json b = Session();
  EXPECT_EQ(MarketPoints(b["access_token"]), points);  // not seeded twice
}

TEST_F(DemoApi, DoesNotSeedWhenTheServerHasHistory) {
  Start(true);
  store::MarketSnapshot s;
  s.sampled_at = clock_.NowUnix() - 7200;
  s.provider = "vast";
  s.gpu = "RTX 4090";
  s.vram_gb = 24;
  s.min_price = s.avg_price = s.max_price = 0.4;
  s.offers = s.available_gpus = 1;
  s.avg_reliability = 0.9;
  ASSERT_TRUE(server_->app().store().AddMarketSnapshots({s}).ok());
  json a = Session();
  auto r = Json(server_->Call("GET", "/api/v1/metrics/market?provider=vast&hours=72", "", a["access_token"].get<std::string>()));
  ASSERT_EQ(r["series"].size(), 1u) << r.dump();
  EXPECT_EQ(r["series"][0]["points"].size(), 1u);
}

TEST_F(DemoApi, EverythingOfADemoAccountEndsWithItsLifetime) {
  Start(true);
  json a = Session();
  std::string ta = a["access_token"], rt = a["refresh_token"];
  auto key = server_->Call("POST", "/api/v1/auth/api-keys", R"({"name":"k"})", ta);
  ASSERT_EQ(key.status, 201) << key.body;
  std::string api_key = Json(key)["api_key"]["key"];
  auto inst = server_->Call("POST", "/api/v1/instances", R"({"name":"demo-box","provider":"sim"})", ta);
  ASSERT_EQ(inst.status, 201) << inst.body;
  // A normal account on the same server is unaffected.
  ASSERT_EQ(server_->Call("POST", "/api/v1/auth/register", R"({"email":"real@example.com","password":"correct horse"})").status, 201);
  std::string real = Json(server_->Call("POST", "/api/v1/auth/login", R"({"email":"real@example.com","password":"correct horse"})"))["access_token"];

  clock_.Advance(std::chrono::seconds(7000));
  // A refresh inside the lifetime works, but the access token it gives ends with the account.
  auto refreshed = server_->Call("POST", "/api/v1/auth/refresh", json{{"refresh_token", rt}}.dump());
  ASSERT_EQ(refreshed.status, 200) << refreshed.body;
  std::string ta2 = Json(refreshed)["access_token"];
  EXPECT_EQ(server_->Call("GET", "/api/v1/auth/me", "", ta2).status, 200);

  clock_.Advance(std::chrono::seconds(201));
  EXPECT_EQ(server_->Call("GET", "/api/v1/auth/me", "", ta).status, 401);  // its own exp has passed too
  // The refreshed access token (the server's usual 24 h) and the API key end with the account.
  for (const auto& t : {ta2, api_key}) {
    auto r = server_->Call("GET", "/api/v1/auth/me", "", t);
    EXPECT_EQ(r.status, 401) << r.body;
    EXPECT_NE(r.body.find("demo session has ended"), std::string::npos) << r.body;
  }
  EXPECT_EQ(server_->Call("GET", "/api/v1/auth/me", "", real).status, 200);
  // Its machine is on its way out.
  auto users = server_->app().store().ListUsers();
  ASSERT_TRUE(users);
  for (const auto& u : *users) {
    if (u.email.find("@demo.dumont.invalid") == std::string::npos) continue;
    auto mine = server_->app().fleet().List(u.id);
    ASSERT_TRUE(mine);
    for (const auto& i : *mine) EXPECT_EQ(i.desired, "destroyed") << i.id;
  }
}

TEST_F(DemoApi, SessionsPerAddressAreLimited) {
  Start(true, 2);
  Session();
  Session();
  auto r = server_->Call("POST", "/api/v1/demo/session");
  EXPECT_EQ(r.status, 429) << r.body;
}

}  // namespace
}  // namespace dumont
