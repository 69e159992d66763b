#include <algorithm>
#include <set>
#include <utility>

#include "store/store.h"

namespace dumont::store {
namespace {

Value Opt(const std::optional<int64_t>& v) {
  return v ? Value(*v) : Value(nullptr);
}
std::optional<int64_t> OptInt(const Row& r, size_t i) {
  if (r.IsNull(i)) return std::nullopt;
  return r.Int(i);
}

constexpr const char* kUserCols = "id, email, password_hash, role, created_at";
User ToUser(const Row& r) { return User{r.Str(0), r.Str(1), r.Str(2), r.Str(3), r.Int(4)}; }

constexpr const char* kSessionCols = "id, user_id, created_at, expires_at, revoked_at, revoke_reason";
Session ToSession(const Row& r) {
  return Session{r.Str(0), r.Str(1), r.Int(2), r.Int(3), OptInt(r, 4), r.Str(5)};
}

constexpr const char* kTokenCols = "token_hash, session_id, user_id, issued_at, expires_at, used_at";
RefreshToken ToToken(const Row& r) {
  return RefreshToken{r.Str(0), r.Str(1), r.Str(2), r.Int(3), r.Int(4), OptInt(r, 5)};
}

constexpr const char* kKeyCols =
    "id, user_id, name, prefix, key_hash, created_at, last_used_at, revoked_at";
ApiKey ToKey(const Row& r) {
  return ApiKey{r.Str(0), r.Str(1), r.Str(2), r.Str(3), r.Str(4), r.Int(5), OptInt(r, 6), OptInt(r, 7)};
}

constexpr const char* kInstanceCols =
    "id, owner, name, provider, offer_id, gpu, image, desired, hib_enabled, gpu_threshold_pct, idle_seconds, "
    "release_after_seconds, state, machine_id, attempt, price_per_hour, machine_json, command_json, last_snapshot, "
    "repo_password, message, state_since, last_heartbeat, released, created_at, updated_at, deploy_json";
Instance ToInstance(const Row& r) {
  Instance i;
  i.id = r.Str(0);
  i.owner = r.Str(1);
  i.name = r.Str(2);
  i.provider = r.Str(3);
  i.offer_id = r.Str(4);
  i.gpu = r.Str(5);
  i.image = r.Str(6);
  i.desired = r.Str(7);
  i.hib_enabled = r.Int(8) != 0;
  i.gpu_threshold_pct = r.Real(9);
  i.idle_seconds = r.Int(10);
  i.release_after_seconds = r.Int(11);
  i.state = r.Str(12);
  i.machine_id = r.Str(13);
  i.attempt = r.Int(14);
  i.price_per_hour = r.Real(15);
  i.machine_json = r.Str(16);
  i.command_json = r.Str(17);
  i.last_snapshot = r.Str(18);
  i.repo_password = r.Str(19);
  i.message = r.Str(20);
  i.state_since = r.Int(21);
  i.last_heartbeat = r.Int(22);
  i.released = r.Int(23) != 0;
  i.created_at = r.Int(24);
  i.updated_at = r.Int(25);
  i.deploy_json = r.Str(26);
  return i;
}
constexpr const char* kEventCols = "id, instance_id, owner, time_ms, type, message";
Event ToEvent(const Row& r) { return Event{r.Str(0), r.Str(1), r.Str(2), r.Int(3), r.Str(4), r.Str(5)}; }
constexpr const char* kAgentTokenCols = "token_hash, instance_id, kind, attempt, created_at, expires_at, used_at, revoked_at";
AgentToken ToAgentToken(const Row& r) {
  return AgentToken{r.Str(0), r.Str(1), r.Str(2), r.Int(3), r.Int(4), r.Int(5), OptInt(r, 6), OptInt(r, 7)};
}
constexpr const char* kHibCols = "id, instance_id, owner, price_per_hour, started_at, ended_at, hours, dollars";
Hibernation ToHib(const Row& r) {
  return Hibernation{r.Str(0), r.Str(1), r.Str(2), r.Real(3), r.Int(4), OptInt(r, 5), r.Real(6), r.Real(7)};
}

constexpr const char* kAttemptCols =
    "id, owner, instance_id, provider, host_id, offer_id, machine_id, started_at, ready_at, ended_at, outcome, "
    "failure_reason";
MachineAttempt ToAttempt(const Row& r) {
  return MachineAttempt{r.Str(0), r.Str(1), r.Str(2), r.Str(3), r.Str(4), r.Str(5), r.Str(6),
                        r.Int(7), OptInt(r, 8), OptInt(r, 9), r.Str(10), r.Str(11)};
}
constexpr const char* kDeployCols =
    "id, owner, instance_id, reason, provider, request_json, state, message, winner_machine_id, loser_cost_usd, "
    "total_cost_usd, machines_json, created_ms, finished_ms";
Deploy ToDeploy(const Row& r) {
  return Deploy{r.Str(0),  r.Str(1),  r.Str(2),  r.Str(3),  r.Str(4),  r.Str(5),  r.Str(6),
                r.Str(7),  r.Str(8),  r.Real(9), r.Real(10), r.Str(11), r.Int(12), OptInt(r, 13)};
}
constexpr const char* kCredCols = "owner, provider, sealed, hint, updated_at";
ProviderCredential ToCred(const Row& r) { return ProviderCredential{r.Str(0), r.Str(1), r.Str(2), r.Str(3), r.Int(4)}; }
constexpr const char* kBlacklistCols = "provider, host_id, reason, automatic, created_at";
BlacklistEntry ToBlacklist(const Row& r) { return BlacklistEntry{r.Str(0), r.Str(1), r.Str(2), r.Int(3) != 0, r.Int(4)}; }
constexpr const char* kMarketCols =
    "sampled_at, provider, gpu, vram_gb, min_price, avg_price, max_price, offers, available_gpus, avg_reliability, "
    "spot_min_price";
MarketSnapshot ToMarket(const Row& r) {
  MarketSnapshot m{r.Int(0), r.Str(1), r.Str(2), r.Real(3), r.Real(4), r.Real(5),
                   r.Real(6), r.Int(7), r.Int(8), r.Real(9), std::nullopt};
  if (!r.IsNull(10)) m.spot_min_price = r.Real(10);
  return m;
}

Status InsertToken(Conn& c, const RefreshToken& t) {
  auto r = c.Exec(std::string("INSERT INTO refresh_tokens (") + kTokenCols + ") VALUES (?, ?, ?, ?, ?, ?)",
                  {t.token_hash, t.session_id, t.user_id, t.issued_at, t.expires_at, Opt(t.used_at)});
  return r ? Status::Ok() : r.error();
}

class SqlStore final : public Store {
 public:
  explicit SqlStore(std::unique_ptr<Db> db) : db_(std::move(db)) {}

