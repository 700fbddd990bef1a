/* gemm.h: packed, blocked single-precision GEMM core (AVX2/FMA and portable C micro-kernels,
 * runtime dispatch, OpenMP). Operands are addressed by row and column strides, so transposes
 * cost nothing; op(B) can also be produced panel by panel by a callback, which is how the LoRS
 * kernels rebuild W' = W + s*(BA)*M tile by tile without ever storing it whole. */
#ifndef SPARSEFT_GEMM_H
#define SPARSEFT_GEMM_H

#include <stdint.h>

/* Blocking for L1d 48 KiB / L2 2 MiB per core. One thread's scratch (B block + A block) is at
 * most 880 KiB + 144 KiB = 1 MiB. */
#define GEMM_MR 6         /* rows of a micro-tile (AVX2 and portable kernels) */
#define GEMM_MR_AVX512 24 /* rows of a micro-tile of the AVX-512 kernel (24 zmm accumulators) */
#define GEMM_NR 16        /* columns of a micro-tile (two AVX2 vectors) */
#define GEMM_MC 144       /* rows of a packed A block (multiple of both MRs); 144 KiB at KC = 256, in L2 */
#define GEMM_KC 256       /* depth of a packed block; a 16 KiB B micro-panel stays in L1 */
#define GEMM_NC 880       /* columns of a packed B block (multiple of NR); 880 KiB at KC = 256, in L2 */

/* Packs op(B)[k0 : k0+kc, j0 : j0+nc] (nc <= GEMM_NR, kc <= GEMM_KC) into one micro-panel:
 * dst[kk*GEMM_NR + jj] = op(B)[k0+kk][j0+jj] for jj < nc, and 0 for nc <= jj < GEMM_NR.
 * dst is 64-byte aligned (aligned vector stores are fine).
 * Called concurrently from several threads on disjoint panels: it must be pure. */
typedef void (*gemm_pack_b_fn)(float *dst, const void *ctx, int64_t k0, int64_t kc, int64_t j0, int64_t nc);

/* A strided op(B)[k][j] = B[k*rsb + j*csb], and the packer sgemm uses for it (vectorised on the
 * AVX2 path), usable as a pack_b callback with ctx pointing at a gemm_strided_b. */
typedef struct {
    const float *B;
    int64_t rsb, csb;
} gemm_strided_b;
void gemm_pack_b_strided(float *dst, const void *ctx, int64_t k0, int64_t kc, int64_t j0, int64_t nc);

/* C (M, N), row stride ldc  =  beta * C + op(A) (M, K) @ op(B) (K, N)
 * op(A)[i][k] = A[i*rsa + k*csa];  op(B)[k][j] = B[k*rsb + j*csb].
 * beta == 0 never reads C (C may hold garbage). Returns 0, or -1 when scratch allocation fails.
 * Runs on sft_get_num_threads() threads (one inside a parallel region that cannot nest); the
 * result does not depend on the thread count. */
int sgemm(float *C, int64_t ldc, const float *A, int64_t rsa, int64_t csa, const float *B, int64_t rsb,
          int64_t csb, int64_t M, int64_t N, int64_t K, float beta);

/* The same with op(B) produced by pack_b(ctx, ...) micro-panel by micro-panel. */
int sgemm_packb(float *C, int64_t ldc, const float *A, int64_t rsa, int64_t csa, gemm_pack_b_fn pack_b,
                const void *ctx, int64_t M, int64_t N, int64_t K, float beta);

/* The same two with a scale on the product: C = beta * C + alpha * op(A) @ op(B) (beta == 0 never
 * reads C; alpha == 0 or K == 0 only scales C). alpha == 1 gives exactly sgemm / sgemm_packb. */
int sgemm_ab(float *C, int64_t ldc, const float *A, int64_t rsa, int64_t csa, const float *B, int64_t rsb,
             int64_t csb, int64_t M, int64_t N, int64_t K, float alpha, float beta);
int sgemm_packb_ab(float *C, int64_t ldc, const float *A, int64_t rsa, int64_t csa, gemm_pack_b_fn pack_b,
                   const void *ctx, int64_t M, int64_t N, int64_t K, float alpha, float beta);

/* Naive triple loop with the same contract (float accumulation), kept beside the fast one. */
void sgemm_naive(float *C, int64_t ldc, const float *A, int64_t rsa, int64_t csa, const float *B, int64_t rsb,
                 int64_t csb, int64_t M, int64_t N, int64_t K, float beta);

/* Rows of a micro-tile on the SIMD path in use (GEMM_MR or GEMM_MR_AVX512): callers splitting
 * rows between threads align the splits to it. */
int64_t gemm_mr(void);

/* Most scratch bytes one call needs with nthreads threads (for memory reports): at most
 * nthreads MiB. A call allocates less when the problem is smaller than a block. */
int64_t sgemm_scratch_bytes(int nthreads);

#endif
