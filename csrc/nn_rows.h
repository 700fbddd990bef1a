/* nn_rows.h: the row kernels (LayerNorm, RMSNorm, GELU, SwiGLU, RoPE, AdamW) written once and
 * compiled once per SIMD path: nn.c includes this file three times, each time defining
 *   NN_SFX(name)      the path's suffix (name##_portable, name##_avx2, name##_avx512)
 *   NN_TGT            the function target attribute (empty for portable)
 *   NN_VL             lanes per vector (8, or 16 on AVX-512)
 *   NN_FMA(a, b, c)   a * b + c, fused where the path has FMA
 *   NN_SQRT(v)        lane-wise square root
 *   NN_STREAM(p, v)   non-temporal store of a vector to p (aligned to NN_VL floats), or a plain store
 *   NN_FENCE()        orders the streaming stores before the kernel returns (sfence), or nothing
 * Every kernel walks its rows or elements through nn_vrange: full vectors, the short pieces (the
 * head before the first aligned output vector when streaming, the tail) through zero-padded
 * copies on the stack. The file has no include guard on purpose. */

#define F(name) NN_SFX(name)
#define VF F(vf)
#define VI F(vi)
#define VFU F(vfu)
#define NN_TI static inline __attribute__((always_inline)) NN_TGT
#define VLB (NN_VL * 4) /* bytes per vector */

typedef float VF __attribute__((vector_size(VLB)));
typedef int32_t VI __attribute__((vector_size(VLB)));
typedef float VFU __attribute__((vector_size(VLB), aligned(4), may_alias));

NN_TI VF F(ld)(const float *p) {
    return *(const VFU *)p;
}
NN_TI void F(st)(float *p, VF v) {
    *(VFU *)p = v;
}
NN_TI void F(put)(float *p, VF v, int nt) {
    if (nt)
        NN_STREAM(p, v);
    else
        F(st)(p, v);
}
NN_TI VF F(set)(float a) {
#if NN_VL == 16
    return (VF){a, a, a, a, a, a, a, a, a, a, a, a, a, a, a, a};
#elif NN_VL == 8
    return (VF){a, a, a, a, a, a, a, a};
#else
    return (VF){a, a, a, a};
#endif
}
/* m ? a : b lane by lane */
NN_TI VF F(sel)(VI m, VF a, VF b) {
    return (VF)(((VI)a & m) | ((VI)b & ~m));
}
/* lane sum in a fixed order (halves folded) */
NN_TI float F(hsum)(VF v) {
    float s[NN_VL];
    memcpy(s, &v, sizeof s);
    for (int w = NN_VL / 2; w >= 1; w /= 2)
        for (int i = 0; i < w; i++) s[i] += s[i + w];
    return s[0];
}

/* lane-wise min(hi, max(lo, x)); NaN stays NaN */
NN_TI VF F(clamp)(VF x, float lo, float hi) {
#ifdef NN_MAX
    return NN_MIN(F(set)(hi), NN_MAX(F(set)(lo), x));
#else
    return F(sel)(x > F(set)(hi), F(set)(hi), F(sel)(x < F(set)(lo), F(set)(lo), x));
#endif
}

/* exp(x) to about 2 ulp for x in [-87.3, 88.7] (Cephes expf: 2^n p(r), n = round(x log2 e),
 * r = x - n ln 2 in two parts, degree-6 polynomial); 0 below -87.3 and for -inf, +inf above
 * 88.7, NaN stays NaN (it propagates through every step). */
