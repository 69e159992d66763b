#include "auth/throttle.h"

#include <algorithm>

namespace dumont::auth {

void LoginThrottle::Prune(Window& w, int64_t now) const {
  while (!w.empty() && w.front() <= now - window_s_) w.pop_front();
}

int64_t LoginThrottle::RetryAfter(const Window& w, int64_t now) const {
  return std::max<int64_t>(1, w.front() + window_s_ - now);
}

void LoginThrottle::Evict(std::map<std::string, Window>& m, int64_t now) {
  if (m.size() < 100000) return;  // bound memory under address-spraying
  for (auto it = m.begin(); it != m.end();) {
    Prune(it->second, now);
    it = it->second.empty() ? m.erase(it) : std::next(it);
  }
}

Status LoginThrottle::Check(const std::string& account, const std::string& address) {
  std::lock_guard lock(mu_);
  int64_t now = clock_.NowUnix();
  if (auto it = accounts_.find(account); it != accounts_.end()) {
    Prune(it->second, now);
    if (static_cast<int>(it->second.size()) >= max_account_) {
      int64_t after = RetryAfter(it->second, now);
      return Status::ResourceExhausted("too many failed logins for this account; try again in " +
                                           std::to_string(after) + " s",
                                       static_cast<int>(after));
    }
  }
  if (auto it = addresses_.find(address); it != addresses_.end()) {
    Prune(it->second, now);
    if (static_cast<int>(it->second.size()) >= max_address_) {
      int64_t after = RetryAfter(it->second, now);
      return Status::ResourceExhausted("too many failed logins from your address; try again in " +
                                           std::to_string(after) + " s",
                                       static_cast<int>(after));
    }
  }
  return Status::Ok();
}

void LoginThrottle::RecordFailure(const std::string& account, const std::string& address) {
  std::lock_guard lock(mu_);
  int64_t now = clock_.NowUnix();
  Evict(accounts_, now);
  Evict(addresses_, now);
  accounts_[account].push_back(now);
  addresses_[address].push_back(now);
}

void LoginThrottle::RecordSuccess(const std::string& account) {
  std::lock_guard lock(mu_);
  accounts_.erase(account);
}

}  // namespace dumont::auth
