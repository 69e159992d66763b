// Store: the persistence interface of dumontd, one repository per aggregate. SqlStore implements it
// once over Db, so SQLite and PostgreSQL run the same statements; the conformance suite
// (store_conformance_test.cc) runs on both.
//
// Errors: NotFound when a row does not exist (or is not the caller's), AlreadyExists on unique
// violations, Unavailable when the database is away (retryable), FailedPrecondition when the schema
// is newer than this binary.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "store/db.h"

namespace dumont::store {

struct User {
  std::string id;
  std::string email;  // normalised lower-case
  std::string password_hash;
  std::string role;  // admin | user | readonly
  int64_t created_at = 0;
};

// A login session = one refresh-token family. Revoking it ends every token of the family, and the
// access tokens that carry its id.
struct Session {
  std::string id;
  std::string user_id;
  int64_t created_at = 0;
  int64_t expires_at = 0;
  std::optional<int64_t> revoked_at;
  std::string revoke_reason;
};

struct RefreshToken {
  std::string token_hash;  // SHA-256 hex of the token; the token itself is never stored
  std::string session_id;
  std::string user_id;
  int64_t issued_at = 0;
  int64_t expires_at = 0;
  std::optional<int64_t> used_at;
};

struct ApiKey {
  std::string id;
  std::string user_id;
  std::string name;
  std::string prefix;    // first characters, shown in listings
  std::string key_hash;  // SHA-256 hex
  int64_t created_at = 0;
  std::optional<int64_t> last_used_at;
  std::optional<int64_t> revoked_at;
};

// A managed machine slot. Spec (desired state and settings) is written by users through the API;
// status (observed state) only by controllers; they are updated by separate methods.
struct Instance {
  std::string id, owner, name, provider, offer_id, gpu, image;
  // spec
  std::string desired = "running";  // running | paused | hibernated | destroyed
  bool hib_enabled = true;
  double gpu_threshold_pct = 5;
  int64_t idle_seconds = 180;
  int64_t release_after_seconds = 1800;
  // status
  std::string state = "provisioning";
  std::string machine_id;
  int64_t attempt = 0;
  double price_per_hour = 0;
  std::string machine_json = "{}";  // provider details (local: workspace)
  std::string command_json;         // pending agent command, {"id","type",...}
  std::string last_snapshot;        // snapshot id of the latest committed snapshot
  std::string repo_password;        // the instance's snapshot repository password (never returned by the API)
  std::string message;
  int64_t state_since = 0;
  int64_t last_heartbeat = 0;
  bool released = false;
  int64_t created_at = 0, updated_at = 0;
  // spec: how machines are found for it (multi-start requirements and strategy, JSON; "{}" = defaults)
  std::string deploy_json = "{}";
};

struct Event {
  std::string id, instance_id, owner;
  int64_t time_ms = 0;
  std::string type, message;
};

struct AgentToken {
  std::string token_hash, instance_id, kind;  // kind: enroll | agent
  int64_t attempt = 0;
  int64_t created_at = 0, expires_at = 0;
  std::optional<int64_t> used_at, revoked_at;
};

struct Hibernation {
  std::string id, instance_id, owner;
  double price_per_hour = 0;
  int64_t started_at = 0;
  std::optional<int64_t> ended_at;
  double hours = 0, dollars = 0;
};

// One provisioning attempt of a provider machine (machine history; drives the blacklist).
struct MachineAttempt {
  std::string id, owner, instance_id, provider, host_id, offer_id, machine_id;
  int64_t started_at = 0;
  std::optional<int64_t> ready_at, ended_at;
  std::string outcome = "pending";  // pending | ready | failed
  std::string failure_reason;
};

// A multi-start deploy: the machines started for one instance's create, wake or replacement.
struct Deploy {
  std::string id, owner, instance_id;
  std::string reason;    // create | wake | replace
  std::string provider;
  std::string request_json = "{}";  // requirements + strategy
  std::string state = "pending";    // pending | running | succeeded | failed
  std::string message;
  std::string winner_machine_id;
  double loser_cost_usd = 0, total_cost_usd = 0;
  std::string machines_json = "[]";  // one entry per machine started (label, offer, outcome, cost)
  int64_t created_ms = 0;
  std::optional<int64_t> finished_ms;
};

// One progress event of a deploy; seq counts from 1 per deploy (SSE event ids).
struct DeployEvent {
  std::string deploy_id;
  int64_t seq = 0;
  int64_t time_ms = 0;
  std::string type;
  std::string data_json = "{}";
};

// A user's credentials for one provider, sealed (encrypted and authenticated) by the server's key;
// the store never sees the plaintext.
struct ProviderCredential {
  std::string owner, provider;
  std::string sealed;  // base64url of nonce || ciphertext
  std::string hint;    // e.g. "...a1b2", safe to show
  int64_t updated_at = 0;
};

struct BlacklistEntry {
  std::string provider, host_id, reason;
  bool automatic = false;
  int64_t created_at = 0;
};

// One market sample: the offers of one provider for one GPU model at one time (the market monitor,
// src/fleet/market.h, writes one row per provider and GPU model every round). Prices are dollars per
// GPU-hour (an offer's price divided by its GPU count).
struct MarketSnapshot {
  int64_t sampled_at = 0;
  std::string provider;
  std::string gpu;    // normalised model key (fleet::NormalizeGpuName): "RTX 4090", "A100 SXM4 80GB"
  double vram_gb = 0;  // per GPU, the largest any offer reported
  double min_price = 0, avg_price = 0, max_price = 0;  // on demand
  int64_t offers = 0;
  int64_t available_gpus = 0;  // GPUs summed over the offers
  double avg_reliability = 0;  // 0..1, as the provider reports it
  std::optional<double> spot_min_price;  // cheapest interruptible price; none when no offer had one
};

struct MarketQuery {
  std::string gpu, provider;  // empty: any
  int64_t since = 0, until = INT64_MAX;  // inclusive
  int limit = 1000;
};

class Store {
 public:
  virtual ~Store() = default;

