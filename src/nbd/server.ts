/**
 * An NBD server for any Disk (fixed newstyle only; no oldstyle, no TLS).
 *
 * Handshake: NBD_OPT_EXPORT_NAME, ABORT, LIST, INFO, GO, STRUCTURED_REPLY,
 * LIST_META_CONTEXT and SET_META_CONTEXT (`base:allocation` only); anything
 * else is answered NBD_REP_ERR_UNSUP. Transmission: READ (structured replies
 * split a read at zero/hole extents into OFFSET_HOLE chunks), WRITE (+FUA),
 * FLUSH, TRIM, WRITE_ZEROES (NO_HOLE, FAST_ZERO), CACHE, BLOCK_STATUS, DISC.
 *
 * Every request of a connection runs concurrently (up to MAX_INFLIGHT per
 * connection, and MAX_INFLIGHT_BYTES of buffers for all connections together);
 * each reply is written in one
 * synchronous burst as soon as its request completes, so replies leave out of
 * order. All connections share the one Disk, so a FLUSH on any of them
 * persists every completed write: the export advertises CAN_MULTI_CONN.
 *
 * Bad input: a wrong magic, an option longer than MAX_OPTION_LENGTH, unknown
 * client flags or a WRITE larger than MAX_REQUEST drop that client (the
 * stream cannot be resynchronised); a bad range, an unknown command or a
 * write to a read-only export gets an error reply. Nothing a client sends
 * reaches the Disk unchecked, and no client's failure touches another.
 *
 * Extent statuses map to base:allocation flags here and only here:
 *   data -> 0, zero -> HOLE|ZERO, hole (bottom of the chain) -> HOLE|ZERO.
 */
import { createServer, type Server, type Socket } from 'node:net';
import type { Disk, Extent } from '../core/disk.js';
import { isPlatterError, PlatterError } from '../core/errors.js';
import { ioBuffer } from '../ops/buffers.js';
import { type FileRange, type SendPart, SocketSender } from '../storage/socket-sender.js';
import * as P from './protocol.js';
import { SocketReader } from './stream.js';

/** Requests of one connection running at once. */
const MAX_INFLIGHT = 64;
/**
 * Read and write buffers of all connections together (bounds the server's
 * memory). 16 MiB: nbdcopy keeps 64 requests of 2 MiB waiting, and a budget
 * that lets them all read ahead only moves the data through memory that has
 * left the CPU caches before the socket copies it (64 MiB measured ~5 % slower).
 */
const MAX_INFLIGHT_BYTES = 16 * 1024 * 1024;
/** Block status descriptors sent for one request at most (the client asks again for the rest). */
const MAX_DESCRIPTORS = 1 << 14;
/** Zero/hole extents shorter than this are sent as data in a read (fewer, larger chunks). */
const MIN_HOLE_CHUNK = 64 * 1024;
/** Reads up to this size are never split into hole chunks. */
const SMALL_READ = 256 * 1024;
const BLOCK_SIZE_PREFERRED = 4096;
/**
 * The preferred block size of a read-only export. Each request costs this
 * server far more than it costs qemu-nbd (a trip through the event loop, the
 * thread pool and promises: ~50 µs), so bulk readers that honour the hint
 * (nbdcopy sizes its requests by it) get the same bytes in 8× fewer requests
 * than with their 256 KiB default. Writable exports keep 4096: clients may
 * turn smaller writes into read-modify-write cycles of the preferred size.
 */
const BLOCK_SIZE_PREFERRED_READ_ONLY = 2 * 1024 * 1024;
const META_CONTEXT_ID = 1;
/** Replies queued in a connection's sender at most before its requests wait. */
const MAX_QUEUED_REPLIES = 256;
/** How long the last replies may take to leave before the connection is cut. */
const LINGER_MS = 2000;

export interface NbdServerOptions {
  /** The export's name; clients must ask for exactly this (default ''). */
  exportName?: string;
  description?: string;
  /** Refuse writes and advertise a read-only export (also when the Disk is read-only). */
  readOnly?: boolean;
  /** Clients served at once; more wait for a free slot. 0 = no limit (default). */
  maxClients?: number;
  /** Diagnostics (dropped clients, our own bugs). */
  log?: (message: string) => void;
}

/** A unix socket path, a TCP address, or an inherited listening descriptor (socket activation). */
export type ListenAddress = { path: string } | { fd: number } | { host?: string; port?: number };

/** A part of a read's reply: data, or (structured replies) a hole sent as OFFSET_HOLE. */
interface ReadPiece {
  offset: number;
  length: number;
  hole: boolean;
}

/** Drop this client: the byte stream cannot be trusted any more. */
class Drop extends Error {}

