// Tests of the GPU probes. The NVML path runs against tests/agent/nvml_stub.c, whose path comes in
// $DUMONT_NVML_STUB_PATH (set by CMake); nvidia-smi is replaced by shell scripts written here.
#include "agent/gpu_probe.h"

#include <dlfcn.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace dumont::agent {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

constexpr const char* kStubVars[] = {
    "DUMONT_NVML_STUB_COUNT",        "DUMONT_NVML_STUB_UTIL",      "DUMONT_NVML_STUB_MEM_USED_MB",
    "DUMONT_NVML_STUB_MEM_TOTAL_MB", "DUMONT_NVML_STUB_FAIL_INIT", "DUMONT_NVML_STUB_FAIL_UTIL",
    "DUMONT_NVML_STUB_PROCS",
};

class GpuProbeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const char* v : kStubVars) unsetenv(v);
    char tmpl[] = "/tmp/gpu_probe_test.XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    for (const char* v : kStubVars) unsetenv(v);
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  static std::string StubPath() {
    const char* p = getenv("DUMONT_NVML_STUB_PATH");
    return p != nullptr ? p : "";
  }

  std::string Path(const std::string& name) const { return dir_ + "/" + name; }

  std::string WriteFile(const std::string& name, const std::string& content) const {
    std::string path = Path(name);
    std::ofstream(path, std::ios::binary | std::ios::trunc) << content;
    return path;
  }

  std::string WriteScript(const std::string& name, const std::string& body) const {
    std::string path = WriteFile(name, "#!/bin/sh\n" + body);
    chmod(path.c_str(), 0755);
    return path;
  }

  // A stub extra (not NVML): the stub is already loaded by the probe, so this is the same copy.
  static int StubCounter(const char* name) {
    void* h = dlopen(StubPath().c_str(), RTLD_NOW | RTLD_LOCAL);
    if (h == nullptr) return -1;
    auto fn = reinterpret_cast<int (*)()>(dlsym(h, name));
    int v = fn != nullptr ? fn() : -1;
    dlclose(h);
    return v;
  }

  std::string dir_;
};

#define REQUIRE_STUB()                                                                        \
  do {                                                                                        \
    ASSERT_FALSE(StubPath().empty())                                                          \
        << "set DUMONT_NVML_STUB_PATH to the built libnvidia-ml-stub.so (CMake's test does)"; \
  } while (0)

// ------------------------------------------------------------------------------------------
// NVML through the stub.

TEST_F(GpuProbeTest, NvmlReportsGpusMemoryAndProcesses) {
  REQUIRE_STUB();
  setenv("DUMONT_NVML_STUB_COUNT", "3", 1);
  setenv("DUMONT_NVML_STUB_UTIL", "10,55,100", 1);
  setenv("DUMONT_NVML_STUB_MEM_USED_MB", "1000,2000", 1);  // GPU 2 repeats 2000
  setenv("DUMONT_NVML_STUB_MEM_TOTAL_MB", "24576", 1);
  setenv("DUMONT_NVML_STUB_PROCS", "1234:500,99:20", 1);
  auto probe = OpenNvmlProbe(StubPath());
  ASSERT_TRUE(probe) << probe.error().ToString();
  EXPECT_EQ((*probe)->Name(), "nvml");
  auto r = (*probe)->Read();
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(r->source, "nvml");
  ASSERT_EQ(r->gpus.size(), 3u);
  const double util[] = {10, 55, 100};
  const double used[] = {1000, 2000, 2000};
  for (int i = 0; i < 3; ++i) {
    const GpuSample& g = r->gpus[i];
    EXPECT_EQ(g.index, i);
    EXPECT_EQ(g.name, "Stub GPU " + std::to_string(i));
    EXPECT_EQ(g.uuid, "GPU-stub-" + std::to_string(i));
    EXPECT_DOUBLE_EQ(g.util_pct, util[i]);
    EXPECT_DOUBLE_EQ(g.mem_used_mb, used[i]);
    EXPECT_DOUBLE_EQ(g.mem_total_mb, 24576);
  }
  ASSERT_EQ(r->gpus[0].processes.size(), 2u);
  EXPECT_EQ(r->gpus[0].processes[0].pid, 1234u);
  EXPECT_DOUBLE_EQ(r->gpus[0].processes[0].used_mem_mb, 500);
  EXPECT_EQ(r->gpus[0].processes[1].pid, 99u);
  EXPECT_DOUBLE_EQ(r->gpus[0].processes[1].used_mem_mb, 20);
  EXPECT_TRUE(r->gpus[1].processes.empty());
  EXPECT_TRUE(r->gpus[2].processes.empty());

  nlohmann::json j = r->ToJson();
  EXPECT_EQ(j["source"], "nvml");
  ASSERT_EQ(j["gpus"].size(), 3u);
  EXPECT_EQ(j["gpus"][1]["util_pct"], 55.0);
  EXPECT_EQ(j["gpus"][0]["uuid"], "GPU-stub-0");
  EXPECT_EQ(j["gpus"][0]["processes"][0]["pid"], 1234);
  EXPECT_EQ(j["gpus"][0]["processes"][1]["used_mem_mb"], 20.0);
  EXPECT_EQ(j["gpus"][2]["mem_total_mb"], 24576.0);
}

