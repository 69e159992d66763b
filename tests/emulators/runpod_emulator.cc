#include "emulators/runpod_emulator.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <ctime>
#include <filesystem>
#include <sstream>

#include "provider/local.h"

namespace dumont::emulators {

using nlohmann::json;

struct GqlField {
  std::string alias, name;
  json args = json::object();
  std::vector<GqlField> selection;
  std::string Key() const { return alias.empty() ? name : alias; }
};

namespace {

// RunPod's messages, verbatim from providers.md 2.1 / section 4.
constexpr const char* kNoInstances =
    "There are no longer any instances available with the requested specifications. Please refresh "
    "and try again.";
constexpr const char* kNoFreeGpus =
    "There are not enough free GPUs on the host machine to start this pod.";
constexpr const char* kSomethingWrong =
    "Something went wrong. Please try again later or contact support.";

struct GqlOperation {
  bool mutation = false;
  std::vector<GqlField> fields;
};

// Thrown inside the parser only; ParseGraphQL turns it into a Status.
struct SyntaxError {
  std::string message;
};

// The GraphQL subset clients send: one operation (query / mutation / shorthand "{...}"), an
// optional name and variable definitions (with defaults), fields with aliases, arguments (every
// literal kind and $variables) and nested selection sets. Commas are whitespace, "#" starts a
// comment.
class GqlParser {
 public:
  GqlParser(const std::string& src, json variables) : s_(src), vars_(std::move(variables)) {}

  GqlOperation Document() {
    GqlOperation op;
    if (Peek() == '{') {
      op.fields = SelectionSet();
    } else {
      std::string kw = Name();
      if (kw == "mutation")
        op.mutation = true;
      else if (kw != "query")
        Fail("Unexpected Name \"" + kw + "\"");
      if (IsNameStart(Peek())) Name();  // the operation name
      if (Eat('(')) VariableDefinitions();
      op.fields = SelectionSet();
    }
    if (Peek() != '\0')
      Fail("the emulator serves one operation per request, found more after the first");
    return op;
  }

 private:
  static bool IsNameStart(char c) {
    return std::isalpha(static_cast<unsigned char>(c)) || c == '_';
  }
  static bool IsNameChar(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; }

  void Skip() {
    while (pos_ < s_.size()) {
      char c = s_[pos_];
      if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == ',') {
        ++pos_;
      } else if (c == '#') {
        while (pos_ < s_.size() && s_[pos_] != '\n') ++pos_;
      } else {
        break;
      }
    }
  }
  char Peek() {
    Skip();
    return pos_ < s_.size() ? s_[pos_] : '\0';
  }
  bool Eat(char c) {
    if (Peek() != c) return false;
    ++pos_;
    return true;
  }
  std::string Found() { return Peek() == '\0' ? "<EOF>" : "\"" + std::string(1, s_[pos_]) + "\""; }
  void Expect(char c) {
    if (!Eat(c)) Fail(std::string("Expected \"") + c + "\", found " + Found());
  }
  [[noreturn]] void Fail(const std::string& m) {
    throw SyntaxError{"Syntax Error: " + m + " (at offset " + std::to_string(pos_) + ")"};
  }

  std::string Name() {
    if (!IsNameStart(Peek())) Fail("Expected Name, found " + Found());
    size_t start = pos_;
    while (pos_ < s_.size() && IsNameChar(s_[pos_])) ++pos_;
    return s_.substr(start, pos_ - start);
  }

  void VariableDefinitions() {
    while (!Eat(')')) {
      Expect('$');
      std::string name = Name();
      Expect(':');
      Type();
      if (Eat('=')) {
        json def = Value(true);
        if (!vars_.contains(name)) vars_[name] = def;
      }
    }
  }
  void Type() {
    if (Eat('[')) {
      Type();
      Expect(']');
    } else {
      Name();
    }
    Eat('!');
  }

  std::vector<GqlField> SelectionSet() {
    Expect('{');
    std::vector<GqlField> out;
    while (!Eat('}')) {
      if (Peek() == '.') Fail("fragments are not supported by the emulator");
      GqlField f;
      f.name = Name();
      if (Eat(':')) {
        f.alias = f.name;
        f.name = Name();
      }
      if (Eat('(')) {
        while (!Eat(')')) {
          std::string arg = Name();
          Expect(':');
          f.args[arg] = Value(false);
        }
      }
      if (Peek() == '@') Fail("directives are not supported by the emulator");
      if (Peek() == '{') f.selection = SelectionSet();
      out.push_back(std::move(f));
    }
    if (out.empty()) Fail("Expected Name, found \"}\"");
    return out;
  }

  json Value(bool constant) {
    char c = Peek();
    if (c == '$') {
      if (constant) Fail("Unexpected variable in a constant value");
      ++pos_;
      std::string n = Name();
      return vars_.contains(n) ? vars_[n] : json();
    }
    if (c == '"') return String();
    if (c == '-' || std::isdigit(static_cast<unsigned char>(c))) return Number();
    if (c == '[') {
      ++pos_;
      json a = json::array();
      while (!Eat(']')) a.push_back(Value(constant));
      return a;
    }
    if (c == '{') {
      ++pos_;
      json o = json::object();
      while (!Eat('}')) {
        std::string k = Name();
        Expect(':');
        o[k] = Value(constant);
      }
      return o;
    }
    if (IsNameStart(c)) {
      std::string n = Name();
      if (n == "true") return true;
      if (n == "false") return false;
      if (n == "null") return nullptr;
      return n;  // an enum value (cloudType: SECURE)
    }
    Fail("Unexpected " + Found());
  }

