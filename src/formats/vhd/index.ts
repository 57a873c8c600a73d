/**
 * vhd: Microsoft's Virtual Hard Disk (qemu's "vpc"), per the "Virtual Hard Disk
 * Image Format Specification". Reads and writes fixed, dynamic and differencing
 * disks (footer.ts, header.ts, fixed.ts, dynamic.ts).
 *
 * Probe: the footer cookie at offset 0 (dynamic/differencing copy) or in the
 * last 512 bytes (fixed), so a fixed VHD is never taken for raw.
 * Checksums: a mismatch in the footer or dynamic header is an error unless the
 * image is opened with `force=on`.
 * Parents of differencing disks: the W2ru, W2ku and MacX locators, then the
 * parent name, each tried next to the child; the first file found must carry
 * the parent UUID the child records.
 *
 * Create options: subformat=dynamic|fixed (differencing with -b);
 * force_size=on (default: the size is kept exactly, rounded up to 512 bytes)
 * or off (rounded up to a CHS product as qemu-img does, for Virtual PC);
 * azure=on (fixed, size rounded up to a whole MiB); block_size (dynamic,
 * power of two, default 2 MiB); preallocation=off|metadata|falloc|full
 * (falloc/full make a fixed disk).
 */
import { alignUp, parseSize, viewOf } from '../../core/bytes.js';
import { corrupt, invalid, PlatterError, unsupported } from '../../core/errors.js';
import { newUuid } from '../../core/random.js';
import { type Host, type Storage, writeZerosTo } from '../../core/storage.js';
import type { CreateContext, FormatDriver, OpenContext, OpenedImage } from '../driver.js';
import { checkNewSize, DynamicVhd, type ParentLink, UNUSED } from './dynamic.js';
import { FixedVhd } from './fixed.js';
import {
  COOKIE,
  checkFooter,
  checksum,
  DISK_DIFFERENCING,
  DISK_DYNAMIC,
  DISK_FIXED,
  diskSize,
  FOOTER_SIZE,
  type Footer,
  hasCookie,
  NO_OFFSET,
  newFooter,
  parseFooter,
  roundUpToChs,
  serializeFooter,
  uuidText,
} from './footer.js';
import {
  batEntries,
  CODE_MACX,
  CODE_W2KU,
  CODE_W2RU,
  checkHeader,
  emptyLocators,
  encodeUtf16,
  HEADER_COOKIE,
  HEADER_SIZE,
  type Locator,
  locatorPath,
  MAX_LOCATOR_LENGTH,
  parseHeader,
  serializeHeader,
} from './header.js';

const DEFAULT_BLOCK_SIZE = 2 * 2 ** 20;

async function probe(storage: Storage): Promise<number> {
  try {
    const size = await storage.size();
    if (size < FOOTER_SIZE) return 0;
    const buf = new Uint8Array(8);
    await storage.read(buf, 0);
    if (hasCookie(buf, COOKIE)) return 100;
    await storage.read(buf, size - FOOTER_SIZE);
    return hasCookie(buf, COOKIE) ? 100 : 0;
  } catch {
    return 0;
  }
}

interface FoundFooter {
  footer: Footer;
  checksumOk: boolean;
  tail: boolean;
}

/** The footer copy at offset 0 (dynamic kinds) or the footer at the end, preferring one whose checksum holds. */
async function readFooter(
  storage: Storage,
  fileSize: number,
): Promise<{ found: FoundFooter; tailCookie: boolean }> {
  const file = storage.name;
  if (fileSize < FOOTER_SIZE)
    throw new PlatterError('EFORMAT', `${file}: too short to be a VHD (${fileSize} bytes)`);
  const read = async (at: number, tail: boolean): Promise<FoundFooter | undefined> => {
    const buf = new Uint8Array(FOOTER_SIZE);
    await storage.read(buf, at);
    if (!hasCookie(buf, COOKIE)) return undefined;
    const footer = parseFooter(buf, file);
    return { footer, checksumOk: checksum(buf, 64) === footer.checksum, tail };
  };
  const head = await read(0, false);
  const tail = fileSize >= 2 * FOOTER_SIZE || !head ? await read(fileSize - FOOTER_SIZE, true) : undefined;
  const usableHead = head && head.footer.diskType !== DISK_FIXED ? head : undefined;
  const choice =
    [usableHead, tail].find((f) => f?.checksumOk) ??
    usableHead ??
    tail ??
    (head?.footer.diskType === DISK_FIXED ? head : undefined);
  if (!choice) throw new PlatterError('EFORMAT', `${file}: not a VHD image (no "conectix" footer)`);
  return { found: choice, tailCookie: !!tail };
}

