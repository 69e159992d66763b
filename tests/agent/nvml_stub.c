/* A stand-in for libnvidia-ml.so.1 for tests (built as libnvidia-ml-stub.so). It exports the
 * NVML symbols the GPU probe uses, with the real C ABI, and behaves as the environment says, read
 * at every call:
 *   DUMONT_NVML_STUB_COUNT=N           GPUs (default 1)
 *   DUMONT_NVML_STUB_UTIL=10,20,...    utilisation per GPU, percent (default 0; a short list
 *                                      repeats its last value)
 *   DUMONT_NVML_STUB_MEM_USED_MB=...   used memory in MiB, one value or a list per GPU (default 0)
 *   DUMONT_NVML_STUB_MEM_TOTAL_MB=...  total memory in MiB, likewise (default 16384)
 *   DUMONT_NVML_STUB_FAIL_INIT=1       nvmlInit_v2 returns NVML_ERROR_DRIVER_NOT_LOADED (9)
 *   DUMONT_NVML_STUB_FAIL_UTIL=1       nvmlDeviceGetUtilizationRates returns GPU_IS_LOST (15)
 *   DUMONT_NVML_STUB_PROCS=pid:mb,...  compute processes on GPU 0 (none elsewhere)
 * Names are "Stub GPU <i>", UUIDs "GPU-stub-<i>".
 * Test-only extras (not NVML): dumont_nvml_stub_init_count() / _shutdown_count() count calls,
 * dumont_nvml_stub_process_calls() counts calls to any nvmlDeviceGetComputeRunningProcesses*.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EXPORT __attribute__((visibility("default")))

typedef int nvmlReturn_t;
typedef struct nvmlDevice_st* nvmlDevice_t;
typedef struct {
  unsigned int gpu;
  unsigned int memory;
} nvmlUtilization_t;
typedef struct {
  unsigned long long total;
  unsigned long long free;
  unsigned long long used;
} nvmlMemory_t;
typedef struct {
  unsigned int pid;
  unsigned long long usedGpuMemory;
} nvmlProcessInfo_v1_t;
typedef struct {
  unsigned int pid;
  unsigned long long usedGpuMemory;
  unsigned int gpuInstanceId;
  unsigned int computeInstanceId;
} nvmlProcessInfo_v2_t;

enum {
  NVML_SUCCESS = 0,
  NVML_ERROR_UNINITIALIZED = 1,
  NVML_ERROR_INVALID_ARGUMENT = 2,
  NVML_ERROR_INSUFFICIENT_SIZE = 7,
  NVML_ERROR_DRIVER_NOT_LOADED = 9,
  NVML_ERROR_GPU_IS_LOST = 15,
};

#define MAX_GPUS 64
#define MAX_PROCS 4096
#define MB (1024ULL * 1024ULL)

/* Device handles are pointers into this array; the index is recovered by subtraction. */
static char g_devices[MAX_GPUS];
static int g_init_count = 0; /* nvmlInit_v2 calls that succeeded */
static int g_shutdown_count = 0;
static int g_refs = 0; /* NVML reference-counts init/shutdown */
static int g_process_calls = 0;

static int Initialized(void) { return __atomic_load_n(&g_refs, __ATOMIC_SEQ_CST) > 0; }

static const char* Env(const char* name) {
  const char* v = getenv(name);
  return (v != NULL && *v != '\0') ? v : NULL;
}

static int Count(void) {
  const char* v = Env("DUMONT_NVML_STUB_COUNT");
  int n = v ? atoi(v) : 1;
  if (n < 0) n = 0;
  if (n > MAX_GPUS) n = MAX_GPUS;
  return n;
}

/* The i-th value of a comma list; a short list repeats its last value. */
static unsigned long long ListValue(const char* name, int i, unsigned long long dflt) {
  const char* v = Env(name);
  if (v == NULL) return dflt;
  unsigned long long last = dflt;
  for (int k = 0; *v != '\0'; ++k) {
    char* end = NULL;
    last = strtoull(v, &end, 10);
    if (k == i) return last;
    v = strchr(end, ',');
    if (v == NULL) break;
    ++v;
  }
  return last;
}

