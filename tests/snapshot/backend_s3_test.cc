// The S3 backend and the retry/fault-injection decorators.
//  - ParseS3Location: syntax and credential errors (no server needed).
//  - WithRetries + FailingBackend: which errors are retried, how often, and the backoff (injected sleep).
//  - Against a real S3 server, the Ceph RADOS Gateway that tests/rgw_harness.sh starts (ctest fixture
//    "rgw"): DUMONT_TEST_RGW_STATE names the harness state dir whose `env` file gives the endpoint and
//    keys. Without DUMONT_TEST_RGW_STATE the tests also accept DUMONT_TEST_S3_ENDPOINT + AWS_* from the
//    environment (`. STATE/env` by hand), and are skipped when neither is set. If
//    DUMONT_TEST_RGW_STATE is set but its env file is missing they FAIL: the fixture broke.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "common/random.h"
#include "snapshot/backend.h"
#include "snapshot/backend_retry.h"
#include "snapshot/backend_s3.h"
#include "snapshot/crypto.h"
#include "snapshot/rgw_env.h"

namespace dumont::snapshot {
namespace {

using std::chrono::milliseconds;

EnvLookup FakeEnv(std::map<std::string, std::string> vars) {
  auto m = std::make_shared<std::map<std::string, std::string>>(std::move(vars));
  return [m](const char* name) -> const char* {
    auto it = m->find(name);
    return it == m->end() ? nullptr : it->second.c_str();
  };
}

const std::map<std::string, std::string> kCreds = {{"AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"},
                                                   {"AWS_SECRET_ACCESS_KEY", "s3cr3t/+key"},
                                                   {"AWS_DEFAULT_REGION", "eu-west-3"}};

// ---------------------------------------------------------------------------------------------------
// ParseS3Location

TEST(ParseS3Location, PathStyleWithPortAndPrefix) {
  auto o = ParseS3Location("s3:http://127.0.0.1:7480/my-bucket/team/repo1", FakeEnv(kCreds));
  ASSERT_TRUE(o) << o.error().ToString();
  EXPECT_EQ(o->endpoint, "http://127.0.0.1:7480");
  EXPECT_EQ(o->bucket, "my-bucket");
  EXPECT_EQ(o->prefix, "team/repo1");
  EXPECT_EQ(o->access_key_id, "AKIDEXAMPLE");
  EXPECT_EQ(o->secret_access_key, "s3cr3t/+key");
  EXPECT_EQ(o->region, "eu-west-3");
  EXPECT_FALSE(o->virtual_host_style);
  EXPECT_EQ(o->connections, 32);
  EXPECT_EQ(S3LocationString(*o), "s3:http://127.0.0.1:7480/my-bucket/team/repo1");
}

TEST(ParseS3Location, HttpsWithoutPortOrPrefixAndTrailingSlashes) {
  auto o = ParseS3Location("s3:https://s3.eu-west-3.amazonaws.com/bucket.one//", FakeEnv(kCreds));
  ASSERT_TRUE(o) << o.error().ToString();
  EXPECT_EQ(o->endpoint, "https://s3.eu-west-3.amazonaws.com");
  EXPECT_EQ(o->bucket, "bucket.one");
  EXPECT_EQ(o->prefix, "");
  o = ParseS3Location("s3:http://[::1]:9000/b_u-c/p/", FakeEnv(kCreds));
  ASSERT_TRUE(o) << o.error().ToString();
  EXPECT_EQ(o->endpoint, "http://[::1]:9000");
  EXPECT_EQ(o->bucket, "b_u-c");
  EXPECT_EQ(o->prefix, "p");
}

TEST(ParseS3Location, RejectsMalformedLocations) {
  const char* bad[] = {
      "http://host/bucket",                // no s3:
      "s3:host/bucket",                    // no scheme
      "s3:ftp://host/bucket",              // wrong scheme
      "s3:http://",                        // no host
      "s3:http:///bucket",                 // empty host
      "s3:http://host",                    // no bucket
      "s3:http://host/",                   // no bucket
      "s3:http://host:/bucket",            // empty port
      "s3:http://host:0/bucket",           // port out of range
      "s3:http://host:65536/bucket",       // port out of range
      "s3:http://host:80a/bucket",         // port not a number
      "s3:http://[::1/bucket",             // unterminated IPv6
      "s3:http://user:pw@host/bucket",     // credentials in the URL
      "s3:http://host/ab",                 // bucket too short
      "s3:http://host/Bad!Bucket",         // bad character
      "s3:http://host/-bucket",            // must start with a letter or digit
      "s3:http://host/bucket/a//b",        // empty prefix component
      "s3:http://host/bucket/../x",        // '..' component
      "s3:http://host/bucket?versioning",  // query
      "s3:http://host/bucket#frag",        // fragment
      "s3:http://host/buck et",            // whitespace
  };
  for (const char* loc : bad) {
    auto o = ParseS3Location(loc, FakeEnv(kCreds));
    EXPECT_FALSE(o) << loc << " was accepted";
    if (!o) {
      EXPECT_EQ(o.error().code(), Code::kInvalidArgument) << loc;
      EXPECT_NE(o.error().message().find("s3:http(s)://host[:port]/bucket[/prefix]"), std::string::npos)
          << o.error().message();
    }
  }
}

TEST(ParseS3Location, MissingCredentialsNameTheVariable) {
  auto o = ParseS3Location("s3:http://h/bucket", FakeEnv({{"AWS_SECRET_ACCESS_KEY", "x"}}));
  ASSERT_FALSE(o);
  EXPECT_EQ(o.error().code(), Code::kInvalidArgument);
  EXPECT_NE(o.error().message().find("AWS_ACCESS_KEY_ID"), std::string::npos) << o.error().message();

  o = ParseS3Location("s3:http://h/bucket", FakeEnv({{"AWS_ACCESS_KEY_ID", "x"}, {"AWS_SECRET_ACCESS_KEY", ""}}));
  ASSERT_FALSE(o);
  EXPECT_NE(o.error().message().find("AWS_SECRET_ACCESS_KEY"), std::string::npos) << o.error().message();
}

TEST(ParseS3Location, RegionFallsBackToAwsRegionThenUsEast1) {
  auto env = kCreds;
  env.erase("AWS_DEFAULT_REGION");
  auto o = ParseS3Location("s3:http://h/bucket", FakeEnv(env));
  ASSERT_TRUE(o);
  EXPECT_EQ(o->region, "us-east-1");
  env["AWS_REGION"] = "ap-south-1";
  o = ParseS3Location("s3:http://h/bucket", FakeEnv(env));
  ASSERT_TRUE(o);
  EXPECT_EQ(o->region, "ap-south-1");
  env["AWS_DEFAULT_REGION"] = "bad region!";
  EXPECT_FALSE(ParseS3Location("s3:http://h/bucket", FakeEnv(env)));
}

// Parallel requests default to 32; DUMONT_S3_CONNECTIONS changes them (a small server may prefer
// fewer), and a value that is not 1..256 is an error that names the variable.
TEST(ParseS3Location, ConnectionsComeFromTheEnvironment) {
  auto env = kCreds;
  env["DUMONT_S3_CONNECTIONS"] = "8";
  auto o = ParseS3Location("s3:http://127.0.0.1:7480/b-1", FakeEnv(env));
  ASSERT_TRUE(o) << o.error().ToString();
  EXPECT_EQ(o->connections, 8);
  for (const char* bad : {"0", "257", "eight", "-3", "8x"}) {
    env["DUMONT_S3_CONNECTIONS"] = bad;
    auto e = ParseS3Location("s3:http://127.0.0.1:7480/b-1", FakeEnv(env));
    ASSERT_FALSE(e) << bad;
    EXPECT_NE(e.error().message().find("DUMONT_S3_CONNECTIONS"), std::string::npos) << e.error().message();
  }
}

TEST(ParseS3Location, SessionTokenAndCaBundle) {
  auto env = kCreds;
  env["AWS_SESSION_TOKEN"] = "tok";
  env["AWS_CA_BUNDLE"] = "/etc/ssl/certs/ca-certificates.crt";
  auto o = ParseS3Location("s3:https://h/bucket", FakeEnv(env));
  ASSERT_TRUE(o);
  EXPECT_EQ(o->session_token, "tok");
  EXPECT_EQ(o->ca_bundle, "/etc/ssl/certs/ca-certificates.crt");
  o = ParseS3Location("s3:http://h/bucket", FakeEnv(env));  // plain http: no CA bundle
  ASSERT_TRUE(o);
  EXPECT_EQ(o->ca_bundle, "");
}

TEST(S3Backend, LocationHasNoSecrets) {
  auto o = ParseS3Location("s3:http://127.0.0.1:1/bucket/p", FakeEnv(kCreds));
  ASSERT_TRUE(o);
  auto b = NewS3Backend(*o);
  EXPECT_EQ(b->Location(), "s3:http://127.0.0.1:1/bucket/p");
  EXPECT_EQ(b->Connections(), 32);
}

TEST(S3Backend, UnreachableServerIsRetryable) {
  auto o = ParseS3Location("s3:http://127.0.0.1:1/bucket/p", FakeEnv(kCreds));  // nothing listens on port 1
  ASSERT_TRUE(o);
  auto b = NewS3Backend(*o);
  auto r = b->Load(Handle{FileType::kIndex, "00ff"});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code(), Code::kUnavailable) << r.error().ToString();
  EXPECT_TRUE(r.error().retryable());
  EXPECT_NE(r.error().message().find("127.0.0.1:1"), std::string::npos) << r.error().message();
  EXPECT_FALSE(b->Save(Handle{FileType::kIndex, "00ff"}, "x").ok());
}

// ---------------------------------------------------------------------------------------------------
// WithRetries and FailingBackend

// A minimal in-memory backend so these tests depend on nothing else.
class MapBackend final : public Backend {
 public:
  std::string Location() const override { return "map:"; }
  int Connections() const override { return 4; }
  Status Create() override { return Status::Ok(); }
  Status Save(const Handle& h, std::string_view data) override {
    std::lock_guard l(mu_);
    m_[ObjectPath(h)] = std::string(data);
    return Status::Ok();
  }
  Result<std::string> Load(const Handle& h, int64_t offset, int64_t length) override {
    std::lock_guard l(mu_);
    auto it = m_.find(ObjectPath(h));
    if (it == m_.end()) return Err(Status::NotFound(ObjectPath(h)));
    return it->second.substr(offset, length ? length : std::string::npos);
  }
  Result<FileInfo> Stat(const Handle& h) override {
    std::lock_guard l(mu_);
    auto it = m_.find(ObjectPath(h));
    if (it == m_.end()) return Err(Status::NotFound(ObjectPath(h)));
    return FileInfo{h.name, static_cast<int64_t>(it->second.size())};
  }
  Status Remove(const Handle& h) override {
    std::lock_guard l(mu_);
    m_.erase(ObjectPath(h));
    return Status::Ok();
  }
  Result<std::vector<FileInfo>> List(FileType) override { return std::vector<FileInfo>{}; }

