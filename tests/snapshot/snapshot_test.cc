// The snapshot engine: chunker, compression, crypto, the backend contract on mem and local, and the
// repository end to end (backup, incremental, restore fidelity, corruption, hostile manifests, crash
// safety, retention and prune).
#include <fcntl.h>
#include <sys/wait.h>
#include <openssl/hmac.h>
#include <linux/io_uring.h>
#include <sys/syscall.h>
#include <sys/stat.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <set>
#include <thread>

#include <gtest/gtest.h>
#include <sodium.h>
#include <argon2.h>
#include <zstd.h>

#include "common/random.h"
#include "snapshot/archiver.h"
#include "snapshot/backend_retry.h"
#include "snapshot/chunker.h"
#include "snapshot/compress.h"
#include "snapshot/crypto.h"
#include "snapshot/maintenance.h"
#include "snapshot/repository.h"
#include "snapshot/restorer.h"
#include "snapshot/backend_s3.h"
#include "snapshot/rgw_env.h"
#include "snapshot/tree.h"
#include "test_util.h"

namespace dumont::snapshot {
namespace {

namespace fs = std::filesystem;
using testing::TempDir;

std::string RandomData(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::string s(n, '\0');
  for (size_t i = 0; i + 8 <= n; i += 8) {
    uint64_t v = rng();
    std::memcpy(s.data() + i, &v, 8);
  }
  return s;
}

// Restores the latest snapshot of `repo` into `target`.
Result<RestoreSummary> RestoreLatest(Repository& repo, const std::string& target) {
  auto snap = repo.FindSnapshot("latest");
  if (!snap) return Err(snap.error());
  RestoreOptions ro;
  ro.target = target;
  return Restore(repo, snap->second.tree, ro);
}

void WriteFile(const std::string& path, const std::string& data) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream(path, std::ios::binary) << data;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

std::vector<std::string> Chunks(const Chunker& c, const std::string& data) {
  std::vector<std::string> out;
  size_t pos = 0;
  while (pos < data.size()) {
    size_t n = c.Cut(reinterpret_cast<const uint8_t*>(data.data() + pos), data.size() - pos);
    out.push_back(data.substr(pos, n));
    pos += n;
  }
  return out;
}

TEST(Chunker, BoundsAndDeterminism) {
  ChunkerParams p{64 * 1024, 16, 512 * 1024};
  Chunker c(p, 42);
  std::string data = RandomData(8 << 20, 1);
  auto chunks = Chunks(c, data);
  size_t total = 0;
  for (size_t i = 0; i < chunks.size(); ++i) {
    total += chunks[i].size();
    if (i + 1 < chunks.size()) {
      EXPECT_GE(chunks[i].size(), p.min_size);
      EXPECT_LE(chunks[i].size(), p.max_size);
    }
  }
  EXPECT_EQ(total, data.size());
  double avg = static_cast<double>(data.size()) / chunks.size();
  EXPECT_GT(avg, 64 * 1024 * 1.2);
  EXPECT_LT(avg, 256 * 1024);
  EXPECT_EQ(Chunks(c, data), chunks);
  // Another seed cuts elsewhere (boundaries do not fingerprint content across repositories).
  EXPECT_NE(Chunks(Chunker(p, 43), data), chunks);
}

// The chunker's boundaries are part of the format (dedup against existing snapshots depends on
// them): Cut must stay exactly the byte-at-a-time gear hash with normalized masks, written out
// here independently, for every kind of data, odd parameters and any length. (A four-bytes-a-step
// scan was tried and was slower: the compiler already makes each step one LEA.)
TEST(Chunker, CutsExactlyWhereTheByteAtATimeGearHashDoes) {
  auto reference = [](const ChunkerParams& p, uint64_t seed, const uint8_t* d, size_t n) -> size_t {
    uint64_t gear[256], x = seed;
    for (auto& g : gear) {
      uint64_t z = (x += 0x9E3779B97F4A7C15ULL);
      z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
      z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
      g = z ^ (z >> 31);
    }
    uint64_t small = ~0ULL << (64 - (p.avg_bits + 2)), large = ~0ULL << (64 - (p.avg_bits - 2));
    if (n <= p.min_size) return n;
    size_t end = std::min(n, p.max_size), normal = std::min(end, size_t{1} << p.avg_bits);
    uint64_t fp = 0;
    for (size_t j = p.min_size - 64; j < p.min_size; ++j) fp = (fp << 1) + gear[d[j]];
    for (size_t i = p.min_size; i < end; ++i) {
      fp = (fp << 1) + gear[d[i]];
      if (!(fp & (i < normal ? small : large))) return i + 1;
    }
    return end;
  };
  std::string text;
  for (int i = 0; text.size() < (3 << 20); ++i) text += "row " + std::to_string(i * 7919 % 100003) + ",0.5,abc\n";
  std::vector<std::string> inputs = {RandomData(5 << 20, 11), text, std::string(3 << 20, '\0'),
                                     RandomData(777777, 12) + std::string(600000, 'x')};
  for (const ChunkerParams& p : {ChunkerParams{64 * 1024, 16, 512 * 1024}, ChunkerParams{16 * 1024 + 3, 13, 100001},
                                 ChunkerParams{512 * 1024, 20, 8 * 1024 * 1024}}) {
    for (uint64_t seed : {1ULL, 0xdeadbeefULL}) {
      Chunker c(p, seed);
      for (const auto& in : inputs) {
        const auto* d = reinterpret_cast<const uint8_t*>(in.data());
        size_t cuts = 0;
        for (size_t pos = 0; pos < in.size(); ++cuts) {
          size_t n = in.size() - pos;
          size_t want = reference(p, seed, d + pos, n);
          ASSERT_EQ(c.Cut(d + pos, n), want) << "at " << pos << " of " << in.size() << ", min " << p.min_size;
          // Inputs that end early (at EOF) cut where the reference does too.
          if (n > p.min_size + 5) {
            ASSERT_EQ(c.Cut(d + pos, n - 3), reference(p, seed, d + pos, n - 3));
          }
          pos += want;
        }
        EXPECT_GT(cuts, 0u);
      }
    }
  }
}

TEST(Chunker, AnInsertOnlyShiftsNearbyChunks) {
  ChunkerParams p{16 * 1024, 14, 128 * 1024};
  Chunker c(p, 7);
  std::string data = RandomData(4 << 20, 2);
  auto before = Chunks(c, data);
  std::string edited = data;
  edited.insert(data.size() / 2, "some inserted bytes");
  auto after = Chunks(c, edited);
  std::set<std::string> old_set(before.begin(), before.end());
  size_t shared = 0;
  for (const auto& ch : after) shared += old_set.count(ch);
  EXPECT_GE(shared + 3, before.size()) << "an insert changed more than the chunks around it";
}

TEST(Compression, RoundTripsAndStoresIncompressibleRaw) {
  std::string text;
  for (int i = 0; i < 20000; ++i) text += "line " + std::to_string(i) + " of a training log\n";
  for (auto mode : {CompressionMode::kAuto, CompressionMode::kZstd, CompressionMode::kLz4}) {
    Compression used;
    std::string c = Compress(text, mode, &used);
    EXPECT_NE(used, Compression::kNone);
    EXPECT_LT(c.size(), text.size() / 3);
    EXPECT_EQ(*Decompress(c, used, text.size()), text);
  }
  std::string random = RandomData(1 << 20, 3);
  EXPECT_GT(SampleEntropy(random), 7.9);
  Compression used;
  std::string stored = Compress(random, CompressionMode::kAuto, &used);
  EXPECT_EQ(used, Compression::kNone);
  EXPECT_EQ(stored, random);
  Compression off;
  Compress(text, CompressionMode::kOff, &off);
  EXPECT_EQ(off, Compression::kNone);
  EXPECT_FALSE(Decompress("garbage!", Compression::kZstd, 100));
  EXPECT_FALSE(Decompress("garbage!", Compression::kLz4, 100));
}

// Model weights: random mantissas, exponents in a narrow range. Grouping the bytes by lane lets
// zstd compress the exponent bytes; plain zstd saw interleaved random bytes.
TEST(Compression, WeightsAreGroupedByByteLaneAndRoundTripExactly) {
  std::mt19937_64 rng(11);
  auto fp16 = [&](size_t n) {  // sign random, exponent 12..15 of 0..31, mantissa random
    std::string out;
    for (size_t i = 0; i < n; ++i) {
      uint16_t v = static_cast<uint16_t>((rng() & 0x8000) | ((12 + rng() % 4) << 10) | (rng() & 0x3ff));
      out.push_back(static_cast<char>(v & 0xff));
      out.push_back(static_cast<char>(v >> 8));
    }
    return out;
  };
  auto fp32 = [&](size_t n) {  // exponent 120..123 of 0..255, mantissa random
    std::string out;
    for (size_t i = 0; i < n; ++i) {
      uint32_t v = static_cast<uint32_t>((rng() & 0x80000000u) | ((120 + rng() % 4) << 23) | (rng() & 0x7fffff));
      for (int b = 0; b < 4; ++b) out.push_back(static_cast<char>(v >> (8 * b)));
    }
    return out;
  };
  struct Case {
    std::string data;
    Compression want;
    double max_ratio;
  };
  std::vector<Case> cases = {{fp16(300000) + "x", Compression::kZstdShuffle2, 0.85},     // odd length: one byte left over
                             {fp32(150000) + "abc", Compression::kZstdShuffle4, 0.85}};  // three left over
  for (auto& c : cases) {
    Compression used;
    std::string stored = Compress(c.data, CompressionMode::kAuto, &used);
    EXPECT_EQ(static_cast<int>(used), static_cast<int>(c.want));
    // Plain zstd leaves such data at ~0.9 of its size (the byte histogram mixes exponents with
    // random mantissa bytes); grouped, the exponent lanes compress.
    EXPECT_LT(static_cast<double>(stored.size()) / c.data.size(), c.max_ratio);
    auto back = Decompress(stored, used, c.data.size());
    ASSERT_TRUE(back);
    EXPECT_EQ(*back, c.data);
    std::string into(c.data.size(), '\0');
    ASSERT_TRUE(DecompressInto(stored, used, c.data.size(), into.data()).ok());
    EXPECT_EQ(into, c.data);
    // A damaged frame is an error, never wrong bytes.
    std::string bad = stored;
    bad[bad.size() / 2] ^= 0x40;
    auto broken = Decompress(bad, used, c.data.size());
    EXPECT_TRUE(!broken || *broken != c.data);
  }
  // The stored layout is fixed by the format (lane 0 bytes, lane 1 bytes, ..., then the leftover
  // bytes): decompress the zstd frame itself and look, for sizes around the 16-row vector blocks.
  for (size_t stride : {size_t{2}, size_t{4}}) {
    for (size_t n : {size_t{4096}, size_t{4096 + 16 * stride - 1}, size_t{65536 + 7}, size_t{100003}}) {
      std::string data = stride == 2 ? fp16(n / 2 + 1) : fp32(n / 4 + 1);
      data.resize(n);
      Compression used;
      std::string stored = Compress(data, CompressionMode::kAuto, &used);
      ASSERT_EQ(static_cast<int>(used), static_cast<int>(stride == 2 ? Compression::kZstdShuffle2 : Compression::kZstdShuffle4)) << n;
      std::string frame(n, '\0');
      ASSERT_EQ(ZSTD_decompress(frame.data(), n, stored.data(), stored.size()), n);
      size_t rows = n / stride;
      bool ok = true;
      for (size_t i = 0; i < rows && ok; ++i) {
        for (size_t l = 0; l < stride; ++l) ok = ok && frame[l * rows + i] == data[i * stride + l];
      }
      EXPECT_TRUE(ok) << "stride " << stride << ", " << n << " bytes: lanes are not grouped as the format says";
      EXPECT_EQ(frame.substr(rows * stride), data.substr(rows * stride));
      EXPECT_EQ(*Decompress(stored, used, n), data);
    }
  }
  // Text and random data are not grouped.
  std::string text;
  for (int i = 0; i < 20000; ++i) text += "step " + std::to_string(i) + " loss 0." + std::to_string(i % 97) + "\n";
  Compression used;
  Compress(text, CompressionMode::kAuto, &used);
  EXPECT_EQ(used, Compression::kZstd);
  Compress(RandomData(1 << 20, 4), CompressionMode::kAuto, &used);
  EXPECT_EQ(used, Compression::kNone);
}

TEST(Crypto, ParseIdAcceptsExactlySixtyFourHexDigits) {
  std::string hex;
  for (int i = 0; i < 32; ++i) hex += "0123456789abcdefABCDEF"[i % 22], hex += "fedcba9876543210"[i % 16];
  Id id;
  ASSERT_TRUE(ParseId(hex, &id));
  EXPECT_EQ(IdHex(id), [&] { std::string l = hex; for (auto& c : l) c = static_cast<char>(std::tolower(c)); return l; }());
  Id untouched = id;
  for (char bad : {'g', 'G', ' ', '\0', '/', ':', '@', '`', '\xff'}) {
    for (size_t at : {size_t{0}, size_t{31}, size_t{63}}) {
      std::string b = hex;
      b[at] = bad;
      EXPECT_FALSE(ParseId(b, &id)) << "byte " << int(static_cast<unsigned char>(bad)) << " at " << at;
      EXPECT_EQ(id, untouched) << "a failed parse must not write the id";
    }
  }
  EXPECT_FALSE(ParseId(hex.substr(1), &id));
  EXPECT_FALSE(ParseId(hex + "0", &id));
  EXPECT_FALSE(ParseId("", &id));
}

// Key files written by earlier versions were derived with libsodium's crypto_pwhash (argon2id
// v1.3, one lane); DeriveKey computes it with the reference library on our own memory and must give
// the same key for every parameter set, or existing repositories would no longer open.
TEST(Crypto, KdfMatchesLibsodiumsArgon2id) {
  ASSERT_GE(sodium_init(), 0);
  struct Case {
    uint64_t ops, mem;
    std::string password;
  };
  const Case cases[] = {{crypto_pwhash_OPSLIMIT_MIN, crypto_pwhash_MEMLIMIT_MIN, "pw"},
                        {3, 1 << 20, ""},
                        {1, 3 << 20, std::string("p\0ss w\xc3\xb6rd", 10)},
                        {crypto_pwhash_OPSLIMIT_INTERACTIVE, crypto_pwhash_MEMLIMIT_INTERACTIVE, "correct horse battery staple"}};
  for (const auto& c : cases) {
    KdfParams p{c.ops, c.mem, RandomBytes(16)};
    auto ours = DeriveKey(c.password, p);
    ASSERT_TRUE(ours) << ours.error().ToString();
    std::array<uint8_t, 32> want{};
    ASSERT_EQ(crypto_pwhash(want.data(), want.size(), c.password.data(), c.password.size(),
                            reinterpret_cast<const unsigned char*>(p.salt.data()), c.ops, c.mem, crypto_pwhash_ALG_ARGON2ID13),
              0);
    EXPECT_EQ(*ours, want) << "opslimit " << c.ops << " memlimit " << c.mem;
  }
  KdfParams bad{crypto_pwhash_OPSLIMIT_MIN, crypto_pwhash_MEMLIMIT_MIN, "short"};
  EXPECT_FALSE(DeriveKey("pw", bad));
}

// Several lanes: what the Argon2 reference computes with one thread per lane, whatever number of
// threads fills them here; a different key from one lane; lane counts out of range are refused.
TEST(Crypto, KdfLanesMatchTheReferenceAndChangeTheKey) {
  const std::string password = "correct horse";
  for (uint32_t lanes : {2u, 4u}) {
    KdfParams p{2, 1 << 20, RandomBytes(16), lanes};
    auto ours = DeriveKey(password, p);
    ASSERT_TRUE(ours) << ours.error().ToString();
    std::array<uint8_t, 32> want{};
    ASSERT_EQ(argon2id_hash_raw(2, (1 << 20) / 1024, lanes, password.data(), password.size(), p.salt.data(), p.salt.size(),
                                want.data(), want.size()),
              ARGON2_OK);
    EXPECT_EQ(*ours, want) << lanes << " lanes";
    KdfParams one = p;
    one.lanes = 1;
    EXPECT_NE(*DeriveKey(password, one), *ours) << lanes << " lanes";
  }
  EXPECT_EQ(DefaultKdfParams(false).lanes, 2u);
  for (uint32_t bad : {0u, kMaxKdfLanes + 1}) {
    auto r = DeriveKey(password, KdfParams{2, 1 << 20, RandomBytes(16), bad});
    ASSERT_FALSE(r) << bad << " lanes";
    EXPECT_EQ(r.error().code(), Code::kCorruption);
  }
}

// Sealing, opening and content ids keep per-thread OpenSSL state keyed once; switching between
// keys (the master key's, a key file's) must never seal, open or hash with the previous one.
TEST(Crypto, CachedContextsFollowTheKeyInUse) {
  MasterKey a = MasterKey::Random(), b = MasterKey::Random();
  std::string data = RandomData(100000, 5);
  for (int round = 0; round < 3; ++round) {
    for (const MasterKey* k : {&a, &b}) {
      unsigned int len = 0;
      Id want{};
      HMAC(EVP_sha256(), k->mac.data(), 32, reinterpret_cast<const unsigned char*>(data.data()), data.size(), want.data(), &len);
      EXPECT_EQ(ContentId(*k, data), want);
      std::string sealed = Seal(*k, data, "aad");
      const MasterKey* other = k == &a ? &b : &a;
      EXPECT_FALSE(Unseal(*other, sealed, "aad")) << "opened with the other key";
      auto back = Unseal(*k, sealed, "aad");
      ASSERT_TRUE(back) << back.error().ToString();
      EXPECT_EQ(*back, data);
      std::array<uint8_t, 32> raw{};
      raw[0] = static_cast<uint8_t>(round + 1);
      auto with = OpenWith(raw.data(), SealWith(raw.data(), "key file"));
      ASSERT_TRUE(with);
      EXPECT_EQ(*with, "key file");
    }
  }
}

// GCM nonces come from a per-thread pool of random bytes; a forked child must not take the same
// next nonce as its parent (two messages under one key and nonce would leak both).
TEST(Crypto, AForkedChildNeverReusesItsParentsNonces) {
  MasterKey k = MasterKey::Random();
  std::string first = Seal(k, "fill the pool");
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    std::string child = Seal(k, "child");
    ssize_t w = ::write(fds[1], child.data(), 12);
    ::_exit(w == 12 ? 0 : 1);
  }
  std::string parent = Seal(k, "parent");
  char child_nonce[12];
  ASSERT_EQ(::read(fds[0], child_nonce, 12), 12);
  int status = 0;
  ::waitpid(pid, &status, 0);
  ::close(fds[0]);
  ::close(fds[1]);
  EXPECT_NE(std::string(child_nonce, 12), parent.substr(0, 12));
  EXPECT_NE(first.substr(0, 12), parent.substr(0, 12));
}

TEST(Crypto, SealDetectsTamperingAndIdsAreKeyed) {
  MasterKey k = MasterKey::Random(), other = MasterKey::Random();
  std::string sealed = Seal(k, "secret weights");
  EXPECT_EQ(sealed.size(), 14 + kSealOverhead);
  EXPECT_EQ(*Unseal(k, sealed), "secret weights");
  EXPECT_NE(Seal(k, "secret weights"), sealed);  // random nonce
  EXPECT_EQ(Unseal(other, sealed).error().code(), Code::kCorruption);
  std::string flipped = sealed;
  flipped[15] ^= 1;
  EXPECT_FALSE(Unseal(k, flipped));
  EXPECT_FALSE(Unseal(k, sealed.substr(0, sealed.size() - 1)));
  EXPECT_NE(ContentId(k, "x"), ContentId(other, "x"));
  EXPECT_NE(ContentId(k, "x"), Sha256("x"));
  // Associated data is needed to open, byte for byte; an empty one is the same as none (version 1).
  std::string bound = Seal(k, "blob", "id-a");
  EXPECT_EQ(*Unseal(k, bound, "id-a"), "blob");
  EXPECT_FALSE(Unseal(k, bound, "id-b"));
  EXPECT_FALSE(Unseal(k, bound));
  EXPECT_FALSE(Unseal(k, sealed, "id-a"));
  EXPECT_EQ(*Unseal(k, Seal(k, "old", ""), ""), "old");
  std::string into(4, '\0');
  EXPECT_TRUE(UnsealInto(k, bound, into.data(), "id-a").ok());
  EXPECT_EQ(into, "blob");
  EXPECT_EQ(UnsealInto(k, bound, into.data(), "id-c").code(), Code::kCorruption);
}

// ---- backend contract on mem, local and s3 (the loopback Ceph RGW of tests/rgw_harness.sh)

// A fresh prefix in the test bucket, or nullptr with *why set.
std::unique_ptr<Backend> NewTestS3Backend(std::string* why, bool* skip) {
  if (!RgwEnvironment(why, skip)) return nullptr;
  auto b = OpenBackend("s3:" + std::string(std::getenv("DUMONT_TEST_S3_ENDPOINT")) + "/dumont-contract/" + NewId("t"));
  if (!b) {
    *why = b.error().ToString();
    return nullptr;
  }
  return std::move(*b);
}

class BackendContract : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (GetParam() == "s3") {
      std::string why;
      bool skip = false;
      b_ = NewTestS3Backend(&why, &skip);
      if (skip) GTEST_SKIP() << "no S3 server (ctest provides the RGW fixture)";
      ASSERT_TRUE(b_) << why;
    } else {
      b_ = GetParam() == "mem" ? NewMemBackend() : NewLocalBackend(dir_ / "repo");
    }
    ASSERT_TRUE(b_->Create().ok());
  }
  TempDir dir_;
  std::unique_ptr<Backend> b_;
};