static int DeviceIndex(nvmlDevice_t d) {
  long i = (long)((char*)d - g_devices);
  if (d == NULL || i < 0 || i >= Count()) return -1;
  return (int)i;
}

EXPORT int dumont_nvml_stub_init_count(void) {
  return __atomic_load_n(&g_init_count, __ATOMIC_SEQ_CST);
}
EXPORT int dumont_nvml_stub_shutdown_count(void) {
  return __atomic_load_n(&g_shutdown_count, __ATOMIC_SEQ_CST);
}
EXPORT int dumont_nvml_stub_process_calls(void) {
  return __atomic_load_n(&g_process_calls, __ATOMIC_SEQ_CST);
}

EXPORT const char* nvmlErrorString(nvmlReturn_t rc) {
  switch (rc) {
    case NVML_SUCCESS:
      return "Success";
    case NVML_ERROR_UNINITIALIZED:
      return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT:
      return "Invalid Argument";
    case NVML_ERROR_INSUFFICIENT_SIZE:
      return "Insufficient Size";
    case NVML_ERROR_DRIVER_NOT_LOADED:
      return "Driver Not Loaded";
    case NVML_ERROR_GPU_IS_LOST:
      return "GPU is lost";
    default:
      return "Unknown Error";
  }
}

EXPORT nvmlReturn_t nvmlInit_v2(void) {
  const char* fail = Env("DUMONT_NVML_STUB_FAIL_INIT");
  if (fail != NULL && strcmp(fail, "0") != 0) return NVML_ERROR_DRIVER_NOT_LOADED;
  __atomic_add_fetch(&g_init_count, 1, __ATOMIC_SEQ_CST);
  __atomic_add_fetch(&g_refs, 1, __ATOMIC_SEQ_CST);
  return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlShutdown(void) {
  if (__atomic_load_n(&g_refs, __ATOMIC_SEQ_CST) == 0) return NVML_ERROR_UNINITIALIZED;
  __atomic_sub_fetch(&g_refs, 1, __ATOMIC_SEQ_CST);
  __atomic_add_fetch(&g_shutdown_count, 1, __ATOMIC_SEQ_CST);
  return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int* count) {
  if (!Initialized()) return NVML_ERROR_UNINITIALIZED;
  if (count == NULL) return NVML_ERROR_INVALID_ARGUMENT;
  *count = (unsigned int)Count();
  return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t* device) {
  if (!Initialized()) return NVML_ERROR_UNINITIALIZED;
  if (device == NULL || index >= (unsigned int)Count()) return NVML_ERROR_INVALID_ARGUMENT;
  *device = (nvmlDevice_t)&g_devices[index];
  return NVML_SUCCESS;
}

static nvmlReturn_t CopyString(const char* s, char* out, unsigned int length) {
  if (out == NULL) return NVML_ERROR_INVALID_ARGUMENT;
  if (strlen(s) + 1 > length) return NVML_ERROR_INSUFFICIENT_SIZE;
  memcpy(out, s, strlen(s) + 1);
  return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char* name, unsigned int length) {
  int i = DeviceIndex(device);
  if (!Initialized()) return NVML_ERROR_UNINITIALIZED;
  if (i < 0) return NVML_ERROR_INVALID_ARGUMENT;
  char buf[64];
  snprintf(buf, sizeof buf, "Stub GPU %d", i);
  return CopyString(buf, name, length);
}

EXPORT nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char* uuid, unsigned int length) {
  int i = DeviceIndex(device);
  if (!Initialized()) return NVML_ERROR_UNINITIALIZED;
  if (i < 0) return NVML_ERROR_INVALID_ARGUMENT;
  char buf[64];
  snprintf(buf, sizeof buf, "GPU-stub-%d", i);
  return CopyString(buf, uuid, length);
}

