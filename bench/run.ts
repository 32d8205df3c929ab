// npm run bench: the gateway against the usual alternative (Debian's Mosquitto as the edge broker,
// persistence on, bridged to a Mosquitto playing the cloud), on the same machine in one invocation.
// A benchmark, not a test: it asserts nothing about speed. It writes bench/results/<date>.json and
// a markdown table (medians of several runs, gateway/reference ratios). The harness is bench/harness.ts,
// the scenarios of how cost grows bench/scale.ts.
import { mkdirSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import mqtt from 'mqtt'
import { metricValue } from '../test/helpers/metrics.js'
import { ALL_MATCH_RULES, SITE_RULES } from './rule-sets.js'
import { scaleScenarios } from './scale.js'
import {
  FULL,
  type Figure,
  HEAVY_RUNS,
  HubCounter,
  COST_RUNS,
  MEMORY_RUNS,
  lap,
  Mosquitto,
  ONLY,
  PRODUCT,
  partSeconds,
  RUNS,
  SCALE,
  SECRET,
  type Scenario,
  type Sut,
  type System,
  figure,
  filesBytes,
  holdIdle,
  log,
  percentile,
  record,
  root,
  round,
  rssMb,
  runLoad,
  scenarios,
  settle,
  sleep,
  startGateway,
  runBench,
  startCloud,
  startReference,
  throughput,
} from './harness.js'

/**
 * What the local history costs the durable path: the same telemetry load (JSON with five leaves
 * per message) through the gateway with store.history.enabled off and on, alternating, in one run;
 * and what a sample costs on disk (history.db's pages in use, and the file, per raw sample).
 */
async function historyCost(cloudUrl: string, hub: HubCounter): Promise<void> {
  const rate: Record<'off' | 'on', number[]> = { off: [], on: [] }
  const cpu: Record<'off' | 'on', number[]> = { off: [], on: [] }
  const perSample: number[] = []
  const filePerSample: number[] = []
  for (let r = 0; r < COST_RUNS; r++) {
    for (const mode of (r % 2 ? ['on', 'off'] : ['off', 'on']) as ('on' | 'off')[]) {
      const sut = await startGateway(cloudUrl, 10, [], mode === 'on', undefined, 0, undefined, undefined, true)
      await settle(sut)
      const res = await throughput(sut, hub, 10, 0, Math.round(50_000 * SCALE), `h${mode}${r}`, 'telemetry')
      rate[mode].push(res.rate)
      cpu[mode].push(res.cpuPer10k)
      if (mode === 'on') {
        // The history writes a second after the commits it is told of.
        await sleep(2_500)
        const text = await sut.metrics!()
        const samples = metricValue(text, 'iothub_edge_history_samples_total')
        const used = metricValue(text, 'iothub_edge_history_bytes')
        const file = filesBytes(sut.dataDir, ['history.db', 'history.db-wal'])
        if (samples > 0) {
          perSample.push(used / samples)
          filePerSample.push(file / samples)
        }
        log(`  history on: ${samples} samples, ${used} bytes in use, ${file} bytes of files`)
      }
      log(`  history ${mode}: ${Math.round(res.rate)} msg/s durable, ${res.cpuPer10k.toFixed(2)} CPU s per 10k`)
      await sut.close()
    }
  }
  const on = figure(rate.on, 'msg/s')
  const off = figure(rate.off, 'msg/s')
  scenarios.history_on_vs_off = { gateway: on, reference: off, ratio: round(on.median / off.median), note: 'gateway = history on, reference = history off (same gateway, same run); 10 publishers, 5-leaf JSON telemetry' }
  scenarios.history_cpu_per_10k = { gateway: figure(cpu.on, 's'), reference: figure(cpu.off, 's'), ratio: round(figure(cpu.on, '').median / figure(cpu.off, '').median) }
  scenarios.history_bytes_per_sample = { gateway: { ...figure(perSample, 'B'), file: figure(filePerSample, 'B').median }, note: 'pages in use per raw sample (rollups and series catalogue included); file: history.db + WAL per sample' }
  log(`history: on ${on.median} msg/s vs off ${off.median} msg/s (${round((1 - on.median / off.median) * 100)} % cost), ${figure(perSample, 'B').median} B per sample`)
}

/**
 * What durable broker sessions (broker.persistence: sqlite, broker.db) cost, against the same gateway
 * with them in memory, in one run, alternating: devices with clean sessions publishing QoS 1 (the
 * usual load: nothing for broker.db to write), and the same with 10 persistent-session local tools
 * subscribed to everything the devices send (each message queued for each of them in broker.db,
 * then cleared on their PUBACK).
 */
async function brokerSessionsCost(cloudUrl: string, hub: HubCounter): Promise<void> {
  type Mode = 'memory' | 'sqlite'
  type Load = 'clean' | 'persistentSubs'
  const rate: Record<string, number[]> = {}
  const cpu: Record<string, number[]> = {}
  for (let r = 0; r < COST_RUNS; r++) {
    for (const load of ['clean', 'persistentSubs'] as Load[]) {
      for (const mode of (r % 2 ? ['sqlite', 'memory'] : ['memory', 'sqlite']) as Mode[]) {
        const sut = await startGateway(cloudUrl, 10, [], false, mode, 0, undefined, undefined, true)
        const release = load === 'persistentSubs' ? await holdIdle(sut.idleUrl, 10, { subscribe: 'upload_data/#', clean: false }) : undefined
        await settle(sut)
        // With 10 persistent subscribers each message is queued ten times: a third as many keep its
        // part as long as the clean one's (the default bench's 10 minutes; --full keeps the counts).
        const n = Math.round((load === 'persistentSubs' && !FULL ? 10_000 : 30_000) * SCALE)
        const res = await throughput(sut, hub, 10, 64, n, `bs${load[0]}${mode[0]}${r}`)
        const key = `${load}_${mode}`
        ;(rate[key] ??= []).push(res.rate)
        ;(cpu[key] ??= []).push(res.cpuPer10k)
        const db = filesBytes(sut.dataDir, ['broker.db', 'broker.db-wal'])
        log(`  broker sessions ${mode}, ${load}: ${Math.round(res.rate)} msg/s durable, ${res.cpuPer10k.toFixed(2)} CPU s per 10k, broker.db+WAL ${db} B`)
        await release?.()
        await sut.close()
      }
    }
  }
  for (const load of ['clean', 'persistentSubs'] as Load[]) {
    const on = figure(rate[`${load}_sqlite`], 'msg/s')
    const off = figure(rate[`${load}_memory`], 'msg/s')
    const what = load === 'clean' ? '10 clean-session devices publishing QoS 1, 64 B, no local subscribers' : 'the same, with 10 persistent-session local tools subscribed to upload_data/# (QoS 1)'
    scenarios[`broker_sessions_${load}_intake`] = { gateway: on, reference: off, ratio: round(on.median / off.median), note: `gateway = broker.persistence sqlite, reference = memory (same gateway, same run); ${what}` }
    const cpuOn = figure(cpu[`${load}_sqlite`], 's')
    const cpuOff = figure(cpu[`${load}_memory`], 's')
    scenarios[`broker_sessions_${load}_cpu_s_per_10k`] = { gateway: cpuOn, reference: cpuOff, ratio: round(cpuOn.median / cpuOff.median) }
    log(`broker sessions, ${load}: sqlite ${on.median} msg/s vs memory ${off.median} msg/s; CPU per 10k ${cpuOn.median} vs ${cpuOff.median} s`)
  }
}

async function main(): Promise<void> {
  const started = Date.now()
  const machine = {
    cpus: os.cpus().length,
    cpuModel: os.cpus()[0]?.model,
    memoryGb: round(os.totalmem() / 1024 ** 3),
    node: process.version,
    loadAverageAtStart: os.loadavg().map(round),
    mosquitto: 'Debian 2.0.11 (reference)',
  }
  const { cloud, cloudPort, cloudUrl, hub } = await startCloud()
  lap('cloud broker and hub subscriber')

  // Started on an empty data folder (the 100 devices seeded at this start: a scrypt hash each), as
  // the memory figures need; `seeded`: on a copy of one seeded once in the run, for the scenarios
  // that measure messages (bench/harness.ts, startGateway's `seedOnce`).
  const systems: Record<System, (seeded?: boolean) => Promise<Sut>> = {
    gateway: (seeded = false) => startGateway(cloudUrl, 100, [], true, undefined, 0, undefined, undefined, seeded),
    reference: () => startReference(cloudPort),
  }

  // The local rules' cost: the same gateway, intake without rules, with ten site rules, and with ten
  // rules that all match (the runs alternate, so a change of load on the machine hits all three).
  // Throughput on a shared machine is noisy; the CPU the gateway process used per message, and the
  // time the rules themselves took (their own evalSeconds), are steadier.
  // BENCH_ONLY=broker-sessions: the cost of durable broker sessions alone (npm run bench:broker-sessions).
  // BENCH_ONLY=scale: only how cost grows (bench/scale.ts); add --full for the large sizes.
  if (ONLY === 'scale') {
    await scaleScenarios(cloud, cloudUrl, cloudPort, hub, () => writeResults(started, machine))
    return finish(started, machine, hub, cloud)
  }
  if (ONLY === 'broker-sessions') {
    await brokerSessionsCost(cloudUrl, hub)
    return finish(started, machine, hub, cloud)
  }
  // BENCH_ONLY=core: only throughput, CPU, latency and the backlog drain against the reference (no
  // rules, history, memory, kill -9, scale or RPC scenarios): the durable path's figures, side by side.
  if (ONLY !== 'history' && ONLY !== 'core') {
    const variants = { none: [], site: SITE_RULES, allMatch: ALL_MATCH_RULES } as const
    type Variant = keyof typeof variants
    const rate: Record<Variant, number[]> = { none: [], site: [], allMatch: [] }
    const cpuPer10k: Record<Variant, number[]> = { none: [], site: [], allMatch: [] }
    const evalUs: Record<Variant, number[]> = { none: [], site: [], allMatch: [] }
    for (let r = 0; r < COST_RUNS; r++) {
      for (const v of Object.keys(variants) as Variant[]) {
        const sut = await startGateway(cloudUrl, 100, [...variants[v]], true, undefined, 0, undefined, undefined, true)
        await settle(sut)
        // 100 publishers, connections of 10 devices: 10 scrypt logins per start instead of 100.
        const res = await throughput(sut, hub, 100, 64, Math.round(50_000 * SCALE), `rules-${v}-r${r}`, 'fill', 10)
        rate[v].push(res.rate)
        cpuPer10k[v].push(res.cpuPer10k)
        evalUs[v].push(((await sut.rulesEvalSeconds!()) / res.expected) * 1e6)
        log(`  gateway rules ${v} run ${r + 1}: ${Math.round(res.rate)} msg/s, ${res.cpuPer10k.toFixed(2)} CPU s per 10k, ${evalUs[v].at(-1)!.toFixed(1)} µs/msg in rules (${res.arrived}/${res.expected})`)
        await sut.close()
      }
    }
    const ratio = (a: number[], b: number[]): number => round(figure(a, '').median / figure(b, '').median)
    for (const v of ['site', 'allMatch'] as const) {
      const note = `gateway with ${v === 'site' ? 'the 10 site rules (SITE_RULES, 2 match the load)' : '10 rules that all match the load (ALL_MATCH_RULES)'} vs the same gateway without rules; 100 publishers (connections of 10 devices), QoS 1, 64 B`
      scenarios[`rules_${v}_intake`] = { gateway: figure(rate[v], 'msg/s'), reference: figure(rate.none, 'msg/s'), ratio: ratio(rate[v], rate.none), note }
      scenarios[`rules_${v}_cpu_s_per_10k`] = { gateway: figure(cpuPer10k[v], 's'), reference: figure(cpuPer10k.none, 's'), ratio: ratio(cpuPer10k[v], cpuPer10k.none), note }
      scenarios[`rules_${v}_eval_us_per_msg`] = { gateway: figure(evalUs[v], 'µs'), note: 'time in the rules step per message (the rules\' evalSeconds)' }
    }
  }
  if (ONLY !== 'history' && ONLY !== 'core') lap('rules')
  if (ONLY === 'rules') return finish(started, machine, hub, cloud)
  if (!ONLY || ONLY === 'history') {
    await historyCost(cloudUrl, hub)
    lap('history')
  }
  if (!ONLY) {
    await brokerSessionsCost(cloudUrl, hub)
    lap('broker sessions')
  }
  if (!ONLY) await scaleScenarios(cloud, cloudUrl, cloudPort, hub)
  // BENCH_ONLY=history: this scenario alone (it compares the gateway with itself).
  if (ONLY === 'history') return finish(started, machine, hub, cloud)

  // Throughput and CPU, latency at a fixed rate: one instance of each system serves all runs.
  const tp: Record<string, Record<System, number[]>> = {}
  const cpu: Record<System, number[]> = { gateway: [], reference: [] }
  const lat: Record<System, { p50: number[]; p99: number[] }> = { gateway: { p50: [], p99: [] }, reference: { p50: [], p99: [] } }
  const rssIdle: Record<System, number[]> = { gateway: [], reference: [] }
  for (const system of ['gateway', 'reference'] as System[]) {
    log(`starting ${system}`)
    const sut = await systems[system]()
    await sleep(2_000)
    rssIdle[system].push(rssMb(sut.pid()))
    for (const payload of [64, 1024]) {
      for (const pubs of [1, 100]) {
        const name = `throughput_qos1_${payload === 64 ? '64b' : '1k'}_${pubs}pub`
        tp[name] ??= { gateway: [], reference: [] }
        for (let r = 0; r < RUNS; r++) {
          const res = await throughput(sut, hub, pubs, payload, Math.round(50_000 * SCALE), `${system[0]}${payload}${pubs}r${r}`)
          tp[name][system].push(res.rate)
          if (payload === 64 && pubs === 1) cpu[system].push(res.cpuPer10k)
          log(`  ${system} ${name} run ${r + 1}: ${Math.round(res.rate)} msg/s (${res.arrived}/${res.expected})`)
        }
      }
    }
    for (let r = 0; r < RUNS; r++) {
      hub.reset()
      const n = Math.round(5_000 * SCALE)
      await runLoad({ kind: 'publish', url: sut.deviceUrl, publishers: 1, perPublisher: n, window: 100, payloadBytes: 64, rate: 1000, run: `l${r}`, productId: PRODUCT, auth: sut.auth })
      await hub.waitFor(n)
      const sorted = [...hub.latencies].sort((a, b) => a - b)
      lat[system].p50.push(percentile(sorted, 50))
      lat[system].p99.push(percentile(sorted, 99))
      log(`  ${system} latency run ${r + 1}: p50 ${percentile(sorted, 50).toFixed(2)} ms, p99 ${percentile(sorted, 99).toFixed(2)} ms`)
    }
    await sut.close()
    lap(`throughput and latency, ${system}`)
  }
  // The same load published straight to the cloud broker (no edge at all): what the rig itself
  // (load generator, cloud Mosquitto, the hub's subscriber, all on this machine) adds, so that the
  // latency an edge adds is its figure minus this one.
  const direct: { p50: number[]; p99: number[] } = { p50: [], p99: [] }
  for (let r = 0; r < RUNS; r++) {
    hub.reset()
    const n = Math.round(5_000 * SCALE)
    await runLoad({ kind: 'publish', url: cloudUrl, publishers: 1, perPublisher: n, window: 100, payloadBytes: 64, rate: 1000, run: `ld${r}`, productId: PRODUCT })
    await hub.waitFor(n)
    const sorted = [...hub.latencies].sort((a, b) => a - b)
    direct.p50.push(percentile(sorted, 50))
    direct.p99.push(percentile(sorted, 99))
    log(`  direct to the cloud latency run ${r + 1}: p50 ${percentile(sorted, 50).toFixed(2)} ms, p99 ${percentile(sorted, 99).toFixed(2)} ms`)
  }
  lap('latency, direct path')
  for (const [name, v] of Object.entries(tp)) record(name, figure(v.gateway, 'msg/s'), figure(v.reference, 'msg/s'))
  record('cpu_s_per_10k_64b_1pub', figure(cpu.gateway, 's'), figure(cpu.reference, 's'))
  record('latency_1k_rate_p50', figure(lat.gateway.p50, 'ms'), figure(lat.reference.p50, 'ms'))
  record('latency_1k_rate_p99', figure(lat.gateway.p99, 'ms'), figure(lat.reference.p99, 'ms'))
  for (const q of ['p50', 'p99'] as const) {
    const d = figure(direct[q], 'ms')
    const added = (v: number[]): Figure => figure(v.map((x) => x - d.median), 'ms', `${q} minus the direct path's median ${q} (${d.median} ms)`)
    record(`latency_1k_rate_added_${q}`, added(lat.gateway[q]), added(lat.reference[q]))
    scenarios[`latency_1k_rate_added_${q}`].direct = d
    scenarios[`latency_1k_rate_added_${q}`].note = `what each edge adds: its ${q} at 1,000 msg/s minus the ${q} of the same load published straight to the cloud broker (direct: ${d.median} ms)`
  }

  // Memory: idle, and with idle connections held open (gateway: internal listener, so that the
  // figure is the connection's cost, not 5,000 scrypt hashes to seed).
  const per1k: Record<System, number[]> = { gateway: [], reference: [] }
  if (ONLY !== 'core') for (const system of ['gateway', 'reference'] as System[]) for (let r = 0; r < MEMORY_RUNS; r++) {
    const sut = await systems[system]()
    await sleep(2_000)
    const idle = rssMb(sut.pid())
    if (!FULL || r > 0) rssIdle[system].push(idle)
    const release5k = await holdIdle(sut.idleUrl, Math.round(5000 * Math.max(SCALE, 0.2)))
    await sleep(3_000)
    const with5k = rssMb(sut.pid())
    await release5k()
    per1k[system].push((with5k - idle) / (5 * Math.max(SCALE, 0.2)))
    log(`  ${system} rss idle ${idle.toFixed(1)} MB, ${Math.round(5000 * Math.max(SCALE, 0.2))} idle connections ${with5k.toFixed(1)} MB`)
    await sut.close()
    lap(`memory, ${system}`)
  }
  record('rss_idle', figure(rssIdle.gateway, 'MB'), figure(rssIdle.reference, 'MB'))
  record('rss_per_1k', figure(per1k.gateway, 'MB'), figure(per1k.reference, 'MB'))

  // Backlog and crash: the cloud goes away while devices keep publishing.
  const drain: Record<System, { rate: number[]; total: number[]; arrived: number; expected: number; bytes: number[] }> = {
    gateway: { rate: [], total: [], arrived: 0, expected: 0, bytes: [] },
    reference: { rate: [], total: [], arrived: 0, expected: 0, bytes: [] },
  }
  const kill: Record<System, { acked: number; arrived: number }> = { gateway: { acked: 0, arrived: 0 }, reference: { acked: 0, arrived: 0 } }
  for (const system of ['gateway', 'reference'] as System[]) {
    for (let r = 0; r < HEAVY_RUNS; r++) {
      const sut = await systems[system](true)
      await settle(sut)
      hub.reset()
      await cloud.stop()
      const n = Math.round(200_000 * SCALE)
      const bytes0 = sut.storeBytes()
      const load = await runLoad({ kind: 'publish', url: sut.deviceUrl, publishers: 10, perPublisher: n / 10, window: 100, payloadBytes: 64, rate: 0, run: `b${r}`, productId: PRODUCT, auth: sut.auth })
      log(`  ${system} backlog: ${load.acked} acknowledged in ${load.seconds.toFixed(1)} s with the cloud down`)
      const bytesNow = sut.storeBytes()
      const back = performance.timeOrigin + performance.now()
      await cloud.start()
      // Quiet for up to 75 s before the first arrival: the gateway's reconnect backoff reaches 60 s
      // after a long outage (at 15 s a busy machine's drain was reported as 0 arrived before the
      // gateway tried again).
      await hub.waitFor(n, 75_000, 300_000)
      drain[system].rate.push(hub.ids.size / Math.max(0.001, (hub.lastAt - hub.firstAt) / 1000))
      drain[system].total.push((hub.lastAt - back) / 1000)
      drain[system].arrived = hub.ids.size
      drain[system].expected = load.acked
      drain[system].bytes.push((bytesNow - bytes0) / load.acked)
      log(`  ${system} drain: ${hub.ids.size}/${load.acked} arrived, ${Math.round(drain[system].rate.at(-1)!)} msg/s while draining, ${drain[system].total.at(-1)!.toFixed(1)} s after the cloud came back`)
      await sut.close()
    }
    lap(`drain, ${system}`)
    // kill -9 with an acknowledged backlog.
    if (ONLY === 'core') continue
    const sut = await systems[system](true)
    await settle(sut)
    hub.reset()
    await cloud.stop()
    const n = Math.round(100_000 * SCALE)
    const load = await runLoad({ kind: 'publish', url: sut.deviceUrl, publishers: 10, perPublisher: n / 10, window: 100, payloadBytes: 64, rate: 0, run: `k${system[0]}`, productId: PRODUCT, auth: sut.auth })
    await sut.kill9()
    await sut.restart()
    await cloud.start()
    await hub.waitFor(load.acked, 15_000, 240_000)
    kill[system] = { acked: load.acked, arrived: hub.ids.size }
    log(`  ${system} kill -9: ${hub.ids.size} of ${load.acked} acknowledged messages arrived`)
    await sut.close()
    lap(`kill -9, ${system}`)
  }
  scenarios.drain_200k = {
    gateway: { ...figure(drain.gateway.rate, 'msg/s'), arrived: drain.gateway.arrived, expected: drain.gateway.expected, secondsAfterCloudBack: figure(drain.gateway.total, 's'), diskBytesPerMessage: figure(drain.gateway.bytes, 'B').median },
    reference: { ...figure(drain.reference.rate, 'msg/s'), arrived: drain.reference.arrived, expected: drain.reference.expected, secondsAfterCloudBack: figure(drain.reference.total, 's'), diskBytesPerMessage: figure(drain.reference.bytes, 'B').median },
    ratio: round(figure(drain.gateway.rate, '').median / figure(drain.reference.rate, '').median),
  }
  if (ONLY === 'core') return finish(started, machine, hub, cloud)
  scenarios.kill9_loss = { gateway: kill.gateway, reference: kill.reference, note: 'reference: edge Mosquitto with its default persistence settings (autosave every 1800 s)' }

  // RPC: through the gateway vs a device connected to the cloud broker directly.
  const rpc: Record<'gateway' | 'direct', number[]> = { gateway: [], direct: [] }
  {
    const sut = await systems.gateway(true)
    const viaGateway = await mqtt.connectAsync(sut.deviceUrl, { protocolVersion: 4, username: `${PRODUCT}/d0`, password: SECRET, clientId: 'rpc-dev-gw' })
    const direct = await mqtt.connectAsync(cloudUrl, { protocolVersion: 4, clientId: 'rpc-dev-direct' })
    await direct.subscribeAsync(`rpc/${PRODUCT}/d1/#`, { qos: 1 })
    for (const dev of [viaGateway, direct]) {
      dev.on('message', (topic, payload) => {
        const l = topic.split('/')
        dev.publish(`rpc_resp/${l[1]}/${l[2]}/${l[3]}/${l[5]}/m${l[5]}`, payload, { qos: 1 })
      })
    }
    const caller = await mqtt.connectAsync(cloudUrl, { protocolVersion: 4, clientId: 'rpc-hub' })
    ;(caller.stream as import('node:net').Socket).setNoDelay?.(true)
    await caller.subscribeAsync('rpc_resp/#', { qos: 1 })
    const waiting = new Map<string, () => void>()
    caller.on('message', (topic) => waiting.get(topic.split('/')[4])?.())
    await sleep(1_000)
    for (const [which, d] of [['gateway', 'd0'], ['direct', 'd1']] as const) {
      for (let i = 0; i < 300; i++) {
        const req = `${which}${i}`
        const t0 = performance.now()
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, 5_000)
          waiting.set(req, () => {
            clearTimeout(timer)
            resolve()
          })
          caller.publish(`rpc/${PRODUCT}/${d}/bench/plain/${req}`, 'x', { qos: 1 })
        })
        if (i >= 20) rpc[which].push(performance.now() - t0) // the first ones warm up
      }
    }
    await Promise.all([viaGateway.endAsync(), direct.endAsync(), caller.endAsync()])
    await sut.close()
  }
  lap('rpc')
  const sortedGw = [...rpc.gateway].sort((a, b) => a - b)
  const sortedDirect = [...rpc.direct].sort((a, b) => a - b)
  record('rpc_latency_p50', figure([percentile(sortedGw, 50)], 'ms'), figure([percentile(sortedDirect, 50)], 'ms'))
  record('rpc_latency_p99', figure([percentile(sortedGw, 99)], 'ms'), figure([percentile(sortedDirect, 99)], 'ms'))
  scenarios.rpc_latency_p50.note = scenarios.rpc_latency_p99.note = `reference = device connected to the cloud broker directly; ${rpc.gateway.length} RPCs each`

  await finish(started, machine, hub, cloud)
}

