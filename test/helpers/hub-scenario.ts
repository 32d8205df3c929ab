// The fixture the kill -9 and damaged-store scenarios share: Mosquitto as the hub with a recorder
// of what reaches it, the gateway process as the hub's gateway with its children, and the device
// clients a test opens; all closed after each test, whatever happened.
import type { MqttClient } from 'mqtt'
import type { TestContext } from 'vitest'
import { GatewayProcess, type GatewayProcessOptions } from './gateway-process.js'
import { HubBroker, type HubRecorder } from './hub-broker.js'

type Login = { productId: string; deviceId: string; secret: string }

export interface HubScenario {
  hub: HubBroker
  recorder: HubRecorder
  gateway: GatewayProcess
  clients: MqttClient[]
}

/**
 * Start the hub, subscribe the recorder to `recordFilter`, and make (not start) the gateway with
 * `config` pointed at the hub; its output is printed if the test fails (given the test's context).
 */
export async function startHubScenario(
  ctx: Pick<TestContext, 'onTestFailed'> | undefined,
  s: { gw: Login; children: Login[]; recordFilter: string; recorderId: string; config?: Record<string, unknown>; options?: GatewayProcessOptions },
): Promise<HubScenario> {
  const hub = new HubBroker({ devices: [], gateway: { ...s.gw, children: s.children } })
  await hub.start()
  const recorder = await hub.subscribeAll(s.recordFilter, { clientId: s.recorderId })
  const gateway = new GatewayProcess({ gateway: s.gw, northbound: { url: hub.url }, devices: s.children, log: { level: 'info' }, ...s.config }, s.options)
  ctx?.onTestFailed(() => console.log(gateway.failure('output when the test failed').message))
  return { hub, recorder, gateway, clients: [] }
}

/** Close the clients, the gateway and the hub of a scenario (any part may be missing). */
export async function closeHubScenario(s: Partial<HubScenario> | undefined): Promise<void> {
  await Promise.allSettled((s?.clients ?? []).map((c) => c.endAsync(true)))
  await s?.gateway?.close()
  await s?.hub?.close()
}
