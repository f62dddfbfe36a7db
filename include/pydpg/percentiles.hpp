// Summary statistics of timing samples (latencies, step times), as pydpg reports them everywhere:
// the runtime's LatencyStats, the control loop's step times, the C++ example.
//
// Header-only and dependency-free, installed as <pydpg/percentiles.hpp> so that a user's loop
// reports its own timings the way pydpg reports its.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <vector>

namespace pydpg {

struct Percentiles {
  std::size_t n = 0;  // samples summarized; all other fields are 0 when there are none
  double mean = 0, p50 = 0, p90 = 0, p99 = 0, p999 = 0, max = 0;
};

// Nearest-rank percentiles: the q-quantile is the smallest sample with at least q of the samples at
// or below it. Every reported value is a measured sample, never an interpolation between two, so a
// p99.9 over few samples reads as the worst one seen rather than as a made-up figure.
inline Percentiles summarize(std::vector<double> samples) {
  Percentiles p;
  p.n = samples.size();
  if (samples.empty()) return p;
  std::sort(samples.begin(), samples.end());
  const std::size_t n = samples.size();
  auto nearest_rank = [&](double q) {
    const auto rank = static_cast<std::size_t>(std::ceil(q * static_cast<double>(n)));
    return samples[std::min(std::max<std::size_t>(rank, 1), n) - 1];
  };
  double sum = 0;
  for (double x : samples) sum += x;
  p.mean = sum / static_cast<double>(n);
  p.p50 = nearest_rank(0.5);
  p.p90 = nearest_rank(0.9);
  p.p99 = nearest_rank(0.99);
  p.p999 = nearest_rank(0.999);
  p.max = samples.back();
  return p;
}

}  // namespace pydpg
