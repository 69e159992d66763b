// The S3 server of the test run: tests/rgw_harness.sh writes STATE/env; this loads it.
#pragma once

#include <cstdlib>
#include <fstream>
#include <string>

namespace dumont::snapshot {

// Loads STATE/env into the environment. Returns false with *skip set when no server is configured,
// false with *error set when it is configured but broken.
inline bool RgwEnvironment(std::string* error, bool* skip) {
  *skip = false;
  const char* state = std::getenv("DUMONT_TEST_RGW_STATE");
  if (state && *state) {
    std::string path = std::string(state) + "/env";
    std::ifstream in(path);
    if (!in) {
      *error = "DUMONT_TEST_RGW_STATE=" + std::string(state) + " but " + path +
               " is missing: the RADOS Gateway fixture did not start (see the output of the rgw_start test, "
               "i.e. tests/rgw_harness.sh start " + std::string(state) + ")";
      return false;
    }
    std::string line;
    while (std::getline(in, line)) {
      if (line.rfind("export ", 0) == 0) line = line.substr(7);
      size_t eq = line.find('=');
      if (eq == std::string::npos || line.empty() || line[0] == '#') continue;
      setenv(line.substr(0, eq).c_str(), line.substr(eq + 1).c_str(), 1);
    }
    if (!std::getenv("DUMONT_TEST_S3_ENDPOINT")) {
      *error = path + " does not set DUMONT_TEST_S3_ENDPOINT";
      return false;
    }
    return true;
  }
  if (std::getenv("DUMONT_TEST_S3_ENDPOINT")) return true;
  *skip = true;
  return false;
}

}  // namespace dumont::snapshot
