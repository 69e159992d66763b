#include "fleet/multistart.h"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <limits>

namespace dumont::fleet {
namespace {

using provider::MachineState;
using provider::Offer;

// "RTX 4090", "rtx_4090" and "RTX-4090" are the same GPU.
std::string NormGpu(std::string_view s) {
  std::string out;
  for (char c : s) {
    if (c == ' ' || c == '-' || c == '_') continue;
    out.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(c))));
  }
  return out;
}

std::vector<std::string> Tokens(std::string_view s) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : s) {
    if (std::isalnum(static_cast<unsigned char>(c))) {
      cur.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(c))));
    } else if (!cur.empty()) {
      out.push_back(std::move(cur));
      cur.clear();
    }
  }
  if (!cur.empty()) out.push_back(std::move(cur));
  return out;
}

// The region's tokens appear, contiguous, among the location's tokens.
bool RegionMatches(const std::string& region, const std::string& location) {
  auto r = Tokens(region), l = Tokens(location);
  if (r.empty()) return true;
  if (r.size() > l.size()) return false;
  for (size_t i = 0; i + r.size() <= l.size(); ++i) {
    if (std::equal(r.begin(), r.end(), l.begin() + static_cast<std::ptrdiff_t>(i))) return true;
  }
  return false;
}

double Value(const Offer& o) {
  if (o.price_per_hour <= 0) return std::numeric_limits<double>::infinity();
  return o.reliability / o.price_per_hour;
}

std::string Num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

bool Dead(MachineState s) {
  return s == MachineState::kFailed || s == MachineState::kStopped || s == MachineState::kTerminating ||
         s == MachineState::kTerminated;
}

}  // namespace

Status ValidateRequirements(const Requirements& req) {
  if (req.sort != "price" && req.sort != "reliability" && req.sort != "value") {
    return Status::InvalidField("sort", "sort must be price, reliability or value, not '" + req.sort + "'");
  }
  if (req.num_gpus < 0) return Status::InvalidField("num_gpus", "num_gpus must be 0 (any) or more");
  if (req.min_vram_gb < 0) return Status::InvalidField("min_vram_gb", "min_vram_gb must not be negative");
  if (req.max_price < 0) return Status::InvalidField("max_price", "max_price must be 0 (no limit) or more");
  return Status::Ok();
}

std::vector<Offer> PickCandidates(const std::vector<Offer>& offers, const Requirements& req,
                                  const std::set<std::string>& blacklisted_machine_or_offer_ids, size_t n,
                                  const std::set<std::string>& already_tried) {
  const std::string gpu = NormGpu(req.gpu);
  std::set<std::string> seen;
  std::vector<const Offer*> ok;
  for (const auto& o : offers) {
    if (!seen.insert(o.id).second) continue;  // distinct: the first occurrence of an id wins
    if (already_tried.count(o.id) || blacklisted_machine_or_offer_ids.count(o.id)) continue;
    if (!gpu.empty() && NormGpu(o.gpu_name) != gpu) continue;
    if (req.num_gpus > 0 && o.num_gpus != req.num_gpus) continue;
    if (o.gpu_ram_gb < req.min_vram_gb) continue;
    if (req.max_price > 0 && o.price_per_hour > req.max_price) continue;
    if (!RegionMatches(req.region, o.location)) continue;
    ok.push_back(&o);
  }
  auto by_price = [](const Offer* a, const Offer* b) {
    if (a->price_per_hour != b->price_per_hour) return a->price_per_hour < b->price_per_hour;
    return a->id < b->id;
  };
  if (req.sort == "reliability") {
    std::sort(ok.begin(), ok.end(), [&](const Offer* a, const Offer* b) {
      if (a->reliability != b->reliability) return a->reliability > b->reliability;
      return by_price(a, b);
    });
  } else if (req.sort == "value") {
    std::sort(ok.begin(), ok.end(), [&](const Offer* a, const Offer* b) {
      double va = Value(*a), vb = Value(*b);
      if (va != vb) return va > vb;
      return by_price(a, b);
    });
  } else {
    std::sort(ok.begin(), ok.end(), by_price);
  }
  std::vector<Offer> out;
  for (size_t i = 0; i < ok.size() && out.size() < n; ++i) out.push_back(*ok[i]);
  return out;
}

std::string_view DeployPhaseName(DeployPhase p) {
  switch (p) {
    case DeployPhase::kRunning: return "running";
    case DeployPhase::kSucceeded: return "succeeded";
    case DeployPhase::kFailed: return "failed";
  }
  return "unknown";
}

