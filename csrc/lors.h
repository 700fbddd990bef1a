/* lors.h: LoRS kernels on a dense-masked base (W stored dense with zeros, mask as uint8).
 * W' = W + s*(B A) * M is never stored whole: it is rebuilt micro-panel by micro-panel inside the
 * GEMM core's packing (sgemm_packb), so a forward or backward keeps no (out, in) buffer.
 * Every kernel returns 0, or -1 when scratch allocation failed; each has a naive twin. */
#ifndef SPARSEFT_LORS_H
#define SPARSEFT_LORS_H

#include <stdint.h>

/* Most rows and columns of the (gy^T x) tiles the exact masked gradient works on: each thread
 * takes an equal slab of output rows, tiles it evenly with tiles of at most LORS_TILE_O x
 * LORS_TILE_I floats (288 KiB, one buffer per thread) and runs the tile GEMMs on its own (one
 * parallel region and one barrier per call, so a busy machine does not stall it at every GEMM).
 * Every tile's GEMM packs x[:, tile columns] again (out / LORS_TILE_O times per call) and
 * gy[:, tile rows] (in / LORS_TILE_I times); a tall tile packs x less often than a square one
 * of the same bytes and needs less GEMM scratch (`python benchmarks/bench_builds.py --dense OLD
 * NEW` compares two tile shapes). */
#define LORS_TILE_O 288
#define LORS_TILE_I 256

/* y = x W'^T (+ bias). The GEMM core's many-rows driver shares the W' panels among the threads:
 * each B block is rebuilt once (groups of panels handed out), then row blocks of tokens run
 * against it, so the rebuild costs one pass over W whatever the thread count. Each output is
 * computed the same way whatever the thread count. */
int lors_forward(float *y,          /* (N, out) */
                 const float *x,    /* (N, in) */
                 const float *W,    /* (out, in), 0 off the mask */
                 const uint8_t *M,  /* (out, in), nonzero = kept */
                 const float *A,    /* (r, in) */
                 const float *B,    /* (out, r) */
                 const float *bias, /* (out) or NULL */
                 float s, int64_t N, int64_t in, int64_t out, int64_t r);
void lors_forward_naive(float *y, const float *x, const float *W, const uint8_t *M, const float *A,
                        const float *B, const float *bias, float s, int64_t N, int64_t in, int64_t out,
                        int64_t r);

/* gx = gy W' (W' panels shared among the threads as in lors_forward). */
int lors_backward_input(float *gx,        /* (N, in) */
                        const float *gy,  /* (N, out) */
                        const float *W,   /* (out, in) */
                        const uint8_t *M, /* (out, in) */
                        const float *A,   /* (r, in) */
                        const float *B,   /* (out, r) */
                        float s, int64_t N, int64_t in, int64_t out, int64_t r);
void lors_backward_input_naive(float *gx, const float *gy, const float *W, const uint8_t *M, const float *A,
                               const float *B, float s, int64_t N, int64_t in, int64_t out, int64_t r);

/* Exact adapter gradient with G = gy^T x (out, in) needed only at the mask:
 * dB = s (G*M) A^T, dA = s B^T (G*M). Tiles of G are formed, masked and reduced straight into
 * dA and dB; tiles whose mask is all zero are skipped. Threads take tiles in a static partition
 * and keep partial dA, dB (O(r (in + out)) each) summed in thread order at the end: deterministic
 * for a fixed thread count. dA and dB are overwritten. */
int lors_backward_exact(float *dA,        /* (r, in) */
                        float *dB,        /* (out, r) */
                        const float *gy,  /* (N, out) */
                        const float *x,   /* (N, in) */
                        const uint8_t *M, /* (out, in) */
                        const float *A,   /* (r, in) */
                        const float *B,   /* (out, r) */
                        float s, int64_t N, int64_t in, int64_t out, int64_t r);
void lors_backward_exact_naive(float *dA, float *dB, const float *gy, const float *x, const uint8_t *M,
                               const float *A, const float *B, float s, int64_t N, int64_t in, int64_t out,
                               int64_t r);

/* The paper's rearranged adapter gradient (format-independent, no out x in product):
 * dB = s gy^T (x A^T), dA = s (gy B)^T x. One parallel region: threads take token rows of
 * xa = x A^T and gb = gy B (N x r scratch each), then rows of dB and columns of dA; every output is
 * summed by one thread in one order, so results do not depend on the thread count. */
int lors_backward_lors(float *dA,       /* (r, in) */
                       float *dB,       /* (out, r) */
                       const float *gy, /* (N, out) */
                       const float *x,  /* (N, in) */
                       const float *A,  /* (r, in) */
                       const float *B,  /* (out, r) */
                       float s, int64_t N, int64_t in, int64_t out, int64_t r);
void lors_backward_lors_naive(float *dA, float *dB, const float *gy, const float *x, const float *A,
                              const float *B, float s, int64_t N, int64_t in, int64_t out, int64_t r);

/* Wout = W + s (B A) at the mask, W elsewhere (exact zeros stay). Unmerge is s -> -s. */
void lors_merge(float *Wout,      /* (out, in) */
                const float *W,   /* (out, in) */
                const uint8_t *M, /* (out, in) */
                const float *A,   /* (r, in) */
                const float *B,   /* (out, r) */
                float s, int64_t in, int64_t out, int64_t r);
void lors_merge_naive(float *Wout, const float *W, const uint8_t *M, const float *A, const float *B, float s,
                      int64_t in, int64_t out, int64_t r);

/* Scratch bytes lors_backward_exact holds with nthreads threads besides the GEMM core's (one G
 * tile per thread, partial dA and dB per extra thread), for memory reports. */
int64_t lors_scratch_bytes(int nthreads, int64_t in, int64_t out, int64_t r);

#endif
