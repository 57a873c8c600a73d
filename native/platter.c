/*
 * platter's native helpers (Linux, Node-API): the few system calls Node's fs
 * module does not offer. Loaded by src/storage/native.ts, which has a pure-JS
 * fallback for every function when this addon is missing.
 *
 *   seekData(fd, offset)            lseek SEEK_DATA; -1 when no data follows (ENXIO)
 *   seekHole(fd, offset)            lseek SEEK_HOLE; -1 when offset is past EOF (ENXIO)
 *   dataRanges(fd, offset, end, max)
 *                                   [start0, end0, start1, end1, ...] of the data
 *                                   ranges in [offset, end), at most `max` pairs;
 *                                   null when the file system cannot tell (EINVAL)
 *   fallocate(fd, mode, offset, length) -> Promise<void>   (runs off the main thread)
 *   preadInto(fd, buf, offset)      pread on this thread: bytes read, or -errno
 *   readSectors(srcFd, dstFd, buf, params) -> [reached, good, readErrno, writeErrno, bad...]
 *                                   rescue's sector-by-sector reads and writes on
 *                                   this thread (sectors.c)
 *   ofdLock(fd, type, start, length)     type 0 unlock, 1 read, 2 write;
 *                                   true when taken, false when another open file
 *                                   description holds a conflicting lock
 *   ofdTest(fd, type, start, length)     null when `type` could be taken, else
 *                                   { type, start, length, pid } of a conflicting lock
 *   blockDeviceSize(fd)             ioctl BLKGETSIZE64 (bytes)
 *   logicalSectorSize(fd)           ioctl BLKSSZGET (bytes)
 *   alignedBuffer(size, alignment)  an ArrayBuffer whose memory is aligned (O_DIRECT)
 *   copySpans(srcFd, dstFd, spans, zeroBlock) -> Promise<[written, skipped]>
 *                                   file-to-file copy that leaves zero blocks
 *                                   unwritten, off the main thread (copy.c)
 *   readSpans(srcFd, buf, spans, zeroBlock) -> Promise<runs>
 *                                   the same reads and zero scan into buf; the
 *                                   non-zero runs as [dstOffset, length, bufOffset]*
 *   writeSpans(dstFd, buf, spans) -> Promise<written>
 *                                   [bufOffset, dstOffset, length]* of buf, written
 *   sendSpans(sock, buffers, segments, waitMs) -> Promise<sent>
 *                                   buffers and file ranges (sendfile) to a socket,
 *                                   off the main thread (send.c); dupFd, closeFd,
 *                                   shutdownFd, widenSendBuffer for its sender
 *   constants                       FALLOC_FL_* values
 *
 * Errors are thrown as Error objects with `code` (e.g. 'EINVAL'), `errno` and
 * `syscall`, like Node's own fs errors.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <time.h>
#include <unistd.h>

#include <node_api.h>

#include "platter.h"

#define CHECK(call)                                                   \
  do {                                                                \
    if ((call) != napi_ok) {                                          \
      napi_throw_error(env, NULL, "platter native: N-API call failed"); \
      return NULL;                                                    \
    }                                                                 \
  } while (0)

static const char *errno_name(int err) {
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 32))
  const char *name = strerrorname_np(err);
  if (name) return name;
#endif
  switch (err) {
    case EPERM: return "EPERM";
    case ENOENT: return "ENOENT";
    case EIO: return "EIO";
    case EBADF: return "EBADF";
    case EAGAIN: return "EAGAIN";
    case ENOMEM: return "ENOMEM";
    case EACCES: return "EACCES";
    case EFBIG: return "EFBIG";
    case EINVAL: return "EINVAL";
    case ENOTTY: return "ENOTTY";
    case ENOSPC: return "ENOSPC";
    case ESPIPE: return "ESPIPE";
    case ENODEV: return "ENODEV";
    case ENOSYS: return "ENOSYS";
    case EOPNOTSUPP: return "EOPNOTSUPP";
    case ENXIO: return "ENXIO";
    case EINTR: return "EINTR";
    case ECANCELED: return "ECANCELED";
    default: return "EIO";
  }
}

napi_value make_errno_error(napi_env env, int err, const char *syscall) {
  const char *name = errno_name(err);
  napi_value code, msg, error, num, sys;
  char text[256];
  snprintf(text, sizeof text, "%s: %s (%s)", syscall, strerror(err), name);
  napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &code);
  napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, &msg);
  napi_create_error(env, code, msg, &error);
  napi_create_int32(env, -err, &num);
  napi_set_named_property(env, error, "errno", num);
  napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &sys);
  napi_set_named_property(env, error, "syscall", sys);
  return error;
}

napi_value throw_errno(napi_env env, int err, const char *syscall) {
  napi_throw(env, make_errno_error(env, err, syscall));
  return NULL;
}

int get_args(napi_env env, napi_callback_info info, size_t want, napi_value *argv) {
  size_t argc = want;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < want) {
    napi_throw_type_error(env, NULL, "platter native: missing arguments");
    return 0;
  }
  return 1;
}

int get_int(napi_env env, napi_value v, int32_t *out) {
  if (napi_get_value_int32(env, v, out) != napi_ok) {
    napi_throw_type_error(env, NULL, "platter native: expected an integer");
    return 0;
  }
  return 1;
}

int get_fd(napi_env env, napi_value v, int32_t *out) {
  if (!get_int(env, v, out)) return 0;
  if (*out < 0) {
    napi_throw_range_error(env, NULL, "platter native: bad file descriptor");
    return 0;
  }
  return 1;
}

/* Offsets arrive as JS numbers (doubles, exact to 2^53). */
static int get_off(napi_env env, napi_value v, int64_t *out) {
  double d;
  if (napi_get_value_double(env, v, &d) != napi_ok || d < 0 || d > 9007199254740992.0) {
    napi_throw_range_error(env, NULL, "platter native: expected an offset in [0, 2^53]");
    return 0;
  }
  *out = (int64_t)d;
  return 1;
}

