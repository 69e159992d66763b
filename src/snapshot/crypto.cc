#include "snapshot/crypto.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>
#include <argon2.h>
#include <pthread.h>
#include <sodium.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>

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
// Per-thread state for sealing and opening. A 7 GB backup seals ~80k blobs and hashes as many: a
// fresh cipher context, key schedule, HMAC fetch and getrandom call per blob were ~2-4 us each,
// and a syscall alone costs ~1.3 us on the VMs we run on.

std::atomic<uint64_t> g_fork_generation{0};

// 12 random bytes for a GCM nonce, from a per-thread pool refilled 4 KiB at a time (one
// getrandom per ~340 blobs). A forked child never reuses its parent's pool: pthread_atfork bumps
// the generation the pool was filled in. Bytes handed out are wiped from the pool.
void RandomNonce(unsigned char out[12]) {
  static std::once_flag once;
  std::call_once(once, [] { pthread_atfork(nullptr, nullptr, [] { g_fork_generation.fetch_add(1, std::memory_order_relaxed); }); });
  struct Pool {
    unsigned char bytes[4092];
    size_t pos = sizeof bytes;
    uint64_t generation = 0;
    ~Pool() { sodium_memzero(bytes, sizeof bytes); }
  };
  thread_local Pool pool;
  uint64_t gen = g_fork_generation.load(std::memory_order_relaxed);
  if (pool.pos + 12 > sizeof pool.bytes || pool.generation != gen) {
    RandomFill(pool.bytes, sizeof pool.bytes);
    pool.pos = 0;
    pool.generation = gen;
  }
  std::memcpy(out, pool.bytes + pool.pos, 12);
  sodium_memzero(pool.bytes + pool.pos, 12);
  pool.pos += 12;
}

// An AES-256-GCM context per thread and direction, keyed once; each message only sets its nonce.
struct GcmContext {
  EVP_CIPHER_CTX* ctx = nullptr;
  unsigned char key[32] = {};
  bool keyed = false;
  ~GcmContext() {
    EVP_CIPHER_CTX_free(ctx);
    OPENSSL_cleanse(key, sizeof key);
  }
  // The context, keyed with `k` and ready for a message with `nonce`; nullptr if OpenSSL fails.
  EVP_CIPHER_CTX* Start(const uint8_t k[32], const unsigned char* nonce, bool encrypt) {
    if (!ctx && !(ctx = EVP_CIPHER_CTX_new())) return nullptr;
    if (!keyed || CRYPTO_memcmp(key, k, 32) != 0) {
      keyed = false;
      if (EVP_CipherInit_ex(ctx, EVP_aes_256_gcm(), nullptr, k, nullptr, encrypt ? 1 : 0) != 1) return nullptr;
      std::memcpy(key, k, 32);
      keyed = true;
    }
    if (EVP_CipherInit_ex(ctx, nullptr, nullptr, nullptr, nonce, encrypt ? 1 : 0) != 1) {
      keyed = false;  // start from scratch next time
      return nullptr;
    }
    return ctx;
  }
};

void SealAadTo(const uint8_t key[32], std::string_view plaintext, std::string_view aad, char* out) {
  auto* nonce = reinterpret_cast<unsigned char*>(out);
  RandomNonce(nonce);
  thread_local GcmContext gcm;
  EVP_CIPHER_CTX* ctx = gcm.Start(key, nonce, true);
  if (!ctx) std::abort();  // OpenSSL cannot run AES-GCM at all: nothing can be stored safely
  int len = 0;
  auto* dst = reinterpret_cast<unsigned char*>(out + 12);
  if (!aad.empty()) {
    EVP_EncryptUpdate(ctx, nullptr, &len, reinterpret_cast<const unsigned char*>(aad.data()), static_cast<int>(aad.size()));
  }
  EVP_EncryptUpdate(ctx, dst, &len, reinterpret_cast<const unsigned char*>(plaintext.data()), static_cast<int>(plaintext.size()));
  int fin = 0;
  EVP_EncryptFinal_ex(ctx, dst + len, &fin);
  EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, 16, out + 12 + plaintext.size());
}

std::string SealAad(const uint8_t key[32], std::string_view plaintext, std::string_view aad) {
  std::string out(12 + plaintext.size() + 16, '\0');
  SealAadTo(key, plaintext, aad, out.data());
  return out;
}