async function finish(started: number, machine: Record<string, unknown>, hub: HubCounter, cloud: Mosquitto): Promise<void> {
  await hub.close()
  await cloud.close()
  writeResults(started, machine)
}

function writeResults(started: number, machine: Record<string, unknown>): void {
  const date = `${new Date().toISOString().slice(0, 10)}${ONLY ? `-${ONLY}` : ''}${FULL ? '-full' : ''}${process.env.BENCH_PARTS ? `-${process.env.BENCH_PARTS.replaceAll(',', '-')}` : ''}`
  const result = { date: new Date().toISOString(), durationS: round((Date.now() - started) / 1000), runs: RUNS, heavyRuns: HEAVY_RUNS, costRuns: COST_RUNS, memoryRuns: MEMORY_RUNS, scale: SCALE, full: FULL, machine, partSeconds, scenarios }
  // BENCH_RESULTS_DIR: another folder for the results (a trial run that is not to be committed).
  const dir = process.env.BENCH_RESULTS_DIR ?? path.join(root, 'bench', 'results')
  mkdirSync(dir, { recursive: true })
  writeFileSync(path.join(dir, `${date}.json`), JSON.stringify(result, null, 2) + '\n')
  const table = renderTable(result)
  writeFileSync(path.join(dir, `${date}.md`), table)
  process.stdout.write(table)
}