 private:
  std::mutex mu_;
  std::map<std::string, std::string> m_;
};

struct SleepRecorder {
  std::mutex mu;
  std::vector<int64_t> sleeps;
  RetryOptions Options(double jitter = 1.0) {
    RetryOptions o;
    o.sleep = [this](milliseconds d) {
      std::lock_guard l(mu);
      sleeps.push_back(d.count());
    };
    o.jitter = [jitter] { return jitter; };
    return o;
  }
};

const Handle kH{FileType::kSnapshot, "0123abcd"};

TEST(FailingBackend, FailsExactlyTheChosenOperations) {
  auto inner = std::make_unique<MapBackend>();
  FailingBackend f(std::move(inner), 3, 2, FailingBackend::Permanent());
  EXPECT_TRUE(f.Save(kH, "a").ok());                                   // 1
  EXPECT_TRUE(f.Load(kH).has_value());                                 // 2
  EXPECT_EQ(f.Stat(kH).error().code(), Code::kPermissionDenied);       // 3
  EXPECT_EQ(f.Remove(kH).code(), Code::kPermissionDenied);             // 4
  EXPECT_TRUE(f.Stat(kH).has_value());                                 // 5
  EXPECT_EQ(f.operations(), 5);
  EXPECT_EQ(f.failures(), 2);
  f.FailAfter(1, 1, FailingBackend::Retryable());
  EXPECT_TRUE(f.List(FileType::kKey).has_value());                     // 6
  auto r = f.List(FileType::kKey);                                     // 7
  ASSERT_FALSE(r);
  EXPECT_TRUE(r.error().retryable());
  EXPECT_TRUE(f.Create().ok());                                        // 8
}

TEST(WithRetries, RetriesRetryableErrorsUpToTheLimitWithGrowingSleeps) {
  SleepRecorder rec;
  auto failing = std::make_unique<FailingBackend>(std::make_unique<MapBackend>(), 1, -1, FailingBackend::Retryable());
  FailingBackend* f = failing.get();
  std::vector<int> retried_attempts;
  RetryOptions opts = rec.Options();
  opts.on_retry = [&](const Status& s, int attempt, milliseconds) {
    EXPECT_TRUE(s.retryable());
    retried_attempts.push_back(attempt);
  };
  auto b = WithRetries(std::move(failing), opts);
  Status st = b->Save(kH, "data");
  EXPECT_EQ(st.code(), Code::kUnavailable);
  EXPECT_TRUE(st.retryable());
  EXPECT_NE(st.message().find("gave up after 6 attempts"), std::string::npos) << st.message();
  EXPECT_EQ(f->operations(), 6);  // default: 6 attempts
  EXPECT_EQ(rec.sleeps, (std::vector<int64_t>{100, 200, 400, 800, 1600}));  // base 100 ms, doubling
  EXPECT_EQ(retried_attempts, (std::vector<int>{1, 2, 3, 4, 5}));
  for (size_t i = 1; i < rec.sleeps.size(); ++i) EXPECT_GT(rec.sleeps[i], rec.sleeps[i - 1]);
}

TEST(WithRetries, SucceedsOnceTheFaultPasses) {
  SleepRecorder rec;
  auto failing = std::make_unique<FailingBackend>(std::make_unique<MapBackend>(), 2, 3,
                                                  Status::ResourceExhausted("slow down", 0));
  FailingBackend* f = failing.get();
  auto b = WithRetries(std::move(failing), rec.Options());
  ASSERT_TRUE(b->Save(kH, "payload").ok());           // op 1
  auto r = b->Load(kH, 1, 3);                          // ops 2, 3, 4 fail; 5 succeeds
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(*r, "ayl");
  EXPECT_EQ(f->operations(), 5);
  EXPECT_EQ(rec.sleeps, (std::vector<int64_t>{100, 200, 400}));
}

TEST(WithRetries, NeverRetriesPermanentErrors) {
  for (Status permanent : {FailingBackend::Permanent(), Status::NotFound("gone"), Status::Corruption("short"),
                           Status::InvalidArgument("bad")}) {
    SleepRecorder rec;
    auto failing = std::make_unique<FailingBackend>(std::make_unique<MapBackend>(), 1, -1, permanent);
    FailingBackend* f = failing.get();
    auto b = WithRetries(std::move(failing), rec.Options());
    auto r = b->Stat(kH);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code(), permanent.code());
    EXPECT_EQ(r.error().message(), permanent.message());  // untouched
    EXPECT_EQ(f->operations(), 1) << permanent.ToString();
    EXPECT_TRUE(rec.sleeps.empty());
  }
  // A real NotFound from the inner backend is not retried either.
  SleepRecorder rec;
  auto b = WithRetries(std::make_unique<MapBackend>(), rec.Options());
  EXPECT_EQ(b->Load(kH).error().code(), Code::kNotFound);
  EXPECT_TRUE(rec.sleeps.empty());
}