TEST_P(BackendContract, SaveLoadRangeStatListRemove) {
  std::string id(64, 'a');
  Handle h{FileType::kPack, id};
  ASSERT_TRUE(b_->Save(h, "0123456789").ok());
  EXPECT_EQ(*b_->Load(h), "0123456789");
  EXPECT_EQ(*b_->Load(h, 2, 3), "234");
  EXPECT_EQ(*b_->Load(h, 7), "789");
  auto past = b_->Load(h, 8, 5);
  ASSERT_FALSE(past);
  EXPECT_EQ(past.error().code(), Code::kCorruption);
  EXPECT_EQ(b_->Stat(h)->size, 10);
  ASSERT_TRUE(b_->Save(h, "replaced").ok());
  EXPECT_EQ(*b_->Load(h), "replaced");
  ASSERT_TRUE(b_->Save({FileType::kSnapshot, std::string(64, 'b')}, "s").ok());
  auto packs = b_->List(FileType::kPack);
  ASSERT_EQ(packs->size(), 1u);
  EXPECT_EQ(packs->front().name, id);
  EXPECT_EQ(packs->front().size, 8);
  EXPECT_EQ(b_->List(FileType::kSnapshot)->size(), 1u);
  EXPECT_TRUE(b_->List(FileType::kIndex)->empty());
  ASSERT_TRUE(b_->Remove(h).ok());
  ASSERT_TRUE(b_->Remove(h).ok());  // idempotent
  EXPECT_EQ(b_->Load(h).error().code(), Code::kNotFound);
  EXPECT_EQ(b_->Stat(h).error().code(), Code::kNotFound);
  ASSERT_TRUE(b_->Save({FileType::kConfig, ""}, "cfg").ok());
  EXPECT_EQ(b_->Create().code(), Code::kAlreadyExists);
}

INSTANTIATE_TEST_SUITE_P(Backends, BackendContract, ::testing::Values("mem", "local", "s3"),
                         [](const auto& i) { return i.param; });

// ---- repository end to end