  json String() {
    if (s_.compare(pos_, 3, "\"\"\"") == 0) {  // block string, taken raw
      auto end = s_.find("\"\"\"", pos_ + 3);
      if (end == std::string::npos) Fail("Unterminated string.");
      std::string v = s_.substr(pos_ + 3, end - pos_ - 3);
      pos_ = end + 3;
      return v;
    }
    size_t start = pos_++;
    while (pos_ < s_.size() && s_[pos_] != '"' && s_[pos_] != '\n')
      pos_ += s_[pos_] == '\\' ? 2 : 1;
    if (pos_ >= s_.size() || s_[pos_] != '"') Fail("Unterminated string.");
    ++pos_;
    // GraphQL string escapes are JSON's.
    json v = json::parse(s_.substr(start, pos_ - start), nullptr, false);
    if (!v.is_string()) Fail("Invalid string " + s_.substr(start, pos_ - start));
    return v;
  }

  json Number() {
    size_t start = pos_;
    auto digits = [&] {
      while (pos_ < s_.size() && std::isdigit(static_cast<unsigned char>(s_[pos_]))) ++pos_;
    };
    if (s_[pos_] == '-') ++pos_;
    digits();
    if (pos_ < s_.size() && s_[pos_] == '.') {
      ++pos_;
      digits();
    }
    if (pos_ < s_.size() && (s_[pos_] == 'e' || s_[pos_] == 'E')) {
      ++pos_;
      if (pos_ < s_.size() && (s_[pos_] == '+' || s_[pos_] == '-')) ++pos_;
      digits();
    }
    std::string t = s_.substr(start, pos_ - start);
    json v = json::parse(t, nullptr, false);
    if (!v.is_number()) Fail("Invalid number \"" + t + "\"");
    return v;
  }

  const std::string& s_;
  json vars_;
  size_t pos_ = 0;
};

Result<GqlOperation> ParseGraphQL(const std::string& query, const json& variables) {
  try {
    return GqlParser(query, variables.is_object() ? variables : json::object()).Document();
  } catch (const SyntaxError& e) {
    return Err(Status::InvalidArgument(e.message));
  }
}

// The GraphQL type a field's value has, for validation messages.
std::string TypeOf(const std::string& field) {
  static const std::map<std::string, std::string> kTypes = {{"pods", "Pod"},
                                                            {"pod", "Pod"},
                                                            {"runtime", "PodRuntime"},
                                                            {"ports", "PodRuntimePorts"},
                                                            {"machine", "PodMachineInfo"},
                                                            {"gpus", "PodRuntimeGpus"},
                                                            {"container", "PodRuntimeContainer"},
                                                            {"lowestPrice", "LowestPrice"},
                                                            {"gpuTypes", "GpuType"},
                                                            {"myself", "User"},
                                                            {"podFindAndDeployOnDemand", "Pod"},
                                                            {"podRentInterruptable", "Pod"},
                                                            {"podStop", "Pod"},
                                                            {"podResume", "Pod"},
                                                            {"podBidResume", "Pod"}};
  auto it = kTypes.find(field);
  return it == kTypes.end() ? field : it->second;
}

// The selected fields of a resolved value, as a GraphQL server answers. A field the type lacks, a
// selection on a scalar or a missing selection on an object are validation errors (HTTP 400).
Result<json> Project(const json& v, const GqlField& f) {
  if (v.is_null()) return v;
  if (v.is_array()) {
    json out = json::array();
    for (const auto& e : v) {
      auto p = Project(e, f);
      if (!p) return p;
      out.push_back(*p);
    }
    return out;
  }
  const std::string type = TypeOf(f.name);
  if (!v.is_object()) {
    if (f.selection.empty()) return v;
    return Err(Status::InvalidArgument(
        "Field \"" + f.name + "\" must not have a selection since its type has no subfields."));
  }
  if (f.selection.empty()) {
    return Err(Status::InvalidArgument("Field \"" + f.name + "\" of type \"" + type +
                                       "\" must have a selection of subfields."));
  }
  json out = json::object();
  for (const auto& s : f.selection) {
    if (s.name == "__typename") {
      out[s.Key()] = type;
      continue;
    }
    auto it = v.find(s.name);
    if (it == v.end())
      return Err(Status::InvalidArgument("Cannot query field \"" + s.name + "\" on type \"" + type +
                                         "\"."));
    auto p = Project(*it, s);
    if (!p) return p;
    out[s.Key()] = *p;
  }
  return out;
}

http::Response Json(int status, const json& body) { return http::JsonResponse(status, body); }

http::Response GqlErrors(int status, const std::string& message, const std::string& code = "") {
  json e = {{"message", message}};
  if (!code.empty()) e["extensions"] = {{"code", code}};
  return Json(status, {{"errors", json::array({e})}, {"data", nullptr}});
}

std::string Stamp(const std::string& what) {
  std::time_t t = std::time(nullptr);
  char buf[64];
  std::strftime(buf, sizeof buf, "%a %b %d %Y %H:%M:%S GMT+0000 (Coordinated Universal Time)",
                std::gmtime(&t));
  return what + ": " + buf;
}

std::string EndpointOf(const std::string& root_field) {
  static const std::map<std::string, std::string> kEndpoints = {
      {"gpuTypes", "search"},
      {"podFindAndDeployOnDemand", "create"},
      {"podRentInterruptable", "create"},
      {"pod", "show"},
      {"myself", "list"},
      {"podStop", "manage"},
      {"podResume", "manage"},
      {"podBidResume", "manage"},
      {"podTerminate", "destroy"}};
  auto it = kEndpoints.find(root_field);
  return it == kEndpoints.end() ? root_field : it->second;
}

std::string PoolKey(const std::string& gpu, const std::string& cloud) { return gpu + "|" + cloud; }

}  // namespace

