// Rules across a kill -9 (issue 12, "durable and exact"): a message, what the rules made of it and
// the rules' state commit together before the device's PUBACK. Devices publish one message at a
// time (each waits for its PUBACK), numbered 1, 2, 3...; the gateway is killed mid-stream and
// restarted. What the windows counted must then be exactly messages 1..k of each device, k being
// the PUBACKed count or one more (the message in flight may have been committed without its PUBACK
// getting out): the sum of the numbers tells a lost or doubled message apart from a right one.
// An alarm raised before a kill is not raised again after it.
import type { MqttClient } from 'mqtt'
import { setTimeout as sleep } from 'node:timers/promises'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { connectDevice, newMessageId, publishQos1 } from '../helpers/device.js'
import type { GatewayProcess } from '../helpers/gateway-process.js'
import type { HubRecorder } from '../helpers/hub-broker.js'
import { closeHubScenario, startHubScenario, type HubScenario } from '../helpers/hub-scenario.js'

const gw = { productId: 'gateways', deviceId: 'gw-01', secret: 'gw-secret' }
const meters = Array.from({ length: 5 }, (_, i) => ({ productId: 'meter', deviceId: `m${i}`, secret: `secret-m${i}` }))
const boiler = { productId: 'boiler', deviceId: 'b1', secret: 'secret-b1' }
const WINDOW_S = 2

const rules = [
  { name: 'seq-window', from: 'upload_data/meter/+/reading', actions: [{ window: { seconds: WINDOW_S, fields: ['seq'], aggregates: ['count', 'sum'], dataType: 'reading_window' } }] },
  { name: 'overheat', from: 'upload_data/boiler/+/temperature', actions: [{ alarm: { name: 'overheat', set: 'payload.t > 90.0', clear: 'payload.t < 85.0', value: 'payload.t' } }] },
]

interface WindowBody {
  start: number
  end: number
  count: number
  seq: { count: number; sum: number }
}

describe('rules across kill -9', () => {
  let s: HubScenario | undefined
  let recorder: HubRecorder
  let gateway: GatewayProcess
  let clients: MqttClient[] = []

  beforeEach(async (ctx) => {
    s = await startHubScenario(ctx, { gw, children: [...meters, boiler], recordFilter: 'upload_data/#', recorderId: 'hub-recorder-rules-kill9', config: { rules } })
    ;({ recorder, gateway, clients } = s)
  })

  afterEach(() => closeHubScenario(s && { ...s, clients }))

  /** Each window a device's aggregates reached the hub with: one per window start; a repeat must be the same bytes. */
  function windowsOf(deviceId: string): WindowBody[] {
    const byStart = new Map<number, string>()
    for (const m of recorder.messages) {
      if (!m.topic.startsWith(`upload_data/meter/${deviceId}/reading_window/`)) continue
      const text = m.payload.toString()
      const body = JSON.parse(text) as WindowBody
      const seen = byStart.get(body.start)
      if (seen !== undefined) expect(text, `window ${body.start} of ${deviceId} came twice with different contents`).toBe(seen)
      byStart.set(body.start, text)
    }
    return [...byStart.values()].map((t) => JSON.parse(t) as WindowBody)
  }

  it('a window never loses nor double-counts a message', async () => {
    await gateway.start()
    clients = await Promise.all(meters.map((d) => connectDevice(gateway.externalUrl, d)))
    const acked = meters.map(() => 0)
    const sent = meters.map(() => 0)
    let stop = false
    const streams = meters.map(async (d, i) => {
      while (!stop) {
        const seq = sent[i] + 1
        sent[i] = seq
        try {
          await publishQos1(clients[i], `upload_data/meter/${d.deviceId}/reading/${newMessageId()}`, JSON.stringify({ seq }))
        } catch {
          return // the gateway died: this one got no PUBACK
        }
        acked[i] = seq
      }
    })
    // Into the third window or so, at a point that differs run to run.
    const killAfter = 1_500 + Math.floor(Math.random() * 3_000)
    console.log(`rules kill9: killing after ${killAfter} ms`)
    await sleep(killAfter)
    await gateway.kill9()
    stop = true
    await Promise.all(clients.map((c) => c.endAsync(true)))
    await Promise.all(streams)
    console.log(`rules kill9: PUBACKed per device ${acked.join(', ')}`)
    expect(Math.min(...acked)).toBeGreaterThan(0)

    await gateway.start()
    // Every window these messages fell in has ended two windows from now and is then emitted.
    await sleep(2 * WINDOW_S * 1_000 + 1_500)
    const deadline = Date.now() + 20_000
    const counted = (i: number): number => windowsOf(meters[i].deviceId).reduce((n, w) => n + w.count, 0)
    while (meters.some((_, i) => counted(i) < acked[i]) && Date.now() < deadline) await sleep(100)

    meters.forEach((d, i) => {
      const windows = windowsOf(d.deviceId)
      const k = counted(i)
      expect(k, `${d.deviceId}: counted vs PUBACKed ${acked[i]}`).toBeGreaterThanOrEqual(acked[i])
      expect(k, `${d.deviceId}: counted vs sent ${sent[i]}`).toBeLessThanOrEqual(acked[i] + 1)
      // Messages 1..k, each once: their numbers add up to k(k+1)/2.
      expect(windows.reduce((s, w) => s + w.seq.sum, 0), `${d.deviceId}: sum of the numbers counted`).toBe((k * (k + 1)) / 2)
      for (const w of windows) expect(w.end - w.start).toBe(WINDOW_S * 1_000)
    })
  }, 90_000)

  it('an alarm raised before the kill is not raised again after it; it clears once', async () => {
    await gateway.start()
    let c = await connectDevice(gateway.externalUrl, boiler)
    clients.push(c)
    const send = (t: number): Promise<void> => publishQos1(c, `upload_data/boiler/b1/temperature/${newMessageId()}`, JSON.stringify({ t }))
    await send(95)
    await recorder.waitFor((m) => m.topic.startsWith('upload_data/boiler/b1/alarm/'), 10_000, 'the raised alarm')
    await gateway.kill9()
    await gateway.start()
    c = await connectDevice(gateway.externalUrl, boiler)
    clients.push(c)
    await send(97)
    await send(88)
    await send(80)
    await recorder.waitFor((m) => m.topic.startsWith('upload_data/boiler/b1/alarm/') && m.payload.toString().includes('"cleared"'), 10_000, 'the cleared alarm')
    const temps = await recorder.waitFor((m) => m.topic.startsWith('upload_data/boiler/b1/temperature/') && m.payload.toString() === '{"t":80}', 10_000, 'the last reading')
    expect(temps).toBeDefined()
    const changes = new Map<string, string>()
    for (const m of recorder.messages) if (m.topic.startsWith('upload_data/boiler/b1/alarm/')) changes.set(m.topic, m.payload.toString())
    expect([...changes.values()].map((p) => (JSON.parse(p) as { state: string; value: number }))).toMatchObject([
      { state: 'raised', value: 95 },
      { state: 'cleared', value: 80 },
    ])
    const { body } = await gateway.api<{ alarms: { state: string }[] }>('GET', '/api/alarms')
    expect(body.alarms).toMatchObject([{ state: 'cleared' }])
  }, 60_000)
})
