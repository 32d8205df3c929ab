// The serial adapter runs the mapped adapter contract over its real transport: a socat pty pair is
// the cable and the test drives the device's end with serialport. The port is a line-protocol one
// (JSON lines) configured the way a store-and-forward data logger is: each reading carries its
// DataType and its own MessageId, and the gateway writes `ACK {messageId}` back once the reading
// is durable; commands go out as JSON lines from a template. The device's port does not exist
// until `attach()` plugs the cable in, so before that the device is owned but unreachable.
// (Modbus slaves have no MessageId and no acknowledgement of their own, so the uplink half of the
// contract cannot be played by one; test/scenario/serial-modbus.test.ts covers them.)
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { SerialPort } from 'serialport'
import { parseConfig } from '../../src/config.js'
import { deviceKey } from '../../src/core/types.js'
import { SerialAdapter } from '../../src/southbound/serial/serial-adapter.js'
import type { SerialConfig } from '../../src/southbound/serial/schema.js'
import { PtyPair, serialTempDir } from '../helpers/serial-peers.js'
import { adapterContract, type AdapterHarness, type SimDevice } from './adapter-contract.js'
import { ContractCore } from './contract-core.js'

// How long the device waits for its acknowledgement before it counts the reading as not taken.
const ACK_WAIT_MS = 3_000

async function until(check: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`${what} (waited ${timeoutMs} ms)`)
    await sleep(10)
  }
}

/** The device's end of the cable: lines out, lines in. */
class LineDevice {
  readonly lines: string[] = []
  private partial = ''
  private constructor(private readonly port: SerialPort) {
    port.on('data', (chunk: Buffer) => {
      this.partial += chunk.toString('utf8')
      let nl: number
      while ((nl = this.partial.indexOf('\n')) >= 0) {
        this.lines.push(this.partial.slice(0, nl))
        this.partial = this.partial.slice(nl + 1)
      }
    })
  }

  static async open(p: string): Promise<LineDevice> {
    const port = new SerialPort({ path: p, baudRate: 9600, autoOpen: false })
    await new Promise<void>((resolve, reject) => port.open((err) => (err ? reject(err) : resolve())))
    return new LineDevice(port)
  }

  async send(line: string): Promise<void> {
    await new Promise<void>((resolve, reject) => this.port.write(line + '\n', (err) => (err ? reject(err) : resolve())))
  }

  async close(): Promise<void> {
    if (this.port.isOpen) await new Promise<void>((resolve) => this.port.close(() => resolve()))
  }
}

adapterContract('serial (line protocol over a pty)', 'mapped', async (): Promise<AdapterHarness> => {
  const core = new ContractCore()
  const device = { productId: 'contract', deviceId: 'serial-1' }
  await core.registry.add({ ...device })
  const tmp = await serialTempDir('serial-contract-')
  const pair = new PtyPair(path.join(tmp.dir, 'gw'), path.join(tmp.dir, 'dev'))
  const cfg = (
    parseConfig({
      serial: {
        ports: [
          {
            name: 'contract',
            path: pair.gateway,
            protocol: 'lines',
            format: 'json',
            productId: device.productId,
            deviceId: device.deviceId,
            dataTypeField: 'type',
            messageIdField: 'mid',
            ack: 'ACK {messageId}',
            reopenMinMs: 20,
            reopenMaxMs: 50,
            commands: { set_interval: { template: '{"command":"{command}","requestId":"{requestId}","payload":{payload}}' } },
          },
        ],
      },
    }) as unknown as { serial: SerialConfig }
  ).serial
  const adapter = new SerialAdapter(core, cfg)
  let plugged = false
  return {
    adapter,
    core,
    device,
    stranger: { productId: 'contract', deviceId: 'not-on-the-bus' },
    async attach(): Promise<SimDevice> {
      const seen = core.reachability.length
      await pair.start()
      plugged = true
      const dev = await LineDevice.open(pair.device)
      await until(() => core.reachability.slice(seen).some((r) => r.reachable && deviceKey(r.device) === deviceKey(device)), 5_000, 'the port did not open')
      let taken = 0
      return {
        async sendTelemetry(dataType, messageId, payload) {
          const body: unknown = JSON.parse(payload.toString('utf8'))
          const values = typeof body === 'object' && body !== null ? body : { value: body }
          await dev.send(JSON.stringify({ type: dataType, mid: messageId, ...values }))
          try {
            await until(() => dev.lines.includes(`ACK ${messageId}`), ACK_WAIT_MS, 'no ack')
            return 'acked'
          } catch {
            return 'not_acked'
          }
        },
        async nextCommand(timeoutMs) {
          const isCommand = (l: string): boolean => l.startsWith('{"command"')
          await until(() => dev.lines.filter(isCommand).length > taken, timeoutMs, `command #${taken + 1} did not arrive`)
          const line = dev.lines.filter(isCommand)[taken++]!
          const c = JSON.parse(line) as { command: string; requestId: string; payload: unknown }
          return { name: c.command, requestId: c.requestId, payload: Buffer.from(JSON.stringify(c.payload)) }
        },
        async close() {
          await dev.close()
          await pair.stop()
          plugged = false
        },
      }
    },
    async dispose() {
      if (plugged) await pair.stop()
      await tmp.dispose()
      core.dispose()
    },
  }
})
