// Sum and min trees over a fixed number of leaves, for proportional prioritized replay
// (Schaul et al. 2015, "Prioritized Experience Replay", appendix B.2.1).
//
// Sums are kept in double precision and every internal node is recomputed from its two children on
// update, never adjusted by a delta. Rounding therefore never accumulates across updates, so no
// periodic rebuild is needed, and the descent below can only end on a leaf whose priority is > 0.
// (TorchRL #2230: float sums drifted and sampling returned indices past the end or of zero priority.)
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

namespace pydpg {

class SumMinTree {
 public:
  explicit SumMinTree(std::size_t n_leaves = 0) { resize(n_leaves); }

  void resize(std::size_t n_leaves) {
    leaves_ = 1;
    while (leaves_ < n_leaves) leaves_ <<= 1;
    sum_.assign(2 * leaves_, 0.0);
    min_.assign(2 * leaves_, std::numeric_limits<double>::infinity());
  }

  void clear() { resize(leaves_); }

  // O(log N). A value of 0 marks an empty leaf: it is never sampled and is ignored by min().
  void set(std::size_t leaf, double value) {
    std::size_t i = leaf + leaves_;
    sum_[i] = value;
    min_[i] = value > 0.0 ? value : std::numeric_limits<double>::infinity();
    for (i >>= 1; i >= 1; i >>= 1) {
      sum_[i] = sum_[2 * i] + sum_[2 * i + 1];
      min_[i] = min_[2 * i] < min_[2 * i + 1] ? min_[2 * i] : min_[2 * i + 1];
    }
  }

  double get(std::size_t leaf) const { return sum_[leaf + leaves_]; }
  double total() const { return sum_[1]; }
  double min() const { return min_[1]; }  // +inf when every leaf is empty

  // For each mass in [0, total()), the leaf whose prefix-sum interval contains it. O(log N) each.
  // When rounding pushes a mass past a subtree's sum, the descent turns to the side that still has
  // mass, so every result has a positive priority, whatever the masses are.
  // All n descents advance one level at a time: the n loads of a level are independent, so their
  // cache misses overlap instead of queueing one descent after another (a 1M-leaf tree is 16 MB;
  // most levels below the top miss the cache). `masses` is consumed.
  void find_many(double* masses, std::size_t* leaves, std::size_t n) const {
    for (std::size_t b = 0; b < n; ++b) leaves[b] = 1;
    for (std::size_t width = 1; width < leaves_; width <<= 1)
      for (std::size_t b = 0; b < n; ++b) {
        leaves[b] = step(leaves[b], masses[b]);
        if (2 * leaves[b] < sum_.size()) __builtin_prefetch(&sum_[2 * leaves[b]]);
      }
    for (std::size_t b = 0; b < n; ++b) leaves[b] -= leaves_;
  }

 private:
  // One level of the descent from node i; `mass` becomes relative to the chosen child.
  // Branch-free: which way a mass goes is a coin flip the branch predictor cannot learn.
  std::size_t step(std::size_t i, double& mass) const {
    const std::size_t left = 2 * i;
    const double l = sum_[left], r = sum_[left + 1];
    const std::size_t right = static_cast<std::size_t>(!((mass < l) & (l > 0.0)) & (r > 0.0));
    mass -= l * static_cast<double>(right);
    return left + right;
  }

  std::size_t leaves_ = 1;
  std::vector<double> sum_;
  std::vector<double> min_;
};

}  // namespace pydpg
