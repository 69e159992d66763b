#include "auth/auth_service.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>

#include "common/random.h"

namespace dumont::auth {

bool IsRole(const std::string& r) {
  for (const char* k : kRoles) {
    if (r == k) return true;
  }
  return false;
}

Result<std::string> NormalizeEmail(std::string_view raw) {
  auto bad = [](const std::string& why) { return Err(Status::InvalidField("email", why)); };
  std::string e(raw);
  auto b = e.find_first_not_of(" \t\r\n");
  auto end = e.find_last_not_of(" \t\r\n");
  e = b == std::string::npos ? "" : e.substr(b, end - b + 1);
  std::transform(e.begin(), e.end(), e.begin(), [](unsigned char c) { return std::tolower(c); });
  if (e.empty()) return bad("email is empty; give an address like you@example.com");
  if (e.size() > 254) return bad("email is longer than 254 characters");
  auto at = e.find('@');
  if (at == std::string::npos || e.find('@', at + 1) != std::string::npos) {
    return bad("email '" + e + "' must contain exactly one '@', like you@example.com");
  }
  std::string local = e.substr(0, at), domain = e.substr(at + 1);
  if (local.empty() || local.size() > 64) return bad("the part of the email before '@' must be 1 to 64 characters");
  for (unsigned char c : local) {
    if (c <= 32 || c == 127 || c == '"' || c == '(' || c == ')' || c == ',' || c == ':' || c == ';' ||
        c == '<' || c == '>' || c == '[' || c == ']' || c == '\\') {
      return bad("email '" + e + "' has a character that is not allowed before '@'");
    }
  }
  if (domain.find('.') == std::string::npos) return bad("email domain '" + domain + "' needs a dot, like example.com");
  size_t start = 0;
  while (start <= domain.size()) {
    size_t dot = domain.find('.', start);
    if (dot == std::string::npos) dot = domain.size();
    std::string label = domain.substr(start, dot - start);
    if (label.empty() || label.size() > 63 || label.front() == '-' || label.back() == '-') {
      return bad("email domain '" + domain + "' is not a valid host name");
    }
    for (unsigned char c : label) {
      if (!std::isalnum(c) && c != '-') return bad("email domain '" + domain + "' is not a valid host name");
    }
    start = dot + 1;
  }
  return e;
}

Status ValidatePassword(std::string_view pw, std::string_view email) {
  auto bad = [](const std::string& why) { return Status::InvalidField("password", why); };
  size_t chars = 0;
  for (unsigned char c : pw) chars += (c & 0xC0) != 0x80;  // UTF-8 code points
  if (chars < 10) return bad("password must be at least 10 characters long");
  if (pw.size() > 128) return bad("password must be at most 128 bytes long");
  if (std::all_of(pw.begin(), pw.end(), [&](char c) { return c == pw[0]; })) {
    return bad("password must not be one repeated character");
  }
  std::string lower(pw);
  std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return std::tolower(c); });
  if (!email.empty() && lower == email) return bad("password must not be your email address");
  static const char* kCommon[] = {"password12", "password123", "1234567890", "12345678910", "qwertyuiop",
                                  "0123456789", "password1234", "iloveyou123", "abcdefghij", "letmein123"};
  for (const char* c : kCommon) {
    if (lower == c) return bad("password is on the list of most common passwords; choose another");
  }
  return Status::Ok();
}

Result<std::string> LoadOrCreateSigningKey(const std::string& path) {
  std::error_code ec;
  std::filesystem::create_directories(std::filesystem::path(path).parent_path(), ec);
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd >= 0) {
    std::string hex = HexEncode(RandomBytes(32)) + "\n";
    bool ok = ::write(fd, hex.data(), hex.size()) == static_cast<ssize_t>(hex.size()) && ::fsync(fd) == 0;
    ::close(fd);
    if (!ok) {
      ::unlink(path.c_str());
      return Err(Status::IOError("cannot write signing key " + path));
    }
  } else if (errno != EEXIST) {
    return Err(Status::IOError("cannot create signing key " + path + ": " + std::strerror(errno)));
  }
  struct stat st{};
  if (::stat(path.c_str(), &st) == 0 && (st.st_mode & 077) != 0) ::chmod(path.c_str(), 0600);
  std::ifstream in(path);
  std::string hex;
  std::getline(in, hex);
  std::string key;
  if (!HexDecode(hex, &key) || key.size() < 32) {
    return Err(Status::Corruption("signing key " + path +
                                  " is damaged (expected 64 hex characters); delete it to create a new one "
                                  "(everyone will have to log in again)"));
  }
  return key;
}

