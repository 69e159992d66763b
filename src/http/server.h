// HTTP/1.1 server on Boost.Beast (the only file that includes Beast). Listener -> session -> handler;
// the handler is a function of the request. Per connection: body limit (413), header limit (431),
// read timeout, keep-alive with a cap on requests per connection. Requests on one connection are
// handled one at a time, so at most one response is ever queued per connection (pipelined requests
// wait in the socket buffer: natural backpressure).
// Stop() is graceful: stop accepting, let in-flight requests finish (keep-alive connections close
// after their current response), then force-close after the grace period.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "common/log.h"
#include "common/status.h"
#include "http/types.h"

namespace dumont::http {

struct ServerOptions {
  std::string host = "127.0.0.1";
  uint16_t port = 8765;  // 0 = any free port
  size_t body_limit = 1 << 20;
  size_t header_limit = 16 * 1024;
  std::chrono::seconds read_timeout{30};
  int max_requests_per_connection = 1000;
  int threads = 4;
  std::chrono::seconds shutdown_grace{10};
};

class Server {
 public:
  using HandlerFn = std::function<Response(Request&)>;
  Server(ServerOptions opts, HandlerFn handler, Logger* logger);
  ~Server();

  Status Start();           // binds and listens; error if the address is unusable
  uint16_t port() const;    // the bound port (after Start)
  void Run();               // serves until Stop(); returns when all threads have finished
  void Stop();              // graceful; safe from any thread or a signal-watching thread

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Splits "host:port"; port must be 0..65535.
Status ParseListen(const std::string& listen, std::string* host, uint16_t* port);

}  // namespace dumont::http
