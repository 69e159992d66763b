// api_seed: seeds a dumontd database for the heartbeat benchmark (bench/api_bench.sh).
//
//   api_seed --db URL --count N --out FILE [--state provisioning|running|error] [--batch 5000]
//
// Opens URL (sqlite:///... or postgresql://...) with store::OpenStore (which applies the
// migrations), then creates one user (bench@dumont.local), N instances on provider "sim"
// (ins_bench_<i>) and N agent tokens (kind "agent", attempt 1, token "dat_bench_<i>"; only its
// SHA-256 hex is stored, like dumontd does). Writes "token instance_id" lines to FILE for the load
// generators. Ids are deterministic, so a second run on the same database changes nothing.
//
// --state running (attempt 1, machine id "sim-bench-<i>") is what a steady fleet looks like in the
// database. But the sim provider keeps its machines in memory, so a freshly started dumontd finds
// none of them and replaces every machine (attempt 2), after which these tokens get 403. The default,
// --state provisioning (attempt 0, no machine), lets dumontd's controller create each machine at
// start (attempt 1, matching the tokens); the first heartbeat of each agent then makes it running.
// That start-up provisioning is slow at 100k instances (see bench/README.md, "API"), so
// --state error (attempt 1, no machine) parks the instances in a state the controller leaves alone:
// heartbeats run exactly the same code (token, instance, attempt, telemetry, write-behind, enqueue),
// and each enqueued reconcile reads the instance and stops.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <string>

#include "auth/crypto.h"
#include "store/db.h"
#include "store/store.h"

using namespace dumont;

namespace {

int Usage() {
  std::cerr << "usage: api_seed --db URL --count N --out FILE [--state provisioning|running|error] [--batch N]\n";
  return 2;
}

bool Tolerable(const Status& s) { return s.ok() || s.code() == Code::kAlreadyExists; }

}  // namespace

int main(int argc, char** argv) {
  std::string url, out, state = "provisioning";
  long count = -1, batch = 5000;
  for (int a = 1; a < argc; ++a) {
    std::string k = argv[a];
    if (a + 1 >= argc) return Usage();
    std::string v = argv[++a];
    if (k == "--db") url = v;
    else if (k == "--count") count = std::atol(v.c_str());
    else if (k == "--out") out = v;
    else if (k == "--state") state = v;
    else if (k == "--batch") batch = std::atol(v.c_str());
    else return Usage();
  }
  if (url.empty() || out.empty() || count < 1 || batch < 1) return Usage();
  if (state != "provisioning" && state != "running" && state != "error") return Usage();

  auto t0 = std::chrono::steady_clock::now();
  int64_t now = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
  // Keep a raw handle on the connection so inserts can be grouped in explicit transactions (the Db
  // mutex is taken per statement, so BEGIN/COMMIT around Store calls on the one connection is fine).
  auto db = store::OpenDb(url);
  if (!db) {
    std::cerr << "api_seed: " << db.error().ToString() << "\n";
    return 1;
  }
  store::Db* raw = db->get();
  auto st = store::OpenStoreOnDb(std::move(*db), now);
  if (!st) {
    std::cerr << "api_seed: " << st.error().ToString() << "\n";
    return 1;
  }
  store::Store& s = **st;

  store::User u;
  u.id = "usr_bench";
  u.email = "bench@dumont.local";
  u.password_hash = "!";  // cannot log in; the benchmark needs no user session
  u.role = "user";
  u.created_at = now;
  if (auto r = s.CreateUser(u); !Tolerable(r)) {
    std::cerr << "api_seed: creating the user: " << r.ToString() << "\n";
    return 1;
  }

  std::ofstream f(out, std::ios::trunc);
  if (!f) {
    std::cerr << "api_seed: cannot write " << out << "\n";
    return 1;
  }
  // Batched transactions on a fresh database; statement by statement when rows already exist (a
  // duplicate key aborts a whole PostgreSQL transaction).
  bool use_tx = true;
  if (auto q = raw->Query("SELECT COUNT(*) FROM instances WHERE id LIKE 'ins_bench_%'"); q && !q->empty()) {
    use_tx = q->front().Int(0) == 0;
  }
  char id[64], tok[64];
  long created = 0;
  for (long i = 0; i < count; ++i) {
    if (use_tx && i % batch == 0) {
      if (i > 0) {
        if (auto r = raw->Exec("COMMIT"); !r) { std::cerr << "api_seed: COMMIT: " << r.error().ToString() << "\n"; return 1; }
      }
      if (auto r = raw->Exec("BEGIN"); !r) { std::cerr << "api_seed: BEGIN: " << r.error().ToString() << "\n"; return 1; }
    }
    std::snprintf(id, sizeof id, "ins_bench_%06ld", i);
    std::snprintf(tok, sizeof tok, "dat_bench_%ld", i);
    store::Instance in;
    in.id = id;
    in.owner = u.id;
    in.name = std::string("bench-") + std::to_string(i);
    in.provider = "sim";
    in.offer_id = "sim-0";
    in.gpu = "RTX 4090";
    in.desired = "running";
    in.state = state;
    in.attempt = state == "provisioning" ? 0 : 1;
    if (state == "error") in.message = "parked by bench/api_seed (no sim machine): heartbeat benchmark";
    if (state == "running") in.machine_id = std::string("sim-bench-") + std::to_string(i);
    in.price_per_hour = 0.5;
    in.repo_password = std::string(64, '0');
    in.state_since = in.created_at = in.updated_at = now;
    Status r = s.CreateInstance(in);
    if (!Tolerable(r)) {
      std::cerr << "api_seed: creating " << id << ": " << r.ToString() << "\n";
      if (use_tx) (void)raw->Exec("ROLLBACK");
      return 1;
    }
    if (r.ok()) ++created;
    store::AgentToken t{auth::Sha256Hex(tok), in.id, "agent", 1, now, now + 365 * 86400, std::nullopt, std::nullopt};
    r = s.CreateAgentToken(t);
    if (!Tolerable(r)) {
      std::cerr << "api_seed: creating the token of " << id << ": " << r.ToString() << "\n";
      if (use_tx) (void)raw->Exec("ROLLBACK");
      return 1;
    }
    f << tok << ' ' << id << '\n';
  }
  if (use_tx) {
    if (auto r = raw->Exec("COMMIT"); !r) { std::cerr << "api_seed: COMMIT: " << r.error().ToString() << "\n"; return 1; }
  }
  f.close();
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::cout << "api_seed: " << count << " agents (" << created << " new instances, state " << state << ") on "
            << s.Backend() << " in " << secs << " s; tokens in " << out << "\n";
  return 0;
}
