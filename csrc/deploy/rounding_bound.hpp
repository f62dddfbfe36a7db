// How far a floating-point evaluation of a policy can be from the exact value of the function it
// computes, whatever order its sums add in: the one definition of "equal up to float32 rounding"
// that export's parity check, the runtime's load check (mlp backend against forward()) and the
// tests use when they compare two different computations of one network (batch shapes, BLAS
// kernels, CPUs, libraries). docs/theory.md ("When are two float32 evaluations equal?") derives it.
//
// The bound is a forward error analysis, carried along the network with the observation:
//  - a dot product of length n plus a bias, summed in any order (blocked, split-K, FMA or not),
//    errs by at most gamma_{n+1} * (|W| |x| + |b|), gamma_k = k u / (1 - k u) (Higham, Accuracy and
//    Stability of Numerical Algorithms, 2nd ed., section 3.1), plus |W| times the input's own error;
//  - an element-wise step (normalization, BatchRenorm, AvgL1Norm, action scaling) rounds once per
//    operation, u times its result;
//  - a monotone activation maps the input's interval [v - e, v + e] to its image (ReLU, clamp,
//    tanh, ELU: on a saturated unit the error vanishes), plus the function's own error (a few ulps
//    for tanh and expm1, kTranscendentalUlps).
// Private to pydpg_runtime (not installed); exported for the Python module, which wraps it for
// export and the tests.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "mlp_backend.hpp"

namespace pydpg {

// One evaluation's arithmetic.
struct Arithmetic {
  // Unit roundoff of every step: 2^-24 for float32 (the file, the runtime), 2^-53 for float64.
  double unit_roundoff = 0x1p-24;
  // Relative error of each stored constant (weights, biases, statistics) against the file's float32
  // values: 0 when the evaluation computes with those very values; 2^-24 / (1 - 2^-24) for a float64
  // actor whose parameters the file rounded to float32.
  double constants = 0.0;
  // Whether its actions end rounded to float32 (the file's output); false for a float64 reference.
  bool float32_output = true;
};

// How many ulps tanh, expm1, exp and rsqrt may be off in any library an evaluation calls: MKL VML's
// LA mode promises 4 ulps; its HA mode (what torch calls), Sleef's u10 functions and glibc 1 to 2.
inline constexpr double kTranscendentalUlps = 4.0;

// The centre the bound is measured from and the bound itself, each [n, act_dim]: for every
// evaluation in `arith` of the policy `net` on the raw (unnormalized) float32 observations obs
// [n, obs_dim], |its action - centre| <= bound, entry by entry. The centre is the network's exact
// function of its float32 parameters up to this routine's own float64 rounding, which the bound
// includes. Two evaluations A and B therefore agree within bound_A + bound_B. An entry is +inf
// where no bound can be given (a non-finite value in the network); callers treat that as a failed
// comparison, never as "anything goes".
PYDPG_RUNTIME_API void rounding_bound(const MlpNetwork& net, const float* obs, std::int64_t n, const Arithmetic& arith,
                                      double* centre, double* bound);

// The network plan of a policy's metadata document (the JSON text of pydpg_policy.json), with the
// weights taken from `tensors` by the names the plan gives (a PolicyModule's parameters and buffers) rather than
// from a TorchScript module: how export bounds the module it is about to write. `normalize` and
// `obs_clip` are the module's attributes of those names. Portable kernels: the bound does not depend
// on them. Throws PolicyFormatError as build_mlp does.
PYDPG_RUNTIME_API MlpNetwork plan_from_tensors(const std::string& metadata_json, const NamedTensors& tensors,
                                               bool normalize, double obs_clip);

}  // namespace pydpg
