// Machine history: every provisioning attempt (provider, host, offer, outcome, time to ready,
// failure reason), host reliability computed from it, and the blacklist (automatic when a host
// succeeds less than 30 % of at least 3 attempts; manual add/remove). Hosts are the provider's
// physical machines; for marketplaces one offer is one host, so host id = offer id.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "common/status.h"
#include "provider/provider.h"
#include "store/store.h"

namespace dumont::fleet {

struct HostStats {
  std::string provider, host_id;
  int attempts = 0, ready = 0, failed = 0;
  double success_rate = 0;         // ready / finished attempts
  double avg_time_to_ready_s = 0;  // over ready attempts
  nlohmann::json ToJson() const;
};

Result<std::vector<HostStats>> AllHostStats(store::Store& s);
Result<HostStats> HostStatsOf(store::Store& s, const std::string& provider, const std::string& host_id);
// Blacklists the host automatically when its success rate is under 30 % over at least 3 attempts.
Status MaybeAutoBlacklist(store::Store& s, const std::string& provider, const std::string& host_id, int64_t now);

struct OfferQuery {
  std::string gpu, region, provider, sort = "price";
  int num_gpus = 0;
  double min_vram_gb = 0, max_price = 0;
};
Result<OfferQuery> ParseOfferQuery(const std::map<std::string, std::string>& q);
// Offers of every provider, filtered and sorted, each with "blacklisted" and our own "history".
Result<nlohmann::json> SearchOffers(store::Store& s, const std::vector<provider::Provider*>& providers,
                                    const OfferQuery& q);

}  // namespace dumont::fleet
