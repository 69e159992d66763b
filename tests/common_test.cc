#include <atomic>
#include <cstring>
#include <fstream>
#include <set>
#include <thread>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "common/big_alloc.h"
#include "common/clock.h"
#include "common/config.h"
#include "common/log.h"
#include "common/random.h"
#include "common/status.h"
#include "common/thread_pool.h"
#include "common/work_queue.h"
#include "test_util.h"

namespace dumont {
namespace {

using namespace std::chrono_literals;

TEST(Status, CodesAndRetryable) {
  EXPECT_TRUE(Status::Ok().ok());
  Status s = Status::Unavailable("db down").Annotate("opening store");
  EXPECT_FALSE(s.ok());
  EXPECT_TRUE(s.retryable());
  EXPECT_EQ(s.message(), "opening store: db down");
  EXPECT_EQ(s.ToString(), "unavailable: opening store: db down");
  EXPECT_FALSE(Status::InvalidField("email", "bad").retryable());
  EXPECT_EQ(*Status::InvalidField("email", "bad").field(), "email");
  EXPECT_EQ(*Status::ResourceExhausted("slow down", 7).retry_after_s(), 7);
  Result<int> r = Err(Status::NotFound("x"));
  EXPECT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), Code::kNotFound);
}

TEST(Random, Base64UrlRoundTripAndRejectsGarbage) {
  for (size_t n = 0; n < 70; ++n) {
    std::string raw = RandomBytes(n), back;
    std::string enc = Base64UrlEncode(raw);
    EXPECT_EQ(enc.find_first_of("+/="), std::string::npos);
    ASSERT_TRUE(Base64UrlDecode(enc, &back)) << n;
    EXPECT_EQ(back, raw);
  }
  std::string out;
  EXPECT_FALSE(Base64UrlDecode("ab$d", &out));
  EXPECT_FALSE(Base64UrlDecode("a", &out));
  EXPECT_FALSE(Base64UrlDecode("ab", &out) && Base64UrlDecode("aB", &out) && out.empty());
  std::string hex;
  EXPECT_TRUE(HexDecode(HexEncode("\x01\xff"), &hex));
  EXPECT_EQ(hex, "\x01\xff");
  EXPECT_FALSE(HexDecode("zz", &hex));
  EXPECT_NE(NewId("usr_"), NewId("usr_"));
  EXPECT_EQ(NewId("usr_").size(), 24u);
}

TEST(Config, PrecedenceFlagsOverEnvOverTomlOverDefaults) {
  testing::TempDir dir;
  std::ofstream(dir / "dumont.toml") << "listen = \"127.0.0.1:1111\"\n[http]\nbody_limit_bytes = 4096\n"
                                        "read_timeout_s = 9\n[auth]\nallow_signup = false\n";
  ConfigSources src;
  src.flags["data_dir"] = dir.path();
  auto c = LoadConfig(src);
  ASSERT_TRUE(c) << c.error().ToString();
  EXPECT_EQ(c->listen, "127.0.0.1:1111");  // from the implicit <data_dir>/dumont.toml
  EXPECT_EQ(c->http_body_limit_bytes, 4096);
  EXPECT_FALSE(c->auth_allow_signup);
  EXPECT_EQ(c->http_header_limit_bytes, 16 * 1024);  // default

  src.env["DUMONT_HTTP_BODY_LIMIT_BYTES"] = "8192";
  src.env["DUMONT_LISTEN"] = "127.0.0.1:2222";
  c = LoadConfig(src);
  ASSERT_TRUE(c);
  EXPECT_EQ(c->http_body_limit_bytes, 8192);
  EXPECT_EQ(c->listen, "127.0.0.1:2222");
  EXPECT_EQ(c->http_read_timeout_s, 9);

  src.flags["listen"] = "127.0.0.1:3333";
  c = LoadConfig(src);
  ASSERT_TRUE(c);
  EXPECT_EQ(c->listen, "127.0.0.1:3333");
  EXPECT_EQ(c->DatabaseUrl(), "sqlite://" + std::filesystem::absolute(dir / "dumont.db").lexically_normal().string());
}

