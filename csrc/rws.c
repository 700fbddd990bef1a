/* rws.c: signature extraction, packed quantization and the exactly-undoable patch kernels (see rws.h).
 * Memory-bound loops. The patch kernels walk the tensor in blocks of RWS_BLOCK elements; a packed
 * source is decoded one block at a time into a stack tile (never a full float copy). Blocks are split
 * into one contiguous share per thread, so undo records come out in index order for any thread count. */
#include "rws.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

#if SFT_X86
#include <immintrin.h>
#endif

/* Elements per block of the patch kernels (the decoded tile: 8 KiB of floats). */
#define RWS_BLOCK 2048
/* Elements per chunk of extraction's dot products (partials added in chunk order). */
#define RWS_CHUNK 16384
/* Below this many elements a kernel runs on one thread. */
#define RWS_PARALLEL_MIN (1 << 16)

static int rws_threads(int64_t n) {
    return n < RWS_PARALLEL_MIN ? 1 : sft_get_num_threads();
}

static inline uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static inline float bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* ---- float16 / bfloat16 conversions (round to nearest even) ------------------------------- */

uint16_t rws_f32_to_f16(float f) {
    uint32_t x = f32_bits(f);
    uint32_t sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
    // NaN stays a quiet NaN (payload's top bits kept), infinity stays infinity
    if (ax >= 0x7f800000u)
        return (uint16_t)(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u | ((ax >> 13) & 0x3ffu) : 0));
    // 65520 and above round to infinity
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);
    // normal float16: rebias the exponent by -112 and round the 13 dropped bits to nearest even
    if (ax >= 0x38800000u) return (uint16_t)(sign | ((ax + 0xc8000fffu + ((ax >> 13) & 1u)) >> 13));
    // subnormal float16 (unit 2^-24) or zero: |f| * 2^24 is exact, rintf rounds to nearest even
    return (uint16_t)(sign | (uint32_t)rintf(bits_f32(ax) * 16777216.0f));
}

float rws_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0) return bits_f32(sign | f32_bits((float)m * 5.9604644775390625e-08f));  // m * 2^-24
    if (e == 31) return bits_f32(sign | 0x7f800000u | (m << 13));
    return bits_f32(sign | ((e + 112u) << 23) | (m << 13));
}

uint16_t rws_f32_to_bf16(float f) {
    uint32_t x = f32_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40u);  // quiet NaN
    return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

float rws_bf16_to_f32(uint16_t h) {
    return bits_f32((uint32_t)h << 16);
}

/* ---- extraction ------------------------------------------------------------------------------ */

/* dr = sum (c - p)(r - p), dd = sum (c - p)^2 over [i0, i1), in double */
static void extract_dots(double *dr, double *dd, const float *p, const float *c, const float *r, int64_t i0,
                         int64_t i1) {
    double a = 0.0, b = 0.0;
    for (int64_t i = i0; i < i1; i++) {
        double d = (double)c[i] - p[i], q = (double)r[i] - p[i];
        a += d * q;
        b += d * d;
    }
    *dr = a, *dd = b;
}

/* sig[i] = (r - p) - coef (c - p) in double, rounded once */
static void extract_out(float *sig, const float *p, const float *c, const float *r, double coef, int64_t i0,
                        int64_t i1) {
    for (int64_t i = i0; i < i1; i++) sig[i] = (float)(((double)r[i] - p[i]) - coef * ((double)c[i] - p[i]));
}

static double extract_coef(double dr, double dd) {
    return dd > 0.0 ? dr / dd : 0.0;
}

