// Multi-start: start several different offers at once, keep the first machine that is running AND
// reachable, destroy every other one at once. After a batch timeout the next batch starts with offers
// never tried in this deploy; after max_batches the deploy fails with a reason.
//
// Everything here is pure: MultiStartDeploy never calls a provider, never reads a clock of its own and
// never sleeps. Each Step() takes "now" and what the caller observed of the machines (a ProviderView)
// and returns orders (start these offers under these labels, destroy these machines) and the deploy's
// phase. The caller executes the orders (Provider::Create / Destroy), probes reachability (SSH banner or
// agent heartbeat) and calls Step again when something changed or at Decision::next_step_at_ms at the
// latest. The same inputs always give the same decisions, so tests and bench/multistart_bench.cc run
// thousands of deploys per second on a fake clock.
//
// Still-booting machines at a batch timeout: with DeployStrategy::carry_over (the default) they keep
// booting through the next batch and are destroyed at that batch's timeout (or at once when any
// machine wins), so at most 2 x batch_size machines are billed at a time and a machine lives at most
// 2 x batch_timeout_s. A machine still pending after 90 s has already paid for most of its boot and
// is, in the boot model of bench/README.md, more likely to be ready soon than a fresh one;
// bench/results/multistart.json compares both policies (batchN vs batchN_nocarry). With
// carry_over=false every machine of a batch is destroyed at its batch's timeout.
//
// Cost accounting: every machine is billed per started second from the Step that ordered its creation
// to the Step that ordered its destruction (the winner: to the Step that saw it ready, for the deploy's
// cost; it keeps running for the user) at its offer's price_per_hour / 3600.
#pragma once

#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "common/clock.h"
#include "common/status.h"
#include "provider/provider.h"

namespace dumont::fleet {

struct DeployStrategy {
  int batch_size = 5;
  int max_batches = 3;
  int64_t batch_timeout_s = 90;
  // Machines still booting at their batch's timeout keep booting through the next batch (see above).
  bool carry_over = true;
};

struct Requirements {
  std::string gpu;          // "" = any; compared without case, spaces, '-' and '_' ("rtx_4090" == "RTX 4090")
  int num_gpus = 0;         // 0 = any, else exactly this many
  double min_vram_gb = 0;   // per GPU
  double max_price = 0;     // $/h, 0 = no limit
  std::string region;       // "" = any; "US" matches "US-CA" and "California, US", not "AUSTRALIA"
  std::string sort = "price";  // price (cheapest first) | reliability (highest first) | value (reliability per $/h)
};

// InvalidField("sort") for an unknown sort order, InvalidField for negative limits.
Status ValidateRequirements(const Requirements& req);

// Up to n distinct offers (by id, first occurrence wins) that meet req, are not blacklisted (offer id)
// and were not already tried in this deploy, in req.sort order; ties break by price, then id, so the
// result does not depend on the input order. An unknown sort order sorts by price (validate first).
std::vector<provider::Offer> PickCandidates(const std::vector<provider::Offer>& offers, const Requirements& req,
                                            const std::set<std::string>& blacklisted_machine_or_offer_ids,
                                            size_t n, const std::set<std::string>& already_tried);

// What the caller last saw of the machine created under a label.
struct Probe {
  provider::MachineState state = provider::MachineState::kUnknown;
  // The machine answered: SSH banner read, or an agent heartbeat received since it was created.
  bool reachable = false;
  std::string machine_id;  // the provider's id, when known
};

class ProviderView {
 public:
  virtual ~ProviderView() = default;
  // nullopt: nothing known yet (create in flight, not listed yet) -- counted as still booting.
  // A create the provider refused, a machine that vanished (NotFound) and failed/stopped/terminated
  // machines are all reported with the corresponding state and count as failed.
  virtual std::optional<Probe> Observe(const std::string& label) const = 0;
};

enum class DeployPhase { kRunning, kSucceeded, kFailed };
std::string_view DeployPhaseName(DeployPhase p);

enum class EndReason { kNone, kWinner, kLoser, kFailed, kBatchTimeout, kDeployFailed, kCancelled };
std::string_view EndReasonName(EndReason r);

struct StartOrder {
  std::string label;  // deterministic: provider::MachineLabel(instance, first_attempt + k)
  provider::Offer offer;
  int batch = 0;      // 1-based
};

struct DestroyOrder {
  std::string label;
  std::string machine_id;  // empty when the machine was never observed (destroy by label)
  std::string offer_id;
  EndReason reason = EndReason::kNone;
};

struct Decision {
  std::vector<StartOrder> start;
  std::vector<DestroyOrder> destroy;
  DeployPhase phase = DeployPhase::kRunning;
  // Call Step again by then at the latest (ms since epoch); 0 when the deploy is over.
  int64_t next_step_at_ms = 0;
};

// One machine of the deploy, for accounting and events.
struct DeployMachine {
  std::string label;
  provider::Offer offer;
  int batch = 0;
  std::string machine_id;
  provider::MachineState last_state = provider::MachineState::kUnknown;
  bool last_reachable = false;
  int64_t created_ms = 0;
  int64_t expires_ms = 0;    // destroyed at this time unless it wins first
  int64_t ended_ms = 0;      // destroy ordered (or, for the winner, seen ready); 0 = alive
  EndReason end = EndReason::kNone;
  bool alive() const { return ended_ms == 0; }
  int64_t BilledSeconds() const;  // whole seconds, rounded up (per-second billing); 0 while alive
  double CostUsd() const { return static_cast<double>(BilledSeconds()) * offer.price_per_hour / 3600.0; }
};

class MultiStartDeploy {
 public:
  // `offers` is the catalog at deploy time; candidates come from it through PickCandidates.
  MultiStartDeploy(DeployStrategy strategy, std::vector<provider::Offer> offers, Requirements req,
                   std::set<std::string> blacklist, std::string instance_id, int64_t first_attempt = 1);