NN_TI VF F(exp)(VF x) {
    VI under = x<F(set)(-87.3f), over = x> F(set)(88.7f);
    VF xc = F(clamp)(x, -87.3f, 88.7f);
    // round to nearest through the 1.5 * 2^23 trick: the low bits of t hold n
    VF t = NN_FMA(xc, F(set)(1.44269504088896341f), F(set)(12582912.0f));
    VI ni = (VI)t - (VI)F(set)(12582912.0f);
    VF n = t - F(set)(12582912.0f);
    VF r = NN_FMA(n, F(set)(-0.693359375f), xc);
    r = NN_FMA(n, F(set)(2.12194440e-4f), r);
    VF p = F(set)(1.9875691500e-4f);
    p = NN_FMA(p, r, F(set)(1.3981999507e-3f));
    p = NN_FMA(p, r, F(set)(8.3334519073e-3f));
    p = NN_FMA(p, r, F(set)(4.1665795894e-2f));
    p = NN_FMA(p, r, F(set)(1.6666665459e-1f));
    p = NN_FMA(p, r, F(set)(5.0000001201e-1f));
    p = NN_FMA(p, r * r, r + F(set)(1.0f));
    // 2^n as 2^(n/2) 2^(n - n/2): n reaches 128, past the largest exponent of one float
    VI n1 = ni >> 1, n2 = ni - n1;
    VF y = p * (VF)((n1 + 127) << 23) * (VF)((n2 + 127) << 23);
    y = (VF)((VI)y & ~under);
    return F(sel)(over, F(set)(__builtin_inff()), y);
}

NN_TI VF F(sqrt)(VF v) {
#ifdef NN_SQRT
    return NN_SQRT(v);
#else
    for (int i = 0; i < NN_VL; i++) v[i] = sqrtf(v[i]);
    return v;
#endif
}

/* 1 / (1 + exp(-z)): 0 for z below -88.7 (and -inf), 1 from about 17, NaN stays NaN */
NN_TI VF F(sigmoid)(VF z) {
    return F(set)(1.0f) / (F(set)(1.0f) + F(exp)(-z));
}

/* ---- the elementwise steps ---------------------------------------------------------------------- */

#ifndef NN_ROWS_KINDS
#define NN_ROWS_KINDS
enum {
    NK_LN_FWD,   /* o0 = (i0 - k0) k1 i1 + i2              x, w, b; mean, rstd */
    NK_RMS_FWD,  /* o0 = i0 k0 i1                          x, w; rstd */
    NK_LN_BWD,   /* o0 = k1 (i0 i2 - k2 - (i1 - k0) k1 k3)  dy, x, w; mean, rstd, m1, m2 */
    NK_RMS_BWD,  /* o0 = k0 (i0 i2 - i1 k0 k1)             dy, x, w; rstd, m */
    NK_GELU_FWD, /* o0 = gelu(i0) */
    NK_GELU_BWD, /* o0 = i0 gelu'(i1)                      dy, x */
    NK_SWI_FWD,  /* o0 = silu(i0) i1                       gate, up */
    NK_SWI_BWD,  /* o0, o1 = dgate, dup                    dy, gate, up */
    NK_ROPE,     /* o0 = i0 i2 - i1 k0 i3, o1 = i1 i2 + i0 k0 i3   x1, x2, cos, sin; sign */
    NK_ADAMW     /* o0, o1, o2 = p, m, v                   p, m, v, g; k as in adamw_step */
};
#endif

#define GELU_K 0.7978845608028654f /* sqrt(2 / pi) */
#define GELU_C 0.044715f

/* 0.5 (1 + tanh(u)) = sigmoid(2u), so gelu(x) = x sigmoid(2u) with u = sqrt(2/pi) (x + 0.044715 x^3):
 * one exp and one division per lane. u is taken at x clamped to [-15, 15], where sigmoid(2u) is
 * already exactly 0 or 1 in float32 (and x^3 cannot overflow into 0 * inf in the derivative). */
NN_TI VF F(gelu_sig)(VF x, VF *xc_out) {
    VF xc = F(clamp)(x, -15.0f, 15.0f);
    // -2u = xc (-2K - 2KC xc^2)
    VF m2u = xc * NN_FMA(xc * xc, F(set)(-2.0f * GELU_K * GELU_C), F(set)(-2.0f * GELU_K));
    *xc_out = xc;
    return F(set)(1.0f) / (F(set)(1.0f) + F(exp)(m2u));
}

