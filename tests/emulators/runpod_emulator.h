// A local emulator of the RunPod GraphQL API subset in /work/shared/providers.md (sections 2 and
// 4), for testing provider::NewRunPodProvider without the real service (which cannot be reached
// from here).
//
// Served on the project's own http::Server + http::Router: one route, POST /graphql, Auth::kNone:
// the emulator checks the RunPod API key itself ("Authorization: Bearer KEY" or ?api_key=KEY; else
// HTTP 401). The body is {"query": "...", "variables": {...}}. A minimal GraphQL parser reads one
// operation (query/mutation/shorthand, optional variable definitions with defaults), its root
// fields with inline or $variable arguments, and the selection sets; answers carry exactly the
// selected fields, and a field the schema lacks is a 400 validation error, as a GraphQL server
// gives. No fragments/directives.
//
// Root fields: gpuTypes(input?: {id}) with lowestPrice(input: {gpuCount, secureCloud?}),
// myself { pods }, pod(input: {podId}), podFindAndDeployOnDemand(input), podRentInterruptable(input
// + bidPerGpu), podStop, podResume, podBidResume, podTerminate. Errors follow RunPod: HTTP 200 with
// {"errors":[{"message", "extensions"?}], "data": null}; parse/validation errors HTTP 400; bad key
// 401.
//
// Capacity (providers.md 4): per (gpuTypeId, SECURE|COMMUNITY) a count of free GPUs, an on-demand
// price and a minimumBidPrice. A deploy without capacity answers "There are no longer any instances
// available ...". Lifecycle: deploy -> desiredStatus RUNNING, runtime null (pull_seconds) ->
// runtime {uptimeInSeconds, ports: []} -> after ports_delay_seconds a public 22/tcp port. podStop
// -> EXITED, runtime null, GPUs freed; podResume needs free GPUs on the pool ("There are not enough
// free GPUs on the host machine to start this pod."); podTerminate removes the pod (pod query ->
// null; again -> "pod not found to terminate"). Preempt() interrupts a spot pod: EXITED, runtime
// null, its GPUs kept by a competitor bidding 1.5 x its bid; podBidResume above that bid resumes
// it.
//
// "Backed by the local provider": when a pod's runtime comes up, a real local machine
// (provider::NewLocalProvider under <state_dir>/machines: a workspace directory + a real
// dumont-agent) is created with the env of the deploy request; stop and interruption stop its agent
// (SIGTERM, short grace, SIGKILL), resume restarts it, terminate removes it. dockerArgs are
// recorded, not run.
//
// Faults: per-create outcomes (never ready = RUNNING with runtime null forever; fail at boot =
// desiredStatus DEAD), spot interruption, stockout (TakeOffer / SetCapacity), 429 storms, 5xx,
// GraphQL INTERNAL_SERVER_ERROR, lost create responses (the pod is created, then the answer is a
// bodiless 502 or arrives after the client's timeout), balance exhausted (pods stopped; those
// without a network volume terminated, providers.md 2.5). Time: a real steady clock scaled by the
// option delays (all per-test parameters); randomness is seeded.
//
// Fault and count endpoints are the same names as VastEmulator's, so one suite can drive both:
// search (gpuTypes) create (both deploy mutations) show (pod) list (myself) manage (podStop /
// podResume / podBidResume) destroy (podTerminate); "" = any.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "common/log.h"
#include "common/status.h"
#include "http/router.h"
#include "http/server.h"
#include "provider/provider.h"

namespace dumont::emulators {

struct RunPodEmulatorOptions {
  std::string host = "127.0.0.1";
  uint16_t port = 0;  // 0: any free port
  std::string api_key = "runpod-emulator-key";
  std::string state_dir;             // local machines live in <state_dir>/machines
  std::string agent_path;            // dumont-agent binary for the local machines
  double pull_seconds = 0.3;         // RUNNING with runtime null (RunPod: 30 s - 10 min image pull)
  double ports_delay_seconds = 0.1;  // runtime up, ports not yet assigned
  uint64_t seed = 1;
  int gpu_types = 5;  // how many of the built-in GPU types are served (1..5)
  int free_gpus = 8;  // per GPU type and cloud at start
  // Random faults applied to each create / request (the process flags), 0..1.
  double fail_at_boot_rate = 0;
  double never_ready_rate = 0;
  double lost_create_rate = 0;
  double rate_limit_rate = 0;        // any request answered 429
  double server_error_rate = 0;      // any request answered 503
  double lost_response_delay_s = 3;  // kLateAnswer: how long the answer is held back
  bool spawn_agents = true;          // false: pods run without a local machine
};

struct GqlField;  // one parsed GraphQL field (runpod_emulator.cc)

class RunPodEmulator {
 public:
  enum class CreateFault { kNone, kNeverReady, kFailAtBoot };
  enum class LostMode { kBodyless502, kLateAnswer };

  explicit RunPodEmulator(RunPodEmulatorOptions opts);
  ~RunPodEmulator();  // Stop()s and destroys every local machine it created

  Status Start();
  void Stop();
  uint16_t port() const;
  std::string BaseUrl() const;  // http://host:port/graphql (the RUNPOD_API_BASE_URL equivalent)

