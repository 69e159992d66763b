// The `dumont` command line. Commands parse flags and call the API (or, later, the snapshot engine);
// output is human text by default and one JSON document with --json.
// Exit codes: 0 ok; 1 the server refused (4xx/5xx); 2 usage; 3 server unreachable; 4 not logged in.
#pragma once

namespace dumont::cli {
int Run(int argc, char** argv);
}
