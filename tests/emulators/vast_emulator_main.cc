// vast-emulator: the Vast.ai API emulator (tests/emulators/vast_emulator.h) as a process, for manual
// runs and end-to-end tests. It is NOT Vast.ai: nothing here talks to the real service.
//
//   vast-emulator --listen HOST:PORT --state-dir DIR --agent PATH [--boot-seconds N] [--pull-seconds N]
//                 [--fail-rate X] [--never-ready-rate X] [--lost-rate X] [--429-rate X] [--5xx-rate X]
//                 [--min-interval S] [--offers N] [--seed N] [--api-key KEY]
// The API key defaults to $VAST_EMULATOR_API_KEY, else "vast-emulator-key". Prints the base URL
// (the VAST_URL equivalent) on stdout once listening; SIGINT/SIGTERM stop it and remove its machines.
#include <signal.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include "emulators/vast_emulator.h"

namespace {
volatile sig_atomic_t g_stop = 0;
void Usage() {
  std::fprintf(stderr,
               "usage: vast-emulator --listen HOST:PORT --state-dir DIR --agent PATH [--boot-seconds N]\n"
               "       [--pull-seconds N] [--fail-rate X] [--never-ready-rate X] [--lost-rate X] [--429-rate X]\n"
               "       [--5xx-rate X] [--min-interval S] [--offers N] [--seed N] [--api-key KEY]\n");
}
}  // namespace

int main(int argc, char** argv) {
  dumont::emulators::VastEmulatorOptions o;
  if (const char* k = std::getenv("VAST_EMULATOR_API_KEY")) o.api_key = k;
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
      if (a == "--listen") listen = v;
      else if (a == "--state-dir") o.state_dir = v;
      else if (a == "--agent") o.agent_path = v;
      else if (a == "--boot-seconds") o.boot_seconds = std::stod(v);
      else if (a == "--pull-seconds") o.pull_seconds = std::stod(v);
      else if (a == "--fail-rate") o.fail_at_boot_rate = std::stod(v);
      else if (a == "--never-ready-rate") o.never_ready_rate = std::stod(v);
      else if (a == "--lost-rate") o.lost_create_rate = std::stod(v);
      else if (a == "--429-rate") o.rate_limit_rate = std::stod(v);
      else if (a == "--5xx-rate") o.server_error_rate = std::stod(v);
      else if (a == "--min-interval") o.min_interval_s = std::stod(v);
      else if (a == "--offers") o.offers = std::stoi(v);
      else if (a == "--seed") o.seed = std::stoull(v);
      else if (a == "--api-key") o.api_key = v;
      else {
        std::fprintf(stderr, "vast-emulator: unknown option %s\n", a.c_str());
        Usage();
        return 2;
      }
    } catch (const std::exception&) {
      std::fprintf(stderr, "vast-emulator: bad value '%s' for %s\n", v.c_str(), a.c_str());
      return 2;
    }
  }
  if (o.state_dir.empty() || o.agent_path.empty()) {
    Usage();
    return 2;
  }
  if (auto st = dumont::http::ParseListen(listen, &o.host, &o.port); !st.ok()) {
    std::fprintf(stderr, "vast-emulator: %s\n", st.message().c_str());
    return 2;
  }
  // A flag, not a blocked mask: the local machines' agents are forked from here and would inherit it.
  struct sigaction sa{};
  sa.sa_handler = [](int) { g_stop = 1; };
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  dumont::emulators::VastEmulator emu(o);
  if (auto st = emu.Start(); !st.ok()) {
    std::fprintf(stderr, "vast-emulator: %s\n", st.message().c_str());
    return 1;
  }
  std::printf("%s\n", emu.BaseUrl().c_str());
  std::fflush(stdout);
  while (!g_stop) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  emu.Stop();
  return 0;
}
