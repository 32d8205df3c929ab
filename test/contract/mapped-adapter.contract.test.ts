// The test mapped adapter runs the southbound contract. Be clear about what this proves: the
// adapter has no transport, so the "device" here calls the adapter's `receive()`, which hands the
// reading to the core and resolves once the core made it durable. What passes is the adapter's
// plumbing to the core (types, MessageId kept, acknowledgement only after durability, ownership
// and delivery), which the scenario tests rely on when they use this adapter for mapped devices;
// nothing here exercises a radio, a serial line or a network. Real mapped adapters run this suite
// over their real transport.
import type { Command } from '../../src/core/types.js'
import { TestMappedAdapter } from '../helpers/mapped-adapter.js'
import { adapterContract, type AdapterHarness, type SimDevice } from './adapter-contract.js'
import { ContractCore } from './contract-core.js'

adapterContract('test mapped adapter (no transport)', 'mapped', async (): Promise<AdapterHarness> => {
  const core = new ContractCore()
  const device = { productId: 'contract', deviceId: 'mapped-1' }
  await core.registry.add({ ...device })
  // Mapped from the start (it is in the adapter's configuration) but not reachable yet.
  const adapter = new TestMappedAdapter(core, { devices: [device], reachable: false })
  return {
    adapter,
    core,
    device,
    stranger: { productId: 'contract', deviceId: 'not-mapped' },
    async attach(): Promise<SimDevice> {
      adapter.setReachable(true)
      let taken = 0
      return {
        sendTelemetry: (dataType, messageId, payload) =>
          adapter.receive(device, dataType, messageId, payload).then(
            () => 'acked' as const,
            () => 'not_acked' as const,
          ),
        async nextCommand(timeoutMs) {
          const cmd: Command = await adapter.waitForDelivery((c) => adapter.delivered.indexOf(c) >= taken, timeoutMs, `command #${taken + 1}`)
          taken = adapter.delivered.indexOf(cmd) + 1
          return { name: cmd.name, requestId: cmd.requestId, payload: cmd.payload }
        },
        close: async () => adapter.setReachable(false),
      }
    },
    dispose: async () => core.dispose(),
  }
})
