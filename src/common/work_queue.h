// WorkQueue: the controller work queue (Kubernetes client-go style), for string keys (instance ids).
//  - Add(key) collapses duplicates: a key waiting in the queue is queued once.
//  - A key is never handed to two workers at once: a key added while being processed is queued again
//    when Done(key) is called.
//  - AddAfter(key, delay) is a timed requeue ("check again at T"), measured on the injected Clock.
//  - AddRateLimited(key) requeues with per-key exponential backoff; Forget(key) resets it.
// Thread-safe. Get() blocks until a key is ready, the timeout passes, or ShutDown().
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>

#include "common/clock.h"

namespace dumont {

class WorkQueue {
 public:
  explicit WorkQueue(const Clock& clock, std::chrono::milliseconds base_backoff = std::chrono::milliseconds(50),
                     std::chrono::milliseconds max_backoff = std::chrono::seconds(60))
      : clock_(clock), base_backoff_(base_backoff), max_backoff_(max_backoff) {}

  void Add(const std::string& key);
  void AddAfter(const std::string& key, std::chrono::milliseconds delay);
  void AddRateLimited(const std::string& key);
  void Forget(const std::string& key);
  int NumRequeues(const std::string& key) const;

  // Next ready key, or nullopt on timeout/shutdown. The caller must call Done(key) afterwards.
  std::optional<std::string> Get(std::chrono::milliseconds timeout);
  void Done(const std::string& key);

  void ShutDown();
  bool ShuttingDown() const;
  size_t Len() const;  // keys ready to be handed out

 private:
  void PromoteDueLocked();
  void AddLocked(const std::string& key);

  const Clock& clock_;
  const std::chrono::milliseconds base_backoff_, max_backoff_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::string> queue_;
  std::set<std::string> dirty_;       // queued (ready) keys
  std::set<std::string> processing_;  // handed out, Done not yet called
  std::multimap<Clock::TimePoint, std::string> delayed_;
  std::map<std::string, int> failures_;
  bool shutdown_ = false;
};

}  // namespace dumont
