#include "fleet/decide.h"

#include <algorithm>

namespace dumont::fleet {

Telemetry ApplyHeartbeat(const std::optional<Telemetry>& prev, const std::vector<double>& gpu_utils,
                         double threshold_pct, int64_t now_ms, int64_t stale_ms) {
  Telemetry t;
  t.last_heartbeat_ms = now_ms;
  t.gpu_count = static_cast<int>(gpu_utils.size());
  t.max_gpu_util = gpu_utils.empty() ? 0 : *std::max_element(gpu_utils.begin(), gpu_utils.end());
  bool idle = !gpu_utils.empty() && t.max_gpu_util < threshold_pct;
  bool continuous = prev && prev->last_heartbeat_ms > 0 && now_ms - prev->last_heartbeat_ms <= stale_ms;
  if (!idle) t.idle_since_ms = 0;
  else if (continuous && prev->idle_since_ms > 0) t.idle_since_ms = prev->idle_since_ms;
  else t.idle_since_ms = now_ms;
  return t;
}

IdleDecision DecideIdle(bool enabled, int64_t idle_seconds, const std::optional<Telemetry>& t, int64_t now_ms,
                        int64_t stale_ms) {
  IdleDecision d;
  if (!enabled || !t || t->idle_since_ms == 0) return d;
  if (now_ms - t->last_heartbeat_ms > stale_ms) return d;  // silence is not idleness
  int64_t due = t->idle_since_ms + idle_seconds * 1000;
  if (now_ms >= due) {
    d.hibernate = true;
  } else {
    d.recheck_at_ms = due;
  }
  return d;
}

bool ShouldRelease(int64_t since_s, int64_t release_after_seconds, int64_t now_s, bool released) {
  return !released && now_s - since_s >= release_after_seconds;
}

}  // namespace dumont::fleet
