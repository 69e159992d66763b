#include "http/server.h"

#include <atomic>
#include <set>
#include <thread>
#include <vector>

#include <boost/asio.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include "common/random.h"

namespace dumont::http {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = asio::ip::tcp;

Status ParseListen(const std::string& listen, std::string* host, uint16_t* port) {
  auto colon = listen.rfind(':');
  if (colon == std::string::npos) return Status::InvalidArgument("listen address must be HOST:PORT, got '" + listen + "'");
  *host = listen.substr(0, colon);
  if (host->size() > 2 && host->front() == '[' && host->back() == ']') *host = host->substr(1, host->size() - 2);
  try {
    size_t pos = 0;
    int p = std::stoi(listen.substr(colon + 1), &pos);
    if (pos != listen.size() - colon - 1 || p < 0 || p > 65535) throw std::out_of_range("port");
    *port = static_cast<uint16_t>(p);
  } catch (const std::exception&) {
    return Status::InvalidArgument("listen port must be 0..65535, got '" + listen.substr(colon + 1) + "'");
  }
  if (host->empty()) *host = "0.0.0.0";
  return Status::Ok();
}

struct Server::Impl {
  ServerOptions opts;
  HandlerFn handler;
  Logger* logger;
  asio::io_context io;
  tcp::acceptor acceptor{io};
  std::atomic<bool> stopping{false};
  std::atomic<int> active{0};
  std::unique_ptr<asio::steady_timer> force_timer;
  std::mutex sockets_mu;
  std::set<tcp::socket*> sockets;

  asio::awaitable<void> Listen();
  asio::awaitable<void> Session(tcp::socket socket);
  asio::awaitable<void> WriteError(beast::tcp_stream& stream, int status, std::string code,
                                   std::string message);
  asio::awaitable<void> WriteStream(beast::tcp_stream& stream, Response& resp, const Request& req, unsigned version);
};

namespace {

std::string ErrorBody(const std::string& code, const std::string& message) {
  std::string out = "{\"error\":{\"code\":\"" + code + "\",\"message\":\"";
  for (char c : message) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  out += "\"}}";
  return out;
}

bool ValidRequestId(const std::string& id) {
  if (id.empty() || id.size() > 64) return false;
  for (char c : id) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_' && c != '.') return false;
  }
  return true;
}

}  // namespace

asio::awaitable<void> Server::Impl::WriteError(beast::tcp_stream& stream, int status,
                                               std::string code, std::string message) {
  bhttp::response<bhttp::string_body> res{static_cast<bhttp::status>(status), 11};
  res.set(bhttp::field::content_type, "application/json");
  res.set(bhttp::field::connection, "close");
  res.body() = ErrorBody(code, message);
  res.prepare_payload();
  stream.expires_after(std::chrono::seconds(5));
  co_await bhttp::async_write(stream, res, asio::as_tuple(asio::use_awaitable));
}

asio::awaitable<void> Server::Impl::WriteStream(beast::tcp_stream& stream, Response& resp, const Request& req,
                                                unsigned version) {
  bhttp::response<bhttp::empty_body> head{static_cast<bhttp::status>(resp.status), version};
  head.set(bhttp::field::server, "dumontd");
  head.set(bhttp::field::content_type, resp.content_type);
  head.set(bhttp::field::cache_control, "no-store");
  head.set("X-Request-Id", req.request_id);
  for (const auto& [k, v] : resp.headers.items) head.set(k, v);
  head.keep_alive(false);
  head.chunked(true);
  bhttp::response_serializer<bhttp::empty_body> sr{head};
  stream.expires_after(std::chrono::seconds(30));
  auto [hec, hbytes] = co_await bhttp::async_write_header(stream, sr, asio::as_tuple(asio::use_awaitable));
  if (hec) co_return;
  asio::steady_timer timer(stream.get_executor());
  std::string chunk;
  for (;;) {
    chunk.clear();
    bool more = false;
    try {
      more = resp.stream->next(&chunk) && !stopping;
    } catch (const std::exception& e) {
      logger->Error("stream exception", {{"request_id", req.request_id}, {"error", e.what()}});
    }
    if (!chunk.empty()) {
      stream.expires_after(std::chrono::seconds(30));
      auto [wec, wn] = co_await asio::async_write(stream, bhttp::make_chunk(asio::buffer(chunk)),
                                                  asio::as_tuple(asio::use_awaitable));
      if (wec) co_return;  // the client went away
    }
    if (!more) break;
    if (chunk.empty()) {
      timer.expires_after(resp.stream->poll_interval);
      co_await timer.async_wait(asio::as_tuple(asio::use_awaitable));
    }
  }
  stream.expires_after(std::chrono::seconds(5));
  co_await asio::async_write(stream, bhttp::make_chunk_last(), asio::as_tuple(asio::use_awaitable));
}