class RepoTest : public ::testing::Test {
 protected:
  void SetUp() override {
    repo_dir_ = dir_ / "repo";
    InitOptions o;
    o.fast_kdf = true;
    o.chunker = {16 * 1024, 15, 256 * 1024};  // small chunks so small test files still split
    auto r = Repository::Init(NewLocalBackend(repo_dir_), "pw", o);
    ASSERT_TRUE(r) << r.error().ToString();
    src_ = dir_ / "ws";
    WriteFile(src_ + "/data/weights.bin", RandomData(3 << 20, 9));
    std::string log;
    for (int i = 0; i < 50000; ++i) log += "step " + std::to_string(i) + " loss 0.1\n";
    WriteFile(src_ + "/logs/train.log", log);
    WriteFile(src_ + "/code/main.py", "print('hi')\n");
    fs::create_directories(src_ + "/empty/dir");
    fs::create_symlink("../code/main.py", src_ + "/data/link.py");
    fs::create_hard_link(src_ + "/code/main.py", src_ + "/code/alias.py");
    ::chmod((src_ + "/code/main.py").c_str(), 0751);
    // Sparse: a hole of 4 MiB, then data.
    {
      int fd = ::open((src_ + "/data/sparse.img").c_str(), O_WRONLY | O_CREAT, 0644);
      ASSERT_EQ(::pwrite(fd, "tail", 4, 4 << 20), 4);
      ::close(fd);
    }
    // Edge cases: unicode names, a deep path, an empty file, a dangling link, odd characters.
    WriteFile(src_ + "/données/模型/ünïcødé ✓.txt", "unicode\n");
    std::string deep = src_ + "/deep";
    for (int i = 0; i < 40; ++i) deep += "/level" + std::to_string(i);
    WriteFile(deep + "/leaf.txt", "deep\n");
    WriteFile(src_ + "/empty.txt", "");
    WriteFile(src_ + "/odd name with spaces & 'quotes'\t.txt", "odd\n");
    fs::create_symlink("does/not/exist", src_ + "/dangling");
    timespec ts[2] = {{1600000000, 123456789}, {1600000000, 123456789}};
    ::utimensat(AT_FDCWD, (src_ + "/logs/train.log").c_str(), ts, 0);
  }
  std::unique_ptr<Repository> OpenRepo(std::unique_ptr<Backend> b = nullptr) {
    auto r = Repository::Open(b ? std::move(b) : NewLocalBackend(repo_dir_), "pw");
    EXPECT_TRUE(r) << r.error().ToString();
    return r ? std::move(*r) : nullptr;
  }
  BackupSummary MustBackup(Repository& repo) {
    BackupOptions o;
    o.paths = {src_};
    auto s = Backup(repo, o);
    EXPECT_TRUE(s) << s.error().ToString();
    return s ? *s : BackupSummary{};
  }
  void ExpectSameTree(const std::string& a, const std::string& b) {
    for (auto it = fs::recursive_directory_iterator(a); it != fs::recursive_directory_iterator(); ++it) {
      std::string rel = it->path().lexically_relative(a).string();
      std::string other = b + "/" + rel;
      struct stat sa{}, sb{};
      ASSERT_EQ(lstat(it->path().c_str(), &sa), 0);
      ASSERT_EQ(lstat(other.c_str(), &sb), 0) << rel << " missing from restore";
      EXPECT_EQ(sa.st_mode, sb.st_mode) << rel;
      EXPECT_EQ(sa.st_size, sb.st_size) << rel;
      if (!S_ISDIR(sa.st_mode)) {
        EXPECT_EQ(sa.st_mtim.tv_sec, sb.st_mtim.tv_sec) << rel;
        EXPECT_EQ(sa.st_mtim.tv_nsec, sb.st_mtim.tv_nsec) << rel;
      }
      if (S_ISREG(sa.st_mode)) {
        EXPECT_TRUE(ReadFile(it->path()) == ReadFile(other)) << rel << " differs";
      }
      if (S_ISLNK(sa.st_mode)) {
        EXPECT_EQ(fs::read_symlink(it->path()), fs::read_symlink(other)) << rel;
      }
    }
  }
  TempDir dir_;
  std::string repo_dir_, src_;
};

