// The schedule of a fixed-rate control loop, as pydpg's control loop and the C++ example run it.
//
// Period k ends at an absolute deadline, start + k * period on CLOCK_MONOTONIC, and wait() sleeps
// until it with clock_nanosleep(TIMER_ABSTIME): jitter in one step's work does not shift the steps
// after it, as a relative sleep would. A step whose work ends after its deadline is a miss; the
// schedule then restarts from that moment instead of running the late periods back to back, since
// a burst of catch-up steps would feed the plant commands computed for times already past.
//
//   pydpg::FixedRateClock clock(2'000'000);  // 500 Hz
//   clock.start();
//   for (...) { read sensors, act, write actuators; clock.wait(); }
//
// Header-only (POSIX), installed as <pydpg/fixed_rate.hpp>. Not thread-safe: one per loop.
#pragma once

#include <time.h>

#include <cerrno>
#include <stdexcept>

namespace pydpg {

class FixedRateClock {
 public:
  explicit FixedRateClock(long long period_ns) : period_ns_(period_ns) {
    if (period_ns < 1) throw std::invalid_argument("FixedRateClock: the period must be at least 1 ns");
  }

  // (Re)starts the schedule, right before a loop's first step: the current period ends one period
  // from now. Misses are kept, so a loop that restarts per episode counts them over all episodes.
  void start() {
    clock_gettime(CLOCK_MONOTONIC, &deadline_);
    advance();
  }

  // Ends the current period: sleeps until its deadline, or, when the deadline has already passed,
  // counts a miss, returns true at once and restarts the schedule from now.
  bool wait() {
    timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    const bool missed =
        now.tv_sec > deadline_.tv_sec || (now.tv_sec == deadline_.tv_sec && now.tv_nsec > deadline_.tv_nsec);
    if (missed) {
      ++misses_;
      deadline_ = now;
    } else {
      // A signal handler interrupts the sleep, not the schedule: sleep again to the same deadline.
      while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &deadline_, nullptr) == EINTR) {
      }
    }
    advance();
    return missed;
  }

  long long misses() const { return misses_; }
  long long period_ns() const { return period_ns_; }

 private:
  void advance() {
    deadline_.tv_sec += static_cast<time_t>(period_ns_ / 1000000000LL);
    deadline_.tv_nsec += static_cast<long>(period_ns_ % 1000000000LL);
    if (deadline_.tv_nsec >= 1000000000L) {
      deadline_.tv_nsec -= 1000000000L;
      ++deadline_.tv_sec;
    }
  }

  long long period_ns_;
  long long misses_ = 0;
  timespec deadline_{};
};

}  // namespace pydpg
