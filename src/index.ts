/** platter's library API. */

export * from './core/bytes.js';
export { stack } from './core/chain.js';
export * from './core/disk.js';
export * from './core/errors.js';
export * from './core/storage.js';
export { zeroDisk } from './core/zeros.js';
export { byName, drivers } from './formats/index.js';
export { createImage, openImage, probe } from './formats/open.js';
export { ioBuffer, setIoBufferAllocator } from './ops/buffers.js';
export { type CompareOptions, type CompareResult, compareDisks } from './ops/compare.js';
export { type ConvertOptions, type ConvertResult, convertDisk } from './ops/convert.js';
export { type CopyOptions, type CopyResult, copyDisk } from './ops/copy.js';
export {
  createMultiHash,
  type Digests,
  HASH_ALGORITHMS,
  type HashAlgorithm,
  type HashOptions,
  hashDisk,
  type MultiHash,
  type MultiHashOptions,
  parseAlgorithms,
} from './ops/hash.js';
export { chainInfo, type ImageInfo, imageInfo, type LayerInfo } from './ops/info.js';
export { type MapEntry, mapDisk } from './ops/map.js';
export { type Partition, type PartitionTable, readPartitionTable } from './ops/partitions.js';
export type { OnProgress, OpOptions, Progress } from './ops/progress.js';
export { type FileStorage, openFile } from './storage/file.js';
export { nodeHost } from './storage/host.js';
export { memoryStorage } from './storage/memory.js';
export { createSplit, openSplit, splitStorage } from './storage/split.js';
