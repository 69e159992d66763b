// The fleet controller on the sim provider with a fake clock: the 3-minute idle window and the
// 30-minute release window run in microseconds; the agent protocol is driven by hand.
#include <gtest/gtest.h>

#include "fleet/decide.h"
#include "fleet/fleet.h"
#include "fleet/history.h"
#include "provider/sim.h"
#include "test_util.h"

namespace dumont::fleet {
namespace {

using nlohmann::json;
using namespace std::chrono_literals;

TEST(DecideIdle, ThreeMinuteWindowOnAFakeClock) {
  const int64_t stale = 32'000;
  int64_t t = 1'000'000'000;
  std::optional<Telemetry> tel;
  // Busy, then idle from t=10 s, heartbeats every 10 s.
  tel = ApplyHeartbeat(tel, {50}, 5, t, stale);
  EXPECT_FALSE(DecideIdle(true, 180, tel, t, stale).hibernate);
  for (int s = 10; s <= 190; s += 10) {
    tel = ApplyHeartbeat(tel, {2, 4.9}, 5, t + s * 1000, stale);
    auto d = DecideIdle(true, 180, tel, t + s * 1000, stale);
    if (s < 190) {
      EXPECT_FALSE(d.hibernate) << s;
      EXPECT_EQ(d.recheck_at_ms, t + 190'000) << "recheck exactly when the window ends";
    } else {
      EXPECT_TRUE(d.hibernate);
    }
  }
  // One GPU at the threshold keeps the machine awake and restarts the window.
  tel = ApplyHeartbeat(tel, {0, 5}, 5, t + 200'000, stale);
  EXPECT_EQ(tel->idle_since_ms, 0);
  EXPECT_FALSE(DecideIdle(true, 180, tel, t + 200'000, stale).hibernate);
  // Disabled never hibernates.
  tel = ApplyHeartbeat(std::nullopt, {0}, 5, t, stale);
  EXPECT_FALSE(DecideIdle(false, 180, tel, t + 999'000, stale).hibernate);
  // No GPUs reported (probe failure) is not idleness.
  tel = ApplyHeartbeat(std::nullopt, {}, 5, t, stale);
  EXPECT_FALSE(DecideIdle(true, 180, tel, t + 999'000, stale).hibernate);
}

TEST(DecideIdle, MissingHeartbeatsAreNeverIdleness) {
  const int64_t stale = 32'000;
  int64_t t = 5'000'000;
  std::optional<Telemetry> tel = ApplyHeartbeat(std::nullopt, {0}, 5, t, stale);
  // The agent goes silent: even far past the window, a stale heartbeat never hibernates.
  EXPECT_FALSE(DecideIdle(true, 180, tel, t + 181'000, stale).hibernate);
  EXPECT_EQ(DecideIdle(true, 180, tel, t + 181'000, stale).recheck_at_ms, 0);
  // Heartbeats resume after the gap: the window starts again from the resumption.
  tel = ApplyHeartbeat(tel, {0}, 5, t + 400'000, stale);
  EXPECT_EQ(tel->idle_since_ms, t + 400'000);
  EXPECT_FALSE(DecideIdle(true, 180, tel, t + 400'000, stale).hibernate);
  EXPECT_FALSE(DecideIdle(true, 180, std::nullopt, t, stale).hibernate);
}

TEST(DecideRelease, ThirtyMinutes) {
  EXPECT_FALSE(ShouldRelease(1000, 1800, 2799, false));
  EXPECT_TRUE(ShouldRelease(1000, 1800, 2800, false));
  EXPECT_FALSE(ShouldRelease(1000, 1800, 9999, true));
}

class FleetTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto s = store::OpenStore("sqlite://" + dir_ / "db", clock_.NowUnix());
    ASSERT_TRUE(s);
    store_ = std::move(*s);
    ASSERT_TRUE(store_->CreateUser({"usr_a", "a@example.com", "h", "user", 1}).ok());
    ASSERT_TRUE(store_->CreateUser({"usr_b", "b@example.com", "h", "user", 1}).ok());
    FleetOptions o;
    o.data_dir = dir_.path();
    o.public_url = "http://127.0.0.1:1";
    fleet_ = std::make_unique<Fleet>(*store_, clock_, nullptr, o);
    provider::SimOptions so;
    so.price_per_hour = 2.0;
    fleet_->AddProvider(provider::NewSimProvider(so, clock_));
  }
  store::Instance Load(const std::string& id) { return *store_->GetInstance(id); }
  // Plays the agent of the instance's current machine: enrolls with the token the machine got at boot.
  std::string EnrollAgent(const std::string& id) {
    auto i = Load(id);
    auto m = fleet_->FindProvider("sim")->Get(i.machine_id);
    EXPECT_TRUE(m);
    std::string token = m->details["env"]["DUMONT_AGENT_ENROLL_TOKEN"];
    auto r = fleet_->Enroll(token);
    EXPECT_TRUE(r) << r.error().ToString();
    auto again = fleet_->Enroll(token);
    EXPECT_FALSE(again) << "enrollment tokens are one-time";
    return (*r)["agent_token"];
  }
  json Beat(const std::string& token, const std::string& id, double util, json results = json::array()) {
    json body = {{"instance_id", id}, {"gpus", {{{"index", 0}, {"util_pct", util}}}}, {"command_results", results}};
    auto r = fleet_->Heartbeat(token, body);
    EXPECT_TRUE(r) << r.error().ToString();
    return r ? *r : json();
  }
  // Heartbeats every 10 s of fake time for `seconds`, reconciling after each.
  void IdleFor(const std::string& token, const std::string& id, int seconds, double util) {
    for (int s = 0; s < seconds; s += 10) {
      clock_.Advance(10s);
      Beat(token, id, util);
      ASSERT_TRUE(fleet_->Reconcile(id).ok());
    }
  }

  testing::TempDir dir_;
  FakeClock clock_{1'700'000'000};
  std::unique_ptr<store::Store> store_;
  std::unique_ptr<Fleet> fleet_;
};

TEST_F(FleetTest, IdleMachineHibernatesAfterTheWindowAndWakesWithItsSnapshot) {
  auto created = fleet_->Create("usr_a", {{"name", "train"}, {"provider", "sim"}});
  ASSERT_TRUE(created) << created.error().ToString();
  std::string id = created->id;
  ASSERT_TRUE(fleet_->Reconcile(id).ok());
  EXPECT_EQ(Load(id).state, "provisioning");
  EXPECT_EQ(Load(id).machine_id.empty(), false);
  std::string agent = EnrollAgent(id);
  clock_.Advance(1s);
  Beat(agent, id, 80);
  ASSERT_TRUE(fleet_->Reconcile(id).ok());
  EXPECT_EQ(Load(id).state, "running");

  IdleFor(agent, id, 170, 1);  // 170 s idle: not yet
  EXPECT_EQ(Load(id).state, "running");
  IdleFor(agent, id, 20, 1);   // past 180 s
  auto i = Load(id);
  EXPECT_EQ(i.desired, "hibernated");
  EXPECT_EQ(i.state, "hibernating");
  // The agent is told to take the final snapshot; the machine stays until it is committed.
  json resp = Beat(agent, id, 0);
  ASSERT_EQ(resp["commands"].size(), 1u);
  json cmd = resp["commands"][0];
  EXPECT_EQ(cmd["type"], "snapshot");
  ASSERT_TRUE(fleet_->Reconcile(id).ok());
  EXPECT_EQ(Load(id).state, "hibernating");
  std::string machine = Load(id).machine_id;
  EXPECT_TRUE(fleet_->FindProvider("sim")->Get(machine));
  Beat(agent, id, 0, json::array({{{"id", cmd["id"]}, {"ok", true}, {"snapshot_id", std::string(64, 'a')}}}));
  ASSERT_TRUE(fleet_->Reconcile(id).ok());
  i = Load(id);
  EXPECT_EQ(i.state, "hibernated");
  EXPECT_TRUE(i.machine_id.empty());
  EXPECT_EQ(i.last_snapshot, std::string(64, 'a'));
  EXPECT_FALSE(fleet_->FindProvider("sim")->Get(machine)) << "the machine must be gone: billing stops";
  // The destroyed machine's agent is refused from now on.
  EXPECT_FALSE(fleet_->Heartbeat(agent, {{"instance_id", id}}));

  // 30 minutes later the reservation is released.
  clock_.Advance(1799s);
  ASSERT_TRUE(fleet_->Reconcile(id).ok());
  EXPECT_FALSE(Load(id).released);
  clock_.Advance(1s);
  ASSERT_TRUE(fleet_->Reconcile(id).ok());
  EXPECT_TRUE(Load(id).released);

  // Wake: a new machine, same id, restore of the last snapshot, then running.
  clock_.Advance(3600s - 1800s);
  ASSERT_TRUE(fleet_->Action("usr_a", id, "wake"));
  ASSERT_TRUE(fleet_->Reconcile(id).ok());
  ASSERT_TRUE(fleet_->Reconcile(id).ok());
  i = Load(id);
  EXPECT_EQ(i.state, "waking");
  EXPECT_EQ(i.attempt, 2);
  std::string agent2 = EnrollAgent(id);
  clock_.Advance(1s);
  Beat(agent2, id, 0);
  ASSERT_TRUE(fleet_->Reconcile(id).ok());
  resp = Beat(agent2, id, 0);
  ASSERT_EQ(resp["commands"].size(), 1u);
  EXPECT_EQ(resp["commands"][0]["type"], "restore");
  EXPECT_EQ(resp["commands"][0]["snapshot"], std::string(64, 'a'));
  Beat(agent2, id, 0, json::array({{{"id", resp["commands"][0]["id"]}, {"ok", true}}}));
  ASSERT_TRUE(fleet_->Reconcile(id).ok());
  EXPECT_EQ(Load(id).state, "running");

  // The ledger: one hour hibernated at $2/h.
  auto savings = fleet_->Savings("usr_a");
  ASSERT_TRUE(savings);
  EXPECT_NEAR((*savings)["total_hours"].get<double>(), 1.0, 0.01);
  EXPECT_NEAR((*savings)["total_dollars"].get<double>(), 2.0, 0.02);
  EXPECT_EQ((*fleet_->Savings("usr_b"))["hibernations"], 0);
}

TEST_F(FleetTest, BusyOrSilentMachinesNeverHibernate) {
  auto a = fleet_->Create("usr_a", {{"name", "busy"}, {"provider", "sim"}});
  ASSERT_TRUE(fleet_->Reconcile(a->id).ok());
  std::string agent = EnrollAgent(a->id);
  Beat(agent, a->id, 50);
  ASSERT_TRUE(fleet_->Reconcile(a->id).ok());
  IdleFor(agent, a->id, 3600, 50);
  EXPECT_EQ(Load(a->id).state, "running");
  // Idle for a minute, then silence for an hour: silence is never idleness.
  IdleFor(agent, a->id, 60, 0);
  for (int s = 0; s < 3600; s += 30) {
    clock_.Advance(30s);
    ASSERT_TRUE(fleet_->Reconcile(a->id).ok());
  }
  EXPECT_EQ(Load(a->id).state, "running");
}

TEST_F(FleetTest, AgentsSpeakOnlyForTheirOwnMachine) {
  auto a = fleet_->Create("usr_a", {{"name", "a"}, {"provider", "sim"}});
  auto b = fleet_->Create("usr_b", {{"name", "b"}, {"provider", "sim"}});
  ASSERT_TRUE(fleet_->Reconcile(a->id).ok());
  ASSERT_TRUE(fleet_->Reconcile(b->id).ok());
  std::string agent_a = EnrollAgent(a->id);
  auto r = fleet_->Heartbeat(agent_a, {{"instance_id", b->id}});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code(), Code::kPermissionDenied);
  EXPECT_EQ(fleet_->Heartbeat("dat_forged", {{"instance_id", a->id}}).error().code(), Code::kUnauthenticated);
  EXPECT_EQ(fleet_->Enroll("det_forged").error().code(), Code::kUnauthenticated);
  // Other users' instances do not exist for you.
  EXPECT_EQ(fleet_->Get("usr_b", a->id).error().code(), Code::kNotFound);
  EXPECT_EQ(fleet_->Action("usr_b", a->id, "hibernate").error().code(), Code::kNotFound);
}

TEST_F(FleetTest, RestartAdoptsUnsavedMachinesAndDestroysOrphans) {
  auto* sim = fleet_->FindProvider("sim");
  auto a = fleet_->Create("usr_a", {{"name", "a"}, {"provider", "sim"}});
  // A crash after the create call but before the machine id was saved: attempt 1 is durable.
  auto i = Load(a->id);
  i.attempt = 1;
  ASSERT_TRUE(store_->UpdateInstanceStatus(i).ok());
  auto unsaved = sim->Create({provider::MachineLabel(a->id, 1), "", "", {}});
  auto orphan = sim->Create({provider::MachineLabel("ins_gone", 1), "", "", {}});
  auto stale = sim->Create({provider::MachineLabel(a->id, 0), "", "", {}});
  ASSERT_TRUE(unsaved && orphan && stale);
  fleet_->Start();
  fleet_->Stop();
  EXPECT_EQ(Load(a->id).machine_id, unsaved->id);
  EXPECT_TRUE(sim->Get(unsaved->id));
  EXPECT_FALSE(sim->Get(orphan->id)) << "a machine nobody owns must not keep billing";
  EXPECT_FALSE(sim->Get(stale->id)) << "a machine of an old attempt must not keep billing";
}

TEST_F(FleetTest, DestroyRemovesTheMachineAndIsIdempotent) {
  auto a = fleet_->Create("usr_a", {{"name", "a"}, {"provider", "sim"}});
  ASSERT_TRUE(fleet_->Reconcile(a->id).ok());
  std::string machine = Load(a->id).machine_id;
  ASSERT_TRUE(fleet_->Destroy("usr_a", a->id));
  ASSERT_TRUE(fleet_->Reconcile(a->id).ok());
  ASSERT_TRUE(fleet_->Reconcile(a->id).ok());
  EXPECT_EQ(Load(a->id).state, "destroyed");
  EXPECT_FALSE(fleet_->FindProvider("sim")->Get(machine));
  EXPECT_TRUE(fleet_->List("usr_a")->empty());
}

TEST_F(FleetTest, FailingHostsAreRecordedAndBlacklistedAutomatically) {
  // A second sim provider whose machines always fail.
  provider::SimOptions bad;
  bad.fail_fast_rate = 1.0;
  auto failing = provider::NewSimProvider(bad, clock_);
  struct Renamed : provider::Provider {
    std::unique_ptr<provider::Provider> p;
    std::string Name() const override { return "flaky"; }
    Result<std::vector<provider::Offer>> Offers() override { return p->Offers(); }
    std::map<std::string, provider::Capability> Capabilities() const override { return p->Capabilities(); }
    Result<provider::Machine> Create(const provider::MachineSpec& s) override { return p->Create(s); }
    Result<provider::Machine> Get(const std::string& id) override { return p->Get(id); }
    Result<std::vector<provider::Machine>> ListByLabelPrefix(const std::string& x) override { return p->ListByLabelPrefix(x); }
    Status Stop(const std::string& id) override { return p->Stop(id); }
    Status Start(const std::string& id) override { return p->Start(id); }
    Status Destroy(const std::string& id) override { return p->Destroy(id); }
  };
  auto r = std::make_unique<Renamed>();
  r->p = std::move(failing);
  fleet_->AddProvider(std::move(r));
  auto a = fleet_->Create("usr_a", {{"name", "flaky"}, {"provider", "flaky"}, {"offer_id", "sim-3"}});
  ASSERT_TRUE(a);
  for (int k = 0; k < 8; ++k) ASSERT_TRUE(fleet_->Reconcile(a->id).ok());
  auto stats = HostStatsOf(*store_, "flaky", "sim-3");
  ASSERT_TRUE(stats);
  EXPECT_GE(stats->failed, 3);
  EXPECT_EQ(stats->ready, 0);
  auto bl = store_->ListBlacklist();
  ASSERT_EQ(bl->size(), 1u);
  EXPECT_EQ(bl->front().host_id, "sim-3");
  EXPECT_TRUE(bl->front().automatic);
  // Offers show it as blacklisted, sorted and filtered.
  OfferQuery q;
  q.provider = "flaky";
  q.max_price = 10;
  auto offers = SearchOffers(*store_, fleet_->Providers(), q);
  ASSERT_TRUE(offers);
  bool seen = false;
  double last = 0;
  for (const auto& o : (*offers)["offers"]) {
    EXPECT_EQ(o["provider"], "flaky");
    EXPECT_GE(o["price_per_hour"].get<double>(), last);
    last = o["price_per_hour"];
    if (o["id"] == "sim-3") {
      seen = true;
      EXPECT_TRUE(o["blacklisted"].get<bool>());
      EXPECT_GE(o["history"]["attempts"].get<int>(), 3);
    }
  }
  EXPECT_TRUE(seen);
  q.gpu = "h100";
  auto h100 = SearchOffers(*store_, fleet_->Providers(), q);
  for (const auto& o : (*h100)["offers"]) EXPECT_EQ(o["gpu_name"], "H100");
  EXPECT_FALSE(ParseOfferQuery({{"sort", "cheapest"}}));
  EXPECT_EQ(*ParseOfferQuery({{"max_price", "x"}}).error().field(), "max_price");
}

TEST_F(FleetTest, CreateValidatesWithFieldNames) {
  auto bad = fleet_->Create("usr_a", {{"name", ""}});
  EXPECT_EQ(*bad.error().field(), "name");
  bad = fleet_->Create("usr_a", {{"name", "x"}, {"provider", "nope"}});
  EXPECT_EQ(*bad.error().field(), "provider");
  bad = fleet_->Create("usr_a", {{"name", "x"}, {"provider", "sim"}, {"hibernation", {{"gpu_threshold_pct", 101}}}});
  EXPECT_EQ(*bad.error().field(), "hibernation.gpu_threshold_pct");
  bad = fleet_->Create("usr_a", {{"name", "x"}, {"provider", "sim"}, {"hibernation", {{"idle_secs", 5}}}});
  EXPECT_EQ(*bad.error().field(), "hibernation.idle_secs");
  auto ok = fleet_->Create("usr_a", {{"name", "x"}, {"provider", "sim"}});
  EXPECT_EQ(ok->gpu_threshold_pct, 5);
  EXPECT_EQ(ok->idle_seconds, 180);
  EXPECT_EQ(ok->release_after_seconds, 1800);
}

}  // namespace
}  // namespace dumont::fleet
