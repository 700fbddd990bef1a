/* sparse.c: SpMM / SDDMM kernels over the CSR and N:M base formats with W' recomputed on the fly.
 *
 * Every thread takes a contiguous range of the tokens and works on it alone (no barriers in the
 * main loop: on a shared machine a barrier can cost a whole time slice). Loops, outer to inner:
 *   token block of T tokens
 *   -> column slab of S columns (plan_blocks: T and S chosen together so that the slab's token
 *      panels fit 1 MiB of tile scratch per thread; a wide input is cut into slabs instead of
 *      shrinking the token block, which would multiply the recomputes of W')
 *      -> x's slab (backward: and a zeroed gx slab) transposed into tiles of <= 64 tokens
 *   -> row chunk (<= CHUNK_ROWS rows, their entries in the slab): columns expanded (N:M), W'
 *      recomputed once per (block, slab) (8 length-r dot products at a time), block segments found
 *   -> tile -> column block (its tile rows stay in L1) -> row -> segment kernel:
 *      forward: a register tile of up to 64 tokens of the row kept across the segment's nonzeros,
 *      starting from the row's sums of the earlier slabs;
 *      backward: the row's gy tile in registers; per nonzero one pass over the tokens scatters
 *      w' * gy into gx^T and accumulates <gy, x_j> (SparseProp's fused backward); a slab's gx
 *      columns are complete when the slab ends and are written out
 *   -> backward: the chunk's sampled gradient g of this block reduced into this thread's dB and
 *      dA^T (rank-1 updates of length r); the threads' dA, dB are summed in thread order at the end.
 * Deterministic for a fixed thread count (every sum has a fixed order). */
#include "sparse.h"

#include <string.h>

#include "common.h"

#if SFT_X86
#include <immintrin.h>
#endif

#define TOK_VEC 8            /* tokens per vector; thread token ranges are multiples of it */
#define TOK_TILE 64          /* tokens of one forward register tile (8 vectors) */
#define CHUNK_NNZ 4096       /* nonzeros of a row chunk (columns, W', g: 48 KiB) */
#define CHUNK_ROWS 64        /* rows of a row chunk */
#define TILE_BYTES (1 << 20) /* tile scratch per thread: token panels + chunk buffers */
/* column blocks: forward fwd_kc(), 128 or 256 columns; backward bwd_kc(), 64 or 128 (the x^T and
 * gx^T slabs together) */
#define ALWAYS_INLINE inline __attribute__((always_inline))

/* ---- format access ------------------------------------------------------------------------- */

/* Offset of row i's first nonzero in W->values. */
static ALWAYS_INLINE int64_t row_begin(const sparse_base *W, int64_t i) {
    if (W->kind == SPARSE_CSR) return W->rowptr[i];
    return i * (W->m > 0 ? W->in / W->m * W->n : 0);
}

/* Largest number of nonzeros of one whole row (the merge's column buffer). */
static int64_t row_capacity(const sparse_base *W) {
    return SFT_MAX((int64_t)CHUNK_NNZ, W->in);
}

/* N:M: cl = the columns of the kept entries of ng consecutive groups (positions ix, n per group),
 * counted from the first group's first column. */
static ALWAYS_INLINE void nm_cols(int32_t *cl, const uint8_t *ix, int64_t ng, int64_t n, int64_t m) {
    // loop over groups, kept positions inside the group
    for (int64_t gr = 0; gr < ng; gr++)
        for (int64_t q = 0; q < n; q++) cl[gr * n + q] = (int32_t)(gr * m + ix[gr * n + q]);
}

/* Columns of the nonzeros of rows [i_lo, i_hi) into col[k - off0]. */
static ALWAYS_INLINE void fill_cols(int32_t *col, const sparse_base *W, int64_t i_lo, int64_t i_hi,
                                    int64_t off0) {
    if (W->kind == SPARSE_CSR) {
        int64_t b = W->rowptr[i_lo], e = W->rowptr[i_hi];
        memcpy(col + (b - off0), W->colidx + b, sizeof(int32_t) * (size_t)(e - b));
        return;
    }
    int64_t ngroups = W->in / W->m, kpr = ngroups * W->n;
    for (int64_t i = i_lo; i < i_hi; i++)
        nm_cols(col + i * kpr - off0, W->idx + i * kpr, ngroups, W->n, W->m);
}

/* ---- W' recompute: w'[k] = v[k] + s * <B[i,:], A[:,col[k]]>, with AT (in, r) = A^T ---------- */

static void recompute_portable(float *wv, const int32_t *col, const float *v, const float *Bi,
                               const float *AT, float scale, int64_t cnt, int64_t r) {
    // one dot product of length r per nonzero
    for (int64_t k = 0; k < cnt; k++) {
        const float *a = AT + (int64_t)col[k] * r;
        float s0 = 0.0f, s1 = 0.0f;
        int64_t q = 0;
        for (; q + 1 < r; q += 2) s0 += Bi[q] * a[q], s1 += Bi[q + 1] * a[q + 1];
        if (q < r) s0 += Bi[q] * a[q];
        wv[k] = v[k] + scale * (s0 + s1);
    }
}

#if SFT_X86
/* Sum of the 8 lanes of v. */
SFT_TARGET_AVX2 static ALWAYS_INLINE float hsum_avx2(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

/* Lane u of the result = sum of the lanes of vu. */
SFT_TARGET_AVX2 static ALWAYS_INLINE __m256 hsum8_avx2(__m256 v0, __m256 v1, __m256 v2, __m256 v3, __m256 v4,
                                                       __m256 v5, __m256 v6, __m256 v7) {
    __m256 t0 = _mm256_hadd_ps(v0, v1), t1 = _mm256_hadd_ps(v2, v3);
    __m256 t2 = _mm256_hadd_ps(v4, v5), t3 = _mm256_hadd_ps(v6, v7);
    t0 = _mm256_hadd_ps(t0, t1);
    t2 = _mm256_hadd_ps(t2, t3);
    return _mm256_add_ps(_mm256_permute2f128_ps(t0, t2, 0x20), _mm256_permute2f128_ps(t0, t2, 0x31));
}

/* The same, 8 nonzeros at a time: 8 vector dot products in registers, reduced together. */
SFT_TARGET_AVX2 static void recompute_avx2(float *wv, const int32_t *col, const float *v, const float *Bi,
                                           const float *AT, float scale, int64_t cnt, int64_t r) {
    int64_t r8 = r / 8 * 8;
    __m256 vs = _mm256_set1_ps(scale);
    int64_t k = 0;
    // blocks of 8 nonzeros
    for (; k + 8 <= cnt; k += 8) {
        const float *a0 = AT + (int64_t)col[k] * r, *a1 = AT + (int64_t)col[k + 1] * r;
        const float *a2 = AT + (int64_t)col[k + 2] * r, *a3 = AT + (int64_t)col[k + 3] * r;
        const float *a4 = AT + (int64_t)col[k + 4] * r, *a5 = AT + (int64_t)col[k + 5] * r;
        const float *a6 = AT + (int64_t)col[k + 6] * r, *a7 = AT + (int64_t)col[k + 7] * r;
        __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0, s4 = s0, s5 = s0, s6 = s0, s7 = s0;
        for (int64_t q = 0; q < r8; q += 8) {
            __m256 b = _mm256_loadu_ps(Bi + q);
            s0 = _mm256_fmadd_ps(b, _mm256_loadu_ps(a0 + q), s0);
            s1 = _mm256_fmadd_ps(b, _mm256_loadu_ps(a1 + q), s1);
            s2 = _mm256_fmadd_ps(b, _mm256_loadu_ps(a2 + q), s2);
            s3 = _mm256_fmadd_ps(b, _mm256_loadu_ps(a3 + q), s3);
            s4 = _mm256_fmadd_ps(b, _mm256_loadu_ps(a4 + q), s4);
            s5 = _mm256_fmadd_ps(b, _mm256_loadu_ps(a5 + q), s5);
            s6 = _mm256_fmadd_ps(b, _mm256_loadu_ps(a6 + q), s6);
            s7 = _mm256_fmadd_ps(b, _mm256_loadu_ps(a7 + q), s7);
        }
        __m256 dot = hsum8_avx2(s0, s1, s2, s3, s4, s5, s6, s7);
        if (r8 < r) {
            // the last r % 8 terms, scalar
            float tail[8];
            const float *au[8] = {a0, a1, a2, a3, a4, a5, a6, a7};
            for (int u = 0; u < 8; u++) {
                float t = 0.0f;
                for (int64_t q = r8; q < r; q++) t += Bi[q] * au[u][q];
                tail[u] = t;
            }
            dot = _mm256_add_ps(dot, _mm256_loadu_ps(tail));
        }
        _mm256_storeu_ps(wv + k, _mm256_fmadd_ps(vs, dot, _mm256_loadu_ps(v + k)));
    }
    // remaining nonzeros one by one
    for (; k < cnt; k++) {
        const float *a = AT + (int64_t)col[k] * r;
        __m256 s = _mm256_setzero_ps();
        for (int64_t q = 0; q < r8; q += 8)
            s = _mm256_fmadd_ps(_mm256_loadu_ps(Bi + q), _mm256_loadu_ps(a + q), s);
        float t = hsum_avx2(s);
        for (int64_t q = r8; q < r; q++) t += Bi[q] * a[q];
        wv[k] = v[k] + scale * t;
    }
}
#endif

#if SFT_X86
/* The 16 lanes of z added pairwise into 8 (lane u + lane u+8). */
SFT_TARGET_AVX512 static ALWAYS_INLINE __m256 fold8_avx512(__m512 z) {
    return _mm256_add_ps(_mm512_castps512_ps256(z),
                         _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(z), 1)));
}

/* The same on AVX-512 for r a multiple of 16: one zmm FMA per 16 terms, each nonzero's vector
 * folded to 8 lanes and 8 nonzeros reduced together; other r (and the last cnt % 8 nonzeros) on
 * the AVX2 kernel. */
