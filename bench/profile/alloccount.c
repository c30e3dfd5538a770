// alloccount: an LD_PRELOAD shim that counts a process's heap allocations, for the benchmark's
// "allocations per transaction" figure (bench/README.md, "Profiling").
//
//   gcc -O2 -shared -fPIC -o alloccount.so alloccount.c   (bench/profile/ab.py does it)
//   ALLOCCOUNT_FILE=/tmp/x.counts LD_PRELOAD=$PWD/alloccount.so concierge ...
//
// The counters live in ALLOCCOUNT_FILE, mapped shared, so a reader (bench.py) takes them at any
// moment without signalling the process: four little-endian uint64s, allocations (malloc, calloc,
// realloc of NULL, the aligned allocators), frees, reallocs, bytes requested. Every call goes on
// to glibc's own allocator (__libc_*), so the process behaves as without the shim apart from one
// relaxed atomic add per call. Why not ordo-one's malloc-interposer: it is linked into a Swift
// target, and this counts the shipped binary as it is.
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <errno.h>

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void __libc_free(void *);
extern void *__libc_memalign(size_t, size_t);

struct counts { uint64_t allocs, frees, reallocs, bytes; };
static struct counts early;                 // until the file is mapped
static struct counts *volatile counts = &early;

__attribute__((constructor)) static void map_counts(void) {
    const char *path = getenv("ALLOCCOUNT_FILE");
    if (!path) return;
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return;
    if (ftruncate(fd, 4096) == 0) {
        void *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (p != MAP_FAILED) {
            memcpy(p, &early, sizeof early);
            counts = p;
        }
    }
    close(fd);
}

#define ADD(field, n) __atomic_fetch_add(&counts->field, (n), __ATOMIC_RELAXED)

void *malloc(size_t n) { ADD(allocs, 1); ADD(bytes, n); return __libc_malloc(n); }
void *calloc(size_t a, size_t b) { ADD(allocs, 1); ADD(bytes, a * b); return __libc_calloc(a, b); }
void *realloc(void *p, size_t n) {
    if (p) ADD(reallocs, 1); else ADD(allocs, 1);
    ADD(bytes, n);
    return __libc_realloc(p, n);
}
void free(void *p) { if (p) ADD(frees, 1); __libc_free(p); }
void *memalign(size_t a, size_t n) { ADD(allocs, 1); ADD(bytes, n); return __libc_memalign(a, n); }
void *aligned_alloc(size_t a, size_t n) { return memalign(a, n); }
int posix_memalign(void **out, size_t a, size_t n) {
    void *p = memalign(a, n);
    if (!p) return ENOMEM;
    *out = p;
    return 0;
}
