#include "provider/retry.h"

#include <algorithm>
#include <cmath>
#include <thread>

namespace dumont::provider {

RetryBackoff::RetryBackoff(std::chrono::milliseconds base, double multiplier, std::chrono::milliseconds max,
                           uint64_t seed, std::function<void(std::chrono::milliseconds)> sleep)
    : base_(base), max_(max), multiplier_(multiplier), sleep_(std::move(sleep)), rng_(seed ? seed : std::random_device{}()) {}

std::chrono::milliseconds RetryBackoff::Delay(int attempt) {
  double d = static_cast<double>(base_.count()) * std::pow(multiplier_, attempt - 1);
  d = std::min(d, static_cast<double>(max_.count()));
  std::lock_guard l(mu_);
  std::uniform_real_distribution<double> jitter(d / 2, d);
  return std::chrono::milliseconds(static_cast<int64_t>(std::llround(jitter(rng_))));
}

void RetryBackoff::Sleep(std::chrono::milliseconds d) const {
  if (sleep_) sleep_(d);
  else std::this_thread::sleep_for(d);
}

std::string ScrubSecret(std::string s, const std::string& secret, std::string_view with, size_t min_len) {
  if (secret.size() < min_len) return s;
  for (size_t p = s.find(secret); p != std::string::npos; p = s.find(secret, p + with.size())) {
    s.replace(p, secret.size(), with);
  }
  return s;
}

}  // namespace dumont::provider