AuthService::AuthService(store::Store& store, const Clock& clock, std::string signing_key, AuthOptions opts)
    : store_(store),
      clock_(clock),
      key_(std::move(signing_key)),
      opts_(opts),
      throttle_(clock, opts.max_failures_per_account, opts.max_failures_per_address, opts.window_s) {
  auto h = HashPassword(RandomPassword(16), opts_.hash_cost);
  dummy_hash_ = h ? *h : "";
}

Result<store::User> AuthService::Register(std::string_view email, std::string_view password,
                                          const std::string& role) {
  auto norm = NormalizeEmail(email);
  if (!norm) return Err(norm.error());
  DUMONT_RETURN_IF_ERROR(ValidatePassword(password, *norm));
  if (!IsRole(role)) return Err(Status::InvalidField("role", "role must be admin, user or readonly"));
  auto hash = HashPassword(password, opts_.hash_cost);
  if (!hash) return Err(hash.error());
  store::User u{NewId("usr_"), *norm, *hash, role, clock_.NowUnix()};
  DUMONT_RETURN_IF_ERROR(store_.CreateUser(u));
  return u;
}

std::string AuthService::AccessToken(const store::User& u, const std::string& session_id) {
  int64_t now = clock_.NowUnix();
  nlohmann::json claims = {{"iss", "dumont"}, {"sub", u.id}, {"sid", session_id},
                           {"iat", now},      {"exp", now + opts_.access_ttl_s}, {"jti", NewId("")}};
  return SignJwt(claims, key_);
}

Result<Tokens> AuthService::IssueSession(const store::User& u) {
  int64_t now = clock_.NowUnix();
  std::string refresh = "drt_" + Base64UrlEncode(RandomBytes(32));
  store::Session s{NewId("ses_"), u.id, now, now + opts_.refresh_ttl_s, std::nullopt, ""};
  store::RefreshToken t{Sha256Hex(refresh), s.id, u.id, now, now + opts_.refresh_ttl_s, std::nullopt};
  DUMONT_RETURN_IF_ERROR(store_.CreateSession(s, t));
  return Tokens{AccessToken(u, s.id), refresh, opts_.access_ttl_s, s.id};
}

Result<Tokens> AuthService::Login(std::string_view email, std::string_view password,
                                  const std::string& client_address) {
  std::string account(email.substr(0, 254));
  std::transform(account.begin(), account.end(), account.begin(), [](unsigned char c) { return std::tolower(c); });
  DUMONT_RETURN_IF_ERROR(throttle_.Check(account, client_address));
  auto norm = NormalizeEmail(email);
  auto fail = [&]() {
    throttle_.RecordFailure(account, client_address);
    return Err(Status::Unauthenticated("wrong email or password"));
  };
  if (!norm) return fail();
  auto user = store_.GetUserByEmail(*norm);
  if (!user) {
    if (user.error().code() != Code::kNotFound) return Err(user.error());
    (void)VerifyPassword(password, dummy_hash_);
    return fail();
  }
  if (!VerifyPassword(password, user->password_hash)) return fail();
  throttle_.RecordSuccess(account);
  return IssueSession(*user);
}

Result<Tokens> AuthService::Refresh(std::string_view refresh_token) {
  auto invalid = [](const std::string& why) { return Err(Status::Unauthenticated(why + "; log in again")); };
  if (refresh_token.rfind("drt_", 0) != 0 || refresh_token.size() > 200) return invalid("not a refresh token");
  std::string hash = Sha256Hex(refresh_token);
  auto tok = store_.GetRefreshToken(hash);
  if (!tok) {
    if (tok.error().code() == Code::kNotFound) return invalid("unknown refresh token");
    return Err(tok.error());
  }
  int64_t now = clock_.NowUnix();
  auto session = store_.GetSession(tok->session_id);
  if (!session) return Err(session.error());
  if (session->revoked_at) return invalid("this session has ended (" + session->revoke_reason + ")");
  if (tok->expires_at <= now) return invalid("refresh token expired");
  if (tok->used_at) {
    DUMONT_RETURN_IF_ERROR(store_.RevokeSession(session->id, "refresh token reused", now));
    return invalid("refresh token was already used, so every token of this session has been revoked");
  }
  auto user = store_.GetUser(tok->user_id);
  if (!user) return Err(user.error());
  std::string next = "drt_" + Base64UrlEncode(RandomBytes(32));
  store::RefreshToken nt{Sha256Hex(next), session->id, user->id, now, session->expires_at, std::nullopt};
  auto rotated = store_.RotateRefreshToken(hash, nt, now);
  if (!rotated) return Err(rotated.error());
  if (!*rotated) {  // lost a race with another use of the same token: that is reuse too
    DUMONT_RETURN_IF_ERROR(store_.RevokeSession(session->id, "refresh token reused", now));
    return invalid("refresh token was already used, so every token of this session has been revoked");
  }
  return Tokens{AccessToken(*user, session->id), next, opts_.access_ttl_s, session->id};
}

