// The RunPod provider (src/provider/runpod.cc) against the RunPod GraphQL emulator
// (tests/emulators), in process on a free loopback port. These tests prove the client against the
// API as providers.md documents it; nothing here reaches the real RunPod.
#include "provider/runpod.h"

#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <thread>

#include "common/random.h"
#include "emulators/runpod_emulator.h"
#include "http/client.h"

namespace dumont {
namespace {

using emulators::RunPodEmulator;
using emulators::RunPodEmulatorOptions;
using nlohmann::json;
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

std::string GpuOf(const std::string& offer_id) {
  return offer_id.substr(offer_id.find('/', offer_id.find('/') + 1) + 1);
}

class RunPodTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("dumont-runpod-" + NewId(""));
    fs::create_directories(dir_);
  }
  void TearDown() override {
    emu_.reset();
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  void StartEmulator(RunPodEmulatorOptions o = {}) {
    o.state_dir = dir_.string();
    o.agent_path = AgentPath();
    o.api_key = kKey;
    emu_ = std::make_unique<RunPodEmulator>(o);
    ASSERT_TRUE(emu_->Start().ok());
  }

  provider::RunPodOptions Options(std::string key = kKey) {
    provider::RunPodOptions o;
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

  std::unique_ptr<provider::Provider> RunPod(provider::RunPodOptions o) {
    return provider::NewRunPodProvider(o);
  }

  Machine WaitFor(provider::Provider& p, const std::string& id, MachineState want, bool ssh = false,
                  std::chrono::milliseconds limit = 8000ms) {
    auto until = std::chrono::steady_clock::now() + limit;
    Machine last;
    while (std::chrono::steady_clock::now() < until) {
      auto m = p.Get(id);
      EXPECT_TRUE(m.has_value()) << m.error().ToString();
      if (!m) return last;
      last = *m;
      if (m->state == want && (!ssh || m->ssh_port > 0)) return last;
      std::this_thread::sleep_for(50ms);
    }
    ADD_FAILURE() << "pod " << id << " never became " << provider::MachineStateName(want)
                  << (ssh ? " with ssh" : "") << "; last " << provider::MachineStateName(last.state)
                  << " " << last.details.dump();
    return last;
  }

  provider::MachineSpec Spec(const std::string& label, const std::string& offer = "") {
    provider::MachineSpec s;
    s.label = label;
    s.offer_id = offer;
    s.image = "dumont/agent:test";
    s.env = {{"DUMONT_AGENT_SERVER", "http://127.0.0.1:9"},
             {"DUMONT_AGENT_ENROLL_TOKEN", "det_test"}};
    return s;
  }

  // A raw GraphQL request to the emulator, as any client would send it.
  http::ClientResponse Gql(const std::string& query, const json& variables = nullptr,
                           const std::string& auth = kKey, const std::string& url_suffix = "") {
    http::ClientRequest req;
    req.method = "POST";
    req.url = emu_->BaseUrl() + url_suffix;
    json body = {{"query", query}};
    if (!variables.is_null()) body["variables"] = variables;
    req.body = body.dump();
    req.headers = {{"Content-Type", "application/json"}};
    if (!auth.empty()) req.headers.emplace_back("Authorization", "Bearer " + auth);
    auto r = http::Fetch(req);
    EXPECT_TRUE(r.has_value());
    return r ? *r : http::ClientResponse{};
  }

  json Pool(const std::string& gpu, const std::string& cloud) {
    for (const auto& r : emu_->OfferPool()) {
      if (r["gpuTypeId"] == gpu && r["cloud"] == cloud) return r;
    }
    return nullptr;
  }

  static constexpr const char* kKey = "runpod-test-key-0123456789";
  fs::path dir_;
  std::unique_ptr<RunPodEmulator> emu_;
  std::mutex sleeps_mu_;
  std::vector<std::chrono::milliseconds> sleeps_;
};

TEST_F(RunPodTest, StateTableMapsVendorStates) {
  auto st = [](json j) { return provider::RunPodMachineState(j); };
  json runtime = {{"uptimeInSeconds", 3}, {"ports", json::array()}};
  EXPECT_EQ(st({{"desiredStatus", "RUNNING"}, {"runtime", nullptr}}), MachineState::kPending);
  EXPECT_EQ(st({{"desiredStatus", "RUNNING"}}), MachineState::kPending);
  EXPECT_EQ(st({{"desiredStatus", "RUNNING"}, {"runtime", runtime}}), MachineState::kRunning);
  EXPECT_EQ(st({{"desiredStatus", "CREATED"}}), MachineState::kPending);
  EXPECT_EQ(st({{"desiredStatus", "RESTARTING"}, {"runtime", runtime}}), MachineState::kPending);
  EXPECT_EQ(st({{"desiredStatus", "EXITED"}, {"runtime", nullptr}}), MachineState::kStopped);
  EXPECT_EQ(st({{"desiredStatus", "EXITED"}, {"podType", "INTERRUPTABLE"}}),
            MachineState::kStopped);
  EXPECT_EQ(st({{"desiredStatus", "PAUSED"}}), MachineState::kStopped);
  EXPECT_EQ(st({{"desiredStatus", "DEAD"}}), MachineState::kFailed);
  EXPECT_EQ(st({{"desiredStatus", "TERMINATED"}}), MachineState::kTerminated);
  EXPECT_EQ(st({{"desiredStatus", "WEIRD"}}), MachineState::kUnknown);
  EXPECT_EQ(st(nullptr), MachineState::kUnknown);
}

TEST_F(RunPodTest, OffersFromGpuTypes) {
  StartEmulator({.spawn_agents = false});
  auto p = RunPod(Options());
  auto offers = p->Offers();
  ASSERT_TRUE(offers) << offers.error().ToString();
  ASSERT_EQ(offers->size(), 5u);  // SECURE: every type
  for (size_t i = 1; i < offers->size(); ++i)
    EXPECT_LE((*offers)[i - 1].price_per_hour, (*offers)[i].price_per_hour);
  EXPECT_NE(emu_->LastQuery("search").find("lowestPrice(input: {gpuCount: 1, secureCloud: true})"),
            std::string::npos)
      << emu_->LastQuery("search");
  for (const auto& o : *offers) {
    EXPECT_EQ(o.provider, "runpod");
    ASSERT_EQ(o.id.rfind("SECURE/1/", 0), 0u) << o.id;
    json raw = Pool(GpuOf(o.id), "SECURE");
    ASSERT_FALSE(raw.is_null()) << o.id;
    EXPECT_EQ(o.gpu_name, raw["displayName"]);
    EXPECT_DOUBLE_EQ(o.gpu_ram_gb, raw["memoryInGb"].get<double>());
    EXPECT_DOUBLE_EQ(o.price_per_hour, raw["price"].get<double>());
    EXPECT_EQ(o.num_gpus, 1);
    EXPECT_DOUBLE_EQ(o.disk_gb, 40);
  }
  // Ids are stable across calls.
  auto again = p->Offers();
  ASSERT_TRUE(again);
  for (size_t i = 0; i < offers->size(); ++i) EXPECT_EQ((*again)[i].id, (*offers)[i].id);

  // Community Cloud: the Secure-only H100 is not offered; 2 GPUs per pod doubles the price.
  auto co = Options();
  co.cloud_type = "COMMUNITY";
  co.gpu_count = 2;
  auto community = RunPod(co)->Offers();
  ASSERT_TRUE(community) << community.error().ToString();
  ASSERT_EQ(community->size(), 4u);
  for (const auto& o : *community) {
    EXPECT_EQ(o.id.rfind("COMMUNITY/2/", 0), 0u) << o.id;
    EXPECT_EQ(o.num_gpus, 2);
    EXPECT_NE(GpuOf(o.id), "NVIDIA H100 80GB HBM3");
    EXPECT_DOUBLE_EQ(o.price_per_hour, 2 * Pool(GpuOf(o.id), "COMMUNITY")["price"].get<double>());
  }
  // Spot: the price is the bid, minimumBidPrice per GPU.
  auto so = Options();
  so.interruptible = true;
  auto spot = RunPod(so)->Offers();
  ASSERT_TRUE(spot);
  for (const auto& o : *spot)
    EXPECT_DOUBLE_EQ(o.price_per_hour,
                     Pool(GpuOf(o.id), "SECURE")["minimumBidPrice"].get<double>());
  // Out of stock and filtered types are left out.
  std::string gone = GpuOf(offers->front().id);
  emu_->TakeOffer(gone);
  auto fo = Options();
  fo.gpu_types = {gone, GpuOf((*offers)[1].id)};
  auto filtered = RunPod(fo)->Offers();
  ASSERT_TRUE(filtered);
  ASSERT_EQ(filtered->size(), 1u);
  EXPECT_EQ(filtered->front().id, (*offers)[1].id);
  auto bad = Options();
  bad.cloud_type = "secure";
  auto refused = RunPod(bad)->Offers();
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code(), Code::kInvalidArgument);
}

TEST_F(RunPodTest, CreatePendingThenRunningGetAndList) {
  StartEmulator({.spawn_agents = false});
  auto p = RunPod(Options());
  auto m = p->Create(Spec("dc-inst1-1"));
  ASSERT_TRUE(m) << m.error().ToString();
  EXPECT_EQ(m->state, MachineState::kPending);
  EXPECT_EQ(m->label, "dc-inst1-1");
  EXPECT_EQ(m->offer_id.rfind("SECURE/1/", 0), 0u) << m->offer_id;
  // The deploy input: our label as the pod name, the agent's enrollment env, on-demand (no bid).
  EXPECT_EQ(emu_->LastQuery("create").rfind("mutation { podFindAndDeployOnDemand(input: {", 0), 0u)
      << emu_->LastQuery("create");
  json in = emu_->LastCreateInput();
  EXPECT_EQ(in["name"], "dc-inst1-1");
  EXPECT_EQ(in["imageName"], "dumont/agent:test");
  EXPECT_EQ(in["cloudType"], "SECURE");
  EXPECT_EQ(in["gpuCount"], 1);
  EXPECT_EQ(in["gpuTypeId"], GpuOf(m->offer_id));
  EXPECT_EQ(in["ports"], "22/tcp");
  EXPECT_FALSE(in.contains("bidPerGpu"));
  EXPECT_TRUE(std::find(in["env"].begin(), in["env"].end(),
                        json{{"key", "DUMONT_AGENT_ENROLL_TOKEN"}, {"value", "det_test"}}) !=
              in["env"].end())
      << in["env"].dump();

  Machine r = WaitFor(*p, m->id, MachineState::kRunning, /*ssh=*/true);
  EXPECT_EQ(r.label, "dc-inst1-1");
  EXPECT_EQ(r.ssh_host, "127.0.0.1");  // runtime.ports: privatePort 22, tcp, isIpPublic
  EXPECT_GE(r.ssh_port, 40000);
  EXPECT_GT(r.price_per_hour, 0);
  EXPECT_EQ(r.details["desired_status"], "RUNNING");
  EXPECT_EQ(r.details["ssh_ready"], true);

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

TEST_F(RunPodTest, PortsMayLagRunning) {
  StartEmulator({.ports_delay_seconds = 600, .spawn_agents = false});
  auto p = RunPod(Options());
  auto m = p->Create(Spec("dc-lag-1"));
  ASSERT_TRUE(m) << m.error().ToString();
  Machine r = WaitFor(*p, m->id, MachineState::kRunning);
  EXPECT_EQ(r.details["runtime"], true);
  EXPECT_EQ(r.details["ssh_ready"], false);
  EXPECT_EQ(r.ssh_port, 0);
  EXPECT_TRUE(r.ssh_host.empty());
}

TEST_F(RunPodTest, DestroyIsIdempotent) {
  StartEmulator({.spawn_agents = false});
  auto p = RunPod(Options());
  auto m = p->Create(Spec("dc-d-1"));
  ASSERT_TRUE(m);
  EXPECT_TRUE(p->Destroy(m->id).ok());
  auto g = p->Get(m->id);
  ASSERT_FALSE(g);
  EXPECT_EQ(g.error().code(), Code::kNotFound);
  EXPECT_TRUE(p->Destroy(m->id).ok());         // RunPod: "pod not found to terminate"
  EXPECT_TRUE(p->Destroy("zzzzzzzzzz").ok());  // never existed
  EXPECT_TRUE(p->Destroy("Not A Pod!").ok());  // not a pod id: no request at all
  EXPECT_EQ(emu_->RequestCount("destroy"), 3);
  EXPECT_EQ(emu_->InstanceCount(), 0);
  auto l = p->ListByLabelPrefix("dc-d-");
  ASSERT_TRUE(l);
  EXPECT_TRUE(l->empty());
}

TEST_F(RunPodTest, LostCreateResponseIsFoundByLabelNotDuplicated) {
  StartEmulator({.spawn_agents = false});
  auto p = RunPod(Options());
  emu_->LoseNextCreates(1, RunPodEmulator::LostMode::kBodyless502);
  auto m = p->Create(Spec("dc-lost-1"));
  ASSERT_TRUE(m) << m.error().ToString();
  EXPECT_EQ(m->label, "dc-lost-1");
  EXPECT_EQ(emu_->InstanceCount(), 1);
  EXPECT_EQ(emu_->RequestCount("create"), 1);  // found by listing: the create was not sent again
  EXPECT_EQ(emu_->FaultCount("create"), 1);
}

TEST_F(RunPodTest, CreateRefusedWith5xxOrInternalErrorIsRetriedAfterLookingByLabel) {
  StartEmulator({.spawn_agents = false});
  auto p = RunPod(Options());
  emu_->InjectServerErrors(1, "create");  // refused before anything was created
  auto m = p->Create(Spec("dc-retry-1"));
  ASSERT_TRUE(m) << m.error().ToString();
  EXPECT_EQ(emu_->RequestCount("create"), 2);
  EXPECT_EQ(emu_->InstanceCount(), 1);
  // HTTP 200 + INTERNAL_SERVER_ERROR "Something went wrong": the same.
  emu_->InjectInternalErrors(1, "create");
  auto m2 = p->Create(Spec("dc-retry-2"));
  ASSERT_TRUE(m2) << m2.error().ToString();
  EXPECT_EQ(emu_->RequestCount("create"), 4);
  EXPECT_EQ(emu_->InstanceCount(), 2);
  EXPECT_EQ(emu_->FaultCount("create"), 2);
  std::lock_guard l(sleeps_mu_);
  EXPECT_EQ(sleeps_.size(), 2u);
}

TEST_F(RunPodTest, CreateAnswerAfterClientTimeoutIsFoundByLabel) {
  StartEmulator({.lost_response_delay_s = 2.5, .spawn_agents = false});
  auto o = Options();
  o.request_timeout = 700ms;
  auto p = RunPod(o);
  emu_->LoseNextCreates(1, RunPodEmulator::LostMode::kLateAnswer);
  auto m = p->Create(Spec("dc-late-1"));
  ASSERT_TRUE(m) << m.error().ToString();
  EXPECT_EQ(m->label, "dc-late-1");
  EXPECT_EQ(emu_->InstanceCount(), 1);
  EXPECT_EQ(emu_->RequestCount("create"), 1);
}

TEST_F(RunPodTest, RateLimitStormSucceedsAfterGrowingBackoff) {
  StartEmulator({.spawn_agents = false});
  auto p = RunPod(Options());
  emu_->InjectRateLimit(4, "search");
  auto offers = p->Offers();
  ASSERT_TRUE(offers) << offers.error().ToString();
  EXPECT_EQ(emu_->FaultCount("search"), 4);
  EXPECT_EQ(emu_->RequestCount("search"), 5);
  std::lock_guard l(sleeps_mu_);
  ASSERT_EQ(sleeps_.size(), 4u);
  for (size_t i = 1; i < sleeps_.size(); ++i) EXPECT_GE(sleeps_[i], sleeps_[i - 1]);
  EXPECT_GT(sleeps_.back(), sleeps_.front());
  EXPECT_GE(sleeps_.front(), 5ms);  // base 10 ms, jitter in [d/2, d]
  EXPECT_LE(sleeps_.back(), 80ms);  // 10 * 2^3
}

TEST_F(RunPodTest, RateLimitBeyondAttemptsIsResourceExhausted) {
  StartEmulator({.spawn_agents = false});
  auto o = Options();
  o.max_attempts = 3;
  auto p = RunPod(o);
  emu_->InjectRateLimit(10, "search");
  auto offers = p->Offers();
  ASSERT_FALSE(offers);
  EXPECT_EQ(offers.error().code(), Code::kResourceExhausted);
  EXPECT_NE(offers.error().message().find("listing RunPod GPU types (after 3 attempts)"),
            std::string::npos)
      << offers.error().message();
  EXPECT_EQ(emu_->RequestCount("search"), 3);
}

TEST_F(RunPodTest, ServerAndInternalErrorsAreRetriedForGetAndDestroy) {
  StartEmulator({.spawn_agents = false});
  auto p = RunPod(Options());
  auto m = p->Create(Spec("dc-5xx-1"));
  ASSERT_TRUE(m);
  emu_->InjectServerErrors(2, "show");
  EXPECT_TRUE(p->Get(m->id));
  EXPECT_EQ(emu_->FaultCount("show"), 2);
  emu_->InjectInternalErrors(2, "destroy");
  EXPECT_TRUE(p->Destroy(m->id).ok());
  EXPECT_EQ(emu_->FaultCount("destroy"), 2);
  EXPECT_EQ(emu_->InstanceCount(), 0);
}

TEST_F(RunPodTest, PreemptionShowsAsStoppedAndInterrupted) {
  StartEmulator({.spawn_agents = false});
  auto o = Options();
  o.interruptible = true;
  auto p = RunPod(o);
  auto m = p->Create(Spec("dc-spot-1"));
  ASSERT_TRUE(m) << m.error().ToString();
  EXPECT_EQ(emu_->LastQuery("create").rfind("mutation { podRentInterruptable(input: {", 0), 0u)
      << emu_->LastQuery("create");
  double min_bid = Pool(GpuOf(m->offer_id), "SECURE")["minimumBidPrice"].get<double>();
  EXPECT_DOUBLE_EQ(emu_->LastCreateInput()["bidPerGpu"].get<double>(),
                   min_bid);  // bids the minimum
  WaitFor(*p, m->id, MachineState::kRunning, /*ssh=*/true);
  ASSERT_TRUE(emu_->Preempt(m->id).ok());
  auto g = p->Get(m->id);
  ASSERT_TRUE(g);
  EXPECT_EQ(g->state, MachineState::kStopped);
  EXPECT_EQ(g->details["interrupted"], true);
  EXPECT_EQ(g->details["desired_status"], "EXITED");
  EXPECT_EQ(g->details["runtime"], false);
  EXPECT_EQ(g->ssh_port, 0);
  // Resuming at the same bid loses to the competitor holding the host's GPUs.
  Status same = p->Start(m->id);
  EXPECT_EQ(same.code(), Code::kResourceExhausted) << same.ToString();
  EXPECT_NE(same.message().find("not enough free GPUs"), std::string::npos) << same.message();
  EXPECT_EQ(p->Get(m->id)->state, MachineState::kStopped);
  // A higher bid wins them back (podBidResume).
  auto higher = o;
  higher.bid_per_gpu = min_bid * 2;
  auto p2 = RunPod(higher);
  ASSERT_TRUE(p2->Start(m->id).ok());
  EXPECT_EQ(emu_->LastQuery("manage").rfind("mutation { podBidResume(input: {", 0), 0u)
      << emu_->LastQuery("manage");
  Machine back = WaitFor(*p2, m->id, MachineState::kRunning);
  EXPECT_DOUBLE_EQ(back.price_per_hour, min_bid * 2);
  EXPECT_EQ(back.details["interrupted"], false);
}

TEST_F(RunPodTest, StopAndStartOnDemand) {
  StartEmulator({.spawn_agents = false});
  auto p = RunPod(Options());
  auto m = p->Create(Spec("dc-ss-1"));
  ASSERT_TRUE(m);
  WaitFor(*p, m->id, MachineState::kRunning);
  ASSERT_TRUE(p->Stop(m->id).ok());
  auto g = p->Get(m->id);
  ASSERT_TRUE(g);
  EXPECT_EQ(g->state, MachineState::kStopped);
  EXPECT_EQ(g->details["interrupted"], false);
  EXPECT_EQ(g->details["desired_status"], "EXITED");
  EXPECT_TRUE(p->Stop(m->id).ok());  // already stopped
  // The pod is tied to its host: with no free GPUs there, podResume fails clearly.
  std::string gpu = GpuOf(m->offer_id);
  emu_->TakeOffer(gpu, "SECURE");
  Status full = p->Start(m->id);
  EXPECT_EQ(full.code(), Code::kResourceExhausted) << full.ToString();
  EXPECT_NE(full.message().find("There are not enough free GPUs on the host machine"),
            std::string::npos)
      << full.message();
  emu_->SetCapacity(gpu, "SECURE", 8);
  ASSERT_TRUE(p->Start(m->id).ok());
  EXPECT_EQ(emu_->LastQuery("manage").rfind("mutation { podResume(input: {", 0), 0u)
      << emu_->LastQuery("manage");
  WaitFor(*p, m->id, MachineState::kRunning);
  EXPECT_TRUE(p->Start(m->id).ok());  // already running
  EXPECT_EQ(p->Stop("zzzzzz").code(), Code::kNotFound);
  EXPECT_EQ(p->Start("zzzzzz").code(), Code::kNotFound);
}

TEST_F(RunPodTest, StockoutIsAClearError) {
  StartEmulator({.spawn_agents = false});
  auto p = RunPod(Options());
  auto offers = p->Offers();
  ASSERT_TRUE(offers);
  std::string offer = offers->front().id;
  emu_->TakeOffer(GpuOf(offer));
  auto m = p->Create(Spec("dc-stock-1", offer));
  ASSERT_FALSE(m);
  EXPECT_EQ(m.error().code(), Code::kResourceExhausted);
  EXPECT_NE(m.error().message().find("offer " + offer), std::string::npos) << m.error().message();
  EXPECT_NE(m.error().message().find("There are no longer any instances available"),
            std::string::npos)
      << m.error().message();
  EXPECT_EQ(emu_->InstanceCount(), 0);
  EXPECT_EQ(emu_->RequestCount("create"), 1);  // not retried
  // Nothing in stock at all: refused before any deploy.
  for (const auto& o : *offers) emu_->TakeOffer(GpuOf(o.id));
  auto none = p->Create(Spec("dc-stock-2"));
  ASSERT_FALSE(none);
  EXPECT_EQ(none.error().code(), Code::kResourceExhausted);
  EXPECT_EQ(emu_->RequestCount("create"), 1);
  // A malformed offer id, and a GPU type RunPod does not know.
  auto malformed = p->Create(Spec("dc-stock-3", "12345"));
  ASSERT_FALSE(malformed);
  EXPECT_EQ(malformed.error().code(), Code::kInvalidArgument);
  auto unknown = p->Create(Spec("dc-stock-4", "SECURE/1/NVIDIA Imaginary 9000"));
  ASSERT_FALSE(unknown);
  EXPECT_EQ(unknown.error().code(), Code::kFailedPrecondition);
  EXPECT_NE(unknown.error().message().find("RunPod refused"), std::string::npos)
      << unknown.error().message();
}

TEST_F(RunPodTest, FailAtBootAndNeverReady) {
  StartEmulator({.spawn_agents = false});
  auto p = RunPod(Options());
  emu_->SetNextCreateFault(RunPodEmulator::CreateFault::kFailAtBoot);
  auto bad = p->Create(Spec("dc-dead-1"));
  ASSERT_TRUE(bad);
  Machine f = WaitFor(*p, bad->id, MachineState::kFailed);
  EXPECT_EQ(f.details["desired_status"], "DEAD");
  emu_->SetNextCreateFault(RunPodEmulator::CreateFault::kNeverReady);
  auto stuck = p->Create(Spec("dc-stuck-1"));
  ASSERT_TRUE(stuck);
  // RUNNING with runtime null, through four image-pull periods (0.3 s each): pending all along.
  auto until = std::chrono::steady_clock::now() + 1200ms;
  int polls = 0;
  while (std::chrono::steady_clock::now() < until) {
    auto g = p->Get(stuck->id);
    ASSERT_TRUE(g) << g.error().ToString();
    EXPECT_EQ(g->state, MachineState::kPending);
    EXPECT_EQ(g->details["desired_status"], "RUNNING");
    EXPECT_EQ(g->details["runtime"], false);
    ++polls;
    std::this_thread::sleep_for(100ms);
  }
  EXPECT_GE(polls, 5);
  EXPECT_TRUE((*emu_->Pod(stuck->id))["runtime"].is_null());
}

TEST_F(RunPodTest, BalanceExhaustedTerminatesPodsWithoutNetworkVolume) {
  StartEmulator({.spawn_agents = false});
  auto p = RunPod(Options());
  auto m = p->Create(Spec("dc-broke-1"));
  ASSERT_TRUE(m);
  WaitFor(*p, m->id, MachineState::kRunning);
  emu_->ExhaustBalance();
  auto g = p->Get(m->id);
  ASSERT_FALSE(g);
  EXPECT_EQ(g.error().code(), Code::kNotFound);
  EXPECT_EQ(emu_->InstanceCount(), 0);
}

TEST_F(RunPodTest, WrongApiKeyIsUnauthenticatedNotRetriedNotLeaked) {
  StartEmulator({.spawn_agents = false});
  const std::string bad_key = "wrong-key-SECRET-987654";
  auto p = RunPod(Options(bad_key));
  auto offers = p->Offers();
  ASSERT_FALSE(offers);
  EXPECT_EQ(offers.error().code(), Code::kUnauthenticated);
  EXPECT_EQ(offers.error().message().find(bad_key), std::string::npos);
  EXPECT_EQ(emu_->RequestCount("search"), 1);
  auto m = p->Create(Spec("dc-auth-1", "SECURE/1/NVIDIA GeForce RTX 4090"));
  ASSERT_FALSE(m);
  EXPECT_EQ(m.error().code(), Code::kUnauthenticated);
  EXPECT_EQ(m.error().message().find(bad_key), std::string::npos);
  EXPECT_EQ(emu_->RequestCount("create"), 0);  // refused at the name lookup, before any deploy
  auto g = p->Get("abcdef");
  ASSERT_FALSE(g);
  EXPECT_EQ(g.error().code(), Code::kUnauthenticated);
  EXPECT_EQ(p->Destroy("abcdef").code(), Code::kUnauthenticated);
  std::lock_guard l(sleeps_mu_);
  EXPECT_TRUE(sleeps_.empty());
}

TEST_F(RunPodTest, NetworkErrorsNameTheOperationAndNoKey) {
  StartEmulator({.spawn_agents = false});
  auto o = Options();
  o.base_url = "http://127.0.0.1:9/graphql";  // nothing listens there
  o.max_attempts = 2;
  auto g = RunPod(o)->Get("abc123");
  ASSERT_FALSE(g);
  EXPECT_EQ(g.error().code(), Code::kUnavailable);
  EXPECT_NE(g.error().message().find("reading RunPod pod abc123 (after 2 attempts)"),
            std::string::npos)
      << g.error().message();
  EXPECT_EQ(g.error().message().find(kKey), std::string::npos);
}

// The emulator itself, with raw requests in the shapes providers.md documents: inline arguments and
// enums, variables, aliases, selection sets, both auth forms, RunPod's error answers.
TEST_F(RunPodTest, EmulatorSpeaksDocumentedGraphQL) {
  StartEmulator({.spawn_agents = false});
  auto r = Gql(R"(mutation { podFindAndDeployOnDemand(input: {
    name: "job-1", imageName: "runpod/pytorch:2.4.0", gpuTypeId: "NVIDIA GeForce RTX 4090", cloudType: SECURE,
    gpuCount: 1, volumeInGb: 0, containerDiskInGb: 40, minVcpuCount: 4, minMemoryInGb: 24,
    startSsh: true, supportPublicIp: true, ports: "22/tcp,8888/http", dockerArgs: "",
    volumeMountPath: "/workspace", dataCenterId: "US-TX-3", countryCode: "US",
    env: [{ key: "PUBLIC_KEY", value: "ssh-ed25519 AAAA \"quoted\"" }],
    allowedCudaVersions: ["12.4"], minDownload: 300, minUpload: 100
  }) { id imageName env machineId machine { podHostId } } })");
  ASSERT_EQ(r.status, 200) << r.body;
  json pod = json::parse(r.body)["data"]["podFindAndDeployOnDemand"];
  ASSERT_TRUE(pod.is_object()) << r.body;
  EXPECT_EQ(pod.size(), 5u);  // exactly the selected fields
  EXPECT_EQ(pod["env"], json::array({"PUBLIC_KEY=ssh-ed25519 AAAA \"quoted\""}));
  EXPECT_EQ(pod["machine"].size(), 1u);
  std::string id = pod["id"];
  EXPECT_EQ(pod["machine"]["podHostId"].get<std::string>().rfind(id + "-", 0), 0u);

  // Variables, an alias, and the documented ?api_key= form instead of the header.
  r =
      Gql("query Pod($podId: String!) { p: pod(input: {podId: $podId}) { id desiredStatus runtime "
          "{ ports { privatePort } } } }",
          {{"podId", id}}, "", "?api_key=" + std::string(kKey));
  ASSERT_EQ(r.status, 200) << r.body;
  json p = json::parse(r.body)["data"]["p"];
  EXPECT_EQ(p["id"], id);
  EXPECT_EQ(p["desiredStatus"], "RUNNING");
  EXPECT_EQ(p.size(), 3u);

  // gpuTypes without input, with the documented lowestPrice shape.
  r =
      Gql("{ gpuTypes { id memoryInGb lowestPrice(input: {gpuCount: 1}) { minimumBidPrice "
          "stockStatus availableGpuCounts } } }");
  ASSERT_EQ(r.status, 200) << r.body;
  json types = json::parse(r.body)["data"]["gpuTypes"];
  ASSERT_EQ(types.size(), 5u);
  EXPECT_EQ(types[0].size(), 3u);
  EXPECT_EQ(types[0]["lowestPrice"]["stockStatus"], "High");
  EXPECT_EQ(types[0]["lowestPrice"]["availableGpuCounts"], json::array({1, 2, 4, 8}));

  // Errors: no key 401; unknown field and syntax errors 400; RunPod's own errors HTTP 200 + errors.
  EXPECT_EQ(Gql("{ myself { pods { id } } }", nullptr, "").status, 401);
  r = Gql("{ myself { pods { id colour } } }");
  EXPECT_EQ(r.status, 400);
  EXPECT_NE(r.body.find("Cannot query field \\\"colour\\\" on type \\\"Pod\\\""), std::string::npos)
      << r.body;
  EXPECT_EQ(Gql("{ myself { pods { id } }").status, 400);
  EXPECT_EQ(Gql("mutation { podTerminate(input: {podId: \"" + id + "\"}) }").status, 200);
  r = Gql("mutation { podTerminate(input: {podId: \"" + id + "\"}) }");
  ASSERT_EQ(r.status, 200);
  json err = json::parse(r.body);
  EXPECT_EQ(err["errors"][0]["message"], "pod not found to terminate");
  EXPECT_TRUE(err["data"].is_null());
  EXPECT_EQ(emu_->InstanceCount(), 0);
}

