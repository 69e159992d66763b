#include "cli/cli.h"

int main(int argc, char** argv) { return dumont::cli::Run(argc, argv); }
