// The outbox's group commit alone, on the calling thread vs on its writer thread, alternating in one
// process (npx tsx bench/outbox-commit.ts): a window of 100 messages in flight as a publisher keeps
// them, each message costing the main thread some work besides the commit (parsing, acknowledging,
// publishing to the hub: OUTBOX_BENCH_WORK_US, 20 µs by default), and every committed row
// acknowledged by a stand-in hub (its deletion joins the next commit), synchronous=FULL on a real file.
// Reports msg/s and the share of wall time the event loop was busy.
// The drain too ("drain"): a backlog of OUTBOX_BENCH_BACKLOG rows read, sent and acknowledged the way
// the hub link does it (reads of 512, every row acknowledged in the next turn of the event loop),
// with OUTBOX_BENCH_DRAIN_WORK_US of other work per message (the hub link's encoding); reports msg/s
// and the main thread's busy µs per message.
// OUTBOX_BENCH_BASELINE=/path/to/an/older/checkout runs that checkout's src/store/outbox.ts too, in
// turn with this one ("old" and "new"), on the same machine in the same process.
import { mkdtempSync, rmSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { performance } from 'node:perf_hooks'
import { openDatabase } from '../src/store/db.js'
import { Outbox, type OutboxRow } from '../src/store/outbox.js'
import { pathToFileURL } from 'node:url'
import { parseUpTopic } from '../src/core/hub-topics.js'

const N = Number(process.env.OUTBOX_BENCH_MESSAGES ?? 20_000)
const RUNS = Number(process.env.OUTBOX_BENCH_RUNS ?? 3)
const WORK_US = Number(process.env.OUTBOX_BENCH_WORK_US ?? 20)
const WINDOW = Number(process.env.OUTBOX_BENCH_WINDOW ?? 100)
const BACKLOG = Number(process.env.OUTBOX_BENCH_BACKLOG ?? 100_000)
const DRAIN_WORK_US = Number(process.env.OUTBOX_BENCH_DRAIN_WORK_US ?? 2)
const BASELINE = process.env.OUTBOX_BENCH_BASELINE
type OutboxClass = typeof Outbox
// Each build with its own schema (openDatabase's migrations) and its own outbox.
interface Build {
  Outbox: OutboxClass
  openDatabase: typeof openDatabase
}
const builds: Record<string, Build> = { new: { Outbox, openDatabase } }
if (BASELINE) {
  const load = async <T>(file: string): Promise<T> => (await import(pathToFileURL(path.join(BASELINE, file)).href)) as T
  builds.old = { Outbox: (await load<{ Outbox: OutboxClass }>('src/store/outbox.ts')).Outbox, openDatabase: (await load<{ openDatabase: typeof openDatabase }>('src/store/db.ts')).openDatabase }
}

function busy(us: number): void {
  const until = performance.now() + us / 1000
  while (performance.now() < until) {
    // the main thread's own per-message work
  }
}

async function run(build: Build, writerThread: boolean): Promise<{ rate: number; elu: number }> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'outbox-bench-'))
  const db = build.openDatabase(dir)
  const outbox = new build.Outbox(db, { maxBytes: 1 << 30, rpcRespTtlMs: 10_000, writerThread })
  outbox.on('committed', (rows: OutboxRow[]) => setImmediate(() => rows.forEach((r) => outbox.ack(r.id))))
  const payload = Buffer.alloc(64, 1)
  let sent = 0
  let done = 0
  const elu0 = performance.eventLoopUtilization()
  const t0 = performance.now()
  await new Promise<void>((resolve) => {
    const one = (): void => {
      const i = sent++
      busy(WORK_US)
      const topic = parseUpTopic(`upload_data/bench/d${i % 100}/t/m${i}`)!
      void outbox.enqueue({ topic, payload, transport: 'mqtt', receivedAt: Date.now() }).then(() => {
        if (++done === N) resolve()
        else if (sent < N) one()
      })
    }
    for (let k = 0; k < WINDOW; k++) one()
  })
  const seconds = (performance.now() - t0) / 1000
  const elu = performance.eventLoopUtilization(elu0).utilization
  outbox.close()
  db.close()
  rmSync(dir, { recursive: true, force: true })
  return { rate: N / seconds, elu }
}

