// api_loadgen: an open-loop, constant-rate heartbeat load generator (what wrk2 -R does; Debian's
// wrk has no rate option). Used by bench/api_bench.sh for the "100k agents" scenario.
//
//   api_loadgen --target 127.0.0.1:8765 --agents FILE --rate 10000 --duration 300
//               [--connections 64] [--threads 1] [--json OUT]
//
// FILE has "token instance_id" lines (bench/api_seed writes it). Request k is due at
// start + k/rate; it goes out on the next idle keep-alive connection, and its latency is measured
// from when it was due, not from when it was sent, so a slow server cannot hide its queueing
// (no coordinated omission). Every request is a different agent (round robin over FILE).
// Counted as errors: non-2xx answers, socket errors (connect/read/write failures, a connection
// closed with a request in flight) and requests without an answer 10 s after they were sent.
// (Results in bench/results/api.json from 2026-11-25 14:26 were made by a version that timed out 10 s
// after the due time, cancelling late-but-answered requests once the server fell 10 s behind.)
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;
int64_t NowNs() { return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count(); }

struct Agent {
  std::string token, instance;
};

struct Options {
  std::string host = "127.0.0.1";
  int port = 8765;
  std::string agents_file, json_out;
  double rate = 10000;
  double duration_s = 60;
  int connections = 64;
  int threads = 1;
};

struct Conn {
  int fd = -1;
  bool connected = false, busy = false;
  int64_t due_ns = 0;   // when the request in flight was due (latency is measured from here)
  int64_t sent_ns = 0;  // when it was written (the 10 s timeout is measured from here)
  std::string out;
  size_t out_off = 0;
  std::string in;
};

struct Stats {
  std::vector<uint32_t> lat_us;
  std::map<int, int64_t> status;
  int64_t sent = 0, ok = 0, non2xx = 0, socket_errors = 0, timeouts = 0, connects = 0;
  std::vector<int64_t> per_second;  // completed (any status) per second of the run
};

class Worker {
 public:
  Worker(const Options& o, const std::vector<Agent>& agents, int index, int64_t start_ns)
      : o_(o), agents_(agents), index_(index), start_ns_(start_ns) {
    conns_.resize(o.connections / o.threads + (index < o.connections % o.threads ? 1 : 0));
    rate_ = o.rate / o.threads;
    next_agent_ = index;
    stats_.per_second.assign(static_cast<size_t>(std::ceil(o.duration_s)) + 1, 0);
  }
  Stats& stats() { return stats_; }

