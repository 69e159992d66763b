// Login throttling: failed attempts are counted per account and per client address in a sliding
// window; past the limit, Check() returns ResourceExhausted with the seconds until the oldest failure
// leaves the window (-> HTTP 429 with Retry-After). In memory: a restart forgets (documented).
// Thread-safe.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <string>

#include "common/clock.h"
#include "common/status.h"

namespace dumont::auth {

class LoginThrottle {
 public:
  LoginThrottle(const Clock& clock, int max_per_account, int max_per_address, int64_t window_s)
      : clock_(clock), max_account_(max_per_account), max_address_(max_per_address), window_s_(window_s) {}

  Status Check(const std::string& account, const std::string& address);
  void RecordFailure(const std::string& account, const std::string& address);
  void RecordSuccess(const std::string& account);

 private:
  using Window = std::deque<int64_t>;
  void Prune(Window& w, int64_t now) const;
  int64_t RetryAfter(const Window& w, int64_t now) const;
  void Evict(std::map<std::string, Window>& m, int64_t now);

  const Clock& clock_;
  const int max_account_, max_address_;
  const int64_t window_s_;
  std::mutex mu_;
  std::map<std::string, Window> accounts_, addresses_;
};

}  // namespace dumont::auth