export class NbdServer {
  readonly exportName: string;
  readonly readOnly: boolean;
  /**
   * Where reads and block status come from: a chain of one image over the zero
   * disk reads the same through its only layer, without the chain's per-read
   * extent lookup (the hot path of nbdcopy). Writes always go through `disk`.
   */
  readonly source: Disk;
  /** Read bytes sent straight from host files (sendfile: no copy through this process). */
  sentFromFiles = 0;
  private readonly maxClients: number;
  private readonly sessions = new Set<Session>();
  private readonly waiting: Socket[] = [];
  private readonly servers: Server[] = [];
  private stopping = false;

  constructor(
    readonly disk: Disk,
    private readonly opts: NbdServerOptions = {},
  ) {
    this.exportName = opts.exportName ?? '';
    this.readOnly = (opts.readOnly ?? false) || disk.readOnly;
    this.maxClients = opts.maxClients ?? 0;
    this.source = disk.layers.length === 1 && disk.layers[0].size === disk.size ? disk.layers[0] : disk;
    if (Buffer.byteLength(this.exportName) > P.MAX_STRING) {
      throw new PlatterError('EINVAL', `export name is longer than ${P.MAX_STRING} bytes`);
    }
  }

  log(message: string): void {
    this.opts.log?.(message);
  }

  get description(): string | undefined {
    return this.opts.description;
  }

  /** Starts listening; resolves with the address clients use (nbd:// or nbd+unix:// URI). */
  async listen(addr: ListenAddress): Promise<string> {
    const server = createServer({ noDelay: true }, (socket) => this.accept(socket));
    this.servers.push(server);
    await new Promise<void>((resolve, reject) => {
      server.once('error', (e: NodeJS.ErrnoException) => {
        const where =
          'path' in addr
            ? addr.path
            : 'fd' in addr
              ? `inherited socket ${addr.fd}`
              : `${addr.host ?? '127.0.0.1'}:${addr.port ?? P.DEFAULT_PORT}`;
        const why = e.code === 'EADDRINUSE' ? 'address already in use' : (e.code ?? e.message);
        reject(new PlatterError('EIO', `cannot listen on ${where}: ${why}`));
      });
      if ('path' in addr) server.listen(addr.path, resolve);
      else if ('fd' in addr) server.listen({ fd: addr.fd }, resolve);
      else server.listen(addr.port ?? P.DEFAULT_PORT, addr.host ?? '127.0.0.1', resolve);
    });
    server.on('error', (e) => this.log(`server error: ${e.message}`));
    const name = encodeURIComponent(this.exportName).replace(/%2F/gi, '/');
    if ('path' in addr) return `nbd+unix:///${name}?socket=${encodeURIComponent(addr.path)}`;
    const a = server.address();
    if (a === null || typeof a === 'string') return `nbd+unix:///${name}?socket=${a}`;
    const host = a.family === 'IPv6' ? `[${a.address}]` : a.address;
    return `nbd://${host}:${a.port}/${name}`;
  }

  /** Serves one connected socket (listen() calls this; tests may call it with a socketpair). */
  accept(socket: Socket): void {
    socket.on('error', () => undefined);
    if (this.stopping) {
      socket.destroy();
      return;
    }
    if (this.maxClients > 0 && this.sessions.size >= this.maxClients) {
      this.waiting.push(socket);
      socket.once('close', () => {
        const i = this.waiting.indexOf(socket);
        if (i >= 0) this.waiting.splice(i, 1);
      });
      return;
    }
    const s = new Session(this, socket);
    this.sessions.add(s);
    s.run().finally(() => {
      this.sessions.delete(s);
      const next = this.waiting.shift();
      if (next) this.accept(next);
    });
  }

  get clients(): number {
    return this.sessions.size;
  }

  /** Connections waiting for a free slot (maxClients). */
  get queuedClients(): number {
    return this.waiting.length;
  }

  private budgetUsed = 0;
  private readonly budgetWaiters: Array<() => void> = [];

  /** Takes `bytes` of the budget if they fit now (see reserve); false and nothing taken if not. */
  tryReserve(bytes: number): boolean {
    if (this.budgetUsed > 0 && this.budgetUsed + bytes > MAX_INFLIGHT_BYTES) return false;
    this.budgetUsed += bytes;
    return true;
  }

  /** Waits until `bytes` more request buffers fit in MAX_INFLIGHT_BYTES (one request always fits). */
  async reserve(bytes: number): Promise<void> {
    while (!this.tryReserve(bytes)) await new Promise<void>((r) => this.budgetWaiters.push(r));
  }

  release(bytes: number): void {
    this.budgetUsed -= bytes;
    for (const w of this.budgetWaiters.splice(0)) w();
  }

  /**
   * Stops listening, lets every request already received finish and be
   * answered, disconnects the clients and flushes the disk. Does not close it.
   */
  async close(): Promise<void> {
    this.stopping = true;
    await Promise.all(this.servers.map((s) => new Promise<void>((r) => s.close(() => r()))));
    for (const w of this.waiting.splice(0)) w.destroy();
    await Promise.all([...this.sessions].map((s) => s.stop()));
    if (!this.readOnly) await this.disk.flush();
  }
}

