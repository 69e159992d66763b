// Status and Result<T>: the one error type of the codebase (leveldb style).
// A Status is cheap when ok, carries a code, a human message that says what went wrong and what to do,
// whether a retry can help, and optionally the request field at fault and a retry-after hint.
// No exceptions cross layer boundaries; functions that produce a value return Result<T>.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include <tl/expected.hpp>

namespace dumont {

enum class Code {
  kOk = 0,
  kInvalidArgument,     // the caller sent something wrong; retrying the same input will not help
  kNotFound,            // it does not exist, or the caller may not know that it does
  kAlreadyExists,
  kUnauthenticated,     // no or bad credentials
  kPermissionDenied,    // credentials fine, action not allowed
  kResourceExhausted,   // rate limits, quotas; retry later
  kPayloadTooLarge,
  kFailedPrecondition,  // the system is not in a state that allows it (e.g. newer schema)
  kConflict,
  kUnavailable,         // a dependency is down; retryable
  kDeadlineExceeded,
  kCorruption,          // stored data is damaged
  kIOError,
  kUnimplemented,
  kInternal,
};

std::string_view CodeName(Code code);  // "invalid_argument", ...

class [[nodiscard]] Status {
 public:
  Status() = default;  // ok
  Status(Code code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return Status(); }
  static Status InvalidArgument(std::string msg) { return {Code::kInvalidArgument, std::move(msg)}; }
  static Status InvalidField(std::string field, std::string msg) {
    Status s(Code::kInvalidArgument, std::move(msg));
    s.field_ = std::move(field);
    return s;
  }
  static Status NotFound(std::string msg) { return {Code::kNotFound, std::move(msg)}; }
  static Status AlreadyExists(std::string msg) { return {Code::kAlreadyExists, std::move(msg)}; }
  static Status Unauthenticated(std::string msg) { return {Code::kUnauthenticated, std::move(msg)}; }
  static Status PermissionDenied(std::string msg) { return {Code::kPermissionDenied, std::move(msg)}; }
  static Status ResourceExhausted(std::string msg, int retry_after_s) {
    Status s(Code::kResourceExhausted, std::move(msg));
    s.retry_after_s_ = retry_after_s;
    return s;
  }
  static Status PayloadTooLarge(std::string msg) { return {Code::kPayloadTooLarge, std::move(msg)}; }
  static Status FailedPrecondition(std::string msg) {
    return {Code::kFailedPrecondition, std::move(msg)};
  }
  static Status Conflict(std::string msg) { return {Code::kConflict, std::move(msg)}; }
  static Status Unavailable(std::string msg) { return {Code::kUnavailable, std::move(msg)}; }
  static Status DeadlineExceeded(std::string msg) { return {Code::kDeadlineExceeded, std::move(msg)}; }
  static Status Corruption(std::string msg) { return {Code::kCorruption, std::move(msg)}; }
  static Status IOError(std::string msg) { return {Code::kIOError, std::move(msg)}; }
  static Status Unimplemented(std::string msg) { return {Code::kUnimplemented, std::move(msg)}; }
  static Status Internal(std::string msg) { return {Code::kInternal, std::move(msg)}; }

  bool ok() const { return code_ == Code::kOk; }
  Code code() const { return code_; }
  const std::string& message() const { return message_; }
  const std::optional<std::string>& field() const { return field_; }
  std::optional<int> retry_after_s() const { return retry_after_s_; }

  // Whether trying the same operation again later can succeed.
  bool retryable() const {
    return code_ == Code::kUnavailable || code_ == Code::kResourceExhausted ||
           code_ == Code::kDeadlineExceeded || code_ == Code::kIOError;
  }

  // Prefixes context: Status::IOError("disk full").Annotate("writing pack 1a2b") ->
  // "writing pack 1a2b: disk full".
  Status Annotate(std::string_view context) const {
    Status s = *this;
    s.message_ = std::string(context) + ": " + message_;
    return s;
  }

  std::string ToString() const;

 private:
  Code code_ = Code::kOk;
  std::string message_;
  std::optional<std::string> field_;
  std::optional<int> retry_after_s_;
};

template <typename T>
using Result = tl::expected<T, Status>;

inline tl::unexpected<Status> Err(Status s) { return tl::unexpected<Status>(std::move(s)); }

}  // namespace dumont

#define DUMONT_RETURN_IF_ERROR(expr)          \
  do {                                        \
    ::dumont::Status _st = (expr);            \
    if (!_st.ok()) return ::dumont::Err(_st); \
  } while (0)

// For functions that return Status rather than Result<T>.
#define DUMONT_RETURN_STATUS_IF_ERROR(expr) \
  do {                                      \
    ::dumont::Status _st = (expr);          \
    if (!_st.ok()) return _st;              \
  } while (0)
