// The market monitor: GPU-name normalisation, offer aggregation, the LLM fit rule, and the sampling loop
// on a FakeClock (a sample at start, one per interval, retention, failing providers skipped).
#include <cstdio>
#include <functional>
#include <set>
#include <stdexcept>
#include <thread>

#include <gtest/gtest.h>

#include "fleet/market.h"
#include "provider/sim.h"
#include "test_util.h"

namespace dumont::fleet {
namespace {

using namespace std::chrono_literals;
using provider::Offer;

TEST(NormalizeGpuName, OneKeyPerModel) {
  for (const char* n : {"RTX 4090", "rtx_4090", "GeForce RTX 4090", "NVIDIA GeForce RTX 4090", "RTX4090",
                        " nvidia-geforce-rtx-4090 "}) {
    EXPECT_EQ(NormalizeGpuName(n), "RTX 4090") << n;
  }
  EXPECT_EQ(NormalizeGpuName("A100-SXM4-80GB"), "A100 SXM4 80GB");
  EXPECT_EQ(NormalizeGpuName("NVIDIA A100 SXM4 80 GB"), "A100 SXM4 80GB");
  EXPECT_EQ(NormalizeGpuName("a100_sxm4_80g"), "A100 SXM4 80GB");
  EXPECT_EQ(NormalizeGpuName("Tesla V100-SXM2-16GB"), "V100 SXM2 16GB");
  EXPECT_EQ(NormalizeGpuName("H100 PCIe"), "H100 PCIE");
  EXPECT_EQ(NormalizeGpuName("Quadro RTX A6000"), "RTX A6000");
  EXPECT_EQ(NormalizeGpuName("GTX1080 Ti"), "GTX 1080 TI");
  EXPECT_EQ(NormalizeGpuName("AMD Radeon RX7900 XTX"), "RX 7900 XTX");
  EXPECT_NE(NormalizeGpuName("RTX 4090"), NormalizeGpuName("RTX 4080"));
  EXPECT_NE(NormalizeGpuName("A100 40GB"), NormalizeGpuName("A100 80GB"));
  EXPECT_EQ(NormalizeGpuName(""), "UNKNOWN");
  EXPECT_EQ(NormalizeGpuName(" NVIDIA "), "UNKNOWN");
}

Offer MakeOffer(const std::string& gpu, int n, double price, double vram = 24, double spot = 0, double rel = 0.9) {
  Offer o;
  o.id = gpu + std::to_string(price);
  o.gpu_name = gpu;
  o.num_gpus = n;
  o.gpu_ram_gb = vram;
  o.price_per_hour = price;
  o.spot_price_per_hour = spot;
  o.reliability = rel;
  return o;
}

TEST(AggregateOffers, OneRowPerModelWithPricesPerGpuHour) {
  std::vector<Offer> offers = {
      MakeOffer("RTX 4090", 1, 0.40, 24, 0.20, 0.99),
      MakeOffer("GeForce RTX 4090", 2, 1.00, 23.9, 0, 0.95),  // 0.50 per GPU-hour, no spot
      MakeOffer("rtx_4090", 4, 1.20, 24, 0.60, 0.92),         // 0.30 per GPU-hour, spot 0.15
      MakeOffer("A100 SXM4", 8, 12.0, 80),
      MakeOffer("RTX 3090", 0, 0.30),  // no GPUs: skipped
      MakeOffer("virtual", 1, 0),      // free (the local provider): skipped
  };
  auto rows = AggregateOffers("vast", offers, 1234);
  ASSERT_EQ(rows.size(), 2u);
  const auto& a100 = rows[0];  // ordered by gpu
  EXPECT_EQ(a100.gpu, "A100 SXM4");
  EXPECT_EQ(a100.offers, 1);
  EXPECT_EQ(a100.available_gpus, 8);
  EXPECT_DOUBLE_EQ(a100.min_price, 1.5);
  EXPECT_FALSE(a100.spot_min_price.has_value());
  const auto& r = rows[1];
  EXPECT_EQ(r.provider, "vast");
  EXPECT_EQ(r.gpu, "RTX 4090");
  EXPECT_EQ(r.sampled_at, 1234);
  EXPECT_EQ(r.offers, 3);
  EXPECT_EQ(r.available_gpus, 7);
  EXPECT_DOUBLE_EQ(r.min_price, 0.30);
  EXPECT_DOUBLE_EQ(r.max_price, 0.50);
  EXPECT_DOUBLE_EQ(r.avg_price, (0.40 + 0.50 + 0.30) / 3);
  EXPECT_DOUBLE_EQ(r.avg_reliability, (0.99 + 0.95 + 0.92) / 3);
  EXPECT_DOUBLE_EQ(r.vram_gb, 24);
  ASSERT_TRUE(r.spot_min_price.has_value());
  EXPECT_DOUBLE_EQ(*r.spot_min_price, 0.15);
  EXPECT_TRUE(AggregateOffers("vast", {}, 1).empty());
}

TEST(LlmFit, ParamsTimesBytesPlusTwentyPercent) {
  EXPECT_DOUBLE_EQ(LlmMemoryGb(7, 2), 16.8);
  EXPECT_DOUBLE_EQ(LlmMemoryGb(70, 0.5), 42);
  EXPECT_EQ(LlmSizesThatFit(24, 2), (std::vector<std::string>{"7B"}));
  EXPECT_EQ(LlmSizesThatFit(24, 0.5), (std::vector<std::string>{"7B", "13B", "34B"}));
  EXPECT_EQ(LlmSizesThatFit(48, 0.5), (std::vector<std::string>{"7B", "13B", "34B", "70B"}));
  EXPECT_EQ(LlmSizesThatFit(80, 2), (std::vector<std::string>{"7B", "13B"}));
  EXPECT_TRUE(LlmSizesThatFit(8, 2).empty());
}

// A provider with a scripted catalog: offers, an error, or an exception.
class FakeProvider final : public provider::Provider {
 public:
  FakeProvider(std::string name, std::function<Result<std::vector<Offer>>()> offers)
      : name_(std::move(name)), offers_(std::move(offers)) {}
  std::string Name() const override { return name_; }
  Result<std::vector<Offer>> Offers() override {
    ++calls;
    return offers_();
  }
  std::map<std::string, provider::Capability> Capabilities() const override { return {}; }
  Result<provider::Machine> Create(const provider::MachineSpec&) override { return Err(Status::Unimplemented("fake")); }
  Result<provider::Machine> Get(const std::string&) override { return Err(Status::Unimplemented("fake")); }
  Result<std::vector<provider::Machine>> ListByLabelPrefix(const std::string&) override { return std::vector<provider::Machine>{}; }
  Status Stop(const std::string&) override { return Status::Unimplemented("fake"); }
  Status Start(const std::string&) override { return Status::Unimplemented("fake"); }
  Status Destroy(const std::string&) override { return Status::Ok(); }
  std::atomic<int> calls{0};

