#include "http/router.h"

#include <chrono>
#include <sstream>

namespace dumont::http {
namespace {

std::vector<std::string> SplitPath(const std::string& path) {
  std::vector<std::string> out;
  size_t i = 0;
  while (i < path.size()) {
    while (i < path.size() && path[i] == '/') ++i;
    size_t j = path.find('/', i);
    if (j == std::string::npos) j = path.size();
    if (j > i) out.push_back(path.substr(i, j - i));
    i = j;
  }
  return out;
}

bool IsParam(const std::string& seg) { return seg.size() > 2 && seg.front() == '{' && seg.back() == '}'; }

bool TypeMatches(JsonType t, const nlohmann::json& v) {
  switch (t) {
    case JsonType::kString: return v.is_string();
    case JsonType::kInteger: return v.is_number_integer();
    case JsonType::kNumber: return v.is_number();
    case JsonType::kBoolean: return v.is_boolean();
    case JsonType::kObject: return v.is_object();
    case JsonType::kArray: return v.is_array();
  }
  return false;
}

}  // namespace

std::string_view JsonTypeName(JsonType t) {
  switch (t) {
    case JsonType::kString: return "string";
    case JsonType::kInteger: return "integer";
    case JsonType::kNumber: return "number";
    case JsonType::kBoolean: return "boolean";
    case JsonType::kObject: return "object";
    case JsonType::kArray: return "array";
  }
  return "string";
}

int HttpStatusFor(const Status& st) {
  switch (st.code()) {
    case Code::kOk: return 200;
    case Code::kInvalidArgument: return 400;
    case Code::kNotFound: return 404;
    case Code::kAlreadyExists: return 409;
    case Code::kConflict: return 409;
    case Code::kUnauthenticated: return 401;
    case Code::kPermissionDenied: return 403;
    case Code::kResourceExhausted: return 429;
    case Code::kPayloadTooLarge: return 413;
    case Code::kFailedPrecondition: return 409;
    case Code::kUnavailable: return 503;
    case Code::kDeadlineExceeded: return 504;
    case Code::kUnimplemented: return 501;
    case Code::kCorruption:
    case Code::kIOError:
    case Code::kInternal: return 500;
  }
  return 500;
}

Response JsonResponse(int status, const nlohmann::json& body) {
  return Response::Json(status, body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
}

Response ErrorResponse(const Status& st) {
  nlohmann::json err = {{"code", std::string(CodeName(st.code()))}, {"message", st.message()}};
  if (st.field()) err["field"] = *st.field();
  Response r = JsonResponse(HttpStatusFor(st), {{"error", err}});
  if (st.retry_after_s()) r.headers.Set("Retry-After", std::to_string(*st.retry_after_s()));
  if (st.code() == Code::kUnauthenticated) r.headers.Set("WWW-Authenticate", "Bearer");
  return r;
}

Status ValidateBody(const std::vector<Field>& fields, const nlohmann::json& body) {
  if (!body.is_object()) {
    return Status::InvalidArgument("request body must be a JSON object");
  }
  for (const auto& f : fields) {
    auto it = body.find(f.name);
    if (it == body.end() || it->is_null()) {
      if (f.required) {
        return Status::InvalidField(f.name, "missing required field '" + f.name + "' (" +
                                                std::string(JsonTypeName(f.type)) + ")");
      }
      continue;
    }
    if (!TypeMatches(f.type, *it)) {
      return Status::InvalidField(f.name, "field '" + f.name + "' must be a " +
                                              std::string(JsonTypeName(f.type)) + ", got " +
                                              it->type_name());
    }
  }
  for (const auto& [k, v] : body.items()) {
    bool known = false;
    for (const auto& f : fields) known = known || f.name == k;
    if (!known) {
      std::string names;
      for (const auto& f : fields) names += (names.empty() ? "" : ", ") + f.name;
      return Status::InvalidField(k, "unknown field '" + k + "'; this route accepts: " + names);
    }
  }
  return Status::Ok();
}

void Router::Add(RouteSpec spec, Handler handler) {
  Route r{std::move(spec), std::move(handler), {}};
  r.segments = SplitPath(r.spec.path);
  routes_.push_back(std::move(r));
}

const Router::Route* Router::Match(const std::string& path, const std::string& method,
                                   std::map<std::string, std::string>* params, bool* path_matched,
                                   std::string* allowed) const {
  auto segs = SplitPath(path);
  // /api/X is an alias of /api/v1/X.
  if (segs.size() >= 2 && segs[0] == "api" && segs[1] != "v1") segs.insert(segs.begin() + 1, "v1");
  *path_matched = false;
  const Route* found = nullptr;
  int best = -1;
  for (const auto& r : routes_) {
    if (r.segments.size() != segs.size()) continue;
    std::map<std::string, std::string> p;
    bool ok = true;
    int literals = 0;
    for (size_t i = 0; i < segs.size() && ok; ++i) {
      if (IsParam(r.segments[i])) {
        p[r.segments[i].substr(1, r.segments[i].size() - 2)] = segs[i];
      } else if (r.segments[i] != segs[i]) {
        ok = false;
      } else {
        ++literals;
      }
    }
    if (!ok) continue;
    *path_matched = true;
    if (allowed->find(r.spec.method) == std::string::npos) {
      if (!allowed->empty()) *allowed += ", ";
      *allowed += r.spec.method;
    }
    // The most specific route wins: /instances/offers before /instances/{id}.
    if ((r.spec.method == method || (method == "HEAD" && r.spec.method == "GET")) && literals > best) {
      found = &r;
      best = literals;
      *params = std::move(p);
    }
  }
  return found;
}

Response Router::Dispatch(Request& req, std::string* route_label) {
  std::map<std::string, std::string> params;
  bool path_matched = false;
  std::string allowed;
  const Route* route = Match(req.path, req.method, &params, &path_matched, &allowed);
  if (!route) {
    if (path_matched) {
      *route_label = "method_not_allowed";
      Response r = ErrorResponse(Status(Code::kInvalidArgument, "method " + req.method +
                                                                    " is not allowed on " + req.path +
                                                                    "; allowed: " + allowed));
      r.status = 405;
      r.headers.Set("Allow", allowed);
      return r;
    }
    if (fallback_ && (req.method == "GET" || req.method == "HEAD") && req.path.rfind("/api/", 0) != 0) {
      if (auto r = fallback_(req)) {
        *route_label = "static";
        return std::move(*r);
      }
    }
    *route_label = "unmatched";
    return ErrorResponse(Status::NotFound("no route for " + req.method + " " + req.path +
                                          "; see /api/v1/openapi.json"));
  }
  *route_label = route->spec.path;
  Context ctx{req, route->spec, std::move(params), nullptr, std::nullopt};

  if (route->spec.auth != Auth::kNone) {
    if (!auth_) return ErrorResponse(Status::Internal("no authenticator configured"));
    auto p = auth_->Authenticate(req);
    if (!p) return ErrorResponse(p.error());
    ctx.principal = *p;
    if (route->spec.auth == Auth::kAdmin && p->role != "admin") {
      return ErrorResponse(Status::PermissionDenied("this route needs the admin role"));
    }
    if (route->spec.mutation && p->role == "readonly") {
      return ErrorResponse(
          Status::PermissionDenied("your role is readonly: it can read but not change anything"));
    }
  }

  if (!route->spec.body.empty()) {
    bool all_optional = true;
    for (const auto& f : route->spec.body) all_optional = all_optional && !f.required;
    if (req.body.find_first_not_of(" \t\r\n") == std::string::npos && all_optional) {
      ctx.body = nlohmann::json::object();
    } else {
      // The body is parsed as JSON whatever the Content-Type says (curl -d sends form encoding).
      nlohmann::json body = nlohmann::json::parse(req.body, nullptr, /*allow_exceptions=*/false);
      if (body.is_discarded()) {
        return ErrorResponse(Status::InvalidArgument(
            req.body.empty() ? "request body is empty; send a JSON object"
                             : "request body is not valid JSON"));
      }
      Status st = ValidateBody(route->spec.body, body);
      if (!st.ok()) return ErrorResponse(st);
      ctx.body = std::move(body);
    }
  }

  try {
    auto res = route->handler(ctx);
    if (!res) return ErrorResponse(res.error());
    return std::move(*res);
  } catch (const nlohmann::json::exception& e) {
    // A handler read a value of the wrong type from a body that passed declared validation.
    return ErrorResponse(Status::InvalidArgument(std::string("invalid request: ") + e.what()));
  } catch (const std::exception& e) {
    if (logger_) logger_->Error("handler threw", {{"route", route->spec.path}, {"error", e.what()}});
    return ErrorResponse(Status::Internal("internal error; see the server log for request " + req.request_id));
  }
}

Response Router::Handle(Request& req) {
  auto start = std::chrono::steady_clock::now();
  std::string label;
  Response resp = Dispatch(req, &label);
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (metrics_) metrics_->Observe(req.method, label, resp.status, secs);
  return resp;
}

nlohmann::json OpenApiDocument(const Router& router, const std::string& version) {
  using nlohmann::json;
  json paths = json::object();
  for (const auto& r : router.routes()) {
    const auto& s = r.spec;
    json op = {{"summary", s.summary}, {"tags", json::array({s.tag})}};
    std::string method = s.method;
    for (auto& c : method) c = static_cast<char>(std::tolower(c));
    op["operationId"] = method + s.path;
    json params = json::array();
    for (const auto& seg : r.segments) {
      if (IsParam(seg)) {
        params.push_back({{"name", seg.substr(1, seg.size() - 2)},
                          {"in", "path"},
                          {"required", true},
                          {"schema", {{"type", "string"}}}});
      }
    }
    for (const auto& q : s.query) {
      params.push_back({{"name", q.name},
                        {"in", "query"},
                        {"required", q.required},
                        {"description", q.description},
                        {"schema", {{"type", std::string(JsonTypeName(q.type))}}}});
    }
    if (!params.empty()) op["parameters"] = params;
    if (!s.body.empty()) {
      json props = json::object();
      json required = json::array();
      for (const auto& f : s.body) {
        props[f.name] = {{"type", std::string(JsonTypeName(f.type))}, {"description", f.description}};
        if (f.required) required.push_back(f.name);
      }
      json schema = {{"type", "object"}, {"properties", props}, {"additionalProperties", false}};
      if (!required.empty()) schema["required"] = required;
      op["requestBody"] = {{"required", !required.empty()},
                           {"content", {{"application/json", {{"schema", schema}}}}}};
    }
    json responses = json::object();
    responses[std::to_string(s.success_status)] = {
        {"description", s.response_description},
        {"content", {{s.produces, json::object()}}}};
    json err_ref = {{"$ref", "#/components/responses/Error"}};
    if (!s.body.empty() || !s.query.empty()) responses["400"] = err_ref;
    if (!s.body.empty()) responses["413"] = err_ref;
    if (s.auth != Auth::kNone) {
      responses["401"] = err_ref;
      op["security"] = json::array({{{"bearer", json::array()}}});
    } else {
      op["security"] = json::array();
    }
    if (s.auth == Auth::kAdmin || s.mutation) responses["403"] = err_ref;
    if (!s.owned_resource.empty()) responses["404"] = err_ref;
    op["responses"] = responses;
    paths[s.path][method] = op;
  }
  json error_schema = {
      {"type", "object"},
      {"required", {"error"}},
      {"properties",
       {{"error",
         {{"type", "object"},
          {"required", {"code", "message"}},
          {"properties",
           {{"code", {{"type", "string"}}},
            {"message", {{"type", "string"}}},
            {"field", {{"type", "string"}}}}}}}}}};
  return {
      {"openapi", "3.0.3"},
      {"info",
       {{"title", "Dumont Cloud API"},
        {"version", version},
        {"description",
         "Every /api/v1/X route also answers at /api/X. Errors are {\"error\":{\"code\",\"message\"}}."}}},
      {"paths", paths},
      {"components",
       {{"securitySchemes",
         {{"bearer",
           {{"type", "http"},
            {"scheme", "bearer"},
            {"description", "A JWT access token from /api/v1/auth/login, or an API key (dk_...)"}}}}},
        {"schemas", {{"Error", error_schema}}},
        {"responses",
         {{"Error",
           {{"description", "An error"},
            {"content",
             {{"application/json", {{"schema", {{"$ref", "#/components/schemas/Error"}}}}}}}}}}}}}};
}

}  // namespace dumont::http