int rws_extract(float *sig, double *dots, const float *pre, const float *clean, const float *robust,
                int64_t n) {
    int64_t nchunks = sft_ceil_div(n, RWS_CHUNK);
    double dr = 0.0, dd = 0.0;
    int nth = rws_threads(n);
    if (nth < 2 || nchunks < 2) {
        // chunk partials in order: the same sums as the threaded path
        for (int64_t k = 0; k < nchunks; k++) {
            double a, b;
            extract_dots(&a, &b, pre, clean, robust, k * RWS_CHUNK, SFT_MIN(n, (k + 1) * RWS_CHUNK));
            dr += a, dd += b;
        }
    } else {
        double *part = (double *)malloc((size_t)nchunks * 2 * sizeof(double));
        if (part == NULL) return -1;
        // one partial pair per chunk, then summed in chunk order
#pragma omp parallel for schedule(static) num_threads(nth)
        for (int64_t k = 0; k < nchunks; k++)
            extract_dots(&part[2 * k], &part[2 * k + 1], pre, clean, robust, k * RWS_CHUNK,
                         SFT_MIN(n, (k + 1) * RWS_CHUNK));
        for (int64_t k = 0; k < nchunks; k++) dr += part[2 * k], dd += part[2 * k + 1];
        free(part);
    }
    double coef = extract_coef(dr, dd);
    // the output, split among threads
#pragma omp parallel for schedule(static) num_threads(nth)
    for (int64_t k = 0; k < nchunks; k++)
        extract_out(sig, pre, clean, robust, coef, k * RWS_CHUNK, SFT_MIN(n, (k + 1) * RWS_CHUNK));
    dots[0] = dr, dots[1] = dd;
    return 0;
}

void rws_extract_naive(float *sig, double *dots, const float *pre, const float *clean, const float *robust,
                       int64_t n) {
    double dr, dd;
    extract_dots(&dr, &dd, pre, clean, robust, 0, n);
    extract_out(sig, pre, clean, robust, extract_coef(dr, dd), 0, n);
    dots[0] = dr, dots[1] = dd;
}

/* ---- quantization ---------------------------------------------------------------------------- */

void rws_levels(float *lv, const float *p, int bits, int scheme) {
    int nl = 1 << bits;
    if (scheme == RWS_LINEAR) {
        for (int q = 0; q < nl; q++) lv[q] = fmaf((float)q, p[1], p[0]);
        return;
    }
    if (bits == 1) {
        lv[0] = p[1], lv[1] = -p[1];
        return;
    }
    int K = nl / 2, L = K - 1;
    lv[0] = 0.0f, lv[K] = 0.0f;
    for (int k = 1; k <= L; k++) {
        float mag;
        if (k == L || p[0] <= 0.0f)
            mag = p[1];
        else
            mag = p[0] * expf((float)(k - 1) * (logf(p[1]) - logf(p[0])) / (float)(L - 1));
        lv[k] = mag, lv[K + k] = -mag;
    }
}

/* The parameters of one group x (m). */
static void quant_params(float *p, const float *x, int64_t m, int bits, int scheme) {
    if (scheme == RWS_LINEAR) {
        float lo = x[0], hi = x[0];
        for (int64_t i = 1; i < m; i++) lo = SFT_MIN(lo, x[i]), hi = SFT_MAX(hi, x[i]);
        p[0] = lo;
        p[1] = (float)(((double)hi - (double)lo) / (double)((1 << bits) - 1));
        return;
    }
    double sum = 0.0;
    int64_t nz = 0;
    float hi = 0.0f, lo = FLT_MAX;
    for (int64_t i = 0; i < m; i++) {
        float a = fabsf(x[i]);
        sum += a;
        if (a > 0.0f) nz++, lo = SFT_MIN(lo, a);
        hi = SFT_MAX(hi, a);
    }
    int L = (1 << (bits - 1)) - 1;
    if (bits == 1) {
        p[0] = 0.0f, p[1] = (float)(sum / (double)m);
    } else if (L == 1) {
        p[0] = 0.0f, p[1] = nz ? (float)(sum / (double)nz) : 0.0f;
    } else {
        p[1] = hi;
        p[0] = nz ? SFT_MAX(lo, hi * 5.9604644775390625e-08f) : 0.0f;
    }
}

