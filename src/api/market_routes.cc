// Market data over HTTP: the price history the MarketMonitor samples (src/fleet/market.h), the current
// market per GPU model, spot versus on demand, availability, reliability, LLM fit and spot savings.
// Market data is the same for every user, but every route needs a logged-in user. docs/market.md shows
// each response.
//
// "Now" is the current market: each provider's newest sample. A provider whose latest samples failed
// keeps its older one (rows carry sampled_at); a GPU model missing from a provider's newest sample is no
// longer offered there.
#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>
#include <map>

#include "api/app.h"
#include "fleet/history.h"
#include "fleet/market.h"

namespace dumont::api {

using http::Context;
using http::Field;
using http::JsonResponse;
using http::JsonType;
using http::Response;
using http::RouteSpec;
using nlohmann::json;
using store::MarketSnapshot;

namespace {

constexpr double kHoursPerMonth = 730;
constexpr int64_t kMaxHours = 24 * 365;
constexpr int kWindowRows = 200000;  // rows read for a trend window

double Round(double v, int decimals) {
  double scale = std::pow(10.0, decimals);
  return std::round(v * scale) / scale;
}
json OrNull(const std::optional<double>& v) { return v ? json(*v) : json(nullptr); }

// Unknown query parameters are refused: a misspelt filter would otherwise be silently ignored.
Status CheckQuery(const Context& c) {
  for (const auto& [name, value] : c.request.query) {
    bool known = std::any_of(c.route.query.begin(), c.route.query.end(), [&](const Field& f) { return f.name == name; });
    if (known) continue;
    std::string names;
    for (const auto& f : c.route.query) names += (names.empty() ? "" : ", ") + f.name;
    return Status::InvalidField(name, "unknown query parameter '" + name + "'; " +
                                          (names.empty() ? "this route takes none" : "this route takes " + names));
  }
  return Status::Ok();
}

std::string StrParam(const Context& c, const std::string& name) {
  auto it = c.request.query.find(name);
  return it == c.request.query.end() ? "" : it->second;
}

Result<int64_t> IntParam(const Context& c, const std::string& name, int64_t def, int64_t lo, int64_t hi) {
  std::string v = StrParam(c, name);
  if (v.empty()) return def;
  int64_t n = 0;
  auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
  if (ec != std::errc() || end != v.data() + v.size() || n < lo || n > hi) {
    return Err(Status::InvalidField(name, name + " must be an integer from " + std::to_string(lo) + " to " +
                                              std::to_string(hi) + ", got '" + v + "'"));
  }
  return n;
}

// The gpu filter, as its model key (so "rtx_4090" finds "RTX 4090"); empty = every model.
std::string GpuParam(const Context& c) {
  std::string v = StrParam(c, "gpu");
  return v.empty() ? "" : fleet::NormalizeGpuName(v);
}

Result<std::vector<MarketSnapshot>> CurrentMarket(store::Store& s, int64_t at) {
  auto latest = s.LatestMarketSnapshots(at);
  if (!latest) return latest;
  std::map<std::string, int64_t> newest;
  for (const auto& r : *latest) newest[r.provider] = std::max(newest[r.provider], r.sampled_at);
  std::vector<MarketSnapshot> out;
  for (const auto& r : *latest) {
    if (r.sampled_at == newest[r.provider]) out.push_back(r);
  }
  return out;
}

// One GPU model across providers.
struct GpuMarket {
  std::string gpu;
  double vram_gb = 0, min_price = std::numeric_limits<double>::infinity(), max_price = 0;
  double avg_price = 0, avg_reliability = 0;  // over every offer of every provider
  int64_t offers = 0, available_gpus = 0, sampled_at = 0;
  std::string cheapest_provider;
  std::optional<double> spot_min_price;
  std::string spot_provider;
  std::vector<MarketSnapshot> rows;  // per provider
};

std::map<std::string, GpuMarket> ByGpu(const std::vector<MarketSnapshot>& rows) {
  std::map<std::string, GpuMarket> out;
  for (const auto& r : rows) {
    GpuMarket& g = out[r.gpu];
    g.gpu = r.gpu;
    g.vram_gb = std::max(g.vram_gb, r.vram_gb);
    if (r.min_price < g.min_price) {
      g.min_price = r.min_price;
      g.cheapest_provider = r.provider;
    }
    g.max_price = std::max(g.max_price, r.max_price);
    g.avg_price += r.avg_price * r.offers;
    g.avg_reliability += r.avg_reliability * r.offers;
    g.offers += r.offers;
    g.available_gpus += r.available_gpus;
    g.sampled_at = std::max(g.sampled_at, r.sampled_at);
    if (r.spot_min_price && (!g.spot_min_price || *r.spot_min_price < *g.spot_min_price)) {
      g.spot_min_price = r.spot_min_price;
      g.spot_provider = r.provider;
    }
    g.rows.push_back(r);
  }
  for (auto& [_, g] : out) {
    if (g.offers > 0) {
      g.avg_price /= g.offers;
      g.avg_reliability /= g.offers;
    }
  }
  return out;
}

json PriceJson(const std::string& gpu, double vram_gb, double min, double avg, double max, int64_t offers,
               int64_t available, double reliability) {
  return {{"gpu", gpu},       {"vram_gb", vram_gb}, {"min_price", min},
          {"avg_price", avg}, {"max_price", max},   {"offers", offers},
          {"available_gpus", available}, {"avg_reliability", reliability}};
}

json Change(double min_now, double avg_now, double min_then, double avg_then, int64_t then_at) {
  return {{"since", then_at},
          {"min_price", Round(min_now - min_then, 4)},
          {"avg_price", Round(avg_now - avg_then, 4)},
          {"avg_price_pct", avg_then > 0 ? json(Round((avg_now / avg_then - 1) * 100, 1)) : json(nullptr)}};
}

}  // namespace

void App::RegisterMarketRoutes() {
  const Field gpu_q{"gpu", JsonType::kString, false, "one GPU model, any spelling (normalised: rtx_4090 = RTX 4090)"};
  const Field provider_q{"provider", JsonType::kString, false, "one provider"};
  const Field hours_q{"hours", JsonType::kInteger, false, "window in hours, 1..8760 (default 24)"};
  const std::string snapshot_fields =
      "min_price/avg_price/max_price ($ per GPU-hour on demand), offers, available_gpus (GPUs over the offers), "
      "avg_reliability (0..1, provider-reported), spot_min_price ($ per GPU-hour, null when no spot offer)";

  router_->Add(
      RouteSpec{.method = "GET", .path = "/api/v1/metrics/market",
                .summary = "Market price history: one series per provider and GPU model",
                .tag = "market",
                .query = {gpu_q, provider_q, hours_q,
                          {"limit", JsonType::kInteger, false, "at most this many samples, the newest (1..50000, default 5000)"}},
                .response_description =
                    "{gpu, provider (the filters, null when absent), hours, since, until (Unix s), truncated (the "
                    "limit cut older samples), series: [{provider, gpu, points: [{t, " + snapshot_fields + "}]}]}"},
      [this](Context& c) -> Result<Response> {
        DUMONT_RETURN_IF_ERROR(CheckQuery(c));
        auto hours = IntParam(c, "hours", 24, 1, kMaxHours);
        if (!hours) return Err(hours.error());
        auto limit = IntParam(c, "limit", 5000, 1, 50000);
        if (!limit) return Err(limit.error());
        int64_t now = clock_.NowUnix();
        store::MarketQuery q{GpuParam(c), StrParam(c, "provider"), now - *hours * 3600, now, static_cast<int>(*limit)};
        auto rows = store_->ListMarketSnapshots(q);
        if (!rows) return Err(rows.error());
        std::map<std::pair<std::string, std::string>, json> series;
        for (const auto& r : *rows) {
          json& s = series[{r.gpu, r.provider}];
          if (s.is_null()) s = {{"provider", r.provider}, {"gpu", r.gpu}, {"points", json::array()}};
          s["points"].push_back({{"t", r.sampled_at}, {"min_price", r.min_price}, {"avg_price", r.avg_price},
                                 {"max_price", r.max_price}, {"offers", r.offers},
                                 {"available_gpus", r.available_gpus}, {"avg_reliability", r.avg_reliability},
                                 {"spot_min_price", OrNull(r.spot_min_price)}});
        }
        json arr = json::array();
        for (auto& [_, s] : series) arr.push_back(std::move(s));
        return JsonResponse(200, {{"gpu", q.gpu.empty() ? json(nullptr) : json(q.gpu)},
                                  {"provider", q.provider.empty() ? json(nullptr) : json(q.provider)},
                                  {"hours", *hours}, {"since", q.since}, {"until", q.until},
                                  {"truncated", rows->size() == static_cast<size_t>(*limit)}, {"series", arr}});
      });

  router_->Add(
      RouteSpec{.method = "GET", .path = "/api/v1/metrics/market/summary",
                .summary = "The market now per GPU model and provider, with the change over 24 hours",
                .tag = "market",
                .response_description =
                    "{gpus: [{gpu, vram_gb, min_price, avg_price, max_price, offers, available_gpus, avg_reliability "
                    "(over every provider), change_24h, providers: [{provider, sampled_at, vram_gb, " + snapshot_fields +
                    ", change_24h}]}]}; change_24h = {since (the sample compared with, 24 h or more ago), min_price, "
                    "avg_price (differences in $ per GPU-hour), avg_price_pct}, null without a sample that old"},
      [this](Context& c) -> Result<Response> {
        DUMONT_RETURN_IF_ERROR(CheckQuery(c));
        int64_t now = clock_.NowUnix();
        auto current = CurrentMarket(*store_, now);
        if (!current) return Err(current.error());
        auto before = CurrentMarket(*store_, now - 86400);
        if (!before) return Err(before.error());
        auto then_by_gpu = ByGpu(*before);
        std::map<std::pair<std::string, std::string>, MarketSnapshot> then_rows;
        for (const auto& r : *before) then_rows[{r.provider, r.gpu}] = r;
        json gpus = json::array();
        for (const auto& [gpu, g] : ByGpu(*current)) {
          json providers = json::array();
          for (const auto& r : g.rows) {
            json p = PriceJson(r.gpu, r.vram_gb, r.min_price, r.avg_price, r.max_price, r.offers, r.available_gpus,
                               r.avg_reliability);
            p.erase("gpu");
            p["provider"] = r.provider;
            p["sampled_at"] = r.sampled_at;
            p["spot_min_price"] = OrNull(r.spot_min_price);
            auto t = then_rows.find({r.provider, r.gpu});
            p["change_24h"] = t == then_rows.end() ? json(nullptr)
                                                   : Change(r.min_price, r.avg_price, t->second.min_price,
                                                            t->second.avg_price, t->second.sampled_at);
            providers.push_back(p);
          }
          json j = PriceJson(gpu, g.vram_gb, g.min_price, g.avg_price, g.max_price, g.offers, g.available_gpus,
                             g.avg_reliability);
          auto t = then_by_gpu.find(gpu);
          j["change_24h"] = t == then_by_gpu.end() ? json(nullptr)
                                                   : Change(g.min_price, g.avg_price, t->second.min_price,
                                                            t->second.avg_price, t->second.sampled_at);
          j["providers"] = providers;
          gpus.push_back(j);
        }
        return JsonResponse(200, {{"gpus", gpus}});
      });

  router_->Add(
      RouteSpec{.method = "GET", .path = "/api/v1/metrics/gpus",
                .summary = "GPU models on the market now, with VRAM and the cheapest provider",
                .tag = "market",
                .response_description =
                    "{gpus: [{gpu (model key), vram_gb (per GPU), providers (names), offers, available_gpus, "
                    "cheapest: {provider, price ($ per GPU-hour on demand)}, sampled_at}]}, ordered by gpu"},
      [this](Context& c) -> Result<Response> {
        DUMONT_RETURN_IF_ERROR(CheckQuery(c));
        auto current = CurrentMarket(*store_, clock_.NowUnix());
        if (!current) return Err(current.error());
        json gpus = json::array();
        for (const auto& [gpu, g] : ByGpu(*current)) {
          json providers = json::array();
          for (const auto& r : g.rows) providers.push_back(r.provider);
          gpus.push_back({{"gpu", gpu}, {"vram_gb", g.vram_gb}, {"providers", providers}, {"offers", g.offers},
                          {"available_gpus", g.available_gpus},
                          {"cheapest", {{"provider", g.cheapest_provider}, {"price", g.min_price}}},
                          {"sampled_at", g.sampled_at}});
        }
        return JsonResponse(200, {{"gpus", gpus}});
      });

  router_->Add(
      RouteSpec{.method = "GET", .path = "/api/v1/metrics/spot/monitor",
                .summary = "Spot (interruptible) versus on-demand price per GPU model now",
                .tag = "market",
                .response_description =
                    "{gpus: [{gpu, vram_gb, on_demand: {price, provider}, spot: {price, provider} or null (no spot "
                    "offer), spot_discount_pct (100 x (1 - spot / on demand), null without spot)}]}; prices are the "
                    "cheapest $ per GPU-hour over every provider"},
      [this](Context& c) -> Result<Response> {
        DUMONT_RETURN_IF_ERROR(CheckQuery(c));
        auto current = CurrentMarket(*store_, clock_.NowUnix());
        if (!current) return Err(current.error());
        json gpus = json::array();
        for (const auto& [gpu, g] : ByGpu(*current)) {
          json j = {{"gpu", gpu}, {"vram_gb", g.vram_gb},
                    {"on_demand", {{"price", g.min_price}, {"provider", g.cheapest_provider}}},
                    {"spot", nullptr}, {"spot_discount_pct", nullptr}};
          if (g.spot_min_price) {
            j["spot"] = {{"price", *g.spot_min_price}, {"provider", g.spot_provider}};
            j["spot_discount_pct"] = Round((1 - *g.spot_min_price / g.min_price) * 100, 1);
          }
          gpus.push_back(j);
        }
        return JsonResponse(200, {{"gpus", gpus}});
      });

  router_->Add(
      RouteSpec{.method = "GET", .path = "/api/v1/metrics/spot/availability",
                .summary = "Offers and available GPUs per GPU model now, and their trend over a window",
                .tag = "market", .query = {gpu_q, hours_q},
                .response_description =
                    "{hours, since, gpus: [{gpu, offers, available_gpus (now, over every provider), change: {offers, "
                    "available_gpus} (now minus the window's first sample; null without one), trend (rising | falling "
                    "| flat: available GPUs moved more than 10 %; null without a sample), series: [{t, offers, "
                    "available_gpus}] (summed over the providers sampled at t)}], truncated}"},
      [this](Context& c) -> Result<Response> {
        DUMONT_RETURN_IF_ERROR(CheckQuery(c));
        auto hours = IntParam(c, "hours", 24, 1, kMaxHours);
        if (!hours) return Err(hours.error());
        std::string gpu_filter = GpuParam(c);
        int64_t now = clock_.NowUnix();
        int64_t since = now - *hours * 3600;
        auto rows = store_->ListMarketSnapshots({gpu_filter, "", since, now, kWindowRows});
        if (!rows) return Err(rows.error());
        auto current = CurrentMarket(*store_, now);
        if (!current) return Err(current.error());
        std::map<std::string, std::map<int64_t, std::pair<int64_t, int64_t>>> series;  // gpu -> t -> offers, gpus
        for (const auto& r : *rows) {
          auto& p = series[r.gpu][r.sampled_at];
          p.first += r.offers;
          p.second += r.available_gpus;
        }
        std::map<std::string, std::pair<int64_t, int64_t>> now_by_gpu;
        for (const auto& r : *current) {
          if (!gpu_filter.empty() && r.gpu != gpu_filter) continue;
          now_by_gpu[r.gpu].first += r.offers;
          now_by_gpu[r.gpu].second += r.available_gpus;
          series[r.gpu];  // a model now on offer is listed even when its samples are older than the window
        }
        json gpus = json::array();
        for (const auto& [gpu, points] : series) {
          auto [offers, available] = now_by_gpu[gpu];
          json j = {{"gpu", gpu}, {"offers", offers}, {"available_gpus", available},
                    {"change", nullptr}, {"trend", nullptr}, {"series", json::array()}};
          for (const auto& [t, v] : points) j["series"].push_back({{"t", t}, {"offers", v.first}, {"available_gpus", v.second}});
          if (!points.empty()) {
            auto [first_offers, first_available] = points.begin()->second;
            int64_t delta = available - first_available;
            j["change"] = {{"offers", offers - first_offers}, {"available_gpus", delta}};
            double rel = first_available > 0 ? static_cast<double>(delta) / first_available : (delta > 0 ? 1 : 0);
            j["trend"] = rel > 0.1 ? "rising" : rel < -0.1 ? "falling" : "flat";
          }
          gpus.push_back(j);
        }
        return JsonResponse(200, {{"hours", *hours}, {"since", since}, {"gpus", gpus},
                                  {"truncated", rows->size() == static_cast<size_t>(kWindowRows)}});
      });

  router_->Add(
      RouteSpec{.method = "GET", .path = "/api/v1/metrics/spot/reliability",
                .summary = "Per provider and GPU model: provider-reported reliability beside our own machine history",
                .tag = "market",
                .response_description =
                    "{rows: [{provider, gpu, provider_reliability (0..1 average over the offers now, null when not "
                    "on offer), offers, history: {hosts, attempts, ready, failed, success_rate (ready / finished, "
                    "null when none finished)}}], provider_errors: [{provider, error}]}. Our history covers hosts "
                    "whose offers are listed now (a host is tied to a GPU model through its offer)"},
      [this](Context& c) -> Result<Response> {
        DUMONT_RETURN_IF_ERROR(CheckQuery(c));
        auto current = CurrentMarket(*store_, clock_.NowUnix());
        if (!current) return Err(current.error());
        auto offers = fleet::SearchOffers(*store_, fleet_->Providers(), fleet::OfferQuery{});
        if (!offers) return Err(offers.error());
        struct Row {
          json provider_reliability = nullptr;
          int64_t offers = 0, hosts = 0, attempts = 0, ready = 0, failed = 0;
        };
        std::map<std::pair<std::string, std::string>, Row> rows;  // (gpu, provider)
        for (const auto& r : *current) {
          Row& row = rows[{r.gpu, r.provider}];
          row.provider_reliability = r.avg_reliability;
          row.offers = r.offers;
        }
        for (const auto& o : (*offers)["offers"]) {
          if (o["history"].is_null()) continue;
          Row& row = rows[{fleet::NormalizeGpuName(o["gpu_name"].get<std::string>()), o["provider"].get<std::string>()}];
          const json& h = o["history"];
          row.hosts += 1;
          row.attempts += h["attempts"].get<int64_t>();
          row.ready += h["ready"].get<int64_t>();
          row.failed += h["failed"].get<int64_t>();
        }
        json arr = json::array();
        for (const auto& [key, r] : rows) {
          int64_t finished = r.ready + r.failed;
          arr.push_back({{"provider", key.second}, {"gpu", key.first},
                         {"provider_reliability", r.provider_reliability}, {"offers", r.offers},
                         {"history", {{"hosts", r.hosts}, {"attempts", r.attempts}, {"ready", r.ready},
                                      {"failed", r.failed},
                                      {"success_rate", finished ? json(static_cast<double>(r.ready) / finished)
                                                                : json(nullptr)}}}});
        }
        return JsonResponse(200, {{"rows", arr}, {"provider_errors", (*offers)["provider_errors"]}});
      });

  router_->Add(
      RouteSpec{.method = "GET", .path = "/api/v1/metrics/spot/llm-gpus",
                .summary = "GPU models suited to LLM work (16 GB of VRAM or more): price per GB of VRAM and the "
                           "model sizes that fit",
                .tag = "market",
                .response_description =
                    "{rule: {overhead, bytes_per_param: {fp16, 4bit}, min_vram_gb, need_gb: {\"7B\": {fp16, 4bit}, "
                    "...}}, gpus: [{gpu, vram_gb, price ($ per GPU-hour, cheapest on demand), provider, "
                    "price_per_gb_vram, spot_price (null without spot), fits: {fp16: [\"7B\", ...], 4bit: [...]}}]} "
                    "ordered by price_per_gb_vram; a size fits one GPU when params x bytes per param x overhead <= "
                    "VRAM"},
      [this](Context& c) -> Result<Response> {
        DUMONT_RETURN_IF_ERROR(CheckQuery(c));
        auto current = CurrentMarket(*store_, clock_.NowUnix());
        if (!current) return Err(current.error());
        json need = json::object(), bytes = json::object();
        for (const auto& p : fleet::kLlmPrecisions) bytes[p.name] = p.bytes_per_param;
        for (int size : fleet::kLlmSizesB) {
          for (const auto& p : fleet::kLlmPrecisions) need[std::to_string(size) + "B"][p.name] = fleet::LlmMemoryGb(size, p.bytes_per_param);
        }
        std::vector<json> gpus;
        for (const auto& [gpu, g] : ByGpu(*current)) {
          if (g.vram_gb < fleet::kLlmMinVramGb) continue;
          json fits = json::object();
          for (const auto& p : fleet::kLlmPrecisions) fits[p.name] = fleet::LlmSizesThatFit(g.vram_gb, p.bytes_per_param);
          gpus.push_back({{"gpu", gpu}, {"vram_gb", g.vram_gb}, {"price", g.min_price},
                          {"provider", g.cheapest_provider},
                          {"price_per_gb_vram", Round(g.min_price / g.vram_gb, 5)},
                          {"spot_price", OrNull(g.spot_min_price)}, {"fits", fits}});
        }
        std::stable_sort(gpus.begin(), gpus.end(), [](const json& a, const json& b) {
          return a["price_per_gb_vram"].get<double>() < b["price_per_gb_vram"].get<double>();
        });
        json rule = {{"overhead", fleet::kLlmOverhead}, {"bytes_per_param", bytes},
                     {"min_vram_gb", fleet::kLlmMinVramGb}, {"need_gb", need}};
        return JsonResponse(200, {{"rule", rule}, {"gpus", gpus}});
      });

  router_->Add(
      RouteSpec{.method = "GET", .path = "/api/v1/metrics/spot/savings",
                .summary = "What spot saves over on demand per GPU model, per hour and per month (730 h)",
                .tag = "market",
                .response_description =
                    "{hours_per_month: 730, gpus: [{gpu, on_demand: {price, provider}, spot: {price, provider}, "
                    "savings_per_hour, savings_per_month ($ per GPU), savings_pct}]} for the models with a spot "
                    "offer, the cheapest of each kind over every provider, largest monthly saving first"},
      [this](Context& c) -> Result<Response> {
        DUMONT_RETURN_IF_ERROR(CheckQuery(c));
        auto current = CurrentMarket(*store_, clock_.NowUnix());
        if (!current) return Err(current.error());
        std::vector<json> gpus;
        for (const auto& [gpu, g] : ByGpu(*current)) {
          if (!g.spot_min_price) continue;
          double per_hour = g.min_price - *g.spot_min_price;
          gpus.push_back({{"gpu", gpu},
                          {"on_demand", {{"price", g.min_price}, {"provider", g.cheapest_provider}}},
                          {"spot", {{"price", *g.spot_min_price}, {"provider", g.spot_provider}}},
                          {"savings_per_hour", Round(per_hour, 4)},
                          {"savings_per_month", Round(per_hour * kHoursPerMonth, 2)},
                          {"savings_pct", Round(per_hour / g.min_price * 100, 1)}});
        }
        std::stable_sort(gpus.begin(), gpus.end(), [](const json& a, const json& b) {
          return a["savings_per_month"].get<double>() > b["savings_per_month"].get<double>();
        });
        return JsonResponse(200, {{"hours_per_month", kHoursPerMonth}, {"gpus", gpus}});
      });
}

}  // namespace dumont::api