  std::string Backend() const override { return db_->Backend(); }
  Status Ping() override { return db_->Ping(); }

  Result<int64_t> SchemaVersion() override {
    auto rows = db_->Query("SELECT COALESCE(MAX(version), 0) FROM schema_migrations");
    if (!rows) return Err(rows.error());
    return rows->at(0).Int(0);
  }

  Status Migrate(int64_t now) {
    DUMONT_RETURN_STATUS_IF_ERROR(db_->ExecScript(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, "
        "applied_at BIGINT NOT NULL)"));
    auto recorded = db_->Query("SELECT version FROM schema_migrations");
    if (!recorded) return recorded.error();
    std::set<int64_t> applied;
    for (const auto& r : *recorded) applied.insert(r.Int(0));
    auto current = SchemaVersion();
    if (!current) return current.error();
    if (*current > LatestSchemaVersion()) {
      return Status::FailedPrecondition(
          "the database schema is at version " + std::to_string(*current) +
          ", newer than this dumontd understands (" + std::to_string(LatestSchemaVersion()) +
          "); run a newer dumontd or restore a backup from before the upgrade");
    }
    // Every migration not recorded yet is applied, in version order, even one numbered below the newest
    // applied: branches add migrations concurrently, so a database may get 5 before 4 exists.
    for (const auto& m : Migrations()) {
      if (applied.count(m.version)) continue;
      Status st = db_->Transaction([&](Conn& c) -> Status {
        DUMONT_RETURN_STATUS_IF_ERROR(c.ExecScript(m.sql));
        auto r = c.Exec("INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                        {m.version, m.name, now});
        return r ? Status::Ok() : r.error();
      });
      if (!st.ok()) return st.Annotate("applying migration " + std::to_string(m.version) + " (" + m.name + ")");
    }
    return Status::Ok();
  }

  Status CreateUser(const User& u) override {
    auto r = db_->Exec(std::string("INSERT INTO users (") + kUserCols + ") VALUES (?, ?, ?, ?, ?)",
                       {u.id, u.email, u.password_hash, u.role, u.created_at});
    if (!r) {
      if (r.error().code() == Code::kAlreadyExists) {
        return Status::AlreadyExists("an account with email " + u.email + " already exists");
      }
      return r.error();
    }
    return Status::Ok();
  }

  Result<User> GetUser(const std::string& id) override {
    return One<User>(std::string("SELECT ") + kUserCols + " FROM users WHERE id = ?", {id}, ToUser,
                     "user " + id + " not found");
  }
  Result<User> GetUserByEmail(const std::string& email) override {
    return One<User>(std::string("SELECT ") + kUserCols + " FROM users WHERE email = ?", {email}, ToUser,
                     "no account with email " + email);
  }
  Result<std::vector<User>> ListUsers() override {
    return Many<User>(std::string("SELECT ") + kUserCols + " FROM users ORDER BY created_at, id", {}, ToUser);
  }
  Result<int64_t> CountUsers() override {
    auto rows = db_->Query("SELECT COUNT(*) FROM users");
    if (!rows) return Err(rows.error());
    return rows->at(0).Int(0);
  }
  Status SetUserRole(const std::string& id, const std::string& role) override {
    return ExpectOne(db_->Exec("UPDATE users SET role = ? WHERE id = ?", {role, id}), "user " + id + " not found");
  }
  Status SetUserPassword(const std::string& id, const std::string& hash) override {
    return ExpectOne(db_->Exec("UPDATE users SET password_hash = ? WHERE id = ?", {hash, id}),
                     "user " + id + " not found");
  }

  Status CreateSession(const Session& s, const RefreshToken& first) override {
    return db_->Transaction([&](Conn& c) -> Status {
      auto r = c.Exec(std::string("INSERT INTO sessions (") + kSessionCols + ") VALUES (?, ?, ?, ?, ?, ?)",
                      {s.id, s.user_id, s.created_at, s.expires_at, Opt(s.revoked_at), s.revoke_reason});
      if (!r) return r.error();
      return InsertToken(c, first);
    });
  }
  Result<Session> GetSession(const std::string& id) override {
    return One<Session>(std::string("SELECT ") + kSessionCols + " FROM sessions WHERE id = ?", {id},
                        ToSession, "session not found");
  }
  Status RevokeSession(const std::string& id, const std::string& reason, int64_t now) override {
    auto r = db_->Exec("UPDATE sessions SET revoked_at = ?, revoke_reason = ? WHERE id = ? AND revoked_at IS NULL",
                       {now, reason, id});
    return r ? Status::Ok() : r.error();
  }
  Status RevokeUserSessions(const std::string& user_id, const std::string& reason, int64_t now) override {
    auto r = db_->Exec(
        "UPDATE sessions SET revoked_at = ?, revoke_reason = ? WHERE user_id = ? AND revoked_at IS NULL",
        {now, reason, user_id});
    return r ? Status::Ok() : r.error();
  }
  Result<RefreshToken> GetRefreshToken(const std::string& token_hash) override {
    return One<RefreshToken>(std::string("SELECT ") + kTokenCols + " FROM refresh_tokens WHERE token_hash = ?",
                             {token_hash}, ToToken, "refresh token not found");
  }
  Result<bool> RotateRefreshToken(const std::string& old_hash, const RefreshToken& next,
                                  int64_t now) override {
    bool rotated = false;
    Status st = db_->Transaction([&](Conn& c) -> Status {
      auto r = c.Exec("UPDATE refresh_tokens SET used_at = ? WHERE token_hash = ? AND used_at IS NULL",
                      {now, old_hash});
      if (!r) return r.error();
      if (*r != 1) return Status::Ok();
      rotated = true;
      return InsertToken(c, next);
    });
    if (!st.ok()) return Err(st);
    return rotated;
  }

  Status CreateApiKey(const ApiKey& k) override {
    auto r = db_->Exec(std::string("INSERT INTO api_keys (") + kKeyCols + ") VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       {k.id, k.user_id, k.name, k.prefix, k.key_hash, k.created_at, Opt(k.last_used_at),
                        Opt(k.revoked_at)});
    return r ? Status::Ok() : r.error();
  }
  Result<std::vector<ApiKey>> ListApiKeys(const std::string& user_id) override {
    return Many<ApiKey>(std::string("SELECT ") + kKeyCols +
                            " FROM api_keys WHERE user_id = ? AND revoked_at IS NULL ORDER BY created_at, id",
                        {user_id}, ToKey);
  }
  Result<ApiKey> GetApiKeyByHash(const std::string& key_hash) override {
    return One<ApiKey>(std::string("SELECT ") + kKeyCols + " FROM api_keys WHERE key_hash = ?", {key_hash},
                       ToKey, "API key not found");
  }
  Status RevokeApiKey(const std::string& id, const std::string& user_id, int64_t now) override {
    return ExpectOne(db_->Exec("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND user_id = ? AND revoked_at IS NULL",
                               {now, id, user_id}),
                     "API key " + id + " not found");
  }
  Status TouchApiKey(const std::string& id, int64_t now) override {
    auto r = db_->Exec("UPDATE api_keys SET last_used_at = ? WHERE id = ?", {now, id});
    return r ? Status::Ok() : r.error();
  }