 private:
  std::string name_;
  std::function<Result<std::vector<Offer>>()> offers_;
};

bool WaitFor(const std::function<bool()>& done, std::chrono::milliseconds timeout = 5s) {
  auto until = std::chrono::steady_clock::now() + timeout;
  while (!done()) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(2ms);
  }
  return true;
}

class MonitorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto s = store::OpenStore("sqlite://" + dir_ / "db", clock_.NowUnix());
    ASSERT_TRUE(s);
    store_ = std::move(*s);
    log_file_ = std::tmpfile();
    log_ = std::make_unique<Logger>(log_file_, LogLevel::kInfo);
    sim_ = provider::NewSimProvider({}, clock_);
    good_ = std::make_unique<FakeProvider>("good", [] {
      return Result<std::vector<Offer>>(std::vector<Offer>{MakeOffer("rtx_4090", 1, 0.5)});
    });
    failing_ = std::make_unique<FakeProvider>("flaky", [] {
      return Result<std::vector<Offer>>(Err(Status::Unavailable("offer search answered 503")));
    });
    throwing_ = std::make_unique<FakeProvider>("broken", []() -> Result<std::vector<Offer>> {
      throw std::runtime_error("parse error in offers");
    });
  }
  void TearDown() override { std::fclose(log_file_); }
  std::unique_ptr<MarketMonitor> Monitor() {
    MarketOptions o;
    o.interval_s = 300;
    o.retention_days = 30;
    o.poll = 2ms;
    return std::make_unique<MarketMonitor>(*store_, clock_, log_.get(),
                                           std::vector<provider::Provider*>{failing_.get(), throwing_.get(), sim_.get(),
                                                                            good_.get()},
                                           o);
  }
  std::string Log() {
    std::fflush(log_file_);
    std::rewind(log_file_);
    std::string out;
    char buf[4096];
    for (size_t n; (n = std::fread(buf, 1, sizeof buf, log_file_)) > 0;) out.append(buf, n);
    return out;
  }
  std::vector<store::MarketSnapshot> All() { return *store_->ListMarketSnapshots({.limit = 100000}); }

  testing::TempDir dir_;
  FakeClock clock_{1'700'000'000};
  std::unique_ptr<store::Store> store_;
  std::FILE* log_file_ = nullptr;
  std::unique_ptr<Logger> log_;
  std::unique_ptr<provider::Provider> sim_;
  std::unique_ptr<FakeProvider> good_, failing_, throwing_;
};

