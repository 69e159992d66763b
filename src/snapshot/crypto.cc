#include "snapshot/crypto.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>
#include <argon2.h>
#include <sodium.h>

#include <array>
#include <cstring>
#include <memory>

#include "common/big_alloc.h"
#include "common/random.h"

namespace dumont::snapshot {

std::string IdHex(const Id& id) {
  return HexEncode(std::string_view(reinterpret_cast<const char*>(id.data()), id.size()));
}

namespace {
// Hex digit values; 0xff for anything else. Trees and index files hold an id per entry, and the
// branchy per-character parse was 5 % of an unchanged re-backup.
constexpr std::array<uint8_t, 256> kHexValue = [] {
  std::array<uint8_t, 256> t{};
  for (auto& v : t) v = 0xff;
  for (int c = 0; c < 10; ++c) t['0' + c] = static_cast<uint8_t>(c);
  for (int c = 0; c < 6; ++c) t['a' + c] = t['A' + c] = static_cast<uint8_t>(10 + c);
  return t;
}();
}  // namespace

bool ParseId(std::string_view hex, Id* out) {
  if (hex.size() != 64) return false;
  Id id;
  uint8_t bad = 0;
  for (size_t i = 0; i < 32; ++i) {
    uint8_t hi = kHexValue[static_cast<unsigned char>(hex[2 * i])];
    uint8_t lo = kHexValue[static_cast<unsigned char>(hex[2 * i + 1])];
    bad |= (hi | lo) & 0xf0;
    id[i] = static_cast<uint8_t>((hi << 4) | (lo & 0x0f));
  }
  if (bad) return false;
  *out = id;
  return true;
}

MasterKey MasterKey::Random() {
  MasterKey k;
  std::string r = RandomBytes(64);
  std::memcpy(k.enc.data(), r.data(), 32);
  std::memcpy(k.mac.data(), r.data() + 32, 32);
  return k;
}

namespace {
struct CtxFree {
  void operator()(EVP_CIPHER_CTX* c) const { EVP_CIPHER_CTX_free(c); }
};

void SealAadTo(const uint8_t key[32], std::string_view plaintext, std::string_view aad, char* out) {
  std::string nonce = RandomBytes(12);
  std::memcpy(out, nonce.data(), 12);
  std::unique_ptr<EVP_CIPHER_CTX, CtxFree> ctx(EVP_CIPHER_CTX_new());
  int len = 0;
  EVP_EncryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, key,
                     reinterpret_cast<const unsigned char*>(nonce.data()));
  auto* dst = reinterpret_cast<unsigned char*>(out + 12);
  if (!aad.empty()) {
    EVP_EncryptUpdate(ctx.get(), nullptr, &len, reinterpret_cast<const unsigned char*>(aad.data()), static_cast<int>(aad.size()));
  }
  EVP_EncryptUpdate(ctx.get(), dst, &len, reinterpret_cast<const unsigned char*>(plaintext.data()),
                    static_cast<int>(plaintext.size()));
  int fin = 0;
  EVP_EncryptFinal_ex(ctx.get(), dst + len, &fin);
  EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_GET_TAG, 16, out + 12 + plaintext.size());
}

std::string SealAad(const uint8_t key[32], std::string_view plaintext, std::string_view aad) {
  std::string out(12 + plaintext.size() + 16, '\0');
  SealAadTo(key, plaintext, aad, out.data());
  return out;
}

Status OpenInto(const uint8_t key[32], std::string_view sealed, char* out, std::string_view aad = {}) {
  if (sealed.size() < kSealOverhead) return Status::Corruption("sealed data is too short");
  size_t n = sealed.size() - kSealOverhead;
  std::unique_ptr<EVP_CIPHER_CTX, CtxFree> ctx(EVP_CIPHER_CTX_new());
  int len = 0;
  EVP_DecryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, key,
                     reinterpret_cast<const unsigned char*>(sealed.data()));
  if (!aad.empty()) {
    EVP_DecryptUpdate(ctx.get(), nullptr, &len, reinterpret_cast<const unsigned char*>(aad.data()), static_cast<int>(aad.size()));
  }
  EVP_DecryptUpdate(ctx.get(), reinterpret_cast<unsigned char*>(out), &len,
                    reinterpret_cast<const unsigned char*>(sealed.data() + 12), static_cast<int>(n));
  EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_TAG, 16, const_cast<char*>(sealed.data() + 12 + n));
  int fin = 0;
  if (EVP_DecryptFinal_ex(ctx.get(), reinterpret_cast<unsigned char*>(out) + len, &fin) != 1) {
    return Status::Corruption("authentication failed (wrong key, or the data is damaged)");
  }
  return Status::Ok();
}

Result<std::string> OpenAad(const uint8_t key[32], std::string_view sealed, std::string_view aad) {
  if (sealed.size() < kSealOverhead) return Err(Status::Corruption("sealed data is too short"));
  std::string out(sealed.size() - kSealOverhead, '\0');
  Status st = OpenInto(key, sealed, out.data(), aad);
  if (!st.ok()) return Err(st);
  return out;
}
}  // namespace