SFT_TARGET_AVX512 static void recompute_avx512(float *wv, const int32_t *col, const float *v, const float *Bi,
                                               const float *AT, float scale, int64_t cnt, int64_t r) {
    if (r % 16 != 0) {
        recompute_avx2(wv, col, v, Bi, AT, scale, cnt, r);
        return;
    }
    __m256 vs = _mm256_set1_ps(scale);
    int64_t k = 0;
    // blocks of 8 nonzeros
    for (; k + 8 <= cnt; k += 8) {
        const float *a0 = AT + (int64_t)col[k] * r, *a1 = AT + (int64_t)col[k + 1] * r;
        const float *a2 = AT + (int64_t)col[k + 2] * r, *a3 = AT + (int64_t)col[k + 3] * r;
        const float *a4 = AT + (int64_t)col[k + 4] * r, *a5 = AT + (int64_t)col[k + 5] * r;
        const float *a6 = AT + (int64_t)col[k + 6] * r, *a7 = AT + (int64_t)col[k + 7] * r;
        __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0, s4 = s0, s5 = s0, s6 = s0, s7 = s0;
        for (int64_t q = 0; q < r; q += 16) {
            __m512 b = _mm512_loadu_ps(Bi + q);
            s0 = _mm512_fmadd_ps(b, _mm512_loadu_ps(a0 + q), s0);
            s1 = _mm512_fmadd_ps(b, _mm512_loadu_ps(a1 + q), s1);
            s2 = _mm512_fmadd_ps(b, _mm512_loadu_ps(a2 + q), s2);
            s3 = _mm512_fmadd_ps(b, _mm512_loadu_ps(a3 + q), s3);
            s4 = _mm512_fmadd_ps(b, _mm512_loadu_ps(a4 + q), s4);
            s5 = _mm512_fmadd_ps(b, _mm512_loadu_ps(a5 + q), s5);
            s6 = _mm512_fmadd_ps(b, _mm512_loadu_ps(a6 + q), s6);
            s7 = _mm512_fmadd_ps(b, _mm512_loadu_ps(a7 + q), s7);
        }
        __m256 dot = hsum8_avx2(fold8_avx512(s0), fold8_avx512(s1), fold8_avx512(s2), fold8_avx512(s3),
                                fold8_avx512(s4), fold8_avx512(s5), fold8_avx512(s6), fold8_avx512(s7));
        _mm256_storeu_ps(wv + k, _mm256_fmadd_ps(vs, dot, _mm256_loadu_ps(v + k)));
    }
    if (k < cnt) recompute_avx2(wv + k, col + k, v + k, Bi, AT, scale, cnt - k, r);
}
#endif

typedef void (*recompute_fn)(float *, const int32_t *, const float *, const float *, const float *, float,
                             int64_t, int64_t);

/* scale == 0: the adapter is off and W' = W exactly, whatever B A holds (B A may overflow float32,
 * and 0 * inf would be NaN); the same rule holds on every path (docs/numerics.md). */
static void recompute_off(float *wv, const int32_t *col, const float *v, const float *Bi, const float *AT,
                          float scale, int64_t cnt, int64_t r) {
    memcpy(wv, v, sizeof(float) * (size_t)cnt);
}

static recompute_fn select_recompute(float scale) {
    if (scale == 0.0f) return recompute_off;
#if SFT_X86
    if (sft_simd_path >= SFT_SIMD_AVX512) return recompute_avx512;
    if (sft_simd_path >= SFT_SIMD_AVX2) return recompute_avx2;
#endif
    return recompute_portable;
}

/* AT (in, r) = A (r, in)^T, rows split among the threads of the enclosing parallel region. */
static void transpose_A(float *AT, const float *A, int64_t r, int64_t in) {
#pragma omp for schedule(static)
    for (int64_t j = 0; j < in; j++)
        for (int64_t q = 0; q < r; q++) AT[j * r + q] = A[q * in + j];
}

/* ---- a row chunk in a column slab, and its column-block segments ---------------------------- */

/* A chunk of rows restricted to a slab of columns [c0, c1), with W' recomputed (row order) and,
 * for every row, where its entries of each column block start: a sweep over the rows for one
 * column block touches only that block's rows of the token tiles (fwd_kc / bwd_kc columns * 64
 * tokens * 4 B, mostly L1). */
typedef struct {
    int64_t i0, rows, cnt, nkb, cap, unit;
    int32_t *seg;    /* (rows, nkb+1) start of row i's entries of column block kb (chunk offsets) */
    int32_t *rowcol; /* (cap) columns, relative to the slab's first column */
    float *wrow;     /* (cap) W' */
    float *g;        /* (cap) sampled gradient */
} chunk;

/* Columns of a column block: kc (CSR) or kc/m whole groups (N:M). Slabs are multiples of it. */
static int64_t col_block(const sparse_base *W, int64_t kc) {
    if (W->kind == SPARSE_CSR) return kc;
    return SFT_MAX((int64_t)1, kc / W->m) * W->m;
}

/* Number of stored entries of a base. */
static int64_t base_nnz(const sparse_base *W) {
    return W->kind == SPARSE_CSR ? W->rowptr[W->out] : W->out * (W->in / SFT_MAX(W->m, 1)) * W->n;
}

/* Forward column block: 128 columns keep a 64-token tile's x^T rows of a block (32 KiB) in L1;
 * at density 0.15 and below, 256 columns pay more by doubling the segments' length. Compare the
 * two with `python benchmarks/bench_builds.py --pass fwd --mask 0.1 OLD NEW` (and --mask 0.2,
 * 2:4) on two builds that differ in this threshold. */
static int64_t fwd_kc(const sparse_base *W) {
    return 20 * base_nnz(W) <= 3 * W->out * W->in ? 256 : 128;
}

/* Backward column block: 64 columns keep a 64-token tile's x^T and gx^T rows of a block (32 KiB)
 * in L1, which pays from density 1/4 on; sparser rows gain more from segments twice as long
 * (`python benchmarks/bench_builds.py --pass bwd --mask 2:4 OLD NEW`, and --mask 0.1). */
static int64_t bwd_kc(const sparse_base *W) {
    return 4 * base_nnz(W) >= W->out * W->in ? 64 : 128;
}

/* Bytes of the arrays of a chunk over slabs of S columns (a row holds at most S entries of one). */
static int64_t chunk_bytes(const sparse_base *W, int64_t S, int64_t kc) {
    int64_t cap = SFT_MAX((int64_t)CHUNK_NNZ, S), nkb = sft_ceil_div(S, col_block(W, kc));
    return 4 * (3 * cap + CHUNK_ROWS * (nkb + 1)) + 64 * 4;
}

/* Carves the chunk arrays out of one scratch block of chunk_bytes(W, S, kc) bytes. */
static void chunk_init(chunk *c, void *mem, const sparse_base *W, int64_t S, int64_t kc) {
    c->cap = SFT_MAX((int64_t)CHUNK_NNZ, S);
    c->unit = col_block(W, kc);
    c->nkb = sft_ceil_div(S, c->unit);
    char *p = (char *)mem;
    c->rowcol = (int32_t *)p, p += 4 * c->cap;
    c->wrow = (float *)p, p += 4 * c->cap;
    c->g = (float *)p, p += 4 * c->cap;
    c->seg = (int32_t *)p;
}

/* Loads rows i0, i0+1, ... (at most CHUNK_ROWS, and while their entries in the slab [c0, c1) fit
 * the chunk; at least one row) restricted to the slab: columns relative to c0, W' when need_w
 * (ATs = A^T from row c0 on) and the column-block segments. CSR: pos[i] is row i's first entry at
 * or after column c0 (pos NULL: the row's first entry, for a slab starting at column 0) and is
 * moved past the slab. Returns the end row (exclusive). */
static int64_t chunk_build(chunk *c, const sparse_base *W, int64_t *pos, int64_t i0, int64_t c0, int64_t c1,
                           const float *ATs, const float *B, float scale, int64_t r, int need_w,
                           recompute_fn rcf) {
    int64_t unit = c->unit, nkb = sft_ceil_div(c1 - c0, unit), cnt = 0, i = i0;
    int64_t lim = SFT_MIN(W->out, i0 + CHUNK_ROWS);
    c->i0 = i0, c->nkb = nkb;
    // loop over rows while they fit
    for (; i < lim; i++) {
        int32_t *sg = c->seg + (i - i0) * (nkb + 1);
        int64_t b, e;
        if (W->kind == SPARSE_NM) {
            // kept entries of the groups [c0/m, c1/m): positions by formula
            int64_t n = W->n, m = W->m, g0 = c0 / m, ng = c1 / m - g0, gpb = unit / m;
            b = i * (W->in / m * n) + g0 * n, e = b + ng * n;
            if (cnt + (e - b) > c->cap) break;
            nm_cols(c->rowcol + cnt, W->idx + b, ng, n, m);
            for (int64_t kb = 0; kb <= nkb; kb++) sg[kb] = (int32_t)(cnt + SFT_MIN(kb * gpb, ng) * n);
        } else {
            // one pass over the row's entries in the slab (increasing columns): copy them relative
            // to c0 and close a column block's segment at the first entry past it (the copy
            // touches every entry anyway, so finding the block boundaries costs no extra misses,
            // where a search per block would)
            const int32_t *col = W->colidx, width = (int32_t)(c1 - c0);
            int32_t *rc = c->rowcol + cnt, next = (int32_t)SFT_MIN(unit, c1 - c0);
            int64_t rend = W->rowptr[i + 1], k, kb = 0;
            b = pos != NULL ? pos[i] : W->rowptr[i];
            int64_t stop = SFT_MIN(rend, b + (c->cap - cnt)); /* entries that fit the chunk */
            sg[0] = (int32_t)cnt;
            for (k = b; k < stop; k++) {
                int32_t cc = col[k] - (int32_t)c0;
                if (cc >= next) {
                    if (cc >= width) break; /* the slab's end */
                    for (; cc >= next; next += (int32_t)unit) sg[++kb] = (int32_t)(cnt + (k - b));
                }
                rc[k - b] = cc;
            }
            if (k == stop && stop < rend && col[stop] < c1) break; /* the row's slab does not fit */
            e = k;
            while (kb < nkb) sg[++kb] = (int32_t)(cnt + (e - b));
            if (pos != NULL) pos[i] = e;
        }
        if (need_w) rcf(c->wrow + cnt, c->rowcol + cnt, W->values + b, B + i * r, ATs, scale, e - b, r);
        cnt += e - b;
    }
    c->rows = i - i0, c->cnt = cnt;
    return i;
}

/* ---- blocking: token blocks and column slabs within TILE_BYTES per thread ------------------- */

/* One thread's tile scratch for token blocks of T and slabs of S columns, each part on a cache
 * line: the token tiles (forward: x^T (S, 64) per tile, then one output tile (CHUNK_ROWS, 64);
 * backward: x^T and gx^T per tile, then the chunk's gy^T tiles (CHUNK_ROWS, 64) per tile), the
 * chunk, and (CSR) a position per row. The planner bounds `bytes` by TILE_BYTES and the drivers
 * carve the same layout, so the bound is the allocation. */
