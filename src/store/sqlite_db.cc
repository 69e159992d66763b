#include <sqlite3.h>

#include <mutex>

#include "store/db.h"

namespace dumont::store {
namespace {

class SqliteDb final : public Db {
 public:
  explicit SqliteDb(sqlite3* db) : db_(db) {}
  ~SqliteDb() override { sqlite3_close_v2(db_); }

  Result<Rows> Query(const std::string& sql, const std::vector<Value>& params) override {
    std::lock_guard lock(mu_);
    return QueryLocked(sql, params, nullptr);
  }
  Result<int64_t> Exec(const std::string& sql, const std::vector<Value>& params) override {
    std::lock_guard lock(mu_);
    int64_t changes = 0;
    auto r = QueryLocked(sql, params, &changes);
    if (!r) return Err(r.error());
    return changes;
  }
  Status ExecScript(const std::string& sql) override {
    std::lock_guard lock(mu_);
    return ExecScriptLocked(sql);
  }
  Status Transaction(const std::function<Status(Conn&)>& fn) override {
    std::lock_guard lock(mu_);
    DUMONT_RETURN_STATUS_IF_ERROR(ExecScriptLocked("BEGIN IMMEDIATE"));
    LockedConn conn(this);
    Status st = fn(conn);
    if (!st.ok()) {
      (void)ExecScriptLocked("ROLLBACK");
      return st;
    }
    Status c = ExecScriptLocked("COMMIT");
    if (!c.ok()) (void)ExecScriptLocked("ROLLBACK");
    return c;
  }
  std::string Backend() const override { return "sqlite"; }
  Status Ping() override {
    auto r = Query("SELECT 1", {});
    return r ? Status::Ok() : r.error();
  }

 private:
  class LockedConn final : public Conn {
   public:
    explicit LockedConn(SqliteDb* db) : db_(db) {}
    Result<Rows> Query(const std::string& sql, const std::vector<Value>& params) override {
      return db_->QueryLocked(sql, params, nullptr);
    }
    Result<int64_t> Exec(const std::string& sql, const std::vector<Value>& params) override {
      int64_t changes = 0;
      auto r = db_->QueryLocked(sql, params, &changes);
      if (!r) return Err(r.error());
      return changes;
    }
    Status ExecScript(const std::string& sql) override { return db_->ExecScriptLocked(sql); }

   private:
    SqliteDb* db_;
  };

  Status Error(int rc, const std::string& what) {
    std::string msg = what + ": " + sqlite3_errmsg(db_);
    int primary = rc & 0xff;
    if (primary == SQLITE_CONSTRAINT) return Status::AlreadyExists(msg);
    if (primary == SQLITE_BUSY || primary == SQLITE_LOCKED) return Status::Unavailable(msg);
    if (primary == SQLITE_CORRUPT || primary == SQLITE_NOTADB) return Status::Corruption(msg);
    if (primary == SQLITE_FULL || primary == SQLITE_IOERR || primary == SQLITE_CANTOPEN ||
        primary == SQLITE_READONLY) {
      return Status::IOError(msg);
    }
    return Status::Internal(msg);
  }

  Status ExecScriptLocked(const std::string& sql) {
    char* err = nullptr;
    int rc = sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &err);
    if (rc != SQLITE_OK) {
      std::string msg = err ? err : sqlite3_errstr(rc);
      sqlite3_free(err);
      return Error(rc, "sqlite: " + msg);
    }
    return Status::Ok();
  }

  Result<Rows> QueryLocked(const std::string& sql, const std::vector<Value>& params, int64_t* changes) {
    sqlite3_stmt* stmt = nullptr;
    int rc = sqlite3_prepare_v2(db_, sql.c_str(), static_cast<int>(sql.size()), &stmt, nullptr);
    if (rc != SQLITE_OK) return Err(Error(rc, "sqlite prepare"));
    struct Finalizer {
      sqlite3_stmt* s;
      ~Finalizer() { sqlite3_finalize(s); }
    } fin{stmt};
    for (size_t i = 0; i < params.size(); ++i) {
      int idx = static_cast<int>(i + 1);
      const Value& v = params[i];
      if (std::holds_alternative<std::nullptr_t>(v)) rc = sqlite3_bind_null(stmt, idx);
      else if (auto* n = std::get_if<int64_t>(&v)) rc = sqlite3_bind_int64(stmt, idx, *n);
      else if (auto* d = std::get_if<double>(&v)) rc = sqlite3_bind_double(stmt, idx, *d);
      else {
        const auto& s = std::get<std::string>(v);
        rc = sqlite3_bind_text(stmt, idx, s.data(), static_cast<int>(s.size()), SQLITE_TRANSIENT);
      }
      if (rc != SQLITE_OK) return Err(Error(rc, "sqlite bind"));
    }
    Rows rows;
    int ncol = sqlite3_column_count(stmt);
    for (;;) {
      rc = sqlite3_step(stmt);
      if (rc == SQLITE_DONE) break;
      if (rc != SQLITE_ROW) return Err(Error(rc, "sqlite step"));
      Row row;
      row.cols.reserve(ncol);
      for (int c = 0; c < ncol; ++c) {
        if (sqlite3_column_type(stmt, c) == SQLITE_NULL) {
          row.cols.emplace_back(std::nullopt);
        } else {
          const auto* text = reinterpret_cast<const char*>(sqlite3_column_text(stmt, c));
          row.cols.emplace_back(std::string(text, sqlite3_column_bytes(stmt, c)));
        }
      }
      rows.push_back(std::move(row));
    }
    if (changes) *changes = sqlite3_changes64(db_);
    return rows;
  }

  sqlite3* db_;
  std::mutex mu_;
};

}  // namespace

Result<std::unique_ptr<Db>> OpenSqlite(const std::string& path) {
  sqlite3* db = nullptr;
  int rc = sqlite3_open_v2(path.c_str(), &db,
                           SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX, nullptr);
  if (rc != SQLITE_OK) {
    std::string msg = db ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
    sqlite3_close_v2(db);
    return Err(Status::IOError("cannot open SQLite database " + path + ": " + msg));
  }
  sqlite3_busy_timeout(db, 5000);
  auto out = std::make_unique<SqliteDb>(db);
  Status st = out->ExecScript(
      "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;");
  if (!st.ok()) return Err(st.Annotate("configuring SQLite database " + path));
  // Fail early on a file that is not a database.
  auto check = out->Query("SELECT count(*) FROM sqlite_master", {});
  if (!check) return Err(check.error().Annotate("reading SQLite database " + path));
  return std::unique_ptr<Db>(std::move(out));
}

}  // namespace dumont::store