/** NBD errno for a failed Disk call. */
function errnoOf(e: unknown): number {
  if (!isPlatterError(e)) return P.EIO;
  switch (e.code) {
    case 'ERANGE':
    case 'EINVAL':
      return P.EINVAL;
    case 'EREADONLY':
      return P.EPERM;
    case 'ENOSPC':
      return P.ENOSPC;
    case 'EUNSUPPORTED':
      return P.ENOTSUP;
    case 'ECLOSED':
    case 'ECANCELED':
      return P.ESHUTDOWN;
    default:
      return P.EIO;
  }
}

class RequestError extends Error {
  constructor(
    readonly errno: number,
    message: string,
  ) {
    super(message);
  }
}

class Session {
  private readonly reader: SocketReader;
  private structured = false;
  private baseAllocation = false;
  private noZeroes = false;
  private readonly inflight = new Set<Promise<void>>();
  private stopping = false;
  private done: Promise<void> | null = null;
  /**
   * Sends every reply of the transmission phase from the thread pool, file
   * ranges straight from the page cache (storage/socket-sender.ts): for
   * read-only exports, whose host spans cannot move under a queued reply.
   */
  private sender?: SocketSender;

  constructor(
    private readonly server: NbdServer,
    private readonly socket: Socket,
  ) {
    this.reader = new SocketReader(socket);
  }

  private get disk(): Disk {
    return this.server.disk;
  }

  run(): Promise<void> {
    this.done = this.serve()
      .catch((e) => {
        if (e instanceof Drop) this.server.log(`client dropped: ${e.message}`);
        else if (!this.reader.closed && !this.stopping)
          this.server.log(`client error: ${(e as Error)?.stack ?? e}`);
      })
      .then(() => Promise.allSettled([...this.inflight]))
      .then(() => this.finishSending())
      .then(async () => {
        // Let the last replies leave before the socket goes away.
        if (!this.socket.destroyed) {
          await new Promise<void>((r) => {
            const t = setTimeout(r, LINGER_MS);
            this.socket.once('close', () => {
              clearTimeout(t);
              r();
            });
            this.socket.end();
          });
        }
        this.socket.destroy();
      });
    return this.done;
  }

  /** Shutdown: stop taking requests, finish those received, disconnect. */
  async stop(): Promise<void> {
    this.stopping = true;
    // Requests already dispatched still reply; a request read after this gets ESHUTDOWN.
    await Promise.allSettled([...this.inflight]);
    await this.finishSending();
    this.socket.end();
    const t = setTimeout(() => this.socket.destroy(), LINGER_MS);
    await this.done;
    clearTimeout(t);
  }

  /** Waits for the sender's queued replies (cut off after LINGER_MS), then closes it. */
  private async finishSending(): Promise<void> {
    const sender = this.sender;
    if (!sender) return;
    const t = setTimeout(() => sender.abort(), LINGER_MS);
    await sender.idle();
    clearTimeout(t);
    await sender.close();
  }

  private send(...parts: Uint8Array[]): void {
    this.sendThen(undefined, ...parts);
  }

  /** Writes parts as one burst; `written` runs once the socket no longer needs them. */
  private sendThen(written: (() => void) | undefined, ...parts: SendPart[]): void {
    if (this.sender) {
      this.sender.send(parts, written && (() => written()));
      return;
    }
    if (this.socket.destroyed) {
      written?.();
      return;
    }
    this.socket.cork();
    const last = parts.length - 1;
    parts.forEach((p, i) => {
      if (!(p instanceof Uint8Array)) throw new Error('internal error: a file range without a sender');
      if (i === last && written) this.socket.write(p, () => written());
      else if (p.length > 0) this.socket.write(p);
    });
    this.socket.uncork();
  }

  private async serve(): Promise<void> {
    const greeting = Buffer.alloc(18);
    greeting.writeBigUInt64BE(P.NBDMAGIC, 0);
    greeting.writeBigUInt64BE(P.IHAVEOPT, 8);
    greeting.writeUInt16BE(P.FLAG_FIXED_NEWSTYLE | P.FLAG_NO_ZEROES, 16);
    this.send(greeting);
    const clientFlags = (await this.reader.read(4)).readUInt32BE(0);
    if (clientFlags & ~(P.FLAG_C_FIXED_NEWSTYLE | P.FLAG_C_NO_ZEROES)) {
      throw new Drop(`unknown client flags 0x${clientFlags.toString(16)}`);
    }
    this.noZeroes = (clientFlags & P.FLAG_C_NO_ZEROES) !== 0;
    if (!(await this.haggle())) return;
    if (this.server.readOnly) this.sender = SocketSender.for(this.socket);
    await this.transmit();
  }