typedef struct {
    int64_t panel;     /* floats of the x^T (or gx^T) tiles: S * (T, or T rounded up to whole tiles) */
    int64_t off_chunk; /* byte offsets */
    int64_t off_pos;
    int64_t bytes;
} block_layout;

static block_layout layout_of(const sparse_base *W, int backward, int64_t T, int64_t S) {
    int64_t ntiles = sft_ceil_div(T, TOK_TILE);
    block_layout L;
    L.panel = S * (T <= TOK_TILE ? T : ntiles * TOK_TILE);
    int64_t tiles = backward ? 2 * L.panel + CHUNK_ROWS * ntiles * TOK_TILE : L.panel + CHUNK_ROWS * TOK_TILE;
    L.off_chunk = sft_round_up(4 * tiles, 64);
    L.off_pos = L.off_chunk + sft_round_up(chunk_bytes(W, S, backward ? bwd_kc(W) : fwd_kc(W)), 64);
    L.bytes = sft_round_up(L.off_pos + (W->kind == SPARSE_CSR ? 8 * W->out : 0), 64);
    return L;
}

/* Token block T and column slab S for threads of Nt tokens. Per (nonzero, token block) W' is
 * recomputed and the chunk rebuilt (backward: and the gradient reduced into dA and dB); per
 * (token, output, extra slab) the forward reads and writes its output tile again, the backward
 * transposes gy again; per (row, block, slab) the loops run. Weights, in rough cycles: 12 per
 * nonzero (forward and backward), 2 and 1 per output, 20 per row; the per-nonzero weight is set
 * high enough that long token blocks win where interleaved runs favour them (check a change with
 * `python benchmarks/bench_builds.py --pass fwd|bwd --mask 0.1|0.05|0.2|1:4|2:4 OLD NEW`, the plan
 * of a shape with `_core.sparse_plan`). The cheapest (T, S) by that count wins: long token blocks over narrow
 * slabs where nonzeros are many, wide slabs where re-reading the outputs or gy would dominate. */
static void plan_blocks(const sparse_base *W, int backward, int64_t Nt, int64_t *T_out, int64_t *S_out) {
    int64_t out = W->out, in = SFT_MAX(W->in, 1), unit = col_block(W, backward ? bwd_kc(W) : fwd_kc(W));
    double nnz = (double)base_nnz(W), per_nz = 12.0, per_out = backward ? 1.0 : 2.0;
    int64_t Tcap = SFT_MIN((int64_t)512, sft_round_up(SFT_MAX(Nt, 1), TOK_VEC));
    static const int64_t Ts[] = {512, 448, 384, 320, 256, 192, 128, 64, 56, 48, 40, 32, 24, 16, 8};
    double best = -1.0;
    *T_out = TOK_VEC, *S_out = SFT_MIN(unit, in);
    // loop over slab widths; for each, the longest token block that fits
    for (int64_t S = unit;; S += unit) {
        int64_t Sc = SFT_MIN(S, in), nslab = sft_ceil_div(in, Sc);
        int fits = 0;
        for (size_t u = 0; u < sizeof Ts / sizeof Ts[0]; u++) {
            int64_t T = SFT_MIN(Ts[u], Tcap);
            if (layout_of(W, backward, T, Sc).bytes > TILE_BYTES) continue;
            fits = 1;
            double nb = (double)sft_ceil_div(SFT_MAX(Nt, 1), T),
                   rest = (double)(backward ? nslab : nslab - 1);
            double cost = per_nz * nnz * nb + per_out * (double)Nt * (double)out * rest +
                          20.0 * (double)out * nb * (double)nslab;
            if (best < 0 || cost < best) best = cost, *T_out = T, *S_out = Sc;
            break;
        }
        // the scratch grows with the slab: once no token block fits, no wider slab does (this also
        // bounds the loop for an absurd `in`, which sparse_plan can be asked about)
        if (S >= in || !fits) break;
    }
}

/* Tokens of one thread: whole vectors, the largest share thread_tokens() deals. */
static int64_t thread_share(int64_t N, int nthreads) {
    return sft_round_up(sft_ceil_div(SFT_MAX(N, 1), SFT_MAX(nthreads, 1)), TOK_VEC);
}

void sparse_plan(const sparse_base *W, int64_t N, int nthreads, int64_t *fwd_tokens, int64_t *fwd_slab,
                 int64_t *bwd_tokens, int64_t *bwd_slab) {
    plan_blocks(W, 0, thread_share(N, nthreads), fwd_tokens, fwd_slab);
    plan_blocks(W, 1, thread_share(N, nthreads), bwd_tokens, bwd_slab);
}

/* dst[c*ldd + r] = src[r*lds + c] for r < rows, c < cols (naive reference of the blocked one). */
static void transpose_portable(float *dst, int64_t ldd, const float *src, int64_t lds, int64_t rows,
                               int64_t cols) {
    // 8 x 8 blocks, then the element loop inside each
    for (int64_t r0 = 0; r0 < rows; r0 += 8)
        for (int64_t c0 = 0; c0 < cols; c0 += 8) {
            int64_t re = SFT_MIN(rows, r0 + 8), ce = SFT_MIN(cols, c0 + 8);
            for (int64_t c = c0; c < ce; c++)
                for (int64_t r = r0; r < re; r++) dst[c * ldd + r] = src[r * lds + c];
        }
}

#if SFT_X86
/* The same with an in-register 8 x 8 transpose for full blocks. */
SFT_TARGET_AVX2 static void transpose_avx2(float *dst, int64_t ldd, const float *src, int64_t lds,
                                           int64_t rows, int64_t cols) {
    int64_t r8 = rows / 8 * 8, c8 = cols / 8 * 8;
    // full 8 x 8 blocks
    for (int64_t r0 = 0; r0 < r8; r0 += 8)
        for (int64_t c0 = 0; c0 < c8; c0 += 8) {
            const float *s = src + r0 * lds + c0;
            __m256 a0 = _mm256_loadu_ps(s), a1 = _mm256_loadu_ps(s + lds), a2 = _mm256_loadu_ps(s + 2 * lds);
            __m256 a3 = _mm256_loadu_ps(s + 3 * lds), a4 = _mm256_loadu_ps(s + 4 * lds);
            __m256 a5 = _mm256_loadu_ps(s + 5 * lds), a6 = _mm256_loadu_ps(s + 6 * lds);
            __m256 a7 = _mm256_loadu_ps(s + 7 * lds);
            __m256 t0 = _mm256_unpacklo_ps(a0, a1), t1 = _mm256_unpackhi_ps(a0, a1);
            __m256 t2 = _mm256_unpacklo_ps(a2, a3), t3 = _mm256_unpackhi_ps(a2, a3);
            __m256 t4 = _mm256_unpacklo_ps(a4, a5), t5 = _mm256_unpackhi_ps(a4, a5);
            __m256 t6 = _mm256_unpacklo_ps(a6, a7), t7 = _mm256_unpackhi_ps(a6, a7);
            __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
            __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
            __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
            __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
            float *d = dst + c0 * ldd + r0;
            _mm256_storeu_ps(d, _mm256_permute2f128_ps(u0, u4, 0x20));
            _mm256_storeu_ps(d + ldd, _mm256_permute2f128_ps(u1, u5, 0x20));
            _mm256_storeu_ps(d + 2 * ldd, _mm256_permute2f128_ps(u2, u6, 0x20));
            _mm256_storeu_ps(d + 3 * ldd, _mm256_permute2f128_ps(u3, u7, 0x20));
            _mm256_storeu_ps(d + 4 * ldd, _mm256_permute2f128_ps(u0, u4, 0x31));
            _mm256_storeu_ps(d + 5 * ldd, _mm256_permute2f128_ps(u1, u5, 0x31));
            _mm256_storeu_ps(d + 6 * ldd, _mm256_permute2f128_ps(u2, u6, 0x31));
            _mm256_storeu_ps(d + 7 * ldd, _mm256_permute2f128_ps(u3, u7, 0x31));
        }
    // edges: the last rows % 8 rows and cols % 8 columns
    for (int64_t c = c8; c < cols; c++)
        for (int64_t r = 0; r < rows; r++) dst[c * ldd + r] = src[r * lds + c];
    for (int64_t c = 0; c < c8; c++)
        for (int64_t r = r8; r < rows; r++) dst[c * ldd + r] = src[r * lds + c];
}
#endif

typedef void (*transpose_fn)(float *, int64_t, const float *, int64_t, int64_t, int64_t);

static transpose_fn select_transpose(void) {
#if SFT_X86
    if (sft_simd_path >= SFT_SIMD_AVX2) return transpose_avx2;
#endif
    return transpose_portable;
}

/* A token tile: dst (cols, ldd) = src[0 : nv, 0 : cols]^T (src rows lds apart), with tokens
 * nv .. nt (nt <= ldd, the tile's padding to whole vectors) zeroed. */
static void token_tile(transpose_fn tr, float *dst, int64_t ldd, const float *src, int64_t lds, int64_t nv,
                       int64_t nt, int64_t cols) {
    tr(dst, ldd, src, lds, nv, cols);
    for (int64_t j = 0; j < cols; j++)
        for (int64_t t = nv; t < nt; t++) dst[j * ldd + t] = 0.0f;
}

/* The token range [*ta, *tb) of thread tid of nth (multiples of TOK_VEC, clipped to N). */
static void thread_tokens(int64_t N, int tid, int nth, int64_t *ta, int64_t *tb) {
    int64_t units = (N + TOK_VEC - 1) / TOK_VEC;
    *ta = SFT_MIN(N, units * tid / nth * TOK_VEC);
    *tb = SFT_MIN(N, units * (tid + 1) / nth * TOK_VEC);
}

/* ---- tiles: every row's segment of every column block ---------------------------------------- */

/* A forward segment kernel: yt[t] += sum_k w[k] * xT[col[k]*ld + t] for the tile's nt tokens. */
typedef void (*fwd_seg_fn)(float *yt, const float *w, const int32_t *col, int64_t cnt, const float *xT,
                           int64_t ld, int64_t nt);

/* A backward segment kernel: gxT[col[k]] += w[k] * gyrow (gxT != NULL) and g[k] += <gyrow, xT[col[k]]>
 * (g != NULL) for the tile's nt tokens. */
