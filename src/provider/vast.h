// The Vast.ai provider: the Provider interface over Vast's REST API (JSON over HTTPS, libcurl), written
// from /work/shared/providers.md section 1. Vast.ai cannot be reached from the development machines:
// this client is tested against tests/emulators/vast_emulator (a local server that speaks the API as
// providers.md documents it), never against the live service.
//
// Endpoints used (all under base_url, default https://console.vast.ai/api/v0):
//   POST   /bundles/                 offer search (query body, 1.3)
//   PUT    /asks/{offer_id}/         create (label = our deterministic dc-<instance>-<attempt>)
//   GET    /instances/{id}/?owner=me show one ({"instances": null} = gone)
//   GET    /api/v1/instances/        list, keyset-paginated (limit <= 25, next_token -> after_token)
//   PUT    /instances/{id}/          {"state":"stopped"|"running"}
//   DELETE /instances/{id}/          destroy (404 / no_such_instance = already gone = success)
// Auth: "Authorization: Bearer <api_key>" (never in the URL, never in a log or an error message).
// Retries: 429 (Vast sends no Retry-After), 5xx and network errors, exponential backoff with jitter.
// A create whose response is lost is recovered by listing by label, never repeated blindly.
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "provider/provider.h"

namespace dumont::provider {

struct VastOptions {
  std::string base_url = "https://console.vast.ai/api/v0";  // VAST_URL equivalent (the emulator's URL in tests)
  std::string api_key;

  // Retries on 429, 5xx and network errors: attempt n (1-based) waits base_delay * multiplier^(n-1),
  // capped at max_delay, with "equal jitter" (a uniform value in [d/2, d]), so successive waits never
  // shrink. max_attempts counts the first try.
  int max_attempts = 6;
  std::chrono::milliseconds base_delay{500};
  double backoff_multiplier = 2.0;
  std::chrono::milliseconds max_delay{20000};
  std::chrono::milliseconds request_timeout{120000};  // per HTTP request (the CLI's 120 s)
  std::function<void(std::chrono::milliseconds)> sleep;  // default: std::this_thread::sleep_for
  uint64_t jitter_seed = 0;                               // 0: random

  // Environment given to the machine at boot, merged over MachineSpec::env (which already carries
  // DUMONT_AGENT_SERVER / DUMONT_AGENT_ENROLL_TOKEN when the fleet creates the machine). Use it for what
  // a Vast host needs beyond that, e.g. a DUMONT_AGENT_SERVER reachable from the internet.
  std::function<std::map<std::string, std::string>(const MachineSpec&)> enrollment_env;

  // Create defaults.
  std::string image = "pytorch/pytorch";  // when MachineSpec::image is empty
  double disk_gb = 20;
  bool interruptible = false;  // true: bid the offer's min_bid (a spot instance that can be outbid)
  // Shell run by Vast at container start ("onstart"). The image must contain dumont-agent; it reads the
  // DUMONT_AGENT_* variables passed in "env".
  std::string onstart = "nohup dumont-agent >>/var/log/dumont-agent.log 2>&1 &";
  std::string runtype = "ssh_direc ssh_proxy";
  // Extra offer-search filters merged over the CLI defaults, e.g. {"gpu_name":{"in":["RTX 4090"]}}.
  nlohmann::json offer_filters = nlohmann::json::object();
  int offer_limit = 100;
};

std::unique_ptr<Provider> NewVastProvider(const VastOptions& opts);

// The one vendor-state table (documented in vast.cc), exposed for tests: an instance object as Vast
// returns it (GET /instances/{id}/ -> "instances") to our MachineState.
MachineState VastMachineState(const nlohmann::json& instance);

}  // namespace dumont::provider
