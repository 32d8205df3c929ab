// The HTTP device ingest runs the native contract over its real transport: HTTP requests from a
// device (Node's fetch) to its routes on a real listening fastify server, the way the gateway mounts
// them (/devices/, no API token). Online here means a pending long-poll or a request within
// 1.5 x keepalive; the harness uses a keepalive of 1 s so that a device that stops polling leaves
// within the suite's waits.
import Fastify, { type FastifyInstance } from 'fastify'
import { afterEach, describe, expect, it } from 'vitest'
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

// Beyond the contract: a message the core could not make durable is answered 503, and the device's
// retry with the same Idempotency-Key is then taken (the key is not burnt by the failed attempt).
describe('http-devices: a failed store does not burn the Idempotency-Key', () => {
  let app: FastifyInstance | undefined
  let core: ContractCore | undefined
  afterEach(async () => {
    await app?.close()
    core?.dispose()
  })

  it('answers 503, then 201 for the retry, then 200 for a repeat', async () => {
    core = new ContractCore()
    const device = { productId: 'contract', deviceId: 'http-2' }
    await core.registry.add({ ...device, secret: 's2' })
    const adapter = new HttpIngestAdapter(core, { keepalive: 60, maxWaitSeconds: 5, maxBodyBytes: 1024, idempotencyTtlSeconds: 60 })
    await adapter.start()
    app = Fastify({ logger: false })
    await app.register(adapter.deviceRoutes, { prefix: '/devices' })
    const post = (): Promise<{ statusCode: number; headers: Record<string, unknown> }> =>
      app!.inject({
        method: 'POST',
        url: '/devices/contract/http-2/data/t',
        headers: { authorization: `Basic ${Buffer.from('contract/http-2:s2').toString('base64')}`, 'idempotency-key': 'key-1' },
        payload: '1',
      })
    core.failUplinks(new Error('disk full'))
    const failed = await post()
    expect(failed.statusCode).toBe(503)
    expect(failed.headers['retry-after']).toBeDefined()
    core.failUplinks(undefined)
    expect((await post()).statusCode).toBe(201)
    expect((await post()).statusCode).toBe(200)
    expect(core.uplinks.filter((u) => u.topic.messageId === 'key-1')).toHaveLength(1)
    await adapter.stop()
  })
})