typedef void (*bwd_seg_fn)(float *g, float *gxT, const float *w, const int32_t *col, int64_t cnt,
                           const float *gyrow, const float *xT, int64_t ld, int64_t nt);

/* One forward tile of a chunk: every row's segment of every column block, in that order (a column
 * block's rows of the token tile stay in L1); ytile (rows, 64) += the chunk's W' times the tile xp
 * (slab columns, nt). seg is a constant after inlining, so the segment kernel is called directly. */
static ALWAYS_INLINE void fwd_tile_loop(fwd_seg_fn seg, float *ytile, const chunk *c, const float *xp,
                                        int64_t nt) {
    // column blocks, then rows: the segment [b, e) of row i in block kb
    for (int64_t kb = 0; kb < c->nkb; kb++)
        for (int64_t i = 0; i < c->rows; i++) {
            int64_t b = c->seg[i * (c->nkb + 1) + kb], e = c->seg[i * (c->nkb + 1) + kb + 1];
            if (b < e) seg(ytile + i * TOK_TILE, c->wrow + b, c->rowcol + b, e - b, xp, nt, nt);
        }
}

/* One backward tile of a chunk in the same order: gxp (slab columns, nt) += W'^T gy when gxp !=
 * NULL; c->g += the sampled products of the tile's gy^T rows gyt (rows, 64) with xp when want_g. */
static ALWAYS_INLINE void bwd_tile_loop(bwd_seg_fn seg, const chunk *c, int want_g, float *gxp,
                                        const float *gyt, const float *xp, int64_t nt) {
    // column blocks, then rows: the segment [b, e) of row i in block kb
    for (int64_t kb = 0; kb < c->nkb; kb++)
        for (int64_t i = 0; i < c->rows; i++) {
            int64_t b = c->seg[i * (c->nkb + 1) + kb], e = c->seg[i * (c->nkb + 1) + kb + 1];
            if (b < e)
                seg(want_g ? c->g + b : NULL, gxp, c->wrow + b, c->rowcol + b, e - b, gyt + i * TOK_TILE, xp,
                    nt, nt);
        }
}

/* ---- forward segment: yt[t] += sum_k w[k] * xT[col[k]*ld + t], t < nv*8 --------------------- */

static void fwd_seg_portable(float *yt, const float *w, const int32_t *col, int64_t cnt, const float *xT,
                             int64_t ld, int64_t nt) {
    float acc[TOK_TILE];
    memcpy(acc, yt, sizeof(float) * (size_t)nt);
    // loop over the segment's nonzeros, a run of tokens each
    for (int64_t k = 0; k < cnt; k++) {
        const float wk = w[k];
        const float *p = xT + (int64_t)col[k] * ld;
        for (int64_t t = 0; t < nt; t++) acc[t] += wk * p[t];
    }
    memcpy(yt, acc, sizeof(float) * (size_t)nt);
}

#if SFT_X86
/* NV accumulators (8*NV tokens, NV a constant after inlining) kept in registers across the
 * segment: one broadcast, NV loads, NV FMAs per nonzero (XNNPACK spmm style). */
SFT_TARGET_AVX2 static ALWAYS_INLINE void fwd_seg_avx2_body(const int NV, float *yt, const float *w,
                                                            const int32_t *col, int64_t cnt, const float *xT,
                                                            int64_t ld) {
    __m256 a[8];
#pragma GCC unroll 8
    for (int v = 0; v < NV; v++) a[v] = _mm256_loadu_ps(yt + 8 * v);
    // loop over the segment's nonzeros
    for (int64_t k = 0; k < cnt; k++) {
        const __m256 wk = _mm256_broadcast_ss(w + k);
        const float *p = xT + (int64_t)col[k] * ld;
#pragma GCC unroll 8
        for (int v = 0; v < NV; v++) a[v] = _mm256_fmadd_ps(wk, _mm256_loadu_ps(p + 8 * v), a[v]);
    }
#pragma GCC unroll 8
    for (int v = 0; v < NV; v++) _mm256_storeu_ps(yt + 8 * v, a[v]);
}

SFT_TARGET_AVX2 static void fwd_seg_avx2_1(float *yt, const float *w, const int32_t *col, int64_t cnt,
                                           const float *xT, int64_t ld) {
    fwd_seg_avx2_body(1, yt, w, col, cnt, xT, ld);
}
SFT_TARGET_AVX2 static void fwd_seg_avx2_2(float *yt, const float *w, const int32_t *col, int64_t cnt,
                                           const float *xT, int64_t ld) {
    fwd_seg_avx2_body(2, yt, w, col, cnt, xT, ld);
}
SFT_TARGET_AVX2 static void fwd_seg_avx2_3(float *yt, const float *w, const int32_t *col, int64_t cnt,
                                           const float *xT, int64_t ld) {
    fwd_seg_avx2_body(3, yt, w, col, cnt, xT, ld);
}
SFT_TARGET_AVX2 static void fwd_seg_avx2_4(float *yt, const float *w, const int32_t *col, int64_t cnt,
                                           const float *xT, int64_t ld) {
    fwd_seg_avx2_body(4, yt, w, col, cnt, xT, ld);
}
SFT_TARGET_AVX2 static void fwd_seg_avx2_5(float *yt, const float *w, const int32_t *col, int64_t cnt,
                                           const float *xT, int64_t ld) {
    fwd_seg_avx2_body(5, yt, w, col, cnt, xT, ld);
}
SFT_TARGET_AVX2 static void fwd_seg_avx2_6(float *yt, const float *w, const int32_t *col, int64_t cnt,
                                           const float *xT, int64_t ld) {
    fwd_seg_avx2_body(6, yt, w, col, cnt, xT, ld);
}
SFT_TARGET_AVX2 static void fwd_seg_avx2_7(float *yt, const float *w, const int32_t *col, int64_t cnt,
                                           const float *xT, int64_t ld) {
    fwd_seg_avx2_body(7, yt, w, col, cnt, xT, ld);
}
SFT_TARGET_AVX2 static void fwd_seg_avx2_8(float *yt, const float *w, const int32_t *col, int64_t cnt,
                                           const float *xT, int64_t ld) {
    fwd_seg_avx2_body(8, yt, w, col, cnt, xT, ld);
}

SFT_TARGET_AVX2 static void fwd_seg_avx2(float *yt, const float *w, const int32_t *col, int64_t cnt,
                                         const float *xT, int64_t ld, int64_t nt) {
    switch (nt / 8) {
        case 1:
            fwd_seg_avx2_1(yt, w, col, cnt, xT, ld);
            break;
        case 2:
            fwd_seg_avx2_2(yt, w, col, cnt, xT, ld);
            break;
        case 3:
            fwd_seg_avx2_3(yt, w, col, cnt, xT, ld);
            break;
        case 4:
            fwd_seg_avx2_4(yt, w, col, cnt, xT, ld);
            break;
        case 5:
            fwd_seg_avx2_5(yt, w, col, cnt, xT, ld);
            break;
        case 6:
            fwd_seg_avx2_6(yt, w, col, cnt, xT, ld);
            break;
        case 7:
            fwd_seg_avx2_7(yt, w, col, cnt, xT, ld);
            break;
        default:
            fwd_seg_avx2_8(yt, w, col, cnt, xT, ld);
            break;
    }
}
#endif

/* ytile (rows, 64) += the chunk's W' times the tile xp (slab columns, nt). */
typedef void (*fwd_tile_fn)(float *, const chunk *, const float *, int64_t);

static void fwd_tile_portable(float *ytile, const chunk *c, const float *xp, int64_t nt) {
    fwd_tile_loop(fwd_seg_portable, ytile, c, xp, nt);
}
#if SFT_X86
SFT_TARGET_AVX2 static void fwd_tile_avx2(float *ytile, const chunk *c, const float *xp, int64_t nt) {
    fwd_tile_loop(fwd_seg_avx2, ytile, c, xp, nt);
}
#endif

/* ---- backward segment: gxT[col[k]] += w[k] * gyrow;  g[k] += <gyrow, xT[col[k]]> ------------- */

static void bwd_seg_portable(float *g, float *gxT, const float *w, const int32_t *col, int64_t cnt,
                             const float *gyrow, const float *xT, int64_t ld, int64_t nt) {
    // loop over the segment's nonzeros, then the tile's tokens
    for (int64_t k = 0; k < cnt; k++) {
        int64_t off = (int64_t)col[k] * ld;
        if (gxT != NULL) {
            float wk = w[k];
            float *gx = gxT + off;
            for (int64_t t = 0; t < nt; t++) gx[t] += wk * gyrow[t];
        }
        if (g != NULL) {
            const float *p = xT + off;
            float s[8] = {0};
            for (int64_t t = 0; t < nt; t += 8)
                for (int u = 0; u < 8; u++) s[u] += gyrow[t + u] * p[t + u];
            g[k] += ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
        }
    }
}

#if SFT_X86
/* The per-nonzero partial sums s (8 lanes) wait in sb and are reduced 8 at a time into g (one
 * hsum8 per 8 nonzeros). */
SFT_TARGET_AVX2 static ALWAYS_INLINE void sg_push(float *sb, float *g, int64_t k, __m256 s) {
    _mm256_store_ps(sb + 8 * (k & 7), s);
    if ((k & 7) == 7) {
        __m256 h = hsum8_avx2(_mm256_load_ps(sb), _mm256_load_ps(sb + 8), _mm256_load_ps(sb + 16),
                              _mm256_load_ps(sb + 24), _mm256_load_ps(sb + 32), _mm256_load_ps(sb + 40),
                              _mm256_load_ps(sb + 48), _mm256_load_ps(sb + 56));
        _mm256_storeu_ps(g + k - 7, _mm256_add_ps(_mm256_loadu_ps(g + k - 7), h));
    }
}

/* The last cnt % 8 partial sums of a segment, one at a time. */
SFT_TARGET_AVX2 static ALWAYS_INLINE void sg_tail(const float *sb, float *g, int64_t cnt) {
    for (int64_t kk = cnt / 8 * 8; kk < cnt; kk++) g[kk] += hsum_avx2(_mm256_load_ps(sb + 8 * (kk & 7)));
}

/* The tile's gy row stays in NV registers (NV a constant after inlining); per nonzero one pass
 * over the tokens serves both the scatter into gx^T and the sampled product (SparseProp's fused
 * backward), the product's even and odd vectors in two sums. */