std::string_view EndReasonName(EndReason r) {
  switch (r) {
    case EndReason::kNone: return "none";
    case EndReason::kWinner: return "winner";
    case EndReason::kLoser: return "loser";
    case EndReason::kFailed: return "failed";
    case EndReason::kBatchTimeout: return "batch_timeout";
    case EndReason::kDeployFailed: return "deploy_failed";
    case EndReason::kCancelled: return "cancelled";
  }
  return "unknown";
}

int64_t DeployMachine::BilledSeconds() const {
  if (ended_ms == 0 || ended_ms <= created_ms) return 0;
  return (ended_ms - created_ms + 999) / 1000;
}

MultiStartDeploy::MultiStartDeploy(DeployStrategy strategy, std::vector<Offer> offers, Requirements req,
                                   std::set<std::string> blacklist, std::string instance_id,
                                   int64_t first_attempt)
    : s_(strategy),
      offers_(std::move(offers)),
      req_(std::move(req)),
      blacklist_(std::move(blacklist)),
      instance_id_(std::move(instance_id)),
      next_attempt_(first_attempt) {}

const DeployMachine* MultiStartDeploy::winner() const {
  return winner_ < 0 ? nullptr : &machines_[static_cast<size_t>(winner_)];
}

void MultiStartDeploy::End(DeployMachine& m, int64_t now_ms, EndReason why, Decision& d) {
  m.ended_ms = std::max(now_ms, m.created_ms + 1);  // a machine that existed is billed at least 1 s
  m.end = why;
  if (why == EndReason::kFailed) ++failed_machines_;
  if (why == EndReason::kBatchTimeout) ++timed_out_machines_;
  if (why != EndReason::kWinner) d.destroy.push_back({m.label, m.machine_id, m.offer.id, why});
}

void MultiStartDeploy::Fail(int64_t now_ms, Status why, Decision& d) {
  for (auto& m : machines_) {
    if (m.alive()) End(m, now_ms, EndReason::kDeployFailed, d);
  }
  phase_ = DeployPhase::kFailed;
  failure_ = std::move(why);
  finished_ms_ = now_ms;
  d.phase = phase_;
  d.next_step_at_ms = 0;
}

bool MultiStartDeploy::StartBatch(int64_t now_ms, Decision& d) {
  auto picks = PickCandidates(offers_, req_, blacklist_, static_cast<size_t>(std::max(0, s_.batch_size)), tried_);
  if (picks.empty()) return false;
  ++batches_;
  batch_deadline_ms_ = now_ms + s_.batch_timeout_s * 1000;
  for (auto& o : picks) {
    tried_.insert(o.id);
    DeployMachine m;
    m.label = provider::MachineLabel(instance_id_, next_attempt_++);
    m.offer = o;
    m.batch = batches_;
    m.created_ms = now_ms;
    m.expires_ms = batch_deadline_ms_;
    d.start.push_back({m.label, m.offer, m.batch});
    machines_.push_back(std::move(m));
  }
  return true;
}

void MultiStartDeploy::SetNext(Decision& d) const {
  d.phase = phase_;
  if (phase_ != DeployPhase::kRunning) {
    d.next_step_at_ms = 0;
    return;
  }
  int64_t next = batch_deadline_ms_;
  for (const auto& m : machines_) {
    if (m.alive()) next = std::min(next, m.expires_ms);
  }
  d.next_step_at_ms = next;
}