// Small one-blob files are created, written and given their metadata by the restore worker in
// one go: read-only modes, mtimes, zero tails (holes) and all-zero files must come out as with the
// general path, and a symlink planted where a file goes is replaced, never written through.
TEST_F(RepoTest, SmallFilesWrittenWholeKeepModesTimesAndHolesAndNeverFollowLinks) {
  std::string small = src_ + "/small";
  WriteFile(small + "/readonly.txt", "read only\n");
  ::chmod((small + "/readonly.txt").c_str(), 0400);
  WriteFile(small + "/zero-tail.bin", RandomData(8192, 3) + std::string(3 * 4096 + 100, '\0'));
  WriteFile(small + "/all-zero.bin", std::string(20000, '\0'));
  WriteFile(small + "/setgid.sh", "#!/bin/sh\n");
  ::chmod((small + "/setgid.sh").c_str(), 02755);
  timespec ts[2] = {{1500000000, 42}, {1500000000, 42}};
  for (const char* f : {"readonly.txt", "zero-tail.bin", "all-zero.bin"}) ::utimensat(AT_FDCWD, (small + "/" + f).c_str(), ts, 0);
  auto repo = OpenRepo();
  MustBackup(*repo);
  auto tree = repo->FindSnapshot("latest")->second.tree;
  std::string out = dir_ / "out";
  // A link where a restored file goes, pointing outside the target.
  WriteFile(dir_ / "victim.txt", "keep me\n");
  fs::create_directories(out + "/ws/small");
  fs::create_symlink(dir_ / "victim.txt", out + "/ws/small/readonly.txt");
  RestoreOptions ro;
  ro.target = out;
  auto r = Restore(*repo, tree, ro);
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_GE(r->files_written_whole, 6u);  // the four above, and the unicode, deep and odd-named files
  EXPECT_EQ(ReadFile(dir_ / "victim.txt"), "keep me\n") << "the restore wrote through a symlink";
  ExpectSameTree(src_, out + "/ws");
  struct stat st{};
  ASSERT_EQ(::lstat((out + "/ws/small/readonly.txt").c_str(), &st), 0);
  EXPECT_TRUE(S_ISREG(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0400u);
  EXPECT_EQ(st.st_mtim.tv_sec, 1500000000);
  EXPECT_EQ(st.st_mtim.tv_nsec, 42);
  ASSERT_EQ(::lstat((out + "/ws/small/setgid.sh").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 02755u);
  ASSERT_EQ(::stat((out + "/ws/small/zero-tail.bin").c_str(), &st), 0);
  EXPECT_EQ(st.st_size, 8192 + 3 * 4096 + 100);
  EXPECT_LE(st.st_blocks * 512, 2 * 8192) << "the zero tail was written instead of left a hole";
  ASSERT_EQ(::stat((out + "/ws/small/all-zero.bin").c_str(), &st), 0);
  EXPECT_EQ(st.st_size, 20000);
  EXPECT_EQ(st.st_blocks, 0) << "an all-zero file should be one hole";
  // A directory where a small file goes is a clear error naming the file.
  std::string out2 = dir_ / "out2";
  fs::create_directories(out2 + "/ws/small/readonly.txt/inside");
  ro.target = out2;
  auto blocked = Restore(*repo, tree, ro);
  ASSERT_FALSE(blocked);
  EXPECT_NE(blocked.error().message().find("small/readonly.txt"), std::string::npos) << blocked.error().message();
}

TEST_F(RepoTest, WrongPasswordAndMissingRepositoryAreClear) {
  auto bad = Repository::Open(NewLocalBackend(repo_dir_), "nope");
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().code(), Code::kUnauthenticated);
  EXPECT_NE(bad.error().message().find("wrong password"), std::string::npos);
  auto none = Repository::Open(NewLocalBackend(dir_ / "nothing"), "pw");
  ASSERT_FALSE(none);
  EXPECT_EQ(none.error().code(), Code::kNotFound);
  EXPECT_NE(none.error().message().find("snapshot init"), std::string::npos);
  EXPECT_EQ(Repository::Init(NewLocalBackend(repo_dir_), "pw").error().code(), Code::kAlreadyExists);
}

TEST_F(RepoTest, BackupRestoreKeepsContentModesTimesLinksHolesAndEmptyDirs) {
  auto repo = OpenRepo();
  auto s = MustBackup(*repo);
  EXPECT_EQ(s.files_new, 9u);  // weights, sparse, train.log, main.py, alias.py, unicode, deep, empty, odd
  EXPECT_GT(s.bytes_added, 0u);
  EXPECT_LT(s.bytes_added, s.bytes_total);  // the log compresses, the hole dedups
  repo = OpenRepo();  // everything needed must be durable and indexed
  auto r = RestoreLatest(*repo, dir_ / "out");
  ASSERT_TRUE(r) << r.error().ToString();
  ExpectSameTree(src_, dir_ / "out/ws");
  struct stat a{}, b{};
  stat((dir_ / "out/ws/code/main.py").c_str(), &a);
  stat((dir_ / "out/ws/code/alias.py").c_str(), &b);
  EXPECT_EQ(a.st_ino, b.st_ino) << "hard link not restored as a link";
  EXPECT_EQ(r->hardlinks, 1u);
  struct stat sp{};
  stat((dir_ / "out/ws/data/sparse.img").c_str(), &sp);
  EXPECT_LT(sp.st_blocks * 512, 1 << 20) << "the hole was written out";
  EXPECT_TRUE(fs::is_directory(dir_ / "out/ws/empty/dir"));
}

TEST_F(RepoTest, IncrementalBackupReadsOnlyChangedFiles) {
  auto repo = OpenRepo();
  auto first = MustBackup(*repo);
  WriteFile(src_ + "/code/new.py", "x = 1\n");
  auto second = MustBackup(*repo);
  EXPECT_TRUE(second.parent.has_value());
  EXPECT_EQ(second.files_new, 1u);
  EXPECT_EQ(second.files_unchanged, 9u);
  EXPECT_LT(second.bytes_read, 100u);
  EXPECT_LT(second.bytes_added, 4096u);
  // Appending to the big file re-reads it but stores only the changed tail chunks.
  {
    std::ofstream(src_ + "/data/weights.bin", std::ios::app) << "appended";
  }
  auto third = MustBackup(*repo);
  EXPECT_EQ(third.files_changed, 1u);
  EXPECT_LT(third.bytes_added, 300u * 1024) << "an append stored far more than its chunk";
  auto snaps = repo->ListSnapshots();
  ASSERT_EQ(snaps->size(), 3u);
  EXPECT_EQ(IdHex(*snaps->back().second.parent), IdHex(snaps->at(1).first));
}

// The progress totals come from the walk: they never fall below what is done, they are exact
// once the walk is complete (and in the last report), and they cover every root, a lone file too.
TEST_F(RepoTest, ProgressTotalsComeFromTheWalkAndEndExact) {
  auto repo = OpenRepo();
  std::string other = dir_ / "other";
  WriteFile(other + "/a.txt", "a\n");
  WriteFile(other + "/sub/b.txt", "bb\n");
  std::string lone = dir_ / "lone.bin";
  WriteFile(lone, RandomData(100000, 3));
  uint64_t want_files = 0, want_bytes = 0;
  for (const auto& root : {src_, other}) {
    for (auto& e : fs::recursive_directory_iterator(root)) {
      if (fs::is_regular_file(e.symlink_status())) ++want_files, want_bytes += e.file_size();
    }
  }
  ++want_files, want_bytes += 100000;
  BackupOptions o;
  o.paths = {src_, other, lone};
  std::vector<BackupProgress> seen;
  auto s = Backup(*repo, o, [&](const BackupProgress& p) { seen.push_back(p); });
  ASSERT_TRUE(s) << s.error().ToString();
  ASSERT_FALSE(seen.empty());
  for (const auto& p : seen) {
    EXPECT_LE(p.files_done, p.files_total);
    EXPECT_LE(p.files_total, want_files);
    if (p.totals_final) {
      EXPECT_EQ(p.files_total, want_files);
      EXPECT_EQ(p.bytes_total, want_bytes);
    }
  }
  EXPECT_TRUE(seen.back().totals_final);
  EXPECT_EQ(seen.back().files_done, want_files);
  EXPECT_EQ(s->files_new, want_files);
  EXPECT_EQ(s->bytes_total, want_bytes);
}

// A large file reports its bytes as they are read, not only when it is done: the status line of a
// backup dominated by multi-GB weight files stood still for seconds at a time.
// The metadata prefetch lists and stats every entry of the trees it is given (and nothing else:
// no symlink is followed, a file given as a path is not listed), finishes on its own, and a
// prefetch destroyed mid-walk returns without finishing.
TEST(MetadataPrefetchTest, StatsEveryEntryFollowsNoSymlinkAndStopsWhenDestroyed) {
  TempDir dir;
  size_t expected = 0;
  for (int d = 0; d < 12; ++d) {
    std::string sub = dir / ("ws/d" + std::to_string(d) + "/inner");
    fs::create_directories(sub);
    expected += 2;  // dN and dN/inner
    for (int f = 0; f < 25; ++f) WriteFile(sub + "/f" + std::to_string(f), "x");
    expected += 25;
  }
  for (int f = 0; f < 40; ++f) WriteFile(dir / ("outside/o" + std::to_string(f)), "y");
  fs::create_symlink(dir / "outside", dir / "ws/link-to-outside");
  ++expected;  // the link itself, not what it points to
  {
    MetadataPrefetch p({dir / "ws", dir / "outside/o0", dir / "missing"}, 3);
    p.WaitDone();
    EXPECT_EQ(p.entries(), expected);
  }
  {
    MetadataPrefetch one({dir / "ws"}, 1);
    one.WaitDone();
    EXPECT_EQ(one.entries(), expected);
  }
  // Destroyed at once: the destructor stops the threads (if the walk finished first, it joins them).
  uint64_t seen = 0;
  {
    MetadataPrefetch p({dir.path()}, 2);
    seen = p.entries();
  }
  EXPECT_LE(seen, expected + 42);
}

TEST_F(RepoTest, ProgressAdvancesWithinALargeFile) {
  auto repo = OpenRepo();
  std::string big = dir_ / "big.bin";
  const size_t size = 48 << 20;  // several reads of at most one max chunk (8 MiB)
  WriteFile(big, RandomData(size, 11));
  BackupOptions o;
  o.paths = {big};
  o.progress_interval_ms = 0;
  std::vector<BackupProgress> seen;
  auto s = Backup(*repo, o, [&](const BackupProgress& p) { seen.push_back(p); });
  ASSERT_TRUE(s) << s.error().ToString();
  size_t partial = 0;
  uint64_t last = 0;
  for (const auto& p : seen) {
    EXPECT_GE(p.bytes_done, last) << "bytes_done went backwards";
    last = p.bytes_done;
    if (p.files_done == 0 && p.bytes_done > 0 && p.bytes_done < size) ++partial;
  }
  EXPECT_GE(partial, 2u) << "no progress was reported while the one large file was read";
  EXPECT_EQ(seen.back().bytes_done, size);
  EXPECT_EQ(seen.back().files_done, 1u);
}

// Whether this kernel lets a process set up an io_uring (a container's seccomp profile or the
// io_uring_disabled sysctl may refuse).
bool KernelAllowsIoUring() {
  io_uring_params p{};
  long fd = ::syscall(__NR_io_uring_setup, 4, &p);
  if (fd < 0) return false;
  ::close(static_cast<int>(fd));
  return true;
}

// Small files are read in io_uring batches; the snapshot must be exactly what one-by-one reads
// give (same tree ids, same chunk cuts with this repository's small chunks), and files that grow,
// shrink or vanish between the walk and the read are handled as ReadFile handles them.
TEST_F(RepoTest, SmallFilesReadInBatchesEqualOneByOneReadsAndSurviveChangesAfterTheWalk) {
  std::string many = src_ + "/venv";
  uint64_t small = 0;
  // Sizes around the batch limit (256 KiB) and the repository's chunk sizes (16..256 KiB); more
  // files than one batch holds (64), across directories.
  const size_t sizes[] = {0, 1, 4095, 4096, 4097, 16 * 1024, 65536, 200000, 256 * 1024, 256 * 1024 + 1, 300000};
  for (int d = 0; d < 12; ++d) {
    for (size_t k = 0; k < std::size(sizes); ++k) {
      WriteFile(many + "/pkg" + std::to_string(d) + "/f" + std::to_string(k) + ".py", RandomData(sizes[k], d * 100 + k));
    }
  }
  for (auto& e : fs::recursive_directory_iterator(src_)) {
    if (fs::is_regular_file(e.symlink_status()) && e.file_size() <= 256 * 1024) ++small;
  }
  auto repo = OpenRepo();
  auto tree_of = [&](const BackupSummary& s) { return repo->FindSnapshot(IdHex(s.snapshot))->second.tree; };
  BackupOptions o;
  o.paths = {src_};
  o.no_parent = true;
  o.io_uring = false;
  auto one_by_one = Backup(*repo, o);
  ASSERT_TRUE(one_by_one) << one_by_one.error().ToString();
  EXPECT_EQ(one_by_one->files_read_batched, 0u);
  o.io_uring = true;
  auto batched = Backup(*repo, o);
  ASSERT_TRUE(batched) << batched.error().ToString();
  EXPECT_EQ(batched->files_read_batched, KernelAllowsIoUring() ? small : 0u);
  EXPECT_EQ(tree_of(*batched), tree_of(*one_by_one)) << "batched reads gave a different snapshot";
  EXPECT_EQ(batched->blobs_new, 0u) << "the second backup found content the first did not store";

  // Changes in the window between the walk's stat and the read, through both paths.
  for (bool uring : {true, false}) {
    SCOPED_TRACE(uring ? "io_uring" : "pread");
    std::string grow = many + "/pkg0/f2.py", shrink = many + "/pkg1/f7.py", gone = many + "/pkg2/f3.py";
    std::string grown = RandomData(4095, 7) + RandomData(300000, 8);  // past the batch limit
    std::string shrunk = RandomData(100, 9);
    std::set<std::string> done;
    o.io_uring = uring;
    o.before_read = [&](const std::string& path) {
      if (!done.insert(path).second) return;
      if (path == grow) WriteFile(grow, grown);
      if (path == shrink) WriteFile(shrink, shrunk);
      if (path == gone) fs::remove(gone);
    };
    auto s = Backup(*repo, o);
    ASSERT_TRUE(s) << s.error().ToString();
    ASSERT_EQ(s->warnings.size(), 1u);
    EXPECT_NE(s->warnings[0].find("cannot open " + gone), std::string::npos) << s->warnings[0];
    std::string out = dir_ / (uring ? "out-uring" : "out-pread");
    ASSERT_TRUE(RestoreLatest(*repo, out));
    EXPECT_TRUE(ReadFile(out + "/ws/venv/pkg0/f2.py") == grown);
    EXPECT_TRUE(ReadFile(out + "/ws/venv/pkg1/f7.py") == shrunk);
    EXPECT_FALSE(fs::exists(out + "/ws/venv/pkg2/f3.py"));
    // Put the tree back for the next round.
    WriteFile(grow, RandomData(4095, 2));
    WriteFile(shrink, RandomData(sizes[7], 107));
    WriteFile(gone, RandomData(4097, 203));
  }
}

// An unchanged directory keeps its parent's tree id (nothing re-encoded); any change - a new
// entry, a removed one, new metadata - gives a new tree up to the root and nothing else.
TEST_F(RepoTest, UnchangedDirectoriesKeepTheirParentTreesAndChangesDoNot) {
  auto repo = OpenRepo();
  MustBackup(*repo);
  auto tree_of = [&](const std::string& where) {
    auto snap = repo->FindSnapshot("latest");
    Id t = snap->second.tree;
    std::string path;
    for (std::string part : {std::string("ws"), where}) {
      if (part.empty()) break;
      auto nodes = DecodeTree(*repo->LoadBlob(t), path);
      auto it = std::find_if(nodes->begin(), nodes->end(), [&](const Node& n) { return n.name == part; });
      EXPECT_NE(it, nodes->end()) << part;
      if (it == nodes->end()) return Id{};
      t = *it->subtree;
      path += "/" + part;
    }
    return t;
  };
  Id root1 = repo->FindSnapshot("latest")->second.tree, code1 = tree_of("code"), data1 = tree_of("data");
  auto same = MustBackup(*repo);
  EXPECT_EQ(same.files_unchanged, same.files_new + same.files_changed + same.files_unchanged);
  EXPECT_EQ(IdHex(repo->FindSnapshot("latest")->second.tree), IdHex(root1));
  // A removed file changes its directory and the root, not its siblings.
  fs::remove(src_ + "/code/alias.py");
  MustBackup(*repo);
  EXPECT_NE(IdHex(tree_of("code")), IdHex(code1));
  EXPECT_EQ(IdHex(tree_of("data")), IdHex(data1));
  EXPECT_NE(IdHex(repo->FindSnapshot("latest")->second.tree), IdHex(root1));
  // New metadata alone (mode) changes the tree too.
  Id code2 = tree_of("code");
  ::chmod((src_ + "/code/main.py").c_str(), 0700);
  MustBackup(*repo);
  EXPECT_NE(IdHex(tree_of("code")), IdHex(code2));
  RestoreOptions ro;
  ro.target = dir_ / "out";
  ASSERT_TRUE(Restore(*repo, repo->FindSnapshot("latest")->second.tree, ro));
  EXPECT_FALSE(fs::exists(dir_ / "out/ws/code/alias.py"));
  EXPECT_EQ(fs::status(dir_ / "out/ws/code/main.py").permissions() & fs::perms::all, fs::perms::owner_all);
  ExpectSameTree(src_, dir_ / "out/ws");
}

// Directories are walked by several threads at once: a wide and deep tree with changes scattered
// through it must give exact counts, every change, and the parent's tree for each untouched branch.
TEST_F(RepoTest, AParallelWalkCountsAndKeepsEveryChangeInAWideTree) {
  auto repo = OpenRepo();
  for (int d = 0; d < 60; ++d) {
    for (int s = 0; s < 3; ++s) {
      for (int f = 0; f < 4; ++f) {
        WriteFile(src_ + "/wide/d" + std::to_string(d) + "/s" + std::to_string(s) + "/f" + std::to_string(f),
                  "file " + std::to_string(d * 100 + s * 10 + f) + "\n");
      }
    }
  }
  uint64_t dirs = 1;  // the root
  for (auto& e : fs::recursive_directory_iterator(src_)) dirs += e.is_directory() && !e.is_symlink();
  auto first = MustBackup(*repo);
  EXPECT_EQ(first.files_new, 9u + 60 * 3 * 4);
  EXPECT_EQ(first.dirs, dirs);
  auto again = MustBackup(*repo);
  EXPECT_EQ(again.files_unchanged, first.files_new);
  EXPECT_EQ(again.files_new + again.files_changed, 0u);
  // Changes in 7 directories far apart, 3 new files, 2 removed.
  for (int d : {0, 9, 17, 28, 33, 41, 59}) WriteFile(src_ + "/wide/d" + std::to_string(d) + "/s1/f2", "changed, longer\n");
  for (int d : {5, 25, 45}) WriteFile(src_ + "/wide/d" + std::to_string(d) + "/s2/new", "new\n");
  fs::remove(src_ + "/wide/d12/s0/f0");
  fs::remove(src_ + "/wide/d50/s0/f3");
  auto third = MustBackup(*repo);
  EXPECT_EQ(third.files_changed, 7u);
  EXPECT_EQ(third.files_new, 3u);
  EXPECT_EQ(third.files_unchanged, first.files_new - 7 - 2);
  EXPECT_EQ(third.dirs, first.dirs);
  RestoreOptions ro;
  ro.target = dir_ / "out";
  ASSERT_TRUE(Restore(*repo, repo->FindSnapshot("latest")->second.tree, ro));
  ExpectSameTree(src_, dir_ / "out/ws");
  ExpectSameTree(dir_ / "out/ws", src_);  // and nothing more
}

// Large files that are not in the page cache are read with O_DIRECT; the bytes must be exact,
// including a tail that is not a multiple of the 4 KiB alignment.
TEST_F(RepoTest, LargeUncachedFilesAreReadAroundThePageCacheExactly) {
  const std::string big = src_ + "/data/shard.bin";
  // Random data with runs of zero pages at offsets that are not page-aligned, and an odd tail.
  std::string content = RandomData((13 << 20) + 777, 5);
  for (size_t off = 1000; off + (96 << 10) < content.size(); off += 1 << 20) std::memset(content.data() + off, 0, 96 << 10);
  WriteFile(big, content);
  {
    int fd = ::open(big.c_str(), O_RDONLY);
    ASSERT_GE(fd, 0);
    ::fsync(fd);
    ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    void* map = ::mmap(nullptr, 4096, PROT_READ, MAP_SHARED, fd, 0);
    ASSERT_NE(map, MAP_FAILED);
    unsigned char resident = 1;
    ASSERT_EQ(::mincore(map, 4096, &resident), 0);
    ::munmap(map, 4096);
    bool cached = resident & 1;
    ::close(fd);
    if (cached) GTEST_SKIP() << "this filesystem keeps " << big << " cached after POSIX_FADV_DONTNEED (tmpfs?)";
  }
  auto repo = OpenRepo();
  auto first = MustBackup(*repo);
  // shard.bin, and the fixture's sparse image (4 MiB of hole before its tail, never cached).
  EXPECT_EQ(first.files_read_direct, 2u) << "the uncached 13 MiB file should be read with O_DIRECT";
  // Now it is cached (the backup read it... around the cache, so read it once more): buffered.
  std::string copy;
  {
    std::ifstream in(big, std::ios::binary);
    copy.assign(std::istreambuf_iterator<char>(in), {});
  }
  BackupOptions o;
  o.paths = {src_};
  o.no_parent = true;
  auto second = Backup(*repo, o);
  ASSERT_TRUE(second);
  EXPECT_EQ(second->files_read_direct, 1u) << "a cached file should be read through the cache";
  EXPECT_EQ(second->bytes_added, 0u);
  RestoreOptions ro;
  ro.target = dir_ / "out";
  auto restored = Restore(*repo, repo->FindSnapshot("latest")->second.tree, ro);
  ASSERT_TRUE(restored) << restored.error().message();
  // The middle of the large chunks went around the page cache; the zero pages stayed holes.
  EXPECT_GT(restored->bytes_written_direct, 256u << 10);  // chunks of >= 64 KiB (the test chunker averages 32 KiB)
  ExpectSameTree(src_, dir_ / "out/ws");
  struct stat st{};
  ASSERT_EQ(::stat((dir_ / "out/ws/data/shard.bin").c_str(), &st), 0);
  EXPECT_LT(static_cast<uint64_t>(st.st_blocks) * 512, content.size() - (12u * (80u << 10)))
      << "zero pages inside large chunks were written out";
  // The same restore through the page cache only gives the same bytes.
  ro.target = dir_ / "out2";
  ro.direct_io = false;
  auto buffered = Restore(*repo, repo->FindSnapshot("latest")->second.tree, ro);
  ASSERT_TRUE(buffered);
  EXPECT_EQ(buffered->bytes_written_direct, 0u);
  ExpectSameTree(src_, dir_ / "out2/ws");
}

// Trees get packs of their own, so reading a snapshot's whole tree graph (restore, backup with a
// parent) costs one request per tree pack instead of one per directory - what decides restores
// and unchanged backups on S3, where every request has latency.
TEST_F(RepoTest, TreesHaveTheirOwnPacksAndArePrefetchedOnePackPerRequest) {
  for (int i = 0; i < 40; ++i) WriteFile(src_ + "/many/d" + std::to_string(i) + "/f.txt", "file " + std::to_string(i));
  {
    auto repo = OpenRepo();
    MustBackup(*repo);
  }
  auto counting = std::make_unique<FailingBackend>(NewLocalBackend(repo_dir_), 0, 0, Status::Ok());
  FailingBackend* fb = counting.get();
  auto repo = OpenRepo(std::move(counting));
  // Every pack holds either trees only or data only.
  std::map<std::string, std::set<int>> types;
  size_t trees = 0;
  auto by_pack = repo->IndexByPack();
  for (const auto& [pack, blobs] : by_pack) {
    for (const auto& [id, loc] : blobs) {
      types[IdHex(pack)].insert(static_cast<int>(loc.type));
      trees += loc.type == BlobType::kTree;
    }
  }
  size_t tree_packs = 0;
  for (const auto& [pack, t] : types) {
    EXPECT_EQ(t.size(), 1u) << "pack " << pack << " mixes trees and data";
    tree_packs += t.count(static_cast<int>(BlobType::kTree));
  }
  ASSERT_GT(trees, 50u);
  Id root = repo->FindSnapshot("latest")->second.tree;
  int64_t before = fb->operations();
  repo->PrefetchTrees(root, 16);
  EXPECT_LE(fb->operations() - before, static_cast<int64_t>(tree_packs)) << trees << " trees in " << tree_packs << " packs";
  // The walk after it is served from memory, and a restore is complete.
  RestoreOptions ro;
  ro.target = dir_ / "out";
  int64_t before_restore = fb->operations();
  ASSERT_TRUE(Restore(*repo, root, ro));
  ExpectSameTree(src_, dir_ / "out/ws");
  EXPECT_GT(fb->operations(), before_restore);  // the data
}

// Index files go through a strict fast parser with nlohmann behind it: the index this package
// writes, a reformatted one and one with escapes must load to the same entries, and a bad entry is
// refused by both.
TEST_F(RepoTest, IndexFilesLoadTheSameThroughTheFastAndTheGeneralParser) {
  {
    auto repo = OpenRepo();
    MustBackup(*repo);
  }
  std::map<Id, std::vector<std::pair<Id, BlobLocation>>> want;
  std::vector<std::string> old_files;
  MasterKey key;
  {
    auto repo = OpenRepo();
    want = repo->IndexByPack();
    old_files = repo->IndexFiles();
    key = repo->key();
  }
  ASSERT_FALSE(want.empty());
  auto same = [&](Repository& r) {
    auto got = r.IndexByPack();
    ASSERT_EQ(got.size(), want.size());
    for (const auto& [pack, blobs] : want) {
      auto it = got.find(pack);
      ASSERT_NE(it, got.end());
      ASSERT_EQ(it->second.size(), blobs.size());
      for (size_t i = 0; i < blobs.size(); ++i) {
        EXPECT_EQ(it->second[i].first, blobs[i].first);
        const BlobLocation &a = it->second[i].second, &b = blobs[i].second;
        EXPECT_TRUE(a.type == b.type && a.offset == b.offset && a.length == b.length && a.raw_length == b.raw_length &&
                    a.compression == b.compression && a.pack == b.pack);
      }
    }
  };
  // Writes `text` as the only index file, sealed like the repository writes it.
  auto install = [&](const std::string& text) {
    auto b = NewLocalBackend(repo_dir_);
    auto listed = b->List(FileType::kIndex);
    for (const auto& f : *listed) ASSERT_TRUE(b->Remove({FileType::kIndex, f.name}).ok());
    std::string plain(1, '\0');
    uint64_t n = text.size();
    plain.append(reinterpret_cast<const char*>(&n), 8);
    plain += text;
    std::string sealed = Seal(key, plain);
    ASSERT_TRUE(b->Save({FileType::kIndex, IdHex(Sha256(sealed))}, sealed).ok());
  };
  auto index_text = [&](bool escape_first_id, int bad_compression) {
    std::string t = "{\n  \"packs\" : [\n";
    bool first_pack = true, first_blob = true;
    for (const auto& [pack, blobs] : want) {
      t += std::string(first_pack ? "" : ",\n") + "   { \"blobs\": [";
      first_pack = false;
      for (size_t i = 0; i < blobs.size(); ++i) {
        const auto& [id, l] = blobs[i];
        std::string hex = IdHex(id);
        if (escape_first_id && first_blob) hex = "\\u00" + HexEncode(hex.substr(0, 1)) + hex.substr(1);
        int c = first_blob && bad_compression ? bad_compression : static_cast<int>(l.compression);
        first_blob = false;
        // Keys in another order than the writer's, with spaces.
        t += std::string(i ? ", " : "") + "{\"u\": " + std::to_string(l.raw_length) + ", \"c\": " + std::to_string(c) +
             ", \"t\": " + std::to_string(static_cast<int>(l.type)) + ", \"o\": " + std::to_string(l.offset) +
             ", \"l\": " + std::to_string(l.length) + ", \"id\": \"" + hex + "\"}";
      }
      t += "], \"id\": \"" + IdHex(pack) + "\" }";
    }
    return t + "\n  ]\n}\n";
  };
  for (bool escape : {false, true}) {
    SCOPED_TRACE(escape ? "with an escape (general parser)" : "reformatted (fast parser)");
    install(index_text(escape, 0));
    auto repo = OpenRepo();
    ASSERT_TRUE(repo);
    same(*repo);
  }
  install(index_text(false, 9));
  auto bad = Repository::Open(NewLocalBackend(repo_dir_), "pw");
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message().find("malformed blob entry"), std::string::npos) << bad.error().message();
}