asio::awaitable<void> Server::Impl::Session(tcp::socket socket) {
  ++active;
  beast::tcp_stream stream(std::move(socket));
  {
    std::lock_guard lock(sockets_mu);
    sockets.insert(&stream.socket());
  }
  boost::system::error_code ep_ec;
  auto remote = stream.socket().remote_endpoint(ep_ec);
  std::string client = ep_ec ? "unknown" : remote.address().to_string();
  beast::flat_buffer buffer;
  for (int n = 0;; ++n) {
    bhttp::request_parser<bhttp::string_body> parser;
    parser.body_limit(opts.body_limit);
    parser.header_limit(static_cast<uint32_t>(opts.header_limit));
    stream.expires_after(opts.read_timeout);
    auto [ec, bytes] = co_await bhttp::async_read(stream, buffer, parser, asio::as_tuple(asio::use_awaitable));
    if (ec) {
      if (ec == bhttp::error::body_limit) {
        co_await WriteError(stream, 413, "payload_too_large",
                            "request body exceeds the limit of " + std::to_string(opts.body_limit) + " bytes");
        // Drain briefly so the client reads the 413 instead of a reset.
        stream.socket().shutdown(tcp::socket::shutdown_send, ep_ec);
        char sink[16384];
        stream.expires_after(std::chrono::seconds(1));
        for (size_t drained = 0; drained < 8 * opts.body_limit;) {
          auto [rec, got] = co_await stream.async_read_some(asio::buffer(sink), asio::as_tuple(asio::use_awaitable));
          if (rec) break;
          drained += got;
        }
      } else if (ec == bhttp::error::header_limit) {
        co_await WriteError(stream, 431, "header_too_large",
                            "request headers exceed the limit of " + std::to_string(opts.header_limit) + " bytes");
      } else if (ec.category() == bhttp::make_error_code(bhttp::error::bad_target).category() &&
                 ec != bhttp::error::end_of_stream && ec != bhttp::error::partial_message) {
        co_await WriteError(stream, 400, "invalid_argument", "malformed HTTP request: " + ec.message());
      }
      // A read timeout closes the stream (Beast's tcp_stream), so nothing more can be written.
      break;
    }
    auto& breq = parser.get();
    Request req;
    req.method = std::string(breq.method_string());
    req.target = std::string(breq.target());
    if (!ParseTarget(req.target, &req.path, &req.query)) {
      co_await WriteError(stream, 400, "invalid_argument", "malformed percent-encoding in the request target");
      break;
    }
    for (const auto& f : breq) req.headers.Add(f.name_string(), f.value());
    req.body = std::move(breq.body());
    req.client_address = client;
    auto incoming_id = req.headers.Get("x-request-id");
    req.request_id = incoming_id && ValidRequestId(*incoming_id) ? *incoming_id : NewId("req_");

    auto start = std::chrono::steady_clock::now();
    Response resp;
    try {
      resp = handler(req);
    } catch (const std::exception& e) {
      resp = Response::Json(500, ErrorBody("internal", "internal error"));
      logger->Error("handler exception", {{"request_id", req.request_id}, {"error", e.what()}});
    }
    double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    if (logger->Enabled(LogLevel::kInfo) && req.path != "/health" && req.path != "/metrics") {
      char dur[32];
      std::snprintf(dur, sizeof dur, "%.2f", ms);
      logger->Info("request", {{"request_id", req.request_id}, {"method", req.method},
                               {"path", req.path}, {"status", std::to_string(resp.status)},
                               {"ms", dur}, {"client", client}});
    }

    if (resp.stream && req.method != "HEAD") {
      co_await WriteStream(stream, resp, req, breq.version());
      break;
    }
    bool keep_alive = breq.keep_alive() && n + 1 < opts.max_requests_per_connection && !stopping;
    bhttp::response<bhttp::string_body> bres{static_cast<bhttp::status>(resp.status), breq.version()};
    bres.set(bhttp::field::server, "dumontd");
    bres.set(bhttp::field::content_type, resp.content_type);
    bres.set("X-Request-Id", req.request_id);
    for (const auto& [k, v] : resp.headers.items) bres.set(k, v);
    if (req.method != "HEAD") bres.body() = std::move(resp.body);
    bres.keep_alive(keep_alive);
    bres.prepare_payload();
    if (req.method == "HEAD") bres.content_length(resp.body.size());
    stream.expires_after(std::chrono::seconds(60));
    auto [wec, wbytes] = co_await bhttp::async_write(stream, bres, asio::as_tuple(asio::use_awaitable));
    if (wec || !keep_alive) break;
  }
  stream.socket().shutdown(tcp::socket::shutdown_send, ep_ec);
  {
    std::lock_guard lock(sockets_mu);
    sockets.erase(&stream.socket());
  }
  if (--active == 0 && stopping) io.stop();
}