async function readAt(storage: Storage, at: number, length: number): Promise<Uint8Array> {
  const buf = new Uint8Array(length);
  await storage.read(buf, at);
  return buf;
}

/** A VHD's own identity (UUID, timestamp) from its footer. */
async function identity(storage: Storage): Promise<{ uuid: Uint8Array; timestamp: number } | undefined> {
  const size = await storage.size();
  if (size < FOOTER_SIZE) return undefined;
  try {
    const { found } = await readFooter(storage, size);
    return { uuid: found.footer.uuid, timestamp: found.footer.timestamp };
  } catch (e) {
    if (e instanceof PlatterError) return undefined;
    throw e;
  }
}

const sameUuid = (a: Uint8Array, b: Uint8Array): boolean => a.every((x, i) => x === b[i]);

/** Names to try for the parent, most specific first. */
async function parentCandidates(
  storage: Storage,
  header: ReturnType<typeof parseHeader>,
  fileSize: number,
): Promise<string[]> {
  const file = storage.name;
  const paths: string[] = [];
  const order = [CODE_W2RU, CODE_W2KU, CODE_MACX];
  for (const code of order) {
    for (const l of header.locators) {
      if (l.code !== code || l.dataLength === 0) continue;
      if (l.dataLength > MAX_LOCATOR_LENGTH || l.dataOffset + l.dataLength > fileSize) {
        throw corrupt(
          file,
          `parent locator data at ${l.dataOffset} (${l.dataLength} bytes) is past the end of file or too long`,
        );
      }
      const p = locatorPath(code, await readAt(storage, l.dataOffset, l.dataLength));
      if (p) paths.push(p);
    }
  }
  if (header.parentName) paths.push(header.parentName.replace(/\\/g, '/'));
  const out: string[] = [];
  for (const p of paths) {
    const rel = p.replace(/^(\.\/)+/, '');
    const windowsAbs = /^[A-Za-z]:\//.test(rel) || rel.startsWith('//');
    const base = rel.slice(rel.lastIndexOf('/') + 1);
    for (const c of windowsAbs ? [base] : [rel, base]) if (c && !out.includes(c)) out.push(c);
  }
  return out;
}

async function findParent(
  storage: Storage,
  ctx: OpenContext,
  header: ReturnType<typeof parseHeader>,
  fileSize: number,
): Promise<string> {
  const file = storage.name;
  const candidates = await parentCandidates(storage, header, fileSize);
  if (candidates.length === 0)
    throw corrupt(file, 'differencing VHD records no parent locator and no parent name');
  let mismatch: string | undefined;
  for (const name of candidates) {
    let s: Storage;
    try {
      s = await ctx.openSibling(name);
    } catch (e) {
      if (e instanceof PlatterError && e.code === 'ENOENT') continue;
      if (e instanceof PlatterError && e.code === 'ELOCKED') return name;
      throw e;
    }
    try {
      const id = await identity(s);
      if (id && sameUuid(id.uuid, header.parentUuid)) return name;
      mismatch ??=
        `${file}: parent UUID mismatch: the image records parent ${uuidText(header.parentUuid)} but ${name} ` +
        (id ? `has ${uuidText(id.uuid)}` : 'is not a VHD');
      if (ctx.options.force === 'on') return name;
    } finally {
      await s.close().catch(() => undefined);
    }
  }
  if (mismatch)
    throw new PlatterError('ECORRUPT', `${mismatch} (open with --image-opts force=on to use it anyway)`);
  return candidates[0];
}

