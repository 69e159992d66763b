// HTTP metrics in Prometheus text format: request counts by method, route pattern and status code,
// latency histograms by method and route, build info and process start time.
// Route labels are patterns ("/api/v1/auth/api-keys/{id}") or "unmatched", so cardinality is bounded.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <tuple>

namespace dumont::http {

class Metrics {
 public:
  Metrics(std::string version, std::string commit, double start_time_unix);
  void Observe(const std::string& method, const std::string& route, int status, double seconds);
  // Extra gauges rendered on every scrape (name, help, value).
  void AddGauge(std::string name, std::string help, std::function<double()> fn);
  std::string Render() const;

  static constexpr std::array<double, 12> kBuckets = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                                      0.05,   0.1,   0.25,   0.5,   1.0,  2.5};

 private:
  struct Histogram {
    std::array<uint64_t, kBuckets.size()> counts{};
    uint64_t count = 0;
    double sum = 0;
  };
  std::string version_, commit_;
  double start_time_;
  mutable std::mutex mu_;
  std::map<std::tuple<std::string, std::string, int>, uint64_t> requests_;
  std::map<std::pair<std::string, std::string>, Histogram> latency_;
  struct Gauge {
    std::string help;
    std::function<double()> fn;
  };
  std::map<std::string, Gauge> gauges_;
};

}  // namespace dumont::http
