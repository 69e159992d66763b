// Demo mode (config demo.enabled): POST /api/v1/demo/session gives a visitor of /demo-app/ a session of
// their own without signing up. Every call creates a new account with role "user" and an address under
// @demo.dumont.invalid, so visitors never see each other's machines, deploys, keys or savings. The
// account and its tokens last demo.session_ttl_s (default 2 h): after that every token of the account,
// an access token from /auth/refresh or an API key included, is refused by the authenticator below,
// its sessions are revoked and its machines destroyed (on the next demo request or the account's next
// request). So that the Metrics page has something to draw on a fresh server, the first session also
// stores 48 hourly samples of sample market data when the store holds no sample older than an hour.
// docs/demo.md describes it.
#include <chrono>
#include <cmath>
#include <deque>
#include <filesystem>
#include <map>
#include <mutex>
#include <numbers>
#include <set>

#include "api/app.h"
#include "common/random.h"
#include "fleet/market.h"

namespace dumont::api {

using http::Auth;
using http::Context;
using http::JsonResponse;
using http::Response;
using http::RouteSpec;
using nlohmann::json;

namespace {

constexpr const char* kDemoDomain = "@demo.dumont.invalid";

bool IsDemoEmail(const std::string& email) {
  const std::string d = kDemoDomain;
  return email.size() > d.size() && email.compare(email.size() - d.size(), d.size(), d) == 0;
}

// Sample market: one row per provider and GPU model every hour over the last 48 hours. Prices follow
// a daily swing and a small deterministic wobble around typical published rates (dollars per GPU-hour).
struct SampleGpu {
  const char* name;
  double vram_gb;
  double vast, runpod;  // on-demand base price
  int offers;           // typical number of offers on vast (runpod: about a third)
};
constexpr SampleGpu kSampleGpus[] = {
    {"RTX 4090", 24, 0.38, 0.69, 14}, {"RTX 3090", 24, 0.21, 0.43, 18}, {"RTX A6000", 48, 0.47, 0.76, 8},
    {"L40S", 48, 0.72, 0.86, 6},      {"A100 SXM4 80GB", 80, 1.19, 1.64, 7}, {"H100 SXM", 80, 2.25, 2.99, 5},
};

double Wobble(int64_t t, int salt) {  // deterministic, -1..1
  uint64_t x = static_cast<uint64_t>(t / 3600) * 2654435761u + static_cast<uint64_t>(salt) * 40503u;
  x ^= x >> 13;
  x *= 0x5bd1e995;
  x ^= x >> 15;
  return static_cast<double>(x % 2001) / 1000.0 - 1.0;
}

double Round4(double v) { return std::round(v * 10000) / 10000; }

std::vector<store::MarketSnapshot> SampleMarket(int64_t now) {
  std::vector<store::MarketSnapshot> rows;
  int64_t last = now - 3600 - now % 3600;  // whole hours, the newest at least an hour old
  for (int h = 47; h >= 0; --h) {
    int64_t t = last - h * 3600;
    double daily = std::sin(static_cast<double>(t % 86400) / 86400.0 * 2 * std::numbers::pi);  // busier by day
    int salt = 0;
    for (const auto& g : kSampleGpus) {
      for (const char* provider : {"vast", "runpod"}) {
        ++salt;
        bool vast = std::string(provider) == "vast";
        double base = vast ? g.vast : g.runpod;
        double w = Wobble(t, salt);
        store::MarketSnapshot s;
        s.sampled_at = t;
        s.provider = provider;
        s.gpu = fleet::NormalizeGpuName(g.name);
        s.vram_gb = g.vram_gb;
        s.min_price = Round4(base * (0.92 + 0.04 * daily + 0.03 * w));
        s.avg_price = Round4(base * (1.05 + 0.05 * daily + 0.02 * w));
        s.max_price = Round4(base * (1.30 + 0.06 * daily + 0.04 * w));
        s.offers = std::max<int64_t>(1, std::llround((vast ? g.offers : g.offers / 3.0) * (1 - 0.25 * daily + 0.15 * w)));
        s.available_gpus = s.offers * (vast ? 2 : 1);
        s.avg_reliability = Round4(vast ? 0.955 + 0.02 * w : 0.985 + 0.01 * w);
        s.spot_min_price = Round4(s.min_price * (vast ? 0.45 + 0.05 * w : 0.55 + 0.03 * w));
        rows.push_back(s);
      }
    }
  }
  return rows;
}

// Refuses every credential of a demo account whose time is up (also access tokens minted later by
// /auth/refresh, and API keys the account created), and cleans the account up the first time.
class DemoAuthenticator final : public http::Authenticator {
 public:
  DemoAuthenticator(http::Authenticator* inner, store::Store& store, const Clock& clock, int64_t ttl_s,
                    std::function<void(const std::string&)> expire)
      : inner_(inner), store_(store), clock_(clock), ttl_s_(ttl_s), expire_(std::move(expire)) {}

  Result<http::Principal> Authenticate(const http::Request& req) override {
    auto p = inner_->Authenticate(req);
    if (!p || !IsDemoEmail(p->email)) return p;
    auto u = store_.GetUser(p->user_id);
    if (!u) return Err(Status::Unauthenticated("unknown user"));
    if (u->created_at + ttl_s_ > clock_.NowUnix()) return p;
    expire_(u->id);
    return Err(Status::Unauthenticated("this demo session has ended (demo sessions last " +
                                       std::to_string(ttl_s_ / 60) + " minutes); open /demo-app/ for a new one"));
  }