EXPORT nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t device, nvmlUtilization_t* util) {
  int i = DeviceIndex(device);
  if (!Initialized()) return NVML_ERROR_UNINITIALIZED;
  if (i < 0 || util == NULL) return NVML_ERROR_INVALID_ARGUMENT;
  const char* fail = Env("DUMONT_NVML_STUB_FAIL_UTIL");
  if (fail != NULL && strcmp(fail, "0") != 0) return NVML_ERROR_GPU_IS_LOST;
  util->gpu = (unsigned int)ListValue("DUMONT_NVML_STUB_UTIL", i, 0);
  util->memory = util->gpu / 2;
  return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t* mem) {
  int i = DeviceIndex(device);
  if (!Initialized()) return NVML_ERROR_UNINITIALIZED;
  if (i < 0 || mem == NULL) return NVML_ERROR_INVALID_ARGUMENT;
  mem->total = ListValue("DUMONT_NVML_STUB_MEM_TOTAL_MB", i, 16384) * MB;
  mem->used = ListValue("DUMONT_NVML_STUB_MEM_USED_MB", i, 0) * MB;
  mem->free = mem->used < mem->total ? mem->total - mem->used : 0;
  return NVML_SUCCESS;
}

/* Parses DUMONT_NVML_STUB_PROCS ("pid:mb,pid:mb") for GPU 0; returns how many. */
static unsigned int Processes(int gpu, unsigned int pids[], unsigned long long mbs[]) {
  const char* v = Env("DUMONT_NVML_STUB_PROCS");
  if (v == NULL || gpu != 0) return 0;
  unsigned int n = 0;
  while (*v != '\0' && n < MAX_PROCS) {
    char* end = NULL;
    pids[n] = (unsigned int)strtoul(v, &end, 10);
    mbs[n] = 0;
    if (*end == ':') mbs[n] = strtoull(end + 1, &end, 10);
    ++n;
    v = strchr(end, ',');
    if (v == NULL) break;
    ++v;
  }
  return n;
}

/* NVML's protocol: if *count is too small, set it to the number needed and return
 * INSUFFICIENT_SIZE (infos may be NULL then); else fill, set *count and return SUCCESS. */
static nvmlReturn_t GetProcesses(nvmlDevice_t device, unsigned int* count, void* infos,
                                 int v2_layout) {
  unsigned int pids[MAX_PROCS];
  unsigned long long mbs[MAX_PROCS];
  int i = DeviceIndex(device);
  __atomic_add_fetch(&g_process_calls, 1, __ATOMIC_SEQ_CST);
  if (!Initialized()) return NVML_ERROR_UNINITIALIZED;
  if (i < 0 || count == NULL) return NVML_ERROR_INVALID_ARGUMENT;
  unsigned int n = Processes(i, pids, mbs);
  if (*count < n) {
    *count = n;
    return NVML_ERROR_INSUFFICIENT_SIZE;
  }
  if (n > 0 && infos == NULL) return NVML_ERROR_INVALID_ARGUMENT;
  for (unsigned int k = 0; k < n; ++k) {
    if (v2_layout) {
      nvmlProcessInfo_v2_t* p = (nvmlProcessInfo_v2_t*)infos + k;
      p->pid = pids[k];
      p->usedGpuMemory = mbs[k] * MB;
      p->gpuInstanceId = 0xFFFFFFFFu;
      p->computeInstanceId = 0xFFFFFFFFu;
    } else {
      nvmlProcessInfo_v1_t* p = (nvmlProcessInfo_v1_t*)infos + k;
      p->pid = pids[k];
      p->usedGpuMemory = mbs[k] * MB;
    }
  }
  *count = n;
  return NVML_SUCCESS;
}

/* Built with -DDUMONT_NVML_STUB_NO_V3 it has only the plain symbol (16-byte v1 entries), like
 * drivers before NVML 11, so the probe's fallback to the old layout is tested too. */
#ifndef DUMONT_NVML_STUB_NO_V3
EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t device,
                                                            unsigned int* count,
                                                            nvmlProcessInfo_v2_t* infos) {
  return GetProcesses(device, count, infos, 1);
}
#endif

EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses(nvmlDevice_t device, unsigned int* count,
                                                         nvmlProcessInfo_v1_t* infos) {
  return GetProcesses(device, count, infos, 0);
}