/** Locators for a parent named `name` (as given to -b) of the image at `childPath`. */
function buildLink(
  host: Host,
  childPath: string,
  name: string,
  id: { uuid: Uint8Array; timestamp: number },
): ParentLink {
  const absolute = host.resolve(childPath, name).replace(/\//g, '\\');
  const isAbs = name.startsWith('/') || /^[A-Za-z]:[\\/]/.test(name);
  const locators: ParentLink['locators'] = [];
  if (!isAbs) {
    const rel = name.replace(/\//g, '\\');
    locators.push({ code: CODE_W2RU, data: encodeUtf16(rel.startsWith('..') ? rel : `.\\${rel}`, true) });
  }
  locators.push({ code: CODE_W2KU, data: encodeUtf16(absolute, true) });
  return { name, uuid: id.uuid, timestamp: id.timestamp, locators, unicodeName: absolute.slice(0, 255) };
}

async function open(storage: Storage, ctx: OpenContext): Promise<OpenedImage> {
  const file = storage.name;
  const force = ctx.options.force === 'on';
  const fileSize = await storage.size();
  const { found, tailCookie } = await readFooter(storage, fileSize);
  const footer = found.footer;
  if (!found.checksumOk && !force) {
    throw corrupt(
      file,
      `footer checksum 0x${footer.checksum.toString(16)} does not match the computed one; open with --image-opts force=on to read it anyway`,
    );
  }
  checkFooter(footer, file);
  const size = diskSize(footer);
  if (footer.diskType === DISK_FIXED) {
    if (!found.tail) throw corrupt(file, 'fixed VHD has no footer at the end of the file');
    if (size > fileSize - FOOTER_SIZE) {
      throw corrupt(file, `disk size ${size} is larger than the data area (${fileSize - FOOTER_SIZE} bytes)`);
    }
    return { disk: new FixedVhd(storage, footer, size, ctx.readOnly, found.checksumOk) };
  }

  if (footer.dataOffset === NO_OFFSET || footer.dataOffset + HEADER_SIZE > fileSize) {
    throw corrupt(
      file,
      `footer data offset ${footer.dataOffset} does not point at a dynamic header inside the file (size ${fileSize})`,
    );
  }
  const hbuf = await readAt(storage, footer.dataOffset, HEADER_SIZE);
  if (!hasCookie(hbuf, HEADER_COOKIE))
    throw corrupt(file, `no "cxsparse" dynamic header at offset ${footer.dataOffset}`);
  const header = parseHeader(hbuf, file);
  const headerOk = checksum(hbuf, 36) === header.checksum;
  if (!headerOk && !force) {
    throw corrupt(
      file,
      `dynamic header checksum 0x${header.checksum.toString(16)} does not match the computed one; open with --image-opts force=on to read it anyway`,
    );
  }
  if (size > 2040 * 2 ** 30) throw corrupt(file, `disk size ${size} is larger than 2040 GiB`);
  checkHeader(header, file, fileSize, size);
  // Only the entries that cover the disk: any past them address nothing.
  const entries = Math.min(header.maxTableEntries, batEntries(file, size, header.blockSize));
  const batBytes = await readAt(storage, header.tableOffset, entries * 4);
  const bv = viewOf(batBytes);
  const bat = new Uint32Array(entries);
  const bad = new Map<number, string>();
  const bitmapSize = alignUp(Math.ceil(header.blockSize / 512 / 8), 512);
  for (let i = 0; i < bat.length; i++) {
    const e = bv.getUint32(i * 4, false);
    bat[i] = e;
    if (e === UNUSED) continue;
    const end = e * 512 + bitmapSize + header.blockSize;
    // Reported by check and by any access to the block, so that check can still run.
    if (end > fileSize) {
      bad.set(
        i,
        `BAT entry ${i} (sector ${e}) points past the end of file (block ends at ${end}, file size ${fileSize})`,
      );
    }
  }
  let backing: { name: string; format?: string } | undefined;
  if (footer.diskType === DISK_DIFFERENCING) {
    backing = { name: await findParent(storage, ctx, header, fileSize), format: 'vhd' };
  }
  const parentLink = async (name: string): Promise<ParentLink> => {
    const s = await ctx.openSibling(name);
    try {
      const id = await identity(s);
      if (!id)
        throw unsupported(
          `${file}: the new parent ${name} is not a VHD; a differencing VHD needs a VHD parent`,
        );
      return buildLink(ctx.host, file, name, id);
    } finally {
      await s.close().catch(() => undefined);
    }
  };
  const disk = new DynamicVhd({
    storage,
    footer,
    header,
    bat,
    bad,
    size,
    fileSize,
    tailFooter: tailCookie,
    readOnly: ctx.readOnly,
    backing,
    parentLink,
    checksumOk: found.checksumOk && headerOk,
  });
  return { disk, backing };
}

// ---- create ----

const KNOWN = ['subformat', 'force_size', 'azure', 'preallocation', 'block_size'];

function onOff(v: string | undefined, key: string, dflt: boolean): boolean {
  if (v === undefined) return dflt;
  if (['on', 'true', 'yes', '1'].includes(v)) return true;
  if (['off', 'false', 'no', '0'].includes(v)) return false;
  throw invalid(`vhd: option ${key} must be on or off (got '${v}')`);
}

async function create(ctx: CreateContext): Promise<void> {
  const o = ctx.options;
  for (const k of Object.keys(o)) {
    if (!KNOWN.includes(k)) throw invalid(`vhd: unknown option '${k}' (known: ${KNOWN.join(', ')})`);
  }
  const file = ctx.storage.name;
  const azure = onOff(o.azure, 'azure', false);
  const forceSize = onOff(o.force_size, 'force_size', true);
  const prealloc = o.preallocation ?? 'off';
  if (!['off', 'metadata', 'falloc', 'full'].includes(prealloc)) {
    throw invalid(`vhd: preallocation must be off, metadata, falloc or full (got '${prealloc}')`);
  }
  const thick = prealloc === 'falloc' || prealloc === 'full';
  let sub = o.subformat ?? (azure || thick ? 'fixed' : 'dynamic');
  if (sub !== 'fixed' && sub !== 'dynamic')
    throw invalid(`vhd: subformat must be fixed or dynamic (got '${sub}')`);
  if (ctx.backing) {
    if (sub === 'fixed' || azure || thick)
      throw invalid('vhd: a differencing VHD (-b) cannot be fixed or preallocated');
    sub = 'differencing';
  } else if (sub === 'dynamic' && (azure || thick)) {
    throw invalid(`vhd: ${azure ? 'azure=on' : `preallocation=${prealloc}`} needs subformat=fixed`);
  }
  let size = alignUp(ctx.size, 512);
  if (azure) size = alignUp(size, 2 ** 20);
  else if (!forceSize) size = roundUpToChs(size);
  checkNewSize(file, size);
  const uuid = newUuid('rfc');

  if (sub === 'fixed') {
    const footer = serializeFooter(newFooter(size, DISK_FIXED, NO_OFFSET, uuid));
    await ctx.storage.truncate(size + FOOTER_SIZE);
    if (prealloc === 'falloc' && ctx.storage.allocate) await ctx.storage.allocate(0, size);
    else if (thick) await writeZerosTo(ctx.storage, 0, size);
    await ctx.storage.write(footer, size);
    return;
  }

  const blockSize = o.block_size ? parseSize(o.block_size, 'block_size') : DEFAULT_BLOCK_SIZE;
  if (blockSize < 512 || blockSize > 256 * 2 ** 20 || (blockSize & (blockSize - 1)) !== 0) {
    throw invalid(`vhd: block_size must be a power of two between 512 and 256 MiB (got ${blockSize})`);
  }
  const entries = batEntries(file, size, blockSize);
  const tableOffset = FOOTER_SIZE + HEADER_SIZE;
  let end = tableOffset + alignUp(entries * 4, 512);
  const locators: Locator[] = emptyLocators();
  let parentUuid: Uint8Array = new Uint8Array(16);
  let parentTimestamp = 0;
  let parentName = '';
  const writes: Array<[Uint8Array, number]> = [];
  if (ctx.backing) {
    if (ctx.backing.format !== 'vhd') {
      throw unsupported(
        `vhd: a differencing VHD needs a VHD parent (${ctx.backing.name} is ${ctx.backing.format})`,
      );
    }
    const parentStorage = ctx.backing.disk.storages[0];
    const id = parentStorage ? await identity(parentStorage) : undefined;
    if (!id) throw unsupported(`vhd: cannot read the parent ${ctx.backing.name}'s VHD footer`);
    const link = buildLink(ctx.host, file, ctx.backing.name, id);
    for (const [i, l] of link.locators.entries()) {
      const space = alignUp(Math.max(l.data.length, 1), 512);
      const padded = new Uint8Array(space);
      padded.set(l.data);
      writes.push([padded, end]);
      locators[i] = { code: l.code, dataSpace: space, dataLength: l.data.length, dataOffset: end };
      end += space;
    }
    parentUuid = link.uuid;
    parentTimestamp = link.timestamp;
    parentName = link.unicodeName;
  }
  const type = ctx.backing ? DISK_DIFFERENCING : DISK_DYNAMIC;
  const footer = serializeFooter(newFooter(size, type, FOOTER_SIZE, uuid));
  const header = serializeHeader({
    tableOffset,
    version: 0x00010000,
    maxTableEntries: entries,
    blockSize,
    checksum: 0,
    parentUuid,
    parentTimestamp,
    parentName,
    locators,
  });
  await ctx.storage.write(footer, 0);
  await ctx.storage.write(header, FOOTER_SIZE);
  await ctx.storage.write(new Uint8Array(alignUp(entries * 4, 512)).fill(0xff), tableOffset);
  for (const [buf, at] of writes) await ctx.storage.write(buf, at);
  await ctx.storage.write(footer, end);
}

export const vhd: FormatDriver = {
  name: 'vhd',
  probe,
  open,
  create,
  capabilities: { create: true, write: true, backing: true, compression: false, snapshots: false },
};
