/* rws.h: Robust Weight Signatures (Ruan et al., ICML 2023): extraction, packed quantization, and
 * in-place patching of weights with an exact undo.
 *
 * Extraction, per tensor (flattened): r = robust - pre, d = clean - pre,
 *   sig = r - (d.r / d.d) d   (sig = r when d.d = 0), dot products accumulated in double.
 *
 * Quantization: the tensor is cut into groups of `group` consecutive elements (a row per group for
 * "channel", the whole tensor for "tensor"); every group has two float32 parameters p[0], p[1] from
 * which a table of 2^bits levels is built (rws_levels); the codes (indices into that table) are packed
 * LSB first, bits in {1, 2, 4, 8}, ceil(n * bits / 8) bytes. Schemes:
 *   RWS_LINEAR: level q = fmaf(q, p[1], p[0]), p[0] = min, p[1] = (max - min) / (2^bits - 1).
 *   RWS_LOG:    a sign bit (the top bit of the code) and a magnitude code k. bits = 1: one magnitude
 *               p[1] = mean |x| (the code is the sign). bits >= 2: k = 0 is 0; L = 2^(bits-1) - 1
 *               magnitudes: L = 1: p[1] = mean |x| over the nonzero entries; L >= 2: geometric from
 *               p[0] = max(min nonzero |x|, max|x| * 2^-24) to p[1] = max |x|.
 *
 * Patching: w <- fmaf(alpha, s, w) per element (single rounding; float16/bfloat16 weights are widened
 * to float32 exactly, patched, and rounded to nearest even). The undo: fmaf(-alpha, s, w_patched)
 * gives back the original bits except where the first rounding crossed a binade or hit a tie; the
 * patch kernel checks every element and records exactly those (index, original bits) pairs, so the
 * unpatch kernel restores every bit. Both kernels compute s identically (dense, or decoded from the
 * packed codes tile by tile, never a full float copy), on every SIMD path. */
#ifndef SPARSEFT_RWS_H
#define SPARSEFT_RWS_H

#include <stdint.h>

/* weight storage types */
#define RWS_F32 0
#define RWS_F16 1
#define RWS_BF16 2

/* quantization schemes */
#define RWS_LINEAR 0
#define RWS_LOG 1

/* Where a patch's values come from: dense float32, or packed codes + per-group parameters. */
typedef struct {
    const float *dense;   /* (n) values, or NULL for a packed source */
    const uint8_t *codes; /* (ceil(n * bits / 8)) packed codes, LSB first */
    const float *params;  /* (ceil(n / group), 2) per-group parameters */
    int bits;             /* 1, 2, 4 or 8 */
    int scheme;           /* RWS_LINEAR or RWS_LOG */
    int64_t group;        /* elements per group (> 0) */
} rws_source;

/* The undo record of one patch: positions whose bits fmaf(-alpha, s, w') does not give back,
 * and their original bits (float32 bits, or 16-bit patterns in the low half), ascending index. */
typedef struct {
    int64_t *index; /* (count) malloc'd by rws_patch; free with rws_undo_free */
    uint32_t *bits; /* (count) */
    int64_t count;
} rws_undo;

void rws_undo_free(rws_undo *u);

/* sig (n) = r - (d.r / d.d) d with r = robust - pre, d = clean - pre; dots[0] = d.r, dots[1] = d.d.
 * Sums in double over fixed chunks added in order (independent of the thread count). Returns 0. */
int rws_extract(float *sig, double *dots, const float *pre, const float *clean, const float *robust,
                int64_t n);
/* Plain loop reference of rws_extract. */
void rws_extract_naive(float *sig, double *dots, const float *pre, const float *clean, const float *robust,
                       int64_t n);

/* The 2^bits levels of a group from its parameters p (2). */
void rws_levels(float *levels, const float *p, int bits, int scheme);

/* codes (ceil(n * bits / 8)), params (ceil(n / group), 2) from x (n), finite values; stats (3) = the sum of
 * squared errors of the levels chosen, their largest absolute error, and the sum of x^2 (double).
 * Returns 0, -1 when memory runs out, or -2 when a parameter is not finite in float32 (range overflow). */
int rws_quantize(uint8_t *codes, float *params, double *stats, const float *x, int64_t n, int64_t group,
                 int bits, int scheme);

/* out (n) = the values of a packed source. Returns 0. */
int rws_dequantize(float *out, const rws_source *src, int64_t n);

/* w (n, of type wtype) += alpha * s in place, where mask (n, 0/1; NULL = everywhere) is set; fills
 * undo (malloc'd) and *nonfinite (how many patched values are NaN or infinite).
 * Returns 0, or -1 when memory runs out (w is then restored). */
int rws_patch(void *w, int wtype, const uint8_t *mask, const rws_source *src, float alpha, int64_t n,
              rws_undo *undo, int64_t *nonfinite);

/* Inverse of rws_patch with the same w type, mask, source and alpha, and its undo record:
 * w (n) = fmaf(-alpha, s, w) where mask is set, then the recorded bits. Returns 0. */
int rws_unpatch(void *w, int wtype, const uint8_t *mask, const rws_source *src, float alpha, int64_t n,
                const int64_t *index, const uint32_t *bits, int64_t count);

/* Rounding helpers shared with the tests' expectations: float32 <-> float16 / bfloat16 bits,
 * round to nearest even, NaN kept NaN. */
uint16_t rws_f32_to_f16(float f);
float rws_f16_to_f32(uint16_t h);
uint16_t rws_f32_to_bf16(float f);
float rws_bf16_to_f32(uint16_t h);

#endif