  private transmissionFlags(): number {
    let f = P.TF_HAS_FLAGS | P.TF_SEND_FLUSH | P.TF_SEND_CACHE | P.TF_CAN_MULTI_CONN;
    if (this.server.readOnly) f |= P.TF_READ_ONLY;
    else f |= P.TF_SEND_FUA | P.TF_SEND_TRIM | P.TF_SEND_WRITE_ZEROES | P.TF_SEND_FAST_ZERO;
    if (this.structured) f |= P.TF_SEND_DF;
    return f;
  }

  /** Option haggling; true when the client moves on to transmission. */
  private async haggle(): Promise<boolean> {
    for (;;) {
      if (this.stopping) return false;
      const h = await this.reader.read(16);
      if (h.readBigUInt64BE(0) !== P.IHAVEOPT) throw new Drop('bad option magic');
      const opt = h.readUInt32BE(8);
      const len = h.readUInt32BE(12);
      if (len > P.MAX_OPTION_LENGTH) throw new Drop(`${P.optionName(opt)} of ${len} bytes is too long`);
      const data = Buffer.from(await this.reader.read(len));
      const reply = (type: number, payload?: Uint8Array) => this.send(P.optionReply(opt, type, payload));
      const error = (type: number, message: string) => reply(type, Buffer.from(message));
      switch (opt) {
        case P.OPT_EXPORT_NAME: {
          const name = data.toString('utf8');
          if (name !== this.server.exportName) throw new Drop(`unknown export '${name}'`);
          const b = Buffer.alloc(this.noZeroes ? 10 : 134);
          b.writeBigUInt64BE(BigInt(this.disk.size), 0);
          b.writeUInt16BE(this.transmissionFlags(), 8);
          this.send(b);
          return true;
        }
        case P.OPT_ABORT:
          reply(P.REP_ACK);
          return false;
        case P.OPT_LIST:
          if (len !== 0) error(P.REP_ERR_INVALID, 'NBD_OPT_LIST takes no data');
          else {
            reply(P.REP_SERVER, P.lpString(this.server.exportName));
            reply(P.REP_ACK);
          }
          break;
        case P.OPT_INFO:
        case P.OPT_GO: {
          const parsed = parseInfoRequest(data);
          if (typeof parsed === 'string') {
            error(P.REP_ERR_INVALID, parsed);
            break;
          }
          if (parsed.name !== this.server.exportName) {
            error(P.REP_ERR_UNKNOWN, `no export named '${parsed.name}'`);
            break;
          }
          const exp = Buffer.alloc(12);
          exp.writeUInt16BE(P.INFO_EXPORT, 0);
          exp.writeBigUInt64BE(BigInt(this.disk.size), 2);
          exp.writeUInt16BE(this.transmissionFlags(), 10);
          reply(P.REP_INFO, exp);
          if (parsed.infos.includes(P.INFO_NAME)) {
            reply(P.REP_INFO, Buffer.concat([u16(P.INFO_NAME), Buffer.from(this.server.exportName)]));
          }
          if (parsed.infos.includes(P.INFO_DESCRIPTION) && this.server.description) {
            reply(P.REP_INFO, Buffer.concat([u16(P.INFO_DESCRIPTION), Buffer.from(this.server.description)]));
          }
          const bs = Buffer.alloc(14);
          bs.writeUInt16BE(P.INFO_BLOCK_SIZE, 0);
          bs.writeUInt32BE(1, 2);
          bs.writeUInt32BE(this.server.readOnly ? BLOCK_SIZE_PREFERRED_READ_ONLY : BLOCK_SIZE_PREFERRED, 6);
          bs.writeUInt32BE(P.MAX_REQUEST, 10);
          reply(P.REP_INFO, bs);
          reply(P.REP_ACK);
          if (opt === P.OPT_GO) return true;
          break;
        }
        case P.OPT_STRUCTURED_REPLY:
          if (len !== 0) error(P.REP_ERR_INVALID, 'NBD_OPT_STRUCTURED_REPLY takes no data');
          else {
            this.structured = true;
            reply(P.REP_ACK);
          }
          break;
        case P.OPT_LIST_META_CONTEXT:
        case P.OPT_SET_META_CONTEXT: {
          if (!this.structured) {
            error(P.REP_ERR_INVALID, 'negotiate NBD_OPT_STRUCTURED_REPLY first');
            break;
          }
          const parsed = parseMetaRequest(data);
          if (typeof parsed === 'string') {
            error(P.REP_ERR_INVALID, parsed);
            break;
          }
          if (parsed.name !== this.server.exportName) {
            error(P.REP_ERR_UNKNOWN, `no export named '${parsed.name}'`);
            break;
          }
          const list = opt === P.OPT_LIST_META_CONTEXT;
          const match =
            (list && parsed.queries.length === 0) ||
            parsed.queries.some((q) => q === P.BASE_ALLOCATION || (list && q === 'base:'));
          if (match) {
            const ctx = Buffer.concat([u32(list ? 0 : META_CONTEXT_ID), Buffer.from(P.BASE_ALLOCATION)]);
            reply(P.REP_META_CONTEXT, ctx);
          }
          if (!list) this.baseAllocation = match;
          reply(P.REP_ACK);
          break;
        }
        case P.OPT_STARTTLS:
          error(P.REP_ERR_POLICY, 'TLS is not supported by this server');
          break;
        default:
          error(P.REP_ERR_UNSUP, `${P.optionName(opt)} is not supported`);
      }
    }
  }

