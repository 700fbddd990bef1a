/* nn.c: row kernels of the transformer ops: LayerNorm, RMSNorm, GELU (tanh), SwiGLU, RoPE,
 * embedding, softmax cross-entropy (plain and fused with the LM head), AdamW.
 * Each body is written once on 8-lane vectors (nn_vec.h) and instantiated for the portable and the
 * AVX2/FMA paths. Rows are split among OpenMP threads; sums across rows go through fixed blocks of
 * NN_RB rows summed in block order, so no result depends on the thread count. */
#include "nn.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "gemm.h"
#include "nn_vec.h"

/* Rows per block of the cross-row reductions (dw, db, the mean loss). */
#define NN_RB 32
/* Floats per block of the elementwise kernels (one task). */
#define NN_EB 16384
/* Below this many floats of work a kernel runs on one thread. */
#define NN_PARALLEL_MIN (1 << 15)
/* Floats of one LM-head logits block (rows x V) when the caller does not choose: 32 MiB. */
#define NN_HEAD_BLOCK_FLOATS (1 << 23)

static int nn_threads(int64_t work) {
    return work < NN_PARALLEL_MIN ? 1 : sft_get_num_threads();
}

/* ---- row reductions on v8f ------------------------------------------------------------------ */

/* sum of x[0:n] */
NN_INLINE float row_sum(const float *x, int64_t n) {
    v8f a = v8_set(0.0f), b = v8_set(0.0f);
    int64_t j = 0;
    for (; j + 16 <= n; j += 16) a += v8_load(x + j), b += v8_load(x + j + 8);
    for (; j + 8 <= n; j += 8) a += v8_load(x + j);
    if (j < n) b += v8_load_n(x + j, n - j);
    return v8_hsum(a + b);
}

/* sum of (x - c)^2 */
NN_INLINE float row_sumsq_c(const float *x, float c, int64_t n) {
    v8f a = v8_set(0.0f), b = v8_set(0.0f), cv = v8_set(c);
    int64_t j = 0;
    for (; j + 16 <= n; j += 16) {
        v8f d0 = v8_load(x + j) - cv, d1 = v8_load(x + j + 8) - cv;
        a += d0 * d0, b += d1 * d1;
    }
    for (; j + 8 <= n; j += 8) {
        v8f d = v8_load(x + j) - cv;
        a += d * d;
    }
    if (j < n) {
        v8f d = v8_load_n(x + j, n - j) - cv;
        // the zero-filled tail lanes would add c^2 each: mask them
        float tmp[8] = {0};
        memcpy(tmp, &d, (size_t)(n - j) * sizeof(float));
        d = v8_load(tmp);
        b += d * d;
    }
    return v8_hsum(a + b);
}

/* ---- LayerNorm ---------------------------------------------------------------------------------- */

NN_INLINE void layernorm_fwd_body(float *y, float *mean, float *rstd, const float *x, const float *w,
                                  const float *b, int64_t r0, int64_t r1, int64_t C, float eps) {
    // one row at a time: mean, variance (two passes, the row stays in cache), normalise
    for (int64_t i = r0; i < r1; i++) {
        const float *xi = x + i * C;
        float *yi = y + i * C;
        float mu = row_sum(xi, C) / (float)C;
        float var = row_sumsq_c(xi, mu, C) / (float)C;
        float rs = 1.0f / sqrtf(var + eps);
        mean[i] = mu, rstd[i] = rs;
        v8f muv = v8_set(mu), rsv = v8_set(rs);
        int64_t j = 0;
        for (; j + 8 <= C; j += 8)
            v8_store(yi + j, (v8_load(xi + j) - muv) * rsv * v8_load(w + j) + v8_load(b + j));
        if (j < C)
            v8_store_n(
                yi + j,
                (v8_load_n(xi + j, C - j) - muv) * rsv * v8_load_n(w + j, C - j) + v8_load_n(b + j, C - j),
                C - j);
    }
}
NN_INSTANTIATE(layernorm_fwd,
               (float *y, float *mean, float *rstd, const float *x, const float *w, const float *b,
                int64_t r0, int64_t r1, int64_t C, float eps),
               (y, mean, rstd, x, w, b, r0, r1, C, eps))

void layernorm_forward(float *y, float *mean, float *rstd, const float *x, const float *w, const float *b,
                       int64_t N, int64_t C, float eps) {
    int64_t nb = sft_ceil_div(N, NN_RB);
    // blocks of rows among the threads
#pragma omp parallel for schedule(static) num_threads(nn_threads(N *C))
    for (int64_t blk = 0; blk < nb; blk++)
        layernorm_fwd_run(y, mean, rstd, x, w, b, blk * NN_RB, SFT_MIN(N, (blk + 1) * NN_RB), C, eps);
}

