/*
 * copySpans(srcFd, dstFd, spans, zeroBlock) -> Promise<number[]>
 *
 * Copies host-file ranges into a destination that already reads zeros (a new
 * sparse file), leaving every all-zero block unwritten, as one libuv work item:
 * pread, the zero scan and pwrite of each chunk run on one pool thread, so the
 * data is scanned and written while it is still in that CPU's cache, and the
 * main thread is woken once per call instead of twice per chunk.
 *
 *   spans      Float64Array of triples [srcOffset, dstOffset, length]
 *   zeroBlock  zero-detection unit (a power of two); blocks follow absolute
 *              multiples of it on the destination, so zero runs stay aligned
 *
 * Resolves [bytes written, bytes skipped as zeros, dstOffset, length, ...]:
 * the counts, then the destination ranges left unwritten (adjacent ones
 * merged), which a caller that allocated them may give back. A failed or short read or
 * write rejects with an errno error that also carries `offset` (on the file
 * that failed) and `side` ('source' or 'destination'); a read that meets the
 * end of the source has code 'EOF'.
 *
 * readSpans(srcFd, buf, spans, zeroBlock) -> Promise<number[]>
 *
 * The same reads and zero scan into a caller's buffer, for destinations that
 * allocate (image formats): the spans' bytes are packed into `buf` in order,
 * except that a piece that was all zeros leaves its place to the next, so a
 * buffer holds only data and many spans of zeros pass through a small one.
 * It stops where the next piece would not fit. The result is [consumed,
 * dstOffset, length, bufOffset, ...]: how many span bytes it scanned (in
 * order), then the runs that are not all zero (blocks again on absolute
 * multiples of zeroBlock at dstOffset; adjacent runs merged).
 *
 * writeSpans(dstFd, buf, spans) -> Promise<number>
 *
 * Writes [bufOffset, dstOffset, length] triples of `buf` to the file as one
 * work item (the runs readSpans found, where an image format put them).
 * Resolves the bytes written.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "platter.h"

/*
 * Bytes per read: copySpans through a thread's own buffer, readSpans a piece
 * at a time (src/core/storage.ts SCAN_PIECE says the same). 512 KiB pieces
 * scanned the bench's 2 GiB of written zeros ~5 % sooner than 256 KiB ones
 * (convert -O qcow2, medians of 21, interleaved): half the preads, and a piece
 * is still in the core's cache when the scan reads it.
 */
#define CHUNK (1 << 20)
#define SCAN_PIECE (512 << 10)
#define ALIGN 4096

enum job_kind { COPY_SPANS, READ_SPANS, WRITE_SPANS };

typedef struct {
  enum job_kind kind;
  int src, dst;
  unsigned char *into;
  size_t into_len;
  napi_ref into_ref;
  double *runs; /* triples: readSpans the data runs, copySpans the skipped ones */
  size_t nruns, cap;
  uint32_t count; /* spans */
  int64_t *spans; /* count * 3 */
  uint32_t zero_block;
  int64_t written, skipped;
  int64_t consumed; /* readSpans: span bytes scanned, in order */
  int reserve; /* reserve_blocks' memo for dst (0 until the first large write) */
  int err; /* errno, or -1 for end of file */
  int failed_dst;
  int64_t failed_at;
  napi_deferred deferred;
  napi_async_work work;
} copy_job;

static int read_full(copy_job *j, unsigned char *buf, size_t n, int64_t at) {
  size_t done = 0;
  while (done < n) {
    ssize_t r = pread(j->src, buf + done, n - done, (off_t)(at + (int64_t)done));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      j->err = r < 0 ? errno : -1;
      j->failed_dst = 0;
      j->failed_at = at + (int64_t)done;
      return 0;
    }
    done += (size_t)r;
  }
  return 1;
}

static int write_full(copy_job *j, const unsigned char *buf, size_t n, int64_t at) {
  size_t done;
  reserve_blocks(j->dst, &j->reserve, at, n);
  int err = pwrite_all(j->dst, buf, n, at, &done);
  if (err) {
    j->err = err;
    j->failed_dst = 1;
    j->failed_at = at + (int64_t)done;
    return 0;
  }
  j->written += (int64_t)n;
  return 1;
}

