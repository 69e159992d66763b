#include "cli/cli.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <set>
#include <sstream>
#include <thread>
#include <map>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <dumont/version.h>

#include "cli/snapshot_cmd.h"
#include "http/client.h"

namespace dumont::cli {
namespace {

using nlohmann::json;

enum Exit { kOk = 0, kServerError = 1, kUsage = 2, kUnreachable = 3, kNotLoggedIn = 4 };

struct Globals {
  std::string base_url;
  bool json_out = false;
};

// Raised inside commands to end with a message and exit code; caught in Run().
struct Failure {
  int code;
  std::string message;
  std::string error_code;
};

std::string ConfigDir() {
  if (const char* d = std::getenv("XDG_CONFIG_HOME"); d && *d) return std::string(d) + "/dumont";
  if (const char* h = std::getenv("HOME"); h && *h) return std::string(h) + "/.config/dumont";
  return ".dumont";
}
std::string CredentialsPath() { return ConfigDir() + "/credentials.json"; }

json LoadCredentials() {
  std::ifstream in(CredentialsPath());
  if (!in) return json::object();
  json j = json::parse(in, nullptr, false);
  return j.is_object() ? j : json::object();
}

void SaveCredentials(const json& j) {
  std::string dir = ConfigDir();
  std::filesystem::create_directories(dir);
  ::chmod(dir.c_str(), 0700);
  std::string tmp = CredentialsPath() + ".tmp";
  {
    int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) throw Failure{kServerError, "cannot write " + tmp + ": " + std::strerror(errno), "io_error"};
    std::string data = j.dump(2) + "\n";
    bool ok = ::write(fd, data.data(), data.size()) == static_cast<ssize_t>(data.size());
    ::fchmod(fd, 0600);
    ::close(fd);
    if (!ok) throw Failure{kServerError, "cannot write " + tmp, "io_error"};
  }
  std::filesystem::rename(tmp, CredentialsPath());
}

std::string ReadPassword(bool from_stdin, const std::string& prompt) {
  if (!from_stdin) {
    if (const char* p = std::getenv("DUMONT_PASSWORD"); p && *p) return p;
  }
  std::string pw;
  if (!from_stdin && isatty(STDIN_FILENO)) {
    std::fprintf(stderr, "%s", prompt.c_str());
    termios old{};
    tcgetattr(STDIN_FILENO, &old);
    termios quiet = old;
    quiet.c_lflag &= ~static_cast<tcflag_t>(ECHO);
    tcsetattr(STDIN_FILENO, TCSANOW, &quiet);
    std::getline(std::cin, pw);
    tcsetattr(STDIN_FILENO, TCSANOW, &old);
    std::fprintf(stderr, "\n");
  } else if (from_stdin) {
    std::getline(std::cin, pw);
  } else {
    throw Failure{kUsage,
                  "no password given: pipe it with --password-stdin, set DUMONT_PASSWORD, or run in a terminal",
                  "invalid_argument"};
  }
  if (!pw.empty() && pw.back() == '\r') pw.pop_back();
  return pw;
}

class Api {
 public:
  explicit Api(const Globals& g) : g_(g) {
    base_ = g.base_url;
    while (!base_.empty() && base_.back() == '/') base_.pop_back();
  }

  // Sends a request; returns the parsed JSON body of a 2xx answer, throws Failure otherwise.
  json Call(const std::string& method, const std::string& path, const json& body = nullptr,
            bool authed = false) {
    auto resp = Send(method, path, body, authed ? AccessToken() : "");
    if (authed && resp.status == 401 && TryRefresh()) resp = Send(method, path, body, AccessToken());
    json j = json::parse(resp.body, nullptr, false);
    if (resp.status >= 200 && resp.status < 300) return j.is_discarded() ? json::object() : j;
    std::string msg = "server answered " + std::to_string(resp.status);
    std::string code = "http_" + std::to_string(resp.status);
    if (!j.is_discarded() && j.contains("error") && j["error"].is_object()) {
      msg = j["error"].value("message", msg);
      code = j["error"].value("code", code);
    }
    if (resp.status == 401 && authed) {
      throw Failure{kNotLoggedIn, msg + " (log in with: dumont auth login --email you@example.com)", code};
    }
    if (resp.status == 429) {
      auto it = resp.headers.find("retry-after");
      if (it != resp.headers.end()) msg += " (retry after " + it->second + " s)";
    }
    throw Failure{kServerError, msg, code};
  }

  json& creds() {
    if (!loaded_) {
      all_ = LoadCredentials();
      loaded_ = true;
    }
    if (!all_.contains("servers") || !all_["servers"].is_object()) all_["servers"] = json::object();
    return all_["servers"][base_];
  }
  void Save() { SaveCredentials(all_); }
  void Forget() {
    creds();
    all_["servers"].erase(base_);
    Save();
  }
  const std::string& base() const { return base_; }