/* rows r0..r1: dx, and this block's partial dw, db (overwritten) */
NN_INLINE void layernorm_bwd_body(float *dx, float *pdw, float *pdb, const float *dy, const float *x,
                                  const float *w, const float *mean, const float *rstd, int64_t r0,
                                  int64_t r1, int64_t C) {
    memset(pdw, 0, (size_t)C * sizeof(float));
    memset(pdb, 0, (size_t)C * sizeof(float));
    for (int64_t i = r0; i < r1; i++) {
        const float *xi = x + i * C, *gi = dy + i * C;
        float *dxi = dx + i * C;
        v8f muv = v8_set(mean[i]), rsv = v8_set(rstd[i]);
        // pass 1: sums of g*w and g*w*xhat; dw += g*xhat, db += g
        v8f s1 = v8_set(0.0f), s2 = v8_set(0.0f);
        int64_t j = 0;
        for (; j < C; j += 8) {
            int64_t n = SFT_MIN(8, C - j);
            v8f g = n == 8 ? v8_load(gi + j) : v8_load_n(gi + j, n);
            v8f xh = ((n == 8 ? v8_load(xi + j) : v8_load_n(xi + j, n)) - muv) * rsv;
            v8f ww = n == 8 ? v8_load(w + j) : v8_load_n(w + j, n);
            v8f gw = g * ww;
            if (n < 8) xh = v8_select((v8i){0, 1, 2, 3, 4, 5, 6, 7} < (int32_t)n, xh, v8_set(0.0f));
            s1 += gw, s2 += gw * xh;
            if (n == 8) {
                v8_store(pdw + j, v8_load(pdw + j) + g * xh);
                v8_store(pdb + j, v8_load(pdb + j) + g);
            } else {
                v8_store_n(pdw + j, v8_load_n(pdw + j, n) + g * xh, n);
                v8_store_n(pdb + j, v8_load_n(pdb + j, n) + g, n);
            }
        }
        v8f m1 = v8_set(v8_hsum(s1) / (float)C), m2 = v8_set(v8_hsum(s2) / (float)C);
        // pass 2: dx = rstd * (g*w - mean(g*w) - xhat * mean(g*w*xhat))
        for (j = 0; j < C; j += 8) {
            int64_t n = SFT_MIN(8, C - j);
            v8f g = n == 8 ? v8_load(gi + j) : v8_load_n(gi + j, n);
            v8f xh = ((n == 8 ? v8_load(xi + j) : v8_load_n(xi + j, n)) - muv) * rsv;
            v8f ww = n == 8 ? v8_load(w + j) : v8_load_n(w + j, n);
            v8f d = rsv * (g * ww - m1 - xh * m2);
            if (n == 8)
                v8_store(dxi + j, d);
            else
                v8_store_n(dxi + j, d, n);
        }
    }
}
NN_INSTANTIATE(layernorm_bwd,
               (float *dx, float *pdw, float *pdb, const float *dy, const float *x, const float *w,
                const float *mean, const float *rstd, int64_t r0, int64_t r1, int64_t C),
               (dx, pdw, pdb, dy, x, w, mean, rstd, r0, r1, C))

/* out[c] = sum over blocks of part[blk*stride + c], in block order, columns among threads */
static void sum_blocks(float *out, const float *part, int64_t nb, int64_t stride, int64_t C, int nth) {
#pragma omp parallel for schedule(static) num_threads(nth)
    for (int64_t c = 0; c < C; c++) {
        float s = 0.0f;
        for (int64_t blk = 0; blk < nb; blk++) s += part[blk * stride + c];
        out[c] = s;
    }
}

int layernorm_backward(float *dx, float *dw, float *db, const float *dy, const float *x, const float *w,
                       const float *mean, const float *rstd, int64_t N, int64_t C) {
    int64_t nb = sft_ceil_div(N, NN_RB);
    float *part = (float *)sft_scratch_alloc(sizeof(float) * (size_t)SFT_MAX(1, nb) * 2 * (size_t)C);
    if (part == NULL) return -1;
    int nth = nn_threads(N * C);
    // row blocks: dx and each block's partial dw, db
#pragma omp parallel for schedule(static) num_threads(nth)
    for (int64_t blk = 0; blk < nb; blk++)
        layernorm_bwd_run(dx, part + blk * 2 * C, part + blk * 2 * C + C, dy, x, w, mean, rstd, blk * NN_RB,
                          SFT_MIN(N, (blk + 1) * NN_RB), C);
    sum_blocks(dw, part, nb, 2 * C, C, nth);
    sum_blocks(db, part + C, nb, 2 * C, C, nth);
    sft_scratch_free(part);
    return 0;
}