  private async transmit(): Promise<void> {
    for (;;) {
      if (this.stopping) return;
      // Replies not yet taken by the kernel are bounded by bytes, not by the socket's
      // 16 KiB high-water mark: waiting on that would allow one reply in flight at a time.
      if (this.socket.writableLength > MAX_INFLIGHT_BYTES) {
        await new Promise<void>((r) => {
          const done = (): void => {
            this.socket.off('drain', done);
            this.socket.off('close', done);
            r();
          };
          this.socket.on('drain', done);
          this.socket.on('close', done);
        });
      }
      if (this.sender && this.sender.queued > MAX_QUEUED_REPLIES) await this.sender.idle();
      const h = this.reader.readNow(P.REQUEST_SIZE) ?? (await this.reader.read(P.REQUEST_SIZE));
      const req = P.parseRequest(h);
      if (!req) throw new Drop('bad request magic');
      if (req.type === P.CMD_WRITE && req.length > P.MAX_REQUEST) {
        throw new Drop(`write of ${req.length} bytes is larger than ${P.MAX_REQUEST}`);
      }
      if (req.type === P.CMD_DISC) {
        await Promise.allSettled([...this.inflight]);
        return;
      }
      while (this.inflight.size >= MAX_INFLIGHT) await Promise.race(this.inflight);
      // Buffers for reads and write payloads come out of the server-wide budget
      // (reads sent from their files need none; sendRead reserves if it falls back).
      const viaSender = this.sender !== undefined && req.type === P.CMD_READ;
      const bytes =
        (req.type === P.CMD_READ && !viaSender) || req.type === P.CMD_WRITE
          ? Math.min(req.length, P.MAX_REQUEST)
          : 0;
      if (!this.server.tryReserve(bytes)) await this.server.reserve(bytes);
      let payload: Buffer | undefined;
      if (req.type === P.CMD_WRITE) {
        payload = pool.take(req.length);
        try {
          await this.reader.readInto(payload);
        } catch (e) {
          pool.give(payload);
          this.server.release(bytes);
          throw e;
        }
      }
      if (this.stopping) {
        if (payload) pool.give(payload);
        this.server.release(bytes);
        this.replyError(req, P.ESHUTDOWN, 'server is shutting down');
        return;
      }
      const p = (
        viaSender
          ? this.sendRead(req)
          : this.isSmallRead(req)
            ? this.smallRead(req, bytes)
            : this.handle(req, payload, bytes)
      ).finally(() => {
        this.inflight.delete(p);
      });
      this.inflight.add(p);
    }
  }

  private replyOk(req: P.ServerRequest): void {
    if (this.structured) this.send(P.chunkHeader(req.cookie, P.REPLY_FLAG_DONE, P.REPLY_TYPE_NONE, 0));
    else this.send(P.simpleReply(req.cookie, 0));
  }

  private replyError(req: P.ServerRequest, errno: number, message: string): void {
    if (!this.structured) {
      this.send(P.simpleReply(req.cookie, errno));
      return;
    }
    const msg = Buffer.from(message.slice(0, 1024));
    const body = Buffer.alloc(6);
    body.writeUInt32BE(errno, 0);
    body.writeUInt16BE(msg.length, 4);
    this.send(P.chunkHeader(req.cookie, P.REPLY_FLAG_DONE, P.REPLY_TYPE_ERROR, 6 + msg.length), body, msg);
  }

  /** A read answered with one data chunk (or a simple reply): in range, 0 < length <= SMALL_READ. */
  private isSmallRead(req: P.ServerRequest): boolean {
    return (
      req.type === P.CMD_READ &&
      req.length > 0 &&
      req.length <= SMALL_READ &&
      req.offset + req.length <= this.disk.size
    );
  }

  /**
   * The hot path of bulk reads (nbdcopy's 256 KiB requests): the same answer
   * as handle() gives a small read, without its three async frames per request.
   * The buffer and the budget go back once the socket has sent the reply.
   */
  private smallRead(req: P.ServerRequest, bytes: number): Promise<void> {
    const buf = pool.take(req.length);
    return this.server.source.read(buf, req.offset).then(
      () =>
        this.sendThen(
          () => {
            pool.give(buf);
            this.server.release(bytes);
          },
          this.wholeDataHead(req.cookie, req.offset, req.length),
          buf,
        ),
      (e: unknown) => {
        pool.give(buf);
        this.server.release(bytes);
        this.replyFailure(req, e);
      },
    );
  }