  void Run() {
    ep_ = epoll_create1(0);
    for (size_t i = 0; i < conns_.size(); ++i) Connect(i);
    int64_t end_ns = start_ns_ + static_cast<int64_t>(o_.duration_s * 1e9);
    int64_t interval = static_cast<int64_t>(1e9 / rate_);
    int64_t k = 0;
    epoll_event evs[256];
    for (;;) {
      int64_t now = NowNs();
      // Send every request that is due, as far as idle connections allow.
      for (;;) {
        int64_t due = start_ns_ + k * interval;
        if (due > now || due >= end_ns) break;
        int c = IdleConn();
        if (c < 0) break;
        Send(c, due);
        ++k;
      }
      bool sending_done = start_ns_ + k * interval >= end_ns;
      if (sending_done && InFlight() == 0) break;
      if (now > end_ns + 10'000'000'000LL) break;  // 10 s grace for answers
      // Requests in flight too long are timeouts.
      for (size_t i = 0; i < conns_.size(); ++i) {
        if (conns_[i].busy && now - conns_[i].sent_ns > 10'000'000'000LL) {
          ++stats_.timeouts;
          Reset(i);
        }
      }
      int64_t wait_ns = sending_done ? 50'000'000 : std::max<int64_t>(0, start_ns_ + k * interval - now);
      if (IdleConn() < 0 && !sending_done) wait_ns = 50'000'000;  // nothing to send on: wait for answers
      timespec ts{static_cast<time_t>(wait_ns / 1'000'000'000), static_cast<long>(wait_ns % 1'000'000'000)};
      int n = epoll_pwait2(ep_, evs, 256, &ts, nullptr);
      for (int e = 0; e < n; ++e) Event(evs[e].data.u32, evs[e].events);
    }
    for (size_t i = 0; i < conns_.size(); ++i) {
      if (conns_[i].busy) ++stats_.timeouts;
      if (conns_[i].fd >= 0) close(conns_[i].fd);
    }
    close(ep_);
  }

 private:
  size_t InFlight() const {
    size_t n = 0;
    for (const auto& c : conns_) n += c.busy;
    return n;
  }
  int IdleConn() {
    for (size_t i = 0; i < conns_.size(); ++i) {
      size_t j = (rr_ + i) % conns_.size();
      if (conns_[j].fd >= 0 && conns_[j].connected && !conns_[j].busy) {
        rr_ = j + 1;
        return static_cast<int>(j);
      }
    }
    return -1;
  }
  void Connect(size_t i) {
    Conn& c = conns_[i];
    c = Conn{};
    c.fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(c.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(o_.port));
    inet_pton(AF_INET, o_.host.c_str(), &a.sin_addr);
    int r = connect(c.fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
    if (r < 0 && errno != EINPROGRESS) {
      ++stats_.socket_errors;
      close(c.fd);
      c.fd = -1;
      return;
    }
    ++stats_.connects;
    c.connected = r == 0;
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
    ev.data.u32 = static_cast<uint32_t>(i);
    epoll_ctl(ep_, EPOLL_CTL_ADD, c.fd, &ev);
  }
  // Drops a connection (counting the request in flight, if any, by the caller) and opens another.
  void Reset(size_t i) {
    if (conns_[i].fd >= 0) close(conns_[i].fd);
    conns_[i].fd = -1;
    Connect(i);
  }
  void Send(int i, int64_t due) {
    Conn& c = conns_[i];
    const Agent& a = agents_[next_agent_ % agents_.size()];
    next_agent_ += o_.threads;
    int util = static_cast<int>(next_agent_ % 90) + 10;  // busy GPUs: never idle, no hibernation commands
    std::string body = "{\"instance_id\":\"" + a.instance +
                       "\",\"gpu_source\":\"virtual\",\"gpus\":[{\"index\":0,\"name\":\"RTX 4090\",\"util_pct\":" +
                       std::to_string(util) +
                       ",\"mem_used_mb\":12000,\"mem_total_mb\":24564}],\"load_1m\":1.5,\"cpu_cores\":8,"
                       "\"ram_total_mb\":32000,\"ram_used_mb\":12000,\"disk_total_gb\":100,\"disk_used_gb\":40}";
    c.out = "POST /api/v1/agent/status HTTP/1.1\r\nHost: " + o_.host + ":" + std::to_string(o_.port) +
            "\r\nAuthorization: Bearer " + a.token + "\r\nContent-Type: application/json\r\nContent-Length: " +
            std::to_string(body.size()) + "\r\n\r\n" + body;
    c.out_off = 0;
    c.in.clear();
    c.busy = true;
    c.due_ns = due;
    c.sent_ns = NowNs();
    ++stats_.sent;
    Flush(i);
  }
  void Flush(int i) {
    Conn& c = conns_[i];
    while (c.out_off < c.out.size()) {
      ssize_t w = send(c.fd, c.out.data() + c.out_off, c.out.size() - c.out_off, MSG_NOSIGNAL);
      if (w < 0) {
        if (errno == EAGAIN) return;
        Fail(i);
        return;
      }
      c.out_off += static_cast<size_t>(w);
    }
  }
  void Fail(size_t i) {
    ++stats_.socket_errors;
    Reset(i);
  }
  void Event(uint32_t i, uint32_t events) {
    if (i >= conns_.size()) return;
    Conn& c = conns_[i];
    if (c.fd < 0) return;
    if (!c.connected && (events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) {
      int err = 0;
      socklen_t len = sizeof err;
      getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &err, &len);
      if (err != 0) {
        Fail(i);
        return;
      }
      c.connected = true;
    }
    if (c.busy && (events & EPOLLOUT)) Flush(i);
    if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) Read(i);
  }
  void Read(size_t i) {
    Conn& c = conns_[i];
    char buf[16384];
    bool closed = false;
    for (;;) {
      ssize_t r = recv(c.fd, buf, sizeof buf, 0);
      if (r > 0) {
        c.in.append(buf, static_cast<size_t>(r));
        continue;
      }
      if (r == 0) closed = true;
      else if (errno != EAGAIN) closed = true;
      break;
    }
    if (c.busy) {
      size_t hdr_end = c.in.find("\r\n\r\n");
      if (hdr_end != std::string::npos) {
        std::string head = c.in.substr(0, hdr_end);
        std::string lower = head;
        std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char ch) { return std::tolower(ch); });
        size_t cl_pos = lower.find("content-length:");
        size_t body_len = cl_pos == std::string::npos ? 0 : std::strtoul(lower.c_str() + cl_pos + 15, nullptr, 10);
        if (c.in.size() >= hdr_end + 4 + body_len) {
          int status = head.size() > 12 ? std::atoi(head.c_str() + 9) : 0;
          int64_t now = NowNs();
          stats_.lat_us.push_back(static_cast<uint32_t>(std::min<int64_t>((now - c.due_ns) / 1000, UINT32_MAX)));
          ++stats_.status[status];
          if (status >= 200 && status < 300) ++stats_.ok;
          else ++stats_.non2xx;
          int64_t sec = (now - start_ns_) / 1'000'000'000;
          if (sec >= 0 && sec < static_cast<int64_t>(stats_.per_second.size())) ++stats_.per_second[sec];
          c.busy = false;
          c.in.erase(0, hdr_end + 4 + body_len);
          if (lower.find("connection: close") != std::string::npos) {
            Reset(i);  // the server's keep-alive cap: not an error
            return;
          }
        }
      }
    }
    if (closed) {
      if (c.busy) ++stats_.socket_errors;
      Reset(i);
    }
  }

  const Options& o_;
  const std::vector<Agent>& agents_;
  int index_;
  int64_t start_ns_;
  double rate_ = 0;
  int ep_ = -1;
  size_t rr_ = 0;
  uint64_t next_agent_ = 0;
  std::vector<Conn> conns_;
  Stats stats_;
};

