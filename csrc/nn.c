/* nn.c: row kernels of the transformer ops: LayerNorm, RMSNorm, GELU (tanh), SwiGLU, RoPE,
 * embedding, softmax cross-entropy (plain and fused with the LM head), AdamW.
 * Each body is written once on 8-lane vectors (nn_vec.h) and instantiated for the portable and the
 * AVX2/FMA paths. Rows are split among OpenMP threads; sums across rows go through fixed blocks of
 * NN_RB rows (the norms' backward: a block size from N alone, norm_block_rows) summed in block
 * order, so no result depends on the thread count. */
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

/* ---- the row kernels, one body (nn_rows.h) per SIMD path ---------------------------------------- */

static int nn_stream(int64_t nfloats) {
    return nfloats * (int64_t)sizeof(float) >= NN_STREAM_MIN_BYTES;
}

/* Streaming for a row kernel: a big output whose rows (of `row` floats) all start on a 64-byte
 * boundary (sparseft's own big outputs do); a misaligned output is written with plain stores, as
 * peeling every short row would cost more than the streaming saves. */
static int nn_stream_rows(const float *y, int64_t nfloats, int64_t row) {
    return nn_stream(nfloats) && (uintptr_t)y % 64 == 0 && (row * (int64_t)sizeof(float)) % 64 == 0;
}

#define NN_SFX(name) name##_portable
#define NN_TGT
#define NN_VL 4
#define NN_FMA(a, b, c) ((a) * (b) + (c))
#define NN_STREAM(p, v) F(st)(p, v)
#define NN_FENCE() ((void)0)
#include "nn_rows.h"
#undef NN_SFX
#undef NN_TGT
#undef NN_VL
#undef NN_FMA
#undef NN_STREAM
#undef NN_FENCE

#if SFT_X86
#include <immintrin.h>

#define NN_SFX(name) name##_avx2
#define NN_TGT SFT_TARGET_AVX2
#define NN_VL 8
#define NN_FMA(a, b, c) ((VF)_mm256_fmadd_ps((__m256)(a), (__m256)(b), (__m256)(c)))
#define NN_SQRT(v) ((VF)_mm256_sqrt_ps((__m256)(v)))
#define NN_MIN(a, b) ((VF)_mm256_min_ps((__m256)(a), (__m256)(b)))
#define NN_MAX(a, b) ((VF)_mm256_max_ps((__m256)(a), (__m256)(b)))
#define NN_STREAM(p, v) _mm256_stream_ps(p, (__m256)(v))
#define NN_FENCE() _mm_sfence()
#include "nn_rows.h"
#undef NN_SFX
#undef NN_TGT
#undef NN_VL
#undef NN_FMA
#undef NN_SQRT
#undef NN_MIN
#undef NN_MAX
#undef NN_STREAM

#define NN_SFX(name) name##_avx512
#define NN_TGT SFT_TARGET_AVX512
#define NN_VL 16
#define NN_FMA(a, b, c) ((VF)_mm512_fmadd_ps((__m512)(a), (__m512)(b), (__m512)(c)))
#define NN_SQRT(v) ((VF)_mm512_sqrt_ps((__m512)(v)))
#define NN_MIN(a, b) ((VF)_mm512_min_ps((__m512)(a), (__m512)(b)))
#define NN_MAX(a, b) ((VF)_mm512_max_ps((__m512)(a), (__m512)(b)))
#define NN_STREAM(p, v) _mm512_stream_ps(p, (__m512)(v))
#include "nn_rows.h"
#undef NN_SFX
#undef NN_TGT
#undef NN_VL
#undef NN_FMA
#undef NN_SQRT
#undef NN_MIN
#undef NN_MAX
#undef NN_STREAM
#undef NN_FENCE

/* calls name_avx512, name_avx2 or name_portable for the SIMD path read once into `path` */
#define NN_CALL(path, name, ...)          \
    do {                                  \
        if ((path) >= SFT_SIMD_AVX512)    \
            name##_avx512(__VA_ARGS__);   \
        else if ((path) >= SFT_SIMD_AVX2) \
            name##_avx2(__VA_ARGS__);     \
        else                              \
            name##_portable(__VA_ARGS__); \
    } while (0)
#else
#define NN_CALL(path, name, ...) name##_portable(__VA_ARGS__)
#endif

/* ---- LayerNorm, RMSNorm ---------------------------------------------------------------------------- */

