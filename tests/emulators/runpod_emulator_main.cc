// runpod-emulator: the RunPod GraphQL API emulator (tests/emulators/runpod_emulator.h) as a
// process, for manual runs and end-to-end tests. It is NOT RunPod: nothing here talks to the real
// service.
//
//   runpod-emulator --listen HOST:PORT --state-dir DIR --agent PATH [--pull-seconds N]
//                   [--ports-delay N] [--fail-rate X] [--never-ready-rate X] [--lost-rate X]
//                   [--429-rate X] [--5xx-rate X] [--gpu-types N] [--free-gpus N] [--seed N]
//                   [--api-key KEY]
// The API key defaults to $RUNPOD_EMULATOR_API_KEY, else "runpod-emulator-key". Prints the GraphQL
// URL (the RUNPOD_API_BASE_URL equivalent) on stdout once listening; SIGINT/SIGTERM stop it and
// remove its machines.
#include <signal.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include "emulators/runpod_emulator.h"

namespace {
volatile sig_atomic_t g_stop = 0;
void Usage() {
  std::fprintf(
      stderr,
      "usage: runpod-emulator --listen HOST:PORT --state-dir DIR --agent PATH [--pull-seconds N]\n"
      "       [--ports-delay N] [--fail-rate X] [--never-ready-rate X] [--lost-rate X] [--429-rate "
      "X]\n"
      "       [--5xx-rate X] [--gpu-types N] [--free-gpus N] [--seed N] [--api-key KEY]\n");
}
}  // namespace

int main(int argc, char** argv) {
  dumont::emulators::RunPodEmulatorOptions o;
  if (const char* k = std::getenv("RUNPOD_EMULATOR_API_KEY")) o.api_key = k;
  std::string listen = "127.0.0.1:0";
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "-h" || a == "--help") {
      Usage();
      return 0;
    }
    if (i + 1 >= argc) {
      Usage();
      return 2;
    }
    std::string v = argv[++i];
    try {
      if (a == "--listen")
        listen = v;
      else if (a == "--state-dir")
        o.state_dir = v;
      else if (a == "--agent")
        o.agent_path = v;
      else if (a == "--pull-seconds")
        o.pull_seconds = std::stod(v);
      else if (a == "--ports-delay")
        o.ports_delay_seconds = std::stod(v);
      else if (a == "--fail-rate")
        o.fail_at_boot_rate = std::stod(v);
      else if (a == "--never-ready-rate")
        o.never_ready_rate = std::stod(v);
      else if (a == "--lost-rate")
        o.lost_create_rate = std::stod(v);
      else if (a == "--429-rate")
        o.rate_limit_rate = std::stod(v);
      else if (a == "--5xx-rate")
        o.server_error_rate = std::stod(v);
      else if (a == "--gpu-types")
        o.gpu_types = std::stoi(v);
      else if (a == "--free-gpus")
        o.free_gpus = std::stoi(v);
      else if (a == "--seed")
        o.seed = std::stoull(v);
      else if (a == "--api-key")
        o.api_key = v;
      else {
        std::fprintf(stderr, "runpod-emulator: unknown option %s\n", a.c_str());
        Usage();
        return 2;
      }
    } catch (const std::exception&) {
      std::fprintf(stderr, "runpod-emulator: bad value '%s' for %s\n", v.c_str(), a.c_str());
      return 2;
    }
  }
  if (o.state_dir.empty() || o.agent_path.empty()) {
    Usage();
    return 2;
  }
  if (auto st = dumont::http::ParseListen(listen, &o.host, &o.port); !st.ok()) {
    std::fprintf(stderr, "runpod-emulator: %s\n", st.message().c_str());
    return 2;
  }
  // A flag, not a blocked mask: the local machines' agents are forked from here and would inherit
  // it.
  struct sigaction sa {};
  sa.sa_handler = [](int) { g_stop = 1; };
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  dumont::emulators::RunPodEmulator emu(o);
  if (auto st = emu.Start(); !st.ok()) {
    std::fprintf(stderr, "runpod-emulator: %s\n", st.message().c_str());
    return 1;
  }
  std::printf("%s\n", emu.BaseUrl().c_str());
  std::fflush(stdout);
  while (!g_stop) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  emu.Stop();
  return 0;
}
