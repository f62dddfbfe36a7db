#include "replay_buffer.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <array>
#include <random>
#include <sstream>
#include <utility>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace pydpg {

std::string shape_str(const std::vector<std::int64_t>& shape) {
  std::string s = "(";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    s += std::to_string(shape[i]);
    if (shape.size() == 1 || i + 1 < shape.size()) s += ",";
    if (i + 1 < shape.size()) s += " ";
  }
  return s + ")";
}

namespace {

std::int64_t numel(const std::vector<std::int64_t>& shape) {
  std::int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

// Uniform integer in [0, n) from 64 random bits (Lemire's multiply-shift); the bias is below
// n / 2^64, far under anything a statistical test can see.
inline std::int64_t bounded(std::uint64_t bits, std::int64_t n) {
  return static_cast<std::int64_t>((static_cast<unsigned __int128>(bits) * static_cast<std::uint64_t>(n)) >> 64);
}
inline double unit_double(std::uint64_t bits) { return (bits >> 11) * 0x1.0p-53; }

// NaN and Inf are the floats whose exponent bits are all ones. An integer OR-reduction
// vectorizes (a float one would not, without -ffast-math), so checking a batch costs ~nothing.
inline bool all_finite(const float* x, std::int64_t n) {
  std::uint32_t bad = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    std::uint32_t bits;
    std::memcpy(&bits, x + i, sizeof bits);
    bad |= static_cast<std::uint32_t>((bits & 0x7f800000u) == 0x7f800000u);
  }
  return bad == 0;
}

// FNV-1a over the bytes of the file, so that a flipped byte is reported instead of loaded.
// FNV-1a taken over 64-bit words (then the tail bytes): one multiply per 8 bytes keeps a 1M-row
// save or load from being bound by the checksum. Writer and reader hash identical pieces.
struct Fnv1a {
  std::uint64_t h = 1469598103934665603ull;
  void update(const void* data, std::size_t n) {
    const auto* p = static_cast<const unsigned char*>(data);
    std::size_t i = 0;
    for (; i + 8 <= n; i += 8) {
      std::uint64_t word;
      std::memcpy(&word, p + i, 8);
      h = (h ^ word) * 1099511628211ull;
    }
    for (; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  }
};

class Writer {
 public:
  explicit Writer(const std::string& path) : path_(path) {
    f_ = std::fopen(path.c_str(), "wb");
    if (!f_) throw FileError("cannot open '" + path + "' for writing: " + std::strerror(errno));
  }
  ~Writer() {
    if (f_) std::fclose(f_);
  }
  void bytes(const void* data, std::size_t n) {
    hash_.update(data, n);
    if (n && std::fwrite(data, 1, n, f_) != n) throw FileError("cannot write '" + path_ + "': " + std::strerror(errno));
  }
  template <class T>
  void value(T v) {
    bytes(&v, sizeof(T));
  }
  // Appends the checksum of everything written so far (the checksum itself is hashed too).
  void digest() { value<std::uint64_t>(hash_.h); }
  void finish() {
    digest();
    if (std::fflush(f_) != 0 || fsync(fileno(f_)) != 0)
      throw FileError("cannot write '" + path_ + "': " + std::strerror(errno));
    const int rc = std::fclose(f_);
    f_ = nullptr;
    if (rc != 0) throw FileError("cannot close '" + path_ + "': " + std::strerror(errno));
  }

 private:
  std::string path_;
  std::FILE* f_ = nullptr;
  Fnv1a hash_;
};

class Reader {
 public:
  explicit Reader(const std::string& path) : path_(path) {
    struct stat info;
    if (::stat(path.c_str(), &info) != 0) throw FileError("cannot open '" + path + "': " + std::strerror(errno));
    if (!S_ISREG(info.st_mode)) throw FileError("'" + path + "' is not a regular file");
    f_ = std::fopen(path.c_str(), "rb");
    if (!f_) throw FileError("cannot open '" + path + "': " + std::strerror(errno));
    std::fseek(f_, 0, SEEK_END);
    file_size_ = std::ftell(f_);
    std::fseek(f_, 0, SEEK_SET);
  }
  ~Reader() { std::fclose(f_); }
  void bytes(void* data, std::size_t n) {
    if (n && std::fread(data, 1, n, f_) != n)
      throw FormatError("'" + path_ + "' is truncated: it ends before the data its header announces");
    hash_.update(data, n);
  }
  template <class T>
  T value() {
    T v;
    bytes(&v, sizeof(T));
    return v;
  }
  std::int64_t remaining() const { return file_size_ - std::ftell(f_); }
  void check_digest(const char* part) {
    const std::uint64_t expected = hash_.h;
    if (value<std::uint64_t>() != expected)
      throw FormatError("'" + path_ + "' is corrupt: the " + part + " checksum does not match");
  }

