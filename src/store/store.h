// Store: the persistence interface of dumontd, one repository per aggregate. SqlStore implements it
// once over Db, so SQLite and PostgreSQL run the same statements; the conformance suite
// (store_conformance_test.cc) runs on both.
//
// Errors: NotFound when a row does not exist (or is not the caller's), AlreadyExists on unique
// violations, Unavailable when the database is away (retryable), FailedPrecondition when the schema
// is newer than this binary.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "store/db.h"

namespace dumont::store {

struct User {
  std::string id;
  std::string email;  // normalised lower-case
  std::string password_hash;
  std::string role;  // admin | user | readonly
  int64_t created_at = 0;
};

// A login session = one refresh-token family. Revoking it ends every token of the family, and the
// access tokens that carry its id.
struct Session {
  std::string id;
  std::string user_id;
  int64_t created_at = 0;
  int64_t expires_at = 0;
  std::optional<int64_t> revoked_at;
  std::string revoke_reason;
};

struct RefreshToken {
  std::string token_hash;  // SHA-256 hex of the token; the token itself is never stored
  std::string session_id;
  std::string user_id;
  int64_t issued_at = 0;
  int64_t expires_at = 0;
  std::optional<int64_t> used_at;
};

struct ApiKey {
  std::string id;
  std::string user_id;
  std::string name;
  std::string prefix;    // first characters, shown in listings
  std::string key_hash;  // SHA-256 hex
  int64_t created_at = 0;
  std::optional<int64_t> last_used_at;
  std::optional<int64_t> revoked_at;
};

class Store {
 public:
  virtual ~Store() = default;

  virtual std::string Backend() const = 0;
  virtual Status Ping() = 0;
  virtual Result<int64_t> SchemaVersion() = 0;

  // Users
  virtual Status CreateUser(const User& u) = 0;
  virtual Result<User> GetUser(const std::string& id) = 0;
  virtual Result<User> GetUserByEmail(const std::string& email) = 0;
  virtual Result<std::vector<User>> ListUsers() = 0;
  virtual Result<int64_t> CountUsers() = 0;
  virtual Status SetUserRole(const std::string& id, const std::string& role) = 0;
  virtual Status SetUserPassword(const std::string& id, const std::string& hash) = 0;

  // Sessions and refresh tokens
  virtual Status CreateSession(const Session& s, const RefreshToken& first) = 0;
  virtual Result<Session> GetSession(const std::string& id) = 0;
  virtual Status RevokeSession(const std::string& id, const std::string& reason, int64_t now) = 0;
  virtual Status RevokeUserSessions(const std::string& user_id, const std::string& reason, int64_t now) = 0;
  virtual Result<RefreshToken> GetRefreshToken(const std::string& token_hash) = 0;
  // Atomically marks old_hash used and inserts next. Returns false (and changes nothing) if old_hash
  // was already used: the caller treats that as replay.
  virtual Result<bool> RotateRefreshToken(const std::string& old_hash, const RefreshToken& next,
                                          int64_t now) = 0;

  // API keys (owned by one user)
  virtual Status CreateApiKey(const ApiKey& k) = 0;
  virtual Result<std::vector<ApiKey>> ListApiKeys(const std::string& user_id) = 0;
  virtual Result<ApiKey> GetApiKeyByHash(const std::string& key_hash) = 0;
  // NotFound unless the key exists, is active and belongs to user_id.
  virtual Status RevokeApiKey(const std::string& id, const std::string& user_id, int64_t now) = 0;
  virtual Status TouchApiKey(const std::string& id, int64_t now) = 0;

  // Small key/value facts about the installation.
  virtual Result<std::optional<std::string>> GetMeta(const std::string& key) = 0;
  virtual Status SetMeta(const std::string& key, const std::string& value) = 0;
};

struct Migration {
  int64_t version;
  std::string name;
  std::string sql;  // portable SQL, statements separated by ';'
};
const std::vector<Migration>& Migrations();
int64_t LatestSchemaVersion();

// Opens the database at url, applies pending migrations, refuses a newer schema.
Result<std::unique_ptr<Store>> OpenStore(const std::string& url, int64_t now_unix);
Result<std::unique_ptr<Store>> OpenStoreOnDb(std::unique_ptr<Db> db, int64_t now_unix);

}  // namespace dumont::store
