// The backlog drain alone, gateway against the Mosquitto bridge, alternating in one invocation:
// the cloud goes away, 10 publishers leave N messages acknowledged at the edge, the cloud comes
// back, and the cloud's persistent subscriber counts every MessageId until all N have arrived.
// The same measurement as `drain_200k` in bench/run.ts, without the other scenarios around it, for
// working on the hub link (docs/performance.md). Asserts nothing; prints medians and the ratio.
//   npm run build && npx tsx bench/drain.ts                      # 200,000 messages, 3 runs each
//   BENCH_DRAIN_N=50000 BENCH_RUNS=5 npx tsx bench/drain.ts
//   BENCH_GATEWAY_NODE_ARGS='--cpu-prof --cpu-prof-dir=/tmp/prof' npx tsx bench/drain.ts   # profile the gateway
//   BENCH_BASELINE_BIN=/tmp/old/bin/iothub-edge.js npx tsx bench/drain.ts   # also an earlier build ("baseline"), in turn
import os from 'node:os'
import { Mosquitto, PRODUCT, RUNS, type Sut, type System, cpuSeconds, figure, runBench, startCloud, log, round, runLoad, sleep, startGateway, startReference } from './harness.js'

const N = Number(process.env.BENCH_DRAIN_N ?? 200_000)
const BASELINE = process.env.BENCH_BASELINE_BIN
type Drained = System | 'baseline'

async function main(): Promise<void> {
  log(`load average at start: ${os.loadavg().map(round).join(' ')}`)
  const { cloud, cloudPort, cloudUrl, hub } = await startCloud()
  const start: Record<Drained, () => Promise<Sut>> = {
    gateway: () => startGateway(cloudUrl, 100),
    reference: () => startReference(cloudPort),
    baseline: () => startGateway(cloudUrl, 100, [], true, undefined, 0, undefined, BASELINE),
  }
  const systems: Drained[] = BASELINE ? ['gateway', 'baseline', 'reference'] : ['gateway', 'reference']
  const rate: Record<Drained, number[]> = { gateway: [], reference: [], baseline: [] }
  const cpu: Record<Drained, number[]> = { gateway: [], reference: [], baseline: [] }
  const lost: Record<Drained, number> = { gateway: 0, reference: 0, baseline: 0 }
  for (let r = 0; r < RUNS; r++) {
    // A different order each run, so that a change of load on the machine does not hit one system only.
    for (const system of systems.map((_, i) => systems[(i + r) % systems.length])) {
      const sut = await start[system]()
      await sleep(1_000)
      hub.reset()
      await cloud.stop()
      const load = await runLoad({ kind: 'publish', url: sut.deviceUrl, publishers: 10, perPublisher: N / 10, window: 100, payloadBytes: 64, rate: 0, run: `d${r}${system[0]}`, productId: PRODUCT, auth: sut.auth })
      await sleep(500)
      const cpu0 = cpuSeconds(sut.pid())
      await cloud.start()
      // Quiet for up to 70 s: the gateway's reconnect backoff grows to 60 s during a long outage.
      await hub.waitFor(load.acked, 70_000, 300_000)
      const used = cpuSeconds(sut.pid()) - cpu0
      const seconds = Math.max(0.001, (hub.lastAt - hub.firstAt) / 1000)
      rate[system].push(hub.ids.size / seconds)
      cpu[system].push((used / Math.max(1, hub.ids.size)) * 10_000)
      lost[system] += load.acked - hub.ids.size
      log(`  ${system} run ${r + 1}: ${hub.ids.size}/${load.acked} arrived, ${Math.round(hub.ids.size / seconds)} msg/s, ${cpu[system].at(-1)!.toFixed(3)} CPU s per 10k while draining; load ${os.loadavg()[0].toFixed(2)}`)
      await sut.close()
    }
  }
  const g = figure(rate.gateway, 'msg/s')
  const ref = figure(rate.reference, 'msg/s')
  const gc = figure(cpu.gateway, 's')
  const rc = figure(cpu.reference, 's')
  log(`drain of ${N}: gateway ${g.median} msg/s (${g.min}-${g.max}), bridge ${ref.median} msg/s (${ref.min}-${ref.max}), ratio ${round(g.median / ref.median)}; not arrived: gateway ${lost.gateway}, bridge ${lost.reference}`)
  log(`CPU per 10k while draining: gateway ${gc.median} s, bridge ${rc.median} s, ratio ${round(gc.median / rc.median)}; load average at the end: ${os.loadavg().map(round).join(' ')}`)
  if (BASELINE) {
    const b = figure(rate.baseline, 'msg/s')
    log(`baseline (${BASELINE}): ${b.median} msg/s (${b.min}-${b.max}), ratio to the bridge ${round(b.median / ref.median)}, gateway/baseline ${round(g.median / b.median)}; not arrived: ${lost.baseline}; CPU per 10k ${figure(cpu.baseline, 's').median} s`)
  }
  await hub.close()
  await cloud.close()
}

runBench(main)
