// What the HTTP provider clients (vast, runpod, gce) share: exponential backoff with "equal jitter"
// and scrubbing secrets out of messages that came from elsewhere.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <mutex>
#include <random>
#include <string>
#include <string_view>

namespace dumont::provider {

// Attempt n (1-based) waits base * multiplier^(n-1), capped at max, drawn uniformly from [d/2, d],
// so successive waits never shrink. Thread-safe. `seed` 0 = random; `sleep` empty = sleep_for.
class RetryBackoff {
 public:
  RetryBackoff(std::chrono::milliseconds base, double multiplier, std::chrono::milliseconds max, uint64_t seed,
               std::function<void(std::chrono::milliseconds)> sleep);
  std::chrono::milliseconds Delay(int attempt);
  void Sleep(std::chrono::milliseconds d) const;

 private:
  std::chrono::milliseconds base_, max_;
  double multiplier_;
  std::function<void(std::chrono::milliseconds)> sleep_;
  std::mutex mu_;
  std::mt19937_64 rng_;
};

// Replaces every occurrence of `secret` in `s` with `with`; secrets shorter than `min_len` are left
// alone (they would match ordinary text).
std::string ScrubSecret(std::string s, const std::string& secret, std::string_view with, size_t min_len = 4);

}  // namespace dumont::provider