int get_bytes(napi_env env, napi_value v, void **data, size_t *length) {
  napi_typedarray_type type;
  if (napi_get_typedarray_info(env, v, &type, length, data, NULL, NULL) != napi_ok || type != napi_uint8_array) {
    napi_throw_type_error(env, NULL, "platter native: expected a Uint8Array");
    return 0;
  }
  return 1;
}

napi_value num(napi_env env, double d) {
  napi_value v;
  napi_create_double(env, d, &v);
  return v;
}

const double *get_triples(napi_env env, napi_value v, const char *what, uint32_t *count) {
  napi_typedarray_type type;
  size_t length;
  void *values;
  if (napi_get_typedarray_info(env, v, &type, &length, &values, NULL, NULL) != napi_ok ||
      type != napi_float64_array || length % 3 != 0 || length / 3 > UINT32_MAX) {
    char text[96];
    snprintf(text, sizeof text, "platter native: %s must be a Float64Array of triples", what);
    napi_throw_type_error(env, NULL, text);
    return NULL;
  }
  *count = (uint32_t)(length / 3);
  /* An empty array may have no memory: any non-null pointer will do, nothing is read. */
  return length ? values : (const double *)"";
}

napi_value queue_async(napi_env env, const char *name, napi_async_execute_callback execute,
                       napi_async_complete_callback complete, void *data, napi_deferred *deferred,
                       napi_async_work *work) {
  napi_value promise, resource;
  *work = NULL;
  napi_status st = napi_create_promise(env, deferred, &promise);
  if (st == napi_ok) st = napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &resource);
  if (st == napi_ok) st = napi_create_async_work(env, NULL, resource, execute, complete, data, work);
  if (st == napi_ok) st = napi_queue_async_work(env, *work);
  if (st == napi_ok) return promise;
  /* A promise that was made is never settled: nothing awaits it yet. */
  if (*work) napi_delete_async_work(env, *work);
  *work = NULL;
  napi_throw_error(env, NULL, "platter native: N-API call failed");
  return NULL;
}

/* Eight words at a time (n a multiple of 64, p 8-aligned). */
static int all_zero_words(const unsigned char *p, size_t n) {
  const uint64_t *q = (const uint64_t *)p;
  for (size_t i = 0; i < n / 8; i += 8) {
    if (q[i] | q[i + 1] | q[i + 2] | q[i + 3] | q[i + 4] | q[i + 5] | q[i + 6] | q[i + 7]) return 0;
  }
  return 1;
}

