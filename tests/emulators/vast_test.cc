// The Vast.ai provider (src/provider/vast.cc) against the Vast API emulator (tests/emulators), in
// process on a free loopback port. These tests prove the client against the API as providers.md
// documents it; nothing here reaches the real Vast.ai.
#include <signal.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <thread>

#include <gtest/gtest.h>

#include "common/random.h"
#include "emulators/vast_emulator.h"
#include "provider/vast.h"

namespace dumont {
namespace {

using emulators::VastEmulator;
using emulators::VastEmulatorOptions;
using provider::Machine;
using provider::MachineState;
namespace fs = std::filesystem;
using namespace std::chrono_literals;

std::string AgentPath() {
  if (const char* p = std::getenv("DUMONT_TEST_AGENT")) return p;
#ifdef DUMONT_TEST_AGENT_PATH
  return DUMONT_TEST_AGENT_PATH;
#else
  return "";
#endif
}

// Alive and not a zombie (the agent is reparented to init, which may be slow to reap it).
bool Alive(int pid) {
  if (pid <= 0 || ::kill(pid, 0) != 0) return false;
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  std::getline(stat, line);
  auto close = line.rfind(')');
  return close == std::string::npos || close + 2 >= line.size() || line[close + 2] != 'Z';
}

class VastTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("dumont-vast-" + NewId(""));
    fs::create_directories(dir_);
  }
  void TearDown() override {
    emu_.reset();
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  void StartEmulator(VastEmulatorOptions o = {}) {
    o.state_dir = dir_.string();
    o.agent_path = AgentPath();
    o.api_key = kKey;
    emu_ = std::make_unique<VastEmulator>(o);
    ASSERT_TRUE(emu_->Start().ok());
  }

  provider::VastOptions Options(std::string key = kKey) {
    provider::VastOptions o;
    o.base_url = emu_->BaseUrl();
    o.api_key = std::move(key);
    o.base_delay = 10ms;
    o.max_attempts = 6;
    o.request_timeout = 5000ms;
    o.jitter_seed = 42;
    o.sleep = [this](std::chrono::milliseconds d) {
      std::lock_guard l(sleeps_mu_);
      sleeps_.push_back(d);
    };
    return o;
  }

  std::unique_ptr<provider::Provider> Vast(provider::VastOptions o) { return provider::NewVastProvider(o); }

  Machine WaitFor(provider::Provider& p, const std::string& id, MachineState want, std::chrono::milliseconds limit = 8000ms) {
    auto until = std::chrono::steady_clock::now() + limit;
    Machine last;
    while (std::chrono::steady_clock::now() < until) {
      auto m = p.Get(id);
      EXPECT_TRUE(m.has_value()) << m.error().ToString();
      if (!m) return last;
      last = *m;
      if (m->state == want) return last;
      std::this_thread::sleep_for(50ms);
    }
    ADD_FAILURE() << "machine " << id << " never became " << provider::MachineStateName(want) << "; last "
                  << provider::MachineStateName(last.state) << " " << last.details.dump();
    return last;
  }

  provider::MachineSpec Spec(const std::string& label, const std::string& offer = "") {
    provider::MachineSpec s;
    s.label = label;
    s.offer_id = offer;
    s.image = "dumont/agent:test";
    s.env = {{"DUMONT_AGENT_SERVER", "http://127.0.0.1:9"}, {"DUMONT_AGENT_ENROLL_TOKEN", "det_test"}};
    return s;
  }

  static constexpr const char* kKey = "vast-test-key-0123456789";
  fs::path dir_;
  std::unique_ptr<VastEmulator> emu_;
  std::mutex sleeps_mu_;
  std::vector<std::chrono::milliseconds> sleeps_;
};

TEST_F(VastTest, StateTableMapsVendorStates) {
  using nlohmann::json;
  auto st = [](json j) { return provider::VastMachineState(j); };
  EXPECT_EQ(st({{"actual_status", nullptr}, {"intended_status", "running"}}), MachineState::kPending);
  EXPECT_EQ(st({{"actual_status", "loading"}, {"intended_status", "running"}}), MachineState::kPending);
  EXPECT_EQ(st({{"actual_status", "running"}, {"intended_status", "running"}}), MachineState::kRunning);
  EXPECT_EQ(st({{"actual_status", "stopped"}, {"intended_status", "stopped"}}), MachineState::kStopped);
  EXPECT_EQ(st({{"actual_status", "stopped"}, {"intended_status", "running"}}), MachineState::kPending);
  EXPECT_EQ(st({{"actual_status", "exited"}, {"intended_status", "running"}}), MachineState::kFailed);
  EXPECT_EQ(st({{"actual_status", "exited"}, {"intended_status", "stopped"}, {"is_bid", true}}), MachineState::kStopped);
  EXPECT_EQ(st({{"actual_status", "offline"}, {"intended_status", "running"}}), MachineState::kFailed);
  EXPECT_EQ(st({{"actual_status", "created"}, {"status_msg", "OCI runtime create failed: x"}}), MachineState::kFailed);
  EXPECT_EQ(st({{"actual_status", "running"}, {"cur_state", "unloaded"}}), MachineState::kTerminated);
  EXPECT_EQ(st({{"actual_status", "weird"}}), MachineState::kUnknown);
}

TEST_F(VastTest, OffersSearchAndMapping) {
  StartEmulator();
  auto p = Vast(Options());
  auto offers = p->Offers();
  ASSERT_TRUE(offers) << offers.error().ToString();
  ASSERT_EQ(offers->size(), 6u);
  for (size_t i = 1; i < offers->size(); ++i) EXPECT_LE((*offers)[i - 1].price_per_hour, (*offers)[i].price_per_hour);
  // The documented query body: CLI default filters, order, type, limit, allocated_storage.
  auto q = emu_->LastSearchBody();
  EXPECT_EQ(q["verified"]["eq"], true);
  EXPECT_EQ(q["rentable"]["eq"], true);
  EXPECT_EQ(q["rented"]["eq"], false);
  EXPECT_EQ(q["type"], "on-demand");
  EXPECT_EQ(q["order"][0][0], "dph_total");
  EXPECT_TRUE(q.contains("allocated_storage"));
  // Field mapping against the raw pool.
  const auto& o = offers->front();
  nlohmann::json raw;
  for (const auto& r : emu_->OfferPool()) {
    if (std::to_string(r["id"].get<int64_t>()) == o.id) raw = r;
  }
  ASSERT_FALSE(raw.is_null());
  EXPECT_EQ(o.provider, "vast");
  EXPECT_EQ(o.gpu_name, raw["gpu_name"]);
  EXPECT_EQ(o.num_gpus, raw["num_gpus"].get<int>());
  EXPECT_DOUBLE_EQ(o.gpu_ram_gb, raw["gpu_ram"].get<double>() / 1024);
  EXPECT_DOUBLE_EQ(o.ram_gb, raw["cpu_ram"].get<double>() / 1024);
  EXPECT_EQ(o.cpu_cores, static_cast<int>(raw["cpu_cores_effective"].get<double>()));
  EXPECT_DOUBLE_EQ(o.disk_gb, raw["disk_space"].get<double>());
  EXPECT_DOUBLE_EQ(o.price_per_hour, raw["dph_total"].get<double>());
  EXPECT_DOUBLE_EQ(o.spot_price_per_hour, raw["min_bid"].get<double>());
  EXPECT_DOUBLE_EQ(o.reliability, raw["reliability"].get<double>());
  EXPECT_EQ(o.location, raw["geolocation"]);
  EXPECT_DOUBLE_EQ(o.inet_down_mbps, raw["inet_down"].get<double>());
  EXPECT_DOUBLE_EQ(o.inet_up_mbps, raw["inet_up"].get<double>());
  // Filters are sent and applied.
  auto opts = Options();
  opts.offer_filters = {{"gpu_name", {{"in", {"RTX 4090"}}}}};
  auto filtered = Vast(opts)->Offers();
  ASSERT_TRUE(filtered);
  ASSERT_FALSE(filtered->empty());
  for (const auto& f : *filtered) EXPECT_EQ(f.gpu_name, "RTX 4090");
}

TEST_F(VastTest, CreatePendingThenRunningGetAndList) {
  StartEmulator({.spawn_agents = false});
  auto p = Vast(Options());
  auto m = p->Create(Spec("dc-inst1-1"));
  ASSERT_TRUE(m) << m.error().ToString();
  EXPECT_EQ(m->state, MachineState::kPending);
  EXPECT_EQ(m->label, "dc-inst1-1");
  EXPECT_FALSE(m->offer_id.empty());
  // The create body: label, env (the agent's enrollment), onstart, on-demand (price null).
  auto body = emu_->LastCreateBody();
  EXPECT_EQ(body["label"], "dc-inst1-1");
  EXPECT_EQ(body["env"]["DUMONT_AGENT_ENROLL_TOKEN"], "det_test");
  EXPECT_EQ(body["image"], "dumont/agent:test");
  EXPECT_TRUE(body["price"].is_null());
  EXPECT_FALSE(body["onstart"].get<std::string>().empty());

  Machine r = WaitFor(*p, m->id, MachineState::kRunning);
  EXPECT_EQ(r.label, "dc-inst1-1");
  EXPECT_EQ(r.ssh_host, "127.0.0.1");  // direct: ports["22/tcp"] + public_ipaddr
  EXPECT_GT(r.ssh_port, 0);
  EXPECT_GT(r.price_per_hour, 0);
  EXPECT_EQ(r.details["actual_status"], "running");

  auto m2 = p->Create(Spec("dc-inst2-1"));
  ASSERT_TRUE(m2) << m2.error().ToString();
  auto l1 = p->ListByLabelPrefix("dc-inst1-");
  ASSERT_TRUE(l1);
  ASSERT_EQ(l1->size(), 1u);
  EXPECT_EQ((*l1)[0].id, m->id);
  auto all = p->ListByLabelPrefix("dc-");
  ASSERT_TRUE(all);
  EXPECT_EQ(all->size(), 2u);
  // Create is idempotent per label.
  auto again = p->Create(Spec("dc-inst1-1"));
  ASSERT_TRUE(again);
  EXPECT_EQ(again->id, m->id);
  EXPECT_EQ(emu_->InstanceCount(), 2);
  EXPECT_EQ(emu_->RequestCount("create"), 2);
}

TEST_F(VastTest, ListFollowsPagination) {
  StartEmulator({.offers = 7, .list_page_cap = 2, .spawn_agents = false});
  auto p = Vast(Options());
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(p->Create(Spec("dc-page" + std::to_string(i) + "-1")));
  auto all = p->ListByLabelPrefix("dc-page");
  ASSERT_TRUE(all) << all.error().ToString();
  EXPECT_EQ(all->size(), 5u);
}

TEST_F(VastTest, DestroyIsIdempotent) {
  StartEmulator({.spawn_agents = false});
  auto p = Vast(Options());
  auto m = p->Create(Spec("dc-d-1"));
  ASSERT_TRUE(m);
  EXPECT_TRUE(p->Destroy(m->id).ok());
  auto g = p->Get(m->id);
  ASSERT_FALSE(g);
  EXPECT_EQ(g.error().code(), Code::kNotFound);
  EXPECT_TRUE(p->Destroy(m->id).ok());      // Vast: no_such_instance
  EXPECT_TRUE(p->Destroy("99999999").ok());  // never existed
  EXPECT_EQ(emu_->InstanceCount(), 0);
  auto l = p->ListByLabelPrefix("dc-d-");
  ASSERT_TRUE(l);
  EXPECT_TRUE(l->empty());
}

TEST_F(VastTest, LostCreateResponseIsFoundByLabelNotDuplicated) {
  StartEmulator({.spawn_agents = false});
  auto p = Vast(Options());
  emu_->LoseNextCreates(1, VastEmulator::LostMode::kBodyless502);
  auto m = p->Create(Spec("dc-lost-1"));
  ASSERT_TRUE(m) << m.error().ToString();
  EXPECT_EQ(m->label, "dc-lost-1");
  EXPECT_EQ(emu_->InstanceCount(), 1);
  EXPECT_EQ(emu_->RequestCount("create"), 1);  // found by listing: the create was not sent again
  EXPECT_EQ(emu_->FaultCount("create"), 1);
}

TEST_F(VastTest, CreateRefusedWith5xxIsRetriedAfterLookingByLabel) {
  StartEmulator({.spawn_agents = false});
  auto p = Vast(Options());
  emu_->InjectServerErrors(1, "create");  // refused before anything was created
  auto m = p->Create(Spec("dc-retry-1"));
  ASSERT_TRUE(m) << m.error().ToString();
  EXPECT_EQ(emu_->RequestCount("create"), 2);
  EXPECT_EQ(emu_->InstanceCount(), 1);
  std::lock_guard l(sleeps_mu_);
  EXPECT_EQ(sleeps_.size(), 1u);
}

TEST_F(VastTest, CreateAnswerAfterClientTimeoutIsFoundByLabel) {
  StartEmulator({.lost_response_delay_s = 2.5, .spawn_agents = false});
  auto o = Options();
  o.request_timeout = 700ms;
  auto p = Vast(o);
  emu_->LoseNextCreates(1, VastEmulator::LostMode::kLateAnswer);
  auto m = p->Create(Spec("dc-late-1"));
  ASSERT_TRUE(m) << m.error().ToString();
  EXPECT_EQ(m->label, "dc-late-1");
  EXPECT_EQ(emu_->InstanceCount(), 1);
  EXPECT_EQ(emu_->RequestCount("create"), 1);
}

TEST_F(VastTest, RateLimitStormSucceedsAfterGrowingBackoff) {
  StartEmulator({.spawn_agents = false});
  auto p = Vast(Options());
  emu_->InjectRateLimit(4, "search");
  auto offers = p->Offers();
  ASSERT_TRUE(offers) << offers.error().ToString();
  EXPECT_EQ(emu_->FaultCount("search"), 4);
  EXPECT_EQ(emu_->RequestCount("search"), 5);
  std::lock_guard l(sleeps_mu_);
  ASSERT_EQ(sleeps_.size(), 4u);
  for (size_t i = 1; i < sleeps_.size(); ++i) EXPECT_GE(sleeps_[i], sleeps_[i - 1]);
  EXPECT_GT(sleeps_.back(), sleeps_.front());
  EXPECT_GE(sleeps_.front(), 5ms);   // base 10 ms, jitter in [d/2, d]
  EXPECT_LE(sleeps_.back(), 80ms);   // 10 * 2^3
}

TEST_F(VastTest, RateLimitBeyondAttemptsIsResourceExhausted) {
  StartEmulator({.spawn_agents = false});
  auto o = Options();
  o.max_attempts = 3;
  auto p = Vast(o);
  emu_->InjectRateLimit(10, "search");
  auto offers = p->Offers();
  ASSERT_FALSE(offers);
  EXPECT_EQ(offers.error().code(), Code::kResourceExhausted);
  EXPECT_NE(offers.error().message().find("searching Vast offers"), std::string::npos) << offers.error().message();
  EXPECT_EQ(emu_->RequestCount("search"), 3);
}

TEST_F(VastTest, ServerErrorsAreRetriedForDestroyAndGet) {
  StartEmulator({.spawn_agents = false});
  auto p = Vast(Options());
  auto m = p->Create(Spec("dc-5xx-1"));
  ASSERT_TRUE(m);
  emu_->InjectServerErrors(2, "show");
  EXPECT_TRUE(p->Get(m->id));
  emu_->InjectServerErrors(2, "destroy");
  EXPECT_TRUE(p->Destroy(m->id).ok());
  EXPECT_EQ(emu_->InstanceCount(), 0);
}

TEST_F(VastTest, PreemptionShowsAsStoppedAndInterrupted) {
  StartEmulator({.spawn_agents = false});
  auto o = Options();
  o.interruptible = true;
  auto p = Vast(o);
  auto m = p->Create(Spec("dc-spot-1"));
  ASSERT_TRUE(m) << m.error().ToString();
  EXPECT_TRUE(emu_->LastCreateBody()["price"].is_number());  // a bid: interruptible
  WaitFor(*p, m->id, MachineState::kRunning);
  ASSERT_TRUE(emu_->Preempt(std::stoll(m->id)).ok());
  auto g = p->Get(m->id);
  ASSERT_TRUE(g);
  EXPECT_EQ(g->state, MachineState::kStopped);
  EXPECT_EQ(g->details["interrupted"], true);
  EXPECT_EQ(g->details["cur_state"], "stopped");
  // Start while still outbid: Vast schedules it (pending) until priority returns.
  EXPECT_TRUE(p->Start(m->id).ok());
  auto s = p->Get(m->id);
  ASSERT_TRUE(s);
  EXPECT_EQ(s->state, MachineState::kPending);
}

TEST_F(VastTest, StopAndStartOnDemand) {
  StartEmulator({.spawn_agents = false});
  auto p = Vast(Options());
  auto m = p->Create(Spec("dc-ss-1"));
  ASSERT_TRUE(m);
  WaitFor(*p, m->id, MachineState::kRunning);
  ASSERT_TRUE(p->Stop(m->id).ok());
  auto g = p->Get(m->id);
  ASSERT_TRUE(g);
  EXPECT_EQ(g->state, MachineState::kStopped);
  EXPECT_EQ(g->details["interrupted"], false);
  ASSERT_TRUE(p->Start(m->id).ok());
  WaitFor(*p, m->id, MachineState::kRunning);
  EXPECT_EQ(p->Stop("424242").code(), Code::kNotFound);
}

TEST_F(VastTest, StockoutIsAClearError) {
  StartEmulator({.spawn_agents = false});
  auto p = Vast(Options());
  auto offers = p->Offers();
  ASSERT_TRUE(offers);
  std::string offer = offers->front().id;
  emu_->TakeOffer(std::stoll(offer));
  auto m = p->Create(Spec("dc-stock-1", offer));
  ASSERT_FALSE(m);
  EXPECT_EQ(m.error().code(), Code::kResourceExhausted);
  EXPECT_NE(m.error().message().find("offer " + offer), std::string::npos) << m.error().message();
  EXPECT_NE(m.error().message().find("no longer available"), std::string::npos) << m.error().message();
  EXPECT_EQ(emu_->InstanceCount(), 0);
  EXPECT_EQ(emu_->RequestCount("create"), 1);  // not retried
}

TEST_F(VastTest, FailAtBootAndNeverReady) {
  StartEmulator({.spawn_agents = false});
  auto p = Vast(Options());
  emu_->SetNextCreateFault(VastEmulator::CreateFault::kFailAtBoot);
  auto bad = p->Create(Spec("dc-oci-1"));
  ASSERT_TRUE(bad);
  Machine f = WaitFor(*p, bad->id, MachineState::kFailed);
  EXPECT_NE(f.details["status_msg"].get<std::string>().find("OCI runtime create failed"), std::string::npos);
  emu_->SetNextCreateFault(VastEmulator::CreateFault::kNeverReady);
  auto stuck = p->Create(Spec("dc-stuck-1"));
  ASSERT_TRUE(stuck);
  std::this_thread::sleep_for(900ms);  // boot 0.2 s + pull 0.3 s elapsed
  auto g = p->Get(stuck->id);
  ASSERT_TRUE(g);
  EXPECT_EQ(g->state, MachineState::kPending);
  EXPECT_EQ(g->details["actual_status"], "loading");
  ASSERT_TRUE(emu_->SetActualStatus(std::stoll(stuck->id), "offline", "").ok());
  EXPECT_EQ(p->Get(stuck->id)->state, MachineState::kFailed);
}

TEST_F(VastTest, WrongApiKeyIsUnauthenticatedNotRetriedNotLeaked) {
  StartEmulator({.spawn_agents = false});
  const std::string bad_key = "wrong-key-SECRET-987654";
  auto p = Vast(Options(bad_key));
  auto offers = p->Offers();
  ASSERT_FALSE(offers);
  EXPECT_EQ(offers.error().code(), Code::kUnauthenticated);
  EXPECT_EQ(offers.error().message().find(bad_key), std::string::npos);
  EXPECT_EQ(emu_->RequestCount("search"), 1);
  auto m = p->Create(Spec("dc-auth-1", "12345678"));
  ASSERT_FALSE(m);
  EXPECT_EQ(m.error().code(), Code::kUnauthenticated);
  EXPECT_EQ(m.error().message().find(bad_key), std::string::npos);
  EXPECT_EQ(emu_->RequestCount("create"), 0);  // refused at the label lookup, before any create
  auto g = p->Get("12345");
  ASSERT_FALSE(g);
  EXPECT_EQ(g.error().code(), Code::kUnauthenticated);
  std::lock_guard l(sleeps_mu_);
  EXPECT_TRUE(sleeps_.empty());
}

TEST_F(VastTest, NetworkErrorsNameTheOperationAndNoKey) {
  StartEmulator({.spawn_agents = false});
  auto o = Options();
  o.base_url = "http://127.0.0.1:9/api/v0";  // nothing listens there
  o.max_attempts = 2;
  auto g = Vast(o)->Get("123");
  ASSERT_FALSE(g);
  EXPECT_EQ(g.error().code(), Code::kUnavailable);
  EXPECT_NE(g.error().message().find("reading Vast instance 123"), std::string::npos) << g.error().message();
  EXPECT_EQ(g.error().message().find(kKey), std::string::npos);
}

TEST_F(VastTest, RunningInstanceHasARealAgentAndDestroyRemovesIt) {
  if (AgentPath().empty() || !fs::exists(AgentPath())) GTEST_SKIP() << "no dumont-agent (set DUMONT_TEST_AGENT)";
  StartEmulator();
  auto p = Vast(Options());
  auto m = p->Create(Spec("dc-agent-1"));
  ASSERT_TRUE(m) << m.error().ToString();
  WaitFor(*p, m->id, MachineState::kRunning);
  auto local = emu_->LocalMachine(std::stoll(m->id));
  ASSERT_TRUE(local.has_value());
  std::string workspace = local->details["workspace"];
  int pid = local->details["pid"];
  EXPECT_TRUE(fs::is_directory(workspace));
  EXPECT_TRUE(Alive(pid));
  // The agent got the env of the create request: it is trying to enroll with the server we named.
  std::string log_path = local->details["agent_log"];
  bool tried = false;
  for (int i = 0; i < 100 && !tried; ++i) {
    std::ifstream in(log_path);
    std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    tried = all.find("127.0.0.1:9") != std::string::npos;
    if (!tried) std::this_thread::sleep_for(30ms);
  }
  EXPECT_TRUE(tried) << "agent log does not show an enrollment attempt at the given DUMONT_AGENT_SERVER";
  ASSERT_TRUE(p->Destroy(m->id).ok());
  EXPECT_FALSE(fs::exists(workspace));
  for (int i = 0; i < 50 && Alive(pid); ++i) std::this_thread::sleep_for(20ms);
  EXPECT_FALSE(Alive(pid));
}

}  // namespace
}  // namespace dumont
