/*
 * readSectors(srcFd, dstFd, buf, params) -> number[]
 *
 * Rescue's sector-by-sector reads (trimming, scraping, retrying) on the
 * calling thread, for the synchronous path: each sector of [from, to) is read
 * with its own pread, in order, forward or backward, exactly as the engine
 * would read it one call at a time. Good sectors that follow each other are
 * written together (one pwrite of up to WRITE_BATCH bytes, before the call
 * returns and before any other read fails). One call covers many sectors: the
 * engine's JavaScript per read (a promise, an N-API call, a write through
 * node:fs, a map update) cost more than the read itself through a FUSE mount.
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
 * source. A failed write (writeErrno) ends the call, and the sectors it was for
 * count as not read: `reached` is where they begin and `goodBytes` leaves them out.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "platter.h"

#define FORWARD 1
#define STOP_ON_ERROR 2
#define SPARSE 4
/* Bytes of consecutive good sectors written with one pwrite. */
#define WRITE_BATCH (256 << 10)

napi_value read_sectors(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  int32_t src, dst;
  if (!get_args(env, info, 4, argv) || !get_fd(env, argv[0], &src) || !get_fd(env, argv[1], &dst)) return NULL;
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
  const int64_t deadline = monotonic_ns() + (int64_t)p[5];
  if (from % ss != 0 || to % ss != 0) {
    napi_throw_range_error(env, NULL, "platter native: readSectors needs whole sectors");
    return NULL;
  }
  unsigned char *buf = data;
  const int forward = flags & FORWARD;
  /*
   * The batch of good sectors not yet written: [pend_at, pend_at + pend_len) of
   * the source, kept in wbuf at [pend_off, pend_off + pend_len) (filled upward
   * when reading forward, downward when reading backward).
   */
  const size_t wcap = WRITE_BATCH > (size_t)ss ? WRITE_BATCH - WRITE_BATCH % (size_t)ss : (size_t)ss;
  unsigned char *wbuf = malloc(wcap);
  if (!wbuf) return throw_errno(env, ENOMEM, "readSectors");
  int64_t pend_at = 0;
  size_t pend_len = 0, pend_off = 0;
  size_t nbad = 0, cap = 0;
  double *bad = NULL;
  int read_errno = 0, write_errno = 0;
  int64_t pos = forward ? from : to;
  int reserve = 0; /* reserve_blocks' memo for dst */
  /* Writes the batch; on failure its sectors count as not read (pos back to where they begin). */
#define FLUSH()                                                                                  \
  do {                                                                                           \
    if (pend_len > 0) {                                                                          \
      reserve_blocks(dst, &reserve, pend_at + delta, pend_len);                                  \
      write_errno = pwrite_all(dst, wbuf + pend_off, pend_len, pend_at + delta, NULL);           \
      if (write_errno) pos = forward ? pend_at : pend_at + (int64_t)pend_len;                    \
      pend_len = 0;                                                                              \
    }                                                                                            \
  } while (0)
  while (forward ? pos < to : pos > from) {
    const int64_t at = forward ? pos : pos - ss;
    ssize_t r;
    do {
      r = pread(src, buf, (size_t)ss, (off_t)at);
    } while (r < 0 && errno == EINTR);
    const int rerr = r < 0 ? errno : 0;
    pos = forward ? at + ss : at;
    if (r == ss) {
      if ((flags & SPARSE) && is_zero(buf, (size_t)ss)) {
        FLUSH(); /* a gap in what is written */
        if (write_errno) break;
      } else {
        const int follows = pend_len > 0 && (forward ? at == pend_at + (int64_t)pend_len : at + ss == pend_at);
        if (!follows || pend_len + (size_t)ss > wcap) {
          FLUSH();
          if (write_errno) break;
          pend_off = forward ? 0 : wcap;
        }
        if (forward) {
          if (pend_len == 0) pend_at = at;
          memcpy(wbuf + pend_off + pend_len, buf, (size_t)ss);
        } else {
          pend_off -= (size_t)ss;
          memcpy(wbuf + pend_off, buf, (size_t)ss);
          pend_at = at;
        }
        pend_len += (size_t)ss;
      }
    } else {
      /* What was read before this failure is written before it is reported. */
      FLUSH();
      if (write_errno) break;
      if (nbad == cap) {
        size_t c = cap ? 2 * cap : 16;
        double *b = realloc(bad, c * sizeof *b);
        if (!b) {
          free(bad);
          free(wbuf);
          return throw_errno(env, ENOMEM, "readSectors");
        }
        bad = b;
        cap = c;
      }
      bad[nbad++] = (double)at;
      if (r >= 0) read_errno = -1;
      else if (rerr != EIO) read_errno = rerr;
      if (read_errno || (flags & STOP_ON_ERROR)) break;
    }
    if (monotonic_ns() >= deadline) break;
  }
  if (!write_errno) FLUSH();
#undef FLUSH
  free(wbuf);
  /* Every sector between the start and pos was read once, and those not bad were good. */
  const int64_t good = (forward ? pos - from : to - pos) - (int64_t)nbad * ss;
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
