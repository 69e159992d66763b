// A local emulator of the Vast.ai REST API subset in /work/shared/providers.md (sections 1 and 4), for
// testing provider::NewVastProvider without the real service (which cannot be reached from here).
//
// Served on the project's own http::Server + http::Router, every route Auth::kNone: the emulator checks
// the Vast API key itself, as Vast does ("Authorization: Bearer KEY" or ?api_key=KEY; else 401
// {"success":false,"error":"auth_error","msg":"Invalid user key"}).
//
// Paths: POST /api/v0/bundles/, PUT /api/v0/search/asks/, PUT /api/v0/asks/{id}/,
// GET /api/v0/instances/{id}/, GET /api/v0/instances/ (legacy), GET /api/v1/instances/ (keyset pages,
// limit <= 25, base64 next_token, 400 invalid_token), PUT /api/v0/instances/{id}/ (state / label),
// DELETE /api/v0/instances/{id}/, PUT /api/v0/instances/bid_price/{id}/, GET /api/v0/users/current/.
//
// Lifecycle (providers.md 4): create -> actual_status null -> (boot_seconds) loading -> (pull_seconds)
// running, with ports/public_ipaddr/ssh_host/status_msg filled in. "Backed by the local provider": when
// an instance reaches running, a real local machine (provider::NewLocalProvider under
// <state_dir>/machines, a workspace directory + a real dumont-agent) is created with the env of the
// create request (docker-style "-p ..." keys dropped, CONTAINER_API_KEY added as Vast does); stop and
// outbid stop its agent, start restarts it, destroy removes it. The "onstart" script is recorded, not
// run: the local machine runs dumont-agent directly.
//
// Faults: per-create outcomes (never ready = stuck in loading; fail at boot = actual_status "created" +
// "OCI runtime create failed" status_msg; exited), outbid/preemption of an interruptible, stockout
// (create on a rented or withdrawn offer: 404, or 410 with cancel_unavail), 429 storms (plain-text body,
// no Retry-After) and an optional per-endpoint minimum interval, 5xx, and lost create responses (the
// instance is created, then the answer is a bodiless 502, or arrives after the client's timeout).
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

struct VastEmulatorOptions {
  std::string host = "127.0.0.1";
  uint16_t port = 0;  // 0: any free port
  std::string api_key = "vast-emulator-key";
  std::string state_dir;   // local machines live in <state_dir>/machines
  std::string agent_path;  // dumont-agent binary for the local machines
  double boot_seconds = 0.2;  // null -> loading
  double pull_seconds = 0.3;  // loading -> running (Vast: 30-300 s)
  uint64_t seed = 1;
  int offers = 6;
  int list_page_cap = 25;                 // /api/v1/instances/ page size cap (Vast: 25)
  // Random faults applied to each create / request (the process flags), 0..1.
  double fail_at_boot_rate = 0;
  double never_ready_rate = 0;
  double lost_create_rate = 0;
  double rate_limit_rate = 0;             // any request answered 429
  double server_error_rate = 0;           // any request answered 503
  double min_interval_s = 0;              // per-endpoint minimum interval (Vast's 429 model); 0 = off
  double lost_response_delay_s = 3;       // kLateAnswer: how long the answer is held back
  bool spawn_agents = true;               // false: instances run without a local machine
};

class VastEmulator {
 public:
  enum class CreateFault { kNone, kNeverReady, kFailAtBoot, kExited };
  enum class LostMode { kBodyless502, kLateAnswer };

  explicit VastEmulator(VastEmulatorOptions opts);
  ~VastEmulator();  // Stop()s and destroys every local machine it created

  Status Start();
  void Stop();
  uint16_t port() const;
  std::string BaseUrl() const;  // http://host:port/api/v0 (the VAST_URL equivalent)

