// The outbox's group commit alone, on the calling thread vs on its writer thread, alternating in one
// process (npx tsx bench/outbox-commit.ts): a window of 100 messages in flight as a publisher keeps
// them, each message costing the main thread some work besides the commit (parsing, acknowledging,
// publishing to the hub: OUTBOX_BENCH_WORK_US, 20 µs by default), and every committed row
// acknowledged by a stand-in hub (its deletion joins the next commit), synchronous=FULL on a real file.
// Reports msg/s and the share of wall time the event loop was busy.
import { mkdtempSync, rmSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { performance } from 'node:perf_hooks'
import { openDatabase } from '../src/store/db.js'
import { Outbox, type OutboxRow } from '../src/store/outbox.js'
import { parseUpTopic } from '../src/core/hub-topics.js'

const N = Number(process.env.OUTBOX_BENCH_MESSAGES ?? 20_000)
const RUNS = Number(process.env.OUTBOX_BENCH_RUNS ?? 3)
const WORK_US = Number(process.env.OUTBOX_BENCH_WORK_US ?? 20)
const WINDOW = Number(process.env.OUTBOX_BENCH_WINDOW ?? 100)

function busy(us: number): void {
  const until = performance.now() + us / 1000
  while (performance.now() < until) {
    // the main thread's own per-message work
  }
}

async function run(writerThread: boolean): Promise<{ rate: number; elu: number }> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'outbox-bench-'))
  const db = openDatabase(dir)
  const outbox = new Outbox(db, { maxBytes: 1 << 30, rpcRespTtlMs: 10_000, writerThread })
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

const median = (v: number[]): number => [...v].sort((a, b) => a - b)[Math.floor(v.length / 2)]
const res: Record<'calling' | 'writer', { rate: number[]; elu: number[] }> = { calling: { rate: [], elu: [] }, writer: { rate: [], elu: [] } }
for (let r = 0; r < RUNS; r++) {
  for (const mode of ['calling', 'writer'] as const) {
    const x = await run(mode === 'writer')
    res[mode].rate.push(x.rate)
    res[mode].elu.push(x.elu)
    process.stderr.write(`${mode} thread run ${r + 1}: ${Math.round(x.rate)} msg/s, event loop busy ${(x.elu * 100).toFixed(0)} %\n`)
  }
}
const out = {
  messages: N,
  runs: RUNS,
  workUsPerMessage: WORK_US,
  loadAverage: os.loadavg().map((x) => Math.round(x * 10) / 10),
  callingThread: { medianRate: Math.round(median(res.calling.rate)), rates: res.calling.rate.map(Math.round) },
  writerThread: { medianRate: Math.round(median(res.writer.rate)), rates: res.writer.rate.map(Math.round) },
  ratio: Math.round((median(res.writer.rate) / median(res.calling.rate)) * 100) / 100,
}
process.stdout.write(JSON.stringify(out, null, 2) + '\n')