/* Records a run (readSpans: data, copySpans: skipped), merged with the last when both are contiguous. */
static int add_run(copy_job *j, int64_t at, size_t n, size_t buf_off) {
  if (j->nruns) {
    double *last = j->runs + 3 * (j->nruns - 1);
    if ((int64_t)(last[0] + last[1]) == at && (size_t)(last[2] + last[1]) == buf_off) {
      last[1] += (double)n;
      return 1;
    }
  }
  if (j->nruns == j->cap) {
    size_t cap = j->cap ? 2 * j->cap : 64;
    double *r = realloc(j->runs, cap * 3 * sizeof *r);
    if (!r) {
      j->err = ENOMEM;
      return 0;
    }
    j->runs = r;
    j->cap = cap;
  }
  double *r = j->runs + 3 * j->nruns++;
  r[0] = (double)at;
  r[1] = (double)n;
  r[2] = (double)buf_off;
  return 1;
}

/*
 * Hands each non-zero run of buf (n bytes for dst offset `at`) to the
 * destination: written (copySpans) or recorded (readSpans, buf at `buf_off`).
 */
static int put_run(copy_job *j, const unsigned char *buf, size_t n, int64_t at, size_t buf_off) {
  if (j->kind == COPY_SPANS) return write_full(j, buf, n, at);
  j->written += (int64_t)n;
  return add_run(j, at, n, buf_off);
}

/* An all-zero run left unwritten: copySpans says where (its destination offset). */
static int skip_run(copy_job *j, int64_t at, size_t n) {
  j->skipped += (int64_t)n;
  return j->kind != COPY_SPANS || add_run(j, at, n, (size_t)at);
}

static int write_runs(copy_job *j, const unsigned char *buf, size_t n, int64_t at, size_t buf_off) {
  /*
   * A piece of zeros in one scan, not one per zero block (4 KiB for VHD, VDI
   * and raw destinations: 128 calls per 512 KiB piece of a zero-filled disk).
   * A piece of data is mostly rejected by its first or last byte.
   */
  if (is_zero(buf, n)) return skip_run(j, at, n);
  const int64_t zb = j->zero_block;
  size_t run = 0;
  int run_zero = -1;
  for (size_t i = 0; i < n;) {
    int64_t abs = at + (int64_t)i;
    size_t next = (size_t)((abs / zb + 1) * zb - at);
    if (next > n) next = n;
    int z = is_zero(buf + i, next - i);
    if (z != run_zero) {
      if (run_zero == 0 && !put_run(j, buf + run, i - run, at + (int64_t)run, buf_off + run)) return 0;
      if (run_zero == 1 && !skip_run(j, at + (int64_t)run, i - run)) return 0;
      run = i;
      run_zero = z;
    }
    i = next;
  }
  if (run_zero == 0) return put_run(j, buf + run, n - run, at + (int64_t)run, buf_off + run);
  if (run_zero == 1) return skip_run(j, at + (int64_t)run, n - run);
  return 1;
}

/*
 * The next piece of a span at destination offset `dst` with `left` bytes to
 * go: at most `unit` bytes, ending on a multiple of the zero block (or of
 * `unit`, when that is the smaller) on the destination. A span that starts
 * off a boundary (a VHD block sits 512 bytes past a page, and its host-file
 * data runs start on the page before) then meets the zero scan and pwrite in
 * whole aligned pieces, not in pieces that straddle every zero block; and a
 * span that starts on one (a qcow2 cluster) is cut every `unit` bytes from
 * its start, so its pieces match the source's extents.
 */
static size_t piece_len(int64_t dst, int64_t left, int64_t unit, int64_t zero_block) {
  int64_t align = zero_block < unit ? zero_block : unit;
  int64_t n = unit - dst % align;
  return (size_t)(left < n ? left : n);
}

/*
 * One buffer per pool thread, kept for the life of the process (libuv's pool
 * has a few threads): a fresh buffer per call would cost a page fault and a
 * page clearing for every 4 KiB it copies.
 */
static __thread unsigned char *thread_buf;

