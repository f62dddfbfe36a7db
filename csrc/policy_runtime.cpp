// PolicyRuntime: load + validate + warm up once, then act() with preallocated buffers.
//
// Two backends compute the same function:
//   "mlp"          the exporter describes the network (Linear layers + activation) in the metadata;
//                  the runtime copies the weights out of the TorchScript module and runs the layers
//                  itself: BLAS sgemm into preallocated buffers plus plain loops for bias,
//                  activation, normalization and scaling. No tensor, no interpreter, no allocation.
//                  It is accepted only after it reproduces the module's own forward at load time.
//   "torchscript"  module.forward() through libtorch's interpreter, for actors the plan cannot
//                  describe. The interpreter allocates its intermediate tensors on every call.
#include "policy_runtime.hpp"

#include <dlfcn.h>
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <map>
#include <random>
#include <sstream>
#include <unordered_map>

#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>
#include <torch/csrc/jit/runtime/graph_executor.h>
#include <torch/script.h>

#include "json.hpp"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define PYDPG_ASAN_POISON(p, bytes) ASAN_POISON_MEMORY_REGION(p, bytes)
#define PYDPG_ASAN_UNPOISON(p, bytes) ASAN_UNPOISON_MEMORY_REGION(p, bytes)
#else
#define PYDPG_ASAN_POISON(p, bytes) ((void)(p), (void)(bytes))
#define PYDPG_ASAN_UNPOISON(p, bytes) ((void)(p), (void)(bytes))
#endif