SFT_TARGET_AVX2 static ALWAYS_INLINE void bwd_seg_avx2_body(const int NV, float *g, float *gxT,
                                                            const float *w, const int32_t *col, int64_t cnt,
                                                            const float *gyrow, const float *xT, int64_t ld) {
    float sb[64] __attribute__((aligned(32)));
    __m256 y[8];
#pragma GCC unroll 8
    for (int v = 0; v < NV; v++) y[v] = _mm256_loadu_ps(gyrow + 8 * v);
    if (gxT != NULL && g != NULL) {
        // both: the sampled product, then the scatter, vector by vector
        for (int64_t k = 0; k < cnt; k++) {
            int64_t off = (int64_t)col[k] * ld;
            float *px = gxT + off;
            __m256 wk = _mm256_broadcast_ss(w + k), s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
#pragma GCC unroll 8
            for (int v = 0; v < NV; v++) {
                if (v % 2 == 0)
                    s0 = _mm256_fmadd_ps(y[v], _mm256_loadu_ps(xT + off + 8 * v), s0);
                else
                    s1 = _mm256_fmadd_ps(y[v], _mm256_loadu_ps(xT + off + 8 * v), s1);
                _mm256_storeu_ps(px + 8 * v, _mm256_fmadd_ps(wk, y[v], _mm256_loadu_ps(px + 8 * v)));
            }
            sg_push(sb, g, k, _mm256_add_ps(s0, s1));
        }
        sg_tail(sb, g, cnt);
    } else if (gxT != NULL) {
        // the scatter only
        for (int64_t k = 0; k < cnt; k++) {
            float *px = gxT + (int64_t)col[k] * ld;
            __m256 wk = _mm256_broadcast_ss(w + k);
#pragma GCC unroll 8
            for (int v = 0; v < NV; v++)
                _mm256_storeu_ps(px + 8 * v, _mm256_fmadd_ps(wk, y[v], _mm256_loadu_ps(px + 8 * v)));
        }
    } else {
        // the sampled product only
        for (int64_t k = 0; k < cnt; k++) {
            int64_t off = (int64_t)col[k] * ld;
            __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
#pragma GCC unroll 8
            for (int v = 0; v < NV; v++) {
                if (v % 2 == 0)
                    s0 = _mm256_fmadd_ps(y[v], _mm256_loadu_ps(xT + off + 8 * v), s0);
                else
                    s1 = _mm256_fmadd_ps(y[v], _mm256_loadu_ps(xT + off + 8 * v), s1);
            }
            sg_push(sb, g, k, _mm256_add_ps(s0, s1));
        }
        sg_tail(sb, g, cnt);
    }
}

SFT_TARGET_AVX2 static void bwd_seg_avx2_1(float *g, float *gxT, const float *w, const int32_t *col,
                                           int64_t cnt, const float *gyrow, const float *xT, int64_t ld) {
    bwd_seg_avx2_body(1, g, gxT, w, col, cnt, gyrow, xT, ld);
}
SFT_TARGET_AVX2 static void bwd_seg_avx2_2(float *g, float *gxT, const float *w, const int32_t *col,
                                           int64_t cnt, const float *gyrow, const float *xT, int64_t ld) {
    bwd_seg_avx2_body(2, g, gxT, w, col, cnt, gyrow, xT, ld);
}
SFT_TARGET_AVX2 static void bwd_seg_avx2_3(float *g, float *gxT, const float *w, const int32_t *col,
                                           int64_t cnt, const float *gyrow, const float *xT, int64_t ld) {
    bwd_seg_avx2_body(3, g, gxT, w, col, cnt, gyrow, xT, ld);
}
SFT_TARGET_AVX2 static void bwd_seg_avx2_4(float *g, float *gxT, const float *w, const int32_t *col,
                                           int64_t cnt, const float *gyrow, const float *xT, int64_t ld) {
    bwd_seg_avx2_body(4, g, gxT, w, col, cnt, gyrow, xT, ld);
}
SFT_TARGET_AVX2 static void bwd_seg_avx2_5(float *g, float *gxT, const float *w, const int32_t *col,
                                           int64_t cnt, const float *gyrow, const float *xT, int64_t ld) {
    bwd_seg_avx2_body(5, g, gxT, w, col, cnt, gyrow, xT, ld);
}
SFT_TARGET_AVX2 static void bwd_seg_avx2_6(float *g, float *gxT, const float *w, const int32_t *col,
                                           int64_t cnt, const float *gyrow, const float *xT, int64_t ld) {
    bwd_seg_avx2_body(6, g, gxT, w, col, cnt, gyrow, xT, ld);
}
SFT_TARGET_AVX2 static void bwd_seg_avx2_7(float *g, float *gxT, const float *w, const int32_t *col,
                                           int64_t cnt, const float *gyrow, const float *xT, int64_t ld) {
    bwd_seg_avx2_body(7, g, gxT, w, col, cnt, gyrow, xT, ld);
}
SFT_TARGET_AVX2 static void bwd_seg_avx2_8(float *g, float *gxT, const float *w, const int32_t *col,
                                           int64_t cnt, const float *gyrow, const float *xT, int64_t ld) {
    bwd_seg_avx2_body(8, g, gxT, w, col, cnt, gyrow, xT, ld);
}

SFT_TARGET_AVX2 static void bwd_seg_avx2(float *g, float *gxT, const float *w, const int32_t *col,
                                         int64_t cnt, const float *gyrow, const float *xT, int64_t ld,
                                         int64_t nt) {
    switch (nt / 8) {
        case 1:
            bwd_seg_avx2_1(g, gxT, w, col, cnt, gyrow, xT, ld);
            break;
        case 2:
            bwd_seg_avx2_2(g, gxT, w, col, cnt, gyrow, xT, ld);
            break;
        case 3:
            bwd_seg_avx2_3(g, gxT, w, col, cnt, gyrow, xT, ld);
            break;
        case 4:
            bwd_seg_avx2_4(g, gxT, w, col, cnt, gyrow, xT, ld);
            break;
        case 5:
            bwd_seg_avx2_5(g, gxT, w, col, cnt, gyrow, xT, ld);
            break;
        case 6:
            bwd_seg_avx2_6(g, gxT, w, col, cnt, gyrow, xT, ld);
            break;
        case 7:
            bwd_seg_avx2_7(g, gxT, w, col, cnt, gyrow, xT, ld);
            break;
        default:
            bwd_seg_avx2_8(g, gxT, w, col, cnt, gyrow, xT, ld);
            break;
    }
}
#endif

/* The tile's gy^T rows gyt (rows, 64) against the chunk: gxp (slab columns, nt) += W'^T gy when
 * gxp != NULL; c->g += the sampled products with xp when want_g. */
typedef void (*bwd_tile_fn)(const chunk *, int, float *, const float *, const float *, int64_t);

static void bwd_tile_portable(const chunk *c, int want_g, float *gxp, const float *gyt, const float *xp,
                              int64_t nt) {
    bwd_tile_loop(bwd_seg_portable, c, want_g, gxp, gyt, xp, nt);
}
#if SFT_X86
SFT_TARGET_AVX2 static void bwd_tile_avx2(const chunk *c, int want_g, float *gxp, const float *gyt,
                                          const float *xp, int64_t nt) {
    bwd_tile_loop(bwd_seg_avx2, c, want_g, gxp, gyt, xp, nt);
}
#endif

/* ---- AVX-512 segments: 16 tokens per vector ---------------------------------------------- */

#if SFT_X86
/* Lane mask of the last vector of an nt-token row (nt a multiple of 8): 8 or 16 lanes. */
static ALWAYS_INLINE __mmask16 last_mask(int64_t nt) {
    return (__mmask16)(nt % 16 ? 0x00FFu : 0xFFFFu);
}

/* Vector v of a row of NZ vectors: the last one masked unless FULL (masked-off lanes read as 0). */
SFT_TARGET_AVX512 static ALWAYS_INLINE __m512 z_load(const int NZ, const int FULL, int v, __mmask16 last,
                                                     const float *p) {
    return v == NZ - 1 && !FULL ? _mm512_maskz_loadu_ps(last, p) : _mm512_loadu_ps(p);
}

SFT_TARGET_AVX512 static ALWAYS_INLINE void z_store(const int NZ, const int FULL, int v, __mmask16 last,
                                                    float *p, __m512 x) {
    if (v == NZ - 1 && !FULL)
        _mm512_mask_storeu_ps(p, last, x);
    else
        _mm512_storeu_ps(p, x);
}

/* Forward: 2*NZ accumulators (16*NZ tokens, the last vector maybe half) in registers across the
 * segment, even and odd nonzeros in separate sets: with only NZ <= 4 vectors per nonzero, one set
 * would wait on the FMA latency (4 cycles) at every nonzero. Per pair of nonzeros: two broadcasts,
 * 2*NZ loads, 2*NZ FMAs; the sets are added at the end. NZ, FULL: constants after inlining. */
SFT_TARGET_AVX512 static ALWAYS_INLINE void fwd_seg_avx512_body(const int NZ, const int FULL, float *yt,
                                                                const float *w, const int32_t *col,
                                                                int64_t cnt, const float *xT, int64_t ld,
                                                                int64_t nt) {
    const __mmask16 last = last_mask(nt);
    __m512 a[4], b[4];
#pragma GCC unroll 4
    for (int v = 0; v < NZ; v++) a[v] = z_load(NZ, FULL, v, last, yt + 16 * v), b[v] = _mm512_setzero_ps();
    int64_t k = 0;
    // pairs of nonzeros
    for (; k + 2 <= cnt; k += 2) {
        const __m512 w0 = _mm512_set1_ps(w[k]), w1 = _mm512_set1_ps(w[k + 1]);
        const float *p0 = xT + (int64_t)col[k] * ld, *p1 = xT + (int64_t)col[k + 1] * ld;
#pragma GCC unroll 4
        for (int v = 0; v < NZ; v++) {
            a[v] = _mm512_fmadd_ps(w0, z_load(NZ, FULL, v, last, p0 + 16 * v), a[v]);
            b[v] = _mm512_fmadd_ps(w1, z_load(NZ, FULL, v, last, p1 + 16 * v), b[v]);
        }
    }
    if (k < cnt) {
        const __m512 w0 = _mm512_set1_ps(w[k]);
        const float *p0 = xT + (int64_t)col[k] * ld;
#pragma GCC unroll 4
        for (int v = 0; v < NZ; v++) a[v] = _mm512_fmadd_ps(w0, z_load(NZ, FULL, v, last, p0 + 16 * v), a[v]);
    }
#pragma GCC unroll 4
    for (int v = 0; v < NZ; v++) z_store(NZ, FULL, v, last, yt + 16 * v, _mm512_add_ps(a[v], b[v]));
}