RunPodEmulator::RunPodEmulator(RunPodEmulatorOptions opts)
    : o_(std::move(opts)),
      logger_(stderr, LogLevel::kWarn),
      t0_(std::chrono::steady_clock::now()),
      rng_(o_.seed) {
  provider::LocalOptions lo;
  lo.root = o_.state_dir + "/machines";
  lo.agent_path = o_.agent_path;
  std::error_code ec;
  std::filesystem::create_directories(lo.root, ec);
  local_ = provider::NewLocalProvider(lo);

  // GPU ids as RunPod spells them (providers.md 2.2); the H100 is Secure Cloud only.
  const std::vector<GpuType> kTypes = {{"NVIDIA GeForce RTX 4090", "RTX 4090", 24, 8, true, true},
                                       {"NVIDIA GeForce RTX 3090", "RTX 3090", 24, 8, true, true},
                                       {"NVIDIA RTX A6000", "RTX A6000", 48, 8, true, true},
                                       {"NVIDIA A100 80GB PCIe", "A100 PCIe", 80, 8, true, true},
                                       {"NVIDIA H100 80GB HBM3", "H100 SXM", 80, 8, true, false}};
  std::uniform_real_distribution<double> price(0.2, 3.0);
  auto round3 = [](double d) { return std::round(d * 1000) / 1000; };
  for (int i = 0; i < std::clamp(o_.gpu_types, 1, static_cast<int>(kTypes.size())); ++i) {
    const GpuType& g = kTypes[i];
    gpu_types_.push_back(g);
    double secure = round3(price(rng_));
    for (const char* cloud : {"SECURE", "COMMUNITY"}) {
      bool community = std::string_view(cloud) == "COMMUNITY";
      if (community ? !g.community : !g.secure) continue;
      Pool& p = pools_[PoolKey(g.id, cloud)];
      p.free = o_.free_gpus;
      p.price = community ? round3(secure * 0.8) : secure;
      p.min_bid = round3(p.price * 0.55);
      p.machine_id = "m" + std::to_string(100000 + i * 2 + (community ? 1 : 0));
    }
  }
}

RunPodEmulator::~RunPodEmulator() {
  Stop();
  Effects fx;
  {
    std::lock_guard l(mu_);
    for (auto& [id, p] : pods_) {
      if (!p.local_id.empty()) fx.destroy.push_back(p.local_id);
    }
  }
  Apply(fx);
}

double RunPodEmulator::Now() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
}

uint16_t RunPodEmulator::port() const { return server_ ? server_->port() : 0; }
std::string RunPodEmulator::BaseUrl() const {
  return "http://" + o_.host + ":" + std::to_string(port()) + "/graphql";
}

Status RunPodEmulator::Start() {
  router_ = std::make_unique<http::Router>(nullptr, &logger_);
  http::RouteSpec spec;
  spec.method = "POST";
  spec.path = "/graphql";
  spec.summary = "RunPod emulator: GraphQL";
  spec.tag = "runpod-emulator";
  spec.auth = http::Auth::kNone;  // the RunPod API key is checked by Gate(), as RunPod does
  router_->Add(
      spec, [this](http::Context& ctx) -> Result<http::Response> { return Handle(ctx.request); });

  http::ServerOptions so;
  so.host = o_.host;
  so.port = o_.port;
  so.threads = 4;
  so.shutdown_grace = std::chrono::seconds(2);
  server_ = std::make_unique<http::Server>(
      so, [this](http::Request& req) { return router_->Handle(req); }, &logger_);
  DUMONT_RETURN_STATUS_IF_ERROR(server_->Start());
  started_ = true;
  serve_thread_ = std::thread([this] { server_->Run(); });
  tick_thread_ = std::thread([this] { TickLoop(); });
  return Status::Ok();
}

void RunPodEmulator::Stop() {
  if (!started_) return;
  started_ = false;
  stopping_ = true;
  server_->Stop();
  if (serve_thread_.joinable()) serve_thread_.join();
  if (tick_thread_.joinable()) tick_thread_.join();
}

bool RunPodEmulator::Authorized(const http::Request& req) const {
  auto h = req.headers.Get("authorization");
  if (h && *h == "Bearer " + o_.api_key) return true;
  auto q = req.query.find("api_key");  // the docs' curl form (providers.md 2.1)
  return q != req.query.end() && q->second == o_.api_key;
}

std::optional<http::Response> RunPodEmulator::Gate(const http::Request& req,
                                                   const std::string& endpoint) {
  std::lock_guard l(mu_);
  ++requests_[endpoint];
  if (!Authorized(req)) return GqlErrors(401, "401 Unauthorized: invalid or missing API key");
  auto take = [&](std::map<std::string, int>& m) {
    for (const std::string& k : {endpoint, std::string()}) {
      auto it = m.find(k);
      if (it != m.end() && it->second > 0) {
        --it->second;
        return true;
      }
    }
    return false;
  };
  std::uniform_real_distribution<double> u(0, 1);
  if (take(rate_limit_) || (o_.rate_limit_rate > 0 && u(rng_) < o_.rate_limit_rate)) {
    ++faults_[endpoint];
    // GraphQL rate limits are undocumented (providers.md 2.1): a 429 without Retry-After.
    return GqlErrors(429, "Too many requests, please slow down.");
  }
  if (take(server_errors_) || (o_.server_error_rate > 0 && u(rng_) < o_.server_error_rate)) {
    ++faults_[endpoint];
    return http::Response::Text(
        503, "<html><body><h1>503 Service Temporarily Unavailable</h1></body></html>", "text/html");
  }
  if (take(internal_errors_)) {
    ++faults_[endpoint];
    return GqlErrors(200, kSomethingWrong, "INTERNAL_SERVER_ERROR");
  }
  return std::nullopt;
}