function renderTable(r: { machine: Record<string, unknown>; scenarios: Record<string, Scenario>; durationS: number; runs: number; heavyRuns: number; costRuns: number; memoryRuns: number; full: boolean; partSeconds: Record<string, number> }): string {
  const lines = [
    `# Benchmark ${new Date().toISOString().slice(0, 10)}`,
    '',
    `Machine: ${JSON.stringify(r.machine)}. Took ${r.durationS} s. Runs per figure: ${r.runs} (backlog drain: ${r.heavyRuns}; rules, history, broker sessions: ${r.costRuns}; memory: ${r.memoryRuns}${r.full ? '' : " plus the throughput section's start"}; kill -9, RPC and how cost grows: 1).`,
    '',
    '| scenario | gateway | reference | gateway/reference |',
    '| --- | --- | --- | --- |',
  ]
  const cell = (f: Scenario['gateway']): string => {
    if (!f) return ''
    const x = f as Partial<Figure> & Record<string, unknown>
    if (x.median !== undefined) {
      const extra = x.arrived !== undefined ? ` (${String(x.arrived)}/${String(x.expected)} arrived)` : ''
      return `${x.median} ${x.unit} (min ${x.min}, max ${x.max}, n=${x.runs})${extra}`
    }
    return Object.entries(x)
      .map(([k, v]) => `${k} ${String(v)}`)
      .join(', ')
  }
  for (const [name, s] of Object.entries(r.scenarios)) {
    if (s.measured === false) {
      lines.push(`| ${name} | ${s.note ?? 'not measured in this run'} | | |`)
      continue
    }
    lines.push(`| ${name} | ${cell(s.gateway)} | ${cell(s.reference)} | ${s.ratio ?? ''} |`)
    if (s.referenceSaveEveryChange) lines.push(`| ${name}, reference saving on every change | | ${cell(s.referenceSaveEveryChange)} | ${s.ratioSaveEveryChange ?? ''} |`)
  }
  lines.push('', `Wall time by part (s): ${Object.entries(r.partSeconds).map(([k, v]) => `${k} ${v}`).join('; ')}.`)
  lines.push('', 'Reference: Debian Mosquitto 2.0.11 as the edge broker (persistence on) bridged with QoS 1 to a Mosquitto playing the cloud; for RPC, a device connected to the cloud broker directly.')
  if (Object.keys(r.scenarios).some((k) => k.startsWith('rules_'))) lines.push('For rules_*: gateway = the gateway with the rules of bench/rule-sets.ts, reference = the same gateway without rules.')
  if (Object.keys(r.scenarios).some((k) => k.startsWith('broker_sessions_'))) lines.push('For broker_sessions_*: gateway = broker.persistence sqlite (broker.db), reference = the same gateway with broker.persistence memory.')
  lines.push('')
  return lines.join('\n')
}

runBench(main)
