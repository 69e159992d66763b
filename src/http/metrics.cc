#include "http/metrics.h"

#include <cstdio>
#include <sstream>

namespace dumont::http {
namespace {
std::string Escape(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}
std::string Num(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.15g", v);
  return buf;
}
}  // namespace

Metrics::Metrics(std::string version, std::string commit, double start_time_unix)
    : version_(std::move(version)), commit_(std::move(commit)), start_time_(start_time_unix) {}

void Metrics::Observe(const std::string& method, const std::string& route, int status,
                      double seconds) {
  std::lock_guard lock(mu_);
  ++requests_[{method, route, status}];
  auto& h = latency_[{method, route}];
  for (size_t i = 0; i < kBuckets.size(); ++i) {
    if (seconds <= kBuckets[i]) ++h.counts[i];
  }
  ++h.count;
  h.sum += seconds;
}

void Metrics::AddGauge(std::string name, std::string help, std::function<double()> fn) {
  std::lock_guard lock(mu_);
  gauges_[std::move(name)] = Gauge{std::move(help), std::move(fn)};
}

std::string Metrics::Render() const {
  std::ostringstream out;
  std::lock_guard lock(mu_);
  out << "# HELP dumont_build_info Build information; the value is always 1.\n"
      << "# TYPE dumont_build_info gauge\n"
      << "dumont_build_info{version=\"" << Escape(version_) << "\",commit=\"" << Escape(commit_)
      << "\"} 1\n";
  out << "# HELP process_start_time_seconds Start time of the process since the Unix epoch.\n"
      << "# TYPE process_start_time_seconds gauge\n"
      << "process_start_time_seconds " << Num(start_time_) << "\n";
  out << "# HELP dumont_http_requests_total HTTP requests by method, route pattern and status code.\n"
      << "# TYPE dumont_http_requests_total counter\n";
  for (const auto& [key, n] : requests_) {
    const auto& [method, route, code] = key;
    out << "dumont_http_requests_total{method=\"" << Escape(method) << "\",route=\"" << Escape(route)
        << "\",code=\"" << code << "\"} " << n << "\n";
  }
  out << "# HELP dumont_http_request_duration_seconds Time to handle a request, by method and route.\n"
      << "# TYPE dumont_http_request_duration_seconds histogram\n";
  for (const auto& [key, h] : latency_) {
    std::string labels = "method=\"" + Escape(key.first) + "\",route=\"" + Escape(key.second) + "\"";
    for (size_t i = 0; i < kBuckets.size(); ++i) {
      out << "dumont_http_request_duration_seconds_bucket{" << labels << ",le=\"" << Num(kBuckets[i])
          << "\"} " << h.counts[i] << "\n";
    }
    out << "dumont_http_request_duration_seconds_bucket{" << labels << ",le=\"+Inf\"} " << h.count
        << "\n";
    out << "dumont_http_request_duration_seconds_sum{" << labels << "} " << Num(h.sum) << "\n";
    out << "dumont_http_request_duration_seconds_count{" << labels << "} " << h.count << "\n";
  }
  for (const auto& [name, g] : gauges_) {
    out << "# HELP " << name << " " << g.help << "\n# TYPE " << name << " gauge\n"
        << name << " " << Num(g.fn()) << "\n";
  }
  return out.str();
}

}  // namespace dumont::http
