// A local emulator of the Google Compute Engine v1 API subset in /work/shared/providers.md (sections 3
// and 4), for testing provider::NewGceProvider without Google Cloud (which cannot be reached from here).
//
// Served on the project's own http::Server + http::Router, every route Auth::kNone: the emulator checks
// credentials itself, as Google does.
//   POST /token                                              OAuth 2 jwt-bearer grant: the RS256 assertion
//        is verified against the public key of a known service account (iss), aud = TokenUrl(), iat/exp
//        (at most 1 h, not expired), scope; answers an opaque token with expires_in (token_ttl_seconds).
//   /compute/v1/projects/{project}/zones/{zone}/...          "Authorization: Bearer <token>" or 401
//     POST   instances[?requestId=]          insert -> Operation      GET instances/{name}   Instance or 404
//     GET    instances?filter&maxResults&pageToken               POST instances/{name}/stop|start -> Operation
//     DELETE instances/{name}                -> Operation            GET operations/{op}
//     POST   operations/{op}/wait (blocks up to wait_cap_seconds, may return before DONE)
//     GET    operations?filter&maxResults&pageToken
// Filters: terms joined by AND, each field=value, field!=value or field:value (contains), values
// quoted or not, for name, status, operationType, targetLink (host-insensitive) and labels.KEY.
//
// State machine (providers.md 4): an insert answers an Operation PENDING -> RUNNING -> DONE
// (op_pending_seconds, op_done_seconds) and the instance goes PROVISIONING -> STAGING (natIP) ->
// RUNNING; stop: STOPPING -> TERMINATED; start: STAGING -> RUNNING; delete: STOPPING -> gone (404).
// requestId de-duplicates insert/stop/start/delete. "Backed by the local provider": when an instance
// reaches RUNNING, a real local machine (provider::NewLocalProvider under <state_dir>/machines, a
// workspace directory + a real dumont-agent) is created with the env of its metadata item
// "dumont-agent-env" (KEY='value' lines); TERMINATED stops its agent, start restarts it, delete removes it.
// The startup-script is recorded, not run: the local machine runs dumont-agent directly.
//
// Faults: never ready (stuck in STAGING), fail at boot (STAGING -> TERMINATED, never started), Spot
// preemption (RUNNING -> STOPPING -> TERMINATED or deleted, plus a compute.instances.preempted
// operation), stockout per zone / machine type (the insert or start Operation ends DONE with
// ZONE_RESOURCE_POOL_EXHAUSTED, no instance), 429 or 403 rateLimitExceeded storms and per-minute quota
// buckets, 5xx, lost insert answers (the instance is created, then the answer is a bodiless 502 or
// arrives after the client's timeout), and expired tokens (401 until the client gets a new one).
// Not modelled: the guest metadata server (instance/preempted), connection resets.
// Time: a real steady clock scaled by the option delays (all per-test parameters); randomness is seeded.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/log.h"
#include "common/status.h"
#include "http/router.h"
#include "http/server.h"
#include "provider/provider.h"

