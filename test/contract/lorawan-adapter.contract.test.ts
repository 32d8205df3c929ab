// The LoRaWAN adapter runs the mapped adapter contract over its real transports: ChirpStack's side is
// played as in the scenario tests (ChirpstackSim). The device's messages reach the adapter through
// ChirpStack's HTTP integration, whose answer is the acknowledgement the contract watches (200 once
// durable, 503 when the core could not store it; over MQTT the PUBACK goes to the broker, which
// ChirpStack never sees); commands leave as `command/down` publishes on a real Mosquitto, where the
// simulated ChirpStack reads them. Online means heard from (a `join`); `close()` makes the device
// fall silent, and `awayAfterSeconds: 1` reports it away.
// A LoRaWAN device has no MessageId: the adapter fixes one from ChirpStack's deduplicationId
// (`messageIdFor`), and a downlink carries no command name or RequestId: the harness reads them from
// the adapter's view of the downlinks it follows, by the queue item id ChirpStack received.
import { setTimeout as sleep } from 'node:timers/promises'
import { parseConfig } from '../../src/config.js'
import { LorawanAdapter, messageIdFor } from '../../src/southbound/lorawan/lorawan-adapter.js'
import type { LorawanConfig } from '../../src/southbound/lorawan/schema.js'
import { ChirpstackBroker, ChirpstackSim } from '../helpers/chirpstack.js'
import { adapterContract, type AdapterHarness, type SimDevice } from './adapter-contract.js'
import { ContractCore } from './contract-core.js'

const SECRET = 'contract-http-integration-secret'
const DEV_EUI = '7c7c7c7c7c7c7c7c'
// The contract's data types and command, as a LoRaWAN device maps them: per FPort.
const FPORT_OF: Record<string, number> = { temperature: 1, t: 2 }
const COMMANDS = { set_interval: { fPort: 10, confirmed: false }, reboot: { fPort: 11, confirmed: false } }

async function until(check: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`${what} (waited ${timeoutMs} ms)`)
    await sleep(10)
  }
}

/** A deduplicationId (UUID shape) made from the contract's MessageId, so that the test can name it. */
const dedupIdOf = (mid: string): string => `${mid.slice(0, 8)}-${mid.slice(8, 12)}-4${mid.slice(13, 16)}-8${mid.slice(17, 20)}-${mid.slice(20, 24)}00000000`
const TIME = '2026-12-01T10:00:00.000000000+00:00'

adapterContract('lorawan (ChirpStack HTTP integration in, MQTT command/down out)', 'mapped', async (): Promise<AdapterHarness> => {
  const core = new ContractCore()
  const device = { productId: 'contract', deviceId: 'lorawan-1' }
  await core.registry.add({ ...device })
  const broker = new ChirpstackBroker()
  await broker.start()
  const cs = new ChirpstackSim(broker.url, 'json')
  await cs.start()
  const cfg = (
    parseConfig({
      lorawan: {
        chirpstack: { mqtt: { url: broker.url, clientId: `contract-${process.pid}-${Date.now()}` }, http: { port: 0, secret: SECRET } },
        devices: [{ devEui: DEV_EUI, ...device, dataTypes: { '1': 'temperature', '2': 't' }, commands: COMMANDS }],
        awayAfterSeconds: 1,
      },
    }) as unknown as { lorawan: LorawanConfig }
  ).lorawan
  const adapter = new LorawanAdapter(core, cfg)
  const post = async (event: string, body: Buffer): Promise<number> => {
    const res = await fetch(`http://127.0.0.1:${adapter.httpPort}/integrations/chirpstack?event=${event}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-iothub-edge-secret': SECRET },
      body: new Uint8Array(body),
    })
    await res.arrayBuffer()
    return res.status
  }
  return {
    adapter,
    core,
    device,
    stranger: { productId: 'contract', deviceId: 'not-in-chirpstack' },
    messageIdFor: (mid) => messageIdFor('up', dedupIdOf(mid), TIME),
    async attach(): Promise<SimDevice> {
      // Downlinks need the broker connection (started by adapter.start()).
      await until(() => adapter.isConnected, 10_000, 'the adapter did not connect to ChirpStack\'s broker')
      const status = await post('join', cs.encode('join', { devEui: DEV_EUI }, { deduplicationId: cs.nextId(), devAddr: '01020304' }))
      if (status !== 200) throw new Error(`attach: the join was answered ${status}`)
      let taken = cs.downlinks.length
      return {
        async sendTelemetry(dataType, messageId, payload) {
          const fPort = FPORT_OF[dataType]
          if (fPort === undefined) throw new Error(`no FPort for data type ${dataType}`)
          // A JSON object goes as ChirpStack's decoded `object` (what the hub then gets), anything else as the bytes.
          let object: unknown
          try {
            object = JSON.parse(payload.toString('utf8'))
          } catch {
            object = undefined
          }
          const fields = {
            deduplicationId: dedupIdOf(messageId), time: TIME, fPort, fCnt: 1, data: payload.toString('base64'),
            ...(typeof object === 'object' && object !== null ? { object } : {}),
          }
          const answer = await post('up', cs.encode('up', { devEui: DEV_EUI }, fields))
          return answer === 200 ? 'acked' : 'not_acked'
        },
        async nextCommand(timeoutMs) {
          await until(() => cs.downlinks.length > taken, timeoutMs, `downlink #${taken + 1} did not reach ChirpStack`)
          const down = cs.downlinks[taken++]!
          const followed = adapter.diagnosticsOf(device)?.downlinks.find((d) => d.id === down.id)
          const name = Object.entries(COMMANDS).find(([, c]) => c.fPort === down.fPort)?.[0]
          return { name: name ?? `fport_${down.fPort}`, requestId: followed?.requestId ?? '', payload: down.data }
        },
        async close() {
          // A LoRaWAN device leaves by falling silent: nothing to close; awayAfterSeconds does the rest.
        },
      }
    },
    async dispose() {
      await cs.stop()
      await broker.close()
      core.dispose()
    },
  }
})
