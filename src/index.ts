/** platter's library API. */
export * from './core/disk.js';
export * from './core/errors.js';
export * from './core/storage.js';
export * from './core/bytes.js';
export { stack } from './core/chain.js';
export { zeroDisk } from './core/zeros.js';
export { drivers, byName } from './formats/index.js';
export { openImage, createImage, probe } from './formats/open.js';
export { nodeHost } from './storage/host.js';
export { memoryStorage } from './storage/memory.js';
export { type FileStorage, openFile } from './storage/file.js';
export { createSplit, openSplit, splitStorage } from './storage/split.js';
export { type CopyOptions, type CopyResult, copyDisk } from './ops/copy.js';
export {
  type Digests,
  type HashAlgorithm,
  type HashOptions,
  type MultiHash,
  type MultiHashOptions,
  HASH_ALGORITHMS,
  createMultiHash,
  hashDisk,
  parseAlgorithms,
} from './ops/hash.js';
export { type CompareOptions, type CompareResult, compareDisks } from './ops/compare.js';
export { type ConvertOptions, type ConvertResult, convertDisk } from './ops/convert.js';
export { type MapEntry, mapDisk } from './ops/map.js';
export { type ImageInfo, type LayerInfo, chainInfo, imageInfo } from './ops/info.js';
export { type Partition, type PartitionTable, readPartitionTable } from './ops/partitions.js';
export { ioBuffer, setIoBufferAllocator } from './ops/buffers.js';
export type { OnProgress, OpOptions, Progress } from './ops/progress.js';
