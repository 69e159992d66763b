// The market monitor: every interval it asks each provider for its offers, reduces them to one row per
// (provider, GPU model) — min/avg/max price per GPU-hour, offer and GPU counts, reliability, cheapest
// spot price — stores the rows as one sample (store::MarketSnapshot) and deletes samples older than the
// retention. The reduction and the GPU-name rule are pure functions. docs/market.md has the rules.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "common/clock.h"
#include "common/log.h"
#include "common/status.h"
#include "provider/provider.h"
#include "store/store.h"

namespace dumont::fleet {

// The GPU model key offers are grouped by, so one model gets one key whatever the provider calls it:
// upper case; '_', '-' and '/' are spaces; the words NVIDIA, GEFORCE, TESLA, QUADRO, AMD and RADEON are
// dropped; "RTX4090" / "GTX1080" / "RX7900" are split ("RTX 4090"); a memory size is written "80GB"
// ("80 GB", "80G", "80gb"). The remaining words keep their order. "RTX 4090", "rtx_4090",
// "GeForce RTX 4090" and "NVIDIA GeForce RTX4090" are all "RTX 4090"; "A100-SXM4-80GB" is
// "A100 SXM4 80GB". An empty name is "UNKNOWN".
std::string NormalizeGpuName(std::string_view name);

// One provider's offers -> one row per GPU model key, sampled_at = t, ordered by gpu. An offer's price
// per GPU-hour is its price / its GPU count. Offers without a price or without GPUs (the local
// provider's free machine) are not market data and are skipped. Averages are over offers (each offer
// counts once); available_gpus sums the offers' GPUs; vram_gb is the largest per-GPU VRAM reported;
// spot_min_price is the cheapest spot price per GPU-hour among offers that have one.
std::vector<store::MarketSnapshot> AggregateOffers(const std::string& provider,
                                                   const std::vector<provider::Offer>& offers, int64_t t);

// Which LLM sizes fit on one GPU: a model needs params x bytes per parameter x 1.2 (the 20 % covers
// the KV cache, activations and the CUDA context at ordinary context lengths), with 2 bytes per
// parameter at fp16 and 0.5 at 4-bit. Sizes considered: 7B, 13B, 34B, 70B. A GPU is suited to LLM
// work from 16 GB of VRAM.
inline constexpr double kLlmOverhead = 1.2;
inline constexpr double kLlmMinVramGb = 16;
inline constexpr int kLlmSizesB[] = {7, 13, 34, 70};
struct LlmPrecision {
  const char* name;
  double bytes_per_param;
};
inline constexpr LlmPrecision kLlmPrecisions[] = {{"fp16", 2.0}, {"4bit", 0.5}};
double LlmMemoryGb(int params_b, double bytes_per_param);
// The sizes ("7B", ...) that fit in vram_gb at the given precision, smallest first.
std::vector<std::string> LlmSizesThatFit(double vram_gb, double bytes_per_param);

struct MarketOptions {
  int64_t interval_s = 300;
  int64_t retention_days = 30;
  std::chrono::milliseconds poll{1000};  // how often the loop looks at the clock (tests: shorter)
};

class MarketMonitor {
 public:
  MarketMonitor(store::Store& store, const Clock& clock, Logger* log, std::vector<provider::Provider*> providers,
                MarketOptions opts);
  ~MarketMonitor();

  // Starts the loop: a sample at once, then one whenever interval_s has passed on the clock.
  void Start();
  // Stops the loop; a sample in progress is finished first.
  void Stop();

  // One sample: every provider's offers, aggregated, stored in one transaction; then the retention.
  // A provider whose Offers() fails (or throws) is logged and skipped. Returns the rows written.
  Result<size_t> SampleOnce();
  int64_t samples() const { return samples_.load(); }  // samples completed (tests wait on it)

 private:
  void Loop();

  store::Store& store_;
  const Clock& clock_;
  Logger* log_;
  std::vector<provider::Provider*> providers_;
  MarketOptions opts_;
  std::mutex sample_mu_;  // one sample at a time
  std::atomic<int64_t> samples_{0};
  std::atomic<bool> running_{false};
  std::mutex stop_mu_;
  std::condition_variable stop_cv_;
  std::thread thread_;
};

}  // namespace dumont::fleet