  Status CreateInstance(const Instance& i) override {
    auto r = db_->Exec(std::string("INSERT INTO instances (") + kInstanceCols +
                           ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       {i.id, i.owner, i.name, i.provider, i.offer_id, i.gpu, i.image, i.desired,
                        int64_t{i.hib_enabled}, i.gpu_threshold_pct, i.idle_seconds, i.release_after_seconds, i.state,
                        i.machine_id, i.attempt, i.price_per_hour, i.machine_json, i.command_json, i.last_snapshot,
                        i.repo_password, i.message, i.state_since, i.last_heartbeat, int64_t{i.released},
                        i.created_at, i.updated_at, i.deploy_json});
    return r ? Status::Ok() : r.error();
  }
  Result<Instance> GetInstance(const std::string& id) override {
    return One<Instance>(std::string("SELECT ") + kInstanceCols + " FROM instances WHERE id = ?", {id}, ToInstance,
                         "instance " + id + " not found");
  }
  Result<Instance> GetInstanceOwned(const std::string& id, const std::string& owner) override {
    return One<Instance>(std::string("SELECT ") + kInstanceCols + " FROM instances WHERE id = ? AND owner = ?",
                         {id, owner}, ToInstance, "instance " + id + " not found");
  }
  Result<std::vector<Instance>> ListInstances(const std::string& owner) override {
    return Many<Instance>(std::string("SELECT ") + kInstanceCols +
                              " FROM instances WHERE owner = ? AND state <> 'destroyed' ORDER BY created_at, id",
                          {owner}, ToInstance);
  }
  Result<std::vector<Instance>> ListLiveInstances() override {
    return Many<Instance>(std::string("SELECT ") + kInstanceCols +
                              " FROM instances WHERE state <> 'destroyed' ORDER BY created_at, id",
                          {}, ToInstance);
  }
  Result<std::vector<std::string>> ListLiveInstanceIds() override {
    return Many<std::string>("SELECT id FROM instances WHERE state <> 'destroyed' ORDER BY created_at, id", {},
                             [](const Row& r) { return r.Str(0); });
  }
  Status UpdateInstanceSpec(const Instance& i) override {
    return ExpectOne(db_->Exec("UPDATE instances SET name = ?, desired = ?, hib_enabled = ?, gpu_threshold_pct = ?, "
                               "idle_seconds = ?, release_after_seconds = ?, deploy_json = ?, updated_at = ? WHERE id = ?",
                               {i.name, i.desired, int64_t{i.hib_enabled}, i.gpu_threshold_pct, i.idle_seconds,
                                i.release_after_seconds, i.deploy_json, i.updated_at, i.id}),
                     "instance " + i.id + " not found");
  }
  Status UpdateInstanceStatus(const Instance& i) override {
    return ExpectOne(db_->Exec("UPDATE instances SET state = ?, machine_id = ?, attempt = ?, price_per_hour = ?, "
                               "machine_json = ?, command_json = ?, last_snapshot = ?, message = ?, state_since = ?, "
                               "released = ?, updated_at = ? WHERE id = ?",
                               {i.state, i.machine_id, i.attempt, i.price_per_hour, i.machine_json, i.command_json,
                                i.last_snapshot, i.message, i.state_since, int64_t{i.released}, i.updated_at, i.id}),
                     "instance " + i.id + " not found");
  }
  Status TouchHeartbeat(const std::string& id, int64_t now) override {
    auto r = db_->Exec("UPDATE instances SET last_heartbeat = ? WHERE id = ?", {now, id});
    return r ? Status::Ok() : r.error();
  }

