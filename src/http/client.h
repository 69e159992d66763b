// A small blocking HTTP client over libcurl, for the CLI, the agent and tests.
// Connection failures return Unavailable with a message naming the URL; HTTP error statuses are not
// errors here (the caller reads status and body).
#pragma once

#include <chrono>
#include <map>
#include <string>
#include <vector>

#include "common/status.h"

namespace dumont::http {

struct ClientResponse {
  int status = 0;
  std::string body;
  std::map<std::string, std::string> headers;  // lower-case names
};

struct ClientRequest {
  std::string method = "GET";
  std::string url;
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;
  std::chrono::milliseconds timeout{30000};
};

Result<ClientResponse> Fetch(const ClientRequest& req);

}  // namespace dumont::http