 private:
  std::string path_;
  std::FILE* f_ = nullptr;
  std::int64_t file_size_ = 0;
  Fnv1a hash_;
};

constexpr char kMagic[8] = {'P', 'Y', 'D', 'P', 'G', 'R', 'B', '\0'};
constexpr std::uint32_t kEndianMark = 0x01020304u;

}  // namespace

Storage::Storage(std::size_t bytes) {
  // Anonymous pages: zero and unmapped until first written, so a 1M buffer costs nothing until it
  // fills. Huge pages matter for sampling: random rows from a 172 MB block miss the TLB on nearly
  // every row with 4 KiB pages.
  constexpr std::size_t kHuge = std::size_t{2} << 20;
  const std::size_t length = (bytes + kHuge - 1) / kHuge * kHuge;
  void* p = ::mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return;
#ifdef MADV_HUGEPAGE
  ::madvise(p, length, MADV_HUGEPAGE);
#endif
  data_ = static_cast<float*>(p);
  length_ = length;
}

Storage::~Storage() {
  if (data_) ::munmap(data_, length_);
}

Storage& Storage::operator=(Storage&& other) noexcept {
  if (this != &other) {
    if (data_) ::munmap(data_, length_);
    data_ = std::exchange(other.data_, nullptr);
    length_ = std::exchange(other.length_, 0);
  }
  return *this;
}

ReplayBuffer::ReplayBuffer(ReplayBufferConfig config) : config_(std::move(config)) {
  check_config(config_);
  layout_.obs_dim = numel(config_.obs_shape);
  layout_.act_dim = numel(config_.action_shape);
  allocate();
  if (config_.seed) {
    rng_.seed(*config_.seed);
  } else {
    std::random_device entropy;
    rng_.seed((std::uint64_t{entropy()} << 32) ^ entropy());
  }
}

void ReplayBuffer::check_config(const ReplayBufferConfig& c) {
  if (c.capacity <= 0) throw InvalidArgument("capacity must be a positive integer, got " + std::to_string(c.capacity));
  for (const auto* shape : {&c.obs_shape, &c.action_shape}) {
    const char* name = shape == &c.obs_shape ? "obs_shape" : "action_shape";
    if (shape->empty() || shape->size() > 8)
      throw InvalidArgument(std::string(name) + " must have 1 to 8 dimensions, got " + shape_str(*shape));
    for (auto d : *shape)
      if (d <= 0 || d > (std::int64_t{1} << 31))
        throw InvalidArgument(std::string(name) + " must hold positive sizes, got " + shape_str(*shape));
  }
  if (!(c.alpha >= 0.0 && std::isfinite(c.alpha)))
    throw InvalidArgument("alpha must be a finite number >= 0, got " + std::to_string(c.alpha));
  if (c.n_step < 1 || c.n_step > 1000)
    throw InvalidArgument("n_step must be in [1, 1000], got " + std::to_string(c.n_step));
  if (!(c.gamma >= 0.0 && c.gamma <= 1.0))
    throw InvalidArgument("gamma must be in [0, 1], got " + std::to_string(c.gamma));
}

void ReplayBuffer::allocate() {
  const std::int64_t width = layout_.stride();
  if (config_.capacity > std::numeric_limits<std::int64_t>::max() / width / 4)
    throw OutOfMemory("ReplayBuffer storage of capacity " + std::to_string(config_.capacity) + " x " +
                      std::to_string(width) + " float32 overflows 64-bit byte counts");
  const std::size_t bytes = static_cast<std::size_t>(config_.capacity * width) * sizeof(float);
  storage_ = Storage(bytes);
  if (!storage_.data())
    throw OutOfMemory("cannot allocate " + std::to_string(bytes) + " bytes (" +
                      std::to_string(bytes / (1024.0 * 1024 * 1024)) + " GiB) for ReplayBuffer storage of capacity " +
                      std::to_string(config_.capacity) + " with rows of " + std::to_string(width) + " float32");
  try {
    if (config_.prioritized) tree_.resize(static_cast<std::size_t>(config_.capacity));
    streams_.clear();
  } catch (const std::bad_alloc&) {
    throw OutOfMemory("cannot allocate the priority trees for capacity " + std::to_string(config_.capacity));
  }
  gamma_pow_.assign(config_.n_step + 1, 1.0);
  for (int k = 1; k <= config_.n_step; ++k) gamma_pow_[k] = gamma_pow_[k - 1] * config_.gamma;
  size_ = 0;
  total_ = 0;
  max_priority_ = 1.0;
}

std::size_t ReplayBuffer::storage_bytes() const {
  std::size_t bytes = static_cast<std::size_t>(config_.capacity * layout_.stride()) * sizeof(float);
  if (config_.prioritized) bytes += 2 * 2 * sizeof(double) * static_cast<std::size_t>(config_.capacity);
  return bytes;
}

void ReplayBuffer::check_finite(const TransitionBatch& b) const {
  const struct {
    const char* name;
    const float* data;
    std::int64_t n;
  } fields[] = {{"obs", b.obs, b.n * layout_.obs_dim},
                {"action", b.action, b.n * layout_.act_dim},
                {"reward", b.reward, b.n},
                {"next_obs", b.next_obs, b.n * layout_.obs_dim}};
  for (const auto& f : fields)
    if (!all_finite(f.data, f.n))
      throw InvalidArgument(std::string(f.name) + " contains NaN or Inf; refusing to store it");
}

void ReplayBuffer::extend(const TransitionBatch& b) {
  if (b.n < 0) throw InvalidArgument("batch size must be >= 0");
  check_finite(b);
  if (b.env_ids) {
    for (std::int64_t i = 0; i < b.n; ++i)
      if (b.env_ids[i] < 0 || b.env_ids[i] > (1 << 20))
        throw InvalidArgument("env_ids must be in [0, 2^20], got " + std::to_string(b.env_ids[i]));
  }
  std::lock_guard<std::mutex> lock(mutex_);
  const std::int64_t D = layout_.obs_dim, A = layout_.act_dim;
  for (std::int64_t i = 0; i < b.n; ++i)
    push(b.env_ids ? b.env_ids[i] : i, b.obs + i * D, b.action + i * A, b.reward[i], b.next_obs + i * D,
         b.terminated[i], b.truncated[i]);
}

float* ReplayBuffer::append_row() {
  const std::int64_t slot = total_ % config_.capacity;
  ++total_;
  size_ = std::min(size_ + 1, config_.capacity);
  // New items get the largest priority seen so far, so each is replayed at least about once
  // (Schaul et al. 2015, Algorithm 1 line 6).
  if (config_.prioritized) tree_.set(static_cast<std::size_t>(slot), std::pow(max_priority_, config_.alpha));
  return storage_.data() + slot * layout_.stride();
}

void ReplayBuffer::push(std::int64_t env, const float* obs, const float* action, float reward, const float* next_obs,
                        bool terminated, bool truncated) {
  const RowLayout& L = layout_;
  const std::int64_t D = L.obs_dim, A = L.act_dim, W = L.width();
  if (config_.n_step == 1) {
    float* row = append_row();
    std::memcpy(row + L.obs(), obs, D * sizeof(float));
    std::memcpy(row + L.action(), action, A * sizeof(float));
    row[L.reward()] = reward;
    std::memcpy(row + L.next_obs(), next_obs, D * sizeof(float));
    row[L.done()] = terminated ? 1.0f : 0.0f;
    row[L.discount()] = static_cast<float>(config_.gamma);
    return;
  }
  if (env >= static_cast<std::int64_t>(streams_.size())) streams_.resize(env + 1);
  Stream& s = streams_[env];
  if (s.rows.empty()) s.rows.assign(static_cast<std::size_t>(config_.n_step * W), 0.0f);
  const int n = config_.n_step;
  float* row = s.rows.data() + ((s.head + s.count) % n) * W;
  std::memcpy(row + L.obs(), obs, D * sizeof(float));
  std::memcpy(row + L.action(), action, A * sizeof(float));
  row[L.reward()] = reward;
  std::memcpy(row + L.next_obs(), next_obs, D * sizeof(float));
  ++s.count;
  if (terminated || truncated) {
    // The episode ended: every open return closes here. Termination cuts the return and marks
    // done; truncation cuts it but leaves done = 0 so the critic bootstraps from the last state.
    while (s.count > 0) emit_oldest(s, s.count, terminated);
    s.head = 0;
  } else if (s.count == n) {
    emit_oldest(s, n, false);
  }
}

// Writes the oldest open transition of `s` with the return over its next `length` rewards:
//   R = sum_{k<length} gamma^k r_{t+k},  next_obs = s_{t+length},  discount = gamma^length.
void ReplayBuffer::emit_oldest(Stream& s, int length, bool terminated) {
  const RowLayout& L = layout_;
  const int n = config_.n_step;
  const std::int64_t W = L.width();
  const float* first = s.rows.data() + s.head * W;
  const float* last = s.rows.data() + ((s.head + length - 1) % n) * W;
  double ret = 0.0;
  for (int k = 0; k < length; ++k) ret += gamma_pow_[k] * s.rows[((s.head + k) % n) * W + L.reward()];
  float* row = append_row();
  std::memcpy(row, first, L.reward() * sizeof(float));  // obs and action
  row[L.reward()] = static_cast<float>(ret);
  std::memcpy(row + L.next_obs(), last + L.next_obs(), L.obs_dim * sizeof(float));
  row[L.done()] = terminated ? 1.0f : 0.0f;
  row[L.discount()] = static_cast<float>(gamma_pow_[length]);
  s.head = (s.head + 1) % n;
  --s.count;
}

std::int64_t ReplayBuffer::slot_to_id(std::int64_t slot) const {
  const std::int64_t oldest = total_ - size_;
  const std::int64_t cap = config_.capacity;
  return oldest + ((slot - oldest % cap) % cap + cap) % cap;
}

void ReplayBuffer::sample(std::int64_t batch_size, double beta, float* rows, float* weights, std::int64_t* ids) {
  if (batch_size <= 0)
    throw InvalidArgument("batch_size must be a positive integer, got " + std::to_string(batch_size));
  if (config_.prioritized && !(beta >= 0.0 && std::isfinite(beta)))
    throw InvalidArgument("beta must be a finite number >= 0, got " + std::to_string(beta));
  std::lock_guard<std::mutex> lock(mutex_);
  if (size_ == 0)
    throw InvalidArgument("cannot sample from an empty ReplayBuffer" +
                          std::string(pending_unlocked() ? " (transitions are still waiting for their "
                                                           "n-step returns)"
                                                         : ""));
  scratch_slots_.resize(static_cast<std::size_t>(batch_size));
  std::int64_t* slots = scratch_slots_.data();
  const std::int64_t W = layout_.width(), S = layout_.stride();
  const float* base = storage_.data();
  // Each row's cache lines are requested as soon as its index is drawn, so the memory latency of
  // the whole batch overlaps the drawing; the copy loop below then mostly hits the cache.
  auto request = [&](std::int64_t slot) {
    for (std::int64_t off = 0; off < W; off += 16) __builtin_prefetch(base + slot * S + off);
  };
  if (!config_.prioritized) {
    for (std::int64_t b = 0; b < batch_size; ++b) {
      slots[b] = bounded(rng_(), size_);
      request(slots[b]);
    }
  } else {
    // Stratified: one draw from each of batch_size equal slices of the total priority mass.
    const double total = tree_.total();
    const double segment = total / static_cast<double>(batch_size);
    const double min_p = tree_.min();
    scratch_mass_.resize(static_cast<std::size_t>(batch_size));
    scratch_leaf_.resize(static_cast<std::size_t>(batch_size));
    for (std::int64_t b = 0; b < batch_size; ++b) {
      const double mass = (static_cast<double>(b) + unit_double(rng_())) * segment;
      scratch_mass_[b] = std::min(mass, std::nextafter(total, 0.0));
    }
    tree_.find_many(scratch_mass_.data(), scratch_leaf_.data(), scratch_leaf_.size());
    for (std::int64_t b = 0; b < batch_size; ++b) {
      const auto slot = static_cast<std::int64_t>(scratch_leaf_[b]);
      slots[b] = slot;
      request(slot);
      // w_i = (N P(i))^-beta / max_j w_j = (p_i / p_min)^-beta, the max over the whole buffer.
      weights[b] = static_cast<float>(std::pow(tree_.get(slot) / min_p, -beta));
      ids[b] = slot_to_id(slot);
    }
  }
  for (std::int64_t b = 0; b < batch_size; ++b) std::memcpy(rows + b * W, base + slots[b] * S, W * sizeof(float));
}

void ReplayBuffer::check_ids(std::int64_t n, const std::int64_t* ids, const char* source) const {
  const std::int64_t oldest = total_ - size_;
  const std::string valid = " (valid ids are in [" + std::to_string(oldest) + ", " + std::to_string(total_) + "))";
  for (std::int64_t i = 0; i < n; ++i) {
    if (ids[i] < 0 || ids[i] >= total_)
      throw InvalidArgument("indices[" + std::to_string(i) + "] = " + std::to_string(ids[i]) + " " + source + valid);
    if (ids[i] < oldest)
      throw InvalidArgument("indices[" + std::to_string(i) + "] = " + std::to_string(ids[i]) +
                            " is stale: that transition has been overwritten" + valid);
  }
}

void ReplayBuffer::get(std::int64_t n, const std::int64_t* ids, float* rows) const {
  std::lock_guard<std::mutex> lock(mutex_);
  check_ids(n, ids, "was never stored");
  const std::int64_t W = layout_.width(), S = layout_.stride();
  for (std::int64_t i = 0; i < n; ++i)
    std::memcpy(rows + i * W, storage_.data() + (ids[i] % config_.capacity) * S, W * sizeof(float));
}

void ReplayBuffer::update_priorities(std::int64_t n, const std::int64_t* ids, const double* priorities) {
  if (!config_.prioritized) throw InvalidArgument("update_priorities needs a buffer made with prioritized=True");
  for (std::int64_t i = 0; i < n; ++i)
    if (!(priorities[i] >= 0.0 && std::isfinite(priorities[i])))
      throw InvalidArgument("priorities must be finite and >= 0, got " + std::to_string(priorities[i]) +
                            " at position " + std::to_string(i));
  std::lock_guard<std::mutex> lock(mutex_);
  check_ids(n, ids, "was never returned by sample");
  for (std::int64_t i = 0; i < n; ++i) {
    const double p = std::max(priorities[i], kMinPriority);
    max_priority_ = std::max(max_priority_, p);
    tree_.set(static_cast<std::size_t>(ids[i] % config_.capacity), std::pow(p, config_.alpha));
  }
}

void ReplayBuffer::reset_max_priority() {
  if (!config_.prioritized) throw InvalidArgument("reset_max_priority needs a buffer made with prioritized=True");
  std::lock_guard<std::mutex> lock(mutex_);
  // With alpha = 0 every stored value is p^0 = 1, so the raw maximum is neither known nor used.
  if (config_.alpha == 0.0) return;
  double top = 0.0;
  for (std::int64_t slot = 0; slot < config_.capacity; ++slot)
    top = std::max(top, tree_.get(static_cast<std::size_t>(slot)));
  max_priority_ = top > 0.0 ? std::max(std::pow(top, 1.0 / config_.alpha), kMinPriority) : 1.0;
}

void ReplayBuffer::clear() {
  std::lock_guard<std::mutex> lock(mutex_);
  size_ = 0;
  total_ = 0;
  max_priority_ = 1.0;
  streams_.clear();
  if (config_.prioritized) tree_.clear();
}

std::int64_t ReplayBuffer::size() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return size_;
}