http::Response RunPodEmulator::Handle(http::Request& req) {
  json body = json::parse(req.body, nullptr, false);
  Result<GqlOperation> op = Err(Status::InvalidArgument("Must provide query string."));
  if (body.is_object() && body.contains("query") && body["query"].is_string()) {
    json vars = body.value("variables", json::object());
    if (vars.is_null() || vars.is_object()) {
      op = ParseGraphQL(body["query"].get<std::string>(), vars);
    } else {
      op = Err(Status::InvalidArgument("Variables must be provided as an Object."));
    }
  }
  const std::string endpoint = op ? EndpointOf(op->fields.front().name) : "invalid";
  if (auto refused = Gate(req, endpoint)) return *refused;
  if (!op) return GqlErrors(400, op.error().message(), "GRAPHQL_PARSE_FAILED");
  {
    std::lock_guard l(mu_);
    last_query_[endpoint] = last_query_[""] = body["query"].get<std::string>();
  }
  Effects fx;
  json data = json::object();
  for (const auto& f : op->fields) {
    auto v = Resolve(f, op->mutation, &fx);
    if (!v) {
      Apply(fx);
      const Status& st = v.error();
      if (st.code() == Code::kInvalidArgument)
        return GqlErrors(400, st.message(), "GRAPHQL_VALIDATION_FAILED");
      return GqlErrors(200, st.message(),
                       st.code() == Code::kInternal ? "INTERNAL_SERVER_ERROR" : "");
    }
    auto p = Project(*v, f);
    if (!p) {
      Apply(fx);
      return GqlErrors(400, p.error().message(), "GRAPHQL_VALIDATION_FAILED");
    }
    data[f.Key()] = *p;
  }
  Apply(fx);
  json answer = {{"data", data}};
  if (endpoint != "create") return Json(200, answer);
  bool lose = false;
  LostMode mode;
  {
    std::lock_guard l(mu_);
    std::uniform_real_distribution<double> u(0, 1);
    if (lost_creates_ > 0) {
      --lost_creates_;
      lose = true;
    } else {
      lose = o_.lost_create_rate > 0 && u(rng_) < o_.lost_create_rate;
    }
    mode = lost_mode_;
    if (lose) ++faults_["create"];
  }
  if (!lose) return Json(200, answer);
  if (mode == LostMode::kBodyless502) return http::Response::Text(502, "", "text/plain");
  // The answer arrives after the client has given up.
  auto until =
      std::chrono::steady_clock::now() + std::chrono::duration<double>(o_.lost_response_delay_s);
  while (!stopping_ && std::chrono::steady_clock::now() < until)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  return Json(200, answer);
}

Result<json> RunPodEmulator::Resolve(const GqlField& f, bool mutation, Effects* fx) {
  const json input = f.args.value("input", json());
  auto pod_id = [&]() -> Result<std::string> {
    if (!input.is_object() || !input.contains("podId") || !input["podId"].is_string()) {
      return Err(Status::InvalidArgument("Field \"" + f.name +
                                         "\" argument \"input\" requires podId: String!"));
    }
    return input["podId"].get<std::string>();
  };
  auto bid = [&]() -> Result<double> {
    if (!input.is_object() || !input.contains("bidPerGpu") || !input["bidPerGpu"].is_number()) {
      return Err(Status::InvalidArgument("Field \"" + f.name +
                                         "\" argument \"input\" requires bidPerGpu: Float!"));
    }
    return input["bidPerGpu"].get<double>();
  };
  if (!mutation) {
    if (f.name == "gpuTypes") {
      json price_args = json::object();
      for (const auto& s : f.selection) {
        if (s.name == "lowestPrice") price_args = s.args.value("input", json::object());
      }
      std::string only = input.is_object() && input.contains("id") && input["id"].is_string()
                             ? input["id"].get<std::string>()
                             : "";
      std::lock_guard l(mu_);
      json out = json::array();
      for (const auto& g : gpu_types_) {
        if (only.empty() || g.id == only) out.push_back(RenderGpuType(g, price_args));
      }
      return out;
    }
    if (f.name == "myself") {
      std::lock_guard l(mu_);
      json pods = json::array();
      for (const auto& [id, p] : pods_) pods.push_back(RenderPod(p));
      return json{{"id", "user_emulator"}, {"email", "emulator@example.invalid"}, {"pods", pods}};
    }
    if (f.name == "pod") {
      auto id = pod_id();
      if (!id) return Err(id.error());
      std::lock_guard l(mu_);
      auto it = pods_.find(*id);
      return it == pods_.end() ? json(nullptr) : RenderPod(it->second);
    }
    return Err(Status::InvalidArgument("Cannot query field \"" + f.name + "\" on type \"Query\"."));
  }
  if (f.name == "podFindAndDeployOnDemand" || f.name == "podRentInterruptable") {
    return Deploy(input, f.name == "podRentInterruptable");
  }
  if (f.name == "podStop") {
    auto id = pod_id();
    return id ? StopPod(*id, fx) : Err(id.error());
  }
  if (f.name == "podResume") {
    auto id = pod_id();
    return id ? ResumePod(*id, std::nullopt) : Err(id.error());
  }
  if (f.name == "podBidResume") {
    auto id = pod_id();
    if (!id) return Err(id.error());
    auto b = bid();
    return b ? ResumePod(*id, *b) : Err(b.error());
  }
  if (f.name == "podTerminate") {
    auto id = pod_id();
    return id ? TerminatePod(*id, fx) : Err(id.error());
  }
  return Err(
      Status::InvalidArgument("Cannot query field \"" + f.name + "\" on type \"Mutation\"."));
}

