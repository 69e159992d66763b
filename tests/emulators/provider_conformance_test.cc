// The provider conformance suite: one set of behaviours, checked identically on every Provider: sim (in
// memory, on a FakeClock), local (real directories and dumont-agent processes) and the vast, runpod and
// gce clients against their emulators (tests/emulators; the real services are never reached). The
// contract is src/provider/provider.h; docs/providers.md describes it, the state mapping of each
// provider and what is checked here.
//
// Each provider is driven through a small Harness: a fresh client, its backend's own count of machines,
// fault injection where the backend has faults (the emulators), and AdvanceUntil, which polls on the real
// clock for emulators and local, and advances the FakeClock for the sim. A behaviour a provider genuinely
// lacks is skipped with the reason, after checking that Capabilities() says so (and, for stop, that the
// call answers Unimplemented).
//
// Local and the emulators run real dumont-agent processes: every test destroys what it created (TearDown
// through the provider under test, not the emulator's destructor) and then checks that no process whose
// environment points into the test's directory is left.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <set>
#include <sstream>
#include <thread>

#include <gtest/gtest.h>

#include "common/clock.h"
#include "common/random.h"
#include "emulators/gce_emulator.h"
#include "emulators/runpod_emulator.h"
#include "emulators/vast_emulator.h"
#include "provider/gce.h"
#include "provider/local.h"
#include "provider/runpod.h"
#include "provider/sim.h"
#include "provider/vast.h"