std::string SealWith(const uint8_t key[32], std::string_view plaintext) { return SealAad(key, plaintext, {}); }
Result<std::string> OpenWith(const uint8_t key[32], std::string_view sealed) { return OpenAad(key, sealed, {}); }

Status UnsealInto(const MasterKey& k, std::string_view sealed, char* out, std::string_view aad) {
  return OpenInto(k.enc.data(), sealed, out, aad);
}
void SealTo(const MasterKey& k, std::string_view plaintext, std::string_view aad, char* out) {
  SealAadTo(k.enc.data(), plaintext, aad, out);
}
std::string Seal(const MasterKey& k, std::string_view plaintext, std::string_view aad) {
  return SealAad(k.enc.data(), plaintext, aad);
}
Result<std::string> Unseal(const MasterKey& k, std::string_view sealed, std::string_view aad) {
  return OpenAad(k.enc.data(), sealed, aad);
}

Id ContentId(const MasterKey& k, std::string_view data) {
  Id id;
  unsigned int len = 0;
  HMAC(EVP_sha256(), k.mac.data(), 32, reinterpret_cast<const unsigned char*>(data.data()), data.size(),
       id.data(), &len);
  return id;
}

Id Sha256(std::string_view data) {
  Id id;
  SHA256(reinterpret_cast<const unsigned char*>(data.data()), data.size(), id.data());
  return id;
}

KdfParams DefaultKdfParams(bool fast_for_tests) {
  if (fast_for_tests) return {crypto_pwhash_OPSLIMIT_MIN, crypto_pwhash_MEMLIMIT_MIN, RandomBytes(16)};
  return {crypto_pwhash_OPSLIMIT_INTERACTIVE, crypto_pwhash_MEMLIMIT_INTERACTIVE, RandomBytes(16)};
}

namespace {
// argon2's working memory (64 MiB with the default parameters) on huge pages: on the VMs we run on
// first touching 16k 4 KiB pages cost 0.15-0.25 s, more than the hashing, on every command that
// opens a repository (common/big_alloc.h).
int Argon2Alloc(uint8_t** memory, size_t bytes) {
  *memory = static_cast<uint8_t*>(BigAlloc(bytes));
  return *memory ? 0 : -1;
}
void Argon2Free(uint8_t* memory, size_t bytes) { BigFree(memory, bytes); }
}  // namespace

// Argon2id v1.3, one lane: exactly libsodium's crypto_pwhash(..., crypto_pwhash_ALG_ARGON2ID13),
// which made the key files of existing repositories (test KdfMatchesLibsodiumsArgon2id), computed
// with the Argon2 authors' reference library so that its memory comes from us.
Result<std::array<uint8_t, 32>> DeriveKey(std::string_view password, const KdfParams& p) {
  if (p.salt.size() != crypto_pwhash_SALTBYTES) return Err(Status::Corruption("key file salt has the wrong size"));
  if (p.opslimit < crypto_pwhash_OPSLIMIT_MIN || p.opslimit > crypto_pwhash_OPSLIMIT_MAX ||
      p.memlimit < crypto_pwhash_MEMLIMIT_MIN || p.memlimit > (size_t{1} << 32)) {
    return Err(Status::Corruption("key file has out-of-range argon2id parameters"));
  }
  if (password.size() > ARGON2_MAX_PWD_LENGTH) return Err(Status::InvalidArgument("the password is too long"));
  std::array<uint8_t, 32> out{};
  std::string pw(password);  // argon2 may wipe the password it is given (not with these flags)
  argon2_context c{};
  c.out = out.data();
  c.outlen = static_cast<uint32_t>(out.size());
  c.pwd = reinterpret_cast<uint8_t*>(pw.data());
  c.pwdlen = static_cast<uint32_t>(pw.size());
  c.salt = reinterpret_cast<uint8_t*>(const_cast<char*>(p.salt.data()));
  c.saltlen = static_cast<uint32_t>(p.salt.size());
  c.t_cost = static_cast<uint32_t>(p.opslimit);
  c.m_cost = static_cast<uint32_t>(p.memlimit / 1024);
  c.lanes = 1;
  c.threads = 1;
  c.version = ARGON2_VERSION_13;
  c.allocate_cbk = Argon2Alloc;
  c.free_cbk = Argon2Free;
  c.flags = ARGON2_DEFAULT_FLAGS;
  int rc = argon2_ctx(&c, Argon2_id);
  sodium_memzero(pw.data(), pw.size());
  if (rc == ARGON2_MEMORY_ALLOCATION_ERROR) {
    return Err(Status::ResourceExhausted("out of memory deriving the repository key", 1));
  }
  if (rc != ARGON2_OK) return Err(Status::Internal(std::string("argon2id failed: ") + argon2_error_message(rc)));
  return out;
}

}  // namespace dumont::snapshot
