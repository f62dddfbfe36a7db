// The dense kernels torch itself calls on x86 CPUs, found at run time, and one row-major GEMM on
// top of them. Shared by the runtime's mlp backend (inference) and the C++ update (training), so both
// make the same BLAS calls torch's nn.Linear makes and agree with it as closely as arithmetic allows.
//
// Header-only and private (not installed): it exposes libtorch types.
#pragma once

#include <dlfcn.h>

#include <ATen/ATen.h>

namespace pydpg {

// MKL's Fortran sgemm, which the x86 torch wheels export from libtorch_cpu.
using SgemmFn = void (*)(const char*, const char*, const int*, const int*, const int*, const float*, const float*,
                         const int*, const float*, const int*, const float*, float*, const int*);
// MKL VML's vmsTanh(n, in, out, mode).
using VmsTanhFn = void (*)(int, const float*, float*, long long);

// Resolved at run time, not linked: a torch build without MKL (aarch64 wheels) lacks the symbols,
// and callers then fall back to ATen (gemm below) and libm.
inline SgemmFn find_sgemm() { return reinterpret_cast<SgemmFn>(dlsym(RTLD_DEFAULT, "sgemm_")); }
inline VmsTanhFn find_vms_tanh() { return reinterpret_cast<VmsTanhFn>(dlsym(RTLD_DEFAULT, "vmsTanh")); }

#if defined(__x86_64__)
#include <immintrin.h>
// Sleef's 8-float expm1 (1-ulp), which torch's vectorized F.elu calls for float on x86 (libtorch_cpu
// exports Sleef). Takes and returns an AVX register: only called from code compiled for AVX2.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"
using Expm1x8Fn = __m256 (*)(__m256);
#pragma GCC diagnostic pop
inline Expm1x8Fn find_expm1x8() {
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) return nullptr;
  return reinterpret_cast<Expm1x8Fn>(dlsym(RTLD_DEFAULT, "Sleef_expm1f8_u10avx2"));
}
// out[0:8] = expm1(in[0:8]) through Sleef.
__attribute__((target("avx2,fma"))) inline void expm1x8(Expm1x8Fn fn, const float* in, float* out) {
  _mm256_storeu_ps(out, fn(_mm256_loadu_ps(in)));
}
#else
using Expm1x8Fn = void*;
inline Expm1x8Fn find_expm1x8() { return nullptr; }
inline void expm1x8(Expm1x8Fn, const float*, float*) {}
#endif

// torch.tanh on float CPU tensors is vmsTanh with these flags (ATen/cpu/vml.h); glibc's tanhf differs
// from it in the last bit for ~40% of inputs.
constexpr long long kVmlMode = 0x2 | 0x140000 | 0x100;  // VML_HA | VML_FTZDAZ_OFF | VML_ERRMODE_IGNORE

// Row-major C[M, N] = alpha * op(A) op(B) + beta * C, where op transposes when ta / tb is set and
// lda, ldb, ldc are row strides (a sub-block of a wider matrix is a pointer and its parent's stride).
// beta == 0 ignores C's old contents, NaN included, as BLAS and torch.addmm do.
inline void gemm(SgemmFn sgemm, bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda,
                 const float* B, int ldb, float beta, float* C, int ldc) {
  if (sgemm) {
    // Row-major C is column-major C^T = op(B)^T op(A)^T: the same call with the operands swapped.
    sgemm(tb ? "T" : "N", ta ? "T" : "N", &N, &M, &K, &alpha, B, &ldb, A, &lda, &beta, C, &ldc);
    return;
  }
  // ATen on views of the same memory (allocates per call: only a torch build without MKL comes here).
  auto view = [](const float* p, int rows, int cols, int ld, bool t) {
    at::Tensor v = at::from_blob(const_cast<float*>(p), {t ? cols : rows, t ? rows : cols}, {ld, 1});
    return t ? v.t() : v;
  };
  at::Tensor c = at::from_blob(C, {M, N}, {ldc, 1});
  c.addmm_(view(A, M, K, lda, ta), view(B, K, N, ldb, tb), beta, alpha);
}

}  // namespace pydpg
