// Intake alone: durable QoS 1 throughput and CPU per message at 1, 10 and 100 publishers (64 B), the
// gateway against an earlier build of it (BENCH_BASELINE_BIN) and, with BENCH_WITH_BRIDGE=1, the
// Mosquitto bridge, alternating in one invocation (a different order each run). The same
// measurement as `throughput_*` in bench/run.ts, without the other scenarios, for working on the
// intake path (docs/performance.md). Besides the process's CPU it reports where that CPU went by
// thread (the main thread, the outbox's and the history's writer threads, V8's GC helpers, libuv).
// Asserts nothing.
//   npm run build && npx tsx bench/intake.ts
//   BENCH_PUBLISHERS=1,100 BENCH_INTAKE_N=50000 BENCH_RUNS=3 npx tsx bench/intake.ts
//   BENCH_GATEWAY_NODE_ARGS='--cpu-prof --cpu-prof-dir=/tmp/prof' npx tsx bench/intake.ts   # profile the gateway
//   BENCH_BASELINE_BIN=/tmp/old/bin/iothub-edge.js npx tsx bench/intake.ts                  # before/after
//   BENCH_BASELINE_NODE_OPTIONS='--max-semi-space-size=2'   # the baseline's NODE_OPTIONS, when its start settings differ
//   BENCH_BASELINE_HISTORY=0   # the baseline with the local history off (what the history costs)
//   BENCH_BASELINE_ENV=IOTHUB_EDGE_WAL_CHECKPOINT_MS=250   # the baseline with more environment (with BENCH_BASELINE_BIN=bin/iothub-edge.js: a setting A/B)
//   BENCH_IDLE_AFTER=40   # also the gateway's RSS 5 s and 40 s after its last load (young generation given back?)
import { readdirSync, readFileSync } from 'node:fs'
import os from 'node:os'
import { CLK_TCK, GATEWAY_ENV, Mosquitto, RUNS, type Sut, figure, runBench, startCloud, log, round, sleep, startGateway, startReference, throughput } from './harness.js'

const N = Number(process.env.BENCH_INTAKE_N ?? 50_000)
const PUBLISHERS = (process.env.BENCH_PUBLISHERS ?? '1,10,100').split(',').map(Number)
const PAYLOAD = Number(process.env.BENCH_PAYLOAD ?? 64)
const BASELINE = process.env.BENCH_BASELINE_BIN
const BRIDGE = process.env.BENCH_WITH_BRIDGE === '1'
const BASELINE_NODE_OPTIONS = process.env.BENCH_BASELINE_NODE_OPTIONS
const IDLE_AFTER = Number(process.env.BENCH_IDLE_AFTER ?? 0)
// BENCH_BASELINE_ENV='IOTHUB_EDGE_WAL_CHECKPOINT_MS=250,…': more environment for the baseline only
// (the same build with another setting: BENCH_BASELINE_BIN=bin/iothub-edge.js).
const BASELINE_ENV = Object.fromEntries((process.env.BENCH_BASELINE_ENV ?? '').split(',').filter(Boolean).map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]))
type Kind = 'gateway' | 'baseline' | 'reference'

/** CPU seconds of each thread of a process, by thread name (several threads of one name add up). */
function threadCpu(pid: number | undefined): Map<string, number> {
  const out = new Map<string, number>()
  if (!pid) return out
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try {
      const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8')
      const name = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'))
      const f = stat.slice(stat.lastIndexOf(') ') + 2).split(' ')
      const key = Number(tid) === pid ? 'main' : name
      out.set(key, (out.get(key) ?? 0) + (Number(f[11]) + Number(f[12])) / CLK_TCK)
    } catch {
      // the thread ended meanwhile
    }
  }
  return out
}

const rssMb = (pid: number | undefined): number => (pid ? Math.round(Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? NaN) / 1024) : NaN)

async function main(): Promise<void> {
  log(`load average at start: ${os.loadavg().map(round).join(' ')}`)
  const { cloud, cloudPort, cloudUrl, hub } = await startCloud()
  const start: Record<Kind, () => Promise<Sut>> = {
    gateway: () => startGateway(cloudUrl, 100),
    baseline: () => startGateway(cloudUrl, 100, [], process.env.BENCH_BASELINE_HISTORY !== '0', undefined, 0, { ...GATEWAY_ENV, ...(BASELINE_NODE_OPTIONS === undefined ? {} : { NODE_OPTIONS: BASELINE_NODE_OPTIONS }), ...BASELINE_ENV }, BASELINE),
    reference: () => startReference(cloudPort),
  }
  const kinds: Kind[] = ['gateway', ...(BASELINE ? (['baseline'] as const) : []), ...(BRIDGE ? (['reference'] as const) : [])]
  const rate: Record<string, number[]> = {}
  const cpu: Record<string, number[]> = {}
  for (let r = 0; r < RUNS; r++) {
    for (const kind of kinds.map((_, i) => kinds[(i + r) % kinds.length])) {
      const sut = await start[kind]()
      await sleep(1_000)
      for (const publishers of PUBLISHERS) {
        const before = threadCpu(sut.pid())
        const res = await throughput(sut, hub, publishers, PAYLOAD, N, `i${r}${kind[0]}${publishers}`)
        const after = threadCpu(sut.pid())
        const key = `${kind} ${publishers}`
        ;(rate[key] ??= []).push(res.rate)
        ;(cpu[key] ??= []).push(res.cpuPer10k)
        // Per thread, per 10k (includes the publishers' logins: the split, not the total, is the point).
        const split = [...after].map(([t, s]) => [t, ((s - (before.get(t) ?? 0)) / res.expected) * 10_000] as const).filter(([, s]) => s >= 0.005)
        log(
          `  ${kind} run ${r + 1}, ${publishers} publisher(s): ${Math.round(res.rate)} msg/s, ${res.cpuPer10k.toFixed(3)} CPU s per 10k (${split.map(([t, s]) => `${t} ${s.toFixed(3)}`).join(', ')}); load ${os.loadavg()[0].toFixed(2)}`,
        )
        await sleep(500)
      }
      if (IDLE_AFTER > 0 && kind !== 'reference') {
        const rss = [rssMb(sut.pid())]
        await sleep(5_000)
        rss.push(rssMb(sut.pid()))
        await sleep(Math.max(0, IDLE_AFTER - 5) * 1000)
        rss.push(rssMb(sut.pid()))
        log(`  ${kind} run ${r + 1}: RSS after the load ${rss[0]} MB, 5 s later ${rss[1]} MB, ${IDLE_AFTER} s later ${rss[2]} MB`)
      }
      await sut.close()
    }
  }
  for (const publishers of PUBLISHERS) {
    const g = figure(rate[`gateway ${publishers}`], 'msg/s')
    const gc = figure(cpu[`gateway ${publishers}`], 's')
    let line = `${publishers} publisher(s): gateway ${g.median} msg/s (${g.min}-${g.max}), ${gc.median} CPU s per 10k`
    for (const other of kinds.slice(1)) {
      const o = figure(rate[`${other} ${publishers}`], 'msg/s')
      const oc = figure(cpu[`${other} ${publishers}`], 's')
      line += `; ${other} ${o.median} msg/s (${o.min}-${o.max}), ${oc.median} CPU s per 10k, gateway/${other} ${round(g.median / o.median)} msg/s, ${round(gc.median / oc.median)} CPU`
    }
    log(line)
  }
  log(`load average at the end: ${os.loadavg().map(round).join(' ')}`)
  await hub.close()
  await cloud.close()
}

runBench(main)