namespace dumont::emulators {

// A throwaway service account: a fresh RSA-2048 key pair (OpenSSL) and the key file JSON that
// provider::GceOptions::service_account_json takes.
struct GceServiceAccount {
  std::string client_email;
  std::string private_key_pem;  // PKCS#8
  std::string public_key_pem;   // SubjectPublicKeyInfo: what the emulator verifies with
  std::string key_json;         // type, project_id, private_key_id, private_key, client_email, token_uri
};
Result<GceServiceAccount> NewGceServiceAccount(const std::string& client_email, const std::string& project,
                                               const std::string& token_uri);

struct GceEmulatorOptions {
  std::string host = "127.0.0.1";
  uint16_t port = 0;  // 0: any free port
  std::string project = "dumont-emulated";
  std::vector<std::string> zones = {"us-central1-a", "us-central1-b"};
  std::vector<std::string> machine_types = {"e2-micro", "e2-small", "e2-medium", "e2-standard-2"};
  std::map<std::string, std::string> service_accounts;  // client_email -> public key PEM
  std::string state_dir;   // local machines live in <state_dir>/machines
  std::string agent_path;  // dumont-agent binary for the local machines
  double token_ttl_seconds = 3599;    // the expires_in answered
  double token_grace_seconds = 1;     // a token stays valid this much longer (Google: 3599 of 3600 s)
  double op_pending_seconds = 0.02;    // Operation PENDING -> RUNNING
  double op_done_seconds = 0.1;        // Operation -> DONE (GCE: 2-20 s)
  double provision_seconds = 0.05;     // PROVISIONING -> STAGING
  double staging_seconds = 0.1;        // STAGING -> RUNNING
  double stopping_seconds = 0.1;       // STOPPING -> TERMINATED / gone
  double preempt_grace_seconds = 0.2;  // a preempted VM's STOPPING (GCE: ~30 s)
  double spot_lifetime_seconds = 0;    // > 0: every Spot VM is preempted this long after RUNNING
  double wait_cap_seconds = 0.5;       // operations.wait returns by then, DONE or not (GCE: 2 min)
  uint64_t seed = 1;
  int list_page_cap = 500;             // maxResults cap (GCE: 500)
  // Random faults applied to each insert / request (the process flags), 0..1.
  double fail_at_boot_rate = 0;
  double never_ready_rate = 0;
  double lost_create_rate = 0;
  double rate_limit_rate = 0;          // any compute request answered 429 rateLimitExceeded
  double server_error_rate = 0;        // any request answered 503
  int requests_per_minute = 0;         // > 0: per-project quota bucket, 403 rateLimitExceeded beyond it
  double quota_window_seconds = 60;    // the bucket's "minute"
  double lost_response_delay_s = 3;    // kLateAnswer: how long the answer is held back
  bool spawn_agents = true;            // false: instances run without a local machine
};

class GceEmulator {
 public:
  enum class CreateFault { kNone, kNeverReady, kFailAtBoot };
  enum class LostMode { kBodyless502, kLateAnswer };

  explicit GceEmulator(GceEmulatorOptions opts);
  ~GceEmulator();  // Stop()s and destroys every local machine it created

  Status Start();
  void Stop();
  uint16_t port() const;
  std::string BaseUrl() const;   // http://host:port/compute/v1 (GceOptions::base_url)
  std::string TokenUrl() const;  // http://host:port/token (GceOptions::token_url, the JWT "aud")

  // ---- fault injection; endpoint names: token insert get list stop start delete op_get op_wait
  // op_list ("" = any)
  void InjectRateLimit(int n, const std::string& endpoint = "", int http_status = 429);  // 429, or 403
  void InjectServerErrors(int n, const std::string& endpoint = "");                    // next n: 503
  void LoseNextCreates(int n, LostMode mode = LostMode::kBodyless502);
  void SetNextCreateFault(CreateFault f);                            // the next inserted instance
  void Stockout(const std::string& zone, const std::string& machine_type = "", bool on = true);  // "" = all types
  Status Preempt(const std::string& name);                           // a Spot VM, any zone
  void ExpireTokens();                                               // every issued token is now expired

  // ---- inspection
  int InstanceCount() const;                            // live (not deleted) instances
  int RequestCount(const std::string& endpoint) const;  // handled requests per endpoint (incl. faults)
  int FaultCount(const std::string& endpoint) const;    // 429/403/5xx/lost answers given per endpoint
  int AuthFailureCount() const;                         // 401s (compute) and refused grants (token)
  std::optional<nlohmann::json> Instance(const std::string& name) const;  // as GET would render it
  nlohmann::json LastCreateBody() const;
  nlohmann::json LastTokenClaims() const;               // claims of the last verified JWT assertion
  // The local machine backing an instance (workspace dir, agent pid in details), if running or stopped.
  std::optional<provider::Machine> LocalMachine(const std::string& name);