std::int64_t ReplayBuffer::total_added() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return total_;
}

void ReplayBuffer::end_episode(std::int64_t env) {
  if (env < 0 || env > (1 << 20)) throw InvalidArgument("env_id must be in [0, 2^20], got " + std::to_string(env));
  std::lock_guard<std::mutex> lock(mutex_);
  if (env >= static_cast<std::int64_t>(streams_.size())) return;  // nothing open for it
  Stream& s = streams_[env];
  while (s.count > 0) emit_oldest(s, s.count, false);
  s.head = 0;
}

std::int64_t ReplayBuffer::pending() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return pending_unlocked();
}

std::int64_t ReplayBuffer::pending_unlocked() const {
  std::int64_t n = 0;
  for (const auto& s : streams_) n += s.count;
  return n;
}

std::string ReplayBuffer::describe() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::ostringstream os;
  os << "ReplayBuffer(size=" << size_ << ", capacity=" << config_.capacity
     << ", obs_shape=" << shape_str(config_.obs_shape) << ", action_shape=" << shape_str(config_.action_shape);
  if (config_.prioritized) os << ", prioritized=True, alpha=" << config_.alpha;
  if (config_.n_step > 1) os << ", n_step=" << config_.n_step;
  os << ", gamma=" << config_.gamma << ", bytes=" << storage_bytes() << ")";
  return os.str();
}