RunPodEmulator::Pool& RunPodEmulator::PoolOf(const std::string& gpu_type,
                                             const std::string& cloud) {
  return pools_[PoolKey(gpu_type, cloud)];
}

void RunPodEmulator::ReleaseGpus(PodState& p) {
  if (p.holds_gpus) PoolOf(p.gpu_type, p.cloud).free += p.gpu_count;
  p.holds_gpus = false;
}

Result<json> RunPodEmulator::Deploy(const json& in, bool spot) {
  if (!in.is_object())
    return Err(
        Status::InvalidArgument("argument \"input\" of the deploy mutation must be an object"));
  auto str = [&](const char* k) {
    return in.contains(k) && in[k].is_string() ? in[k].get<std::string>() : std::string();
  };
  auto num = [&](const char* k, double def) {
    return in.contains(k) && in[k].is_number() ? in[k].get<double>() : def;
  };
  for (const char* k : {"imageName", "gpuTypeId"}) {
    if (str(k).empty())
      return Err(
          Status::InvalidArgument("input." + std::string(k) + " of type String! is required"));
  }
  std::string cloud = in.contains("cloudType") ? str("cloudType") : "ALL";
  if (cloud != "ALL" && cloud != "SECURE" && cloud != "COMMUNITY") {
    return Err(Status::InvalidArgument("input.cloudType: value \"" + in["cloudType"].dump() +
                                       "\" is not ALL, SECURE or COMMUNITY"));
  }
  if (in.contains("gpuCount") && !in["gpuCount"].is_number_integer()) {
    return Err(Status::InvalidArgument("input.gpuCount must be an Int"));
  }
  int count = static_cast<int>(num("gpuCount", 1));
  std::vector<std::pair<std::string, std::string>> env;
  if (in.contains("env") && !in["env"].is_null()) {
    if (!in["env"].is_array())
      return Err(Status::InvalidArgument("input.env must be a list of {key, value}"));
    for (const auto& e : in["env"]) {
      if (!e.is_object() || !e.contains("key") || !e["key"].is_string() || !e.contains("value") ||
          !e["value"].is_string()) {
        return Err(
            Status::InvalidArgument("input.env entries must be {key: String!, value: String!}"));
      }
      env.emplace_back(e["key"].get<std::string>(), e["value"].get<std::string>());
    }
  }
  std::optional<double> bid;
  if (spot) {
    if (!in.contains("bidPerGpu") || !in["bidPerGpu"].is_number()) {
      return Err(Status::InvalidArgument("input.bidPerGpu of type Float! is required"));
    }
    bid = in["bidPerGpu"].get<double>();
  }

  std::lock_guard l(mu_);
  last_create_ = in;
  const GpuType* g = nullptr;
  for (const auto& t : gpu_types_) {
    if (t.id == str("gpuTypeId")) g = &t;
  }
  if (!g)
    return Err(Status::FailedPrecondition("gpuTypeId \"" + str("gpuTypeId") +
                                          "\" is not a known GPU type"));
  if (count < 1 || count > g->max_count) return Err(Status::FailedPrecondition(kNoInstances));
  // The cloud: the one asked for, or (ALL) the cheaper one with room.
  std::string chosen;
  for (const char* c : {"SECURE", "COMMUNITY"}) {
    bool offered = std::string_view(c) == "SECURE" ? g->secure : g->community;
    if (!offered || (cloud != "ALL" && cloud != c) || PoolOf(g->id, c).free < count) continue;
    if (chosen.empty() || PoolOf(g->id, c).price < PoolOf(g->id, chosen).price) chosen = c;
  }
  if (chosen.empty()) return Err(Status::FailedPrecondition(kNoInstances));
  Pool& pool = PoolOf(g->id, chosen);
  if (bid && *bid < pool.min_bid) {
    return Err(Status::FailedPrecondition(
        "Your bid of $" + json(*bid).dump() + "/GPU/hr is below the minimum bid price of $" +
        json(pool.min_bid).dump() + "/GPU/hr for this GPU type."));
  }
  PodState p;
  static const char kAlnum[] = "abcdefghijklmnopqrstuvwxyz0123456789";
  do {
    p.id.clear();
    for (int k = 0; k < 14; ++k) p.id += kAlnum[rng_() % 36];
  } while (pods_.count(p.id));
  p.name = str("name");
  p.image = str("imageName");
  p.gpu_type = g->id;
  p.cloud = chosen;
  p.machine_id = pool.machine_id;
  p.pod_host_id = p.id + "-" + std::to_string(10000000 + rng_() % 90000000);
  p.docker_args = str("dockerArgs");
  p.ports = str("ports");
  p.volume_mount_path = str("volumeMountPath");
  p.network_volume_id = str("networkVolumeId");
  p.env = std::move(env);
  p.gpu_count = count;
  p.container_disk_gb = static_cast<int>(num("containerDiskInGb", 20));
  p.volume_gb = static_cast<int>(num("volumeInGb", 0));
  p.vcpu = std::max(static_cast<int>(num("minVcpuCount", 0)), 8 * count);
  p.memory_gb = std::max(static_cast<int>(num("minMemoryInGb", 0)), 31 * count);
  p.spot = spot;
  p.bid = bid.value_or(0);
  p.cost_per_hr = (bid ? *bid : pool.price) * count;
  p.phase_since = Now();
  p.last_status_change = Stamp("Rented by User");
  p.ssh_port = 40000 + static_cast<int>(rng_() % 20000);
  p.fault = next_fault_;
  next_fault_ = CreateFault::kNone;
  if (p.fault == CreateFault::kNone) {
    double r = std::uniform_real_distribution<double>(0, 1)(rng_);
    if (r < o_.fail_at_boot_rate)
      p.fault = CreateFault::kFailAtBoot;
    else if (r < o_.fail_at_boot_rate + o_.never_ready_rate)
      p.fault = CreateFault::kNeverReady;
  }
  pool.free -= count;
  const std::string id = p.id;
  pods_[id] = std::move(p);
  return RenderPod(pods_[id]);
}

