// The HTTP server's limits and lifecycle, exercised over raw sockets.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include "http/router.h"
#include "http/server.h"
#include "http/types.h"

namespace dumont::http {
namespace {

class RawConn {
 public:
  explicit RawConn(uint16_t port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
    timeval tv{10, 0};
    setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  }
  ~RawConn() { ::close(fd_); }
  bool connected() const { return connected_; }
  void Send(const std::string& s) { ASSERT_EQ(::send(fd_, s.data(), s.size(), MSG_NOSIGNAL), (ssize_t)s.size()); }
  // Reads until `needle` has arrived (or the peer closes).
  std::string ReadUntil(const std::string& needle) {
    std::string out;
    char buf[4096];
    while (out.find(needle) == std::string::npos) {
      ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
      if (n <= 0) break;
      out.append(buf, n);
    }
    return out;
  }
  // Reads until the peer closes (or 10 s pass).
  std::string ReadAll() {
    std::string out;
    char buf[4096];
    for (;;) {
      ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
      if (n <= 0) break;
      out.append(buf, n);
    }
    return out;
  }

 private:
  int fd_;
  bool connected_ = false;
};

int Count(const std::string& hay, const std::string& needle) {
  int n = 0;
  for (size_t p = 0; (p = hay.find(needle, p)) != std::string::npos; p += needle.size()) ++n;
  return n;
}

class ServerTest : public ::testing::Test {
 protected:
  void Start(ServerOptions opts) {
    opts.port = 0;
    opts.shutdown_grace = std::chrono::seconds(2);
    router_.Add(RouteSpec{.method = "GET", .path = "/ping", .summary = "ping", .tag = "t", .auth = Auth::kNone},
                [](Context&) -> Result<Response> { return JsonResponse(200, {{"pong", true}}); });
    router_.Add(RouteSpec{.method = "GET", .path = "/slow", .summary = "slow", .tag = "t", .auth = Auth::kNone},
                [](Context&) -> Result<Response> {
                  std::this_thread::sleep_for(std::chrono::milliseconds(400));
                  return JsonResponse(200, {{"slow", "done"}});
                });
    router_.Add(RouteSpec{.method = "POST", .path = "/echo/{name}", .summary = "echo", .tag = "t",
                          .auth = Auth::kNone, .body = {{"n", JsonType::kInteger, true, ""}}},
                [](Context& c) -> Result<Response> {
                  return JsonResponse(200, {{"name", c.params["name"]}, {"n", c.body["n"]}});
                });
    server_ = std::make_unique<Server>(opts, [this](Request& r) { return router_.Handle(r); }, &logger_);
    ASSERT_TRUE(server_->Start().ok());
    port_ = server_->port();
    thread_ = std::thread([this] { server_->Run(); });
  }
  void TearDown() override {
    if (server_) {
      server_->Stop();
      thread_.join();
    }
  }
  Logger logger_{stderr, LogLevel::kError};
  Router router_{nullptr, nullptr};
  std::unique_ptr<Server> server_;
  std::thread thread_;
  uint16_t port_ = 0;
};

TEST_F(ServerTest, PipelinedRequestsAllAnsweredInOrderAndKeepAliveCapCloses) {
  ServerOptions o;
  o.max_requests_per_connection = 3;
  Start(o);
  RawConn c(server_->port());
  ASSERT_TRUE(c.connected());
  std::string req = "GET /ping HTTP/1.1\r\nHost: x\r\n\r\n";
  c.Send(req + req + req + req + req);
  std::string all = c.ReadAll();  // server closes after the 3rd
  EXPECT_EQ(Count(all, "HTTP/1.1 200 OK"), 3) << all;
  EXPECT_EQ(Count(all, "Connection: close"), 1);
}

TEST_F(ServerTest, PathParamsAndJsonBody) {
  Start({});
  RawConn c(server_->port());
  std::string body = R"({"n": 7})";
  c.Send("POST /echo/hello%20world HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: " +
         std::to_string(body.size()) + "\r\n\r\n" + body);
  std::string all = c.ReadAll();
  EXPECT_NE(all.find("200 OK"), std::string::npos);
  EXPECT_NE(all.find(R"({"n":7,"name":"hello world"})"), std::string::npos) << all;
}

TEST_F(ServerTest, HeaderLimitGives431) {
  ServerOptions o;
  o.header_limit = 2048;
  Start(o);
  RawConn c(server_->port());
  c.Send("GET /ping HTTP/1.1\r\nHost: x\r\nX-Big: " + std::string(4096, 'a') + "\r\n\r\n");
  std::string all = c.ReadAll();
  EXPECT_NE(all.find("431"), std::string::npos) << all;
}

TEST_F(ServerTest, BodyLimitGives413EvenWithoutContentLengthUpFront) {
  ServerOptions o;
  o.body_limit = 1024;
  Start(o);
  {
    RawConn c(server_->port());
    c.Send("POST /echo/a HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n" + std::string(5000, 'x'));
    EXPECT_NE(c.ReadAll().find("413"), std::string::npos);
  }
  {
    RawConn c(server_->port());
    c.Send("POST /echo/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n800\r\n" + std::string(2048, 'x') +
           "\r\n0\r\n\r\n");
    EXPECT_NE(c.ReadAll().find("413"), std::string::npos);
  }
}

TEST_F(ServerTest, GarbageGets400AndTheServerLivesOn) {
  Start({});
  for (std::string junk : {std::string("HELLO\r\n\r\n"), std::string("GET / HTTP/9.9\r\n\r\n"),
                           std::string("GET /ping HTTP/1.1\r\nContent-Length: -5\r\n\r\n"),
                           std::string("\x00\x01\x02\r\n\r\n", 7)}) {
    RawConn c(server_->port());
    c.Send(junk);
    std::string all = c.ReadAll();
    EXPECT_NE(all.find("400"), std::string::npos) << junk;
  }
  RawConn ok(server_->port());
  ok.Send("GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  EXPECT_NE(ok.ReadAll().find("pong"), std::string::npos);
}

TEST_F(ServerTest, SlowClientIsCutOffAtTheReadTimeout) {
  ServerOptions o;
  o.read_timeout = std::chrono::seconds(1);
  Start(o);
  RawConn c(server_->port());
  c.Send("GET /ping HTTP/1.1\r\nHost: x\r\n");  // never finishes the header
  auto t0 = std::chrono::steady_clock::now();
  std::string all = c.ReadAll();
  auto waited = std::chrono::steady_clock::now() - t0;
  // Beast closes a timed-out stream; the client sees the connection end, not a hang.
  EXPECT_GE(waited, std::chrono::milliseconds(900));
  EXPECT_LT(waited, std::chrono::seconds(8));
  EXPECT_EQ(all.find("200"), std::string::npos) << all;
}

TEST_F(ServerTest, StopFinishesInFlightRequestsAndClosesIdleConnections) {
  Start({});
  RawConn idle(server_->port());
  idle.Send("GET /ping HTTP/1.1\r\nHost: x\r\n\r\n");
  ASSERT_NE(idle.ReadUntil("pong").find("pong"), std::string::npos);  // now idle in keep-alive
  RawConn busy(server_->port());
  busy.Send("GET /slow HTTP/1.1\r\nHost: x\r\n\r\n");
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // the handler is running
  auto t0 = std::chrono::steady_clock::now();
  server_->Stop();
  std::string slow = busy.ReadAll();
  EXPECT_NE(slow.find("done"), std::string::npos) << "in-flight request was cut: " << slow;
  EXPECT_NE(slow.find("Connection: close"), std::string::npos);
  EXPECT_EQ(idle.ReadAll(), "");  // closed without another response
  thread_.join();
  server_.reset();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(2));
  RawConn after(port_);
  EXPECT_FALSE(after.connected()) << "still accepting after Stop";
}

TEST(ParseTarget, DecodesPathAndQuery) {
  std::string path;
  std::map<std::string, std::string> q;
  ASSERT_TRUE(ParseTarget("/a%2Fb/c?x=1&y=a+b&z=%41&flag", &path, &q));
  EXPECT_EQ(path, "/a/b/c");
  EXPECT_EQ(q["x"], "1");
  EXPECT_EQ(q["y"], "a b");
  EXPECT_EQ(q["z"], "A");
  EXPECT_EQ(q.count("flag"), 1u);
  EXPECT_FALSE(ParseTarget("/%zz", &path, &q));
  EXPECT_FALSE(ParseTarget("/a?x=%4", &path, &q));
}

TEST(ParseListen, AcceptsHostPortAndRejectsNonsense) {
  std::string host;
  uint16_t port;
  ASSERT_TRUE(ParseListen("127.0.0.1:8765", &host, &port).ok());
  EXPECT_EQ(host, "127.0.0.1");
  EXPECT_EQ(port, 8765);
  ASSERT_TRUE(ParseListen("[::1]:0", &host, &port).ok());
  EXPECT_EQ(host, "::1");
  EXPECT_FALSE(ParseListen("localhost", &host, &port).ok());
  EXPECT_FALSE(ParseListen("h:99999", &host, &port).ok());
  EXPECT_FALSE(ParseListen("h:12ab", &host, &port).ok());
}

}  // namespace
}  // namespace dumont::http
