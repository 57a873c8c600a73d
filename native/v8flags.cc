/*
 * setV8Flags(flags): V8 command-line flags set at run time, as node:v8's
 * setFlagsFromString does, without loading node:v8: its heap-snapshot helpers
 * load node:stream, some 2 ms of a short command's start (bin/platter).
 */
#include <node_api.h>
#include <v8.h>

extern "C" napi_value set_v8_flags(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value arg;
  char flags[256];
  size_t len = 0;
  if (napi_get_cb_info(env, info, &argc, &arg, nullptr, nullptr) != napi_ok || argc < 1 ||
      napi_get_value_string_utf8(env, arg, flags, sizeof flags, &len) != napi_ok) {
    napi_throw_type_error(env, nullptr, "platter native: setV8Flags takes a string");
    return nullptr;
  }
  if (len >= sizeof flags - 1) {
    napi_throw_range_error(env, nullptr, "platter native: setV8Flags: flags longer than 254 bytes");
    return nullptr;
  }
  v8::V8::SetFlagsFromString(flags, len);
  return nullptr;
}
