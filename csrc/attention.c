/* attention.c: causal / full scaled dot-product attention, grouped-query, flash-style.
 * Forward (per batch, head and block of ATT_BQ queries): scores against ATT_BK keys at a time with
 * the GEMM core, an online softmax (running max m and sum l per query, the output accumulator
 * rescaled when the max grows), and lse = m + log l kept for the backward. No T x T matrix exists.
 * Backward (FlashAttention-2): per batch and kv head, for each key block and each query block that
 * sees it, P = exp(scale q k^T - lse) is recomputed and
 *   dV += P^T dO,  dP = dO V^T,  dS = P * (dP - rowsum(dO * O)),  dQ += scale dS K,  dK += scale dS^T Q.
 * A task owns its kv head's dK, dV and its query heads' dQ, so no two threads write one output. */
#include <math.h>
#include <string.h>

#include "common.h"
#include "gemm.h"
#include "nn.h"
#include "nn_vec.h"

#define ATT_BQ 64  /* queries per tile */
#define ATT_BK 128 /* keys per tile */

/* One score tile S (bq, bk) of queries i0.. against keys j0..: causal masking, then the online
 * softmax update of m, l and the accumulator O (bq, D), with P = exp(S - m) written over S. */
NN_INLINE void fwd_tile_body(float *S, float *m, float *l, float *O, int64_t bq, int64_t bk, int64_t D,
                             int64_t i0, int64_t j0, int causal) {
    for (int64_t r = 0; r < bq; r++) {
        float *s = S + r * bk;
        // keys after query i0 + r are masked
        int64_t nk = causal ? SFT_MIN(bk, i0 + r - j0 + 1) : bk;
        if (nk <= 0) {
            memset(s, 0, (size_t)bk * sizeof(float));
            continue;
        }
        v8f mx = v8_set(-__builtin_inff());
        int64_t c = 0;
        for (; c + 8 <= nk; c += 8) mx = v8_max(mx, v8_load(s + c));
        float mnew = v8_hmax(mx);
        for (; c < nk; c++) mnew = s[c] > mnew ? s[c] : mnew;
        mnew = m[r] > mnew ? m[r] : mnew;
        float alpha = expf(m[r] - mnew);
        v8f mv = v8_set(mnew), sum = v8_set(0.0f);
        for (c = 0; c + 8 <= nk; c += 8) {
            v8f p = v8_exp(v8_load(s + c) - mv);
            v8_store(s + c, p);
            sum += p;
        }
        float tail = 0.0f;
        if (c < nk) {
            v8f p = v8_exp(v8_load_n(s + c, nk - c) - mv);
            v8_store_n(s + c, p, nk - c);
            for (int64_t t = 0; t < nk - c; t++) tail += p[t];
        }
        if (nk < bk) memset(s + nk, 0, (size_t)(bk - nk) * sizeof(float));
        l[r] = l[r] * alpha + v8_hsum(sum) + tail;
        m[r] = mnew;
        if (alpha != 1.0f) {
            float *o = O + r * D;
            for (int64_t d = 0; d < D; d++) o[d] *= alpha;
        }
    }
}
NN_INSTANTIATE(fwd_tile,
               (float *S, float *m, float *l, float *O, int64_t bq, int64_t bk, int64_t D, int64_t i0,
                int64_t j0, int causal),
               (S, m, l, O, bq, bk, D, i0, j0, causal))

/* P = exp(S - lse) with causal masking (0 where masked), then dS = P * (dP - Di) into dP */
NN_INLINE void bwd_tile_body(float *P, float *dP, const float *lse, const float *Di, int64_t bq, int64_t bk,
                             int64_t i0, int64_t j0, int causal) {
    for (int64_t r = 0; r < bq; r++) {
        float *p = P + r * bk, *dp = dP + r * bk;
        int64_t nk = causal ? SFT_MAX(0, SFT_MIN(bk, i0 + r - j0 + 1)) : bk;
        v8f lv = v8_set(lse[r]), dv = v8_set(Di[r]);
        int64_t c = 0;
        for (; c + 8 <= nk; c += 8) {
            v8f pv = v8_exp(v8_load(p + c) - lv);
            v8_store(p + c, pv);
            v8_store(dp + c, pv * (v8_load(dp + c) - dv));
        }
        if (c < nk) {
            v8f pv = v8_exp(v8_load_n(p + c, nk - c) - lv);
            v8_store_n(p + c, pv, nk - c);
            v8_store_n(dp + c, pv * (v8_load_n(dp + c, nk - c) - dv), nk - c);
        }
        if (nk < bk) {
            memset(p + nk, 0, (size_t)(bk - nk) * sizeof(float));
            memset(dp + nk, 0, (size_t)(bk - nk) * sizeof(float));
        }
    }
}
NN_INSTANTIATE(bwd_tile,
               (float *P, float *dP, const float *lse, const float *Di, int64_t bq, int64_t bk, int64_t i0,
                int64_t j0, int causal),
               (P, dP, lse, Di, bq, bk, i0, j0, causal))