Decision MultiStartDeploy::Step(int64_t now_ms, const ProviderView& view) {
  Decision d;
  if (done()) {
    d.phase = phase_;
    return d;
  }
  if (batches_ == 0) {  // the first step: start batch 1
    started_ms_ = now_ms;
    if (Status v = ValidateRequirements(req_); !v.ok()) {
      Fail(now_ms, v, d);
      return d;
    }
    if (s_.batch_size < 1 || s_.max_batches < 1 || s_.batch_timeout_s < 1) {
      Fail(now_ms, Status::InvalidArgument("deploy strategy needs batch_size, max_batches and batch_timeout_s >= 1"), d);
      return d;
    }
    if (!StartBatch(now_ms, d)) {
      Fail(now_ms,
           Status::NotFound("no offer matches the requirements (gpu '" + req_.gpu + "', " +
                            std::to_string(req_.num_gpus) + " GPU(s), >= " + Num(req_.min_vram_gb) +
                            " GB VRAM, region '" + req_.region + "', max price " +
                            (req_.max_price > 0 ? Num(req_.max_price) + " $/h" : std::string("none")) + ", " +
                            std::to_string(blacklist_.size()) + " blacklisted id(s), " +
                            std::to_string(offers_.size()) + " offer(s) listed); relax them or try later"),
           d);
      return d;
    }
    SetNext(d);
    return d;
  }

  // 1. Observe every live machine.
  for (auto& m : machines_) {
    if (!m.alive()) continue;
    if (auto p = view.Observe(m.label)) {
      m.last_state = p->state;
      m.last_reachable = p->reachable;
      if (!p->machine_id.empty()) m.machine_id = p->machine_id;
    }
  }

  // 2. A winner: running AND reachable. Several at once: the cheapest, then the earliest created.
  int win = -1;
  for (size_t i = 0; i < machines_.size(); ++i) {
    auto& m = machines_[i];
    if (!m.alive() || m.last_state != MachineState::kRunning || !m.last_reachable) continue;
    if (win < 0) {
      win = static_cast<int>(i);
      continue;
    }
    const auto& w = machines_[static_cast<size_t>(win)];
    if (m.offer.price_per_hour < w.offer.price_per_hour) win = static_cast<int>(i);
  }
  if (win >= 0) {
    winner_ = win;
    End(machines_[static_cast<size_t>(win)], now_ms, EndReason::kWinner, d);
    for (auto& m : machines_) {
      if (m.alive()) End(m, now_ms, EndReason::kLoser, d);  // losers go at once: they bill per second
    }
    phase_ = DeployPhase::kSucceeded;
    finished_ms_ = now_ms;
    SetNext(d);
    return d;
  }

  // 3. Failed machines are destroyed at once (marketplaces bill failed/exited machines' disks too).
  for (auto& m : machines_) {
    if (m.alive() && Dead(m.last_state)) End(m, now_ms, EndReason::kFailed, d);
  }

  // 4. The current batch timed out: its still-booting machines either carry over into the next batch
  //    (destroyed at that batch's timeout) or go now. Without a next batch everything goes.
  auto can_start_next = [&] {
    return batches_ < s_.max_batches && !PickCandidates(offers_, req_, blacklist_, 1, tried_).empty();
  };
  const bool timed_out = now_ms >= batch_deadline_ms_;
  const bool next_possible = can_start_next();
  if (timed_out) {
    for (auto& m : machines_) {
      if (!m.alive() || m.batch != batches_) continue;
      if (s_.carry_over && next_possible) m.expires_ms = now_ms + s_.batch_timeout_s * 1000;
      else m.expires_ms = now_ms;
    }
  }
  for (auto& m : machines_) {
    if (m.alive() && m.expires_ms <= now_ms) End(m, now_ms, EndReason::kBatchTimeout, d);
  }

  // 5. Start the next batch when the current one timed out or has no live machine left.
  bool current_live = false, any_live = false;
  for (const auto& m : machines_) {
    if (!m.alive()) continue;
    any_live = true;
    if (m.batch == batches_) current_live = true;
  }
  if (timed_out || !current_live) {
    if (next_possible) {
      StartBatch(now_ms, d);
    } else if (!any_live) {
      const int started = static_cast<int>(machines_.size());
      std::string what = std::to_string(started) + " machine(s) from " + std::to_string(batches_) +
                         " batch(es): " + std::to_string(failed_machines_) + " failed, " +
                         std::to_string(timed_out_machines_) + " not ready within " +
                         std::to_string(s_.batch_timeout_s) + " s of their batch";
      if (batches_ >= s_.max_batches) {
        Fail(now_ms,
             Status::Unavailable("no machine became ready in " + std::to_string(s_.max_batches) +
                                 " batches (" + what + "); try again later or relax the requirements"),
             d);
      } else {
        Fail(now_ms,
             Status::Unavailable("no untried offers left after " + std::to_string(batches_) + " batch(es) (" +
                                 what + "); relax the requirements or try again later"),
             d);
      }
      return d;
    }
    // else: no next batch, but carried-over machines are still booting; wait for them.
  }
  SetNext(d);
  return d;
}

Decision MultiStartDeploy::Cancel(int64_t now_ms, const std::string& reason) {
  Decision d;
  if (done()) {
    d.phase = phase_;
    return d;
  }
  for (auto& m : machines_) {
    if (m.alive()) End(m, now_ms, EndReason::kCancelled, d);
  }
  phase_ = DeployPhase::kFailed;
  failure_ = Status::FailedPrecondition("deploy cancelled: " + reason);
  finished_ms_ = now_ms;
  SetNext(d);
  return d;
}

double MultiStartDeploy::LoserCostUsd() const {
  double c = 0;
  for (size_t i = 0; i < machines_.size(); ++i) {
    if (static_cast<int>(i) != winner_) c += machines_[i].CostUsd();
  }
  return c;
}

double MultiStartDeploy::WinnerBootCostUsd() const {
  const DeployMachine* w = winner();
  return w ? w->CostUsd() : 0;
}

}  // namespace dumont::fleet
