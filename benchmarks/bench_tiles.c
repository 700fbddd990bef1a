/* bench_tiles.c: the sparse kernels' inner tiles alone against the dense GEMM core, one thread.
 *
 * Built and run by bench_tiles.py. It includes csrc/sparse.c, so the static tile kernels timed here
 * are the ones the extension runs. A tile is one row chunk (64 rows) of one column block against
 * one 64-token tile, everything in L1/L2 and repeated: the speed the kernels reach when nothing
 * else costs (no W' recompute, no transposes, no carried sums, no chunk builds). Printed per SIMD
 * path: GFLOP/s of the dense core (sgemm, one thread, cache-resident square product) and of each
 * tile (2 flops per nonzero per token and product), their ratio, and what the tiles alone imply for
 * a fwd+bwd step with exact gradients against three dense GEMMs:
 *   step ratio = D * (1/(2 Rf) + 1/Rb) / 3   (density d: 2 d in place of the 1/2 factors)
 * with D the dense rate, Rf the forward tile's and Rb the fused backward tile's (gx and the
 * sampled gradient). No real kernel call can beat that bound; bench_sparse.py measures the real
 * ones.
 *
 * Usage: bench_tiles [seconds per measurement, default 0.3] */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "gemm.h"
#include "sparse.c"

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static uint64_t rng_state = 88172645463325252ull;
static uint32_t rnd(void) {
    rng_state ^= rng_state << 13, rng_state ^= rng_state >> 7, rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 11);
}
static float rndf(void) {
    return (float)(rnd() % 2001) / 1000.0f - 1.0f;
}

/* Best GFLOP/s of fn(ctx) doing `flop` flops per call, over rounds of about `secs` seconds. */
typedef void (*call_fn)(void *);
static double best_gflops(call_fn fn, void *ctx, double flop, double secs) {
    fn(ctx); /* warm-up */
    double best = 0.0;
    // rounds of calls until secs have passed, best round rate
    for (int round = 0; round < 5; round++) {
        int64_t calls = 0;
        double t0 = now(), t;
        do {
            fn(ctx);
            calls++;
            t = now() - t0;
        } while (t < secs / 5);
        best = SFT_MAX(best, flop * (double)calls / t / 1e9);
    }
    return best;
}

/* ---- dense core ---- */
typedef struct {
    float *C, *A, *B;
    int64_t n;
} dense_ctx;
static void dense_call(void *p) {
    dense_ctx *d = (dense_ctx *)p;
    sgemm(d->C, d->n, d->A, d->n, 1, d->B, d->n, 1, d->n, d->n, d->n, 0.0f);
}

/* ---- tiles ---- */
typedef struct {
    chunk c;
    float *ytile, *xp, *gxp, *gyt;
    int mode; /* 0 forward, 1 fused backward, 2 gx only, 3 sampled gradient only */
    fwd_tile_fn fwd;
    bwd_tile_fn bwd;
} tile_ctx;
static void tile_call(void *p) {
    tile_ctx *t = (tile_ctx *)p;
    if (t->mode == 0) t->fwd(t->ytile, &t->c, t->xp, TOK_TILE);
    if (t->mode == 1) t->bwd(&t->c, 1, t->gxp, t->gyt, t->xp, TOK_TILE);
    if (t->mode == 2) t->bwd(&t->c, 0, t->gxp, t->gyt, t->xp, TOK_TILE);
    if (t->mode == 3) t->bwd(&t->c, 1, NULL, t->gyt, t->xp, TOK_TILE);
}

/* A CHUNK_ROWS x width base: 2:4 (n = 2, m = 4) or CSR at density d (d < 0: N:M). */
typedef struct {
    sparse_base W;
    float *vals;
    int32_t *col;
    int64_t *rowptr;
    uint8_t *idx;
} test_base;
static test_base make_base(int64_t rows, int64_t width, double d) {
    test_base b = {0};
    if (d < 0) {
        int64_t kpr = width / 2;
        b.vals = malloc(sizeof(float) * (size_t)(rows * kpr));
        b.idx = malloc((size_t)(rows * kpr));
        // two kept positions per group of four, ascending
        for (int64_t g = 0; g < rows * width / 4; g++) {
            int p = (int)(rnd() % 4), q = (int)(rnd() % 3);
            if (q >= p) q++;
            b.idx[2 * g] = (uint8_t)SFT_MIN(p, q), b.idx[2 * g + 1] = (uint8_t)SFT_MAX(p, q);
            b.vals[2 * g] = rndf(), b.vals[2 * g + 1] = rndf();
        }
        b.W = (sparse_base){SPARSE_NM, rows, width, b.vals, NULL, NULL, b.idx, 2, 4};
        return b;
    }
    b.vals = malloc(sizeof(float) * (size_t)(rows * width));
    b.col = malloc(sizeof(int32_t) * (size_t)(rows * width));
    b.rowptr = malloc(sizeof(int64_t) * (size_t)(rows + 1));
    int64_t nz = 0;
    b.rowptr[0] = 0;
    // each entry kept with probability d
    for (int64_t i = 0; i < rows; i++) {
        for (int64_t j = 0; j < width; j++)
            if ((double)(rnd() % 1000000) < d * 1e6) b.col[nz] = (int32_t)j, b.vals[nz] = rndf(), nz++;
        b.rowptr[i + 1] = nz;
    }
    b.W = (sparse_base){SPARSE_CSR, rows, width, b.vals, b.col, b.rowptr, NULL, 0, 0};
    return b;
}