  virtual std::string Backend() const = 0;
  virtual Status Ping() = 0;
  virtual Result<int64_t> SchemaVersion() = 0;

  // Users
  virtual Status CreateUser(const User& u) = 0;
  virtual Result<User> GetUser(const std::string& id) = 0;
  virtual Result<User> GetUserByEmail(const std::string& email) = 0;
  virtual Result<std::vector<User>> ListUsers() = 0;
  virtual Result<int64_t> CountUsers() = 0;
  virtual Status SetUserRole(const std::string& id, const std::string& role) = 0;
  virtual Status SetUserPassword(const std::string& id, const std::string& hash) = 0;

  // Sessions and refresh tokens
  virtual Status CreateSession(const Session& s, const RefreshToken& first) = 0;
  virtual Result<Session> GetSession(const std::string& id) = 0;
  virtual Status RevokeSession(const std::string& id, const std::string& reason, int64_t now) = 0;
  virtual Status RevokeUserSessions(const std::string& user_id, const std::string& reason, int64_t now) = 0;
  virtual Result<RefreshToken> GetRefreshToken(const std::string& token_hash) = 0;
  // Atomically marks old_hash used and inserts next. Returns false (and changes nothing) if old_hash
  // was already used: the caller treats that as replay.
  virtual Result<bool> RotateRefreshToken(const std::string& old_hash, const RefreshToken& next,
                                          int64_t now) = 0;

  // API keys (owned by one user)
  virtual Status CreateApiKey(const ApiKey& k) = 0;
  virtual Result<std::vector<ApiKey>> ListApiKeys(const std::string& user_id) = 0;
  virtual Result<ApiKey> GetApiKeyByHash(const std::string& key_hash) = 0;
  // NotFound unless the key exists, is active and belongs to user_id.
  virtual Status RevokeApiKey(const std::string& id, const std::string& user_id, int64_t now) = 0;
  virtual Status TouchApiKey(const std::string& id, int64_t now) = 0;

  // Instances (owned: *Owned methods answer NotFound for other users' instances)
  virtual Status CreateInstance(const Instance& i) = 0;
  virtual Result<Instance> GetInstance(const std::string& id) = 0;
  virtual Result<Instance> GetInstanceOwned(const std::string& id, const std::string& owner) = 0;
  virtual Result<std::vector<Instance>> ListInstances(const std::string& owner) = 0;
  virtual Result<std::vector<Instance>> ListLiveInstances() = 0;  // every instance not destroyed
  virtual Result<std::vector<std::string>> ListLiveInstanceIds() = 0;  // the same, ids only (cheap)
  virtual Status UpdateInstanceSpec(const Instance& i) = 0;        // name, desired, hibernation settings
  virtual Status UpdateInstanceStatus(const Instance& i) = 0;      // state and the other status fields
  virtual Status TouchHeartbeat(const std::string& id, int64_t now) = 0;
  // Many heartbeat timestamps in one transaction (the write-behind flush).
  virtual Status TouchHeartbeats(const std::vector<std::pair<std::string, int64_t>>& beats) = 0;

  virtual Status AddEvent(const Event& e) = 0;
  virtual Result<std::vector<Event>> ListEvents(const std::string& instance_id, int limit) = 0;

  virtual Status CreateAgentToken(const AgentToken& t) = 0;
  virtual Result<AgentToken> GetAgentToken(const std::string& token_hash) = 0;
  // Marks an enrollment token used; false if it already was (one-time).
  virtual Result<bool> UseEnrollToken(const std::string& token_hash, int64_t now) = 0;
  virtual Status RevokeAgentTokens(const std::string& instance_id, int64_t now) = 0;

