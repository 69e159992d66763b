#include <libpq-fe.h>

#include <cstdio>
#include <mutex>

#include "store/db.h"

namespace dumont::store {
namespace {

// '?' -> $1..$n, leaving quoted strings and identifiers alone.
std::string RewritePlaceholders(const std::string& sql) {
  std::string out;
  out.reserve(sql.size() + 8);
  int n = 0;
  char quote = 0;
  for (char c : sql) {
    if (quote) {
      out += c;
      if (c == quote) quote = 0;
      continue;
    }
    if (c == '\'' || c == '"') {
      quote = c;
      out += c;
    } else if (c == '?') {
      out += '$';
      out += std::to_string(++n);
    } else {
      out += c;
    }
  }
  return out;
}

class PgDb final : public Db {
 public:
  PgDb(PGconn* conn, std::string conninfo) : conn_(conn), conninfo_(std::move(conninfo)) {}
  ~PgDb() override { PQfinish(conn_); }

  Result<Rows> Query(const std::string& sql, const std::vector<Value>& params) override {
    std::lock_guard lock(mu_);
    return Run(sql, params, nullptr, /*may_reconnect=*/true);
  }
  Result<int64_t> Exec(const std::string& sql, const std::vector<Value>& params) override {
    std::lock_guard lock(mu_);
    int64_t n = 0;
    auto r = Run(sql, params, &n, true);
    if (!r) return Err(r.error());
    return n;
  }
  Status ExecScript(const std::string& sql) override {
    std::lock_guard lock(mu_);
    return Script(sql, true);
  }
  Status Transaction(const std::function<Status(Conn&)>& fn) override {
    std::lock_guard lock(mu_);
    DUMONT_RETURN_STATUS_IF_ERROR(Script("BEGIN", true));
    LockedConn conn(this);
    Status st = fn(conn);
    if (!st.ok()) {
      (void)Script("ROLLBACK", false);
      return st;
    }
    Status c = Script("COMMIT", false);
    if (!c.ok()) (void)Script("ROLLBACK", false);
    return c;
  }
  std::string Backend() const override { return "postgresql"; }
  Status Ping() override {
    auto r = Query("SELECT 1", {});
    return r ? Status::Ok() : r.error();
  }

 private:
  class LockedConn final : public Conn {
   public:
    explicit LockedConn(PgDb* db) : db_(db) {}
    Result<Rows> Query(const std::string& sql, const std::vector<Value>& params) override {
      return db_->Run(sql, params, nullptr, false);
    }
    Result<int64_t> Exec(const std::string& sql, const std::vector<Value>& params) override {
      int64_t n = 0;
      auto r = db_->Run(sql, params, &n, false);
      if (!r) return Err(r.error());
      return n;
    }
    Status ExecScript(const std::string& sql) override { return db_->Script(sql, false); }

   private:
    PgDb* db_;
  };

  // Reconnects a broken connection outside transactions (a restarted server, a dropped socket).
  bool EnsureConnected(bool may_reconnect) {
    if (PQstatus(conn_) == CONNECTION_OK) return true;
    if (!may_reconnect) return false;
    PQreset(conn_);
    return PQstatus(conn_) == CONNECTION_OK;
  }

  Status ErrorFrom(PGresult* res, const std::string& what) {
    const char* state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : nullptr;
    std::string msg = "postgresql " + what + ": " + (res ? PQresultErrorMessage(res) : PQerrorMessage(conn_));
    while (!msg.empty() && (msg.back() == '\n' || msg.back() == ' ')) msg.pop_back();
    std::string s = state ? state : "";
    if (s == "23505") return Status::AlreadyExists(msg);
    if (s.rfind("23", 0) == 0) return Status::InvalidArgument(msg);
    if (s.rfind("08", 0) == 0 || s == "57P01" || s == "40001" || s == "40P01" ||
        PQstatus(conn_) != CONNECTION_OK) {
      return Status::Unavailable(msg);
    }
    return Status::Internal(msg);
  }

  Status Script(const std::string& sql, bool may_reconnect) {
    if (!EnsureConnected(may_reconnect)) {
      return Status::Unavailable(std::string("postgresql connection lost: ") + PQerrorMessage(conn_));
    }
    PGresult* res = PQexec(conn_, sql.c_str());
    auto st = PQresultStatus(res);
    Status out = (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) ? Status::Ok() : ErrorFrom(res, "exec");
    PQclear(res);
    return out;
  }

  Result<Rows> Run(const std::string& sql, const std::vector<Value>& params, int64_t* affected,
                   bool may_reconnect) {
    if (!EnsureConnected(may_reconnect)) {
      return Err(Status::Unavailable(std::string("postgresql connection lost: ") + PQerrorMessage(conn_)));
    }
    std::string text = RewritePlaceholders(sql);
    std::vector<std::string> storage(params.size());
    std::vector<const char*> values(params.size());
    for (size_t i = 0; i < params.size(); ++i) {
      const Value& v = params[i];
      if (std::holds_alternative<std::nullptr_t>(v)) {
        values[i] = nullptr;
        continue;
      }
      if (auto* n = std::get_if<int64_t>(&v)) storage[i] = std::to_string(*n);
      else if (auto* d = std::get_if<double>(&v)) {
        char buf[64];
        std::snprintf(buf, sizeof buf, "%.17g", *d);
        storage[i] = buf;
      } else storage[i] = std::get<std::string>(v);
      values[i] = storage[i].c_str();
    }
    PGresult* res = PQexecParams(conn_, text.c_str(), static_cast<int>(params.size()), nullptr,
                                 values.data(), nullptr, nullptr, 0);
    auto st = PQresultStatus(res);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
      Status err = ErrorFrom(res, "query");
      PQclear(res);
      return Err(err);
    }
    Rows rows;
    int nrows = PQntuples(res), ncols = PQnfields(res);
    rows.reserve(nrows);
    for (int r = 0; r < nrows; ++r) {
      Row row;
      row.cols.reserve(ncols);
      for (int c = 0; c < ncols; ++c) {
        if (PQgetisnull(res, r, c)) row.cols.emplace_back(std::nullopt);
        else row.cols.emplace_back(std::string(PQgetvalue(res, r, c), PQgetlength(res, r, c)));
      }
      rows.push_back(std::move(row));
    }
    if (affected) {
      const char* n = PQcmdTuples(res);
      *affected = (n && *n) ? std::stoll(n) : 0;
    }
    PQclear(res);
    return rows;
  }

  PGconn* conn_;
  std::string conninfo_;
  std::mutex mu_;
};

}  // namespace

Result<std::unique_ptr<Db>> OpenPostgres(const std::string& conninfo) {
  PGconn* conn = PQconnectdb(conninfo.c_str());
  if (PQstatus(conn) != CONNECTION_OK) {
    std::string msg = PQerrorMessage(conn);
    while (!msg.empty() && (msg.back() == '\n' || msg.back() == ' ')) msg.pop_back();
    PQfinish(conn);
    return Err(Status::Unavailable("cannot connect to PostgreSQL at " + RedactUrl(conninfo) + ": " + msg +
                                   " (check that the server runs and the URL, user and password are right)"));
  }
  // Quiet NOTICE output (e.g. "relation already exists, skipping") on stderr.
  PQsetNoticeProcessor(conn, [](void*, const char*) {}, nullptr);
  return std::unique_ptr<Db>(std::make_unique<PgDb>(conn, conninfo));
}

}  // namespace dumont::store
