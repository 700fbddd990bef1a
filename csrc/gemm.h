/* gemm.h: packed, blocked single-precision GEMM core (AVX2/FMA and portable C micro-kernels,
 * runtime dispatch, OpenMP). Operands are addressed by row and column strides, so transposes
 * cost nothing; op(B) can also be produced panel by panel by a callback, which is how the LoRS
 * kernels rebuild W' = W + s*(BA)*M tile by tile without ever storing it whole. */
#ifndef SPARSEFT_GEMM_H
#define SPARSEFT_GEMM_H

#include <stdint.h>

#define GEMM_MR 6    /* rows of a micro-tile */
#define GEMM_NR 16   /* columns of a micro-tile (two AVX2 vectors) */
#define GEMM_MC 144  /* rows of a packed A block (multiple of MR); 144 KiB at KC = 256 */
#define GEMM_KC 256  /* depth of a packed block */
#define GEMM_NC 1024 /* columns of a packed B block (multiple of NR); 1 MiB at KC = 256 */

/* Packs op(B)[k0 : k0+kc, j0 : j0+nc] (nc <= GEMM_NR) into one micro-panel:
 * dst[kk*GEMM_NR + jj] = op(B)[k0+kk][j0+jj] for jj < nc, and 0 for nc <= jj < GEMM_NR.
 * Called concurrently from several threads on disjoint panels: it must be pure. */
typedef void (*gemm_pack_b_fn)(float *dst, const void *ctx, int64_t k0, int64_t kc, int64_t j0, int64_t nc);

/* C (M, N), row stride ldc  =  beta * C + op(A) (M, K) @ op(B) (K, N)
 * op(A)[i][k] = A[i*rsa + k*csa];  op(B)[k][j] = B[k*rsb + j*csb].
 * beta == 0 never reads C (C may hold garbage). Returns 0, or -1 when scratch allocation fails. */
int sgemm(float *C, int64_t ldc, const float *A, int64_t rsa, int64_t csa, const float *B, int64_t rsb,
          int64_t csb, int64_t M, int64_t N, int64_t K, float beta);

/* The same with op(B) produced by pack_b(ctx, ...) micro-panel by micro-panel. */
int sgemm_packb(float *C, int64_t ldc, const float *A, int64_t rsa, int64_t csa, gemm_pack_b_fn pack_b,
                const void *ctx, int64_t M, int64_t N, int64_t K, float beta);

/* Naive triple loop with the same contract (float accumulation), kept beside the fast one. */
void sgemm_naive(float *C, int64_t ldc, const float *A, int64_t rsa, int64_t csa, const float *B, int64_t rsb,
                 int64_t csb, int64_t M, int64_t N, int64_t K, float beta);

/* Scratch bytes sgemm needs with nthreads threads (for memory reports). */
int64_t sgemm_scratch_bytes(int nthreads);

#endif
