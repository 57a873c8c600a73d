/**
 * ioBuffer(size): memory for bulk reads and writes (copy, hash, compare).
 *
 * Why: reading from the page cache into a buffer that is not page-aligned was
 * measured 3-4× slower here (AMD EPYC, Linux 6.1: 2 MiB preads into V8's
 * ArrayBuffer memory, which glibc's malloc places 16 bytes past a page, ran at
 * ~0.5 GB/s; into a 4096-aligned buffer at ~2 GB/s, like dd). Operations do not
 * reach the host (principle 8), so the host installs an aligned allocator
 * (cli/common.ts does, from storage/native.ts); without one this is plain memory.
 */
let allocate: (size: number) => Uint8Array = (size) => new Uint8Array(size);

export function ioBuffer(size: number): Uint8Array {
  return allocate(size);
}

/** Installs the allocator for ioBuffer (one that returns zero-filled or not, any alignment). */
export function setIoBufferAllocator(fn: (size: number) => Uint8Array): void {
  allocate = fn;
}