  /** The head of a reply whose payload is all `length` bytes read at `offset`: one data chunk, or a simple reply. */
  private wholeDataHead(cookie: P.ServerRequest['cookie'], offset: number, length: number): Buffer {
    if (!this.structured) return P.simpleReply(cookie, 0);
    const head = P.chunkHeader(cookie, P.REPLY_FLAG_DONE, P.REPLY_TYPE_OFFSET_DATA, 8 + length, 8);
    P.writeU64(head, offset, 20);
    return head;
  }

  /** The error reply for a request that failed (a RequestError, a PlatterError or a bug). */
  private replyFailure(req: P.ServerRequest, e: unknown): void {
    if (e instanceof RequestError) {
      this.replyError(req, e.errno, e.message);
      return;
    }
    if (!isPlatterError(e)) this.server.log(`internal error serving a request: ${(e as Error)?.stack ?? e}`);
    this.replyError(req, errnoOf(e), (e as Error)?.message ?? String(e));
  }

  /**
   * Runs one request and replies. Its share of the buffer budget is given back
   * once, when the reply has left (a read's buffer stays queued in the socket
   * until then) or when the request failed.
   */
  private async handle(req: P.ServerRequest, payload: Buffer | undefined, bytes: number): Promise<void> {
    let given = false;
    const giveBack = (): void => {
      if (given) return;
      given = true;
      this.server.release(bytes);
    };
    try {
      await this.execute(req, payload, giveBack);
    } catch (e) {
      giveBack();
      this.replyFailure(req, e);
    } finally {
      // The disk has the written bytes (or failed): the payload buffer is free again.
      if (payload) pool.give(payload);
      if (req.type !== P.CMD_READ) giveBack();
    }
  }

  private checkRange(req: P.ServerRequest, writing: boolean): void {
    if (req.offset + req.length > this.disk.size) {
      throw new RequestError(
        writing ? P.ENOSPC : P.EINVAL,
        `range ${req.offset}+${req.length} is past the end of the export (size ${this.disk.size})`,
      );
    }
  }

  private checkWritable(): void {
    if (this.server.readOnly) throw new RequestError(P.EPERM, 'the export is read-only');
  }

  private async execute(req: P.ServerRequest, payload: Buffer | undefined, sent: () => void): Promise<void> {
    const { offset, length, flags } = req;
    const fua = (flags & P.CMD_FLAG_FUA) !== 0;
    switch (req.type) {
      case P.CMD_READ:
        this.checkRange(req, false);
        if (length > P.MAX_REQUEST) {
          throw new RequestError(P.EINVAL, `read of ${length} bytes is larger than ${P.MAX_REQUEST}`);
        }
        return this.read(req, sent);
      case P.CMD_WRITE:
        this.checkWritable();
        this.checkRange(req, true);
        await this.disk.write(payload!, offset);
        if (fua) await this.disk.flush();
        return this.replyOk(req);
      case P.CMD_FLUSH:
        if (!this.server.readOnly) await this.disk.flush();
        return this.replyOk(req);
      case P.CMD_TRIM:
        this.checkWritable();
        this.checkRange(req, true);
        await this.disk.discard(offset, length);
        if (fua) await this.disk.flush();
        return this.replyOk(req);
      case P.CMD_WRITE_ZEROES: {
        this.checkWritable();
        this.checkRange(req, true);
        const noHole = (flags & P.CMD_FLAG_NO_HOLE) !== 0;
        if (flags & P.CMD_FLAG_FAST_ZERO && noHole) {
          throw new RequestError(P.ENOTSUP, 'fast zeroing without holes is not supported');
        }
        await this.disk.writeZeroes(offset, length, { mayUnmap: !noHole });
        if (fua) await this.disk.flush();
        return this.replyOk(req);
      }
      case P.CMD_CACHE:
        // A hint: nothing is cached in front of the disk, so only the range is checked.
        this.checkRange(req, false);
        return this.replyOk(req);
      case P.CMD_BLOCK_STATUS:
        if (!this.structured || !this.baseAllocation) {
          throw new RequestError(P.EINVAL, 'NBD_CMD_BLOCK_STATUS needs the base:allocation context');
        }
        if (length === 0) throw new RequestError(P.EINVAL, 'block status of an empty range');
        this.checkRange(req, false);
        return this.blockStatus(req);
      default:
        throw new RequestError(P.EINVAL, `unknown command ${req.type}`);
    }
  }

  private async read(req: P.ServerRequest, sent: () => void): Promise<void> {
    const { length } = req;
    if (length === 0) {
      if (this.structured) this.replyOk(req);
      else this.send(P.simpleReply(req.cookie, 0));
      sent();
      return;
    }
    const buf = pool.take(length);
    try {
      await this.readInto(req, buf, sent);
    } catch (e) {
      pool.give(buf);
      throw e;
    }
  }