TEST_F(RunPodTest, RunningPodHasARealAgentAndDestroyRemovesIt) {
  if (AgentPath().empty() || !fs::exists(AgentPath()))
    GTEST_SKIP() << "no dumont-agent (set DUMONT_TEST_AGENT)";
  StartEmulator();
  auto p = RunPod(Options());
  auto m = p->Create(Spec("dc-agent-1"));
  ASSERT_TRUE(m) << m.error().ToString();
  WaitFor(*p, m->id, MachineState::kRunning);
  auto local = emu_->LocalMachine(m->id);
  ASSERT_TRUE(local.has_value());
  std::string workspace = local->details["workspace"];
  int pid = local->details["pid"];
  EXPECT_TRUE(fs::is_directory(workspace));
  EXPECT_TRUE(Alive(pid));
  // The agent got the env of the deploy request: it is trying to enroll with the server we named.
  std::string log_path = local->details["agent_log"];
  bool tried = false;
  for (int i = 0; i < 100 && !tried; ++i) {
    std::ifstream in(log_path);
    std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    tried = all.find("127.0.0.1:9") != std::string::npos;
    if (!tried) std::this_thread::sleep_for(30ms);
  }
  EXPECT_TRUE(tried)
      << "agent log does not show an enrollment attempt at the given DUMONT_AGENT_SERVER";
  // Stop ends the agent, start runs it again in the same workspace.
  ASSERT_TRUE(p->Stop(m->id).ok());
  for (int i = 0; i < 50 && Alive(pid); ++i) std::this_thread::sleep_for(20ms);
  EXPECT_FALSE(Alive(pid));
  ASSERT_TRUE(p->Start(m->id).ok());
  WaitFor(*p, m->id, MachineState::kRunning);
  // The new agent writes its pid file itself, a moment after the restart.
  int pid2 = 0;
  for (int i = 0; i < 100 && (pid2 == pid || !Alive(pid2)); ++i) {
    auto restarted = emu_->LocalMachine(m->id);
    ASSERT_TRUE(restarted.has_value());
    EXPECT_EQ(restarted->details["workspace"], workspace);
    pid2 = restarted->details["pid"];
    if (pid2 == pid || !Alive(pid2)) std::this_thread::sleep_for(20ms);
  }
  EXPECT_NE(pid2, pid);
  EXPECT_TRUE(Alive(pid2));
  ASSERT_TRUE(p->Destroy(m->id).ok());
  EXPECT_FALSE(fs::exists(workspace));
  for (int i = 0; i < 50 && Alive(pid2); ++i) std::this_thread::sleep_for(20ms);
  EXPECT_FALSE(Alive(pid2));
}

}  // namespace
}  // namespace dumont
