// dumontd configuration. Sources, highest precedence first:
//   1. command-line flags (--listen, --data-dir, --db, --config, --set key=value)
//   2. environment variables DUMONT_<KEY> (dots become underscores, upper case:
//      http.body_limit_bytes -> DUMONT_HTTP_BODY_LIMIT_BYTES)
//   3. the TOML file (--config FILE, else DUMONT_CONFIG, else <data-dir>/dumont.toml if it exists)
//   4. built-in defaults
// Every key is described once in Config::Keys(); help text and docs are generated from it.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"

namespace dumont {

struct Config {
  std::string data_dir = "./dumont-data";
  std::string listen = "127.0.0.1:8765";
  std::string db;  // empty = sqlite:///<data_dir>/dumont.db
  std::string log_level = "info";
  std::string log_format = "text";
  int64_t http_body_limit_bytes = 1 << 20;
  int64_t http_header_limit_bytes = 16 * 1024;
  int64_t http_read_timeout_s = 30;
  int64_t http_max_requests_per_connection = 1000;
  int64_t http_threads = 0;  // 0 = max(4, 2 * cores)
  int64_t auth_access_ttl_s = 24 * 3600;
  int64_t auth_refresh_ttl_s = 30 * 24 * 3600;
  bool auth_allow_signup = true;
  int64_t auth_login_max_failures_per_account = 5;
  int64_t auth_login_max_failures_per_address = 20;
  int64_t auth_login_window_s = 15 * 60;
  std::string auth_password_hash = "interactive";  // interactive | moderate | fast (tests only)
  std::string vast_base_url = "https://console.vast.ai/api/v0";
  std::string vast_api_key;  // secret: never logged or returned; set through DUMONT_PROVIDERS_VAST_API_KEY
  std::string runpod_base_url = "https://api.runpod.io/graphql";
  std::string runpod_api_key;  // secret, like vast_api_key
  std::string gce_base_url = "https://compute.googleapis.com/compute/v1";
  std::string gce_token_url = "https://oauth2.googleapis.com/token";
  std::string web_dir;                     // built console (web/dist); empty = beside the binary
  std::string public_url;                  // how agents reach dumontd; empty = from listen
  int64_t fleet_heartbeat_interval_s = 10;
  int64_t fleet_resync_interval_s = 30;
  bool fleet_sim_provider = false;         // enable the in-memory sim provider (tests, demos)
  double fleet_local_price_per_hour = 0.0; // what a local machine "costs", for the savings ledger
  bool market_enabled = true;              // sample every provider's offers into the price history
  int64_t market_interval_s = 300;
  int64_t market_retention_days = 30;
  bool demo_enabled = false;                // POST /api/v1/demo/session and the /demo-app/ console
  int64_t demo_session_ttl_s = 2 * 3600;    // a demo account and its tokens end after this
  int64_t demo_sessions_per_address_per_hour = 30;

  std::string DatabaseUrl() const;  // db, or the SQLite default under data_dir

  enum class Type { kString, kInt, kBool, kNumber };
  struct Key {
    std::string name;  // dotted, as in TOML: "http.body_limit_bytes"
    Type type;
    std::string help;
  };
  static const std::vector<Key>& Keys();
  static std::string EnvName(const std::string& key);

  // Sets one key from text; errors name the key and the expected type.
  Status Set(const std::string& key, const std::string& value);
  std::string Get(const std::string& key) const;
  Status Validate() const;
};

struct ConfigSources {
  std::optional<std::string> toml_path;  // explicit --config: must exist
  std::map<std::string, std::string> env;   // usually the process environment
  std::map<std::string, std::string> flags; // key -> value, already named by key
};

// Applies defaults < TOML < env < flags. The TOML file at <data_dir>/dumont.toml is read when no
// explicit path is given and it exists (data_dir itself resolved from flags/env first).
Result<Config> LoadConfig(const ConfigSources& sources);

// Text for --help: precedence and every key with its env name and default.
std::string ConfigHelp();

std::map<std::string, std::string> ProcessEnvironment();

}  // namespace dumont