void ReplayBuffer::save(const std::string& path) const {
  std::lock_guard<std::mutex> lock(mutex_);
  // Write beside the target and rename: a crash mid-save leaves the previous file intact.
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  try {
    Writer w(tmp);
    w.bytes(kMagic, sizeof kMagic);
    w.value(kFormatVersion);
    w.value(kEndianMark);
    w.value<std::int64_t>(config_.capacity);
    for (const auto* shape : {&config_.obs_shape, &config_.action_shape}) {
      w.value<std::int64_t>(static_cast<std::int64_t>(shape->size()));
      for (auto d : *shape) w.value<std::int64_t>(d);
    }
    w.value<std::int64_t>(config_.prioritized ? 1 : 0);
    w.value<std::int64_t>(config_.n_step);
    w.value<double>(config_.alpha);
    w.value<double>(config_.gamma);
    w.value<std::int64_t>(size_);
    w.value<std::int64_t>(total_);
    w.value<double>(max_priority_);
    for (auto word : rng_.state()) w.value<std::uint64_t>(word);
    w.digest();
    const std::int64_t W = layout_.width();
    w.value<std::int64_t>(static_cast<std::int64_t>(streams_.size()));
    for (const auto& s : streams_) {
      w.value<std::int64_t>(s.count);
      for (int k = 0; k < s.count; ++k) w.bytes(s.rows.data() + ((s.head + k) % config_.n_step) * W, W * sizeof(float));
    }
    for (std::int64_t i = 0; i < size_; ++i) w.bytes(storage_.data() + i * layout_.stride(), W * sizeof(float));
    if (config_.prioritized)
      for (std::int64_t i = 0; i < size_; ++i) w.value<double>(tree_.get(i));
    w.finish();
  } catch (...) {
    std::remove(tmp.c_str());
    throw;
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string why = std::strerror(errno);
    std::remove(tmp.c_str());
    throw FileError("cannot move '" + tmp + "' to '" + path + "': " + why);
  }
}

