// C++ test driver for the replay buffer core (csrc/train/replay_buffer.*), with no Python in the process,
// so that AddressSanitizer/UBSan and ThreadSanitizer see every access (tests/cpp/sanitize.sh).
// The statistical and reference tests live in tests/test_replay.py; this driver walks every code
// path those reach (uniform, PER, n-step, wrap-around, save/load, bad input) plus a thread stress.
//
// usage: replay_test SCRATCH_DIR
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <limits>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "../../csrc/train/replay_buffer.hpp"
#include "check.hpp"

using pydpg::ReplayBuffer;
using pydpg::ReplayBufferConfig;
using pydpg::TransitionBatch;

namespace {

constexpr int D = 3, A = 2;

ReplayBufferConfig config(std::int64_t capacity, bool prioritized = false, int n_step = 1, double gamma = 0.5) {
  ReplayBufferConfig c;
  c.capacity = capacity;
  c.obs_shape = {D};
  c.action_shape = {A};
  c.prioritized = prioritized;
  c.n_step = n_step;
  c.gamma = gamma;
  c.seed = 7;
  return c;
}

// Transition t of environment `env`: obs = (t, env, 0), next_obs = (t + 1, env, 0), reward = t.
struct Rows {
  std::vector<float> obs, action, reward, next_obs;
  std::vector<std::int64_t> env_ids;
  std::unique_ptr<bool[]> term, trunc;
  // one_env_per_row: row i is environment i (env_ids = null), as from N parallel envs.
  TransitionBatch batch(std::int64_t n, bool one_env_per_row = false) {
    TransitionBatch b;
    b.n = n;
    b.obs = obs.data();
    b.action = action.data();
    b.reward = reward.data();
    b.next_obs = next_obs.data();
    b.terminated = term.get();
    b.truncated = trunc.get();
    b.env_ids = one_env_per_row || env_ids.empty() ? nullptr : env_ids.data();
    return b;
  }
};

Rows make_rows(std::int64_t n, std::int64_t t0, std::int64_t env, bool terminal_last = false) {
  Rows r;
  r.term.reset(new bool[n]());
  r.trunc.reset(new bool[n]());
  for (std::int64_t i = 0; i < n; ++i) {
    const float t = static_cast<float>(t0 + i);
    r.obs.insert(r.obs.end(), {t, static_cast<float>(env), 0.0f});
    r.action.insert(r.action.end(), {0.5f, -0.5f});
    r.reward.push_back(t);
    r.next_obs.insert(r.next_obs.end(), {t + 1, static_cast<float>(env), 0.0f});
    r.env_ids.push_back(env);
  }
  if (terminal_last) r.term[n - 1] = true;
  return r;
}

// Every sampled row must be one stored transition, intact: next_obs = obs + 1, reward = obs[0].
bool rows_intact(const std::vector<float>& rows, std::int64_t n, std::int64_t width) {
  for (std::int64_t b = 0; b < n; ++b) {
    const float* r = rows.data() + b * width;
    const float t = r[0];
    if (r[D + A] != t || r[D + A + 1] != t + 1 || r[D + A + 2] != r[1] || r[3] != 0.5f) return false;
  }
  return true;
}

void test_uniform_and_wraparound() {
  ReplayBuffer buf(config(100));
  for (std::int64_t t = 0; t < 250; ++t) {
    buf.extend(make_rows(1, t, 0).batch(1, true));
  }
  CHECK(buf.size() == 100);
  CHECK(buf.total_added() == 250);
  const std::int64_t W = buf.layout().width();
  std::vector<float> rows(1000 * W);
  buf.sample(1000, 0.0, rows.data(), nullptr, nullptr);
  CHECK(rows_intact(rows, 1000, W));
  float lo = 1e9f, hi = -1e9f;
  for (int b = 0; b < 1000; ++b) lo = std::min(lo, rows[b * W]), hi = std::max(hi, rows[b * W]);
  CHECK(lo >= 150.0f && hi <= 249.0f);  // only the newest 100 survive the wrap-around
}

void test_n_step() {
  // gamma 0.5, n = 3, rewards t = 0..4, termination at t = 4.
  ReplayBuffer buf(config(50, false, 3, 0.5));
  Rows r = make_rows(5, 0, 0, /*terminal_last=*/true);
  for (int i = 0; i < 5; ++i) {
    TransitionBatch b;
    b.n = 1;
    b.obs = r.obs.data() + i * D;
    b.action = r.action.data() + i * A;
    b.reward = r.reward.data() + i;
    b.next_obs = r.next_obs.data() + i * D;
    b.terminated = r.term.get() + i;
    b.truncated = r.trunc.get() + i;
    b.env_ids = r.env_ids.data() + i;
    buf.extend(b);
  }
  CHECK(buf.size() == 5 && buf.pending() == 0);
  const std::int64_t W = buf.layout().width();
  std::vector<float> rows(400 * W);
  buf.sample(400, 0.0, rows.data(), nullptr, nullptr);
  const auto& L = buf.layout();
  for (int b = 0; b < 400; ++b) {
    const float* row = rows.data() + b * W;
    const int t = static_cast<int>(row[0]);
    const int len = std::min(3, 5 - t);
    double want = 0;
    for (int k = 0; k < len; ++k) want += std::pow(0.5, k) * (t + k);
    // Dyadic sums of small integers: exact in float32 and double, whatever the order.
    CHECK(row[L.reward()] == static_cast<float>(want));
    CHECK(row[L.next_obs()] == static_cast<float>(t + len));
    CHECK(row[L.done()] == (t + len == 5 ? 1.0f : 0.0f));
    CHECK(row[L.discount()] == static_cast<float>(std::pow(0.5, len)));
  }
  CHECK_THROWS(pydpg::InvalidArgument, buf.end_episode(-1));
  buf.end_episode(3);  // an env that never wrote: nothing open, nothing happens
  CHECK(buf.size() == 5);
}

void test_prioritized() {
  ReplayBuffer buf(config(64, true));
  buf.extend(make_rows(64, 0, 0).batch(64, true));
  const std::int64_t W = buf.layout().width(), n = 4096;
  std::vector<float> rows(n * W), weights(n);
  std::vector<std::int64_t> ids(n);
  buf.sample(n, 0.4, rows.data(), weights.data(), ids.data());
  CHECK(rows_intact(rows, n, W));
  // Give item 5 a priority that dwarfs the rest: it must then dominate the samples.
  std::vector<std::int64_t> all(64);
  std::vector<double> pr(64, 1e-3);
  for (int i = 0; i < 64; ++i) all[i] = i;
  pr[5] = 1e3;
  buf.update_priorities(64, all.data(), pr.data());
  buf.sample(n, 1.0, rows.data(), weights.data(), ids.data());
  const auto fives = std::count(ids.begin(), ids.end(), 5);
  CHECK(fives > n * 9 / 10);
  for (std::int64_t i = 0; i < n; ++i) CHECK(weights[i] > 0.0f && weights[i] <= 1.0f);
  const std::int64_t stale = 0;
  buf.extend(make_rows(64, 64, 0).batch(64, true));
  const double p = 1.0;
  CHECK_THROWS(pydpg::InvalidArgument, buf.update_priorities(1, &stale, &p));  // overwritten
  const std::int64_t future = 1000;
  CHECK_THROWS(pydpg::InvalidArgument, buf.update_priorities(1, &future, &p));
  const std::int64_t ok = 100;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  CHECK_THROWS(pydpg::InvalidArgument, buf.update_priorities(1, &ok, &nan));
  const double zero = 0.0;
  buf.update_priorities(1, &ok, &zero);  // floored, never removed from the sampler
}

void test_bad_input() {
  CHECK_THROWS(pydpg::InvalidArgument, ReplayBuffer(config(0)));
  CHECK_THROWS(pydpg::InvalidArgument, ReplayBuffer(config(10, false, 0)));
  CHECK_THROWS(pydpg::InvalidArgument, ReplayBuffer(config(10, false, 1, 1.5)));
  ReplayBufferConfig huge = config(std::int64_t{1} << 45);
  CHECK_THROWS(pydpg::OutOfMemory, ReplayBuffer{huge});
  ReplayBuffer buf(config(10));
  std::vector<float> rows(buf.layout().width());
  CHECK_THROWS(pydpg::InvalidArgument, buf.sample(1, 0.0, rows.data(), nullptr, nullptr));  // empty
  Rows r = make_rows(2, 0, 0);
  r.obs[4] = std::numeric_limits<float>::quiet_NaN();
  TransitionBatch b = r.batch(2, true);
  CHECK_THROWS(pydpg::InvalidArgument, buf.extend(b));
  CHECK(buf.size() == 0);  // all or nothing
  r.obs[4] = 0.0f;
  r.reward[1] = std::numeric_limits<float>::infinity();
  CHECK_THROWS(pydpg::InvalidArgument, buf.extend(b));
  CHECK(buf.size() == 0);
  r.reward[1] = 1.0f;
  r.env_ids[0] = -3;
  CHECK_THROWS(pydpg::InvalidArgument, buf.extend(r.batch(2)));
  buf.extend(b);
  CHECK(buf.size() == 2);
  CHECK_THROWS(pydpg::InvalidArgument, buf.sample(0, 0.0, rows.data(), nullptr, nullptr));
  std::int64_t id = 0;
  double p = 1.0;
  CHECK_THROWS(pydpg::InvalidArgument, buf.update_priorities(1, &id, &p));  // not prioritized
}

void test_save_load(const std::string& dir) {
  ReplayBuffer a(config(128, true, 2, 0.9));
  // Row i of one extend is env i: 40 envs, each with one stored 2-step return and one still open.
  a.extend(make_rows(40, 0, 0).batch(40, true));
  a.extend(make_rows(40, 40, 0).batch(40, true));
  CHECK(a.size() == 40 && a.pending() == 40);
  const std::string path = dir + "/buffer.bin";
  a.save(path);
  ReplayBuffer c(config(1));
  c.load(path);
  CHECK(c.size() == a.size() && c.pending() == a.pending() && c.total_added() == a.total_added());
  const std::int64_t W = a.layout().width(), n = 64;
  std::vector<float> ra(n * W), rc(n * W), wa(n), wc(n);
  std::vector<std::int64_t> ia(n), ic(n);
  a.sample(n, 0.5, ra.data(), wa.data(), ia.data());
  c.sample(n, 0.5, rc.data(), wc.data(), ic.data());
  CHECK(ra == rc && wa == wc && ia == ic);  // same state, same RNG: the same draws
  // The open returns came along too: the same next transition closes them the same way.
  a.extend(make_rows(40, 80, 0).batch(40, true));
  c.extend(make_rows(40, 80, 0).batch(40, true));
  CHECK(c.size() == a.size() && c.size() == 80);
  a.sample(n, 0.5, ra.data(), wa.data(), ia.data());
  c.sample(n, 0.5, rc.data(), wc.data(), ic.data());
  CHECK(ra == rc && wa == wc && ia == ic);
  // Truncated, corrupt and foreign files are refused with FormatError, never read past their end.
  std::ifstream in(path, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  for (std::size_t cut : {std::size_t{0}, std::size_t{7}, bytes.size() / 2, bytes.size() - 1}) {
    const std::string p = dir + "/cut.bin";
    std::ofstream(p, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(cut));
    CHECK_THROWS(std::runtime_error, c.load(p));
  }
  std::string flipped = bytes;
  flipped[bytes.size() / 2] ^= 0x20;
  std::ofstream(dir + "/flip.bin", std::ios::binary)
      .write(flipped.data(), static_cast<std::streamsize>(flipped.size()));
  CHECK_THROWS(pydpg::FormatError, c.load(dir + "/flip.bin"));
  CHECK_THROWS(pydpg::FileError, c.load(dir + "/missing.bin"));
  CHECK_THROWS(pydpg::FileError, c.load(dir));
  CHECK(c.size() == a.size());  // a failed load leaves the buffer as it was
}

// Writers, samplers with priority updates, and saves at once. The mutex is the contract:
// every sampled row must be a whole transition, never half of one being written.
void test_threads(const std::string& dir) {
  ReplayBuffer buf(config(512, true, 3, 0.99));
  buf.extend(make_rows(8, 0, 0).batch(8, true));
  Rows flush = make_rows(8, 8, 0);
  for (int i = 0; i < 8; ++i) flush.term[i] = true;  // every env's episode ends: all returns close
  buf.extend(flush.batch(8, true));
  const std::int64_t W = buf.layout().width();
  std::vector<std::thread> threads;
  for (int w = 0; w < 2; ++w)
    threads.emplace_back([&buf, w] {
      for (int i = 0; i < 300; ++i) {
        Rows r = make_rows(4, 100 + i, w, i % 7 == 6);
        buf.extend(r.batch(4));
      }
    });
  for (int s = 0; s < 2; ++s)
    threads.emplace_back([&buf, W] {
      std::vector<float> rows(32 * W), weights(32);
      std::vector<std::int64_t> ids(32);
      std::vector<double> pr(32, 2.0);
      for (int i = 0; i < 300; ++i) {
        buf.sample(32, 0.4, rows.data(), weights.data(), ids.data());
        for (int b = 0; b < 32; ++b) CHECK(rows[b * W + 3] == 0.5f && rows[b * W + 4] == -0.5f);
        try {
          buf.update_priorities(32, ids.data(), pr.data());
        } catch (const pydpg::InvalidArgument&) {
          // an id overwritten by a writer in between: refused, as documented
        }
      }
    });
  threads.emplace_back([&buf, &dir] {
    for (int i = 0; i < 5; ++i) buf.save(dir + "/threads.bin");
  });

  for (auto& t : threads) t.join();
  ReplayBuffer copy(config(1));
  copy.load(dir + "/threads.bin");
  CHECK(copy.size() > 0 && copy.size() <= 512);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: replay_test SCRATCH_DIR\n");
    return 2;
  }
  const std::string dir = argv[1];
  try {
    test_uniform_and_wraparound();
    test_n_step();
    test_prioritized();
    test_bad_input();
    test_save_load(dir);
    test_threads(dir);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "unexpected exception: %s\n", e.what());
    return 1;
  }
  return pydpg_test::finish("replay_test");
}
