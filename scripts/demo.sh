#!/usr/bin/env bash
# The README quick start: makes a sample sparse disk in a temporary directory,
# writes into it (an MBR partition table and some data), then shows what
# platter does with it: info, convert (to raw and to qcow2), hash, map, compare.
# Needs only Node.js and a built platter (npm ci); no peer tools.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
platter() { node "$root/bin/platter" "$@"; }
[ -f "$root/dist/cli/main.js" ] || (cd "$root" && npm run --silent build)

work="$(mktemp -d "${TMPDIR:-/tmp}/platter-demo.XXXXXX")"
trap 'rm -rf "$work"' EXIT
cd "$work"
step() { printf '\n\033[1m$ platter %s\033[0m\n' "$*"; platter "$@"; }

step create -f raw disk.raw 1G

# Write into the image with Node (no peer tools): an MBR with one Linux
# partition from 1 MiB, and 4 MiB of data at 100 MiB and a text at 700 MiB.
node --input-type=module - disk.raw <<'JS'
import { openSync, writeSync, closeSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
const fd = openSync(process.argv[2], 'r+');
const mbr = Buffer.alloc(512);
mbr.writeUInt32LE(0x706c7472, 440);               // disk signature
mbr[446 + 4] = 0x83;                              // type: Linux
mbr.writeUInt32LE(2048, 446 + 8);                 // first sector
mbr.writeUInt32LE(2 * 1024 * 1024 - 2048, 446 + 12); // sectors
mbr[510] = 0x55; mbr[511] = 0xaa;
writeSync(fd, mbr, 0, 512, 0);
writeSync(fd, randomBytes(4 << 20), 0, 4 << 20, 100 << 20);
const text = Buffer.from('hello from platter\n');
writeSync(fd, text, 0, text.length, 700 << 20);
closeSync(fd);
JS

step info disk.raw
step convert -p -O raw disk.raw copy.raw
echo "(copy.raw: $(du -k --apparent-size copy.raw | cut -f1) KiB apparent, $(du -k copy.raw | cut -f1) KiB allocated: still sparse)"
step convert -O qcow2 disk.raw disk.qcow2
step info disk.qcow2
step hash -a md5,sha256 disk.raw
step hash -a sha256 disk.qcow2
step map disk.qcow2
step compare disk.raw disk.qcow2
printf 'oops' | dd of=copy.raw bs=1 seek=$((700 * 1024 * 1024 + 6)) conv=notrunc status=none
set +e
step compare disk.raw copy.raw
echo "(exit status $?: the images differ)"
step compare --all --json disk.raw copy.raw
set -e
printf '\nDone. The demo files were in %s (removed).\n' "$work"