  // ---- fault injection; endpoint names: search create show list manage destroy ("" = any)
  void InjectRateLimit(int n, const std::string& endpoint = "");  // next n matching requests: 429
  void InjectServerErrors(int n,
                          const std::string& endpoint = "");  // next n matching requests: 503
  void InjectInternalErrors(int n,
                            const std::string& endpoint = "");  // 200 + INTERNAL_SERVER_ERROR
  void LoseNextCreates(int n, LostMode mode = LostMode::kBodyless502);
  void SetNextCreateFault(CreateFault f);  // the next created pod
  // Stockout: no free GPUs of this type (cloud "" = both clouds); SetCapacity sets any count.
  void TakeOffer(const std::string& gpu_type_id, const std::string& cloud = "");
  void SetCapacity(const std::string& gpu_type_id, const std::string& cloud, int free_gpus);
  Status Preempt(const std::string& pod_id);  // interrupt a spot pod (outbid / capacity reclaimed)
  void ExhaustBalance();                      // balance at $0: every pod stops or is terminated

  // ---- inspection
  int InstanceCount() const;  // live (not terminated) pods
  int RequestCount(
      const std::string& endpoint) const;  // handled requests per endpoint (incl. faults)
  int FaultCount(const std::string& endpoint) const;  // 429/5xx/internal/lost answers per endpoint
  std::optional<nlohmann::json> Pod(const std::string& pod_id) const;  // every field, as rendered
  std::vector<nlohmann::json> OfferPool() const;  // per GPU type and cloud: free GPUs and prices
  nlohmann::json LastCreateInput() const;         // the resolved input of the last deploy mutation
  std::string LastQuery(
      const std::string& endpoint = "") const;  // the last GraphQL document ("" = any)
  // The local machine backing a pod (workspace dir, agent pid in details), if running or stopped.
  std::optional<provider::Machine> LocalMachine(const std::string& pod_id);

 private:
  struct GpuType {
    std::string id, display;
    int memory_gb = 0, max_count = 8;
    bool secure = true, community = true;
  };
  struct Pool {  // one (GPU type, cloud)
    int free = 0;
    double price = 0, min_bid = 0;
    std::string machine_id;
  };
  struct PodState {
    std::string id, name, image, gpu_type, cloud, machine_id, pod_host_id, docker_args, ports,
        volume_mount_path, network_volume_id;
    std::vector<std::pair<std::string, std::string>> env;
    int gpu_count = 1, container_disk_gb = 0, volume_gb = 0, vcpu = 0, memory_gb = 0;
    bool spot = false;
    double bid = 0, cost_per_hr = 0;
    std::string desired = "RUNNING";
    bool runtime = false;    // container up (runtime != null)
    bool holds_gpus = true;  // counted out of its pool
    bool preempted = false;  // interrupted; its GPUs are held by a competitor
    double competitor_bid = 0;
    double phase_since = 0, runtime_since = 0;
    CreateFault fault = CreateFault::kNone;
    std::string last_status_change;
    std::string local_id;     // local machine label once created
    bool want_local = false;  // pull finished: the ticker is creating/starting the local machine
    int ssh_port = 0;
  };
  // Local machines to stop or destroy once mu_ is released (the local provider blocks on agents).
  struct Effects {
    std::vector<std::string> stop, destroy;
  };

  std::optional<http::Response> Gate(const http::Request& req, const std::string& endpoint);
  bool Authorized(const http::Request& req) const;
  http::Response Handle(http::Request& req);
  Result<nlohmann::json> Resolve(const GqlField& f, bool mutation, Effects* fx);
  nlohmann::json RenderPod(const PodState& p) const;
  nlohmann::json RenderGpuType(const GpuType& g, const nlohmann::json& price_args) const;
  Result<nlohmann::json> Deploy(const nlohmann::json& input, bool spot);
  Result<nlohmann::json> StopPod(const std::string& id, Effects* fx);
  Result<nlohmann::json> ResumePod(const std::string& id, std::optional<double> bid);
  Result<nlohmann::json> TerminatePod(const std::string& id, Effects* fx);
  Pool& PoolOf(const std::string& gpu_type, const std::string& cloud);
  void ReleaseGpus(PodState& p);
  double Now() const;
  void TickLoop();
  void Tick();
  void Apply(const Effects& fx);

  RunPodEmulatorOptions o_;
  Logger logger_;
  std::unique_ptr<provider::Provider> local_;
  std::unique_ptr<http::Router> router_;
  std::unique_ptr<http::Server> server_;
  std::thread serve_thread_, tick_thread_;
  std::atomic<bool> stopping_{false};
  std::chrono::steady_clock::time_point t0_;

  mutable std::mutex mu_;
  std::mt19937_64 rng_;
  std::vector<GpuType> gpu_types_;
  std::map<std::string, Pool> pools_;  // "<gpu type id>|SECURE" / "|COMMUNITY"
  std::map<std::string, PodState> pods_;
  std::map<std::string, int> rate_limit_, server_errors_,
      internal_errors_;  // endpoint -> remaining
  int lost_creates_ = 0;
  LostMode lost_mode_ = LostMode::kBodyless502;
  CreateFault next_fault_ = CreateFault::kNone;
  std::map<std::string, int> requests_, faults_;
  nlohmann::json last_create_;
  std::map<std::string, std::string> last_query_;  // endpoint ("" = any) -> document
  bool started_ = false;
};

}  // namespace dumont::emulators
