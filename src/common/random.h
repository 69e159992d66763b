// Cryptographically secure randomness and identifiers (libsodium's randombytes).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace dumont {

std::string RandomBytes(size_t n);
// Fills out[0, n) with random bytes.
void RandomFill(void* out, size_t n);
std::string HexEncode(std::string_view bytes);
bool HexDecode(std::string_view hex, std::string* out);
// A random identifier: prefix + 20 lowercase base32 characters (100 bits).
std::string NewId(std::string_view prefix);
// URL-safe base64 without padding, as JWT uses.
std::string Base64UrlEncode(std::string_view bytes);
bool Base64UrlDecode(std::string_view text, std::string* out);
// A random password: 20 characters from an unambiguous alphabet.
std::string RandomPassword(size_t length = 20);

}  // namespace dumont
