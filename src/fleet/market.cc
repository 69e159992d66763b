#include "fleet/market.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <limits>
#include <map>
#include <optional>
#include <sstream>

namespace dumont::fleet {

namespace {

bool AllDigits(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](unsigned char c) { return std::isdigit(c); });
}

}  // namespace

std::string NormalizeGpuName(std::string_view name) {
  std::string up;
  up.reserve(name.size());
  for (char ch : name) {
    unsigned char c = static_cast<unsigned char>(ch);
    up += (ch == '_' || ch == '-' || ch == '/' || std::isspace(c)) ? ' ' : static_cast<char>(std::toupper(c));
  }
  static const char* kDropped[] = {"NVIDIA", "GEFORCE", "TESLA", "QUADRO", "AMD", "RADEON"};
  static const std::string kFamilies[] = {"RTX", "GTX", "RX"};
  std::vector<std::string> words;
  std::istringstream in(up);
  for (std::string w; in >> w;) {
    if (std::find(std::begin(kDropped), std::end(kDropped), w) != std::end(kDropped)) continue;
    for (const auto& f : kFamilies) {
      if (w.size() > f.size() && w.compare(0, f.size(), f) == 0 && std::isdigit(static_cast<unsigned char>(w[f.size()]))) {
        words.push_back(f);
        w = w.substr(f.size());
        break;
      }
    }
    if ((w == "GB" || w == "G") && !words.empty() && AllDigits(words.back())) {
      words.back() += "GB";
      continue;
    }
    if (w.size() > 1 && w.back() == 'G' && AllDigits(std::string_view(w).substr(0, w.size() - 1))) w += 'B';
    words.push_back(w);
  }
  if (words.empty()) return "UNKNOWN";
  std::string out;
  for (const auto& w : words) out += (out.empty() ? "" : " ") + w;
  return out;
}

std::vector<store::MarketSnapshot> AggregateOffers(const std::string& provider,
                                                   const std::vector<provider::Offer>& offers, int64_t t) {
  struct Acc {
    store::MarketSnapshot row;
    double price_sum = 0, reliability_sum = 0;
  };
  std::map<std::string, Acc> by_gpu;
  for (const auto& o : offers) {
    if (o.price_per_hour <= 0 || o.num_gpus <= 0) continue;
    std::string gpu = NormalizeGpuName(o.gpu_name);
    auto [it, fresh] = by_gpu.try_emplace(gpu);
    Acc& a = it->second;
    store::MarketSnapshot& r = a.row;
    if (fresh) {
      r.sampled_at = t;
      r.provider = provider;
      r.gpu = gpu;
      r.min_price = std::numeric_limits<double>::infinity();
    }
    double per_gpu = o.price_per_hour / o.num_gpus;
    r.min_price = std::min(r.min_price, per_gpu);
    r.max_price = std::max(r.max_price, per_gpu);
    r.vram_gb = std::max(r.vram_gb, o.gpu_ram_gb);
    r.offers += 1;
    r.available_gpus += o.num_gpus;
    a.price_sum += per_gpu;
    a.reliability_sum += o.reliability;
    if (o.spot_price_per_hour > 0) {
      double spot = o.spot_price_per_hour / o.num_gpus;
      r.spot_min_price = r.spot_min_price ? std::min(*r.spot_min_price, spot) : spot;
    }
  }
  std::vector<store::MarketSnapshot> out;
  out.reserve(by_gpu.size());
  for (auto& [gpu, a] : by_gpu) {
    a.row.avg_price = a.price_sum / a.row.offers;
    a.row.avg_reliability = a.reliability_sum / a.row.offers;
    out.push_back(a.row);
  }
  return out;
}

double LlmMemoryGb(int params_b, double bytes_per_param) {
  return std::round(params_b * bytes_per_param * kLlmOverhead * 10) / 10;
}

std::vector<std::string> LlmSizesThatFit(double vram_gb, double bytes_per_param) {
  std::vector<std::string> out;
  for (int size : kLlmSizesB) {
    if (LlmMemoryGb(size, bytes_per_param) <= vram_gb) out.push_back(std::to_string(size) + "B");
  }
  return out;
}

MarketMonitor::MarketMonitor(store::Store& store, const Clock& clock, Logger* log,
                             std::vector<provider::Provider*> providers, MarketOptions opts)
    : store_(store), clock_(clock), log_(log), providers_(std::move(providers)), opts_(opts) {}

MarketMonitor::~MarketMonitor() { Stop(); }

void MarketMonitor::Start() {
  if (running_.exchange(true)) return;
  thread_ = std::thread([this] { Loop(); });
}

void MarketMonitor::Stop() {
  {
    std::lock_guard l(stop_mu_);
    if (!running_.exchange(false)) return;
  }
  stop_cv_.notify_all();
  thread_.join();
}

Result<size_t> MarketMonitor::SampleOnce() {
  std::lock_guard l(sample_mu_);
  const int64_t now = clock_.NowUnix();
  std::vector<store::MarketSnapshot> rows;
  for (auto* p : providers_) {
    const std::string name = p->Name();
    auto offers = [p]() -> Result<std::vector<provider::Offer>> {
      try {
        return p->Offers();
      } catch (const std::exception& e) {
        return Err(Status::Internal(std::string("Offers() threw: ") + e.what()));
      }
    }();
    if (!offers) {
      if (log_) log_->Warn("market sample: provider skipped", {{"provider", name}, {"error", offers.error().ToString()}});
      continue;
    }
    auto agg = AggregateOffers(name, *offers, now);
    rows.insert(rows.end(), agg.begin(), agg.end());
  }
  DUMONT_RETURN_IF_ERROR(store_.AddMarketSnapshots(rows).Annotate("storing the market sample"));
  auto deleted = store_.DeleteMarketSnapshotsBefore(now - opts_.retention_days * 86400);
  if (!deleted) return Err(deleted.error().Annotate("market retention"));
  ++samples_;
  if (log_) {
    log_->Debug("market sample stored",
                {{"rows", std::to_string(rows.size())}, {"expired", std::to_string(*deleted)}});
  }
  return rows.size();
}

void MarketMonitor::Loop() {
  int64_t next = 0;  // the first sample is due at once
  std::unique_lock lock(stop_mu_);
  while (running_) {
    if (int64_t now = clock_.NowUnix(); now >= next) {
      next = now + opts_.interval_s;  // intervals run from each sample's start
      lock.unlock();
      auto r = SampleOnce();
      if (!r && log_) log_->Warn("market sample failed", {{"error", r.error().ToString()}});
      lock.lock();
      continue;
    }
    stop_cv_.wait_for(lock, opts_.poll, [&] { return !running_.load(); });
  }
}

}  // namespace dumont::fleet
