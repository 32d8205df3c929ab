// Idle memory alone: the gateway's RSS with 100 devices seeded from the config, no traffic, hub link
// up, 2 s and 30 s after its API answered, started as `npm start` does (glibc's settings and
// `--max-semi-space-size=2`) and as `node bin/iothub-edge.js start` by hand (nothing set); at its
// first start (100 scrypt hashes) and after a restart of the same data folder. With
// BENCH_BASELINE_BIN, an earlier build in turn (the order changes each run), for before/after
// (docs/performance.md, "Memory"). The same measurement as bench/scale.ts's `idle_rss_100_devices`,
// with the anon / file-backed split and the early reading. Asserts nothing.
//   npm run build && npx tsx bench/idle-memory.ts
//   BENCH_BASELINE_BIN=/tmp/old/bin/iothub-edge.js BENCH_RUNS=2 npx tsx bench/idle-memory.ts
//   BENCH_IDLE_RESTART=0 BENCH_IDLE_WAYS=direct npx tsx bench/idle-memory.ts
//   BENCH_IDLE_TRACE_S=40 BENCH_RUNS=1 npx tsx bench/idle-memory.ts   # a reading each second: when it settles
import { readFileSync } from 'node:fs'
import os from 'node:os'
import { DIRECT_ENV, GATEWAY_ENV, RUNS, figure, log, round, runBench, sleep, startCloud, startGateway } from './harness.js'

const BASELINE = process.env.BENCH_BASELINE_BIN
const WAYS = (process.env.BENCH_IDLE_WAYS ?? 'npmStart,direct').split(',') as ('npmStart' | 'direct')[]
const RESTART = process.env.BENCH_IDLE_RESTART !== '0'
// BENCH_IDLE_TRACE_S=40: a reading every second up to 40 s instead (when does the figure settle?).
const TRACE_S = Number(process.env.BENCH_IDLE_TRACE_S ?? 0)
const AT_S = TRACE_S > 0 ? Array.from({ length: TRACE_S }, (_, i) => i + 1) : [2, 30]

/** VmRSS, RssAnon and RssFile of a process in MB (/proc/PID/status). */
function rss(pid: number | undefined): { rss: number; anon: number; file: number } {
  const status = pid ? readFileSync(`/proc/${pid}/status`, 'utf8') : ''
  const kb = (key: string): number => Number(new RegExp(`${key}:\\s+(\\d+) kB`).exec(status)?.[1] ?? NaN) / 1024
  return { rss: kb('VmRSS'), anon: kb('RssAnon'), file: kb('RssFile') }
}

async function main(): Promise<void> {
  log(`load average at start: ${os.loadavg().map(round).join(' ')}`)
  const { cloud, cloudUrl, hub } = await startCloud()
  const builds = [['gateway', undefined], ...(BASELINE ? [['baseline', BASELINE]] : [])] as [string, string | undefined][]
  const cells = new Map<string, number[]>()
  const add = (key: string, mb: number): void => void cells.set(key, [...(cells.get(key) ?? []), mb])
  const readings = async (key: string, pid: () => number | undefined): Promise<void> => {
    let waited = 0
    for (const at of AT_S) {
      await sleep((at - waited) * 1000)
      waited = at
      const r = rss(pid())
      add(`${key} ${at}s`, r.rss)
      add(`${key} ${at}s anon`, r.anon)
      add(`${key} ${at}s file`, r.file)
      log(`  ${key}, ${at} s: RSS ${r.rss.toFixed(1)} MB (anon ${r.anon.toFixed(1)}, file ${r.file.toFixed(1)})`)
    }
  }
  for (let r = 0; r < RUNS; r++) {
    for (const [build, bin] of builds.map((_, i) => builds[(i + r) % builds.length])) {
      for (const way of WAYS) {
        const sut = await startGateway(cloudUrl, 100, [], true, undefined, 0, way === 'npmStart' ? GATEWAY_ENV : DIRECT_ENV, bin)
        await readings(`${build} ${way} first`, sut.pid)
        if (RESTART) {
          await sut.restart()
          await readings(`${build} ${way} restart`, sut.pid)
        }
        await sut.close()
      }
    }
  }
  log(`load average at the end: ${os.loadavg().map(round).join(' ')}`)
  log('medians (min-max), MB:')
  for (const [key, values] of cells) {
    const f = figure(values, 'MB')
    log(`  ${key}: ${f.median} (${f.min}-${f.max})`)
  }
  await hub.close()
  await cloud.stop()
}

runBench(main)