void layernorm_forward(float *y, float *mean, float *rstd, const float *x, const float *w, const float *b,
                       int64_t N, int64_t C, float eps) {
    int64_t nb = sft_ceil_div(N, NN_RB);
    int path = sft_simd_path, nt = nn_stream_rows(y, N * C, C);
    // blocks of rows among the threads
#pragma omp parallel for schedule(static) num_threads(nn_threads(N *C))
    for (int64_t blk = 0; blk < nb; blk++)
        NN_CALL(path, ln_fwd, y, mean, rstd, x, w, b, blk * NN_RB, SFT_MIN(N, (blk + 1) * NN_RB), C, eps, nt);
}

/* out[c] = sum over blocks of part[blk*stride + c], in block order (from 0.0f), each thread a range of
 * columns walking the blocks one after the other (contiguous reads, not one column at a time) */
static void sum_blocks(float *out, const float *part, int64_t nb, int64_t stride, int64_t C, int nth) {
#pragma omp parallel num_threads(nth)
    {
        int tid = sft_thread_num(), team = sft_team_size();
        int64_t c0 = C * tid / team, c1 = C * (tid + 1) / team;
        for (int64_t c = c0; c < c1; c++) out[c] = 0.0f;
        for (int64_t blk = 0; blk < nb; blk++) {
            const float *p = part + blk * stride;
            for (int64_t c = c0; c < c1; c++) out[c] += p[c];
        }
    }
}

/* Floats between a block's partial dw and db (and after db): 3072-byte rows (C = 768) otherwise put
 * the two partials' stores on the same offsets within 4 KiB as the loads of dy and x (false
 * store-to-load dependences; measured: the LayerNorm backward about 15% faster with the gap). */
#define NN_PAD 16

/* Rows per block of the norms' backward (the dw, db partials): NN_RB, up to 8 times more for large N
 * (still 16 blocks or more), a function of N alone so that the sums do not depend on the thread count.
 * Fewer, longer blocks: less scratch, fewer partials to start cold and to add up. */
static int64_t norm_block_rows(int64_t N) {
    return NN_RB * SFT_MAX(1, SFT_MIN(8, N / (NN_RB * 16)));
}

/* the norms' backward: db == NULL (and mean == NULL) for RMSNorm */
static int norm_backward(float *dx, float *dw, float *db, const float *dy, const float *x, const float *w,
                         const float *mean, const float *rstd, int64_t N, int64_t C) {
    int64_t rb = norm_block_rows(N), nb = sft_ceil_div(N, rb), ps = (db != NULL ? 2 : 1) * (C + NN_PAD);
    float *part = (float *)sft_scratch_alloc(sizeof(float) * (size_t)SFT_MAX(1, nb) * (size_t)ps);
    if (part == NULL) return -1;
    int nth = nn_threads(N * C), path = sft_simd_path, nt = nn_stream_rows(dx, N * C, C);
    // row blocks: dx and each block's partial dw (, db)
#pragma omp parallel for schedule(static) num_threads(nth)
    for (int64_t blk = 0; blk < nb; blk++)
        NN_CALL(path, norm_bwd, dx, part + blk * ps, db != NULL ? part + blk * ps + C + NN_PAD : NULL, dy, x,
                w, mean, rstd, blk * rb, SFT_MIN(N, (blk + 1) * rb), C, nt);
    sum_blocks(dw, part, nb, ps, C, nth);
    if (db != NULL) sum_blocks(db, part + C + NN_PAD, nb, ps, C, nth);
    sft_scratch_free(part);
    return 0;
}

int layernorm_backward(float *dx, float *dw, float *db, const float *dy, const float *x, const float *w,
                       const float *mean, const float *rstd, int64_t N, int64_t C) {
    return norm_backward(dx, dw, db, dy, x, w, mean, rstd, N, C);
}

void rmsnorm_forward(float *y, float *rstd, const float *x, const float *w, int64_t N, int64_t C, float eps) {
    int64_t nb = sft_ceil_div(N, NN_RB);
    int path = sft_simd_path, nt = nn_stream_rows(y, N * C, C);
#pragma omp parallel for schedule(static) num_threads(nn_threads(N *C))
    for (int64_t blk = 0; blk < nb; blk++)
        NN_CALL(path, rms_fwd, y, rstd, x, w, blk * NN_RB, SFT_MIN(N, (blk + 1) * NN_RB), C, eps, nt);
}

int rmsnorm_backward(float *dx, float *dw, const float *dy, const float *x, const float *w, const float *rstd,
                     int64_t N, int64_t C) {
    return norm_backward(dx, dw, NULL, dy, x, w, NULL, rstd, N, C);
}

/* ---- GELU (tanh approximation), SwiGLU, AdamW: elementwise ---------------------------------------- */

