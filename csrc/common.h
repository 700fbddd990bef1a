/* common.h: what every kernel file shares: SIMD dispatch, threads, scratch accounting.
 * NumPy-free and Python-free: kernels take raw pointers and int64 sizes. */
#ifndef SPARSEFT_COMMON_H
#define SPARSEFT_COMMON_H

#include <stddef.h>
#include <stdint.h>

/* SFT_X86: we may compile an AVX2/FMA path with function-level target attributes. */
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
#define SFT_X86 1
#define SFT_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define SFT_TARGET_AVX512 __attribute__((target("avx512f,avx512vl,avx2,fma")))
#else
#define SFT_X86 0
#define SFT_TARGET_AVX2
#define SFT_TARGET_AVX512
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

/* SIMD paths, each a superset of the one before: SFT_SIMD_AVX512 runs every AVX2/FMA kernel and
 * swaps in the AVX-512 GEMM micro-kernel (24 x 16, zmm) and the sparse kernels' AVX-512 segment,
 * recompute and reduction kernels. Kernels
 * test `sft_simd_path >= SFT_SIMD_AVX2` for their AVX2 code. A path is only ever selected when
 * compiled in and reported by the CPU (and, for AVX-512, enabled by the OS). */
enum sft_simd { SFT_SIMD_PORTABLE = 0, SFT_SIMD_AVX2 = 1, SFT_SIMD_AVX512 = 2 };

/* The path the kernels use now (set once at import, changeable for tests). */
extern int sft_simd_path;

/* Detects the CPU (cpuid via __builtin_cpu_supports) and selects the best path. The environment
 * variable SPARSEFT_SIMD=portable|avx2|avx512 caps it (the best available path at or below). */
void sft_simd_init(void);
/* 1 when the AVX2/FMA path was compiled into this build. */
int sft_simd_avx2_compiled(void);
/* 1 when the CPU reports AVX2 and FMA. */
int sft_simd_avx2_supported(void);
/* 1 when the CPU (and OS) support AVX-512F/VL besides AVX2 and FMA. */
int sft_simd_avx512_supported(void);
/* Selects a path; returns 0 on success, -1 when that path is unavailable here. */
int sft_simd_set(int path);

/* Threads used by the kernels (OpenMP); 1 when built without OpenMP. */
int sft_get_num_threads(void);

/* Inside a parallel region: the calling thread's number and its team's size (0 and 1 when built
 * without OpenMP). */
static inline int sft_thread_num(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}
static inline int sft_team_size(void) {
#ifdef _OPENMP
    return omp_get_num_threads();
#else
    return 1;
#endif
}
/* The most threads the kernels accept: per-thread scratch and partial sums grow with the count. */
#define SFT_MAX_THREADS 4096
void sft_set_num_threads(int n);
int sft_openmp_enabled(void);

/* Scratch memory of the kernels: 64-byte aligned, counted so benchmarks can report the peak.
 * sft_scratch_alloc returns NULL when out of memory (callers report it). */
void *sft_scratch_alloc(size_t bytes);
void sft_scratch_free(void *p);
int64_t sft_scratch_current(void);
int64_t sft_scratch_peak(void);
void sft_scratch_reset_peak(void);

/* Number of NaN/inf entries among n floats (validation helper; stops counting at 1). */
int64_t sft_count_nonfinite(const float *x, int64_t n);

#define SFT_MIN(a, b) ((a) < (b) ? (a) : (b))
#define SFT_MAX(a, b) ((a) > (b) ? (a) : (b))

/* ceil(a / b) for a >= 0, b > 0. */
static inline int64_t sft_ceil_div(int64_t a, int64_t b) {
    return (a + b - 1) / b;
}

/* a rounded up to a multiple of m (a >= 0, m > 0). */
static inline int64_t sft_round_up(int64_t a, int64_t m) {
    return sft_ceil_div(a, m) * m;
}

#endif
