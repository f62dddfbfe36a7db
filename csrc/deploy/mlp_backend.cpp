#include "mlp_backend.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>

#include "json_access.hpp"
#include "metadata.hpp"

namespace pydpg {

namespace {

// torch.tanh on float CPU tensors is MKL VML's vmsTanh (blas.hpp); glibc's tanhf differs from it in
// the last bit for ~40% of inputs, and a last-bit difference per step is enough to make a chaotic task
// (HalfCheetah) drift away from the trajectory it had in training. Calling the same functions torch
// calls, with the same shapes, keeps the deployed actions as close to the trainer's as this machine's
// arithmetic allows; what the runtime guarantees, and checks at load (compare_backends), is the
// module's function: in float64 within its rounding bound, in float32 within the float32 bound.

std::vector<float> tensor_values(const at::Tensor& t) {
  at::Tensor c = t.detach().to(at::kFloat).contiguous().reshape({-1});
  return std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
}

Activation parse_activation(const Json& j, const std::string& what) {
  const std::string& s = json::string(j, what);
  if (s == "relu") return Activation::ReLU;
  if (s == "tanh") return Activation::Tanh;
  if (s == "elu") return Activation::ELU;
  if (s == "identity") return Activation::Identity;
  throw PolicyFormatError(what + " '" + s + "' is not one of relu, tanh, elu, identity");
}

// F.elu (alpha 1) on n floats: x above 0, expm1(x) below; NaN stays NaN. torch's kernel computes
// whole vectors with Sleef's expm1 and leftover elements with libm's; this does the same in 8-float
// steps where Sleef is found (torch's step may be longer, so a layer whose size is not a multiple of
// 16 can round a leftover differently: the load check covers that; TD7's 256 splits alike). Without
// Sleef (portable kernels, other CPUs): expm1 in double rounded once, the exact value's float, which
// torch's agrees with to the last bit for all but ~0.05% of inputs.
void elu(float* x, std::int64_t n, Expm1x8Fn sleef) {
  std::int64_t i = 0;
  if (sleef) {
    float e[8];
    for (; i + 8 <= n; i += 8) {
      expm1x8(sleef, x + i, e);
      for (int q = 0; q < 8; ++q) x[i + q] = x[i + q] > 0.0f ? x[i + q] : e[q];
    }
    for (; i < n; ++i) x[i] = x[i] > 0.0f ? x[i] : std::expm1(x[i]);
    return;
  }
  for (; i < n; ++i) x[i] = x[i] > 0.0f ? x[i] : static_cast<float>(std::expm1(static_cast<double>(x[i])));
}

void apply(Activation a, float* x, std::int64_t n, VmsTanhFn vml, Expm1x8Fn sleef) {
  switch (a) {
    case Activation::ReLU:
      // `x < 0 ? 0 : x` keeps NaN as NaN, as torch.relu does, so the guard still sees it.
      for (std::int64_t i = 0; i < n; ++i) x[i] = x[i] < 0.0f ? 0.0f : x[i];
      break;
    case Activation::Tanh:
      if (vml) {
        for (std::int64_t i = 0; i < n; i += 1 << 30) {
          const int len = static_cast<int>(std::min<std::int64_t>(n - i, 1 << 30));
          vml(len, x + i, x + i, kVmlMode);
        }
      } else {
        for (std::int64_t i = 0; i < n; ++i) x[i] = std::tanh(x[i]);
      }
      break;
    case Activation::ELU:
      elu(x, n, sleef);
      break;
    case Activation::Identity:
      break;
  }
}

// out[r, :L.out] = x[r] W^T + b for n rows, rows `ld_in` / `ld_out` floats apart (a column block of
// a wider matrix is its pointer and the parent's stride): the BLAS call torch makes for nn.Linear.
void linear(const MlpNetwork& net, const MlpLayer& L, const float* x, int ld_in, std::int64_t n, float* out,
            int ld_out) {
  for (std::int64_t r = 0; r < n; ++r) std::memcpy(out + r * ld_out, L.bias.data(), sizeof(float) * L.out);
  gemm(net.sgemm, false, true, static_cast<int>(n), L.out, L.in, 1.0f, x, ld_in, L.weight.data(), L.in, 1.0f, out,
       ld_out);
}

// BatchRenorm's evaluation-mode forward on n contiguous rows of L.in features, from `x` into `dst`
// (which may be x): ((x - mean) * scale) * gain + shift, four float32 roundings in torch's order.
// The build turns off floating-point contraction, so no step fuses into an FMA that torch's
// element-wise kernels do not use.
void batch_renorm_rows(const MlpLayer& L, const float* x, std::int64_t n, float* dst) {
  for (std::int64_t r = 0; r < n; ++r)
    for (int i = 0; i < L.in; ++i) {
      float t = x[r * L.in + i] - L.norm_mean[i];
      t = t * L.norm_scale[i];
      t = t * L.norm_gain[i];
      dst[r * L.in + i] = t + L.norm_shift[i];
    }
}

// AvgL1Norm divides a whole row by one mean, and a trained SALE actor amplifies a last-bit change of
// that mean into visibly different actions (and a chaotic task into another trajectory: the Ant
// episodes of docs/benchmarks.md). So the mean is summed in the order torch's CPU sum
// kernel uses (ATen SumKernel.cpp: four interleaved partial sums, a 4-level cascade, 8-float vectors,
// rows shorter than a vector summed as scalars), so that it rounds as torch's does on x86 (an
// AVX-512 CPU runs the 8-float kernel too). Elsewhere the load check decides, as for every plan.
constexpr int kSumLanes = 8;
using Lanes = std::array<float, kSumLanes>;
inline void add_to(float& a, float b) { a += b; }
inline void add_to(Lanes& a, const Lanes& b) {
  for (int q = 0; q < kSumLanes; ++q) a[q] += b[q];
}

std::int64_t ceil_log2(std::int64_t x) {
  if (x <= 2) return 1;
  std::int64_t bits = 0;
  for (std::uint64_t v = static_cast<std::uint64_t>(x - 1); v != 0; v >>= 1) ++bits;
  return bits;
}

// `size` steps of 4 interleaved sums (load(i, k): step i, sum k), cascaded so that each level adds
// partial sums of similar size.
template <typename T, typename Load>
std::array<T, 4> interleaved_sums(std::int64_t size, Load load) {
  constexpr int kLevels = 4, kRows = 4;
  const std::int64_t power = std::max<std::int64_t>(4, ceil_log2(size) / kLevels);
  const std::int64_t step = std::int64_t{1} << power, mask = step - 1;
  T acc[kLevels][kRows] = {};
  std::int64_t i = 0;
  while (i + step <= size) {
    for (std::int64_t j = 0; j < step; ++j, ++i)
      for (int k = 0; k < kRows; ++k) add_to(acc[0][k], load(i, k));
    for (int j = 1; j < kLevels; ++j) {
      for (int k = 0; k < kRows; ++k) {
        add_to(acc[j][k], acc[j - 1][k]);
        acc[j - 1][k] = T{};
      }
      if ((i & (mask << (j * power))) != 0) break;
    }
  }
  for (; i < size; ++i)
    for (int k = 0; k < kRows; ++k) add_to(acc[0][k], load(i, k));
  for (int j = 1; j < kLevels; ++j)
    for (int k = 0; k < kRows; ++k) add_to(acc[0][k], acc[j][k]);
  return {acc[0][0], acc[0][1], acc[0][2], acc[0][3]};
}

template <typename T, typename Load>
T row_sum(std::int64_t size, Load load) {
  auto part = interleaved_sums<T>(size / 4, [&](std::int64_t i, int k) { return load(i * 4 + k); });
  for (std::int64_t i = size / 4 * 4; i < size; ++i) add_to(part[0], load(i));
  for (int k = 1; k < 4; ++k) add_to(part[0], part[k]);
  return part[0];
}

float sum_abs(const float* x, std::int64_t len) {
  if (len < kSumLanes) return row_sum<float>(len, [&](std::int64_t i) { return std::fabs(x[i]); });
  const std::int64_t vectors = len / kSumLanes;
  const Lanes v = row_sum<Lanes>(vectors, [&](std::int64_t i) {
    Lanes l;
    for (int q = 0; q < kSumLanes; ++q) l[q] = std::fabs(x[i * kSumLanes + q]);
    return l;
  });
  float total = 0.0f;
  for (std::int64_t k = vectors * kSumLanes; k < len; ++k) total += std::fabs(x[k]);
  for (int q = 0; q < kSumLanes; ++q) total += v[q];
  return total;
}

// TD7's AvgL1Norm on a [n, len] block with row stride ld: x / max(mean|x|, eps), as pydpg.sale.avg_l1_norm.
void avg_l1_rows(float* x, std::int64_t n, int len, int ld, float eps) {
  for (std::int64_t r = 0; r < n; ++r) {
    float* row = x + r * ld;
    float m = sum_abs(row, len) / static_cast<float>(len);
    m = m < eps ? eps : m;  // clamp(min=eps) that keeps NaN, as torch's does
    for (int i = 0; i < len; ++i) row[i] = row[i] / m;
  }
}

}  // namespace

bool all_finite(const float* p, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i)
    if (!std::isfinite(p[i])) return false;
  return true;
}