SFT_TARGET_AVX512 static void fwd_seg_avx512_1(float *yt, const float *w, const int32_t *col, int64_t cnt,
                                               const float *xT, int64_t ld, int64_t nt) {
    fwd_seg_avx512_body(1, 0, yt, w, col, cnt, xT, ld, nt);
}
SFT_TARGET_AVX512 static void fwd_seg_avx512_2(float *yt, const float *w, const int32_t *col, int64_t cnt,
                                               const float *xT, int64_t ld, int64_t nt) {
    fwd_seg_avx512_body(2, 0, yt, w, col, cnt, xT, ld, nt);
}
SFT_TARGET_AVX512 static void fwd_seg_avx512_3(float *yt, const float *w, const int32_t *col, int64_t cnt,
                                               const float *xT, int64_t ld, int64_t nt) {
    fwd_seg_avx512_body(3, 0, yt, w, col, cnt, xT, ld, nt);
}
SFT_TARGET_AVX512 static void fwd_seg_avx512_4(float *yt, const float *w, const int32_t *col, int64_t cnt,
                                               const float *xT, int64_t ld, int64_t nt) {
    fwd_seg_avx512_body(4, 0, yt, w, col, cnt, xT, ld, nt);
}
SFT_TARGET_AVX512 static void fwd_seg_avx512_full(float *yt, const float *w, const int32_t *col, int64_t cnt,
                                                  const float *xT, int64_t ld, int64_t nt) {
    fwd_seg_avx512_body(4, 1, yt, w, col, cnt, xT, ld, nt);
}

/* The segment kernel is chosen once per tile (by its token count), not once per segment. */
SFT_TARGET_AVX512 static void fwd_tile_avx512(float *ytile, const chunk *c, const float *xp, int64_t nt) {
    switch ((nt + 15) / 16) {
        case 1:
            fwd_tile_loop(fwd_seg_avx512_1, ytile, c, xp, nt);
            break;
        case 2:
            fwd_tile_loop(fwd_seg_avx512_2, ytile, c, xp, nt);
            break;
        case 3:
            fwd_tile_loop(fwd_seg_avx512_3, ytile, c, xp, nt);
            break;
        default:
            if (nt == TOK_TILE)
                fwd_tile_loop(fwd_seg_avx512_full, ytile, c, xp, nt); /* a full tile: no lane mask */
            else
                fwd_tile_loop(fwd_seg_avx512_4, ytile, c, xp, nt);
            break;
    }
}

/* Backward: the tile's gy row in NZ registers; per nonzero one pass over the tokens does the
 * sampled product (load, FMA into two sums) and the scatter into gx^T (load, FMA, store); the
 * product's vector is folded to 8 lanes and waits in sb, reduced 8 nonzeros at a time. */
SFT_TARGET_AVX512 static ALWAYS_INLINE void bwd_seg_avx512_body(const int NZ, const int FULL, float *g,
                                                                float *gxT, const float *w,
                                                                const int32_t *col, int64_t cnt,
                                                                const float *gyrow, const float *xT,
                                                                int64_t ld, int64_t nt) {
    const __mmask16 last = last_mask(nt);
    float sb[64] __attribute__((aligned(32)));
    __m512 y[4];
#pragma GCC unroll 4
    for (int v = 0; v < NZ; v++) y[v] = z_load(NZ, FULL, v, last, gyrow + 16 * v);
    if (gxT != NULL && g != NULL) {
        // both: the sampled product, then the scatter, vector by vector
        for (int64_t k = 0; k < cnt; k++) {
            int64_t off = (int64_t)col[k] * ld;
            float *px = gxT + off;
            __m512 wk = _mm512_set1_ps(w[k]), s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
#pragma GCC unroll 4
            for (int v = 0; v < NZ; v++) {
                if (v % 2 == 0)
                    s0 = _mm512_fmadd_ps(y[v], z_load(NZ, FULL, v, last, xT + off + 16 * v), s0);
                else
                    s1 = _mm512_fmadd_ps(y[v], z_load(NZ, FULL, v, last, xT + off + 16 * v), s1);
                z_store(NZ, FULL, v, last, px + 16 * v,
                        _mm512_fmadd_ps(wk, y[v], z_load(NZ, FULL, v, last, px + 16 * v)));
            }
            sg_push(sb, g, k, fold8_avx512(_mm512_add_ps(s0, s1)));
        }
        sg_tail(sb, g, cnt);
    } else if (gxT != NULL) {
        // the scatter only
        for (int64_t k = 0; k < cnt; k++) {
            float *px = gxT + (int64_t)col[k] * ld;
            __m512 wk = _mm512_set1_ps(w[k]);
#pragma GCC unroll 4
            for (int v = 0; v < NZ; v++)
                z_store(NZ, FULL, v, last, px + 16 * v,
                        _mm512_fmadd_ps(wk, y[v], z_load(NZ, FULL, v, last, px + 16 * v)));
        }
    } else {
        // the sampled product only
        for (int64_t k = 0; k < cnt; k++) {
            int64_t off = (int64_t)col[k] * ld;
            __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
#pragma GCC unroll 4
            for (int v = 0; v < NZ; v++) {
                if (v % 2 == 0)
                    s0 = _mm512_fmadd_ps(y[v], z_load(NZ, FULL, v, last, xT + off + 16 * v), s0);
                else
                    s1 = _mm512_fmadd_ps(y[v], z_load(NZ, FULL, v, last, xT + off + 16 * v), s1);
            }
            sg_push(sb, g, k, fold8_avx512(_mm512_add_ps(s0, s1)));
        }
        sg_tail(sb, g, cnt);
    }
}

SFT_TARGET_AVX512 static void bwd_seg_avx512_1(float *g, float *gxT, const float *w, const int32_t *col,
                                               int64_t cnt, const float *gyrow, const float *xT, int64_t ld,
                                               int64_t nt) {
    bwd_seg_avx512_body(1, 0, g, gxT, w, col, cnt, gyrow, xT, ld, nt);
}
SFT_TARGET_AVX512 static void bwd_seg_avx512_2(float *g, float *gxT, const float *w, const int32_t *col,
                                               int64_t cnt, const float *gyrow, const float *xT, int64_t ld,
                                               int64_t nt) {
    bwd_seg_avx512_body(2, 0, g, gxT, w, col, cnt, gyrow, xT, ld, nt);
}
SFT_TARGET_AVX512 static void bwd_seg_avx512_3(float *g, float *gxT, const float *w, const int32_t *col,
                                               int64_t cnt, const float *gyrow, const float *xT, int64_t ld,
                                               int64_t nt) {
    bwd_seg_avx512_body(3, 0, g, gxT, w, col, cnt, gyrow, xT, ld, nt);
}
SFT_TARGET_AVX512 static void bwd_seg_avx512_4(float *g, float *gxT, const float *w, const int32_t *col,
                                               int64_t cnt, const float *gyrow, const float *xT, int64_t ld,
                                               int64_t nt) {
    bwd_seg_avx512_body(4, 0, g, gxT, w, col, cnt, gyrow, xT, ld, nt);
}
SFT_TARGET_AVX512 static void bwd_seg_avx512_full(float *g, float *gxT, const float *w, const int32_t *col,
                                                  int64_t cnt, const float *gyrow, const float *xT,
                                                  int64_t ld, int64_t nt) {
    bwd_seg_avx512_body(4, 1, g, gxT, w, col, cnt, gyrow, xT, ld, nt);
}

/* The segment kernel is chosen once per tile (by its token count), not once per segment. */
SFT_TARGET_AVX512 static void bwd_tile_avx512(const chunk *c, int want_g, float *gxp, const float *gyt,
                                              const float *xp, int64_t nt) {
    switch ((nt + 15) / 16) {
        case 1:
            bwd_tile_loop(bwd_seg_avx512_1, c, want_g, gxp, gyt, xp, nt);
            break;
        case 2:
            bwd_tile_loop(bwd_seg_avx512_2, c, want_g, gxp, gyt, xp, nt);
            break;
        case 3:
            bwd_tile_loop(bwd_seg_avx512_3, c, want_g, gxp, gyt, xp, nt);
            break;
        default:
            if (nt == TOK_TILE)
                bwd_tile_loop(bwd_seg_avx512_full, c, want_g, gxp, gyt, xp,
                              nt); /* a full tile: no lane mask */
            else
                bwd_tile_loop(bwd_seg_avx512_4, c, want_g, gxp, gyt, xp, nt);
            break;
    }
}
#endif

/* ---- gradient reduction: dB[i,:] += s*g*AT[j,:],  dAT[j,:] += s*g*B[i,:] --------------------- */

static ALWAYS_INLINE void reduce_body(float *dB, float *dAT, const chunk *c, const float *AT, const float *B,
                                      float scale, int64_t r) {
    // rows, then their entries: one rank-1 update of length r each
    for (int64_t i = 0; i < c->rows; i++) {
        float *db = dB + (c->i0 + i) * r;
        const float *bi = B + (c->i0 + i) * r;
        int64_t b = c->seg[i * (c->nkb + 1)], e = c->seg[i * (c->nkb + 1) + c->nkb];
        for (int64_t k = b; k < e; k++) {
            float sg = scale * c->g[k];
            const float *a = AT + (int64_t)c->rowcol[k] * r;
            float *da = dAT + (int64_t)c->rowcol[k] * r;
            for (int64_t q = 0; q < r; q++) {
                db[q] += sg * a[q];
                da[q] += sg * bi[q];
            }
        }
    }
}

static void reduce_portable(float *dB, float *dAT, const chunk *c, const float *AT, const float *B,
                            float scale, int64_t r) {
    reduce_body(dB, dAT, c, AT, B, scale, r);
}

