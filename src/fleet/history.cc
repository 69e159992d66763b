#include "fleet/history.h"

#include <algorithm>
#include <map>
#include <set>

namespace dumont::fleet {

using nlohmann::json;

json HostStats::ToJson() const {
  return {{"provider", provider}, {"machine_id", host_id}, {"attempts", attempts}, {"ready", ready},
          {"failed", failed}, {"success_rate", success_rate}, {"avg_time_to_ready_s", avg_time_to_ready_s}};
}

namespace {
std::vector<HostStats> Aggregate(const std::vector<store::MachineAttempt>& attempts) {
  std::map<std::pair<std::string, std::string>, HostStats> m;
  std::map<std::pair<std::string, std::string>, double> ready_time;
  for (const auto& a : attempts) {
    auto key = std::make_pair(a.provider, a.host_id);
    auto& h = m[key];
    h.provider = a.provider;
    h.host_id = a.host_id;
    ++h.attempts;
    if (a.outcome == "ready") {
      ++h.ready;
      if (a.ready_at) ready_time[key] += static_cast<double>(*a.ready_at - a.started_at);
    } else if (a.outcome == "failed") {
      ++h.failed;
    }
  }
  std::vector<HostStats> out;
  for (auto& [key, h] : m) {
    int finished = h.ready + h.failed;
    h.success_rate = finished ? static_cast<double>(h.ready) / finished : 0;
    h.avg_time_to_ready_s = h.ready ? ready_time[key] / h.ready : 0;
    out.push_back(h);
  }
  return out;
}
}  // namespace

Result<std::vector<HostStats>> AllHostStats(store::Store& s) {
  auto all = s.ListAllAttempts();
  if (!all) return Err(all.error());
  return Aggregate(*all);
}

Result<HostStats> HostStatsOf(store::Store& s, const std::string& provider, const std::string& host_id) {
  auto list = s.ListAttempts(provider, host_id);
  if (!list) return Err(list.error());
  if (list->empty()) return Err(Status::NotFound("no attempts recorded for machine " + provider + "/" + host_id));
  return Aggregate(*list).front();
}

Status MaybeAutoBlacklist(store::Store& s, const std::string& provider, const std::string& host_id, int64_t now) {
  auto h = HostStatsOf(s, provider, host_id);
  if (!h) return h.error().code() == Code::kNotFound ? Status::Ok() : h.error();
  int finished = h->ready + h->failed;
  if (finished < 3 || h->success_rate >= 0.3) return Status::Ok();
  char reason[128];
  std::snprintf(reason, sizeof reason, "automatic: %d of %d attempts succeeded", h->ready, finished);
  return s.AddBlacklist({provider, host_id, reason, true, now});
}

Result<OfferQuery> ParseOfferQuery(const std::map<std::string, std::string>& q) {
  OfferQuery o;
  auto num = [&](const char* key, double* out) -> Status {
    auto it = q.find(key);
    if (it == q.end() || it->second.empty()) return Status::Ok();
    try {
      size_t pos = 0;
      *out = std::stod(it->second, &pos);
      if (pos != it->second.size() || *out < 0) throw std::invalid_argument("bad");
    } catch (const std::exception&) {
      return Status::InvalidField(key, std::string(key) + " must be a non-negative number, got '" + it->second + "'");
    }
    return Status::Ok();
  };
  double n = 0;
  DUMONT_RETURN_IF_ERROR(num("num_gpus", &n));
  o.num_gpus = static_cast<int>(n);
  DUMONT_RETURN_IF_ERROR(num("min_vram", &o.min_vram_gb));
  DUMONT_RETURN_IF_ERROR(num("max_price", &o.max_price));
  if (auto it = q.find("gpu"); it != q.end()) o.gpu = it->second;
  if (auto it = q.find("region"); it != q.end()) o.region = it->second;
  if (auto it = q.find("provider"); it != q.end()) o.provider = it->second;
  if (auto it = q.find("sort"); it != q.end() && !it->second.empty()) o.sort = it->second;
  if (o.sort != "price" && o.sort != "reliability" && o.sort != "value") {
    return Err(Status::InvalidField("sort", "sort must be price, reliability or value"));
  }
  return o;
}

Result<json> SearchOffers(store::Store& s, const std::vector<provider::Provider*>& providers, const OfferQuery& q) {
  auto stats = AllHostStats(s);
  if (!stats) return Err(stats.error());
  std::map<std::pair<std::string, std::string>, HostStats> by_host;
  for (const auto& h : *stats) by_host[{h.provider, h.host_id}] = h;
  auto bl = s.ListBlacklist();
  if (!bl) return Err(bl.error());
  std::set<std::pair<std::string, std::string>> black;
  for (const auto& b : *bl) black.insert({b.provider, b.host_id});
  auto lower = [](std::string x) {
    std::transform(x.begin(), x.end(), x.begin(), [](unsigned char c) { return std::tolower(c); });
    return x;
  };
  std::vector<provider::Offer> offers;
  json errors = json::array();
  for (auto* p : providers) {
    if (!q.provider.empty() && p->Name() != q.provider) continue;
    auto o = p->Offers();
    if (!o) {
      errors.push_back({{"provider", p->Name()}, {"error", o.error().message()}});
      continue;
    }
    for (auto off : *o) {
      off.provider = p->Name();  // history and blacklist are keyed by the registered name
      if (!q.gpu.empty() && lower(off.gpu_name).find(lower(q.gpu)) == std::string::npos) continue;
      if (q.num_gpus && off.num_gpus < q.num_gpus) continue;
      if (q.min_vram_gb > 0 && off.gpu_ram_gb < q.min_vram_gb) continue;
      if (q.max_price > 0 && off.price_per_hour > q.max_price) continue;
      if (!q.region.empty() && lower(off.location).find(lower(q.region)) == std::string::npos) continue;
      offers.push_back(off);
    }
  }
  auto value = [](const provider::Offer& o) { return o.price_per_hour > 0 ? o.reliability / o.price_per_hour : o.reliability * 1e9; };
  std::stable_sort(offers.begin(), offers.end(), [&](const auto& a, const auto& b) {
    if (q.sort == "reliability") return a.reliability > b.reliability;
    if (q.sort == "value") return value(a) > value(b);
    return a.price_per_hour < b.price_per_hour;
  });
  json arr = json::array();
  for (const auto& o : offers) {
    json j = o.ToJson();
    j["blacklisted"] = black.count({o.provider, o.id}) > 0;
    auto it = by_host.find({o.provider, o.id});
    j["history"] = it == by_host.end() ? json(nullptr) : it->second.ToJson();
    arr.push_back(j);
  }
  return json{{"offers", arr}, {"count", arr.size()}, {"provider_errors", errors}};
}

}  // namespace dumont::fleet
