// Instances, the agent protocol and the savings ledger over HTTP.
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

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

const char* kInstance = "/api/v1/instances/{id}";

std::string AgentBinary() {
  char buf[4096];
  ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) return "";
  buf[n] = 0;
  return (std::filesystem::path(buf).parent_path() / "dumont-agent").string();
}

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
  for (const char* action : {"pause", "resume", "hibernate", "wake", "snapshot"}) {
    std::string a = action;
    router_->Add(RouteSpec{.method = "POST", .path = std::string(kInstance) + "/" + a,
                           .summary = a == "snapshot" ? "Take a snapshot of the workspace now"
                                      : a == "hibernate" ? "Snapshot, then destroy the machine (billing stops)"
                                      : a == "wake" ? "New machine, restore the latest snapshot"
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
                 std::ifstream in(AgentBinary(), std::ios::binary);
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