  Status TouchHeartbeats(const std::vector<std::pair<std::string, int64_t>>& beats) override {
    if (beats.empty()) return Status::Ok();
    return db_->Transaction([&](Conn& c) -> Status {
      for (const auto& [id, t] : beats) {
        auto r = c.Exec("UPDATE instances SET last_heartbeat = ? WHERE id = ?", {t, id});
        if (!r) return r.error();
      }
      return Status::Ok();
    });
  }

  Status AddEvent(const Event& e) override {
    auto r = db_->Exec(std::string("INSERT INTO events (") + kEventCols + ") VALUES (?, ?, ?, ?, ?, ?)",
                       {e.id, e.instance_id, e.owner, e.time_ms, e.type, e.message});
    return r ? Status::Ok() : r.error();
  }
  Result<std::vector<Event>> ListEvents(const std::string& instance_id, int limit) override {
    return Many<Event>(std::string("SELECT ") + kEventCols +
                           " FROM events WHERE instance_id = ? ORDER BY time_ms DESC, id DESC LIMIT ?",
                       {instance_id, int64_t{limit}}, ToEvent);
  }

  Status CreateAgentToken(const AgentToken& t) override {
    auto r = db_->Exec(std::string("INSERT INTO agent_tokens (") + kAgentTokenCols + ") VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       {t.token_hash, t.instance_id, t.kind, t.attempt, t.created_at, t.expires_at, Opt(t.used_at),
                        Opt(t.revoked_at)});
    return r ? Status::Ok() : r.error();
  }
  Result<AgentToken> GetAgentToken(const std::string& token_hash) override {
    return One<AgentToken>(std::string("SELECT ") + kAgentTokenCols + " FROM agent_tokens WHERE token_hash = ?",
                           {token_hash}, ToAgentToken, "agent token not found");
  }
  Result<bool> UseEnrollToken(const std::string& token_hash, int64_t now) override {
    auto r = db_->Exec("UPDATE agent_tokens SET used_at = ? WHERE token_hash = ? AND kind = 'enroll' AND used_at IS NULL "
                       "AND revoked_at IS NULL",
                       {now, token_hash});
    if (!r) return Err(r.error());
    return *r == 1;
  }
  Status RevokeAgentTokens(const std::string& instance_id, int64_t now) override {
    auto r = db_->Exec("UPDATE agent_tokens SET revoked_at = ? WHERE instance_id = ? AND revoked_at IS NULL",
                       {now, instance_id});
    return r ? Status::Ok() : r.error();
  }