  // ---- fault injection; endpoint names: search create show list manage destroy bid user ("" = any)
  void InjectRateLimit(int n, const std::string& endpoint = "");    // next n matching requests: 429
  void InjectServerErrors(int n, const std::string& endpoint = ""); // next n matching requests: 503
  void LoseNextCreates(int n, LostMode mode = LostMode::kBodyless502);
  void SetNextCreateFault(CreateFault f);                           // the next created instance
  void TakeOffer(int64_t offer_id);                                 // rented by someone else: stockout
  Status Preempt(int64_t instance_id);                              // outbid: an interruptible is stopped
  Status SetActualStatus(int64_t instance_id, const std::string& actual, const std::string& status_msg);

  // ---- inspection
  int InstanceCount() const;                              // live (not destroyed) instances
  int RequestCount(const std::string& endpoint) const;    // handled requests per endpoint (incl. faults)
  int FaultCount(const std::string& endpoint) const;      // 429/5xx/lost answers given per endpoint
  std::optional<nlohmann::json> Instance(int64_t id) const;  // as GET would render it
  std::vector<nlohmann::json> OfferPool() const;
  nlohmann::json LastSearchBody() const;
  nlohmann::json LastCreateBody() const;
  // The local machine backing an instance (workspace dir, agent pid in details), if running or stopped.
  std::optional<provider::Machine> LocalMachine(int64_t instance_id);

 private:
  struct Inst {
    int64_t id = 0, machine_id = 0, offer_id = 0;
    nlohmann::json offer;
    std::string label, image, onstart, runtype, instance_api_key;
    std::map<std::string, std::string> env;
    bool is_bid = false;
    double bid = 0;
    std::string actual;  // "" = null
    std::string intended = "running", cur_state = "running", next_state = "running", status_msg;
    double phase_since = 0, start_date = 0;
    CreateFault fault = CreateFault::kNone;
    bool destroyed = false;
    bool outbid = false;     // stopped by Preempt(); a higher bid resumes it
    double disk = 0;
    std::string local_id;    // local machine label once created
    bool want_local = false; // loading finished: the ticker should create/start the local machine
    int ssh_port = 0;
  };
  using Handler = std::function<http::Response(http::Request&, const std::map<std::string, std::string>&)>;

  void AddRoute(const std::string& method, const std::string& path, const std::string& endpoint, Handler h);
  std::optional<http::Response> Gate(http::Request& req, const std::string& endpoint);
  bool Authorized(const http::Request& req) const;
  nlohmann::json Render(const Inst& i) const;
  double Now() const;
  void TickLoop();
  void Tick();

  http::Response Search(const nlohmann::json& q);
  http::Response Create(http::Request& req, const std::string& offer_id);
  http::Response Show(const std::string& id);
  http::Response ListV0();
  http::Response ListV1(const http::Request& req);
  http::Response Manage(http::Request& req, const std::string& id);
  http::Response Destroy(const std::string& id);
  http::Response ChangeBid(http::Request& req, const std::string& id);
  void StopLocal(const std::string& local_id);

  VastEmulatorOptions o_;
  Logger logger_;
  std::unique_ptr<provider::Provider> local_;
  std::unique_ptr<http::Router> router_;
  std::unique_ptr<http::Server> server_;
  std::thread serve_thread_, tick_thread_;
  std::atomic<bool> stopping_{false};
  std::chrono::steady_clock::time_point t0_;

  mutable std::mutex mu_;
  std::mt19937_64 rng_;
  std::vector<nlohmann::json> offers_;
  std::map<int64_t, Inst> instances_;
  int64_t next_id_ = 7835610;
  std::map<std::string, int> rate_limit_, server_errors_;  // endpoint -> remaining injected faults
  int lost_creates_ = 0;
  LostMode lost_mode_ = LostMode::kBodyless502;
  CreateFault next_fault_ = CreateFault::kNone;
  std::map<std::string, int> requests_, faults_;
  std::map<std::string, double> last_request_;
  nlohmann::json last_search_, last_create_;
  bool started_ = false;
};

}  // namespace dumont::emulators