#if SFT_X86
SFT_TARGET_AVX2 static void reduce_avx2(float *dB, float *dAT, const chunk *c, const float *AT,
                                        const float *B, float scale, int64_t r) {
    if (r != 16) {
        reduce_body(dB, dAT, c, AT, B, scale, r);
        return;
    }
    // r = 16: the row's dB and B in registers, two vectors per rank-1 update of dA^T
    __m256 vs = _mm256_set1_ps(scale);
    for (int64_t i = 0; i < c->rows; i++) {
        float *db = dB + (c->i0 + i) * 16;
        const float *bi = B + (c->i0 + i) * 16;
        __m256 d0 = _mm256_loadu_ps(db), d1 = _mm256_loadu_ps(db + 8);
        __m256 b0 = _mm256_loadu_ps(bi), b1 = _mm256_loadu_ps(bi + 8);
        int64_t b = c->seg[i * (c->nkb + 1)], e = c->seg[i * (c->nkb + 1) + c->nkb];
        for (int64_t k = b; k < e; k++) {
            __m256 sg = _mm256_mul_ps(vs, _mm256_broadcast_ss(c->g + k));
            const float *a = AT + (int64_t)c->rowcol[k] * 16;
            float *da = dAT + (int64_t)c->rowcol[k] * 16;
            d0 = _mm256_fmadd_ps(sg, _mm256_loadu_ps(a), d0);
            d1 = _mm256_fmadd_ps(sg, _mm256_loadu_ps(a + 8), d1);
            _mm256_storeu_ps(da, _mm256_fmadd_ps(sg, b0, _mm256_loadu_ps(da)));
            _mm256_storeu_ps(da + 8, _mm256_fmadd_ps(sg, b1, _mm256_loadu_ps(da + 8)));
        }
        _mm256_storeu_ps(db, d0);
        _mm256_storeu_ps(db + 8, d1);
    }
}
#endif

#if SFT_X86
/* r = 16 on AVX-512: the row's dB and B in one register each, one vector per rank-1 update of
 * dA^T; other r on the AVX2 kernel. */
SFT_TARGET_AVX512 static void reduce_avx512(float *dB, float *dAT, const chunk *c, const float *AT,
                                            const float *B, float scale, int64_t r) {
    if (r != 16) {
        reduce_avx2(dB, dAT, c, AT, B, scale, r);
        return;
    }
    __m512 vs = _mm512_set1_ps(scale);
    for (int64_t i = 0; i < c->rows; i++) {
        float *db = dB + (c->i0 + i) * 16;
        __m512 d = _mm512_loadu_ps(db), bi = _mm512_loadu_ps(B + (c->i0 + i) * 16);
        int64_t b = c->seg[i * (c->nkb + 1)], e = c->seg[i * (c->nkb + 1) + c->nkb];
        for (int64_t k = b; k < e; k++) {
            __m512 sg = _mm512_mul_ps(vs, _mm512_set1_ps(c->g[k]));
            float *da = dAT + (int64_t)c->rowcol[k] * 16;
            d = _mm512_fmadd_ps(sg, _mm512_loadu_ps(AT + (int64_t)c->rowcol[k] * 16), d);
            _mm512_storeu_ps(da, _mm512_fmadd_ps(sg, bi, _mm512_loadu_ps(da)));
        }
        _mm512_storeu_ps(db, d);
    }
}
#endif

typedef void (*reduce_fn)(float *, float *, const chunk *, const float *, const float *, float, int64_t);

/* ---- drivers ------------------------------------------------------------------------------- */

/* Every thread takes a contiguous range of tokens and works on it alone (no barriers in the main
 * loop; the machine is often shared, where barriers cost whole time slices): blocks of NCt
 * tokens, transposed into tiles of <= 64 tokens; for each row chunk, W' recomputed once per block;
 * tiles -> column blocks -> rows -> register-tiled segment kernel. */

int sparse_forward(float *y, const sparse_base *W, const float *x, const float *A, const float *B,
                   float scale, int64_t N, int64_t r) {
    int64_t out = W->out, in = W->in;
    if (N <= 0 || out <= 0) return 0;
    if (in <= 0) {
        memset(y, 0, sizeof(float) * (size_t)(N * out));
        return 0;
    }
    int nthreads = sft_get_num_threads();
    // one plan for all threads: token block T, column slab S
    int64_t T, S;
    plan_blocks(W, 0, thread_share(N, nthreads), &T, &S);
    int64_t npos = W->kind == SPARSE_CSR ? out : 0;
    // a thread's block: x^T tiles, the output tile, the chunk, row positions
    const block_layout L = layout_of(W, 0, T, S);
    size_t per_thread = (size_t)L.bytes; /* cache-line aligned blocks */
    float *AT = (float *)sft_scratch_alloc(sizeof(float) * (size_t)SFT_MAX(in * r, 1));
    char *mem = (char *)sft_scratch_alloc(per_thread * (size_t)nthreads);
    if (AT == NULL || mem == NULL) {
        sft_scratch_free(mem);
        sft_scratch_free(AT);
        return -1;
    }
    recompute_fn rcf = select_recompute(scale);
    fwd_tile_fn tile = fwd_tile_portable;
    transpose_fn tr = select_transpose();
#if SFT_X86
    if (sft_simd_path >= SFT_SIMD_AVX2) tile = fwd_tile_avx2;
    if (sft_simd_path >= SFT_SIMD_AVX512) tile = fwd_tile_avx512;
#endif

#pragma omp parallel num_threads(nthreads)
    {
        int tid = sft_thread_num(), nth = sft_team_size();
        char *my = mem + per_thread * (size_t)tid;
        float *xT = (float *)my;                    /* tiles (S, 64) */
        float *ytile = xT + L.panel;                /* (CHUNK_ROWS, 64) */
        int64_t *pos = (int64_t *)(my + L.off_pos); /* (out) CSR: next entry per row */
        chunk c;
        chunk_init(&c, my + L.off_chunk, W, S, fwd_kc(W));
        transpose_A(AT, A, r, in); /* ends with a barrier */
        int64_t ta, tb;
        thread_tokens(N, tid, nth, &ta, &tb);
        // loop over this thread's token blocks
        for (int64_t t0 = ta; t0 < tb; t0 += T) {
            int64_t nblk = SFT_MIN(T, tb - t0), ntiles = sft_ceil_div(nblk, TOK_TILE);
            if (npos) memcpy(pos, W->rowptr, sizeof(int64_t) * (size_t)out);
            // loop over column slabs: the output tiles carry the partial sums from slab to slab
            for (int64_t c0 = 0; c0 < in; c0 += S) {
                int64_t c1 = SFT_MIN(in, c0 + S), sw = c1 - c0;
                // transpose the slab of x into tiles of up to 64 tokens (padded to vectors)
                for (int64_t p = 0; p < ntiles; p++) {
                    int64_t nv = SFT_MIN(TOK_TILE, nblk - p * TOK_TILE), nt = sft_round_up(nv, TOK_VEC);
                    float *xp = xT + p * S * TOK_TILE;
                    token_tile(tr, xp, nt, x + (t0 + p * TOK_TILE) * in + c0, in, nv, nt, sw);
                }
                // loop over row chunks
                for (int64_t i0 = 0, i1; i0 < out; i0 = i1) {
                    i1 = chunk_build(&c, W, npos ? pos : NULL, i0, c0, c1, AT + c0 * r, B, scale, r, 1, rcf);
                    // loop over tiles, column blocks, rows
                    for (int64_t p = 0; p < ntiles; p++) {
                        int64_t nv = SFT_MIN(TOK_TILE, nblk - p * TOK_TILE), nt = sft_round_up(nv, TOK_VEC);
                        const float *xp = xT + p * S * TOK_TILE;
                        float *yp = y + (t0 + p * TOK_TILE) * out + i0;
                        if (c0 == 0)
                            memset(ytile, 0, sizeof(float) * (size_t)(c.rows * TOK_TILE));
                        else
                            tr(ytile, TOK_TILE, yp, out, nv, c.rows); /* this tile's sums so far */
                        tile(ytile, &c, xp, nt);
                        // write the tile transposed: y[t0 + p*64 + t, i0:i1]
                        tr(yp, out, ytile, TOK_TILE, c.rows, nv);
                    }
                }
            }
        }
    }
    sft_scratch_free(mem);
    sft_scratch_free(AT);
    return 0;
}

