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
  for (const char* a : {"show", "destroy", "pause", "resume", "hibernate", "wake", "snapshot", "events", "snapshots"}) {
    std::string help = std::string(a) == "show" ? "details of one instance"
                       : std::string(a) == "events" ? "what happened, newest last"
                       : std::string(a) == "snapshots" ? "the instance's snapshots"
                       : std::string(a) == "destroy" ? "destroy the instance and its machine"
                                                     : std::string(a) + " the instance";
    auto* c = inst->add_subcommand(a, help);
    c->add_option("id", inst_id, "instance id")->required();
    actions[a] = c;
  }
  actions["events"]->add_option("--limit", ev_limit, "at most this many (default 50)");
  auto* i_load = inst->add_subcommand("gpu-load", "set the simulated GPU utilisation of a local machine (0..100)");
  i_load->add_option("id", inst_id, "instance id")->required();
  i_load->add_option("util", load, "utilisation percent")->required()->check(CLI::Range(0.0, 100.0));
  for (auto* c : {i_create, actions["hibernate"], actions["wake"], actions["destroy"], actions["pause"], actions["resume"]}) {
    c->add_flag("--wait", wait, "wait until the instance reaches its target state");
    c->add_option("--timeout", wait_s, "seconds to wait with --wait (default 120)");
  }

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
      for (const char* a : {"pause", "resume", "hibernate", "wake", "snapshot"}) {
        if (!*actions[a]) continue;
        json j = api.Call("POST", "/api/v1/instances/" + inst_id + "/" + a, nullptr, true)["instance"];
        static const std::map<std::string, std::set<std::string>> kTargets = {
            {"pause", {"paused"}}, {"resume", {"running"}}, {"hibernate", {"hibernated"}}, {"wake", {"running"}}};
        if (wait && kTargets.count(a)) j = wait_for(inst_id, kTargets.at(a));
        Print(g, {{"instance", j}}, std::string(a) + ": " + inst_id + " is " + j.value("state", ""));
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