static void copy_execute(napi_env env, void *data) {
  copy_job *j = data;
  if (j->kind == WRITE_SPANS) {
    for (uint32_t s = 0; s < j->count; s++) {
      int64_t at = j->spans[3 * s], dst = j->spans[3 * s + 1], len = j->spans[3 * s + 2];
      if (!write_full(j, j->into + at, (size_t)len, dst)) return;
    }
    return;
  }
  if (j->kind == READ_SPANS) {
    /* readSpans: straight into the caller's buffer, packed. */
    size_t off = 0;
    for (uint32_t s = 0; s < j->count && !j->err; s++) {
      int64_t src = j->spans[3 * s], dst = j->spans[3 * s + 1], len = j->spans[3 * s + 2];
      /*
       * A piece at a time, scanned while it is still in this CPU's cache. The
       * runs say where their bytes are, so a piece that was all zeros leaves
       * its place to the next one (and a source of zeros stays in the cache).
       */
      for (int64_t done = 0; done < len;) {
        size_t n = piece_len(dst + done, len - done, SCAN_PIECE, j->zero_block);
        if (off + n > j->into_len) return; /* full: the caller goes on from `consumed` */
        int64_t kept = j->written;
        if (!read_full(j, j->into + off, n, src + done) || !write_runs(j, j->into + off, n, dst + done, off)) return;
        done += (int64_t)n;
        j->consumed += (int64_t)n;
        if (j->written != kept) off += n;
      }
    }
    return;
  }
  if (!thread_buf && posix_memalign((void **)&thread_buf, ALIGN, CHUNK) != 0) {
    thread_buf = NULL;
    j->err = ENOMEM;
    return;
  }
  unsigned char *buf = thread_buf;
  for (uint32_t s = 0; s < j->count && !j->err; s++) {
    int64_t src = j->spans[3 * s], dst = j->spans[3 * s + 1], len = j->spans[3 * s + 2];
    for (int64_t done = 0; done < len;) {
      size_t n = piece_len(dst + done, len - done, CHUNK, j->zero_block);
      if (!read_full(j, buf, n, src + done) || !write_runs(j, buf, n, dst + done, 0)) break;
      done += (int64_t)n;
    }
  }
}

static void copy_complete(napi_env env, napi_status status, void *data) {
  copy_job *j = data;
  if (status != napi_ok && !j->err) j->err = ECANCELED;
  if (j->err) {
    napi_value error, at, side;
    if (j->err == -1) {
      napi_value code, msg;
      napi_create_string_utf8(env, "EOF", NAPI_AUTO_LENGTH, &code);
      napi_create_string_utf8(env, "pread: unexpected end of file", NAPI_AUTO_LENGTH, &msg);
      napi_create_error(env, code, msg, &error);
    } else {
      error = make_errno_error(env, j->err, j->failed_dst ? "pwrite" : "pread");
    }
    napi_create_double(env, (double)j->failed_at, &at);
    napi_set_named_property(env, error, "offset", at);
    napi_create_string_utf8(env, j->failed_dst ? "destination" : "source", NAPI_AUTO_LENGTH, &side);
    napi_set_named_property(env, error, "side", side);
    napi_reject_deferred(env, j->deferred, error);
  } else if (j->kind == WRITE_SPANS) {
    napi_resolve_deferred(env, j->deferred, num(env, (double)j->written));
  } else if (j->kind == READ_SPANS) {
    napi_value out;
    napi_create_array_with_length(env, 1 + 3 * j->nruns, &out);
    napi_set_element(env, out, 0, num(env, (double)j->consumed));
    for (size_t i = 0; i < 3 * j->nruns; i++) napi_set_element(env, out, (uint32_t)(i + 1), num(env, j->runs[i]));
    napi_resolve_deferred(env, j->deferred, out);
  } else {
    napi_value out;
    napi_create_array_with_length(env, 2 + 2 * j->nruns, &out);
    napi_set_element(env, out, 0, num(env, (double)j->written));
    napi_set_element(env, out, 1, num(env, (double)j->skipped));
    for (size_t i = 0; i < j->nruns; i++) {
      napi_set_element(env, out, (uint32_t)(2 + 2 * i), num(env, j->runs[3 * i]));
      napi_set_element(env, out, (uint32_t)(3 + 2 * i), num(env, j->runs[3 * i + 1]));
    }
    napi_resolve_deferred(env, j->deferred, out);
  }
  if (j->into_ref) napi_delete_reference(env, j->into_ref);
  napi_delete_async_work(env, j->work);
  free(j->runs);
  free(j->spans);
  free(j);
}