TEST_F(RepoTest, IncludeRestoresOneSubtree) {
  auto repo = OpenRepo();
  MustBackup(*repo);
  auto snap = repo->FindSnapshot("latest");
  RestoreOptions ro;
  ro.target = dir_ / "part";
  ro.include = "ws/logs";
  ASSERT_TRUE(Restore(*repo, snap->second.tree, ro));
  EXPECT_TRUE(fs::exists(dir_ / "part/ws/logs/train.log"));
  EXPECT_FALSE(fs::exists(dir_ / "part/ws/data"));
  ro.include = "ws/nope";
  auto missing = Restore(*repo, snap->second.tree, ro);
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code(), Code::kNotFound);
}

TEST_F(RepoTest, CorruptedPackIsDetectedAndNamed) {
  {
    auto repo = OpenRepo();
    MustBackup(*repo);
  }
  // Flip one byte in the middle of the largest data blob (weights.bin's chunks).
  std::string victim;
  uint64_t at = 0;
  {
    auto repo = OpenRepo();
    uint32_t best = 0;
    for (const auto& [pack, blobs] : repo->IndexByPack()) {
      for (const auto& [id, l] : blobs) {
        if (l.type == BlobType::kData && l.length > best) {
          best = l.length;
          victim = IdHex(pack);
          at = l.offset + l.length / 2;
        }
      }
    }
  }
  ASSERT_FALSE(victim.empty());
  std::string path = repo_dir_ + "/data/" + victim.substr(0, 2) + "/" + victim;
  {
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(static_cast<std::streamoff>(at));
    char c = static_cast<char>(f.get());
    f.seekp(static_cast<std::streamoff>(at));
    f.put(static_cast<char>(c ^ 0x55));
  }
  auto repo = OpenRepo();
  auto fast = Check(*repo, false);
  ASSERT_TRUE(fast);
  EXPECT_TRUE(fast->errors.empty()) << "structure is intact";
  auto full = Check(*repo, true);
  ASSERT_TRUE(full);
  ASSERT_FALSE(full->errors.empty());
  EXPECT_NE(full->errors.front().find(victim), std::string::npos) << full->errors.front();
  auto snap = repo->FindSnapshot("latest");
  RestoreOptions ro;
  ro.target = dir_ / "out";
  auto r = Restore(*repo, snap->second.tree, ro);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code(), Code::kCorruption);
  EXPECT_NE(r.error().message().find(victim), std::string::npos) << r.error().message();
}

TEST_F(RepoTest, MissingPackAndTruncatedIndexAreNamed) {
  {
    auto repo = OpenRepo();
    MustBackup(*repo);
  }
  auto b = NewLocalBackend(repo_dir_);
  auto idx = b->List(FileType::kIndex);
  ASSERT_EQ(idx->size(), 1u);
  std::string ipath = repo_dir_ + "/index/" + idx->front().name;
  std::string good = ReadFile(ipath);
  WriteFile(ipath, good.substr(0, good.size() / 2));
  auto r = Repository::Open(NewLocalBackend(repo_dir_), "pw");
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message().find("index/" + idx->front().name), std::string::npos) << r.error().message();
  WriteFile(ipath, good);
  auto pack = b->List(FileType::kPack)->front().name;
  ASSERT_TRUE(b->Remove({FileType::kPack, pack}).ok());
  auto repo = OpenRepo();
  auto c = Check(*repo, false);
  ASSERT_FALSE(c->errors.empty());
  EXPECT_NE(c->errors.front().find(pack), std::string::npos);
}

TEST_F(RepoTest, HostileTreeNamesNeverEscapeTheTarget) {
  auto repo = OpenRepo();
  for (std::string evil : {"..", "../escape", "/etc", "a/b", ""}) {
    Node n;
    n.name = evil;
    n.type = "file";
    n.mode = 0644;
    std::string blob = EncodeTree({n});
    Id id = repo->BlobId(blob);
    ASSERT_TRUE(repo->SaveBlob(BlobType::kTree, id, blob));
    ASSERT_TRUE(repo->Flush().ok());
    RestoreOptions ro;
    ro.target = dir_ / "target";
    auto r = Restore(*repo, id, ro);
    ASSERT_FALSE(r) << "accepted name '" << evil << "'";
    EXPECT_EQ(r.error().code(), Code::kCorruption);
  }
  EXPECT_FALSE(fs::exists(dir_ / "escape"));
  // Duplicate names are refused too (a dir and a symlink of the same name could redirect writes).
  Node a, b;
  a.name = b.name = "x";
  a.type = b.type = "file";
  EXPECT_FALSE(DecodeTree(EncodeTree({a, b}), "w"));
}

// Makes n a file with `contents` copies of id, a directory with subtree id, or a symlink to target.
void SetKind(Node& n, int kind, const Id& id, size_t contents, const std::string& target) {
  switch (kind) {
    case 0:
      n.type = "file";
      for (size_t k = 0; k < contents; ++k) n.content.push_back(id);
      break;
    case 1:
      n.type = "dir";
      n.subtree = id;
      break;
    default:
      n.type = "symlink";
      n.target = target;
  }
}

// Tree ids are hashes of the encoding, so the hand-written encoder must write exactly what the JSON
// library writes (keys sorted, no spaces), or unchanged directories would get new ids.
TEST(TreeCodec, TheFastEncoderWritesTheJsonLibrarysBytes) {
  std::mt19937_64 rng(7);
  auto reference = [](std::vector<Node> nodes) {
    std::sort(nodes.begin(), nodes.end(), [](const Node& a, const Node& b) { return a.name < b.name; });
    nlohmann::json arr = nlohmann::json::array();
    for (const auto& n : nodes) {
      nlohmann::json j = {{"name", n.name}, {"type", n.type}, {"mode", n.mode}, {"uid", n.uid}, {"gid", n.gid},
                          {"mtime_ns", n.mtime_ns}, {"ctime_ns", n.ctime_ns}, {"inode", n.inode}, {"dev", n.dev},
                          {"nlink", n.nlink}, {"size", n.size}};
      if (n.type == "file") {
        nlohmann::json c = nlohmann::json::array();
        for (const auto& id : n.content) c.push_back(IdHex(id));
        j["content"] = c;
      }
      if (n.subtree) j["subtree"] = IdHex(*n.subtree);
      if (n.type == "symlink") j["target"] = n.target;
      arr.push_back(j);
    }
    return nlohmann::json{{"nodes", arr}}.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  };
  for (int round = 0; round < 50; ++round) {
    std::vector<Node> nodes;
    for (int i = 0; i < round % 7; ++i) {
      Node n;
      n.name = "n" + std::to_string(rng() % 1000) + (round % 5 == 4 && i == 0 ? "\xc3\xa9\"\\\t" : "~ .x");
      n.mode = static_cast<uint32_t>(rng() & 07777);
      n.uid = static_cast<uint32_t>(rng());
      n.gid = i ? 0u : 4294967295u;
      n.mtime_ns = static_cast<int64_t>(rng());  // negative half of the time
      n.ctime_ns = i ? std::numeric_limits<int64_t>::min() : 0;
      n.inode = rng();
      n.dev = i ? std::numeric_limits<uint64_t>::max() : 0;
      n.nlink = rng() % 5;
      n.size = rng();
      Id id;
      for (auto& b : id) b = static_cast<uint8_t>(rng());
      int kind = static_cast<int>(rng() % 3);
      size_t contents = kind == 0 ? rng() % 3 : 0;
      SetKind(n, kind, id, contents, round % 3 ? "../rel/target" : "");
      nodes.push_back(n);
    }
    ASSERT_EQ(EncodeTree(nodes), reference(nodes)) << "round " << round;
  }
}

