/**
 * Bad input over raw sockets: garbage, unknown options and commands, oversized
 * and out-of-range requests, clients that vanish mid-request, and a seeded
 * random fuzzer. The server must answer with the protocol's error or drop
 * that client, keep serving the others, and never change the image except
 * through a well-formed write.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, ftruncateSync, openSync, readFileSync, writeSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { Disk } from '../../src/core/disk.js';
import { openImage } from '../../src/formats/open.js';
import { openNbd } from '../../src/nbd/client.js';
import * as P from '../../src/nbd/protocol.js';
import { NbdServer } from '../../src/nbd/server.js';
import { SocketReader } from '../../src/nbd/stream.js';
import { nodeHost } from '../../src/storage/host.js';
import { tempDir } from '../helpers/tmp.js';
import { socketPath } from './helpers.js';

const MiB = 1 << 20;
const SIZE = 4 * MiB;

/** A raw socket to the server with exact-length reads that time out. */
class Raw {
  readonly reader: SocketReader;
  private constructor(readonly socket: Socket) {
    this.reader = new SocketReader(socket);
    socket.on('error', () => undefined);
  }
  static async open(path: string): Promise<Raw> {
    const s = connect(path);
    await new Promise<void>((resolve, reject) => {
      s.once('connect', resolve);
      s.once('error', reject);
    });
    return new Raw(s);
  }
  send(...parts: Uint8Array[]): void {
    for (const p of parts) this.socket.write(p);
  }
  async read(n: number, ms = 5000): Promise<Buffer> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no ${n} bytes within ${ms} ms`)), ms);
    });
    try {
      return await Promise.race([this.reader.read(n), timeout]);
    } finally {
      clearTimeout(timer);
    }
  }
  /** Resolves true when the server closes the connection (within ms). */
  async dropped(ms = 5000): Promise<boolean> {
    try {
      for (;;) await this.read(1, ms);
    } catch (e) {
      return !/within/.test((e as Error).message);
    }
  }
  close(): void {
    this.socket.destroy();
  }
  /** Greeting + client flags. */
  async greet(flags = P.FLAG_C_FIXED_NEWSTYLE | P.FLAG_C_NO_ZEROES): Promise<void> {
    const g = await this.read(18);
    assert.equal(g.readBigUInt64BE(0), P.NBDMAGIC);
    this.send(u32(flags));
  }
  async optionReply(): Promise<{ opt: number; type: number; data: Buffer }> {
    const h = await this.read(20);
    assert.equal(h.readBigUInt64BE(0), P.OPT_REPLY_MAGIC);
    const len = h.readUInt32BE(16);
    return { opt: h.readUInt32BE(8), type: h.readUInt32BE(12), data: Buffer.from(await this.read(len)) };
  }
  /** Option replies up to and including the final (ACK or error) one. */
  async optionReplies(): Promise<Array<{ type: number; data: Buffer }>> {
    const out = [];
    for (;;) {
      const r = await this.optionReply();
      out.push(r);
      if (r.type === P.REP_ACK || r.type >= 0x80000000) return out;
    }
  }
  /** Structured replies + base:allocation + GO; leaves the socket in transmission. */
  async go(): Promise<void> {
    await this.greet();
    this.send(P.optionRequest(P.OPT_STRUCTURED_REPLY));
    assert.equal((await this.optionReply()).type, P.REP_ACK);
    this.send(P.optionRequest(P.OPT_GO, Buffer.concat([u32(0), u16(0)])));
    const r = await this.optionReplies();
    assert.equal(r[r.length - 1].type, P.REP_ACK);
  }
  request(type: number, offset: bigint | number, length: number, flags = 0, cookie = 7n): void {
    const b = P.encodeRequest({ flags, type, cookie, offset: 0, length });
    b.writeBigUInt64BE(BigInt(offset), 16);
    this.send(b);
  }
  /** One whole structured reply: the errno of its error chunk, or 0. */
  async reply(): Promise<{ errno: number; cookie: bigint; message: string }> {
    for (;;) {
      const h = await this.read(20);
      assert.equal(h.readUInt32BE(0), P.STRUCTURED_REPLY_MAGIC);
      const flags = h.readUInt16BE(4);
      const type = h.readUInt16BE(6);
      const cookie = h.readBigUInt64BE(8);
      const payload = await this.read(h.readUInt32BE(16));
      if (type & 0x8000) {
        const mlen = payload.readUInt16BE(4);
        return { errno: payload.readUInt32BE(0), cookie, message: payload.subarray(6, 6 + mlen).toString() };
      }
      if (flags & P.REPLY_FLAG_DONE) return { errno: 0, cookie, message: '' };
    }
  }
}

function u16(n: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(n);
  return b;
}
function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n >>> 0);
  return b;
}

/** xorshift32: the fuzzer's sequence is the same on every run for a seed. */
function prng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
}

describe('nbd server: bad input', () => {
  const dir = tempDir();
  const img = join(dir, 'fuzz.raw');
  const content = randomBytes(SIZE);
  let disk: Disk;
  let server: NbdServer;
  let roServer: NbdServer;
  let sock: string;
  let roSock: string;
  const logs: string[] = [];
  const log = (m: string): void => {
    logs.push(m);
  };
  const hash = (): string => createHash('sha256').update(readFileSync(img)).digest('hex');

  before(async () => {
    const fd = openSync(img, 'w');
    ftruncateSync(fd, SIZE);
    writeSync(fd, content, 0, SIZE, 0);
    closeSync(fd);
    disk = await openImage(nodeHost, img, { format: 'raw', readOnly: false });
    server = new NbdServer(disk, { log });
    sock = socketPath(dir);
    await server.listen({ path: sock });
    roServer = new NbdServer(disk, { readOnly: true, exportName: 'ro', log });
    roSock = socketPath(dir);
    await roServer.listen({ path: roSock });
  });

  after(async () => {
    assert.deepEqual(
      logs.filter((m) => /internal error|client error/.test(m)),
      [],
      'no request reached a bug in the server',
    );
    assert.ok(
      logs.some((m) => /client dropped/.test(m)),
      'drops are logged',
    );
    await server.close();
    await roServer.close();
    await disk.close();
  });

  /** A well-behaved client still reads the whole image correctly. */
  async function stillServes(path = sock, name = ''): Promise<void> {
    const s = await openNbd(`nbd+unix:///${name}?socket=${path}`, { write: false });
    try {
      const buf = new Uint8Array(SIZE);
      await s.read(buf, 0);
      assert.equal(Buffer.from(buf).equals(content), true, 'image content unchanged and served');
    } finally {
      await s.close();
    }
  }

  it('garbage instead of client flags or options: dropped, others still served', async () => {
    const before = hash();
    const a = await Raw.open(sock);
    await a.read(18);
    a.send(randomBytes(64));
    assert.equal(await a.dropped(), true);
    const b = await Raw.open(sock);
    await b.greet(0xffff0000);
    assert.equal(await b.dropped(), true, 'unknown client flags');
    const c = await Raw.open(sock);
    await c.greet();
    c.send(randomBytes(16));
    assert.equal(await c.dropped(), true, 'bad option magic');
    await stillServes();
    assert.equal(hash(), before);
  });

  it('unknown, malformed and out-of-order options get error replies; the session goes on', async () => {
    const r = await Raw.open(sock);
    await r.greet();
    r.send(P.optionRequest(0x1234, Buffer.from('junk')));
    assert.equal((await r.optionReply()).type, P.REP_ERR_UNSUP);
    r.send(P.optionRequest(P.OPT_SET_META_CONTEXT, Buffer.alloc(8)));
    assert.equal((await r.optionReply()).type, P.REP_ERR_INVALID, 'meta context before structured replies');
    r.send(P.optionRequest(P.OPT_GO, Buffer.concat([u32(1000), Buffer.from('x'), u16(0)])));
    assert.equal((await r.optionReply()).type, P.REP_ERR_INVALID, 'name length past the option');
    r.send(P.optionRequest(P.OPT_GO, Buffer.concat([u32(0), u16(5), u16(1)])));
    assert.equal((await r.optionReply()).type, P.REP_ERR_INVALID, 'info count past the option');
    r.send(P.optionRequest(P.OPT_LIST, Buffer.from('x')));
    assert.equal((await r.optionReply()).type, P.REP_ERR_INVALID, 'LIST with data');
    r.send(P.optionRequest(P.OPT_STARTTLS));
    assert.equal((await r.optionReply()).type, P.REP_ERR_POLICY);
    r.send(P.optionRequest(P.OPT_INFO, Buffer.concat([u32(4), Buffer.from('nope'), u16(0)])));
    assert.equal((await r.optionReply()).type, P.REP_ERR_UNKNOWN);
    r.send(P.optionRequest(P.OPT_STRUCTURED_REPLY));
    assert.equal((await r.optionReply()).type, P.REP_ACK);
    const meta = Buffer.concat([
      u32(0),
      u32(2),
      P.lpString('qemu:dirty-bitmap:x'),
      P.lpString(P.BASE_ALLOCATION),
    ]);
    r.send(P.optionRequest(P.OPT_SET_META_CONTEXT, meta));
    const m = await r.optionReplies();
    assert.deepEqual(
      m.map((x) => x.type),
      [P.REP_META_CONTEXT, P.REP_ACK],
    );
    r.send(P.optionRequest(P.OPT_GO, Buffer.concat([u32(0), u16(0)])));
    const g = await r.optionReplies();
    assert.equal(g[g.length - 1].type, P.REP_ACK);
    r.request(P.CMD_BLOCK_STATUS, 0, SIZE, 0, 9n);
    const bs = await r.read(20);
    assert.equal(bs.readUInt16BE(6), P.REPLY_TYPE_BLOCK_STATUS);
    await r.read(bs.readUInt32BE(16));
    r.close();
  });

  it('an option too long to be real is not buffered: the client is dropped', async () => {
    const r = await Raw.open(sock);
    await r.greet();
    const h = P.optionRequest(P.OPT_GO);
    h.writeUInt32BE(0xffffffff, 12);
    r.send(h);
    assert.equal(await r.dropped(), true);
    await stillServes();
  });

  it('bad requests get the protocol error; the connection keeps working', async () => {
    const before = hash();
    const r = await Raw.open(sock);
    await r.go();
    const cases: Array<[string, () => void, number]> = [
      ['unknown command', () => r.request(99, 0, 512), P.EINVAL],
      ['read past the end', () => r.request(P.CMD_READ, SIZE - 100, 512), P.EINVAL],
      ['read at 2^64 - 1', () => r.request(P.CMD_READ, 0xffffffffffffffffn, 512), P.EINVAL],
      ['oversized read', () => r.request(P.CMD_READ, 0, 64 * MiB), P.EINVAL],
      ['block status without a context', () => r.request(P.CMD_BLOCK_STATUS, 0, 512), P.EINVAL],
      ['trim past the end', () => r.request(P.CMD_TRIM, SIZE, 1), P.ENOSPC],
      ['zeroes past the end', () => r.request(P.CMD_WRITE_ZEROES, SIZE - 1, 2), P.ENOSPC],
      [
        'fast zero without holes',
        () => r.request(P.CMD_WRITE_ZEROES, 0, 4096, P.CMD_FLAG_FAST_ZERO | P.CMD_FLAG_NO_HOLE),
        P.ENOTSUP,
      ],
      ['cache past the end', () => r.request(P.CMD_CACHE, SIZE, 1), P.EINVAL],
      [
        'write past the end (payload consumed)',
        () => {
          r.request(P.CMD_WRITE, SIZE - 256, 512);
          r.send(Buffer.alloc(512, 0xee));
        },
        P.ENOSPC,
      ],
    ];
    for (const [what, send, errno] of cases) {
      send();
      const rep = await r.reply();
      assert.equal(rep.errno, errno, what);
      assert.equal(rep.cookie, 7n, what);
      assert.ok(rep.message.length > 0, `${what}: a message for the user`);
    }
    // Still in sync: a good read works on the same connection.
    r.request(P.CMD_READ, 4096, 16, 0, 8n);
    const h = await r.read(20);
    assert.equal(h.readUInt16BE(6), P.REPLY_TYPE_OFFSET_DATA);
    const payload = await r.read(h.readUInt32BE(16));
    assert.deepEqual(payload.subarray(8), content.subarray(4096, 4112));
    r.close();
    assert.equal(hash(), before);
  });

  it('an oversized write or a bad request magic drops the client; the image is unchanged', async () => {
    const before = hash();
    const a = await Raw.open(sock);
    await a.go();
    a.request(P.CMD_WRITE, 0, 64 * MiB);
    a.send(Buffer.alloc(4096, 0xaa));
    assert.equal(await a.dropped(), true, 'write larger than the maximum');
    const b = await Raw.open(sock);
    await b.go();
    b.send(randomBytes(28));
    assert.equal(await b.dropped(), true, 'request magic');
    await stillServes();
    assert.equal(hash(), before);
  });

  it('a client that disconnects mid-request changes nothing', async () => {
    const before = hash();
    const a = await Raw.open(sock);
    await a.go();
    a.request(P.CMD_WRITE, 0, 65536);
    a.send(Buffer.alloc(30000, 0xbb));
    await new Promise((r) => setTimeout(r, 50));
    a.close();
    const b = await Raw.open(sock);
    await b.go();
    b.send(
      P.encodeRequest({ flags: 0, type: P.CMD_READ, cookie: 1n, offset: 0, length: 512 }).subarray(0, 13),
    );
    b.close();
    const c = await Raw.open(sock);
    await c.go();
    c.request(P.CMD_READ, 0, 4 * MiB);
    c.close(); // gone before the reply is written
    await stillServes();
    assert.equal(hash(), before);
  });

  it('seeded random fuzzing of a read-only export: no crash, no change, others served', async () => {
    const before = hash();
    const rnd = prng(0x9e3779b9);
    const pick = <T>(xs: readonly T[]): T => xs[rnd() % xs.length];
    const options = [0, 1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12, 0xffffffff];
    const commands = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0xffff];
    for (let round = 0; round < 60; round++) {
      const r = await Raw.open(roSock);
      try {
        await r.read(18);
        r.send(u32(rnd() % 4 === 0 ? rnd() : P.FLAG_C_FIXED_NEWSTYLE | P.FLAG_C_NO_ZEROES));
        const steps = 1 + (rnd() % 6);
        for (let i = 0; i < steps; i++) {
          const opt = pick(options);
          const len = rnd() % 3 === 0 ? rnd() : rnd() % 40;
          const body = randomBytes(Math.min(len, 64));
          const h = P.optionRequest(opt, body);
          if (rnd() % 2) h.writeUInt32BE(len >>> 0, 12);
          r.send(h);
        }
        // Then, maybe, requests as if in transmission.
        for (let i = rnd() % 8; i > 0; i--) {
          const b = P.encodeRequest({
            flags: rnd() & 0xffff,
            type: pick(commands),
            cookie: BigInt(i),
            offset: 0,
            length: 0,
          });
          b.writeUInt32BE(rnd() % 2 ? rnd() : 0, 16);
          b.writeUInt32BE(rnd(), 20);
          b.writeUInt32BE(rnd() % 3 ? rnd() % 70000 : rnd(), 24);
          r.send(b);
          if (rnd() % 3 === 0) r.send(randomBytes(rnd() % 1000));
        }
        await new Promise((res) => setTimeout(res, 2));
      } finally {
        r.close();
      }
    }
    await stillServes(roSock, 'ro');
    await stillServes();
    assert.equal(hash(), before);
  });
});
