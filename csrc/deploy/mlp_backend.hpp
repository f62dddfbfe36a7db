// The runtime's "mlp" backend: the actor as the metadata's network plan describes it (Linear layers
// and an activation, each Linear optionally after a batch renormalization (CrossQ); for TD7's actor
// also its frozen state encoder and AvgL1Norm), with the weights
// copied out of the TorchScript module and run by plain loops and one BLAS call per layer into
// preallocated buffers. No tensor, no interpreter, no allocation. The runtime accepts it only after
// it reproduces the module's own forward at load time.
//
// Private to pydpg_runtime (not installed): it exposes libtorch types.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <torch/script.h>

#include "blas.hpp"
#include "pydpg/policy_runtime.hpp"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define PYDPG_ASAN_POISON(p, bytes) ASAN_POISON_MEMORY_REGION(p, bytes)
#define PYDPG_ASAN_UNPOISON(p, bytes) ASAN_UNPOISON_MEMORY_REGION(p, bytes)
#else
#define PYDPG_ASAN_POISON(p, bytes) ((void)(p), (void)(bytes))
#define PYDPG_ASAN_UNPOISON(p, bytes) ((void)(p), (void)(bytes))
#endif

namespace pydpg {

// A float buffer whose data starts on a 64-byte boundary, as torch's CPU allocator aligns tensors:
// BLAS kernels may treat an unaligned head differently, and the mlp backend should hand MKL the
// same kind of pointers torch does.
class AlignedFloats {
 public:
  AlignedFloats() = default;
  // A copy would point into the source's storage; a move keeps the heap block, so data_ stays valid.
  AlignedFloats(const AlignedFloats&) = delete;
  AlignedFloats& operator=(const AlignedFloats&) = delete;
  AlignedFloats(AlignedFloats&&) noexcept = default;
  AlignedFloats& operator=(AlignedFloats&&) noexcept = default;

  void assign(std::int64_t n, float value) {
    PYDPG_ASAN_UNPOISON(storage_.data(), storage_.size() * sizeof(float));
    storage_.assign(static_cast<std::size_t>(n) + kPad, value);
    const auto addr = reinterpret_cast<std::uintptr_t>(storage_.data());
    data_ = storage_.data() + ((64 - addr % 64) % 64) / sizeof(float);
    size_ = n;
    // ASan builds: the alignment slack on either side is off limits, so an access one row past the
    // end is reported instead of landing in padding.
    PYDPG_ASAN_POISON(storage_.data(), (data_ - storage_.data()) * sizeof(float));
    PYDPG_ASAN_POISON(data_ + n, (storage_.data() + storage_.size() - (data_ + n)) * sizeof(float));
  }
  float* data() { return data_; }
  const float* data() const { return data_; }
  std::int64_t size() const { return size_; }
  float& operator[](std::int64_t i) { return data_[i]; }
  const float& operator[](std::int64_t i) const { return data_[i]; }

 private:
  static constexpr std::size_t kPad = 64 / sizeof(float);
  std::vector<float> storage_;
  float* data_ = nullptr;
  std::int64_t size_ = 0;
};

enum class Activation { ReLU, Tanh, ELU, Identity };

struct MlpLayer {
  int in = 0, out = 0;
  std::vector<float> weight;  // [out, in] row-major, as nn.Linear stores it
  std::vector<float> bias;    // [out]
  // CrossQ's BatchRenorm before the Linear, in evaluation mode (plan "input_norm"): each input feature
  // i becomes ((x - mean[i]) * scale[i]) * gain[i] + shift[i], scale = 1 / sqrt(running_var + eps),
  // in the order and float32 roundings of pydpg.networks.BatchRenorm's forward. Empty: no norm.
  std::vector<float> norm_mean, norm_scale, norm_gain, norm_shift;
  std::vector<float> norm_var;  // running_var, from which norm_scale was computed (for rounding_bound)
  double norm_eps = 0.0;
};

struct MlpNetwork {
  std::vector<MlpLayer> layers;
  Activation hidden_act = Activation::ReLU, output_act = Activation::Tanh;
  // TD7's SaleActor (plan kind "sale"): layers[0] reads [AvgL1Norm(state x), AvgL1Norm(encoder(x))]
  // instead of x, the encoder's hidden layers with encoder_act. Empty encoder: a plain MLP.
  MlpLayer state;
  std::vector<MlpLayer> encoder;
  Activation encoder_act = Activation::ELU;
  float norm_eps = 0.0f;
  bool normalize = false;
  float clip = 0.0f;
  std::vector<float> mean, stdev;
  std::vector<double> low_d, high_d;  // the module's float32 bounds, widened exactly
  SgemmFn sgemm = nullptr;            // MKL's, or null: at::addmm_ (allocates per call)
  VmsTanhFn vms_tanh = nullptr;       // MKL VML's, or null: std::tanh
  Expm1x8Fn expm1x8 = nullptr;        // ELU's: Sleef's (x86, what torch calls), or null: exact expm1
  std::int64_t width = 0;             // widest layer (or SALE's concatenation), sizes the hidden buffers

  // What it computes with, e.g. "sgemm: mkl, tanh: mkl vml" or "sgemm: aten addmm, tanh: libm".
  std::string kernels() const;
};

// Reads the network plan in `meta.json` and copies the weights it names out of `module`.
// `mlp_kernels` is PolicyOptions::mlp_kernels ("auto" or "portable"). Throws PolicyFormatError or
// JsonError when the plan is absent or does not fit the module.
MlpNetwork build_mlp(const torch::jit::Module& module, const PolicyMetadata& meta, const std::string& mlp_kernels);
// The same from the module's tensors by name and its `normalize` / `obs_clip` attributes. The plan
// names parameters where parameters belong and buffers where buffers do; a name in the wrong map is
// refused like a missing one.
struct NamedTensors {
  std::map<std::string, at::Tensor> parameters, buffers;
};
MlpNetwork build_mlp(const NamedTensors& tensors, bool normalize, double obs_clip, const PolicyMetadata& meta,
                     const std::string& mlp_kernels);

// The actor on n rows: x [n, obs_dim] (normalized) -> out [n, act_dim] (env units, unclamped).
// h0 and h1 are scratch of at least n * net.width floats each, written before they are read.
void forward_mlp(const MlpNetwork& net, const float* x, std::int64_t n, float* h0, float* h1, float* out);

bool all_finite(const float* p, std::int64_t n);

}  // namespace pydpg