// Trees are decoded by a strict fast parser with the general JSON parser behind it; both must
// give the same nodes, whatever the names hold, and refuse the same damage.
TEST(TreeCodec, EveryNodeSurvivesARoundTripThroughBothParsers) {
  std::mt19937_64 rng(42);
  std::vector<Node> nodes;
  const std::vector<std::string> names = {"plain", "ünïcødé-名前", "quote\"in", "back\\slash", "tab\tand\nnewline",
                                          "\x01ctrl", std::string(255, 'x'), "emoji-\xF0\x9F\x98\x80", " lead space",
                                          // Not UTF-8: latin-1, stray bytes, a truncated sequence, a
                                          // surrogate, an overlong '/': stored exactly via name_raw.
                                          "caf\xe9", "\xff\xfe", "\xc3(", "\xed\xa0\x80", "\xc0\xaf"};
  for (size_t i = 0; i < names.size() * 3; ++i) {
    Node n;
    n.name = names[i % names.size()] + "-" + std::to_string(i);
    n.mode = static_cast<uint32_t>(rng() & 07777);
    n.uid = static_cast<uint32_t>(rng());
    n.gid = 4294967295u;
    n.mtime_ns = i % 2 ? -static_cast<int64_t>(rng() >> 2) : static_cast<int64_t>(rng() >> 1);
    n.ctime_ns = std::numeric_limits<int64_t>::min() + static_cast<int64_t>(i);
    n.inode = rng();
    n.dev = std::numeric_limits<uint64_t>::max();
    n.nlink = 1 + i % 3;
    n.size = rng() >> 3;
    Id id;
    for (auto& b : id) b = static_cast<uint8_t>(rng());
    SetKind(n, static_cast<int>(i % 3), id, i % 4, i % 2 ? "../a \"b\"/c" : i % 5 ? "/abs/target" : "/lat\xedn1");
    nodes.push_back(n);
  }
  std::string blob = EncodeTree(nodes);
  auto back = DecodeTree(blob, "t");
  ASSERT_TRUE(back) << back.error().message();
  std::sort(nodes.begin(), nodes.end(), [](const Node& a, const Node& b) { return a.name < b.name; });
  ASSERT_EQ(back->size(), nodes.size());
  for (size_t i = 0; i < nodes.size(); ++i) {
    const Node &a = nodes[i], &b = (*back)[i];
    EXPECT_EQ(a.name, b.name);
    EXPECT_EQ(a.type, b.type);
    EXPECT_EQ(a.mode, b.mode);
    EXPECT_EQ(a.uid, b.uid);
    EXPECT_EQ(a.gid, b.gid);
    EXPECT_EQ(a.mtime_ns, b.mtime_ns);
    EXPECT_EQ(a.ctime_ns, b.ctime_ns);
    EXPECT_EQ(a.inode, b.inode);
    EXPECT_EQ(a.dev, b.dev);
    EXPECT_EQ(a.nlink, b.nlink);
    EXPECT_EQ(a.size, b.size);
    EXPECT_EQ(a.content, b.content);
    EXPECT_EQ(a.subtree, b.subtree);
    EXPECT_EQ(a.target, b.target);
  }
  // Hand-written trees: key order, spacing and unsorted entries are accepted like any JSON ...
  const std::string id64(64, 'a');
  auto ok = DecodeTree(R"( { "nodes" : [ {"type":"dir","name":"b","subtree":")" + id64 +
                           R"(","mode":1,"uid":0,"gid":0,"mtime_ns":-5,"ctime_ns":0,"inode":1,"dev":2,"nlink":1,"size":0},
        {"name":"a","type":"file","content":[],"mode":1,"uid":0,"gid":0,"mtime_ns":0,"ctime_ns":0,"inode":1,"dev":2,"nlink":1,"size":0} ] } )",
                       "t");
  ASSERT_TRUE(ok) << ok.error().message();
  ASSERT_EQ(ok->size(), 2u);
  EXPECT_EQ((*ok)[0].mtime_ns, -5);
  EXPECT_EQ((*ok)[1].name, "a");
  // ... and damage is refused with the directory named, whichever parser sees it first.
  const std::string good = EncodeTree({nodes[0]});
  for (const std::string& broken :
       {good.substr(0, good.size() - 3), std::string(R"({"nodes":[{"name":"x","type":"file"}]})"),
        std::string(R"({"nodes":[{"name":"x","type":"dir","subtree":"zz","mode":1,"uid":0,"gid":0,"mtime_ns":0,"ctime_ns":0,"inode":1,"dev":2,"nlink":1,"size":0}]})"),
        std::string(R"({"nodes":[{"name":"..","type":"file","content":[],"mode":1,"uid":0,"gid":0,"mtime_ns":0,"ctime_ns":0,"inode":1,"dev":2,"nlink":1,"size":0}]})"),
        // name_raw wins over name, so it is validated the same way; and it must be base64url.
        std::string(R"({"nodes":[{"name":"ok","name_raw":"Li4","type":"file","content":[],"mode":1,"uid":0,"gid":0,"mtime_ns":0,"ctime_ns":0,"inode":1,"dev":2,"nlink":1,"size":0}]})"),
        std::string(R"({"nodes":[{"name":"ok","name_raw":"*!","type":"file","content":[],"mode":1,"uid":0,"gid":0,"mtime_ns":0,"ctime_ns":0,"inode":1,"dev":2,"nlink":1,"size":0}]})"),
        std::string(R"({"nodes":[{"name":"x","type":"fifo","mode":1,"uid":0,"gid":0,"mtime_ns":0,"ctime_ns":0,"inode":1,"dev":2,"nlink":1,"size":0}]})")}) {
    auto r = DecodeTree(broken, "some/dir");
    ASSERT_FALSE(r) << broken;
    EXPECT_EQ(r.error().code(), Code::kCorruption);
    EXPECT_NE(r.error().message().find("some/dir"), std::string::npos) << r.error().message();
  }
}

TEST(TreeCodec, Utf8ValidationFollowsTheStandard) {
  for (const char* ok : {"", "ascii", "\xc3\xa9", "\xe2\x9c\x93", "\xf0\x9f\x98\x80", "\xf4\x8f\xbf\xbf", "\xed\x9f\xbf"})
    EXPECT_TRUE(ValidUtf8(ok)) << ok;
  for (const char* bad : {"\xe9", "\xc3", "\xc3(", "\xc0\xaf", "\xe0\x80\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80",
                          "\xf5\x80\x80\x80", "\xff", "\xe2\x9c", "\x80"})
    EXPECT_FALSE(ValidUtf8(bad)) << bad;
}

// File names and link targets are bytes on Linux. Ones that are not UTF-8 (latin-1 archives,
// broken unzips) must come back exactly, not with U+FFFD in them.
// (And a time before 1970 comes back too.)
TEST_F(RepoTest, NamesAndLinkTargetsThatAreNotUtf8RoundTripExactly) {
  fs::remove_all(src_);
  const std::string latin = src_ + "/caf\xe9", stray = latin + "/\xff\xfe.bin";
  WriteFile(stray, "bytes\n");
  WriteFile(src_ + "/caf\xc3\xa9/utf8.txt", "the UTF-8 twin of the directory above\n");
  fs::create_symlink("caf\xe9/\xff\xfe.bin", src_ + "/link-\xe9");
  timespec before_1970[2] = {{-100, 250000000}, {-100, 250000000}};  // a negative mtime_ns
  ASSERT_EQ(::utimensat(AT_FDCWD, stray.c_str(), before_1970, 0), 0);
  auto repo = OpenRepo();
  auto s = MustBackup(*repo);
  EXPECT_EQ(s.files_new, 2u);
  repo = OpenRepo();
  auto r = RestoreLatest(*repo, dir_ / "out");
  ASSERT_TRUE(r) << r.error().ToString();
  ExpectSameTree(src_, dir_ / "out/ws");
  EXPECT_EQ(ReadFile(dir_ / "out/ws/caf\xe9/\xff\xfe.bin"), "bytes\n");
  EXPECT_EQ(fs::read_symlink(dir_ / "out/ws/link-\xe9").string(), "caf\xe9/\xff\xfe.bin");
  // Nothing restored under a replaced name.
  for (auto it = fs::recursive_directory_iterator(dir_ / "out"); it != fs::recursive_directory_iterator(); ++it)
    EXPECT_EQ(it->path().string().find("\xef\xbf\xbd"), std::string::npos) << it->path();
  // A second backup finds the parent's entries under the same bytes: nothing re-read.
  auto again = MustBackup(*repo);
  EXPECT_EQ(again.files_unchanged, 2u);
  EXPECT_EQ(again.bytes_read, 0u);
  // A backed-up path that is not UTF-8 is recorded exactly, so the next backup finds its parent.
  BackupOptions o;
  o.paths = {latin};
  ASSERT_TRUE(Backup(*repo, o));
  auto latin_again = Backup(*repo, o);
  ASSERT_TRUE(latin_again) << latin_again.error().ToString();
  EXPECT_TRUE(latin_again->parent.has_value());
  EXPECT_EQ(latin_again->bytes_read, 0u);
  EXPECT_EQ(OpenRepo()->ListSnapshots()->back().second.paths, std::vector<std::string>{latin});
}

// A repository of format `version` with small chunks (16-256 KiB), for the format tests.
Result<std::unique_ptr<Repository>> InitVersion(const fs::path& dir, int version) {
  InitOptions o;
  o.fast_kdf = true;
  o.chunker = {16 * 1024, 15, 256 * 1024};
  o.version = version;
  return Repository::Init(NewLocalBackend(dir.string()), "pw", o);
}

// Restore trusts a version 2 blob's tag instead of re-hashing it, so the tag must bind the blob to
// its id: an index that sends one blob's id to another blob's bytes is refused in every version
// (by the tag from 2, by the id check in 1), by restore and by check --read-data.
TEST(RepoFormat, ABlobUnderAnotherIdsIndexEntryIsRefusedInEveryVersion) {
  for (int version : {1, 2, 3}) {
    SCOPED_TRACE("version " + std::to_string(version));
    TempDir dir;
    auto repo = InitVersion(dir / "repo", version);
    ASSERT_TRUE(repo) << repo.error().ToString();
    EXPECT_EQ((*repo)->config().version, version);
    WriteFile(dir / "ws/a.bin", RandomData(16000, 1));  // under the min chunk: one chunk each, stored raw,
    WriteFile(dir / "ws/b.bin", RandomData(16000, 2));  // the same length (20000 bytes could cut in two)
    BackupOptions bo;
    bo.paths = {dir / "ws"};
    ASSERT_TRUE(Backup(**repo, bo));
    {  // intact, both versions round-trip (version 1: no associated data, ids recomputed)
      auto r = RestoreLatest(**repo, dir / "good");
      ASSERT_TRUE(r) << r.error().ToString();
      EXPECT_EQ(ReadFile(dir / "good/ws/a.bin"), RandomData(16000, 1));
      EXPECT_EQ(ReadFile(dir / "good/ws/b.bin"), RandomData(16000, 2));
      auto c = Check(**repo, true);
      ASSERT_TRUE(c);
      EXPECT_TRUE(c->errors.empty());
    }
    auto by_pack = (*repo)->IndexByPack();
    std::vector<BlobLocation*> data;
    for (auto& [pack, blobs] : by_pack) {
      for (auto& [id, l] : blobs) {
        if (l.type == BlobType::kData) data.push_back(&l);
      }
    }
    ASSERT_EQ(data.size(), 2u);
    ASSERT_EQ(data[0]->length, data[1]->length);
    std::swap(*data[0], *data[1]);
    ASSERT_TRUE((*repo)->RewriteIndex(by_pack).ok());
    auto reopened = Repository::Open(NewLocalBackend(dir / "repo"), "pw");
    ASSERT_TRUE(reopened);
    EXPECT_EQ((*reopened)->config().version, version);
    auto r = RestoreLatest(**reopened, dir / "out");
    ASSERT_FALSE(r) << "restore accepted a blob under another blob's id";
    EXPECT_EQ(r.error().code(), Code::kCorruption);
    EXPECT_NE(r.error().message().find(version >= 2 ? "authentication failed" : "does not match its id"), std::string::npos)
        << r.error().message();
    auto c = Check(**reopened, true);
    ASSERT_TRUE(c);
    EXPECT_EQ(c->errors.size(), 2u);
  }
}

