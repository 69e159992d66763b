// dumont-agent: runs on every managed machine. This build carries the command-line surface and
// version; enrollment, heartbeats and snapshot jobs arrive with the fleet core (issue 4) and are
// refused with a clear message until then.
#include <cstdio>

#include <CLI/CLI.hpp>
#include <dumont/version.h>

int main(int argc, char** argv) {
  CLI::App cli{"dumont-agent: telemetry heartbeats and snapshot jobs for one Dumont machine"};
  cli.set_version_flag("--version", std::string(DUMONT_VERSION) + " (" + DUMONT_GIT_COMMIT + ")");
  std::string server, token;
  cli.add_option("--server", server, "dumontd base URL");
  cli.add_option("--token", token, "one-time enrollment token");
  CLI11_PARSE(cli, argc, argv);
  std::fprintf(stderr,
               "dumont-agent %s: enrollment and heartbeats are not part of this release yet; "
               "nothing to do.\n",
               DUMONT_VERSION);
  return 3;
}