TEST(WithRetries, BackoffIsCappedJitteredAndHonoursRetryAfter) {
  RetryOptions o;  // defaults: 100 ms base, 10 s cap
  Status err = Status::Unavailable("x");
  EXPECT_EQ(RetryDelay(o, 1, 1.0, err).count(), 100);
  EXPECT_EQ(RetryDelay(o, 5, 1.0, err).count(), 1600);
  EXPECT_EQ(RetryDelay(o, 8, 1.0, err).count(), 10000);   // 12.8 s capped
  EXPECT_EQ(RetryDelay(o, 60, 1.0, err).count(), 10000);  // no overflow
  EXPECT_EQ(RetryDelay(o, 3, 0.5, err).count(), 200);     // full jitter scales the whole delay
  EXPECT_EQ(RetryDelay(o, 3, 0.0, err).count(), 0);
  EXPECT_EQ(RetryDelay(o, 1, 0.0, Status::ResourceExhausted("slow", 3)).count(), 3000);
  EXPECT_EQ(RetryDelay(o, 1, 0.0, Status::ResourceExhausted("slow", 60)).count(), 10000);

  // With the default random jitter every sleep stays within [0, min(cap, base * 2^(n-1))].
  std::vector<int64_t> sleeps;
  RetryOptions r;
  r.max_attempts = 9;
  r.sleep = [&](milliseconds d) { sleeps.push_back(d.count()); };
  auto b = WithRetries(
      std::make_unique<FailingBackend>(std::make_unique<MapBackend>(), 1, -1, FailingBackend::Retryable()), r);
  EXPECT_FALSE(b->Remove(kH).ok());
  ASSERT_EQ(sleeps.size(), 8u);
  for (size_t i = 0; i < sleeps.size(); ++i) {
    EXPECT_GE(sleeps[i], 0);
    EXPECT_LE(sleeps[i], std::min<int64_t>(10000, 100ll << i)) << i;
  }
}

