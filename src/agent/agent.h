// The agent that runs on every managed machine: enrolls with a one-time token, then sends heartbeats
// (GPU utilisation and memory, CPU, RAM, disk, GPU processes) and runs the commands that come back
// (snapshot the workspace, restore a snapshot into it) with the snapshot engine. It retries with
// backoff while the server is away and stops when its token is revoked (the machine is going away).
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include "agent/gpu_probe.h"
#include "common/log.h"
#include "common/status.h"

namespace dumont::agent {

struct AgentOptions {
  std::string server;        // dumontd base URL
  std::string enroll_token;  // one-time
  std::string workspace;     // directory to snapshot / restore into
  std::string state_dir;     // agent.json (its token, 0600), results.json
  std::string nvml_library = "libnvidia-ml.so.1";
  std::string nvidia_smi = "nvidia-smi";
  std::string virtual_gpu_file;
  int64_t interval_override_s = 0;
};

class Agent {
 public:
  Agent(AgentOptions o, Logger* log);
  ~Agent();
  // Runs until Stop() or until the server revokes the token. Returns the reason.
  Status Run();
  void Stop();

  // One heartbeat body (exposed for tests).
  nlohmann::json Sample();

 private:
  Status Enroll();
  Status LoadState();
  Result<nlohmann::json> Post(const std::string& path, const nlohmann::json& body, bool authed);
  void StartCommand(const nlohmann::json& cmd);
  nlohmann::json RunCommand(const nlohmann::json& cmd);
  void SaveResults();

  AgentOptions o_;
  Logger* log_;
  std::unique_ptr<GpuProbe> probe_;
  std::string agent_token_, instance_id_, repo_location_, repo_password_;
  int64_t interval_s_ = 10;
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::map<std::string, nlohmann::json> results_;  // command id -> result (re-sent until cleared)
  std::map<std::string, std::thread> running_;
  std::atomic<bool> wake_{false};
};

}  // namespace dumont::agent