 private:
  std::string AccessToken() {
    json& c = creds();
    if (!c.is_object() || !c.contains("access_token")) {
      throw Failure{kNotLoggedIn,
                    "not logged in to " + base_ + "; run: dumont auth login --email you@example.com",
                    "unauthenticated"};
    }
    return c["access_token"].get<std::string>();
  }

  bool TryRefresh() {
    json& c = creds();
    if (!c.is_object() || !c.contains("refresh_token")) return false;
    auto resp = Send("POST", "/api/v1/auth/refresh", {{"refresh_token", c["refresh_token"]}}, "");
    if (resp.status != 200) return false;
    json t = json::parse(resp.body, nullptr, false);
    if (t.is_discarded()) return false;
    c["access_token"] = t["access_token"];
    c["refresh_token"] = t["refresh_token"];
    Save();
    return true;
  }

  http::ClientResponse Send(const std::string& method, const std::string& path, const json& body,
                            const std::string& token) {
    http::ClientRequest req;
    req.method = method;
    req.url = base_ + path;
    if (!body.is_null()) {
      req.body = body.dump();
      req.headers.emplace_back("Content-Type", "application/json");
    }
    if (!token.empty()) req.headers.emplace_back("Authorization", "Bearer " + token);
    auto r = http::Fetch(req);
    if (!r) {
      throw Failure{kUnreachable,
                    "cannot reach dumontd at " + base_ + " (" + r.error().message() +
                        "). Is it running? Start it with `make run`, or point to it with --base-url or "
                        "DUMONT_API_URL",
                    "unavailable"};
    }
    return *r;
  }

  const Globals& g_;
  std::string base_;
  json all_;
  bool loaded_ = false;
};

void Print(const Globals& g, const json& j, const std::string& human) {
  if (g.json_out) {
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("%s\n", human.c_str());
  }
}

std::string Money(double usd) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "$%.4f", usd);
  return buf;
}

std::string OfferLine(const json& o) {
  char buf[256];
  std::snprintf(buf, sizeof buf, "%s (%s x%d, $%.3f/h, %s)", o.value("id", "?").c_str(), o.value("gpu", "?").c_str(),
                o.value("num_gpus", 0), o.value("price_per_hour", 0.0), o.value("location", "").c_str());
  return buf;
}

// One deploy event as a line of text (see GET /api/v1/deploys/{id}/events).
std::string DeployEventLine(const json& e) {
  const std::string type = e.value("type", "");
  const json& d = e["data"];
  if (type == "deploy_started") {
    const json& s = d["request"]["strategy"];
    return "deploy started on " + d.value("provider", "?") + " (" + d.value("reason", "") + "): " +
           std::to_string(d.value("offers", 0)) + " offers, batches of " + std::to_string(s.value("batch_size", 0)) +
           " x " + std::to_string(s.value("max_batches", 0)) + ", " + std::to_string(s.value("batch_timeout_s", 0)) +
           " s each";
  }
  if (type == "batch_started") {
    std::string out = "batch " + std::to_string(d.value("batch", 0)) + ":";
    for (const auto& o : d["offers"]) out += "\n    " + OfferLine(o);
    return out;
  }
  if (type == "machine_created") return "  + " + d.value("label", "") + " -> machine " + d.value("machine_id", "");
  if (type == "machine_failed") return "  ! " + d.value("label", "") + ": " + d.value("error", "");
  if (type == "machine_state") {
    return "  " + d.value("label", "") + ": " + d.value("state", "") + (d.value("reachable", false) ? " (reachable)" : "");
  }
  if (type == "machine_destroyed") {
    return "  - " + d.value("label", "") + " destroyed (" + d.value("reason", "") + "), billed " +
           std::to_string(d.value("billed_seconds", 0)) + " s, " + Money(d.value("cost_usd", 0.0));
  }
  if (type == "deploy_succeeded") {
    char buf[128];
    std::snprintf(buf, sizeof buf, "%.1f s", d.value("time_to_ready_s", 0.0));
    return "ready: machine " + d["winner"].value("machine_id", "") + " on " + OfferLine(d["winner"]["offer"]) + " in " +
           buf + "; " + std::to_string(d.value("machines_started", 0)) + " machine(s) started, losers cost " +
           Money(d.value("loser_cost_usd", 0.0));
  }
  if (type == "deploy_failed") return "failed: " + d.value("reason", "");
  return type;
}

std::string UserLine(const json& u) {
  return u.value("email", "?") + " (role " + u.value("role", "?") + ", id " + u.value("id", "?") + ")";
}

}  // namespace

