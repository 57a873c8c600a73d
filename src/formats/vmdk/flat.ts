/**
 * FLAT and VMFS extents (the bytes of a file from an offset on) and ZERO
 * extents (no file; reads zeros, cannot be written).
 */
import type { Extent } from '../../core/disk.js';
import { PlatterError } from '../../core/errors.js';
import { type Storage, writeZerosTo } from '../../core/storage.js';
import type { VmdkExtent } from './table.js';

export class FlatExtent implements VmdkExtent {
  readonly granularity = 512;
  write?: (buf: Uint8Array, offset: number) => Promise<void>;
  writeZeroes?: (offset: number, length: number, mayUnmap: boolean) => Promise<void>;

  constructor(
    readonly storage: Storage,
    readonly size: number,
    /** Byte offset of the extent in its file. */
    private readonly start: number,
    writable: boolean,
    /** The storage is the descriptor's own file and is closed by the driver. */
    private readonly shared = false,
  ) {
    if (writable) {
      this.write = (buf, offset) => storage.write(buf, start + offset);
      this.writeZeroes = async (offset, length, mayUnmap) => {
        if (mayUnmap && storage.discard) return storage.discard(start + offset, length);
        await writeZerosTo(storage, start + offset, length);
      };
    }
  }

  read(buf: Uint8Array, offset: number): Promise<void> {
    return this.storage.read(buf, this.start + offset);
  }

  async extents(offset: number, length: number): Promise<Extent[]> {
    if (!this.storage.extents) return [{ offset, length, status: 'data', depth: 0 }];
    return (await this.storage.extents(this.start + offset, length)).map((e) => ({
      offset: e.offset - this.start,
      length: e.length,
      status: e.kind === 'hole' ? 'zero' : 'data',
      depth: 0,
    }));
  }

  flush(): Promise<void> {
    return this.storage.flush();
  }

  async close(): Promise<void> {
    if (!this.shared) await this.storage.close();
  }
}

export class ZeroExtent implements VmdkExtent {
  readonly granularity = 512;
  constructor(readonly size: number) {}

  async read(buf: Uint8Array): Promise<void> {
    buf.fill(0);
  }

  async extents(offset: number, length: number): Promise<Extent[]> {
    return [{ offset, length, status: 'zero', depth: 0 }];
  }

  async flush(): Promise<void> {}
  async close(): Promise<void> {}
}

/** A NOACCESS extent: any read is an error. */
export class NoAccessExtent implements VmdkExtent {
  readonly granularity = 512;
  constructor(
    readonly size: number,
    private readonly name: string,
  ) {}

  async read(): Promise<void> {
    throw new PlatterError('EIO', `${this.name}: extent is marked NOACCESS in the descriptor`);
  }

  async extents(offset: number, length: number): Promise<Extent[]> {
    return [{ offset, length, status: 'data', depth: 0 }];
  }

  async flush(): Promise<void> {}
  async close(): Promise<void> {}
}
