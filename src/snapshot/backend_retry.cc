#include "snapshot/backend_retry.h"

#include <algorithm>
#include <random>
#include <thread>
#include <utility>

namespace dumont::snapshot {
namespace {

double DefaultJitter() {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  return std::uniform_real_distribution<double>(0.0, 1.0)(rng);
}

class RetryingBackend final : public Backend {
 public:
  RetryingBackend(std::unique_ptr<Backend> inner, RetryOptions o) : inner_(std::move(inner)), o_(std::move(o)) {
    if (o_.max_attempts < 1) o_.max_attempts = 1;
    if (!o_.sleep) o_.sleep = [](std::chrono::milliseconds d) { std::this_thread::sleep_for(d); };
    if (!o_.jitter) o_.jitter = DefaultJitter;
  }

  std::string Location() const override { return inner_->Location(); }
  int Connections() const override { return inner_->Connections(); }

  Status Create() override {
    return Run([&] { return inner_->Create(); });
  }
  Status Save(const Handle& h, std::string_view data) override {
    return Run([&] { return inner_->Save(h, data); });
  }
  Result<std::string> Load(const Handle& h, int64_t offset, int64_t length) override {
    return Run([&] { return inner_->Load(h, offset, length); });
  }
  Status LoadInto(const Handle& h, int64_t offset, int64_t length, std::string* out) override {
    return Run([&] { return inner_->LoadInto(h, offset, length, out); });
  }
  Result<FileInfo> Stat(const Handle& h) override {
    return Run([&] { return inner_->Stat(h); });
  }
  Status Remove(const Handle& h) override {
    return Run([&] { return inner_->Remove(h); });
  }
  Result<std::vector<FileInfo>> List(FileType t) override {
    return Run([&] { return inner_->List(t); });
  }

 private:
  static const Status& ErrorOf(const Status& s) { return s; }
  template <typename T>
  static const Status& ErrorOf(const Result<T>& r) { return r.error(); }
  static bool Ok(const Status& s) { return s.ok(); }
  template <typename T>
  static bool Ok(const Result<T>& r) { return r.has_value(); }

  static Status Annotated(Status s, const Status& err) { return err; }
  template <typename T>
  static Result<T> Annotated(Result<T>, const Status& err) { return Err(err); }

  template <typename F>
  auto Run(F op) -> decltype(op()) {
    for (int attempt = 1;; ++attempt) {
      auto r = op();
      if (Ok(r)) return r;
      const Status& err = ErrorOf(r);
      if (!err.retryable()) return r;
      if (attempt >= o_.max_attempts) {
        return Annotated(std::move(r), err.Annotate("gave up after " + std::to_string(attempt) + " attempts"));
      }
      auto delay = RetryDelay(o_, attempt, o_.jitter(), err);
      if (o_.on_retry) o_.on_retry(err, attempt, delay);
      o_.sleep(delay);
    }
  }

  std::unique_ptr<Backend> inner_;
  RetryOptions o_;
};

}  // namespace

std::chrono::milliseconds RetryDelay(const RetryOptions& o, int failed_attempt, double jitter, const Status& error) {
  using std::chrono::milliseconds;
  int64_t cap = std::max<int64_t>(0, o.max_delay.count());
  int64_t ceiling = std::max<int64_t>(0, o.base_delay.count());
  for (int i = 1; i < failed_attempt && ceiling < cap; ++i) ceiling *= 2;  // base * 2^(n-1), no overflow
  ceiling = std::min(ceiling, cap);
  jitter = std::clamp(jitter, 0.0, 1.0);
  auto delay = static_cast<int64_t>(static_cast<double>(ceiling) * jitter);
  if (auto ra = error.retry_after_s(); ra && *ra > 0) delay = std::max(delay, std::min<int64_t>(*ra * 1000ll, cap));
  return milliseconds(delay);
}

std::unique_ptr<Backend> WithRetries(std::unique_ptr<Backend> inner, RetryOptions options) {
  return std::make_unique<RetryingBackend>(std::move(inner), std::move(options));
}

void FailingBackend::FailAfter(int64_t skip, int64_t count, Status error) {
  std::lock_guard<std::mutex> l(mu_);
  fail_from_ = ops_.load() + skip + 1;
  fail_count_ = count;
  error_ = std::move(error);
}

Status FailingBackend::Next() {
  int64_t n = ++ops_;
  std::lock_guard<std::mutex> l(mu_);
  if (n >= fail_from_ && (fail_count_ < 0 || n < fail_from_ + fail_count_)) {
    ++failures_;
    return error_.ok() ? Retryable() : error_;
  }
  return Status::Ok();
}

Status FailingBackend::Create() {
  DUMONT_RETURN_STATUS_IF_ERROR(Next());
  return inner_->Create();
}
Status FailingBackend::Save(const Handle& h, std::string_view data) {
  DUMONT_RETURN_STATUS_IF_ERROR(Next());
  return inner_->Save(h, data);
}
Result<std::string> FailingBackend::Load(const Handle& h, int64_t offset, int64_t length) {
  DUMONT_RETURN_IF_ERROR(Next());
  return inner_->Load(h, offset, length);
}
Status FailingBackend::LoadInto(const Handle& h, int64_t offset, int64_t length, std::string* out) {
  DUMONT_RETURN_STATUS_IF_ERROR(Next());
  return inner_->LoadInto(h, offset, length, out);
}
Result<FileInfo> FailingBackend::Stat(const Handle& h) {
  DUMONT_RETURN_IF_ERROR(Next());
  return inner_->Stat(h);
}
Status FailingBackend::Remove(const Handle& h) {
  DUMONT_RETURN_STATUS_IF_ERROR(Next());
  return inner_->Remove(h);
}
Result<std::vector<FileInfo>> FailingBackend::List(FileType t) {
  DUMONT_RETURN_IF_ERROR(Next());
  return inner_->List(t);
}

}  // namespace dumont::snapshot
