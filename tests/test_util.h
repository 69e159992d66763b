// Helpers shared by the tests: temporary directories, the private PostgreSQL from pg_harness.sh, and
// an in-process dumontd (App + Server on a free loopback port).
#pragma once

#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>

#include <gtest/gtest.h>
#include <libpq-fe.h>

#include "api/app.h"
#include "common/random.h"
#include "http/client.h"
#include "http/server.h"

namespace dumont::testing {

class TempDir {
 public:
  TempDir() {
    path_ = std::filesystem::temp_directory_path() / ("dumont-test-" + NewId(""));
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::string path() const { return path_.string(); }
  std::string operator/(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

// The admin URL of the harness's PostgreSQL (ctest fixture "postgres"); empty if not configured.
inline std::string PgAdminUrl() {
  const char* state = std::getenv("DUMONT_TEST_PG_STATE");
  if (!state) return "";
  std::ifstream in(std::string(state) + "/url");
  std::string url;
  std::getline(in, url);
  return url;
}

// A fresh, empty database on the harness server; returns its URL.
inline std::string NewPgDatabase() {
  std::string admin = PgAdminUrl();
  if (admin.empty()) return "";
  std::string name = "t_" + NewId("");
  PGconn* c = PQconnectdb(admin.c_str());
  EXPECT_EQ(PQstatus(c), CONNECTION_OK) << PQerrorMessage(c);
  PGresult* r = PQexec(c, ("CREATE DATABASE " + name).c_str());
  EXPECT_EQ(PQresultStatus(r), PGRES_COMMAND_OK) << PQerrorMessage(c);
  PQclear(r);
  PQfinish(c);
  auto slash = admin.rfind('/');
  return admin.substr(0, slash + 1) + name;
}

// dumontd in this process: the same App as the binary, served on 127.0.0.1:<free port>.
class TestServer {
 public:
  static http::ServerOptions DefaultOptions() {
    http::ServerOptions opts;
    opts.port = 0;
    opts.threads = 4;
    opts.read_timeout = std::chrono::seconds(5);
    opts.shutdown_grace = std::chrono::seconds(2);
    return opts;
  }
  explicit TestServer(Config cfg, const Clock& clock, http::ServerOptions opts = DefaultOptions()) {
    logger_ = std::make_unique<Logger>(stderr, LogLevel::kWarn);
    auto app = api::App::Create(cfg, clock, logger_.get());
    if (!app) throw std::runtime_error(app.error().ToString());
    app_ = std::move(*app);
    server_ = std::make_unique<http::Server>(opts, [this](http::Request& r) { return app_->Handle(r); },
                                             logger_.get());
    Status st = server_->Start();
    if (!st.ok()) throw std::runtime_error(st.ToString());
    thread_ = std::thread([this] { server_->Run(); });
    app_->Start(url());
  }
  ~TestServer() {
    server_->Stop();
    thread_.join();
    app_->Shutdown();
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(server_->port()); }
  uint16_t port() const { return server_->port(); }
  api::App& app() { return *app_; }

  http::ClientResponse Call(const std::string& method, const std::string& path, const std::string& body = "",
                            const std::string& token = "") {
    http::ClientRequest req;
    req.method = method;
    req.url = url() + path;
    req.body = body;
    if (!body.empty()) req.headers.emplace_back("Content-Type", "application/json");
    if (!token.empty()) req.headers.emplace_back("Authorization", "Bearer " + token);
    auto r = http::Fetch(req);
    if (!r) throw std::runtime_error(r.error().ToString());
    return *r;
  }

 private:
  std::unique_ptr<Logger> logger_;
  std::unique_ptr<api::App> app_;
  std::unique_ptr<http::Server> server_;
  std::thread thread_;
};

inline Config TestConfig(const std::string& data_dir, const std::string& db = "") {
  Config cfg;
  cfg.data_dir = data_dir;
  cfg.db = db;
  cfg.auth_password_hash = "fast";
  cfg.fleet_sim_provider = true;
  return cfg;
}

}  // namespace dumont::testing
