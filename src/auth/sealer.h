// Sealer: encryption at rest for secrets the server must be able to use again (provider
// credentials). XChaCha20-Poly1305 (libsodium's crypto_aead_xchacha20poly1305_ietf) with a random
// 192-bit nonce per seal and a 256-bit key kept in a file of the data directory (mode 0600, created
// on first use), never in the database: a stolen database dump alone reveals nothing.
//
// The associated data binds a sealed value to its context (e.g. "owner|provider"), so a row copied to
// another user or provider fails to open instead of leaking a credential across accounts.
#pragma once

#include <string>

#include "common/status.h"

namespace dumont::auth {

class Sealer {
 public:
  // Loads <path>, or creates it with a fresh random key when it does not exist.
  static Result<Sealer> OpenOrCreate(const std::string& path);
  static Sealer FromKey(const std::string& key32);  // tests

  // base64url(nonce || ciphertext || tag)
  std::string Seal(const std::string& plaintext, const std::string& context) const;
  // Corruption when the value was altered, sealed for another context or with another key.
  Result<std::string> Open(const std::string& sealed, const std::string& context) const;

 private:
  explicit Sealer(std::string key) : key_(std::move(key)) {}
  std::string key_;
};

}  // namespace dumont::auth