/* ---- RMSNorm ------------------------------------------------------------------------------------ */

NN_INLINE void rmsnorm_fwd_body(float *y, float *rstd, const float *x, const float *w, int64_t r0, int64_t r1,
                                int64_t C, float eps) {
    for (int64_t i = r0; i < r1; i++) {
        const float *xi = x + i * C;
        float *yi = y + i * C;
        float rs = 1.0f / sqrtf(row_sumsq_c(xi, 0.0f, C) / (float)C + eps);
        rstd[i] = rs;
        v8f rsv = v8_set(rs);
        int64_t j = 0;
        for (; j + 8 <= C; j += 8) v8_store(yi + j, v8_load(xi + j) * rsv * v8_load(w + j));
        if (j < C) v8_store_n(yi + j, v8_load_n(xi + j, C - j) * rsv * v8_load_n(w + j, C - j), C - j);
    }
}
NN_INSTANTIATE(rmsnorm_fwd,
               (float *y, float *rstd, const float *x, const float *w, int64_t r0, int64_t r1, int64_t C,
                float eps),
               (y, rstd, x, w, r0, r1, C, eps))

void rmsnorm_forward(float *y, float *rstd, const float *x, const float *w, int64_t N, int64_t C, float eps) {
    int64_t nb = sft_ceil_div(N, NN_RB);
#pragma omp parallel for schedule(static) num_threads(nn_threads(N *C))
    for (int64_t blk = 0; blk < nb; blk++)
        rmsnorm_fwd_run(y, rstd, x, w, blk * NN_RB, SFT_MIN(N, (blk + 1) * NN_RB), C, eps);
}

NN_INLINE void rmsnorm_bwd_body(float *dx, float *pdw, const float *dy, const float *x, const float *w,
                                const float *rstd, int64_t r0, int64_t r1, int64_t C) {
    memset(pdw, 0, (size_t)C * sizeof(float));
    for (int64_t i = r0; i < r1; i++) {
        const float *xi = x + i * C, *gi = dy + i * C;
        float *dxi = dx + i * C;
        v8f rsv = v8_set(rstd[i]);
        // pass 1: sum of g*w*xhat (tail lanes load zeros, so they add nothing); dw += g*xhat
        v8f s = v8_set(0.0f);
        for (int64_t j = 0; j < C; j += 8) {
            int64_t n = SFT_MIN(8, C - j);
            v8f g = n == 8 ? v8_load(gi + j) : v8_load_n(gi + j, n);
            v8f xh = (n == 8 ? v8_load(xi + j) : v8_load_n(xi + j, n)) * rsv;
            v8f ww = n == 8 ? v8_load(w + j) : v8_load_n(w + j, n);
            s += g * ww * xh;
            if (n == 8)
                v8_store(pdw + j, v8_load(pdw + j) + g * xh);
            else
                v8_store_n(pdw + j, v8_load_n(pdw + j, n) + g * xh, n);
        }
        v8f m = v8_set(v8_hsum(s) / (float)C);
        // pass 2: dx = rstd * (g*w - xhat * mean(g*w*xhat))
        for (int64_t j = 0; j < C; j += 8) {
            int64_t n = SFT_MIN(8, C - j);
            v8f g = n == 8 ? v8_load(gi + j) : v8_load_n(gi + j, n);
            v8f xh = (n == 8 ? v8_load(xi + j) : v8_load_n(xi + j, n)) * rsv;
            v8f ww = n == 8 ? v8_load(w + j) : v8_load_n(w + j, n);
            v8f d = rsv * (g * ww - xh * m);
            if (n == 8)
                v8_store(dxi + j, d);
            else
                v8_store_n(dxi + j, d, n);
        }
    }
}
NN_INSTANTIATE(rmsnorm_bwd,
               (float *dx, float *pdw, const float *dy, const float *x, const float *w, const float *rstd,
                int64_t r0, int64_t r1, int64_t C),
               (dx, pdw, dy, x, w, rstd, r0, r1, C))

int rmsnorm_backward(float *dx, float *dw, const float *dy, const float *x, const float *w, const float *rstd,
                     int64_t N, int64_t C) {
    int64_t nb = sft_ceil_div(N, NN_RB);
    float *part = (float *)sft_scratch_alloc(sizeof(float) * (size_t)SFT_MAX(1, nb) * (size_t)C);
    if (part == NULL) return -1;
    int nth = nn_threads(N * C);
#pragma omp parallel for schedule(static) num_threads(nth)
    for (int64_t blk = 0; blk < nb; blk++)
        rmsnorm_bwd_run(dx, part + blk * C, dy, x, w, rstd, blk * NN_RB, SFT_MIN(N, (blk + 1) * NN_RB), C);
    sum_blocks(dw, part, nb, C, C, nth);
    sft_scratch_free(part);
    return 0;
}

