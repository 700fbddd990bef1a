/* sparse.h: compressed base formats (CSR and N:M) of a masked weight W (out, in) with the LoRS
 * adapter applied on the fly: W' = W + s*(B A) at the stored (mask) positions only.
 *   forward:  y  (N, out) = x (N, in) @ W'^T                      (SpMM)
 *   backward: gx (N, in)  = gy (N, out) @ W'                      (SpMM, scatter)
 *             g_ij = sum_t gy[t,i] x[t,j] at stored positions     (SDDMM), reduced on the fly into
 *             dB[i,:] += s*g_ij*A[:,j],  dA[:,j] += s*g_ij*B[i,:]   (no out x in buffer)
 * W' values are recomputed per token block (a dot product of length r per nonzero), never stored.
 * Activations are transposed block by block so the tokens are the vectorised dimension
 * (SparseProp); each output row keeps a register tile of 64 tokens across its nonzeros
 * (XNNPACK spmm). Wide inputs are walked in column slabs so the token block T stays long: work
 * is O(nnz*(N + r*N/T) + N*out*slabs); scratch <= 1 MiB of tiles per thread (including one
 * position per row for CSR) plus (in + out)*r floats per thread (partial dA, dB) and in*r (A^T). */
#ifndef SPARSEFT_SPARSE_H
#define SPARSEFT_SPARSE_H

#include <stdint.h>

enum sparse_kind { SPARSE_CSR = 0, SPARSE_NM = 1 };

/* A stored base. CSR: values (nnz,), colidx (nnz,) int32 sorted per row, rowptr (out+1,) int64.
 * N:M: values (out, in/m*n) and idx (out, in/m*n) uint8, the kept positions inside each group of
 * m inputs (ascending); exactly n kept per group. */
typedef struct {
    int kind;
    int64_t out, in;
    const float *values;
    const int32_t *colidx; /* CSR */
    const int64_t *rowptr; /* CSR */
    const uint8_t *idx;    /* N:M */
    int64_t n, m;          /* N:M */
} sparse_base;

/* y (N, out) = x (N, in) @ W'^T. Returns 0, or -1 when scratch allocation fails. */
int sparse_forward(float *y, const sparse_base *W, const float *x, const float *A, const float *B,
                   float scale, int64_t N, int64_t r);

/* gx (N, in) = gy @ W' when gx != NULL; dA (r, in), dB (out, r) = the exact masked gradients
 * (overwritten) when dA != NULL (then dB != NULL and x != NULL). One fused pass over the nonzeros. */
int sparse_backward(float *gx, float *dA, float *dB, const sparse_base *W, const float *gy, const float *x,
                    const float *A, const float *B, float scale, int64_t N, int64_t r);

/* values_out (same layout as W->values) = W' values: W + scale * (B A) at the stored positions. */
int sparse_merge(float *values_out, const sparse_base *W, const float *A, const float *B, float scale,
                 int64_t r);

/* Naive references with the same contracts (one loop nest each, float accumulation). */
void sparse_forward_naive(float *y, const sparse_base *W, const float *x, const float *A, const float *B,
                          float scale, int64_t N, int64_t r);
void sparse_backward_naive(float *gx, float *dA, float *dB, const sparse_base *W, const float *gy,
                           const float *x, const float *A, const float *B, float scale, int64_t N, int64_t r);

/* Checks the index structure (so a bad base cannot make the kernels read out of bounds):
 * 0 if valid, 1 rowptr not starting at 0 / decreasing / not ending at nnz, 2 column index out of
 * [0, in) or not increasing within a row, 3 N:M index >= m or not increasing within a group,
 * 4 in not a multiple of m or n > m. */
int sparse_check(const sparse_base *W, int64_t nnz);

/* The kernels' blocking for N tokens over nthreads threads (what fits the 1 MiB per thread of tile
 * scratch): token block and column slab of the forward and of the backward. */
void sparse_plan(const sparse_base *W, int64_t N, int nthreads, int64_t *fwd_tokens, int64_t *fwd_slab,
                 int64_t *bwd_tokens, int64_t *bwd_slab);

#endif
