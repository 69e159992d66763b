// Multi-start vs one-offer-at-a-time, on a fake clock. Every simulated deploy runs the real
// fleet::MultiStartDeploy state machine against a simulated marketplace (boot model in
// bench/README.md, "Multi-start"). Strategies see the same markets (common random numbers): deploy i
// of every strategy gets the same offers, prices and per-offer fates, so differences come from the
// strategy, not from luck.
//
//   multistart_bench [--deploys 5000] [--seed 42] [--out bench/results/multistart.json]
//                    [--readme bench/README.md]   (rewrites the table between the multistart markers)
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <limits>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>

#include "fleet/multistart.h"

namespace {

using dumont::fleet::DeployPhase;
using dumont::fleet::DeployStrategy;
using dumont::fleet::MultiStartDeploy;
using dumont::fleet::Probe;
using dumont::fleet::ProviderView;
using dumont::fleet::Requirements;
using dumont::provider::MachineState;
using dumont::provider::Offer;
using ojson = nlohmann::ordered_json;

// ---- portable randomness (std:: distributions differ between standard libraries)
struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed) {}
  uint64_t Next() {  // splitmix64
    uint64_t z = (s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  double Uniform() { return static_cast<double>(Next() >> 11) * 0x1.0p-53; }  // [0, 1)
  double Uniform(double lo, double hi) { return lo + (hi - lo) * Uniform(); }
  double Normal() {  // Box-Muller
    double u1 = 1.0 - Uniform(), u2 = Uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2);
  }
};

struct Model {
  double boot_median_s = 60;
  double boot_sigma = 0.8;
  double never_boot_rate = 0.15;
  double fail_fast_rate = 0.05;
  double fail_fast_lo_s = 5, fail_fast_hi_s = 15;  // uniform, ~10 s
  double reach_lo_s = 2, reach_hi_s = 10;          // running -> reachable, uniform
  double price_lo = 0.20, price_hi = 2.50;         // $/h, log-uniform per offer
  int offers_per_deploy = 48;

  ojson ToJson() const {
    return {{"boot", "lognormal"},
            {"boot_median_s", boot_median_s},
            {"boot_sigma", boot_sigma},
            {"never_boot_rate", never_boot_rate},
            {"fail_fast_rate", fail_fast_rate},
            {"fail_fast_after_s", {fail_fast_lo_s, fail_fast_hi_s}},
            {"reachable_after_running_s", {reach_lo_s, reach_hi_s}},
            {"price_per_hour_usd", {price_lo, price_hi}},
            {"price_distribution", "log-uniform per offer"},
            {"offers_per_deploy", offers_per_deploy},
            {"fate_per_offer", "independent of price and reliability; same fate for every strategy"},
            {"billing", "per started second, from create to destroy; the winner from create to ready"},
            {"clock", "event-driven fake clock: the deploy is stepped exactly when a machine changes state "
                      "or a deadline passes (no polling delay)"}};
  }
};

struct Fate {
  bool never = false, fail = false;
  int64_t fail_ms = 0, running_ms = 0, reachable_ms = 0;  // after create
};

struct Market {
  std::vector<Offer> offers;
  std::unordered_map<std::string, Fate> fate;  // by offer id
};

Market MakeMarket(const Model& m, uint64_t seed, uint64_t deploy) {
  Rng r(seed * 0x100000001b3ULL + deploy * 0x9e3779b97f4a7c15ULL + 1);
  Market mk;
  for (int i = 0; i < m.offers_per_deploy; ++i) {
    Offer o;
    o.id = "o" + std::to_string(i);
    o.provider = "sim";
    o.gpu_name = "RTX 4090";
    o.num_gpus = 1;
    o.gpu_ram_gb = 24;
    o.location = "US";
    o.price_per_hour = std::round(std::exp(r.Uniform(std::log(m.price_lo), std::log(m.price_hi))) * 1000) / 1000;
    o.reliability = r.Uniform(0.80, 0.995);
    Fate f;
    double u = r.Uniform();
    double boot_s = std::exp(std::log(m.boot_median_s) + m.boot_sigma * r.Normal());
    double reach_s = r.Uniform(m.reach_lo_s, m.reach_hi_s);
    double fail_s = r.Uniform(m.fail_fast_lo_s, m.fail_fast_hi_s);
    if (u < m.fail_fast_rate) f.fail = true;
    else if (u < m.fail_fast_rate + m.never_boot_rate) f.never = true;
    f.fail_ms = static_cast<int64_t>(std::ceil(fail_s * 1000));
    f.running_ms = static_cast<int64_t>(std::ceil(boot_s * 1000));
    f.reachable_ms = f.running_ms + static_cast<int64_t>(std::ceil(reach_s * 1000));
    mk.fate[o.id] = f;
    mk.offers.push_back(std::move(o));
  }
  return mk;
}

