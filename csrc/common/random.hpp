// xoshiro256** (Blackman & Vigna, "Scrambled linear pseudorandom number generators", 2021):
// ~1 ns a draw where std::mt19937_64 takes ~4, which is a third of a 256-row uniform sample.
// Its whole state is four words, so saving and restoring the sampler's stream is trivial.
#pragma once

#include <array>
#include <cstdint>
#include <limits>

namespace pydpg {

class Xoshiro256 {
 public:
  using result_type = std::uint64_t;
  static constexpr result_type min() { return 0; }
  static constexpr result_type max() { return std::numeric_limits<result_type>::max(); }

  explicit Xoshiro256(std::uint64_t seed = 0) { this->seed(seed); }

  // Expands one word into the state with SplitMix64, as the authors recommend.
  void seed(std::uint64_t x) {
    for (auto& word : s_) {
      x += 0x9E3779B97F4A7C15ull;
      std::uint64_t z = x;
      z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
      z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
      word = z ^ (z >> 31);
    }
  }

  result_type operator()() {
    const std::uint64_t result = rotl(s_[1] * 5, 7) * 9;
    const std::uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = rotl(s_[3], 45);
    return result;
  }

  const std::array<std::uint64_t, 4>& state() const { return s_; }
  // An all-zero state would emit zeros forever; callers reject it as corrupt.
  void set_state(const std::array<std::uint64_t, 4>& s) { s_ = s; }

 private:
  static std::uint64_t rotl(std::uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  std::array<std::uint64_t, 4> s_{};
};

}  // namespace pydpg