/* ---- GELU (tanh approximation) and SwiGLU ------------------------------------------------------- */

#define GELU_K 0.7978845608028654f /* sqrt(2 / pi) */
#define GELU_C 0.044715f

/* 0.5 (1 + tanh(u)) = sigmoid(2u), so gelu(x) = x sigmoid(2u) with u = sqrt(2/pi) (x + 0.044715 x^3):
 * one exp and one division per lane. u is taken at x clamped to [-15, 15], where sigmoid(2u) is
 * already exactly 0 or 1 in float32 (and x^3 cannot overflow into 0 * inf in the derivative). */
NN_INLINE v8f gelu_sig8(v8f x, v8f *xc_out) {
    const v8f lim = v8_set(15.0f);
    v8f xc = v8_select(x > lim, lim, v8_select(x < -lim, -lim, x));
    v8f u = v8_set(GELU_K) * (xc + v8_set(GELU_C) * xc * xc * xc);
    *xc_out = xc;
    return v8_set(1.0f) / (v8_set(1.0f) + v8_exp(v8_set(-2.0f) * u));
}
NN_INLINE v8f gelu8(v8f x) {
    v8f xc;
    return x * gelu_sig8(x, &xc);
}
/* d/dx x s(2u) = s + 2 x s (1 - s) du/dx */
NN_INLINE v8f gelu_grad8(v8f x, v8f g) {
    v8f xc;
    v8f s = gelu_sig8(x, &xc);
    v8f du = v8_set(GELU_K) * (v8_set(1.0f) + v8_set(3.0f * GELU_C) * xc * xc);
    return g * (s + v8_set(2.0f) * xc * s * (v8_set(1.0f) - s) * du);
}
NN_INLINE v8f sigmoid8(v8f x) {
    return v8_set(1.0f) / (v8_set(1.0f) + v8_exp(-x));
}

/* One elementwise pass over [i0, i1) with f applied to up to three inputs and two outputs:
 * op 0 gelu fwd, 1 gelu bwd, 2 swiglu fwd, 3 swiglu bwd. */
NN_INLINE void eltwise_body(float *o1, float *o2, const float *a, const float *b, const float *c, int64_t i0,
                            int64_t i1, int op) {
    for (int64_t i = i0; i < i1; i += 8) {
        int64_t n = SFT_MIN(8, i1 - i);
        v8f va = n == 8 ? v8_load(a + i) : v8_load_n(a + i, n);
        v8f vb = b == NULL ? va : n == 8 ? v8_load(b + i) : v8_load_n(b + i, n);
        v8f r1, r2 = va;
        if (op == 0) {
            r1 = gelu8(va);  // a = x
        } else if (op == 1) {
            r1 = gelu_grad8(vb, va);  // a = dy, b = x
        } else if (op == 2) {
            r1 = va * sigmoid8(va) * vb;  // a = gate, b = up
        } else {
            v8f vc = n == 8 ? v8_load(c + i) : v8_load_n(c + i, n);  // a = dy, b = gate, c = up
            v8f s = sigmoid8(vb);
            r1 = va * vc * s * (v8_set(1.0f) + vb * (v8_set(1.0f) - s));
            r2 = va * vb * s;
        }
        if (n == 8) {
            v8_store(o1 + i, r1);
            if (op == 3) v8_store(o2 + i, r2);
        } else {
            v8_store_n(o1 + i, r1, n);
            if (op == 3) v8_store_n(o2 + i, r2, n);
        }
    }
}
NN_INSTANTIATE(eltwise,
               (float *o1, float *o2, const float *a, const float *b, const float *c, int64_t i0, int64_t i1,
                int op),
               (o1, o2, a, b, c, i0, i1, op))

static void eltwise(float *o1, float *o2, const float *a, const float *b, const float *c, int64_t n, int op) {
    int64_t nb = sft_ceil_div(n, NN_EB);
    // blocks of NN_EB floats among the threads
#pragma omp parallel for schedule(static) num_threads(nn_threads(n))
    for (int64_t blk = 0; blk < nb; blk++)
        eltwise_run(o1, o2, a, b, c, blk * NN_EB, SFT_MIN(n, (blk + 1) * NN_EB), op);
}