// Version 3 names a pack by the SHA-256 of its header and trailer and keeps an XXH3-128 of its blobs
// in the trailer; versions 1-2 name it by the SHA-256 of all its bytes. Either way a damaged byte
// anywhere in a pack is found without the key (VerifyPackBytes) and named by check --read-data,
// and version 2 repositories keep writing version 2 packs.
TEST(RepoFormat, PackNamesAndKeylessDamageChecksInVersions2And3) {
  for (int version : {2, 3}) {
    SCOPED_TRACE("version " + std::to_string(version));
    TempDir dir;
    auto repo = InitVersion(dir / "repo", version);
    ASSERT_TRUE(repo) << repo.error().ToString();
    WriteFile(dir / "ws/random.bin", RandomData(600000, 7));
    std::string text;
    for (int i = 0; i < 20000; ++i) text += "step " + std::to_string(i) + ", loss " + std::to_string(1.0 / (i + 1)) + "\n";
    WriteFile(dir / "ws/log.txt", text);
    BackupOptions bo;
    bo.paths = {dir / "ws"};
    ASSERT_TRUE(Backup(**repo, bo));
    Backend& b = (*repo)->backend();
    auto packs = b.List(FileType::kPack);
    ASSERT_TRUE(packs);
    ASSERT_FALSE(packs->empty());
    std::string victim;
    for (const auto& f : *packs) {
      Id id;
      ASSERT_TRUE(ParseId(f.name, &id));
      std::string bytes = *b.Load({FileType::kPack, f.name});
      EXPECT_TRUE(VerifyPackBytes(id, bytes, version).ok()) << VerifyPackBytes(id, bytes, version).ToString();
      EXPECT_EQ(Sha256(bytes) == id, version < 3) << "pack " << f.name;
      auto header = ReadPackHeader((*repo)->key(), f.name, bytes, version);
      ASSERT_TRUE(header) << header.error().ToString();
      auto loaded = LoadPackHeader(b, (*repo)->key(), f.name, static_cast<int64_t>(bytes.size()), version);
      ASSERT_TRUE(loaded) << loaded.error().ToString();
      EXPECT_EQ(loaded->size(), header->size());
      if (version >= 3) {
        uint32_t hlen;
        std::memcpy(&hlen, bytes.data() + bytes.size() - 4, 4);
        EXPECT_EQ(Sha256(std::string_view(bytes).substr(bytes.size() - PackTrailerSize(3) - hlen)), id);
      }
      if (victim.empty() || bytes.size() > b.Load({FileType::kPack, victim})->size()) victim = f.name;
    }
    Id victim_id;
    ASSERT_TRUE(ParseId(victim, &victim_id));
    const std::string good = *b.Load({FileType::kPack, victim});
    struct Flip {
      size_t at;
      const char* says;
    };
    const size_t trailer = PackTrailerSize(version);
    std::vector<Flip> flips = {{good.size() / 3, version >= 3 ? "do not match the checksum in its trailer" : "does not match its name"},
                               {good.size() - trailer - 6, "does not match its name"},
                               {good.size() - 1, ""}};  // the header length: any error naming the pack
    if (version >= 3) flips.push_back({good.size() - 12, "does not match its name"});  // inside the checksum
    for (const auto& f : flips) {
      SCOPED_TRACE("byte " + std::to_string(f.at) + " of " + std::to_string(good.size()));
      std::string bad = good;
      bad[f.at] ^= 0x20;
      Status v = VerifyPackBytes(victim_id, bad, version);
      ASSERT_FALSE(v.ok());
      EXPECT_EQ(v.code(), Code::kCorruption);
      EXPECT_NE(v.message().find(victim), std::string::npos) << v.message();
      EXPECT_NE(v.message().find(f.says), std::string::npos) << v.message();
      ASSERT_TRUE(b.Save({FileType::kPack, victim}, bad).ok());
      auto reopened = Repository::Open(NewLocalBackend(dir / "repo"), "pw");
      ASSERT_TRUE(reopened);
      auto c = Check(**reopened, true);
      ASSERT_TRUE(c);
      ASSERT_FALSE(c->errors.empty()) << "check --read-data missed a flipped byte";
      EXPECT_NE(c->errors.front().find(victim), std::string::npos) << c->errors.front();
      ASSERT_TRUE(b.Save({FileType::kPack, victim}, good).ok());
    }
    auto c = Check(**repo, true);
    ASSERT_TRUE(c);
    EXPECT_TRUE(c->errors.empty()) << c->errors.front();
  }
}

TEST_F(RepoTest, UnknownFormatVersionIsRefused) {
  auto repo = OpenRepo();
  std::string cfg = R"({"version":99,"id":"x","chunker":{"min":1,"avg_bits":20,"max":2},"gear_seed":"1"})";
  ASSERT_TRUE(repo->backend().Save({FileType::kConfig, ""}, Seal(repo->key(), cfg)).ok());
  auto r = Repository::Open(NewLocalBackend(repo_dir_), "pw");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code(), Code::kFailedPrecondition);
  EXPECT_NE(r.error().message().find("version 99"), std::string::npos);
}

TEST_F(RepoTest, FailedUploadsLeaveARepositoryThatChecksAndTheNextBackupFinishes) {
  for (int64_t fail_at : {2, 4, 6}) {
    SCOPED_TRACE(fail_at);
    {
      auto failing = std::make_unique<FailingBackend>(NewLocalBackend(repo_dir_), 0, 0, Status::Ok());
      FailingBackend* fb = failing.get();
      auto repo = OpenRepo(std::move(failing));
      ASSERT_TRUE(repo);
      repo->SetPackSize(256 * 1024);  // several packs per backup, so some land before the failure
      fb->FailAfter(fail_at, -1, FailingBackend::Permanent());
      WriteFile(src_ + "/data/extra" + std::to_string(fail_at), RandomData(1 << 20, fail_at));
      BackupOptions o;
      o.paths = {src_};
      auto s = Backup(*repo, o);
      EXPECT_FALSE(s);
    }
    auto repo = OpenRepo();
    auto c = Check(*repo, true);
    ASSERT_TRUE(c);
    EXPECT_TRUE(c->errors.empty()) << c->errors.front();
    MustBackup(*repo);
    auto after = Check(*repo, true);
    EXPECT_TRUE(after->errors.empty());
  }
  // Prune removes the packs the failed backups left behind.
  auto repo = OpenRepo();
  auto before = Check(*repo, false);
  ASSERT_TRUE(before);
  EXPECT_FALSE(before->warnings.empty()) << "the failed backups should have left unindexed packs";
  auto pr = Prune(*repo);
  ASSERT_TRUE(pr) << pr.error().ToString();
  auto clean = Check(*OpenRepo(), true);
  EXPECT_TRUE(clean->errors.empty());
  EXPECT_TRUE(clean->warnings.empty());
}

// New key files record their lanes; a key file without "lanes" (written before it existed) is a
// one-lane key and still opens; a lane count that does not match the key file's derivation does not.
TEST_F(RepoTest, KeyFilesRecordTheirLanesAndOlderOneLaneKeyFilesStillOpen) {
  OpenRepo();
  auto backend = NewLocalBackend(repo_dir_);
  auto keys = backend->List(FileType::kKey);
  ASSERT_TRUE(keys && keys->size() == 1u);
  std::string name = keys->front().name;
  auto kf = nlohmann::json::parse(*backend->Load({FileType::kKey, name}));
  ASSERT_EQ(kf["lanes"], 2);
  std::string salt, sealed;
  ASSERT_TRUE(Base64UrlDecode(kf["salt"].get<std::string>(), &salt));
  ASSERT_TRUE(Base64UrlDecode(kf["data"].get<std::string>(), &sealed));
  KdfParams p{kf["opslimit"], kf["memlimit"], salt, 2};
  auto two = DeriveKey("pw", p);
  ASSERT_TRUE(two);
  auto master = OpenWith(two->data(), sealed);
  ASSERT_TRUE(master) << "the key file's data does not open with its own parameters";
  auto write_key = [&](const nlohmann::json& j) {
    ASSERT_TRUE(backend->Remove({FileType::kKey, name}).ok());
    std::string text = j.dump(2);
    name = IdHex(Sha256(text));
    ASSERT_TRUE(backend->Save({FileType::kKey, name, true}, text).ok());
  };
  // The same master key under a one-lane derivation, without the field: an older key file.
  p.lanes = 1;
  auto one = DeriveKey("pw", p);
  ASSERT_TRUE(one);
  std::string resealed = SealWith(one->data(), *master);
  kf["data"] = Base64UrlEncode(resealed);
  kf.erase("lanes");
  write_key(kf);
  EXPECT_TRUE(Repository::Open(NewLocalBackend(repo_dir_), "pw")) << "a key file without lanes did not open";
  kf["lanes"] = 2;  // now claims two lanes but was derived with one
  write_key(kf);
  auto wrong = Repository::Open(NewLocalBackend(repo_dir_), "pw");
  ASSERT_FALSE(wrong);
  EXPECT_EQ(wrong.error().code(), Code::kUnauthenticated);
  kf["lanes"] = 1000;  // out of range: never derived with
  write_key(kf);
  EXPECT_FALSE(Repository::Open(NewLocalBackend(repo_dir_), "pw"));
  kf["lanes"] = 1;
  write_key(kf);
  EXPECT_TRUE(Repository::Open(NewLocalBackend(repo_dir_), "pw"));
}

// Counts the loads of each index and snapshot file, and lets a test wait for them.
class LoadCountingBackend final : public Backend {
 public:
  explicit LoadCountingBackend(std::unique_ptr<Backend> inner) : inner_(std::move(inner)) {}
  std::map<std::string, int> loads() {
    std::lock_guard l(mu_);
    return loads_;
  }
  bool WaitForLoads(size_t names) {
    std::unique_lock l(mu_);
    return cv_.wait_for(l, std::chrono::seconds(30), [&] { return loads_.size() >= names; });
  }
  std::string Location() const override { return inner_->Location(); }
  int Connections() const override { return inner_->Connections(); }
  Status Create() override { return inner_->Create(); }
  Status Save(const Handle& h, std::string_view data) override { return inner_->Save(h, data); }
  Result<std::string> Load(const Handle& h, int64_t offset = 0, int64_t length = 0) override {
    auto r = inner_->Load(h, offset, length);
    if (h.type == FileType::kIndex || h.type == FileType::kSnapshot) {
      std::lock_guard l(mu_);
      ++loads_[ObjectPath(h)];
      cv_.notify_all();
    }
    return r;
  }
  Result<FileInfo> Stat(const Handle& h) override { return inner_->Stat(h); }
  Status Remove(const Handle& h) override { return inner_->Remove(h); }
  Result<std::vector<FileInfo>> List(FileType t) override { return inner_->List(t); }

 private:
  std::unique_ptr<Backend> inner_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, int> loads_;
};

