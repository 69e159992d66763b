// Instances, the agent protocol and the savings ledger over HTTP.
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <array>
#include <functional>
#include <map>
#include <sstream>

#include "api/app.h"
#include "fleet/history.h"

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

const char* kInstance = "/api/v1/instances/{id}";


std::string BearerOf(const http::Request& req) {
  auto h = req.headers.Get("authorization");
  if (!h || h->size() < 8 || (h->substr(0, 7) != "Bearer " && h->substr(0, 7) != "bearer ")) return "";
  return h->substr(7);
}

}  // namespace

void App::RegisterFleetRoutes() {
  auto& f = *fleet_;
  const std::vector<Field> hibernation_field = {
      {"hibernation", JsonType::kObject, false,
       "{enabled, gpu_threshold_pct (default 5), idle_seconds (180), release_after_seconds (1800)}"}};

  router_->Add(RouteSpec{.method = "GET", .path = "/api/v1/instances", .summary = "Your instances", .tag = "instances"},
               [&f](Context& c) -> Result<Response> {
                 auto list = f.List(c.principal->user_id);
                 if (!list) return Err(list.error());
                 json arr = json::array();
                 for (const auto& i : *list) arr.push_back(f.InstanceJson(i));
                 return JsonResponse(200, {{"instances", arr}});
               });
  std::vector<Field> create_fields = {{"name", JsonType::kString, true, "a name for you"},
                                      {"provider", JsonType::kString, false, "local (default) or another configured provider"},
                                      {"offer_id", JsonType::kString, false, "a specific offer"},
                                      {"gpu", JsonType::kString, false, "wanted GPU model"},
                                      {"image", JsonType::kString, false, "machine image"}};
  create_fields.push_back(hibernation_field[0]);
  router_->Add(RouteSpec{.method = "POST", .path = "/api/v1/instances", .summary = "Create an instance (a machine starts)",
                         .tag = "instances", .mutation = true, .body = create_fields, .success_status = 201},
               [&f](Context& c) -> Result<Response> {
                 auto i = f.Create(c.principal->user_id, c.body);
                 if (!i) return Err(i.error());
                 return JsonResponse(201, {{"instance", f.InstanceJson(*i)}});
               });
  router_->Add(RouteSpec{.method = "GET", .path = kInstance, .summary = "One instance", .tag = "instances",
                         .owned_resource = "instance"},
               [&f](Context& c) -> Result<Response> {
                 auto i = f.Get(c.principal->user_id, c.params["id"]);
                 if (!i) return Err(i.error());
                 return JsonResponse(200, {{"instance", f.InstanceJson(*i)}});
               });
  std::vector<Field> patch_fields = {{"name", JsonType::kString, false, ""}};
  patch_fields.push_back(hibernation_field[0]);
  router_->Add(RouteSpec{.method = "PATCH", .path = kInstance, .summary = "Rename or change hibernation settings",
                         .tag = "instances", .mutation = true, .body = patch_fields, .owned_resource = "instance"},
               [&f](Context& c) -> Result<Response> {
                 auto i = f.Patch(c.principal->user_id, c.params["id"], c.body);
                 if (!i) return Err(i.error());
                 return JsonResponse(200, {{"instance", f.InstanceJson(*i)}});
               });
  router_->Add(RouteSpec{.method = "DELETE", .path = kInstance, .summary = "Destroy the instance and its machine",
                         .tag = "instances", .mutation = true, .owned_resource = "instance",
                         .success_status = 202, .response_description = "destruction started"},
               [&f](Context& c) -> Result<Response> {
                 auto i = f.Destroy(c.principal->user_id, c.params["id"]);
                 if (!i) return Err(i.error());
                 return JsonResponse(202, {{"instance", f.InstanceJson(*i)}});
               });
  for (const char* action : {"pause", "resume", "hibernate", "wake", "snapshot", "retry"}) {
    std::string a = action;
    router_->Add(RouteSpec{.method = "POST", .path = std::string(kInstance) + "/" + a,
                           .summary = a == "snapshot" ? "Take a snapshot of the workspace now"
                                      : a == "hibernate" ? "Snapshot, then destroy the machine (billing stops)"
                                      : a == "wake" ? "New machine, restore the latest snapshot"
                                      : a == "retry" ? "Run the failed deploy of an instance in error again"
                                                    : "Instance action: " + a,
                           .tag = "instances", .mutation = true, .owned_resource = "instance",
                           .success_status = 202, .response_description = "accepted; watch state and events"},
                 [&f, a](Context& c) -> Result<Response> {
                   auto i = f.Action(c.principal->user_id, c.params["id"], a);
                   if (!i) return Err(i.error());
                   return JsonResponse(202, {{"instance", f.InstanceJson(*i)}});
                 });
  }
  router_->Add(RouteSpec{.method = "GET", .path = std::string(kInstance) + "/snapshots", .summary = "The instance's snapshots, newest first",
                         .tag = "instances", .owned_resource = "instance"},
               [&f](Context& c) -> Result<Response> {
                 auto s = f.Snapshots(c.principal->user_id, c.params["id"]);
                 if (!s) return Err(s.error());
                 return JsonResponse(200, {{"snapshots", *s}});
               });
  router_->Add(RouteSpec{.method = "GET", .path = std::string(kInstance) + "/events", .summary = "The instance's events, newest first",
                         .tag = "instances", .query = {{"limit", JsonType::kInteger, false, "at most this many (default 100)"}},
                         .owned_resource = "instance"},
               [&f](Context& c) -> Result<Response> {
                 int limit = 100;
                 if (auto it = c.request.query.find("limit"); it != c.request.query.end()) {
                   try {
                     limit = std::stoi(it->second);
                   } catch (const std::exception&) {
                     return Err(Status::InvalidField("limit", "limit must be an integer"));
                   }
                   if (limit < 1 || limit > 1000) return Err(Status::InvalidField("limit", "limit must be 1..1000"));
                 }
                 auto ev = f.Events(c.principal->user_id, c.params["id"], limit);
                 if (!ev) return Err(ev.error());
                 json arr = json::array();
                 for (const auto& e : *ev) {
                   arr.push_back({{"id", e.id}, {"time_ms", e.time_ms}, {"type", e.type}, {"message", e.message}});
                 }
                 return JsonResponse(200, {{"events", arr}});
               });
  router_->Add(RouteSpec{.method = "PUT", .path = std::string(kInstance) + "/virtual-gpu",
                         .summary = "Set the simulated GPU utilisation of a local machine (409 on other providers)",
                         .tag = "instances", .mutation = true,
                         .body = {{"util", JsonType::kNumber, true, "0..100"}}, .owned_resource = "instance"},
               [&f](Context& c) -> Result<Response> {
                 DUMONT_RETURN_IF_ERROR(f.SetVirtualGpu(c.principal->user_id, c.params["id"], c.body["util"].get<double>()));
                 return JsonResponse(200, {{"util", c.body["util"]}, {"simulated", true}});
               });

  // Agent protocol: authenticated by machine tokens, not user tokens.
  router_->Add(RouteSpec{.method = "POST", .path = "/api/v1/agent/enroll",
                         .summary = "Exchange a one-time enrollment token for this machine's agent token",
                         .tag = "agent", .auth = Auth::kNone, .body = {{"token", JsonType::kString, true, "det_..."}}},
               [&f](Context& c) -> Result<Response> {
                 auto r = f.Enroll(c.body["token"].get<std::string>());
                 if (!r) return Err(r.error());
                 return JsonResponse(200, *r);
               });
  router_->Add(RouteSpec{.method = "POST", .path = "/api/v1/agent/status",
                         .summary = "Agent heartbeat (Authorization: Bearer <agent token>); the answer carries commands",
                         .tag = "agent", .auth = Auth::kNone,
                         .body = {{"instance_id", JsonType::kString, true, "the machine's instance"},
                                  {"gpu_source", JsonType::kString, false, "nvml | nvidia-smi | virtual"},
                                  {"gpu_error", JsonType::kString, false, "why the GPUs could not be read (then none are reported)"},
                                  {"gpus", JsonType::kArray, false, "[{index, name, util_pct, mem_used_mb, mem_total_mb}]"},
                                  {"gpu_processes", JsonType::kArray, false, "[{gpu, pid, used_mem_mb}]"},
                                  {"load_1m", JsonType::kNumber, false, ""},
                                  {"cpu_cores", JsonType::kInteger, false, ""},
                                  {"ram_total_mb", JsonType::kInteger, false, ""},
                                  {"ram_used_mb", JsonType::kInteger, false, ""},
                                  {"disk_total_gb", JsonType::kNumber, false, ""},
                                  {"disk_used_gb", JsonType::kNumber, false, ""},
                                  {"command_results", JsonType::kArray, false, "[{id, ok, snapshot_id?, error?}]"}}},
               [&f](Context& c) -> Result<Response> {
                 std::string token = BearerOf(c.request);
                 if (token.empty()) return Err(Status::Unauthenticated("send the agent token as 'Authorization: Bearer dat_...'"));
                 auto r = f.Heartbeat(token, c.body);
                 if (!r) return Err(r.error());
                 return JsonResponse(200, *r);
               });
  router_->Add(RouteSpec{.method = "GET", .path = "/api/v1/agent/download", .summary = "The dumont-agent binary (linux x86_64)",
                         .tag = "agent", .auth = Auth::kNone, .produces = "application/octet-stream"},
               [](Context&) -> Result<Response> {
                 std::ifstream in(AgentBinaryPath(), std::ios::binary);
                 if (!in) return Err(Status::NotFound("the agent binary is not installed beside dumontd"));
                 std::ostringstream data;
                 data << in.rdbuf();
                 Response r = Response::Text(200, data.str(), "application/octet-stream");
                 r.headers.Set("Content-Disposition", "attachment; filename=dumont-agent");
                 return r;
               });
  router_->Add(RouteSpec{.method = "GET", .path = "/api/v1/agent/install.sh",
                         .summary = "Install script a machine runs at boot (needs DUMONT_AGENT_SERVER and DUMONT_AGENT_ENROLL_TOKEN)",
                         .tag = "agent", .auth = Auth::kNone, .produces = "text/x-shellscript"},
               [](Context&) -> Result<Response> {
                 std::string script = R"SH(#!/bin/sh
# Installs and starts dumont-agent. Usage (at machine boot):
#   DUMONT_AGENT_SERVER=https://dumont.example DUMONT_AGENT_ENROLL_TOKEN=det_... sh install.sh
set -eu
: "${DUMONT_AGENT_SERVER:?set DUMONT_AGENT_SERVER}"
: "${DUMONT_AGENT_ENROLL_TOKEN:?set DUMONT_AGENT_ENROLL_TOKEN}"
DEST=${DUMONT_AGENT_BIN:-/usr/local/bin/dumont-agent}
curl -fsSL "$DUMONT_AGENT_SERVER/api/v1/agent/download" -o "$DEST.tmp"
chmod 0755 "$DEST.tmp" && mv "$DEST.tmp" "$DEST"
mkdir -p /var/lib/dumont-agent && chmod 0700 /var/lib/dumont-agent
export DUMONT_AGENT_SERVER DUMONT_AGENT_ENROLL_TOKEN
nohup "$DEST" >>/var/log/dumont-agent.log 2>&1 &
echo "dumont-agent started (log: /var/log/dumont-agent.log)"
)SH";
                 return Response::Text(200, script, "text/x-shellscript");
               });

  // Offers across providers, and machine history / blacklist.
  router_->Add(RouteSpec{.method = "GET", .path = "/api/v1/instances/offers",
                         .summary = "Offers of every configured provider, normalised, with reliability and our own history",
                         .tag = "offers",
                         .query = {{"gpu", JsonType::kString, false, "GPU model contains"},
                                   {"num_gpus", JsonType::kInteger, false, "at least"},
                                   {"min_vram", JsonType::kNumber, false, "GB per GPU, at least"},
                                   {"max_price", JsonType::kNumber, false, "$/hour, at most"},
                                   {"region", JsonType::kString, false, "location contains"},
                                   {"provider", JsonType::kString, false, "only this provider"},
                                   {"sort", JsonType::kString, false, "price (default) | reliability | value"}}},
               [&f](Context& c) -> Result<Response> {
                 auto q = fleet::ParseOfferQuery(c.request.query);
                 if (!q) return Err(q.error());
                 auto mine = f.ProvidersFor(c.principal->user_id);  // keeps the clients alive meanwhile
                 std::vector<provider::Provider*> providers;
                 for (const auto& p : mine) providers.push_back(p.get());
                 auto r = fleet::SearchOffers(f.store(), providers, *q);
                 if (!r) return Err(r.error());
                 return JsonResponse(200, *r);
               });
  auto stats_list = [&f](const std::function<bool(const fleet::HostStats&)>& keep,
                         bool best_first) -> Result<Response> {
    auto all = fleet::AllHostStats(f.store());
    if (!all) return Err(all.error());
    std::vector<fleet::HostStats> v;
    for (const auto& h : *all) {
      if (keep(h)) v.push_back(h);
    }
    std::sort(v.begin(), v.end(), [&](const auto& a, const auto& b) {
      return best_first ? a.success_rate > b.success_rate : a.success_rate < b.success_rate;
    });
    json arr = json::array();
    for (const auto& h : v) arr.push_back(h.ToJson());
    return JsonResponse(200, {{"machines", arr}});
  };
  router_->Add(RouteSpec{.method = "GET", .path = "/api/v1/machines/history/summary",
                         .summary = "Provisioning attempts per provider: success rate, time to ready", .tag = "machines"},
               [&f](Context&) -> Result<Response> {
                 auto all = f.store().ListAllAttempts();
                 if (!all) return Err(all.error());
                 std::map<std::string, std::array<double, 4>> per;  // attempts, ready, failed, ready seconds
                 for (const auto& a : *all) {
                   auto& v = per[a.provider];
                   v[0] += 1;
                   if (a.outcome == "ready") {
                     v[1] += 1;
                     if (a.ready_at) v[3] += static_cast<double>(*a.ready_at - a.started_at);
                   } else if (a.outcome == "failed") {
                     v[2] += 1;
                   }
                 }
                 json providers = json::object();
                 for (const auto& [p, v] : per) {
                   providers[p] = {{"attempts", v[0]}, {"ready", v[1]}, {"failed", v[2]},
                                   {"success_rate", v[1] + v[2] > 0 ? v[1] / (v[1] + v[2]) : 0.0},
                                   {"avg_time_to_ready_s", v[1] > 0 ? v[3] / v[1] : 0.0}};
                 }
                 auto bl = f.store().ListBlacklist();
                 if (!bl) return Err(bl.error());
                 return JsonResponse(200, {{"providers", providers}, {"attempts", all->size()}, {"blacklisted", bl->size()}});
               });
  router_->Add(RouteSpec{.method = "GET", .path = "/api/v1/machines/history/reliable",
                         .summary = "Hosts with at least 3 attempts and 80 % success", .tag = "machines"},
               [stats_list](Context&) {
                 return stats_list([](const auto& h) { return h.ready + h.failed >= 3 && h.success_rate >= 0.8; }, true);
               });
  router_->Add(RouteSpec{.method = "GET", .path = "/api/v1/machines/history/problematic",
                         .summary = "Hosts that failed at least once and succeed under 50 %", .tag = "machines"},
               [stats_list](Context&) {
                 return stats_list([](const auto& h) { return h.failed > 0 && h.success_rate < 0.5; }, false);
               });
  router_->Add(RouteSpec{.method = "GET", .path = "/api/v1/machines/history/stats/{provider}/{machine_id}",
                         .summary = "One host's attempts and reliability", .tag = "machines"},
               [&f](Context& c) -> Result<Response> {
                 auto h = fleet::HostStatsOf(f.store(), c.params["provider"], c.params["machine_id"]);
                 if (!h) return Err(h.error());
                 return JsonResponse(200, h->ToJson());
               });
  router_->Add(RouteSpec{.method = "GET", .path = "/api/v1/machines/history/blacklist",
                         .summary = "Blacklisted hosts (deploys skip them)", .tag = "machines"},
               [&f](Context&) -> Result<Response> {
                 auto bl = f.store().ListBlacklist();
                 if (!bl) return Err(bl.error());
                 json arr = json::array();
                 for (const auto& b : *bl) {
                   arr.push_back({{"provider", b.provider}, {"machine_id", b.host_id}, {"reason", b.reason},
                                  {"automatic", b.automatic}, {"created_at", b.created_at}});
                 }
                 return JsonResponse(200, {{"blacklist", arr}});
               });
  router_->Add(RouteSpec{.method = "POST", .path = "/api/v1/machines/history/blacklist/{provider}/{machine_id}",
                         .summary = "Blacklist a host (admin; the blacklist is shared by all users)", .tag = "machines",
                         .auth = Auth::kAdmin, .mutation = true,
                         .body = {{"reason", JsonType::kString, false, "why"}}, .success_status = 201},
               [this](Context& c) -> Result<Response> {
                 std::string reason = c.body.value("reason", "manual");
                 DUMONT_RETURN_IF_ERROR(fleet_->store().AddBlacklist(
                     {c.params["provider"], c.params["machine_id"], reason, false, clock_.NowUnix()}));
                 return JsonResponse(201, {{"provider", c.params["provider"]}, {"machine_id", c.params["machine_id"]},
                                           {"reason", reason}});
               });
  router_->Add(RouteSpec{.method = "DELETE", .path = "/api/v1/machines/history/blacklist/{provider}/{machine_id}",
                         .summary = "Remove a host from the blacklist (admin)", .tag = "machines", .auth = Auth::kAdmin,
                         .mutation = true},
               [this](Context& c) -> Result<Response> {
                 DUMONT_RETURN_IF_ERROR(fleet_->store().RemoveBlacklist(c.params["provider"], c.params["machine_id"]));
                 return JsonResponse(200, {{"removed", true}});
               });

  // Savings from real hibernation events.
  auto savings = [&f](Context& c) -> Result<Response> {
    auto s = f.Savings(c.principal->user_id);
    if (!s) return Err(s.error());
    return JsonResponse(200, *s);
  };
  router_->Add(RouteSpec{.method = "GET", .path = "/api/v1/hibernation/stats", .summary = "Hibernation totals",
                         .tag = "savings"},
               savings);
  router_->Add(RouteSpec{.method = "GET", .path = "/api/v1/metrics/savings/real",
                         .summary = "Dollars saved by hibernation, per instance and in total", .tag = "savings"},
               savings);
  router_->Add(RouteSpec{.method = "GET", .path = "/api/v1/metrics/hibernation/events",
                         .summary = "Every hibernation with price, start, end, hours and dollars", .tag = "savings"},
               [&f](Context& c) -> Result<Response> {
                 auto e = f.HibernationEvents(c.principal->user_id);
                 if (!e) return Err(e.error());
                 return JsonResponse(200, {{"events", *e}});
               });
  router_->Add(RouteSpec{.method = "GET", .path = "/api/v1/metrics/savings/history",
                         .summary = "Savings per day (UTC), from hibernation events", .tag = "savings"},
               [&f](Context& c) -> Result<Response> {
                 auto e = f.HibernationEvents(c.principal->user_id);
                 if (!e) return Err(e.error());
                 std::map<int64_t, std::pair<double, double>> days;
                 for (const auto& h : *e) {
                   int64_t day = h["started_at"].get<int64_t>() / 86400 * 86400;
                   days[day].first += h["hours"].get<double>();
                   days[day].second += h["dollars"].get<double>();
                 }
                 json arr = json::array();
                 for (const auto& [d, v] : days) arr.push_back({{"day", d}, {"hours", v.first}, {"dollars", v.second}});
                 return JsonResponse(200, {{"history", arr}});
               });
}

}  // namespace dumont::api