Result<json> RunPodEmulator::StopPod(const std::string& id, Effects* fx) {
  std::lock_guard l(mu_);
  auto it = pods_.find(id);
  if (it == pods_.end()) return Err(Status::NotFound("pod not found to stop"));
  PodState& p = it->second;
  if (p.desired != "EXITED") {
    p.desired = "EXITED";
    p.runtime = p.want_local = false;
    p.last_status_change = Stamp("Exited by User");
    ReleaseGpus(p);
    if (!p.local_id.empty()) fx->stop.push_back(p.local_id);
  }
  return RenderPod(p);
}

Result<json> RunPodEmulator::ResumePod(const std::string& id, std::optional<double> bid) {
  std::lock_guard l(mu_);
  auto it = pods_.find(id);
  if (it == pods_.end()) return Err(Status::NotFound("pod not found to resume"));
  PodState& p = it->second;
  if (p.desired == "RUNNING") return RenderPod(p);
  if (p.desired == "DEAD")
    return Err(Status::FailedPrecondition("This pod failed and cannot be resumed; terminate it."));
  Pool& pool = PoolOf(p.gpu_type, p.cloud);
  if (bid && *bid < pool.min_bid) {
    return Err(Status::FailedPrecondition(
        "Your bid of $" + json(*bid).dump() + "/GPU/hr is below the minimum bid price of $" +
        json(pool.min_bid).dump() + "/GPU/hr for this GPU type."));
  }
  if (p.preempted) {
    // The pod is tied to its host, whose GPUs the competitor holds: only outbidding it gets them
    // back.
    if (!bid || *bid <= p.competitor_bid) return Err(Status::FailedPrecondition(kNoFreeGpus));
    p.preempted = false;
  } else {
    if (pool.free < p.gpu_count) return Err(Status::FailedPrecondition(kNoFreeGpus));
    pool.free -= p.gpu_count;
  }
  p.holds_gpus = true;
  if (bid) {
    p.bid = *bid;
    p.cost_per_hr = *bid * p.gpu_count;
  }
  p.desired = "RUNNING";
  p.runtime = false;
  p.phase_since = Now();
  p.last_status_change = Stamp("Resumed by User");
  return RenderPod(p);
}

Result<json> RunPodEmulator::TerminatePod(const std::string& id, Effects* fx) {
  std::lock_guard l(mu_);
  auto it = pods_.find(id);
  if (it == pods_.end()) return Err(Status::NotFound("pod not found to terminate"));
  ReleaseGpus(it->second);
  if (!it->second.local_id.empty()) fx->destroy.push_back(it->second.local_id);
  pods_.erase(it);
  return json(nullptr);
}

json RunPodEmulator::RenderPod(const PodState& p) const {
  double now = Now();
  json runtime = nullptr;
  if (p.runtime) {
    json ports = json::array();
    if (now - p.runtime_since >= o_.ports_delay_seconds) {
      std::istringstream in(p.ports);
      std::string spec;
      int k = 0;
      while (std::getline(in, spec, ',')) {
        auto slash = spec.find('/');
        std::string num = spec.substr(0, slash),
                    type = slash == std::string::npos ? "tcp" : spec.substr(slash + 1);
        if (num.empty() || !std::all_of(num.begin(), num.end(), ::isdigit) || num.size() > 5)
          continue;
        int priv = std::stoi(num);
        bool tcp = type == "tcp";
        ports.push_back({{"ip", tcp ? "127.0.0.1" : "100.65.0.101"},
                         {"isIpPublic", tcp},
                         {"privatePort", priv},
                         {"publicPort", priv == 22 ? p.ssh_port : 60000 + k},
                         {"type", type}});
        ++k;
      }
    }
    json gpus = json::array();
    for (int i = 0; i < p.gpu_count; ++i) {
      gpus.push_back({{"id", "GPU-" + p.id + "-" + std::to_string(i)},
                      {"gpuUtilPercent", 0},
                      {"memoryUtilPercent", 0}});
    }
    runtime = {{"uptimeInSeconds", static_cast<int64_t>(now - p.runtime_since)},
               {"ports", ports},
               {"gpus", gpus},
               {"container", {{"cpuPercent", 0}, {"memoryPercent", 0}}}};
  }
  json env = json::array();
  for (const auto& [k, v] : p.env) env.push_back(k + "=" + v);
  const GpuType* g = nullptr;
  for (const auto& t : gpu_types_) {
    if (t.id == p.gpu_type) g = &t;
  }
  return {
      {"id", p.id},
      {"name", p.name},
      {"containerDiskInGb", p.container_disk_gb},
      {"costPerHr", p.cost_per_hr},
      {"desiredStatus", p.desired},
      {"dockerArgs", p.docker_args},
      {"dockerId", p.runtime ? json(p.id + "-container") : json(nullptr)},
      {"env", env},
      {"gpuCount", p.gpu_count},
      {"imageName", p.image},
      {"lastStatusChange", p.last_status_change},
      {"machineId", p.machine_id},
      {"memoryInGb", p.memory_gb},
      {"podType", p.spot ? "INTERRUPTABLE" : "RESERVED"},
      {"port", nullptr},
      {"ports", p.ports},
      {"uptimeSeconds", p.runtime ? static_cast<int64_t>(now - p.runtime_since) : 0},
      {"vcpuCount", p.vcpu},
      {"volumeInGb", p.volume_gb},
      {"volumeMountPath", p.volume_mount_path},
      {"runtime", runtime},
      {"machine", {{"gpuDisplayName", g ? g->display : p.gpu_type}, {"podHostId", p.pod_host_id}}}};
}