Status AuthService::Logout(const Identity& who, std::optional<std::string> refresh_token) {
  int64_t now = clock_.NowUnix();
  if (!who.session_id.empty()) DUMONT_RETURN_STATUS_IF_ERROR(store_.RevokeSession(who.session_id, "logged out", now));
  if (refresh_token) {
    auto tok = store_.GetRefreshToken(Sha256Hex(*refresh_token));
    if (tok && tok->user_id == who.user_id) {
      DUMONT_RETURN_STATUS_IF_ERROR(store_.RevokeSession(tok->session_id, "logged out", now));
    }
  }
  return Status::Ok();
}

Result<Identity> AuthService::Authenticate(std::string_view bearer) {
  int64_t now = clock_.NowUnix();
  if (bearer.rfind("dk_", 0) == 0) {
    auto key = store_.GetApiKeyByHash(Sha256Hex(bearer));
    if (!key) {
      if (key.error().code() == Code::kNotFound) return Err(Status::Unauthenticated("unknown API key"));
      return Err(key.error());
    }
    if (key->revoked_at) return Err(Status::Unauthenticated("this API key has been revoked"));
    auto user = store_.GetUser(key->user_id);
    if (!user) return Err(Status::Unauthenticated("the owner of this API key no longer exists"));
    if (!key->last_used_at || *key->last_used_at < now - 60) (void)store_.TouchApiKey(key->id, now);
    return Identity{user->id, user->email, user->role, "", key->id};
  }
  auto claims = VerifyJwt(bearer, key_, now);
  if (!claims) return Err(claims.error());
  std::string sid = claims->value("sid", "");
  auto session = store_.GetSession(sid);
  if (!session) {
    if (session.error().code() == Code::kNotFound) return Err(Status::Unauthenticated("unknown session"));
    return Err(session.error());
  }
  if (session->revoked_at) {
    return Err(Status::Unauthenticated("this session has ended (" + session->revoke_reason + "); log in again"));
  }
  auto user = store_.GetUser((*claims)["sub"].get<std::string>());
  if (!user || user->id != session->user_id) return Err(Status::Unauthenticated("unknown user"));
  return Identity{user->id, user->email, user->role, sid, ""};
}

Result<std::pair<store::ApiKey, std::string>> AuthService::CreateApiKey(const std::string& user_id,
                                                                        std::string name) {
  if (name.empty() || name.size() > 100) {
    return Err(Status::InvalidField("name", "name must be 1 to 100 characters"));
  }
  std::string secret = "dk_" + Base64UrlEncode(RandomBytes(32));
  store::ApiKey k{NewId("key_"), user_id, std::move(name), secret.substr(0, 10), Sha256Hex(secret),
                  clock_.NowUnix(), std::nullopt, std::nullopt};
  DUMONT_RETURN_IF_ERROR(store_.CreateApiKey(k));
  return std::make_pair(k, secret);
}

Result<std::vector<store::ApiKey>> AuthService::ListApiKeys(const std::string& user_id) {
  return store_.ListApiKeys(user_id);
}

Status AuthService::RevokeApiKey(const std::string& user_id, const std::string& key_id) {
  return store_.RevokeApiKey(key_id, user_id, clock_.NowUnix());
}

Status AuthService::SetRole(const std::string& user_id, const std::string& role) {
  if (!IsRole(role)) return Status::InvalidField("role", "role must be admin, user or readonly");
  return store_.SetUserRole(user_id, role);
}

Status AuthService::ChangePassword(const std::string& user_id, std::string_view current, std::string_view next) {
  auto user = store_.GetUser(user_id);
  if (!user) return user.error();
  if (!VerifyPassword(current, user->password_hash)) {
    return Status::InvalidField("current_password", "current_password is wrong");
  }
  Status st = ValidatePassword(next, user->email);
  if (!st.ok()) return Status::InvalidField("new_password", st.message());
  auto hash = HashPassword(next, opts_.hash_cost);
  if (!hash) return hash.error();
  DUMONT_RETURN_STATUS_IF_ERROR(store_.SetUserPassword(user_id, *hash));
  return store_.RevokeUserSessions(user_id, "password changed", clock_.NowUnix());
}

Result<std::optional<std::pair<std::string, std::string>>> AuthService::EnsureInitialAdmin() {
  auto n = store_.CountUsers();
  if (!n) return Err(n.error());
  if (*n > 0) return std::optional<std::pair<std::string, std::string>>();
  std::string password = RandomPassword(20);
  auto u = Register("admin@dumont.local", password, "admin");
  if (!u) {
    if (u.error().code() == Code::kAlreadyExists) return std::optional<std::pair<std::string, std::string>>();
    return Err(u.error());
  }
  return std::optional<std::pair<std::string, std::string>>(std::make_pair(u->email, password));
}

}  // namespace dumont::auth