// The simulated marketplace as the deploy's caller sees it.
class SimMarket final : public ProviderView {
 public:
  explicit SimMarket(const Market& mk) : mk_(mk) {}
  struct M {
    Fate fate;
    double price = 0;
    int64_t created_ms = 0, destroyed_ms = 0;
  };
  void Create(const std::string& label, const Offer& o, int64_t now) {
    M m;
    m.fate = mk_.fate.at(o.id);
    m.price = o.price_per_hour;
    m.created_ms = now;
    ms_[label] = m;
    ++live_;
    peak_ = std::max(peak_, live_);
  }
  void Destroy(const std::string& label, int64_t now) {
    auto& m = ms_.at(label);
    if (m.destroyed_ms == 0) {
      m.destroyed_ms = now;
      --live_;
    }
  }
  std::optional<Probe> Observe(const std::string& label) const override {
    auto it = ms_.find(label);
    if (it == ms_.end()) return std::nullopt;
    const M& m = it->second;
    Probe p;
    p.machine_id = "sim-" + label;
    if (m.destroyed_ms) {
      p.state = MachineState::kTerminated;
      return p;
    }
    int64_t age = now_ - m.created_ms;
    if (m.fate.fail) p.state = age >= m.fate.fail_ms ? MachineState::kFailed : MachineState::kPending;
    else if (m.fate.never || age < m.fate.running_ms) p.state = MachineState::kPending;
    else p.state = MachineState::kRunning;
    p.reachable = p.state == MachineState::kRunning && age >= m.fate.reachable_ms;
    return p;
  }
  // The next time any live machine changes what Observe says, after `now`.
  int64_t NextChange(int64_t now) const {
    int64_t best = std::numeric_limits<int64_t>::max();
    for (const auto& [l, m] : ms_) {
      if (m.destroyed_ms) continue;
      int64_t ts[3] = {m.fate.fail ? m.created_ms + m.fate.fail_ms : 0,
                       (m.fate.fail || m.fate.never) ? 0 : m.created_ms + m.fate.running_ms,
                       (m.fate.fail || m.fate.never) ? 0 : m.created_ms + m.fate.reachable_ms};
      for (int64_t t : ts) {
        if (t > now) best = std::min(best, t);
      }
    }
    return best;
  }
  void SetNow(int64_t now) { now_ = now; }
  // Independent check of the deploy's accounting: per started second, create -> destroy.
  double BilledUsd(const std::string& winner, int64_t ready_ms) const {
    double c = 0;
    for (const auto& [l, m] : ms_) {
      int64_t end = l == winner ? ready_ms : m.destroyed_ms;
      if (end == 0) {
        std::fprintf(stderr, "BUG: machine %s was never destroyed\n", l.c_str());
        std::exit(1);
      }
      c += static_cast<double>((std::max(end - m.created_ms, int64_t{1}) + 999) / 1000) * m.price / 3600.0;
    }
    return c;
  }
  int peak() const { return peak_; }

 private:
  const Market& mk_;
  std::unordered_map<std::string, M> ms_;
  int64_t now_ = 0;
  int live_ = 0, peak_ = 0;
};

struct Outcome {
  bool ok = false;
  double ttr_s = 0;  // time to ready, or time to give up
  double loser_usd = 0, total_usd = 0, winner_price = 0;
  int machines = 0, batches = 0, peak = 0;
  int64_t steps = 0;
};

Outcome RunDeploy(const DeployStrategy& s, const Market& mk, uint64_t deploy) {
  const int64_t t0 = 1'700'000'000'000;
  MultiStartDeploy d(s, mk.offers, Requirements{.gpu = "RTX 4090", .sort = "price"}, {},
                     "inst" + std::to_string(deploy));
  SimMarket sim(mk);
  int64_t now = t0;
  Outcome o;
  for (;;) {
    sim.SetNow(now);
    auto dec = d.Step(now, sim);
    ++o.steps;
    for (const auto& x : dec.destroy) sim.Destroy(x.label, now);  // destroys first, as a controller would
    for (const auto& st : dec.start) sim.Create(st.label, st.offer, now);
    if (dec.phase != DeployPhase::kRunning) break;
    int64_t next = std::min(dec.next_step_at_ms, sim.NextChange(now));
    if (next <= now) {
      std::fprintf(stderr, "BUG: time does not advance\n");
      std::exit(1);
    }
    now = next;
  }
  o.ok = d.phase() == DeployPhase::kSucceeded;
  o.ttr_s = static_cast<double>(d.finished_ms() - t0) / 1000.0;
  o.loser_usd = d.LoserCostUsd();
  o.total_usd = d.TotalCostUsd();
  o.winner_price = d.winner() ? d.winner()->offer.price_per_hour : 0;
  o.machines = static_cast<int>(d.machines().size());
  o.batches = d.batches_started();
  o.peak = sim.peak();
  double check = sim.BilledUsd(d.winner() ? d.winner()->label : "", d.finished_ms());
  if (std::fabs(check - o.total_usd) > 1e-9) {
    std::fprintf(stderr, "BUG: deploy accounting %.9f != simulated billing %.9f\n", o.total_usd, check);
    std::exit(1);
  }
  // Never the same offer twice.
  std::map<std::string, int> seen;
  for (const auto& m : d.machines()) {
    if (++seen[m.offer.id] > 1) {
      std::fprintf(stderr, "BUG: offer %s started twice\n", m.offer.id.c_str());
      std::exit(1);
    }
  }
  return o;
}