/* The code of x among the levels of a group (nearest level; ties to the lower code). */
static inline uint32_t quant_code(float x, const float *lv, int bits, int scheme) {
    int nl = 1 << bits;
    if (scheme == RWS_LINEAR) {
        // levels ascend with q (step lv[1] - lv[0] >= 0): the rounded position, then the nearest of it and
        // its neighbours in the table itself (the levels are fmaf-rounded)
        float step = nl > 1 ? lv[1] - lv[0] : 0.0f;
        int q = step > 0.0f ? (int)SFT_MIN((float)(nl - 1), SFT_MAX(0.0f, rintf((x - lv[0]) / step))) : 0;
        if (q > 0 && fabsf(x - lv[q - 1]) <= fabsf(lv[q] - x)) q--;
        if (q + 1 < nl && fabsf(lv[q + 1] - x) < fabsf(x - lv[q])) q++;
        return (uint32_t)q;
    }
    if (bits == 1) return x < 0.0f ? 1u : 0u;
    int K = nl / 2;
    float a = fabsf(x);
    // magnitudes lv[0..K-1] ascend
    int lo = 0, hi = K - 1;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (lv[mid] < a)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo > 0 && a - lv[lo - 1] <= lv[lo] - a) lo--;
    return (uint32_t)((lo > 0 && x < 0.0f) ? K + lo : lo);
}

static inline uint32_t code_at(const uint8_t *codes, int64_t i, int bits) {
    int64_t bit = i * bits;
    return ((uint32_t)codes[bit >> 3] >> (bit & 7)) & ((1u << bits) - 1u);
}

int rws_quantize(uint8_t *codes, float *params, double *stats, const float *x, int64_t n, int64_t group,
                 int bits, int scheme) {
    int64_t ngroups = sft_ceil_div(n, group);
    int nth = rws_threads(n);
    int bad = 0;
    // parameters, group by group
#pragma omp parallel for schedule(static) num_threads(nth) reduction(| : bad)
    for (int64_t g = 0; g < ngroups; g++) {
        float *p = params + 2 * g;
        quant_params(p, x + g * group, SFT_MIN(group, n - g * group), bits, scheme);
        if (!isfinite(p[0]) || !isfinite(p[1])) bad = 1;
    }
    if (bad) return -2;
    // codes, in blocks of whole bytes (RWS_BLOCK is a multiple of 8), with per-block error partials
    int64_t nblocks = sft_ceil_div(n, RWS_BLOCK);
    double *part = (double *)malloc((size_t)nblocks * 3 * sizeof(double));
    if (part == NULL) return -1;
#pragma omp parallel for schedule(static) num_threads(nth)
    for (int64_t b = 0; b < nblocks; b++) {
        float lv[256];
        double e2 = 0.0, emax = 0.0, x2 = 0.0;
        int64_t i0 = b * RWS_BLOCK, i1 = SFT_MIN(n, i0 + RWS_BLOCK), g = -1;
        memset(codes + (i0 * bits) / 8, 0, (size_t)(sft_ceil_div(i1 * bits, 8) - (i0 * bits) / 8));
        // one run per group inside the block
        for (int64_t i = i0; i < i1;) {
            g = i / group;
            rws_levels(lv, params + 2 * g, bits, scheme);
            int64_t end = SFT_MIN(i1, (g + 1) * group);
            for (; i < end; i++) {
                int64_t bit = i * bits;
                uint32_t q = quant_code(x[i], lv, bits, scheme);
                codes[bit >> 3] |= (uint8_t)(q << (bit & 7));
                double e = (double)lv[q] - (double)x[i];
                e2 += e * e, emax = SFT_MAX(emax, fabs(e)), x2 += (double)x[i] * x[i];
            }
        }
        part[3 * b] = e2, part[3 * b + 1] = emax, part[3 * b + 2] = x2;
    }
    // partials summed in block order (the same for any thread count)
    stats[0] = stats[1] = stats[2] = 0.0;
    for (int64_t b = 0; b < nblocks; b++)
        stats[0] += part[3 * b], stats[1] = SFT_MAX(stats[1], part[3 * b + 1]), stats[2] += part[3 * b + 2];
    free(part);
    return 0;
}

#if SFT_X86
/* 4-bit codes of elements [i, end) (i even) into t[i..]: 16 per step, the 16 levels held in one register
 * and looked up with a lane permute. Returns the first element not decoded (end rounded down to 16). */
