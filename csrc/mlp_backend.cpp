#include "mlp_backend.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <unordered_map>

#include "json_access.hpp"

namespace pydpg {

namespace {

// torch.tanh on float CPU tensors is MKL VML's vmsTanh (blas.hpp); glibc's tanhf differs from it in
// the last bit for ~40% of inputs, and a last-bit difference per step is enough to make a chaotic task
// (HalfCheetah) drift away from the trajectory it had in training. Calling the same functions torch
// calls, with the same shapes, keeps the deployed actions as close to the trainer's as this machine's
// arithmetic allows; what the runtime guarantees, and checks at load, is agreement with the module to
// 1e-5 (compare_backends).

std::vector<float> tensor_values(const at::Tensor& t) {
  at::Tensor c = t.detach().to(at::kFloat).contiguous().reshape({-1});
  return std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
}

Activation parse_activation(const Json& j, const std::string& what) {
  const std::string& s = json::string(j, what);
  if (s == "relu") return Activation::ReLU;
  if (s == "tanh") return Activation::Tanh;
  if (s == "identity") return Activation::Identity;
  throw PolicyFormatError(what + " '" + s + "' is not one of relu, tanh, identity");
}

void apply(Activation a, float* x, std::int64_t n, VmsTanhFn vml) {
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
    case Activation::Identity:
      break;
  }
}

}  // namespace

bool all_finite(const float* p, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i)
    if (!std::isfinite(p[i])) return false;
  return true;
}

std::string MlpNetwork::kernels() const {
  return std::string("sgemm: ") + (sgemm ? "mkl" : "aten addmm") + ", tanh: " + (vms_tanh ? "mkl vml" : "libm");
}

MlpNetwork build_mlp(const torch::jit::Module& module, const PolicyMetadata& meta, const std::string& mlp_kernels) {
  MlpNetwork net;
  const Json j = json::parse(meta.json);
  const Json& plan = json::member(j, "network");
  const Json& kind = json::member(plan, "kind");
  if (!plan.is_object() || kind.is_null() || json::string(kind, "network.kind") != "mlp")
    throw PolicyFormatError("the metadata describes no MLP network");
  net.hidden_act = parse_activation(json::member(plan, "hidden_activation"), "network.hidden_activation");
  net.output_act = parse_activation(json::member(plan, "output_activation"), "network.output_activation");

  std::unordered_map<std::string, at::Tensor> params, buffers;
  for (const auto& p : module.named_parameters(/*recurse=*/true)) params[p.name] = p.value;
  for (const auto& b : module.named_buffers(/*recurse=*/true)) buffers[b.name] = b.value;
  auto get = [&](std::unordered_map<std::string, at::Tensor>& from, const std::string& name,
                 std::vector<std::int64_t> shape) {
    auto it = from.find(name);
    if (it == from.end()) throw PolicyFormatError("the module has no tensor '" + name + "'");
    const at::Tensor& t = it->second;
    if (t.scalar_type() != at::kFloat || t.sizes().vec() != shape)
      throw PolicyFormatError("tensor '" + name + "' is " + c10::str(t.sizes()) + " " +
                              c10::toString(t.scalar_type()) + ", expected " + c10::str(at::IntArrayRef(shape)) +
                              " float32");
    return t;
  };

  std::int64_t in = meta.obs_dim;
  net.width = std::max(meta.obs_dim, meta.act_dim);
  const Json& specs = json::member(plan, "layers");
  if (!specs.is_array() || specs.empty()) throw PolicyFormatError("network.layers is empty");
  for (const Json& s : specs) {
    const at::Tensor w = get(params, json::string(json::member(s, "weight"), "network.layers[].weight"),
                             {json::integer(json::member(s, "out"), "out"), in});
    const at::Tensor b = get(params, json::string(json::member(s, "bias"), "network.layers[].bias"), {w.size(0)});
    MlpLayer L;
    L.in = static_cast<int>(in);
    L.out = static_cast<int>(w.size(0));
    L.weight = tensor_values(w);
    L.bias = tensor_values(b);
    if (!all_finite(L.weight.data(), L.weight.size()) || !all_finite(L.bias.data(), L.bias.size()))
      throw PolicyFormatError("the weights of layer '" + json::string(json::member(s, "weight"), "") +
                              "' are not all finite");
    net.layers.push_back(std::move(L));
    in = w.size(0);
    net.width = std::max(net.width, in);
  }
  if (in != meta.act_dim)
    throw PolicyFormatError("the last layer has " + std::to_string(in) + " outputs, act_dim is " +
                            std::to_string(meta.act_dim));

  net.normalize = module.hasattr("normalize") && module.attr("normalize").toBool();
  if (net.normalize) {
    net.mean = tensor_values(get(buffers, "obs_mean", {meta.obs_dim}));
    net.stdev = tensor_values(get(buffers, "obs_std", {meta.obs_dim}));
    net.clip = static_cast<float>(module.attr("obs_clip").toDouble());
  }
  for (float v : tensor_values(get(buffers, "action_low", {meta.act_dim}))) net.low_d.push_back(v);
  for (float v : tensor_values(get(buffers, "action_high", {meta.act_dim}))) net.high_d.push_back(v);
  // "portable" ignores MKL even where torch has it: what the mlp backend computes on a torch build
  // without MKL (aarch64 wheels), and how the tests keep that path honest on x86.
  net.sgemm = mlp_kernels == "portable" ? nullptr : find_sgemm();
  net.vms_tanh = mlp_kernels == "portable" ? nullptr : find_vms_tanh();
  return net;
}

// x is read and never written; every hidden layer goes into scratch (h0, h1) that this call writes
// before it reads, so a call's result depends on its input alone.
void forward_mlp(const MlpNetwork& net, const float* x, std::int64_t n, float* h0, float* h1, float* out) {
  const int rows = static_cast<int>(n);
  const float one = 1.0f;
  const float* in = x;
  float* h = h0;
  for (std::size_t l = 0; l < net.layers.size(); ++l) {
    const MlpLayer& L = net.layers[l];
    // h = bias, then h += x W^T: the same BLAS call torch makes for nn.Linear (addmm(bias, x, W^T)).
    for (std::int64_t r = 0; r < n; ++r) std::memcpy(h + r * L.out, L.bias.data(), sizeof(float) * L.out);
    gemm(net.sgemm, false, true, rows, L.out, L.in, one, in, L.in, L.weight.data(), L.in, one, h, L.out);
    const bool last_layer = l + 1 == net.layers.size();
    apply(last_layer ? net.output_act : net.hidden_act, h, n * L.out, net.vms_tanh);
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