TEST_F(GpuProbeTest, NvmlDefaultsToOneIdleGpu) {
  REQUIRE_STUB();
  auto probe = OpenNvmlProbe(StubPath());
  ASSERT_TRUE(probe) << probe.error().ToString();
  auto r = (*probe)->Read();
  ASSERT_TRUE(r) << r.error().ToString();
  ASSERT_EQ(r->gpus.size(), 1u);
  EXPECT_DOUBLE_EQ(r->gpus[0].util_pct, 0);
  EXPECT_DOUBLE_EQ(r->gpus[0].mem_total_mb, 16384);
  EXPECT_TRUE(r->gpus[0].processes.empty());
}

TEST_F(GpuProbeTest, NvmlZeroGpusIsAnEmptyReading) {
  REQUIRE_STUB();
  setenv("DUMONT_NVML_STUB_COUNT", "0", 1);
  auto probe = OpenNvmlProbe(StubPath());
  ASSERT_TRUE(probe) << probe.error().ToString();
  auto r = (*probe)->Read();
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_TRUE(r->gpus.empty());
}

TEST_F(GpuProbeTest, NvmlEachReadIsFresh) {
  REQUIRE_STUB();
  setenv("DUMONT_NVML_STUB_UTIL", "5", 1);
  auto probe = OpenNvmlProbe(StubPath());
  ASSERT_TRUE(probe) << probe.error().ToString();
  auto a = (*probe)->Read();
  ASSERT_TRUE(a);
  EXPECT_DOUBLE_EQ(a->gpus[0].util_pct, 5);
  setenv("DUMONT_NVML_STUB_UTIL", "93", 1);
  auto b = (*probe)->Read();
  ASSERT_TRUE(b);
  EXPECT_DOUBLE_EQ(b->gpus[0].util_pct, 93);
}

// More processes than the probe's first buffer: it must grow the buffer on INSUFFICIENT_SIZE,
// and read every entry with the _v3 layout's 24-byte stride (a wrong stride garbles the pids).
TEST_F(GpuProbeTest, NvmlGrowsProcessBuffer) {
  REQUIRE_STUB();
  std::string procs;
  for (int i = 0; i < 300; ++i) {
    procs += (i ? "," : "") + std::to_string(10000 + i) + ":" + std::to_string(i);
  }
  setenv("DUMONT_NVML_STUB_PROCS", procs.c_str(), 1);
  auto probe = OpenNvmlProbe(StubPath());
  ASSERT_TRUE(probe) << probe.error().ToString();
  int calls_before = StubCounter("dumont_nvml_stub_process_calls");
  auto r = (*probe)->Read();
  ASSERT_TRUE(r) << r.error().ToString();
  int calls = StubCounter("dumont_nvml_stub_process_calls") - calls_before;
  EXPECT_GE(calls, 2) << "the first call should have been too small";
  ASSERT_EQ(r->gpus[0].processes.size(), 300u);
  for (int i = 0; i < 300; ++i) {
    EXPECT_EQ(r->gpus[0].processes[i].pid, static_cast<uint32_t>(10000 + i));
    EXPECT_DOUBLE_EQ(r->gpus[0].processes[i].used_mem_mb, i);
  }
}

