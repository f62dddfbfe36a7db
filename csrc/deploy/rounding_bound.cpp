#include "rounding_bound.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "metadata.hpp"

namespace pydpg {

namespace {

// This routine's own arithmetic: the centre is computed in float64, and its rounding is part of
// every bound (so the centre need not be exact, only the same for the evaluations compared).
constexpr double kU64 = 0x1p-53;
// Underflow: a float32 result below the smallest normal number (or flushed to zero) is off by less
// than this, whatever the rounding mode.
constexpr double kTiny = 0x1p-126;
constexpr double kInf = std::numeric_limits<double>::infinity();

double gamma(double k, double u) { return k * u < 1.0 ? k * u / (1.0 - k * u) : kInf; }

// Each feature of one observation row as it passes through the network: v, the centre (float64),
// and e, a bound on how far any evaluation's value of that feature can be from v.
struct Row {
  std::vector<double> v, e;
  void resize(std::size_t n) {
    v.assign(n, 0.0);
    e.assign(n, 0.0);
  }
};

class Bounder {
 public:
  explicit Bounder(const Arithmetic& a)
      : u_(a.unit_roundoff), uc_(a.constants), f32_out_(a.float32_output), fn_(2.0 * kTranscendentalUlps * u_) {}

  // One rounding of a result whose centre is v and whose inputs' errors put it within e of v: the
  // evaluation's rounding (u times its result), the centre's own float64 rounding, underflow.
  double rounded(double v, double e) const { return e + u_ * (std::fabs(v) + e) + kU64 * std::fabs(v) + kTiny; }

  // A stored constant as an evaluation sees it: off by `constants` relative to the file's value.
  double constant_error(double c) const { return uc_ * std::fabs(c); }

  // out = W x + b for one row. The evaluation computes fl(W' x' + b') with x' within e of v and
  // W', b' within uc of W, b; any summation order of n + 1 terms errs by gamma_{n+1} (|W'| |x'| + |b'|).
  void linear(const MlpLayer& L, const double* v, const double* e, double* ov, double* oe) const {
    const int n = L.in;
    const double g = gamma(n + 1, u_) * (1.0 + uc_) + uc_ + gamma(n + 1, kU64);
    for (int j = 0; j < L.out; ++j) {
      const float* w = L.weight.data() + static_cast<std::size_t>(j) * n;
      double acc = L.bias[j], prop = 0.0, mag = std::fabs(L.bias[j]);
      for (int i = 0; i < n; ++i) {
        const double aw = std::fabs(static_cast<double>(w[i]));
        acc += static_cast<double>(w[i]) * v[i];
        prop += aw * e[i];
        mag += aw * (std::fabs(v[i]) + e[i]);
      }
      ov[j] = acc;
      // The bound's own sums are float64 too and may round down by (n + 2) 2^-53 relative; 2^-40 covers it.
      oe[j] = (prop + g * mag + (n + 1) * kTiny) * (1.0 + 0x1p-40);
    }
  }

  // A monotone non-decreasing f on [v - e, v + e]: the image's distance from f(v) (the double
  // evaluations of f at the ends err by a few 2^-53, added), plus f's own error in the evaluation.
  template <typename F>
  void monotone(double& v, double& e, F f, double own) const {
    const double lo = f(v - e), mid = f(v), hi = f(v + e);
    const double spread = std::max(hi - mid, mid - lo) + 4.0 * kU64 * (std::fabs(lo) + std::fabs(hi) + std::fabs(mid));
    v = mid;
    e = spread + own * (std::fabs(mid) + spread);
  }

  void activate(Activation a, double& v, double& e) const {
    if (!(std::isfinite(v) && std::isfinite(e))) {
      e = kInf;
      return;
    }
    switch (a) {
      case Activation::ReLU:
        monotone(v, e, [](double x) { return x < 0.0 ? 0.0 : x; }, 0.0);
        break;
      case Activation::Tanh:
        monotone(v, e, [](double x) { return std::tanh(x); }, fn_);
        e += kTiny;
        break;
      case Activation::ELU: {
        // expm1 below 0, or exp(x) - 1 (exp's error, <= 1 there, and the subtraction's rounding).
        const bool negative = v - e < 0.0;
        monotone(v, e, [](double x) { return x > 0.0 ? x : std::expm1(x); }, negative ? fn_ : 0.0);
        if (negative) e += fn_ + u_ + kTiny;
        break;
      }
      case Activation::Identity:
        break;
    }
  }

