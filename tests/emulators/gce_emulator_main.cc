// gce-emulator: the Google Compute Engine API emulator (tests/emulators/gce_emulator.h) as a process,
// for manual runs and end-to-end tests. It is NOT Google Cloud: nothing here talks to the real service.
//
//   gce-emulator --listen HOST:PORT --state-dir DIR --agent PATH --key-out FILE [--project ID]
//                [--zones Z1,Z2] [--provision-seconds N] [--staging-seconds N] [--op-seconds N]
//                [--token-ttl S] [--preempt-after S] [--fail-rate X] [--never-ready-rate X] [--lost-rate X]
//                [--429-rate X] [--5xx-rate X] [--requests-per-minute N] [--seed N]
// A throwaway service account is generated at start; its key file (token_uri = this emulator) is
// written to --key-out (mode 0600) for GceOptions::service_account_json. Prints the compute base URL
// (GceOptions::base_url) on stdout once listening; SIGINT/SIGTERM stop it and remove its machines.
#include <signal.h>
#include <sys/stat.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

#include "emulators/gce_emulator.h"

namespace {
volatile sig_atomic_t g_stop = 0;
void Usage() {
  std::fprintf(stderr,
               "usage: gce-emulator --listen HOST:PORT --state-dir DIR --agent PATH --key-out FILE [--project ID]\n"
               "       [--zones Z1,Z2] [--provision-seconds N] [--staging-seconds N] [--op-seconds N] [--token-ttl S]\n"
               "       [--preempt-after S] [--fail-rate X] [--never-ready-rate X] [--lost-rate X] [--429-rate X]\n"
               "       [--5xx-rate X] [--requests-per-minute N] [--seed N]\n");
}
}  // namespace

int main(int argc, char** argv) {
  dumont::emulators::GceEmulatorOptions o;
  std::string listen = "127.0.0.1:0", key_out;
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
      else if (a == "--key-out") key_out = v;
      else if (a == "--project") o.project = v;
      else if (a == "--zones") {
        o.zones.clear();
        std::istringstream in(v);
        for (std::string z; std::getline(in, z, ',');) {
          if (!z.empty()) o.zones.push_back(z);
        }
      } else if (a == "--provision-seconds") o.provision_seconds = std::stod(v);
      else if (a == "--staging-seconds") o.staging_seconds = std::stod(v);
      else if (a == "--op-seconds") o.op_done_seconds = std::stod(v);
      else if (a == "--token-ttl") o.token_ttl_seconds = std::stod(v);
      else if (a == "--preempt-after") o.spot_lifetime_seconds = std::stod(v);
      else if (a == "--fail-rate") o.fail_at_boot_rate = std::stod(v);
      else if (a == "--never-ready-rate") o.never_ready_rate = std::stod(v);
      else if (a == "--lost-rate") o.lost_create_rate = std::stod(v);
      else if (a == "--429-rate") o.rate_limit_rate = std::stod(v);
      else if (a == "--5xx-rate") o.server_error_rate = std::stod(v);
      else if (a == "--requests-per-minute") o.requests_per_minute = std::stoi(v);
      else if (a == "--seed") o.seed = std::stoull(v);
      else {
        std::fprintf(stderr, "gce-emulator: unknown option %s\n", a.c_str());
        Usage();
        return 2;
      }
    } catch (const std::exception&) {
      std::fprintf(stderr, "gce-emulator: bad value '%s' for %s\n", v.c_str(), a.c_str());
      return 2;
    }
  }
  if (o.state_dir.empty() || o.agent_path.empty() || key_out.empty() || o.zones.empty()) {
    Usage();
    return 2;
  }
  if (auto st = dumont::http::ParseListen(listen, &o.host, &o.port); !st.ok()) {
    std::fprintf(stderr, "gce-emulator: %s\n", st.message().c_str());
    return 2;
  }
  // A flag, not a blocked mask: the local machines' agents are forked from here and would inherit it.
  struct sigaction sa{};
  sa.sa_handler = [](int) { g_stop = 1; };
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  // The account's email is known before the port; its token_uri needs the port, so the key file is
  // written once the server listens (the emulator only keeps the public key).
  const std::string email = "dumont-emulated@" + o.project + ".iam.gserviceaccount.com";
  auto account = dumont::emulators::NewGceServiceAccount(email, o.project, "");
  if (!account) {
    std::fprintf(stderr, "gce-emulator: %s\n", account.error().message().c_str());
    return 1;
  }
  o.service_accounts[email] = account->public_key_pem;
  dumont::emulators::GceEmulator emu(o);
  if (auto st = emu.Start(); !st.ok()) {
    std::fprintf(stderr, "gce-emulator: %s\n", st.message().c_str());
    return 1;
  }
  nlohmann::json key = nlohmann::json::parse(account->key_json);
  key["token_uri"] = emu.TokenUrl();
  {
    std::ofstream out(key_out, std::ios::trunc);
    out << key.dump(2) << "\n";
    if (!out) {
      std::fprintf(stderr, "gce-emulator: cannot write %s\n", key_out.c_str());
      return 1;
    }
  }
  ::chmod(key_out.c_str(), 0600);
  std::printf("%s\n", emu.BaseUrl().c_str());
  std::fflush(stdout);
  while (!g_stop) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  emu.Stop();
  return 0;
}
