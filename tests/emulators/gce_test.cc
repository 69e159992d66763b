// The Google Compute Engine provider (src/provider/gce.cc) against the GCE API emulator
// (tests/emulators), in process on a free loopback port, with a throwaway service account whose RSA
// key is generated here. These tests prove the client against the API as providers.md documents it;
// nothing here reaches Google Cloud.
#include <signal.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <thread>

#include <gtest/gtest.h>

#include "common/random.h"
#include "emulators/gce_emulator.h"
#include "provider/gce.h"

namespace dumont {
namespace {

using emulators::GceEmulator;
using emulators::GceEmulatorOptions;
using emulators::GceServiceAccount;
using provider::Machine;
using provider::MachineState;
namespace fs = std::filesystem;
using namespace std::chrono_literals;
using nlohmann::json;

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

// One RSA key pair for the whole suite (generating one costs ~100 ms).
const GceServiceAccount& Account() {
  static const GceServiceAccount sa = [] {
    auto a = emulators::NewGceServiceAccount("dumont-test@dumont-emulated.iam.gserviceaccount.com", "dumont-emulated",
                                             "https://oauth2.googleapis.com/token");
    if (!a) std::abort();
    return *a;
  }();
  return sa;
}

class GceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("dumont-gce-" + NewId(""));
    fs::create_directories(dir_);
  }
  void TearDown() override {
    emu_.reset();
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  void StartEmulator(GceEmulatorOptions o = {}) {
    o.state_dir = dir_.string();
    o.agent_path = AgentPath();
    o.service_accounts = {{Account().client_email, Account().public_key_pem}};
    emu_ = std::make_unique<GceEmulator>(o);
    ASSERT_TRUE(emu_->Start().ok());
  }

  provider::GceOptions Options(const std::string& key_json = Account().key_json) {
    provider::GceOptions o;
    o.base_url = emu_->BaseUrl();
    o.token_url = emu_->TokenUrl();
    o.service_account_json = key_json;
    o.project = "dumont-emulated";
    o.zones = {"us-central1-a", "us-central1-b"};
    o.base_delay = 10ms;
    o.max_attempts = 6;
    o.request_timeout = 5000ms;
    o.operation_timeout = 5000ms;
    o.operation_poll_interval = 20ms;
    o.jitter_seed = 42;
    o.sleep = [this](std::chrono::milliseconds d) {
      std::lock_guard l(sleeps_mu_);
      sleeps_.push_back(d);
    };
    return o;
  }
  std::unique_ptr<provider::Provider> Gce(provider::GceOptions o) { return provider::NewGceProvider(o); }

  Machine WaitFor(provider::Provider& p, const std::string& id, MachineState want, std::chrono::milliseconds limit = 8000ms) {
    auto until = std::chrono::steady_clock::now() + limit;
    Machine last;
    while (std::chrono::steady_clock::now() < until) {
      auto m = p.Get(id);
      EXPECT_TRUE(m.has_value()) << m.error().ToString();
      if (!m) return last;
      last = *m;
      if (m->state == want) return last;
      std::this_thread::sleep_for(30ms);
    }
    ADD_FAILURE() << "machine " << id << " never became " << provider::MachineStateName(want) << "; last "
                  << provider::MachineStateName(last.state) << " " << last.details.dump();
    return last;
  }

  provider::MachineSpec Spec(const std::string& label, const std::string& offer = "") {
    provider::MachineSpec s;
    s.label = label;
    s.offer_id = offer;
    s.image = "dumont/agent:test";  // a container image: not a GCE image, so GceOptions::image is used
    s.env = {{"DUMONT_AGENT_SERVER", "http://127.0.0.1:9"}, {"DUMONT_AGENT_ENROLL_TOKEN", "det_te'st"}};
    return s;
  }

  std::vector<std::chrono::milliseconds> Sleeps() {
    std::lock_guard l(sleeps_mu_);
    return sleeps_;
  }

  fs::path dir_;
  std::unique_ptr<GceEmulator> emu_;
  std::mutex sleeps_mu_;
  std::vector<std::chrono::milliseconds> sleeps_;
};

TEST(GceStateTable, MapsVendorStates) {
  auto st = [](json j) { return provider::GceMachineState(j); };
  const std::string started = "2026-08-21T10:00:00.000-07:00";
  EXPECT_EQ(st({{"status", "PROVISIONING"}}), MachineState::kPending);
  EXPECT_EQ(st({{"status", "STAGING"}}), MachineState::kPending);
  EXPECT_EQ(st({{"status", "REPAIRING"}}), MachineState::kPending);
  EXPECT_EQ(st({{"status", "RUNNING"}, {"lastStartTimestamp", started}}), MachineState::kRunning);
  EXPECT_EQ(st({{"status", "STOPPING"}}), MachineState::kTerminating);
  EXPECT_EQ(st({{"status", "SUSPENDING"}}), MachineState::kTerminating);
  EXPECT_EQ(st({{"status", "TERMINATED"}, {"lastStartTimestamp", started}}), MachineState::kStopped);
  EXPECT_EQ(st({{"status", "SUSPENDED"}, {"lastStartTimestamp", started}}), MachineState::kStopped);
  EXPECT_EQ(st({{"status", "TERMINATED"}}), MachineState::kFailed);  // never ran: failed to boot
  EXPECT_EQ(st({{"status", "WEIRD"}}), MachineState::kUnknown);
  EXPECT_EQ(st(json::array()), MachineState::kUnknown);
}

TEST(GceNames, LabelsMapReversiblyToRfc1035Names) {
  for (std::string label : {provider::MachineLabel("ins_abcdefghij234567klmn", 3), std::string("dc-inst1-1"),
                            std::string("dc-a__b-12"), std::string("x")}) {
    auto name = provider::GceInstanceName(label);
    ASSERT_TRUE(name) << label;
    EXPECT_LE(name->size(), 63u);
    EXPECT_EQ(name->find('_'), std::string::npos);
    EXPECT_EQ(provider::GceLabelFromName(*name), label);
  }
  EXPECT_EQ(provider::GceInstanceName("dc-ins_abc-1"), "dc-ins--abc-1");
  // Outside the reversible domain: no name (rather than two labels sharing one).
  for (const std::string& bad : std::vector<std::string>{"Dc-x-1", "dc--x", "dc-_x", "dc_-x", "1dc", "dc-", "dc_", "dc.x", "",
                                                         std::string(64, 'a')}) {
    EXPECT_FALSE(provider::GceInstanceName(bad)) << bad;
  }
  EXPECT_FALSE(provider::GceLabelFromName("dc---x"));
  EXPECT_FALSE(provider::GceLabelFromName("Dc-x"));
}

TEST_F(GceTest, TokenFlowAssertionVerifiedAndTokenCached) {
  StartEmulator({.spawn_agents = false});
  auto p = Gce(Options());
  for (int i = 0; i < 3; ++i) {
    auto l = p->ListByLabelPrefix("dc-");
    ASSERT_TRUE(l) << l.error().ToString();
  }
  EXPECT_EQ(emu_->RequestCount("token"), 1);  // cached
  EXPECT_EQ(emu_->RequestCount("list"), 6);   // two zones, three times
  EXPECT_EQ(emu_->AuthFailureCount(), 0);
  // The emulator verified the RS256 signature with the account's public key; these are the claims.
  json c = emu_->LastTokenClaims();
  EXPECT_EQ(c["iss"], Account().client_email);
  EXPECT_EQ(c["aud"], emu_->TokenUrl());
  EXPECT_EQ(c["scope"], "https://www.googleapis.com/auth/compute");
  EXPECT_EQ(c["exp"].get<int64_t>() - c["iat"].get<int64_t>(), 3600);
}

TEST_F(GceTest, KeyTokenUriIsUsedWhenTokenUrlIsLeftAtDefault) {
  StartEmulator({.spawn_agents = false});
  json key = json::parse(Account().key_json);
  key["token_uri"] = emu_->TokenUrl();
  auto o = Options(key.dump());
  o.token_url = "https://oauth2.googleapis.com/token";
  auto l = Gce(o)->ListByLabelPrefix("dc-");
  ASSERT_TRUE(l) << l.error().ToString();
  EXPECT_EQ(emu_->RequestCount("token"), 1);
}

TEST_F(GceTest, TokenIsRefreshedBeforeItExpires) {
  StartEmulator({.token_ttl_seconds = 1, .spawn_agents = false});
  auto o = Options();
  o.token_refresh_margin = 0s;
  auto p = Gce(o);
  ASSERT_TRUE(p->ListByLabelPrefix("dc-"));
  ASSERT_EQ(emu_->RequestCount("token"), 1);
  // Expiry: the cached token is replaced once its expires_in has passed, before any 401.
  auto until = std::chrono::steady_clock::now() + 5s;
  while (emu_->RequestCount("token") < 2 && std::chrono::steady_clock::now() < until) {
    ASSERT_TRUE(p->ListByLabelPrefix("dc-"));
    std::this_thread::sleep_for(50ms);
  }
  EXPECT_EQ(emu_->RequestCount("token"), 2);
  EXPECT_EQ(emu_->AuthFailureCount(), 0);
}

TEST_F(GceTest, TokenIsRefreshedOnceOn401) {
  StartEmulator({.spawn_agents = false});
  auto p = Gce(Options());
  ASSERT_TRUE(p->ListByLabelPrefix("dc-"));
  ASSERT_EQ(emu_->RequestCount("token"), 1);
  emu_->ExpireTokens();  // revoked, or expired early server-side
  auto l = p->ListByLabelPrefix("dc-");
  ASSERT_TRUE(l) << l.error().ToString();
  EXPECT_EQ(emu_->RequestCount("token"), 2);
  EXPECT_EQ(emu_->AuthFailureCount(), 1);
  EXPECT_TRUE(Sleeps().empty());  // a 401 is not backed off
}

TEST_F(GceTest, OffersAreConfiguredMachineTypesPerZone) {
  StartEmulator({.spawn_agents = false});
  auto o = Options();
  o.machine_types = {{"e2-medium", 2, 4, 0.02}, {"e2-small", 2, 2, 0.01}};
  auto offers = Gce(o)->Offers();
  ASSERT_TRUE(offers);
  ASSERT_EQ(offers->size(), 4u);  // 2 zones x 2 types
  for (size_t i = 1; i < offers->size(); ++i) EXPECT_LE((*offers)[i - 1].price_per_hour, (*offers)[i].price_per_hour);
  const auto& cheapest = offers->front();
  EXPECT_EQ(cheapest.id, "us-central1-a:e2-small");
  EXPECT_EQ(cheapest.provider, "gce");
  EXPECT_EQ(cheapest.location, "us-central1-a");
  EXPECT_EQ(cheapest.cpu_cores, 2);
  EXPECT_DOUBLE_EQ(cheapest.ram_gb, 2);
  EXPECT_DOUBLE_EQ(cheapest.price_per_hour, 0.01);
  EXPECT_EQ(cheapest.num_gpus, 0);
  EXPECT_EQ(emu_->RequestCount("token"), 0);  // the catalog is configuration: no request
}

TEST_F(GceTest, InsertWaitsForOperationThenRunningGetAndList) {
  StartEmulator({.spawn_agents = false});
  auto p = Gce(Options());
  const std::string label = provider::MachineLabel("ins_abc234", 1);
  auto m = p->Create(Spec(label));
  ASSERT_TRUE(m) << m.error().ToString();
  EXPECT_EQ(m->id, "us-central1-a:dc-ins--abc234-1");
  EXPECT_EQ(m->label, label);
  EXPECT_EQ(m->offer_id, "us-central1-a:e2-micro");  // the cheapest default offer
  EXPECT_GT(emu_->RequestCount("op_wait"), 0);       // the insert operation was waited for
  // The insert body (providers.md 3.2): Spot, the label as name and label, the agent env in metadata.
  json body = emu_->LastCreateBody();
  EXPECT_EQ(body["name"], "dc-ins--abc234-1");
  EXPECT_EQ(body["labels"]["dumont-label"], label);
  EXPECT_EQ(body["machineType"], "zones/us-central1-a/machineTypes/e2-micro");
  EXPECT_EQ(body["scheduling"]["provisioningModel"], "SPOT");
  EXPECT_EQ(body["scheduling"]["instanceTerminationAction"], "STOP");
  EXPECT_EQ(body["disks"][0]["initializeParams"]["sourceImage"], "projects/debian-cloud/global/images/family/debian-12");
  std::string env_item, script;
  for (const auto& it : body["metadata"]["items"]) {
    if (it["key"] == "dumont-agent-env") env_item = it["value"];
    if (it["key"] == "startup-script") script = it["value"];
  }
  EXPECT_NE(env_item.find("DUMONT_AGENT_SERVER='http://127.0.0.1:9'"), std::string::npos) << env_item;
  EXPECT_NE(env_item.find("DUMONT_AGENT_ENROLL_TOKEN='det_te'\\''st'"), std::string::npos) << env_item;
  EXPECT_NE(script.find("dumont-agent"), std::string::npos);

  Machine r = WaitFor(*p, m->id, MachineState::kRunning);
  EXPECT_EQ(r.ssh_host, "127.0.0.1");  // natIP
  EXPECT_EQ(r.ssh_port, 22);
  EXPECT_GT(r.price_per_hour, 0);
  EXPECT_EQ(r.details["status"], "RUNNING");
  EXPECT_EQ(r.details["provisioning_model"], "SPOT");
  EXPECT_EQ(r.details.dump().find("det_te"), std::string::npos);  // the metadata (enroll token) stays out
  EXPECT_FALSE(r.details["last_start_timestamp"].get<std::string>().empty());

  auto m2 = p->Create(Spec("dc-other-1", "us-central1-b:e2-small"));
  ASSERT_TRUE(m2) << m2.error().ToString();
  EXPECT_EQ(m2->id, "us-central1-b:dc-other-1");
  auto l1 = p->ListByLabelPrefix("dc-ins_abc234-");
  ASSERT_TRUE(l1);
  ASSERT_EQ(l1->size(), 1u);
  EXPECT_EQ((*l1)[0].id, m->id);
  auto all = p->ListByLabelPrefix("dc-");
  ASSERT_TRUE(all);
  EXPECT_EQ(all->size(), 2u);  // across both zones
  // Create is idempotent per label.
  auto again = p->Create(Spec(label));
  ASSERT_TRUE(again);
  EXPECT_EQ(again->id, m->id);
  EXPECT_EQ(emu_->InstanceCount(), 2);
  EXPECT_EQ(emu_->RequestCount("insert"), 2);
}

TEST_F(GceTest, ListFollowsPagination) {
  StartEmulator({.list_page_cap = 2, .spawn_agents = false});
  auto o = Options();
  o.zones = {"us-central1-a"};
  auto p = Gce(o);
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(p->Create(Spec("dc-page" + std::to_string(i) + "-1")));
  int before = emu_->RequestCount("list");
  auto all = p->ListByLabelPrefix("dc-page");
  ASSERT_TRUE(all) << all.error().ToString();
  EXPECT_EQ(all->size(), 5u);
  EXPECT_EQ(emu_->RequestCount("list") - before, 3);  // 2 + 2 + 1
}

TEST_F(GceTest, LabelsWithoutAGceNameAreRefusedBeforeAnyRequest) {
  StartEmulator({.spawn_agents = false});
  auto m = Gce(Options())->Create(Spec("DC-Upper-1"));
  ASSERT_FALSE(m);
  EXPECT_EQ(m.error().code(), Code::kInvalidArgument);
  EXPECT_EQ(emu_->RequestCount("token"), 0);
}

TEST_F(GceTest, DeleteIsIdempotent) {
  StartEmulator({.spawn_agents = false});
  auto p = Gce(Options());
  auto m = p->Create(Spec("dc-d-1"));
  ASSERT_TRUE(m) << m.error().ToString();
  EXPECT_TRUE(p->Destroy(m->id).ok());
  // The delete operation is DONE: the instance is gone (STOPPING -> 404) by then or very soon.
  auto until = std::chrono::steady_clock::now() + 5s;
  Result<Machine> g = p->Get(m->id);
  while (g && std::chrono::steady_clock::now() < until) {
    EXPECT_EQ(g->state, MachineState::kTerminating);
    std::this_thread::sleep_for(20ms);
    g = p->Get(m->id);
  }
  ASSERT_FALSE(g);
  EXPECT_EQ(g.error().code(), Code::kNotFound);
  EXPECT_TRUE(p->Destroy(m->id).ok());                       // 404: already gone
  EXPECT_TRUE(p->Destroy("us-central1-a:never-was").ok());   // never existed
  EXPECT_TRUE(p->Destroy("not-a-gce-id").ok());              // never a GCE machine
  EXPECT_EQ(emu_->InstanceCount(), 0);
  auto l = p->ListByLabelPrefix("dc-d-");
  ASSERT_TRUE(l);
  EXPECT_TRUE(l->empty());
}

TEST_F(GceTest, LostInsertAnswerIsFoundByNameNotDuplicated) {
  StartEmulator({.spawn_agents = false});
  auto p = Gce(Options());
  emu_->LoseNextCreates(1, GceEmulator::LostMode::kBodyless502);
  auto m = p->Create(Spec("dc-lost-1"));
  ASSERT_TRUE(m) << m.error().ToString();
  EXPECT_EQ(m->label, "dc-lost-1");
  EXPECT_EQ(emu_->InstanceCount(), 1);
  EXPECT_EQ(emu_->RequestCount("insert"), 1);  // found by name: the insert was not sent again
  EXPECT_EQ(emu_->FaultCount("insert"), 1);
}

TEST_F(GceTest, InsertAnswerAfterClientTimeoutIsFoundByName) {
  StartEmulator({.lost_response_delay_s = 2.5, .spawn_agents = false});
  auto o = Options();
  o.request_timeout = 700ms;
  auto p = Gce(o);
  emu_->LoseNextCreates(1, GceEmulator::LostMode::kLateAnswer);
  auto m = p->Create(Spec("dc-late-1"));
  ASSERT_TRUE(m) << m.error().ToString();
  EXPECT_EQ(m->label, "dc-late-1");
  EXPECT_EQ(emu_->InstanceCount(), 1);
  EXPECT_EQ(emu_->RequestCount("insert"), 1);
}

TEST_F(GceTest, InsertRefusedWith5xxIsRetriedWithTheSameRequestId) {
  StartEmulator({.spawn_agents = false});
  auto p = Gce(Options());
  emu_->InjectServerErrors(1, "insert");  // refused before anything was created
  auto m = p->Create(Spec("dc-retry-1"));
  ASSERT_TRUE(m) << m.error().ToString();
  EXPECT_EQ(emu_->RequestCount("insert"), 2);
  EXPECT_EQ(emu_->InstanceCount(), 1);
  EXPECT_EQ(Sleeps().size(), 1u);
}

TEST_F(GceTest, InsertOfAnExistingNameFindsItNotDuplicated) {
  StartEmulator({.spawn_agents = false});
  auto o = Options();
  o.zones = {"us-central1-a"};
  auto other = Gce(o);
  // Two creates of one label race: ours looked (404), was rate limited, and while it backed off the
  // other one created the VM. Our retried insert is answered 409 alreadyExists, which means "find it".
  Result<Machine> first = Err(Status::Internal("not created"));
  auto ob = o;
  ob.sleep = [&](std::chrono::milliseconds) {
    if (!first) first = other->Create(Spec("dc-dup-1"));
  };
  auto p = Gce(ob);
  emu_->InjectRateLimit(1, "insert");
  auto m = p->Create(Spec("dc-dup-1"));
  ASSERT_TRUE(first) << first.error().ToString();
  ASSERT_TRUE(m) << m.error().ToString();
  EXPECT_EQ(m->id, first->id);
  EXPECT_EQ(emu_->InstanceCount(), 1);
  EXPECT_EQ(emu_->RequestCount("insert"), 3);  // ours (429), theirs, ours again (409)
}

TEST_F(GceTest, RateLimitStormSucceedsAfterGrowingBackoff) {
  StartEmulator({.spawn_agents = false});
  auto p = Gce(Options());
  emu_->InjectRateLimit(4, "list");
  auto l = p->ListByLabelPrefix("dc-");
  ASSERT_TRUE(l) << l.error().ToString();
  EXPECT_EQ(emu_->FaultCount("list"), 4);
  EXPECT_EQ(emu_->RequestCount("list"), 4 + 2);  // 5 tries in zone a, 1 in zone b
  auto sleeps = Sleeps();
  ASSERT_EQ(sleeps.size(), 4u);
  for (size_t i = 1; i < sleeps.size(); ++i) EXPECT_GE(sleeps[i], sleeps[i - 1]);
  EXPECT_GT(sleeps.back(), sleeps.front());
  EXPECT_GE(sleeps.front(), 5ms);  // base 10 ms, jitter in [d/2, d]
  EXPECT_LE(sleeps.back(), 80ms);  // 10 * 2^3
}

TEST_F(GceTest, Forbidden403RateLimitExceededIsRetriedToo) {
  StartEmulator({.spawn_agents = false});
  auto p = Gce(Options());
  auto m = p->Create(Spec("dc-403-1"));
  ASSERT_TRUE(m);
  emu_->InjectRateLimit(2, "get", 403);
  auto g = p->Get(m->id);
  ASSERT_TRUE(g) << g.error().ToString();
  EXPECT_EQ(emu_->FaultCount("get"), 2);
  EXPECT_EQ(Sleeps().size(), 2u);
}

TEST_F(GceTest, PerMinuteQuotaBucketIsWaitedOut) {
  StartEmulator({.requests_per_minute = 3, .quota_window_seconds = 0.3, .spawn_agents = false});
  auto o = Options();
  o.zones = {"us-central1-a"};
  o.base_delay = 100ms;
  o.sleep = nullptr;  // really wait: the bucket refills with time
  auto p = Gce(o);
  for (int i = 0; i < 6; ++i) {
    auto l = p->ListByLabelPrefix("dc-");
    ASSERT_TRUE(l) << l.error().ToString();
  }
  EXPECT_GT(emu_->FaultCount("list"), 0);  // 403 rateLimitExceeded was answered, and retried past
}

TEST_F(GceTest, RateLimitBeyondAttemptsIsResourceExhausted) {
  StartEmulator({.spawn_agents = false});
  auto o = Options();
  o.max_attempts = 3;
  auto p = Gce(o);
  emu_->InjectRateLimit(10, "get");
  auto g = p->Get("us-central1-a:dc-x-1");
  ASSERT_FALSE(g);
  EXPECT_EQ(g.error().code(), Code::kResourceExhausted);
  EXPECT_NE(g.error().message().find("reading GCE instance us-central1-a:dc-x-1"), std::string::npos) << g.error().message();
  EXPECT_NE(g.error().message().find("rateLimitExceeded"), std::string::npos) << g.error().message();
  EXPECT_EQ(emu_->RequestCount("get"), 3);
}

TEST_F(GceTest, ServerErrorsAreRetriedForGetWaitAndDelete) {
  StartEmulator({.spawn_agents = false});
  auto p = Gce(Options());
  emu_->InjectServerErrors(2, "op_wait");
  auto m = p->Create(Spec("dc-5xx-1"));
  ASSERT_TRUE(m) << m.error().ToString();
  EXPECT_EQ(emu_->FaultCount("op_wait"), 2);
  emu_->InjectServerErrors(2, "get");
  EXPECT_TRUE(p->Get(m->id));
  emu_->InjectServerErrors(2, "delete");
  EXPECT_TRUE(p->Destroy(m->id).ok());
  EXPECT_EQ(emu_->FaultCount("delete"), 2);
  // The token endpoint's 5xx are retried as well.
  emu_->ExpireTokens();
  emu_->InjectServerErrors(2, "token");
  EXPECT_TRUE(p->ListByLabelPrefix("dc-"));
  EXPECT_EQ(emu_->FaultCount("token"), 2);
}

TEST_F(GceTest, PreemptionShowsAsStoppedAndInterrupted) {
  StartEmulator({.preempt_grace_seconds = 0.6, .spawn_agents = false});
  auto p = Gce(Options());
  auto m = p->Create(Spec("dc-spot-1"));
  ASSERT_TRUE(m) << m.error().ToString();
  WaitFor(*p, m->id, MachineState::kRunning);
  ASSERT_TRUE(emu_->Preempt(m->details["name"]).ok());
  auto g = p->Get(m->id);
  ASSERT_TRUE(g);
  EXPECT_EQ(g->state, MachineState::kTerminating);  // the ~30 s grace (STOPPING)
  Machine s = WaitFor(*p, m->id, MachineState::kStopped);
  EXPECT_EQ(s.details["interrupted"], true);  // confirmed by the compute.instances.preempted operation
  EXPECT_EQ(s.details["status"], "TERMINATED");
  EXPECT_GT(emu_->RequestCount("op_list"), 0);
  auto listed = p->ListByLabelPrefix("dc-spot-");
  ASSERT_TRUE(listed);
  ASSERT_EQ(listed->size(), 1u);
  EXPECT_EQ((*listed)[0].details["interrupted"], true);
  // A preempted Spot VM (action STOP) starts again; once running it is no longer "interrupted".
  ASSERT_TRUE(p->Start(m->id).ok());
  Machine r = WaitFor(*p, m->id, MachineState::kRunning);
  EXPECT_EQ(r.details["interrupted"], false);
  ASSERT_TRUE(p->Stop(m->id).ok());
  Machine stopped = WaitFor(*p, m->id, MachineState::kStopped);
  EXPECT_EQ(stopped.details["interrupted"], false);  // stopped by us after the restart, not preempted
}

TEST_F(GceTest, PreemptionWithDeleteActionIsNotFound) {
  StartEmulator({.spawn_agents = false});
  auto o = Options();
  o.termination_action = "DELETE";
  auto p = Gce(o);
  auto m = p->Create(Spec("dc-spotdel-1"));
  ASSERT_TRUE(m) << m.error().ToString();
  EXPECT_EQ(emu_->LastCreateBody()["scheduling"]["instanceTerminationAction"], "DELETE");
  WaitFor(*p, m->id, MachineState::kRunning);
  ASSERT_TRUE(emu_->Preempt(m->details["name"]).ok());
  auto until = std::chrono::steady_clock::now() + 5s;
  auto g = p->Get(m->id);
  while (g && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(20ms);
    g = p->Get(m->id);
  }
  ASSERT_FALSE(g);
  EXPECT_EQ(g.error().code(), Code::kNotFound);
}

TEST_F(GceTest, StopAndStartStandard) {
  StartEmulator({.spawn_agents = false});
  auto o = Options();
  o.spot = false;
  auto p = Gce(o);
  EXPECT_FALSE(p->Capabilities()["spot"].supported);
  auto m = p->Create(Spec("dc-ss-1"));
  ASSERT_TRUE(m) << m.error().ToString();
  EXPECT_EQ(emu_->LastCreateBody()["scheduling"]["provisioningModel"], "STANDARD");
  WaitFor(*p, m->id, MachineState::kRunning);
  ASSERT_TRUE(p->Stop(m->id).ok());
  Machine s = WaitFor(*p, m->id, MachineState::kStopped);
  EXPECT_EQ(s.details["interrupted"], false);
  EXPECT_TRUE(s.ssh_host.empty());
  EXPECT_EQ(emu_->RequestCount("op_list"), 0);  // not Spot: no preemption to look for
  ASSERT_TRUE(p->Start(m->id).ok());
  WaitFor(*p, m->id, MachineState::kRunning);
  EXPECT_EQ(p->Stop("us-central1-a:no-such-vm").code(), Code::kNotFound);
  EXPECT_EQ(p->Start("bogus").code(), Code::kNotFound);
}

TEST_F(GceTest, StockoutIsAClearErrorForInsertAndStart) {
  StartEmulator({.spawn_agents = false});
  auto p = Gce(Options());
  emu_->Stockout("us-central1-a", "e2-small");
  auto m = p->Create(Spec("dc-stock-1", "us-central1-a:e2-small"));
  ASSERT_FALSE(m);
  EXPECT_EQ(m.error().code(), Code::kResourceExhausted);
  EXPECT_NE(m.error().message().find("ZONE_RESOURCE_POOL_EXHAUSTED"), std::string::npos) << m.error().message();
  EXPECT_NE(m.error().message().find("us-central1-a"), std::string::npos) << m.error().message();
  EXPECT_NE(m.error().message().find("try another zone"), std::string::npos) << m.error().message();
  EXPECT_EQ(emu_->InstanceCount(), 0);
  EXPECT_EQ(emu_->RequestCount("insert"), 1);  // not retried
  // Another machine type in the same zone is fine; a stocked-out start fails clearly and leaves it stopped.
  auto ok = p->Create(Spec("dc-stock-2", "us-central1-a:e2-medium"));
  ASSERT_TRUE(ok) << ok.error().ToString();
  WaitFor(*p, ok->id, MachineState::kRunning);
  ASSERT_TRUE(p->Stop(ok->id).ok());
  WaitFor(*p, ok->id, MachineState::kStopped);
  emu_->Stockout("us-central1-a");
  Status st = p->Start(ok->id);
  EXPECT_EQ(st.code(), Code::kResourceExhausted) << st.ToString();
  EXPECT_EQ(p->Get(ok->id)->state, MachineState::kStopped);
  emu_->Stockout("us-central1-a", "", false);
  ASSERT_TRUE(p->Start(ok->id).ok());
  WaitFor(*p, ok->id, MachineState::kRunning);
}

TEST_F(GceTest, FailAtBootAndNeverReady) {
  StartEmulator({.spawn_agents = false});
  auto p = Gce(Options());
  emu_->SetNextCreateFault(GceEmulator::CreateFault::kFailAtBoot);
  auto bad = p->Create(Spec("dc-boot-1"));
  ASSERT_TRUE(bad) << bad.error().ToString();
  Machine f = WaitFor(*p, bad->id, MachineState::kFailed);
  EXPECT_EQ(f.details["status"], "TERMINATED");
  EXPECT_NE(f.details["status_message"].get<std::string>().find("failed to start"), std::string::npos);
  emu_->SetNextCreateFault(GceEmulator::CreateFault::kNeverReady);
  auto stuck = p->Create(Spec("dc-stuck-1"));
  ASSERT_TRUE(stuck);
  Machine staging = WaitFor(*p, stuck->id, MachineState::kPending);
  // Well past provisioning + staging (0.15 s): still STAGING, never RUNNING.
  auto until = std::chrono::steady_clock::now() + 500ms;
  while (std::chrono::steady_clock::now() < until) {
    auto g = p->Get(stuck->id);
    ASSERT_TRUE(g);
    ASSERT_EQ(g->state, MachineState::kPending) << g->details.dump();
    staging = *g;
    std::this_thread::sleep_for(50ms);
  }
  EXPECT_EQ(staging.details["status"], "STAGING");
}

TEST_F(GceTest, BadCredentialsAreUnauthenticatedAndNeverLeak) {
  StartEmulator({.spawn_agents = false});
  // A key the emulator does not know: the signature cannot verify.
  auto stranger = emulators::NewGceServiceAccount(Account().client_email, "dumont-emulated", emu_->TokenUrl());
  ASSERT_TRUE(stranger);
  auto p = Gce(Options(stranger->key_json));
  auto secret_lines = [](const std::string& pem) {
    std::vector<std::string> out;
    std::istringstream in(pem);
    for (std::string line; std::getline(in, line);) {
      if (line.find("-----") == std::string::npos && line.size() > 16) out.push_back(line);
    }
    return out;
  };
  auto no_secret = [&](const Status& st) {
    EXPECT_EQ(st.message().find("PRIVATE KEY"), std::string::npos) << st.message();
    for (const auto& l : secret_lines(stranger->private_key_pem)) {
      EXPECT_EQ(st.message().find(l), std::string::npos) << st.message();
    }
    EXPECT_EQ(st.message().find("ya29."), std::string::npos) << st.message();
    EXPECT_EQ(st.message().find("eyJ"), std::string::npos) << st.message();  // no JWT
  };
  auto l = p->ListByLabelPrefix("dc-");
  ASSERT_FALSE(l);
  EXPECT_EQ(l.error().code(), Code::kUnauthenticated);
  EXPECT_NE(l.error().message().find("Invalid JWT Signature"), std::string::npos) << l.error().message();
  no_secret(l.error());
  auto m = p->Create(Spec("dc-auth-1"));
  ASSERT_FALSE(m);
  EXPECT_EQ(m.error().code(), Code::kUnauthenticated);
  no_secret(m.error());
  EXPECT_EQ(emu_->RequestCount("insert"), 0);
  EXPECT_EQ(emu_->RequestCount("list"), 0);
  EXPECT_TRUE(Sleeps().empty());  // invalid_grant is not retried

  // A key that is not even a key: refused before any request, its text never shown.
  std::string garbage = R"({"client_email":"x@y","private_key":"-----BEGIN PRIVATE KEY-----\nNOTAKEY0123456789abcdef\n-----END PRIVATE KEY-----\n"})";
  auto g = Gce(Options(garbage))->Get("us-central1-a:dc-x-1");
  ASSERT_FALSE(g);
  EXPECT_EQ(g.error().code(), Code::kUnauthenticated);
  EXPECT_EQ(g.error().message().find("NOTAKEY0123456789abcdef"), std::string::npos) << g.error().message();
  EXPECT_EQ(Gce(Options("not json"))->Get("us-central1-a:dc-x-1").error().code(), Code::kUnauthenticated);

  // A token that is refused even after a refresh: Unauthenticated, and the token is not in the message.
  StartEmulator({.token_ttl_seconds = 0, .token_grace_seconds = 0, .spawn_agents = false});  // born expired
  auto p2 = Gce(Options());
  auto g2 = p2->Get("us-central1-a:dc-x-1");
  ASSERT_FALSE(g2);
  EXPECT_EQ(g2.error().code(), Code::kUnauthenticated);
  EXPECT_EQ(emu_->RequestCount("token"), 2);  // the first token, then one refresh on the 401
  no_secret(g2.error());
}

TEST_F(GceTest, NetworkErrorsNameTheOperation) {
  StartEmulator({.spawn_agents = false});
  auto o = Options();
  o.base_url = "http://127.0.0.1:9/compute/v1";  // nothing listens there
  o.max_attempts = 2;
  auto g = Gce(o)->Get("us-central1-a:dc-net-1");
  ASSERT_FALSE(g);
  EXPECT_EQ(g.error().code(), Code::kUnavailable);
  EXPECT_NE(g.error().message().find("reading GCE instance us-central1-a:dc-net-1"), std::string::npos) << g.error().message();
  EXPECT_EQ(g.error().message().find("ya29."), std::string::npos);
}

TEST_F(GceTest, RunningVmHasARealAgentAndDeleteRemovesIt) {
  if (AgentPath().empty() || !fs::exists(AgentPath())) GTEST_SKIP() << "no dumont-agent (set DUMONT_TEST_AGENT)";
  StartEmulator();
  auto p = Gce(Options());
  auto m = p->Create(Spec("dc-agent-1"));
  ASSERT_TRUE(m) << m.error().ToString();
  WaitFor(*p, m->id, MachineState::kRunning);
  std::string name = m->details["name"];
  auto local = emu_->LocalMachine(name);
  ASSERT_TRUE(local.has_value());
  std::string workspace = local->details["workspace"];
  int pid = local->details["pid"];
  EXPECT_TRUE(fs::is_directory(workspace));
  EXPECT_TRUE(Alive(pid));
  // The agent got the env of the instance metadata: it is trying to enroll with the server we named.
  std::string log_path = local->details["agent_log"];
  bool tried = false;
  for (int i = 0; i < 100 && !tried; ++i) {
    std::ifstream in(log_path);
    std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    tried = all.find("127.0.0.1:9") != std::string::npos;
    if (!tried) std::this_thread::sleep_for(30ms);
  }
  EXPECT_TRUE(tried) << "agent log does not show an enrollment attempt at the given DUMONT_AGENT_SERVER";
  // Stop stops the agent; start runs it again.
  ASSERT_TRUE(p->Stop(m->id).ok());
  WaitFor(*p, m->id, MachineState::kStopped);
  for (int i = 0; i < 100 && Alive(pid); ++i) std::this_thread::sleep_for(20ms);
  EXPECT_FALSE(Alive(pid));
  ASSERT_TRUE(p->Start(m->id).ok());
  WaitFor(*p, m->id, MachineState::kRunning);
  local = emu_->LocalMachine(name);
  ASSERT_TRUE(local.has_value());
  int pid2 = local->details["pid"];
  EXPECT_TRUE(Alive(pid2));
  // Delete: STOPPING, then gone, and the machine with it.
  ASSERT_TRUE(p->Destroy(m->id).ok());
  for (int i = 0; i < 100 && fs::exists(workspace); ++i) std::this_thread::sleep_for(20ms);
  EXPECT_FALSE(fs::exists(workspace));
  for (int i = 0; i < 100 && Alive(pid2); ++i) std::this_thread::sleep_for(20ms);
  EXPECT_FALSE(Alive(pid2));
}

}  // namespace
}  // namespace dumont
