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