void gelu_forward(float *y, const float *x, int64_t n) {
    eltwise(y, NULL, x, NULL, NULL, n, 0);
}
void gelu_backward(float *dx, const float *dy, const float *x, int64_t n) {
    eltwise(dx, NULL, dy, x, NULL, n, 1);
}
void swiglu_forward(float *y, const float *gate, const float *up, int64_t n) {
    eltwise(y, NULL, gate, up, NULL, n, 2);
}
void swiglu_backward(float *dgate, float *dup, const float *dy, const float *gate, const float *up,
                     int64_t n) {
    eltwise(dgate, dup, dy, gate, up, n, 3);
}

/* ---- RoPE --------------------------------------------------------------------------------------- */

/* rows [r0, r1) of the (B*T*H, D) view: y = x cos + rotate_half(x) sin, sign = -1 the inverse */
NN_INLINE void rope_body(float *y, const float *x, const float *cs /* (T, D) cos | sin halves */, int64_t r0,
                         int64_t r1, int64_t T, int64_t H, int64_t D, float sign) {
    int64_t h2 = D / 2;
    v8f sg = v8_set(sign);
    for (int64_t r = r0; r < r1; r++) {
        int64_t t = (r / H) % T;
        const float *c = cs + t * D, *s = c + h2;
        const float *x1 = x + r * D, *x2 = x1 + h2;
        float *y1 = y + r * D, *y2 = y1 + h2;
        for (int64_t j = 0; j < h2; j += 8) {
            int64_t n = SFT_MIN(8, h2 - j);
            v8f a = n == 8 ? v8_load(x1 + j) : v8_load_n(x1 + j, n);
            v8f b = n == 8 ? v8_load(x2 + j) : v8_load_n(x2 + j, n);
            v8f cv = n == 8 ? v8_load(c + j) : v8_load_n(c + j, n);
            v8f sv = sg * (n == 8 ? v8_load(s + j) : v8_load_n(s + j, n));
            v8f o1 = a * cv - b * sv, o2 = b * cv + a * sv;
            if (n == 8)
                v8_store(y1 + j, o1), v8_store(y2 + j, o2);
            else
                v8_store_n(y1 + j, o1, n), v8_store_n(y2 + j, o2, n);
        }
    }
}
NN_INSTANTIATE(rope,
               (float *y, const float *x, const float *cs, int64_t r0, int64_t r1, int64_t T, int64_t H,
                int64_t D, float sign),
               (y, x, cs, r0, r1, T, H, D, sign))

int rope_apply(float *y, const float *x, const float *inv_freq, int64_t B, int64_t T, int64_t H, int64_t D,
               double theta, int64_t offset, int sign) {
    int64_t h2 = D / 2;
    float *cs = (float *)sft_scratch_alloc(sizeof(float) * (size_t)SFT_MAX(1, T * D));
    if (cs == NULL) return -1;
    // table of cos | sin per position; the angle is rounded to float32 as Hugging Face computes it
    // (float32 inverse frequencies times float32 positions), then cos and sin taken in double
    for (int64_t t = 0; t < T; t++) {
        for (int64_t i = 0; i < h2; i++) {
            float inv =
                inv_freq != NULL ? inv_freq[i] : (float)(1.0 / pow(theta, (double)(2 * i) / (double)D));
            float ang = (float)(offset + t) * inv;
            cs[t * D + i] = (float)cos((double)ang);
            cs[t * D + h2 + i] = (float)sin((double)ang);
        }
    }
    int64_t rows = B * T * H, nb = sft_ceil_div(rows, NN_RB);
#pragma omp parallel for schedule(static) num_threads(nn_threads(rows *D))
    for (int64_t blk = 0; blk < nb; blk++)
        rope_run(y, x, cs, blk * NN_RB, SFT_MIN(rows, (blk + 1) * NN_RB), T, H, D, sign < 0 ? -1.0f : 1.0f);
    sft_scratch_free(cs);
    return 0;
}

/* ---- embedding ---------------------------------------------------------------------------------- */

void embedding_forward(float *x, const int64_t *ids, const float *wte, int64_t N, int64_t C) {
    // one row copy per token
#pragma omp parallel for schedule(static) num_threads(nn_threads(N *C))
    for (int64_t i = 0; i < N; i++) memcpy(x + i * C, wte + ids[i] * C, (size_t)C * sizeof(float));
}

void embedding_backward(float *dwte, const float *dx, const int64_t *ids, int64_t N, int64_t V, int64_t C) {
    // each thread owns a range of columns and adds every token's slice in token order (no races)
    int nth = nn_threads(SFT_MAX(N, V) * C);
#pragma omp parallel num_threads(nth)
    {
        int tid = sft_thread_num(), team = sft_team_size();
        int64_t c0 = C * tid / team, c1 = C * (tid + 1) / team;
        for (int64_t r = 0; r < V; r++) memset(dwte + r * C + c0, 0, (size_t)(c1 - c0) * sizeof(float));
        for (int64_t i = 0; i < N; i++) {
            float *d = dwte + ids[i] * C;
            const float *g = dx + i * C;
            for (int64_t c = c0; c < c1; c++) d[c] += g[c];
        }
    }
}