/* One full vector of kind at element j of every pointer the kind uses. */
NN_TI void F(vstep)(int kind, float *o0, float *o1, float *o2, const float *i0, const float *i1,
                    const float *i2, const float *i3, const float *k, int64_t j, int nt) {
    const VF one = F(set)(1.0f);
    switch (kind) {
        case NK_LN_FWD: {
            VF xh = (F(ld)(i0 + j) - F(set)(k[0])) * F(set)(k[1]);
            F(put)(o0 + j, NN_FMA(xh, F(ld)(i1 + j), F(ld)(i2 + j)), nt);
            break;
        }
        case NK_RMS_FWD:
            F(put)(o0 + j, F(ld)(i0 + j) * F(set)(k[0]) * F(ld)(i1 + j), nt);
            break;
        case NK_LN_BWD: {
            VF rs = F(set)(k[1]);
            VF xh = (F(ld)(i1 + j) - F(set)(k[0])) * rs;
            VF gw = F(ld)(i0 + j) * F(ld)(i2 + j);
            F(put)(o0 + j, rs * (gw - F(set)(k[2]) - xh * F(set)(k[3])), nt);
            break;
        }
        case NK_RMS_BWD: {
            VF rs = F(set)(k[0]);
            VF gw = F(ld)(i0 + j) * F(ld)(i2 + j);
            F(put)(o0 + j, rs * (gw - F(ld)(i1 + j) * rs * F(set)(k[1])), nt);
            break;
        }
        case NK_GELU_FWD: {
            VF x = F(ld)(i0 + j), xc;
            F(put)(o0 + j, x * F(gelu_sig)(x, &xc), nt);
            break;
        }
        case NK_GELU_BWD: {
            // d/dx x s(2u) = s + 2 x s (1 - s) du/dx
            VF x = F(ld)(i1 + j), xc;
            VF s = F(gelu_sig)(x, &xc);
            VF du = F(set)(GELU_K) * NN_FMA(F(set)(3.0f * GELU_C) * xc, xc, one);
            VF d = NN_FMA(F(set)(2.0f) * xc * s * (one - s), du, s);
            F(put)(o0 + j, F(ld)(i0 + j) * d, nt);
            break;
        }
        case NK_SWI_FWD: {
            VF g = F(ld)(i0 + j);
            F(put)(o0 + j, g * F(sigmoid)(g) * F(ld)(i1 + j), nt);
            break;
        }
        case NK_SWI_BWD: {
            VF dy = F(ld)(i0 + j), g = F(ld)(i1 + j), u = F(ld)(i2 + j);
            VF s = F(sigmoid)(g);
            F(put)(o0 + j, dy * u * s * NN_FMA(g, one - s, one), nt);
            F(put)(o1 + j, dy * g * s, nt);
            break;
        }
        case NK_ROPE: {
            VF a = F(ld)(i0 + j), b = F(ld)(i1 + j), c = F(ld)(i2 + j), s = F(set)(k[0]) * F(ld)(i3 + j);
            F(put)(o0 + j, a * c - b * s, nt);
            F(put)(o1 + j, NN_FMA(b, c, a * s), nt);
            break;
        }
        default: {
            // AdamW in torch's order, without fused multiply-adds (k: decay, b1, b2, step_size,
            // sqrt_bc2, eps); reads every input before writing (p, m, v are updated in place)
            VF g = F(ld)(i3 + j), m = F(ld)(i1 + j), v = F(ld)(i2 + j), p = F(ld)(i0 + j);
            VF mi = m + F(set)(1.0f - k[1]) * (g - m);
            VF vi = F(set)(k[2]) * v + F(set)(1.0f - k[2]) * g * g;
            VF pi = p * F(set)(k[0]);
            VF den = F(sqrt)(vi) / F(set)(k[4]) + F(set)(k[5]);
            F(put)(o0 + j, pi - F(set)(k[3]) * (mi / den), nt);
            F(put)(o1 + j, mi, nt);
            F(put)(o2 + j, vi, nt);
            break;
        }
    }
}

