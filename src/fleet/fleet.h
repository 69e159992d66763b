// The fleet: instances (spec/status in the Store), the agent protocol (enroll, heartbeats, commands)
// and the lifecycle controller (level-triggered reconciler on a WorkQueue).
//
// Instance states: provisioning -> running <-> pausing/paused; running -> hibernating -> hibernated
// -> waking -> running; any -> destroying -> destroyed; error when a step cannot proceed (message
// says why). docs/fleet.md lists every transition.
//
// Crash safety: everything the controller needs is in the database; on start it re-enqueues every
// live instance, adopts machines created under the current label whose id was not saved, and
// destroys machines carrying our labels that no instance owns (no invisible billing).
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <unordered_map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/clock.h"
#include "common/log.h"
#include "auth/sealer.h"
#include "common/work_queue.h"
#include "fleet/decide.h"
#include "fleet/multistart.h"
#include "provider/provider.h"
#include "store/store.h"

namespace dumont::fleet {

struct FleetOptions {
  std::string data_dir;
  std::string public_url;  // how agents reach dumontd
  int64_t heartbeat_interval_s = 10;
  int64_t resync_interval_s = 30;
  int workers = 2;
};

// Builds a provider client from one user's credentials (the JSON object they saved in Settings).
using ProviderFactory = std::function<Result<std::unique_ptr<provider::Provider>>(const nlohmann::json& credentials)>;
struct CredentialSpec {
  std::string title;                  // "Vast.ai"
  std::vector<std::string> required;  // fields, all secret-or-not write-only strings
  std::vector<std::string> optional;
};

// What a deploy asks for: requirements and strategy (multistart.h), and optionally one pinned offer.
struct DeployRequest {
  Requirements req;
  DeployStrategy strategy;
  std::string offer_id;  // set: only this offer is started (the user picked it in the offers table)
  nlohmann::json ToJson() const;
};
// Parses {"requirements":{...},"strategy":{...},"offer_id":...}; errors name the field.
Result<DeployRequest> ParseDeployRequest(const nlohmann::json& j);

class Fleet {
 public:
  Fleet(store::Store& store, const Clock& clock, Logger* log, FleetOptions opts);
  ~Fleet();

  // Server-wide providers (configured by the operator: local, sim, a shared Vast key...).
  void AddProvider(std::unique_ptr<provider::Provider> p);
  provider::Provider* FindProvider(const std::string& name);
  std::vector<provider::Provider*> Providers();
  // Per-user providers: a user who saved credentials for `name` gets a client built from them;
  // it takes precedence over a server-wide provider of the same name.
  void RegisterProviderFactory(const std::string& name, CredentialSpec spec, ProviderFactory f);
  void SetSealer(auth::Sealer s) { sealer_.emplace(std::move(s)); }
  Result<std::shared_ptr<provider::Provider>> ProviderFor(const std::string& owner, const std::string& name);
  std::vector<std::shared_ptr<provider::Provider>> ProvidersFor(const std::string& owner);
  store::Store& store() { return store_; }
  void SetPublicUrl(const std::string& url) { opts_.public_url = url; }

  // Starts controller workers and the resync loop; adopts or destroys unknown machines first.
  void Start();
  void Stop();

  // ---- user operations (NotFound for other users' instances)
  Result<store::Instance> Create(const std::string& owner, const nlohmann::json& req);
  Result<std::vector<store::Instance>> List(const std::string& owner);
  Result<store::Instance> Get(const std::string& owner, const std::string& id);
  Result<store::Instance> Patch(const std::string& owner, const std::string& id, const nlohmann::json& req);
  Result<store::Instance> Destroy(const std::string& owner, const std::string& id);
  // pause | resume | hibernate | wake | snapshot
  Result<store::Instance> Action(const std::string& owner, const std::string& id, const std::string& action);
  Result<nlohmann::json> Snapshots(const std::string& owner, const std::string& id);
  Result<std::vector<store::Event>> Events(const std::string& owner, const std::string& id, int limit);
  Status SetVirtualGpu(const std::string& owner, const std::string& id, double util);
  nlohmann::json InstanceJson(const store::Instance& i);

