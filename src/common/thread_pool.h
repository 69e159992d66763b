// A fixed-size thread pool. Submit() queues a task; the destructor (or Stop()) finishes queued tasks
// and joins. Tasks must not throw (an escaped exception is caught and counted, never terminates).
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace dumont {

// Calls fn(0) .. fn(count - 1), each once, on up to `threads` threads: the caller's and
// min(threads, count) - 1 started for the call. Returns when every call has returned.
void ParallelFor(size_t count, size_t threads, const std::function<void(size_t)>& fn);

class ThreadPool {
 public:
  explicit ThreadPool(size_t threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  // Returns false if the pool is stopping.
  bool Submit(std::function<void()> task);
  void Stop();  // drain and join; idempotent
  size_t size() const { return threads_.size(); }
  uint64_t escaped_exceptions() const { return escaped_.load(); }

 private:
  void Loop();
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> tasks_;
  std::vector<std::thread> threads_;
  bool stopping_ = false;
  std::atomic<uint64_t> escaped_{0};
};

}  // namespace dumont