/* n (< NN_VL) elements from j through zero-padded stack copies */
NN_TI void F(vpart)(int kind, float *o0, float *o1, float *o2, const float *i0, const float *i1,
                    const float *i2, const float *i3, const float *k, int64_t j, int64_t n) {
    float in[4][NN_VL], out[3][NN_VL];
    const float *ip[4] = {i0, i1, i2, i3};
    float *op[3] = {o0, o1, o2};
    size_t nb = (size_t)n * sizeof(float);
    memset(in, 0, sizeof in);
    for (int q = 0; q < 4; q++)
        if (ip[q] != NULL) memcpy(in[q], ip[q] + j, nb);
    F(vstep)(kind, out[0], out[1], out[2], in[0], in[1], in[2], in[3], k, 0, 0);
    for (int q = 0; q < 3; q++)
        if (op[q] != NULL) memcpy(op[q] + j, out[q], nb);
}

/* elements [0, n) of kind; nt: streaming stores, used when every output is misaligned alike
 * (the head up to the first aligned vector goes through vpart) */
NN_TI void F(vrange)(int kind, float *o0, float *o1, float *o2, const float *i0, const float *i1,
                     const float *i2, const float *i3, const float *k, int64_t n, int nt) {
    uintptr_t a0 = (uintptr_t)o0 % VLB;
    if (nt && (a0 % 4 != 0 || (o1 != NULL && (uintptr_t)o1 % VLB != a0) ||
               (o2 != NULL && (uintptr_t)o2 % VLB != a0)))
        nt = 0;
    int64_t j = 0;
    if (nt && a0 != 0) {
        j = SFT_MIN(n, (int64_t)((VLB - a0) / 4));
        F(vpart)(kind, o0, o1, o2, i0, i1, i2, i3, k, 0, j);
    }
    if (nt)
        for (; j + NN_VL <= n; j += NN_VL) F(vstep)(kind, o0, o1, o2, i0, i1, i2, i3, k, j, 1);
    else
        for (; j + NN_VL <= n; j += NN_VL) F(vstep)(kind, o0, o1, o2, i0, i1, i2, i3, k, j, 0);
    if (j < n) F(vpart)(kind, o0, o1, o2, i0, i1, i2, i3, k, j, n - j);
}

/* ---- row statistics ------------------------------------------------------------------------------ */

/* sum of x[0:n] */
NN_TI float F(row_sum)(const float *x, int64_t n) {
    VF a = F(set)(0.0f), b = F(set)(0.0f);
    int64_t j = 0;
    for (; j + 2 * NN_VL <= n; j += 2 * NN_VL) a += F(ld)(x + j), b += F(ld)(x + j + NN_VL);
    for (; j + NN_VL <= n; j += NN_VL) a += F(ld)(x + j);
    if (j < n) {
        float t[NN_VL] = {0};
        memcpy(t, x + j, (size_t)(n - j) * sizeof(float));
        b += F(ld)(t);
    }
    return F(hsum)(a + b);
}

/* sum of (x - c)^2; x is in cache (the row was just summed) */
NN_TI float F(row_sumsq_c)(const float *x, float c, int64_t n) {
    VF a = F(set)(0.0f), b = F(set)(0.0f), cv = F(set)(c);
    int64_t j = 0;
    for (; j + 2 * NN_VL <= n; j += 2 * NN_VL) {
        VF d0 = F(ld)(x + j) - cv, d1 = F(ld)(x + j + NN_VL) - cv;
        a = NN_FMA(d0, d0, a), b = NN_FMA(d1, d1, b);
    }
    for (; j + NN_VL <= n; j += NN_VL) {
        VF d = F(ld)(x + j) - cv;
        a = NN_FMA(d, d, a);
    }
    if (j < n) {
        // pad with c: the padding lanes add 0
        float t[NN_VL];
        for (int q = 0; q < NN_VL; q++) t[q] = c;
        memcpy(t, x + j, (size_t)(n - j) * sizeof(float));
        VF d = F(ld)(t) - cv;
        b = NN_FMA(d, d, b);
    }
    return F(hsum)(a + b);
}

