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
#else
#define SFT_X86 0
#define SFT_TARGET_AVX2
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

/* SIMD paths. SFT_SIMD_AVX2 is only ever selected when compiled in and reported by the CPU. */
enum sft_simd { SFT_SIMD_PORTABLE = 0, SFT_SIMD_AVX2 = 1 };

/* The path the kernels use now (set once at import, changeable for tests). */
extern int sft_simd_path;

/* Detects the CPU (cpuid via __builtin_cpu_supports) and selects the best path, unless
 * the environment variable SPARSEFT_SIMD=portable forces the portable C path. */
void sft_simd_init(void);
/* 1 when the AVX2/FMA path was compiled into this build. */
int sft_simd_avx2_compiled(void);
/* 1 when the CPU reports AVX2 and FMA. */
int sft_simd_avx2_supported(void);
/* Selects a path; returns 0 on success, -1 when that path is unavailable here. */
int sft_simd_set(int path);

/* Threads used by the kernels (OpenMP); 1 when built without OpenMP. */
int sft_get_num_threads(void);
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

#endif