namespace dumont {
namespace {

using nlohmann::json;
using provider::Machine;
using provider::MachineSpec;
using provider::MachineState;
using provider::Provider;
namespace fs = std::filesystem;
using namespace std::chrono_literals;

constexpr int kMaxAttempts = 5;               // every client's retry budget in this suite
constexpr std::chrono::milliseconds kDeadline = 20s;  // boot, stop, start, destroy (emulators: well under 1 s)

std::string AgentPath() {
  if (const char* p = std::getenv("DUMONT_TEST_AGENT")) return p;
#ifdef DUMONT_TEST_AGENT_PATH
  return DUMONT_TEST_AGENT_PATH;
#else
  return "";
#endif
}
bool HaveAgent() { return !AgentPath().empty() && fs::exists(AgentPath()); }

// Alive and not a zombie (an agent is reparented to init, which may be slow to reap it).
bool Alive(int pid) {
  if (pid <= 0 || ::kill(pid, 0) != 0) return false;
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  std::getline(stat, line);
  auto close = line.rfind(')');
  return close == std::string::npos || close + 2 >= line.size() || line[close + 2] != 'Z';
}

// Every live process whose environment gives it an agent state directory under `dir`: the dumont-agents
// of this test's machines (local provider: <dir>/machines/<label>/agent; emulators: the same, under
// their state_dir).
std::vector<int> AgentPidsUnder(const std::string& dir) {
  std::vector<int> out;
  if (dir.empty()) return out;
  const std::string needle = "DUMONT_AGENT_STATE_DIR=" + dir + "/";
  std::error_code ec;
  for (auto it = fs::directory_iterator("/proc", ec); !ec && it != fs::directory_iterator(); it.increment(ec)) {
    std::string name = it->path().filename().string();
    if (name.empty() || !std::all_of(name.begin(), name.end(), [](char c) { return c >= '0' && c <= '9'; })) continue;
    std::ifstream in(it->path() / "environ", std::ios::binary);
    std::string env((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    for (size_t p = 0; p < env.size();) {
      size_t e = env.find('\0', p);
      if (e == std::string::npos) e = env.size();
      if (env.compare(p, needle.size(), needle) == 0) {
        int pid = std::atoi(name.c_str());
        if (Alive(pid)) out.push_back(pid);
        break;
      }
      p = e + 1;
    }
  }
  return out;
}

std::string Join(const std::vector<int>& v) {
  std::string s;
  for (int x : v) s += (s.empty() ? "" : " ") + std::to_string(x);
  return s;
}

// ---------------------------------------------------------------------------------------------------
// Harnesses
// ---------------------------------------------------------------------------------------------------

enum class Op { kList, kCreate, kGet, kDestroy };

struct ClientOptions {
  std::optional<bool> spot;  // an interruptible / Spot client; nullopt: the provider's default
  std::chrono::milliseconds request_timeout{5000};
};

class Harness {
 public:
  virtual ~Harness() = default;
  // FailedPrecondition: this provider cannot run here (the test is skipped with the message).
  virtual Status Start(const fs::path& dir) = 0;
  // A fresh client of the same backend (what a restarted dumontd would build).
  virtual std::unique_ptr<Provider> Make(const ClientOptions& o = {}) = 0;
  // A client whose credentials the backend refuses, and the secrets that must never appear in an error.
  // nullptr: the provider has no credentials.
  virtual std::unique_ptr<Provider> MakeWithWrongCredentials(std::vector<std::string>* /*secrets*/) { return nullptr; }
  virtual std::string NoCredentialsReason() const { return ""; }

  // Fault injection (the emulators). Without it, NoFaultsReason() says why.
  virtual bool SupportsFaults() const { return false; }
  virtual std::string NoFaultsReason() const { return ""; }
  virtual void RateLimitNext(int /*n*/, Op /*op*/) {}
  virtual void ServerErrorsNext(int /*n*/, Op /*op*/) {}
  virtual void LoseNextCreate(bool /*late*/) {}
  virtual Status Preempt(const Machine& /*m*/) { return Status::Unimplemented("no preemption"); }
  virtual void FailNextAtBoot() {}

  // Live machines as the backend itself counts them (not through the client under test).
  virtual int LiveMachines() = 0;
  // A well-formed machine id of this provider that never existed.
  virtual std::string UnknownId() const = 0;
  // Where this test's agents keep their state ("" = the provider runs no agents).
  virtual std::string AgentDir() const { return ""; }

  // Polls `pred` until it holds or `deadline` has passed: real time here, fake time for the sim.
  virtual bool AdvanceUntil(const std::function<bool()>& pred, std::chrono::milliseconds deadline) {
    auto until = std::chrono::steady_clock::now() + deadline;
    while (true) {
      if (pred()) return true;
      if (std::chrono::steady_clock::now() >= until) return false;
      std::this_thread::sleep_for(20ms);
    }
  }

  // Backoff waits the clients took (they really sleep: base 5 ms, cap 40 ms).
  int Backoffs() const { return backoffs_.load(); }

 protected:
  std::function<void(std::chrono::milliseconds)> Sleeper() {
    return [this](std::chrono::milliseconds d) {
      ++backoffs_;
      std::this_thread::sleep_for(d);
    };
  }
  std::atomic<int> backoffs_{0};
};

// A client of the one in-memory sim: the sim's state lives in its Provider object, so every "fresh
// client" forwards to it.
class Forward final : public Provider {
 public:
  explicit Forward(Provider* p) : p_(p) {}
  std::string Name() const override { return p_->Name(); }
  Result<std::vector<provider::Offer>> Offers() override { return p_->Offers(); }
  std::map<std::string, provider::Capability> Capabilities() const override { return p_->Capabilities(); }
  Result<Machine> Create(const MachineSpec& s) override { return p_->Create(s); }
  Result<Machine> Get(const std::string& id) override { return p_->Get(id); }
  Result<std::vector<Machine>> ListByLabelPrefix(const std::string& prefix) override { return p_->ListByLabelPrefix(prefix); }
  Status Stop(const std::string& id) override { return p_->Stop(id); }
  Status Start(const std::string& id) override { return p_->Start(id); }
  Status Destroy(const std::string& id) override { return p_->Destroy(id); }

 private:
  Provider* p_;
};

class SimHarness final : public Harness {
 public:
  Status Start(const fs::path&) override {
    provider::SimOptions o;
    o.seed = 7;
    o.boot_median_s = 30;  // machines are pending first; the FakeClock boots them
    o.boot_sigma = 0.5;
    sim_ = provider::NewSimProvider(o, clock_);
    return Status::Ok();
  }
  std::unique_ptr<Provider> Make(const ClientOptions&) override { return std::make_unique<Forward>(sim_.get()); }
  std::string NoCredentialsReason() const override { return "the sim runs in process: it has no credentials"; }
  std::string NoFaultsReason() const override {
    return "the sim has no API to fail (no HTTP, no rate limits, no lost answers) and no per-create fault injection";
  }
  int LiveMachines() override {
    auto l = sim_->ListByLabelPrefix("");
    return l ? static_cast<int>(l->size()) : -1;
  }
  std::string UnknownId() const override { return "sim-m999999"; }
  // Fake time: a real second of deadline is a fake minute, advanced one fake second at a time.
  bool AdvanceUntil(const std::function<bool()>& pred, std::chrono::milliseconds deadline) override {
    for (auto spent = 0s; ; spent += 1s) {
      if (pred()) return true;
      if (spent >= deadline * 60) return false;
      clock_.Advance(1s);
    }
  }

 private:
  FakeClock clock_;
  std::unique_ptr<Provider> sim_;
};

class LocalHarness final : public Harness {
 public:
  Status Start(const fs::path& dir) override {
    if (!HaveAgent()) return Status::FailedPrecondition("no dumont-agent (set DUMONT_TEST_AGENT)");
    dir_ = dir.string();
    root_ = dir_ + "/machines";
    return Status::Ok();
  }
  std::unique_ptr<Provider> Make(const ClientOptions&) override {
    return provider::NewLocalProvider({.root = root_, .agent_path = AgentPath(), .price_per_hour = 0});
  }
  std::string NoCredentialsReason() const override { return "local machines are processes on this host: no credentials"; }
  std::string NoFaultsReason() const override {
    return "local machines are real processes and directories on this host: no API to fail, nothing to inject";
  }
  int LiveMachines() override {
    int n = 0;
    std::error_code ec;
    for (auto it = fs::directory_iterator(root_, ec); !ec && it != fs::directory_iterator(); it.increment(ec)) {
      if (fs::exists(it->path() / "machine.json")) ++n;
    }
    return n;
  }
  std::string UnknownId() const override { return "dc-never-1"; }
  std::string AgentDir() const override { return dir_; }

 private:
  std::string dir_, root_;
};

// Shared by the three emulator harnesses.
class EmulatorHarness : public Harness {
 public:
  bool SupportsFaults() const override { return true; }
  std::string AgentDir() const override { return HaveAgent() ? dir_ : ""; }

 protected:
  std::string dir_;
};

class VastHarness final : public EmulatorHarness {
 public:
  Status Start(const fs::path& dir) override {
    dir_ = dir.string();
    emulators::VastEmulatorOptions o;
    o.state_dir = dir_;
    o.agent_path = AgentPath();
    o.api_key = kKey;
    o.boot_seconds = 0.05;
    o.pull_seconds = 0.1;
    o.lost_response_delay_s = 2.5;
    o.spawn_agents = HaveAgent();
    emu_ = std::make_unique<emulators::VastEmulator>(o);
    return emu_->Start();
  }
  std::unique_ptr<Provider> Make(const ClientOptions& c) override { return provider::NewVastProvider(Options(c, kKey)); }
  std::unique_ptr<Provider> MakeWithWrongCredentials(std::vector<std::string>* secrets) override {
    const std::string key = "vast-wrong-key-SECRET-5f3a9c";
    secrets->push_back(key);
    return provider::NewVastProvider(Options({}, key));
  }
  void RateLimitNext(int n, Op op) override { emu_->InjectRateLimit(n, Endpoint(op)); }
  void ServerErrorsNext(int n, Op op) override { emu_->InjectServerErrors(n, Endpoint(op)); }
  void LoseNextCreate(bool late) override {
    emu_->LoseNextCreates(1, late ? emulators::VastEmulator::LostMode::kLateAnswer
                                  : emulators::VastEmulator::LostMode::kBodyless502);
  }
  Status Preempt(const Machine& m) override { return emu_->Preempt(std::stoll(m.id)); }
  void FailNextAtBoot() override { emu_->SetNextCreateFault(emulators::VastEmulator::CreateFault::kFailAtBoot); }
  int LiveMachines() override { return emu_->InstanceCount(); }
  std::string UnknownId() const override { return "99999999"; }

 private:
  static std::string Endpoint(Op op) {
    switch (op) {
      case Op::kList: return "list";
      case Op::kCreate: return "create";
      case Op::kGet: return "show";
      case Op::kDestroy: return "destroy";
    }
    return "";
  }
  provider::VastOptions Options(const ClientOptions& c, const std::string& key) {
    provider::VastOptions o;
    o.base_url = emu_->BaseUrl();
    o.api_key = key;
    o.max_attempts = kMaxAttempts;
    o.base_delay = 5ms;
    o.max_delay = 40ms;
    o.request_timeout = c.request_timeout;
    o.sleep = Sleeper();
    o.jitter_seed = 42;
    o.interruptible = c.spot.value_or(false);
    return o;
  }
  static constexpr const char* kKey = "vast-conformance-key-0123456789";
  std::unique_ptr<emulators::VastEmulator> emu_;
};

class RunPodHarness final : public EmulatorHarness {
 public:
  Status Start(const fs::path& dir) override {
    dir_ = dir.string();
    emulators::RunPodEmulatorOptions o;
    o.state_dir = dir_;
    o.agent_path = AgentPath();
    o.api_key = kKey;
    o.pull_seconds = 0.1;
    o.ports_delay_seconds = 0.05;
    o.lost_response_delay_s = 2.5;
    o.spawn_agents = HaveAgent();
    emu_ = std::make_unique<emulators::RunPodEmulator>(o);
    return emu_->Start();
  }
  std::unique_ptr<Provider> Make(const ClientOptions& c) override { return provider::NewRunPodProvider(Options(c, kKey)); }
  std::unique_ptr<Provider> MakeWithWrongCredentials(std::vector<std::string>* secrets) override {
    const std::string key = "runpod-wrong-key-SECRET-77e1b0";
    secrets->push_back(key);
    return provider::NewRunPodProvider(Options({}, key));
  }
  void RateLimitNext(int n, Op op) override { emu_->InjectRateLimit(n, Endpoint(op)); }
  void ServerErrorsNext(int n, Op op) override { emu_->InjectServerErrors(n, Endpoint(op)); }
  void LoseNextCreate(bool late) override {
    emu_->LoseNextCreates(1, late ? emulators::RunPodEmulator::LostMode::kLateAnswer
                                  : emulators::RunPodEmulator::LostMode::kBodyless502);
  }
  Status Preempt(const Machine& m) override { return emu_->Preempt(m.id); }
  void FailNextAtBoot() override { emu_->SetNextCreateFault(emulators::RunPodEmulator::CreateFault::kFailAtBoot); }
  int LiveMachines() override { return emu_->InstanceCount(); }
  std::string UnknownId() const override { return "zzzznotapod000"; }

 private:
  static std::string Endpoint(Op op) {
    switch (op) {
      case Op::kList: return "list";
      case Op::kCreate: return "create";
      case Op::kGet: return "show";
      case Op::kDestroy: return "destroy";
    }
    return "";
  }
  provider::RunPodOptions Options(const ClientOptions& c, const std::string& key) {
    provider::RunPodOptions o;
    o.base_url = emu_->BaseUrl();
    o.api_key = key;
    o.max_attempts = kMaxAttempts;
    o.base_delay = 5ms;
    o.max_delay = 40ms;
    o.request_timeout = c.request_timeout;
    o.sleep = Sleeper();
    o.jitter_seed = 42;
    o.interruptible = c.spot.value_or(false);
    return o;
  }
  static constexpr const char* kKey = "runpod-conformance-key-0123456789";
  std::unique_ptr<emulators::RunPodEmulator> emu_;
};

// One RSA key pair for the whole suite (generating one costs ~100 ms).
const emulators::GceServiceAccount& GceAccount() {
  static const emulators::GceServiceAccount sa = [] {
    auto a = emulators::NewGceServiceAccount("dumont-conformance@dumont-emulated.iam.gserviceaccount.com",
                                             "dumont-emulated", "https://oauth2.googleapis.com/token");
    if (!a) std::abort();
    return *a;
  }();
  return sa;
}

class GceHarness final : public EmulatorHarness {
 public:
  Status Start(const fs::path& dir) override {
    dir_ = dir.string();
    emulators::GceEmulatorOptions o;
    o.state_dir = dir_;
    o.agent_path = AgentPath();
    o.service_accounts = {{GceAccount().client_email, GceAccount().public_key_pem}};
    o.lost_response_delay_s = 2.5;
    o.spawn_agents = HaveAgent();
    emu_ = std::make_unique<emulators::GceEmulator>(o);
    return emu_->Start();
  }
  std::unique_ptr<Provider> Make(const ClientOptions& c) override {
    return provider::NewGceProvider(Options(c, GceAccount().key_json));
  }
  std::unique_ptr<Provider> MakeWithWrongCredentials(std::vector<std::string>* secrets) override {
    // A key the emulator does not know (same account name): the assertion's signature cannot verify.
    auto stranger = emulators::NewGceServiceAccount(GceAccount().client_email, "dumont-emulated", emu_->TokenUrl());
    if (!stranger) return nullptr;
    std::istringstream in(stranger->private_key_pem);
    for (std::string line; std::getline(in, line);) {
      if (line.find("-----") == std::string::npos && line.size() > 16) secrets->push_back(line);
    }
    secrets->push_back("PRIVATE KEY");
    return provider::NewGceProvider(Options({}, stranger->key_json));
  }
  void RateLimitNext(int n, Op op) override { emu_->InjectRateLimit(n, Endpoint(op)); }
  void ServerErrorsNext(int n, Op op) override { emu_->InjectServerErrors(n, Endpoint(op)); }
  void LoseNextCreate(bool late) override {
    emu_->LoseNextCreates(1, late ? emulators::GceEmulator::LostMode::kLateAnswer
                                  : emulators::GceEmulator::LostMode::kBodyless502);
  }
  Status Preempt(const Machine& m) override { return emu_->Preempt(m.details.value("name", "")); }
  void FailNextAtBoot() override { emu_->SetNextCreateFault(emulators::GceEmulator::CreateFault::kFailAtBoot); }
  int LiveMachines() override { return emu_->InstanceCount(); }
  std::string UnknownId() const override { return "us-central1-a:dc-never-1"; }

 private:
  static std::string Endpoint(Op op) {
    switch (op) {
      case Op::kList: return "list";
      case Op::kCreate: return "insert";
      case Op::kGet: return "get";
      case Op::kDestroy: return "delete";
    }
    return "";
  }
  provider::GceOptions Options(const ClientOptions& c, const std::string& key_json) {
    provider::GceOptions o;
    o.base_url = emu_->BaseUrl();
    o.token_url = emu_->TokenUrl();
    o.service_account_json = key_json;
    o.project = "dumont-emulated";
    o.zones = {"us-central1-a", "us-central1-b"};
    o.max_attempts = kMaxAttempts;
    o.base_delay = 5ms;
    o.max_delay = 40ms;
    o.request_timeout = c.request_timeout;
    o.operation_timeout = 5000ms;
    o.operation_poll_interval = 20ms;
    o.sleep = Sleeper();
    o.jitter_seed = 42;
    o.spot = c.spot.value_or(true);  // CPU standby VMs are Spot by default
    return o;
  }
  std::unique_ptr<emulators::GceEmulator> emu_;
};

std::unique_ptr<Harness> NewHarness(const std::string& kind) {
  if (kind == "sim") return std::make_unique<SimHarness>();
  if (kind == "local") return std::make_unique<LocalHarness>();
  if (kind == "vast") return std::make_unique<VastHarness>();
  if (kind == "runpod") return std::make_unique<RunPodHarness>();
  if (kind == "gce") return std::make_unique<GceHarness>();
  return nullptr;
}

// ---------------------------------------------------------------------------------------------------
// The suite
// ---------------------------------------------------------------------------------------------------

class ProviderConformance : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("dumont-conf-" + GetParam() + "-" + NewId(""));
    fs::create_directories(dir_);
    h_ = NewHarness(GetParam());
    ASSERT_NE(h_, nullptr) << GetParam();
    Status st = h_->Start(dir_);
    if (st.code() == Code::kFailedPrecondition) GTEST_SKIP() << st.message();
    ASSERT_TRUE(st.ok()) << st.ToString();
    p_ = h_->Make();
  }

  void TearDown() override {
    if (p_) {
      // Every test cleans up after itself through the provider under test (not the emulator's destructor).
      auto left = p_->ListByLabelPrefix("dc-");
      EXPECT_TRUE(left) << left.error().ToString();
      if (left) {
        for (const auto& m : *left) EXPECT_TRUE(p_->Destroy(m.id).ok()) << m.id;
      }
      bool empty = h_->AdvanceUntil([&] {
        auto l = p_->ListByLabelPrefix("dc-");
        return l && l->empty();
      }, kDeadline);
      EXPECT_TRUE(empty) << "machines left after destroying them";
      // ... and no agent process is left behind.
      if (!h_->AgentDir().empty()) {
        bool none = h_->AdvanceUntil([&] { return AgentPidsUnder(h_->AgentDir()).empty(); }, kDeadline);
        EXPECT_TRUE(none) << "agent processes left: " << Join(AgentPidsUnder(h_->AgentDir()));
        for (int pid : AgentPidsUnder(h_->AgentDir())) ::kill(pid, SIGKILL);  // do not leak them past the test
      }
    }
    p_.reset();
    h_.reset();
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  static MachineSpec Spec(const std::string& label, const std::string& offer = "") {
    MachineSpec s;
    s.label = label;
    s.offer_id = offer;
    s.image = "dumont/agent:test";
    s.env = {{"DUMONT_AGENT_SERVER", "http://127.0.0.1:9"}, {"DUMONT_AGENT_ENROLL_TOKEN", "det_conformance"}};
    return s;
  }

  // Polls Get until the machine is in `want`. A Get error ends the wait (and fails the test).
  Machine WaitState(Provider& p, const std::string& id, MachineState want, std::chrono::milliseconds deadline = kDeadline) {
    Machine last;
    Status err;
    bool reached = h_->AdvanceUntil([&] {
      auto m = p.Get(id);
      if (!m) {
        err = m.error();
        return true;
      }
      last = *m;
      return m->state == want;
    }, deadline);
    EXPECT_TRUE(err.ok()) << "Get(" << id << "): " << err.ToString();
    EXPECT_TRUE(reached && last.state == want)
        << p.Name() << " machine " << id << " never became " << provider::MachineStateName(want) << "; last "
        << provider::MachineStateName(last.state) << " " << last.details.dump();
    return last;
  }

  // Destroy's contract: OK, then Get is NotFound (at once, or after a phase of kTerminating).
  void ExpectGone(Provider& p, const std::string& id) {
    Status final_status;
    bool gone = h_->AdvanceUntil([&] {
      auto g = p.Get(id);
      if (!g) {
        final_status = g.error();
        return true;
      }
      EXPECT_EQ(g->state, MachineState::kTerminating)
          << p.Name() << ": a destroyed machine is terminating or gone, not " << provider::MachineStateName(g->state);
      return false;
    }, kDeadline);
    EXPECT_TRUE(gone) << p.Name() << " machine " << id << " still exists after Destroy";
    EXPECT_EQ(final_status.code(), Code::kNotFound) << final_status.ToString();
  }

  fs::path dir_;
  std::unique_ptr<Harness> h_;
  std::unique_ptr<Provider> p_;
};

#define SKIP_WITHOUT_FAULTS() \
  if (!h_->SupportsFaults()) GTEST_SKIP() << GetParam() << ": " << h_->NoFaultsReason()

// ---- catalog

TEST_P(ProviderConformance, OffersAreWellFormedAndStable) {
  EXPECT_EQ(p_->Name(), GetParam());
  auto offers = p_->Offers();
  ASSERT_TRUE(offers) << offers.error().ToString();
  ASSERT_FALSE(offers->empty());
  std::set<std::string> ids;
  for (const auto& o : *offers) {
    SCOPED_TRACE("offer " + o.id);
    EXPECT_FALSE(o.id.empty());
    EXPECT_TRUE(ids.insert(o.id).second) << "duplicate offer id " << o.id;
    EXPECT_EQ(o.provider, p_->Name());
    EXPECT_GE(o.price_per_hour, 0);
    EXPECT_GE(o.spot_price_per_hour, 0);
    EXPECT_GE(o.reliability, 0);
    EXPECT_LE(o.reliability, 1);
    EXPECT_GE(o.num_gpus, 0);
    EXPECT_GE(o.gpu_ram_gb, 0);
    EXPECT_GE(o.cpu_cores, 0);
    EXPECT_GE(o.ram_gb, 0);
    EXPECT_GE(o.disk_gb, 0);
    // ToJson carries every field, unchanged.
    json j = o.ToJson();
    EXPECT_EQ(j.size(), 14u) << j.dump();
    EXPECT_EQ(j["id"], o.id);
    EXPECT_EQ(j["provider"], o.provider);
    EXPECT_EQ(j["gpu_name"], o.gpu_name);
    EXPECT_EQ(j["num_gpus"], o.num_gpus);
    EXPECT_EQ(j["gpu_ram_gb"], o.gpu_ram_gb);
    EXPECT_EQ(j["cpu_cores"], o.cpu_cores);
    EXPECT_EQ(j["ram_gb"], o.ram_gb);
    EXPECT_EQ(j["disk_gb"], o.disk_gb);
    EXPECT_EQ(j["price_per_hour"], o.price_per_hour);
    EXPECT_EQ(j["spot_price_per_hour"], o.spot_price_per_hour);
    EXPECT_EQ(j["reliability"], o.reliability);
    EXPECT_EQ(j["location"], o.location);
    EXPECT_EQ(j["inet_down_mbps"], o.inet_down_mbps);
    EXPECT_EQ(j["inet_up_mbps"], o.inet_up_mbps);
    EXPECT_EQ(json::parse(j.dump()), j);  // survives serialisation
  }
  // A fresh client sees the same catalog.
  auto again = h_->Make()->Offers();
  ASSERT_TRUE(again) << again.error().ToString();
  std::set<std::string> ids2;
  for (const auto& o : *again) ids2.insert(o.id);
  EXPECT_EQ(ids2, ids);
}

TEST_P(ProviderConformance, CapabilitiesDeclareStopSshSpotAndVirtualGpu) {
  auto caps = p_->Capabilities();
  for (const char* key : {"stop", "ssh", "spot", "virtual_gpu"}) {
    auto it = caps.find(key);
    ASSERT_NE(it, caps.end()) << p_->Name() << " does not declare capability '" << key << "'";
    if (!it->second.supported) {
      EXPECT_FALSE(it->second.reason.empty()) << key << ": unsupported without a reason";
    }
  }
}

// ---- provisioner

// The fleet's real label format: dc-<instance id>-<attempt>, the instance id being ins_ + 20 base32.
std::string FleetLabel(const std::string& instance, int64_t attempt) { return provider::MachineLabel(instance, attempt); }

TEST_P(ProviderConformance, CreateIsIdempotentPerLabel) {
  const std::string instance = NewId("ins_");
  const std::string label = FleetLabel(instance, 3);
  auto a = p_->Create(Spec(label));
  ASSERT_TRUE(a) << a.error().ToString();
  EXPECT_FALSE(a->id.empty());
  EXPECT_EQ(a->label, label);
  EXPECT_FALSE(a->offer_id.empty());
  EXPECT_GE(a->price_per_hour, 0);
  EXPECT_TRUE(a->state == MachineState::kPending || a->state == MachineState::kRunning)
      << provider::MachineStateName(a->state);
  auto b = p_->Create(Spec(label));
  ASSERT_TRUE(b) << b.error().ToString();
  EXPECT_EQ(b->id, a->id);
  EXPECT_EQ(b->label, label);
  // A fresh client (dumontd restarted, its memory of the create lost) finds the same machine too.
  auto c = h_->Make()->Create(Spec(label));
  ASSERT_TRUE(c) << c.error().ToString();
  EXPECT_EQ(c->id, a->id);
  // The fleet finds an instance's machines by the prefix dc-<instance>- and parses the label back.
  auto listed = p_->ListByLabelPrefix("dc-" + instance + "-");
  ASSERT_TRUE(listed) << listed.error().ToString();
  ASSERT_EQ(listed->size(), 1u);
  EXPECT_EQ((*listed)[0].id, a->id);
  EXPECT_EQ((*listed)[0].label, label);  // exactly: the orphan sweep parses instance and attempt from it
  auto got = p_->Get(a->id);
  ASSERT_TRUE(got) << got.error().ToString();
  EXPECT_EQ(got->label, label);
  EXPECT_EQ(h_->LiveMachines(), 1);
  // Another attempt of the same instance is another machine.
  auto next = p_->Create(Spec(FleetLabel(instance, 4)));
  ASSERT_TRUE(next) << next.error().ToString();
  EXPECT_NE(next->id, a->id);
  listed = p_->ListByLabelPrefix("dc-" + instance + "-");
  ASSERT_TRUE(listed) << listed.error().ToString();
  EXPECT_EQ(listed->size(), 2u);
  EXPECT_EQ(h_->LiveMachines(), 2);
}

TEST_P(ProviderConformance, ReachesRunningAndGetAndListReflectIt) {
  auto a = p_->Create(Spec("dc-runa-1"));
  ASSERT_TRUE(a) << a.error().ToString();
  auto b = p_->Create(Spec("dc-runb-1"));
  ASSERT_TRUE(b) << b.error().ToString();
  EXPECT_NE(a->id, b->id);
  Machine ra = WaitState(*p_, a->id, MachineState::kRunning);
  EXPECT_EQ(ra.id, a->id);
  EXPECT_EQ(ra.label, "dc-runa-1");
  WaitState(*p_, b->id, MachineState::kRunning);

  auto fresh = h_->Make();
  auto g = fresh->Get(a->id);
  ASSERT_TRUE(g) << g.error().ToString();
  EXPECT_EQ(g->state, MachineState::kRunning);
  EXPECT_EQ(g->label, "dc-runa-1");
  // Get names the offer where the vendor's machine object does (sim, local, gce), else leaves it empty
  // (vast, runpod: an instance does not say which offer it was rented from); never a different one.
  if (!g->offer_id.empty()) {
    EXPECT_EQ(g->offer_id, a->offer_id);
  }
  if (p_->Capabilities()["ssh"].supported) {
    // A running machine of a provider with ssh gets an endpoint (RunPod's ports may lag RUNNING a little).
    Machine last;
    EXPECT_TRUE(h_->AdvanceUntil([&] {
      auto m = fresh->Get(a->id);
      if (m) last = *m;
      return m && !m->ssh_host.empty() && m->ssh_port > 0;
    }, kDeadline)) << last.details.dump();
  }

  auto only_a = p_->ListByLabelPrefix("dc-runa");
  ASSERT_TRUE(only_a) << only_a.error().ToString();
  ASSERT_EQ(only_a->size(), 1u);
  EXPECT_EQ((*only_a)[0].id, a->id);
  EXPECT_EQ((*only_a)[0].label, "dc-runa-1");
  EXPECT_EQ((*only_a)[0].state, MachineState::kRunning);
  auto both = fresh->ListByLabelPrefix("dc-run");
  ASSERT_TRUE(both) << both.error().ToString();
  EXPECT_EQ(both->size(), 2u);
  for (const char* other : {"dc-runc", "dc-runa-1x", "dc-x", "ec-run"}) {
    auto none = p_->ListByLabelPrefix(other);
    ASSERT_TRUE(none) << none.error().ToString();
    EXPECT_TRUE(none->empty()) << "prefix " << other << " matched " << none->size();
  }
  // Local and the emulators: each running machine is a real agent process.
  if (!h_->AgentDir().empty()) {
    EXPECT_TRUE(h_->AdvanceUntil([&] { return AgentPidsUnder(h_->AgentDir()).size() == 2; }, kDeadline))
        << "agents: " << Join(AgentPidsUnder(h_->AgentDir()));
  }
}

TEST_P(ProviderConformance, GetOfAnUnknownMachineIsNotFound) {
  for (const std::string& id : {h_->UnknownId(), std::string(""), std::string("../../etc/passwd"), std::string("x y")}) {
    auto g = p_->Get(id);
    ASSERT_FALSE(g) << "'" << id << "' exists?";
    EXPECT_EQ(g.error().code(), Code::kNotFound) << "'" << id << "': " << g.error().ToString();
  }
  auto l = p_->ListByLabelPrefix("dc-nothing-");
  ASSERT_TRUE(l) << l.error().ToString();
  EXPECT_TRUE(l->empty());
}

TEST_P(ProviderConformance, StopThenStartWhereSupported) {
  auto caps = p_->Capabilities();
  if (!caps["stop"].supported) {
    EXPECT_FALSE(caps["stop"].reason.empty());
    auto m = p_->Create(Spec("dc-stop-1"));
    ASSERT_TRUE(m) << m.error().ToString();
    EXPECT_EQ(p_->Stop(m->id).code(), Code::kUnimplemented);
    EXPECT_EQ(p_->Start(m->id).code(), Code::kUnimplemented);
    GTEST_SKIP() << GetParam() << " cannot stop machines: " << caps["stop"].reason;
  }
  auto m = p_->Create(Spec("dc-stop-1"));
  ASSERT_TRUE(m) << m.error().ToString();
  WaitState(*p_, m->id, MachineState::kRunning);
  if (!h_->AgentDir().empty()) {
    EXPECT_TRUE(h_->AdvanceUntil([&] { return AgentPidsUnder(h_->AgentDir()).size() == 1; }, kDeadline));
  }

  Status st = p_->Stop(m->id);
  ASSERT_TRUE(st.ok()) << st.ToString();
  Machine s = WaitState(*p_, m->id, MachineState::kStopped);
  // Idempotent: the fleet asks again after a crash between "pausing" and "paused".
  st = p_->Stop(m->id);
  EXPECT_TRUE(st.ok()) << "Stop of a stopped machine: " << st.ToString();
  s = WaitState(*p_, m->id, MachineState::kStopped);
  // Stopped by us: never reported as an interruption.
  EXPECT_FALSE(s.details.value("interrupted", false)) << s.details.dump();
  auto listed = p_->ListByLabelPrefix("dc-stop-");
  ASSERT_TRUE(listed) << listed.error().ToString();
  ASSERT_EQ(listed->size(), 1u);
  EXPECT_EQ((*listed)[0].state, MachineState::kStopped);
  if (!h_->AgentDir().empty()) {
    EXPECT_TRUE(h_->AdvanceUntil([&] { return AgentPidsUnder(h_->AgentDir()).empty(); }, kDeadline))
        << "a stopped machine's agent still runs: " << Join(AgentPidsUnder(h_->AgentDir()));
  }

  st = p_->Start(m->id);
  ASSERT_TRUE(st.ok()) << st.ToString();
  WaitState(*p_, m->id, MachineState::kRunning);
  st = p_->Start(m->id);
  EXPECT_TRUE(st.ok()) << "Start of a running machine: " << st.ToString();
  WaitState(*p_, m->id, MachineState::kRunning);
  if (!h_->AgentDir().empty()) {
    EXPECT_TRUE(h_->AdvanceUntil([&] { return AgentPidsUnder(h_->AgentDir()).size() == 1; }, kDeadline))
        << "agents: " << Join(AgentPidsUnder(h_->AgentDir()));
  }
  EXPECT_EQ(h_->LiveMachines(), 1);
  // A stopped machine can be destroyed.
  st = p_->Stop(m->id);
  ASSERT_TRUE(st.ok()) << st.ToString();
  WaitState(*p_, m->id, MachineState::kStopped);
  st = p_->Destroy(m->id);
  ASSERT_TRUE(st.ok()) << st.ToString();
  ExpectGone(*p_, m->id);

  EXPECT_EQ(p_->Stop(h_->UnknownId()).code(), Code::kNotFound);
  EXPECT_EQ(p_->Start(h_->UnknownId()).code(), Code::kNotFound);
}

TEST_P(ProviderConformance, DestroyIsIdempotentAndGetIsNotFound) {
  auto m = p_->Create(Spec("dc-gone-1"));
  ASSERT_TRUE(m) << m.error().ToString();
  WaitState(*p_, m->id, MachineState::kRunning);
  if (!h_->AgentDir().empty()) {
    EXPECT_TRUE(h_->AdvanceUntil([&] { return AgentPidsUnder(h_->AgentDir()).size() == 1; }, kDeadline));
  }
  Status st = p_->Destroy(m->id);
  ASSERT_TRUE(st.ok()) << st.ToString();
  ExpectGone(*p_, m->id);
  ExpectGone(*h_->Make(), m->id);
  EXPECT_TRUE(h_->AdvanceUntil([&] {
    auto l = p_->ListByLabelPrefix("dc-gone-");
    return l && l->empty();
  }, kDeadline));
  EXPECT_EQ(h_->LiveMachines(), 0);

  // Idempotent: gone is success; so is an id that never existed, or is not even one of this provider's.
  st = p_->Destroy(m->id);
  EXPECT_TRUE(st.ok()) << st.ToString();
  st = h_->Make()->Destroy(m->id);
  EXPECT_TRUE(st.ok()) << st.ToString();
  st = p_->Destroy(h_->UnknownId());
  EXPECT_TRUE(st.ok()) << st.ToString();
  st = p_->Destroy("not a machine/../id");
  EXPECT_TRUE(st.ok()) << st.ToString();

  if (!h_->AgentDir().empty()) {
    EXPECT_TRUE(h_->AdvanceUntil([&] { return AgentPidsUnder(h_->AgentDir()).empty(); }, kDeadline))
        << "a destroyed machine's agent still runs: " << Join(AgentPidsUnder(h_->AgentDir()));
  }
}

// Multi-start destroys the losers of a batch as soon as a winner is found: most are still booting.
TEST_P(ProviderConformance, DestroyWhileBootingLeavesNothing) {
  std::vector<std::string> ids;
  for (int i = 0; i < 3; ++i) {
    auto m = p_->Create(Spec(FleetLabel("ins_boot" + std::to_string(i), 1)));
    ASSERT_TRUE(m) << m.error().ToString();
    ids.push_back(m->id);
  }
  // One at once, one a little later (the emulators may be starting its agent right then), one running.
  Status st = p_->Destroy(ids[0]);
  ASSERT_TRUE(st.ok()) << st.ToString();
  h_->AdvanceUntil([] { return false; }, 120ms);
  st = p_->Destroy(ids[1]);
  ASSERT_TRUE(st.ok()) << st.ToString();
  WaitState(*p_, ids[2], MachineState::kRunning);
  st = p_->Destroy(ids[2]);
  ASSERT_TRUE(st.ok()) << st.ToString();
  for (const auto& id : ids) ExpectGone(*p_, id);
  EXPECT_EQ(h_->LiveMachines(), 0);
  if (!h_->AgentDir().empty()) {
    // Long enough for a boot that was in flight to have finished: nothing may come up afterwards.
    h_->AdvanceUntil([] { return false; }, 500ms);
    EXPECT_TRUE(AgentPidsUnder(h_->AgentDir()).empty()) << "agents: " << Join(AgentPidsUnder(h_->AgentDir()));
  }
}

TEST_P(ProviderConformance, ParallelCreatesGiveDistinctMachines) {
  constexpr int kN = 5;  // a multi-start batch
  auto offers = p_->Offers();
  ASSERT_TRUE(offers) << offers.error().ToString();
  ASSERT_FALSE(offers->empty());
  std::vector<Result<Machine>> made(kN, Err(Status::Internal("not run")));
  std::vector<std::string> asked(kN);
  {
    std::vector<std::thread> threads;
    for (int i = 0; i < kN; ++i) {
      // Distinct offers where the catalog has enough (multi-start never starts one offer twice).
      asked[i] = (*offers)[i % offers->size()].id;
      threads.emplace_back([&, i] { made[i] = p_->Create(Spec(FleetLabel("ins_par" + std::to_string(i), 1), asked[i])); });
    }
    for (auto& t : threads) t.join();
  }
  std::set<std::string> ids;
  for (int i = 0; i < kN; ++i) {
    ASSERT_TRUE(made[i]) << i << ": " << made[i].error().ToString();
    EXPECT_EQ(made[i]->label, FleetLabel("ins_par" + std::to_string(i), 1));
    EXPECT_EQ(made[i]->offer_id, asked[i]);
    ids.insert(made[i]->id);
  }
  EXPECT_EQ(ids.size(), static_cast<size_t>(kN));
  auto listed = p_->ListByLabelPrefix("dc-ins_par");
  ASSERT_TRUE(listed) << listed.error().ToString();
  EXPECT_EQ(listed->size(), static_cast<size_t>(kN));
  EXPECT_EQ(h_->LiveMachines(), kN);
  for (const auto& id : ids) WaitState(*p_, id, MachineState::kRunning);
  if (!h_->AgentDir().empty()) {
    EXPECT_TRUE(h_->AdvanceUntil([&] { return AgentPidsUnder(h_->AgentDir()).size() == kN; }, kDeadline))
        << "agents: " << Join(AgentPidsUnder(h_->AgentDir()));
  }
  // And the losers of a batch are destroyed in parallel.
  std::vector<Status> destroyed(kN);
  {
    std::vector<std::thread> threads;
    for (int i = 0; i < kN; ++i) threads.emplace_back([&, i] { destroyed[i] = p_->Destroy(made[i]->id); });
    for (auto& t : threads) t.join();
  }
  for (int i = 0; i < kN; ++i) EXPECT_TRUE(destroyed[i].ok()) << destroyed[i].ToString();
  for (const auto& id : ids) ExpectGone(*p_, id);
}

// ---- faults (the emulators)

TEST_P(ProviderConformance, LostCreateResponseIsFoundByLabelNotDuplicated) {
  SKIP_WITHOUT_FAULTS();
  h_->LoseNextCreate(/*late=*/false);  // created, then a bodiless 502
  auto m = p_->Create(Spec("dc-lost-1"));
  ASSERT_TRUE(m) << m.error().ToString();
  EXPECT_EQ(m->label, "dc-lost-1");
  EXPECT_EQ(h_->LiveMachines(), 1);
  auto again = p_->Create(Spec("dc-lost-1"));
  ASSERT_TRUE(again) << again.error().ToString();
  EXPECT_EQ(again->id, m->id);
  auto listed = p_->ListByLabelPrefix("dc-lost-");
  ASSERT_TRUE(listed) << listed.error().ToString();
  ASSERT_EQ(listed->size(), 1u);
  EXPECT_EQ((*listed)[0].id, m->id);
  WaitState(*p_, m->id, MachineState::kRunning);
  EXPECT_EQ(h_->LiveMachines(), 1);
}

TEST_P(ProviderConformance, CreateAnswerAfterTheClientTimeoutIsFoundByLabel) {
  SKIP_WITHOUT_FAULTS();
  auto p = h_->Make({.request_timeout = 700ms});
  h_->LoseNextCreate(/*late=*/true);  // created; the answer comes 2.5 s later
  auto m = p->Create(Spec("dc-late-1"));
  ASSERT_TRUE(m) << m.error().ToString();
  EXPECT_EQ(m->label, "dc-late-1");
  EXPECT_EQ(h_->LiveMachines(), 1);
  auto listed = p->ListByLabelPrefix("dc-late-");
  ASSERT_TRUE(listed) << listed.error().ToString();
  ASSERT_EQ(listed->size(), 1u);
  EXPECT_EQ((*listed)[0].id, m->id);
}

TEST_P(ProviderConformance, RateLimitStormShorterThanTheRetriesSucceeds) {
  SKIP_WITHOUT_FAULTS();
  const int n = kMaxAttempts - 1;
  int before = h_->Backoffs();
  h_->RateLimitNext(n, Op::kList);
  auto l = p_->ListByLabelPrefix("dc-");
  ASSERT_TRUE(l) << l.error().ToString();
  EXPECT_EQ(h_->Backoffs() - before, n);

  before = h_->Backoffs();
  h_->RateLimitNext(n, Op::kCreate);
  auto m = p_->Create(Spec("dc-storm-1"));
  ASSERT_TRUE(m) << m.error().ToString();
  EXPECT_EQ(h_->Backoffs() - before, n);
  EXPECT_EQ(h_->LiveMachines(), 1);  // 429s create nothing: one machine

  before = h_->Backoffs();
  h_->RateLimitNext(n, Op::kGet);
  auto g = p_->Get(m->id);
  ASSERT_TRUE(g) << g.error().ToString();
  EXPECT_EQ(h_->Backoffs() - before, n);

  before = h_->Backoffs();
  h_->RateLimitNext(n, Op::kDestroy);
  Status st = p_->Destroy(m->id);
  ASSERT_TRUE(st.ok()) << st.ToString();
  EXPECT_EQ(h_->Backoffs() - before, n);
  ExpectGone(*p_, m->id);
}

TEST_P(ProviderConformance, RateLimitLongerThanTheRetriesIsResourceExhausted) {
  SKIP_WITHOUT_FAULTS();
  h_->RateLimitNext(kMaxAttempts, Op::kList);  // every attempt refused (and none left over)
  auto l = p_->ListByLabelPrefix("dc-");
  ASSERT_FALSE(l);
  EXPECT_EQ(l.error().code(), Code::kResourceExhausted) << l.error().ToString();

  h_->RateLimitNext(kMaxAttempts, Op::kCreate);
  auto m = p_->Create(Spec("dc-exhausted-1"));
  ASSERT_FALSE(m) << "created " << m->id << " through a 429 storm";
  EXPECT_EQ(m.error().code(), Code::kResourceExhausted) << m.error().ToString();
  EXPECT_EQ(h_->LiveMachines(), 0);
  auto after = p_->ListByLabelPrefix("dc-exhausted-");
  ASSERT_TRUE(after) << after.error().ToString();
  EXPECT_TRUE(after->empty());
}

TEST_P(ProviderConformance, ServerErrorsAreRetried) {
  SKIP_WITHOUT_FAULTS();
  h_->ServerErrorsNext(2, Op::kCreate);  // refused before anything was created
  auto m = p_->Create(Spec("dc-5xx-1"));
  ASSERT_TRUE(m) << m.error().ToString();
  EXPECT_EQ(h_->LiveMachines(), 1);
  h_->ServerErrorsNext(2, Op::kGet);
  auto g = p_->Get(m->id);
  ASSERT_TRUE(g) << g.error().ToString();
  EXPECT_EQ(g->id, m->id);
  h_->ServerErrorsNext(2, Op::kList);
  auto l = p_->ListByLabelPrefix("dc-5xx-");
  ASSERT_TRUE(l) << l.error().ToString();
  EXPECT_EQ(l->size(), 1u);
  h_->ServerErrorsNext(2, Op::kDestroy);
  Status st = p_->Destroy(m->id);
  ASSERT_TRUE(st.ok()) << st.ToString();
  ExpectGone(*p_, m->id);
  EXPECT_GE(h_->Backoffs(), 8);
}

// Preemption, the one mapping on every provider that has spot machines: the machine is kept and shows
// kStopped with details.interrupted = true (never NotFound, never kFailed), so the fleet can tell it
// from a machine that failed, and Start or Destroy it.
TEST_P(ProviderConformance, PreemptionShowsStoppedAndInterrupted) {
  auto sp = h_->Make({.spot = true});
  auto caps = sp->Capabilities();
  if (!caps["spot"].supported) {
    EXPECT_FALSE(caps["spot"].reason.empty());
    GTEST_SKIP() << GetParam() << " has no spot machines: " << caps["spot"].reason;
  }
  SKIP_WITHOUT_FAULTS();
  auto m = sp->Create(Spec("dc-spot-1"));
  ASSERT_TRUE(m) << m.error().ToString();
  WaitState(*sp, m->id, MachineState::kRunning);
  auto running = sp->Get(m->id);
  ASSERT_TRUE(running) << running.error().ToString();
  Status st = h_->Preempt(*running);
  ASSERT_TRUE(st.ok()) << st.ToString();
  Machine s = WaitState(*sp, m->id, MachineState::kStopped);
  EXPECT_EQ(s.details.value("interrupted", false), true) << s.details.dump();
  auto listed = sp->ListByLabelPrefix("dc-spot-");
  ASSERT_TRUE(listed) << listed.error().ToString();
  ASSERT_EQ(listed->size(), 1u);
  EXPECT_EQ((*listed)[0].state, MachineState::kStopped);
  EXPECT_EQ((*listed)[0].details.value("interrupted", false), true) << (*listed)[0].details.dump();
  if (!h_->AgentDir().empty()) {
    EXPECT_TRUE(h_->AdvanceUntil([&] { return AgentPidsUnder(h_->AgentDir()).empty(); }, kDeadline))
        << "a preempted machine's agent still runs: " << Join(AgentPidsUnder(h_->AgentDir()));
  }
  st = sp->Destroy(m->id);
  ASSERT_TRUE(st.ok()) << st.ToString();
  ExpectGone(*sp, m->id);
}

TEST_P(ProviderConformance, FailureAtBootIsFailed) {
  SKIP_WITHOUT_FAULTS();
  h_->FailNextAtBoot();
  auto m = p_->Create(Spec("dc-boot-1"));
  ASSERT_TRUE(m) << m.error().ToString();
  bool failed = h_->AdvanceUntil([&] {
    auto g = p_->Get(m->id);
    if (!g) return true;
    EXPECT_NE(g->state, MachineState::kRunning) << g->details.dump();
    return g->state == MachineState::kFailed;
  }, kDeadline);
  ASSERT_TRUE(failed);
  auto g = p_->Get(m->id);
  ASSERT_TRUE(g) << g.error().ToString();
  EXPECT_EQ(g->state, MachineState::kFailed);
  auto listed = p_->ListByLabelPrefix("dc-boot-");
  ASSERT_TRUE(listed) << listed.error().ToString();
  ASSERT_EQ(listed->size(), 1u);
  EXPECT_EQ((*listed)[0].state, MachineState::kFailed);
  Status st = p_->Destroy(m->id);
  ASSERT_TRUE(st.ok()) << st.ToString();
  ExpectGone(*p_, m->id);
}

TEST_P(ProviderConformance, WrongCredentialsAreUnauthenticatedAndNeverLeak) {
  std::vector<std::string> secrets;
  auto bad = h_->MakeWithWrongCredentials(&secrets);
  if (!bad) GTEST_SKIP() << GetParam() << ": " << h_->NoCredentialsReason();
  ASSERT_FALSE(secrets.empty());
  auto offers = p_->Offers();
  ASSERT_TRUE(offers) << offers.error().ToString();
  ASSERT_FALSE(offers->empty());
  const int backoffs = h_->Backoffs();
  auto refused = [&](const Status& st, const std::string& what) {
    EXPECT_EQ(st.code(), Code::kUnauthenticated) << what << ": " << st.ToString();
    for (const auto& s : secrets) EXPECT_EQ(st.ToString().find(s), std::string::npos) << what << " shows a secret: " << st.ToString();
  };
  auto o = bad->Offers();
  if (!o) refused(o.error(), "Offers");  // GCE's catalog is configuration: no request, no credentials needed
  auto l = bad->ListByLabelPrefix("dc-");
  ASSERT_FALSE(l);
  refused(l.error(), "ListByLabelPrefix");
  auto c = bad->Create(Spec("dc-auth-1", offers->front().id));
  ASSERT_FALSE(c);
  refused(c.error(), "Create");
  auto g = bad->Get(h_->UnknownId());
  ASSERT_FALSE(g);
  refused(g.error(), "Get");
  refused(bad->Stop(h_->UnknownId()), "Stop");
  refused(bad->Start(h_->UnknownId()), "Start");
  refused(bad->Destroy(h_->UnknownId()), "Destroy");  // never "gone is success" without asking
  EXPECT_EQ(h_->LiveMachines(), 0);
  EXPECT_EQ(h_->Backoffs(), backoffs) << "a refused credential is not retried";
}

// A local machine appears under its label only complete (with machine.json), and what a dumontd
// killed mid-create or mid-destroy left behind (a bare labelled directory, or a private scratch
// directory of a dead process) is cleaned up by the next listing instead of lingering unseen: the
// fleet's orphan sweep lists machines, and a bare directory was invisible to it.
TEST(LocalProvider, DebrisOfAKilledCreateOrDestroyIsRemovedAndNeverListed) {
  if (!HaveAgent()) GTEST_SKIP() << "no dumont-agent (set DUMONT_TEST_AGENT)";
  const fs::path root = fs::temp_directory_path() / NewId("dumont-local-");
  struct Cleanup {
    fs::path p;
    ~Cleanup() {
      std::error_code ec;
      fs::remove_all(p, ec);
    }
  } cleanup{root};
  pid_t dead = ::fork();
  if (dead == 0) _exit(0);
  ASSERT_GT(dead, 0);
  ::waitpid(dead, nullptr, 0);
  const std::string d = std::to_string(dead), me = std::to_string(::getpid());
  fs::create_directories(root / "dc-bare-1" / "workspace");                       // create killed before machine.json
  fs::create_directories(root / (".creating-" + d + "-dc-half-1") / "agent");    // create killed before the rename
  fs::create_directories(root / (".destroying-" + d + "-dc-gone-1") / "agent");  // destroy killed mid-removal
  fs::create_directories(root / (".creating-" + me + "-dc-busy-1"));             // a live process's: kept
  auto p = provider::NewLocalProvider({.root = root.string(), .agent_path = AgentPath(), .price_per_hour = 0});
  auto listed = p->ListByLabelPrefix("dc-");
  ASSERT_TRUE(listed) << listed.error().ToString();
  EXPECT_TRUE(listed->empty());
  EXPECT_FALSE(fs::exists(root / "dc-bare-1"));
  EXPECT_FALSE(fs::exists(root / (".creating-" + d + "-dc-half-1")));
  EXPECT_FALSE(fs::exists(root / (".destroying-" + d + "-dc-gone-1")));
  EXPECT_TRUE(fs::exists(root / (".creating-" + me + "-dc-busy-1")));

  // Created over a bare directory: a complete machine, listed; destroyed: nothing left at all.
  fs::create_directories(root / "dc-bare-2" / "workspace");
  auto m = p->Create({.label = "dc-bare-2"});
  ASSERT_TRUE(m) << m.error().ToString();
  EXPECT_TRUE(fs::exists(root / "dc-bare-2" / "machine.json"));
  listed = p->ListByLabelPrefix("dc-bare-2");
  ASSERT_TRUE(listed) << listed.error().ToString();
  ASSERT_EQ(listed->size(), 1u);
  ASSERT_TRUE(p->Destroy(m->id).ok());
  size_t left = 0;
  for (const auto& e : fs::directory_iterator(root)) left += e.path().filename().string().find("dc-bare-2") != std::string::npos;
  EXPECT_EQ(left, 0u);
}

INSTANTIATE_TEST_SUITE_P(Providers, ProviderConformance, ::testing::Values("sim", "local", "vast", "runpod", "gce"),
                         [](const ::testing::TestParamInfo<std::string>& info) { return info.param; });

}  // namespace
}  // namespace dumont
