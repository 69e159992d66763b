// AuthService: accounts, sessions (refresh-token families with rotation and reuse detection),
// access tokens (JWT HS256), API keys and login throttling. Thread-safe (state lives in the Store
// and in LoginThrottle).
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "auth/crypto.h"
#include "auth/throttle.h"
#include "common/clock.h"
#include "common/status.h"
#include "store/store.h"

namespace dumont::auth {

struct AuthOptions {
  int64_t access_ttl_s = 24 * 3600;
  int64_t refresh_ttl_s = 30 * 24 * 3600;
  bool allow_signup = true;
  int max_failures_per_account = 5;
  int max_failures_per_address = 20;
  int64_t window_s = 900;
  HashCost hash_cost = HashCost::kInteractive;
};

struct Tokens {
  std::string access_token;
  std::string refresh_token;
  int64_t expires_in = 0;
  std::string session_id;
};

struct Identity {
  std::string user_id;
  std::string email;
  std::string role;
  std::string session_id;  // empty for API keys
  std::string api_key_id;  // empty for JWTs
};

inline constexpr const char* kRoles[] = {"admin", "user", "readonly"};
bool IsRole(const std::string& r);

// Normalises (trim, lower-case) and validates; errors name the field "email".
Result<std::string> NormalizeEmail(std::string_view email);
// Length 10..128 bytes, not the email, not one repeated character, not a well-known password.
Status ValidatePassword(std::string_view password, std::string_view email);

// Reads the HS256 key from path, or creates 32 random bytes there with mode 0600 (O_EXCL, so two
// processes never write different keys). A key file readable by group or others is tightened to 0600.
Result<std::string> LoadOrCreateSigningKey(const std::string& path);

class AuthService {
 public:
  AuthService(store::Store& store, const Clock& clock, std::string signing_key, AuthOptions opts);

  Result<store::User> Register(std::string_view email, std::string_view password,
                               const std::string& role = "user");
  Result<Tokens> Login(std::string_view email, std::string_view password, const std::string& client_address);
  Result<Tokens> Refresh(std::string_view refresh_token);
  // Ends the identity's session (and, if given, the session of refresh_token when it is the user's).
  Status Logout(const Identity& who, std::optional<std::string> refresh_token);
  Result<Identity> Authenticate(std::string_view bearer);

  Result<std::pair<store::ApiKey, std::string>> CreateApiKey(const std::string& user_id, std::string name);
  Result<std::vector<store::ApiKey>> ListApiKeys(const std::string& user_id);
  Status RevokeApiKey(const std::string& user_id, const std::string& key_id);

  Status SetRole(const std::string& user_id, const std::string& role);
  Status ChangePassword(const std::string& user_id, std::string_view current, std::string_view next);

  // On an empty database, creates admin@dumont.local with a random password and returns it (to be
  // shown once); otherwise nullopt.
  Result<std::optional<std::pair<std::string, std::string>>> EnsureInitialAdmin();

  const AuthOptions& options() const { return opts_; }

 private:
  Result<Tokens> IssueSession(const store::User& u);
  std::string AccessToken(const store::User& u, const std::string& session_id);

  store::Store& store_;
  const Clock& clock_;
  std::string key_;
  AuthOptions opts_;
  LoginThrottle throttle_;
  std::string dummy_hash_;  // verified against for unknown emails so timing does not reveal accounts
};

}  // namespace dumont::auth