/* blocks of NN_EB elements among the threads; nt from the bytes of one output */
static void eltwise(int kind, float *o0, float *o1, float *o2, const float *a, const float *b, const float *c,
                    const float *d, const float *k, int64_t n) {
    int64_t nb = sft_ceil_div(n, NN_EB);
    int path = sft_simd_path, nt = nn_stream(n);
#pragma omp parallel for schedule(static) num_threads(nn_threads(n))
    for (int64_t blk = 0; blk < nb; blk++)
        NN_CALL(path, elt, kind, o0, o1, o2, a, b, c, d, k, blk * NN_EB, SFT_MIN(n, (blk + 1) * NN_EB), nt);
}

void gelu_forward(float *y, const float *x, int64_t n) {
    eltwise(NK_GELU_FWD, y, NULL, NULL, x, NULL, NULL, NULL, NULL, n);
}
void gelu_backward(float *dx, const float *dy, const float *x, int64_t n) {
    eltwise(NK_GELU_BWD, dx, NULL, NULL, dy, x, NULL, NULL, NULL, n);
}
void swiglu_forward(float *y, const float *gate, const float *up, int64_t n) {
    eltwise(NK_SWI_FWD, y, NULL, NULL, gate, up, NULL, NULL, NULL, n);
}
void swiglu_backward(float *dgate, float *dup, const float *dy, const float *gate, const float *up,
                     int64_t n) {
    eltwise(NK_SWI_BWD, dgate, dup, NULL, dy, gate, up, NULL, NULL, n);
}

/* ---- RoPE --------------------------------------------------------------------------------------- */

int rope_table(float *cs, const float *inv_freq, int64_t T, int64_t D, double theta, int64_t offset) {
    int64_t h2 = D / 2;
    float *inv = (float *)sft_scratch_alloc(sizeof(float) * (size_t)SFT_MAX(1, h2));
    if (inv == NULL) return -1;
    for (int64_t i = 0; i < h2; i++)
        inv[i] = inv_freq != NULL ? inv_freq[i] : (float)(1.0 / pow(theta, (double)(2 * i) / (double)D));
    // the angle is rounded to float32 as Hugging Face computes it (float32 inverse frequencies times
    // float32 positions), then cos and sin taken in double; the positions among the threads
#pragma omp parallel for schedule(static) num_threads(nn_threads(T * D * 16))
    for (int64_t t = 0; t < T; t++) {
        for (int64_t i = 0; i < h2; i++) {
            double ang = (double)((float)(offset + t) * inv[i]);
            cs[t * D + i] = (float)cos(ang);
            cs[t * D + h2 + i] = (float)sin(ang);
        }
    }
    sft_scratch_free(inv);
    return 0;
}

void rope_rotate(float *y, const float *x, const float *cs, int64_t B, int64_t T, int64_t H, int64_t D,
                 int sign) {
    int64_t rows = B * T * H, nb = sft_ceil_div(rows, NN_RB);
    int nth = nn_threads(rows * D), path = sft_simd_path, nt = nn_stream_rows(y, rows * D, D / 2);
    float sg = sign < 0 ? -1.0f : 1.0f;
#pragma omp parallel for schedule(static) num_threads(nth)
    for (int64_t blk = 0; blk < nb; blk++)
        NN_CALL(path, rope, y, x, cs, blk * NN_RB, SFT_MIN(rows, (blk + 1) * NN_RB), T, H, D, sg, nt);
}

int rope_apply(float *y, const float *x, const float *inv_freq, int64_t B, int64_t T, int64_t H, int64_t D,
               double theta, int64_t offset, int sign) {
    // the table of cos | sin once per position (not per head)
    float *cs = (float *)sft_scratch_alloc(sizeof(float) * (size_t)SFT_MAX(1, T * D));
    if (cs == NULL || rope_table(cs, inv_freq, T, D, theta, offset) != 0) {
        sft_scratch_free(cs);
        return -1;
    }
    rope_rotate(y, x, cs, B, T, H, D, sign);
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

void adamw_step(float *param, float *m, float *v, const float *grad, int64_t n, float lr, float beta1,
                float beta2, float eps, float weight_decay, int64_t step) {
    double bc1 = 1.0 - pow((double)beta1, (double)step), bc2 = 1.0 - pow((double)beta2, (double)step);
    // torch's order: p *= 1 - lr wd; m = lerp(m, g, 1 - b1); v = b2 v + (1 - b2) g^2;
    // p -= step_size * m / (sqrt(v) / sqrt(bc2) + eps)
    float k[6] = {1.0f - lr * weight_decay, beta1, beta2, (float)((double)lr / bc1), (float)sqrt(bc2), eps};
    eltwise(NK_ADAMW, param, m, v, param, m, v, grad, k, n);
}