  Status StartHibernation(const Hibernation& h) override {
    auto r = db_->Exec(std::string("INSERT INTO hibernations (") + kHibCols + ") VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       {h.id, h.instance_id, h.owner, h.price_per_hour, h.started_at, Opt(h.ended_at), h.hours,
                        h.dollars});
    return r ? Status::Ok() : r.error();
  }
  Status EndHibernation(const std::string& instance_id, int64_t ended_at) override {
    return db_->Transaction([&](Conn& c) -> Status {
      auto rows = c.Query(std::string("SELECT ") + kHibCols +
                              " FROM hibernations WHERE instance_id = ? AND ended_at IS NULL",
                          {instance_id});
      if (!rows) return rows.error();
      for (const auto& row : *rows) {
        Hibernation h = ToHib(row);
        double hours = std::max<int64_t>(0, ended_at - h.started_at) / 3600.0;
        auto u = c.Exec("UPDATE hibernations SET ended_at = ?, hours = ?, dollars = ? WHERE id = ?",
                        {ended_at, hours, hours * h.price_per_hour, h.id});
        if (!u) return u.error();
      }
      return Status::Ok();
    });
  }
  Result<std::vector<Hibernation>> ListHibernations(const std::string& owner) override {
    return Many<Hibernation>(std::string("SELECT ") + kHibCols +
                                 " FROM hibernations WHERE owner = ? ORDER BY started_at, id",
                             {owner}, ToHib);
  }