int main(int argc, char **argv) {
    double secs = argc > 1 ? atof(argv[1]) : 0.3;
    sft_simd_init();
    sft_set_num_threads(1);
    const int paths[] = {SFT_SIMD_AVX512, SFT_SIMD_AVX2};
    const char *names[] = {"avx512", "avx2"};
    const double dens[] = {-1.0, 0.5, 0.1};
    const char *kinds[] = {"2:4", "0.5", "0.1"};
    printf("one thread; tiles of 64 rows x one column block x 64 tokens, repeated in cache\n");
    for (int pi = 0; pi < 2; pi++) {
        if (sft_simd_set(paths[pi]) != 0) {
            printf("\n[%s] not supported here\n", names[pi]);
            continue;
        }
        dense_ctx d = {NULL, NULL, NULL, 512};
        d.A = malloc(sizeof(float) * 512 * 512), d.B = malloc(sizeof(float) * 512 * 512);
        d.C = malloc(sizeof(float) * 512 * 512);
        for (int64_t i = 0; i < 512 * 512; i++) d.A[i] = rndf(), d.B[i] = rndf();
        double D = best_gflops(dense_call, &d, 2.0 * 512 * 512 * 512, secs);
        printf("\n[%s] dense GEMM core 512^3: %.1f GFLOP/s\n", names[pi], D);
        printf("%5s %6s %9s %9s %9s %9s %9s   %s\n", "mask", "block", "fwd GF/s", "bwd GF/s", "gx GF/s",
               "g GF/s", "fwd/dense", "bwd/dense  tiles-only step bound (x dense step)");
        for (int ki = 0; ki < 3; ki++) {
            int64_t kc = dens[ki] < 0 ? 128 : (dens[ki] <= 0.15 ? 256 : 128);
            test_base b = make_base(CHUNK_ROWS, kc, dens[ki]);
            tile_ctx t;
            void *mem = aligned_alloc(64, (size_t)sft_round_up(chunk_bytes(&b.W, kc, kc), 64));
            chunk_init(&t.c, mem, &b.W, kc, kc);
            float *AT = calloc((size_t)(kc * 16), sizeof(float)), *B = calloc(CHUNK_ROWS * 16, sizeof(float));
            chunk_build(&t.c, &b.W, NULL, 0, 0, kc, AT, B, 1.0f, 16, 1, select_recompute(1.0f));
            t.ytile = aligned_alloc(64, sizeof(float) * CHUNK_ROWS * TOK_TILE);
            t.gyt = aligned_alloc(64, sizeof(float) * CHUNK_ROWS * TOK_TILE);
            t.xp = aligned_alloc(64, sizeof(float) * (size_t)(kc * TOK_TILE));
            t.gxp = aligned_alloc(64, sizeof(float) * (size_t)(kc * TOK_TILE));
            for (int64_t i = 0; i < CHUNK_ROWS * TOK_TILE; i++) t.ytile[i] = 0.0f, t.gyt[i] = 1e-3f * rndf();
            for (int64_t i = 0; i < kc * TOK_TILE; i++) t.xp[i] = 1e-3f * rndf(), t.gxp[i] = 0.0f;
            memset(t.c.g, 0, sizeof(float) * (size_t)t.c.cnt);
            t.fwd = sft_simd_path >= SFT_SIMD_AVX512 ? fwd_tile_avx512 : fwd_tile_avx2;
            t.bwd = sft_simd_path >= SFT_SIMD_AVX512 ? bwd_tile_avx512 : bwd_tile_avx2;
            double f = 2.0 * (double)t.c.cnt * TOK_TILE, R[4];
            // forward, fused backward, its two halves
            for (int mode = 0; mode < 4; mode++) {
                t.mode = mode;
                R[mode] = best_gflops(tile_call, &t, mode == 1 ? 2 * f : f, secs);
            }
            double dn = (double)t.c.cnt / (double)(CHUNK_ROWS * kc);
            double bound = D * (dn / R[0] + 2.0 * dn / R[1]) / 3.0;
            printf("%5s %6ld %9.1f %9.1f %9.1f %9.1f %9.2f %9.2f  %.2f\n", kinds[ki], (long)kc, R[0], R[1],
                   R[2], R[3], R[0] / D, R[1] / D, bound);
            free(mem), free(AT), free(B), free(t.ytile), free(t.gyt), free(t.xp), free(t.gxp);
            free(b.vals), free(b.col), free(b.rowptr), free(b.idx);
        }
        free(d.A), free(d.B), free(d.C);
    }
    return 0;
}
