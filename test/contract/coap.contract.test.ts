// The CoAP endpoint runs the native contract over its real transport: CoAP datagrams on a real UDP
// socket (the device side built with coap-packet, the codec the endpoint uses). Online means a
// request within 1.5 x keepalive; the harness uses a keepalive of 1 s so that a device that goes
// quiet leaves within the suite's waits. A command reaches the device as a CON notification on its
// observation, which the device ACKs.
import dgram from 'node:dgram'
import { generate, parse, type ParsedPacket } from 'coap-packet'
import { CoapAdapter } from '../../src/southbound/coap/coap-adapter.js'
import { adapterContract, type AdapterHarness, type SimDevice } from './adapter-contract.js'
import { ContractCore } from './contract-core.js'

adapterContract('coap (CoAP /mqtt convention, Observe)', 'native', async (): Promise<AdapterHarness> => {
  const core = new ContractCore()
  const device = { productId: 'contract', deviceId: 'coap-1' }
  const secret = 'coap-secret'
  await core.registry.add({ ...device, secret })
  const adapter = new CoapAdapter(core, { enabled: true, host: '127.0.0.1', port: 0, keepalive: 1, maxPayloadBytes: 65536, rateLimit: { perSourcePerSecond: 1000 } })
  const uri = (topic: string): { name: string; value: Buffer }[] => [
    ...['mqtt', ...topic.split('/')].map((l) => ({ name: 'Uri-Path', value: Buffer.from(l) })),
    ...['c=contract', `u=${device.productId}/${device.deviceId}`, `p=${secret}`].map((q) => ({ name: 'Uri-Query', value: Buffer.from(q) })),
  ]
  return {
    adapter,
    core,
    device,
    stranger: { productId: 'contract', deviceId: 'nobody' },
    async attach(): Promise<SimDevice> {
      const socket = dgram.createSocket('udp4')
      await new Promise<void>((r) => socket.bind(0, '127.0.0.1', () => r()))
      const inbox: ParsedPacket[] = []
      const waiters = new Set<() => void>()
      let mid = 100
      let open = true
      socket.on('message', (msg) => {
        const p = parse(msg)
        // A notification (CON) is ACKed as a device does; a closed device resets it.
        if (p.confirmable) socket.send(generate({ code: '0.00', ack: open, reset: !open, messageId: p.messageId, token: Buffer.alloc(0), options: [], payload: Buffer.alloc(0) }), adapter.port, '127.0.0.1')
        inbox.push(p)
        for (const w of waiters) w()
      })
      const next = (match: (p: ParsedPacket) => boolean, timeoutMs: number): Promise<ParsedPacket> =>
        new Promise((resolve, reject) => {
          const check = (): void => {
            const i = inbox.findIndex(match)
            if (i < 0) return
            const [p] = inbox.splice(i, 1)
            done()
            resolve(p)
          }
          const timer = setTimeout(() => {
            done()
            reject(new Error('no matching CoAP message'))
          }, timeoutMs)
          const done = (): void => {
            clearTimeout(timer)
            waiters.delete(check)
          }
          waiters.add(check)
          check()
        })
      const request = async (code: string, topic: string, payload: Buffer, extra: { name: string; value: Buffer }[] = []): Promise<ParsedPacket> => {
        const messageId = ++mid
        socket.send(generate({ code, confirmable: true, messageId, token: Buffer.from([messageId & 0xff]), options: [...extra, ...uri(topic)], payload }), adapter.port, '127.0.0.1')
        return next((p) => p.ack && p.messageId === messageId, 10_000)
      }
      const observed = await request('GET', `cmd/${device.productId}/${device.deviceId}/+/+/+/#`, Buffer.alloc(0), [{ name: 'Observe', value: Buffer.alloc(0) }])
      if (observed.code !== '2.05') throw new Error(`attach: observe answered ${observed.code}`)
      return {
        async sendTelemetry(dataType, messageId, payload) {
          const res = await request('PUT', `upload_data/${device.productId}/${device.deviceId}/${dataType}/${messageId}`, payload)
          return res.code === '2.04' ? 'acked' : 'not_acked'
        },
        async nextCommand(timeoutMs) {
          const n = await next((p) => p.confirmable && p.code === '2.05', timeoutMs)
          const location = n.options.filter((o) => o.name === 'Location-Path').map((o) => o.value.toString())
          // cmd/{p}/{d}/{name}/{encoding}/{requestId}
          return { name: location[3], requestId: location[5], payload: n.payload }
        },
        async close() {
          open = false
          socket.close()
        },
      }
    },
    dispose: async () => core.dispose(),
  }
})