/** A backlog drained as the hub link drains it; the rate and the main thread's busy time per message. */
async function drain(build: Build, writerThread: boolean): Promise<{ rate: number; elu: number; busyUs: number }> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'outbox-bench-'))
  const db = build.openDatabase(dir)
  const outbox = new build.Outbox(db, { maxBytes: 1 << 30, rpcRespTtlMs: 10_000, writerThread })
  const payload = Buffer.alloc(64, 1)
  for (let i = 0; i < BACKLOG; ) {
    const batch: Promise<void>[] = []
    for (const end = Math.min(BACKLOG, i + 2_000); i < end; i++) {
      batch.push(outbox.enqueue({ topic: parseUpTopic(`upload_data/bench/d${i % 100}/t/m${i}`)!, payload, transport: 'mqtt', receivedAt: Date.now() }))
    }
    await Promise.all(batch)
  }
  await outbox.flush()
  const elu0 = performance.eventLoopUtilization()
  const t0 = performance.now()
  let cursor = 0
  for (;;) {
    const rows = outbox.read(2, cursor, 512)
    if (!rows.length) break
    cursor = rows[rows.length - 1].id
    for (const r of rows) {
      busy(DRAIN_WORK_US)
      if (r.payload.length !== 64) throw new Error('bad row')
      outbox.sent(r.id)
    }
    // The PUBACKs come back in a later turn.
    await new Promise<void>((resolve) => setImmediate(resolve))
    for (const r of rows) outbox.ack(r.id)
  }
  while (outbox.stats().messages > 0) await outbox.flush()
  const seconds = (performance.now() - t0) / 1000
  const elu = performance.eventLoopUtilization(elu0).utilization
  outbox.close()
  db.close()
  rmSync(dir, { recursive: true, force: true })
  return { rate: BACKLOG / seconds, elu, busyUs: (elu * seconds * 1e6) / BACKLOG }
}

const median = (v: number[]): number => [...v].sort((a, b) => a - b)[Math.floor(v.length / 2)]
const round = (x: number, d = 0): number => Math.round(x * 10 ** d) / 10 ** d
type Key = `${string} ${'calling' | 'writer'}`
const commit: Record<Key, { rate: number[]; elu: number[] }> = {}
const drained: Record<Key, { rate: number[]; busyUs: number[] }> = {}
const order = Object.keys(builds)
for (let r = 0; r < RUNS; r++) {
  // Old and new in turn, a different one first each run.
  for (const build of order.map((_, i) => order[(i + r) % order.length])) {
    for (const mode of ['calling', 'writer'] as const) {
      const key: Key = `${build} ${mode}`
      const x = await run(builds[build], mode === 'writer')
      ;(commit[key] ??= { rate: [], elu: [] }).rate.push(x.rate)
      commit[key].elu.push(x.elu)
      process.stderr.write(`${key} thread, intake run ${r + 1}: ${Math.round(x.rate)} msg/s, event loop busy ${(x.elu * 100).toFixed(0)} %\n`)
      const d = await drain(builds[build], mode === 'writer')
      ;(drained[key] ??= { rate: [], busyUs: [] }).rate.push(d.rate)
      drained[key].busyUs.push(d.busyUs)
      process.stderr.write(`${key} thread, drain run ${r + 1}: ${Math.round(d.rate)} msg/s, main thread busy ${d.busyUs.toFixed(1)} µs per message\n`)
    }
  }
}
const out = {
  messages: N,
  backlog: BACKLOG,
  runs: RUNS,
  workUsPerMessage: WORK_US,
  drainWorkUsPerMessage: DRAIN_WORK_US,
  loadAverage: os.loadavg().map((x) => round(x, 1)),
  intake: Object.fromEntries(Object.entries(commit).map(([k, v]) => [k, { medianRate: Math.round(median(v.rate)), rates: v.rate.map(Math.round) }])),
  drain: Object.fromEntries(
    Object.entries(drained).map(([k, v]) => [k, { medianRate: Math.round(median(v.rate)), rates: v.rate.map(Math.round), medianBusyUsPerMessage: round(median(v.busyUs), 1) }]),
  ),
  writerToCalling: round(median(commit['new writer'].rate) / median(commit['new calling'].rate), 2),
  ...(BASELINE
    ? {
        newToOld: Object.fromEntries(
          (['calling', 'writer'] as const).map((m) => [
            m,
            {
              intake: round(median(commit[`new ${m}`].rate) / median(commit[`old ${m}`].rate), 2),
              drain: round(median(drained[`new ${m}`].rate) / median(drained[`old ${m}`].rate), 2),
              drainBusy: round(median(drained[`new ${m}`].busyUs) / median(drained[`old ${m}`].busyUs), 2),
            },
          ]),
        ),
      }
    : {}),
}
process.stdout.write(JSON.stringify(out, null, 2) + '\n')
