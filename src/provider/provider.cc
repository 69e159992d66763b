#include "provider/provider.h"

namespace dumont::provider {

nlohmann::json Offer::ToJson() const {
  return {{"id", id}, {"provider", provider}, {"gpu_name", gpu_name}, {"num_gpus", num_gpus},
          {"gpu_ram_gb", gpu_ram_gb}, {"cpu_cores", cpu_cores}, {"ram_gb", ram_gb}, {"disk_gb", disk_gb},
          {"price_per_hour", price_per_hour},
          {"spot_price_per_hour", spot_price_per_hour}, {"reliability", reliability}, {"location", location},
          {"inet_down_mbps", inet_down_mbps}, {"inet_up_mbps", inet_up_mbps}};
}

std::string_view MachineStateName(MachineState s) {
  switch (s) {
    case MachineState::kPending: return "pending";
    case MachineState::kRunning: return "running";
    case MachineState::kStopped: return "stopped";
    case MachineState::kTerminating: return "terminating";
    case MachineState::kTerminated: return "terminated";
    case MachineState::kFailed: return "failed";
    case MachineState::kUnknown: return "unknown";
  }
  return "unknown";
}

std::string MachineLabel(const std::string& instance_id, int64_t attempt) {
  return "dc-" + instance_id + "-" + std::to_string(attempt);
}

}  // namespace dumont::provider
