/**
 * Fixed VHDs (type 2): the disk's bytes, then the 512-byte footer. The data
 * area may be longer than the disk when a Virtual PC image is sized by its CHS
 * product; only `size` bytes are the disk.
 */
import type { CheckResult, DiskFeatures, DiskImpl, Extent, FormatInfo, HostSpan } from '../../core/disk.js';
import { invalid, PlatterError } from '../../core/errors.js';
import { Mutex } from '../../core/mutex.js';
import type { Storage } from '../../core/storage.js';
import { checkNewSize, requireZeroTail } from './dynamic.js';
import { FOOTER_SIZE, type Footer, resizedFooter, serializeFooter, uuidText } from './footer.js';

export class FixedVhd implements DiskImpl {
  size: number;
  readonly storages: readonly Storage[];
  readonly features: DiskFeatures;
  private readonly lock = new Mutex();

  constructor(
    private readonly storage: Storage,
    private footer: Footer,
    size: number,
    readOnly: boolean,
    private readonly checksumOk: boolean,
  ) {
    this.size = size;
    this.storages = [storage];
    this.features = { check: () => this.check(), resize: (n, o) => this.resize(n, o.shrink) };
    if (readOnly) this.write = undefined;
  }

  read(buf: Uint8Array, offset: number): Promise<void> {
    return this.storage.read(buf, offset);
  }

  write? = (buf: Uint8Array, offset: number): Promise<void> => this.storage.write(buf, offset);

  async extents(offset: number, length: number): Promise<Extent[]> {
    if (!this.storage.extents) return [{ offset, length, status: 'data', depth: 0 }];
    return (await this.storage.extents(offset, length)).map((e) => ({
      offset: e.offset,
      length: e.length,
      status: e.kind === 'hole' ? ('zero' as const) : ('data' as const),
      depth: 0,
    }));
  }

  /** The data area is the disk, byte for byte, for reads and writes (the footer follows it). */
  async hostSpans(offset: number, length: number): Promise<HostSpan[]> {
    return [{ offset, length, storage: this.storage, at: offset }];
  }

  flush(): Promise<void> {
    return this.storage.flush();
  }

  close(): Promise<void> {
    return this.storage.close();
  }

  async info(): Promise<FormatInfo> {
    return {
      format: 'vhd',
      subformat: 'fixed',
      details: {
        creatorApplication: this.footer.creatorApp.replace(/\0/g, ''),
        currentSize: this.footer.currentSize,
        geometry: this.footer.geometry,
        uuid: uuidText(this.footer.uuid),
        checksumValid: this.checksumOk,
      },
    };
  }

  private async resize(newSize: number, shrink: boolean): Promise<void> {
    if (!this.write) throw new PlatterError('EREADONLY', `${this.storage.name}: image is open read-only`);
    checkNewSize(this.storage.name, newSize);
    await this.lock.run(async () => {
      const old = this.size;
      if (newSize < old) {
        if (!shrink)
          throw invalid(`${this.storage.name}: shrinking needs --shrink (from ${old} to ${newSize})`);
        await requireZeroTail(this.storage.name, this, newSize, old);
      }
      this.footer = resizedFooter(this.footer, newSize);
      const dataEnd = (await this.storage.size()) - FOOTER_SIZE;
      await this.storage.truncate(newSize + FOOTER_SIZE);
      // The old footer (and any CHS slack) becomes disk space that must read as zeros.
      if (newSize > old) {
        const from = old;
        const to = Math.min(newSize, Math.max(dataEnd + FOOTER_SIZE, old));
        if (to > from) await this.storage.write(new Uint8Array(to - from), from);
      }
      await this.storage.write(serializeFooter(this.footer), newSize);
      this.size = newSize;
    });
  }

  private async check(): Promise<CheckResult> {
    const messages: string[] = [];
    const fileSize = await this.storage.size();
    let corruptions = 0;
    if (fileSize - FOOTER_SIZE < this.size) {
      corruptions++;
      messages.push(`data area ${fileSize - FOOTER_SIZE} is shorter than the disk size ${this.size}`);
    }
    if (!this.checksumOk) {
      corruptions++;
      messages.push('footer checksum does not match');
    }
    return { corruptions, leaks: 0, messages, details: { fileSize } };
  }
}