int sparse_backward(float *gx, float *dA, float *dB, const sparse_base *W, const float *gy, const float *x,
                    const float *A, const float *B, float scale, int64_t N, int64_t r) {
    int64_t out = W->out, in = W->in;
    int want_g = dA != NULL;
    if (want_g) {
        memset(dA, 0, sizeof(float) * (size_t)(r * in));
        memset(dB, 0, sizeof(float) * (size_t)(out * r));
    }
    if (scale == 0.0f) want_g = 0; /* the adapter is off: its gradients are exactly 0 */
    if (gx != NULL) memset(gx, 0, sizeof(float) * (size_t)SFT_MAX(N * in, 0));
    if (N <= 0 || out <= 0 || in <= 0 || (gx == NULL && !want_g)) return 0;
    int nthreads = sft_get_num_threads();
    // one plan for all threads: token block T, column slab S
    int64_t T, S;
    plan_blocks(W, 1, thread_share(N, nthreads), &T, &S);
    int64_t npos = W->kind == SPARSE_CSR ? out : 0;
    int64_t part = want_g ? (in + out) * r : 0;
    // a thread's block: x^T, gx^T and gy^T tiles, the chunk, row positions, then (outside the tile
    // scratch bound: O(r (in + out))) the partial dB and dA^T
    const block_layout L = layout_of(W, 1, T, S);
    int64_t off_part = L.bytes;
    size_t per_thread = (size_t)sft_round_up(off_part + 4 * part, 64); /* cache-line aligned blocks */
    float *AT = (float *)sft_scratch_alloc(sizeof(float) * (size_t)SFT_MAX(in * r, 1));
    char *mem = (char *)sft_scratch_alloc(per_thread * (size_t)nthreads);
    if (AT == NULL || mem == NULL) {
        sft_scratch_free(mem);
        sft_scratch_free(AT);
        return -1;
    }
    recompute_fn rcf = select_recompute(scale);
    bwd_tile_fn tile = bwd_tile_portable;
    transpose_fn tr = select_transpose();
    reduce_fn red = reduce_portable;
#if SFT_X86
    if (sft_simd_path >= SFT_SIMD_AVX2) tile = bwd_tile_avx2, red = reduce_avx2;
    if (sft_simd_path >= SFT_SIMD_AVX512) tile = bwd_tile_avx512, red = reduce_avx512;
#endif

#pragma omp parallel num_threads(nthreads)
    {
        int tid = sft_thread_num(), nth = sft_team_size();
        char *my = mem + per_thread * (size_t)tid;
        float *xT = (float *)my;                    /* tiles (S, 64) */
        float *gxT = xT + L.panel;                  /* tiles (S, 64) */
        float *gyT = gxT + L.panel;                 /* tiles (CHUNK_ROWS, 64) */
        float *dBu = (float *)(my + off_part);      /* (out, r) */
        float *dATu = dBu + out * r;                /* (in, r) */
        int64_t *pos = (int64_t *)(my + L.off_pos); /* (out) CSR: next entry per row */
        chunk c;
        chunk_init(&c, my + L.off_chunk, W, S, bwd_kc(W));
        if (want_g) memset(dBu, 0, sizeof(float) * (size_t)part);
        transpose_A(AT, A, r, in); /* ends with a barrier */
        int64_t ta, tb;
        thread_tokens(N, tid, nth, &ta, &tb);
        // loop over this thread's token blocks
        for (int64_t t0 = ta; t0 < tb; t0 += T) {
            int64_t nblk = SFT_MIN(T, tb - t0), ntiles = sft_ceil_div(nblk, TOK_TILE);
            if (npos) memcpy(pos, W->rowptr, sizeof(int64_t) * (size_t)out);
            // loop over column slabs: every column's gx is complete at the end of its slab
            for (int64_t c0 = 0; c0 < in; c0 += S) {
                int64_t c1 = SFT_MIN(in, c0 + S), sw = c1 - c0;
                // transpose the slab of x into tiles, zero the gx tiles
                for (int64_t p = 0; p < ntiles; p++) {
                    int64_t nv = SFT_MIN(TOK_TILE, nblk - p * TOK_TILE), nt = sft_round_up(nv, TOK_VEC);
                    float *xp = xT + p * S * TOK_TILE;
                    if (want_g) {
                        token_tile(tr, xp, nt, x + (t0 + p * TOK_TILE) * in + c0, in, nv, nt, sw);
                    }
                    if (gx != NULL) memset(gxT + p * S * TOK_TILE, 0, sizeof(float) * (size_t)(sw * nt));
                }
                // loop over row chunks
                for (int64_t i0 = 0, i1; i0 < out; i0 = i1) {
                    i1 = chunk_build(&c, W, npos ? pos : NULL, i0, c0, c1, AT + c0 * r, B, scale, r,
                                     gx != NULL, rcf);
                    if (want_g) memset(c.g, 0, sizeof(float) * (size_t)c.cnt);
                    // loop over tiles: transpose the chunk's gy columns, then column blocks, rows
                    for (int64_t p = 0; p < ntiles; p++) {
                        int64_t nv = SFT_MIN(TOK_TILE, nblk - p * TOK_TILE), nt = sft_round_up(nv, TOK_VEC);
                        float *gyt = gyT + p * CHUNK_ROWS * TOK_TILE;
                        token_tile(tr, gyt, TOK_TILE, gy + (t0 + p * TOK_TILE) * out + i0, out, nv, nt,
                                   c.rows);
                        float *gxp = gx != NULL ? gxT + p * S * TOK_TILE : NULL;
                        const float *xp = want_g ? xT + p * S * TOK_TILE : NULL;
                        tile(&c, want_g, gxp, gyt, xp, nt);
                    }
                    // the chunk's sampled gradient of this block into this thread's dB, dA^T
                    if (want_g) red(dBu, dATu + c0 * r, &c, AT + c0 * r, B, scale, r);
                }
                // write this block's gx of the slab (transposed back)
                if (gx != NULL)
                    for (int64_t p = 0; p < ntiles; p++) {
                        int64_t nv = SFT_MIN(TOK_TILE, nblk - p * TOK_TILE), nt = sft_round_up(nv, TOK_VEC);
                        tr(gx + (t0 + p * TOK_TILE) * in + c0, in, gxT + p * S * TOK_TILE, nt, sw, nv);
                    }
            }
        }
        if (want_g) {
#pragma omp barrier
            // dB, dA: the threads' partial sums added in thread order
#pragma omp for schedule(static)
            for (int64_t i = 0; i < out; i++)
                for (int u = 0; u < nth; u++) {
                    const float *src = (const float *)(mem + per_thread * (size_t)u + off_part) + i * r;
                    for (int64_t q = 0; q < r; q++) dB[i * r + q] += src[q];
                }
#pragma omp for schedule(static)
            for (int64_t j = 0; j < in; j++)
                for (int u = 0; u < nth; u++) {
                    const float *src =
                        (const float *)(mem + per_thread * (size_t)u + off_part) + out * r + j * r;
                    for (int64_t q = 0; q < r; q++) dA[q * in + j] += src[q];
                }
        }
    }
    sft_scratch_free(mem);
    sft_scratch_free(AT);
    return 0;
}

int sparse_merge(float *values_out, const sparse_base *W, const float *A, const float *B, float scale,
                 int64_t r) {
    int64_t out = W->out, in = W->in;
    if (out <= 0 || in <= 0) return 0;
    int nthreads = sft_get_num_threads();
    int64_t cap = row_capacity(W);
    float *AT = (float *)sft_scratch_alloc(sizeof(float) * (size_t)SFT_MAX(in * r, 1));
    int32_t *col_all = (int32_t *)sft_scratch_alloc(sizeof(int32_t) * (size_t)(nthreads * cap));
    if (AT == NULL || col_all == NULL) {
        sft_scratch_free(col_all);
        sft_scratch_free(AT);
        return -1;
    }
    recompute_fn rcf = select_recompute(scale);
#pragma omp parallel num_threads(nthreads)
    {
        int tid = sft_thread_num();
        int32_t *col = col_all + (int64_t)tid * cap;
        transpose_A(AT, A, r, in);
        // one row at a time: columns into the thread's buffer, W' straight into the output
#pragma omp for schedule(static)
        for (int64_t i = 0; i < out; i++) {
            int64_t b = row_begin(W, i);
            fill_cols(col, W, i, i + 1, b);
            rcf(values_out + b, col, W->values + b, B + i * r, AT, scale, row_begin(W, i + 1) - b, r);
        }
    }
    sft_scratch_free(col_all);
    sft_scratch_free(AT);
    return 0;
}

int sparse_check(const sparse_base *W, int64_t nnz) {
    if (W->kind == SPARSE_CSR) {
        // the row pointers completely first (0, nondecreasing, nnz at the end: every one in
        // [0, nnz]), so that no index is read through a pointer past the arrays
        if (W->rowptr[0] != 0 || W->rowptr[W->out] != nnz) return 1;
        for (int64_t i = 0; i < W->out; i++)
            if (W->rowptr[i + 1] < W->rowptr[i]) return 1;
        // rows: columns increasing and inside [0, in)
        for (int64_t i = 0; i < W->out; i++) {
            for (int64_t k = W->rowptr[i]; k < W->rowptr[i + 1]; k++) {
                if (W->colidx[k] < 0 || W->colidx[k] >= W->in) return 2;
                if (k > W->rowptr[i] && W->colidx[k] <= W->colidx[k - 1]) return 2;
            }
        }
        return 0;
    }
    if (W->m < 1 || W->n < 0 || W->n > W->m || W->in % W->m != 0) return 4;
    if (W->out * (W->in / W->m * W->n) != nnz) return 1;
    // groups: indices increasing and below m
    for (int64_t k = 0; k < nnz; k++) {
        if (W->idx[k] >= W->m) return 3;
        if (k % W->n != 0 && W->idx[k] <= W->idx[k - 1]) return 3;
    }
    return 0;
}

/* ---- naive references ---------------------------------------------------------------------- */

/* Column of the k-th stored entry of row i (k counted from the row's start). */
static int64_t naive_col(const sparse_base *W, int64_t i, int64_t k) {
    if (W->kind == SPARSE_CSR) return W->colidx[W->rowptr[i] + k];
    return (k / W->n) * W->m + W->idx[row_begin(W, i) + k];
}

/* W'_ij at the k-th stored entry of row i. */
static float naive_wprime(const sparse_base *W, const float *A, const float *B, float scale, int64_t r,
                          int64_t i, int64_t k) {
    int64_t j = naive_col(W, i, k);
    if (scale == 0.0f) return W->values[row_begin(W, i) + k]; /* the adapter is off: W' = W */
    float d = 0.0f;
    for (int64_t q = 0; q < r; q++) d += B[i * r + q] * A[q * W->in + j];
    return W->values[row_begin(W, i) + k] + scale * d;
}

void sparse_forward_naive(float *y, const sparse_base *W, const float *x, const float *A, const float *B,
                          float scale, int64_t N, int64_t r) {
    // one sparse dot product per output element
    for (int64_t t = 0; t < N; t++)
        for (int64_t i = 0; i < W->out; i++) {
            float acc = 0.0f;
            int64_t cnt = row_begin(W, i + 1) - row_begin(W, i);
            for (int64_t k = 0; k < cnt; k++)
                acc += naive_wprime(W, A, B, scale, r, i, k) * x[t * W->in + naive_col(W, i, k)];
            y[t * W->out + i] = acc;
        }
}

void sparse_backward_naive(float *gx, float *dA, float *dB, const sparse_base *W, const float *gy,
                           const float *x, const float *A, const float *B, float scale, int64_t N,
                           int64_t r) {
    int64_t out = W->out, in = W->in;
    if (gx != NULL) memset(gx, 0, sizeof(float) * (size_t)(N * in));
    if (dA != NULL) {
        memset(dA, 0, sizeof(float) * (size_t)(r * in));
        memset(dB, 0, sizeof(float) * (size_t)(out * r));
    }
    // loop over stored entries: scatter into gx, sample g_ij, rank-1 updates of dA and dB
    for (int64_t i = 0; i < out; i++) {
        int64_t cnt = row_begin(W, i + 1) - row_begin(W, i);
        for (int64_t k = 0; k < cnt; k++) {
            int64_t j = naive_col(W, i, k);
            float w = naive_wprime(W, A, B, scale, r, i, k);
            float g = 0.0f;
            for (int64_t t = 0; t < N; t++) {
                if (gx != NULL) gx[t * in + j] += gy[t * out + i] * w;
                if (dA != NULL) g += gy[t * out + i] * x[t * in + j]; /* x may be NULL without dA */
            }
            if (dA == NULL || scale == 0.0f) continue; /* scale 0: the adapter's gradients are 0 */
            for (int64_t q = 0; q < r; q++) {
                dB[i * r + q] += scale * g * A[q * in + j];
                dA[q * in + j] += scale * g * B[i * r + q];
            }
        }
    }
}