  virtual Status StartHibernation(const Hibernation& h) = 0;
  // Closes the open hibernation of an instance (no-op when none is open).
  virtual Status EndHibernation(const std::string& instance_id, int64_t ended_at) = 0;
  virtual Result<std::vector<Hibernation>> ListHibernations(const std::string& owner) = 0;

  // Machine history and blacklist (hosts are the provider's physical machines behind offers)
  virtual Status AddAttempt(const MachineAttempt& a) = 0;
  // Marks the newest pending attempt of an instance ready or failed (no-op when none is pending).
  virtual Status FinishAttempt(const std::string& instance_id, const std::string& outcome, const std::string& reason,
                               int64_t now) = 0;
  virtual Result<std::vector<MachineAttempt>> ListAttempts(const std::string& provider, const std::string& host_id) = 0;
  virtual Result<std::vector<MachineAttempt>> ListAllAttempts() = 0;
  virtual Status AddBlacklist(const BlacklistEntry& e) = 0;  // replaces an existing entry
  virtual Status RemoveBlacklist(const std::string& provider, const std::string& host_id) = 0;  // NotFound
  virtual Result<std::vector<BlacklistEntry>> ListBlacklist() = 0;

  // Multi-start deploys and their progress events
  virtual Status CreateDeploy(const Deploy& d) = 0;
  virtual Status UpdateDeploy(const Deploy& d) = 0;  // state, message, winner, costs, machines, finished
  virtual Result<Deploy> GetDeploy(const std::string& id) = 0;
  virtual Result<Deploy> GetDeployOwned(const std::string& id, const std::string& owner) = 0;
  virtual Result<std::vector<Deploy>> ListDeploys(const std::string& owner, int limit) = 0;  // newest first
  // The newest deploy of an instance that is pending or running; nullopt when none.
  virtual Result<std::optional<Deploy>> OpenDeployOf(const std::string& instance_id) = 0;
  // Appends an event with the next seq of its deploy and returns that seq.
  virtual Result<int64_t> AddDeployEvent(const std::string& deploy_id, int64_t time_ms, const std::string& type,
                                         const std::string& data_json) = 0;
  virtual Result<std::vector<DeployEvent>> ListDeployEvents(const std::string& deploy_id, int64_t after_seq,
                                                            int limit) = 0;
  // Marks one machine's attempt ready / failed / cancelled (no-op when it is not pending).
  virtual Status FinishMachineAttempt(const std::string& provider, const std::string& machine_id,
                                      const std::string& outcome, const std::string& reason, int64_t now) = 0;

  // Provider credentials (sealed)
  virtual Status PutCredential(const ProviderCredential& c) = 0;  // insert or replace
  virtual Result<ProviderCredential> GetCredential(const std::string& owner, const std::string& provider) = 0;
  virtual Result<std::vector<ProviderCredential>> ListCredentials(const std::string& owner) = 0;
  virtual Result<std::vector<ProviderCredential>> ListAllCredentials() = 0;
  virtual Status DeleteCredential(const std::string& owner, const std::string& provider) = 0;  // NotFound

  // Market price history. Rows are keyed by (provider, gpu, sampled_at); adding a row with an existing
  // key replaces it. All rows are written in one transaction.
  virtual Status AddMarketSnapshots(const std::vector<MarketSnapshot>& rows) = 0;
  // The newest `limit` rows matching q, returned oldest first (then by provider, gpu).
  virtual Result<std::vector<MarketSnapshot>> ListMarketSnapshots(const MarketQuery& q) = 0;
  // The newest row of every (provider, gpu) sampled at or before `until`, ordered by gpu, provider.
  virtual Result<std::vector<MarketSnapshot>> LatestMarketSnapshots(int64_t until) = 0;
  // Retention: deletes rows sampled before `cutoff`; returns how many.
  virtual Result<int64_t> DeleteMarketSnapshotsBefore(int64_t cutoff) = 0;

  // Small key/value facts about the installation.
  virtual Result<std::optional<std::string>> GetMeta(const std::string& key) = 0;
  virtual Status SetMeta(const std::string& key, const std::string& value) = 0;
};

struct Migration {
  int64_t version;
  std::string name;
  std::string sql;  // portable SQL, statements separated by ';'
};
const std::vector<Migration>& Migrations();
int64_t LatestSchemaVersion();

// Opens the database at url, applies pending migrations, refuses a newer schema.
Result<std::unique_ptr<Store>> OpenStore(const std::string& url, int64_t now_unix);
Result<std::unique_ptr<Store>> OpenStoreOnDb(std::unique_ptr<Db> db, int64_t now_unix);

}  // namespace dumont::store
