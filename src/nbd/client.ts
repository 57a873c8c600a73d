/**
 * An NBD client that is a Storage: `nbd://HOST[:PORT][/EXPORT]` and
 * `nbd+unix:///EXPORT?socket=PATH` open like files, so every command reads
 * and writes NBD exports (TLS, `nbds://`, is refused clearly).
 *
 * Handshake: fixed newstyle; NBD_OPT_STRUCTURED_REPLY, then
 * NBD_OPT_SET_META_CONTEXT `base:allocation`, then NBD_OPT_GO asking for the
 * block size constraints; a server without GO gets NBD_OPT_EXPORT_NAME.
 * Transmission: requests are split at the server's maximum block size and sent
 * concurrently (up to MAX_INFLIGHT per connection); replies, simple or
 * structured, are matched to their request by cookie in whatever order they
 * come. Block status becomes Storage.extents() (ZERO -> `hole`, which reads
 * as zeros, so copies skip it).
 *
 * Failures are PlatterErrors that name the URI, the command and the offset:
 * a refused export (ENOENT), a read-only export opened for writing
 * (EREADONLY), an error reply (EIO/ENOSPC/...), a lost connection (EGONE:
 * not a bad sector, so a rescue or an acquisition stops instead of going on).
 */
import { connect, type Socket } from 'node:net';
import { type ErrorCode, PlatterError } from '../core/errors.js';
import type { OpenMode, Storage, StorageExtent } from '../core/storage.js';
import * as P from './protocol.js';
import { SocketReader, StreamClosed } from './stream.js';

const MAX_INFLIGHT = 64;
/** Largest option reply or structured chunk payload (other than read data) we accept. */
const MAX_REPLY_PAYLOAD = 16 * 1024 * 1024;
const OLDSTYLE_MAGIC = 0x00420281861253n;

export type NbdAddress = { path: string } | { host: string; port: number };

export interface NbdTarget {
  address: NbdAddress;
  exportName: string;
}

