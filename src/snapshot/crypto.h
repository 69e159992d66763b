// Repository cryptography. Every stored file and every blob is sealed with AES-256-GCM
// (nonce(12) || ciphertext || tag(16)) under the repository master key; content ids are
// HMAC-SHA-256 under a separate id key, so the storage provider cannot confirm that a known file is
// stored. The master key is wrapped by an argon2id-derived key in each key file.
#pragma once

#include <array>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <string_view>

#include "common/status.h"

namespace dumont::snapshot {

using Id = std::array<uint8_t, 32>;
std::string IdHex(const Id& id);
bool ParseId(std::string_view hex, Id* out);
struct IdHash {
  size_t operator()(const Id& id) const {
    size_t h;
    std::memcpy(&h, id.data(), sizeof h);
    return h;
  }
};

struct MasterKey {
  std::array<uint8_t, 32> enc{};  // AES-256-GCM
  std::array<uint8_t, 32> mac{};  // HMAC-SHA-256 for content ids
  static MasterKey Random();
};

inline constexpr size_t kSealOverhead = 12 + 16;

// `aad` (associated data) is authenticated with the ciphertext but not stored: unsealing needs the
// same bytes. An empty aad is the same as none, so files sealed without it open with "".
std::string Seal(const MasterKey& k, std::string_view plaintext, std::string_view aad = {});
// The same into out[0, plaintext.size() + kSealOverhead) (the backup seals into a reused buffer).
void SealTo(const MasterKey& k, std::string_view plaintext, std::string_view aad, char* out);
// Corruption when the tag does not verify (wrong key or aad, damaged or truncated data).
Result<std::string> Unseal(const MasterKey& k, std::string_view sealed, std::string_view aad = {});
// Same into `out`, which holds sealed.size() - kSealOverhead bytes (restore reuses its buffers
// instead of allocating and zero-filling one per blob).
Status UnsealInto(const MasterKey& k, std::string_view sealed, char* out, std::string_view aad = {});
// Same with a raw 32-byte key (key files).
std::string SealWith(const uint8_t key[32], std::string_view plaintext);
Result<std::string> OpenWith(const uint8_t key[32], std::string_view sealed);

Id ContentId(const MasterKey& k, std::string_view data);
Id Sha256(std::string_view data);

struct KdfParams {
  uint64_t opslimit;
  uint64_t memlimit;
  std::string salt;    // 16 bytes
  uint32_t lanes = 1;  // argon2 parallelism; key files without "lanes" (written before it) use 1
};
inline constexpr uint32_t kMaxKdfLanes = 16;
KdfParams DefaultKdfParams(bool fast_for_tests);
Result<std::array<uint8_t, 32>> DeriveKey(std::string_view password, const KdfParams& p);

}  // namespace dumont::snapshot