TEST(WithRetries, OneAttemptMeansNoRetry) {
  SleepRecorder rec;
  RetryOptions o = rec.Options();
  o.max_attempts = 1;
  auto failing = std::make_unique<FailingBackend>(std::make_unique<MapBackend>(), 1, -1, FailingBackend::Retryable());
  FailingBackend* f = failing.get();
  auto b = WithRetries(std::move(failing), o);
  EXPECT_TRUE(b->Create().retryable());
  EXPECT_EQ(f->operations(), 1);
  EXPECT_TRUE(rec.sleeps.empty());
}

// ---------------------------------------------------------------------------------------------------
// Against the RADOS Gateway of tests/rgw_harness.sh

class RgwTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string error;
    bool skip = false;
    if (!RgwEnvironment(&error, &skip)) {
      if (skip) GTEST_SKIP() << "no S3 server: set DUMONT_TEST_RGW_STATE (ctest does) or DUMONT_TEST_S3_ENDPOINT";
      FAIL() << error;
    }
    endpoint_ = std::getenv("DUMONT_TEST_S3_ENDPOINT");
    // Every test has its own prefix in a shared bucket, so tests can run in parallel.
    auto o = ParseS3Location("s3:" + endpoint_ + "/dumont-test/" + NewId("t-"));
    ASSERT_TRUE(o) << o.error().ToString();
    opts_ = *o;
    backend_ = NewS3Backend(opts_);
    Status st = backend_->Create();
    ASSERT_TRUE(st.ok()) << st.ToString();
  }

  static std::string Hex(int i, int width = 64) {
    static const char* h = "0123456789abcdef";
    std::string s(width, '0');
    for (int k = width - 1; k >= 0 && i; --k, i >>= 4) s[k] = h[i & 15];
    return s;
  }
  static std::string RandomData(size_t n, uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::string s(n, '\0');
    for (size_t i = 0; i < n; i += 8) {
      uint64_t v = rng();
      for (size_t k = 0; k < 8 && i + k < n; ++k) s[i + k] = static_cast<char>(v >> (8 * k));
    }
    return s;
  }

  std::string endpoint_;
  S3Options opts_;
  std::unique_ptr<Backend> backend_;
};