/* ---- softmax cross-entropy ---------------------------------------------------------------------- */

/* log-sum-exp of one row (max, then the sum of exp(x - max)) */
NN_INLINE float row_lse(const float *x, int64_t K) {
    v8f m = v8_set(-__builtin_inff());
    int64_t j = 0;
    for (; j + 8 <= K; j += 8) m = v8_max(m, v8_load(x + j));
    float mx = v8_hmax(m);
    for (; j < K; j++) mx = x[j] > mx ? x[j] : mx;
    if (!(mx > -__builtin_inff()) || mx == __builtin_inff()) return mx;  // all -inf, +inf or NaN row
    v8f s = v8_set(0.0f), mv = v8_set(mx);
    for (j = 0; j + 8 <= K; j += 8) s += v8_exp(v8_load(x + j) - mv);
    float tail = 0.0f;
    if (j < K) {
        v8f e = v8_exp(v8_load_n(x + j, K - j) - mv);
        for (int64_t t = 0; t < K - j; t++) tail += e[t];
    }
    return mx + logf(v8_hsum(s) + tail);
}

/* g * (exp(x - lse) - onehot(target)) into d, one row */
NN_INLINE void row_xent_grad(float *d, const float *x, int64_t target, float lse, float g, int64_t K) {
    v8f lv = v8_set(lse), gv = v8_set(g);
    int64_t j = 0;
    for (; j + 8 <= K; j += 8) v8_store(d + j, gv * v8_exp(v8_load(x + j) - lv));
    if (j < K) v8_store_n(d + j, gv * v8_exp(v8_load_n(x + j, K - j) - lv), K - j);
    d[target] -= g;
}

NN_INLINE void xent_fwd_body(float *lse, float *part, const float *logits, const int64_t *targets, int64_t r0,
                             int64_t r1, int64_t K) {
    // per row lse; this block's loss sum (in double) into *part
    double s = 0.0;
    for (int64_t i = r0; i < r1; i++) {
        lse[i] = row_lse(logits + i * K, K);
        s += (double)lse[i] - (double)logits[i * K + targets[i]];
    }
    *part = (float)s;
}
NN_INSTANTIATE(xent_fwd,
               (float *lse, float *part, const float *logits, const int64_t *targets, int64_t r0, int64_t r1,
                int64_t K),
               (lse, part, logits, targets, r0, r1, K))

NN_INLINE void xent_bwd_body(float *d, const float *logits, const int64_t *targets, const float *lse, float g,
                             int64_t r0, int64_t r1, int64_t K) {
    for (int64_t i = r0; i < r1; i++) row_xent_grad(d + i * K, logits + i * K, targets[i], lse[i], g, K);
}
NN_INSTANTIATE(xent_bwd,
               (float *d, const float *logits, const int64_t *targets, const float *lse, float g, int64_t r0,
                int64_t r1, int64_t K),
               (d, logits, targets, lse, g, r0, r1, K))

/* mean of the per-block loss sums, in block order */
static float mean_of_parts(const float *part, int64_t nb, int64_t N) {
    double s = 0.0;
    for (int64_t blk = 0; blk < nb; blk++) s += (double)part[blk];
    return N > 0 ? (float)(s / (double)N) : 0.0f;
}

float softmax_xent_forward(float *lse, const float *logits, const int64_t *targets, int64_t N, int64_t K) {
    int64_t nb = sft_ceil_div(N, NN_RB);
    float stack[64];
    float *part = nb <= 64 ? stack : (float *)malloc(sizeof(float) * (size_t)nb);
    if (part == NULL) return __builtin_nanf("");
#pragma omp parallel for schedule(static) num_threads(nn_threads(N *K))
    for (int64_t blk = 0; blk < nb; blk++)
        xent_fwd_run(lse, part + blk, logits, targets, blk * NN_RB, SFT_MIN(N, (blk + 1) * NN_RB), K);
    float loss = mean_of_parts(part, nb, N);
    if (part != stack) free(part);
    return loss;
}

void softmax_xent_backward(float *dlogits, const float *logits, const int64_t *targets, const float *lse,
                           float dloss, int64_t N, int64_t K) {
    int64_t nb = sft_ceil_div(N, NN_RB);
    float g = N > 0 ? dloss / (float)N : 0.0f;
#pragma omp parallel for schedule(static) num_threads(nn_threads(N *K))
    for (int64_t blk = 0; blk < nb; blk++)
        xent_bwd_run(dlogits, logits, targets, lse, g, blk * NN_RB, SFT_MIN(N, (blk + 1) * NN_RB), K);
}

