/* bigbuf.c: 2 MiB-aligned anonymous mappings advised MADV_HUGEPAGE (see bigbuf.h). */
#define _DEFAULT_SOURCE /* MAP_ANONYMOUS, MADV_HUGEPAGE beside the build's _POSIX_C_SOURCE */
#include "bigbuf.h"

#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>

#if !defined(MAP_ANONYMOUS) && defined(MAP_ANON)
#define MAP_ANONYMOUS MAP_ANON
#endif

void *sft_bigbuf_alloc(size_t bytes, size_t *len) {
    long ps = sysconf(_SC_PAGESIZE);
    size_t page = ps > 0 ? (size_t)ps : 4096;
    if (bytes == 0 || bytes > SIZE_MAX - SFT_BIGBUF_ALIGN - page) return NULL;
    size_t total = (bytes + page - 1) / page * page, span = total + SFT_BIGBUF_ALIGN;
    char *raw = (char *)mmap(NULL, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == (char *)MAP_FAILED) return NULL;
    // keep the 2 MiB-aligned [p, p + total) of the span, unmap the head and the tail around it
    uintptr_t a = ((uintptr_t)raw + SFT_BIGBUF_ALIGN - 1) / SFT_BIGBUF_ALIGN * SFT_BIGBUF_ALIGN;
    char *p = (char *)a;
    size_t head = (size_t)(p - raw), tail = span - head - total;
    if (head > 0) munmap(raw, head);
    if (tail > 0) munmap(p + total, tail);
#ifdef MADV_HUGEPAGE
    (void)madvise(p, total, MADV_HUGEPAGE);  // refused (no THP in this kernel): small pages, as always
#endif
    *len = total;
    return p;
}

void sft_bigbuf_free(void *p, size_t len) {
    if (p != NULL) munmap(p, len);
}