TEST_F(RgwTest, CreateMakesTheBucketAndRefusesAnExistingRepository) {
  std::string bucket = "dumont-" + NewId("");  // lower-case base32: a valid, fresh bucket name
  auto o = ParseS3Location("s3:" + endpoint_ + "/" + bucket + "/repo");
  ASSERT_TRUE(o);
  o->create_bucket = false;
  auto no_create = NewS3Backend(*o);
  Status st = no_create->Create();
  EXPECT_EQ(st.code(), Code::kNotFound) << st.ToString();
  EXPECT_NE(st.message().find(bucket), std::string::npos) << st.message();

  o->create_bucket = true;
  auto b = NewS3Backend(*o);
  st = b->Create();
  ASSERT_TRUE(st.ok()) << st.ToString();
  EXPECT_TRUE(b->Create().ok());  // bucket there, no config yet: still fine
  ASSERT_TRUE(b->Save(Handle{FileType::kConfig, ""}, "cfg").ok());
  st = b->Create();
  EXPECT_EQ(st.code(), Code::kAlreadyExists) << st.ToString();
  EXPECT_EQ(b->Location(), "s3:" + endpoint_ + "/" + bucket + "/repo");

  auto cfg = b->List(FileType::kConfig);
  ASSERT_TRUE(cfg) << cfg.error().ToString();
  ASSERT_EQ(cfg->size(), 1u);
  EXPECT_EQ((*cfg)[0].name, "config");
  EXPECT_EQ((*cfg)[0].size, 3);

  // Another prefix in the same bucket is another (empty) repository.
  o->prefix = "repo2";
  auto other = NewS3Backend(*o);
  EXPECT_TRUE(other->Create().ok());
  EXPECT_TRUE(other->List(FileType::kConfig)->empty());
}