/* ---- the kernels on a block of rows / elements --------------------------------------------------- */

NN_TGT static void F(ln_fwd)(float *y, float *mean, float *rstd, const float *x, const float *w,
                             const float *b, int64_t r0, int64_t r1, int64_t C, float eps, int nt) {
    // per row: the sum from memory, the centred squares and the output from L1
    for (int64_t i = r0; i < r1; i++) {
        const float *xi = x + i * C;
        float mu = F(row_sum)(xi, C) / (float)C;
        float var = F(row_sumsq_c)(xi, mu, C) / (float)C;
        float k[2] = {mu, 1.0f / sqrtf(var + eps)};
        mean[i] = k[0], rstd[i] = k[1];
        F(vrange)(NK_LN_FWD, y + i * C, NULL, NULL, xi, w, b, NULL, k, C, nt);
    }
    if (nt) NN_FENCE();
}

NN_TGT static void F(rms_fwd)(float *y, float *rstd, const float *x, const float *w, int64_t r0, int64_t r1,
                              int64_t C, float eps, int nt) {
    for (int64_t i = r0; i < r1; i++) {
        const float *xi = x + i * C;
        float k[1] = {1.0f / sqrtf(F(row_sumsq_c)(xi, 0.0f, C) / (float)C + eps)};
        rstd[i] = k[0];
        F(vrange)(NK_RMS_FWD, y + i * C, NULL, NULL, xi, w, NULL, NULL, k, C, nt);
    }
    if (nt) NN_FENCE();
}

/* rows r0..r1: dx, and this block's partial dw, db (overwritten; db NULL for RMSNorm, mean NULL too) */
NN_TGT static void F(norm_bwd)(float *dx, float *pdw, float *pdb, const float *dy, const float *x,
                               const float *w, const float *mean, const float *rstd, int64_t r0, int64_t r1,
                               int64_t C, int nt) {
    memset(pdw, 0, (size_t)C * sizeof(float));
    if (pdb != NULL) memset(pdb, 0, (size_t)C * sizeof(float));
    int64_t Cv = C / NN_VL * NN_VL;
    for (int64_t i = r0; i < r1; i++) {
        const float *xi = x + i * C, *gi = dy + i * C;
        float mu = mean != NULL ? mean[i] : 0.0f, rs = rstd[i];
        VF muv = F(set)(mu), rsv = F(set)(rs);
        // pass 1 from memory: sums of g w and g w xhat; dw += g xhat, db += g
        VF s1 = F(set)(0.0f), s2 = F(set)(0.0f);
        int64_t j = 0;
        for (; j < Cv; j += NN_VL) {
            VF g = F(ld)(gi + j), xh = (F(ld)(xi + j) - muv) * rsv, gw = g * F(ld)(w + j);
            s1 += gw, s2 = NN_FMA(gw, xh, s2);
            F(st)(pdw + j, NN_FMA(g, xh, F(ld)(pdw + j)));
            if (pdb != NULL) F(st)(pdb + j, F(ld)(pdb + j) + g);
        }
        if (j < C) {
            // the tail through zero-padded copies (g = 0 in the padding adds nothing)
            float tg[NN_VL] = {0}, tx[NN_VL] = {0}, tw[NN_VL] = {0}, tdw[NN_VL] = {0}, tdb[NN_VL] = {0};
            size_t nb = (size_t)(C - j) * sizeof(float);
            memcpy(tg, gi + j, nb), memcpy(tx, xi + j, nb), memcpy(tw, w + j, nb), memcpy(tdw, pdw + j, nb);
            VF g = F(ld)(tg), xh = (F(ld)(tx) - muv) * rsv, gw = g * F(ld)(tw);
            s1 += gw, s2 = NN_FMA(gw, xh, s2);
            F(st)(tdw, NN_FMA(g, xh, F(ld)(tdw)));
            memcpy(pdw + j, tdw, nb);
            if (pdb != NULL) {
                memcpy(tdb, pdb + j, nb);
                F(st)(tdb, F(ld)(tdb) + g);
                memcpy(pdb + j, tdb, nb);
            }
        }
        // pass 2 from L1: LayerNorm dx = rstd (g w - mean(g w) - xhat mean(g w xhat)),
        // RMSNorm dx = rstd (g w - x rstd mean(g w xhat))
        if (pdb != NULL) {
            float k[4] = {mu, rs, F(hsum)(s1) / (float)C, F(hsum)(s2) / (float)C};
            F(vrange)(NK_LN_BWD, dx + i * C, NULL, NULL, gi, xi, w, NULL, k, C, nt);
        } else {
            float k[2] = {rs, F(hsum)(s2) / (float)C};
            F(vrange)(NK_RMS_BWD, dx + i * C, NULL, NULL, gi, xi, w, NULL, k, C, nt);
        }
    }
    if (nt) NN_FENCE();
}

