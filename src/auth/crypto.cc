#include "auth/crypto.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>
#include <sodium.h>

#include "common/random.h"

namespace dumont::auth {

bool ParseHashCost(std::string_view s, HashCost* out) {
  if (s == "fast") *out = HashCost::kFast;
  else if (s == "interactive") *out = HashCost::kInteractive;
  else if (s == "moderate") *out = HashCost::kModerate;
  else return false;
  return true;
}

Result<std::string> HashPassword(std::string_view password, HashCost cost) {
  if (sodium_init() < 0) return Err(Status::Internal("libsodium failed to initialise"));
  unsigned long long ops = crypto_pwhash_OPSLIMIT_INTERACTIVE;
  size_t mem = crypto_pwhash_MEMLIMIT_INTERACTIVE;
  if (cost == HashCost::kFast) {
    ops = crypto_pwhash_OPSLIMIT_MIN;
    mem = crypto_pwhash_MEMLIMIT_MIN;
  } else if (cost == HashCost::kModerate) {
    ops = crypto_pwhash_OPSLIMIT_MODERATE;
    mem = crypto_pwhash_MEMLIMIT_MODERATE;
  }
  char out[crypto_pwhash_STRBYTES];
  if (crypto_pwhash_str_alg(out, password.data(), password.size(), ops, mem,
                            crypto_pwhash_ALG_ARGON2ID13) != 0) {
    return Err(Status::ResourceExhausted("out of memory while hashing a password", 1));
  }
  return std::string(out);
}

bool VerifyPassword(std::string_view password, const std::string& encoded) {
  if (sodium_init() < 0) return false;
  return crypto_pwhash_str_verify(encoded.c_str(), password.data(), password.size()) == 0;
}

std::string Sha256Hex(std::string_view data) {
  unsigned char md[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(data.data()), data.size(), md);
  return HexEncode(std::string_view(reinterpret_cast<char*>(md), sizeof md));
}

namespace {
std::string Hmac(std::string_view key, std::string_view data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
       reinterpret_cast<const unsigned char*>(data.data()), data.size(), md, &len);
  return std::string(reinterpret_cast<char*>(md), len);
}
}  // namespace

std::string SignJwt(const nlohmann::json& claims, std::string_view key) {
  std::string input = Base64UrlEncode(R"({"alg":"HS256","typ":"JWT"})") + "." +
                      Base64UrlEncode(claims.dump());
  return input + "." + Base64UrlEncode(Hmac(key, input));
}

Result<nlohmann::json> VerifyJwt(std::string_view token, std::string_view key, int64_t now_unix) {
  auto bad = [](const std::string& why) { return Err(Status::Unauthenticated("invalid access token: " + why)); };
  if (token.size() > 8192) return bad("too long");
  auto d1 = token.find('.');
  if (d1 == std::string_view::npos) return bad("not a JWT");
  auto d2 = token.find('.', d1 + 1);
  if (d2 == std::string_view::npos || token.find('.', d2 + 1) != std::string_view::npos) return bad("not a JWT");
  std::string header_raw, payload_raw, sig;
  if (!Base64UrlDecode(token.substr(0, d1), &header_raw) ||
      !Base64UrlDecode(token.substr(d1 + 1, d2 - d1 - 1), &payload_raw) ||
      !Base64UrlDecode(token.substr(d2 + 1), &sig)) {
    return bad("bad encoding");
  }
  auto header = nlohmann::json::parse(header_raw, nullptr, false);
  if (!header.is_object() || !header.contains("alg") || header["alg"] != "HS256") {
    return bad("unsupported algorithm (only HS256 is accepted)");
  }
  std::string expected = Hmac(key, token.substr(0, d2));
  if (sig.size() != expected.size() || CRYPTO_memcmp(sig.data(), expected.data(), sig.size()) != 0) {
    return bad("signature mismatch");
  }
  auto claims = nlohmann::json::parse(payload_raw, nullptr, false);
  if (!claims.is_object()) return bad("claims are not an object");
  if (!claims.contains("exp") || !claims["exp"].is_number_integer()) return bad("no expiry");
  if (claims["exp"].get<int64_t>() <= now_unix) {
    return Err(Status::Unauthenticated("access token expired; refresh it with POST /api/v1/auth/refresh or log in again"));
  }
  if (claims.contains("nbf") && claims["nbf"].is_number_integer() && claims["nbf"].get<int64_t>() > now_unix + 60) {
    return bad("not valid yet");
  }
  if (!claims.contains("sub") || !claims["sub"].is_string()) return bad("no subject");
  return claims;
}

}  // namespace dumont::auth