SFT_TARGET_AVX512 static int64_t decode4_avx512(float *t, const uint8_t *codes, int64_t i, int64_t end,
                                                const float *lv) {
    const __m512 levels = _mm512_loadu_ps(lv);
    const __m128i low = _mm_set1_epi8(0x0f);
    for (; i + 16 <= end; i += 16) {
        __m128i v = _mm_loadl_epi64((const __m128i *)(codes + (i >> 1)));  // 8 bytes: 16 codes
        // element 2k is byte k's low nibble, 2k + 1 its high nibble
        __m128i nib = _mm_unpacklo_epi8(_mm_and_si128(v, low), _mm_and_si128(_mm_srli_epi16(v, 4), low));
        _mm512_storeu_ps(t + i, _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(nib), levels));
    }
    return i;
}
#endif

/* tile (i1 - i0) = the values of a packed source at [i0, i1); *g / lv: the group whose levels lv holds */
static void decode_block(float *tile, const rws_source *src, int64_t i0, int64_t i1, int64_t *g, float *lv) {
    const int bits = src->bits;
    const uint32_t mask = (1u << bits) - 1u;
    const uint8_t *codes = src->codes;
    const int64_t group = src->group;
    // one run per group; levels rebuilt only when the group changes
    for (int64_t i = i0; i < i1;) {
        int64_t gi = i / group;
        if (gi != *g) *g = gi, rws_levels(lv, src->params + 2 * gi, bits, src->scheme);
        int64_t end = SFT_MIN(i1, (gi + 1) * group);
        float *restrict t = tile - i0;
        const float *restrict l = lv;
        if (bits == 8) {
            for (; i < end; i++) t[i] = l[codes[i]];
        } else if (bits == 4) {
            // pairs of codes from one byte, then an odd tail
            if ((i & 1) && i < end) t[i] = l[codes[i >> 1] >> 4], i++;
#if SFT_X86
            if (sft_simd_path >= SFT_SIMD_AVX512) i = decode4_avx512(t, codes, i, end, l);
#endif
            for (; i + 2 <= end; i += 2) {
                uint32_t byte = codes[i >> 1];
                t[i] = l[byte & 15u], t[i + 1] = l[byte >> 4];
            }
            if (i < end) t[i] = l[codes[i >> 1] & 15u], i++;
        } else {
            for (; i < end; i++) {
                int64_t bit = i * bits;
                t[i] = l[((uint32_t)codes[bit >> 3] >> (bit & 7)) & mask];
            }
        }
    }
}

int rws_dequantize(float *out, const rws_source *src, int64_t n) {
    int64_t nblocks = sft_ceil_div(n, RWS_BLOCK);
    // blocks split among threads; each decodes into its slice of out
#pragma omp parallel for schedule(static) num_threads(rws_threads(n))
    for (int64_t b = 0; b < nblocks; b++) {
        float lv[256];
        int64_t g = -1, i0 = b * RWS_BLOCK;
        decode_block(out + i0, src, i0, SFT_MIN(n, i0 + RWS_BLOCK), &g, lv);
    }
    return 0;
}

/* ---- patching -------------------------------------------------------------------------------- */

/* The growable undo list of one thread. A block is appended whole once patched; when the list cannot
 * grow, that block is unpatched at once and the thread stops (`stop` = the block's start), so
 * [start, stop) is patched with a complete record. */
typedef struct {
    int64_t *index;
    uint32_t *bits;
    int64_t count, cap;
    int64_t start, stop; /* the thread's share begins at start; patched up to stop (INT64_MAX: all) */
} undo_list;

/* The record of one block: positions from the block's start and original bits (+16 slack for the
 * full-vector stores of compressed AVX-512 lanes). */
typedef struct {
    int32_t idx[RWS_BLOCK + 16];
    uint32_t bits[RWS_BLOCK + 16];
    int64_t n;
} block_undo;

