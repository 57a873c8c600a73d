{
  "targets": [
    {
      "target_name": "platter",
      "sources": ["platter.c", "copy.c", "send.c", "sectors.c", "v8flags.cc"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
      "cflags_cc": ["-fno-exceptions", "-fno-rtti"],
      "defines": ["_GNU_SOURCE", "_FILE_OFFSET_BITS=64", "NAPI_VERSION=8"]
    }
  ]
}