  /** Reads and replies; `buf` goes back to the pool once the socket is done with it. */
  private async readInto(req: P.ServerRequest, buf: Buffer, sent: () => void): Promise<void> {
    const { offset } = req;
    const release = (): void => {
      pool.give(buf);
      sent();
    };
    const pieces = await this.readPieces(req);
    const bytesOf = (p: ReadPiece): Buffer => buf.subarray(p.offset - offset, p.offset - offset + p.length);
    // Data runs between the holes, read concurrently; then every chunk in one burst.
    await Promise.all(
      pieces.filter((p) => !p.hole).map((p) => this.server.source.read(bytesOf(p), p.offset)),
    );
    this.sendThen(release, ...this.readReply(req, pieces, (p) => [bytesOf(p)]));
  }

  /**
   * A read answered from the host files that hold its bytes, by the sender
   * (no buffer, no copy here); a read whose bytes are not all in such files
   * (compressed or unallocated clusters, a partial VHD block) takes the
   * buffered path with its share of the budget.
   */
  private async sendRead(req: P.ServerRequest): Promise<void> {
    const sender = this.sender;
    if (!sender) throw new Error('internal error: sendRead without a sender');
    try {
      this.checkRange(req, false);
      if (req.length > 0 && req.length <= P.MAX_REQUEST) {
        const pieces = await this.readPieces(req);
        let files: Map<ReadPiece, FileRange[]> | null = new Map();
        for (const p of pieces) {
          if (p.hole) continue;
          const spans = await this.server.source.hostSpans(p.offset, p.length, 'read');
          if (!spans?.every((h) => sender.canSendFrom(h.storage))) {
            files = null;
            break;
          }
          files.set(
            p,
            spans.map((h) => ({ storage: h.storage, at: h.at, length: h.length })),
          );
        }
        if (files) {
          for (const p of files.keys()) this.server.sentFromFiles += p.length;
          const ranges = files;
          this.sendThen(undefined, ...this.readReply(req, pieces, (p) => ranges.get(p) ?? []));
          return;
        }
      }
    } catch (e) {
      this.replyFailure(req, e);
      return;
    }
    const bytes = Math.min(req.length, P.MAX_REQUEST);
    if (!this.server.tryReserve(bytes)) await this.server.reserve(bytes);
    return this.isSmallRead(req) ? this.smallRead(req, bytes) : this.handle(req, undefined, bytes);
  }

  /**
   * The pieces of a read's reply, in order: one data piece, or (structured
   * replies) data runs between holes of at least MIN_HOLE_CHUNK. Simple
   * replies cannot hold holes; small reads go out as one data chunk: looking
   * for holes would cost more than it saves (clients that care, like nbdcopy
   * and qemu-img, ask for block status first anyway).
   */
  private async readPieces(req: P.ServerRequest): Promise<ReadPiece[]> {
    const { offset, length } = req;
    const exts =
      !this.structured || req.flags & P.CMD_FLAG_DF || length <= SMALL_READ
        ? []
        : await this.disk.extents(offset, length);
    const pieces: ReadPiece[] = [];
    let pos = offset;
    for (const h of exts) {
      if (h.status === 'data' || h.length < MIN_HOLE_CHUNK) continue;
      if (h.offset > pos) pieces.push({ offset: pos, length: h.offset - pos, hole: false });
      pieces.push({ offset: h.offset, length: h.length, hole: true });
      pos = h.offset + h.length;
    }
    if (pos < offset + length) pieces.push({ offset: pos, length: offset + length - pos, hole: false });
    return pieces;
  }

  /** The reply to a read: its pieces as chunks (`data` gives a data piece's bytes), or one data reply. */
  private readReply(
    req: P.ServerRequest,
    pieces: ReadPiece[],
    data: (p: ReadPiece) => SendPart[],
  ): SendPart[] {
    const { offset, length, cookie } = req;
    if (pieces.length === 1 && !pieces[0].hole)
      return [this.wholeDataHead(cookie, offset, length), ...data(pieces[0])];
    const parts: SendPart[] = [];
    pieces.forEach((p, i) => {
      const last = i === pieces.length - 1 ? P.REPLY_FLAG_DONE : 0;
      if (p.hole) {
        const body = Buffer.alloc(12);
        body.writeBigUInt64BE(BigInt(p.offset), 0);
        body.writeUInt32BE(p.length, 8);
        parts.push(P.chunkHeader(cookie, last, P.REPLY_TYPE_OFFSET_HOLE, 12), body);
      } else {
        parts.push(
          P.chunkHeader(cookie, last, P.REPLY_TYPE_OFFSET_DATA, 8 + p.length),
          u64(p.offset),
          ...data(p),
        );
      }
    });
    return parts;
  }

