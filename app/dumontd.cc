// dumontd: the control plane. Composition root only: configuration, logging, App, HTTP server,
// signals.
#include <pthread.h>
#include <signal.h>

#include <cstdio>
#include <iostream>
#include <thread>

#include <CLI/CLI.hpp>
#include <dumont/version.h>

#include "api/app.h"
#include "http/server.h"

using namespace dumont;

int main(int argc, char** argv) {
  CLI::App cli{"dumontd: the Dumont Cloud control plane (REST API, console, controllers)"};
  cli.set_version_flag("--version", std::string(DUMONT_VERSION) + " (" + DUMONT_GIT_COMMIT + ")");
  std::string data_dir, listen, db, config_path, log_format, log_level;
  std::vector<std::string> sets;
  cli.add_option("--data-dir", data_dir, "state directory (default ./dumont-data)");
  cli.add_option("--listen", listen, "HOST:PORT to serve on (default 127.0.0.1:8765; port 0 = any free port)");
  cli.add_option("--db", db, "database URL: sqlite:///PATH or postgresql://USER:PASS@HOST:PORT/DB");
  cli.add_option("--config", config_path, "TOML configuration file");
  cli.add_option("--log-format", log_format, "text | json");
  cli.add_option("--log-level", log_level, "debug | info | warn | error");
  cli.add_option("--set", sets, "KEY=VALUE for any configuration key below (repeatable)");
  cli.footer("\n" + ConfigHelp());
  CLI11_PARSE(cli, argc, argv);

  ConfigSources sources;
  sources.env = ProcessEnvironment();
  if (!config_path.empty()) sources.toml_path = config_path;
  for (const auto& kv : sets) {
    auto eq = kv.find('=');
    if (eq == std::string::npos) {
      std::fprintf(stderr, "dumontd: --set needs KEY=VALUE, got '%s'\n", kv.c_str());
      return 2;
    }
    sources.flags[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  if (!data_dir.empty()) sources.flags["data_dir"] = data_dir;
  if (!listen.empty()) sources.flags["listen"] = listen;
  if (!db.empty()) sources.flags["db"] = db;
  if (!log_format.empty()) sources.flags["log.format"] = log_format;
  if (!log_level.empty()) sources.flags["log.level"] = log_level;
  auto cfg = LoadConfig(sources);
  if (!cfg) {
    std::fprintf(stderr, "dumontd: %s\n", cfg.error().message().c_str());
    return 2;
  }

  Logger logger(stderr);
  LogLevel level;
  LogFormat format;
  ParseLogLevel(cfg->log_level, &level);
  ParseLogFormat(cfg->log_format, &format);
  logger.SetLevel(level);
  logger.SetFormat(format);

  // Block termination signals in every thread; one thread waits for them.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
  signal(SIGPIPE, SIG_IGN);

  RealClock clock;
  auto app = api::App::Create(*cfg, clock, &logger);
  if (!app) {
    std::fprintf(stderr, "dumontd: cannot start: %s\n", app.error().message().c_str());
    return 1;
  }
  auto admin = (*app)->auth().EnsureInitialAdmin();
  if (!admin) {
    std::fprintf(stderr, "dumontd: cannot create the first admin: %s\n", admin.error().message().c_str());
    return 1;
  }

  http::ServerOptions opts;
  Status st = http::ParseListen(cfg->listen, &opts.host, &opts.port);
  if (!st.ok()) {
    std::fprintf(stderr, "dumontd: %s\n", st.message().c_str());
    return 2;
  }
  opts.body_limit = static_cast<size_t>(cfg->http_body_limit_bytes);
  opts.header_limit = static_cast<size_t>(cfg->http_header_limit_bytes);
  opts.read_timeout = std::chrono::seconds(cfg->http_read_timeout_s);
  opts.max_requests_per_connection = static_cast<int>(cfg->http_max_requests_per_connection);
  int hw = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  opts.threads = cfg->http_threads > 0 ? static_cast<int>(cfg->http_threads) : std::max(4, 2 * hw);
  http::Server server(opts, [&](http::Request& req) { return (*app)->Handle(req); }, &logger);
  st = server.Start();
  if (!st.ok()) {
    std::fprintf(stderr, "dumontd: %s\n", st.message().c_str());
    return 1;
  }

  std::string url = "http://" + (opts.host == "0.0.0.0" ? std::string("127.0.0.1") : opts.host) + ":" +
                    std::to_string(server.port());
  (*app)->Start(url);
  logger.Info("dumontd started", {{"version", DUMONT_VERSION}, {"url", url},
                                  {"database", (*app)->store().Backend()}, {"data_dir", cfg->data_dir}});
  std::printf("\nDumont Cloud is running at %s  (API reference: %s/docs)\n", url.c_str(), url.c_str());
  if (*admin) {
    std::printf(
        "\nFirst start: an admin account was created. This password is shown only this once:\n"
        "    email:    %s\n    password: %s\n"
        "Log in:  build/bin/dumont --base-url %s auth login --email %s\n"
        "Or create your own account:  build/bin/dumont --base-url %s auth register --email you@example.com\n\n",
        (*admin)->first.c_str(), (*admin)->second.c_str(), url.c_str(), (*admin)->first.c_str(), url.c_str());
  } else {
    std::printf("Log in with:  build/bin/dumont --base-url %s auth login --email you@example.com\n\n", url.c_str());
  }
  std::fflush(stdout);

  std::thread signal_thread([&] {
    int sig = 0;
    sigwait(&sigs, &sig);
    logger.Info("shutting down", {{"signal", sig == SIGTERM ? "SIGTERM" : "SIGINT"}});
    server.Stop();
  });
  server.Run();
  (*app)->Shutdown();
  // Wake the signal thread if Run() ended for another reason.
  pthread_kill(signal_thread.native_handle(), SIGTERM);
  signal_thread.join();
  logger.Info("dumontd stopped");
  return 0;
}