#if defined(__x86_64__)
#include <immintrin.h>
/*
 * 128 bytes per test with AVX2 (n a multiple of 128): twice the words'
 * speed on a block in cache (90 against 46 GB/s on the bench machine), and
 * a source of zeros is all scan. Chosen at run time: x86-64 does not imply AVX2.
 */
__attribute__((target("avx2"))) static int all_zero_avx2(const unsigned char *p, size_t n) {
  for (size_t i = 0; i < n; i += 128) {
    __m256i a = _mm256_or_si256(_mm256_loadu_si256((const __m256i *)(p + i)),
                                _mm256_loadu_si256((const __m256i *)(p + i + 32)));
    __m256i b = _mm256_or_si256(_mm256_loadu_si256((const __m256i *)(p + i + 64)),
                                _mm256_loadu_si256((const __m256i *)(p + i + 96)));
    a = _mm256_or_si256(a, b);
    if (!_mm256_testz_si256(a, a)) return 0;
  }
  return 1;
}
static int have_avx2(void) {
  static int known = -1;
  if (known < 0) known = __builtin_cpu_supports("avx2") ? 1 : 0;
  return known;
}
#endif

int is_zero(const unsigned char *p, size_t n) {
  /* Most data blocks are rejected by their first or last byte. */
  if (p[0] || p[n - 1]) return 0;
#if defined(__x86_64__)
  if ((n & 127) == 0 && have_avx2()) return all_zero_avx2(p, n);
#endif
  if ((n & 63) == 0 && ((uintptr_t)p & 7) == 0) return all_zero_words(p, n);
  for (size_t i = 0; i < n; i++)
    if (p[i]) return 0;
  return 1;
}

int pwrite_all(int fd, const unsigned char *p, size_t n, int64_t at, size_t *done) {
  size_t d = 0;
  int err = 0;
  while (d < n) {
    ssize_t w = pwrite(fd, p + d, n - d, (off_t)(at + (int64_t)d));
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      err = w < 0 ? errno : ENOSPC;
      break;
    }
    d += (size_t)w;
  }
  if (done) *done = d;
  return err;
}

/*
 * Writes of at least this many bytes into a regular file on ext4 have their
 * blocks reserved first (fallocate, KEEP_SIZE: the size still changes only by
 * the write). The write then finds the blocks mapped instead of reserving a
 * delayed allocation for each 4 KiB block under the inode's lock, which
 * writers of one file take in turn: 512 1 MiB writes into a new file took 75
 * instead of 99 ms (a C loop, two threads, medians of 15), and 245 instead of
 * 263 ms with the fsync; 2 GiB in 256 KiB writes from one thread (rescue's
 * batches, sectors.c) 0.59 instead of 1.08 s. Per 64 KiB write the extra call
 * cost more than it saved. XFS (83 against 86 ms) and btrfs gained nothing,
 * and on a network file system each call would be a round trip: ext4 only.
 */
#define RESERVE_MIN (256 << 10)
#define EXT4_SUPER_MAGIC 0xEF53

void reserve_blocks(int fd, int *state, int64_t at, size_t n) {
  if (n < RESERVE_MIN || *state < 0) return;
  if (*state == 0) {
    struct stat st;
    struct statfs fs;
    int ext4 = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && fstatfs(fd, &fs) == 0 && fs.f_type == EXT4_SUPER_MAGIC;
    *state = ext4 ? 1 : -1;
    if (!ext4) return;
  }
  /* Only a speed-up: where fallocate fails (no space), the write says what it can do. */
  if (fallocate(fd, FALLOC_FL_KEEP_SIZE, (off_t)at, (off_t)n) != 0) *state = -1;
}

int64_t monotonic_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* ---- SEEK_DATA / SEEK_HOLE ---------------------------------------------- */