/* Appends a block's record at global offset i0; returns 0, or -1 when out of memory. */
static int undo_append(undo_list *u, int64_t i0, const block_undo *b) {
    if (u->count + b->n > u->cap) {
        int64_t cap = SFT_MAX(SFT_MAX(2 * u->cap, u->count + b->n), 4096);
        int64_t *ni = (int64_t *)realloc(u->index, (size_t)cap * sizeof(int64_t));
        if (ni == NULL) return -1;
        u->index = ni;
        uint32_t *nb = (uint32_t *)realloc(u->bits, (size_t)cap * sizeof(uint32_t));
        if (nb == NULL) return -1;
        u->bits = nb, u->cap = cap;
    }
    for (int64_t k = 0; k < b->n; k++) u->index[u->count + k] = i0 + b->idx[k];
    if (b->n > 0) memcpy(u->bits + u->count, b->bits, (size_t)b->n * sizeof(uint32_t));
    u->count += b->n;
    return 0;
}

void rws_undo_free(rws_undo *u) {
    free(u->index), free(u->bits);
    u->index = NULL, u->bits = NULL, u->count = 0;
}

static inline int nonfinite32(uint32_t b) {
    return (b & 0x7f800000u) == 0x7f800000u;
}

/* float32 weights w (m): w = fmaf(a, s, w) where mask is set, recording (base + i, original bits) for
 * elements whose fmaf(-a, s, w') differs from the original; returns the count of non-finite results. */
static int64_t patch_f32_portable(float *w, const float *s, const uint8_t *mask, float a, int64_t m,
                                  int32_t base, block_undo *b) {
    int64_t bad = 0;
    for (int64_t i = 0; i < m; i++) {
        if (mask && !mask[i]) continue;
        float w0 = w[i], w1 = fmaf(a, s[i], w0);
        uint32_t b0 = f32_bits(w0);
        if (f32_bits(fmaf(-a, s[i], w1)) != b0) b->idx[b->n] = base + (int32_t)i, b->bits[b->n++] = b0;
        bad += nonfinite32(f32_bits(w1));
        w[i] = w1;
    }
    return bad;
}

static void unpatch_f32_portable(float *w, const float *s, const uint8_t *mask, float a, int64_t m) {
    for (int64_t i = 0; i < m; i++)
        if (!mask || mask[i]) w[i] = fmaf(-a, s[i], w[i]);
}

#if SFT_X86
SFT_TARGET_AVX2 static int64_t patch_f32_avx2(float *w, const float *s, const uint8_t *mask, float a,
                                              int64_t m, block_undo *b) {
    const __m256 va = _mm256_set1_ps(a);
    const __m256i expo = _mm256_set1_epi32(0x7f800000);
    int64_t bad = 0, i = 0;
    // 8 lanes: patch, check the inverse, count non-finite results
    for (; i + 8 <= m; i += 8) {
        __m256 w0 = _mm256_loadu_ps(w + i), sv = _mm256_loadu_ps(s + i);
        __m256 w1 = _mm256_fmadd_ps(va, sv, w0);
        __m256 back = _mm256_fnmadd_ps(va, sv, w1);
        __m256i same = _mm256_cmpeq_epi32(_mm256_castps_si256(back), _mm256_castps_si256(w0));
        if (mask) {
            __m256i mv = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(mask + i)));
            __m256i off_mask = _mm256_cmpeq_epi32(mv, _mm256_setzero_si256());
            w1 = _mm256_blendv_ps(w1, w0, _mm256_castsi256_ps(off_mask));
            same = _mm256_or_si256(same, off_mask);
        }
        unsigned ok = (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(same));
        for (unsigned miss = ~ok & 0xffu; miss; miss &= miss - 1) {
            int l = __builtin_ctz(miss);
            b->idx[b->n] = (int32_t)(i + l), b->bits[b->n++] = f32_bits(w[i + l]);
        }
        __m256i e = _mm256_and_si256(_mm256_castps_si256(w1), expo);
        bad += __builtin_popcount(
            (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(e, expo))));
        _mm256_storeu_ps(w + i, w1);
    }
    // tail
    return bad + patch_f32_portable(w + i, s + i, mask ? mask + i : NULL, a, m - i, (int32_t)i, b);
}

