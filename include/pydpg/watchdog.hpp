// A watchdog over a control loop's external inputs: a command, a goal, a sensor read by another
// thread or another machine. Each input has a deadline; an input not refreshed within it is stale,
// and a loop that sees a stale input sends the safe action instead of acting on old data:
//
//   pydpg::Watchdog watchdog;
//   const int cmd = watchdog.add("velocity_command", 50'000'000);  // 50 ms, before the loop
//   watchdog.reset(now_ns());                                      // each episode: all fresh
//   ... when a command arrives: watchdog.refresh(cmd, now_ns()); observe.set_input(...);
//   ... each control step:
//   if (watchdog.stale(now_ns()) >= 0) act_map.command_safe(); else act_map.command(action);
//
// Times are the caller's, in nanoseconds of one monotonic clock (CLOCK_MONOTONIC, or the
// simulation's time in a test). Header-only, installed as <pydpg/watchdog.hpp>; add() allocates, the
// rest does not. Not thread-safe: a reader thread hands its data and time to the loop's thread, which
// refreshes.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace pydpg {

class Watchdog {
 public:
  struct Input {
    std::string name;
    std::int64_t deadline_ns = 0;
    std::int64_t last_ns = 0;       // when it was last refreshed (or reset)
    std::uint64_t stale_steps = 0;  // stale() calls that found it stale
  };

  // Watches a new input; returns its index for refresh(). The deadline must be positive.
  int add(const std::string& name, std::int64_t deadline_ns) {
    if (deadline_ns <= 0) throw std::invalid_argument("Watchdog: the deadline of '" + name + "' must be > 0 ns");
    for (const Input& in : inputs_)
      if (in.name == name) throw std::invalid_argument("Watchdog: '" + name + "' is watched already");
    inputs_.push_back(Input{name, deadline_ns, 0, 0});
    return static_cast<int>(inputs_.size()) - 1;
  }

  // Every input counts as fresh at now_ns (an episode's start, when the loop has just read them all).
  void reset(std::int64_t now_ns) {
    for (Input& in : inputs_) in.last_ns = now_ns;
  }

  void refresh(int input, std::int64_t now_ns) {
    if (input < 0 || input >= static_cast<int>(inputs_.size()))
      throw std::out_of_range("Watchdog::refresh: no input " + std::to_string(input));
    inputs_[static_cast<std::size_t>(input)].last_ns = now_ns;
  }

  // -1 when every input was refreshed within its deadline of now_ns, else the index of the first
  // stale one. Counts each stale input, and the step (stale_steps()) when any is.
  int stale(std::int64_t now_ns) {
    int first = -1;
    for (std::size_t i = 0; i < inputs_.size(); ++i) {
      Input& in = inputs_[i];
      if (now_ns - in.last_ns > in.deadline_ns) {
        ++in.stale_steps;
        if (first < 0) first = static_cast<int>(i);
      }
    }
    if (first >= 0) ++stale_steps_;
    return first;
  }

  const std::vector<Input>& inputs() const { return inputs_; }
  std::uint64_t stale_steps() const { return stale_steps_; }  // steps with at least one stale input

 private:
  std::vector<Input> inputs_;
  std::uint64_t stale_steps_ = 0;
};

}  // namespace pydpg
