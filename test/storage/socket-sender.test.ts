/**
 * The socket sender (storage/socket-sender.ts over native/send.c): replies of
 * buffers and file ranges leave whole and in order; a reader that stops
 * reading holds no pool thread and is cut off by abort(); a range past the end
 * of its file and a peer that hangs up fail the replies, not the process; the
 * native call checks its segments.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import type { Socket } from 'node:net';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { openFile } from '../../src/storage/file.js';
import { memoryStorage } from '../../src/storage/memory.js';
import { native } from '../../src/storage/native.js';
import { SocketSender } from '../../src/storage/socket-sender.js';
import { socketPair } from '../helpers/sockets.js';
import { tempDir } from '../helpers/tmp.js';

const MiB = 1 << 20;

/** Reads n bytes from the socket. */
function readN(s: Socket, n: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let got = 0;
  return new Promise((resolve, reject) => {
    const onData = (d: Buffer): void => {
      chunks.push(d);
      got += d.length;
      if (got >= n) {
        s.off('data', onData);
        resolve(Buffer.concat(chunks).subarray(0, n));
      }
    };
    s.on('data', onData);
    s.once('close', () => reject(new Error(`closed after ${got} of ${n} bytes`)));
  });
}

describe('socket sender', { skip: native.socket ? false : 'no native addon' }, () => {
  const dir = tempDir();

  it('sends buffers and file ranges, reply after reply, in order; each reply says when it left', async () => {
    const path = join(dir, 'data');
    const content = randomBytes(8 * MiB);
    writeFileSync(path, content);
    const file = await openFile(path, { write: false });
    const { server, client } = await socketPair(dir, 'order.sock');
    const sender = SocketSender.for(server);
    assert.ok(sender);
    try {
      assert.equal(sender.canSendFrom(file), true);
      assert.equal(
        sender.canSendFrom(memoryStorage('m', new Uint8Array(16))),
        false,
        'memory has no file to send from',
      );
      const expected: Buffer[] = [];
      const left: number[] = [];
      for (let i = 0; i < 40; i++) {
        const head = Buffer.from(`reply ${i}:`);
        const at = (i * 193 * 1024) % (7 * MiB);
        const length = i % 5 === 0 ? 0 : (i * 77777) % (MiB + 3);
        sender.send([head, new Uint8Array(0), { storage: file, at, length }, Buffer.from([i])], (err) => {
          assert.equal(err, undefined);
          left.push(i);
        });
        expected.push(head, content.subarray(at, at + length), Buffer.from([i]));
      }
      const want = Buffer.concat(expected);
      const got = await readN(client, want.length);
      assert.ok(got.equals(want), 'the bytes, in order');
      await sender.idle();
      assert.deepEqual(
        left,
        Array.from({ length: 40 }, (_, i) => i),
        'every reply reported, in order',
      );
    } finally {
      await sender.close();
      client.destroy();
      server.destroy();
      await file.close();
    }
  });

  it('a reader that stops reading: the send waits, abort() ends it and fails what is queued', async () => {
    const path = join(dir, 'big');
    writeFileSync(path, randomBytes(32 * MiB));
    const file = await openFile(path, { write: false });
    const { server, client } = await socketPair(dir, 'stall.sock');
    client.pause();
    const sender = SocketSender.for(server);
    assert.ok(sender);
    try {
      const results: Array<Error | undefined> = [];
      sender.send([{ storage: file, at: 0, length: 32 * MiB }], (e) => results.push(e));
      sender.send([Buffer.from('after')], (e) => results.push(e));
      await new Promise((r) => setTimeout(r, 600));
      assert.deepEqual(results, [], 'nothing left while the reader does not read');
      assert.equal(sender.queued, 2);
      sender.abort();
      await sender.idle();
      assert.equal(results.length, 2);
      for (const e of results) assert.match(String(e), /connection lost while sending/);
      let late: Error | undefined;
      sender.send([Buffer.from('late')], (e) => {
        late = e;
      });
      await new Promise((r) => setImmediate(r));
      assert.ok(late, 'a reply after the failure fails at once');
    } finally {
      await sender.close();
      client.destroy();
      server.destroy();
      await file.close();
    }
  });

  it('a range past the end of its file fails the reply; a peer that hung up fails the next one', async () => {
    const path = join(dir, 'short');
    writeFileSync(path, randomBytes(MiB));
    const file = await openFile(path, { write: false });
    const { server, client } = await socketPair(dir, 'eof.sock');
    const sender = SocketSender.for(server);
    assert.ok(sender);
    try {
      const err = await new Promise<Error | undefined>((r) =>
        sender.send([{ storage: file, at: MiB - 10, length: 20 }], r),
      );
      assert.match(String(err), /connection lost while sending \(EIO\)/);
    } finally {
      await sender.close();
      client.destroy();
      server.destroy();
    }
    const p2 = await socketPair(dir, 'hup.sock');
    const s2 = SocketSender.for(p2.server);
    assert.ok(s2);
    try {
      p2.client.destroy();
      await new Promise((r) => setTimeout(r, 50));
      const err = await new Promise<Error | undefined>((r) =>
        s2.send([{ storage: file, at: 0, length: MiB }], r),
      );
      assert.match(String(err), /connection lost while sending \((EPIPE|ECONNRESET)\)/);
    } finally {
      await s2.close();
      p2.server.destroy();
      await file.close();
    }
  });

  it('native sendSpans refuses segments outside their buffers or with bad descriptors', async () => {
    const calls = native.socket!;
    const buf = new Uint8Array(16);
    assert.throws(() => calls.sendSpans(0, [buf], Float64Array.of(-2, 0, 1), 0), RangeError);
    assert.throws(() => calls.sendSpans(0, [buf], Float64Array.of(-1, 8, 9), 0), RangeError);
    assert.throws(() => calls.sendSpans(0, [buf], Float64Array.of(1.5, 0, 1), 0), RangeError);
    assert.throws(() => calls.sendSpans(0, [buf], Float64Array.of(3, -1, 1), 0), RangeError);
    assert.throws(() => calls.sendSpans(0, [buf], Float64Array.of(3, 0), 0), TypeError);
    assert.throws(() => calls.sendSpans(-1, [buf], Float64Array.of(-1, 0, 1), 0), RangeError);
    assert.throws(() => calls.sendSpans(0, [{} as Uint8Array], new Float64Array(0), 0), TypeError);
  });
});
