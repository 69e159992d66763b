// `dumont snapshot ...`: works directly on a repository, like restic.
#pragma once

#include <CLI/CLI.hpp>

namespace dumont::cli {

struct SnapshotArgs;
// Registers the subcommands under `parent` and returns state to run them with.
SnapshotArgs* AddSnapshotCommands(CLI::App& parent);
// Runs whichever snapshot subcommand was parsed. Exit codes as in cli.h, plus 3 when a backup
// finished but some files could not be read.
int RunSnapshotCommand(SnapshotArgs* args, bool json);

}  // namespace dumont::cli