std::string MlpNetwork::kernels() const {
  return std::string("sgemm: ") + (sgemm ? "mkl" : "aten addmm") + ", tanh: " + (vms_tanh ? "mkl vml" : "libm") +
         (encoder.empty() ? ""
          : expm1x8       ? ", expm1: sleef"
                          : ", expm1: libm double");
}

MlpNetwork build_mlp(const torch::jit::Module& module, const PolicyMetadata& meta, const std::string& mlp_kernels) {
  NamedTensors tensors;
  for (const auto& p : module.named_parameters(/*recurse=*/true)) tensors.parameters[p.name] = p.value;
  for (const auto& b : module.named_buffers(/*recurse=*/true)) tensors.buffers[b.name] = b.value;
  const bool normalize = module.hasattr("normalize") && module.attr("normalize").toBool();
  return build_mlp(tensors, normalize, normalize ? module.attr("obs_clip").toDouble() : 0.0, meta, mlp_kernels);
}

MlpNetwork build_mlp(const NamedTensors& tensors, bool normalize, double obs_clip, const PolicyMetadata& meta,
                     const std::string& mlp_kernels) {
  MlpNetwork net;
  const Json j = json::parse(meta.json);
  const Json& plan = json::member(j, "network");
  const Json& kind = json::member(plan, "kind");
  const std::string kind_name = plan.is_object() && !kind.is_null() ? json::string(kind, "network.kind") : "";
  if (kind_name != "mlp" && kind_name != "sale")
    throw PolicyFormatError("the metadata describes no network the mlp backend runs (network.kind mlp or sale)");
  net.hidden_act = parse_activation(json::member(plan, "hidden_activation"), "network.hidden_activation");
  net.output_act = parse_activation(json::member(plan, "output_activation"), "network.output_activation");

  auto get = [&](const std::map<std::string, at::Tensor>& from, const std::string& name,
                 std::vector<std::int64_t> shape) {
    auto it = from.find(name);
    if (it == from.end()) throw PolicyFormatError("the module has no tensor '" + name + "'");
    const at::Tensor& t = it->second;
    if (t.scalar_type() != at::kFloat || t.sizes().vec() != shape)
      throw PolicyFormatError("tensor '" + name + "' is " + c10::str(t.sizes()) + " " + c10::toString(t.scalar_type()) +
                              ", expected " + c10::str(at::IntArrayRef(shape)) + " float32");
    return t;
  };

  net.width = std::max(meta.obs_dim, meta.act_dim);
  // One layer of the plan, reading `in` features; widens net.width to its output.
  auto read_layer = [&](const Json& s, std::int64_t in, const std::string& where) {
    const std::int64_t out = json::integer(json::member(s, "out"), where + ".out");
    if (out < 1 || out > kMaxDim)
      throw PolicyFormatError(where + ".out must be in [1, " + std::to_string(kMaxDim) + "]");
    const at::Tensor w = get(tensors.parameters, json::string(json::member(s, "weight"), where + ".weight"), {out, in});
    const at::Tensor b = get(tensors.parameters, json::string(json::member(s, "bias"), where + ".bias"), {out});
    MlpLayer L;
    L.in = static_cast<int>(in);
    L.out = static_cast<int>(out);
    L.weight = tensor_values(w);
    L.bias = tensor_values(b);
    if (!all_finite(L.weight.data(), L.weight.size()) || !all_finite(L.bias.data(), L.bias.size()))
      throw PolicyFormatError("the weights of layer '" + json::string(json::member(s, "weight"), "") +
                              "' are not all finite");
    const Json& norm = json::member(s, "input_norm");
    if (!norm.is_null()) {
      const std::string norm_at = where + ".input_norm";
      if (json::string(json::member(norm, "kind"), norm_at + ".kind") != "batch_renorm")
        throw PolicyFormatError(norm_at + ".kind must be batch_renorm");
      const double eps = json::number(json::member(norm, "eps"), norm_at + ".eps");
      if (!(eps > 0.0 && eps < 1.0)) throw PolicyFormatError(norm_at + ".eps must be in (0, 1)");
      L.norm_mean =
          tensor_values(get(tensors.buffers, json::string(json::member(norm, "mean"), norm_at + ".mean"), {in}));
      L.norm_var = tensor_values(get(tensors.buffers, json::string(json::member(norm, "var"), norm_at + ".var"), {in}));
      L.norm_eps = eps;
      L.norm_gain =
          tensor_values(get(tensors.parameters, json::string(json::member(norm, "weight"), norm_at + ".weight"), {in}));
      L.norm_shift =
          tensor_values(get(tensors.parameters, json::string(json::member(norm, "bias"), norm_at + ".bias"), {in}));
      // torch.rsqrt(running_var + eps): the sum rounded to float32 (a Python float operand is applied
      // as a float32 scalar), then 1 / sqrt, each step correctly rounded as torch's CPU kernel does it.
      const float eps_f = static_cast<float>(eps);
      for (float v : L.norm_var) L.norm_scale.push_back(1.0f / std::sqrt(v + eps_f));
      for (const auto* p : {&L.norm_mean, &L.norm_scale, &L.norm_gain, &L.norm_shift})
        if (!all_finite(p->data(), static_cast<std::int64_t>(p->size())))
          throw PolicyFormatError(norm_at + ": its statistics or weights are not all finite (or running_var <= -eps)");
    }
    net.width = std::max<std::int64_t>(net.width, out);
    return L;
  };
  // A chain of layers from `in` features; returns the last one's width.
  auto read_chain = [&](const Json& specs, std::int64_t in, std::vector<MlpLayer>& into, const std::string& where) {
    if (!specs.is_array() || specs.empty()) throw PolicyFormatError(where + " is empty");
    for (const Json& s : specs) {
      into.push_back(read_layer(s, in, where + "[]"));
      in = into.back().out;
    }
    return in;
  };

  std::int64_t in = meta.obs_dim;
  if (kind_name == "sale") {
    net.state = read_layer(json::member(plan, "state_layer"), meta.obs_dim, "network.state_layer");
    const Json& enc = json::member(plan, "encoder");
    const std::int64_t zs =
        read_chain(json::member(enc, "layers"), meta.obs_dim, net.encoder, "network.encoder.layers");
    net.encoder_act = parse_activation(json::member(enc, "hidden_activation"), "network.encoder.hidden_activation");
    const Json& norm = json::member(plan, "norm");
    if (json::string(json::member(norm, "kind"), "network.norm.kind") != "avg_l1")
      throw PolicyFormatError("network.norm.kind must be avg_l1");
    const double eps = json::number(json::member(norm, "eps"), "network.norm.eps");
    if (!(eps > 0.0 && eps < 1.0)) throw PolicyFormatError("network.norm.eps must be in (0, 1)");
    net.norm_eps = static_cast<float>(eps);
    bool normed = !net.state.norm_mean.empty();
    for (const MlpLayer& L : net.encoder) normed = normed || !L.norm_mean.empty();
    if (normed) throw PolicyFormatError("input_norm is supported in network.layers only, not in SALE's encoder");
    in = net.state.out + zs;  // the first layer reads the concatenation [state, zs]
    net.width = std::max(net.width, in);
  }
  in = read_chain(json::member(plan, "layers"), in, net.layers, "network.layers");
  if (in != meta.act_dim)
    throw PolicyFormatError("the last layer has " + std::to_string(in) + " outputs, act_dim is " +
                            std::to_string(meta.act_dim));

  net.normalize = normalize;
  if (net.normalize) {
    net.mean = tensor_values(get(tensors.buffers, "obs_mean", {meta.obs_dim}));
    net.stdev = tensor_values(get(tensors.buffers, "obs_std", {meta.obs_dim}));
    net.clip = static_cast<float>(obs_clip);
  }
  for (float v : tensor_values(get(tensors.buffers, "action_low", {meta.act_dim}))) net.low_d.push_back(v);
  for (float v : tensor_values(get(tensors.buffers, "action_high", {meta.act_dim}))) net.high_d.push_back(v);
  // "portable" ignores MKL even where torch has it: what the mlp backend computes on a torch build
  // without MKL (aarch64 wheels), and how the tests keep that path honest on x86.
  net.sgemm = mlp_kernels == "portable" ? nullptr : find_sgemm();
  net.vms_tanh = mlp_kernels == "portable" ? nullptr : find_vms_tanh();
  net.expm1x8 = mlp_kernels == "portable" ? nullptr : find_expm1x8();
  return net;
}

