// App: the control plane's composition of services and HTTP routes. dumontd's main() and the
// integration tests build the same App, so tests exercise exactly what users run.
#pragma once

#include <memory>
#include <string>

#include "auth/auth_service.h"
#include "common/clock.h"
#include "common/config.h"
#include "common/log.h"
#include "fleet/fleet.h"
#include "fleet/market.h"
#include "http/metrics.h"
#include "http/router.h"
#include "store/store.h"

namespace dumont::api {

class App {
 public:
  // Opens the store (migrations), loads or creates the signing key, registers routes.
  static Result<std::unique_ptr<App>> Create(const Config& cfg, const Clock& clock, Logger* logger);
  ~App();

  http::Router& router() { return *router_; }
  http::Response Handle(http::Request& req) { return router_->Handle(req); }
  store::Store& store() { return *store_; }
  auth::AuthService& auth() { return *auth_; }
  fleet::Fleet& fleet() { return *fleet_; }
  // Once the listening port is known: tells agents where to reach us and starts the controllers.
  void Start(const std::string& public_url);
  void Shutdown();
  const Config& config() const { return cfg_; }

 private:
  App(const Config& cfg, const Clock& clock, Logger* logger);
  void RegisterRoutes();
  void RegisterSystemRoutes();
  void RegisterAuthRoutes();
  void RegisterFleetRoutes();
  void RegisterDeployRoutes();
  void RegisterSettingsRoutes();
  void RegisterMarketRoutes();
  void RegisterDemoRoutes();  // demo_routes.cc
  void SetupWebConsole();

  Config cfg_;
  const Clock& clock_;
  Logger* logger_;
  double start_time_;
  std::unique_ptr<store::Store> store_;
  std::unique_ptr<auth::AuthService> auth_;
  std::unique_ptr<fleet::Fleet> fleet_;
  std::unique_ptr<fleet::MarketMonitor> market_;  // null when market.enabled is false
  std::unique_ptr<http::Metrics> metrics_;
  std::unique_ptr<http::Authenticator> authenticator_;
  std::unique_ptr<http::Router> router_;
};

std::string DocsPageHtml();
// The dumont-agent binary beside the running executable (build/bin/ or the install bin/).
std::string AgentBinaryPath();
// Serves a built single-page app from `dir`: files as they are, unknown extension-less paths as
// index.html (client-side routes). Never leaves `dir`.
std::optional<http::Response> ServeStatic(const std::string& dir, const http::Request& req);

}  // namespace dumont::api