json RunPodEmulator::RenderGpuType(const GpuType& g, const json& price_args) const {
  auto pool = [&](const char* cloud) -> const Pool* {
    auto it = pools_.find(PoolKey(g.id, cloud));
    return it == pools_.end() ? nullptr : &it->second;
  };
  const Pool* secure = g.secure ? pool("SECURE") : nullptr;
  const Pool* community = g.community ? pool("COMMUNITY") : nullptr;
  // lowestPrice(input: {gpuCount, secureCloud}): secureCloud absent = both clouds.
  int count = price_args.contains("gpuCount") && price_args["gpuCount"].is_number_integer()
                  ? price_args["gpuCount"].get<int>()
                  : 1;
  std::vector<const Pool*> pools;
  bool has_secure = price_args.contains("secureCloud") && price_args["secureCloud"].is_boolean();
  if ((!has_secure || price_args["secureCloud"].get<bool>()) && secure) pools.push_back(secure);
  if ((!has_secure || !price_args["secureCloud"].get<bool>()) && community)
    pools.push_back(community);
  json lowest = nullptr;
  if (!pools.empty()) {
    const Pool* cheapest = nullptr;
    int total = 0, most = 0;
    for (const Pool* p : pools) {
      total += p->free;
      most = std::max(most, p->free);
      bool room = p->free >= count;
      if (!cheapest || (room && (cheapest->free < count || p->price < cheapest->price)))
        cheapest = p;
    }
    json counts = json::array();
    for (int n : {1, 2, 4, 8}) {
      if (n <= g.max_count && n <= most) counts.push_back(n);
    }
    lowest = {{"minimumBidPrice", cheapest->min_bid},
              {"uninterruptablePrice", cheapest->price},
              {"stockStatus", total >= 6   ? "High"
                              : total >= 3 ? "Medium"
                              : total >= 1 ? "Low"
                                           : "None"},
              {"availableGpuCounts", counts}};
  }
  auto price = [](const Pool* p, bool spot) {
    return p ? json(spot ? p->min_bid : p->price) : json(nullptr);
  };
  return {{"id", g.id},
          {"displayName", g.display},
          {"memoryInGb", g.memory_gb},
          {"maxGpuCount", g.max_count},
          {"secureCloud", g.secure},
          {"communityCloud", g.community},
          {"securePrice", price(secure, false)},
          {"communityPrice", price(community, false)},
          {"secureSpotPrice", price(secure, true)},
          {"communitySpotPrice", price(community, true)},
          {"lowestPrice", lowest}};
}

void RunPodEmulator::Apply(const Effects& fx) {
  for (const auto& id : fx.stop) (void)local_->Stop(id);
  for (const auto& id : fx.destroy) (void)local_->Destroy(id);
}

void RunPodEmulator::TickLoop() {
  while (!stopping_) {
    Tick();
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
  }
}

void RunPodEmulator::Tick() {
  struct Boot {
    std::string pod_id;
    std::string existing;  // local machine to restart
    provider::MachineSpec spec;
  };
  std::vector<Boot> boots;
  {
    std::lock_guard l(mu_);
    double now = Now();
    for (auto& [id, p] : pods_) {
      if (p.desired != "RUNNING" || p.runtime || p.want_local ||
          now - p.phase_since < o_.pull_seconds)
        continue;
      if (p.fault == CreateFault::kNeverReady) continue;  // RUNNING, runtime null, forever
      if (p.fault == CreateFault::kFailAtBoot) {
        p.desired = "DEAD";
        p.last_status_change = Stamp("Exited by RunPod: the container failed to start (emulated)");
        ReleaseGpus(p);
        continue;
      }
      if (!o_.spawn_agents) {
        p.runtime = true;
        p.runtime_since = now;
        continue;
      }
      p.want_local = true;
      Boot b;
      b.pod_id = id;
      b.existing = p.local_id;
      b.spec.label = "runpod-" + id;
      b.spec.offer_id = PoolKey(p.gpu_type, p.cloud);
      b.spec.image = p.image;
      for (const auto& [k, v] : p.env) b.spec.env[k] = v;
      boots.push_back(std::move(b));
    }
  }
  for (auto& b : boots) {
    Status st;
    if (!b.existing.empty()) {
      st = local_->Start(b.existing);
    } else {
      auto m = local_->Create(b.spec);
      st = m ? Status::Ok() : m.error();
    }
    Effects undo;
    {
      std::lock_guard l(mu_);
      auto it = pods_.find(b.pod_id);
      if (it == pods_.end()) {
        if (st.ok()) undo.destroy.push_back(b.spec.label);  // terminated meanwhile
      } else {
        PodState& p = it->second;
        if (st.ok()) p.local_id = b.spec.label;
        if (!p.want_local || p.desired != "RUNNING") {
          if (st.ok()) undo.stop.push_back(b.spec.label);  // stopped or interrupted meanwhile
        } else if (!st.ok()) {
          p.desired = "DEAD";
          p.last_status_change =
              Stamp("Exited by RunPod: the emulated container could not start: " + st.message());
          ReleaseGpus(p);
        } else {
          p.runtime = true;
          p.runtime_since = Now();
        }
        p.want_local = false;
      }
    }
    Apply(undo);
  }
}

