#include "provider/sim.h"

#include <cmath>
#include <mutex>
#include <random>

namespace dumont::provider {
namespace {

class SimProvider final : public Provider {
 public:
  SimProvider(SimOptions o, const Clock& clock) : o_(o), clock_(clock), rng_(o.seed) {}
  std::string Name() const override { return "sim"; }

  Result<std::vector<Offer>> Offers() override {
    std::vector<Offer> out;
    static const std::pair<const char*, double> kGpus[] = {{"RTX 4090", 24}, {"RTX 3090", 24}, {"A100 80GB", 80}, {"H100", 80}};
    for (int i = 0; i < o_.offers; ++i) {
      Offer off;
      off.id = "sim-" + std::to_string(i);
      off.provider = "sim";
      off.gpu_name = kGpus[i % 4].first;
      off.num_gpus = 1 + i % 2;
      off.gpu_ram_gb = kGpus[i % 4].second;
      off.cpu_cores = 8;
      off.ram_gb = 32;
      off.disk_gb = 100;
      off.price_per_hour = o_.price_per_hour * (1 + 0.1 * i);
      if (i / 4 % 2 == 0) off.spot_price_per_hour = off.price_per_hour * 0.4;  // half the offers of each GPU
      off.reliability = 0.9;
      off.location = "sim-region";
      out.push_back(off);
    }
    return out;
  }
  std::map<std::string, Capability> Capabilities() const override {
    return {{"stop", {true, ""}},
            {"virtual_gpu", {false, "sim machines have no agent; tests drive their telemetry directly"}},
            {"ssh", {false, "sim machines are not reachable"}},
            {"spot", {false, "the sim never preempts a machine; its offers' spot prices only feed the market views"}}};
  }

  Result<Machine> Create(const MachineSpec& spec) override {
    std::lock_guard l(mu_);
    if (auto it = by_label_.find(spec.label); it != by_label_.end()) {
      auto& m = machines_[it->second];
      if (m.machine.state != MachineState::kTerminated) return Refresh(m);
    }
    Sim s;
    s.machine.id = "sim-m" + std::to_string(next_++);
    s.machine.label = spec.label;
    s.machine.offer_id = spec.offer_id.empty() ? "sim-0" : spec.offer_id;
    s.machine.price_per_hour = o_.price_per_hour;
    s.machine.state = MachineState::kPending;
    s.machine.details = {{"env", spec.env}};  // what a real machine would get as boot user data
    s.created_ms = clock_.NowUnixMillis();
    std::uniform_real_distribution<double> u(0, 1);
    double r = u(rng_);
    if (r < o_.fail_fast_rate) s.fail = true;
    else if (r < o_.fail_fast_rate + o_.never_boot_rate) s.never = true;
    if (o_.boot_median_s > 0) {
      std::lognormal_distribution<double> ln(std::log(o_.boot_median_s), o_.boot_sigma);
      s.boot_ms = static_cast<int64_t>(ln(rng_) * 1000);
    }
    machines_[s.machine.id] = s;
    by_label_[spec.label] = s.machine.id;  // labels are looked up on every create: keep it O(log n)
    return Refresh(machines_[s.machine.id]);
  }
  Result<Machine> Get(const std::string& id) override {
    std::lock_guard l(mu_);
    auto it = machines_.find(id);
    if (it == machines_.end() || it->second.machine.state == MachineState::kTerminated) {
      return Err(Status::NotFound("sim machine " + id + " does not exist"));
    }
    return Refresh(it->second);
  }
  Result<std::vector<Machine>> ListByLabelPrefix(const std::string& prefix) override {
    std::lock_guard l(mu_);
    std::vector<Machine> out;
    for (auto& [id, m] : machines_) {
      if (m.machine.state != MachineState::kTerminated && m.machine.label.rfind(prefix, 0) == 0) out.push_back(Refresh(m));
    }
    return out;
  }
  Status Stop(const std::string& id) override { return SetStopped(id, true); }
  Status Start(const std::string& id) override { return SetStopped(id, false); }
  Status Destroy(const std::string& id) override {
    std::lock_guard l(mu_);
    auto it = machines_.find(id);
    if (it != machines_.end()) it->second.machine.state = MachineState::kTerminated;
    return Status::Ok();
  }

 private:
  struct Sim {
    Machine machine;
    int64_t created_ms = 0, boot_ms = 0;
    bool fail = false, never = false, stopped = false;
  };
  Machine Refresh(Sim& s) {
    if (s.machine.state == MachineState::kTerminated) return s.machine;
    if (s.stopped) s.machine.state = MachineState::kStopped;
    else if (s.fail) s.machine.state = MachineState::kFailed;
    else if (!s.never && clock_.NowUnixMillis() - s.created_ms >= s.boot_ms) s.machine.state = MachineState::kRunning;
    else s.machine.state = MachineState::kPending;
    return s.machine;
  }
  Status SetStopped(const std::string& id, bool stopped) {
    std::lock_guard l(mu_);
    auto it = machines_.find(id);
    if (it == machines_.end() || it->second.machine.state == MachineState::kTerminated) {
      return Status::NotFound("sim machine " + id + " does not exist");
    }
    it->second.stopped = stopped;
    return Status::Ok();
  }

  SimOptions o_;
  const Clock& clock_;
  std::mt19937_64 rng_;
  std::mutex mu_;
  std::map<std::string, Sim> machines_;
  std::map<std::string, std::string> by_label_;
  int next_ = 1;
};

}  // namespace

std::unique_ptr<Provider> NewSimProvider(const SimOptions& opts, const Clock& clock) {
  return std::make_unique<SimProvider>(opts, clock);
}

}  // namespace dumont::provider