  static void clamp(double& v, double& e, double lo, double hi) {
    const double a = std::min(std::max(v - e, lo), hi), m = std::min(std::max(v, lo), hi),
                 b = std::min(std::max(v + e, lo), hi);
    v = m;
    e = std::max(b - m, m - a);
  }

  // (x - mean) / std and the clip, the module's first step; x itself is the same float32 number in
  // every evaluation. A reciprocal-multiply variant rounds once more: one extra u covers it.
  void normalize(const MlpNetwork& net, std::int64_t k, double x, double& v, double& e) const {
    const double m = net.mean[k], s = net.stdev[k];
    double t = x - m;
    double et = rounded(t, constant_error(m));
    v = t / s;
    e = rounded(v, (et + std::fabs(v) * constant_error(s)) / (std::fabs(s) * (1.0 - uc_)));
    e += u_ * (std::fabs(v) + e);
    if (net.clip > 0) clamp(v, e, -net.clip, net.clip);
  }

  // BatchRenorm in evaluation mode: ((x - mean) * rsqrt(var + eps)) * weight + bias.
  void batch_renorm(const MlpLayer& L, int i, double& v, double& e) const {
    const double mean = L.norm_mean[i], gain = L.norm_gain[i], shift = L.norm_shift[i];
    const double s = 1.0 / std::sqrt(static_cast<double>(L.norm_var[i]) + L.norm_eps);
    // The evaluation's scale: eps as a float32 scalar, the sum, sqrt and the division (or an rsqrt
    // of a few ulps), and var's own constant error.
    const double es = (uc_ + gamma(3, u_) + fn_ + 4.0 * kU64) * std::fabs(s);
    double t = v - mean;
    double et = rounded(t, e + constant_error(mean));
    const double t2 = t * s;
    const double et2 = rounded(t2, et * (std::fabs(s) + es) + std::fabs(t) * es);
    const double t3 = t2 * gain;
    const double et3 = rounded(t3, et2 * std::fabs(gain) * (1.0 + uc_) + std::fabs(t2) * constant_error(gain));
    v = t3 + shift;
    e = rounded(v, et3 + constant_error(shift));
  }

  // TD7's AvgL1Norm on features [at, at + len): x / max(mean|x|, eps).
  void avg_l1(double* v, double* e, int len, double eps) const {
    double sum = 0.0, prop = 0.0, mag = 0.0;
    for (int i = 0; i < len; ++i) {
      sum += std::fabs(v[i]);
      prop += e[i];
      mag += std::fabs(v[i]) + e[i];
    }
    const double es = (prop + (gamma(len - 1, u_) + gamma(len, kU64)) * mag + len * kTiny) * (1.0 + 0x1p-40);
    double m = sum / len;
    double em = rounded(m, es / len);
    clamp(m, em, eps, kInf);
    em += 0x1p-24 * eps;  // eps applied as a float32 scalar by some evaluations, as a double by others
    const double low = m - em;
    for (int i = 0; i < len; ++i) {
      if (!(low > 0.0) || !std::isfinite(m)) {
        e[i] = kInf;
        continue;
      }
      const double y = v[i] / m;
      e[i] = rounded(y, (e[i] + std::fabs(y) * em) / low);
      v[i] = y;
    }
  }

  // The module's last steps: clamp to [-1, 1], low + (a + 1) / 2 (high - low) (float64 in the module,
  // but bounded as if in the evaluation's own arithmetic, which covers both), float32 output, clamp
  // to the bounds. The bounds may be the env's float64 values (export's reference) or their float32
  // roundings (the file): 2^-24 of each covers either.
  void scale(double lo, double hi, double& v, double& e) const {
    clamp(v, e, -1.0, 1.0);
    const double elo = 0x1p-24 * std::fabs(lo), ehi = 0x1p-24 * std::fabs(hi);
    const double s1 = v + 1.0;
    const double es1 = rounded(s1, e);
    const double h = hi - lo;
    const double eh = rounded(h, elo + ehi);
    const double s2 = s1 * 0.5;
    const double es2 = rounded(s2, 0.5 * es1);
    const double s3 = s2 * h;
    const double es3 = rounded(s3, es2 * (std::fabs(h) + eh) + std::fabs(s2) * eh);
    v = lo + s3;
    e = rounded(v, elo + es3);
    if (f32_out_) e += 0x1p-24 * (std::fabs(v) + e) + 0x1p-149;
    clamp(v, e, lo, hi);
    e += std::max(elo, ehi);
  }

