// Clock: the single seam to time. Controllers, token expiry and throttling take a Clock& so tests can
// run hours of policy in microseconds with FakeClock.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>

namespace dumont {

class Clock {
 public:
  using TimePoint = std::chrono::system_clock::time_point;
  virtual ~Clock() = default;
  virtual TimePoint Now() const = 0;
  int64_t NowUnix() const {
    return std::chrono::duration_cast<std::chrono::seconds>(Now().time_since_epoch()).count();
  }
  int64_t NowUnixMillis() const {
    return std::chrono::duration_cast<std::chrono::milliseconds>(Now().time_since_epoch()).count();
  }
};

class RealClock final : public Clock {
 public:
  TimePoint Now() const override { return std::chrono::system_clock::now(); }
};

// Thread-safe fake; time moves only when a test says so.
class FakeClock final : public Clock {
 public:
  explicit FakeClock(int64_t start_unix = 1'700'000'000)
      : micros_(start_unix * 1'000'000) {}
  TimePoint Now() const override {
    return TimePoint(std::chrono::microseconds(micros_.load()));
  }
  void Advance(std::chrono::microseconds d) { micros_ += d.count(); }
  void SetUnix(int64_t unix_s) { micros_ = unix_s * 1'000'000; }

 private:
  std::atomic<int64_t> micros_;
};

}  // namespace dumont
