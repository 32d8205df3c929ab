// The HTTP device ingest runs the native contract over its real transport: HTTP requests from a
// device (Node's fetch) to its routes on a real listening fastify server, the way the gateway mounts
// them (/devices/, no API token). Online here means a pending long-poll or a request within
// 1.5 x keepalive; the harness uses a keepalive of 1 s so that a device that stops polling leaves
// within the suite's waits.
import Fastify, { type FastifyInstance } from 'fastify'
import type { AddressInfo } from 'node:net'
import { HttpIngestAdapter, type PolledCommand } from '../../src/southbound/http/http-ingest-adapter.js'
import { adapterContract, type AdapterHarness, type SimDevice } from './adapter-contract.js'
import { ContractCore } from './contract-core.js'

adapterContract('http-devices (HTTP ingest, long-poll)', 'native', async (): Promise<AdapterHarness> => {
  const core = new ContractCore()
  const device = { productId: 'contract', deviceId: 'http-1' }
  const secret = 'http-secret'
  await core.registry.add({ ...device, secret })
  const adapter = new HttpIngestAdapter(core, { keepalive: 1, maxWaitSeconds: 5, maxBodyBytes: 65536, idempotencyTtlSeconds: 60 })
  const app: FastifyInstance = Fastify({ logger: false })
  await app.register(adapter.deviceRoutes, { prefix: '/devices' })
  await app.listen({ host: '127.0.0.1', port: 0 })
  const base = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}/devices/${device.productId}/${device.deviceId}`
  const authorization = `Basic ${Buffer.from(`${device.productId}/${device.deviceId}:${secret}`).toString('base64')}`
  return {
    adapter,
    core,
    device,
    stranger: { productId: 'contract', deviceId: 'nobody' },
    async attach(): Promise<SimDevice> {
      const first = await fetch(`${base}/commands?wait=0`, { headers: { authorization } })
      if (first.status !== 204) throw new Error(`attach: first poll answered ${first.status}`)
      const abort = new AbortController()
      const received: PolledCommand[] = []
      return {
        async sendTelemetry(dataType, messageId, payload) {
          const res = await fetch(`${base}/data/${dataType}`, { method: 'POST', headers: { authorization, 'x-message-id': messageId, 'content-type': 'application/json' }, body: new Uint8Array(payload), signal: abort.signal })
          return res.status === 201 ? 'acked' : 'not_acked'
        },
        async nextCommand(timeoutMs) {
          const until = Date.now() + timeoutMs
          while (received.length === 0) {
            if (Date.now() > until) throw new Error('no command')
            const res = await fetch(`${base}/commands?wait=1`, { headers: { authorization }, signal: abort.signal })
            if (res.status === 200) received.push(...((await res.json()) as PolledCommand[]))
          }
          const c = received.shift()!
          return { name: c.name, requestId: c.requestId, payload: Buffer.from(c.payload, 'base64') }
        },
        close: async () => abort.abort(),
      }
    },
    async dispose() {
      await app.close()
      core.dispose()
    },
  }
})
