// The loopback adapter (a native adapter that is not MQTT, test/helpers/loopback-adapter.ts) runs
// the native contract: what the core relies on holds for a native transport other than the broker.
// Like the test mapped adapter it has no wire; what passes is its plumbing to the core.
import type { Command } from '../../src/core/types.js'
import { LoopbackAdapter } from '../helpers/loopback-adapter.js'
import { adapterContract, type AdapterHarness, type SimDevice } from './adapter-contract.js'
import { ContractCore } from './contract-core.js'

adapterContract('loopback (native, not MQTT)', 'native', async (): Promise<AdapterHarness> => {
  const core = new ContractCore()
  const device = { productId: 'contract', deviceId: 'loop-1' }
  await core.registry.add({ ...device, secret: 'loop-secret' })
  const adapter = new LoopbackAdapter(core, { label: 'contract', failStart: false })
  return {
    adapter,
    core,
    device,
    stranger: { productId: 'contract', deviceId: 'nobody' },
    async attach(): Promise<SimDevice> {
      await adapter.connect(device, 'loop-secret')
      const seen = new Set<Command>()
      return {
        sendTelemetry: (dataType, messageId, payload) =>
          adapter.send(`upload_data/${device.productId}/${device.deviceId}/${dataType}/${messageId}`, payload.toString()).then(
            () => 'acked' as const,
            () => 'not_acked' as const,
          ),
        async nextCommand(timeoutMs) {
          const cmd = await adapter.waitFor(device, (c) => !seen.has(c), timeoutMs)
          seen.add(cmd)
          return { name: cmd.name, requestId: cmd.requestId, payload: cmd.payload }
        },
        close: async () => adapter.disconnect(device),
      }
    },
    dispose: async () => core.dispose(),
  }
})