  Status AddAttempt(const MachineAttempt& a) override {
    auto r = db_->Exec(std::string("INSERT INTO machine_attempts (") + kAttemptCols +
                           ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       {a.id, a.owner, a.instance_id, a.provider, a.host_id, a.offer_id, a.machine_id, a.started_at,
                        Opt(a.ready_at), Opt(a.ended_at), a.outcome, a.failure_reason});
    return r ? Status::Ok() : r.error();
  }
  Status FinishAttempt(const std::string& instance_id, const std::string& outcome, const std::string& reason,
                       int64_t now) override {
    return db_->Transaction([&](Conn& c) -> Status {
      auto rows = c.Query("SELECT id FROM machine_attempts WHERE instance_id = ? AND outcome = 'pending' "
                          "ORDER BY started_at DESC LIMIT 1",
                          {instance_id});
      if (!rows) return rows.error();
      if (rows->empty()) return Status::Ok();
      auto u = outcome == "ready"
                   ? c.Exec("UPDATE machine_attempts SET outcome = ?, ready_at = ? WHERE id = ?",
                            {outcome, now, rows->front().Str(0)})
                   : c.Exec("UPDATE machine_attempts SET outcome = ?, ended_at = ?, failure_reason = ? WHERE id = ?",
                            {outcome, now, reason, rows->front().Str(0)});
      return u ? Status::Ok() : u.error();
    });
  }
  Status FinishMachineAttempt(const std::string& provider, const std::string& machine_id, const std::string& outcome,
                              const std::string& reason, int64_t now) override {
    auto u = outcome == "ready"
                 ? db_->Exec("UPDATE machine_attempts SET outcome = ?, ready_at = ? "
                             "WHERE provider = ? AND machine_id = ? AND outcome = 'pending'",
                             {outcome, now, provider, machine_id})
                 : db_->Exec("UPDATE machine_attempts SET outcome = ?, ended_at = ?, failure_reason = ? "
                             "WHERE provider = ? AND machine_id = ? AND outcome = 'pending'",
                             {outcome, now, reason, provider, machine_id});
    return u ? Status::Ok() : u.error();
  }

  Status CreateDeploy(const Deploy& d) override {
    auto r = db_->Exec(std::string("INSERT INTO deploys (") + kDeployCols +
                           ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       {d.id, d.owner, d.instance_id, d.reason, d.provider, d.request_json, d.state, d.message,
                        d.winner_machine_id, d.loser_cost_usd, d.total_cost_usd, d.machines_json, d.created_ms,
                        Opt(d.finished_ms)});
    return r ? Status::Ok() : r.error();
  }
  Status UpdateDeploy(const Deploy& d) override {
    return ExpectOne(db_->Exec("UPDATE deploys SET state = ?, message = ?, winner_machine_id = ?, loser_cost_usd = ?, "
                               "total_cost_usd = ?, machines_json = ?, finished_ms = ? WHERE id = ?",
                               {d.state, d.message, d.winner_machine_id, d.loser_cost_usd, d.total_cost_usd,
                                d.machines_json, Opt(d.finished_ms), d.id}),
                     "deploy " + d.id + " not found");
  }
  Result<Deploy> GetDeploy(const std::string& id) override {
    return One<Deploy>(std::string("SELECT ") + kDeployCols + " FROM deploys WHERE id = ?", {id}, ToDeploy,
                       "deploy " + id + " not found");
  }
  Result<Deploy> GetDeployOwned(const std::string& id, const std::string& owner) override {
    return One<Deploy>(std::string("SELECT ") + kDeployCols + " FROM deploys WHERE id = ? AND owner = ?", {id, owner},
                       ToDeploy, "deploy " + id + " not found");
  }
  Result<std::vector<Deploy>> ListDeploys(const std::string& owner, int limit) override {
    return Many<Deploy>(std::string("SELECT ") + kDeployCols +
                            " FROM deploys WHERE owner = ? ORDER BY created_ms DESC, id DESC LIMIT ?",
                        {owner, int64_t{limit}}, ToDeploy);
  }
  Result<std::optional<Deploy>> OpenDeployOf(const std::string& instance_id) override {
    auto rows = Many<Deploy>(std::string("SELECT ") + kDeployCols +
                                 " FROM deploys WHERE instance_id = ? AND state IN ('pending', 'running') "
                                 "ORDER BY created_ms DESC, id DESC LIMIT 1",
                             {instance_id}, ToDeploy);
    if (!rows) return Err(rows.error());
    if (rows->empty()) return std::optional<Deploy>();
    return std::optional<Deploy>(rows->front());
  }
  Result<int64_t> AddDeployEvent(const std::string& deploy_id, int64_t time_ms, const std::string& type,
                                 const std::string& data_json) override {
    int64_t seq = 0;
    auto st = db_->Transaction([&](Conn& c) -> Status {
      auto rows = c.Query("SELECT COALESCE(MAX(seq), 0) FROM deploy_events WHERE deploy_id = ?", {deploy_id});
      if (!rows) return rows.error();
      seq = rows->front().Int(0) + 1;
      auto r = c.Exec("INSERT INTO deploy_events (deploy_id, seq, time_ms, type, data_json) VALUES (?, ?, ?, ?, ?)",
                      {deploy_id, seq, time_ms, type, data_json});
      return r ? Status::Ok() : r.error();
    });
    if (!st.ok()) return Err(st);
    return seq;
  }
  Result<std::vector<DeployEvent>> ListDeployEvents(const std::string& deploy_id, int64_t after_seq,
                                                    int limit) override {
    return Many<DeployEvent>(
        "SELECT deploy_id, seq, time_ms, type, data_json FROM deploy_events WHERE deploy_id = ? AND seq > ? "
        "ORDER BY seq LIMIT ?",
        {deploy_id, after_seq, int64_t{limit}},
        [](const Row& r) { return DeployEvent{r.Str(0), r.Int(1), r.Int(2), r.Str(3), r.Str(4)}; });
  }

