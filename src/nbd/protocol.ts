/**
 * The NBD wire protocol (NetworkBlockDevice/nbd doc/proto.md): fixed newstyle
 * handshake, option haggling, simple and structured replies, `base:allocation`
 * block status. Every number on the wire is big-endian. Only this folder knows
 * NBD's bits (principle 4); the server and client translate them to and from
 * platter's Extent statuses and PlatterError codes.
 *
 *   phase        | who | bytes
 *   -------------|-----|-------------------------------------------------------
 *   greeting     | S   | "NBDMAGIC" "IHAVEOPT" u16 handshake flags
 *                | C   | u32 client flags
 *   option       | C   | "IHAVEOPT" u32 option u32 length, data
 *   option reply | S   | u64 REPLY_MAGIC u32 option u32 type u32 length, data
 *   request      | C   | u32 REQUEST_MAGIC u16 flags u16 type u64 cookie u64 offset u32 length, [data]
 *   simple reply | S   | u32 SIMPLE_MAGIC u32 error u64 cookie, [data]
 *   chunk        | S   | u32 STRUCTURED_MAGIC u16 flags u16 type u64 cookie u32 length, payload
 */

export const NBDMAGIC = 0x4e42444d41474943n;
export const IHAVEOPT = 0x49484156454f5054n;
export const OPT_REPLY_MAGIC = 0x3e889045565a9n;
export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef;

export const DEFAULT_PORT = 10809;

// Handshake flags (server) and client flags.
export const FLAG_FIXED_NEWSTYLE = 1 << 0;
export const FLAG_NO_ZEROES = 1 << 1;
export const FLAG_C_FIXED_NEWSTYLE = 1 << 0;
export const FLAG_C_NO_ZEROES = 1 << 1;

// Transmission flags.
export const TF_HAS_FLAGS = 1 << 0;
export const TF_READ_ONLY = 1 << 1;
export const TF_SEND_FLUSH = 1 << 2;
export const TF_SEND_FUA = 1 << 3;
export const TF_ROTATIONAL = 1 << 4;
export const TF_SEND_TRIM = 1 << 5;
export const TF_SEND_WRITE_ZEROES = 1 << 6;
export const TF_SEND_DF = 1 << 7;
export const TF_CAN_MULTI_CONN = 1 << 8;
export const TF_SEND_CACHE = 1 << 10;
export const TF_SEND_FAST_ZERO = 1 << 11;

// Options.
export const OPT_EXPORT_NAME = 1;
export const OPT_ABORT = 2;
export const OPT_LIST = 3;
export const OPT_STARTTLS = 5;
export const OPT_INFO = 6;
export const OPT_GO = 7;
export const OPT_STRUCTURED_REPLY = 8;
export const OPT_LIST_META_CONTEXT = 9;
export const OPT_SET_META_CONTEXT = 10;

// Option reply types; errors have bit 31 set.
export const REP_ACK = 1;
export const REP_SERVER = 2;
export const REP_INFO = 3;
export const REP_META_CONTEXT = 4;
export const REP_ERR_UNSUP = 0x80000001;
export const REP_ERR_POLICY = 0x80000002;
export const REP_ERR_INVALID = 0x80000003;
export const REP_ERR_PLATFORM = 0x80000004;
export const REP_ERR_TLS_REQD = 0x80000005;
export const REP_ERR_UNKNOWN = 0x80000006;
export const REP_ERR_SHUTDOWN = 0x80000007;
export const REP_ERR_BLOCK_SIZE_REQD = 0x80000008;
export const REP_ERR_TOO_BIG = 0x80000009;

// NBD_REP_INFO types.
export const INFO_EXPORT = 0;
export const INFO_NAME = 1;
export const INFO_DESCRIPTION = 2;
export const INFO_BLOCK_SIZE = 3;

// Commands and command flags.
export const CMD_READ = 0;
export const CMD_WRITE = 1;
export const CMD_DISC = 2;
export const CMD_FLUSH = 3;
export const CMD_TRIM = 4;
export const CMD_CACHE = 5;
export const CMD_WRITE_ZEROES = 6;
export const CMD_BLOCK_STATUS = 7;

export const CMD_FLAG_FUA = 1 << 0;
export const CMD_FLAG_NO_HOLE = 1 << 1;
export const CMD_FLAG_DF = 1 << 2;
export const CMD_FLAG_REQ_ONE = 1 << 3;
export const CMD_FLAG_FAST_ZERO = 1 << 4;

// Structured reply chunks.
export const REPLY_FLAG_DONE = 1 << 0;
export const REPLY_TYPE_NONE = 0;
export const REPLY_TYPE_OFFSET_DATA = 1;
export const REPLY_TYPE_OFFSET_HOLE = 2;
export const REPLY_TYPE_BLOCK_STATUS = 5;
export const REPLY_TYPE_ERROR = 0x8001;
export const REPLY_TYPE_ERROR_OFFSET = 0x8002;

// base:allocation status flags.
export const STATE_HOLE = 1 << 0;
export const STATE_ZERO = 1 << 1;
export const BASE_ALLOCATION = 'base:allocation';

// Errors on the wire (Linux errno values, fixed by the protocol).
export const EPERM = 1;
export const EIO = 5;
export const ENOMEM = 12;
export const EINVAL = 22;
export const ENOSPC = 28;
export const EOVERFLOW = 75;
export const ENOTSUP = 95;
export const ESHUTDOWN = 108;

