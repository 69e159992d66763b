// The market routes over HTTP on an in-process dumontd: samples are seeded through the store (the
// monitor is off) and every route's JSON is checked, then the query-parameter 400s; one test runs the
// real monitor on the sim provider.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "test_util.h"

namespace dumont {
namespace {

using nlohmann::json;
using store::MarketSnapshot;

MarketSnapshot S(int64_t t, const std::string& provider, const std::string& gpu, double vram, double min, double avg,
                 double max, int64_t offers, int64_t gpus, double rel, std::optional<double> spot = std::nullopt) {
  return MarketSnapshot{t, provider, gpu, vram, min, avg, max, offers, gpus, rel, spot};
}

class MarketRoutes : public ::testing::Test {
 protected:
  void SetUp() override {
    cfg_ = testing::TestConfig(dir_.path());
    cfg_.market_enabled = false;  // the samples below are the whole market
    server_ = std::make_unique<testing::TestServer>(cfg_, clock_);
    auto r = server_->Call("POST", "/api/v1/auth/register", R"({"email":"m@example.com","password":"correct horse"})");
    ASSERT_EQ(r.status, 201) << r.body;
    auto l = server_->Call("POST", "/api/v1/auth/login", R"({"email":"m@example.com","password":"correct horse"})");
    ASSERT_EQ(l.status, 200) << l.body;
    token_ = json::parse(l.body)["access_token"];

    // vast is sampled at old, mid and new; runpod's samples failed after mid, so its mid sample is
    // still its current one. vast's A100 was on offer 25 h ago only.
    now_ = clock_.NowUnix();
    old_ = now_ - 25 * 3600;
    mid_ = now_ - 2 * 3600;
    new_ = now_ - 60;
    ASSERT_TRUE(server_->app()
                    .store()
                    .AddMarketSnapshots({
                        S(old_, "vast", "RTX 4090", 24, 0.40, 0.50, 0.60, 10, 12, 0.95, 0.20),
                        S(old_, "vast", "A100 SXM4 80GB", 80, 1.20, 1.40, 1.60, 4, 16, 0.90),
                        S(old_, "runpod", "RTX 4090", 24, 0.50, 0.55, 0.60, 4, 4, 0.99),
                        S(mid_, "vast", "RTX 4090", 24, 0.35, 0.48, 0.65, 12, 15, 0.96, 0.15),
                        S(mid_, "runpod", "RTX 4090", 24, 0.44, 0.50, 0.60, 5, 5, 0.99),
                        S(mid_, "runpod", "H100 SXM", 80, 2.00, 2.50, 3.00, 2, 16, 0.98, 1.20),
                        S(new_, "vast", "RTX 4090", 24, 0.30, 0.45, 0.70, 14, 20, 0.97, 0.12),
                        S(new_, "vast", "RTX 3090", 24, 0.20, 0.25, 0.30, 6, 6, 0.90),
                    })
                    .ok());
  }
  json Get(const std::string& path, int want = 200) {
    auto r = server_->Call("GET", path, "", token_);
    EXPECT_EQ(r.status, want) << path << ": " << r.body;
    return json::parse(r.body, nullptr, false);
  }
  void Expect400(const std::string& path, const std::string& field, const std::string& message_has) {
    json e = Get(path, 400);
    EXPECT_EQ(e["error"].value("field", ""), field) << path << ": " << e.dump();
    EXPECT_NE(e["error"]["message"].get<std::string>().find(message_has), std::string::npos) << path << ": " << e.dump();
  }
  static const json& Find(const json& arr, const std::string& key, const std::string& value) {
    for (const auto& x : arr) {
      if (x[key] == value) return x;
    }
    static const json kNone;
    ADD_FAILURE() << key << "=" << value << " not in " << arr.dump();
    return kNone;
  }