SFT_TARGET_AVX2 static void unpatch_f32_avx2(float *w, const float *s, const uint8_t *mask, float a,
                                             int64_t m) {
    const __m256 va = _mm256_set1_ps(a);
    int64_t i = 0;
    for (; i + 8 <= m; i += 8) {
        __m256 w1 = _mm256_loadu_ps(w + i);
        __m256 w0 = _mm256_fnmadd_ps(va, _mm256_loadu_ps(s + i), w1);
        if (mask) {
            __m256i mv = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(mask + i)));
            w0 =
                _mm256_blendv_ps(w0, w1, _mm256_castsi256_ps(_mm256_cmpeq_epi32(mv, _mm256_setzero_si256())));
        }
        _mm256_storeu_ps(w + i, w0);
    }
    unpatch_f32_portable(w + i, s + i, mask ? mask + i : NULL, a, m - i);
}

/* 16 lanes; the lanes to record are compressed in registers (no branch) and stored as a full vector. */
SFT_TARGET_AVX512 static int64_t patch_f32_avx512(float *w, const float *s, const uint8_t *mask, float a,
                                                  int64_t m, block_undo *b) {
    const __m512 va = _mm512_set1_ps(a);
    const __m512i expo = _mm512_set1_epi32(0x7f800000);
    const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    int64_t bad = 0, i = 0;
    for (; i + 16 <= m; i += 16) {
        __m512 w0 = _mm512_loadu_ps(w + i), sv = _mm512_loadu_ps(s + i);
        __m512 w1 = _mm512_fmadd_ps(va, sv, w0);
        __m512 back = _mm512_fnmadd_ps(va, sv, w1);
        __mmask16 on = 0xffff;
        if (mask) {
            __m512i mv = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(mask + i)));
            on = _mm512_test_epi32_mask(mv, mv);
            w1 = _mm512_mask_blend_ps(on, w0, w1);
        }
        __mmask16 miss =
            _mm512_mask_cmpneq_epi32_mask(on, _mm512_castps_si512(back), _mm512_castps_si512(w0));
        if (miss) {
            __m512i pos = _mm512_add_epi32(lanes, _mm512_set1_epi32((int)i));
            _mm512_storeu_si512((void *)(b->idx + b->n), _mm512_maskz_compress_epi32(miss, pos));
            _mm512_storeu_si512((void *)(b->bits + b->n),
                                _mm512_maskz_compress_epi32(miss, _mm512_castps_si512(w0)));
            b->n += __builtin_popcount((unsigned)miss);
        }
        __m512i e = _mm512_and_si512(_mm512_castps_si512(w1), expo);
        bad += __builtin_popcount((unsigned)_mm512_cmpeq_epi32_mask(e, expo));
        _mm512_storeu_ps(w + i, w1);
    }
    return bad + patch_f32_portable(w + i, s + i, mask ? mask + i : NULL, a, m - i, (int32_t)i, b);
}

SFT_TARGET_AVX512 static void unpatch_f32_avx512(float *w, const float *s, const uint8_t *mask, float a,
                                                 int64_t m) {
    const __m512 va = _mm512_set1_ps(a);
    int64_t i = 0;
    for (; i + 16 <= m; i += 16) {
        __m512 w1 = _mm512_loadu_ps(w + i);
        __m512 w0 = _mm512_fnmadd_ps(va, _mm512_loadu_ps(s + i), w1);
        if (mask) {
            __m512i mv = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(mask + i)));
            w0 = _mm512_mask_blend_ps(_mm512_test_epi32_mask(mv, mv), w1, w0);
        }
        _mm512_storeu_ps(w + i, w0);
    }
    unpatch_f32_portable(w + i, s + i, mask ? mask + i : NULL, a, m - i);
}
#endif

/* 16-bit weights: widen exactly, fmaf in float32, round to nearest even; same check as float32. */
static int64_t patch_16(uint16_t *w, int bf16, const float *s, const uint8_t *mask, float a, int64_t m,
                        block_undo *b) {
    int64_t bad = 0;
    for (int64_t i = 0; i < m; i++) {
        if (mask && !mask[i]) continue;
        uint16_t h0 = w[i];
        float w0 = bf16 ? rws_bf16_to_f32(h0) : rws_f16_to_f32(h0);
        float w1f = fmaf(a, s[i], w0);
        uint16_t h1 = bf16 ? rws_f32_to_bf16(w1f) : rws_f32_to_f16(w1f);
        float w1 = bf16 ? rws_bf16_to_f32(h1) : rws_f16_to_f32(h1);
        float backf = fmaf(-a, s[i], w1);
        uint16_t back = bf16 ? rws_f32_to_bf16(backf) : rws_f32_to_f16(backf);
        if (back != h0) b->idx[b->n] = (int32_t)i, b->bits[b->n++] = h0;
        bad += !isfinite(w1);
        w[i] = h1;
    }
    return bad;
}