/* Checks and copies the spans (a Float64Array of triples) and zeroBlock into a new job. */
static copy_job *new_job(napi_env env, napi_value spans_v, int32_t zero_block) {
  uint32_t count;
  const double *d = get_triples(env, spans_v, "spans", &count);
  if (!d) return NULL;
  if (zero_block < 512 || (zero_block & (zero_block - 1)) != 0) {
    napi_throw_range_error(env, NULL, "platter native: zeroBlock must be a power of two >= 512");
    return NULL;
  }
  size_t length = (size_t)count * 3;
  for (size_t i = 0; i < length; i++) {
    if (!(d[i] >= 0 && d[i] <= 9007199254740992.0)) {
      napi_throw_range_error(env, NULL, "platter native: span values must be offsets in [0, 2^53]");
      return NULL;
    }
  }
  copy_job *j = calloc(1, sizeof *j);
  int64_t *spans = malloc(length ? length * sizeof *spans : 1);
  if (!j || !spans) {
    free(j);
    free(spans);
    throw_errno(env, ENOMEM, "copySpans");
    return NULL;
  }
  for (size_t i = 0; i < length; i++) spans[i] = (int64_t)d[i];
  j->count = count;
  j->spans = spans;
  j->zero_block = (uint32_t)zero_block;
  return j;
}

/* Frees a job that was never queued. */
static void discard_job(napi_env env, copy_job *j) {
  if (j->into_ref) napi_delete_reference(env, j->into_ref);
  free(j->spans);
  free(j);
}

static napi_value queue_job(napi_env env, copy_job *j, const char *what) {
  napi_value promise = queue_async(env, what, copy_execute, copy_complete, j, &j->deferred, &j->work);
  if (!promise) discard_job(env, j);
  return promise;
}

napi_value copy_spans(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  int32_t src, dst;
  if (!get_args(env, info, 4, argv) || !get_fd(env, argv[0], &src) || !get_fd(env, argv[1], &dst)) return NULL;
  int32_t zero_block;
  if (!get_int(env, argv[3], &zero_block)) return NULL;
  copy_job *j = new_job(env, argv[2], zero_block);
  if (!j) return NULL;
  j->kind = COPY_SPANS;
  j->src = src;
  j->dst = dst;
  return queue_job(env, j, "platter:copySpans");
}

/* readSpans and writeSpans: (fd, buf, spans[, zeroBlock]) with the spans checked against buf. */
static napi_value buffer_job(napi_env env, napi_callback_info info, enum job_kind kind) {
  napi_value argv[4];
  int32_t fd;
  size_t argc = kind == READ_SPANS ? 4 : 3;
  if (!get_args(env, info, argc, argv) || !get_fd(env, argv[0], &fd)) return NULL;
  size_t length;
  void *data;
  if (!get_bytes(env, argv[1], &data, &length)) return NULL;
  /* writeSpans scans nothing: any valid zeroBlock will do. */
  int32_t zero_block = 512;
  if (kind == READ_SPANS && !get_int(env, argv[3], &zero_block)) return NULL;
  copy_job *j = new_job(env, argv[2], zero_block);
  if (!j) return NULL;
  /* writeSpans names where in buf each span is (readSpans stops where buf is full). */
  int fits = 1;
  for (uint32_t s = 0; s < j->count && kind == WRITE_SPANS; s++) {
    size_t at = (size_t)j->spans[3 * s], len = (size_t)j->spans[3 * s + 2];
    fits = fits && at <= length && len <= length - at;
  }
  if (!fits) {
    discard_job(env, j);
    napi_throw_range_error(env, NULL, "platter native: the spans do not fit in buf");
    return NULL;
  }
  j->kind = kind;
  j->src = kind == READ_SPANS ? fd : -1;
  j->dst = kind == WRITE_SPANS ? fd : -1;
  j->into = data;
  j->into_len = length;
  /* Keeps the buffer alive (and in place: it is not detached while referenced by us) until completion. */
  if (napi_create_reference(env, argv[1], 1, &j->into_ref) != napi_ok) {
    discard_job(env, j);
    napi_throw_error(env, NULL, "platter native: N-API call failed");
    return NULL;
  }
  return queue_job(env, j, kind == READ_SPANS ? "platter:readSpans" : "platter:writeSpans");
}

napi_value read_spans(napi_env env, napi_callback_info info) {
  return buffer_job(env, info, READ_SPANS);
}

napi_value write_spans(napi_env env, napi_callback_info info) {
  return buffer_job(env, info, WRITE_SPANS);
}