  private async blockStatus(req: P.ServerRequest): Promise<void> {
    const exts = await this.disk.extents(req.offset, req.length);
    const descs = toDescriptors(exts, (req.flags & P.CMD_FLAG_REQ_ONE) !== 0 ? 1 : MAX_DESCRIPTORS);
    const body = Buffer.allocUnsafe(4 + 8 * descs.length);
    body.writeUInt32BE(META_CONTEXT_ID, 0);
    descs.forEach(([len, fl], i) => {
      body.writeUInt32BE(len, 4 + 8 * i);
      body.writeUInt32BE(fl, 8 + 8 * i);
    });
    this.send(P.chunkHeader(req.cookie, P.REPLY_FLAG_DONE, P.REPLY_TYPE_BLOCK_STATUS, body.length), body);
  }
}

/**
 * Read and write buffers are reused: allocating 256 KiB per request made the
 * garbage collector a quarter of the server's CPU time under nbdcopy, and
 * fresh memory costs a page fault per 4 KiB. The pool keeps as much as may be
 * in flight (MAX_INFLIGHT_BYTES), so in the steady state no request allocates.
 * Buffers come from ioBuffer: page-aligned where the host allows (a pread from
 * the page cache into memory 16 bytes past a page costs ~3× the system time,
 * see ops/buffers.ts).
 */
class BufferPool {
  private readonly free = new Map<number, Buffer[]>();
  private bytes = 0;
  take(n: number): Buffer {
    const b = this.free.get(n)?.pop();
    if (b) {
      this.bytes -= n;
      return b;
    }
    const m = ioBuffer(n);
    return Buffer.from(m.buffer, m.byteOffset, m.byteLength);
  }
  give(b: Buffer): void {
    if (b.length > POOLED_MAX || this.bytes + b.length > POOLED_BYTES) return;
    let list = this.free.get(b.length);
    if (!list) {
      if (this.free.size >= 16) return;
      list = [];
      this.free.set(b.length, list);
    }
    list.push(b);
    this.bytes += b.length;
  }
}

const POOLED_MAX = 4 * 1024 * 1024;
const POOLED_BYTES = MAX_INFLIGHT_BYTES;
const pool = new BufferPool();

/** base:allocation flags of an extent status (principle 4: the switch ends in never). */
export function allocationFlags(status: Extent['status']): number {
  switch (status) {
    case 'data':
      return 0;
    case 'zero':
    case 'hole':
      return P.STATE_HOLE | P.STATE_ZERO;
    default: {
      const never: never = status;
      throw new Error(`internal error: status ${never}`);
    }
  }
}

/** Extents -> [length, flags] descriptors, equal neighbours merged, at most `max`. */
export function toDescriptors(exts: Extent[], max: number): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (const e of exts) {
    const fl = allocationFlags(e.status);
    const last = out[out.length - 1];
    if (last && last[1] === fl) last[0] += e.length;
    else {
      if (out.length >= max) break;
      out.push([e.length, fl]);
    }
  }
  return out;
}

function parseInfoRequest(d: Buffer): { name: string; infos: number[] } | string {
  if (d.length < 6) return 'option data too short';
  const nameLen = d.readUInt32BE(0);
  if (nameLen > P.MAX_STRING || 4 + nameLen + 2 > d.length) return 'export name length is out of range';
  const name = d.subarray(4, 4 + nameLen).toString('utf8');
  const n = d.readUInt16BE(4 + nameLen);
  if (d.length !== 4 + nameLen + 2 + 2 * n)
    return 'information request count does not match the option length';
  const infos: number[] = [];
  for (let i = 0; i < n; i++) infos.push(d.readUInt16BE(6 + nameLen + 2 * i));
  return { name, infos };
}

function parseMetaRequest(d: Buffer): { name: string; queries: string[] } | string {
  if (d.length < 8) return 'option data too short';
  const nameLen = d.readUInt32BE(0);
  if (nameLen > P.MAX_STRING || 4 + nameLen + 4 > d.length) return 'export name length is out of range';
  const name = d.subarray(4, 4 + nameLen).toString('utf8');
  let pos = 4 + nameLen;
  const n = d.readUInt32BE(pos);
  pos += 4;
  const queries: string[] = [];
  for (let i = 0; i < n; i++) {
    if (pos + 4 > d.length) return 'query count does not match the option length';
    const ql = d.readUInt32BE(pos);
    pos += 4;
    if (ql > P.MAX_STRING || pos + ql > d.length) return 'query length is out of range';
    queries.push(d.subarray(pos, pos + ql).toString('utf8'));
    pos += ql;
  }
  if (pos !== d.length) return 'trailing bytes after the queries';
  return { name, queries };
}

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

function u64(n: number): Buffer {
  const b = Buffer.allocUnsafe(8);
  b.writeBigUInt64BE(BigInt(n), 0);
  return b;
}