static void unpatch_16(uint16_t *w, int bf16, const float *s, const uint8_t *mask, float a, int64_t m) {
    for (int64_t i = 0; i < m; i++) {
        if (mask && !mask[i]) continue;
        float w1 = bf16 ? rws_bf16_to_f32(w[i]) : rws_f16_to_f32(w[i]);
        float w0 = fmaf(-a, s[i], w1);
        w[i] = bf16 ? rws_f32_to_bf16(w0) : rws_f32_to_f16(w0);
    }
}

/* One block [i0, i1) of rws_patch (b != NULL: its record, from b->n = 0) or rws_unpatch (b == NULL). */
static int64_t patch_block(void *w, int wtype, const uint8_t *mask, const rws_source *src, float a,
                           int64_t i0, int64_t i1, float *tile, int64_t *g, float *lv, block_undo *b) {
    const float *s;
    if (src->dense) {
        s = src->dense + i0;
    } else {
        decode_block(tile, src, i0, i1, g, lv);
        s = tile;
    }
    const uint8_t *mk = mask ? mask + i0 : NULL;
    int64_t m = i1 - i0;
    if (b) b->n = 0;
    if (wtype == RWS_F32) {
        float *wf = (float *)w + i0;
#if SFT_X86
        if (sft_simd_path >= SFT_SIMD_AVX512) {
            if (!b) return unpatch_f32_avx512(wf, s, mk, a, m), 0;
            return patch_f32_avx512(wf, s, mk, a, m, b);
        }
        if (sft_simd_path >= SFT_SIMD_AVX2) {
            if (!b) return unpatch_f32_avx2(wf, s, mk, a, m), 0;
            return patch_f32_avx2(wf, s, mk, a, m, b);
        }
#endif
        if (!b) return unpatch_f32_portable(wf, s, mk, a, m), 0;
        return patch_f32_portable(wf, s, mk, a, m, 0, b);
    }
    uint16_t *wh = (uint16_t *)w + i0;
    int bf16 = wtype == RWS_BF16;
    if (!b) return unpatch_16(wh, bf16, s, mk, a, m), 0;
    return patch_16(wh, bf16, s, mk, a, m, b);
}

/* Writes a block's recorded bits back into w (block at offset i0). */
static void block_undo_write(void *w, int wtype, int64_t i0, const block_undo *b) {
    for (int64_t k = 0; k < b->n; k++) {
        if (wtype == RWS_F32)
            ((uint32_t *)w)[i0 + b->idx[k]] = b->bits[k];
        else
            ((uint16_t *)w)[i0 + b->idx[k]] = (uint16_t)b->bits[k];
    }
}

/* Runs patch_block over the tensor, one contiguous share of blocks per thread
 * (lists: one undo list per thread, or NULL to unpatch). Returns the non-finite count. */
static int64_t patch_all(void *w, int wtype, const uint8_t *mask, const rws_source *src, float a, int64_t n,
                         undo_list *lists, int nth) {
    int64_t nblocks = sft_ceil_div(n, RWS_BLOCK), bad = 0;
#pragma omp parallel num_threads(nth) reduction(+ : bad)
    {
        float tile[RWS_BLOCK], lv[256];
        int64_t t = sft_thread_num(), nt = sft_team_size(), g = -1;
        undo_list *u = lists ? &lists[t] : NULL;
        block_undo *bu = NULL;
        if (u) {
            u->start = nblocks * t / nt * RWS_BLOCK, u->stop = INT64_MAX;
            bu = (block_undo *)malloc(sizeof(block_undo));
            if (bu == NULL) u->stop = u->start;  // nothing patched, nothing to undo
        }
        for (int64_t k = nblocks * t / nt; k < nblocks * (t + 1) / nt && (!u || u->stop == INT64_MAX); k++) {
            int64_t i0 = k * RWS_BLOCK, i1 = SFT_MIN(n, i0 + RWS_BLOCK);
            bad += patch_block(w, wtype, mask, src, a, i0, i1, tile, &g, lv, bu);
            if (u && undo_append(u, i0, bu) != 0) {
                // out of memory: this block comes off at once, and the thread stops here
                patch_block(w, wtype, mask, src, a, i0, i1, tile, &g, lv, NULL);
                block_undo_write(w, wtype, i0, bu);
                u->stop = i0;
            }
        }
        free(bu);
    }
    return bad;
}

