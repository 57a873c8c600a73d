/**
 * imageInfo(disk): what `platter info` shows about an opened image (its top
 * layer, or with `backingChain` every layer of the chain, top first).
 */
import type { Disk, SnapshotInfo } from '../core/disk.js';
import { type PartitionTable, readPartitionTable } from './partitions.js';

export interface LayerInfo {
  filename: string;
  format: string;
  subformat?: string;
  /** Bytes the guest sees. */
  virtualSize: number;
  /** Bytes allocated on the host by the files of this layer (undefined if unknown). */
  allocatedSize?: number;
  /** Cluster, grain or block size in bytes. */
  granularity?: number;
  backingFilename?: string;
  backingFormat?: string;
  snapshots?: SnapshotInfo[];
  dirty?: boolean;
  corrupt?: boolean;
  /** The host files that make up this layer. */
  files: string[];
  /** Format-specific facts. */
  details?: Record<string, unknown>;
}

export interface ImageInfo extends LayerInfo {
  /** MBR or GPT found on the virtual disk. */
  partitionTable?: PartitionTable;
}

async function layerInfo(layer: Disk): Promise<LayerInfo> {
  const fi = await layer.info();
  const files = [...new Set(layer.storages.flatMap((s) => s.files ?? [s.name]))];
  let allocatedSize: number | undefined;
  for (const s of layer.storages) {
    if (!s.allocatedSize) {
      allocatedSize = undefined;
      break;
    }
    allocatedSize = (allocatedSize ?? 0) + (await s.allocatedSize());
  }
  const out: LayerInfo = { filename: layer.name, format: fi.format, virtualSize: layer.size, files: [] };
  if (fi.subformat !== undefined) out.subformat = fi.subformat;
  if (allocatedSize !== undefined) out.allocatedSize = allocatedSize;
  out.granularity = fi.granularity ?? layer.granularity;
  delete (out as Partial<LayerInfo>).files;
  out.files = files;
  if (fi.backing) {
    out.backingFilename = fi.backing.name;
    if (fi.backing.format) out.backingFormat = fi.backing.format;
  }
  if (fi.snapshots?.length) out.snapshots = fi.snapshots;
  if (fi.dirty !== undefined) out.dirty = fi.dirty;
  if (fi.corrupt !== undefined) out.corrupt = fi.corrupt;
  if (fi.details && Object.keys(fi.details).length) out.details = fi.details;
  return out;
}

/**
 * Info on the image; the partition table is read through the whole chain
 * (`partitions: false`: not read, for an image opened without its chain).
 */
export async function imageInfo(disk: Disk, opts: { partitions?: boolean } = {}): Promise<ImageInfo> {
  const top = disk.layers[0] ?? disk;
  const info: ImageInfo = await layerInfo(top);
  if (opts.partitions === false) return info;
  const pt = await readPartitionTable(disk);
  if (pt) info.partitionTable = pt;
  return info;
}

/** Info on every layer of the chain, top first (the top one with its partition table). */
export async function chainInfo(disk: Disk): Promise<ImageInfo[]> {
  const out: ImageInfo[] = [await imageInfo(disk)];
  for (const layer of disk.layers.slice(1)) out.push(await layerInfo(layer));
  return out;
}
