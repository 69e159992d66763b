#include "common/config.h"

#include <filesystem>
#include <sstream>

#include <toml++/toml.h>

extern char** environ;

namespace dumont {
namespace {

struct Binding {
  Config::Key key;
  std::string Config::*str = nullptr;
  int64_t Config::*num = nullptr;
  bool Config::*flag = nullptr;
  double Config::*real = nullptr;
};

const std::vector<Binding>& Bindings() {
  using T = Config::Type;
  static const std::vector<Binding> kBindings = {
      {{"data_dir", T::kString, "directory for the database, keys and local snapshots"}, &Config::data_dir},
      {{"listen", T::kString, "HOST:PORT the HTTP API listens on"}, &Config::listen},
      {{"db", T::kString, "sqlite:///PATH or postgresql://... (default: sqlite in data_dir)"}, &Config::db},
      {{"log.level", T::kString, "debug | info | warn | error"}, &Config::log_level},
      {{"log.format", T::kString, "text | json (JSON lines)"}, &Config::log_format},
      {{"http.body_limit_bytes", T::kInt, "largest request body accepted (413 above)"}, nullptr, &Config::http_body_limit_bytes},
      {{"http.header_limit_bytes", T::kInt, "largest request header block (431 above)"}, nullptr, &Config::http_header_limit_bytes},
      {{"http.read_timeout_s", T::kInt, "seconds to receive a whole request before closing"}, nullptr, &Config::http_read_timeout_s},
      {{"http.max_requests_per_connection", T::kInt, "keep-alive cap per connection"}, nullptr, &Config::http_max_requests_per_connection},
      {{"http.threads", T::kInt, "I/O and handler threads (0 = max(4, 2 x cores))"}, nullptr, &Config::http_threads},
      {{"auth.access_ttl_s", T::kInt, "access token (JWT) lifetime"}, nullptr, &Config::auth_access_ttl_s},
      {{"auth.refresh_ttl_s", T::kInt, "refresh token lifetime"}, nullptr, &Config::auth_refresh_ttl_s},
      {{"auth.allow_signup", T::kBool, "allow POST /auth/register for anyone"}, nullptr, nullptr, &Config::auth_allow_signup},
      {{"auth.login_max_failures_per_account", T::kInt, "failed logins per account per window before 429"}, nullptr, &Config::auth_login_max_failures_per_account},
      {{"auth.login_max_failures_per_address", T::kInt, "failed logins per client address per window before 429"}, nullptr, &Config::auth_login_max_failures_per_address},
      {{"auth.login_window_s", T::kInt, "login throttling window"}, nullptr, &Config::auth_login_window_s},
      {{"auth.password_hash", T::kString, "argon2id cost: interactive | moderate | fast (fast is for tests)"}, &Config::auth_password_hash},
      {{"providers.vast.base_url", T::kString, "Vast.ai API base URL (an emulator's URL in tests)"}, &Config::vast_base_url},
      {{"providers.vast.api_key", T::kString, "Vast.ai API key; enables the vast provider (secret: prefer the environment)"}, &Config::vast_api_key},
      {{"providers.runpod.base_url", T::kString, "RunPod GraphQL endpoint (an emulator's URL in tests)"}, &Config::runpod_base_url},
      {{"providers.runpod.api_key", T::kString, "RunPod API key; enables a server-wide runpod provider (secret: prefer the environment)"}, &Config::runpod_api_key},
      {{"providers.gce.base_url", T::kString, "Compute Engine API base URL (an emulator's URL in tests)"}, &Config::gce_base_url},
      {{"providers.gce.token_url", T::kString, "OAuth token endpoint for service-account keys (an emulator's in tests)"}, &Config::gce_token_url},
      {{"web.dir", T::kString, "directory of the built web console (default: web/dist of the source tree, when present)"}, &Config::web_dir},
      {{"public_url", T::kString, "URL agents use to reach dumontd (default: http://<listen>)"}, &Config::public_url},
      {{"fleet.heartbeat_interval_s", T::kInt, "agent heartbeat interval"}, nullptr, &Config::fleet_heartbeat_interval_s},
      {{"fleet.resync_interval_s", T::kInt, "controllers re-check every instance this often"}, nullptr, &Config::fleet_resync_interval_s},
      {{"fleet.sim_provider", T::kBool, "enable the in-memory sim provider (tests and demos)"}, nullptr, nullptr, &Config::fleet_sim_provider},
      {{"fleet.local_price_per_hour", T::kNumber, "hourly price booked for local machines (savings ledger)"}, nullptr, nullptr, nullptr, &Config::fleet_local_price_per_hour},
      {{"market.enabled", T::kBool, "sample every provider's offers into the market price history (docs/market.md)"}, nullptr, nullptr, &Config::market_enabled},
      {{"market.interval_s", T::kInt, "seconds between market samples"}, nullptr, &Config::market_interval_s},
      {{"market.retention_days", T::kInt, "market samples older than this many days are deleted"}, nullptr, &Config::market_retention_days},
      {{"demo.enabled", T::kBool, "demo mode: /demo-app/ and POST /api/v1/demo/session give visitors a short-lived account of their own (docs/demo.md)"}, nullptr, nullptr, &Config::demo_enabled},
      {{"demo.session_ttl_s", T::kInt, "lifetime of a demo account and its tokens (at least 60)"}, nullptr, &Config::demo_session_ttl_s},
      {{"demo.sessions_per_address_per_hour", T::kInt, "demo sessions one client address may start per hour"}, nullptr, &Config::demo_sessions_per_address_per_hour},
  };
  return kBindings;
}

const Binding* Find(const std::string& key) {
  for (const auto& b : Bindings()) {
    if (b.key.name == key) return &b;
  }
  return nullptr;
}

}  // namespace

const std::vector<Config::Key>& Config::Keys() {
  static const std::vector<Key> keys = [] {
    std::vector<Key> out;
    for (const auto& b : Bindings()) out.push_back(b.key);
    return out;
  }();
  return keys;
}

std::string Config::EnvName(const std::string& key) {
  std::string out = "DUMONT_";
  for (char c : key) out += (c == '.') ? '_' : static_cast<char>(std::toupper(c));
  return out;
}

std::string Config::DatabaseUrl() const {
  if (!db.empty()) return db;
  return "sqlite://" + (std::filesystem::absolute(data_dir) / "dumont.db").lexically_normal().string();
}

Status Config::Set(const std::string& key, const std::string& value) {
  const Binding* b = Find(key);
  if (!b) return Status::InvalidField(key, "unknown configuration key '" + key + "' (see dumontd --help)");
  if (b->str) {
    this->*(b->str) = value;
  } else if (b->num) {
    try {
      size_t pos = 0;
      long long v = std::stoll(value, &pos);
      if (pos != value.size()) throw std::invalid_argument("trailing");
      this->*(b->num) = v;
    } catch (const std::exception&) {
      return Status::InvalidField(key, "configuration key '" + key + "' needs an integer, got '" + value + "'");
    }
  } else if (b->real) {
    try {
      size_t pos = 0;
      double v = std::stod(value, &pos);
      if (pos != value.size()) throw std::invalid_argument("trailing");
      this->*(b->real) = v;
    } catch (const std::exception&) {
      return Status::InvalidField(key, "configuration key '" + key + "' needs a number, got '" + value + "'");
    }
  } else {
    if (value == "true" || value == "1" || value == "yes") this->*(b->flag) = true;
    else if (value == "false" || value == "0" || value == "no") this->*(b->flag) = false;
    else return Status::InvalidField(key, "configuration key '" + key + "' needs true or false, got '" + value + "'");
  }
  return Status::Ok();
}

std::string Config::Get(const std::string& key) const {
  const Binding* b = Find(key);
  if (!b) return "";
  if (b->str) return this->*(b->str);
  if (b->num) return std::to_string(this->*(b->num));
  if (b->real) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%g", this->*(b->real));
    return buf;
  }
  return (this->*(b->flag)) ? "true" : "false";
}