TEST_F(RgwTest, SaveLoadRangesStatRemove) {
  Handle h{FileType::kPack, Hex(0xabcdef)};
  std::string data = RandomData(100000, 1);
  ASSERT_TRUE(backend_->Save(h, data).ok());

  auto all = backend_->Load(h);
  ASSERT_TRUE(all) << all.error().ToString();
  EXPECT_TRUE(*all == data);
  auto mid = backend_->Load(h, 1234, 5678);
  ASSERT_TRUE(mid) << mid.error().ToString();
  EXPECT_TRUE(*mid == data.substr(1234, 5678));
  auto head = backend_->Load(h, 0, 10);
  ASSERT_TRUE(head);
  EXPECT_EQ(*head, data.substr(0, 10));
  auto tail = backend_->Load(h, 99990, 0);  // length 0: to the end
  ASSERT_TRUE(tail);
  EXPECT_EQ(*tail, data.substr(99990));
  auto last = backend_->Load(h, 99999, 1);
  ASSERT_TRUE(last);
  EXPECT_EQ(*last, data.substr(99999));
  auto at_end = backend_->Load(h, 100000, 0);
  ASSERT_TRUE(at_end) << at_end.error().ToString();
  EXPECT_EQ(*at_end, "");

  // Ranges past the end are Corruption (the index promised bytes the object does not have).
  for (auto [off, len] : {std::pair<int64_t, int64_t>{99990, 20}, {100000, 1}, {200000, 0}, {200000, 5}}) {
    auto r = backend_->Load(h, off, len);
    ASSERT_FALSE(r) << off << "+" << len;
    EXPECT_EQ(r.error().code(), Code::kCorruption) << off << "+" << len << ": " << r.error().ToString();
    EXPECT_FALSE(r.error().retryable());
  }
  EXPECT_EQ(backend_->Load(h, -1, 0).error().code(), Code::kInvalidArgument);

  auto st = backend_->Stat(h);
  ASSERT_TRUE(st) << st.error().ToString();
  EXPECT_EQ(st->size, 100000);
  EXPECT_EQ(st->name, h.name);

  // Saving again replaces.
  ASSERT_TRUE(backend_->Save(h, "short").ok());
  EXPECT_EQ(*backend_->Load(h), "short");
  EXPECT_EQ(backend_->Stat(h)->size, 5);

  // Empty objects.
  Handle empty{FileType::kLock, Hex(7)};
  ASSERT_TRUE(backend_->Save(empty, "").ok());
  EXPECT_EQ(*backend_->Load(empty), "");
  EXPECT_EQ(backend_->Stat(empty)->size, 0);
  EXPECT_EQ(backend_->Load(empty, 0, 1).error().code(), Code::kCorruption);

  // Remove is idempotent; then the object is gone.
  ASSERT_TRUE(backend_->Remove(h).ok());
  ASSERT_TRUE(backend_->Remove(h).ok());
  auto gone = backend_->Load(h);
  ASSERT_FALSE(gone);
  EXPECT_EQ(gone.error().code(), Code::kNotFound);
  EXPECT_FALSE(gone.error().retryable());
  EXPECT_NE(gone.error().message().find(ObjectPath(h)), std::string::npos) << gone.error().message();
}

// A content-named object (a pack, index, snapshot or key file) sends its name as the SigV4 payload
// hash instead of hashing the body again. The server checks it: a name that is not the SHA-256 of
// the bytes is refused and nothing is stored under it.
TEST_F(RgwTest, ContentNamedSavesSendTheirNameAsThePayloadHash) {
  std::string data = RandomData(300000, 5);
  Handle good{FileType::kPack, IdHex(Sha256(data)), true};
  ASSERT_TRUE(backend_->Save(good, data).ok());
  auto back = backend_->Load(good);
  ASSERT_TRUE(back) << back.error().ToString();
  EXPECT_TRUE(*back == data);

  Handle wrong{FileType::kPack, IdHex(Sha256("something else")), true};
  Status st = backend_->Save(wrong, data);
  ASSERT_FALSE(st.ok()) << "a pack whose name is not its hash was stored";
  EXPECT_NE(st.message().find(wrong.name.substr(0, 16)), std::string::npos) << st.message();
  auto gone = backend_->Stat(wrong);
  ASSERT_FALSE(gone);
  EXPECT_EQ(gone.error().code(), Code::kNotFound);
  // Without the flag, any name goes (the backend contract): the body is hashed as before.
  ASSERT_TRUE(backend_->Save(Handle{FileType::kPack, wrong.name}, data).ok());
  EXPECT_TRUE(*backend_->Load(wrong) == data);
}