/** Parses an NBD URI (the NBD URI specification's nbd and nbd+unix schemes). */
export function parseNbdUri(uri: string): NbdTarget {
  const scheme = /^([a-z0-9+.-]+):\/\//i.exec(uri)?.[1]?.toLowerCase();
  if (scheme === 'nbds' || scheme === 'nbds+unix') {
    throw new PlatterError(
      'EUNSUPPORTED',
      `${uri}: NBD over TLS (nbds) is not supported; use nbd:// or nbd+unix://`,
    );
  }
  if (scheme !== 'nbd' && scheme !== 'nbd+unix') {
    throw new PlatterError(
      'EINVAL',
      `${uri}: not an NBD URI (use nbd://HOST[:PORT]/EXPORT or nbd+unix:///EXPORT?socket=PATH)`,
    );
  }
  let url: URL;
  try {
    url = new URL(uri);
  } catch {
    throw new PlatterError('EINVAL', `${uri}: malformed NBD URI`);
  }
  let exportName: string;
  try {
    exportName = decodeURIComponent(url.pathname.replace(/^\//, ''));
  } catch {
    throw new PlatterError('EINVAL', `${uri}: malformed export name`);
  }
  if (scheme === 'nbd+unix') {
    const path = url.searchParams.get('socket');
    if (!path) throw new PlatterError('EINVAL', `${uri}: nbd+unix URIs need ?socket=PATH`);
    if (url.hostname)
      throw new PlatterError('EINVAL', `${uri}: nbd+unix URIs have no host (nbd+unix:///EXPORT?socket=PATH)`);
    return { address: { path }, exportName };
  }
  const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
  if (!host) throw new PlatterError('EINVAL', `${uri}: no host in NBD URI`);
  const port = url.port ? Number(url.port) : P.DEFAULT_PORT;
  return { address: { host, port }, exportName };
}

interface Pending {
  type: number;
  offset: number;
  length: number;
  /** READ target. */
  buf?: Uint8Array;
  /** BLOCK_STATUS result. */
  extents?: Array<[number, number]>;
  error?: { errno: number; message: string; offset?: number };
  resolve: () => void;
  reject: (e: Error) => void;
}

const COMMAND_NAMES: Record<number, string> = {
  [P.CMD_READ]: 'read',
  [P.CMD_WRITE]: 'write',
  [P.CMD_FLUSH]: 'flush',
  [P.CMD_TRIM]: 'trim',
  [P.CMD_CACHE]: 'cache',
  [P.CMD_WRITE_ZEROES]: 'write zeroes',
  [P.CMD_BLOCK_STATUS]: 'block status',
};

function codeOf(errno: number): ErrorCode {
  switch (errno) {
    case P.ENOSPC:
      return 'ENOSPC';
    case P.EPERM:
      return 'EREADONLY';
    case P.EINVAL:
    case P.EOVERFLOW:
      return 'ERANGE';
    case P.ENOTSUP:
      return 'EUNSUPPORTED';
    case P.ESHUTDOWN:
      return 'EGONE'; // the server is going away: the request was not tried
    default:
      return 'EIO';
  }
}

export class NbdClient {
  size = 0;
  flags = 0;
  structured = false;
  /** The server's id for base:allocation, when negotiated. */
  allocationContext: number | undefined;
  minBlock = 1;
  maxBlock = P.MAX_REQUEST;
  private readonly reader: SocketReader;
  private readonly pending = new Map<bigint, Pending>();
  private nextCookie = 1n;
  private inflight = 0;
  private readonly queue: Array<() => void> = [];
  private broken: PlatterError | null = null;
  /** Requests not yet answered, awaited by close(). */
  private readonly active = new Set<Promise<Pending>>();
  private closing = false;

  private constructor(
    readonly name: string,
    private readonly socket: Socket,
  ) {
    this.reader = new SocketReader(socket);
    socket.on('error', () => undefined);
  }

  static async connect(name: string, target: NbdTarget): Promise<NbdClient> {
    const socket = await new Promise<Socket>((resolve, reject) => {
      const s =
        'path' in target.address
          ? connect(target.address.path)
          : connect({ host: target.address.host, port: target.address.port, noDelay: true });
      s.once('connect', () => resolve(s));
      s.once('error', (e: NodeJS.ErrnoException) => {
        const why =
          e.code === 'ECONNREFUSED'
            ? 'connection refused (is the NBD server running?)'
            : e.code === 'ENOENT'
              ? 'no such socket'
              : (e.code ?? e.message);
        reject(new PlatterError(e.code === 'ENOENT' ? 'ENOENT' : 'EIO', `${name}: cannot connect: ${why}`));
      });
    });
    const client = new NbdClient(name, socket);
    try {
      await client.handshake(target.exportName);
    } catch (e) {
      socket.destroy();
      if (e instanceof StreamClosed) {
        throw new PlatterError(
          'EIO',
          `${name}: the NBD server closed the connection during the handshake (export refused?)`,
        );
      }
      throw e;
    }
    client.receive().catch(() => undefined);
    return client;
  }

  get readOnly(): boolean {
    return (this.flags & P.TF_READ_ONLY) !== 0;
  }

  can(flag: number): boolean {
    return (this.flags & flag) !== 0;
  }

  private protocolError(what: string): PlatterError {
    return new PlatterError('EIO', `${this.name}: NBD protocol error: ${what}`);
  }

  private async optionReply(expect: number): Promise<{ type: number; data: Buffer }> {
    const h = await this.reader.read(20);
    if (h.readBigUInt64BE(0) !== P.OPT_REPLY_MAGIC) throw this.protocolError('bad option reply magic');
    const opt = h.readUInt32BE(8);
    const type = h.readUInt32BE(12);
    const len = h.readUInt32BE(16);
    if (opt !== expect)
      throw this.protocolError(`reply to ${P.optionName(opt)} while waiting for ${P.optionName(expect)}`);
    if (len > MAX_REPLY_PAYLOAD) throw this.protocolError(`option reply of ${len} bytes`);
    return { type, data: Buffer.from(await this.reader.read(len)) };
  }

  private refused(opt: number, type: number, data: Buffer): PlatterError {
    const msg = data.length ? `: ${data.toString('utf8')}` : '';
    if (type === P.REP_ERR_UNKNOWN)
      return new PlatterError('ENOENT', `${this.name}: the NBD server has no such export${msg}`);
    if (type === P.REP_ERR_TLS_REQD)
      return new PlatterError('EUNSUPPORTED', `${this.name}: the NBD server requires TLS${msg}`);
    if (type === P.REP_ERR_SHUTDOWN)
      return new PlatterError('EIO', `${this.name}: the NBD server is shutting down${msg}`);
    return new PlatterError(
      'EIO',
      `${this.name}: the NBD server refused ${P.optionName(opt)} (reply 0x${type.toString(16)})${msg}`,
    );
  }

  private async handshake(exportName: string): Promise<void> {
    const g = await this.reader.read(16);
    if (g.readBigUInt64BE(0) !== P.NBDMAGIC) throw this.protocolError('not an NBD server (no NBDMAGIC)');
    const second = g.readBigUInt64BE(8);
    if (second === OLDSTYLE_MAGIC) {
      throw new PlatterError(
        'EUNSUPPORTED',
        `${this.name}: the server speaks the oldstyle NBD protocol, which platter does not`,
      );
    }
    if (second !== P.IHAVEOPT) throw this.protocolError('unknown handshake magic');
    const hflags = (await this.reader.read(2)).readUInt16BE(0);
    const fixed = (hflags & P.FLAG_FIXED_NEWSTYLE) !== 0;
    const noZeroes = (hflags & P.FLAG_NO_ZEROES) !== 0;
    const cflags = Buffer.alloc(4);
    cflags.writeUInt32BE((fixed ? P.FLAG_C_FIXED_NEWSTYLE : 0) | (noZeroes ? P.FLAG_C_NO_ZEROES : 0));
    this.socket.write(cflags);
    const nameBuf = Buffer.from(exportName, 'utf8');
    if (nameBuf.length > P.MAX_STRING)
      throw new PlatterError('EINVAL', `${this.name}: export name is too long`);

    if (fixed) {
      this.socket.write(P.optionRequest(P.OPT_STRUCTURED_REPLY));
      const sr = await this.optionReply(P.OPT_STRUCTURED_REPLY);
      this.structured = sr.type === P.REP_ACK;

      if (this.structured) {
        const body = Buffer.concat([P.lpString(exportName), u32(1), P.lpString(P.BASE_ALLOCATION)]);
        this.socket.write(P.optionRequest(P.OPT_SET_META_CONTEXT, body));
        for (;;) {
          const r = await this.optionReply(P.OPT_SET_META_CONTEXT);
          if (r.type === P.REP_META_CONTEXT && r.data.length >= 4) {
            if (r.data.subarray(4).toString('utf8') === P.BASE_ALLOCATION)
              this.allocationContext = r.data.readUInt32BE(0);
          } else break; // ACK, or an error: go on without block status
        }
      }

      const go = Buffer.concat([P.lpString(exportName), u16(1), u16(P.INFO_BLOCK_SIZE)]);
      this.socket.write(P.optionRequest(P.OPT_GO, go));
      let gotExport = false;
      for (;;) {
        const r = await this.optionReply(P.OPT_GO);
        if (r.type === P.REP_ACK) break;
        if (r.type === P.REP_INFO) {
          if (r.data.length < 2) throw this.protocolError('empty NBD_REP_INFO');
          const info = r.data.readUInt16BE(0);
          if (info === P.INFO_EXPORT && r.data.length === 12) {
            this.size = this.checkedSize(r.data.readBigUInt64BE(2));
            this.flags = r.data.readUInt16BE(10);
            gotExport = true;
          } else if (info === P.INFO_BLOCK_SIZE && r.data.length === 14) {
            this.minBlock = Math.max(1, r.data.readUInt32BE(2));
            this.maxBlock = Math.max(this.minBlock, Math.min(r.data.readUInt32BE(10), P.MAX_REQUEST));
          }
          continue;
        }
        if (r.type === P.REP_ERR_UNSUP) {
          // An old server: fall back to NBD_OPT_EXPORT_NAME below.
          await this.exportName(nameBuf, noZeroes);
          return;
        }
        throw this.refused(P.OPT_GO, r.type, r.data);
      }
      if (!gotExport) throw this.protocolError('NBD_OPT_GO succeeded without NBD_INFO_EXPORT');
      return;
    }
    await this.exportName(nameBuf, noZeroes);
  }

  private checkedSize(v: bigint): number {
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw this.protocolError(`export size ${v} is too large`);
    return Number(v);
  }

  private async exportName(name: Buffer, noZeroes: boolean): Promise<void> {
    this.socket.write(P.optionRequest(P.OPT_EXPORT_NAME, name));
    const b = await this.reader.read(10);
    this.size = this.checkedSize(b.readBigUInt64BE(0));
    this.flags = b.readUInt16BE(8);
    if (!noZeroes) await this.reader.skip(124);
    // Without NBD_OPT_GO no structured replies were meant to be used by the server.
  }

  /** The reply loop: matches replies to requests by cookie. */
  private async receive(): Promise<void> {
    try {
      for (;;) {
        const magic = (await this.reader.read(4)).readUInt32BE(0);
        if (magic === P.SIMPLE_REPLY_MAGIC) await this.simpleReply();
        else if (magic === P.STRUCTURED_REPLY_MAGIC) await this.structuredChunk();
        else throw this.protocolError(`bad reply magic 0x${magic.toString(16)}`);
      }
    } catch (e) {
      const why =
        e instanceof PlatterError
          ? e
          : new PlatterError('EGONE', `${this.name}: NBD connection lost (${(e as Error).message})`);
      this.fail(this.closing ? new PlatterError('ECLOSED', `${this.name}: connection closed`) : why);
    }
  }

  private fail(e: PlatterError): void {
    if (!this.broken) this.broken = e;
    for (const p of this.pending.values()) p.reject(this.broken);
    this.pending.clear();
    for (const q of this.queue.splice(0)) q();
    this.socket.destroy();
  }

  private take(cookie: bigint): Pending {
    const p = this.pending.get(cookie);
    if (!p) throw this.protocolError(`reply for unknown cookie ${cookie}`);
    return p;
  }

  private settle(cookie: bigint, p: Pending): void {
    this.pending.delete(cookie);
    if (p.error) p.reject(this.errorFor(p));
    else p.resolve();
  }

  private errorFor(p: Pending): PlatterError {
    const e = p.error!;
    const cmd = COMMAND_NAMES[p.type] ?? `command ${p.type}`;
    const at = e.offset ?? p.offset;
    const errName = P.ERRNO_NAMES[e.errno] ?? `error ${e.errno}`;
    const msg = e.message ? `: ${e.message}` : '';
    return new PlatterError(
      codeOf(e.errno),
      `${this.name}: NBD ${cmd} of ${p.length} bytes at offset ${p.offset} failed${e.offset !== undefined ? ` at offset ${at}` : ''}: ${errName}${msg}`,
    );
  }

  private async simpleReply(): Promise<void> {
    const h = await this.reader.read(12);
    const errno = h.readUInt32BE(0);
    const cookie = h.readBigUInt64BE(4);
    const p = this.take(cookie);
    if (errno !== 0) p.error = { errno, message: '' };
    else if (p.type === P.CMD_READ && p.buf) await this.reader.readInto(p.buf);
    this.settle(cookie, p);
  }

  private async structuredChunk(): Promise<void> {
    const h = await this.reader.read(16);
    const flags = h.readUInt16BE(0);
    const type = h.readUInt16BE(2);
    const cookie = h.readBigUInt64BE(4);
    const length = h.readUInt32BE(12);
    const p = this.take(cookie);
    const inRange = (off: number, n: number): boolean => off >= p.offset && off + n <= p.offset + p.length;
    switch (type) {
      case P.REPLY_TYPE_NONE:
        if (length !== 0) throw this.protocolError('NBD_REPLY_TYPE_NONE with a payload');
        break;
      case P.REPLY_TYPE_OFFSET_DATA: {
        if (length < 9 || p.type !== P.CMD_READ || !p.buf) throw this.protocolError('unexpected data chunk');
        const off = this.checkedSize((await this.reader.read(8)).readBigUInt64BE(0));
        const n = length - 8;
        if (!inRange(off, n)) throw this.protocolError(`data chunk ${off}+${n} outside the request`);
        await this.reader.readInto(p.buf.subarray(off - p.offset, off - p.offset + n));
        break;
      }
      case P.REPLY_TYPE_OFFSET_HOLE: {
        if (length !== 12 || p.type !== P.CMD_READ || !p.buf)
          throw this.protocolError('unexpected hole chunk');
        const b = await this.reader.read(12);
        const off = this.checkedSize(b.readBigUInt64BE(0));
        const n = b.readUInt32BE(8);
        if (n === 0 || !inRange(off, n))
          throw this.protocolError(`hole chunk ${off}+${n} outside the request`);
        p.buf.fill(0, off - p.offset, off - p.offset + n);
        break;
      }
      case P.REPLY_TYPE_BLOCK_STATUS: {
        if (length < 12 || (length - 4) % 8 !== 0 || length > MAX_REPLY_PAYLOAD) {
          throw this.protocolError(`block status chunk of ${length} bytes`);
        }
        const b = await this.reader.read(length);
        if (b.readUInt32BE(0) === this.allocationContext) {
          const out: Array<[number, number]> = [];
          for (let i = 4; i < length; i += 8) out.push([b.readUInt32BE(i), b.readUInt32BE(i + 4)]);
          p.extents = out;
        }
        break;
      }
      default: {
        if (length > MAX_REPLY_PAYLOAD) throw this.protocolError(`chunk of ${length} bytes`);
        const b = await this.reader.read(length);
        if (type & 0x8000) {
          if (length < 6) throw this.protocolError('short error chunk');
          const errno = b.readUInt32BE(0);
          const mlen = b.readUInt16BE(4);
          if (6 + mlen > length) throw this.protocolError('error message longer than its chunk');
          const message = b.subarray(6, 6 + mlen).toString('utf8');
          let offset: number | undefined;
          if (type === P.REPLY_TYPE_ERROR_OFFSET && length >= 6 + mlen + 8)
            offset = Number(b.readBigUInt64BE(6 + mlen));
          p.error ??= { errno: errno || P.EIO, message, offset };
        }
        // Unknown non-error chunk types are skipped (the spec lets a client ignore them).
      }
    }
    if (flags & P.REPLY_FLAG_DONE) this.settle(cookie, p);
  }

  private async slot(): Promise<void> {
    while (this.inflight >= MAX_INFLIGHT && !this.broken) await new Promise<void>((r) => this.queue.push(r));
    this.inflight++;
  }

  private release(): void {
    this.inflight--;
    this.queue.shift()?.();
  }

  /** Sends one request and waits for its reply. */
  private async request(
    type: number,
    offset: number,
    length: number,
    opts: { flags?: number; payload?: Uint8Array; buf?: Uint8Array } = {},
  ): Promise<Pending> {
    if (this.broken) throw this.broken;
    await this.slot();
    try {
      if (this.broken) throw this.broken;
      const cookie = this.nextCookie++;
      const done = new Promise<Pending>((resolve, reject) => {
        const p: Pending = { type, offset, length, buf: opts.buf, resolve: () => resolve(p), reject };
        this.pending.set(cookie, p);
      });
      const header = P.encodeRequest({ flags: opts.flags ?? 0, type, cookie, offset, length });
      this.socket.cork();
      this.socket.write(header);
      if (opts.payload) this.socket.write(opts.payload);
      this.socket.uncork();
      this.active.add(done);
      try {
        return await done;
      } finally {
        this.active.delete(done);
      }
    } finally {
      this.release();
    }
  }

  /** Calls fn for each piece of at most maxBlock bytes, concurrently. */
  private async split(
    offset: number,
    length: number,
    fn: (at: number, off: number, n: number) => Promise<unknown>,
  ): Promise<void> {
    const step = Math.max(this.minBlock, this.maxBlock - (this.maxBlock % this.minBlock));
    const jobs: Promise<unknown>[] = [];
    for (let at = 0; at < length; at += step) jobs.push(fn(at, offset + at, Math.min(step, length - at)));
    await Promise.all(jobs);
  }

  async read(buf: Uint8Array, offset: number): Promise<void> {
    await this.split(offset, buf.length, (at, off, n) =>
      this.request(P.CMD_READ, off, n, { buf: buf.subarray(at, at + n) }),
    );
  }

  async write(buf: Uint8Array, offset: number, fua = false): Promise<void> {
    const flags = fua && this.can(P.TF_SEND_FUA) ? P.CMD_FLAG_FUA : 0;
    await this.split(offset, buf.length, (at, off, n) =>
      this.request(P.CMD_WRITE, off, n, { flags, payload: buf.subarray(at, at + n) }),
    );
  }

  async writeZeroes(
    offset: number,
    length: number,
    opts: { mayUnmap?: boolean; fast?: boolean } = {},
  ): Promise<void> {
    let flags = opts.mayUnmap ? 0 : P.CMD_FLAG_NO_HOLE;
    if (opts.fast) flags |= P.CMD_FLAG_FAST_ZERO;
    // Lengths are 32-bit: large ranges go in 1 GiB pieces.
    for (let done = 0; done < length; ) {
      const n = Math.min(length - done, 1 << 30);
      await this.request(P.CMD_WRITE_ZEROES, offset + done, n, { flags });
      done += n;
    }
  }

  async trim(offset: number, length: number): Promise<void> {
    for (let done = 0; done < length; ) {
      const n = Math.min(length - done, 1 << 30);
      await this.request(P.CMD_TRIM, offset + done, n);
      done += n;
    }
  }

  async flush(): Promise<void> {
    await this.request(P.CMD_FLUSH, 0, 0);
  }

  /** base:allocation for [offset, offset+length): descriptors [length, flags], tiling the range. */
  async blockStatus(
    offset: number,
    length: number,
  ): Promise<Array<{ offset: number; length: number; flags: number }>> {
    const out: Array<{ offset: number; length: number; flags: number }> = [];
    const end = offset + length;
    let pos = offset;
    while (pos < end) {
      const n = Math.min(end - pos, 0x80000000);
      const p = await this.request(P.CMD_BLOCK_STATUS, pos, n);
      if (!p.extents || p.extents.length === 0)
        throw this.protocolError('block status reply without base:allocation');
      const startPos = pos;
      for (const [len, flags] of p.extents) {
        if (pos >= end) break;
        if (len === 0) throw this.protocolError('zero-length block status descriptor');
        const take = Math.min(len, end - pos);
        const last = out[out.length - 1];
        if (last && last.flags === flags && last.offset + last.length === pos) last.length += take;
        else out.push({ offset: pos, length: take, flags });
        pos += take;
      }
      if (pos === startPos) throw this.protocolError('block status made no progress');
    }
    return out;
  }

  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    if (!this.broken) {
      await Promise.allSettled([...this.active]);
      if (!this.socket.destroyed)
        this.socket.write(P.encodeRequest({ flags: 0, type: P.CMD_DISC, cookie: 0n, offset: 0, length: 0 }));
      this.socket.end();
    }
    await new Promise<void>((r) => {
      if (this.socket.destroyed) return r();
      const t = setTimeout(() => {
        this.socket.destroy();
        r();
      }, 1000);
      this.socket.once('close', () => {
        clearTimeout(t);
        r();
      });
    });
  }
}

/** Opens an NBD URI as a Storage. `mode.lock` is the server's business and is ignored. */
export async function openNbd(uri: string, mode: OpenMode): Promise<Storage> {
  const target = parseNbdUri(uri);
  const client = await NbdClient.connect(uri, target);
  if (mode.write && client.readOnly) {
    await client.close();
    throw new PlatterError('EREADONLY', `${uri}: the NBD export is read-only`);
  }
  const size = client.size;
  const writable = mode.write;
  const checkRange = (offset: number, length: number, what: string): void => {
    if (offset + length > size) {
      throw new PlatterError(
        what === 'read' ? 'EIO' : 'ENOSPC',
        `${uri}: ${what} of ${length} bytes at offset ${offset} is past the end of the NBD export (size ${size})`,
      );
    }
  };
  const canZero = writable && client.can(P.TF_SEND_WRITE_ZEROES);
  const storage: Storage = {
    name: uri,
    readOnly: !writable,
    files: [],
    async size() {
      return size;
    },
    async read(buf, offset) {
      checkRange(offset, buf.length, 'read');
      if (buf.length) await client.read(buf, offset);
    },
    async write(buf, offset) {
      if (!writable) throw new PlatterError('EREADONLY', `${uri}: opened read-only`);
      checkRange(offset, buf.length, 'write');
      if (buf.length) await client.write(buf, offset);
    },
    async truncate(n) {
      // An export has a fixed size: growing is impossible, "shrinking" leaves it as it is.
      if (n > size) {
        throw new PlatterError('ENOSPC', `${uri}: the NBD export is ${size} bytes and cannot grow to ${n}`);
      }
    },
    async flush() {
      if (writable && client.can(P.TF_SEND_FLUSH)) await client.flush();
    },
    extents:
      client.allocationContext !== undefined
        ? async (offset, length): Promise<StorageExtent[]> => {
            checkRange(offset, length, 'read');
            if (length === 0) return [];
            const out: StorageExtent[] = [];
            for (const d of await client.blockStatus(offset, length)) {
              const kind = d.flags & P.STATE_ZERO ? 'hole' : 'data';
              const last = out[out.length - 1];
              if (last && last.kind === kind) last.length += d.length;
              else out.push({ offset: d.offset, length: d.length, kind });
            }
            return out;
          }
        : undefined,
    discard: canZero
      ? async (offset, length) => {
          checkRange(offset, length, 'discard');
          if (length) await client.writeZeroes(offset, length, { mayUnmap: true });
        }
      : undefined,
    close: () => client.close(),
  };
  return storage;
}

/** The URI schemes this client handles, for storage/host.ts's uriOpeners. */
export const nbdUriOpeners: ReadonlyArray<[string, (uri: string, mode: OpenMode) => Promise<Storage>]> = [
  ['nbd', openNbd],
  ['nbd+unix', openNbd],
  ['nbds', openNbd],
  ['nbds+unix', openNbd],
];

function u16(n: number): Buffer {
  const b = Buffer.allocUnsafe(2);
  b.writeUInt16BE(n, 0);
  return b;
}

function u32(n: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32BE(n, 0);
  return b;
}