// Open loads the index and snapshot files while it derives the key. Each is still loaded once,
// still verified, and a snapshot removed after it was fetched is not listed: the listing decides.
TEST_F(RepoTest, FilesFetchedDuringOpenAreLoadedOnceVerifiedAndNeverOutliveTheirListing) {
  {
    auto repo = OpenRepo();
    for (int i = 0; i < 3; ++i) {
      WriteFile(src_ + "/data/round.txt", "round " + std::to_string(i));
      MustBackup(*repo);
    }
  }
  auto plain = OpenRepo()->ListSnapshots();
  ASSERT_TRUE(plain && plain->size() == 3u);
  size_t index_files = NewLocalBackend(repo_dir_)->List(FileType::kIndex)->size();
  ASSERT_GE(index_files, 3u);

  auto counting = std::make_unique<LoadCountingBackend>(NewLocalBackend(repo_dir_));
  LoadCountingBackend* cb = counting.get();
  auto repo = Repository::Open(std::move(counting), "pw");
  ASSERT_TRUE(repo) << repo.error().ToString();
  auto listed = (*repo)->ListSnapshots();
  ASSERT_TRUE(listed);
  ASSERT_EQ(listed->size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ((*listed)[i].first, (*plain)[i].first);
    EXPECT_EQ((*listed)[i].second.tree, (*plain)[i].second.tree);
  }
  auto loads = cb->loads();
  EXPECT_EQ(loads.size(), index_files + 3);
  for (const auto& [path, n] : loads) EXPECT_EQ(n, 1) << path << " was loaded " << n << " times";
  EXPECT_GT((*repo)->IndexedBlobs(), 0u);

  // Fetched, then removed by another process: the next listing does not contain it.
  auto counting2 = std::make_unique<LoadCountingBackend>(NewLocalBackend(repo_dir_));
  LoadCountingBackend* cb2 = counting2.get();
  auto repo2 = Repository::Open(std::move(counting2), "pw");
  ASSERT_TRUE(repo2);
  ASSERT_TRUE(cb2->WaitForLoads(index_files + 3)) << "the snapshot files were not fetched";
  Id gone = (*plain)[1].first;
  ASSERT_TRUE(NewLocalBackend(repo_dir_)->Remove({FileType::kSnapshot, IdHex(gone)}).ok());
  auto after = (*repo2)->ListSnapshots();
  ASSERT_TRUE(after);
  ASSERT_EQ(after->size(), 2u);
  for (const auto& [id, m] : *after) EXPECT_NE(id, gone);

  // A damaged snapshot file is named whether or not its copy was fetched.
  Id damaged = (*plain)[2].first;
  std::string path = repo_dir_ + "/" + ObjectPath({FileType::kSnapshot, IdHex(damaged)});
  std::string bytes = ReadFile(path);
  bytes[bytes.size() / 2] ^= 1;
  ::chmod(path.c_str(), 0600);
  WriteFile(path, bytes);
  auto broken = OpenRepo()->ListSnapshots();
  ASSERT_FALSE(broken);
  EXPECT_NE(broken.error().message().find(IdHex(damaged)), std::string::npos) << broken.error().message();
  EXPECT_NE(broken.error().message().find("damaged"), std::string::npos) << broken.error().message();
}

TEST_F(RepoTest, ChangePasswordReplacesTheKey) {
  auto repo = OpenRepo();
  ASSERT_TRUE(repo->ChangePassword("new-pw", true).ok());
  EXPECT_FALSE(Repository::Open(NewLocalBackend(repo_dir_), "pw"));
  EXPECT_TRUE(Repository::Open(NewLocalBackend(repo_dir_), "new-pw"));
  EXPECT_EQ(NewLocalBackend(repo_dir_)->List(FileType::kKey)->size(), 1u);
}

TEST_F(RepoTest, ExclusiveLockConflictsAndNamesTheHolder) {
  auto a = OpenRepo();
  auto b = OpenRepo();
  auto shared = a->LockRepo(false);
  ASSERT_TRUE(shared);
  EXPECT_TRUE(b->LockRepo(false));  // shared + shared is fine
  auto ex = b->LockRepo(true);
  ASSERT_FALSE(ex);
  EXPECT_EQ(ex.error().code(), Code::kConflict);
  EXPECT_NE(ex.error().message().find("PID " + std::to_string(getpid())), std::string::npos);
  shared->reset();
  EXPECT_TRUE(b->LockRepo(true));
}

// A backup that runs past the stale age keeps its lock (it is refreshed), so a prune elsewhere
// cannot take the repository and delete its not-yet-indexed packs; a lock nobody refreshes (its
// holder hung or lost the network) does go stale. Timings are shortened: stale after 2 s.
TEST_F(RepoTest, HeldLocksAreRefreshedAndOnlyAbandonedOnesGoStale) {
  auto a = OpenRepo();
  auto b = OpenRepo();
  a->SetLockTiming(0.1, 2);
  b->SetLockTiming(0.1, 2);
  auto held = a->LockRepo(false);
  ASSERT_TRUE(held);
  // 35 refreshes at 0.1 s apart: the lock was taken more than 3.5 s ago.
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while ((*held)->refreshes() < 35 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_GE((*held)->refreshes(), 35);
  auto ex = b->LockRepo(true);
  ASSERT_FALSE(ex) << "a refreshed lock was taken for stale";
  EXPECT_EQ(ex.error().code(), Code::kConflict);
  held->reset();
  EXPECT_EQ(NewLocalBackend(repo_dir_)->List(FileType::kLock)->size(), 0u);

  a->SetLockTiming(1e6, 2);  // never refreshed
  auto abandoned = a->LockRepo(false);
  ASSERT_TRUE(abandoned);
  int64_t taken = ::time(nullptr);
  while (::time(nullptr) <= taken + 3) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ((*abandoned)->refreshes(), 0);
  EXPECT_TRUE(b->LockRepo(true)) << "a lock past the stale age was not removed";
}

// A damaged or lost index is rebuilt from the packs' headers: the repository then opens, checks
// clean and restores identically. A pack whose header is damaged is named and skipped.
TEST_F(RepoTest, RepairIndexRebuildsALostOrDamagedIndexFromPackHeaders) {
  {
    auto repo = OpenRepo();
    MustBackup(*repo);
    WriteFile(src_ + "/code/more.py", "x = 2\n");
    MustBackup(*repo);
  }
  auto b = NewLocalBackend(repo_dir_);
  auto idx = b->List(FileType::kIndex);
  ASSERT_GE(idx->size(), 2u);
  ASSERT_TRUE(b->Save({FileType::kIndex, (*idx)[0].name}, "garbage").ok());
  auto refused = Repository::Open(NewLocalBackend(repo_dir_), "pw");
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.error().message().find((*idx)[0].name), std::string::npos) << refused.error().message();
  {
    auto repo = Repository::Open(NewLocalBackend(repo_dir_), "pw", false);
    ASSERT_TRUE(repo) << repo.error().ToString();
    auto r = RepairIndex(**repo);
    ASSERT_TRUE(r) << r.error().ToString();
    EXPECT_TRUE(r->unreadable.empty());
    EXPECT_EQ(r->index_files_replaced, idx->size());
    EXPECT_EQ(r->packs, b->List(FileType::kPack)->size());
  }
  EXPECT_EQ(b->List(FileType::kIndex)->size(), 1u);
  auto repo = OpenRepo();
  ASSERT_TRUE(repo);
  auto c = Check(*repo, true);
  ASSERT_TRUE(c);
  EXPECT_TRUE(c->errors.empty()) << c->errors.front();
  ASSERT_TRUE(RestoreLatest(*repo, dir_ / "out"));
  ExpectSameTree(src_, dir_ / "out/ws");

  // Every index file lost, and one pack's header damaged: that pack is named, the rest indexed.
  auto remaining = b->List(FileType::kIndex);
  for (const auto& f : *remaining) ASSERT_TRUE(b->Remove({FileType::kIndex, f.name}).ok());
  auto packs = b->List(FileType::kPack);
  ASSERT_GE(packs->size(), 2u);
  const std::string victim = (*packs)[0].name;
  std::string bytes = *b->Load({FileType::kPack, victim});
  bytes[bytes.size() - PackTrailerSize(kRepoVersion) - 6] ^= 0x55;  // inside the sealed header
  ASSERT_TRUE(b->Save({FileType::kPack, victim}, bytes).ok());
  auto bare = Repository::Open(NewLocalBackend(repo_dir_), "pw", false);
  ASSERT_TRUE(bare);
  auto r = RepairIndex(**bare);
  ASSERT_TRUE(r) << r.error().ToString();
  ASSERT_EQ(r->unreadable.size(), 1u);
  EXPECT_NE(r->unreadable[0].find(victim), std::string::npos) << r->unreadable[0];
  EXPECT_EQ(r->packs, packs->size() - 1);
  EXPECT_EQ(r->index_files_replaced, 0u);
  auto after = OpenRepo();
  ASSERT_TRUE(after);
  auto checked = Check(*after, false);
  ASSERT_TRUE(checked) << checked.error().ToString();
  EXPECT_FALSE(checked->errors.empty()) << "blobs of the skipped pack must show as missing";
}

TEST_F(RepoTest, BackupAndRestoreThroughS3) {
  std::string why;
  bool skip = false;
  auto backend = NewTestS3Backend(&why, &skip);
  if (skip) GTEST_SKIP() << "no S3 server (ctest provides the RGW fixture)";
  ASSERT_TRUE(backend) << why;
  std::string location = backend->Location();
  InitOptions o;
  o.fast_kdf = true;
  ASSERT_TRUE(Repository::Init(std::move(backend), "pw", o));
  auto repo = Repository::Open(std::move(*OpenBackend(location)), "pw");
  ASSERT_TRUE(repo) << repo.error().ToString();
  MustBackup(**repo);
  auto again = Repository::Open(std::move(*OpenBackend(location)), "pw");
  ASSERT_TRUE(again);
  auto snap = (*again)->FindSnapshot("latest");
  ASSERT_TRUE(snap);
  RestoreOptions ro;
  ro.target = dir_ / "from-s3";
  ASSERT_TRUE(Restore(**again, snap->second.tree, ro));
  ExpectSameTree(src_, dir_ / "from-s3/ws");
  auto c = Check(**again, true);
  ASSERT_TRUE(c);
  EXPECT_TRUE(c->errors.empty());
}

TEST(Retention, KeepsNewestPerPeriod) {
  const int64_t s = 1'000'000'000;  // times are Unix nanoseconds
  int64_t day = 86400 * s;
  int64_t t0 = (1700000000 - 1700000000 % 86400) * s;  // midnight UTC
  std::vector<int64_t> times;
  for (int d = 0; d < 10; ++d) {
    times.push_back(t0 + d * day + 3600 * s);
    times.push_back(t0 + d * day + 7200 * s);
  }
  auto keep = ApplyRetention(times, {.keep_daily = 3});
  int kept = 0;
  for (size_t i = 0; i < keep.size(); ++i) {
    if (keep[i]) {
      ++kept;
      EXPECT_EQ((times[i] - t0) % day, 7200 * s) << "kept an older snapshot of its day";
      EXPECT_GE(times[i], t0 + 7 * day);
    }
  }
  EXPECT_EQ(kept, 3);
  auto last = ApplyRetention(times, {.keep_last = 2});
  EXPECT_TRUE(last[19] && last[18] && !last[17]);
  auto none = ApplyRetention(times, {});
  EXPECT_EQ(std::count(none.begin(), none.end(), true), 0);
  auto both = ApplyRetention(times, {.keep_last = 1, .keep_weekly = 2});
  EXPECT_GE(std::count(both.begin(), both.end(), true), 2);
  // Snapshots within one second are still ordered.
  auto close = ApplyRetention({5 * s + 1, 5 * s + 2, 5 * s}, {.keep_last = 1});
  EXPECT_TRUE(close[1] && !close[0] && !close[2]);
}

TEST_F(RepoTest, ForgetAndPruneFreeSpaceAndLeaveACleanRepository) {
  auto repo = OpenRepo();
  MustBackup(*repo);
  fs::remove(src_ + "/data/weights.bin");
  WriteFile(src_ + "/data/other.bin", RandomData(2 << 20, 77));
  MustBackup(*repo);
  auto forgot = Forget(*repo, {.keep_last = 1}, false);
  ASSERT_TRUE(forgot);
  EXPECT_EQ(forgot->removed.size(), 1u);
  auto pr = Prune(*repo);
  ASSERT_TRUE(pr) << pr.error().ToString();
  EXPECT_GT(pr->bytes_freed, 2u << 20);
  auto reopened = OpenRepo();
  auto c = Check(*reopened, true);
  ASSERT_TRUE(c);
  EXPECT_TRUE(c->errors.empty()) << c->errors.front();
  EXPECT_TRUE(c->warnings.empty());
  auto snap = reopened->FindSnapshot("latest");
  RestoreOptions ro;
  ro.target = dir_ / "out";
  ASSERT_TRUE(Restore(*reopened, snap->second.tree, ro));
  EXPECT_TRUE(ReadFile(dir_ / "out/ws/data/other.bin") == ReadFile(src_ + "/data/other.bin"));
  EXPECT_FALSE(Forget(*reopened, {}, false));
}

TEST_F(RepoTest, RestoreIntoAFullDiskFailsWithTheFileName) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to mount a tiny tmpfs";
  std::string mnt = dir_ / "tiny";
  fs::create_directories(mnt);
  if (system(("mount -t tmpfs -o size=1m tmpfs " + mnt + " 2>/dev/null").c_str()) != 0) {
    GTEST_SKIP() << "cannot mount tmpfs here";
  }
  auto repo = OpenRepo();
  MustBackup(*repo);
  auto snap = repo->FindSnapshot("latest");
  RestoreOptions ro;
  ro.target = mnt;
  auto r = Restore(*repo, snap->second.tree, ro);
  system(("umount " + mnt).c_str());
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message().find("disk is full"), std::string::npos) << r.error().message();
  EXPECT_NE(r.error().message().find(mnt), std::string::npos);
}

}  // namespace
}  // namespace dumont::snapshot
