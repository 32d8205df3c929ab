// What authenticated idle devices cost the gateway, split: RSS by kind of mapping (the V8 heap's
// pages, glibc's main heap and arenas, the Node.js binary, other files) and the V8 heap's spaces
// (from /metrics), with the gateway idle and then with N devices connected (their secrets checked);
// with BENCH_HEAP_DIFF=1 also a heap snapshot at each of the two moments (a snapshot collects
// garbage first: what stays) and their difference by kind of object. Asserts nothing: it is how
// docs/performance.md's "What an idle authenticated device costs" was taken.
//   npm run build && N=1000 npx tsx bench/device-memory.ts
//   N=1000 BENCH_SETTLE_S=10 BENCH_HEAP_DIFF=1 npx tsx bench/device-memory.ts
// The snapshots' own work leaves glibc's heap large: read the RSS from a run without them.
import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { GATEWAY_ENV, holdReconnecting, log, runBench, sleep, startCloud, startGateway, type Sut } from './harness.js'

const N = Number(process.env.N ?? 1000)
const SETTLE_MS = Number(process.env.BENCH_SETTLE_S ?? 30) * 1000
const HEAP_DIFF = process.env.BENCH_HEAP_DIFF === '1'

/** VmRSS and its parts in MB: which mapping each resident page belongs to (/proc/PID/smaps). */
function rssSplit(pid: number): Record<string, number> {
  const parts: Record<string, number> = {}
  let kind = ''
  for (const line of readFileSync(`/proc/${pid}/smaps`, 'utf8').split('\n')) {
    if (/^[0-9a-f]+-[0-9a-f]+ /.test(line)) {
      const file = line.split(/\s+/)[5] ?? ''
      // Unnamed mappings: V8 reserves its heap low in the address space here; glibc's thread arenas
      // and large mallocs sit at 0x7f...
      kind = file === '' ? (line.startsWith('7f') ? 'arenas and large mallocs' : 'V8 heap') : file === '[heap]' ? 'glibc main heap' : file.endsWith('/node') ? 'Node.js binary' : file.startsWith('[') ? 'other' : 'other files'
    } else if (line.startsWith('Rss:')) parts[kind] = (parts[kind] ?? 0) + Number(line.slice(4).trim().split(' ')[0]) / 1024
  }
  const total = Object.values(parts).reduce((a, b) => a + b, 0)
  return Object.fromEntries([['RSS', total], ...Object.entries(parts).filter(([, mb]) => mb >= 0.05)].map(([k, v]) => [k, Math.round(Number(v) * 10) / 10]))
}

async function heapSpaces(sut: Sut): Promise<string> {
  const wanted = /^iothub_edge_nodejs_(heap_size_used_bytes|external_memory_bytes|heap_space_size_used_bytes\{space="(old|code|large_object)"\})/
  return ((await sut.metrics?.()) ?? '')
    .split('\n')
    .filter((l) => wanted.test(l))
    .map((l) => `${l.replace('iothub_edge_nodejs_', '').split(' ')[0]}=${(Number(l.split(' ').at(-1)) / 1048576).toFixed(1)}`)
    .join(' ')
}

/** A heap snapshot's objects by kind: count and bytes (self sizes). */
function heapByKind(file: string): Map<string, [number, number]> {
  const snap = JSON.parse(readFileSync(file, 'utf8')) as { snapshot: { meta: { node_fields: string[]; node_types: [string[]] } }; nodes: number[]; strings: string[] }
  const fields = snap.snapshot.meta.node_fields
  const types = snap.snapshot.meta.node_types[0]
  const [t, n, size] = ['type', 'name', 'self_size'].map((f) => fields.indexOf(f))
  const out = new Map<string, [number, number]>()
  for (let i = 0; i < snap.nodes.length; i += fields.length) {
    const type = types[snap.nodes[i + t]]
    const key = type.includes('string') ? '(strings)' : type === 'closure' || type === 'code' ? `${type} ${snap.strings[snap.nodes[i + n]] || '(anonymous)'}` : `${type} ${snap.strings[snap.nodes[i + n]].slice(0, 60)}`
    const cell = out.get(key) ?? [0, 0]
    cell[0]++
    cell[1] += snap.nodes[i + size]
    out.set(key, cell)
  }
  return out
}

async function snapshot(sut: Sut, dir: string): Promise<string> {
  const before = new Set(readdirSync(dir))
  process.kill(sut.pid()!, 'SIGUSR2')
  for (let waited = 0; waited < 300_000; waited += 1000) {
    await sleep(1000)
    const file = readdirSync(dir).find((f) => !before.has(f) && f.endsWith('.heapsnapshot'))
    // written when the file stops growing
    if (file) {
      const a = statSync(path.join(dir, file)).size
      await sleep(2000)
      if (a > 0 && statSync(path.join(dir, file)).size === a) return path.join(dir, file)
    }
  }
  throw new Error('no heap snapshot within 5 minutes')
}

runBench(async () => {
  const snaps = HEAP_DIFF ? mkdtempSync(path.join(os.tmpdir(), 'bench-heap-')) : undefined
  const env = snaps ? { BENCH_GATEWAY_NODE_ARGS: `--heapsnapshot-signal=SIGUSR2 --diagnostic-dir=${snaps}` } : {}
  const { cloud, cloudUrl } = await startCloud()
  const sut = await startGateway(cloudUrl, 0, [], true, undefined, N, { ...GATEWAY_ENV, ...env })
  try {
    await sleep(SETTLE_MS)
    const idle = rssSplit(sut.pid()!)
    log(`idle, ${N} registered: ${JSON.stringify(idle)}`)
    log(`  heap (MB): ${await heapSpaces(sut)}`)
    const idleSnap = snaps ? await snapshot(sut, snaps) : undefined
    const t0 = Date.now()
    const held = await holdReconnecting(sut.deviceUrl, N, sut.auth)
    log(`${N} devices connected in ${((Date.now() - t0) / 1000).toFixed(1)} s`)
    await sleep(SETTLE_MS)
    const withN = rssSplit(sut.pid()!)
    log(`${SETTLE_MS / 1000} s later: ${JSON.stringify(withN)}`)
    log(`  heap (MB): ${await heapSpaces(sut)}`)
    log(`  RSS per 1,000 devices: ${(((withN.RSS - idle.RSS) / N) * 1000).toFixed(1)} MB`)
    if (snaps && idleSnap) {
      const a = heapByKind(idleSnap)
      const b = heapByKind(await snapshot(sut, snaps))
      const rows = [...new Set([...a.keys(), ...b.keys()])].map((k) => ({ k, count: (b.get(k)?.[0] ?? 0) - (a.get(k)?.[0] ?? 0), bytes: (b.get(k)?.[1] ?? 0) - (a.get(k)?.[1] ?? 0) }))
      const total = rows.reduce((s, r) => s + r.bytes, 0)
      log(`heap kept after a full GC, per device: ${(total / N / 1024).toFixed(2)} KB; the largest kinds (count per device, bytes per device):`)
      for (const r of rows.sort((x, y) => y.bytes - x.bytes).slice(0, 40)) log(`  ${(r.count / N).toFixed(1).padStart(6)} ${String(Math.round(r.bytes / N)).padStart(6)} B  ${r.k}`)
    }
    await held.release()
  } finally {
    await sut.close()
    await cloud.close()
    if (snaps) rmSync(snaps, { recursive: true, force: true })
  }
})