Status Config::Validate() const {
  if (listen.find(':') == std::string::npos) {
    return Status::InvalidField("listen", "listen must be HOST:PORT, got '" + listen + "'");
  }
  if (log_level != "debug" && log_level != "info" && log_level != "warn" && log_level != "error") {
    return Status::InvalidField("log.level", "log.level must be debug, info, warn or error");
  }
  if (log_format != "text" && log_format != "json") {
    return Status::InvalidField("log.format", "log.format must be text or json");
  }
  if (http_body_limit_bytes < 1024) {
    return Status::InvalidField("http.body_limit_bytes", "http.body_limit_bytes must be at least 1024");
  }
  if (http_header_limit_bytes < 1024) {
    return Status::InvalidField("http.header_limit_bytes", "http.header_limit_bytes must be at least 1024");
  }
  if (http_read_timeout_s < 1) {
    return Status::InvalidField("http.read_timeout_s", "http.read_timeout_s must be at least 1");
  }
  if (auth_access_ttl_s < 1 || auth_refresh_ttl_s < 1 || auth_login_window_s < 1) {
    return Status::InvalidArgument("auth TTLs and windows must be positive");
  }
  if (auth_password_hash != "interactive" && auth_password_hash != "moderate" &&
      auth_password_hash != "fast") {
    return Status::InvalidField("auth.password_hash", "auth.password_hash must be interactive, moderate or fast");
  }
  if (market_interval_s < 10) {
    return Status::InvalidField("market.interval_s", "market.interval_s must be at least 10");
  }
  if (market_retention_days < 1) {
    return Status::InvalidField("market.retention_days", "market.retention_days must be at least 1");
  }
  if (demo_session_ttl_s < 60) {
    return Status::InvalidField("demo.session_ttl_s", "demo.session_ttl_s must be at least 60");
  }
  if (demo_sessions_per_address_per_hour < 1) {
    return Status::InvalidField("demo.sessions_per_address_per_hour", "demo.sessions_per_address_per_hour must be at least 1");
  }
  if (!db.empty() && db.rfind("sqlite://", 0) != 0 && db.rfind("postgresql://", 0) != 0 &&
      db.rfind("postgres://", 0) != 0) {
    return Status::InvalidField("db", "db must start with sqlite:// or postgresql://, got '" + db + "'");
  }
  return Status::Ok();
}