/* Di[r] = sum_d dO[r, d] O[r, d] for n rows (row strides sa, sb) */
NN_INLINE void rowdot_body(float *Di, const float *dO, int64_t sa, const float *O, int64_t sb, int64_t n,
                           int64_t D) {
    for (int64_t r = 0; r < n; r++) {
        const float *a = dO + r * sa, *b = O + r * sb;
        v8f s = v8_set(0.0f);
        int64_t d = 0;
        for (; d + 8 <= D; d += 8) s += v8_load(a + d) * v8_load(b + d);
        if (d < D) s += v8_load_n(a + d, D - d) * v8_load_n(b + d, D - d);
        Di[r] = v8_hsum(s);
    }
}
NN_INSTANTIATE(rowdot,
               (float *Di, const float *dO, int64_t sa, const float *O, int64_t sb, int64_t n, int64_t D),
               (Di, dO, sa, O, sb, n, D))

/* n rows of D floats, row stride st, set to zero */
static void zero_rows(float *p, int64_t st, int64_t n, int64_t D) {
    if (st == D) {
        memset(p, 0, sizeof(float) * (size_t)(n * D));
        return;
    }
    for (int64_t r = 0; r < n; r++) memset(p + r * st, 0, sizeof(float) * (size_t)D);
}

int64_t attention_scratch_bytes(int64_t T, int64_t D, int nthreads) {
    (void)T;
    int64_t fwd = (int64_t)ATT_BQ * ATT_BK + ATT_BQ * D + 2 * ATT_BQ;
    int64_t bwd = 2 * (int64_t)ATT_BQ * ATT_BK;
    return (int64_t)sizeof(float) * SFT_MAX(fwd, bwd) * SFT_MAX(1, nthreads);
}

/* threads for `tasks` independent tasks of `work` multiply-adds in all */
static int att_threads(int64_t tasks, int64_t work) {
    int nth = work < (1 << 16) ? 1 : sft_get_num_threads();
    return (int)SFT_MAX(1, SFT_MIN((int64_t)nth, tasks));
}

int attention_forward(float *o, att_strides so, float *lse, const float *q, att_strides sq, const float *k,
                      att_strides sk, const float *v, att_strides sv, int64_t B, int64_t H, int64_t Hkv,
                      int64_t T, int64_t D, float scale, int causal) {
    if (B <= 0 || H <= 0 || T <= 0) return 0;
    const int64_t g = H / Hkv, nqb = sft_ceil_div(T, ATT_BQ);
    const int64_t per = (int64_t)ATT_BQ * ATT_BK + ATT_BQ * D + 2 * ATT_BQ;
    const int64_t tasks = B * H * nqb;
    const int nth = att_threads(tasks, B * H * T * T * D);
    float *scratch = (float *)sft_scratch_alloc(sizeof(float) * (size_t)(per * nth));
    if (scratch == NULL) return -1;
    int rc = 0;
    // tasks: (batch, head, query block); causal blocks differ in cost, so dynamic
#pragma omp parallel for schedule(dynamic, 1) num_threads(nth) reduction(| : rc)
    for (int64_t task = 0; task < tasks; task++) {
        float *S = scratch + (int64_t)sft_thread_num() * per, *O = S + ATT_BQ * ATT_BK, *m = O + ATT_BQ * D,
              *l = m + ATT_BQ;
        int64_t bh = task / nqb, i0 = (task % nqb) * ATT_BQ, b = bh / H, h = bh % H, hk = h / g;
        int64_t bq = SFT_MIN(ATT_BQ, T - i0);
        const float *qi = q + b * sq.sb + h * sq.sh + i0 * sq.st;
        const float *kh = k + b * sk.sb + hk * sk.sh, *vh = v + b * sv.sb + hk * sv.sh;
        for (int64_t r = 0; r < bq; r++) m[r] = -__builtin_inff(), l[r] = 0.0f;
        memset(O, 0, sizeof(float) * (size_t)(bq * D));
        int64_t kend = causal ? i0 + bq : T;
        // key blocks: S (bq, bk) = scale q k^T, online softmax, O (bq, D) += P v
        for (int64_t j0 = 0; j0 < kend; j0 += ATT_BK) {
            int64_t bk = SFT_MIN(ATT_BK, kend - j0);
            rc |= sgemm_ab(S, bk, qi, sq.st, 1, kh + j0 * sk.st, 1, sk.st, bq, bk, D, scale, 0.0f);
            fwd_tile_run(S, m, l, O, bq, bk, D, i0, j0, causal);
            rc |= sgemm(O, D, S, bk, 1, vh + j0 * sv.st, sv.st, 1, bq, D, bk, 1.0f);
        }
        // normalise into o's rows; lse = m + log l
        float *oi = o + b * so.sb + h * so.sh + i0 * so.st;
        for (int64_t r = 0; r < bq; r++) {
            float inv = 1.0f / l[r];
            for (int64_t d = 0; d < D; d++) oi[r * so.st + d] = O[r * D + d] * inv;
            lse[bh * T + i0 + r] = m[r] + logf(l[r]);
        }
    }
    sft_scratch_free(scratch);
    return rc;
}

