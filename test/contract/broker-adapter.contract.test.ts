// The MQTT broker adapter runs the southbound contract with real MQTT.js devices.
import type { MqttClient } from 'mqtt'
import { BrokerAdapter } from '../../src/southbound/broker/broker-adapter.js'
import { parseDownTopic } from '../../src/core/hub-topics.js'
import { connectDevice } from '../helpers/device.js'
import { adapterContract, type AdapterHarness, type SimDevice } from './adapter-contract.js'
import { ContractCore } from './contract-core.js'

adapterContract('broker (MQTT)', 'native', async (): Promise<AdapterHarness> => {
  const core = new ContractCore()
  const device = { productId: 'contract', deviceId: 'dev-1' }
  await core.registry.add({ ...device, secret: 'contract-secret' })
  const adapter = new BrokerAdapter(core, { listeners: [{ host: '127.0.0.1', port: 0, zone: 'external' }], aclDenyAction: 'disconnect' })
  return {
    adapter,
    core,
    device,
    stranger: { productId: 'contract', deviceId: 'nobody' },
    async attach(): Promise<SimDevice> {
      const client: MqttClient = await connectDevice(`mqtt://127.0.0.1:${adapter.ports[0]}`, { ...device, secret: 'contract-secret' })
      const queue: { topic: string; payload: Buffer }[] = []
      client.on('message', (topic, payload) => queue.push({ topic, payload }))
      // The server-side subscriptions are set up as the session opens; wait for them.
      const until = Date.now() + 5_000
      while (!adapter.owns(device) && Date.now() < until) await new Promise((r) => setTimeout(r, 10))
      return {
        sendTelemetry: (dataType, messageId, payload) =>
          new Promise((resolve) => {
            const onClose = (): void => resolve('not_acked')
            client.once('close', onClose)
            client.publish(`upload_data/${device.productId}/${device.deviceId}/${dataType}/${messageId}`, payload, { qos: 1 }, (err) => {
              client.off('close', onClose)
              resolve(err ? 'not_acked' : 'acked')
            })
          }),
        async nextCommand(timeoutMs) {
          const until = Date.now() + timeoutMs
          while (queue.length === 0) {
            if (Date.now() > until) throw new Error('no command arrived')
            await new Promise((r) => setTimeout(r, 10))
          }
          const m = queue.shift()!
          const t = parseDownTopic(m.topic)!
          return { name: t.name!, requestId: t.requestId!, payload: m.payload }
        },
        close: () => new Promise<void>((r) => client.end(true, {}, () => r())),
      }
    },
    dispose: async () => core.dispose(),
  }
})
