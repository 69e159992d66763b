// The RunPod provider: the Provider interface over RunPod's GraphQL API (JSON over HTTPS, libcurl),
// written from /work/shared/providers.md section 2. RunPod cannot be reached from the development
// machines: this client is tested against tests/emulators/runpod_emulator (a local server that
// speaks the API as providers.md documents it), never against the live service.
//
// Every call is POST base_url (default https://api.runpod.io/graphql) with {"query": "..."};
// arguments are inline literals, as runpod-python and dstack send them (providers.md 2.2):
//   query    gpuTypes { ... lowestPrice(input: {gpuCount, secureCloud}) { ... } }   offers
//   mutation podFindAndDeployOnDemand(input: {...})   create (name = our dc-<instance>-<attempt>)
//   mutation podRentInterruptable(input: {..., bidPerGpu})   create, spot
//   query    pod(input: {podId})                       show one (null = gone)
//   query    myself { pods { ... } }                   list (not paginated)
//   mutation podStop / podResume / podBidResume       stop / start (spot: resume at a bid)
//   mutation podTerminate(input: {podId})             destroy ("pod not found to terminate" = gone)
// Auth: "Authorization: Bearer <api_key>" (never in the URL, never in a log or an error message).
// Errors: RunPod answers most of them as HTTP 200 with {"errors":[{"message",
// "extensions":{"code"}}]}; they map to Status codes here (no capacity -> ResourceExhausted,
// INTERNAL_SERVER_ERROR -> retried). Retries: 429, 5xx, INTERNAL_SERVER_ERROR and network errors,
// exponential backoff with jitter. A create whose response is lost is recovered by listing by pod
// name, never repeated blindly.
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "provider/provider.h"

namespace dumont::provider {

struct RunPodOptions {
  std::string base_url = "https://api.runpod.io/graphql";  // RUNPOD_API_BASE_URL equivalent
  std::string api_key;

  // Retries on 429, 5xx, GraphQL INTERNAL_SERVER_ERROR and network errors: attempt n (1-based)
  // waits base_delay * multiplier^(n-1), capped at max_delay, with "equal jitter" (uniform in
  // [d/2, d]), so successive waits never shrink. max_attempts counts the first try.
  int max_attempts = 6;
  std::chrono::milliseconds base_delay{500};
  double backoff_multiplier = 2.0;
  std::chrono::milliseconds max_delay{20000};
  std::chrono::milliseconds request_timeout{60000};      // per HTTP request
  std::function<void(std::chrono::milliseconds)> sleep;  // default: std::this_thread::sleep_for
  uint64_t jitter_seed = 0;                              // 0: random

  // Environment given to the pod, merged over MachineSpec::env (which already carries
  // DUMONT_AGENT_SERVER / DUMONT_AGENT_ENROLL_TOKEN when the fleet creates the machine), e.g. a
  // DUMONT_AGENT_SERVER reachable from the internet, or PUBLIC_KEY for RunPod images' sshd.
  std::function<std::map<std::string, std::string>(const MachineSpec&)> enrollment_env;

  // Create defaults (providers.md 2.2). The image must start dumont-agent, which reads the
  // DUMONT_AGENT_* variables of "env"; docker_args, when set, replaces the image's start command.
  std::string image =
      "runpod/pytorch:2.4.0-py3.11-cuda12.4.1-devel-ubuntu22.04";  // if spec.image is empty
  std::string docker_args;
  int gpu_count = 1;
  std::string cloud_type = "SECURE";  // ALL | SECURE | COMMUNITY
  int container_disk_gb = 40;
  int volume_gb = 0;
  std::string volume_mount_path = "/workspace";
  int min_vcpu_count = 0;  // 0: not sent
  int min_memory_gb = 0;   // 0: not sent
  std::string ports = "22/tcp";
  std::string data_center_id;  // empty: any
  std::string country_code;    // empty: any
  bool interruptible = false;  // true: podRentInterruptable (spot), which RunPod can interrupt
  double bid_per_gpu = 0;      // spot bid, $/h per GPU; 0: the GPU type's minimumBidPrice
  std::vector<std::string> gpu_types;  // offers only for these gpuTypes ids; empty: all
};

std::unique_ptr<Provider> NewRunPodProvider(const RunPodOptions& opts);

// The one vendor-state table (documented in runpod.cc), exposed for tests: a pod object as RunPod
// returns it (pod(input) / myself.pods) to our MachineState.
MachineState RunPodMachineState(const nlohmann::json& pod);

}  // namespace dumont::provider