static napi_value seek_common(napi_env env, napi_callback_info info, int whence, const char *name) {
  napi_value argv[2];
  int32_t fd;
  int64_t off;
  if (!get_args(env, info, 2, argv) || !get_int(env, argv[0], &fd) || !get_off(env, argv[1], &off)) return NULL;
  off_t r = lseek(fd, (off_t)off, whence);
  if (r < 0) {
    if (errno == ENXIO) return num(env, -1);
    return throw_errno(env, errno, name);
  }
  return num(env, (double)r);
}

static napi_value seek_data(napi_env env, napi_callback_info info) {
  return seek_common(env, info, SEEK_DATA, "lseek(SEEK_DATA)");
}

static napi_value seek_hole(napi_env env, napi_callback_info info) {
  return seek_common(env, info, SEEK_HOLE, "lseek(SEEK_HOLE)");
}

static napi_value data_ranges(napi_env env, napi_callback_info info) {
  napi_value argv[4], out;
  int32_t fd, max;
  int64_t pos, end;
  if (!get_args(env, info, 4, argv) || !get_int(env, argv[0], &fd) || !get_off(env, argv[1], &pos) ||
      !get_off(env, argv[2], &end) || !get_int(env, argv[3], &max))
    return NULL;
  CHECK(napi_create_array(env, &out));
  uint32_t n = 0;
  while (pos < end && (int32_t)(n / 2) < max) {
    off_t data = lseek(fd, (off_t)pos, SEEK_DATA);
    if (data < 0) {
      if (errno == ENXIO) break; /* only a hole (or EOF) follows */
      if (errno == EINVAL && n == 0) {
        napi_value nul;
        napi_get_null(env, &nul);
        return nul;
      }
      return throw_errno(env, errno, "lseek(SEEK_DATA)");
    }
    if (data >= end) break;
    off_t hole = lseek(fd, data, SEEK_HOLE);
    if (hole < 0) {
      if (errno != ENXIO) return throw_errno(env, errno, "lseek(SEEK_HOLE)");
      hole = end; /* raced with a truncate: treat the rest as data */
    }
    if (hole > end) hole = end;
    if (hole <= data) hole = data + 1; /* never loop forever on a confused file system */
    CHECK(napi_set_element(env, out, n++, num(env, (double)data)));
    CHECK(napi_set_element(env, out, n++, num(env, (double)hole)));
    pos = hole;
  }
  return out;
}

/* ---- pread on the calling thread ---------------------------------------- */

/*
 * preadInto(fd, buf, offset) -> bytes read, or -errno. For rescue's
 * synchronous reads: a bad sector is an answer, not an exception (Node's
 * readSync builds an error object with a message for each one).
 */
static napi_value pread_into(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  int32_t fd;
  int64_t off;
  if (!get_args(env, info, 3, argv) || !get_int(env, argv[0], &fd) || !get_off(env, argv[2], &off)) return NULL;
  size_t length;
  void *data;
  if (!get_bytes(env, argv[1], &data, &length)) return NULL;
  ssize_t r;
  do {
    r = pread(fd, data, length, (off_t)off);
  } while (r < 0 && errno == EINTR);
  return num(env, r < 0 ? -(double)errno : (double)r);
}

/* ---- fallocate (asynchronous) ------------------------------------------- */

typedef struct {
  int fd, mode;
  int64_t off, len;
  int err;
  napi_deferred deferred;
  napi_async_work work;
} falloc_job;

static void falloc_execute(napi_env env, void *data) {
  falloc_job *j = data;
  int r;
  do {
    r = fallocate(j->fd, j->mode, (off_t)j->off, (off_t)j->len);
  } while (r < 0 && errno == EINTR);
  j->err = r < 0 ? errno : 0;
}

static void falloc_complete(napi_env env, napi_status status, void *data) {
  falloc_job *j = data;
  if (status != napi_ok) j->err = ECANCELED;
  if (j->err) {
    napi_reject_deferred(env, j->deferred, make_errno_error(env, j->err, "fallocate"));
  } else {
    napi_value undef;
    napi_get_undefined(env, &undef);
    napi_resolve_deferred(env, j->deferred, undef);
  }
  napi_delete_async_work(env, j->work);
  free(j);
}

