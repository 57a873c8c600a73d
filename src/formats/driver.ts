/**
 * The format-driver contract. A driver is one folder under src/formats/ whose
 * index.ts exports a `FormatDriver`; formats/index.ts lists them in probe order.
 * Drivers reach the host only through the Storage they are given and the
 * context's openSibling/createSibling (never node:fs).
 */
import type { DiskImpl } from '../core/disk.js';
import type { Host, Storage } from '../core/storage.js';

export interface OpenContext {
  readonly host: Host;
  readonly readOnly: boolean;
  /** Read without taking locks (-U / --force-share). */
  readonly forceShare: boolean;
  /** Open a file named inside the image (extent, segment, parent), relative to the image. */
  openSibling(name: string, opts?: { write?: boolean }): Promise<Storage>;
  /** Format-specific open options (-o K=V from the command line), e.g. `force=on`. */
  readonly options: Readonly<Record<string, string>>;
  /**
   * The open option cache=: `writeback` (the default) keeps a driver's own
   * flushes (its metadata ordering points); `unsafe` skips them, as qemu-img
   * convert does for a destination that is used only once it is complete.
   */
  readonly cache: CacheMode;
}

export type CacheMode = 'writeback' | 'unsafe';

export interface OpenedImage {
  disk: DiskImpl;
  /** The backing image as recorded in this one; openImage() opens and stacks it. */
  backing?: { name: string; format?: string };
}

export interface CreateContext {
  readonly host: Host;
  /** The main file, newly created and empty. */
  readonly storage: Storage;
  readonly size: number;
  /** -o K=V options (validated by the driver: unknown keys are an EINVAL error). */
  readonly options: Readonly<Record<string, string>>;
  /** -b BACKING, already opened (read-only) as a whole chain, with the name to record. */
  readonly backing?: { name: string; format: string; disk: import('../core/disk.js').Disk };
  /** Create another file of the image next to the main one (extents, segments). */
  createSibling(name: string): Promise<Storage>;
}

export interface FormatDriver {
  /** `-f`/`-O` name, folder name and docs name (principle 12). */
  readonly name: string;
  /**
   * How sure the driver is that `storage` holds its format: 0 = no, 100 = magic
   * matched. raw answers 1. Must not read more than it needs; must not throw on
   * short or odd files (answer 0).
   */
  probe(storage: Storage): Promise<number>;
  open(storage: Storage, ctx: OpenContext): Promise<OpenedImage>;
  /** Lays out a new image; no flush at the end (createImage flushes when its caller asks). */
  create?(ctx: CreateContext): Promise<void>;
  /** Which operations the format supports, as data (no NotCapable exceptions). */
  readonly capabilities: {
    readonly create: boolean;
    readonly write: boolean;
    readonly backing: boolean;
    readonly compression: boolean;
    readonly snapshots: boolean;
  };
}
