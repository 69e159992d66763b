// Pure decision functions of the fleet controllers: no I/O, no clock of their own. Tests drive the
// 3-minute idle window and the 30-minute release window through them in microseconds.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

namespace dumont::fleet {

// What the control plane knows from an instance's heartbeats (kept in memory).
struct Telemetry {
  int64_t last_heartbeat_ms = 0;
  int64_t idle_since_ms = 0;  // 0 = not idle (some GPU at or above the threshold)
  double max_gpu_util = 0;
  int gpu_count = 0;
};

// Folds one heartbeat into the telemetry. A gap longer than `stale_ms` restarts the idle window:
// time without heartbeats is never counted as idle time.
Telemetry ApplyHeartbeat(const std::optional<Telemetry>& prev, const std::vector<double>& gpu_utils,
                         double threshold_pct, int64_t now_ms, int64_t stale_ms);

struct IdleDecision {
  bool hibernate = false;
  // When to look again (ms since epoch); 0 = no need (busy, no data or hibernation disabled).
  int64_t recheck_at_ms = 0;
};

// Hibernate when every GPU stayed under the threshold for idle_seconds and heartbeats are fresh.
// No telemetry, or a stale heartbeat, is never idleness.
IdleDecision DecideIdle(bool enabled, int64_t idle_seconds, const std::optional<Telemetry>& t, int64_t now_ms,
                        int64_t stale_ms);

// After release_after_seconds hibernated, release what the provider holds (reservations, disks).
bool ShouldRelease(int64_t hibernated_since_s, int64_t release_after_seconds, int64_t now_s, bool released);

}  // namespace dumont::fleet