int attention_backward(float *dq, att_strides sdq, float *dk, att_strides sdk, float *dv, att_strides sdv,
                       const float *dout, att_strides sdo, const float *q, att_strides sq, const float *k,
                       att_strides sk, const float *v, att_strides sv, const float *o, att_strides so,
                       const float *lse, int64_t B, int64_t H, int64_t Hkv, int64_t T, int64_t D, float scale,
                       int causal) {
    if (B <= 0 || H <= 0 || T <= 0) return 0;
    const int64_t g = H / Hkv, tasks = B * Hkv;
    const int64_t per = 2 * (int64_t)ATT_BQ * ATT_BK;
    const int nth = att_threads(tasks, B * H * T * T * D);
    float *scratch = (float *)sft_scratch_alloc(sizeof(float) * (size_t)(per * nth + B * H * T));
    if (scratch == NULL) return -1;
    float *Di = scratch + per * nth;
    int rc = 0;
    // Di (B, H, T) = rowsum(dO * O) for every query row
#pragma omp parallel for schedule(static) num_threads(nth)
    for (int64_t bh = 0; bh < B * H; bh++) {
        int64_t b = bh / H, h = bh % H;
        rowdot_run(Di + bh * T, dout + b * sdo.sb + h * sdo.sh, sdo.st, o + b * so.sb + h * so.sh, so.st, T,
                   D);
    }
    // tasks: (batch, kv head); each owns dk, dv of its kv head and dq of its g query heads
#pragma omp parallel for schedule(dynamic, 1) num_threads(nth) reduction(| : rc)
    for (int64_t task = 0; task < tasks; task++) {
        float *P = scratch + (int64_t)sft_thread_num() * per, *dP = P + ATT_BQ * ATT_BK;
        int64_t b = task / Hkv, hk = task % Hkv;
        const float *kh = k + b * sk.sb + hk * sk.sh, *vh = v + b * sv.sb + hk * sv.sh;
        float *dkh = dk + b * sdk.sb + hk * sdk.sh, *dvh = dv + b * sdv.sb + hk * sdv.sh;
        zero_rows(dkh, sdk.st, T, D);
        zero_rows(dvh, sdv.st, T, D);
        for (int64_t h = hk * g; h < (hk + 1) * g; h++) zero_rows(dq + b * sdq.sb + h * sdq.sh, sdq.st, T, D);
        // key blocks outermost: dK_j and dV_j stay in cache across the query blocks
        for (int64_t j0 = 0; j0 < T; j0 += ATT_BK) {
            int64_t bk = SFT_MIN(ATT_BK, T - j0);
            const float *kj = kh + j0 * sk.st, *vj = vh + j0 * sv.st;
            float *dkj = dkh + j0 * sdk.st, *dvj = dvh + j0 * sdv.st;
            for (int64_t h = hk * g; h < (hk + 1) * g; h++) {
                int64_t bh = b * H + h;
                const float *qh = q + b * sq.sb + h * sq.sh, *doh = dout + b * sdo.sb + h * sdo.sh;
                float *dqh = dq + b * sdq.sb + h * sdq.sh;
                // causal: query blocks that end before j0 see none of these keys
                for (int64_t i0 = causal ? j0 / ATT_BQ * ATT_BQ : 0; i0 < T; i0 += ATT_BQ) {
                    int64_t bq = SFT_MIN(ATT_BQ, T - i0);
                    const float *qi = qh + i0 * sq.st, *doi = doh + i0 * sdo.st;
                    float *dqi = dqh + i0 * sdq.st;
                    // P (bq, bk) = scale q k^T;  dP (bq, bk) = dO v^T
                    rc |= sgemm_ab(P, bk, qi, sq.st, 1, kj, 1, sk.st, bq, bk, D, scale, 0.0f);
                    rc |= sgemm(dP, bk, doi, sdo.st, 1, vj, 1, sv.st, bq, bk, D, 0.0f);
                    bwd_tile_run(P, dP, lse + bh * T + i0, Di + bh * T + i0, bq, bk, i0, j0, causal);
                    // dV_j += P^T dO_i;  dQ_i += scale dS K_j;  dK_j += scale dS^T Q_i
                    rc |= sgemm(dvj, sdv.st, P, 1, bk, doi, sdo.st, 1, bk, D, bq, 1.0f);
                    rc |= sgemm_ab(dqi, sdq.st, dP, bk, 1, kj, sk.st, 1, bq, D, bk, scale, 1.0f);
                    rc |= sgemm_ab(dkj, sdk.st, dP, 1, bk, qi, sq.st, 1, bk, D, bq, scale, 1.0f);
                }
            }
        }
    }
    sft_scratch_free(scratch);
    return rc;
}