// x is read and never written; every hidden layer goes into scratch (h0, h1) that this call writes
// before it reads, so a call's result depends on its input alone.
void forward_mlp(const MlpNetwork& net, const float* x, std::int64_t n, float* h0, float* h1, float* out) {
  const float* in = x;
  float* h = h0;
  if (!net.encoder.empty()) {
    // SALE: the encoder alternates h0/h1; its last layer writes zs straight into the concatenation
    // [state, zs] (row stride C) in the buffer it is not reading, and the state layer fills the rest.
    float* bufs[2] = {h0, h1};
    const std::size_t E = net.encoder.size();
    float* cat = bufs[(E - 1) % 2];
    const int S = net.state.out, C = S + net.encoder.back().out;
    const float* e_in = x;
    int ld = net.state.in;
    for (std::size_t e = 0; e < E; ++e) {
      const MlpLayer& L = net.encoder[e];
      const bool last = e + 1 == E;
      float* dst = last ? cat + S : bufs[e % 2];
      linear(net, L, e_in, ld, n, dst, last ? C : L.out);
      if (!last) apply(net.encoder_act, dst, n * L.out, net.vms_tanh, net.expm1x8);
      e_in = dst;
      ld = L.out;
    }
    avg_l1_rows(cat + S, n, C - S, C, net.norm_eps);
    linear(net, net.state, x, net.state.in, n, cat, C);
    avg_l1_rows(cat, n, S, C, net.norm_eps);
    in = cat;
    h = cat == h0 ? h1 : h0;
  }
  for (std::size_t l = 0; l < net.layers.size(); ++l) {
    const MlpLayer& L = net.layers[l];
    if (!L.norm_mean.empty()) {
      // In place on a hidden buffer (read only by this layer); the caller's x goes to the buffer
      // this layer does not write.
      float* normed = in == x ? (h == h0 ? h1 : h0) : const_cast<float*>(in);
      batch_renorm_rows(L, in, n, normed);
      in = normed;
    }
    // h = bias, then h += x W^T: the same BLAS call torch makes for nn.Linear (addmm(bias, x, W^T)).
    linear(net, L, in, L.in, n, h, L.out);
    const bool last_layer = l + 1 == net.layers.size();
    apply(last_layer ? net.output_act : net.hidden_act, h, n * L.out, net.vms_tanh, net.expm1x8);
    in = h;
    h = (h == h0) ? h1 : h0;
  }
  // `in` holds the actor output; map [-1, 1] to the action box in float64, as pydpg.envs.scale_action
  // (and the exported module) do.
  const std::int64_t A = net.layers.back().out;
  for (std::int64_t r = 0; r < n; ++r)
    for (std::int64_t k = 0; k < A; ++k) {
      const float u = in[r * A + k];
      const double a = u < -1.0f ? -1.0 : (u > 1.0f ? 1.0 : static_cast<double>(u));  // NaN passes through
      out[r * A + k] = static_cast<float>(net.low_d[k] + (a + 1.0) * 0.5 * (net.high_d[k] - net.low_d[k]));
    }
}

}  // namespace pydpg
