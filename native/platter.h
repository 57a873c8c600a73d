/* Helpers shared by the addon's source files (defined in platter.c). */
#ifndef PLATTER_H
#define PLATTER_H
#include <stdint.h>
#include <node_api.h>

napi_value make_errno_error(napi_env env, int err, const char *syscall);
napi_value throw_errno(napi_env env, int err, const char *syscall);
int get_args(napi_env env, napi_callback_info info, size_t want, napi_value *argv);
int get_int(napi_env env, napi_value v, int32_t *out);
napi_value num(napi_env env, double d);
/* A Uint8Array's memory (throws a TypeError and returns 0 for anything else). */
int get_bytes(napi_env env, napi_value v, void **data, size_t *length);

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

#endif