  Status PutCredential(const ProviderCredential& cr) override {
    return db_->Transaction([&](Conn& c) -> Status {
      auto d = c.Exec("DELETE FROM provider_credentials WHERE owner = ? AND provider = ?", {cr.owner, cr.provider});
      if (!d) return d.error();
      auto r = c.Exec(std::string("INSERT INTO provider_credentials (") + kCredCols + ") VALUES (?, ?, ?, ?, ?)",
                      {cr.owner, cr.provider, cr.sealed, cr.hint, cr.updated_at});
      return r ? Status::Ok() : r.error();
    });
  }
  Result<ProviderCredential> GetCredential(const std::string& owner, const std::string& provider) override {
    return One<ProviderCredential>(std::string("SELECT ") + kCredCols +
                                       " FROM provider_credentials WHERE owner = ? AND provider = ?",
                                   {owner, provider}, ToCred, "no " + provider + " credentials saved");
  }
  Result<std::vector<ProviderCredential>> ListCredentials(const std::string& owner) override {
    return Many<ProviderCredential>(std::string("SELECT ") + kCredCols +
                                        " FROM provider_credentials WHERE owner = ? ORDER BY provider",
                                    {owner}, ToCred);
  }
  Result<std::vector<ProviderCredential>> ListAllCredentials() override {
    return Many<ProviderCredential>(std::string("SELECT ") + kCredCols +
                                        " FROM provider_credentials ORDER BY owner, provider",
                                    {}, ToCred);
  }
  Status DeleteCredential(const std::string& owner, const std::string& provider) override {
    return ExpectOne(db_->Exec("DELETE FROM provider_credentials WHERE owner = ? AND provider = ?", {owner, provider}),
                     "no " + provider + " credentials saved");
  }

  Result<std::vector<MachineAttempt>> ListAttempts(const std::string& provider, const std::string& host_id) override {
    return Many<MachineAttempt>(std::string("SELECT ") + kAttemptCols +
                                    " FROM machine_attempts WHERE provider = ? AND host_id = ? ORDER BY started_at, id",
                                {provider, host_id}, ToAttempt);
  }
  Result<std::vector<MachineAttempt>> ListAllAttempts() override {
    return Many<MachineAttempt>(std::string("SELECT ") + kAttemptCols + " FROM machine_attempts ORDER BY started_at, id",
                                {}, ToAttempt);
  }
  Status AddBlacklist(const BlacklistEntry& e) override {
    return db_->Transaction([&](Conn& c) -> Status {
      auto d = c.Exec("DELETE FROM blacklist WHERE provider = ? AND host_id = ?", {e.provider, e.host_id});
      if (!d) return d.error();
      auto r = c.Exec(std::string("INSERT INTO blacklist (") + kBlacklistCols + ") VALUES (?, ?, ?, ?, ?)",
                      {e.provider, e.host_id, e.reason, int64_t{e.automatic}, e.created_at});
      return r ? Status::Ok() : r.error();
    });
  }
  Status RemoveBlacklist(const std::string& provider, const std::string& host_id) override {
    return ExpectOne(db_->Exec("DELETE FROM blacklist WHERE provider = ? AND host_id = ?", {provider, host_id}),
                     "host " + provider + "/" + host_id + " is not blacklisted");
  }
  Result<std::vector<BlacklistEntry>> ListBlacklist() override {
    return Many<BlacklistEntry>(std::string("SELECT ") + kBlacklistCols + " FROM blacklist ORDER BY created_at, host_id",
                                {}, ToBlacklist);
  }