// The same against a stub that only has the plain (pre-NVML-11) symbol with 16-byte entries:
// libnvidia-ml-stub-v1.so (CMake target nvml_stub_v1), next to libnvidia-ml-stub.so.
TEST_F(GpuProbeTest, NvmlPlainProcessSymbolUsesTheV1Layout) {
  REQUIRE_STUB();
  const std::string v1 =
      (std::filesystem::path(StubPath()).parent_path() / "libnvidia-ml-stub-v1.so").string();
  if (!std::filesystem::exists(v1)) GTEST_SKIP() << v1 << " not built (target nvml_stub_v1)";
  std::string procs;
  for (int i = 0; i < 50; ++i) {
    procs += (i ? "," : "") + std::to_string(500 + i) + ":" + std::to_string(2 * i);
  }
  setenv("DUMONT_NVML_STUB_PROCS", procs.c_str(), 1);
  auto probe = OpenNvmlProbe(v1);
  ASSERT_TRUE(probe) << probe.error().ToString();
  auto r = (*probe)->Read();
  ASSERT_TRUE(r) << r.error().ToString();
  ASSERT_EQ(r->gpus[0].processes.size(), 50u);
  for (int i = 0; i < 50; ++i) {
    EXPECT_EQ(r->gpus[0].processes[i].pid, static_cast<uint32_t>(500 + i));
    EXPECT_DOUBLE_EQ(r->gpus[0].processes[i].used_mem_mb, 2 * i);
  }
}

TEST_F(GpuProbeTest, NvmlInitFailureIsUnavailable) {
  REQUIRE_STUB();
  setenv("DUMONT_NVML_STUB_FAIL_INIT", "1", 1);
  auto probe = OpenNvmlProbe(StubPath());
  ASSERT_FALSE(probe);
  EXPECT_EQ(probe.error().code(), Code::kUnavailable);
  EXPECT_THAT(probe.error().message(), HasSubstr("nvmlInit_v2"));
  EXPECT_THAT(probe.error().message(), HasSubstr("Driver Not Loaded"));  // via nvmlErrorString
  EXPECT_THAT(probe.error().message(), HasSubstr(StubPath()));
}

TEST_F(GpuProbeTest, NvmlMissingLibraryIsUnavailableNamingIt) {
  const std::string path = Path("no-such-dir/libnvidia-ml.so.1");
  auto probe = OpenNvmlProbe(path);
  ASSERT_FALSE(probe);
  EXPECT_EQ(probe.error().code(), Code::kUnavailable);
  EXPECT_THAT(probe.error().message(), HasSubstr(path));
}

TEST_F(GpuProbeTest, NvmlLibraryWithoutTheSymbolsIsUnavailableNamingTheSymbol) {
  auto probe = OpenNvmlProbe("libm.so.6");
  ASSERT_FALSE(probe);
  EXPECT_EQ(probe.error().code(), Code::kUnavailable);
  EXPECT_THAT(probe.error().message(), HasSubstr("nvmlInit_v2"));
  EXPECT_THAT(probe.error().message(), HasSubstr("libm.so.6"));
}

TEST_F(GpuProbeTest, NvmlReadFailureIsUnavailableNamingTheGpuAndCall) {
  REQUIRE_STUB();
  setenv("DUMONT_NVML_STUB_COUNT", "2", 1);
  auto probe = OpenNvmlProbe(StubPath());
  ASSERT_TRUE(probe) << probe.error().ToString();
  setenv("DUMONT_NVML_STUB_FAIL_UTIL", "1", 1);
  auto r = (*probe)->Read();
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code(), Code::kUnavailable);
  EXPECT_THAT(r.error().message(), HasSubstr("GPU 0"));
  EXPECT_THAT(r.error().message(), HasSubstr("nvmlDeviceGetUtilizationRates"));
  EXPECT_THAT(r.error().message(), HasSubstr("GPU is lost"));
  unsetenv("DUMONT_NVML_STUB_FAIL_UTIL");
  EXPECT_TRUE((*probe)->Read());  // recovers once the driver does
}

TEST_F(GpuProbeTest, NvmlProbeShutsDownNvmlWhenDestroyed) {
  REQUIRE_STUB();
  auto probe = OpenNvmlProbe(StubPath());
  ASSERT_TRUE(probe) << probe.error().ToString();
  int inits = StubCounter("dumont_nvml_stub_init_count");
  int shutdowns = StubCounter("dumont_nvml_stub_shutdown_count");
  ASSERT_GE(inits, 1);
  // The test's own reference keeps the stub (and its counters) loaded past the probe's dlclose.
  void* keep = dlopen(StubPath().c_str(), RTLD_NOW | RTLD_LOCAL);
  ASSERT_NE(keep, nullptr);
  probe->reset();
  EXPECT_EQ(StubCounter("dumont_nvml_stub_shutdown_count"), shutdowns + 1);
  EXPECT_EQ(StubCounter("dumont_nvml_stub_init_count"), inits);
  dlclose(keep);
}