export const ERRNO_NAMES: Record<number, string> = {
  [EPERM]: 'EPERM (operation not permitted)',
  [EIO]: 'EIO (input/output error)',
  [ENOMEM]: 'ENOMEM (out of memory)',
  [EINVAL]: 'EINVAL (invalid argument)',
  [ENOSPC]: 'ENOSPC (no space left)',
  [EOVERFLOW]: 'EOVERFLOW (value too large)',
  [ENOTSUP]: 'ENOTSUP (operation not supported)',
  [ESHUTDOWN]: 'ESHUTDOWN (server is shutting down)',
};

/** Strings (export names, messages, queries) must be at most this long. */
export const MAX_STRING = 4096;
/** Largest option payload we accept; more is garbage and drops the client. */
export const MAX_OPTION_LENGTH = 64 * 1024;
/** Largest READ/WRITE payload served (the same bound as qemu-nbd). */
export const MAX_REQUEST = 32 * 1024 * 1024;
export const REQUEST_SIZE = 28;

export function optionName(opt: number): string {
  const names: Record<number, string> = {
    [OPT_EXPORT_NAME]: 'NBD_OPT_EXPORT_NAME',
    [OPT_ABORT]: 'NBD_OPT_ABORT',
    [OPT_LIST]: 'NBD_OPT_LIST',
    [OPT_STARTTLS]: 'NBD_OPT_STARTTLS',
    [OPT_INFO]: 'NBD_OPT_INFO',
    [OPT_GO]: 'NBD_OPT_GO',
    [OPT_STRUCTURED_REPLY]: 'NBD_OPT_STRUCTURED_REPLY',
    [OPT_LIST_META_CONTEXT]: 'NBD_OPT_LIST_META_CONTEXT',
    [OPT_SET_META_CONTEXT]: 'NBD_OPT_SET_META_CONTEXT',
  };
  return names[opt] ?? `option ${opt}`;
}

/** An option reply header (20 bytes) followed by its data. */
export function optionReply(opt: number, type: number, data: Uint8Array = new Uint8Array(0)): Buffer {
  const b = Buffer.allocUnsafe(20 + data.length);
  b.writeBigUInt64BE(OPT_REPLY_MAGIC, 0);
  b.writeUInt32BE(opt, 8);
  b.writeUInt32BE(type, 12);
  b.writeUInt32BE(data.length, 16);
  b.set(data, 20);
  return b;
}

/** A client's option header (16 bytes) followed by its data. */
export function optionRequest(opt: number, data: Uint8Array = new Uint8Array(0)): Buffer {
  const b = Buffer.allocUnsafe(16 + data.length);
  b.writeBigUInt64BE(IHAVEOPT, 0);
  b.writeUInt32BE(opt, 8);
  b.writeUInt32BE(data.length, 12);
  b.set(data, 16);
  return b;
}

export interface Request {
  flags: number;
  type: number;
  /** The client's 64-bit handle, echoed unchanged. */
  cookie: bigint;
  offset: number;
  length: number;
}

/** A request as the server sees it: the cookie stays raw bytes, echoed without BigInt work. */
export interface ServerRequest {
  flags: number;
  type: number;
  /** The 8 cookie bytes of the request header. */
  cookie: Buffer;
  /** Exact below 2^53; above, inexact but still past the end of any export. */
  offset: number;
  length: number;
}

/** Parses a 28-byte request header; null if the magic is wrong. */
export function parseRequest(b: Buffer): ServerRequest | null {
  if (b.readUInt32BE(0) !== REQUEST_MAGIC) return null;
  return {
    flags: b.readUInt16BE(4),
    type: b.readUInt16BE(6),
    cookie: b.subarray(8, 16),
    offset: b.readUInt32BE(16) * 4294967296 + b.readUInt32BE(20),
    length: b.readUInt32BE(24),
  };
}

export function encodeRequest(r: Request): Buffer {
  const b = Buffer.allocUnsafe(REQUEST_SIZE);
  b.writeUInt32BE(REQUEST_MAGIC, 0);
  b.writeUInt16BE(r.flags, 4);
  b.writeUInt16BE(r.type, 6);
  b.writeBigUInt64BE(r.cookie, 8);
  b.writeBigUInt64BE(BigInt(r.offset), 16);
  b.writeUInt32BE(r.length, 24);
  return b;
}

export function simpleReply(cookie: Buffer, error: number): Buffer {
  const b = Buffer.allocUnsafe(16);
  b.writeUInt32BE(SIMPLE_REPLY_MAGIC, 0);
  b.writeUInt32BE(error, 4);
  cookie.copy(b, 8);
  return b;
}

/**
 * A structured reply chunk header (20 bytes) with room for `extra` payload
 * bytes after it (the offset of a data chunk); the rest of the payload follows separately.
 */
export function chunkHeader(cookie: Buffer, flags: number, type: number, length: number, extra = 0): Buffer {
  const b = Buffer.allocUnsafe(20 + extra);
  b.writeUInt32BE(STRUCTURED_REPLY_MAGIC, 0);
  b.writeUInt16BE(flags, 4);
  b.writeUInt16BE(type, 6);
  cookie.copy(b, 8);
  b.writeUInt32BE(length, 16);
  return b;
}

/** Writes a 64-bit big-endian offset (< 2^53) without BigInt. */
export function writeU64(b: Buffer, n: number, at: number): void {
  b.writeUInt32BE(Math.floor(n / 4294967296), at);
  b.writeUInt32BE(n >>> 0, at + 4);
}

/** A length-prefixed (u32) string. */
export function lpString(s: string): Buffer {
  const body = Buffer.from(s, 'utf8');
  const b = Buffer.allocUnsafe(4 + body.length);
  b.writeUInt32BE(body.length, 0);
  b.set(body, 4);
  return b;
}