void ReplayBuffer::load(const std::string& path) {
  Reader r(path);
  char magic[sizeof kMagic];
  r.bytes(magic, sizeof magic);
  if (std::memcmp(magic, kMagic, sizeof kMagic) != 0)
    throw FormatError("'" + path + "' is not a pydpg ReplayBuffer file (bad magic bytes)");
  const auto version = r.value<std::uint32_t>();
  if (version != kFormatVersion)
    throw FormatError("'" + path + "' has ReplayBuffer format version " + std::to_string(version) +
                      "; this pydpg reads version " + std::to_string(kFormatVersion));
  if (r.value<std::uint32_t>() != kEndianMark)
    throw FormatError("'" + path + "' was written on a machine of another byte order");
  ReplayBufferConfig c;
  c.capacity = r.value<std::int64_t>();
  for (auto* shape : {&c.obs_shape, &c.action_shape}) {
    const auto ndim = r.value<std::int64_t>();
    if (ndim < 1 || ndim > 8) throw FormatError("'" + path + "' is corrupt: bad shape rank");
    for (std::int64_t i = 0; i < ndim; ++i) shape->push_back(r.value<std::int64_t>());
  }
  c.prioritized = r.value<std::int64_t>() != 0;
  const auto n_step = r.value<std::int64_t>();
  c.n_step = n_step >= 1 && n_step <= 1000 ? static_cast<int>(n_step) : -1;
  c.alpha = r.value<double>();
  c.gamma = r.value<double>();
  try {
    check_config(c);
  } catch (const InvalidArgument& e) {
    throw FormatError("'" + path + "' is corrupt: " + e.what());
  }
  RowLayout L;
  L.obs_dim = numel(c.obs_shape);
  L.act_dim = numel(c.action_shape);
  const std::int64_t W = L.width();
  const auto size = r.value<std::int64_t>();
  const auto total = r.value<std::int64_t>();
  const auto max_priority = r.value<double>();
  if (size < 0 || size > c.capacity || total < size || (size < c.capacity && total != size) ||
      !(max_priority >= kMinPriority && std::isfinite(max_priority)))
    throw FormatError("'" + path + "' is corrupt: inconsistent size/position counters");
  // Refuse before allocating: the file must hold at least the rows its header announces.
  const std::int64_t row_bytes = W * static_cast<std::int64_t>(sizeof(float));
  if (size > r.remaining() / row_bytes)
    throw FormatError("'" + path + "' is truncated: header announces " + std::to_string(size) +
                      " transitions that the file cannot hold");
  std::array<std::uint64_t, 4> rng_state;
  for (auto& word : rng_state) word = r.value<std::uint64_t>();
  if (rng_state == std::array<std::uint64_t, 4>{})
    throw FormatError("'" + path + "' is corrupt: RNG state is all zeros");
  r.check_digest("header");  // before allocating what a corrupt header might ask for

  ReplayBuffer fresh(c);  // allocates; throws OutOfMemory naming the bytes if it cannot
  fresh.rng_.set_state(rng_state);
  const auto n_streams = r.value<std::int64_t>();
  if (n_streams < 0 || n_streams > (1 << 20) || (c.n_step == 1 && n_streams != 0))
    throw FormatError("'" + path + "' is corrupt: bad n-step stream count");
  fresh.streams_.resize(static_cast<std::size_t>(n_streams));
  for (auto& s : fresh.streams_) {
    const auto count = r.value<std::int64_t>();
    if (count < 0 || count >= c.n_step) throw FormatError("'" + path + "' is corrupt: bad pending n-step count");
    s.count = static_cast<int>(count);
    if (count > 0) {
      s.rows.assign(static_cast<std::size_t>(c.n_step * W), 0.0f);
      for (std::int64_t k = 0; k < count; ++k)  // row by row, as written: the hash is chunked
        r.bytes(s.rows.data() + k * W, W * sizeof(float));
    }
  }
  for (std::int64_t i = 0; i < size; ++i) r.bytes(fresh.storage_.data() + i * L.stride(), W * sizeof(float));
  if (c.prioritized) {
    for (std::int64_t i = 0; i < size; ++i) {
      const auto p = r.value<double>();
      if (!(p > 0.0 && std::isfinite(p)))
        throw FormatError("'" + path + "' is corrupt: priority " + std::to_string(i) + " is not positive");
      fresh.tree_.set(static_cast<std::size_t>(i), p);
    }
  }
  r.check_digest("data");
  if (r.remaining() != 0) throw FormatError("'" + path + "' is corrupt: unexpected bytes after the data");
  fresh.size_ = size;
  fresh.total_ = total;
  fresh.max_priority_ = max_priority;

  std::lock_guard<std::mutex> lock(mutex_);
  config_ = fresh.config_;
  config_.seed.reset();
  layout_ = fresh.layout_;
  storage_ = std::move(fresh.storage_);
  size_ = fresh.size_;
  total_ = fresh.total_;
  streams_ = std::move(fresh.streams_);
  tree_ = std::move(fresh.tree_);
  max_priority_ = fresh.max_priority_;
  gamma_pow_ = std::move(fresh.gamma_pow_);
  rng_ = fresh.rng_;
}

}  // namespace pydpg
