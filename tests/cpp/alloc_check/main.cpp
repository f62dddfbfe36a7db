// Counts every heap allocation made anywhere in the process (pydpg, libtorch, MKL, libstdc++)
// while PolicyRuntime::act() runs after warm-up.
//
// The executable defines malloc and friends, which the dynamic linker binds ahead of glibc's for
// every shared library; they count and forward to glibc's __libc_* entry points. operator new
// reaches malloc through libstdc++, so it is counted too.
//
// usage: alloc_check POLICY BACKEND BATCH CALLS   -> prints one JSON line
#include <pydpg/policy_runtime.hpp>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

extern "C" {
void* __libc_malloc(size_t);
void* __libc_calloc(size_t, size_t);
void* __libc_realloc(void*, size_t);
void* __libc_memalign(size_t, size_t);
void __libc_free(void*);
}

static std::atomic<bool> g_counting{false};
static std::atomic<long> g_allocs{0};

static inline void count() {
  if (g_counting.load(std::memory_order_relaxed)) g_allocs.fetch_add(1, std::memory_order_relaxed);
}

extern "C" {
void* malloc(size_t n) {
  count();
  return __libc_malloc(n);
}
void* calloc(size_t n, size_t s) {
  count();
  return __libc_calloc(n, s);
}
void* realloc(void* p, size_t n) {
  count();
  return __libc_realloc(p, n);
}
void free(void* p) { __libc_free(p); }
void* memalign(size_t a, size_t n) {
  count();
  return __libc_memalign(a, n);
}
void* aligned_alloc(size_t a, size_t n) {
  count();
  return __libc_memalign(a, n);
}
int posix_memalign(void** out, size_t a, size_t n) {
  count();
  void* p = __libc_memalign(a, n);
  if (!p) return 12;  // ENOMEM
  *out = p;
  return 0;
}
}

int main(int argc, char** argv) {
  if (argc != 5) {
    std::fprintf(stderr, "usage: alloc_check POLICY BACKEND BATCH CALLS\n");
    return 2;
  }
  try {
    pydpg::PolicyOptions opt;
    opt.backend = argv[2];
    opt.max_batch = std::atol(argv[3]);
    const long calls = std::atol(argv[4]);
    pydpg::PolicyRuntime policy(argv[1], opt);
    std::vector<float> obs(opt.max_batch * policy.obs_dim(), 0.1f), act(opt.max_batch * policy.act_dim());

    // The counter must see an allocation made on purpose, or a zero below would prove nothing.
    g_counting = true;
    void* volatile probe = std::malloc(64);
    std::string* volatile probe2 = new std::string(100, 'x');
    g_counting = false;
    std::free(probe);
    delete probe2;
    const long probe_count = g_allocs.exchange(0);

    g_counting = true;
    for (long i = 0; i < calls; ++i) {
      policy.act(obs.data(), 1, act.data());
      policy.act(obs.data(), opt.max_batch, act.data());
    }
    g_counting = false;
    const long during = g_allocs.load();
    std::printf("{\"backend\": \"%s\", \"calls\": %ld, \"allocations\": %ld, \"probe_allocations\": %ld}\n",
                policy.backend().c_str(), 2 * calls, during, probe_count);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
