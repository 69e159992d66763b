// The sim provider: machines in memory, for tests and benchmarks. Seeded; boot time, boot failures and
// prices are configurable; time comes from the injected Clock. It does not model preemption: half its
// offers carry a spot price (for the market views), but no sim machine is ever interrupted, so
// Capabilities() declares "spot" unsupported. Sim machines run no agent, so instances on it never
// receive heartbeats unless a test sends them.
#pragma once

#include "common/clock.h"
#include "provider/provider.h"

namespace dumont::provider {

struct SimOptions {
  uint64_t seed = 1;
  double boot_median_s = 0;       // lognormal median; 0 = instant
  double boot_sigma = 0.5;
  double never_boot_rate = 0;     // stays pending forever
  double fail_fast_rate = 0;      // goes to failed right away
  double price_per_hour = 0.50;
  int offers = 8;
};

std::unique_ptr<Provider> NewSimProvider(const SimOptions& opts, const Clock& clock);

}  // namespace dumont::provider
