// Transpiles src/ to dist/ file by file (no bundling, no type check: `npm run typecheck` does that).

import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  closeSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  truncateSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { build } from 'esbuild';

const root = new URL('..', import.meta.url).pathname;
const files = [];
(function walk(dir) {
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) walk(p);
    else if (name.endsWith('.ts') && !name.endsWith('.d.ts')) files.push(p);
  }
})(join(root, 'src'));

// dist/ is not wiped first: tests running at the same time keep working while files are replaced.
await build({
  entryPoints: files,
  outdir: join(root, 'dist'),
  outbase: join(root, 'src'),
  format: 'esm',
  platform: 'node',
  target: 'node20',
  sourcemap: 'linked',
  logLevel: 'warning',
});

// The command line as one file, CommonJS: loading one script instead of ~115 ES
// modules saves ~60 ms per run on this VM (`platter --version`, best of 30: 140 ms
// as an ES module bundle, 121 ms as CommonJS, 108 ms with the code cache below;
// `node -e 0` alone 78 ms). Every npm package is bundled but zstd-wasm, whose
// .wasm file is found next to its own module. It sits in dist/cli/ at the same
// depth as dist/storage/, so native.ts's relative path to native/build resolves.
const bundle = join(root, 'dist/cli/platter.cjs');

// Modules most runs never use (NBD's sockets, hashing, compression, workers, the
// child processes of `serve --fork`) are loaded on first use instead of at start:
// evaluating them took ~30 ms of a ~100 ms `platter --version`. The bundle gets,
// for each, a stand-in whose exports are getters that load the real module; the
// bundle reads imports as properties at the time of use (`(0, m.createServer)()`),
// so code is unchanged. Names are the module's own, read here at build time.
const LAZY = [
  'node:child_process',
  'node:crypto',
  'node:net',
  'node:stream',
  'node:stream/promises',
  'node:worker_threads',
  'node:zlib',
  '@bokuweb/zstd-wasm',
];
const requireHere = createRequire(import.meta.url);
const lazyModules = {
  name: 'lazy-modules',
  setup(b) {
    const filter = new RegExp(`^(${LAZY.map((m) => m.replace(/[/.]/g, '\\$&')).join('|')})$`);
    b.onResolve({ filter }, (args) =>
      args.namespace === 'lazy'
        ? { path: args.path, external: true }
        : { path: args.path, namespace: 'lazy' },
    );
    b.onLoad({ filter: /.*/, namespace: 'lazy' }, (args) => {
      const names = Object.keys(requireHere(args.path)).filter((n) => n !== 'default' && n !== '__esModule');
      const id = JSON.stringify(args.path);
      const getters = names.map(
        (n) => `${JSON.stringify(n)}: { enumerable: true, get: () => load()[${JSON.stringify(n)}] }`,
      );
      // `default` is the stand-in itself (what esbuild's __toESM would make of it in node mode).
      getters.push('default: { get: () => module.exports }');
      return {
        contents: `let m; const load = () => (m ??= require(${id}));\nObject.defineProperties(module.exports, {${getters.join(',\n')}});\n`,
        loader: 'js',
      };
    });
  },
};
/**
 * esbuild wraps every import of a CommonJS module in __toESM, which copies each
 * export into a new object, once per importing module, at start-up: node:crypto
 * alone has some 80 exports and five importers. A stand-in needs no copy: it has
 * its own `default`, and the bundle reads imports as properties at use. (The
 * source map's columns after a removed wrapper on its line are off by its length.)
 */
function unwrapStandIns(file) {
  // esbuild names a module's wrapper after the last segment of its path.
  const names = LAZY.map(
    (m) =>
      `require_${m
        .split('/')
        .pop()
        .replace(/[^A-Za-z0-9]/g, '_')}`,
  );
  const wrapped = new RegExp(`__toESM\\((${names.join('|')})\\(\\)(?:,\\s*1)?\\)`, 'g');
  const text = readFileSync(file, 'utf8');
  writeFileSync(file, text.replace(wrapped, '$1()'));
}

// V8 checks a code cache against the source's length only: never keep an old one.
rmSync(`${bundle}.cache`, { force: true });
await build({
  entryPoints: [join(root, 'src/cli/main.ts')],
  outfile: bundle,
  bundle: true,
  plugins: [lazyModules],
  format: 'cjs',
  platform: 'node',
  target: 'node20',
  // import.meta.url has no CommonJS equivalent: the bundle's own file URL stands in.
  define: { 'import.meta.url': '__platterBundleUrl' },
  // Whitespace and syntax only (names stay, so stack traces still name functions):
  // 796 → 534 KB to read at every start, ~2 ms off a short convert and off
  // --version (medians of 31, interleaved).
  minifyWhitespace: true,
  minifySyntax: true,
  banner: { js: 'const __platterBundleUrl = require("node:url").pathToFileURL(__filename).href;' },
  sourcemap: 'linked',
  logLevel: 'warning',
});
unwrapStandIns(bundle);

// V8's code cache for the bundle (bin/platter loads it; see there): made by a run
// of `platter --version` that then converts a small raw file (holes, data and
// written zeros) to qcow2 and back, so it holds what start-up and those commands
// compile: the convert path, the raw and qcow2 drivers and the copy engine. A
// short convert then starts ~7 ms sooner (tiny raw→qcow2, medians of 31: 55.6
// against 65.2 ms); the cache grows from 260 to 415 KiB, which costs --version
// nothing measurable. Eight warm-up commands (every format, info, compare) made
// 554 KiB and were slower again, for convert and --version alike. A cache from
// another Node.js or V8 is rejected by V8 and the bundle is compiled as usual.
const warm = mkdtempSync(join(tmpdir(), 'platter-build-'));
const raw = join(warm, 'in.raw');
const MiB = 1 << 20;
writeFileSync(raw, '');
truncateSync(raw, 8 * MiB);
const fd = openSync(raw, 'r+');
writeSync(fd, randomBytes(2 * MiB), 0, 2 * MiB, MiB);
writeSync(fd, Buffer.alloc(MiB), 0, MiB, 4 * MiB);
writeSync(fd, randomBytes(MiB), 0, MiB, 6 * MiB);
closeSync(fd);
const warmUp = [
  ['convert', '-O', 'qcow2', raw, join(warm, 'out.qcow2')],
  ['convert', '-O', 'raw', join(warm, 'out.qcow2'), join(warm, 'out.raw')],
];
const made = spawnSync(process.execPath, [join(root, 'bin/platter'), '--version'], {
  env: { ...process.env, PLATTER_WRITE_CODE_CACHE: '1', PLATTER_WARM_UP: JSON.stringify(warmUp) },
  stdio: ['ignore', 'ignore', 'inherit'],
});
rmSync(warm, { recursive: true, force: true });
if (made.status !== 0) console.warn('build: the code cache was not made (start-up is a little slower)');