/* ---- LM head + cross-entropy, logits built `chunk` rows at a time ------------------------------- */

int64_t lm_head_default_chunk(int64_t N, int64_t V) {
    int64_t r = NN_HEAD_BLOCK_FLOATS / SFT_MAX(1, V);
    r = SFT_MAX(gemm_mr(), r / gemm_mr() * gemm_mr());
    return SFT_MAX(1, SFT_MIN(r, N));
}

/* rows [r0, r1) of a logits block L (rows x V, rows counted from the block's first row i0):
 * lse of each row, or (lse given) the scaled softmax-minus-onehot gradient in place */
NN_INLINE void head_rows_body(float *L, float *lse, float *part, const int64_t *targets, float g, int64_t i0,
                              int64_t r0, int64_t r1, int64_t V, int mode) {
    double s = 0.0;
    for (int64_t r = r0; r < r1; r++) {
        float *Lr = L + (r - i0) * V;
        int64_t t = targets[r];
        if (mode != 1) {
            lse[r] = row_lse(Lr, V);
            s += (double)lse[r] - (double)Lr[t];
        }
        if (mode != 0) row_xent_grad(Lr, Lr, t, lse[r], g, V);
    }
    if (part != NULL) *part = (float)s;
}
NN_INSTANTIATE(head_rows,
               (float *L, float *lse, float *part, const int64_t *targets, float g, int64_t i0, int64_t r0,
                int64_t r1, int64_t V, int mode),
               (L, lse, part, targets, g, i0, r0, r1, V, mode))

/* The shared loop of the fused head. mode 0: loss and lse; 1: gradients from a given lse, scaled by
 * dloss; 2: loss, lse and the gradients for dloss = 1 in one pass. dx (modes 1, 2) and dw (when not
 * NULL) are overwritten. */
static int lm_head_run(float *loss, float *lse, float *dx, float *dw, const float *x, const float *w,
                       const int64_t *targets, float dloss, int64_t N, int64_t C, int64_t V, int64_t chunk,
                       int mode, int accumulate_dw) {
    if (chunk <= 0) chunk = lm_head_default_chunk(N, V);
    chunk = SFT_MAX(1, SFT_MIN(chunk, N));
    int64_t nb = sft_ceil_div(N, NN_RB);
    float *L = (float *)sft_scratch_alloc(sizeof(float) * (size_t)SFT_MAX(1, chunk * V));
    float *part = (float *)sft_scratch_alloc(sizeof(float) * (size_t)SFT_MAX(1, nb));
    if (L == NULL || part == NULL) {
        sft_scratch_free(L), sft_scratch_free(part);
        return -1;
    }
    int rc = 0;
    float g = N > 0 ? dloss / (float)N : 0.0f;
    if (dw != NULL && !accumulate_dw) memset(dw, 0, sizeof(float) * (size_t)(V * C));
    // chunk rows at a time (a multiple of NN_RB unless it is the whole batch, so loss blocks line up)
    if (chunk < N && chunk > NN_RB) chunk = chunk / NN_RB * NN_RB;
    for (int64_t i0 = 0; i0 < N && rc == 0; i0 += chunk) {
        int64_t rows = SFT_MIN(chunk, N - i0);
        // L = x[i0 : i0+rows] w^T   (rows, V)
        rc |= sgemm(L, V, x + i0 * C, C, 1, w, 1, C, rows, V, C, 0.0f);
        // per row: lse / loss / gradient, in blocks of NN_RB rows among the threads
        int64_t b0 = i0 / NN_RB, b1 = sft_ceil_div(i0 + rows, NN_RB);
#pragma omp parallel for schedule(static) num_threads(nn_threads(rows *V))
        for (int64_t blk = b0; blk < b1; blk++) {
            int64_t r0 = SFT_MAX(i0, blk * NN_RB), r1 = SFT_MIN(i0 + rows, (blk + 1) * NN_RB);
            // a loss block split between two chunks (chunk not a multiple of NN_RB) keeps its first part
            float *pp = mode == 1 ? NULL : part + blk;
            float prev = (mode != 1 && r0 > blk * NN_RB) ? part[blk] : 0.0f;
            head_rows_run(L, lse, pp, targets, g, i0, r0, r1, V, mode);
            if (pp != NULL) *pp += prev;
        }
        if (mode == 0) continue;
        // dx[i0 : i0+rows] = dL w   (rows, C); dw += dL^T x[i0 : i0+rows]   (V, C)
        rc |= sgemm(dx + i0 * C, C, L, V, 1, w, C, 1, rows, C, V, 0.0f);
        if (dw != NULL) rc |= sgemm(dw, C, L, 1, V, x + i0 * C, C, 1, V, C, rows, 1.0f);
    }
    if (loss != NULL && mode != 1) *loss = mean_of_parts(part, nb, N);
    sft_scratch_free(L), sft_scratch_free(part);
    return rc;
}

