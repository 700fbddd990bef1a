/* nn_vec.h: 8-lane float vectors (GCC/Clang vector extensions) for the nn kernels.
 * A kernel body is written once as an always-inline function on v8f and instantiated twice by
 * NN_INSTANTIATE: a portable copy (the compiler lowers v8f to the baseline ISA, SSE2 on x86-64)
 * and an AVX2/FMA copy (target attribute), chosen at run time from sft_simd_path. Both copies run
 * the same operations in the same order. Include after common.h. */
#ifndef SPARSEFT_NN_VEC_H
#define SPARSEFT_NN_VEC_H

#include <string.h>

#include "common.h"

/* v8f values only cross always-inline functions: no ABI is involved */
#pragma GCC diagnostic ignored "-Wpsabi"

typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));
/* unaligned, aliasing view of 8 floats in an array */
typedef float v8fu __attribute__((vector_size(32), aligned(4), may_alias));

#define NN_INLINE static inline __attribute__((always_inline))

NN_INLINE v8f v8_load(const float *p) {
    return *(const v8fu *)p;
}
NN_INLINE void v8_store(float *p, v8f v) {
    *(v8fu *)p = v;
}
/* the first n (< 8) floats of p, zeros after */
NN_INLINE v8f v8_load_n(const float *p, int64_t n) {
    v8f v = {0, 0, 0, 0, 0, 0, 0, 0};
    memcpy(&v, p, (size_t)n * sizeof(float));
    return v;
}
NN_INLINE void v8_store_n(float *p, v8f v, int64_t n) {
    memcpy(p, &v, (size_t)n * sizeof(float));
}
NN_INLINE v8f v8_set(float a) {
    return (v8f){a, a, a, a, a, a, a, a};
}
/* m ? a : b lane by lane (m from a comparison: all ones or zero) */
NN_INLINE v8f v8_select(v8i m, v8f a, v8f b) {
    return (v8f)(((v8i)a & m) | ((v8i)b & ~m));
}
NN_INLINE v8f v8_max(v8f a, v8f b) {
    return v8_select(a > b, a, b);
}
/* lane sum in a fixed order */
NN_INLINE float v8_hsum(v8f v) {
    return ((v[0] + v[4]) + (v[2] + v[6])) + ((v[1] + v[5]) + (v[3] + v[7]));
}
NN_INLINE float v8_hmax(v8f v) {
    float m = v[0];
    for (int i = 1; i < 8; i++) m = v[i] > m ? v[i] : m;
    return m;
}

/* correctly rounded square root lane by lane (two SSE halves on x86-64, whose baseline has
 * them; the AVX2 copies get the same instruction semantics), sqrtf per lane elsewhere */
NN_INLINE v8f v8_sqrt(v8f x) {
#if SFT_X86
    typedef float v4f __attribute__((vector_size(16)));
    v4f lo = {x[0], x[1], x[2], x[3]}, hi = {x[4], x[5], x[6], x[7]};
    lo = __builtin_ia32_sqrtps(lo), hi = __builtin_ia32_sqrtps(hi);
    return (v8f){lo[0], lo[1], lo[2], lo[3], hi[0], hi[1], hi[2], hi[3]};
#else
    v8f y;
    for (int l = 0; l < 8; l++) y[l] = sqrtf(x[l]);
    return y;
#endif
}

/* exp(x) to about 2 ulp for x in [-87.3, 88.7] (Cephes expf: 2^n p(r), n = round(x log2 e),
 * r = x - n ln 2 in two parts, degree-6 polynomial); 0 below -87.3 and for -inf, +inf above
 * 88.7, NaN stays NaN. */
NN_INLINE v8f v8_exp(v8f x) {
    const v8f lo = v8_set(-87.3f), hi = v8_set(88.7f);
    v8i under = x<lo, over = x> hi, nan = x != x;
    v8f xc = v8_select(under, lo, v8_select(over, hi, x));
    // round to nearest through the 1.5 * 2^23 trick: the low bits of t hold n
    v8f t = xc * v8_set(1.44269504088896341f) + v8_set(12582912.0f);
    v8i ni = (v8i)t - (v8i){0x4B400000, 0x4B400000, 0x4B400000, 0x4B400000,
                            0x4B400000, 0x4B400000, 0x4B400000, 0x4B400000};
    v8f n = t - v8_set(12582912.0f);
    v8f r = xc - n * v8_set(0.693359375f);
    r = r - n * v8_set(-2.12194440e-4f);
    v8f p = v8_set(1.9875691500e-4f);
    p = p * r + v8_set(1.3981999507e-3f);
    p = p * r + v8_set(8.3334519073e-3f);
    p = p * r + v8_set(4.1665795894e-2f);
    p = p * r + v8_set(1.6666665459e-1f);
    p = p * r + v8_set(5.0000001201e-1f);
    p = p * (r * r) + r + v8_set(1.0f);
    // 2^n as 2^(n/2) 2^(n - n/2): n reaches 128, past the largest exponent of one float
    v8i n1 = ni >> 1, n2 = ni - n1;
    v8f s1 = (v8f)((n1 + 127) << 23), s2 = (v8f)((n2 + 127) << 23);
    v8f y = p * s1 * s2;
    y = (v8f)((v8i)y & ~under);
    y = v8_select(over, v8_set(__builtin_inff()), y);
    return v8_select(nan, x, y);
}

/* Defines name##_portable and name##_avx2 (same parameters) around the always-inline
 * name##_body, and name##_run choosing one from the SIMD path. `params` is the parenthesised
 * parameter list, `args` the matching argument list. */
#define NN_INSTANTIATE(name, params, args)             \
    static void name##_portable params {               \
        name##_body args;                              \
    }                                                  \
    SFT_TARGET_AVX2 static void name##_avx2 params {   \
        name##_body args;                              \
    }                                                  \
    static void name##_run params {                    \
        if (SFT_X86 && sft_simd_path >= SFT_SIMD_AVX2) \
            name##_avx2 args;                          \
        else                                           \
            name##_portable args;                      \
    }

#endif
