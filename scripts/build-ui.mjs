#!/usr/bin/env node
// Builds the technician web app (ui/) into dist/ui/: content-hashed JS and CSS under assets/, each
// with a .br and a .gz beside it (the gateway serves those as they are: a slow ARM box never
// compresses on the fly), index.html naming them, and manifest.json saying which files the first
// page loads (the size budget test reads it). Run by `npm run build`; `--if-stale` builds only when
// a file in ui/ is newer than the last build (the test setup uses it).
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { brotliCompressSync, constants as zlib, gzipSync } from 'node:zlib'
import * as esbuild from 'esbuild'

const root = fileURLToPath(new URL('..', import.meta.url))
const src = path.join(root, 'ui')
const out = path.join(root, 'dist', 'ui')
const manifestFile = path.join(out, 'manifest.json')

function newestMtime(dir) {
  let newest = 0
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const full = path.join(dir, e.name)
    newest = Math.max(newest, e.isDirectory() ? newestMtime(full) : statSync(full).mtimeMs)
  }
  return newest
}

export function uiBuildIsStale() {
  if (!existsSync(manifestFile)) return true
  const inputs = Math.max(newestMtime(src), statSync(fileURLToPath(import.meta.url)).mtimeMs, statSync(path.join(root, 'package-lock.json')).mtimeMs)
  return statSync(manifestFile).mtimeMs < inputs
}

export async function buildUi() {
  rmSync(out, { recursive: true, force: true })
  const assets = path.join(out, 'assets')
  mkdirSync(assets, { recursive: true })
  const result = await esbuild.build({
    absWorkingDir: root,
    entryPoints: [path.join(src, 'main.tsx')],
    bundle: true,
    // ES modules with splitting: pages that need uPlot load it when they are opened.
    format: 'esm',
    splitting: true,
    minify: true,
    target: ['es2020', 'chrome100', 'firefox100', 'safari15'],
    jsx: 'automatic',
    jsxImportSource: 'preact',
    outdir: assets,
    entryNames: '[name]-[hash]',
    chunkNames: 'chunk-[hash]',
    assetNames: '[name]-[hash]',
    metafile: true,
    legalComments: 'none',
    logLevel: 'warning',
    tsconfig: path.join(src, 'tsconfig.json'),
  })
  // The app names the server's response types (import type from src/**/*-types.ts): erased, never bundled.
  const fromSrc = Object.keys(result.metafile.inputs).filter((f) => f.startsWith('src/'))
  if (fromSrc.length) throw new Error(`build-ui: the bundle would contain server code (${fromSrc.join(', ')}); ui/ may only \`import type\` from src/**/*-types.ts`)
  const outputs = result.metafile.outputs
  const rel = (f) => path.relative(assets, path.join(root, f)).split(path.sep).join('/')
  const entryOut = Object.keys(outputs).find((f) => outputs[f].entryPoint && f.endsWith('.js'))
  if (!entryOut) throw new Error('build-ui: esbuild produced no entry script')
  const entry = outputs[entryOut]
  // The first page's JS: the entry and the chunks it imports statically (not the lazy ones).
  const firstPage = new Set([rel(entryOut)])
  const walk = (f) => {
    for (const imp of outputs[f].imports ?? []) {
      if (imp.kind === 'import-statement' && !firstPage.has(rel(imp.path))) {
        firstPage.add(rel(imp.path))
        walk(imp.path)
      }
    }
  }
  walk(entryOut)
  const css = entry.cssBundle ? rel(entry.cssBundle) : undefined

  const html = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light">
<title>iothub-edge</title>
<link rel="icon" href="data:,">
${css ? `<link rel="stylesheet" href="/assets/${css}">\n` : ''}<script type="module" src="/assets/${rel(entryOut)}"></script>
</head>
<body>
<div id="app"></div>
<noscript>This page needs JavaScript.</noscript>
</body>
</html>
`
  writeFileSync(path.join(out, 'index.html'), html)

  const files = {}
  for (const name of readdirSync(assets)) {
    const file = path.join(assets, name)
    const body = readFileSync(file)
    const br = brotliCompressSync(body, { params: { [zlib.BROTLI_PARAM_QUALITY]: 11, [zlib.BROTLI_PARAM_SIZE_HINT]: body.length } })
    const gz = gzipSync(body, { level: 9 })
    writeFileSync(`${file}.br`, br)
    writeFileSync(`${file}.gz`, gz)
    files[name] = { bytes: body.length, gzip: gz.length, brotli: br.length }
  }
  const manifest = { entry: rel(entryOut), css, firstPage: [...firstPage], files }
  writeFileSync(manifestFile, JSON.stringify(manifest, null, 2) + '\n')
  return manifest
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  if (process.argv.includes('--if-stale') && !uiBuildIsStale()) process.exit(0)
  const m = await buildUi()
  const gz = m.firstPage.reduce((n, f) => n + m.files[f].gzip, 0)
  console.log(`build-ui: dist/ui/ written; first page JS ${m.firstPage.join(', ')}: ${(gz / 1024).toFixed(1)} KiB gzip`)
}
