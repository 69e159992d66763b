// The local provider: a machine is a real workspace directory plus a running dumont-agent process
// (its own session, so it outlives a crashed dumontd, like a cloud VM would). The whole product flow
// runs for real on one host with no account anywhere. GPUs: the agent's probe finds NVML or
// nvidia-smi when the host has an NVIDIA GPU, else a virtual GPU (documented as simulated) whose
// utilisation file lives in the machine directory.
//
// Layout: <root>/<label>/ { machine.json, workspace/, agent/ (agent state), agent.log, virtual-gpu.json }
#pragma once

#include <string>

#include "provider/provider.h"

namespace dumont::provider {

struct LocalOptions {
  std::string root;        // <data_dir>/machines
  std::string agent_path;  // the dumont-agent binary
  double price_per_hour = 0.0;
};

std::unique_ptr<Provider> NewLocalProvider(const LocalOptions& opts);

// The virtual GPU file of a local machine (the agent reads it; PUT .../virtual-gpu writes it).
std::string LocalVirtualGpuFile(const Machine& m);

}  // namespace dumont::provider
