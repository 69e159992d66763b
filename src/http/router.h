// Router: route table with path parameters, authentication and role checks, JSON body validation
// against each route's declared fields, and the one place that maps Status to HTTP.
// The route table is data: OpenAPI is generated from it and the route-walking test iterates it, so a
// route cannot exist without its contract.
//
// Check order for a matched route: authentication (401) -> role (403) -> body (400) -> handler.
// Every /api/v1/X route also answers at /api/X.
#pragma once

#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/log.h"
#include "common/status.h"
#include "http/metrics.h"
#include "http/types.h"

namespace dumont::http {

enum class JsonType { kString, kInteger, kNumber, kBoolean, kObject, kArray };
std::string_view JsonTypeName(JsonType t);

struct Field {
  std::string name;
  JsonType type = JsonType::kString;
  bool required = true;
  std::string description;
};

enum class Auth { kNone, kUser, kAdmin };

struct Principal {
  std::string user_id;
  std::string email;
  std::string role;        // admin | user | readonly
  std::string session_id;  // refresh-token family of the access token; empty for API keys
  std::string api_key_id;  // set when authenticated by API key
};

struct RouteSpec {
  std::string method;  // GET POST PUT PATCH DELETE
  std::string path;    // "/api/v1/auth/api-keys/{id}"
  std::string summary;
  std::string tag;
  Auth auth = Auth::kUser;
  bool mutation = false;          // readonly role gets 403
  std::vector<Field> body;        // declared JSON body fields (object); empty = no body expected
  std::vector<Field> query;       // documented query parameters
  std::string owned_resource;     // non-empty: {id} names a resource owned by one user (404 to others)
  int success_status = 200;
  std::string response_description = "OK";
  std::string produces = "application/json";
};

struct Context {
  Request& request;
  const RouteSpec& route;
  std::map<std::string, std::string> params;
  nlohmann::json body;  // object when the route declares fields, else null
  std::optional<Principal> principal;
};

using Handler = std::function<Result<Response>(Context&)>;

class Authenticator {
 public:
  virtual ~Authenticator() = default;
  virtual Result<Principal> Authenticate(const Request& req) = 0;
};

int HttpStatusFor(const Status& st);
Response ErrorResponse(const Status& st);
Response JsonResponse(int status, const nlohmann::json& body);

class Router {
 public:
  Router(Metrics* metrics, Logger* logger) : metrics_(metrics), logger_(logger) {}
  void SetAuthenticator(Authenticator* a) { auth_ = a; }
  // Consulted for GET/HEAD requests no route matches (the web console's static files).
  void SetFallback(std::function<std::optional<Response>(const Request&)> f) { fallback_ = std::move(f); }
  void Add(RouteSpec spec, Handler handler);
  // Never throws; every failure becomes an error response.
  Response Handle(Request& req);

  struct Route {
    RouteSpec spec;
    Handler handler;
    std::vector<std::string> segments;
  };
  const std::vector<Route>& routes() const { return routes_; }

 private:
  const Route* Match(const std::string& path, const std::string& method,
                     std::map<std::string, std::string>* params, bool* path_matched,
                     std::string* allowed) const;
  Response Dispatch(Request& req, std::string* route_label);

  Metrics* metrics_;
  Logger* logger_;
  Authenticator* auth_ = nullptr;
  std::function<std::optional<Response>(const Request&)> fallback_;
  std::vector<Route> routes_;
};

// Validates a parsed JSON body against declared fields: missing required fields, wrong types and
// unknown fields are errors naming the field.
Status ValidateBody(const std::vector<Field>& fields, const nlohmann::json& body);

// OpenAPI 3.0 document for every route.
nlohmann::json OpenApiDocument(const Router& router, const std::string& version);

}  // namespace dumont::http