TEST_F(MonitorTest, SamplesAtStartThenEveryIntervalSkippingFailingProviders) {
  auto m = Monitor();
  m->Start();
  ASSERT_TRUE(WaitFor([&] { return m->samples() == 1; })) << "no sample at start";
  auto rows = All();
  std::set<std::string> providers, sim_gpus;
  for (const auto& r : rows) {
    providers.insert(r.provider);
    EXPECT_EQ(r.sampled_at, 1'700'000'000);
    if (r.provider == "sim") sim_gpus.insert(r.gpu);
  }
  EXPECT_EQ(providers, (std::set<std::string>{"sim", "good"})) << "failing providers write nothing";
  EXPECT_EQ(sim_gpus, (std::set<std::string>{"A100 80GB", "H100", "RTX 3090", "RTX 4090"}));
  std::string log = Log();
  EXPECT_NE(log.find("provider=flaky"), std::string::npos) << log;
  EXPECT_NE(log.find("503"), std::string::npos) << log;
  EXPECT_NE(log.find("provider=broken"), std::string::npos) << log;
  EXPECT_NE(log.find("parse error in offers"), std::string::npos) << log;

  // Nothing more until the interval has passed on the clock.
  clock_.Advance(299s);
  std::this_thread::sleep_for(30ms);
  EXPECT_EQ(m->samples(), 1);
  clock_.Advance(1s);
  ASSERT_TRUE(WaitFor([&] { return m->samples() == 2; }));
  EXPECT_EQ(store_->LatestMarketSnapshots(INT64_MAX)->front().sampled_at, 1'700'000'300);
  EXPECT_EQ(failing_->calls.load(), 2) << "a failing provider is asked again next time";

  m->Stop();
  m->Stop();  // idempotent
  int64_t done = m->samples();
  clock_.Advance(600s);
  std::this_thread::sleep_for(20ms);
  EXPECT_EQ(m->samples(), done) << "no sample after Stop";
}

TEST_F(MonitorTest, RetentionDeletesSamplesOlderThanItsDays) {
  const int64_t t0 = clock_.NowUnix();
  const int64_t day = 86400;
  ASSERT_TRUE(store_->AddMarketSnapshots({{t0 - 31 * day, "vast", "RTX 4090", 24, 0.3, 0.4, 0.5, 2, 2, 0.9, {}},
                                          {t0 - 29 * day, "vast", "RTX 4090", 24, 0.3, 0.4, 0.5, 2, 2, 0.9, {}}})
                  .ok());
  auto m = Monitor();
  auto n = m->SampleOnce();
  ASSERT_TRUE(n) << n.error().ToString();
  EXPECT_EQ(*n, 5u);  // sim: 4 models, good: 1
  EXPECT_TRUE(store_->ListMarketSnapshots({.until = t0 - 30 * day})->empty()) << "31 days old: deleted";
  EXPECT_EQ(store_->ListMarketSnapshots({.provider = "vast"})->size(), 1u) << "29 days old: kept";
  clock_.Advance(std::chrono::hours(24 * 2));
  ASSERT_TRUE(m->SampleOnce());
  EXPECT_TRUE(store_->ListMarketSnapshots({.provider = "vast"})->empty()) << "now 31 days old";
  EXPECT_EQ(All().size(), 10u) << "both samples of this test are kept";
}

TEST_F(MonitorTest, StopWithoutStartAndDestructionWhileRunningAreClean) {
  Monitor()->Stop();
  auto m = Monitor();
  m->Start();
  m->Start();  // a second Start does nothing
  ASSERT_TRUE(WaitFor([&] { return m->samples() >= 1; }));
  m.reset();  // the destructor stops the loop
  EXPECT_EQ(good_->calls.load(), 1);
}

}  // namespace
}  // namespace dumont::fleet