Status OpenInto(const uint8_t key[32], std::string_view sealed, char* out, std::string_view aad = {}) {
  if (sealed.size() < kSealOverhead) return Status::Corruption("sealed data is too short");
  size_t n = sealed.size() - kSealOverhead;
  thread_local GcmContext gcm;
  EVP_CIPHER_CTX* ctx = gcm.Start(key, reinterpret_cast<const unsigned char*>(sealed.data()), false);
  if (!ctx) return Status::Internal("OpenSSL could not set up AES-256-GCM");
  int len = 0;
  if (!aad.empty()) {
    EVP_DecryptUpdate(ctx, nullptr, &len, reinterpret_cast<const unsigned char*>(aad.data()), static_cast<int>(aad.size()));
  }
  EVP_DecryptUpdate(ctx, reinterpret_cast<unsigned char*>(out), &len,
                    reinterpret_cast<const unsigned char*>(sealed.data() + 12), static_cast<int>(n));
  EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, 16, const_cast<char*>(sealed.data() + 12 + n));
  int fin = 0;
  if (EVP_DecryptFinal_ex(ctx, reinterpret_cast<unsigned char*>(out) + len, &fin) != 1) {
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
  // HMAC-SHA-256 with a per-thread context that keeps the key's inner and outer states: a one-shot
  // HMAC() fetches the algorithm and hashes the key again for every chunk.
  struct Mac {
    EVP_MAC_CTX* ctx = nullptr;
    std::array<uint8_t, 32> key{};
    bool keyed = false;
    ~Mac() {
      EVP_MAC_CTX_free(ctx);
      OPENSSL_cleanse(key.data(), key.size());
    }
  };
  thread_local Mac mac;
  static EVP_MAC* hmac = EVP_MAC_fetch(nullptr, "HMAC", nullptr);
  bool ok = hmac != nullptr;
  if (ok && !mac.ctx) ok = (mac.ctx = EVP_MAC_CTX_new(hmac)) != nullptr;
  if (ok && (!mac.keyed || CRYPTO_memcmp(mac.key.data(), k.mac.data(), 32) != 0)) {
    char digest[] = "SHA256";
    OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0), OSSL_PARAM_construct_end()};
    mac.keyed = ok = EVP_MAC_init(mac.ctx, k.mac.data(), 32, params) == 1;
    if (ok) mac.key = k.mac;
  } else if (ok) {
    ok = EVP_MAC_init(mac.ctx, nullptr, 0, nullptr) == 1;  // same key: restart from its states
  }
  size_t len = 0;
  if (ok) ok = EVP_MAC_update(mac.ctx, reinterpret_cast<const unsigned char*>(data.data()), data.size()) == 1;
  if (ok) ok = EVP_MAC_final(mac.ctx, id.data(), &len, id.size()) == 1 && len == id.size();
  if (!ok) {  // the slow path always works
    mac.keyed = false;
    unsigned int l = 0;
    HMAC(EVP_sha256(), k.mac.data(), 32, reinterpret_cast<const unsigned char*>(data.data()), data.size(), id.data(), &l);
  }
  return id;
}

Id Sha256(std::string_view data) {
  Id id;
  SHA256(reinterpret_cast<const unsigned char*>(data.data()), data.size(), id.data());
  return id;
}

// Two lanes: the same memory and passes as libsodium's "interactive" limits, so the same work for
// anyone guessing passwords, but a two-core machine derives the key in about half the time (RFC 9106
// recommends 4 lanes; 2 is what the small machines we run on have). Tests use the same lane count.
KdfParams DefaultKdfParams(bool fast_for_tests) {
  if (fast_for_tests) return {crypto_pwhash_OPSLIMIT_MIN, 2 * crypto_pwhash_MEMLIMIT_MIN, RandomBytes(16), 2};  // 8 KiB a lane
  return {crypto_pwhash_OPSLIMIT_INTERACTIVE, crypto_pwhash_MEMLIMIT_INTERACTIVE, RandomBytes(16), 2};
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

// Argon2id v1.3 with the Argon2 authors' reference library (so that its memory comes from us). With
// one lane it is exactly libsodium's crypto_pwhash(..., crypto_pwhash_ALG_ARGON2ID13), which made
// the key files of the first repositories (test KdfMatchesLibsodiumsArgon2id); with more, the lanes
// are filled by up to as many threads as this machine has cores (the result does not depend on the
// thread count).
Result<std::array<uint8_t, 32>> DeriveKey(std::string_view password, const KdfParams& p) {
  if (p.salt.size() != crypto_pwhash_SALTBYTES) return Err(Status::Corruption("key file salt has the wrong size"));
  if (p.opslimit < crypto_pwhash_OPSLIMIT_MIN || p.opslimit > crypto_pwhash_OPSLIMIT_MAX ||
      p.memlimit < crypto_pwhash_MEMLIMIT_MIN || p.memlimit > (size_t{1} << 32) || p.lanes < 1 ||
      p.lanes > kMaxKdfLanes || p.memlimit / 1024 < 8 * p.lanes) {
    return Err(Status::Corruption("key file has out-of-range argon2id parameters"));
  }
  if (password.size() > ARGON2_MAX_PWD_LENGTH) return Err(Status::InvalidArgument("the password is too long"));
  std::array<uint8_t, 32> out{};
  argon2_context c{};
  c.out = out.data();
  c.outlen = static_cast<uint32_t>(out.size());
  // Not written to: argon2 only wipes the password with ARGON2_FLAG_CLEAR_PASSWORD, not set here.
  c.pwd = reinterpret_cast<uint8_t*>(const_cast<char*>(password.data()));
  c.pwdlen = static_cast<uint32_t>(password.size());
  c.salt = reinterpret_cast<uint8_t*>(const_cast<char*>(p.salt.data()));
  c.saltlen = static_cast<uint32_t>(p.salt.size());
  c.t_cost = static_cast<uint32_t>(p.opslimit);
  c.m_cost = static_cast<uint32_t>(p.memlimit / 1024);
  c.lanes = p.lanes;
  c.threads = std::clamp<uint32_t>(std::thread::hardware_concurrency(), 1, p.lanes);
  c.version = ARGON2_VERSION_13;
  c.allocate_cbk = Argon2Alloc;
  c.free_cbk = Argon2Free;
  c.flags = ARGON2_DEFAULT_FLAGS;
  int rc = argon2_ctx(&c, Argon2_id);
  if (rc == ARGON2_MEMORY_ALLOCATION_ERROR) {
    return Err(Status::ResourceExhausted("out of memory deriving the repository key", 1));
  }
  if (rc != ARGON2_OK) return Err(Status::Internal(std::string("argon2id failed: ") + argon2_error_message(rc)));
  return out;
}

}  // namespace dumont::snapshot