  // ---- multi-start deploys (deploy.cc)
  // Creates an instance from {name, provider, image, hibernation, requirements, strategy, offer_id} and
  // returns its first deploy.
  Result<store::Deploy> StartDeploy(const std::string& owner, const nlohmann::json& req);
  Result<store::Deploy> GetDeploy(const std::string& owner, const std::string& id);
  Result<std::vector<store::Deploy>> ListDeploys(const std::string& owner, int limit);
  Result<std::vector<store::DeployEvent>> DeployEvents(const std::string& owner, const std::string& id,
                                                        int64_t after_seq, int limit);
  nlohmann::json DeployJson(const store::Deploy& d);

  // ---- provider credentials (settings; values are write-only: never returned)
  Result<nlohmann::json> ListCredentials(const std::string& owner);
  Result<nlohmann::json> PutCredentials(const std::string& owner, const std::string& provider, const nlohmann::json& body);
  Status DeleteCredentials(const std::string& owner, const std::string& provider);

  // ---- savings
  Result<nlohmann::json> Savings(const std::string& owner);
  Result<nlohmann::json> HibernationEvents(const std::string& owner);

  // ---- agent protocol
  Result<nlohmann::json> Enroll(const std::string& enroll_token);
  Result<nlohmann::json> Heartbeat(const std::string& agent_token, const nlohmann::json& body);

  // ---- controller (public for tests)
  Status Reconcile(const std::string& id);
  std::optional<Telemetry> TelemetryOf(const std::string& id);
  WorkQueue& queue() { return queue_; }

 private:
  std::mutex& LockFor(const std::string& id);
  Status Record(const store::Instance& i, const std::string& type, const std::string& message);
  Status SaveStatus(store::Instance& i);
  Status SetState(store::Instance& i, const std::string& state, const std::string& message);
  Result<store::Instance> CreateInstance(const std::string& owner, const nlohmann::json& req, store::Deploy* first);
  Status ReconcileLocked(store::Instance& i);
  void SweepOrphans();
  // deploy.cc
  struct ActiveDeploy;
  Status DeployStep(store::Instance& i, const std::shared_ptr<provider::Provider>& p);
  Status BeginDeploy(store::Instance& i, const std::shared_ptr<provider::Provider>& p);
  Status CancelDeploy(store::Instance& i, const std::string& why);
  Status EmitDeploy(ActiveDeploy& d, const std::string& type, nlohmann::json data);
  Status SaveDeploy(ActiveDeploy& d);
  bool NoteDeployBeat(const std::string& instance_id, int64_t attempt);
  Result<store::Deploy> NewDeployRow(const store::Instance& i, const std::string& reason);
  void WorkerLoop();
  void ResyncLoop();
  std::string RepoLocation(const std::string& instance_id) const;
  int64_t StaleMs() const { return opts_.heartbeat_interval_s * 3000 + 2000; }

  store::Store& store_;
  const Clock& clock_;
  Logger* log_;
  FleetOptions opts_;
  std::map<std::string, std::shared_ptr<provider::Provider>> providers_;
  struct Factory {
    CredentialSpec spec;
    ProviderFactory make;
  };
  std::map<std::string, Factory> factories_;
  std::optional<auth::Sealer> sealer_;
  struct UserProvider {
    std::string sealed;  // the credentials it was built from
    std::shared_ptr<provider::Provider> p;
  };
  std::mutex user_providers_mu_;
  std::map<std::pair<std::string, std::string>, UserProvider> user_providers_;  // (owner, name)
  std::mutex deploys_mu_;
  std::map<std::string, std::shared_ptr<ActiveDeploy>> active_;  // instance id -> its running deploy
  WorkQueue queue_;
  std::array<std::mutex, 64> locks_;
  std::mutex telemetry_mu_;
  std::map<std::string, Telemetry> telemetry_;
  // Agent tokens seen recently (hash -> instance, attempt): heartbeats skip the token lookup.
  // Entries of an instance are dropped whenever its tokens are revoked.
  struct CachedToken {
    std::string instance_id;
    int64_t attempt;
  };
  std::mutex token_mu_;
  std::unordered_map<std::string, CachedToken> token_cache_;
  void ForgetTokens(const std::string& instance_id);
  // Heartbeat timestamps waiting for the next batched write (write-behind).
  std::mutex beats_mu_;
  std::unordered_map<std::string, int64_t> pending_beats_;
 public:
  Status FlushHeartbeats();
 private:
  std::atomic<bool> running_{false};
  std::vector<std::thread> threads_;
  std::mutex stop_mu_;
  std::condition_variable stop_cv_;
};

}  // namespace dumont::fleet
