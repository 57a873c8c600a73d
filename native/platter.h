/* Helpers shared by the addon's source files (defined in platter.c). */
#ifndef PLATTER_H
#define PLATTER_H
#include <stdint.h>
#include <node_api.h>

napi_value make_errno_error(napi_env env, int err, const char *syscall);
napi_value throw_errno(napi_env env, int err, const char *syscall);
int get_args(napi_env env, napi_callback_info info, size_t want, napi_value *argv);
int get_int(napi_env env, napi_value v, int32_t *out);
/* A file descriptor argument: a non-negative integer (throws a RangeError for a negative one). */
int get_fd(napi_env env, napi_value v, int32_t *out);
napi_value num(napi_env env, double d);
/* A Uint8Array's memory (throws a TypeError and returns 0 for anything else). */
int get_bytes(napi_env env, napi_value v, void **data, size_t *length);
/* A Float64Array of [a, b, c] triples: its values and how many triples (NULL after throwing a TypeError). */
const double *get_triples(napi_env env, napi_value v, const char *what, uint32_t *count);
/*
 * Queues `data` as a libuv work item (execute on a pool thread, complete on the
 * main thread) and returns its promise; NULL after throwing when N-API fails,
 * with nothing queued (*work is NULL then): the caller frees `data`.
 */
napi_value queue_async(napi_env env, const char *name, napi_async_execute_callback execute,
                       napi_async_complete_callback complete, void *data, napi_deferred *deferred,
                       napi_async_work *work);

/* True when [p, p+n) is all zero bytes (n > 0). */
int is_zero(const unsigned char *p, size_t n);
/*
 * pwrite(2) of all n bytes at `at`, retried on EINTR and short writes: 0, or
 * errno (ENOSPC for a write of nothing), with *done (when not NULL) the bytes
 * written before the failure.
 */
int pwrite_all(int fd, const unsigned char *p, size_t n, int64_t at, size_t *done);
/*
 * Before a write of n bytes at `at`: reserves its blocks (fallocate,
 * KEEP_SIZE) when the write is large enough to gain and fd is a regular file
 * on ext4 (platter.c RESERVE_MIN). *state is the caller's memo for fd: 0 at
 * first (not asked yet), then 1 (reserve) or -1 (never: another kind of file,
 * or fallocate failed once).
 */
void reserve_blocks(int fd, int *state, int64_t at, size_t n);
/* CLOCK_MONOTONIC in nanoseconds. */
int64_t monotonic_ns(void);

/* copy.c */
napi_value copy_spans(napi_env env, napi_callback_info info);
napi_value read_spans(napi_env env, napi_callback_info info);
napi_value write_spans(napi_env env, napi_callback_info info);

/* send.c */
napi_value send_spans(napi_env env, napi_callback_info info);
napi_value dup_fd(napi_env env, napi_callback_info info);
napi_value close_fd(napi_env env, napi_callback_info info);
napi_value shutdown_fd(napi_env env, napi_callback_info info);
napi_value widen_send_buffer(napi_env env, napi_callback_info info);

/* v8flags.cc */
napi_value set_v8_flags(napi_env env, napi_callback_info info);

/* sectors.c */
napi_value read_sectors(napi_env env, napi_callback_info info);

#endif
