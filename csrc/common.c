/* common.c: SIMD dispatch, thread count, scratch accounting. */
#include "common.h"

#include <stdlib.h>
#include <string.h>

int sft_simd_path = SFT_SIMD_PORTABLE;
static int sft_threads = 0; /* 0: not set yet, use the OpenMP default */

int sft_simd_avx2_compiled(void) {
    return SFT_X86;
}

int sft_simd_avx2_supported(void) {
#if SFT_X86
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return 0;
#endif
}

int sft_simd_avx512_supported(void) {
#if SFT_X86
    // libgcc's cpu model also checks that the OS saves the zmm state (XCR0)
    __builtin_cpu_init();
    return sft_simd_avx2_supported() && __builtin_cpu_supports("avx512f") &&
           __builtin_cpu_supports("avx512vl");
#else
    return 0;
#endif
}

void sft_simd_init(void) {
    const char *env = getenv("SPARSEFT_SIMD");
    int cap = SFT_SIMD_AVX512;
    if (env != NULL && strcmp(env, "portable") == 0) cap = SFT_SIMD_PORTABLE;
    if (env != NULL && strcmp(env, "avx2") == 0) cap = SFT_SIMD_AVX2;
    // the best path the CPU supports, at most the cap
    int path = SFT_SIMD_PORTABLE;
    if (cap >= SFT_SIMD_AVX2 && sft_simd_avx2_supported()) path = SFT_SIMD_AVX2;
    if (cap >= SFT_SIMD_AVX512 && sft_simd_avx512_supported()) path = SFT_SIMD_AVX512;
    sft_simd_path = path;
}

int sft_simd_set(int path) {
    int ok = path == SFT_SIMD_PORTABLE || (path == SFT_SIMD_AVX2 && sft_simd_avx2_supported()) ||
             (path == SFT_SIMD_AVX512 && sft_simd_avx512_supported());
    if (!ok) return -1;
    sft_simd_path = path;
    return 0;
}

int sft_openmp_enabled(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

int sft_get_num_threads(void) {
#ifdef _OPENMP
    return sft_threads > 0 ? sft_threads : omp_get_max_threads();
#else
    return 1;
#endif
}

void sft_set_num_threads(int n) {
    sft_threads = n > 0 ? n : 0;
#ifdef _OPENMP
    if (n > 0) omp_set_num_threads(n);
#endif
}

/* Scratch accounting: a 64-byte header in front of each block holds its size. */
static int64_t scratch_current = 0;
static int64_t scratch_peak = 0;

void *sft_scratch_alloc(size_t bytes) {
    const size_t header = 64;
    if (bytes > (size_t)INT64_MAX - header) return NULL;
    unsigned char *raw = NULL;
    if (posix_memalign((void **)&raw, 64, bytes + header) != 0) return NULL;
    memcpy(raw, &bytes, sizeof bytes);
    int64_t now;
#pragma omp atomic capture
    now = scratch_current += (int64_t)bytes;
#pragma omp critical(sft_scratch_peak)
    {
        if (now > scratch_peak) scratch_peak = now;
    }
    return raw + header;
}

void sft_scratch_free(void *p) {
    if (p == NULL) return;
    unsigned char *raw = (unsigned char *)p - 64;
    size_t bytes;
    memcpy(&bytes, raw, sizeof bytes);
#pragma omp atomic
    scratch_current -= (int64_t)bytes;
    free(raw);
}

int64_t sft_scratch_current(void) {
    return scratch_current;
}
int64_t sft_scratch_peak(void) {
    return scratch_peak;
}
void sft_scratch_reset_peak(void) {
    scratch_peak = scratch_current;
}

/* 1 if x[lo, hi) holds an inf or NaN: blocks of 4096 floats, each a branch-free scan the
 * compiler vectorises (an exponent of all ones is inf or NaN), so a bad value early on still
 * returns quickly. */
static int nonfinite_range(const float *x, int64_t lo, int64_t hi) {
    for (int64_t i0 = lo; i0 < hi; i0 += 4096) {
        const int64_t i1 = SFT_MIN(hi, i0 + 4096);
        uint32_t bad = 0;
        for (int64_t i = i0; i < i1; i++) {
            uint32_t u;
            memcpy(&u, x + i, sizeof u);
            bad |= (uint32_t)((u & 0x7f800000u) == 0x7f800000u);
        }
        if (bad) return 1;
    }
    return 0;
}

/* Arrays of at least this many floats (4 MiB) are scanned by all threads: the scan is
 * memory-bound and one core does not reach the memory bandwidth. */
#define NONFINITE_PARALLEL_MIN (1 << 20)

int64_t sft_count_nonfinite(const float *x, int64_t n) {
    int nth = sft_get_num_threads();
    if (n < NONFINITE_PARALLEL_MIN || nth < 2) return nonfinite_range(x, 0, n);
    int bad = 0;
    // one contiguous share per thread
#pragma omp parallel num_threads(nth) reduction(| : bad)
    {
        int64_t t = sft_thread_num(), nt = sft_team_size();
        bad |= nonfinite_range(x, n * t / nt, n * (t + 1) / nt);
    }
    return bad;
}