  testing::TempDir dir_;
  Config cfg_;
  RealClock clock_;
  std::unique_ptr<testing::TestServer> server_;
  std::string token_;
  int64_t now_ = 0, old_ = 0, mid_ = 0, new_ = 0;
};

TEST_F(MarketRoutes, HistoryIsOneSeriesPerProviderAndGpu) {
  json h = Get("/api/v1/metrics/market");
  EXPECT_EQ(h["hours"], 24);
  EXPECT_TRUE(h["gpu"].is_null());
  EXPECT_FALSE(h["truncated"]);
  std::vector<std::pair<std::string, std::string>> keys;
  for (const auto& s : h["series"]) keys.emplace_back(s["gpu"], s["provider"]);
  EXPECT_EQ(keys, (std::vector<std::pair<std::string, std::string>>{
                      {"H100 SXM", "runpod"}, {"RTX 3090", "vast"}, {"RTX 4090", "runpod"}, {"RTX 4090", "vast"}}));
  EXPECT_EQ(h["series"][3]["points"].size(), 2u) << "the 25 h old sample is outside 24 h";

  json v = Get("/api/v1/metrics/market?gpu=GeForce%20RTX%204090&provider=vast&hours=26");
  EXPECT_EQ(v["gpu"], "RTX 4090");
  EXPECT_EQ(v["provider"], "vast");
  ASSERT_EQ(v["series"].size(), 1u);
  const json& pts = v["series"][0]["points"];
  ASSERT_EQ(pts.size(), 3u);
  EXPECT_EQ(pts[0]["t"], old_);
  EXPECT_EQ(pts[2]["t"], new_);
  EXPECT_DOUBLE_EQ(pts[2]["min_price"].get<double>(), 0.30);
  EXPECT_DOUBLE_EQ(pts[2]["avg_price"].get<double>(), 0.45);
  EXPECT_DOUBLE_EQ(pts[2]["max_price"].get<double>(), 0.70);
  EXPECT_EQ(pts[2]["offers"], 14);
  EXPECT_EQ(pts[2]["available_gpus"], 20);
  EXPECT_DOUBLE_EQ(pts[2]["avg_reliability"].get<double>(), 0.97);
  EXPECT_DOUBLE_EQ(pts[0]["spot_min_price"].get<double>(), 0.20);

  json limited = Get("/api/v1/metrics/market?gpu=rtx_4090&hours=26&limit=2");
  EXPECT_TRUE(limited["truncated"]);
  size_t points = 0;
  for (const auto& s : limited["series"]) points += s["points"].size();
  EXPECT_EQ(points, 2u);

  EXPECT_TRUE(Get("/api/v1/metrics/market?gpu=B200")["series"].empty());
  EXPECT_TRUE(Get("/api/v1/metrics/market?gpu=&provider=")["series"].size() == 4u) << "empty filters are no filters";
}

TEST_F(MarketRoutes, SummaryIsTheCurrentMarketWithTheChangeOver24Hours) {
  json s = Get("/api/v1/metrics/market/summary");
  ASSERT_EQ(s["gpus"].size(), 3u) << "A100 is not in vast's newest sample: no longer offered";
  const json& g = Find(s["gpus"], "gpu", "RTX 4090");
  EXPECT_DOUBLE_EQ(g["min_price"].get<double>(), 0.30);
  EXPECT_DOUBLE_EQ(g["max_price"].get<double>(), 0.70);
  EXPECT_NEAR(g["avg_price"].get<double>(), (0.45 * 14 + 0.50 * 5) / 19, 1e-9) << "weighted by offers";
  EXPECT_EQ(g["offers"], 19);
  EXPECT_EQ(g["available_gpus"], 25);
  EXPECT_DOUBLE_EQ(g["vram_gb"].get<double>(), 24);
  ASSERT_TRUE(g["change_24h"].is_object()) << g.dump();
  EXPECT_EQ(g["change_24h"]["since"], old_);
  EXPECT_NEAR(g["change_24h"]["min_price"].get<double>(), -0.10, 1e-9);
  EXPECT_NEAR(g["change_24h"]["avg_price_pct"].get<double>(), -9.9, 1e-9);
  ASSERT_EQ(g["providers"].size(), 2u);
  const json& rp = Find(g["providers"], "provider", "runpod");
  EXPECT_EQ(rp["sampled_at"], mid_) << "runpod's newest sample, though older than vast's";
  EXPECT_TRUE(rp["spot_min_price"].is_null());
  EXPECT_NEAR(rp["change_24h"]["avg_price_pct"].get<double>(), -9.1, 1e-9);
  const json& vp = Find(g["providers"], "provider", "vast");
  EXPECT_DOUBLE_EQ(vp["spot_min_price"].get<double>(), 0.12);
  EXPECT_NEAR(vp["change_24h"]["avg_price"].get<double>(), -0.05, 1e-9);
  EXPECT_TRUE(Find(s["gpus"], "gpu", "H100 SXM")["change_24h"].is_null()) << "no sample 24 h ago";
}

TEST_F(MarketRoutes, GpusListsModelsWithVramAndTheCheapestProvider) {
  json g = Get("/api/v1/metrics/gpus");
  ASSERT_EQ(g["gpus"].size(), 3u);
  EXPECT_EQ(g["gpus"][0]["gpu"], "H100 SXM");  // ordered by model key
  EXPECT_EQ(g["gpus"][0]["vram_gb"], 80);
  EXPECT_EQ(g["gpus"][0]["cheapest"], (json{{"provider", "runpod"}, {"price", 2.0}}));
  const json& r = g["gpus"][2];
  EXPECT_EQ(r["gpu"], "RTX 4090");
  EXPECT_EQ(r["providers"], json::array({"runpod", "vast"}));
  EXPECT_EQ(r["cheapest"]["provider"], "vast");
  EXPECT_DOUBLE_EQ(r["cheapest"]["price"].get<double>(), 0.30);
  EXPECT_EQ(r["available_gpus"], 25);
  EXPECT_EQ(r["sampled_at"], new_);
}

TEST_F(MarketRoutes, SpotMonitorAndSavings) {
  json m = Get("/api/v1/metrics/spot/monitor");
  ASSERT_EQ(m["gpus"].size(), 3u);
  const json& r = Find(m["gpus"], "gpu", "RTX 4090");
  EXPECT_EQ(r["on_demand"]["provider"], "vast");
  EXPECT_DOUBLE_EQ(r["spot"]["price"].get<double>(), 0.12);
  EXPECT_NEAR(r["spot_discount_pct"].get<double>(), 60.0, 1e-9);
  const json& n = Find(m["gpus"], "gpu", "RTX 3090");
  EXPECT_TRUE(n["spot"].is_null());
  EXPECT_TRUE(n["spot_discount_pct"].is_null());

  json s = Get("/api/v1/metrics/spot/savings");
  EXPECT_EQ(s["hours_per_month"], 730);
  ASSERT_EQ(s["gpus"].size(), 2u) << "only models with a spot offer";
  const json& h = s["gpus"][0];  // the largest monthly saving first
  EXPECT_EQ(h["gpu"], "H100 SXM");
  EXPECT_NEAR(h["savings_per_hour"].get<double>(), 0.80, 1e-9);
  EXPECT_NEAR(h["savings_per_month"].get<double>(), 584.0, 1e-9);
  EXPECT_NEAR(h["savings_pct"].get<double>(), 40.0, 1e-9);
  EXPECT_EQ(h["spot"]["provider"], "runpod");
  const json& x = s["gpus"][1];
  EXPECT_EQ(x["gpu"], "RTX 4090");
  EXPECT_NEAR(x["savings_per_month"].get<double>(), 131.4, 1e-9);
}

TEST_F(MarketRoutes, AvailabilityTrendOverTheWindow) {
  json a = Get("/api/v1/metrics/spot/availability");
  EXPECT_EQ(a["hours"], 24);
  ASSERT_EQ(a["gpus"].size(), 3u);
  const json& r = Find(a["gpus"], "gpu", "RTX 4090");
  EXPECT_EQ(r["offers"], 19);
  EXPECT_EQ(r["available_gpus"], 25);
  ASSERT_EQ(r["series"].size(), 2u);
  EXPECT_EQ(r["series"][0], (json{{"t", mid_}, {"offers", 17}, {"available_gpus", 20}}));
  EXPECT_EQ(r["series"][1], (json{{"t", new_}, {"offers", 14}, {"available_gpus", 20}}));
  EXPECT_EQ(r["change"], (json{{"offers", 2}, {"available_gpus", 5}}));
  EXPECT_EQ(r["trend"], "rising");
  EXPECT_EQ(Find(a["gpus"], "gpu", "RTX 3090")["trend"], "flat");

  json w = Get("/api/v1/metrics/spot/availability?hours=26");
  const json& gone = Find(w["gpus"], "gpu", "A100 SXM4 80GB");
  EXPECT_EQ(gone["available_gpus"], 0);
  EXPECT_EQ(gone["trend"], "falling");
  EXPECT_EQ(gone["change"]["available_gpus"], -16);

  json one = Get("/api/v1/metrics/spot/availability?gpu=rtx4090&hours=26");
  ASSERT_EQ(one["gpus"].size(), 1u);
  EXPECT_EQ(one["gpus"][0]["series"].size(), 3u);
}

TEST_F(MarketRoutes, ReliabilityPutsProviderFiguresBesideOurHistory) {
  // Our own attempts on two sim hosts whose offers are RTX 4090s (sim-0 and sim-4).
  auto& st = server_->app().store();
  int n = 0;
  for (auto [host, outcome] : std::vector<std::pair<std::string, std::string>>{
           {"sim-0", "ready"}, {"sim-0", "ready"}, {"sim-0", "failed"}, {"sim-4", "ready"}, {"sim-4", "pending"}}) {
    ASSERT_TRUE(st.AddAttempt({"att_" + std::to_string(n++), "usr_x", "ins_x", "sim", host, host, "m", now_,
                               std::nullopt, std::nullopt, outcome, ""})
                    .ok());
  }
  json r = Get("/api/v1/metrics/spot/reliability");
  EXPECT_TRUE(r["provider_errors"].empty()) << r.dump();
  const json* sim = nullptr;
  for (const auto& row : r["rows"]) {
    if (row["provider"] == "sim" && row["gpu"] == "RTX 4090") sim = &row;
    if (row["provider"] == "vast" && row["gpu"] == "RTX 4090") {
      EXPECT_DOUBLE_EQ(row["provider_reliability"].get<double>(), 0.97);
      EXPECT_EQ(row["offers"], 14);
      EXPECT_EQ(row["history"]["attempts"], 0);
      EXPECT_TRUE(row["history"]["success_rate"].is_null());
    }
  }
  ASSERT_NE(sim, nullptr) << r.dump();
  EXPECT_TRUE((*sim)["provider_reliability"].is_null()) << "the monitor is off: no sim samples";
  EXPECT_EQ((*sim)["history"], (json{{"hosts", 2}, {"attempts", 5}, {"ready", 3}, {"failed", 1}, {"success_rate", 0.75}}));
}

TEST_F(MarketRoutes, LlmGpusByPricePerGbOfVram) {
  json l = Get("/api/v1/metrics/spot/llm-gpus");
  EXPECT_EQ(l["rule"]["min_vram_gb"], 16);
  EXPECT_DOUBLE_EQ(l["rule"]["need_gb"]["7B"]["fp16"].get<double>(), 16.8);
  EXPECT_DOUBLE_EQ(l["rule"]["need_gb"]["70B"]["4bit"].get<double>(), 42);
  ASSERT_EQ(l["gpus"].size(), 3u);
  EXPECT_EQ(l["gpus"][0]["gpu"], "RTX 3090");  // 0.20 / 24 GB
  EXPECT_EQ(l["gpus"][1]["gpu"], "RTX 4090");  // 0.30 / 24 GB
  EXPECT_EQ(l["gpus"][2]["gpu"], "H100 SXM");  // 2.00 / 80 GB
  EXPECT_NEAR(l["gpus"][1]["price_per_gb_vram"].get<double>(), 0.0125, 1e-9);
  EXPECT_EQ(l["gpus"][1]["fits"], (json{{"fp16", json::array({"7B"})}, {"4bit", json::array({"7B", "13B", "34B"})}}));
  EXPECT_EQ(l["gpus"][2]["fits"]["fp16"], json::array({"7B", "13B"}));
  EXPECT_EQ(l["gpus"][2]["fits"]["4bit"], json::array({"7B", "13B", "34B", "70B"}));
  EXPECT_DOUBLE_EQ(l["gpus"][2]["spot_price"].get<double>(), 1.20);
}

TEST_F(MarketRoutes, BadQueryParametersAre400sNamingTheParameter) {
  Expect400("/api/v1/metrics/market?hours=0", "hours", "from 1 to 8760");
  Expect400("/api/v1/metrics/market?hours=abc", "hours", "got 'abc'");
  Expect400("/api/v1/metrics/market?hours=24h", "hours", "integer");
  Expect400("/api/v1/metrics/market?hours=99999999999999999999", "hours", "integer");
  Expect400("/api/v1/metrics/market?limit=0", "limit", "from 1 to 50000");
  Expect400("/api/v1/metrics/market?hour=5", "hour", "unknown query parameter 'hour'");
  Expect400("/api/v1/metrics/spot/availability?hours=-1", "hours", "integer");
  Expect400("/api/v1/metrics/spot/availability?provider=vast", "provider", "this route takes gpu, hours");
  for (const char* route : {"/api/v1/metrics/market/summary", "/api/v1/metrics/gpus", "/api/v1/metrics/spot/monitor",
                            "/api/v1/metrics/spot/reliability", "/api/v1/metrics/spot/llm-gpus",
                            "/api/v1/metrics/spot/savings"}) {
    Expect400(std::string(route) + "?gpu=x", "gpu", "this route takes none");
  }
  // Documented in OpenAPI with the 400.
  auto doc = json::parse(server_->Call("GET", "/api/v1/openapi.json").body);
  const json& op = doc["paths"]["/api/v1/metrics/market"]["get"];
  EXPECT_TRUE(op["responses"].contains("400"));
  EXPECT_EQ(op["parameters"].size(), 4u);
  EXPECT_NE(op["responses"]["200"]["description"].get<std::string>().find("spot_min_price"), std::string::npos);
}

TEST(MarketMonitorInDumontd, SamplesTheSimProviderAtStart) {
  testing::TempDir dir;
  Config cfg = testing::TestConfig(dir.path());  // market.enabled defaults to true
  RealClock clock;
  testing::TestServer server(cfg, clock);
  ASSERT_EQ(server.Call("POST", "/api/v1/auth/register", R"({"email":"m@example.com","password":"correct horse"})").status, 201);
  std::string token = json::parse(server.Call("POST", "/api/v1/auth/login",
                                              R"({"email":"m@example.com","password":"correct horse"})")
                                      .body)["access_token"];
  json gpus;
  for (int i = 0; i < 500; ++i) {
    gpus = json::parse(server.Call("GET", "/api/v1/metrics/gpus", "", token).body)["gpus"];
    if (!gpus.empty()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_EQ(gpus.size(), 4u) << gpus.dump() << " (the local provider's free machine is not market data)";
  for (const auto& g : gpus) EXPECT_EQ(g["providers"], json::array({"sim"}));
  EXPECT_EQ(gpus[0]["gpu"], "A100 80GB");
  EXPECT_EQ(gpus[0]["vram_gb"], 80);
  auto spot = json::parse(server.Call("GET", "/api/v1/metrics/spot/savings", "", token).body);
  EXPECT_EQ(spot["gpus"].size(), 4u) << "the sim provider offers spot on half its offers of each model";
}

}  // namespace
}  // namespace dumont