TEST_F(RgwTest, MissingObjectsAreNotFound) {
  Handle h{FileType::kIndex, Hex(42)};
  auto l = backend_->Load(h);
  ASSERT_FALSE(l);
  EXPECT_EQ(l.error().code(), Code::kNotFound) << l.error().ToString();
  EXPECT_NE(l.error().message().find("index/" + Hex(42)), std::string::npos) << l.error().message();
  auto ranged = backend_->Load(h, 10, 10);
  ASSERT_FALSE(ranged);
  EXPECT_EQ(ranged.error().code(), Code::kNotFound);
  auto s = backend_->Stat(h);
  ASSERT_FALSE(s);
  EXPECT_EQ(s.error().code(), Code::kNotFound);
  EXPECT_NE(s.error().message().find("index/" + Hex(42)), std::string::npos) << s.error().message();
  EXPECT_TRUE(backend_->Remove(h).ok());
  EXPECT_TRUE(backend_->List(FileType::kIndex)->empty());
  EXPECT_TRUE(backend_->List(FileType::kConfig)->empty());

  // A missing bucket is NotFound too, and says so.
  S3Options o = opts_;
  o.bucket = "dumont-missing-" + NewId("");
  auto nb = NewS3Backend(o);
  auto r = nb->List(FileType::kIndex);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code(), Code::kNotFound);
  EXPECT_NE(r.error().message().find("NoSuchBucket"), std::string::npos) << r.error().message();
}

TEST_F(RgwTest, ListPagesThroughMoreThanAThousandObjectsInParallel) {
  constexpr int kIndexes = 1234, kPacks = 40, kThreads = 32;
  std::atomic<int> next{0}, failures{0};
  std::mutex mu;
  std::string first_error;
  auto worker = [&] {
    for (int i; (i = next.fetch_add(1)) < kIndexes + kPacks;) {
      Handle h = i < kIndexes ? Handle{FileType::kIndex, Hex(i)} : Handle{FileType::kPack, Hex((i - kIndexes) * 7919)};
      Status st = backend_->Save(h, std::string(static_cast<size_t>(i % 17), 'x'));
      if (!st.ok()) {
        failures++;
        std::lock_guard l(mu);
        if (first_error.empty()) first_error = st.ToString();
      }
    }
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) threads.emplace_back(worker);
  for (auto& t : threads) t.join();
  ASSERT_EQ(failures.load(), 0) << first_error;

  auto idx = backend_->List(FileType::kIndex);
  ASSERT_TRUE(idx) << idx.error().ToString();
  ASSERT_EQ(idx->size(), static_cast<size_t>(kIndexes));
  std::set<std::string> names;
  for (const auto& f : *idx) {
    names.insert(f.name);
    int i = std::stoi(f.name.substr(56), nullptr, 16);
    EXPECT_EQ(f.size, i % 17) << f.name;
  }
  EXPECT_EQ(names.size(), static_cast<size_t>(kIndexes));  // no duplicates across pages
  EXPECT_TRUE(names.count(Hex(0)) && names.count(Hex(kIndexes - 1)));

  auto packs = backend_->List(FileType::kPack);  // data/<2>/<id>: names are the ids
  ASSERT_TRUE(packs) << packs.error().ToString();
  ASSERT_EQ(packs->size(), static_cast<size_t>(kPacks));
  std::set<std::string> pack_names;
  for (const auto& f : *packs) pack_names.insert(f.name);
  for (int i = 0; i < kPacks; ++i) EXPECT_TRUE(pack_names.count(Hex(i * 7919))) << i;

  EXPECT_TRUE(backend_->List(FileType::kSnapshot)->empty());
  EXPECT_TRUE(backend_->List(FileType::kKey)->empty());
}