  Status AddMarketSnapshots(const std::vector<MarketSnapshot>& rows) override {
    if (rows.empty()) return Status::Ok();
    return db_->Transaction([&](Conn& c) -> Status {
      for (const auto& m : rows) {
        auto d = c.Exec("DELETE FROM market_snapshots WHERE provider = ? AND gpu = ? AND sampled_at = ?",
                        {m.provider, m.gpu, m.sampled_at});
        if (!d) return d.error();
        auto r = c.Exec(std::string("INSERT INTO market_snapshots (") + kMarketCols +
                            ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        {m.sampled_at, m.provider, m.gpu, m.vram_gb, m.min_price, m.avg_price, m.max_price, m.offers,
                         m.available_gpus, m.avg_reliability,
                         m.spot_min_price ? Value(*m.spot_min_price) : Value(nullptr)});
        if (!r) return r.error();
      }
      return Status::Ok();
    });
  }
  Result<std::vector<MarketSnapshot>> ListMarketSnapshots(const MarketQuery& q) override {
    std::string sql = std::string("SELECT ") + kMarketCols + " FROM market_snapshots WHERE sampled_at >= ? AND sampled_at <= ?";
    std::vector<Value> params = {q.since, q.until};
    if (!q.gpu.empty()) {
      sql += " AND gpu = ?";
      params.emplace_back(q.gpu);
    }
    if (!q.provider.empty()) {
      sql += " AND provider = ?";
      params.emplace_back(q.provider);
    }
    sql += " ORDER BY sampled_at DESC, provider DESC, gpu DESC LIMIT ?";
    params.emplace_back(int64_t{q.limit});
    auto rows = Many<MarketSnapshot>(sql, params, ToMarket);
    if (rows) std::reverse(rows->begin(), rows->end());
    return rows;
  }
  Result<std::vector<MarketSnapshot>> LatestMarketSnapshots(int64_t until) override {
    return Many<MarketSnapshot>(std::string("SELECT ") + kMarketCols +
                                    " FROM market_snapshots m WHERE m.sampled_at = (SELECT MAX(x.sampled_at) FROM "
                                    "market_snapshots x WHERE x.provider = m.provider AND x.gpu = m.gpu AND "
                                    "x.sampled_at <= ?) ORDER BY m.gpu, m.provider",
                                {until}, ToMarket);
  }
  Result<int64_t> DeleteMarketSnapshotsBefore(int64_t cutoff) override {
    return db_->Exec("DELETE FROM market_snapshots WHERE sampled_at < ?", {cutoff});
  }

  Result<std::optional<std::string>> GetMeta(const std::string& key) override {
    auto rows = db_->Query("SELECT value FROM meta WHERE key = ?", {key});
    if (!rows) return Err(rows.error());
    if (rows->empty()) return std::optional<std::string>();
    return std::optional<std::string>(rows->at(0).Str(0));
  }
  Status SetMeta(const std::string& key, const std::string& value) override {
    return db_->Transaction([&](Conn& c) -> Status {
      auto r = c.Exec("UPDATE meta SET value = ? WHERE key = ?", {value, key});
      if (!r) return r.error();
      if (*r == 1) return Status::Ok();
      auto ins = c.Exec("INSERT INTO meta (key, value) VALUES (?, ?)", {key, value});
      return ins ? Status::Ok() : ins.error();
    });
  }

 private:
  template <typename T, typename F>
  Result<T> One(const std::string& sql, const std::vector<Value>& params, F convert, const std::string& missing) {
    auto rows = db_->Query(sql, params);
    if (!rows) return Err(rows.error());
    if (rows->empty()) return Err(Status::NotFound(missing));
    return convert(rows->front());
  }
  template <typename T, typename F>
  Result<std::vector<T>> Many(const std::string& sql, const std::vector<Value>& params, F convert) {
    auto rows = db_->Query(sql, params);
    if (!rows) return Err(rows.error());
    std::vector<T> out;
    out.reserve(rows->size());
    for (const auto& r : *rows) out.push_back(convert(r));
    return out;
  }
  static Status ExpectOne(const Result<int64_t>& r, const std::string& missing) {
    if (!r) return r.error();
    if (*r == 0) return Status::NotFound(missing);
    return Status::Ok();
  }

  std::unique_ptr<Db> db_;
};

}  // namespace

Result<std::unique_ptr<Store>> OpenStoreOnDb(std::unique_ptr<Db> db, int64_t now_unix) {
  auto store = std::make_unique<SqlStore>(std::move(db));
  DUMONT_RETURN_IF_ERROR(store->Migrate(now_unix));
  return std::unique_ptr<Store>(std::move(store));
}

Result<std::unique_ptr<Store>> OpenStore(const std::string& url, int64_t now_unix) {
  auto db = OpenDb(url);
  if (!db) return Err(db.error());
  return OpenStoreOnDb(std::move(*db), now_unix);
}

}  // namespace dumont::store