static napi_value do_fallocate(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  int32_t fd, mode;
  int64_t off, len;
  if (!get_args(env, info, 4, argv) || !get_int(env, argv[0], &fd) || !get_int(env, argv[1], &mode) ||
      !get_off(env, argv[2], &off) || !get_off(env, argv[3], &len))
    return NULL;
  falloc_job *j = calloc(1, sizeof *j);
  if (!j) return throw_errno(env, ENOMEM, "fallocate");
  j->fd = fd;
  j->mode = mode;
  j->off = off;
  j->len = len;
  napi_value promise = queue_async(env, "platter:fallocate", falloc_execute, falloc_complete, j, &j->deferred, &j->work);
  if (!promise) free(j);
  return promise;
}

/* ---- OFD byte-range locks ----------------------------------------------- */

static short lock_type(int32_t t) {
  return t == 0 ? F_UNLCK : t == 1 ? F_RDLCK : F_WRLCK;
}

/* Reads (fd, type, start, length) and runs one OFD fcntl on that range, retrying
 * EINTR. Returns fcntl's result (errno set), or -2 when the arguments were bad
 * (a JS exception is pending). */
static int ofd_fcntl(napi_env env, napi_callback_info info, int cmd, struct flock *fl) {
  napi_value argv[4];
  int32_t fd, type;
  int64_t start, len;
  if (!get_args(env, info, 4, argv) || !get_int(env, argv[0], &fd) || !get_int(env, argv[1], &type) ||
      !get_off(env, argv[2], &start) || !get_off(env, argv[3], &len))
    return -2;
  memset(fl, 0, sizeof *fl); /* l_pid must be 0 for OFD locks */
  fl->l_type = lock_type(type);
  fl->l_whence = SEEK_SET;
  fl->l_start = (off_t)start;
  fl->l_len = (off_t)len;
  int r;
  do {
    r = fcntl(fd, cmd, fl);
  } while (r < 0 && errno == EINTR);
  return r;
}

static napi_value ofd_lock(napi_env env, napi_callback_info info) {
  napi_value res;
  struct flock fl;
  int r = ofd_fcntl(env, info, F_OFD_SETLK, &fl);
  if (r == -2) return NULL;
  if (r < 0) {
    if (errno == EAGAIN || errno == EACCES) {
      napi_get_boolean(env, false, &res);
      return res;
    }
    return throw_errno(env, errno, "fcntl(F_OFD_SETLK)");
  }
  napi_get_boolean(env, true, &res);
  return res;
}

static napi_value ofd_test(napi_env env, napi_callback_info info) {
  napi_value res;
  struct flock fl;
  int r = ofd_fcntl(env, info, F_OFD_GETLK, &fl);
  if (r == -2) return NULL;
  if (r < 0) return throw_errno(env, errno, "fcntl(F_OFD_GETLK)");
  if (fl.l_type == F_UNLCK) {
    napi_get_null(env, &res);
    return res;
  }
  CHECK(napi_create_object(env, &res));
  napi_set_named_property(env, res, "type", num(env, fl.l_type == F_RDLCK ? 1 : 2));
  napi_set_named_property(env, res, "start", num(env, (double)fl.l_start));
  napi_set_named_property(env, res, "length", num(env, (double)fl.l_len));
  napi_set_named_property(env, res, "pid", num(env, (double)fl.l_pid));
  return res;
}

/* ---- block devices ------------------------------------------------------ */

static napi_value block_device_size(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int32_t fd;
  if (!get_args(env, info, 1, argv) || !get_int(env, argv[0], &fd)) return NULL;
  uint64_t size = 0;
  if (ioctl(fd, BLKGETSIZE64, &size) < 0) return throw_errno(env, errno, "ioctl(BLKGETSIZE64)");
  return num(env, (double)size);
}

static napi_value logical_sector_size(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int32_t fd;
  if (!get_args(env, info, 1, argv) || !get_int(env, argv[0], &fd)) return NULL;
  int size = 0;
  if (ioctl(fd, BLKSSZGET, &size) < 0) return throw_errno(env, errno, "ioctl(BLKSSZGET)");
  return num(env, (double)size);
}

/* ---- aligned memory for O_DIRECT ---------------------------------------- */