asio::awaitable<void> Server::Impl::Listen() {
  for (;;) {
    auto [ec, socket] = co_await acceptor.async_accept(asio::as_tuple(asio::use_awaitable));
    if (ec) {
      if (stopping || ec == asio::error::operation_aborted) co_return;
      // EMFILE and friends: back off briefly instead of spinning.
      logger->Warn("accept failed", {{"error", ec.message()}});
      asio::steady_timer t(io, std::chrono::milliseconds(50));
      co_await t.async_wait(asio::as_tuple(asio::use_awaitable));
      continue;
    }
    if (stopping) co_return;
    asio::co_spawn(io, Session(std::move(socket)), asio::detached);
  }
}

Server::Server(ServerOptions opts, HandlerFn handler, Logger* logger)
    : impl_(std::make_unique<Impl>()) {
  impl_->opts = std::move(opts);
  impl_->handler = std::move(handler);
  impl_->logger = logger;
}

Server::~Server() = default;

Status Server::Start() {
  boost::system::error_code ec;
  auto addr = asio::ip::make_address(impl_->opts.host, ec);
  if (ec) return Status::InvalidArgument("cannot listen on '" + impl_->opts.host + "': not an IP address");
  tcp::endpoint ep(addr, impl_->opts.port);
  impl_->acceptor.open(ep.protocol(), ec);
  if (!ec) impl_->acceptor.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) impl_->acceptor.bind(ep, ec);
  if (!ec) impl_->acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    return Status::Unavailable("cannot listen on " + impl_->opts.host + ":" +
                               std::to_string(impl_->opts.port) + ": " + ec.message() +
                               " (is another dumontd running? choose another port with --listen)");
  }
  asio::co_spawn(impl_->io, impl_->Listen(), asio::detached);
  return Status::Ok();
}

uint16_t Server::port() const {
  boost::system::error_code ec;
  auto ep = impl_->acceptor.local_endpoint(ec);
  return ec ? 0 : ep.port();
}

void Server::Run() {
  auto guard = asio::make_work_guard(impl_->io);
  std::vector<std::thread> threads;
  int n = std::max(1, impl_->opts.threads);
  for (int i = 1; i < n; ++i) threads.emplace_back([this] { impl_->io.run(); });
  // Release the work guard once stopping so that run() returns when sessions are done.
  asio::steady_timer watcher(impl_->io);
  std::function<void()> watch = [&] {
    watcher.expires_after(std::chrono::milliseconds(50));
    watcher.async_wait([&](boost::system::error_code) {
      if (impl_->stopping) {
        guard.reset();
        if (impl_->active == 0) impl_->io.stop();
        return;
      }
      watch();
    });
  };
  watch();
  impl_->io.run();
  for (auto& t : threads) t.join();
}

void Server::Stop() {
  if (impl_->stopping.exchange(true)) return;
  asio::post(impl_->io, [this] {
    boost::system::error_code ec;
    impl_->acceptor.close(ec);
    // Idle keep-alive connections wait in async_read: cancel their reads once the grace period ends,
    // and close idle sockets promptly.
    impl_->force_timer = std::make_unique<asio::steady_timer>(impl_->io, impl_->opts.shutdown_grace);
    impl_->force_timer->async_wait([this](boost::system::error_code) { impl_->io.stop(); });
    std::lock_guard lock(impl_->sockets_mu);
    for (auto* s : impl_->sockets) {
      // Shutting down the receive side ends reads that are waiting for a next request; a request
      // being handled still gets its response written.
      s->shutdown(tcp::socket::shutdown_receive, ec);
    }
    if (impl_->active == 0) impl_->io.stop();
  });
}

}  // namespace dumont::http