 private:
  struct Inst {
    std::string id, name, zone, machine_type;
    nlohmann::json body;  // the insert body (disks, networkInterfaces, metadata, labels, scheduling)
    std::map<std::string, std::string> env;
    bool spot = false;
    std::string termination_action = "STOP";
    std::string status = "PROVISIONING", status_message;
    std::string created, last_start, last_stop;  // RFC 3339
    double phase_since = 0, running_since = 0;
    CreateFault fault = CreateFault::kNone;
    bool deleting = false, preempting = false, deleted = false;
    int ip = 0;               // networkIP / natIP host part
    std::string local_id;     // local machine label once created
    bool want_local = false;  // RUNNING reached: the ticker should create/start the local machine
  };
  struct Op {
    std::string id, name, zone, type, target, target_id, user, request_id;
    std::string status = "PENDING";
    std::string insert_time, start_time, end_time;
    double created = 0;
    nlohmann::json error;  // null, or {"errors":[...]} set when DONE
    int http_error = 0;
  };
  using Handler = std::function<http::Response(http::Request&, const std::map<std::string, std::string>&)>;

  void AddRoute(const std::string& method, const std::string& path, const std::string& endpoint, Handler h);
  std::optional<http::Response> Gate(http::Request& req, const std::string& endpoint);
  std::optional<http::Response> CheckScope(const std::map<std::string, std::string>& p, std::string* zone);
  nlohmann::json RenderInstance(const Inst& i) const;
  nlohmann::json RenderOp(const Op& o) const;
  std::string Link(const std::string& zone, const std::string& kind, const std::string& name) const;
  Op& NewOp(const std::string& zone, const std::string& type, const Inst* target, const std::string& target_name,
            const std::string& request_id);
  Inst* Find(const std::string& zone, const std::string& name);
  void BeginPreemption(Inst& i);  // REQUIRES: mu_ held
  bool StockedOut(const std::string& zone, const std::string& type) const;
  double Now() const;
  void TickLoop();
  void Tick();

  http::Response Token(const http::Request& req);
  http::Response Insert(http::Request& req, const std::string& zone);
  http::Response GetInstance(const std::string& zone, const std::string& name);
  http::Response List(const http::Request& req, const std::string& zone);
  http::Response Mutate(const http::Request& req, const std::string& zone, const std::string& name, const std::string& verb);
  http::Response GetOp(const std::string& zone, const std::string& name);
  http::Response WaitOp(const std::string& zone, const std::string& name);
  http::Response ListOps(const http::Request& req, const std::string& zone);

  GceEmulatorOptions o_;
  Logger logger_;
  std::unique_ptr<provider::Provider> local_;
  std::unique_ptr<http::Router> router_;
  std::unique_ptr<http::Server> server_;
  std::thread serve_thread_, tick_thread_;
  std::atomic<bool> stopping_{false};
  std::chrono::steady_clock::time_point t0_;

  mutable std::mutex mu_;
  std::mt19937_64 rng_;
  std::map<std::string, Inst> instances_;  // by id (digits), deleted ones kept for their local machine
  std::map<std::string, Op> ops_;          // by name
  std::map<std::string, std::string> request_ids_;  // requestId -> operation name
  std::map<std::string, double> tokens_;            // access token -> expiry (Now())
  uint64_t next_id_ = 5834726210931001;
  int next_ip_ = 2;
  std::map<std::string, int> rate_limit_, server_errors_;  // endpoint -> remaining injected faults
  int rate_limit_status_ = 429;
  int lost_creates_ = 0;
  LostMode lost_mode_ = LostMode::kBodyless502;
  CreateFault next_fault_ = CreateFault::kNone;
  std::map<std::string, std::vector<std::string>> stockouts_;  // zone -> machine types ("" = all)
  std::map<std::string, int> requests_, faults_;
  int auth_failures_ = 0;
  double quota_window_start_ = 0;
  int quota_used_ = 0;
  nlohmann::json last_create_, last_claims_;
  bool started_ = false;
};

}  // namespace dumont::emulators