/* Writes recorded bits back into w. */
static void undo_write(void *w, int wtype, const int64_t *index, const uint32_t *bits, int64_t count) {
    if (wtype == RWS_F32) {
        uint32_t *wu = (uint32_t *)w;
        for (int64_t k = 0; k < count; k++) wu[index[k]] = bits[k];
    } else {
        uint16_t *wh = (uint16_t *)w;
        for (int64_t k = 0; k < count; k++) wh[index[k]] = (uint16_t)bits[k];
    }
}

int rws_patch(void *w, int wtype, const uint8_t *mask, const rws_source *src, float alpha, int64_t n,
              rws_undo *undo, int64_t *nonfinite) {
    int nth = rws_threads(n);
    undo_list *lists = (undo_list *)calloc((size_t)nth, sizeof(undo_list));
    if (lists == NULL) return -1;
    // a thread the team does not get keeps an empty, complete share
    for (int t = 0; t < nth; t++) lists[t].start = n, lists[t].stop = INT64_MAX;
    *nonfinite = patch_all(w, wtype, mask, src, alpha, n, lists, nth);
    // concatenate the per-thread lists in thread order (= index order)
    int64_t total = 0;
    int failed = 0;
    for (int t = 0; t < nth; t++) total += lists[t].count, failed |= lists[t].stop != INT64_MAX;
    undo->count = 0;
    undo->index = (int64_t *)malloc((size_t)SFT_MAX(total, 1) * sizeof(int64_t));
    undo->bits = (uint32_t *)malloc((size_t)SFT_MAX(total, 1) * sizeof(uint32_t));
    if (undo->index == NULL || undo->bits == NULL) failed = 1;
    for (int t = 0; t < nth && !failed; t++) {
        if (lists[t].count == 0) continue;  // an empty list may hold NULL buffers: memcpy must not see them
        memcpy(undo->index + undo->count, lists[t].index, (size_t)lists[t].count * sizeof(int64_t));
        memcpy(undo->bits + undo->count, lists[t].bits, (size_t)lists[t].count * sizeof(uint32_t));
        undo->count += lists[t].count;
    }
    if (failed) {
        // out of memory: every thread patched [start, stop) of its share with a complete record; undo those
        for (int t = 0; t < nth; t++) {
            float tile[RWS_BLOCK], lv[256];
            int64_t g = -1, end = SFT_MIN(n, lists[t].stop), i0 = lists[t].start;
            if (lists[t].stop == INT64_MAX) end = t + 1 < nth ? lists[t + 1].start : n;
            for (; i0 < end; i0 = (i0 / RWS_BLOCK + 1) * RWS_BLOCK)
                patch_block(w, wtype, mask, src, alpha, i0, SFT_MIN(end, (i0 / RWS_BLOCK + 1) * RWS_BLOCK),
                            tile, &g, lv, NULL);
            undo_write(w, wtype, lists[t].index, lists[t].bits, lists[t].count);
        }
    }
    for (int t = 0; t < nth; t++) free(lists[t].index), free(lists[t].bits);
    free(lists);
    if (failed) {
        rws_undo_free(undo);
        return -1;
    }
    return 0;
}

int rws_unpatch(void *w, int wtype, const uint8_t *mask, const rws_source *src, float alpha, int64_t n,
                const int64_t *index, const uint32_t *bits, int64_t count) {
    patch_all(w, wtype, mask, src, alpha, n, NULL, rws_threads(n));
    undo_write(w, wtype, index, bits, count);
    return 0;
}