namespace {

Status ApplyToml(Config* cfg, const std::string& path) {
  toml::table tbl;
  try {
    tbl = toml::parse_file(path);
  } catch (const toml::parse_error& e) {
    std::ostringstream msg;
    msg << "config file " << path << ":" << e.source().begin.line << ":" << e.source().begin.column
        << ": " << e.description();
    return Status::InvalidArgument(msg.str());
  }
  Status st;
  // Walk every leaf; dotted names map to keys.
  std::function<void(const toml::table&, const std::string&)> walk =
      [&](const toml::table& t, const std::string& prefix) {
        for (const auto& [k, node] : t) {
          if (!st.ok()) return;
          std::string name = prefix.empty() ? std::string(k.str()) : prefix + "." + std::string(k.str());
          if (const auto* sub = node.as_table()) {
            walk(*sub, name);
            continue;
          }
          std::string text;
          if (auto s = node.value<std::string>(); s && node.is_string()) text = *s;
          else if (node.is_integer()) text = std::to_string(*node.value<int64_t>());
          else if (node.is_floating_point()) text = std::to_string(*node.value<double>());
          else if (node.is_boolean()) text = *node.value<bool>() ? "true" : "false";
          else {
            st = Status::InvalidField(name, "config file " + path + ": key '" + name +
                                                "' has an unsupported value type");
            return;
          }
          Status set = cfg->Set(name, text);
          if (!set.ok()) st = set.Annotate("config file " + path);
        }
      };
  walk(tbl, "");
  return st;
}

}  // namespace

Result<Config> LoadConfig(const ConfigSources& sources) {
  Config cfg;
  // data_dir decides where the default TOML file lives, so resolve it from env/flags first.
  std::string data_dir = cfg.data_dir;
  if (auto it = sources.env.find(Config::EnvName("data_dir")); it != sources.env.end()) data_dir = it->second;
  if (auto it = sources.flags.find("data_dir"); it != sources.flags.end()) data_dir = it->second;

  std::optional<std::string> toml_path = sources.toml_path;
  if (!toml_path) {
    if (auto it = sources.env.find("DUMONT_CONFIG"); it != sources.env.end() && !it->second.empty()) {
      toml_path = it->second;
    }
  }
  if (toml_path) {
    if (!std::filesystem::exists(*toml_path)) {
      return Err(Status::InvalidArgument("config file " + *toml_path + " does not exist"));
    }
  } else {
    auto implicit = std::filesystem::path(data_dir) / "dumont.toml";
    if (std::filesystem::exists(implicit)) toml_path = implicit.string();
  }
  if (toml_path) DUMONT_RETURN_IF_ERROR(ApplyToml(&cfg, *toml_path));

  for (const auto& key : Config::Keys()) {
    if (auto it = sources.env.find(Config::EnvName(key.name)); it != sources.env.end()) {
      DUMONT_RETURN_IF_ERROR(cfg.Set(key.name, it->second).Annotate("environment " + it->first));
    }
  }
  for (const auto& [k, v] : sources.flags) {
    DUMONT_RETURN_IF_ERROR(cfg.Set(k, v));
  }
  DUMONT_RETURN_IF_ERROR(cfg.Validate());
  return cfg;
}

std::string ConfigHelp() {
  Config defaults;
  std::ostringstream out;
  out << "Configuration precedence (highest first): command-line flags (--set KEY=VALUE and the named\n"
         "flags), environment DUMONT_<KEY>, the TOML file (--config FILE, else $DUMONT_CONFIG, else\n"
         "<data_dir>/dumont.toml when present), built-in defaults.\n\nKeys:\n";
  for (const auto& k : Config::Keys()) {
    std::string def = defaults.Get(k.name);
    out << "  " << k.name << "  (" << Config::EnvName(k.name) << ", default "
        << (def.empty() ? "\"\"" : def) << ")\n      " << k.help << "\n";
  }
  return out.str();
}

std::map<std::string, std::string> ProcessEnvironment() {
  std::map<std::string, std::string> env;
  for (char** e = environ; e && *e; ++e) {
    std::string_view kv(*e);
    auto eq = kv.find('=');
    if (eq == std::string_view::npos) continue;
    env.emplace(std::string(kv.substr(0, eq)), std::string(kv.substr(eq + 1)));
  }
  return env;
}

}  // namespace dumont
