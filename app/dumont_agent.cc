// dumont-agent: runs on every managed machine. Composition root: options from flags and the
// environment (the provider passes DUMONT_AGENT_* at boot), logging, signals.
#include <signal.h>

#include <cstdio>
#include <cstdlib>
#include <thread>

#include <CLI/CLI.hpp>
#include <dumont/version.h>

#include "agent/agent.h"

namespace {
std::string Env(const char* name, const std::string& def = "") {
  const char* v = std::getenv(name);
  return v && *v ? v : def;
}
dumont::agent::Agent* g_agent = nullptr;
}  // namespace

int main(int argc, char** argv) {
  using namespace dumont;
  CLI::App cli{"dumont-agent: telemetry heartbeats and snapshot jobs for one Dumont machine.\n"
               "Every option can also come from the environment variable named in brackets."};
  cli.set_version_flag("--version", std::string(DUMONT_VERSION) + " (" + DUMONT_GIT_COMMIT + ")");
  agent::AgentOptions o;
  o.server = Env("DUMONT_AGENT_SERVER");
  o.enroll_token = Env("DUMONT_AGENT_ENROLL_TOKEN");
  o.workspace = Env("DUMONT_AGENT_WORKSPACE", "/workspace");
  o.state_dir = Env("DUMONT_AGENT_STATE_DIR", "/var/lib/dumont-agent");
  o.virtual_gpu_file = Env("DUMONT_AGENT_VIRTUAL_GPU", o.state_dir + "/virtual-gpu.json");
  o.nvml_library = Env("DUMONT_AGENT_NVML_LIBRARY", o.nvml_library);
  o.nvidia_smi = Env("DUMONT_AGENT_NVIDIA_SMI", o.nvidia_smi);
  o.interval_override_s = std::atoll(Env("DUMONT_AGENT_INTERVAL", "0").c_str());
  std::string log_format = Env("DUMONT_AGENT_LOG_FORMAT", "text");
  cli.add_option("--server", o.server, "dumontd base URL [DUMONT_AGENT_SERVER]");
  cli.add_option("--enroll-token", o.enroll_token, "one-time enrollment token [DUMONT_AGENT_ENROLL_TOKEN]");
  cli.add_option("--workspace", o.workspace, "directory to snapshot and restore [DUMONT_AGENT_WORKSPACE]");
  cli.add_option("--state-dir", o.state_dir, "where the agent keeps its token (0600) [DUMONT_AGENT_STATE_DIR]");
  cli.add_option("--virtual-gpu", o.virtual_gpu_file, "simulated GPU file used when there is no NVIDIA GPU [DUMONT_AGENT_VIRTUAL_GPU]");
  cli.add_option("--interval", o.interval_override_s, "heartbeat interval override in seconds [DUMONT_AGENT_INTERVAL]");
  cli.add_option("--log-format", log_format, "text | json [DUMONT_AGENT_LOG_FORMAT]");
  CLI11_PARSE(cli, argc, argv);
  if (o.server.empty()) {
    std::fprintf(stderr, "dumont-agent: no server: pass --server URL or set DUMONT_AGENT_SERVER\n");
    return 2;
  }
  Logger log(stderr);
  LogFormat f;
  if (ParseLogFormat(log_format, &f)) log.SetFormat(f);
  agent::Agent a(o, &log);
  g_agent = &a;
  struct sigaction sa{};
  sa.sa_handler = [](int) {
    if (g_agent) g_agent->Stop();
  };
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  Status st = a.Run();
  if (!st.ok()) {
    log.Info("agent stopped", {{"reason", st.message()}});
    return st.code() == Code::kUnauthenticated || st.code() == Code::kPermissionDenied ? 0 : 1;
  }
  log.Info("agent stopped");
  return 0;
}