TEST(Config, ErrorsNameTheKeyAndSource) {
  testing::TempDir dir;
  ConfigSources src;
  src.flags["data_dir"] = dir.path();
  src.env["DUMONT_HTTP_READ_TIMEOUT_S"] = "soon";
  auto c = LoadConfig(src);
  ASSERT_FALSE(c);
  EXPECT_NE(c.error().message().find("DUMONT_HTTP_READ_TIMEOUT_S"), std::string::npos);
  EXPECT_NE(c.error().message().find("integer"), std::string::npos);

  src.env.clear();
  std::ofstream(dir / "bad.toml") << "listen = \n";
  src.toml_path = dir / "bad.toml";
  c = LoadConfig(src);
  ASSERT_FALSE(c);
  EXPECT_NE(c.error().message().find("bad.toml:1"), std::string::npos) << c.error().message();

  std::ofstream(dir / "unknown.toml") << "[http]\nbody_limt = 5\n";
  src.toml_path = dir / "unknown.toml";
  c = LoadConfig(src);
  ASSERT_FALSE(c);
  EXPECT_NE(c.error().message().find("http.body_limt"), std::string::npos);

  src.toml_path = dir / "missing.toml";
  EXPECT_FALSE(LoadConfig(src));

  src.toml_path.reset();
  src.flags["db"] = "mysql://x";
  c = LoadConfig(src);
  ASSERT_FALSE(c);
  EXPECT_EQ(*c.error().field(), "db");
  EXPECT_NE(ConfigHelp().find("DUMONT_HTTP_BODY_LIMIT_BYTES"), std::string::npos);
}

TEST(Logger, JsonLinesAreParseableAndTextQuotesValues) {
  Logger json_log(stderr, LogLevel::kInfo, LogFormat::kJson);
  std::string line = json_log.Format(LogLevel::kWarn, "request", {{"request_id", "req_1"}, {"path", "/a \"b\""}},
                                     "2026-01-01T00:00:00.000Z");
  auto j = nlohmann::json::parse(line);
  EXPECT_EQ(j["level"], "warn");
  EXPECT_EQ(j["request_id"], "req_1");
  EXPECT_EQ(j["path"], "/a \"b\"");
  Logger text_log(stderr, LogLevel::kInfo, LogFormat::kText);
  line = text_log.Format(LogLevel::kInfo, "started", {{"url", "http://x"}, {"note", "two words"}}, "T");
  EXPECT_EQ(line, "T info started url=http://x note=\"two words\"");
  EXPECT_FALSE(text_log.Enabled(LogLevel::kDebug));
}

TEST(WorkQueue, CollapsesDuplicatesAndNeverGivesAKeyToTwoWorkers) {
  RealClock clock;
  WorkQueue q(clock);
  q.Add("a");
  q.Add("a");
  q.Add("b");
  EXPECT_EQ(q.Len(), 2u);
  auto k = q.Get(10ms);
  ASSERT_EQ(*k, "a");
  q.Add("a");  // while processing: must not be handed out until Done
  auto k2 = q.Get(10ms);
  ASSERT_EQ(*k2, "b");
  EXPECT_FALSE(q.Get(20ms).has_value());
  q.Done("a");
  auto k3 = q.Get(10ms);
  ASSERT_TRUE(k3);
  EXPECT_EQ(*k3, "a");
  q.Done("a");
  q.Done("b");
  EXPECT_FALSE(q.Get(5ms).has_value());
}

TEST(WorkQueue, TimedRequeueFollowsTheInjectedClock) {
  FakeClock clock;
  WorkQueue q(clock);
  q.AddAfter("x", 180s);
  EXPECT_FALSE(q.Get(20ms).has_value());
  clock.Advance(179s);
  EXPECT_FALSE(q.Get(20ms).has_value());
  clock.Advance(1s);
  auto k = q.Get(100ms);
  ASSERT_TRUE(k);
  EXPECT_EQ(*k, "x");
}