  Decision Step(const Clock& clock, const ProviderView& view) { return Step(clock.NowUnixMillis(), view); }
  Decision Step(int64_t now_ms, const ProviderView& view);
  // The user gave up: destroy every live machine, the deploy fails with `reason`.
  Decision Cancel(int64_t now_ms, const std::string& reason);

  DeployPhase phase() const { return phase_; }
  bool done() const { return phase_ != DeployPhase::kRunning; }
  // Set when failed: kInvalidArgument (bad requirements), kNotFound (no offer matches),
  // kUnavailable (every batch timed out / every machine failed; retrying later may help),
  // kCancelled is reported as kFailedPrecondition.
  const Status& failure() const { return failure_; }
  const DeployMachine* winner() const;
  int64_t started_ms() const { return started_ms_; }
  int64_t finished_ms() const { return finished_ms_; }  // ready or failed; 0 while running
  int batches_started() const { return batches_; }
  const std::vector<DeployMachine>& machines() const { return machines_; }
  const std::set<std::string>& tried_offer_ids() const { return tried_; }

  double LoserCostUsd() const;       // every machine but the winner
  double WinnerBootCostUsd() const;  // the winner from its create to ready
  double TotalCostUsd() const { return LoserCostUsd() + WinnerBootCostUsd(); }

 private:
  bool StartBatch(int64_t now_ms, Decision& d);  // false: no untried candidate left
  void End(DeployMachine& m, int64_t now_ms, EndReason why, Decision& d);
  void Fail(int64_t now_ms, Status why, Decision& d);
  void SetNext(Decision& d) const;

  DeployStrategy s_;
  std::vector<provider::Offer> offers_;
  Requirements req_;
  std::set<std::string> blacklist_;
  std::string instance_id_;
  int64_t next_attempt_;

  DeployPhase phase_ = DeployPhase::kRunning;
  Status failure_;
  std::vector<DeployMachine> machines_;
  std::set<std::string> tried_;
  int batches_ = 0;
  int64_t batch_deadline_ms_ = 0;
  int64_t started_ms_ = 0, finished_ms_ = 0;
  int winner_ = -1;
  int failed_machines_ = 0, timed_out_machines_ = 0;
};

}  // namespace dumont::fleet