double Pct(const std::vector<uint32_t>& v, double p) {
  if (v.empty()) return 0;
  size_t i = static_cast<size_t>(std::ceil(p / 100.0 * v.size())) - 1;
  return v[std::min(i, v.size() - 1)] / 1000.0;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int a = 1; a + 1 < argc; a += 2) {
    std::string k = argv[a], v = argv[a + 1];
    if (k == "--target") {
      auto colon = v.rfind(':');
      o.host = v.substr(0, colon);
      o.port = std::atoi(v.c_str() + colon + 1);
    } else if (k == "--agents") o.agents_file = v;
    else if (k == "--rate") o.rate = std::atof(v.c_str());
    else if (k == "--duration") o.duration_s = std::atof(v.c_str());
    else if (k == "--connections") o.connections = std::atoi(v.c_str());
    else if (k == "--threads") o.threads = std::atoi(v.c_str());
    else if (k == "--json") o.json_out = v;
    else {
      std::cerr << "api_loadgen: unknown option " << k << "\n";
      return 2;
    }
  }
  if (o.agents_file.empty() || o.rate <= 0 || o.duration_s <= 0 || o.threads < 1 || o.connections < o.threads) {
    std::cerr << "usage: api_loadgen --target HOST:PORT --agents FILE --rate R --duration S [--connections C] "
                 "[--threads T] [--json OUT]\n";
    return 2;
  }
  std::vector<Agent> agents;
  {
    std::ifstream f(o.agents_file);
    Agent a;
    while (f >> a.token >> a.instance) agents.push_back(a);
  }
  if (agents.empty()) {
    std::cerr << "api_loadgen: no agents in " << o.agents_file << "\n";
    return 1;
  }
  int64_t start = NowNs() + 100'000'000;
  std::vector<std::unique_ptr<Worker>> workers;
  for (int t = 0; t < o.threads; ++t) workers.push_back(std::make_unique<Worker>(o, agents, t, start));
  std::vector<std::thread> threads;
  for (auto& w : workers) threads.emplace_back([&w] { w->Run(); });
  for (auto& t : threads) t.join();
  double elapsed = (NowNs() - start) / 1e9;

  Stats all;
  all.per_second.assign(workers[0]->stats().per_second.size(), 0);
  for (auto& w : workers) {
    Stats& s = w->stats();
    all.lat_us.insert(all.lat_us.end(), s.lat_us.begin(), s.lat_us.end());
    for (auto& [k, v] : s.status) all.status[k] += v;
    all.sent += s.sent;
    all.ok += s.ok;
    all.non2xx += s.non2xx;
    all.socket_errors += s.socket_errors;
    all.timeouts += s.timeouts;
    all.connects += s.connects;
    for (size_t i = 0; i < s.per_second.size(); ++i) all.per_second[i] += s.per_second[i];
  }
  std::sort(all.lat_us.begin(), all.lat_us.end());
  int64_t completed = static_cast<int64_t>(all.lat_us.size());
  std::ostringstream j;
  j.setf(std::ios::fixed);
  j.precision(3);
  j << "{\"target_rps\": " << o.rate << ", \"duration_s\": " << o.duration_s << ", \"connections\": " << o.connections
    << ", \"threads\": " << o.threads << ", \"sent\": " << all.sent << ", \"completed\": " << completed
    << ", \"achieved_rps\": " << completed / o.duration_s << ", \"ok\": " << all.ok << ", \"non2xx\": " << all.non2xx
    << ", \"socket_errors\": " << all.socket_errors << ", \"timeouts\": " << all.timeouts
    << ", \"errors\": " << all.non2xx + all.socket_errors + all.timeouts << ", \"connects\": " << all.connects
    << ", \"p50_ms\": " << Pct(all.lat_us, 50) << ", \"p90_ms\": " << Pct(all.lat_us, 90)
    << ", \"p99_ms\": " << Pct(all.lat_us, 99) << ", \"p999_ms\": " << Pct(all.lat_us, 99.9)
    << ", \"max_ms\": " << (all.lat_us.empty() ? 0.0 : all.lat_us.back() / 1000.0) << ", \"elapsed_s\": " << elapsed
    << ", \"status\": {";
  bool first = true;
  for (auto& [k, v] : all.status) {
    j << (first ? "" : ", ") << "\"" << k << "\": " << v;
    first = false;
  }
  j << "}, \"per_second\": [";
  for (size_t i = 0; i < all.per_second.size(); ++i) j << (i ? ", " : "") << all.per_second[i];
  j << "]}";
  std::cout << j.str() << "\n";
  if (!o.json_out.empty()) std::ofstream(o.json_out) << j.str() << "\n";
  return 0;
}