int Run(int argc, char** argv) {
  Globals g;
  CLI::App app{"dumont: the Dumont Cloud command line"};
  app.set_version_flag("--version", std::string(DUMONT_VERSION) + " (" + DUMONT_GIT_COMMIT + ")");
  app.fallthrough();
  app.require_subcommand(1);
  const char* env_url = std::getenv("DUMONT_API_URL");
  g.base_url = env_url && *env_url ? env_url : "http://127.0.0.1:8765";
  app.add_option("--base-url", g.base_url, "dumontd URL (else $DUMONT_API_URL, else http://127.0.0.1:8765)");
  app.add_flag("--json", g.json_out, "print one JSON document instead of text");
  app.footer(
      "\nCredentials are kept per server in ~/.config/dumont/credentials.json (mode 0600).\n"
      "Exit codes: 0 ok, 1 the server refused, 2 usage, 3 server unreachable, 4 not logged in.");

  auto* health = app.add_subcommand("health", "check that dumontd and its database are up");

  auto* auth = app.add_subcommand("auth", "accounts and sessions");
  auth->require_subcommand(1);
  std::string email;
  bool pw_stdin = false;
  auto* reg = auth->add_subcommand("register", "create an account (password from a prompt, --password-stdin or $DUMONT_PASSWORD)");
  reg->add_option("--email", email, "account email")->required();
  reg->add_flag("--password-stdin", pw_stdin, "read the password from the first line of stdin");
  auto* login = auth->add_subcommand("login", "log in and remember the session for this server");
  login->add_option("--email", email, "account email")->required();
  login->add_flag("--password-stdin", pw_stdin, "read the password from the first line of stdin");
  auto* logout = auth->add_subcommand("logout", "end the session and forget its tokens");
  auto* me = auth->add_subcommand("me", "show who you are logged in as");

  // dumont instance ...
  auto* inst = app.add_subcommand("instance", "machines: create, watch, hibernate, wake, destroy");
  inst->require_subcommand(1);
  std::string inst_id, inst_name, inst_provider = "local", inst_gpu, inst_offer;
  int64_t idle_s = -1, release_s = -1, ev_limit = 50;
  double threshold = -1, load = 0;
  bool no_hib = false, wait = false;
  int wait_s = 120;
  auto* i_list = inst->add_subcommand("list", "your instances");
  auto* i_create = inst->add_subcommand("create", "create an instance (a machine starts)");
  i_create->add_option("--name", inst_name, "a name")->required();
  i_create->add_option("--provider", inst_provider, "local (default) or a configured provider");
  i_create->add_option("--gpu", inst_gpu, "wanted GPU model");
  i_create->add_option("--offer", inst_offer, "a specific offer id");
  i_create->add_option("--idle-seconds", idle_s, "hibernate after this long with every GPU under the threshold (default 180)");
  i_create->add_option("--gpu-threshold", threshold, "idle means every GPU under this % (default 5)");
  i_create->add_option("--release-after", release_s, "seconds hibernated before reservations are released (default 1800)");
  i_create->add_flag("--no-hibernation", no_hib, "never hibernate automatically");
  std::map<std::string, CLI::App*> actions;
  for (const char* a : {"show", "destroy", "pause", "resume", "hibernate", "wake", "snapshot", "retry", "events", "snapshots"}) {
    std::string help = std::string(a) == "show" ? "details of one instance"
                       : std::string(a) == "events" ? "what happened, newest last"
                       : std::string(a) == "snapshots" ? "the instance's snapshots"
                       : std::string(a) == "destroy" ? "destroy the instance and its machine"
                       : std::string(a) == "retry" ? "run the failed deploy of an instance in error again"
                                                     : std::string(a) + " the instance";
    auto* c = inst->add_subcommand(a, help);
    c->add_option("id", inst_id, "instance id")->required();
    actions[a] = c;
  }
  actions["events"]->add_option("--limit", ev_limit, "at most this many (default 50)");
  auto* i_load = inst->add_subcommand("gpu-load", "set the simulated GPU utilisation of a local machine (0..100)");
  i_load->add_option("id", inst_id, "instance id")->required();
  i_load->add_option("util", load, "utilisation percent")->required()->check(CLI::Range(0.0, 100.0));
  for (auto* c : {i_create, actions["hibernate"], actions["wake"], actions["destroy"], actions["pause"], actions["resume"],
                  actions["retry"]}) {
    c->add_flag("--wait", wait, "wait until the instance reaches its target state");
    c->add_option("--timeout", wait_s, "seconds to wait with --wait (default 120)");
  }

  // deploy: multi-start
  auto* dep = app.add_subcommand("deploy", "multi-start deploys: start several offers, keep the first that boots");
  dep->require_subcommand(1);
  std::string d_id, d_name, d_provider = "local", d_gpu, d_region, d_sort, d_offer;
  int64_t d_num_gpus = -1, d_batch = -1, d_batches = -1, d_timeout_s = -1, d_limit = 20;
  double d_vram = -1, d_price = -1;
  bool d_watch = false;
  auto* d_create = dep->add_subcommand("create", "create an instance through a multi-start deploy");
  d_create->add_option("--name", d_name, "a name for the instance")->required();
  d_create->add_option("--provider", d_provider, "local (default), vast, runpod, gce, or another configured provider");
  d_create->add_option("--gpu", d_gpu, "GPU model, e.g. \"RTX 4090\" (any when absent)");
  d_create->add_option("--num-gpus", d_num_gpus, "exactly this many GPUs");
  d_create->add_option("--min-vram", d_vram, "GB of VRAM per GPU, at least");
  d_create->add_option("--max-price", d_price, "$/hour, at most (your budget)");
  d_create->add_option("--region", d_region, "location contains, e.g. US");
  d_create->add_option("--sort", d_sort, "which offers first: price (default) | reliability | value");
  d_create->add_option("--offer", d_offer, "start only this offer (no multi-start)");
  d_create->add_option("--batch-size", d_batch, "machines started at once (default 5)");
  d_create->add_option("--max-batches", d_batches, "batches before giving up (default 3)");
  d_create->add_option("--batch-timeout", d_timeout_s, "seconds before the next batch starts (default 90)");
  d_create->add_option("--idle-seconds", idle_s, "hibernate after this long idle (default 180)");
  d_create->add_flag("--no-hibernation", no_hib, "never hibernate automatically");
  d_create->add_flag("--watch", d_watch, "follow the deploy until a machine wins or it fails");
  auto* d_list = dep->add_subcommand("list", "your deploys, newest first");
  d_list->add_option("--limit", d_limit, "at most this many (default 20)");
  auto* d_show = dep->add_subcommand("show", "one deploy: every machine started, the winner, the cost");
  d_show->add_option("id", d_id, "deploy id")->required();
  auto* d_watch_cmd = dep->add_subcommand("watch", "follow a deploy's progress until it ends");
  d_watch_cmd->add_option("id", d_id, "deploy id")->required();
  for (auto* c : {d_create, d_watch_cmd}) c->add_option("--timeout", wait_s, "seconds to follow (default 120)");

  // offers
  auto* offers = app.add_subcommand("offers", "machines you could rent now, across every configured provider");
  std::string o_gpu, o_region, o_provider, o_sort = "price";
  double o_vram = -1, o_price = -1;
  int64_t o_num = -1, o_limit = 20;
  offers->add_option("--gpu", o_gpu, "GPU model");
  offers->add_option("--num-gpus", o_num, "exactly this many GPUs");
  offers->add_option("--min-vram", o_vram, "GB per GPU, at least");
  offers->add_option("--max-price", o_price, "$/hour, at most");
  offers->add_option("--region", o_region, "location contains");
  offers->add_option("--provider", o_provider, "only this provider");
  offers->add_option("--sort", o_sort, "price (default) | reliability | value");
  offers->add_option("--limit", o_limit, "show at most this many (default 20)");

  // provider credentials
  auto* creds = app.add_subcommand("credentials", "your provider credentials (stored encrypted; never shown again)");
  creds->require_subcommand(1);
  std::string c_provider;
  std::vector<std::string> c_fields;
  auto* c_list = creds->add_subcommand("list", "which providers take credentials and which you saved");
  auto* c_set = creds->add_subcommand(
      "set", "save credentials: FIELD=VALUE, FIELD=@FILE (read a file) or FIELD=- (read stdin; keeps secrets out of ps)");
  c_set->add_option("provider", c_provider, "vast | runpod | gce")->required();
  c_set->add_option("fields", c_fields, "e.g. api_key=- or service_account_json=@key.json project=my-proj")->required();
  auto* c_del = creds->add_subcommand("delete", "forget your credentials for a provider");
  c_del->add_option("provider", c_provider, "provider")->required();

  SnapshotArgs* snapshot_args = AddSnapshotCommands(app);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? kOk : kUsage;
  }

  if (app.got_subcommand("snapshot")) return RunSnapshotCommand(snapshot_args, g.json_out);

  Api api(g);
  try {
    if (*health) {
      auto resp = http::Fetch({"GET", api.base() + "/health", "", {}, std::chrono::milliseconds(10000)});
      if (!resp) {
        throw Failure{kUnreachable,
                      "cannot reach dumontd at " + api.base() + " (" + resp.error().message() +
                          "). Is it running? Start it with `make run`, or point to it with --base-url",
                      "unavailable"};
      }
      json j = json::parse(resp->body, nullptr, false);
      if (j.is_discarded()) throw Failure{kServerError, "health answer is not JSON", "internal"};
      std::string human = "dumontd at " + api.base() + ": " + j.value("status", "?") + " (version " +
                          j.value("version", "?") + ", database " + j["database"].value("backend", "?") +
                          " " + j["database"].value("status", "?") + ", schema " +
                          std::to_string(j["database"].value("schema_version", 0)) + ")";
      Print(g, j, human);
      return resp->status == 200 ? kOk : kServerError;
    }
    if (*reg) {
      std::string pw = ReadPassword(pw_stdin, "Password for " + email + ": ");
      json j = api.Call("POST", "/api/v1/auth/register", {{"email", email}, {"password", pw}});
      Print(g, j, "registered " + UserLine(j["user"]) + "; now run: dumont auth login --email " + j["user"].value("email", email));
      return kOk;
    }
    if (*login) {
      std::string pw = ReadPassword(pw_stdin, "Password for " + email + ": ");
      json j = api.Call("POST", "/api/v1/auth/login", {{"email", email}, {"password", pw}});
      json& c = api.creds();
      c = {{"email", email}, {"access_token", j["access_token"]}, {"refresh_token", j["refresh_token"]}};
      api.Save();
      json out = {{"logged_in", true}, {"email", email}, {"base_url", api.base()},
                  {"expires_in", j["expires_in"]}};
      Print(g, out, "logged in to " + api.base() + " as " + email);
      return kOk;
    }
    if (*logout) {
      json& c = api.creds();
      if (!c.is_object() || !c.contains("access_token")) {
        Print(g, {{"logged_out", true}, {"was_logged_in", false}}, "not logged in to " + api.base());
        return kOk;
      }
      json body = {{"refresh_token", c["refresh_token"]}};
      try {
        api.Call("POST", "/api/v1/auth/logout", body, true);
      } catch (const Failure& f) {
        if (f.code != kNotLoggedIn) throw;  // an already-ended session is still a logout
      }
      api.Forget();
      Print(g, {{"logged_out", true}, {"was_logged_in", true}}, "logged out of " + api.base());
      return kOk;
    }
    if (*inst) {
      auto show_line = [](const json& i) {
        char buf[512];
        std::string util = i["telemetry"].is_object()
                               ? std::to_string(static_cast<int>(i["telemetry"].value("max_gpu_util", 0.0))) + "%"
                               : "-";
        std::snprintf(buf, sizeof buf, "%-26s %-16s %-12s %-8s %5s  $%.3f/h", i.value("id", "").c_str(),
                      i.value("name", "").substr(0, 16).c_str(), i.value("state", "").c_str(),
                      i.value("provider", "").c_str(), util.c_str(), i["machine"].value("price_per_hour", 0.0));
        return std::string(buf);
      };
      auto details = [&](const json& i) {
        std::string out = show_line(i);
        if (!i.value("message", "").empty()) out += "\n  message:   " + i.value("message", "");
        if (i["machine"].contains("workspace")) out += "\n  workspace: " + i["machine"]["workspace"].get<std::string>();
        if (i["last_snapshot"].is_string()) out += "\n  snapshot:  " + i["last_snapshot"].get<std::string>().substr(0, 8);
        const json& h = i["hibernation"];
        out += "\n  hibernation: " + std::string(h.value("enabled", false) ? "on" : "off") + ", idle under " +
               std::to_string(static_cast<int>(h.value("gpu_threshold_pct", 0.0))) + "% for " +
               std::to_string(h.value("idle_seconds", 0)) + " s";
        return out;
      };
      auto wait_for = [&](const std::string& id, const std::set<std::string>& targets) -> json {
        auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(wait_s);
        std::string last;
        for (;;) {
          json j = api.Call("GET", "/api/v1/instances/" + id, nullptr, true)["instance"];
          std::string st = j.value("state", "");
          if (!g.json_out && st != last) std::fprintf(stderr, "%s\n", st.c_str());
          last = st;
          if (targets.count(st)) return j;
          if (st == "error") throw Failure{kServerError, "instance " + id + " is in error: " + j.value("message", ""), "error"};
          if (std::chrono::steady_clock::now() > deadline) {
            throw Failure{kServerError, "timed out after " + std::to_string(wait_s) + " s; the instance is " + st, "timeout"};
          }
          std::this_thread::sleep_for(std::chrono::milliseconds(500));
        }
      };
      if (*i_list) {
        json j = api.Call("GET", "/api/v1/instances", nullptr, true);
        std::string human = "ID                         NAME             STATE        PROVIDER   GPU  PRICE";
        for (const auto& i : j["instances"]) human += "\n" + show_line(i);
        if (j["instances"].empty()) human += "\n(no instances; create one with: dumont instance create --name NAME)";
        Print(g, j, human);
        return kOk;
      }
      if (*i_create) {
        json body = {{"name", inst_name}, {"provider", inst_provider}};
        if (!inst_gpu.empty()) body["gpu"] = inst_gpu;
        if (!inst_offer.empty()) body["offer_id"] = inst_offer;
        json h = json::object();
        if (no_hib) h["enabled"] = false;
        if (idle_s >= 0) h["idle_seconds"] = idle_s;
        if (threshold >= 0) h["gpu_threshold_pct"] = threshold;
        if (release_s >= 0) h["release_after_seconds"] = release_s;
        if (!h.empty()) body["hibernation"] = h;
        json j = api.Call("POST", "/api/v1/instances", body, true)["instance"];
        if (wait) j = wait_for(j["id"], {"running"});
        Print(g, {{"instance", j}}, details(j));
        return kOk;
      }
      if (*i_load) {
        json j = api.Call("PUT", "/api/v1/instances/" + inst_id + "/virtual-gpu", {{"util", load}}, true);
        Print(g, j, "simulated GPU of " + inst_id + " set to " + std::to_string(static_cast<int>(load)) + " %");
        return kOk;
      }
      if (*actions["show"]) {
        json j = api.Call("GET", "/api/v1/instances/" + inst_id, nullptr, true);
        Print(g, j, details(j["instance"]));
        return kOk;
      }
      if (*actions["events"]) {
        json j = api.Call("GET", "/api/v1/instances/" + inst_id + "/events?limit=" + std::to_string(ev_limit), nullptr, true);
        std::string human;
        for (auto it = j["events"].rbegin(); it != j["events"].rend(); ++it) {
          time_t t = (*it)["time_ms"].get<int64_t>() / 1000;
          char ts[32];
          std::strftime(ts, sizeof ts, "%Y-%m-%d %H:%M:%S", std::localtime(&t));
          human += std::string(ts) + "  " + (*it).value("type", "") + "  " + (*it).value("message", "") + "\n";
        }
        if (!human.empty()) human.pop_back();
        Print(g, j, human.empty() ? "(no events)" : human);
        return kOk;
      }
      if (*actions["snapshots"]) {
        json j = api.Call("GET", "/api/v1/instances/" + inst_id + "/snapshots", nullptr, true);
        std::string human = "ID        TIME                  SIZE        TAGS";
        for (const auto& s : j["snapshots"]) {
          char buf[256];
          std::string tags;
          for (const auto& t : s["tags"]) tags += (tags.empty() ? "" : ",") + t.get<std::string>();
          std::snprintf(buf, sizeof buf, "\n%-9s %-21s %10.1f MB %s", s.value("short_id", "").c_str(),
                        s.value("time", "").c_str(), s.value("bytes_total", 0) / 1e6, tags.c_str());
          human += buf;
        }
        Print(g, j, human);
        return kOk;
      }
      if (*actions["destroy"]) {
        json j = api.Call("DELETE", "/api/v1/instances/" + inst_id, nullptr, true)["instance"];
        if (wait) j = wait_for(inst_id, {"destroyed"});
        Print(g, {{"instance", j}}, "destroying " + inst_id + (wait ? ": destroyed" : ""));
        return kOk;
      }
      for (const char* a : {"pause", "resume", "hibernate", "wake", "snapshot", "retry"}) {
        if (!*actions[a]) continue;
        json j = api.Call("POST", "/api/v1/instances/" + inst_id + "/" + a, nullptr, true)["instance"];
        static const std::map<std::string, std::set<std::string>> kTargets = {
            {"pause", {"paused"}}, {"resume", {"running"}}, {"hibernate", {"hibernated"}}, {"wake", {"running"}},
            {"retry", {"running"}}};
        if (wait && kTargets.count(a)) j = wait_for(inst_id, kTargets.at(a));
        Print(g, {{"instance", j}}, std::string(a) + ": " + inst_id + " is " + j.value("state", ""));
        return kOk;
      }
    }
    if (*dep) {
      auto watch = [&](const std::string& id) -> int {
        auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(wait_s);
        int64_t after = 0;
        for (;;) {
          json j = api.Call("GET", "/api/v1/deploys/" + id + "/events?format=json&after=" + std::to_string(after), nullptr, true);
          bool done = false;
          for (const auto& e : j["events"]) {
            after = e.value("seq", after);
            if (g.json_out) {
              std::printf("%s\n", e.dump().c_str());
            } else {
              std::printf("%s\n", DeployEventLine(e).c_str());
            }
            std::fflush(stdout);
            done = done || e["type"] == "deploy_succeeded" || e["type"] == "deploy_failed";
          }
          if (done) break;
          if (std::chrono::steady_clock::now() > deadline) {
            throw Failure{kServerError, "stopped following after " + std::to_string(wait_s) +
                                            " s; the deploy goes on (dumont deploy watch " + id + ")", "timeout"};
          }
          std::this_thread::sleep_for(std::chrono::milliseconds(500));
        }
        json d = api.Call("GET", "/api/v1/deploys/" + id, nullptr, true)["deploy"];
        if (g.json_out) std::printf("%s\n", json({{"deploy", d}}).dump().c_str());
        return d.value("state", "") == "succeeded" ? kOk : kServerError;
      };
      if (*d_create) {
        json body = {{"name", d_name}, {"provider", d_provider}};
        json req = json::object(), strat = json::object();
        if (!d_gpu.empty()) req["gpu"] = d_gpu;
        if (d_num_gpus >= 0) req["num_gpus"] = d_num_gpus;
        if (d_vram >= 0) req["min_vram_gb"] = d_vram;
        if (d_price >= 0) req["max_price"] = d_price;
        if (!d_region.empty()) req["region"] = d_region;
        if (!d_sort.empty()) req["sort"] = d_sort;
        if (d_batch >= 0) strat["batch_size"] = d_batch;
        if (d_batches >= 0) strat["max_batches"] = d_batches;
        if (d_timeout_s >= 0) strat["batch_timeout_s"] = d_timeout_s;
        if (!req.empty()) body["requirements"] = req;
        if (!strat.empty()) body["strategy"] = strat;
        if (!d_offer.empty()) body["offer_id"] = d_offer;
        json h = json::object();
        if (no_hib) h["enabled"] = false;
        if (idle_s >= 0) h["idle_seconds"] = idle_s;
        if (!h.empty()) body["hibernation"] = h;
        json d = api.Call("POST", "/api/v1/deploys", body, true)["deploy"];
        if (!d_watch) {
          Print(g, {{"deploy", d}}, "deploy " + d.value("id", "") + " started for instance " + d.value("instance_id", "") +
                                        "; follow it with: dumont deploy watch " + d.value("id", ""));
          return kOk;
        }
        if (!g.json_out) std::printf("deploy %s (instance %s)\n", d.value("id", "").c_str(), d.value("instance_id", "").c_str());
        return watch(d["id"]);
      }
      if (*d_watch_cmd) return watch(d_id);
      if (*d_list) {
        json j = api.Call("GET", "/api/v1/deploys?limit=" + std::to_string(d_limit), nullptr, true);
        std::string human = "ID                         INSTANCE                   REASON   STATE      MACHINES  COST";
        for (const auto& d : j["deploys"]) {
          char buf[256];
          std::snprintf(buf, sizeof buf, "\n%-26s %-26s %-8s %-10s %8zu  %s", d.value("id", "").c_str(),
                        d.value("instance_id", "").c_str(), d.value("reason", "").c_str(), d.value("state", "").c_str(),
                        d["machines"].size(), Money(d.value("total_cost_usd", 0.0)).c_str());
          human += buf;
        }
        if (j["deploys"].empty()) human += "\n(no deploys; start one with: dumont deploy create --name NAME --watch)";
        Print(g, j, human);
        return kOk;
      }
      if (*d_show) {
        json j = api.Call("GET", "/api/v1/deploys/" + d_id, nullptr, true);
        const json& d = j["deploy"];
        std::string human = d.value("id", "") + "  " + d.value("state", "") + "  (" + d.value("reason", "") + " of " +
                            d.value("instance_id", "") + " on " + d.value("provider", "") + ")";
        if (!d.value("message", "").empty()) human += "\n  " + d.value("message", "");
        for (const auto& m : d["machines"]) {
          human += "\n  batch " + std::to_string(m.value("batch", 0)) + "  " + m.value("label", "") + "  " +
                   OfferLine(m["offer"]) + "  " + m.value("state", "") +
                   (m["end"].is_string() ? " -> " + m["end"].get<std::string>() : "") + "  " +
                   std::to_string(m.value("billed_seconds", 0)) + " s " + Money(m.value("cost_usd", 0.0));
        }
        human += "\n  losers cost " + Money(d.value("loser_cost_usd", 0.0)) + ", total " + Money(d.value("total_cost_usd", 0.0));
        Print(g, j, human);
        return kOk;
      }
    }
    if (*offers) {
      std::string q = "?sort=" + o_sort;
      auto add = [&](const char* k, const std::string& v) {
        if (v.empty()) return;
        q += std::string("&") + k + "=";
        for (unsigned char ch : v) {
          if (std::isalnum(ch) || ch == '-' || ch == '.' || ch == '_') {
            q += static_cast<char>(ch);
          } else {
            char hex[4];
            std::snprintf(hex, sizeof hex, "%%%02X", ch);
            q += hex;
          }
        }
      };
      add("gpu", o_gpu);
      add("region", o_region);
      add("provider", o_provider);
      if (o_num >= 0) add("num_gpus", std::to_string(o_num));
      if (o_vram >= 0) add("min_vram", std::to_string(o_vram));
      if (o_price >= 0) add("max_price", std::to_string(o_price));
      json j = api.Call("GET", "/api/v1/instances/offers" + q, nullptr, true);
      std::string human = "PROVIDER  OFFER                          GPU               N  VRAM   $/H    RELIAB  OURS   LOCATION";
      int shown = 0;
      for (const auto& o : j["offers"]) {
        if (shown++ >= o_limit) break;
        char buf[320];
        std::string ours = o["history"].is_object() && o["history"].value("attempts", 0) > 0
                               ? std::to_string(static_cast<int>(o["history"].value("success_rate", 0.0) * 100)) + "%"
                               : "-";
        if (o.value("blacklisted", false)) ours = "BLKLST";
        std::snprintf(buf, sizeof buf, "\n%-9s %-30s %-17s %d %5.0f  %6.3f  %5.2f   %-6s %s", o.value("provider", "").c_str(),
                      o.value("id", "").substr(0, 30).c_str(), o.value("gpu_name", "").substr(0, 17).c_str(),
                      o.value("num_gpus", 0), o.value("gpu_ram_gb", 0.0), o.value("price_per_hour", 0.0),
                      o.value("reliability", 0.0), ours.c_str(), o.value("location", "").c_str());
        human += buf;
      }
      if (j["offers"].empty()) human += "\n(no offer matches; relax the filters)";
      Print(g, j, human);
      return kOk;
    }
    if (*creds) {
      if (*c_list) {
        json j = api.Call("GET", "/api/v1/settings/providers", nullptr, true);
        std::string human;
        for (const auto& p : j["providers"]) {
          std::string fields;
          for (const auto& f : p["fields"]) {
            fields += (fields.empty() ? "" : ", ") + f.value("name", "") + (f.value("required", false) ? "" : " (optional)");
          }
          human += p.value("provider", "") + ": " +
                   (p.value("configured", false) ? "saved " + p.value("hint", "") : std::string("not saved")) +
                   (p.value("server_default", false) ? " (the server also has a shared key)" : "") + "\n  fields: " +
                   fields + "\n";
        }
        if (!human.empty()) human.pop_back();
        Print(g, j, human);
        return kOk;
      }
      if (*c_set) {
        json body = json::object();
        bool stdin_used = false;
        for (const auto& f : c_fields) {
          auto eq = f.find('=');
          if (eq == std::string::npos || eq == 0) {
            throw Failure{kUsage, "expected FIELD=VALUE, FIELD=@FILE or FIELD=-, got '" + f.substr(0, 40) + "'", "usage"};
          }
          std::string k = f.substr(0, eq), v = f.substr(eq + 1);
          if (v == "-") {
            if (stdin_used) throw Failure{kUsage, "only one field can be read from stdin", "usage"};
            stdin_used = true;
            std::stringstream ss;
            ss << std::cin.rdbuf();
            v = ss.str();
            while (!v.empty() && (v.back() == '\n' || v.back() == '\r')) v.pop_back();
          } else if (!v.empty() && v[0] == '@') {
            std::ifstream in(v.substr(1));
            if (!in) throw Failure{kUsage, "cannot read " + v.substr(1), "usage"};
            std::stringstream ss;
            ss << in.rdbuf();
            v = ss.str();
          }
          body[k] = v;
        }
        json j = api.Call("PUT", "/api/v1/settings/providers/" + c_provider, body, true);
        Print(g, j, "saved your " + c_provider + " credentials (" + j.value("hint", "") + "); they are never shown again");
        return kOk;
      }
      if (*c_del) {
        json j = api.Call("DELETE", "/api/v1/settings/providers/" + c_provider, nullptr, true);
        Print(g, j, "forgot your " + c_provider + " credentials");
        return kOk;
      }
    }
    if (*me) {
      json j = api.Call("GET", "/api/v1/auth/me", nullptr, true);
      Print(g, j, UserLine(j["user"]) + " at " + api.base());
      return kOk;
    }
  } catch (const Failure& f) {
    if (g.json_out) {
      std::printf("%s\n", json({{"error", {{"code", f.error_code}, {"message", f.message}}}}).dump().c_str());
    } else {
      std::fprintf(stderr, "error: %s\n", f.message.c_str());
    }
    return f.code;
  }
  return kUsage;
}

}  // namespace dumont::cli
