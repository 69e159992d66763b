// Db: a thin SQL connection abstraction with two drivers, SQLite and PostgreSQL (libpq).
// SQL is written once with '?' placeholders (the PostgreSQL driver rewrites them to $1..$n) and
// with portable types only: TEXT, BIGINT, DOUBLE PRECISION. Values travel as text or NULL.
// Thread-safe: each driver serialises use of its one connection with a mutex; Transaction() holds it
// for the whole callback.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "common/status.h"

namespace dumont::store {

using Value = std::variant<std::nullptr_t, int64_t, double, std::string>;

struct Row {
  std::vector<std::optional<std::string>> cols;
  bool IsNull(size_t i) const { return !cols.at(i).has_value(); }
  std::string Str(size_t i) const { return cols.at(i).value_or(""); }
  int64_t Int(size_t i) const;
  double Real(size_t i) const;
};

using Rows = std::vector<Row>;

// Operations available inside and outside a transaction.
class Conn {
 public:
  virtual ~Conn() = default;
  virtual Result<Rows> Query(const std::string& sql, const std::vector<Value>& params = {}) = 0;
  // Returns the number of rows affected.
  virtual Result<int64_t> Exec(const std::string& sql, const std::vector<Value>& params = {}) = 0;
  // Runs several statements separated by ';' (migrations; no parameters).
  virtual Status ExecScript(const std::string& sql) = 0;
};

class Db : public Conn {
 public:
  // Runs fn inside BEGIN ... COMMIT; rolls back if fn returns an error.
  virtual Status Transaction(const std::function<Status(Conn&)>& fn) = 0;
  virtual std::string Backend() const = 0;  // "sqlite" | "postgresql"
  virtual Status Ping() = 0;
};

// Opens sqlite:///abs/path, sqlite://relative/path, postgresql://... or postgres://...
// Errors name the URL (without its password) and what to check.
Result<std::unique_ptr<Db>> OpenDb(const std::string& url);
Result<std::unique_ptr<Db>> OpenSqlite(const std::string& path);
Result<std::unique_ptr<Db>> OpenPostgres(const std::string& conninfo);

// The URL with any password replaced by ***, for messages and logs.
std::string RedactUrl(const std::string& url);

}  // namespace dumont::store
