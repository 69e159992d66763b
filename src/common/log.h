// Structured logging: one line per event, as text ("ts level msg k=v ...") or JSON lines.
// Secrets must never be passed as fields; there is no redaction layer to rely on.
// Thread-safe; writes are whole lines.
#pragma once

#include <cstdio>
#include <initializer_list>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace dumont {

enum class LogLevel { kDebug = 0, kInfo, kWarn, kError };
enum class LogFormat { kText, kJson };

bool ParseLogLevel(std::string_view s, LogLevel* out);
bool ParseLogFormat(std::string_view s, LogFormat* out);

using LogField = std::pair<std::string_view, std::string>;

class Logger {
 public:
  explicit Logger(std::FILE* out = stderr, LogLevel level = LogLevel::kInfo,
                  LogFormat format = LogFormat::kText)
      : out_(out), level_(level), format_(format) {}

  void SetLevel(LogLevel l) { level_ = l; }
  void SetFormat(LogFormat f) { format_ = f; }
  bool Enabled(LogLevel l) const { return l >= level_; }

  void Log(LogLevel level, std::string_view msg, std::initializer_list<LogField> fields = {});
  void Debug(std::string_view m, std::initializer_list<LogField> f = {}) { Log(LogLevel::kDebug, m, f); }
  void Info(std::string_view m, std::initializer_list<LogField> f = {}) { Log(LogLevel::kInfo, m, f); }
  void Warn(std::string_view m, std::initializer_list<LogField> f = {}) { Log(LogLevel::kWarn, m, f); }
  void Error(std::string_view m, std::initializer_list<LogField> f = {}) { Log(LogLevel::kError, m, f); }

  // Formats one line without writing it (used by tests).
  std::string Format(LogLevel level, std::string_view msg, std::initializer_list<LogField> fields,
                     std::string_view timestamp) const;

 private:
  std::FILE* out_;
  LogLevel level_;
  LogFormat format_;
  std::mutex mu_;
};

}  // namespace dumont