namespace pydpg {

namespace {

constexpr const char* kMetadataFile = "pydpg_policy.json";
constexpr const char* kModelFile = "model.xml";
constexpr std::int64_t kMaxDim = 1 << 20;

// MKL's Fortran sgemm, which the x86 torch wheels export from libtorch_cpu. Resolved at run time:
// a torch build without it falls back to at::mm on tensor views (which allocates per call).
using SgemmFn = void (*)(const char*, const char*, const int*, const int*, const int*, const float*,
                         const float*, const int*, const float*, const int*, const float*, float*,
                         const int*);

SgemmFn find_sgemm() {
  static SgemmFn fn = reinterpret_cast<SgemmFn>(dlsym(RTLD_DEFAULT, "sgemm_"));
  return fn;
}

// torch.tanh on float CPU tensors is MKL VML's vmsTanh with these flags (ATen/cpu/vml.h); glibc's
// tanhf differs from it in the last bit for ~40% of inputs, and a last-bit difference per step is
// enough to make a chaotic task (HalfCheetah) drift away from the trajectory it had in training.
// Calling the same functions torch calls, with the same shapes, keeps the deployed actions as close
// to the trainer's as this machine's arithmetic allows; what the runtime guarantees, and checks at
// load, is agreement with the module to 1e-5 (compare_backends).
using VmsTanhFn = void (*)(int, const float*, float*, long long);
constexpr long long kVmlMode = 0x2 | 0x140000 | 0x100;  // VML_HA | VML_FTZDAZ_OFF | VML_ERRMODE_IGNORE

VmsTanhFn find_vms_tanh() {
  static VmsTanhFn fn = reinterpret_cast<VmsTanhFn>(dlsym(RTLD_DEFAULT, "vmsTanh"));
  return fn;
}

std::string first_line(const std::string& s) {
  const auto nl = s.find('\n');
  return nl == std::string::npos ? s : s.substr(0, nl);
}

std::string fmt(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

bool all_finite(const float* p, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i)
    if (!std::isfinite(p[i])) return false;
  return true;
}

std::vector<float> to_floats(const std::vector<double>& v) { return std::vector<float>(v.begin(), v.end()); }

std::vector<float> tensor_values(const at::Tensor& t) {
  at::Tensor c = t.detach().to(at::kFloat).contiguous().reshape({-1});
  return std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
}

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

struct Layer {
  int in = 0, out = 0;
  std::vector<float> weight;  // [out, in] row-major, as nn.Linear stores it
  std::vector<float> bias;    // [out]
  at::Tensor weight_t;        // fallback when no sgemm: the module's own parameter, transposed view
  at::Tensor bias_t;
};

enum class Activation { ReLU, Tanh, Identity };

Activation parse_activation(const Json& j, const std::string& what) {
  const std::string& s = j.string(what);
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


// ---- archive integrity ------------------------------------------------------------------------------
// torch::jit::load does not check the CRC-32 that every zip entry carries, so a flipped bit in a
// weight tensor would load as a silently different policy. Before handing the bytes to libtorch we
// walk the zip's central directory and verify every stored (uncompressed) entry: the tensors, the
// pickles and the metadata. Deflated entries (TorchScript source) are left to libtorch, whose parser
// rejects damaged code.
std::uint32_t crc32(const unsigned char* p, std::size_t n) {
  static const auto table = [] {
    std::vector<std::uint32_t> t(256);
    for (std::uint32_t i = 0; i < 256; ++i) {
      std::uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  std::uint32_t c = 0xFFFFFFFFu;
  for (std::size_t i = 0; i < n; ++i) c = table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

struct Reader {
  const std::string& b;
  std::uint64_t le(std::uint64_t at, int bytes) const {
    if (at + bytes > b.size()) throw PolicyFormatError("zip structure points past the end of the file");
    std::uint64_t v = 0;
    for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(b[at + i]);
    return v;
  }
};

void verify_archive(const std::string& bytes, const std::string& path) {
  const Reader r{bytes};
  const std::string where = "policy file '" + path + "' is truncated or corrupt: ";
  try {
    if (bytes.size() < 22) throw PolicyFormatError("too short for a zip archive");
    std::int64_t eocd = -1;
    const std::int64_t lowest = std::max<std::int64_t>(0, static_cast<std::int64_t>(bytes.size()) - 22 - 65535);
    for (std::int64_t i = static_cast<std::int64_t>(bytes.size()) - 22; i >= lowest; --i)
      if (r.le(i, 4) == 0x06054b50u) {
        eocd = i;
        break;
      }
    if (eocd < 0) throw PolicyFormatError("no zip end-of-central-directory record");
    std::uint64_t entries = r.le(eocd + 10, 2), cd_offset = r.le(eocd + 16, 4);
    if (entries == 0xFFFF || cd_offset == 0xFFFFFFFFu) {
      if (eocd < 20 || r.le(eocd - 20, 4) != 0x07064b50u) throw PolicyFormatError("missing zip64 locator");
      const std::uint64_t z = r.le(eocd - 20 + 8, 8);
      if (r.le(z, 4) != 0x06064b50u) throw PolicyFormatError("bad zip64 end-of-central-directory record");
      entries = r.le(z + 32, 8);
      cd_offset = r.le(z + 48, 8);
    }
    if (entries == 0 || entries > bytes.size() / 46) throw PolicyFormatError("implausible zip entry count");
    std::uint64_t at = cd_offset;
    for (std::uint64_t e = 0; e < entries; ++e) {
      if (r.le(at, 4) != 0x02014b50u) throw PolicyFormatError("damaged zip central directory");
      const std::uint64_t method = r.le(at + 10, 2), crc = r.le(at + 16, 4), name_len = r.le(at + 28, 2),
                          extra_len = r.le(at + 30, 2), comment_len = r.le(at + 32, 2);
      std::uint64_t csize = r.le(at + 20, 4), usize = r.le(at + 24, 4), local = r.le(at + 42, 4);
      if (at + 46 + name_len > bytes.size()) throw PolicyFormatError("damaged zip central directory");
      const std::string name = bytes.substr(at + 46, name_len);
      // zip64 extra field: 64-bit values for whichever of the three fields hold 0xFFFFFFFF.
      for (std::uint64_t x = at + 46 + name_len; x + 4 <= at + 46 + name_len + extra_len;) {
        const std::uint64_t id = r.le(x, 2), len = r.le(x + 2, 2);
        if (id == 1) {
          std::uint64_t f = x + 4;
          if (usize == 0xFFFFFFFFu) usize = r.le(f, 8), f += 8;
          if (csize == 0xFFFFFFFFu) csize = r.le(f, 8), f += 8;
          if (local == 0xFFFFFFFFu) local = r.le(f, 8);
        }
        x += 4 + len;
      }
      if (r.le(local, 4) != 0x04034b50u) throw PolicyFormatError("entry '" + name + "' has no local header");
      const std::uint64_t data = local + 30 + r.le(local + 26, 2) + r.le(local + 28, 2);
      if (data + csize > bytes.size()) throw PolicyFormatError("entry '" + name + "' extends past the end of the file");
      if (method == 0) {
        if (csize != usize) throw PolicyFormatError("entry '" + name + "' has inconsistent sizes");
        const auto* p = reinterpret_cast<const unsigned char*>(bytes.data()) + data;
        if (crc32(p, csize) != crc) throw PolicyFormatError("entry '" + name + "' fails its CRC-32 check");
      }
      at += 46 + name_len + extra_len + comment_len;
    }
  } catch (const PolicyFormatError& e) {
    throw PolicyFormatError(where + e.what());
  }
}

// libtorch builds each tensor from its pickled size/stride/offset and a storage read from its own
// zip entry, without checking that the storage is large enough: an emptied or cut entry yields a
// tensor that reads past its buffer (found by tests/test_policy_fuzz.py as a segfault). Check every
// tensor the module holds before anything reads one.
void check_tensor_storage(const torch::jit::Module& module, const std::string& path) {
  for (const auto& a : module.named_attributes(/*recurse=*/true)) {
    if (!a.value.isTensor()) continue;
    const at::Tensor& t = a.value.toTensor();
    if (!t.defined() || t.numel() == 0) continue;
    std::int64_t last = t.storage_offset();
    bool ok = last >= 0;
    for (std::int64_t d = 0; d < t.dim(); ++d) {
      if (t.stride(d) < 0) ok = false;
      last += (t.size(d) - 1) * t.stride(d);
    }
    // An emptied entry leaves a storage that claims its bytes but has no data pointer.
    if (!t.has_storage() || t.storage().data_ptr().get() == nullptr) ok = false;
    const std::uint64_t need = static_cast<std::uint64_t>(last + 1) * t.element_size();
    if (!ok || t.storage().nbytes() < need)
      throw PolicyFormatError("policy file '" + path + "' is truncated or corrupt: tensor '" + a.name + "' needs " +
                              std::to_string(need) + " bytes, its storage holds " +
                              std::to_string(ok ? t.storage().nbytes() : 0));
  }
}

}  // namespace

NonFinitePolicy parse_nonfinite_policy(const std::string& name) {
  if (name == "raise") return NonFinitePolicy::Raise;
  if (name == "hold") return NonFinitePolicy::HoldLast;
  if (name == "safe") return NonFinitePolicy::Safe;
  throw PolicyArgumentError("on_nonfinite must be 'raise', 'hold' or 'safe', got '" + name + "'");
}

const char* to_string(NonFinitePolicy p) {
  switch (p) {
    case NonFinitePolicy::Raise: return "raise";
    case NonFinitePolicy::HoldLast: return "hold";
    case NonFinitePolicy::Safe: return "safe";
  }
  return "?";
}

struct PolicyRuntime::Impl {
  std::string path;
  PolicyOptions opt;
  PolicyMetadata meta;
  std::map<std::string, std::string> extras;
  torch::jit::Module module;
  std::string backend;  // "mlp" or "torchscript", for users; `mlp` below is what the hot path reads
  bool mlp = false;

  // "mlp" backend
  std::vector<Layer> layers;
  Activation hidden_act = Activation::ReLU, output_act = Activation::Tanh;
  bool normalize = false;
  float clip = 0.0f;
  std::vector<float> mean, stdev;
  std::vector<double> low_d, high_d;  // the module's float32 bounds, widened exactly
  SgemmFn sgemm = nullptr;     // MKL's, or null: at::addmm_ (allocates per call)
  VmsTanhFn vms_tanh = nullptr;  // MKL VML's, or null: std::tanh
  std::int64_t width = 0;  // widest layer, sizes the hidden buffers

  // Buffers, sized once for max_batch. `obs_in` holds the guarded (and, for "mlp", normalized)
  // observation rows and is only ever read by forward(); `h0`/`h1` are the hidden layers' scratch,
  // which forward() overwrites before it reads them; `y` receives the actions.
  AlignedFloats obs_in, row_in, h0, h1, y;
  std::vector<float> last, safe;
  std::vector<unsigned char> bad;
  at::Tensor input;  // "torchscript" backend: [max_batch, obs_dim], filled in place

  // Statistics.
  std::vector<std::uint64_t> lat_ns;
  std::uint64_t lat_count = 0, lat_sum_ns = 0, lat_max_ns = 0;
  GuardStats guard;

  std::int64_t obs_dim() const { return meta.obs_dim; }
  std::int64_t act_dim() const { return meta.act_dim; }

  void load_file();
  void parse_metadata();
  void probe_module();
  void build_mlp();
  void check_options();
  void allocate();
  void warm_up();
  void use_backend(const char* name) {
    backend = name;
    mlp = backend == "mlp";
  }
  // One observation row, raw and finite, into the units the backend reads: normalized and clipped
  // for "mlp" (the module does that itself for "torchscript").
  void load_row(const float* raw, float* dst) const {
    const std::int64_t D = meta.obs_dim;
    if (!(mlp && normalize)) {
      std::memcpy(dst, raw, sizeof(float) * D);
      return;
    }
    for (std::int64_t k = 0; k < D; ++k) {
      float v = (raw[k] - mean[k]) / stdev[k];
      if (clip > 0) v = std::min(std::max(v, -clip), clip);
      dst[k] = v;
    }
  }
  void mlp_rows(const float* x, std::int64_t n, float* out);
  void torchscript_rows(const float* x, std::int64_t n, float* out);
  void forward(std::int64_t batch);
  double compare_backends();
};

void PolicyRuntime::Impl::load_file() {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0)
    throw PolicyFileError("cannot open policy file '" + path + "': " + std::strerror(errno));
  if (S_ISDIR(st.st_mode)) throw PolicyFileError("policy file '" + path + "' is a directory");
  std::ifstream f(path, std::ios::binary);
  if (!f) throw PolicyFileError("cannot open policy file '" + path + "': " + std::strerror(errno));
  if (st.st_size == 0) throw PolicyFormatError("policy file '" + path + "' is empty");
  std::string bytes(static_cast<std::size_t>(st.st_size), '\0');
  f.read(&bytes[0], st.st_size);
  if (f.gcount() != st.st_size) throw PolicyFileError("cannot read policy file '" + path + "'");
  f.close();
  if (bytes.compare(0, 4, "PK\x03\x04") != 0)
    throw PolicyFormatError("policy file '" + path +
                            "' is not a TorchScript archive (no zip header); export it with `pydpg export`");
  verify_archive(bytes, path);

  // Load from the bytes just verified, not the path again: the file may change in between.
  torch::jit::ExtraFilesMap files{{kMetadataFile, ""}, {kModelFile, ""}};
  try {
    std::istringstream in(bytes);
    module = torch::jit::load(in, torch::kCPU, files);
  } catch (const std::exception& e) {
    throw PolicyFormatError("policy file '" + path + "' is truncated, corrupt or not TorchScript: " +
                            first_line(e.what()));
  }
  for (auto& kv : files) extras[kv.first] = kv.second;
  check_tensor_storage(module, path);
  if (extras[kMetadataFile].empty())
    throw PolicyFormatError("'" + path + "' is a TorchScript module but not a pydpg policy: it carries no " +
                            kMetadataFile + " (export policies with `pydpg export` or pydpg.export_policy)");
}

void PolicyRuntime::Impl::parse_metadata() {
  const std::string& text = extras[kMetadataFile];
  meta.json = text;
  try {
    const Json j = Json::parse(text);
    if (!j.is_object()) throw JsonError("the metadata is not a JSON object");
    if (j["format"].is_null() || j["format"].string("format") != "pydpg-policy")
      throw JsonError("field 'format' is not \"pydpg-policy\"");
    const std::int64_t version = j["format_version"].integer("format_version");
    if (version != kFormatVersion)
      throw PolicyFormatError("policy file '" + path + "' has format version " + std::to_string(version) +
                              "; this runtime reads version " + std::to_string(kFormatVersion) +
                              (version > kFormatVersion ? " (upgrade pydpg)" : " (export the policy again)"));
    meta.format_version = static_cast<int>(version);
    meta.pydpg_version = j["pydpg_version"].is_string() ? j["pydpg_version"].string("") : "";
    meta.torch_version = j["torch_version"].is_string() ? j["torch_version"].string("") : "";
    meta.env_id = j["env_id"].is_string() ? j["env_id"].string("") : "";
    meta.obs_dim = j["obs_dim"].integer("obs_dim");
    meta.act_dim = j["act_dim"].integer("act_dim");
    if (meta.obs_dim < 1 || meta.obs_dim > kMaxDim) throw JsonError("obs_dim out of range");
    if (meta.act_dim < 1 || meta.act_dim > kMaxDim) throw JsonError("act_dim out of range");
    meta.action_low = to_floats(j["action_low"].numbers("action_low"));
    meta.action_high = to_floats(j["action_high"].numbers("action_high"));
    if (static_cast<std::int64_t>(meta.action_low.size()) != meta.act_dim ||
        static_cast<std::int64_t>(meta.action_high.size()) != meta.act_dim)
      throw JsonError("action_low/action_high must have act_dim entries");
    for (std::int64_t i = 0; i < meta.act_dim; ++i)
      if (!std::isfinite(meta.action_low[i]) || !std::isfinite(meta.action_high[i]) ||
          !(meta.action_low[i] < meta.action_high[i]))
        throw JsonError("action bounds [" + fmt(meta.action_low[i]) + ", " + fmt(meta.action_high[i]) +
                        "] of action " + std::to_string(i) + " are not finite with low < high");
    const Json& n = j["normalization"];
    if (!n.is_null()) {
      const auto m = n["mean"].numbers("normalization.mean");
      const auto v = n["var"].numbers("normalization.var");
      const double eps = n["eps"].number("normalization.eps");
      const double clip = n["clip"].is_null() ? 0.0 : n["clip"].number("normalization.clip");
      if (static_cast<std::int64_t>(m.size()) != meta.obs_dim || static_cast<std::int64_t>(v.size()) != meta.obs_dim)
        throw JsonError("normalization.mean/var must have obs_dim entries");
      if (!(eps >= 0) || !(clip >= 0) || !std::isfinite(clip)) throw JsonError("normalization eps/clip must be >= 0");
      meta.normalized = true;
      meta.obs_clip = static_cast<float>(clip);
      for (std::int64_t i = 0; i < meta.obs_dim; ++i) {
        if (!std::isfinite(m[i]) || !std::isfinite(v[i]) || !(v[i] + eps > 0))
          throw JsonError("normalization statistics of observation " + std::to_string(i) + " are not finite/positive");
        meta.obs_mean.push_back(static_cast<float>(m[i]));
        meta.obs_std.push_back(static_cast<float>(std::sqrt(v[i] + eps)));
      }
    }
    if (j["training_steps"].is_number()) meta.training_steps = j["training_steps"].integer("training_steps");
    if (j["eval_return"].is_number()) {
      meta.eval_return = j["eval_return"].number("eval_return");
      meta.has_eval_return = true;
    }
  } catch (const JsonError& e) {
    throw PolicyFormatError("policy file '" + path + "' has invalid pydpg metadata: " + e.what());
  }
}

// Run the module once: it must map [1, obs_dim] float32 to [1, act_dim] float32.
void PolicyRuntime::Impl::probe_module() {
  try {
    module.eval();
    auto out = module.forward({torch::zeros({1, meta.obs_dim})});
    if (!out.isTensor()) throw PolicyFormatError("forward() does not return a tensor");
    const at::Tensor t = out.toTensor();
    if (t.scalar_type() != at::kFloat || t.dim() != 2 || t.size(0) != 1 || t.size(1) != meta.act_dim)
      throw PolicyFormatError("forward() maps [1, " + std::to_string(meta.obs_dim) + "] to " +
                              c10::str(t.sizes()) + " " + std::string(c10::toString(t.scalar_type())) +
                              ", metadata says [1, " + std::to_string(meta.act_dim) + "] float32");
  } catch (const PolicyFormatError& e) {
    throw PolicyFormatError("policy file '" + path + "': " + e.what());
  } catch (const std::exception& e) {
    throw PolicyFormatError("policy file '" + path + "': the module does not accept a [1, " +
                            std::to_string(meta.obs_dim) + "] float32 observation: " + first_line(e.what()));
  }
}

// Read the network plan written by the exporter and copy the weights it names out of the module.
void PolicyRuntime::Impl::build_mlp() {
  const Json j = Json::parse(meta.json);
  const Json& net = j["network"];
  if (!net.is_object() || net["kind"].is_null() || net["kind"].string("network.kind") != "mlp")
    throw PolicyFormatError("the metadata describes no MLP network");
  hidden_act = parse_activation(net["hidden_activation"], "network.hidden_activation");
  output_act = parse_activation(net["output_activation"], "network.output_activation");

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
  width = std::max(meta.obs_dim, meta.act_dim);
  const auto& specs = net["layers"].items();
  if (specs.empty()) throw PolicyFormatError("network.layers is empty");
  for (const auto& s : specs) {
    const at::Tensor w = get(params, s["weight"].string("network.layers[].weight"), {s["out"].integer("out"), in});
    const at::Tensor b = get(params, s["bias"].string("network.layers[].bias"), {w.size(0)});
    Layer L;
    L.in = static_cast<int>(in);
    L.out = static_cast<int>(w.size(0));
    L.weight = tensor_values(w);
    L.bias = tensor_values(b);
    if (!all_finite(L.weight.data(), L.weight.size()) || !all_finite(L.bias.data(), L.bias.size()))
      throw PolicyFormatError("the weights of layer '" + s["weight"].string("") + "' are not all finite");
    L.weight_t = w.detach().t();
    L.bias_t = b.detach();
    layers.push_back(std::move(L));
    in = w.size(0);
    width = std::max(width, in);
  }
  if (in != meta.act_dim)
    throw PolicyFormatError("the last layer has " + std::to_string(in) + " outputs, act_dim is " +
                            std::to_string(meta.act_dim));

  normalize = module.hasattr("normalize") && module.attr("normalize").toBool();
  if (normalize) {
    mean = tensor_values(get(buffers, "obs_mean", {meta.obs_dim}));
    stdev = tensor_values(get(buffers, "obs_std", {meta.obs_dim}));
    clip = static_cast<float>(module.attr("obs_clip").toDouble());
  }
  for (float v : tensor_values(get(buffers, "action_low", {meta.act_dim}))) low_d.push_back(v);
  for (float v : tensor_values(get(buffers, "action_high", {meta.act_dim}))) high_d.push_back(v);
  // "portable" ignores MKL even where torch has it: what the mlp backend computes on a torch build
  // without MKL (aarch64 wheels), and how the tests keep that path honest on x86.
  sgemm = opt.mlp_kernels == "portable" ? nullptr : find_sgemm();
  vms_tanh = opt.mlp_kernels == "portable" ? nullptr : find_vms_tanh();
}

void PolicyRuntime::Impl::check_options() {
  if (opt.max_batch < 1 || opt.max_batch > kMaxDim)
    throw PolicyArgumentError("max_batch must be in [1, " + std::to_string(kMaxDim) + "], got " +
                              std::to_string(opt.max_batch));
  if (opt.num_threads < 0 || opt.num_threads > 1024)
    throw PolicyArgumentError("num_threads must be in [0, 1024], got " + std::to_string(opt.num_threads));
  if (opt.warmup_calls < 0) throw PolicyArgumentError("warmup_calls must be >= 0");
  if (opt.latency_window < 1 || opt.latency_window > (1 << 26))
    throw PolicyArgumentError("latency_window must be in [1, 2^26], got " + std::to_string(opt.latency_window));
  if (opt.mlp_kernels != "auto" && opt.mlp_kernels != "portable")
    throw PolicyArgumentError("mlp_kernels must be 'auto' or 'portable', got '" + opt.mlp_kernels + "'");
  if (opt.backend != "auto" && opt.backend != "mlp" && opt.backend != "torchscript")
    throw PolicyArgumentError("backend must be 'auto', 'mlp' or 'torchscript', got '" + opt.backend + "'");
  safe.assign(meta.act_dim, 0.0f);
  if (!opt.safe_action.empty()) {
    if (static_cast<std::int64_t>(opt.safe_action.size()) != meta.act_dim)
      throw PolicyArgumentError("safe_action has " + std::to_string(opt.safe_action.size()) +
                                " values, the policy has act_dim " + std::to_string(meta.act_dim));
    for (std::int64_t i = 0; i < meta.act_dim; ++i) {
      const float v = opt.safe_action[i];
      if (!std::isfinite(v) || v < meta.action_low[i] || v > meta.action_high[i])
        throw PolicyArgumentError("safe_action[" + std::to_string(i) + "] = " + fmt(v) + " is outside the action bounds [" +
                                  fmt(meta.action_low[i]) + ", " + fmt(meta.action_high[i]) + "]");
      safe[i] = v;
    }
  } else {
    for (std::int64_t i = 0; i < meta.act_dim; ++i)
      safe[i] = std::min(std::max(0.0f, meta.action_low[i]), meta.action_high[i]);
  }
}

void PolicyRuntime::Impl::allocate() {
  const std::int64_t B = opt.max_batch;
  obs_in.assign(B * meta.obs_dim, 0.0f);
  row_in.assign(meta.obs_dim, 0.0f);
  h0.assign(B * width, 0.0f);
  h1.assign(B * width, 0.0f);
  y.assign(B * meta.act_dim, 0.0f);
  last.resize(B * meta.act_dim);
  for (std::int64_t r = 0; r < B; ++r) std::copy(safe.begin(), safe.end(), last.begin() + r * meta.act_dim);
  bad.assign(B, 0);
  if (backend == "torchscript") input = torch::zeros({B, meta.obs_dim});
  lat_ns.assign(opt.latency_window, 0);
}

// The actor on n rows: x [n, obs_dim] (normalized) -> out [n, act_dim] (env units, unclamped).
// x is read and never written; every hidden layer goes into scratch (h0, h1) that this call writes
// before it reads, so a call's result depends on its input alone.
void PolicyRuntime::Impl::mlp_rows(const float* x, std::int64_t n, float* out) {
  const int rows = static_cast<int>(n);
  const float one = 1.0f;
  const float* in = x;
  float* h = h0.data();
  for (std::size_t l = 0; l < layers.size(); ++l) {
    const Layer& L = layers[l];
    // h = bias, then h += x W^T: the same BLAS call torch makes for nn.Linear (addmm(bias, x, W^T)).
    // Row-major h[n, out] is column-major h^T = W x^T, with W (row-major [out, in]) read as the
    // transpose of a column-major [in, out] matrix.
    for (std::int64_t r = 0; r < n; ++r) std::memcpy(h + r * L.out, L.bias.data(), sizeof(float) * L.out);
    if (sgemm) {
      sgemm("T", "N", &L.out, &rows, &L.in, &one, L.weight.data(), &L.in, in, &L.in, &one, h, &L.out);
    } else {
      at::Tensor xt = at::from_blob(const_cast<float*>(in), {n, L.in});
      at::Tensor ht = at::from_blob(h, {n, L.out});
      ht.addmm_(xt, L.weight_t);
    }
    const bool last_layer = l + 1 == layers.size();
    apply(last_layer ? output_act : hidden_act, h, n * L.out, vms_tanh);
    in = h;
    h = (h == h0.data()) ? h1.data() : h0.data();
  }
  // `in` holds the actor output; map [-1, 1] to the action box in float64, as pydpg.envs.scale_action
  // (and the exported module) do.
  const std::int64_t A = meta.act_dim;
  for (std::int64_t r = 0; r < n; ++r)
    for (std::int64_t k = 0; k < A; ++k) {
      const float u = in[r * A + k];
      const double a = u < -1.0f ? -1.0 : (u > 1.0f ? 1.0 : static_cast<double>(u));  // NaN passes through
      out[r * A + k] = static_cast<float>(low_d[k] + (a + 1.0) * 0.5 * (high_d[k] - low_d[k]));
    }
}

void PolicyRuntime::Impl::torchscript_rows(const float* x, std::int64_t n, float* out) {
  // The profiling executor would re-specialize the graph whenever the batch size changes: run the
  // plain interpreter so a call costs the same every time.
  torch::jit::GraphOptimizerEnabledGuard no_reoptimize(false);
  at::Tensor xt = input.narrow(0, 0, n);
  std::memcpy(xt.data_ptr<float>(), x, sizeof(float) * n * meta.obs_dim);
  const at::Tensor result = module.forward({xt}).toTensor();
  if (result.scalar_type() != at::kFloat || result.dim() != 2 || result.size(0) != n || result.size(1) != meta.act_dim)
    throw PolicyFormatError("forward() returned " + c10::str(result.sizes()) + " for a batch of " + std::to_string(n));
  const at::Tensor c = result.contiguous();
  std::memcpy(out, c.data_ptr<float>(), sizeof(float) * n * meta.act_dim);
}

// y[:batch] = policy(obs_in[:batch]). BLAS picks its kernel by matrix shape, so in one batched call
// row i's rounding can depend on how many rows came with it. With batch_invariant every row is
// computed alone, from the same aligned one-row buffer: row i's action is then exactly what a
// batch-1 call on that row returns, whatever the other rows are.
void PolicyRuntime::Impl::forward(std::int64_t batch) {
#ifdef PYDPG_POISON_SCRATCH
  // Sanitizer builds: scratch starts every call as NaN, so a read of a value this call did not
  // write shows up as a non-finite action instead of a plausible number.
  std::fill(h0.data(), h0.data() + h0.size(), std::numeric_limits<float>::quiet_NaN());
  std::fill(h1.data(), h1.data() + h1.size(), std::numeric_limits<float>::quiet_NaN());
  std::fill(y.data(), y.data() + y.size(), std::numeric_limits<float>::quiet_NaN());
#endif
  if (!opt.batch_invariant) {
    mlp ? mlp_rows(obs_in.data(), batch, y.data()) : torchscript_rows(obs_in.data(), batch, y.data());
    return;
  }
  const std::int64_t D = meta.obs_dim, A = meta.act_dim;
  for (std::int64_t r = 0; r < batch; ++r) {
    std::memcpy(row_in.data(), obs_in.data() + r * D, sizeof(float) * D);
    mlp ? mlp_rows(row_in.data(), 1, y.data() + r * A) : torchscript_rows(row_in.data(), 1, y.data() + r * A);
  }
}

// Largest |mlp - module.forward| over random observations around the normalization statistics.
double PolicyRuntime::Impl::compare_backends() {
  const std::int64_t B = std::min<std::int64_t>(opt.max_batch, 64), D = meta.obs_dim, A = meta.act_dim;
  std::mt19937 rng(12345);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> obs(B * D);
  for (std::int64_t r = 0; r < B; ++r)
    for (std::int64_t k = 0; k < D; ++k)
      obs[r * D + k] = normalize ? mean[k] + stdev[k] * 3.0f * normal(rng) : 3.0f * normal(rng);
  at::Tensor ref = module.forward({torch::from_blob(obs.data(), {B, D}).clone()}).toTensor().contiguous();
  const float* expect = ref.data_ptr<float>();
  double worst = 0.0;
  for (std::int64_t r = 0; r < B; ++r) load_row(obs.data() + r * D, obs_in.data() + r * D);
  forward(B);
  for (std::int64_t i = 0; i < B * A; ++i) {
    const float clamped = std::min(std::max(y[i], meta.action_low[i % A]), meta.action_high[i % A]);
    const double d = std::fabs(static_cast<double>(clamped) - expect[i]);
    worst = std::isnan(d) ? HUGE_VAL : std::max(worst, d);
  }
  return worst;
}

// Refuse a policy that cannot act at the mean observation, then exercise both batch extremes so
// BLAS, the allocator and the interpreter have made their one-time allocations before the first
// real call. Every call runs on the mean observation, in the units the backend reads: normalized
// (zeros) for "mlp", raw for "torchscript"; forward() never writes its input, so the last warm-up
// call sees the same rows as the first.
void PolicyRuntime::Impl::warm_up() {
  const std::int64_t D = meta.obs_dim;
  for (std::int64_t r = 0; r < opt.max_batch; ++r)
    for (std::int64_t k = 0; k < D; ++k)
      obs_in[r * D + k] = (mlp && normalize) || !meta.normalized ? 0.0f : meta.obs_mean[k];
  forward(1);
  if (!all_finite(y.data(), meta.act_dim))
    throw PolicyFormatError("policy file '" + path + "' produces NaN/Inf actions for the mean observation");
  for (int i = 0; i < opt.warmup_calls; ++i) forward(1);
  for (int i = 0; i < std::min(opt.warmup_calls, 4); ++i) forward(opt.max_batch);
}

PolicyRuntime::PolicyRuntime(const std::string& path, PolicyOptions options) : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  m.path = path;
  m.opt = std::move(options);
  if (m.opt.num_threads > 0) at::set_num_threads(m.opt.num_threads);
  c10::InferenceMode inference;
  torch::jit::GraphOptimizerEnabledGuard no_reoptimize(false);
  m.load_file();
  m.parse_metadata();
  m.probe_module();
  m.check_options();
  std::string why_not_mlp;
  if (m.opt.backend != "torchscript") {
    try {
      m.build_mlp();
      m.use_backend("mlp");
    } catch (const std::exception& e) {
      why_not_mlp = e.what();
      m.layers.clear();
    }
  }
  if (m.backend.empty()) {
    if (m.opt.backend == "mlp")
      throw PolicyFormatError("policy file '" + path + "' cannot run on the mlp backend: " + why_not_mlp);
    m.use_backend("torchscript");
  }
  m.allocate();
  if (m.mlp) {
    const double diff = m.compare_backends();
    // 1e-5 of the half range, plus one float32 step at the largest bound: actions in the hundreds
    // are only resolved to ~1e-5 by float32 itself.
    double tol = 1e-5;
    float top = 0.0f;
    for (std::int64_t k = 0; k < m.meta.act_dim; ++k) {
      tol = std::max(tol, 1e-5 * (m.meta.action_high[k] - m.meta.action_low[k]) / 2.0);
      top = std::max({top, std::fabs(m.meta.action_low[k]), std::fabs(m.meta.action_high[k])});
    }
    tol += std::nextafter(top, HUGE_VALF) - top;
    if (!(diff <= tol)) {
      if (m.opt.backend == "mlp")
        throw PolicyFormatError("policy file '" + path + "': its network plan does not reproduce forward() (max |diff| " +
                                fmt(diff) + ")");
      m.use_backend("torchscript");
      m.allocate();
    }
  }
  m.warm_up();
  reset_latency();
}

PolicyRuntime::~PolicyRuntime() = default;
PolicyRuntime::PolicyRuntime(PolicyRuntime&&) noexcept = default;
PolicyRuntime& PolicyRuntime::operator=(PolicyRuntime&&) noexcept = default;

void PolicyRuntime::act(const float* obs, std::int64_t batch, float* actions) {
  Impl& m = *impl_;
  const auto t0 = std::chrono::steady_clock::now();
  if (batch < 1 || batch > m.opt.max_batch)
    throw PolicyArgumentError("batch must be in [1, max_batch=" + std::to_string(m.opt.max_batch) + "], got " +
                              std::to_string(batch) + " (raise max_batch when loading the policy)");
  if (obs == nullptr || actions == nullptr) throw PolicyArgumentError("obs and actions must not be null");
  const std::int64_t D = m.meta.obs_dim, A = m.meta.act_dim;
  c10::InferenceMode inference;

  // Input guard, fused with normalization into the first layer's buffer. A bad row is zeroed so it
  // cannot reach the network (rows are independent through an MLP, but not through every module).
  std::int64_t bad_rows = 0;
  for (std::int64_t r = 0; r < batch; ++r) {
    const float* in = obs + r * D;
    float* dst = m.obs_in.data() + r * D;
    const bool ok = all_finite(in, D);
    m.bad[r] = ok ? 0 : 1;
    if (!ok) {
      ++bad_rows;
      std::fill(dst, dst + D, 0.0f);
    } else {
      m.load_row(in, dst);
    }
  }
  m.guard.nonfinite_obs_rows += bad_rows;
  if (bad_rows && m.opt.on_nonfinite == NonFinitePolicy::Raise) {
    ++m.guard.raised;
    for (std::int64_t r = 0; r < batch; ++r)
      if (m.bad[r])
        for (std::int64_t k = 0; k < D; ++k)
          if (!std::isfinite(obs[r * D + k]))
            throw NonFiniteError("observation row " + std::to_string(r) + " has " + fmt(obs[r * D + k]) +
                                 " at index " + std::to_string(k) + " (" + std::to_string(bad_rows) +
                                 " non-finite row(s); on_nonfinite='raise')");
  }

  m.forward(batch);

  // Output guard, clamp, and the per-row memory of the last good action.
  for (std::int64_t r = 0; r < batch; ++r) {
    const float* a = m.y.data() + r * A;
    if (!m.bad[r] && !all_finite(a, A)) {
      ++m.guard.nonfinite_action_rows;
      if (m.opt.on_nonfinite == NonFinitePolicy::Raise) {
        ++m.guard.raised;
        throw NonFiniteError("the policy produced a non-finite action for row " + std::to_string(r) +
                             " from a finite observation (on_nonfinite='raise')");
      }
      m.bad[r] = 1;
    }
  }
  for (std::int64_t r = 0; r < batch; ++r) {
    float* out = actions + r * A;
    float* last = m.last.data() + r * A;
    if (m.bad[r]) {
      if (m.opt.on_nonfinite == NonFinitePolicy::HoldLast) {
        std::memcpy(out, last, sizeof(float) * A);
        ++m.guard.held_rows;
      } else {
        std::memcpy(out, m.safe.data(), sizeof(float) * A);
        ++m.guard.safe_rows;
      }
      continue;
    }
    const float* a = m.y.data() + r * A;
    for (std::int64_t k = 0; k < A; ++k)
      out[k] = std::min(std::max(a[k], m.meta.action_low[k]), m.meta.action_high[k]);
    std::memcpy(last, out, sizeof(float) * A);
  }

  const std::uint64_t ns = static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0).count());
  m.lat_ns[m.lat_count % m.lat_ns.size()] = ns;
  ++m.lat_count;
  m.lat_sum_ns += ns;
  m.lat_max_ns = std::max(m.lat_max_ns, ns);
}

LatencyStats PolicyRuntime::latency() const {
  const Impl& m = *impl_;
  LatencyStats s;
  s.count = m.lat_count;
  if (m.lat_count == 0) return s;
  const std::size_t n = std::min<std::size_t>(m.lat_count, m.lat_ns.size());
  std::vector<std::uint64_t> v(m.lat_ns.begin(), m.lat_ns.begin() + n);
  std::sort(v.begin(), v.end());
  // Nearest-rank percentile: the smallest sample with at least p of the samples at or below it.
  auto pct = [&](double p) {
    std::size_t rank = static_cast<std::size_t>(std::ceil(p * n));
    rank = std::min(std::max<std::size_t>(rank, 1), n);
    return v[rank - 1] / 1e3;
  };
  s.window = n;
  s.mean_us = static_cast<double>(m.lat_sum_ns) / m.lat_count / 1e3;
  s.p50_us = pct(0.5);
  s.p90_us = pct(0.9);
  s.p99_us = pct(0.99);
  s.p999_us = pct(0.999);
  s.max_us = m.lat_max_ns / 1e3;
  return s;
}

void PolicyRuntime::reset_latency() {
  Impl& m = *impl_;
  m.lat_count = m.lat_sum_ns = m.lat_max_ns = 0;
}

GuardStats PolicyRuntime::guard_stats() const { return impl_->guard; }
void PolicyRuntime::reset_guard_stats() { impl_->guard = GuardStats{}; }
const PolicyMetadata& PolicyRuntime::metadata() const { return impl_->meta; }
const PolicyOptions& PolicyRuntime::options() const { return impl_->opt; }
std::int64_t PolicyRuntime::obs_dim() const { return impl_->meta.obs_dim; }
std::int64_t PolicyRuntime::act_dim() const { return impl_->meta.act_dim; }
const std::string& PolicyRuntime::backend() const { return impl_->backend; }
std::string PolicyRuntime::kernels() const {
  const Impl& m = *impl_;
  if (!m.mlp) return "torchscript interpreter";
  return std::string("sgemm: ") + (m.sgemm ? "mkl" : "aten addmm") + ", tanh: " + (m.vms_tanh ? "mkl vml" : "libm");
}
const std::string& PolicyRuntime::path() const { return impl_->path; }

const std::string& PolicyRuntime::extra_file(const std::string& name) const {
  static const std::string empty;
  auto it = impl_->extras.find(name);
  return it == impl_->extras.end() ? empty : it->second;
}

}  // namespace pydpg
