#include "store/store.h"

namespace dumont::store {

// Append only: never edit a released migration; add a new one.
const std::vector<Migration>& Migrations() {
  static const std::vector<Migration> kMigrations = {
      {1, "users, sessions, refresh tokens, api keys, meta", R"SQL(
CREATE TABLE users (
  id TEXT PRIMARY KEY,
  email TEXT NOT NULL UNIQUE,
  password_hash TEXT NOT NULL,
  role TEXT NOT NULL,
  created_at BIGINT NOT NULL
);
CREATE TABLE sessions (
  id TEXT PRIMARY KEY,
  user_id TEXT NOT NULL REFERENCES users(id),
  created_at BIGINT NOT NULL,
  expires_at BIGINT NOT NULL,
  revoked_at BIGINT,
  revoke_reason TEXT NOT NULL DEFAULT ''
);
CREATE INDEX sessions_user ON sessions(user_id);
CREATE TABLE refresh_tokens (
  token_hash TEXT PRIMARY KEY,
  session_id TEXT NOT NULL REFERENCES sessions(id),
  user_id TEXT NOT NULL REFERENCES users(id),
  issued_at BIGINT NOT NULL,
  expires_at BIGINT NOT NULL,
  used_at BIGINT
);
CREATE INDEX refresh_tokens_session ON refresh_tokens(session_id);
CREATE TABLE api_keys (
  id TEXT PRIMARY KEY,
  user_id TEXT NOT NULL REFERENCES users(id),
  name TEXT NOT NULL,
  prefix TEXT NOT NULL,
  key_hash TEXT NOT NULL UNIQUE,
  created_at BIGINT NOT NULL,
  last_used_at BIGINT,
  revoked_at BIGINT
);
CREATE INDEX api_keys_user ON api_keys(user_id);
CREATE TABLE meta (
  key TEXT PRIMARY KEY,
  value TEXT NOT NULL
)
)SQL"},
      {2, "instances, events, agent tokens, hibernations", R"SQL(
CREATE TABLE instances (
  id TEXT PRIMARY KEY,
  owner TEXT NOT NULL REFERENCES users(id),
  name TEXT NOT NULL,
  provider TEXT NOT NULL,
  offer_id TEXT NOT NULL,
  gpu TEXT NOT NULL,
  image TEXT NOT NULL,
  desired TEXT NOT NULL,
  hib_enabled BIGINT NOT NULL,
  gpu_threshold_pct DOUBLE PRECISION NOT NULL,
  idle_seconds BIGINT NOT NULL,
  release_after_seconds BIGINT NOT NULL,
  state TEXT NOT NULL,
  machine_id TEXT NOT NULL,
  attempt BIGINT NOT NULL,
  price_per_hour DOUBLE PRECISION NOT NULL,
  machine_json TEXT NOT NULL,
  command_json TEXT NOT NULL,
  last_snapshot TEXT NOT NULL,
  repo_password TEXT NOT NULL,
  message TEXT NOT NULL,
  state_since BIGINT NOT NULL,
  last_heartbeat BIGINT NOT NULL,
  released BIGINT NOT NULL,
  created_at BIGINT NOT NULL,
  updated_at BIGINT NOT NULL
);
CREATE INDEX instances_owner ON instances(owner);
CREATE TABLE events (
  id TEXT PRIMARY KEY,
  instance_id TEXT NOT NULL,
  owner TEXT NOT NULL,
  time_ms BIGINT NOT NULL,
  type TEXT NOT NULL,
  message TEXT NOT NULL
);
CREATE INDEX events_instance ON events(instance_id, time_ms);
CREATE TABLE agent_tokens (
  token_hash TEXT PRIMARY KEY,
  instance_id TEXT NOT NULL,
  kind TEXT NOT NULL,
  attempt BIGINT NOT NULL,
  created_at BIGINT NOT NULL,
  expires_at BIGINT NOT NULL,
  used_at BIGINT,
  revoked_at BIGINT
);
CREATE INDEX agent_tokens_instance ON agent_tokens(instance_id);
CREATE TABLE hibernations (
  id TEXT PRIMARY KEY,
  instance_id TEXT NOT NULL,
  owner TEXT NOT NULL,
  price_per_hour DOUBLE PRECISION NOT NULL,
  started_at BIGINT NOT NULL,
  ended_at BIGINT,
  hours DOUBLE PRECISION NOT NULL,
  dollars DOUBLE PRECISION NOT NULL
);
CREATE INDEX hibernations_owner ON hibernations(owner)
)SQL"},
      {3, "machine history and blacklist", R"SQL(
CREATE TABLE machine_attempts (
  id TEXT PRIMARY KEY,
  owner TEXT NOT NULL,
  instance_id TEXT NOT NULL,
  provider TEXT NOT NULL,
  host_id TEXT NOT NULL,
  offer_id TEXT NOT NULL,
  machine_id TEXT NOT NULL,
  started_at BIGINT NOT NULL,
  ready_at BIGINT,
  ended_at BIGINT,
  outcome TEXT NOT NULL,
  failure_reason TEXT NOT NULL
);
CREATE INDEX machine_attempts_host ON machine_attempts(provider, host_id);
CREATE INDEX machine_attempts_instance ON machine_attempts(instance_id, started_at);
CREATE TABLE blacklist (
  provider TEXT NOT NULL,
  host_id TEXT NOT NULL,
  reason TEXT NOT NULL,
  automatic BIGINT NOT NULL,
  created_at BIGINT NOT NULL,
  PRIMARY KEY (provider, host_id)
)
)SQL"},
      {4, "multi-start deploys, deploy events, provider credentials, instance deploy spec", R"SQL(
ALTER TABLE instances ADD COLUMN deploy_json TEXT NOT NULL DEFAULT '{}';
CREATE TABLE deploys (
  id TEXT PRIMARY KEY,
  owner TEXT NOT NULL,
  instance_id TEXT NOT NULL,
  reason TEXT NOT NULL,
  provider TEXT NOT NULL,
  request_json TEXT NOT NULL,
  state TEXT NOT NULL,
  message TEXT NOT NULL,
  winner_machine_id TEXT NOT NULL,
  loser_cost_usd DOUBLE PRECISION NOT NULL,
  total_cost_usd DOUBLE PRECISION NOT NULL,
  machines_json TEXT NOT NULL,
  created_ms BIGINT NOT NULL,
  finished_ms BIGINT
);
CREATE INDEX deploys_owner ON deploys(owner, created_ms);
CREATE INDEX deploys_instance ON deploys(instance_id, created_ms);
CREATE TABLE deploy_events (
  deploy_id TEXT NOT NULL,
  seq BIGINT NOT NULL,
  time_ms BIGINT NOT NULL,
  type TEXT NOT NULL,
  data_json TEXT NOT NULL,
  PRIMARY KEY (deploy_id, seq)
);
CREATE INDEX machine_attempts_machine ON machine_attempts(provider, machine_id);
CREATE TABLE provider_credentials (
  owner TEXT NOT NULL,
  provider TEXT NOT NULL,
  sealed TEXT NOT NULL,
  hint TEXT NOT NULL,
  updated_at BIGINT NOT NULL,
  PRIMARY KEY (owner, provider)
)
)SQL"},
      {5, "market price history", R"SQL(
CREATE TABLE market_snapshots (
  sampled_at BIGINT NOT NULL,
  provider TEXT NOT NULL,
  gpu TEXT NOT NULL,
  vram_gb DOUBLE PRECISION NOT NULL,
  min_price DOUBLE PRECISION NOT NULL,
  avg_price DOUBLE PRECISION NOT NULL,
  max_price DOUBLE PRECISION NOT NULL,
  offers BIGINT NOT NULL,
  available_gpus BIGINT NOT NULL,
  avg_reliability DOUBLE PRECISION NOT NULL,
  spot_min_price DOUBLE PRECISION,
  PRIMARY KEY (provider, gpu, sampled_at)
);
CREATE INDEX market_snapshots_gpu ON market_snapshots(gpu, sampled_at);
CREATE INDEX market_snapshots_time ON market_snapshots(sampled_at)
)SQL"},
  };
  return kMigrations;
}

int64_t LatestSchemaVersion() { return Migrations().back().version; }

}  // namespace dumont::store
