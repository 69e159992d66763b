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
  // The live machines of an instance (its current machine, or those its deploy started).
  std::vector<provider::Machine> MachinesOf(const std::string& id, const std::string& prov = "sim") {
    auto ms = fleet_->FindProvider(prov)->ListByLabelPrefix("dc-" + id + "-");
    EXPECT_TRUE(ms);
    return ms ? *ms : std::vector<provider::Machine>{};
  }
  // Plays the agent of one machine of the instance (its current one, else the deploy's newest):
  // enrolls with the token the machine got at boot.
  std::string EnrollAgent(const std::string& id, const std::string& prov = "sim") {
    auto i = Load(id);
    std::optional<provider::Machine> m;
    for (const auto& x : MachinesOf(id, prov)) {
      if (i.machine_id.empty() ? (!m || x.label > m->label) : x.id == i.machine_id) m = x;
    }
    EXPECT_TRUE(m);
    if (!m) return "";
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
  // Runs the instance's deploy until one machine wins: its agent's first heartbeat makes it reachable.
  // Returns that agent's token.
  std::string BringUp(const std::string& id) {
    EXPECT_TRUE(fleet_->Reconcile(id).ok());
    EXPECT_TRUE(Load(id).machine_id.empty()) << "no machine is the instance's before one is reachable";
    std::string agent = EnrollAgent(id);
    json r = Beat(agent, id, 0);
    EXPECT_TRUE(r["commands"].empty());
    EXPECT_TRUE(fleet_->Reconcile(id).ok());
    EXPECT_FALSE(Load(id).machine_id.empty()) << Load(id).message;
    EXPECT_EQ(MachinesOf(id).size(), 1u) << "every other machine of the deploy is destroyed at once";
    return agent;
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
  std::string agent = BringUp(id);
  EXPECT_EQ(Load(id).state, "provisioning");
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
  int64_t attempt_before = Load(id).attempt;
  ASSERT_TRUE(fleet_->Reconcile(id).ok());
  EXPECT_EQ(Load(id).state, "waking");
  std::string agent2 = BringUp(id);
  i = Load(id);
  EXPECT_EQ(i.state, "waking");
  EXPECT_GT(i.attempt, attempt_before);
  EXPECT_EQ(i.gpu, created->gpu.empty() ? i.gpu : created->gpu);
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
  std::string agent = BringUp(a->id);
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
  std::string agent_a = BringUp(a->id);
  BringUp(b->id);
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

TEST_F(FleetTest, DestroyDuringADeployRemovesEveryMachine) {
  auto a = fleet_->Create("usr_a", {{"name", "a"}, {"provider", "sim"}});
  ASSERT_TRUE(fleet_->Reconcile(a->id).ok());
  EXPECT_EQ(MachinesOf(a->id).size(), 5u) << "a batch of 5 distinct offers";
  ASSERT_TRUE(fleet_->Destroy("usr_a", a->id));
  ASSERT_TRUE(fleet_->Reconcile(a->id).ok());
  EXPECT_EQ(Load(a->id).state, "destroyed");
  EXPECT_TRUE(MachinesOf(a->id).empty()) << "no machine of a cancelled deploy may keep billing";
  auto deploys = store_->ListDeploys("usr_a", 10);
  ASSERT_EQ(deploys->size(), 1u);
  EXPECT_EQ(deploys->front().state, "failed");
  EXPECT_NE(deploys->front().message.find("cancelled"), std::string::npos);
}

TEST_F(FleetTest, DestroyRemovesTheMachineAndIsIdempotent) {
  auto a = fleet_->Create("usr_a", {{"name", "a"}, {"provider", "sim"}});
  BringUp(a->id);
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
  // Each deploy is pinned to the one offer: its machine fails, the deploy fails, the user retries.
  for (int k = 0; k < 3; ++k) {
    for (int r = 0; r < 3; ++r) ASSERT_TRUE(fleet_->Reconcile(a->id).ok());
    EXPECT_EQ(Load(a->id).state, "error");
    ASSERT_TRUE(fleet_->Action("usr_a", a->id, "retry")) << k;
  }
  for (int r = 0; r < 3; ++r) ASSERT_TRUE(fleet_->Reconcile(a->id).ok());
  EXPECT_EQ(Load(a->id).state, "error");
  EXPECT_NE(Load(a->id).message.find("no offer"), std::string::npos)
      << "the 4th deploy finds its only offer blacklisted: " << Load(a->id).message;
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

std::vector<json> EventsOf(store::Store& s, const std::string& deploy) {
  std::vector<json> out;
  auto events = s.ListDeployEvents(deploy, 0, 1000);
  for (const auto& e : *events) {
    json d = json::parse(e.data_json);
    d["type"] = e.type;
    out.push_back(d);
  }
  return out;
}

TEST_F(FleetTest, MultiStartKeepsTheFirstReachableMachineAndBooksTheLosers) {
  auto dep = fleet_->StartDeploy("usr_a", {{"name", "ms"}, {"provider", "sim"},
                                           {"strategy", {{"batch_size", 3}, {"batch_timeout_s", 90}}}});
  ASSERT_TRUE(dep) << dep.error().ToString();
  EXPECT_EQ(dep->state, "pending");
  std::string id = dep->instance_id;
  ASSERT_TRUE(fleet_->Reconcile(id).ok());
  auto machines = MachinesOf(id);
  ASSERT_EQ(machines.size(), 3u);
  std::set<std::string> offers;
  for (const auto& m : machines) offers.insert(m.offer_id);
  EXPECT_EQ(offers.size(), 3u) << "never the same offer twice";
  clock_.Advance(30s);
  std::string agent = EnrollAgent(id);
  Beat(agent, id, 0);
  ASSERT_TRUE(fleet_->Reconcile(id).ok());
  ASSERT_EQ(MachinesOf(id).size(), 1u);
  EXPECT_EQ(MachinesOf(id).front().id, Load(id).machine_id);

  auto d = *store_->GetDeploy(dep->id);
  EXPECT_EQ(d.state, "succeeded");
  EXPECT_EQ(d.winner_machine_id, Load(id).machine_id);
  // Every machine billed 30 s at its offer's price; the winner's boot is part of the total only.
  double losers_usd = 0, all_usd = 0;
  for (const auto& m : json::parse(d.machines_json)) {
    EXPECT_EQ(m["billed_seconds"], 30);
    double c = 30 * m["offer"]["price_per_hour"].get<double>() / 3600;
    EXPECT_NEAR(m["cost_usd"].get<double>(), c, 1e-9);
    all_usd += c;
    if (m["end"] == "loser") losers_usd += c;
  }
  EXPECT_GT(losers_usd, 0);
  EXPECT_NEAR(d.loser_cost_usd, losers_usd, 1e-9);
  EXPECT_NEAR(d.total_cost_usd, all_usd, 1e-9);
  std::vector<std::string> types;
  int losers = 0;
  for (const auto& e : EventsOf(*store_, dep->id)) {
    types.push_back(e["type"]);
    if (e["type"] == "machine_destroyed") {
      EXPECT_EQ(e["reason"], "loser");
      EXPECT_EQ(e["billed_seconds"], 30);
      ++losers;
    }
  }
  EXPECT_EQ(losers, 2);
  ASSERT_GE(types.size(), 6u);
  EXPECT_EQ(types.front(), "deploy_started");
  EXPECT_EQ(types[1], "batch_started");
  EXPECT_EQ(types.back(), "deploy_succeeded");
  // History: one ready, the losers cancelled (a lost race is not the host's fault).
  int ready = 0, cancelled = 0;
  for (const auto& a : *store_->ListAllAttempts()) {
    ready += a.outcome == "ready";
    cancelled += a.outcome == "cancelled";
  }
  EXPECT_EQ(ready, 1);
  EXPECT_EQ(cancelled, 2);
  EXPECT_TRUE(store_->ListBlacklist()->empty());

  // The winner becomes the instance's machine; its next heartbeat is an ordinary one.
  clock_.Advance(1s);
  Beat(agent, id, 50);
  ASSERT_TRUE(fleet_->Reconcile(id).ok());
  EXPECT_EQ(Load(id).state, "running");
}

TEST_F(FleetTest, BatchTimeoutStartsNewOffersThenTheDeployFailsCleanly) {
  auto dep = fleet_->StartDeploy("usr_a", {{"name", "slow"}, {"provider", "sim"},
                                           {"strategy", {{"batch_size", 2}, {"max_batches", 2}, {"batch_timeout_s", 10}}}});
  ASSERT_TRUE(dep);
  std::string id = dep->instance_id;
  ASSERT_TRUE(fleet_->Reconcile(id).ok());
  std::set<std::string> first;
  for (const auto& m : MachinesOf(id)) first.insert(m.offer_id);
  ASSERT_EQ(first.size(), 2u);
  clock_.Advance(11s);
  ASSERT_TRUE(fleet_->Reconcile(id).ok());
  std::set<std::string> all;
  for (const auto& m : MachinesOf(id)) all.insert(m.offer_id);
  EXPECT_EQ(all.size(), 4u) << "batch 2 starts 2 new offers; batch 1 keeps booting (carry-over)";
  clock_.Advance(11s);
  ASSERT_TRUE(fleet_->Reconcile(id).ok());
  EXPECT_TRUE(MachinesOf(id).empty()) << "a failed deploy leaves no machine behind";
  EXPECT_EQ(Load(id).state, "error");
  auto d = *store_->GetDeploy(dep->id);
  EXPECT_EQ(d.state, "failed");
  // Batch 1 lived 22 s (carried over), batch 2 lived 11 s.
  double usd = 0;
  for (const auto& m : json::parse(d.machines_json)) {
    EXPECT_EQ(m["billed_seconds"], m["batch"] == 1 ? 22 : 11);
    usd += m["billed_seconds"].get<int>() * m["offer"]["price_per_hour"].get<double>() / 3600;
  }
  EXPECT_NEAR(d.total_cost_usd, usd, 1e-9);
  auto events = EventsOf(*store_, dep->id);
  EXPECT_EQ(events.back()["type"], "deploy_failed");
  int batches = 0;
  for (const auto& e : events) batches += e["type"] == "batch_started";
  EXPECT_EQ(batches, 2);
}

// A provider whose machines on chosen offers fail at boot (to drive a host's history).
struct Switchable : provider::Provider {
  std::unique_ptr<provider::Provider> p;
  std::set<std::string> failing_offers, failed_machines;
  std::string Name() const override { return "switch"; }
  Result<std::vector<provider::Offer>> Offers() override {
    auto o = p->Offers();
    for (auto& x : *o) x.provider = "switch";
    return o;
  }
  std::map<std::string, provider::Capability> Capabilities() const override { return p->Capabilities(); }
  Result<provider::Machine> Create(const provider::MachineSpec& s) override {
    auto m = p->Create(s);
    if (m && failing_offers.count(s.offer_id)) failed_machines.insert(m->id);
    return m;
  }
  Result<provider::Machine> Get(const std::string& id) override {
    auto m = p->Get(id);
    if (m && failed_machines.count(id)) m->state = provider::MachineState::kFailed;
    return m;
  }
  Result<std::vector<provider::Machine>> ListByLabelPrefix(const std::string& x) override { return p->ListByLabelPrefix(x); }
  Status Stop(const std::string& id) override { return p->Stop(id); }
  Status Start(const std::string& id) override { return p->Start(id); }
  Status Destroy(const std::string& id) override { return p->Destroy(id); }
};

TEST_F(FleetTest, OneSuccessInFourAttemptsIsBlacklistedAndSkippedByTheNextDeploy) {
  auto sw = std::make_unique<Switchable>();
  sw->p = provider::NewSimProvider({}, clock_);
  auto* sw_raw = sw.get();
  fleet_->AddProvider(std::move(sw));
  auto pinned = json{{"provider", "switch"}, {"offer_id", "sim-2"}};
  // Attempt 1 on host sim-2 succeeds.
  json req = pinned;
  req["name"] = "ok";
  auto a = fleet_->Create("usr_a", req);
  ASSERT_TRUE(a);
  ASSERT_TRUE(fleet_->Reconcile(a->id).ok());
  std::string agent = EnrollAgent(a->id, "switch");
  Beat(agent, a->id, 0);
  ASSERT_TRUE(fleet_->Reconcile(a->id).ok());
  ASSERT_FALSE(Load(a->id).machine_id.empty());
  // Attempts 2-4 on sim-2 fail at boot.
  sw_raw->failing_offers = {"sim-2"};
  for (int k = 0; k < 3; ++k) {
    req["name"] = "bad" + std::to_string(k);
    auto b = fleet_->Create("usr_a", req);
    ASSERT_TRUE(b);
    for (int r = 0; r < 3; ++r) ASSERT_TRUE(fleet_->Reconcile(b->id).ok());
    EXPECT_EQ(Load(b->id).state, "error");
    auto bl = store_->ListBlacklist();
    EXPECT_EQ(bl->size(), k == 2 ? 1u : 0u) << "1 of 3 (33 %) is not yet under 30 %; 1 of 4 is";
  }
  auto stats = HostStatsOf(*store_, "switch", "sim-2");
  EXPECT_EQ(stats->ready, 1);
  EXPECT_EQ(stats->failed, 3);
  auto bl = *store_->ListBlacklist();
  ASSERT_EQ(bl.size(), 1u);
  EXPECT_EQ(bl[0].host_id, "sim-2");
  EXPECT_TRUE(bl[0].automatic);
  EXPECT_NE(bl[0].reason.find("1 of 4"), std::string::npos) << bl[0].reason;

  // The next deploy for the same GPU model (sim-2 and sim-6 are both A100 80GB) skips sim-2.
  sw_raw->failing_offers.clear();
  auto dep = fleet_->StartDeploy("usr_a", {{"name", "next"}, {"provider", "switch"},
                                           {"requirements", {{"gpu", "A100 80GB"}}}});
  ASSERT_TRUE(dep);
  ASSERT_TRUE(fleet_->Reconcile(dep->instance_id).ok());
  auto started = MachinesOf(dep->instance_id, "switch");
  ASSERT_EQ(started.size(), 1u);
  EXPECT_EQ(started[0].offer_id, "sim-6");
  // Pinned to the blacklisted host: refused with the reason.
  req["name"] = "pinned";
  auto c = fleet_->Create("usr_a", req);
  for (int r = 0; r < 2; ++r) ASSERT_TRUE(fleet_->Reconcile(c->id).ok());
  EXPECT_EQ(Load(c->id).state, "error");
  EXPECT_TRUE(MachinesOf(c->id, "switch").empty());
}

TEST_F(FleetTest, AnInterruptedSpotMachineIsReplacedFromTheLastSnapshot) {
  auto a = fleet_->Create("usr_a", {{"name", "spot"}, {"provider", "sim"}});
  std::string agent = BringUp(a->id);
  Beat(agent, a->id, 80);
  ASSERT_TRUE(fleet_->Reconcile(a->id).ok());
  ASSERT_EQ(Load(a->id).state, "running");
  // A manual snapshot commits, then the provider stops the machine behind our back (outbid).
  ASSERT_TRUE(fleet_->Action("usr_a", a->id, "snapshot"));
  json resp = Beat(agent, a->id, 80);
  ASSERT_EQ(resp["commands"].size(), 1u);
  Beat(agent, a->id, 80, json::array({{{"id", resp["commands"][0]["id"]}, {"ok", true}, {"snapshot_id", std::string(64, 'b')}}}));
  ASSERT_TRUE(fleet_->Reconcile(a->id).ok());
  std::string old = Load(a->id).machine_id;
  clock_.Advance(5s);
  ASSERT_TRUE(fleet_->FindProvider("sim")->Stop(old).ok());
  ASSERT_TRUE(fleet_->Reconcile(a->id).ok());
  auto i = Load(a->id);
  EXPECT_EQ(i.state, "waking");
  EXPECT_TRUE(i.machine_id.empty());
  EXPECT_FALSE(fleet_->FindProvider("sim")->Get(old)) << "the stopped machine is destroyed, not left billing";
  EXPECT_FALSE(fleet_->Heartbeat(agent, {{"instance_id", a->id}})) << "the old agent is refused";
  // A new deploy brings a machine up; it is told to restore the snapshot.
  std::string agent2 = BringUp(a->id);
  clock_.Advance(1s);
  Beat(agent2, a->id, 0);
  ASSERT_TRUE(fleet_->Reconcile(a->id).ok());
  resp = Beat(agent2, a->id, 0);
  ASSERT_EQ(resp["commands"].size(), 1u);
  EXPECT_EQ(resp["commands"][0]["type"], "restore");
  EXPECT_EQ(resp["commands"][0]["snapshot"], std::string(64, 'b'));
  auto deploys = store_->ListDeploys("usr_a", 10);
  ASSERT_EQ(deploys->size(), 2u);
  EXPECT_EQ(deploys->front().reason, "wake");
}

TEST_F(FleetTest, AWakeRightAfterHibernationStartsANewIdleWindow) {
  auto a = fleet_->Create("usr_a", {{"name", "quick"}, {"provider", "sim"}});
  std::string agent = BringUp(a->id);
  Beat(agent, a->id, 0);
  ASSERT_TRUE(fleet_->Reconcile(a->id).ok());
  IdleFor(agent, a->id, 190, 0);
  ASSERT_EQ(Load(a->id).state, "hibernating");
  json resp = Beat(agent, a->id, 0);
  ASSERT_EQ(resp["commands"].size(), 1u);
  Beat(agent, a->id, 0, json::array({{{"id", resp["commands"][0]["id"]}, {"ok", true}, {"snapshot_id", std::string(64, 'c')}}}));
  ASSERT_TRUE(fleet_->Reconcile(a->id).ok());
  ASSERT_EQ(Load(a->id).state, "hibernated");
  // A heartbeat of the destroyed machine that raced the destroy is refused and changes nothing.
  EXPECT_FALSE(fleet_->Heartbeat(agent, {{"instance_id", a->id}, {"gpus", {{{"index", 0}, {"util_pct", 0}}}}}));
  // Wake two seconds later: the new machine's idle window starts with its own first heartbeat.
  clock_.Advance(2s);
  ASSERT_TRUE(fleet_->Action("usr_a", a->id, "wake"));
  ASSERT_TRUE(fleet_->Reconcile(a->id).ok());
  std::string agent2 = BringUp(a->id);
  Beat(agent2, a->id, 0);
  ASSERT_TRUE(fleet_->Reconcile(a->id).ok());
  resp = Beat(agent2, a->id, 0);
  Beat(agent2, a->id, 0, json::array({{{"id", resp["commands"][0]["id"]}, {"ok", true}}}));
  ASSERT_TRUE(fleet_->Reconcile(a->id).ok());
  ASSERT_EQ(Load(a->id).state, "running");
  IdleFor(agent2, a->id, 150, 0);
  EXPECT_EQ(Load(a->id).state, "running") << "150 s idle on the new machine is not yet 180 s";
}

TEST_F(FleetTest, DeployRequestsAreValidatedWithFieldNames) {
  auto bad = fleet_->StartDeploy("usr_a", {{"name", "x"}, {"provider", "sim"}, {"strategy", {{"batch_size", 0}}}});
  EXPECT_EQ(*bad.error().field(), "strategy.batch_size");
  bad = fleet_->StartDeploy("usr_a", {{"name", "x"}, {"provider", "sim"}, {"strategy", {{"batch_sise", 2}}}});
  EXPECT_EQ(*bad.error().field(), "strategy.batch_sise");
  bad = fleet_->StartDeploy("usr_a", {{"name", "x"}, {"provider", "sim"}, {"requirements", {{"sort", "cheap"}}}});
  EXPECT_EQ(*bad.error().field(), "requirements.sort");
  bad = fleet_->StartDeploy("usr_a", {{"name", "x"}, {"provider", "sim"}, {"requirements", {{"max_price", "1"}}}});
  EXPECT_EQ(*bad.error().field(), "requirements.max_price");
  EXPECT_TRUE(fleet_->List("usr_a")->empty()) << "nothing is created from a bad request";
  // Deploys are private.
  auto ok = fleet_->StartDeploy("usr_a", {{"name", "x"}, {"provider", "sim"}});
  ASSERT_TRUE(ok);
  EXPECT_EQ(fleet_->GetDeploy("usr_b", ok->id).error().code(), Code::kNotFound);
  EXPECT_EQ(fleet_->DeployEvents("usr_b", ok->id, 0, 10).error().code(), Code::kNotFound);
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
