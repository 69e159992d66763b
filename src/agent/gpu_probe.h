// GPU probes: how dumont-agent learns each GPU's utilisation, memory and compute processes.
//
// Three sources, tried in this order by OpenBestProbe:
//  - "nvml": libnvidia-ml loaded with dlopen (never linked, so the agent starts on machines without
//    the NVIDIA driver). The declarations of the NVML C ABI are our own (no nvml.h needed).
//  - "nvidia-smi": runs `nvidia-smi --query-gpu=... --format=csv,noheader,nounits` and parses it.
//    Reports no processes (that would need a second query).
//  - "virtual": a SIMULATED GPU for machines without one (development, CPU standbys, tests). Its
//    utilisation comes from a JSON file the control plane writes; nothing is measured. Readings
//    carry source "virtual" so the control plane can tell them apart from real ones: it must never
//    take a virtual 0 % as proof that a real GPU is idle.
//
// Memory is in MiB throughout (fields named *_mb, as nvidia-smi's "MiB").
// Every probe's Read is thread-safe.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/status.h"

namespace dumont::agent {

struct GpuProcess {
  uint32_t pid = 0;
  double used_mem_mb = 0;  // 0 when the driver cannot tell (e.g. no permission inside a container)
};

struct GpuSample {
  int index = 0;
  std::string name;
  std::string uuid;
  double util_pct = 0;  // 0..100
  double mem_used_mb = 0;
  double mem_total_mb = 0;
  std::vector<GpuProcess> processes;  // compute processes (nvml only)
};

struct GpuReading {
  std::string source;  // "nvml" | "nvidia-smi" | "virtual"
  std::vector<GpuSample> gpus;

  // {"source": "...", "gpus": [{"index", "name", "uuid", "util_pct", "mem_used_mb", "mem_total_mb",
  //  "processes": [{"pid", "used_mem_mb"}]}]}
  nlohmann::json ToJson() const;
};

class GpuProbe {
 public:
  virtual ~GpuProbe() = default;
  virtual std::string Name() const = 0;  // the source it reports: "nvml", "nvidia-smi", "virtual"
  virtual Result<GpuReading> Read() = 0;
};

// Loads NVML from `library` (a soname searched the usual way, or a path) and calls nvmlInit_v2.
// Unavailable, with a message naming the library, symbol or NVML error, when the library cannot be
// loaded, lacks a required symbol, nvmlInit_v2 fails or the device count cannot be read.
// The probe owns the handle: its destructor calls nvmlShutdown and dlclose.
// A Read fails (Unavailable) if a GPU's count, handle, utilisation or memory cannot be read; a
// missing name/UUID is reported empty and a process list the driver refuses is reported empty.
Result<std::unique_ptr<GpuProbe>> OpenNvmlProbe(const std::string& library = "libnvidia-ml.so.1");

// Runs `binary` (searched in PATH unless it contains a '/') once to check that it works and parses;
// Unavailable if it cannot be started, exits non-zero, times out or prints something unparsable.
// Every Read runs it again; a run is killed (its whole process group) after `timeout`.
Result<std::unique_ptr<GpuProbe>> OpenNvidiaSmiProbe(
    const std::string& binary = "nvidia-smi",
    std::chrono::milliseconds timeout = std::chrono::seconds(10));

// Parses nvidia-smi's `index, name, uuid, utilization.gpu, memory.used, memory.total` CSV
// (noheader, nounits). Exposed for tests. "[N/A]"-style fields are an error naming the field.
Result<std::vector<GpuSample>> ParseNvidiaSmiCsv(const std::string& output);

// SIMULATED GPUs. Each Read reads `file`: {"util": 0..100, "count": N, "mem_total_mb": M}, every
// key optional (util 0, count 1, mem_total_mb 24576); unknown keys are ignored. A missing file
// means one GPU at 0 %. Malformed content (bad JSON, wrong types, count outside 0..64, negative
// memory) is an InvalidArgument naming the file; an unreadable file an IOError naming it. util is
// clamped to 0..100 and reported for every simulated GPU; mem_used_mb is 0. Write the file
// atomically (rename).
std::unique_ptr<GpuProbe> NewVirtualGpuProbe(const std::string& file);

// NVML, else nvidia-smi, else the virtual GPU on `virtual_file`. NVML and nvidia-smi are only
// chosen if a first Read succeeds. `why` (optional) gets one line per skipped option, e.g. "nvml:
// unavailable: cannot load NVML library 'libnvidia-ml.so.1': ...". Never returns null.
std::unique_ptr<GpuProbe> OpenBestProbe(const std::string& nvml_library,
                                        const std::string& nvidia_smi,
                                        const std::string& virtual_file,
                                        std::vector<std::string>* why = nullptr);

}  // namespace dumont::agent
