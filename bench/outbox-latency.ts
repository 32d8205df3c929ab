// The outbox's commit latency alone at a fixed rate, on the calling thread vs on its writer thread,
// alternating in one process (npx tsx bench/outbox-latency.ts): OUTBOX_LAT_RATE messages a second
// (1,000 by default) for OUTBOX_LAT_N messages, every committed row acknowledged in the next turn as
// the hub link does, synchronous=FULL on a real file. Reports, per mode, the time from enqueue to
// durable (the sender's PUBACK) at p50/p90/p99/max, and the event loop's delay.
import { mkdtempSync, rmSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { monitorEventLoopDelay, performance } from 'node:perf_hooks'
import { openDatabase } from '../src/store/db.js'
import { Outbox, type OutboxRow } from '../src/store/outbox.js'
import { parseUpTopic } from '../src/core/hub-topics.js'

const N = Number(process.env.OUTBOX_LAT_N ?? 5_000)
const RATE = Number(process.env.OUTBOX_LAT_RATE ?? 1_000)
const ROUNDS = Number(process.env.OUTBOX_LAT_ROUNDS ?? 2)

const q = (s: number[], p: number): number => s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]

async function run(writerThread: boolean): Promise<string> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'outbox-lat-'))
  const db = openDatabase(dir)
  const outbox = new Outbox(db, { maxBytes: 1 << 30, rpcRespTtlMs: 10_000, writerThread })
  const keep = setInterval(() => {}, 1000)
  await outbox.durability()
  clearInterval(keep)
  outbox.on('committed', (rows: OutboxRow[]) => setImmediate(() => rows.forEach((r) => outbox.ack(r.id))))
  const payload = Buffer.alloc(64, 1)
  const lat: number[] = []
  const h = monitorEventLoopDelay({ resolution: 1 })
  h.enable()
  const t0 = performance.now()
  await new Promise<void>((resolve) => {
    let sent = 0
    let done = 0
    const tick = (): void => {
      // as many as are due by now: a fixed rate whatever the timer's granularity
      const due = Math.min(N, Math.floor(((performance.now() - t0) * RATE) / 1000))
      for (; sent < due; sent++) {
        const at = t0 + (sent * 1000) / RATE // when it was due: time the sender waited while the loop was blocked counts too
        void outbox.enqueue({ topic: parseUpTopic(`upload_data/bench/d${sent % 10}/t/m${sent}`)!, payload, transport: 'mqtt', receivedAt: Date.now() }).then(() => {
          lat.push(performance.now() - at)
          if (++done === N) resolve()
        })
      }
      if (sent < N) setTimeout(tick, 1)
    }
    tick()
  })
  h.disable()
  outbox.close()
  db.close()
  rmSync(dir, { recursive: true, force: true })
  lat.sort((a, b) => a - b)
  const ms = (x: number): string => x.toFixed(2)
  return `p50 ${ms(q(lat, 50))} ms, p90 ${ms(q(lat, 90))}, p99 ${ms(q(lat, 99))}, max ${ms(lat.at(-1)!)}; event loop delay p50 ${ms(h.percentile(50) / 1e6)}, p99 ${ms(h.percentile(99) / 1e6)}, max ${ms(h.max / 1e6)} ms`
}

for (let r = 0; r < ROUNDS; r++) {
  for (const thread of [false, true]) console.log(`${thread ? 'thread' : 'inline'} round ${r + 1}: ${await run(thread)}`)
}
