/*
 * uffd_wp_shim: lets colonet see which pages of a QEMU guest's RAM were
 * written, from outside the QEMU process.
 *
 * Loaded into QEMU with LD_PRELOAD. It has one job: when the process mmaps
 * the file named by $COLONET_UFFD_RAM_PATH with MAP_SHARED (QEMU's
 * `-object memory-backend-file,mem-path=...,share=on`), register that
 * mapping with userfaultfd in write-protect mode with UFFD_FEATURE_WP_ASYNC
 * and write-protect it. Asynchronous write-protection never stops a writer:
 * the kernel resolves the fault itself and only clears the page's
 * write-protect bit. colonet then asks the kernel which pages lost the bit
 * (and sets it again) with the PAGEMAP_SCAN ioctl on /proc/<pid>/pagemap
 * (colonet/guest/pagemap.py). Registration must happen inside the process
 * that owns the mapping: that is why this is a preloaded library.
 *
 * Every other mmap passes through untouched; without $COLONET_UFFD_RAM_PATH
 * the shim does nothing at all.
 *
 * Reports, one line each, appended to $COLONET_UFFD_STATUS (if set) and
 * written to stderr:
 *   registered <start> <end> <path> features=<hex> mode=<all|user>
 *   error <what failed>: <errno text>
 * A failed registration exits the process with status 97 at once: a QEMU
 * whose writes nobody tracks must not run as if protected.
 *
 * Needs Linux >= 6.7 (UFFD_FEATURE_WP_ASYNC, PAGEMAP_SCAN) built with
 * CONFIG_USERFAULTFD and CONFIG_PTE_MARKER_UFFD_WP (write-protect on shmem).
 * Built by tools/qemu_dirty/build.sh.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Newer than the uapi headers of Debian 12 (6.1); values from Linux 6.7+. */
#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif
#ifndef UFFD_FEATURE_WP_HUGETLBFS_SHMEM
#define UFFD_FEATURE_WP_HUGETLBFS_SHMEM (1 << 12)
#endif
#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)
#endif
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1 << 15)
#endif

#define EXIT_REGISTRATION_FAILED 97

static void report(const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if (n > (int)sizeof line - 2)
        n = sizeof line - 2;
    line[n++] = '\n';
    /* One write() per line: the reader never sees half of one. */
    const char *status = getenv("COLONET_UFFD_STATUS");
    if (status && *status) {
        int fd = open(status, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
        if (fd >= 0) {
            ssize_t ignored = write(fd, line, n);
            (void)ignored;
            close(fd);
        }
    }
    fprintf(stderr, "colonet uffd_wp_shim: %.*s", n, line);
}

static void fail(const char *what)
{
    int err = errno;
    report("error %s: %s", what, strerror(err));
    _exit(EXIT_REGISTRATION_FAILED);
}

/* A userfaultfd with WP_ASYNC enabled, or exits. Root (or CAP_SYS_PTRACE, or
 * vm.unprivileged_userfaultfd=1) may track kernel-mode faults too; anyone else
 * gets a user-mode-only descriptor. Asynchronous write-protection resolves
 * every fault in the kernel, so both track the same writes. */
static int open_uffd(const char **mode, uint64_t *features)
{
    *mode = "all";
    int fd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (fd < 0 && errno == EPERM) {
        *mode = "user";
        fd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
    }
    if (fd < 0)
        fail("userfaultfd()");
    struct uffdio_api api = {
        .api = UFFD_API,
        .features = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED,
    };
    if (ioctl(fd, UFFDIO_API, &api) < 0)
        fail("UFFDIO_API with WP_ASYNC|WP_UNPOPULATED (needs Linux >= 6.7)");
    if (!(api.features & UFFD_FEATURE_WP_HUGETLBFS_SHMEM)) {
        errno = EOPNOTSUPP;
        fail("write-protect on shmem (kernel without CONFIG_PTE_MARKER_UFFD_WP)");
    }
    *features = api.features;
    return fd;
}

static void track(void *addr, size_t len, const char *path)
{
    const char *mode;
    uint64_t features;
    long page = sysconf(_SC_PAGESIZE);
    len = (len + page - 1) / page * page; /* mmap maps whole pages */
    int fd = open_uffd(&mode, &features);
    struct uffdio_register reg = {
        .range = {.start = (uintptr_t)addr, .len = len},
        .mode = UFFDIO_REGISTER_MODE_WP,
    };
    if (ioctl(fd, UFFDIO_REGISTER, &reg) < 0)
        fail("UFFDIO_REGISTER (write-protect mode) of the RAM mapping");
    if (!(reg.ioctls & ((uint64_t)1 << _UFFDIO_WRITEPROTECT))) {
        errno = EOPNOTSUPP;
        fail("UFFDIO_WRITEPROTECT on the RAM mapping");
    }
    /* Start clean: every page write-protected, present or not (markers). */
    struct uffdio_writeprotect wp = {
        .range = reg.range,
        .mode = UFFDIO_WRITEPROTECT_MODE_WP,
    };
    if (ioctl(fd, UFFDIO_WRITEPROTECT, &wp) < 0)
        fail("UFFDIO_WRITEPROTECT of the RAM mapping");
    /* fd stays open for the life of the process: closing a userfaultfd
     * unregisters its ranges. */
    report("registered 0x%lx 0x%lx %s features=0x%llx mode=%s", (unsigned long)addr,
           (unsigned long)addr + len, path, (unsigned long long)features, mode);
}

/* Is fd the file $COLONET_UFFD_RAM_PATH names (same inode, whatever the
 * spelling of the path)? */
static const char *ram_file(int fd)
{
    const char *path = getenv("COLONET_UFFD_RAM_PATH");
    struct stat want, got;
    if (!path || !*path || fd < 0)
        return NULL;
    int saved = errno;
    int same = stat(path, &want) == 0 && fstat(fd, &got) == 0 && want.st_dev == got.st_dev &&
               want.st_ino == got.st_ino;
    errno = saved;
    return same ? path : NULL;
}

/* The raw system call, not dlsym(RTLD_NEXT): dlsym may allocate, and an
 * allocation may mmap, which would land back here first. */
static void *sys_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    return (void *)syscall(SYS_mmap, addr, len, prot, flags, fd, off);
}

void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    void *got = sys_mmap(addr, len, prot, flags, fd, off);
    int type = flags & MAP_TYPE;
    if (got != MAP_FAILED && (type == MAP_SHARED || type == MAP_SHARED_VALIDATE)) {
        const char *path = ram_file(fd);
        if (path)
            track(got, len, path);
    }
    return got;
}

/* The same symbol under its large-file name (identical on 64-bit). */
void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    return mmap(addr, len, prot, flags, fd, off);
}