/* elements [i0, i1) of an elementwise kind */
NN_TGT static void F(elt)(int kind, float *o0, float *o1, float *o2, const float *a, const float *b,
                          const float *c, const float *d, const float *k, int64_t i0, int64_t i1, int nt) {
    switch (kind) {
        // one call per kind, so each loop is compiled for its kind alone
        case NK_GELU_FWD:
            F(vrange)(NK_GELU_FWD, o0 + i0, NULL, NULL, a + i0, NULL, NULL, NULL, k, i1 - i0, nt);
            break;
        case NK_GELU_BWD:
            F(vrange)(NK_GELU_BWD, o0 + i0, NULL, NULL, a + i0, b + i0, NULL, NULL, k, i1 - i0, nt);
            break;
        case NK_SWI_FWD:
            F(vrange)(NK_SWI_FWD, o0 + i0, NULL, NULL, a + i0, b + i0, NULL, NULL, k, i1 - i0, nt);
            break;
        case NK_SWI_BWD:
            F(vrange)(NK_SWI_BWD, o0 + i0, o1 + i0, NULL, a + i0, b + i0, c + i0, NULL, k, i1 - i0, nt);
            break;
        default:
            F(vrange)(NK_ADAMW, o0 + i0, o1 + i0, o2 + i0, a + i0, b + i0, c + i0, d + i0, k, i1 - i0, nt);
            break;
    }
    if (nt) NN_FENCE();
}

/* rows [r0, r1) of the (B*T*H, D) view: y = x cos + rotate_half(x) sin, sign = -1 the inverse */
NN_TGT static void F(rope)(float *y, const float *x, const float *cs /* (T, D) cos | sin halves */,
                           int64_t r0, int64_t r1, int64_t T, int64_t H, int64_t D, float sign, int nt) {
    int64_t h2 = D / 2, t = (r0 / H) % T, h = r0 % H;  // row r is head h of position t (b anything)
    float k[1] = {sign};
    for (int64_t r = r0; r < r1; r++) {
        const float *c = cs + t * D;
        F(vrange)(NK_ROPE, y + r * D, y + r * D + h2, NULL, x + r * D, x + r * D + h2, c, c + h2, k, h2, nt);
        if (++h == H) h = 0, t = t + 1 == T ? 0 : t + 1;  // no division per row
    }
    if (nt) NN_FENCE();
}

#undef F
#undef VF
#undef VI
#undef VFU
#undef NN_TI
#undef VLB
#undef GELU_K
#undef GELU_C
