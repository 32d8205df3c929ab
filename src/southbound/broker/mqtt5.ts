// Which aedes the local broker runs (`broker.mqtt5`, decision 0021-mqtt5). Off (the default):
// aedes 1.2.0 with the conformance patches of patches/ (MQTT 3.1 and 3.1.1). On: aedes
// 2.0.0-beta.1, installed under the npm alias `aedes-v5` and pinned exactly, which also speaks
// MQTT 5 (CONNACK properties, session and message expiry, user properties, subscription
// identifiers, v5 reason codes). Both take the same options, hooks and persistence interface; the
// broker adapter is the same for both and asks `speaksMqtt5` where they answer differently.
// aedes 2 is imported only when `broker.mqtt5` is on (an idle gateway keeps ~0.5 MB of heap less,
// docs/performance.md "2026-12-03").
import { Aedes, type AedesOptions } from 'aedes'
import type { AedesOptions as AedesV5Options } from 'aedes-v5'

/** MQTT 5.0 reason codes the adapter sends itself (section 2.4). */
export const ReasonCode = {
  UNSPECIFIED_ERROR: 0x80,
  NOT_AUTHORIZED: 0x87,
  SHARED_SUBSCRIPTIONS_NOT_SUPPORTED: 0x9e,
} as const

/**
 * A broker that is not listening yet (the adapter calls `listen()`). aedes 2 has the API the
 * adapter uses from aedes 1.2 (the same class surface, hooks and events); its types differ only in
 * MQTT 5 additions, so it is handed out under aedes 1.2's type.
 */
export async function createAedes(mqtt5: boolean, options: AedesOptions): Promise<Aedes> {
  if (!mqtt5) return new Aedes(options)
  const { Aedes: AedesV5 } = await import('aedes-v5')
  // aedes 2's own defaults otherwise. Not `topicAliasMaximum` > 0: aedes 2.0.0-beta.1 then takes a
  // Topic Alias 0 instead of disconnecting [MQTT-3.3.2-8] (Paho's test_client_topic_alias).
  return new AedesV5(options as AedesV5Options) as unknown as Aedes
}

/** Whether a connection speaks MQTT 5 (its CONNECT's protocol level). */
export const speaksMqtt5 = (protocolVersion: number | null | undefined): boolean => protocolVersion === 5