TEST_F(GpuProbeTest, NvmlReadIsThreadSafe) {
  REQUIRE_STUB();
  setenv("DUMONT_NVML_STUB_COUNT", "4", 1);
  setenv("DUMONT_NVML_STUB_UTIL", "42", 1);
  setenv("DUMONT_NVML_STUB_PROCS", "1:1,2:2,3:3", 1);
  auto probe = OpenNvmlProbe(StubPath());
  ASSERT_TRUE(probe) << probe.error().ToString();
  std::atomic<int> bad{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int k = 0; k < 100; ++k) {
        auto r = (*probe)->Read();
        if (!r || r->gpus.size() != 4 || r->gpus[3].util_pct != 42 ||
            r->gpus[0].processes.size() != 3) {
          ++bad;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(bad.load(), 0);
}

// ------------------------------------------------------------------------------------------
// nvidia-smi through fake scripts.

constexpr const char* kExpectedArgs =
    "--query-gpu=index,name,uuid,utilization.gpu,memory.used,memory.total "
    "--format=csv,noheader,nounits";

TEST_F(GpuProbeTest, NvidiaSmiParsesGoodOutput) {
  const std::string args_file = Path("args");
  const std::string smi = WriteScript("nvidia-smi", "echo \"$@\" > " + args_file + R"(
echo "0, NVIDIA GeForce RTX 4090, GPU-1111-aaaa, 37, 1024, 24564"
echo "1, NVIDIA A100-SXM4-80GB, GPU-2222-bbbb, 100, 81000, 81920"
)");
  auto probe = OpenNvidiaSmiProbe(smi);
  ASSERT_TRUE(probe) << probe.error().ToString();
  EXPECT_EQ((*probe)->Name(), "nvidia-smi");
  auto r = (*probe)->Read();
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(r->source, "nvidia-smi");
  ASSERT_EQ(r->gpus.size(), 2u);
  EXPECT_EQ(r->gpus[0].index, 0);
  EXPECT_EQ(r->gpus[0].name, "NVIDIA GeForce RTX 4090");
  EXPECT_EQ(r->gpus[0].uuid, "GPU-1111-aaaa");
  EXPECT_DOUBLE_EQ(r->gpus[0].util_pct, 37);
  EXPECT_DOUBLE_EQ(r->gpus[0].mem_used_mb, 1024);
  EXPECT_DOUBLE_EQ(r->gpus[0].mem_total_mb, 24564);
  EXPECT_TRUE(r->gpus[0].processes.empty());
  EXPECT_EQ(r->gpus[1].index, 1);
  EXPECT_EQ(r->gpus[1].name, "NVIDIA A100-SXM4-80GB");
  EXPECT_DOUBLE_EQ(r->gpus[1].util_pct, 100);

  std::ifstream in(args_file);
  std::string args;
  std::getline(in, args);
  EXPECT_EQ(args, kExpectedArgs);
}

TEST_F(GpuProbeTest, NvidiaSmiRunsAgainOnEachRead) {
  const std::string util_file = WriteFile("util", "10");
  const std::string smi =
      WriteScript("nvidia-smi", "echo \"0, GPU, GPU-x, $(cat " + util_file + "), 1, 2\"\n");
  auto probe = OpenNvidiaSmiProbe(smi);
  ASSERT_TRUE(probe) << probe.error().ToString();
  WriteFile("util", "77");
  auto r = (*probe)->Read();
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_DOUBLE_EQ(r->gpus[0].util_pct, 77);
}

TEST_F(GpuProbeTest, NvidiaSmiGarbageOutputIsAnError) {
  const std::string smi =
      WriteScript("nvidia-smi", "echo 'this is not, csv'\nprintf '\\001\\377'\n");
  auto probe = OpenNvidiaSmiProbe(smi);
  ASSERT_FALSE(probe);
  EXPECT_EQ(probe.error().code(), Code::kUnavailable);
  EXPECT_THAT(probe.error().message(), HasSubstr("line 1"));
  EXPECT_THAT(probe.error().message(), HasSubstr(smi));
}

TEST_F(GpuProbeTest, NvidiaSmiNotSupportedFieldIsAnErrorNamingIt) {
  const std::string smi =
      WriteScript("nvidia-smi", "echo '0, Old GPU, GPU-x, [Not Supported], 10, 20'\n");
  auto probe = OpenNvidiaSmiProbe(smi);
  ASSERT_FALSE(probe);
  EXPECT_THAT(probe.error().message(), HasSubstr("utilization.gpu"));
}

TEST_F(GpuProbeTest, NvidiaSmiNonZeroExitIsUnavailable) {
  const std::string smi = WriteScript("nvidia-smi", R"(
echo "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."
exit 9
)");
  auto probe = OpenNvidiaSmiProbe(smi);
  ASSERT_FALSE(probe);
  EXPECT_EQ(probe.error().code(), Code::kUnavailable);
  EXPECT_THAT(probe.error().message(), HasSubstr("status 9"));
  EXPECT_THAT(probe.error().message(), HasSubstr("couldn't communicate"));
}

TEST_F(GpuProbeTest, NvidiaSmiMissingBinaryIsUnavailable) {
  for (const std::string& bin : {Path("nope/nvidia-smi"), std::string("dumont-no-such-smi-xyz")}) {
    auto probe = OpenNvidiaSmiProbe(bin);
    ASSERT_FALSE(probe) << bin;
    EXPECT_EQ(probe.error().code(), Code::kUnavailable);
    EXPECT_THAT(probe.error().message(), HasSubstr(bin));
  }
  const std::string not_exec = WriteFile("plain-file", "echo hi\n");
  auto probe = OpenNvidiaSmiProbe(not_exec);
  ASSERT_FALSE(probe);
  EXPECT_EQ(probe.error().code(), Code::kUnavailable);
}

// A hung nvidia-smi (wedged driver) is killed, with whatever it started, at the deadline.
TEST_F(GpuProbeTest, NvidiaSmiHangIsKilledAtTheTimeout) {
  const std::string smi = WriteScript("nvidia-smi", "sleep 30\necho late\n");
  auto start = std::chrono::steady_clock::now();
  auto probe = OpenNvidiaSmiProbe(smi, std::chrono::milliseconds(300));
  auto took = std::chrono::steady_clock::now() - start;
  ASSERT_FALSE(probe);
  EXPECT_EQ(probe.error().code(), Code::kUnavailable);
  EXPECT_THAT(probe.error().message(), HasSubstr("did not finish"));
  EXPECT_LT(took, std::chrono::seconds(5));
}

TEST(ParseNvidiaSmiCsvTest, EdgeCases) {
  auto empty = ParseNvidiaSmiCsv("");
  ASSERT_TRUE(empty);
  EXPECT_TRUE(empty->empty());

  auto crlf = ParseNvidiaSmiCsv("0, A, GPU-a, 1, 2, 3\r\n\r\n1, B, GPU-b, 4.5, 5, 6\r\n");
  ASSERT_TRUE(crlf) << crlf.error().ToString();
  ASSERT_EQ(crlf->size(), 2u);
  EXPECT_EQ((*crlf)[1].uuid, "GPU-b");
  EXPECT_DOUBLE_EQ((*crlf)[1].util_pct, 4.5);

  auto comma_name = ParseNvidiaSmiCsv("3, Weird, Name, GPU-c, 0, 0, 8192\n");
  ASSERT_TRUE(comma_name) << comma_name.error().ToString();
  EXPECT_EQ((*comma_name)[0].index, 3);
  EXPECT_EQ((*comma_name)[0].name, "Weird, Name");
  EXPECT_EQ((*comma_name)[0].uuid, "GPU-c");
  EXPECT_DOUBLE_EQ((*comma_name)[0].mem_total_mb, 8192);

  for (const char* bad :
       {"0, A, GPU-a, 1, 2\n", "x, A, GPU-a, 1, 2, 3\n", "0, A, GPU-a, -1, 2, 3\n",
        "0, A, GPU-a, 101, 2, 3\n", "0, A, GPU-a, 1, 2, 3MiB\n", "0, A, GPU-a, nan, 2, 3\n",
        "0, A, GPU-a, 1, , 3\n"}) {
    auto r = ParseNvidiaSmiCsv(bad);
    EXPECT_FALSE(r) << bad;
  }
  auto second_line_bad = ParseNvidiaSmiCsv("0, A, GPU-a, 1, 2, 3\ngarbage\n");
  ASSERT_FALSE(second_line_bad);
  EXPECT_THAT(second_line_bad.error().message(), StartsWith("line 2"));
}

// ------------------------------------------------------------------------------------------
// The simulated GPU.

TEST_F(GpuProbeTest, VirtualMissingFileIsOneIdleGpu) {
  auto probe = NewVirtualGpuProbe(Path("gpu.json"));
  EXPECT_EQ(probe->Name(), "virtual");
  auto r = probe->Read();
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(r->source, "virtual");
  ASSERT_EQ(r->gpus.size(), 1u);
  EXPECT_DOUBLE_EQ(r->gpus[0].util_pct, 0);
  EXPECT_THAT(r->gpus[0].name, HasSubstr("simulated"));
  EXPECT_GT(r->gpus[0].mem_total_mb, 0);
}

TEST_F(GpuProbeTest, VirtualUtilisationIsClamped) {
  const std::string file = Path("gpu.json");
  auto probe = NewVirtualGpuProbe(file);
  const std::pair<const char*, double> cases[] = {
      {"0", 0}, {"50", 50}, {"100", 100}, {"150", 100}, {"-5", 0}, {"12.5", 12.5}, {"1e300", 100}};
  for (const auto& [in, want] : cases) {
    WriteFile("gpu.json", std::string("{\"util\": ") + in + "}");
    auto r = probe->Read();
    ASSERT_TRUE(r) << in << ": " << r.error().ToString();
    ASSERT_EQ(r->gpus.size(), 1u);
    EXPECT_DOUBLE_EQ(r->gpus[0].util_pct, want) << in;
  }
}

TEST_F(GpuProbeTest, VirtualCountAndMemory) {
  const std::string file =
      WriteFile("gpu.json", R"({"util": 30, "count": 4, "mem_total_mb": 81920})");
  auto r = NewVirtualGpuProbe(file)->Read();
  ASSERT_TRUE(r) << r.error().ToString();
  ASSERT_EQ(r->gpus.size(), 4u);
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(r->gpus[i].index, i);
    EXPECT_DOUBLE_EQ(r->gpus[i].util_pct, 30);
    EXPECT_DOUBLE_EQ(r->gpus[i].mem_total_mb, 81920);
    EXPECT_DOUBLE_EQ(r->gpus[i].mem_used_mb, 0);
  }
  EXPECT_NE(r->gpus[0].uuid, r->gpus[1].uuid);

  WriteFile("gpu.json", R"({"count": 0})");
  auto none = NewVirtualGpuProbe(file)->Read();
  ASSERT_TRUE(none) << none.error().ToString();
  EXPECT_TRUE(none->gpus.empty());

  WriteFile("gpu.json", R"({"util": 1, "future_key": [1, 2]})");
  EXPECT_TRUE(NewVirtualGpuProbe(file)->Read());
}

TEST_F(GpuProbeTest, VirtualMalformedContentIsAnErrorNamingTheFile) {
  const std::string file = Path("gpu.json");
  auto probe = NewVirtualGpuProbe(file);
  for (const char* bad :
       {"{not json", "", "[1, 2]", "42", R"({"util": "high"})", R"({"util": true})",
        R"({"count": -1})", R"({"count": 2.5})", R"({"count": 100000})",
        R"({"count": 18446744073709551615})", R"({"mem_total_mb": -1})",
        R"({"mem_total_mb": "lots"})", "{\"util\": 5}\xff\xfe"}) {
    WriteFile("gpu.json", bad);
    auto r = probe->Read();
    ASSERT_FALSE(r) << bad;
    EXPECT_EQ(r.error().code(), Code::kInvalidArgument) << bad;
    EXPECT_THAT(r.error().message(), HasSubstr(file)) << bad;
  }
  WriteFile("gpu.json", R"({"util": 20})");  // fixed: reads again
  auto r = probe->Read();
  ASSERT_TRUE(r);
  EXPECT_DOUBLE_EQ(r->gpus[0].util_pct, 20);
}

TEST_F(GpuProbeTest, VirtualUnreadableFileIsAnErrorNamingIt) {
  const std::string file = Path("a-directory");
  ASSERT_EQ(mkdir(file.c_str(), 0755), 0);
  auto r = NewVirtualGpuProbe(file)->Read();
  ASSERT_FALSE(r);
  EXPECT_THAT(r.error().message(), HasSubstr(file));
}

// ------------------------------------------------------------------------------------------
// OpenBestProbe.

TEST_F(GpuProbeTest, BestProbePrefersNvml) {
  REQUIRE_STUB();
  const std::string smi = WriteScript("nvidia-smi", "echo '0, A, GPU-a, 1, 2, 3'\n");
  std::vector<std::string> why;
  auto probe = OpenBestProbe(StubPath(), smi, Path("gpu.json"), &why);
  ASSERT_NE(probe, nullptr);
  EXPECT_EQ(probe->Name(), "nvml");
  EXPECT_TRUE(why.empty());
}

TEST_F(GpuProbeTest, BestProbeFallsBackToNvidiaSmi) {
  REQUIRE_STUB();
  setenv("DUMONT_NVML_STUB_FAIL_INIT", "1", 1);
  const std::string smi = WriteScript("nvidia-smi", "echo '0, A, GPU-a, 64, 2, 3'\n");
  std::vector<std::string> why;
  auto probe = OpenBestProbe(StubPath(), smi, Path("gpu.json"), &why);
  ASSERT_NE(probe, nullptr);
  EXPECT_EQ(probe->Name(), "nvidia-smi");
  ASSERT_EQ(why.size(), 1u);
  EXPECT_THAT(why[0], StartsWith("nvml: "));
  EXPECT_THAT(why[0], HasSubstr("nvmlInit_v2"));
  auto r = probe->Read();
  ASSERT_TRUE(r);
  EXPECT_DOUBLE_EQ(r->gpus[0].util_pct, 64);
}

TEST_F(GpuProbeTest, BestProbeSkipsNvmlThatOpensButCannotRead) {
  REQUIRE_STUB();
  setenv("DUMONT_NVML_STUB_FAIL_UTIL", "1", 1);
  const std::string smi = WriteScript("nvidia-smi", "echo '0, A, GPU-a, 1, 2, 3'\n");
  std::vector<std::string> why;
  auto probe = OpenBestProbe(StubPath(), smi, Path("gpu.json"), &why);
  ASSERT_NE(probe, nullptr);
  EXPECT_EQ(probe->Name(), "nvidia-smi");
  ASSERT_EQ(why.size(), 1u);
  EXPECT_THAT(why[0], HasSubstr("nvmlDeviceGetUtilizationRates"));
}

TEST_F(GpuProbeTest, BestProbeFallsBackToVirtual) {
  const std::string missing_lib = Path("libnvidia-ml.so.1");
  const std::string missing_smi = Path("nvidia-smi");
  WriteFile("gpu.json", R"({"util": 80, "count": 2})");
  std::vector<std::string> why;
  auto probe = OpenBestProbe(missing_lib, missing_smi, Path("gpu.json"), &why);
  ASSERT_NE(probe, nullptr);
  EXPECT_EQ(probe->Name(), "virtual");
  ASSERT_EQ(why.size(), 2u);
  EXPECT_THAT(why[0], StartsWith("nvml: "));
  EXPECT_THAT(why[0], HasSubstr(missing_lib));
  EXPECT_THAT(why[1], StartsWith("nvidia-smi: "));
  EXPECT_THAT(why[1], HasSubstr(missing_smi));
  auto r = probe->Read();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->source, "virtual");
  EXPECT_EQ(r->gpus.size(), 2u);
  EXPECT_DOUBLE_EQ(r->gpus[1].util_pct, 80);
}

TEST_F(GpuProbeTest, BestProbeSkipsBrokenNvidiaSmiAndWorksWithoutWhy) {
  const std::string smi = WriteScript("nvidia-smi", "echo garbage\n");
  std::vector<std::string> why;
  auto probe = OpenBestProbe("libm.so.6", smi, Path("gpu.json"), &why);
  ASSERT_NE(probe, nullptr);
  EXPECT_EQ(probe->Name(), "virtual");
  ASSERT_EQ(why.size(), 2u);
  EXPECT_THAT(why[0], HasSubstr("nvmlInit_v2"));
  EXPECT_THAT(why[1], HasSubstr("line 1"));

  auto quiet = OpenBestProbe("libm.so.6", smi, Path("gpu.json"));
  ASSERT_NE(quiet, nullptr);
  EXPECT_EQ(quiet->Name(), "virtual");
}

}  // namespace
}  // namespace dumont::agent
