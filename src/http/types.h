// Transport-neutral request/response types. Only server.cc knows Boost.Beast; everything else in the
// codebase (router, API handlers, tests) works on these.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace dumont::http {

// Header names are stored lower-case.
struct Headers {
  std::vector<std::pair<std::string, std::string>> items;
  void Add(std::string_view name, std::string_view value);
  void Set(std::string_view name, std::string_view value);
  std::optional<std::string> Get(std::string_view name) const;  // case-insensitive
};

struct Request {
  std::string method;  // "GET"
  std::string target;  // raw "/api/v1/x?y=1"
  std::string path;    // decoded path without query
  std::map<std::string, std::string> query;
  Headers headers;
  std::string body;
  std::string client_address;
  std::string request_id;
};

// A streamed body (server-sent events). The server sends the headers with chunked transfer encoding,
// then calls next() until it returns false, sending what it appended to *out as one chunk. When next()
// appends nothing, the server waits poll_interval on a timer (no thread is held) before calling again.
// The stream also ends when the client goes away or the server stops; the connection then closes.
struct BodyStream {
  std::function<bool(std::string* out)> next;
  std::chrono::milliseconds poll_interval{250};
};

struct Response {
  int status = 200;
  std::string content_type = "application/json";
  Headers headers;
  std::string body;
  std::shared_ptr<BodyStream> stream;  // set: body is ignored and the response is streamed

  static Response Json(int status, std::string body) {
    Response r;
    r.status = status;
    r.body = std::move(body);
    return r;
  }
  static Response Text(int status, std::string body, std::string content_type) {
    Response r;
    r.status = status;
    r.content_type = std::move(content_type);
    r.body = std::move(body);
    return r;
  }
};

// Splits "path?query" and percent-decodes both parts. Returns false on a malformed escape.
bool ParseTarget(std::string_view target, std::string* path, std::map<std::string, std::string>* query);
std::string PercentDecode(std::string_view in, bool* ok, bool plus_is_space);
std::string_view ReasonPhrase(int status);

}  // namespace dumont::http
