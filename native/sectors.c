/*
 * readSectors(srcFd, dstFd, buf, params) -> number[]
 *
 * Rescue's sector-by-sector reads (trimming, scraping, retrying) on the
 * calling thread, for the synchronous path: each sector of [from, to) is read
 * with its own pread, in order, forward or backward, exactly as the engine
 * would read it one call at a time, and a good sector is written to the
 * destination at once. One call covers many sectors: the engine's JavaScript
 * per read (a promise, an N-API call, a write through node:fs, a map update)
 * cost more than the read itself through a FUSE mount.
 *
 *   buf     a Uint8Array of at least sectorSize bytes (page-aligned for O_DIRECT)
 *   params  Float64Array [from, to, sectorSize, dstDelta, flags, maxNs]:
 *           from, to multiples of sectorSize; a good sector at p is written at
 *           p + dstDelta; flags: 1 forward, 2 stop after the first bad sector,
 *           4 sparse (an all-zero sector is not written); the call returns once
 *           maxNs nanoseconds have passed (CLOCK_MONOTONIC), after a read.
 *
 * Result: [reached, goodBytes, readErrno, writeErrno, bad...]: `reached` is
 * where the next read would start (forward) or where the last one started
 * (backward); every sector between `from`/`to` and `reached` was read once;
 * `bad` lists the positions of the sectors that failed, in reading order.
 * A failure other than EIO (readErrno its errno, -1 for a short read: the end
 * of the file) ends the call after that sector, so the caller can look at the
 * source; a failed write (writeErrno) ends it before anything else is read, the
 * sector it was for counted as read and good.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "platter.h"

#define FORWARD 1
#define STOP_ON_ERROR 2
#define SPARSE 4

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int all_zero(const unsigned char *p, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (p[i]) return 0;
  return 1;
}

/* pwrite of n bytes at `at`, whole: 0 or errno. */
static int write_all(int fd, const unsigned char *p, size_t n, int64_t at) {
  size_t done = 0;
  while (done < n) {
    ssize_t w = pwrite(fd, p + done, n - done, (off_t)(at + (int64_t)done));
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return w < 0 ? errno : ENOSPC;
    done += (size_t)w;
  }
  return 0;
}

napi_value read_sectors(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  int32_t src, dst;
  if (!get_args(env, info, 4, argv) || !get_int(env, argv[0], &src) || !get_int(env, argv[1], &dst)) return NULL;
  void *data;
  size_t buf_len;
  if (!get_bytes(env, argv[2], &data, &buf_len)) return NULL;
  napi_typedarray_type type;
  size_t count;
  void *pv;
  if (napi_get_typedarray_info(env, argv[3], &type, &count, &pv, NULL, NULL) != napi_ok ||
      type != napi_float64_array || count != 6) {
    napi_throw_type_error(env, NULL, "platter native: params must be a Float64Array of 6 values");
    return NULL;
  }
  const double *p = pv;
  const double limit = 9007199254740992.0;
  if (!(p[0] >= 0 && p[1] >= p[0] && p[1] <= limit && p[2] >= 1 && p[2] <= (double)buf_len &&
        p[3] >= -limit && p[3] <= limit && p[5] >= 0)) {
    napi_throw_range_error(env, NULL, "platter native: bad readSectors parameters");
    return NULL;
  }
  const int64_t from = (int64_t)p[0], to = (int64_t)p[1], ss = (int64_t)p[2], delta = (int64_t)p[3];
  const int flags = (int)p[4];
  const int64_t deadline = now_ns() + (int64_t)p[5];
  if (from % ss != 0 || to % ss != 0 || src < 0 || dst < 0) {
    napi_throw_range_error(env, NULL, "platter native: readSectors needs whole sectors");
    return NULL;
  }
  unsigned char *buf = data;
  const int forward = flags & FORWARD;
  size_t nbad = 0, cap = 0;
  double *bad = NULL;
  int64_t good = 0;
  int read_errno = 0, write_errno = 0;
  int64_t pos = forward ? from : to;
  while (forward ? pos < to : pos > from) {
    const int64_t at = forward ? pos : pos - ss;
    ssize_t r;
    do {
      r = pread(src, buf, (size_t)ss, (off_t)at);
    } while (r < 0 && errno == EINTR);
    pos = forward ? at + ss : at;
    if (r == ss) {
      good += ss;
      if (!((flags & SPARSE) && all_zero(buf, (size_t)ss))) {
        write_errno = write_all(dst, buf, (size_t)ss, at + delta);
        if (write_errno) break;
      }
    } else {
      if (nbad == cap) {
        size_t c = cap ? 2 * cap : 16;
        double *b = realloc(bad, c * sizeof *b);
        if (!b) {
          free(bad);
          return throw_errno(env, ENOMEM, "readSectors");
        }
        bad = b;
        cap = c;
      }
      bad[nbad++] = (double)at;
      if (r >= 0) read_errno = -1;
      else if (errno != EIO) read_errno = errno;
      if (read_errno || (flags & STOP_ON_ERROR)) break;
    }
    if (now_ns() >= deadline) break;
  }
  napi_value out;
  napi_create_array_with_length(env, 4 + nbad, &out);
  napi_set_element(env, out, 0, num(env, (double)pos));
  napi_set_element(env, out, 1, num(env, (double)good));
  napi_set_element(env, out, 2, num(env, (double)read_errno));
  napi_set_element(env, out, 3, num(env, (double)write_errno));
  for (size_t i = 0; i < nbad; i++) napi_set_element(env, out, (uint32_t)(4 + i), num(env, bad[i]));
  free(bad);
  return out;
}