double Round(double v, int digits) {
  double p = std::pow(10.0, digits);
  return std::round(v * p) / p;
}

// Nearest-rank percentile.
double Pct(std::vector<double> v, double p) {
  if (v.empty()) return std::numeric_limits<double>::quiet_NaN();
  std::sort(v.begin(), v.end());
  size_t idx = static_cast<size_t>(std::ceil(p * static_cast<double>(v.size())));
  if (idx > 0) --idx;
  return v[std::min(idx, v.size() - 1)];
}

ojson NumOrNull(double v, int digits) { return std::isfinite(v) ? ojson(Round(v, digits)) : ojson(nullptr); }

struct Named {
  std::string name;
  std::string desc;
  DeployStrategy s;
};

std::string Fmt(const ojson& v, int digits, const char* suffix = "") {
  if (v.is_null()) return "never";
  char b[64];
  std::snprintf(b, sizeof b, "%.*f%s", digits, v.get<double>(), suffix);
  return b;
}

}  // namespace

int main(int argc, char** argv) {
  int deploys = 5000;
  uint64_t seed = 42;
  std::string out = "bench/results/multistart.json", readme;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto val = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--deploys") deploys = std::stoi(val());
    else if (a == "--seed") seed = std::stoull(val());
    else if (a == "--out") out = val();
    else if (a == "--readme") readme = val();
    else {
      std::fprintf(stderr, "usage: multistart_bench [--deploys N] [--seed S] [--out FILE] [--readme FILE]\n");
      return 2;
    }
  }
  Model model;
  std::vector<Named> strategies;
  strategies.push_back({"single", "one offer at a time, 600 s provisioning timeout (SkyPilot-like), up to 15 offers",
                        DeployStrategy{.batch_size = 1, .max_batches = 15, .batch_timeout_s = 600, .carry_over = false}});
  strategies.push_back({"single_90s", "one offer at a time, 90 s timeout, up to 15 offers",
                        DeployStrategy{.batch_size = 1, .max_batches = 15, .batch_timeout_s = 90, .carry_over = false}});
  for (int n = 1; n <= 8; ++n) {
    strategies.push_back({"batch" + std::to_string(n),
                          std::to_string(n) + " at once, 90 s batch timeout, 3 batches, still-booting machines carried one batch",
                          DeployStrategy{.batch_size = n, .max_batches = 3, .batch_timeout_s = 90, .carry_over = true}});
  }
  for (int n = 1; n <= 8; ++n) {
    strategies.push_back({"batch" + std::to_string(n) + "_nocarry",
                          std::to_string(n) + " at once, 90 s batch timeout, 3 batches, batch destroyed at its timeout",
                          DeployStrategy{.batch_size = n, .max_batches = 3, .batch_timeout_s = 90, .carry_over = false}});
  }

  std::vector<Market> markets;
  markets.reserve(static_cast<size_t>(deploys));
  for (int i = 0; i < deploys; ++i) markets.push_back(MakeMarket(model, seed, static_cast<uint64_t>(i)));

  ojson res;
  res["model"] = model.ToJson();
  res["deploys_per_strategy"] = deploys;
  res["seed"] = seed;
  res["percentiles"] = "pXX_s: nearest rank over successful deploys; pXX_s_incl_failures: a failed deploy counts "
                       "as never ready (null when the percentile falls among failures)";
  int64_t total_steps = 0, total_deploys = 0;
  auto wall0 = std::chrono::steady_clock::now();
  for (const auto& st : strategies) {
    std::vector<double> ok_t, all_t, fail_t;
    double loser = 0, total = 0, wprice = 0, machines = 0, batches = 0;
    int peak = 0, oks = 0;
    for (int i = 0; i < deploys; ++i) {
      Outcome o = RunDeploy(st.s, markets[static_cast<size_t>(i)], static_cast<uint64_t>(i));
      total_steps += o.steps;
      ++total_deploys;
      if (o.ok) {
        ++oks;
        ok_t.push_back(o.ttr_s);
        all_t.push_back(o.ttr_s);
        wprice += o.winner_price;
      } else {
        all_t.push_back(std::numeric_limits<double>::infinity());
        fail_t.push_back(o.ttr_s);
      }
      loser += o.loser_usd;
      total += o.total_usd;
      machines += o.machines;
      batches += o.batches;
      peak = std::max(peak, o.peak);
    }
    const double n = deploys;
    ojson e;
    e["description"] = st.desc;
    e["strategy"] = {{"batch_size", st.s.batch_size}, {"max_batches", st.s.max_batches},
                     {"batch_timeout_s", st.s.batch_timeout_s}, {"carry_over", st.s.carry_over}};
    e["p50_s"] = NumOrNull(Pct(ok_t, 0.50), 1);
    e["p95_s"] = NumOrNull(Pct(ok_t, 0.95), 1);
    e["p99_s"] = NumOrNull(Pct(ok_t, 0.99), 1);
    e["mean_s"] = NumOrNull(ok_t.empty() ? NAN : [&] { double s = 0; for (double x : ok_t) s += x; return s / ok_t.size(); }(), 1);
    e["p50_s_incl_failures"] = NumOrNull(Pct(all_t, 0.50), 1);
    e["p95_s_incl_failures"] = NumOrNull(Pct(all_t, 0.95), 1);
    e["p99_s_incl_failures"] = NumOrNull(Pct(all_t, 0.99), 1);
    e["success_rate"] = Round(oks / n, 4);
    e["loser_cost_usd"] = Round(loser / n, 4);
    e["total_cost_usd"] = Round(total / n, 4);
    e["winner_price_per_hour_usd"] = NumOrNull(oks ? wprice / oks : NAN, 3);
    e["machines_started"] = Round(machines / n, 2);
    e["batches_started"] = Round(batches / n, 2);
    e["max_concurrent_machines"] = peak;
    e["p50_time_to_give_up_s"] = NumOrNull(Pct(fail_t, 0.5), 1);
    res[st.name] = e;
  }
  double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - wall0).count();
  res["run"] = {{"deploys", total_deploys}, {"steps", total_steps}, {"wall_s", Round(wall, 3)},
                {"deploys_per_s", Round(total_deploys / wall, 0)}};

  // Markdown table.
  std::ostringstream md;
  md << "| strategy | p50 s | p95 s | p99 s | p95 s incl. failures | success | loser $/deploy | total $/deploy "
        "| winner $/h | machines started |\n|---|---|---|---|---|---|---|---|---|---|\n";
  for (const auto& st : strategies) {
    const auto& e = res[st.name];
    char sr[32];
    std::snprintf(sr, sizeof sr, "%.2f %%", e["success_rate"].get<double>() * 100);
    md << "| " << st.name << " | " << Fmt(e["p50_s"], 1) << " | " << Fmt(e["p95_s"], 1) << " | "
       << Fmt(e["p99_s"], 1) << " | " << Fmt(e["p95_s_incl_failures"], 1) << " | " << sr << " | "
       << Fmt(e["loser_cost_usd"], 4) << " | " << Fmt(e["total_cost_usd"], 4) << " | "
       << Fmt(e["winner_price_per_hour_usd"], 3) << " | " << Fmt(e["machines_started"], 2) << " |\n";
  }
  std::cout << md.str();
  std::fprintf(stdout, "\n%lld deploys, %lld steps in %.2f s (%.0f deploys/s)\n",
               static_cast<long long>(total_deploys), static_cast<long long>(total_steps), wall,
               total_deploys / wall);

  {
    std::ofstream f(out);
    if (!f) {
      std::fprintf(stderr, "cannot write %s\n", out.c_str());
      return 1;
    }
    f << res.dump(2) << "\n";
  }
  std::printf("wrote %s\n", out.c_str());

  if (!readme.empty()) {
    const std::string begin = "<!-- multistart-results:begin -->", end = "<!-- multistart-results:end -->";
    std::ifstream in(readme);
    std::stringstream ss;
    ss << in.rdbuf();
    std::string text = ss.str();
    auto b = text.find(begin), e = text.find(end);
    if (!in || b == std::string::npos || e == std::string::npos || e < b) {
      std::fprintf(stderr, "%s has no %s ... %s markers; table not written there\n", readme.c_str(),
                   begin.c_str(), end.c_str());
      return 1;
    }
    std::string block = begin + "\n" + md.str() + end;
    text.replace(b, e + end.size() - b, block);
    std::ofstream f(readme);
    f << text;
    std::printf("updated the table in %s\n", readme.c_str());
  }
  return 0;
}