TEST(WorkQueue, RateLimitedBackoffGrowsAndForgetResets) {
  FakeClock clock;
  WorkQueue q(clock, 100ms, 1s);
  q.AddRateLimited("x");  // 100 ms
  clock.Advance(100ms);
  ASSERT_TRUE(q.Get(100ms));
  q.Done("x");
  q.AddRateLimited("x");  // 200 ms
  clock.Advance(150ms);
  EXPECT_FALSE(q.Get(20ms));
  clock.Advance(50ms);
  ASSERT_TRUE(q.Get(100ms));
  q.Done("x");
  EXPECT_EQ(q.NumRequeues("x"), 2);
  for (int i = 0; i < 10; ++i) q.AddRateLimited("y");
  clock.Advance(1s);  // capped at max
  ASSERT_TRUE(q.Get(100ms));
  q.Forget("x");
  EXPECT_EQ(q.NumRequeues("x"), 0);
}

TEST(WorkQueue, ConcurrentWorkersProcessEveryKeyExactlyOnceAtATime) {
  RealClock clock;
  WorkQueue q(clock);
  std::mutex mu;
  std::set<std::string> in_flight;
  std::atomic<int> processed{0}, overlaps{0};
  std::vector<std::thread> workers;
  for (int w = 0; w < 4; ++w) {
    workers.emplace_back([&] {
      while (auto k = q.Get(200ms)) {
        {
          std::lock_guard l(mu);
          if (!in_flight.insert(*k).second) ++overlaps;
        }
        std::this_thread::sleep_for(1ms);
        {
          std::lock_guard l(mu);
          in_flight.erase(*k);
        }
        ++processed;
        q.Done(*k);
      }
    });
  }
  for (int i = 0; i < 200; ++i) q.Add("k" + std::to_string(i % 10));
  std::this_thread::sleep_for(100ms);
  q.ShutDown();
  for (auto& t : workers) t.join();
  EXPECT_EQ(overlaps.load(), 0);
  EXPECT_GE(processed.load(), 10);
  EXPECT_LE(processed.load(), 200);
}

TEST(ThreadPool, RunsEverythingAndSurvivesThrowingTasks) {
  std::atomic<int> n{0};
  {
    ThreadPool pool(3);
    for (int i = 0; i < 100; ++i) pool.Submit([&] { ++n; });
    pool.Submit([] { throw std::runtime_error("boom"); });
    pool.Stop();
    EXPECT_EQ(pool.escaped_exceptions(), 1u);
    EXPECT_FALSE(pool.Submit([] {}));
  }
  EXPECT_EQ(n.load(), 100);
}

// Large buffers come 2 MiB-aligned (so the kernel can back them with huge pages), smaller ones
// page-aligned (O_DIRECT); both are writable over their whole size, and a BigBuffer keeps its
// memory and contents until it must grow.
TEST(BigAlloc, AlignsAndKeepsContents) {
  for (size_t n : {size_t{1}, size_t{4096}, size_t{100000}, kHugePage - 1, kHugePage, kHugePage + 1, size_t{33} << 20}) {
    char* p = static_cast<char*>(BigAlloc(n));
    ASSERT_NE(p, nullptr) << n;
    size_t align = n >= kHugePage ? kHugePage : 4096;
    EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % align, 0u) << n;
    std::memset(p, 0xab, n);
    EXPECT_EQ(static_cast<unsigned char>(p[n - 1]), 0xab);
    BigFree(p, n);
  }
  BigBuffer b;
  char* p = b.Get(3 << 20);
  std::memcpy(p, "keep", 4);
  EXPECT_EQ(b.Get(1 << 20), p) << "a smaller request must reuse the buffer";
  EXPECT_EQ(std::memcmp(b.Get(3 << 20), "keep", 4), 0);
  char* q = b.Get(5 << 20);
  EXPECT_GE(b.capacity(), size_t{5} << 20);
  std::memset(q, 1, 5 << 20);
  std::basic_string<char, std::char_traits<char>, BigAllocator<char>> s(3 << 20, 'x');
  EXPECT_EQ(reinterpret_cast<uintptr_t>(s.data()) % kHugePage, 0u);
  s += "tail";
  EXPECT_EQ(s.substr(s.size() - 4), "tail");
}

}  // namespace
}  // namespace dumont
