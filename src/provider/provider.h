// Providers: where machines come from (SkyPilot's two layers). A Catalog answers "what could I rent"
// (offers with prices and capabilities); a Provisioner creates, finds and destroys machines. Machines
// carry a deterministic label (dc-<instance>-<attempt>), so a create whose answer was lost is found
// again by listing, and machines we pay for but do not know (orphans) are found and destroyed.
// Vendor states map to MachineState through one table per provider.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/status.h"

namespace dumont::provider {

struct Offer {
  std::string id;
  std::string provider;
  std::string gpu_name;
  int num_gpus = 0;
  double gpu_ram_gb = 0;
  int cpu_cores = 0;
  double ram_gb = 0;
  double disk_gb = 0;
  double price_per_hour = 0;
  double spot_price_per_hour = 0;  // 0 = not offered; the interruptible price of the whole offer
  double reliability = 0;  // 0..1, as the provider reports it
  std::string location;
  double inet_down_mbps = 0, inet_up_mbps = 0;
  nlohmann::json ToJson() const;
};

struct Capability {
  bool supported = false;
  std::string reason;  // why not, when unsupported
};

enum class MachineState { kPending, kRunning, kStopped, kTerminating, kTerminated, kFailed, kUnknown };
std::string_view MachineStateName(MachineState s);

struct MachineSpec {
  std::string label;        // dc-<instance>-<attempt>
  std::string offer_id;     // empty: the provider's default / cheapest
  std::string image;
  std::map<std::string, std::string> env;  // given to the machine's boot (agent enrollment)
};

struct Machine {
  std::string id;       // provider's machine id
  std::string label;
  std::string offer_id;
  MachineState state = MachineState::kUnknown;
  double price_per_hour = 0;
  std::string ssh_host;
  int ssh_port = 0;
  nlohmann::json details = nlohmann::json::object();  // provider-specific (local: workspace dir)
};

class Provider {
 public:
  virtual ~Provider() = default;
  virtual std::string Name() const = 0;

  // Catalog
  virtual Result<std::vector<Offer>> Offers() = 0;
  virtual std::map<std::string, Capability> Capabilities() const = 0;  // "stop", "virtual_gpu", "ssh", ...

  // Provisioner. Create is idempotent per label: if a machine with spec.label exists, it is returned.
  virtual Result<Machine> Create(const MachineSpec& spec) = 0;
  virtual Result<Machine> Get(const std::string& machine_id) = 0;  // NotFound when gone
  virtual Result<std::vector<Machine>> ListByLabelPrefix(const std::string& prefix) = 0;
  virtual Status Stop(const std::string& machine_id) = 0;    // Unimplemented where unsupported
  virtual Status Start(const std::string& machine_id) = 0;
  virtual Status Destroy(const std::string& machine_id) = 0;  // idempotent: gone is success
};

std::string MachineLabel(const std::string& instance_id, int64_t attempt);

}  // namespace dumont::provider
