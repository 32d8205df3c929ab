// npm run soak (not in CI): the durability promise under abuse. N rounds, each ending in a kill -9
// of the gateway at a random moment, while devices publish (ingest) or after they stopped and the
// backlog drains, with the hub (Mosquitto) stopped and started at random ("flapping"). A ledger
// records every MessageId the gateway PUBACKed; at the end the hub stays up until the outbox is
// empty, and the verdict is: every acknowledged message at the hub, duplicates only as identical
// copies, each device's order kept. Writes bench/results/soak-<date>.json.
//   SOAK_KILLS (default 40), SOAK_DEVICES (default 10), SOAK_SEED (the random sequence, printed).
import type { MqttClient } from 'mqtt'
import { mkdirSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { connectDevice } from '../test/helpers/device.js'
import { GatewayProcess, repoRoot } from '../test/helpers/gateway-process.js'
import { HubBroker } from '../test/helpers/hub-broker.js'
import { awaitDelivery, checkDelivery, deliveryProblems, Ledger, publishSequence, testDevices } from '../test/helpers/ledger.js'

const KILLS = Number(process.env.SOAK_KILLS ?? 40)
const DEVICES = Number(process.env.SOAK_DEVICES ?? 10)
const SEED = Number(process.env.SOAK_SEED ?? Date.now() % 1_000_000)
const log = (s: string): void => void process.stderr.write(`[soak] ${s}\n`)
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms))

// A small seeded generator (mulberry32): a run can be replayed with SOAK_SEED.
let state = SEED
function random(): number {
  state = (state + 0x6d2b79f5) | 0
  let t = Math.imul(state ^ (state >>> 15), 1 | state)
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296
}
const between = (min: number, max: number): number => Math.floor(min + random() * (max - min))

const gw = { productId: 'gateways', deviceId: 'gw-soak', secret: 'gw-secret' }
const devices = testDevices('meter', 's', DEVICES)
const RECORDER_ID = 'hub-recorder-soak'

async function main(): Promise<void> {
  const started = Date.now()
  const hub = new HubBroker({ devices: [], gateway: { ...gw, children: devices } })
  await hub.start()
  const recorder = await hub.subscribeAll('upload_data/meter/#', { clientId: RECORDER_ID })
  const gateway = new GatewayProcess({ gateway: gw, northbound: { url: hub.url }, devices, log: { level: 'warn' } })
  const ledger = new Ledger()
  const rounds: { round: number; phase: 'ingest' | 'drain'; hubUp: boolean; ackedSoFar: number; outboxAtStart: number }[] = []
  let flaps = 0
  const flap = async (): Promise<void> => {
    flaps++
    if (hub.running) await hub.stop()
    else await hub.start()
  }
  log(`seed ${SEED}: ${KILLS} kills, ${DEVICES} devices`)
  try {
    for (let round = 1; round <= KILLS; round++) {
      await gateway.start(60_000)
      const outboxAtStart = (await gateway.health()).outbox.messages
      if (random() < 0.5) await flap()
      const phase = random() < 0.6 ? 'ingest' : 'drain'
      let clients: MqttClient[] = []
      try {
        clients = await Promise.all(devices.map((d) => connectDevice(gateway.externalUrl, d)))
      } catch (err) {
        log(`round ${round}: a device could not connect (${(err as Error).message})`)
      }
      const stopAt = Date.now() + between(300, 2_500)
      const streams = Promise.all(clients.map((c, i) => publishSequence(c, devices[i], ledger, { count: 1_000_000, window: 10, stop: () => Date.now() > stopAt })))
      // The hub may also come or go in the middle of it.
      const midFlap = random() < 0.3 ? sleep(between(100, 1_500)).then(flap) : Promise.resolve()
      if (phase === 'ingest') {
        await sleep(between(100, 2_500))
      } else {
        await streams
        await midFlap
        if (!hub.running && random() < 0.7) await flap()
        await sleep(between(0, 1_500))
      }
      await gateway.kill9()
      await Promise.allSettled(clients.map((c) => c.endAsync(true)))
      await streams
      await midFlap
      rounds.push({ round, phase, hubUp: hub.running, ackedSoFar: ledger.ackedCount, outboxAtStart })
      log(`round ${round}/${KILLS}: kill -9 during ${phase}, hub ${hub.running ? 'up' : 'down'}, ${ledger.ackedCount} acknowledged so far, ${outboxAtStart} waiting at the start of the round`)
    }
    // The end: hub up, gateway up, until everything acknowledged has arrived (or the outbox is empty).
    if (!hub.running) await hub.start()
    await gateway.start(60_000)
    const backlog = (await gateway.health()).outbox.messages
    const drainStart = Date.now()
    const report = await awaitDelivery(ledger, recorder.messages, gateway, { timeoutMs: 300_000, quietMs: 10_000 })
    const drainMs = Date.now() - drainStart
    const final = checkDelivery(ledger, recorder.messages)
    const problems = deliveryProblems(report)
    const verdict = report.missing.length === 0 && problems.length === 0 ? 'pass' : 'fail'
    const result = {
      date: new Date().toISOString(),
      seed: SEED,
      kills: KILLS,
      devices: DEVICES,
      hubFlaps: flaps,
      sent: ledger.byId.size,
      acknowledged: ledger.ackedCount,
      arrived: final.arrived.size,
      lost: report.missing.length,
      duplicates: final.duplicates,
      corrupt: report.corrupt.length,
      reordered: report.reordered.length,
      finalBacklog: backlog,
      finalDrainMs: drainMs,
      durationS: Math.round((Date.now() - started) / 1000),
      verdict,
      problems,
      missingSample: report.missing.slice(0, 10).map((m) => `${m.device} #${m.seq} ${m.messageId}`),
      rounds,
    }
    const dir = path.join(repoRoot, 'bench', 'results')
    mkdirSync(dir, { recursive: true })
    const file = path.join(dir, `soak-${result.date.slice(0, 10)}.json`)
    writeFileSync(file, `${JSON.stringify(result, null, 2)}\n`)
    log(
      `${verdict.toUpperCase()}: ${result.acknowledged} acknowledged, ${result.arrived} arrived, ${result.lost} lost, ${result.duplicates} duplicate(s), ` +
        `${result.reordered} reordered, ${result.corrupt} corrupt; final backlog ${backlog} drained in ${drainMs} ms; ${KILLS} kills, ${flaps} hub flaps; written to ${file}`,
    )
    if (verdict !== 'pass') process.exitCode = 1
  } finally {
    await gateway.close()
    await hub.close()
  }
}

await main()
