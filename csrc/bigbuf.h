/* bigbuf.h: big output buffers taken straight from the OS, aligned for transparent huge pages.
 * A fresh output of many MiB costs one page fault per 4 KiB page on first touch, more than a
 * memory-bound kernel takes to fill it. A mapping that starts on a 2 MiB boundary and is advised
 * MADV_HUGEPAGE (Linux THP in "madvise" or "always" mode) faults in 2 MiB pages instead: 512 times
 * fewer faults for the same zeroing. Where THP is off or absent the advice is ignored (or fails,
 * which is ignored) and the mapping behaves as ordinary anonymous memory. Python-free. */
#ifndef SPARSEFT_BIGBUF_H
#define SPARSEFT_BIGBUF_H

#include <stddef.h>

/* Alignment of sft_bigbuf_alloc's buffers: one x86-64 / AArch64-4K huge page. */
#define SFT_BIGBUF_ALIGN ((size_t)2 << 20)

/* A buffer of at least `bytes` bytes (fresh zero pages) starting on an SFT_BIGBUF_ALIGN boundary
 * and advised MADV_HUGEPAGE where the platform has it; NULL when it cannot be mapped (bytes == 0
 * included). *len receives the length to pass to sft_bigbuf_free (bytes rounded up to whole pages:
 * the last partial 2 MiB stays in small pages, so nothing beyond the request is ever touched). */
void *sft_bigbuf_alloc(size_t bytes, size_t *len);
/* Unmaps a buffer of sft_bigbuf_alloc (p NULL: nothing). */
void sft_bigbuf_free(void *p, size_t len);

#endif
