// Multi-start deploys (with their server-sent event stream) and per-user provider credentials.
#include <chrono>

#include "api/app.h"

namespace dumont::api {

using http::Auth;
using http::Context;
using http::Field;
using http::JsonResponse;
using http::JsonType;
using http::Response;
using http::RouteSpec;
using nlohmann::json;

namespace {

const char* kDeploy = "/api/v1/deploys/{id}";

bool Terminal(const std::string& type) { return type == "deploy_succeeded" || type == "deploy_failed"; }

Result<int64_t> NonNegativeInt(const std::string& name, const std::string& v) {
  try {
    size_t pos = 0;
    long long n = std::stoll(v, &pos);
    if (pos == v.size() && n >= 0) return static_cast<int64_t>(n);
  } catch (const std::exception&) {
  }
  return Err(Status::InvalidField(name, name + " must be a non-negative integer, got '" + v + "'"));
}

std::string SseFrame(const store::DeployEvent& e) {
  return "id: " + std::to_string(e.seq) + "\nevent: " + e.type + "\ndata: " + e.data_json + "\n\n";
}

json EventJson(const store::DeployEvent& e) {
  json data = json::parse(e.data_json, nullptr, false);
  return {{"seq", e.seq}, {"time_ms", e.time_ms}, {"type", e.type}, {"data", data.is_discarded() ? json::object() : data}};
}

}  // namespace

void App::RegisterDeployRoutes() {
  auto& f = *fleet_;
  const Clock& clock = clock_;
  std::vector<Field> fields = {
      {"name", JsonType::kString, true, "a name for the instance the deploy creates"},
      {"provider", JsonType::kString, false, "local (default), vast, or another configured provider"},
      {"image", JsonType::kString, false, "machine image"},
      {"offer_id", JsonType::kString, false, "start only this offer (no multi-start)"},
      {"requirements", JsonType::kObject, false,
       "{gpu, num_gpus, min_vram_gb, max_price ($/h), region, sort: price|reliability|value}"},
      {"strategy", JsonType::kObject, false,
       "{batch_size (default 5, 1-16), max_batches (3, 1-10), batch_timeout_s (90), carry_over (true)}"},
      {"hibernation", JsonType::kObject, false,
       "{enabled, gpu_threshold_pct (default 5), idle_seconds (180), release_after_seconds (1800)}"}};
  router_->Add(RouteSpec{.method = "POST", .path = "/api/v1/deploys",
                         .summary = "Multi-start deploy: start a batch of distinct offers, keep the first machine that "
                                    "is running and reachable, destroy the rest at once; the next batch after the "
                                    "timeout. Creates an instance; follow it at events_url.",
                         .tag = "deploys", .mutation = true, .body = fields, .success_status = 202,
                         .response_description = "the deploy started (state pending)"},
               [&f](Context& c) -> Result<Response> {
                 auto d = f.StartDeploy(c.principal->user_id, c.body);
                 if (!d) return Err(d.error());
                 return JsonResponse(202, {{"deploy", f.DeployJson(*d)}});
               });
  router_->Add(RouteSpec{.method = "GET", .path = "/api/v1/deploys", .summary = "Your deploys, newest first",
                         .tag = "deploys", .query = {{"limit", JsonType::kInteger, false, "at most this many (default 50, max 500)"}}},
               [&f](Context& c) -> Result<Response> {
                 int64_t limit = 50;
                 if (auto it = c.request.query.find("limit"); it != c.request.query.end()) {
                   auto n = NonNegativeInt("limit", it->second);
                   if (!n) return Err(n.error());
                   limit = std::clamp<int64_t>(*n, 1, 500);
                 }
                 auto list = f.ListDeploys(c.principal->user_id, static_cast<int>(limit));
                 if (!list) return Err(list.error());
                 json arr = json::array();
                 for (const auto& d : *list) arr.push_back(f.DeployJson(d));
                 return JsonResponse(200, {{"deploys", arr}});
               });
  router_->Add(RouteSpec{.method = "GET", .path = kDeploy,
                         .summary = "One deploy: state, every machine started (offer, batch, state, billed seconds, "
                                    "cost), the winner and what the losers cost",
                         .tag = "deploys", .owned_resource = "deploy"},
               [&f](Context& c) -> Result<Response> {
                 auto d = f.GetDeploy(c.principal->user_id, c.params["id"]);
                 if (!d) return Err(d.error());
                 return JsonResponse(200, {{"deploy", f.DeployJson(*d)}});
               });
  router_->Add(
      RouteSpec{.method = "GET", .path = std::string(kDeploy) + "/events",
                .summary = "The deploy's progress as server-sent events (event: deploy_started, batch_started, "
                           "machine_created, machine_failed, machine_state, machine_destroyed, deploy_succeeded, "
                           "deploy_failed; id: sequence number; data: JSON). The stream ends after the last event. "
                           "Resume with Last-Event-ID or ?after=N; ?format=json answers once with a JSON list.",
                .tag = "deploys",
                .query = {{"after", JsonType::kInteger, false, "only events after this sequence number"},
                          {"format", JsonType::kString, false, "json: one JSON answer instead of a stream"}},
                .owned_resource = "deploy",
                .produces = "text/event-stream"},
      [&f, &clock](Context& c) -> Result<Response> {
        std::string owner = c.principal->user_id, id = c.params["id"];
        int64_t after = 0;
        if (auto last = c.request.headers.Get("last-event-id")) {
          auto n = NonNegativeInt("Last-Event-ID", *last);
          if (!n) return Err(n.error());
          after = *n;
        }
        if (auto it = c.request.query.find("after"); it != c.request.query.end()) {
          auto n = NonNegativeInt("after", it->second);
          if (!n) return Err(n.error());
          after = *n;
        }
        std::string format;
        if (auto it = c.request.query.find("format"); it != c.request.query.end()) format = it->second;
        if (!format.empty() && format != "json") return Err(Status::InvalidField("format", "format must be json or absent"));
        auto first = f.DeployEvents(owner, id, after, 1000);  // also the ownership check
        if (!first) return Err(first.error());
        if (format == "json") {
          json arr = json::array();
          for (const auto& e : *first) arr.push_back(EventJson(e));
          auto d = f.GetDeploy(owner, id);
          if (!d) return Err(d.error());
          return JsonResponse(200, {{"events", arr}, {"state", d->state}});
        }
        struct State {
          int64_t after = 0;
          std::vector<store::DeployEvent> pending;
          int64_t last_write_ms = 0, deadline_ms = 0;
          bool done = false;
        };
        auto st = std::make_shared<State>();
        st->after = after;
        st->pending = std::move(*first);
        st->last_write_ms = clock.NowUnixMillis();
        st->deadline_ms = st->last_write_ms + 3600 * 1000;
        Response r;
        r.status = 200;
        r.content_type = "text/event-stream";
        r.headers.Set("X-Accel-Buffering", "no");
        r.stream = std::make_shared<http::BodyStream>();
        r.stream->next = [&f, &clock, st, owner, id](std::string* out) {
          if (st->done) return false;
          if (st->pending.empty()) {
            auto more = f.DeployEvents(owner, id, st->after, 200);
            if (!more) return false;  // the deploy is gone or the database is away: end the stream
            st->pending = std::move(*more);
          }
          int64_t now = clock.NowUnixMillis();
          for (const auto& e : st->pending) {
            *out += SseFrame(e);
            st->after = e.seq;
            if (Terminal(e.type)) st->done = true;
          }
          st->pending.clear();
          if (out->empty() && now - st->last_write_ms > 15000) *out = ": keep-alive\n\n";
          if (!out->empty()) st->last_write_ms = now;
          return !st->done && now < st->deadline_ms;
        };
        return r;
      });
}

void App::RegisterSettingsRoutes() {
  auto& f = *fleet_;
  router_->Add(RouteSpec{.method = "GET", .path = "/api/v1/settings/providers",
                         .summary = "Providers that take credentials, which fields they need and whether you saved "
                                    "them (a hint, never the values)",
                         .tag = "settings"},
               [&f](Context& c) -> Result<Response> {
                 auto l = f.ListCredentials(c.principal->user_id);
                 if (!l) return Err(l.error());
                 return JsonResponse(200, *l);
               });
  router_->Add(RouteSpec{.method = "PUT", .path = "/api/v1/settings/providers/{provider}",
                         .summary = "Save your credentials for a provider (write-only: encrypted at rest, never "
                                    "returned or logged). Fields depend on the provider: see GET /settings/providers.",
                         .tag = "settings", .mutation = true,
                         .body = {{"api_key", JsonType::kString, false, "Vast.ai / RunPod API key"},
                                  {"service_account_json", JsonType::kString, false,
                                   "Google Cloud service-account key (the JSON file's content)"},
                                  {"project", JsonType::kString, false, "Google Cloud project id"},
                                  {"zone", JsonType::kString, false, "Google Cloud zone, e.g. us-central1-a"}}},
               [&f](Context& c) -> Result<Response> {
                 auto r = f.PutCredentials(c.principal->user_id, c.params["provider"], c.body);
                 if (!r) return Err(r.error());
                 return JsonResponse(200, *r);
               });
  router_->Add(RouteSpec{.method = "DELETE", .path = "/api/v1/settings/providers/{provider}",
                         .summary = "Forget your credentials for a provider", .tag = "settings", .mutation = true},
               [&f](Context& c) -> Result<Response> {
                 Status st = f.DeleteCredentials(c.principal->user_id, c.params["provider"]);
                 if (!st.ok()) return Err(st);
                 return JsonResponse(200, {{"provider", c.params["provider"]}, {"configured", false}});
               });
}

}  // namespace dumont::api
