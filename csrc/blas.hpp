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
using SgemmFn = void (*)(const char*, const char*, const int*, const int*, const int*, const float*,
                         const float*, const int*, const float*, const int*, const float*, float*,
                         const int*);
// MKL VML's vmsTanh(n, in, out, mode).
using VmsTanhFn = void (*)(int, const float*, float*, long long);

// Resolved at run time, not linked: a torch build without MKL (aarch64 wheels) lacks the symbols,
// and callers then fall back to ATen (gemm below) and libm.
inline SgemmFn find_sgemm() { return reinterpret_cast<SgemmFn>(dlsym(RTLD_DEFAULT, "sgemm_")); }
inline VmsTanhFn find_vms_tanh() { return reinterpret_cast<VmsTanhFn>(dlsym(RTLD_DEFAULT, "vmsTanh")); }

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
