// Multi-start: candidate selection and the deploy state machine on a fake clock with a scripted
// provider view (no provider, no I/O, no sleeping).
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <random>
#include <set>

#include "common/clock.h"
#include "fleet/multistart.h"

namespace dumont::fleet {
namespace {

using namespace std::chrono_literals;
using provider::MachineState;
using provider::Offer;

Offer MakeOffer(std::string id, double price, double reliability = 0.9, std::string gpu = "RTX 4090",
                int num_gpus = 1, double vram = 24, std::string location = "US-CA") {
  Offer o;
  o.id = std::move(id);
  o.provider = "sim";
  o.gpu_name = std::move(gpu);
  o.num_gpus = num_gpus;
  o.gpu_ram_gb = vram;
  o.price_per_hour = price;
  o.reliability = reliability;
  o.location = std::move(location);
  return o;
}

std::vector<std::string> Ids(const std::vector<Offer>& v) {
  std::vector<std::string> out;
  for (const auto& o : v) out.push_back(o.id);
  return out;
}

// ---------------------------------------------------------------- candidate selection

TEST(PickCandidates, FiltersByEveryRequirement) {
  std::vector<Offer> offers = {
      MakeOffer("a", 0.40),                                          // matches
      MakeOffer("b", 0.30, 0.9, "RTX 3090"),                         // wrong GPU
      MakeOffer("c", 0.35, 0.9, "rtx_4090", 2),                      // 2 GPUs
      MakeOffer("d", 0.45, 0.9, "RTX-4090", 1, 16),                  // too little VRAM
      MakeOffer("e", 2.10),                                          // too expensive
      MakeOffer("f", 0.50, 0.9, "RTX 4090", 1, 24, "Sweden, SE"),    // wrong region
      MakeOffer("g", 0.55, 0.9, "RTX 4090", 1, 24, "AUSTRALIA"),     // "US" is not a token of it
      MakeOffer("h", 0.60, 0.9, "rtx 4090", 1, 48, "California, US"),  // matches (region token, GPU spelling)
  };
  Requirements req{.gpu = "RTX 4090", .num_gpus = 1, .min_vram_gb = 20, .max_price = 1.0, .region = "US"};
  EXPECT_EQ(Ids(PickCandidates(offers, req, {}, 10, {})), (std::vector<std::string>{"a", "h"}));
  // Empty requirements: everything, cheapest first.
  EXPECT_EQ(Ids(PickCandidates(offers, Requirements{}, {}, 10, {})),
            (std::vector<std::string>{"b", "c", "a", "d", "f", "g", "h", "e"}));
  // Region with several tokens; max price exactly at the limit passes.
  Requirements r2{.max_price = 0.5, .region = "us-ca"};
  EXPECT_EQ(Ids(PickCandidates(offers, r2, {}, 10, {})), (std::vector<std::string>{"b", "c", "a", "d"}));
  Requirements r3{.gpu = "RTX4090", .num_gpus = 2};
  EXPECT_EQ(Ids(PickCandidates(offers, r3, {}, 10, {})), (std::vector<std::string>{"c"}));
}

TEST(PickCandidates, DistinctBlacklistTriedAndLimit) {
  std::vector<Offer> offers = {MakeOffer("a", 0.5), MakeOffer("a", 0.1),  // duplicate id: first wins
                               MakeOffer("b", 0.2), MakeOffer("c", 0.3), MakeOffer("d", 0.4),
                               MakeOffer("e", 0.6)};
  auto all = PickCandidates(offers, {}, {}, 10, {});
  EXPECT_EQ(Ids(all), (std::vector<std::string>{"b", "c", "d", "a", "e"}));
  EXPECT_DOUBLE_EQ(all[3].price_per_hour, 0.5);
  EXPECT_EQ(Ids(PickCandidates(offers, {}, {"c"}, 10, {"b"})), (std::vector<std::string>{"d", "a", "e"}));
  EXPECT_EQ(Ids(PickCandidates(offers, {}, {}, 2, {})), (std::vector<std::string>{"b", "c"}));
  EXPECT_TRUE(PickCandidates(offers, {}, {}, 0, {}).empty());
  EXPECT_TRUE(PickCandidates(offers, {}, {"a", "b"}, 10, {"c", "d", "e"}).empty());
  EXPECT_TRUE(PickCandidates({}, {}, {}, 5, {}).empty());
}

TEST(PickCandidates, SortOrders) {
  std::vector<Offer> offers = {MakeOffer("cheap", 0.20, 0.70), MakeOffer("solid", 0.80, 0.99),
                               MakeOffer("value", 0.40, 0.96), MakeOffer("mid", 0.50, 0.90),
                               MakeOffer("tie", 0.50, 0.90)};
  Requirements r;
  r.sort = "price";
  EXPECT_EQ(Ids(PickCandidates(offers, r, {}, 10, {})),
            (std::vector<std::string>{"cheap", "value", "mid", "tie", "solid"}));
  r.sort = "reliability";  // ties on reliability break by price, then id
  EXPECT_EQ(Ids(PickCandidates(offers, r, {}, 10, {})),
            (std::vector<std::string>{"solid", "value", "mid", "tie", "cheap"}));
  r.sort = "value";  // reliability per $/h: 3.5, 2.4, 1.8, 1.8, 1.24
  EXPECT_EQ(Ids(PickCandidates(offers, r, {}, 10, {})),
            (std::vector<std::string>{"cheap", "value", "mid", "tie", "solid"}));
  // The input order never matters.
  std::vector<Offer> rev(offers.rbegin(), offers.rend());
  for (std::string s : {"price", "reliability", "value"}) {
    r.sort = s;
    EXPECT_EQ(Ids(PickCandidates(offers, r, {}, 10, {})), Ids(PickCandidates(rev, r, {}, 10, {}))) << s;
  }
  EXPECT_TRUE(ValidateRequirements(r).ok());
  r.sort = "fastest";
  Status st = ValidateRequirements(r);
  EXPECT_EQ(st.code(), Code::kInvalidArgument);
  EXPECT_EQ(st.field(), "sort");
}

// ---------------------------------------------------------------- the deploy state machine

// The caller's observations, scripted by the test.
class ScriptedView final : public ProviderView {
 public:
  std::optional<Probe> Observe(const std::string& label) const override {
    auto it = probes.find(label);
    if (it == probes.end()) return std::nullopt;
    return it->second;
  }
  void Set(const std::string& label, MachineState s, bool reachable = false) {
    probes[label] = Probe{s, reachable, "m-" + label};
  }
  std::map<std::string, Probe> probes;
};

std::vector<Offer> Catalog(int n) {
  std::vector<Offer> v;
  for (int i = 0; i < n; ++i) v.push_back(MakeOffer("o" + std::to_string(i), 0.36 * (i + 1)));  // 0.0001 $/s * (i+1)
  return v;
}

std::vector<std::string> StartedOffers(const Decision& d) {
  std::vector<std::string> out;
  for (const auto& s : d.start) out.push_back(s.offer.id);
  return out;
}

std::set<std::string> DestroyedLabels(const Decision& d) {
  std::set<std::string> out;
  for (const auto& x : d.destroy) out.insert(x.label);
  return out;
}

TEST(MultiStartDeploy, FirstRunningAndReachableWinsLosersDestroyedAtOnce) {
  FakeClock clock;
  ScriptedView view;
  MultiStartDeploy d(DeployStrategy{}, Catalog(20), Requirements{}, {}, "i1");
  Decision d1 = d.Step(clock, view);
  ASSERT_EQ(d1.phase, DeployPhase::kRunning);
  EXPECT_EQ(StartedOffers(d1), (std::vector<std::string>{"o0", "o1", "o2", "o3", "o4"}));
  EXPECT_TRUE(d1.destroy.empty());
  EXPECT_EQ(d1.next_step_at_ms, clock.NowUnixMillis() + 90'000);
  std::set<std::string> labels;
  for (const auto& s : d1.start) labels.insert(s.label);
  EXPECT_EQ(labels, (std::set<std::string>{"dc-i1-1", "dc-i1-2", "dc-i1-3", "dc-i1-4", "dc-i1-5"}));

  // 30 s: o3 is running but not reachable yet; o1 failed; nothing else known.
  clock.Advance(30s);
  view.Set("dc-i1-4", MachineState::kRunning, false);
  view.Set("dc-i1-2", MachineState::kFailed);
  Decision d2 = d.Step(clock, view);
  EXPECT_EQ(d2.phase, DeployPhase::kRunning);
  EXPECT_TRUE(d2.start.empty());
  ASSERT_EQ(d2.destroy.size(), 1u);
  EXPECT_EQ(d2.destroy[0].label, "dc-i1-2");
  EXPECT_EQ(d2.destroy[0].machine_id, "m-dc-i1-2");
  EXPECT_EQ(d2.destroy[0].reason, EndReason::kFailed);

  // 40 s: o3 answers its SSH banner: it wins, the three live others are destroyed in the same step.
  clock.Advance(10s);
  view.Set("dc-i1-4", MachineState::kRunning, true);
  view.Set("dc-i1-5", MachineState::kRunning, false);
  Decision d3 = d.Step(clock, view);
  EXPECT_EQ(d3.phase, DeployPhase::kSucceeded);
  EXPECT_EQ(d3.next_step_at_ms, 0);
  EXPECT_EQ(DestroyedLabels(d3), (std::set<std::string>{"dc-i1-1", "dc-i1-3", "dc-i1-5"}));
  for (const auto& x : d3.destroy) EXPECT_EQ(x.reason, EndReason::kLoser);
  ASSERT_NE(d.winner(), nullptr);
  EXPECT_EQ(d.winner()->label, "dc-i1-4");
  EXPECT_EQ(d.winner()->offer.id, "o3");
  EXPECT_EQ(d.winner()->machine_id, "m-dc-i1-4");
  EXPECT_EQ(d.finished_ms() - d.started_ms(), 40'000);
  EXPECT_TRUE(d.failure().ok());

  // Done: later steps order nothing.
  clock.Advance(1000s);
  Decision d4 = d.Step(clock, view);
  EXPECT_TRUE(d4.start.empty());
  EXPECT_TRUE(d4.destroy.empty());
  EXPECT_EQ(d4.phase, DeployPhase::kSucceeded);
}

TEST(MultiStartDeploy, RunningWithoutReachabilityNeverWinsAndSimultaneousReadyPicksCheapest) {
  ScriptedView view;
  MultiStartDeploy d(DeployStrategy{.batch_size = 3}, Catalog(10), Requirements{}, {}, "i");
  int64_t t = 1'000'000;
  d.Step(t, view);
  for (auto l : {"dc-i-1", "dc-i-2", "dc-i-3"}) view.Set(l, MachineState::kRunning, false);
  EXPECT_EQ(d.Step(t + 50'000, view).phase, DeployPhase::kRunning);
  view.Set("dc-i-3", MachineState::kRunning, true);
  view.Set("dc-i-2", MachineState::kRunning, true);
  view.Set("dc-i-1", MachineState::kPending, true);  // reachable but not running: not a winner
  Decision w = d.Step(t + 60'000, view);
  EXPECT_EQ(w.phase, DeployPhase::kSucceeded);
  ASSERT_NE(d.winner(), nullptr);
  EXPECT_EQ(d.winner()->label, "dc-i-2");  // o1 is cheaper than o2 (and created first)
  EXPECT_EQ(DestroyedLabels(w), (std::set<std::string>{"dc-i-1", "dc-i-3"}));

  // Created later but cheaper still wins a tie: sorted by reliability, "pricey" starts first.
  std::vector<Offer> offers = {MakeOffer("pricey", 1.00, 0.99), MakeOffer("cheap", 0.50, 0.95)};
  MultiStartDeploy r(DeployStrategy{.batch_size = 2}, offers, Requirements{.sort = "reliability"}, {}, "r");
  Decision s = r.Step(t, view);
  EXPECT_EQ(StartedOffers(s), (std::vector<std::string>{"pricey", "cheap"}));
  view.Set("dc-r-1", MachineState::kRunning, true);
  view.Set("dc-r-2", MachineState::kRunning, true);
  EXPECT_EQ(r.Step(t + 70'000, view).phase, DeployPhase::kSucceeded);
  ASSERT_NE(r.winner(), nullptr);
  EXPECT_EQ(r.winner()->offer.id, "cheap");
}

TEST(MultiStartDeploy, BatchTimeoutStartsNextBatchWithNewOffersNoCarry) {
  ScriptedView view;
  DeployStrategy s{.batch_size = 2, .max_batches = 3, .batch_timeout_s = 90, .carry_over = false};
  MultiStartDeploy d(s, Catalog(10), Requirements{}, {}, "i");
  const int64_t t = 5'000'000;
  Decision a = d.Step(t, view);
  EXPECT_EQ(StartedOffers(a), (std::vector<std::string>{"o0", "o1"}));
  view.Set("dc-i-1", MachineState::kPending);
  EXPECT_TRUE(d.Step(t + 89'999, view).start.empty());
  Decision b = d.Step(t + 90'000, view);
  EXPECT_EQ(b.phase, DeployPhase::kRunning);
  EXPECT_EQ(StartedOffers(b), (std::vector<std::string>{"o2", "o3"}));
  EXPECT_EQ(b.start[0].batch, 2);
  EXPECT_EQ(b.start[0].label, "dc-i-3");
  EXPECT_EQ(DestroyedLabels(b), (std::set<std::string>{"dc-i-1", "dc-i-2"}));
  for (const auto& x : b.destroy) EXPECT_EQ(x.reason, EndReason::kBatchTimeout);
  EXPECT_EQ(b.next_step_at_ms, t + 180'000);
  EXPECT_EQ(d.batches_started(), 2);
}

TEST(MultiStartDeploy, CarryOverKeepsBootingMachinesOneMoreBatch) {
  ScriptedView view;
  DeployStrategy s{.batch_size = 2, .max_batches = 3, .batch_timeout_s = 90, .carry_over = true};
  MultiStartDeploy d(s, Catalog(10), Requirements{}, {}, "i");
  const int64_t t = 5'000'000;
  d.Step(t, view);
  Decision b = d.Step(t + 90'000, view);  // batch 1 carried, batch 2 started
  EXPECT_EQ(StartedOffers(b), (std::vector<std::string>{"o2", "o3"}));
  EXPECT_TRUE(b.destroy.empty());
  Decision c = d.Step(t + 180'000, view);  // batch 1 destroyed, batch 2 carried, batch 3 started
  EXPECT_EQ(StartedOffers(c), (std::vector<std::string>{"o4", "o5"}));
  EXPECT_EQ(DestroyedLabels(c), (std::set<std::string>{"dc-i-1", "dc-i-2"}));
  // A carried machine of batch 2 wins during batch 3: the rest of batch 2 and all of batch 3 go.
  view.Set("dc-i-4", MachineState::kRunning, true);
  Decision w = d.Step(t + 200'000, view);
  EXPECT_EQ(w.phase, DeployPhase::kSucceeded);
  ASSERT_NE(d.winner(), nullptr);
  EXPECT_EQ(d.winner()->offer.id, "o3");
  EXPECT_EQ(DestroyedLabels(w), (std::set<std::string>{"dc-i-3", "dc-i-5", "dc-i-6"}));
}

TEST(MultiStartDeploy, MaxBatchesFailsWithAClearReasonAndDestroysEverything) {
  for (bool carry : {false, true}) {
    ScriptedView view;
    DeployStrategy s{.batch_size = 2, .max_batches = 3, .batch_timeout_s = 90, .carry_over = carry};
    MultiStartDeploy d(s, Catalog(20), Requirements{}, {}, "i");
    const int64_t t = 0;
    d.Step(t, view);
    d.Step(t + 90'000, view);
    Decision c = d.Step(t + 180'000, view);
    EXPECT_EQ(c.start.size(), 2u);
    Decision f = d.Step(t + 270'000, view);
    EXPECT_EQ(f.phase, DeployPhase::kFailed) << carry;
    EXPECT_TRUE(f.start.empty());
    EXPECT_EQ(f.next_step_at_ms, 0);
    EXPECT_EQ(d.failure().code(), Code::kUnavailable);
    EXPECT_NE(d.failure().message().find("no machine became ready in 3 batches"), std::string::npos)
        << d.failure().message();
    EXPECT_NE(d.failure().message().find("6 machine(s)"), std::string::npos) << d.failure().message();
    for (const auto& m : d.machines()) EXPECT_FALSE(m.alive()) << m.label;
    EXPECT_EQ(d.winner(), nullptr);
    EXPECT_EQ(d.tried_offer_ids().size(), 6u);
    EXPECT_EQ(d.finished_ms(), 270'000);
  }
}

TEST(MultiStartDeploy, NoCandidatesFailsImmediately) {
  ScriptedView view;
  auto offers = Catalog(3);
  MultiStartDeploy d(DeployStrategy{}, offers, Requirements{.gpu = "H100"}, {}, "i");
  Decision a = d.Step(123'000, view);
  EXPECT_EQ(a.phase, DeployPhase::kFailed);
  EXPECT_TRUE(a.start.empty());
  EXPECT_TRUE(a.destroy.empty());
  EXPECT_EQ(d.failure().code(), Code::kNotFound);
  EXPECT_NE(d.failure().message().find("no offer matches"), std::string::npos);
  EXPECT_EQ(d.batches_started(), 0);
  EXPECT_DOUBLE_EQ(d.TotalCostUsd(), 0);

  // Everything blacklisted is the same.
  MultiStartDeploy b(DeployStrategy{}, offers, Requirements{}, {"o0", "o1", "o2"}, "i");
  EXPECT_EQ(b.Step(0, view).phase, DeployPhase::kFailed);
  EXPECT_EQ(b.failure().code(), Code::kNotFound);

  // An invalid sort order is refused before anything starts.
  MultiStartDeploy c(DeployStrategy{}, offers, Requirements{.sort = "speed"}, {}, "i");
  EXPECT_EQ(c.Step(0, view).phase, DeployPhase::kFailed);
  EXPECT_EQ(c.failure().code(), Code::kInvalidArgument);
}

TEST(MultiStartDeploy, AllFailedStartsNextBatchEarlyAndRunsOutOfOffersNeverRepeating) {
  ScriptedView view;
  DeployStrategy s{.batch_size = 2, .max_batches = 5, .batch_timeout_s = 90, .carry_over = true};
  MultiStartDeploy d(s, Catalog(3), Requirements{}, {}, "i");
  Decision a = d.Step(0, view);
  EXPECT_EQ(StartedOffers(a), (std::vector<std::string>{"o0", "o1"}));
  view.Set("dc-i-1", MachineState::kFailed);
  view.Set("dc-i-2", MachineState::kTerminated);  // vanished: counts as failed
  Decision b = d.Step(12'000, view);               // before the timeout
  EXPECT_EQ(StartedOffers(b), (std::vector<std::string>{"o2"}));  // only one untried offer left
  EXPECT_EQ(DestroyedLabels(b), (std::set<std::string>{"dc-i-1", "dc-i-2"}));
  EXPECT_EQ(b.next_step_at_ms, 102'000);
  view.Set("dc-i-3", MachineState::kFailed);
  Decision c = d.Step(20'000, view);
  EXPECT_EQ(c.phase, DeployPhase::kFailed);
  EXPECT_TRUE(c.start.empty());
  EXPECT_EQ(d.failure().code(), Code::kUnavailable);
  EXPECT_NE(d.failure().message().find("no untried offers left after 2 batch(es)"), std::string::npos)
      << d.failure().message();
  EXPECT_NE(d.failure().message().find("3 failed"), std::string::npos) << d.failure().message();
}

TEST(MultiStartDeploy, CarriedMachinesAreWaitedForWhenNoOffersRemain) {
  ScriptedView view;
  DeployStrategy s{.batch_size = 2, .max_batches = 3, .batch_timeout_s = 90, .carry_over = true};
  MultiStartDeploy d(s, Catalog(3), Requirements{}, {}, "i");
  d.Step(0, view);
  Decision b = d.Step(90'000, view);  // o0, o1 carried; o2 started
  EXPECT_EQ(StartedOffers(b), (std::vector<std::string>{"o2"}));
  view.Set("dc-i-3", MachineState::kFailed);
  Decision c = d.Step(100'000, view);  // batch 2 dead, nothing left to start, batch 1 still booting
  EXPECT_EQ(c.phase, DeployPhase::kRunning);
  EXPECT_EQ(c.next_step_at_ms, 180'000);
  view.Set("dc-i-1", MachineState::kRunning, true);
  EXPECT_EQ(d.Step(150'000, view).phase, DeployPhase::kSucceeded);
  ASSERT_NE(d.winner(), nullptr);
  EXPECT_EQ(d.winner()->offer.id, "o0");
}

TEST(MultiStartDeploy, CostAccountingIsExact) {
  // o0: 0.36 $/h = 0.0001 $/s, o1: 0.0002 $/s, o2: 0.0003 $/s, ...
  ScriptedView view;
  DeployStrategy s{.batch_size = 3, .max_batches = 2, .batch_timeout_s = 90, .carry_over = false};
  MultiStartDeploy d(s, Catalog(10), Requirements{}, {}, "i");
  d.Step(0, view);                          // o0, o1, o2 at t=0
  view.Set("dc-i-2", MachineState::kFailed);
  d.Step(10'500, view);                     // o1 failed at 10.5 s -> billed 11 s (per started second)
  d.Step(90'000, view);                     // o0, o2 timed out at 90 s; o3, o4, o5 at 90 s
  view.Set("dc-i-5", MachineState::kRunning, true);
  Decision w = d.Step(135'000, view);       // o4 ready at 135 s: o3, o5 destroyed at 135 s
  ASSERT_EQ(w.phase, DeployPhase::kSucceeded);
  ASSERT_NE(d.winner(), nullptr);
  std::map<std::string, int64_t> billed;
  for (const auto& m : d.machines()) billed[m.offer.id] = m.BilledSeconds();
  EXPECT_EQ(billed, (std::map<std::string, int64_t>{{"o0", 90}, {"o1", 11}, {"o2", 90}, {"o3", 45}, {"o4", 45}, {"o5", 45}}));
  const double loser = 90 * 0.0001 + 11 * 0.0002 + 90 * 0.0003 + 45 * 0.0004 + 45 * 0.0006;
  EXPECT_NEAR(d.LoserCostUsd(), loser, 1e-12);
  EXPECT_NEAR(d.WinnerBootCostUsd(), 45 * 0.0005, 1e-12);
  EXPECT_NEAR(d.TotalCostUsd(), loser + 45 * 0.0005, 1e-12);
  EXPECT_EQ(d.winner()->end, EndReason::kWinner);
}

TEST(MultiStartDeploy, CancelDestroysEverythingLive) {
  ScriptedView view;
  MultiStartDeploy d(DeployStrategy{}, Catalog(10), Requirements{}, {}, "i");
  d.Step(0, view);
  view.Set("dc-i-1", MachineState::kFailed);
  d.Step(5'000, view);
  Decision c = d.Cancel(7'000, "user deleted the instance");
  EXPECT_EQ(c.phase, DeployPhase::kFailed);
  EXPECT_EQ(c.destroy.size(), 4u);
  EXPECT_EQ(d.failure().code(), Code::kFailedPrecondition);
  EXPECT_TRUE(d.Cancel(8'000, "again").destroy.empty());
}

// Random scripts: the invariants hold whatever the machines do.
TEST(MultiStartDeploy, InvariantsUnderRandomScripts) {
  std::mt19937_64 rng(7);
  for (int run = 0; run < 2000; ++run) {
    DeployStrategy s{.batch_size = 1 + static_cast<int>(rng() % 6), .max_batches = 1 + static_cast<int>(rng() % 4),
                     .batch_timeout_s = 30 + static_cast<int64_t>(rng() % 100), .carry_over = (rng() % 2) == 0};
    MultiStartDeploy d(s, Catalog(1 + static_cast<int>(rng() % 15)), Requirements{}, {}, "r");
    ScriptedView view;
    int64_t now = 0;
    std::set<std::string> created, destroyed;
    Decision dec = d.Step(now, view);
    for (int step = 0; step < 400 && dec.phase == DeployPhase::kRunning; ++step) {
      for (const auto& st : dec.start) {
        EXPECT_TRUE(created.insert(st.label).second);
      }
      for (const auto& x : dec.destroy) {
        EXPECT_TRUE(created.count(x.label)) << x.label;
        EXPECT_TRUE(destroyed.insert(x.label).second) << "destroyed twice: " << x.label;
      }
      int live = 0;
      for (const auto& m : d.machines()) live += m.alive();
      EXPECT_LE(live, s.batch_size * (s.carry_over ? 2 : 1));
      // Script: each live machine may change at random.
      for (const auto& l : created) {
        if (destroyed.count(l)) continue;
        switch (rng() % 40) {
          case 0: view.Set(l, MachineState::kFailed); break;
          case 1: view.Set(l, MachineState::kRunning, false); break;
          case 2: view.Set(l, MachineState::kRunning, true); break;
          default: break;
        }
      }
      // A caller steps when something changed, and at next_step_at_ms at the latest.
      now = std::min(now + 1 + static_cast<int64_t>(rng() % 20'000), dec.next_step_at_ms);
      dec = d.Step(now, view);
      EXPECT_TRUE(dec.phase != DeployPhase::kRunning || dec.next_step_at_ms > 0);
    }
    for (const auto& st : dec.start) created.insert(st.label);
    for (const auto& x : dec.destroy) EXPECT_TRUE(destroyed.insert(x.label).second) << x.label;
    ASSERT_NE(dec.phase, DeployPhase::kRunning) << "a deploy must end within max_batches timeouts";
    // Never the same offer twice; every machine but the winner is destroyed exactly once.
    std::set<std::string> offers;
    for (const auto& m : d.machines()) EXPECT_TRUE(offers.insert(m.offer.id).second) << m.offer.id;
    EXPECT_EQ(created.size(), d.machines().size());
    EXPECT_EQ(destroyed.size() + (d.winner() ? 1 : 0), created.size());
    if (d.winner()) {
      EXPECT_FALSE(destroyed.count(d.winner()->label));
    }
    EXPECT_LE(d.batches_started(), s.max_batches);
    // Batches start early (all failed) or on time, never late: the deploy ends within the budget.
    EXPECT_LE(d.finished_ms(), int64_t{s.max_batches} * s.batch_timeout_s * 1000);
    if (dec.phase == DeployPhase::kFailed) {
      EXPECT_FALSE(d.failure().ok());
    }
  }
}

TEST(MultiStartDeploy, SameInputsSameDecisions) {
  auto run = [] {
    ScriptedView view;
    MultiStartDeploy d(DeployStrategy{}, Catalog(20), Requirements{.sort = "value"}, {"o3"}, "x");
    std::vector<std::string> log;
    int64_t t = 0;
    for (int i = 0; i < 8 && !d.done(); ++i) {
      Decision dec = d.Step(t, view);
      for (const auto& s : dec.start) log.push_back("start " + s.label + " " + s.offer.id);
      for (const auto& x : dec.destroy) log.push_back("destroy " + x.label);
      if (i == 4) view.Set("dc-x-7", MachineState::kRunning, true);
      t += 45'000;
    }
    return log;
  };
  EXPECT_EQ(run(), run());
  EXPECT_FALSE(run().empty());
}

}  // namespace
}  // namespace dumont::fleet
