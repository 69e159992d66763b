// The Google Compute Engine provider: CPU standby VMs (Spot by default) over the Compute Engine v1 REST
// API (JSON over HTTPS, libcurl), written from /work/shared/providers.md section 3. Google Cloud cannot
// be reached from the development machines: this client is tested against tests/emulators/gce_emulator
// (a local server that speaks the API as providers.md documents it), never against live Google Cloud.
//
// Endpoints used (under base_url, default https://compute.googleapis.com/compute/v1, then
// /projects/{project}/zones/{zone}):
//   POST   /instances?requestId=<uuid>        insert (returns a zone Operation)
//   GET    /instances/{name}                  one instance (404 = gone)
//   GET    /instances?maxResults=&pageToken=  list, paginated (nextPageToken)
//   POST   /instances/{name}/stop | /start    (Operation)
//   DELETE /instances/{name}                  (Operation; 404 = already gone = success)
//   POST   /operations/{op}/wait              until DONE (the server may return early: asked again)
//   GET    /operations?filter=operationType="compute.instances.preempted" AND targetLink="..."
// Auth (3.1): a service-account key signs an RS256 JWT assertion (OpenSSL), exchanged at token_url
// (grant_type jwt-bearer) for an access token, cached until shortly before it expires and refreshed
// once on a 401. The private key, the assertion and the token never appear in a URL, log or error.
// Retries: 429, 403 rateLimitExceeded, 5xx and network errors, exponential backoff with jitter.
// Names: the deterministic label dc-<instance>-<attempt> is the instance name (GceInstanceName, a
// reversible mapping onto RFC 1035) and the value of the GCE label "dumont-label". A lost insert
// answer is recovered by GET by name (and the insert's requestId), never by a second VM.
// Ids: a Machine id is "<zone>:<name>"; an offer id is "<zone>:<machine type>".
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "provider/provider.h"

namespace dumont::provider {

// A machine type offered in every configured zone. GCE publishes no price through the Compute API
// subset in providers.md, so prices are configuration (USD per hour, what the fleet compares).
struct GceMachineType {
  std::string name;  // e2-small
  int cpus = 0;
  double ram_gb = 0;
  double price_per_hour = 0;
};

struct GceOptions {
  std::string base_url = "https://compute.googleapis.com/compute/v1";  // the emulator's URL in tests
  // Where the JWT assertion is exchanged (and its "aud"). Left at this default, the key's token_uri is
  // used when the key has one (as google-auth does); set to anything else, this URL wins.
  std::string token_url = "https://oauth2.googleapis.com/token";
  // The service-account key file's contents (JSON: client_email, private_key PEM, private_key_id,
  // token_uri). Secret: never logged, never in an error message.
  std::string service_account_json;
  std::string scope = "https://www.googleapis.com/auth/compute";
  // Refresh the access token this long before it expires (google-auth refreshes 3 min 45 s early).
  std::chrono::seconds token_refresh_margin{60};

  std::string project;
  std::vector<std::string> zones = {"us-central1-a"};
  // Approximate us-central1 on-demand list prices (USD/h) when this was written; Spot is usually much
  // cheaper and varies. Set the prices you pay: they are only as true as this configuration.
  std::vector<GceMachineType> machine_types = {{"e2-micro", 2, 1, 0.0084},
                                               {"e2-small", 2, 2, 0.0168},
                                               {"e2-medium", 2, 4, 0.0335},
                                               {"e2-standard-2", 2, 8, 0.0670}};

  // Create.
  bool spot = true;                                // scheduling.provisioningModel SPOT
  std::string termination_action = "STOP";        // Spot: STOP (stays, TERMINATED) or DELETE
  std::string image = "projects/debian-cloud/global/images/family/debian-12";  // when MachineSpec::image is empty
  int disk_gb = 10;
  std::string disk_type = "pd-balanced";
  std::string network = "global/networks/default";
  std::string ssh_keys;  // optional metadata "ssh-keys" value, e.g. "ubuntu:ssh-ed25519 AAAA... user"
  // Run by the guest at boot (metadata "startup-script"). The agent's environment travels in the
  // metadata item "dumont-agent-env" (KEY='value' lines); the image must contain dumont-agent.
  std::string startup_script =
      "#!/bin/sh\n"
      "# dumont: start the agent with the environment from the instance metadata\n"
      "curl -sf -H 'Metadata-Flavor: Google' "
      "http://metadata.google.internal/computeMetadata/v1/instance/attributes/dumont-agent-env "
      ">/etc/dumont-agent.env && chmod 600 /etc/dumont-agent.env\n"
      "set -a; . /etc/dumont-agent.env; set +a\n"
      "nohup dumont-agent >>/var/log/dumont-agent.log 2>&1 &\n";
  // Environment given to the machine at boot, merged over MachineSpec::env (which already carries
  // DUMONT_AGENT_SERVER / DUMONT_AGENT_ENROLL_TOKEN when the fleet creates the machine).
  std::function<std::map<std::string, std::string>(const MachineSpec&)> enrollment_env;

  // Retries on 429, 403 rateLimitExceeded, 5xx and network errors: attempt n (1-based) waits
  // base_delay * multiplier^(n-1), capped at max_delay, with "equal jitter" (uniform in [d/2, d]).
  // max_attempts counts the first try. GCE asks to "wait a minute" on a rate quota: max_delay is the cap.
  int max_attempts = 6;
  std::chrono::milliseconds base_delay{1000};
  double backoff_multiplier = 2.0;
  std::chrono::milliseconds max_delay{30000};
  // Per HTTP request. Longer than the 2-minute deadline of zoneOperations.wait, which holds the answer.
  std::chrono::milliseconds request_timeout{150000};
  std::function<void(std::chrono::milliseconds)> sleep;  // backoff waits; default std::this_thread::sleep_for
  uint64_t jitter_seed = 0;                               // 0: random

  // Insert, stop, start and delete wait (zoneOperations.wait) this long for their Operation to be DONE,
  // so that errors such as a stockout are reported; past it they return and Get tells the rest.
  std::chrono::milliseconds operation_timeout{90000};
  // Pause between two wait calls when the server returns before DONE sooner than this.
  std::chrono::milliseconds operation_poll_interval{1000};
  int list_page_size = 500;  // maxResults per instances.list page
};

std::unique_ptr<Provider> NewGceProvider(const GceOptions& opts);

// The one vendor-state table (documented in gce.cc), exposed for tests: an Instance resource as
// instances.get returns it, to our MachineState.
MachineState GceMachineState(const nlohmann::json& instance);

// Machine label <-> GCE instance name (RFC 1035: [a-z]([-a-z0-9]{0,61}[a-z0-9])?). Letters, digits
// and single '-' are kept and each '_' becomes "--", so labels from MachineLabel stay readable
// (dc-ins_x-1 -> dc-ins--x-1). Labels outside the reversible domain (upper case, other characters,
// "--", '_' next to '-', not starting with a letter, ending in '-' or '_', too long) have no name.
std::optional<std::string> GceInstanceName(const std::string& label);
std::optional<std::string> GceLabelFromName(const std::string& name);

}  // namespace dumont::provider