int lm_head_xent_forward(float *loss, float *lse, float *dx, float *dw, const float *x, const float *w,
                         const int64_t *targets, int64_t N, int64_t C, int64_t V, int64_t chunk) {
    return lm_head_run(loss, lse, dx, dx == NULL ? NULL : dw, x, w, targets, 1.0f, N, C, V, chunk,
                       dx == NULL ? 0 : 2, 0);
}

int lm_head_xent_backward(float *dx, float *dw, const float *x, const float *w, const int64_t *targets,
                          const float *lse, float dloss, int64_t N, int64_t C, int64_t V, int64_t chunk) {
    return lm_head_run(NULL, (float *)lse, dx, dw, x, w, targets, dloss, N, C, V, chunk, 1, 0);
}

int lm_head_xent_backward_into(float *dx, float *dw, const float *x, const float *w, const int64_t *targets,
                               const float *lse, float dloss, int64_t N, int64_t C, int64_t V,
                               int64_t chunk) {
    return lm_head_run(NULL, (float *)lse, dx, dw, x, w, targets, dloss, N, C, V, chunk, 1, 1);
}

/* ---- AdamW -------------------------------------------------------------------------------------- */

NN_INLINE void adamw_body(float *p, float *m, float *v, const float *g, int64_t i0, int64_t i1, float decay,
                          float b1, float b2, float step_size, float sqrt_bc2, float eps) {
    // torch's order: p *= 1 - lr wd; m = lerp(m, g, 1 - b1); v = b2 v + (1 - b2) g^2;
    // p -= step_size * m / (sqrt(v) / sqrt(bc2) + eps)
    // 8 lanes at a time (the scalar sqrtf keeps errno semantics, so the compiler would not
    // vectorise it, leaving the step compute-bound): the same operations in the same order per
    // element as the scalar tail, with correctly rounded sqrt and division, so the same results
    int64_t i = i0;
    const v8f one_b1 = v8_set(1.0f - b1), one_b2 = v8_set(1.0f - b2), b2v = v8_set(b2);
    const v8f dec = v8_set(decay), ss = v8_set(step_size), sb = v8_set(sqrt_bc2), ep = v8_set(eps);
    for (; i + 8 <= i1; i += 8) {
        v8f gi = v8_load(g + i), m0 = v8_load(m + i);
        v8f mi = m0 + one_b1 * (gi - m0);
        v8f vi = b2v * v8_load(v + i) + one_b2 * gi * gi;
        v8f pi = v8_load(p + i) * dec;
        v8_store(p + i, pi - ss * (mi / (v8_sqrt(vi) / sb + ep)));
        v8_store(m + i, mi);
        v8_store(v + i, vi);
    }
    for (; i < i1; i++) {
        float gi = g[i];
        float mi = m[i] + (1.0f - b1) * (gi - m[i]);
        float vi = b2 * v[i] + (1.0f - b2) * gi * gi;
        float pi = p[i] * decay;
        p[i] = pi - step_size * (mi / (sqrtf(vi) / sqrt_bc2 + eps));
        m[i] = mi, v[i] = vi;
    }
}
NN_INSTANTIATE(adamw,
               (float *p, float *m, float *v, const float *g, int64_t i0, int64_t i1, float decay, float b1,
                float b2, float step_size, float sqrt_bc2, float eps),
               (p, m, v, g, i0, i1, decay, b1, b2, step_size, sqrt_bc2, eps))

void adamw_step(float *param, float *m, float *v, const float *grad, int64_t n, float lr, float beta1,
                float beta2, float eps, float weight_decay, int64_t step) {
    double bc1 = 1.0 - pow((double)beta1, (double)step), bc2 = 1.0 - pow((double)beta2, (double)step);
    float step_size = (float)((double)lr / bc1), sqrt_bc2 = (float)sqrt(bc2);
    float decay = 1.0f - lr * weight_decay;
    int64_t nb = sft_ceil_div(n, NN_EB);
#pragma omp parallel for schedule(static) num_threads(nn_threads(n))
    for (int64_t blk = 0; blk < nb; blk++)
        adamw_run(param, m, v, grad, blk * NN_EB, SFT_MIN(n, (blk + 1) * NN_EB), decay, beta1, beta2,
                  step_size, sqrt_bc2, eps);
}