 private:
  http::Authenticator* inner_;
  store::Store& store_;
  const Clock& clock_;
  int64_t ttl_s_;
  std::function<void(const std::string&)> expire_;
};

struct DemoState {
  std::unique_ptr<auth::AuthService> auth;  // issues sessions with the demo lifetime
  std::unique_ptr<DemoAuthenticator> authenticator;
  std::mutex mu;
  bool market_checked = false;
  std::map<std::string, std::deque<int64_t>> recent;  // client address -> session times in the last hour
  int64_t last_sweep = 0;
  std::set<std::string> ended;  // demo accounts already ended by this process
};

}  // namespace

void App::RegisterDemoRoutes() {
  auto st = std::make_shared<DemoState>();
  const int64_t ttl = cfg_.demo_session_ttl_s;

  // Ends a demo account once: revokes its sessions and destroys its machines (billing and processes stop).
  DemoState* state = st.get();  // st outlives every caller: the route handler and the authenticator hold it
  auto expire = [this, state](const std::string& user_id) {
    {
      std::lock_guard l(state->mu);
      if (!state->ended.insert(user_id).second) return;
    }
    int64_t now = clock_.NowUnix();
    (void)store_->RevokeUserSessions(user_id, "demo session ended", now);
    auto list = fleet_->List(user_id);
    if (!list) return;
    for (const auto& i : *list) {
      if (i.state == "destroyed" || i.desired == "destroyed") continue;
      auto d = fleet_->Destroy(user_id, i.id);
      if (!d && logger_) logger_->Warn("demo: cannot destroy an expired demo machine", {{"instance", i.id}, {"error", d.error().message()}});
    }
  };
  st->authenticator = std::make_unique<DemoAuthenticator>(authenticator_.get(), *store_, clock_, ttl, expire);
  router_->SetAuthenticator(st->authenticator.get());

  if (cfg_.demo_enabled) {
    auto key = auth::LoadOrCreateSigningKey((std::filesystem::path(cfg_.data_dir) / "jwt-signing.key").string());
    if (key) {
      auth::AuthOptions opts = auth_->options();
      opts.access_ttl_s = ttl;
      opts.refresh_ttl_s = ttl;
      opts.hash_cost = auth::HashCost::kFast;  // the password is random and never leaves this function
      st->auth = std::make_unique<auth::AuthService>(*store_, clock_, std::move(*key), opts);
    } else if (logger_) {
      logger_->Warn("demo mode is off: cannot read the signing key", {{"error", key.error().message()}});
    }
  }

  router_->Add(
      RouteSpec{.method = "POST", .path = "/api/v1/demo/session",
                .summary = "Demo mode: a new demo account (role user, its own machines and data) and its tokens, "
                           "without signing up; the account and its tokens end after demo.session_ttl_s. 404 when "
                           "demo.enabled is false.",
                .tag = "auth", .auth = Auth::kNone,
                .response_description = "{access_token, refresh_token, token_type, expires_in, expires_at, demo: true, "
                                        "user}"},
      [this, st, ttl, expire](Context& c) -> Result<Response> {
        if (!st->auth) {
          return Err(Status::NotFound("demo mode is not enabled on this server (set demo.enabled = true); "
                                      "sign up at /login instead"));
        }
        int64_t now = clock_.NowUnix();
        std::vector<std::string> to_expire;
        bool seed = false;
        {
          std::lock_guard l(st->mu);
          auto& times = st->recent[c.request.client_address];
          while (!times.empty() && times.front() <= now - 3600) times.pop_front();
          if (static_cast<int64_t>(times.size()) >= cfg_.demo_sessions_per_address_per_hour) {
            int retry = static_cast<int>(std::max<int64_t>(1, times.front() + 3600 - now));
            return Err(Status::ResourceExhausted("too many demo sessions from your address; try again later", retry));
          }
          times.push_back(now);
          if (!st->market_checked) {
            st->market_checked = true;
            seed = true;
          }
          if (now - st->last_sweep >= 60) {
            st->last_sweep = now;
            auto users = store_->ListUsers();
            if (users) {
              for (const auto& u : *users) {
                if (IsDemoEmail(u.email) && u.created_at + ttl <= now && !st->ended.count(u.id)) to_expire.push_back(u.id);
              }
            }
          }
        }
        for (const auto& id : to_expire) expire(id);
        if (seed) {
          auto old = store_->ListMarketSnapshots(store::MarketQuery{"", "", 0, now - 3600, 1});
          if (old && old->empty()) {
            Status s = store_->AddMarketSnapshots(SampleMarket(now));
            if (!s.ok() && logger_) logger_->Warn("demo: cannot store the sample market", {{"error", s.message()}});
          }
        }

        std::string email = "demo-" + NewId("") + kDemoDomain;
        std::string password = RandomPassword(32);
        auto u = st->auth->Register(email, password, "user");
        if (!u) return Err(u.error());
        auto t = st->auth->Login(email, password, c.request.client_address);
        if (!t) return Err(t.error());
        if (logger_) logger_->Info("demo session started", {{"user", u->id}});
        json j = {{"access_token", t->access_token},
                  {"refresh_token", t->refresh_token},
                  {"token_type", "bearer"},
                  {"expires_in", t->expires_in},
                  {"expires_at", u->created_at + ttl},
                  {"demo", true},
                  {"user", {{"id", u->id}, {"email", u->email}, {"role", u->role}, {"created_at", u->created_at}}}};
        return JsonResponse(200, j);
      });
}

}  // namespace dumont::api