/* Buffers of at least this size (and at most page alignment) are fresh anonymous mappings. */
#define MAP_AT_LEAST (1 << 20)

/* hint: the size times two, plus one for a mapping. */
static void free_aligned(napi_env env, void *data, void *hint) {
  size_t size = (size_t)(uintptr_t)hint >> 1;
  int64_t ignored;
  napi_adjust_external_memory(env, -(int64_t)size, &ignored);
  if ((uintptr_t)hint & 1) munmap(data, size);
  else free(data);
}

static napi_value aligned_buffer(napi_env env, napi_callback_info info) {
  napi_value argv[2], ab;
  int32_t size, align;
  if (!get_args(env, info, 2, argv) || !get_int(env, argv[0], &size) || !get_int(env, argv[1], &align)) return NULL;
  if (size <= 0 || align < (int32_t)sizeof(void *) || (align & (align - 1)) != 0) {
    napi_throw_range_error(env, NULL, "platter native: bad size or alignment");
    return NULL;
  }
  void *mem = NULL;
  int mapped = size >= MAP_AT_LEAST && align <= 4096;
  if (mapped) {
    /* Zero pages on first touch: a buffer costs only what is used of it. */
    mem = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) return throw_errno(env, errno, "mmap");
  } else {
    int err = posix_memalign(&mem, (size_t)align, (size_t)size);
    if (err) return throw_errno(env, err, "posix_memalign");
    memset(mem, 0, (size_t)size);
  }
  void *hint = (void *)(((uintptr_t)size << 1) | (uintptr_t)mapped);
  if (napi_create_external_arraybuffer(env, mem, (size_t)size, free_aligned, hint, &ab) !=
      napi_ok) {
    if (mapped) munmap(mem, (size_t)size);
    else free(mem);
    napi_throw_error(env, "ENOTSUP", "platter native: external array buffers are not allowed");
    return NULL;
  }
  int64_t ignored;
  napi_adjust_external_memory(env, size, &ignored);
  return ab;
}

/* ---- module ------------------------------------------------------------- */

static void set_fn(napi_env env, napi_value exports, const char *name, napi_callback cb) {
  napi_value fn;
  napi_create_function(env, name, NAPI_AUTO_LENGTH, cb, NULL, &fn);
  napi_set_named_property(env, exports, name, fn);
}

static napi_value init(napi_env env, napi_value exports) {
  set_fn(env, exports, "seekData", seek_data);
  set_fn(env, exports, "seekHole", seek_hole);
  set_fn(env, exports, "dataRanges", data_ranges);
  set_fn(env, exports, "fallocate", do_fallocate);
  set_fn(env, exports, "preadInto", pread_into);
  set_fn(env, exports, "readSectors", read_sectors);
  set_fn(env, exports, "ofdLock", ofd_lock);
  set_fn(env, exports, "ofdTest", ofd_test);
  set_fn(env, exports, "blockDeviceSize", block_device_size);
  set_fn(env, exports, "logicalSectorSize", logical_sector_size);
  set_fn(env, exports, "alignedBuffer", aligned_buffer);
  set_fn(env, exports, "copySpans", copy_spans);
  set_fn(env, exports, "readSpans", read_spans);
  set_fn(env, exports, "writeSpans", write_spans);
  set_fn(env, exports, "sendSpans", send_spans);
  set_fn(env, exports, "dupFd", dup_fd);
  set_fn(env, exports, "closeFd", close_fd);
  set_fn(env, exports, "shutdownFd", shutdown_fd);
  set_fn(env, exports, "widenSendBuffer", widen_send_buffer);
  set_fn(env, exports, "setV8Flags", set_v8_flags);
  napi_value c;
  napi_create_object(env, &c);
  napi_set_named_property(env, c, "FALLOC_FL_KEEP_SIZE", num(env, FALLOC_FL_KEEP_SIZE));
  napi_set_named_property(env, c, "FALLOC_FL_PUNCH_HOLE", num(env, FALLOC_FL_PUNCH_HOLE));
  napi_set_named_property(env, c, "FALLOC_FL_ZERO_RANGE", num(env, FALLOC_FL_ZERO_RANGE));
  napi_set_named_property(env, exports, "constants", c);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
