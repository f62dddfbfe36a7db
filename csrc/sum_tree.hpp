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

  // The leaf whose prefix-sum interval contains `mass`, for 0 <= mass < total(). O(log N).
  // When rounding pushes `mass` past a subtree's sum, the descent turns to the side that still has
  // mass, so the result always has a positive priority, whatever `mass` is.
  std::size_t find(double mass) const {
    std::size_t i = 1;
    while (i < leaves_) {
      const std::size_t left = 2 * i;
      if ((mass < sum_[left] && sum_[left] > 0.0) || sum_[left + 1] <= 0.0) {
        i = left;
      } else {
        mass -= sum_[left];
        i = left + 1;
      }
    }
    return i - leaves_;
  }

 private:
  std::size_t leaves_ = 1;
  std::vector<double> sum_;
  std::vector<double> min_;
};

}  // namespace pydpg