 private:
  double u_, uc_;
  bool f32_out_;
  double fn_;  // a transcendental function's own relative error: kTranscendentalUlps ulps, 2 u each
};

// A chain of layers on one row, each after its input norm and before its activation.
void layers(const Bounder& b, const std::vector<MlpLayer>& chain, Activation hidden, Activation last, Row& x,
            Row& tmp) {
  for (std::size_t l = 0; l < chain.size(); ++l) {
    const MlpLayer& L = chain[l];
    if (!L.norm_mean.empty())
      for (int i = 0; i < L.in; ++i) b.batch_renorm(L, i, x.v[i], x.e[i]);
    tmp.resize(L.out);
    b.linear(L, x.v.data(), x.e.data(), tmp.v.data(), tmp.e.data());
    const Activation a = l + 1 == chain.size() ? last : hidden;
    for (int j = 0; j < L.out; ++j) b.activate(a, tmp.v[j], tmp.e[j]);
    std::swap(x, tmp);
  }
}

}  // namespace

void rounding_bound(const MlpNetwork& net, const float* obs, std::int64_t n, const Arithmetic& arith, double* centre,
                    double* bound) {
  if (net.layers.empty()) throw PolicyArgumentError("rounding_bound: the network has no layers");
  if (!(arith.unit_roundoff > 0.0 && arith.unit_roundoff < 0.01) || !(arith.constants >= 0.0 && arith.constants < 0.01))
    throw PolicyArgumentError("rounding_bound: unit_roundoff must be in (0, 0.01) and constants in [0, 0.01)");
  const Bounder b(arith);
  const std::int64_t D = net.encoder.empty() ? net.layers.front().in : net.state.in;
  const std::int64_t A = net.layers.back().out;
  Row in, x, tmp;
  for (std::int64_t r = 0; r < n; ++r) {
    in.resize(D);
    for (std::int64_t k = 0; k < D; ++k) {
      const double raw = obs[r * D + k];
      if (net.normalize)
        b.normalize(net, k, raw, in.v[k], in.e[k]);
      else
        in.v[k] = raw;  // the same float32 number in every evaluation
    }
    if (net.encoder.empty()) {
      x = in;
    } else {
      // SALE: [AvgL1Norm(state_layer(x)), AvgL1Norm(encoder(x))], then the layers.
      Row zs = in;
      layers(b, net.encoder, net.encoder_act, Activation::Identity, zs, tmp);
      const int S = net.state.out, Z = static_cast<int>(zs.v.size());
      x.resize(S + Z);
      b.linear(net.state, in.v.data(), in.e.data(), x.v.data(), x.e.data());
      std::copy(zs.v.begin(), zs.v.end(), x.v.begin() + S);
      std::copy(zs.e.begin(), zs.e.end(), x.e.begin() + S);
      b.avg_l1(x.v.data(), x.e.data(), S, net.norm_eps);
      b.avg_l1(x.v.data() + S, x.e.data() + S, Z, net.norm_eps);
    }
    layers(b, net.layers, net.hidden_act, net.output_act, x, tmp);
    for (std::int64_t k = 0; k < A; ++k) {
      double v = x.v[k], e = x.e[k];
      if (std::isfinite(v) && std::isfinite(e))
        b.scale(net.low_d[k], net.high_d[k], v, e);
      else
        e = kInf;
      centre[r * A + k] = v;
      bound[r * A + k] = std::isfinite(e) ? e : kInf;
    }
  }
}

MlpNetwork plan_from_tensors(const std::string& metadata_json, const NamedTensors& tensors, bool normalize,
                             double obs_clip) {
  const PolicyMetadata meta = parse_metadata(metadata_json, "<the policy being exported>");
  return build_mlp(tensors, normalize, obs_clip, meta, "portable");
}

}  // namespace pydpg