// ---- fault injection and inspection

void RunPodEmulator::InjectRateLimit(int n, const std::string& endpoint) {
  std::lock_guard l(mu_);
  rate_limit_[endpoint] += n;
}
void RunPodEmulator::InjectServerErrors(int n, const std::string& endpoint) {
  std::lock_guard l(mu_);
  server_errors_[endpoint] += n;
}
void RunPodEmulator::InjectInternalErrors(int n, const std::string& endpoint) {
  std::lock_guard l(mu_);
  internal_errors_[endpoint] += n;
}
void RunPodEmulator::LoseNextCreates(int n, LostMode mode) {
  std::lock_guard l(mu_);
  lost_creates_ += n;
  lost_mode_ = mode;
}
void RunPodEmulator::SetNextCreateFault(CreateFault f) {
  std::lock_guard l(mu_);
  next_fault_ = f;
}
void RunPodEmulator::TakeOffer(const std::string& gpu_type_id, const std::string& cloud) {
  for (const char* c : {"SECURE", "COMMUNITY"}) {
    if (cloud.empty() || cloud == c) SetCapacity(gpu_type_id, c, 0);
  }
}
void RunPodEmulator::SetCapacity(const std::string& gpu_type_id, const std::string& cloud,
                                 int free_gpus) {
  std::lock_guard l(mu_);
  auto it = pools_.find(PoolKey(gpu_type_id, cloud));
  if (it != pools_.end()) it->second.free = std::max(0, free_gpus);
}

Status RunPodEmulator::Preempt(const std::string& id) {
  Effects fx;
  {
    std::lock_guard l(mu_);
    auto it = pods_.find(id);
    if (it == pods_.end()) return Status::NotFound("no pod " + id);
    PodState& p = it->second;
    if (!p.spot)
      return Status::FailedPrecondition("pod " + id +
                                        " is on-demand; only interruptable pods are preempted");
    if (p.desired != "RUNNING") return Status::FailedPrecondition("pod " + id + " is not running");
    // providers.md 2.5 / 4: desiredStatus EXITED, runtime null; the agent gets SIGTERM, then
    // SIGKILL.
    p.desired = "EXITED";
    p.runtime = p.want_local = false;
    p.preempted = true;
    p.holds_gpus = false;  // the competitor has them now
    p.competitor_bid = p.bid * 1.5;
    p.last_status_change = Stamp("Exited by RunPod: interrupted (outbid)");
    if (!p.local_id.empty()) fx.stop.push_back(p.local_id);
  }
  Apply(fx);
  return Status::Ok();
}

void RunPodEmulator::ExhaustBalance() {
  Effects fx;
  {
    std::lock_guard l(mu_);
    for (auto it = pods_.begin(); it != pods_.end();) {
      PodState& p = it->second;
      ReleaseGpus(p);
      if (p.network_volume_id.empty()) {
        // providers.md 2.5: pods without a network volume are terminated.
        if (!p.local_id.empty()) fx.destroy.push_back(p.local_id);
        it = pods_.erase(it);
        continue;
      }
      if (p.desired == "RUNNING" && !p.local_id.empty()) fx.stop.push_back(p.local_id);
      p.desired = "EXITED";
      p.runtime = p.want_local = false;
      p.last_status_change = Stamp("Exited by RunPod: balance exhausted");
      ++it;
    }
  }
  Apply(fx);
}

int RunPodEmulator::InstanceCount() const {
  std::lock_guard l(mu_);
  return static_cast<int>(pods_.size());
}
int RunPodEmulator::RequestCount(const std::string& endpoint) const {
  std::lock_guard l(mu_);
  auto it = requests_.find(endpoint);
  return it == requests_.end() ? 0 : it->second;
}
int RunPodEmulator::FaultCount(const std::string& endpoint) const {
  std::lock_guard l(mu_);
  auto it = faults_.find(endpoint);
  return it == faults_.end() ? 0 : it->second;
}
std::optional<json> RunPodEmulator::Pod(const std::string& id) const {
  std::lock_guard l(mu_);
  auto it = pods_.find(id);
  if (it == pods_.end()) return std::nullopt;
  return RenderPod(it->second);
}
std::vector<json> RunPodEmulator::OfferPool() const {
  std::lock_guard l(mu_);
  std::vector<json> out;
  for (const auto& g : gpu_types_) {
    for (const char* cloud : {"SECURE", "COMMUNITY"}) {
      auto it = pools_.find(PoolKey(g.id, cloud));
      if (it == pools_.end()) continue;
      out.push_back({{"gpuTypeId", g.id},
                     {"displayName", g.display},
                     {"memoryInGb", g.memory_gb},
                     {"cloud", cloud},
                     {"free", it->second.free},
                     {"price", it->second.price},
                     {"minimumBidPrice", it->second.min_bid},
                     {"machineId", it->second.machine_id}});
    }
  }
  return out;
}
json RunPodEmulator::LastCreateInput() const {
  std::lock_guard l(mu_);
  return last_create_;
}
std::string RunPodEmulator::LastQuery(const std::string& endpoint) const {
  std::lock_guard l(mu_);
  auto it = last_query_.find(endpoint);
  return it == last_query_.end() ? "" : it->second;
}
std::optional<provider::Machine> RunPodEmulator::LocalMachine(const std::string& id) {
  std::string local;
  {
    std::lock_guard l(mu_);
    auto it = pods_.find(id);
    if (it == pods_.end()) return std::nullopt;
    local = it->second.local_id;
  }
  if (local.empty()) return std::nullopt;
  auto m = local_->Get(local);
  if (!m) return std::nullopt;
  return *m;
}

}  // namespace dumont::emulators