TEST_F(RgwTest, ConcurrentSaveLoadRemove) {
  constexpr int kThreads = 32, kPerThread = 8;
  std::atomic<int> bad{0};
  std::mutex mu;
  std::string first_error;
  auto note = [&](const std::string& e) {
    bad++;
    std::lock_guard l(mu);
    if (first_error.empty()) first_error = e;
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int k = 0; k < kPerThread; ++k) {
        Handle h{FileType::kSnapshot, Hex(t * 1000 + k)};
        std::string data = RandomData(1000 + t * 37 + k, t * 1000 + k);
        if (Status st = backend_->Save(h, data); !st.ok()) { note(st.ToString()); continue; }
        auto r = backend_->Load(h, 100, 500);
        if (!r) { note(r.error().ToString()); continue; }
        if (*r != data.substr(100, 500)) note("wrong bytes for " + h.name);
        if (Status st = backend_->Remove(h); !st.ok()) note(st.ToString());
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(bad.load(), 0) << first_error;
  EXPECT_TRUE(backend_->List(FileType::kSnapshot)->empty());
}

TEST_F(RgwTest, MultipartUploadReadsBackExactly) {
  S3Options o = opts_;
  o.multipart_threshold = 5 << 20;  // the smallest parts S3 allows, so the test stays small
  o.part_size = 5 << 20;
  auto b = NewS3Backend(o);
  Handle h{FileType::kPack, Hex(0x5151)};
  std::string data = RandomData((12 << 20) + 12345, 99);  // 3 parts: 5 MiB, 5 MiB, 2 MiB + 12345
  Status st = b->Save(h, data);
  ASSERT_TRUE(st.ok()) << st.ToString();
  auto info = b->Stat(h);
  ASSERT_TRUE(info) << info.error().ToString();
  EXPECT_EQ(info->size, static_cast<int64_t>(data.size()));
  auto all = b->Load(h);
  ASSERT_TRUE(all) << all.error().ToString();
  ASSERT_EQ(all->size(), data.size());
  EXPECT_TRUE(*all == data);
  int64_t boundary = 5 << 20;  // a range across the first part boundary
  auto across = b->Load(h, boundary - 1000, 2000);
  ASSERT_TRUE(across) << across.error().ToString();
  EXPECT_TRUE(*across == data.substr(static_cast<size_t>(boundary - 1000), 2000));
  // The object is listed with its full size, and replacing it with a small one works.
  auto packs = b->List(FileType::kPack);
  ASSERT_TRUE(packs);
  ASSERT_EQ(packs->size(), 1u);
  EXPECT_EQ((*packs)[0].size, static_cast<int64_t>(data.size()));
  ASSERT_TRUE(b->Save(h, "tiny").ok());
  EXPECT_EQ(*b->Load(h), "tiny");
}

TEST_F(RgwTest, WrongSecretIsPermissionDeniedAndNotRetried) {
  Handle h{FileType::kKey, Hex(1)};
  ASSERT_TRUE(backend_->Save(h, "key").ok());
  S3Options o = opts_;
  o.secret_access_key += "-wrong";
  SleepRecorder rec;
  auto inner = std::make_unique<FailingBackend>(NewS3Backend(o), 0, 0, Status::Ok());  // counts operations
  FailingBackend* counter = inner.get();
  auto b = WithRetries(std::move(inner), rec.Options());

  auto r = b->Load(h);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code(), Code::kPermissionDenied) << r.error().ToString();
  EXPECT_FALSE(r.error().retryable());
  EXPECT_NE(r.error().message().find("SignatureDoesNotMatch"), std::string::npos) << r.error().message();
  EXPECT_EQ(r.error().message().find(o.secret_access_key), std::string::npos) << "secret leaked";

  auto s = b->Stat(h);  // HEAD: no body, the backend asks again with GET for the error code
  ASSERT_FALSE(s);
  EXPECT_EQ(s.error().code(), Code::kPermissionDenied) << s.error().ToString();
  EXPECT_NE(s.error().message().find("SignatureDoesNotMatch"), std::string::npos) << s.error().message();

  Status save = b->Save(h, "x");
  EXPECT_EQ(save.code(), Code::kPermissionDenied) << save.ToString();
  EXPECT_EQ(b->List(FileType::kKey).error().code(), Code::kPermissionDenied);
  EXPECT_EQ(b->Create().code(), Code::kPermissionDenied);
  EXPECT_EQ(counter->operations(), 5);  // one attempt each
  EXPECT_TRUE(rec.sleeps.empty());

  o = opts_;
  o.access_key_id = "NOSUCHKEY0000000000";
  auto unknown = NewS3Backend(o)->Load(h);
  ASSERT_FALSE(unknown);
  EXPECT_EQ(unknown.error().code(), Code::kPermissionDenied);
  EXPECT_NE(unknown.error().message().find("InvalidAccessKeyId"), std::string::npos) << unknown.error().message();

  // The right key still reads it.
  EXPECT_EQ(*backend_->Load(h), "key");
}

TEST_F(RgwTest, RetriesWrapTheRealBackend) {
  SleepRecorder rec;
  auto b = WithRetries(std::make_unique<FailingBackend>(NewS3Backend(opts_), 2, 2, FailingBackend::Retryable()),
                       rec.Options());
  Handle h{FileType::kIndex, Hex(3)};
  ASSERT_TRUE(b->Save(h, "hello").ok());
  auto r = b->Load(h, 1, 3);  // fails twice (injected), then reaches RGW
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(*r, "ell");
  EXPECT_EQ(rec.sleeps, (std::vector<int64_t>{100, 200}));
}

}  // namespace
}  // namespace dumont::snapshot
