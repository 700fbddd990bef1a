/* weightnorm.h: weight normalization w = g * v / ||v|| for a 2-D weight (Salimans & Kingma 2016),
 * with torch.nn.utils.parametrizations.weight_norm's meaning of dim:
 *   dim  0 (WN_DIM_ROWS): one norm per row    (K = R norms, g holds R values; torch g shape (R, 1))
 *   dim  1 (WN_DIM_COLS): one norm per column (K = C norms, g holds C values; torch g shape (1, C))
 *   dim -1 (WN_DIM_ALL):  one norm over all   (K = 1,       g holds 1 value;  torch g shape ())
 * Norms are accumulated in double; outputs are float32. A slice whose norm is 0 gives a finite,
 * documented result where torch returns NaN (pytorch#19126): w slice = 0, grad_g = 0, grad_v = 0
 * (the weight is defined as 0 there, so it does not depend on g, and its gradient is taken as 0).
 *
 * Also the row-norm kernels of weight-normalized LoRS ("sparse DoRA"): n_i = ||W'_i|| with
 * W' = W + s * (B A) (.) M, computed row by row from W, M, A, B (no out x in buffer), and their backward. */
#ifndef SPARSEFT_WEIGHTNORM_H
#define SPARSEFT_WEIGHTNORM_H

#include <stdint.h>

#define WN_DIM_ROWS 0
#define WN_DIM_COLS 1
#define WN_DIM_ALL (-1)

/* Number of norms for a dim: R, C or 1. */
int64_t weightnorm_num_norms(int64_t R, int64_t C, int dim);

/* norms (K) = ||v|| over each slice of v (R, C), accumulated in double, rounded to float32.
 * Returns 0, or -1 when scratch allocation fails. */
int weightnorm_norms(float *norms, const float *v, int64_t R, int64_t C, int dim);

/* w (R, C) = g * v / ||v||   (g (K); zero-norm slice -> 0). Returns 0, or -1 (scratch). */
int weightnorm_forward(float *w, const float *v, const float *g, int64_t R, int64_t C, int dim);

/* grad_g (K) = <grad_w, v> / ||v||  (per slice)
 * grad_v (R, C) = (g / ||v||) * grad_w - (g * grad_g / ||v||^2) * v   (zero-norm slice -> 0)
 * from grad_w (R, C), v (R, C), g (K). Returns 0, or -1 (scratch). */
int weightnorm_backward(float *grad_v, float *grad_g, const float *grad_w, const float *v, const float *g,
                        int64_t R, int64_t C, int dim);

/* Naive references with the same contracts (plain loops, double accumulation), kept beside. */
void weightnorm_forward_naive(float *w, const float *v, const float *g, int64_t R, int64_t C, int dim);
void weightnorm_backward_naive(float *grad_v, float *grad_g, const float *grad_w, const float *v,
                               const float *g, int64_t R, int64_t C, int dim);

/* Sparse DoRA row norms: n (out) = ||W'_i|| with W'_ij = W_ij + s * M_ij * (B A)_ij, accumulated in
 * double, from W (out, in), M (out, in) uint8 0/1, A (r, in), B (out, r). Returns 0, or -1 (scratch). */
int dora_rownorm_forward(float *n, const float *W, const uint8_t *M, const float *A, const float *B, float s,
                         int64_t out, int64_t in, int64_t r);

/* Backward of dora_rownorm_forward through W' into the adapters, accumulating:
 *   alpha_i = grad_n_i / n_i  (0 when n_i == 0)
 *   dB (out, r) += s * diag(alpha) (M (.) W') A^T        dA (r, in) += s * B^T diag(alpha) (M (.) W')
 * from grad_n (out), n (out) (the forward's norms), W, M, A, B as above. Returns 0, or -1 (scratch).
 * Deterministic for a fixed thread count (per-thread dA partials summed in thread order). */
int dora_rownorm_backward(float *dA, float *dB, const float *grad_n, const float *n, const float *W,
                          const uint8_t *M, const float *A, const float *B, float s, int64_t out, int64_t in,
                          int64_t r);

/* Naive references of the two DoRA kernels. */
void dora_rownorm_forward_naive(float *n, const float *W, const uint8_t *M, const float *A, const float *B,
                                float s, int64_t out, int64_t in, int64_t r);
void dora_rownorm_backward_naive(float *dA, float *dB, const float *grad_n, const float *n, const float *W,
                                 const uint8_t *M, const float *A, const float *B, float s, int64_t out,
                                 int64_t in, int64_t r);

#endif
