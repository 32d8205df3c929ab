// Latency at a fixed rate through gateways started with different environments, alternating, in one
// invocation (a probe for the p99 at 1,000 msg/s): LAT_VARIANTS='old:BIN=/tmp/base/bin/iothub-edge.js,new:' (a variant: name:VAR=value;VAR=value, BIN the gateway's launcher, HISTORY=0 the local history off) npx tsx bench/latency-probe.ts
import { GATEWAY_ENV, PRODUCT, log, percentile, runLoad, startCloud, startGateway } from './harness.js'

const variants = (process.env.LAT_VARIANTS ?? 'default:').split(',').map((v) => {
  const [name, envs] = v.split(':')
  const env: Record<string, string> = {}
  for (const kv of (envs ?? '').split(';').filter(Boolean)) env[kv.slice(0, kv.indexOf('='))] = kv.slice(kv.indexOf('=') + 1)
  return { name, env }
})
const rounds = Number(process.env.LAT_ROUNDS ?? 2)
const n = Number(process.env.LAT_N ?? 5000)
const history = process.env.LAT_HISTORY !== '0'

const { cloud, cloudUrl, hub } = await startCloud()
for (let r = 0; r < rounds; r++) {
  for (const v of variants) {
    const { BIN, HISTORY, ...env } = v.env
    const sut = await startGateway(cloudUrl, 10, [], HISTORY ? HISTORY !== '0' : history, undefined, 0, { ...GATEWAY_ENV, ...env }, BIN)
    hub.reset()
    await sut.metrics!() // prom-client starts the event loop's delay histogram again at each scrape
    await runLoad({ kind: 'publish', url: sut.deviceUrl, publishers: 1, perPublisher: n, window: 100, payloadBytes: 64, rate: 1000, run: `lat${v.name}${r}`, productId: PRODUCT, auth: sut.auth })
    await hub.waitFor(n)
    const s = [...hub.latencies].sort((a, b) => a - b)
    const m = await sut.metrics!()
    const lag = (q: string): string => {
      const r = new RegExp(`^iothub_edge_nodejs_eventloop_lag_${q}_seconds (\\S+)`, 'm').exec(m)
      return r ? (Number(r[1]) * 1000).toFixed(1) : '?'
    }
    // GC time by kind while the load ran (prom-client's histogram, since the scrape before it)
    const gc = [...m.matchAll(/^iothub_edge_nodejs_gc_duration_seconds_(sum|count)\{kind="(\w+)"\} (\S+)/gm)].reduce<Record<string, number>>((a, x) => ({ ...a, [`${x[2]} ${x[1]}`]: Number(x[3]) }), {})
    const gcText = Object.keys(gc).filter((k) => k.endsWith('sum')).map((k) => `${k.split(' ')[0]} ${gc[`${k.split(' ')[0]} count`]}x ${(gc[k] * 1000).toFixed(0)} ms`).join(', ')
    log(`${v.name} round ${r + 1}: p50 ${percentile(s, 50).toFixed(2)} ms, p90 ${percentile(s, 90).toFixed(2)}, p99 ${percentile(s, 99).toFixed(2)} ms, max ${s.at(-1)!.toFixed(1)} (${s.length}); the gateway's event loop delay p50 ${lag('p50')}, p99 ${lag('p99')}, max ${lag('max')} ms; GC ${gcText}`)
    await sut.close()
  }
}
await hub.close()
await cloud.close()
process.exit(0)
