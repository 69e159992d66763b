// Password hashing (argon2id via libsodium), token hashing (SHA-256) and JWT HS256 (OpenSSL HMAC).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "common/status.h"

namespace dumont::auth {

enum class HashCost { kFast, kInteractive, kModerate };
bool ParseHashCost(std::string_view s, HashCost* out);

// argon2id, encoded with its parameters and salt (libsodium's crypto_pwhash_str format).
Result<std::string> HashPassword(std::string_view password, HashCost cost);
bool VerifyPassword(std::string_view password, const std::string& encoded);

std::string Sha256Hex(std::string_view data);

// Compact JWS with alg HS256. Sign never fails for a well-formed key.
std::string SignJwt(const nlohmann::json& claims, std::string_view key);
// Verifies structure, header {"alg":"HS256"} (anything else, "none" included, is rejected), the
// signature (constant time) and exp/nbf against now. Returns the claims.
Result<nlohmann::json> VerifyJwt(std::string_view token, std::string_view key, int64_t now_unix);

}  // namespace dumont::auth
