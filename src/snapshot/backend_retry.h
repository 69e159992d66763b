// Backend decorators: WithRetries (retry retryable errors with exponential backoff and full jitter)
// and FailingBackend (fault injection for tests).
//
// Every Backend operation is safe to repeat (Save replaces, Remove of a missing object succeeds,
// Create only checks and creates the bucket), so WithRetries retries all of them. Only errors with
// Status::retryable() are retried; the last error is returned annotated with the number of attempts.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>

#include "common/status.h"
#include "snapshot/backend.h"

namespace dumont::snapshot {

struct RetryOptions {
  int max_attempts = 6;                          // including the first; 1 = no retries
  std::chrono::milliseconds base_delay{100};     // the backoff before retry n is in [0, min(cap, base * 2^(n-1))]
  std::chrono::milliseconds max_delay{10000};    // the cap
  // Injectable for tests. sleep: default std::this_thread::sleep_for. jitter: a number in [0, 1]
  // that scales the backoff ("full jitter"); default uniform random. Both must be thread-safe.
  std::function<void(std::chrono::milliseconds)> sleep;
  std::function<double()> jitter;
  // Called before each sleep (for logs/metrics): the failed operation's error, the attempt that
  // failed (1-based), and the delay about to be slept.
  std::function<void(const Status&, int attempt, std::chrono::milliseconds delay)> on_retry;
};

// A server's Retry-After (Status::retry_after_s) raises the delay, up to max_delay.
std::chrono::milliseconds RetryDelay(const RetryOptions& o, int failed_attempt, double jitter,
                                     const Status& error);

std::unique_ptr<Backend> WithRetries(std::unique_ptr<Backend> inner, RetryOptions options = {});

// For tests: passes operations to `inner` except the ones it is told to fail. Operations are numbered
// from 1 in the order they start (Location() and Connections() do not count). Operations number
// fail_from .. fail_from + fail_count - 1 fail with `error` without reaching `inner`
// (fail_count < 0: every operation from fail_from on). Thread-safe.
class FailingBackend final : public Backend {
 public:
  FailingBackend(std::unique_ptr<Backend> inner, int64_t fail_from, int64_t fail_count, Status error)
      : inner_(std::move(inner)), fail_from_(fail_from), fail_count_(fail_count), error_(std::move(error)) {}

  static Status Retryable() { return Status::Unavailable("injected fault: connection reset (retryable)"); }
  static Status Permanent() { return Status::PermissionDenied("injected fault: access denied (permanent)"); }

  // Re-arms: the `count` operations after the next `skip` ones fail with `error`.
  void FailAfter(int64_t skip, int64_t count, Status error);

  int64_t operations() const { return ops_.load(); }  // operations started so far
  int64_t failures() const { return failures_.load(); }  // of which injected failures

  std::string Location() const override { return inner_->Location(); }
  int Connections() const override { return inner_->Connections(); }
  Status Create() override;
  Status Save(const Handle& h, std::string_view data) override;
  Result<std::string> Load(const Handle& h, int64_t offset = 0, int64_t length = 0) override;
  Status LoadInto(const Handle& h, int64_t offset, int64_t length, std::string* out) override;
  Result<FileInfo> Stat(const Handle& h) override;
  Status Remove(const Handle& h) override;
  Result<std::vector<FileInfo>> List(FileType t) override;

 private:
  // The error to inject for the operation starting now, or ok.
  Status Next();

  std::unique_ptr<Backend> inner_;
  std::mutex mu_;  // guards fail_from_, fail_count_, error_
  int64_t fail_from_;
  int64_t fail_count_;
  Status error_;
  std::atomic<int64_t> ops_{0};
  std::atomic<int64_t> failures_{0};
};

}  // namespace dumont::snapshot
