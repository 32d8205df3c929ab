// TLS on both sides: devices on a TLS listener of the local broker, and the hub link verifying the
// hub's certificate (on by default: a hub with a certificate we cannot verify is not connected to).
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import mqtt from 'mqtt'
import { GatewayProcess, repoRoot } from '../helpers/gateway-process.js'
import { freePort, waitForTcp } from '../helpers/ports.js'
import { newMessageId } from '../helpers/device.js'
import { makeCa as makeCaIn, type TestPki } from '../helpers/pki.js'

let dir: string

const makeCa = (name: string): TestPki => makeCaIn(dir, name)

beforeAll(() => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'tls-'))
})
afterAll(() => rmSync(dir, { recursive: true, force: true }))

describe('TLS listener for devices (certificate files relative to the config file)', () => {
  let gateway: GatewayProcess
  let pki: { ca: string; cert: string; key: string }
  let tlsPort: number
  const dev = { productId: 'thermo', deviceId: 't-tls', secret: 'tls-secret' }

  beforeAll(async () => {
    pki = makeCa('gateway')
    tlsPort = await freePort()
    // Written relative to the config file's folder ({os.tmpdir()}/iothub-edge-gw-*), as an operator
    // writes `certs/gateway.pem` next to /etc/iothub-edge/gateway.yaml; the process runs elsewhere.
    const fromConfig = (f: string): string => path.relative(path.join(os.tmpdir(), 'iothub-edge-gw-x'), f)
    gateway = new GatewayProcess(
      {
        broker: {
          listeners: [
            { host: '127.0.0.1', port: tlsPort, tls: { cert: fromConfig(pki.cert), key: fromConfig(pki.key) } },
            { host: '127.0.0.1', port: 0, zone: 'internal' },
          ],
        },
        devices: [dev],
        log: { level: 'warn' },
      },
      { cwd: repoRoot },
    )
    await gateway.start()
  })
  afterAll(async () => gateway?.close())

  it('accepts a device over TLS that verifies the gateway certificate, with the same authentication', async () => {
    const c = await mqtt.connectAsync(`mqtts://127.0.0.1:${tlsPort}`, {
      protocolVersion: 4,
      username: `${dev.productId}/${dev.deviceId}`,
      password: dev.secret,
      ca: readFileSync(pki.ca),
      reconnectPeriod: 0,
    })
    await c.publishAsync(`upload_data/${dev.productId}/${dev.deviceId}/t/${newMessageId()}`, '1', { qos: 1 })
    await c.endAsync()
    await expect(
      mqtt.connectAsync(`mqtts://127.0.0.1:${tlsPort}`, { protocolVersion: 4, username: `${dev.productId}/${dev.deviceId}`, password: 'wrong', ca: readFileSync(pki.ca), reconnectPeriod: 0 }),
    ).rejects.toThrow()
  })

  it('does not speak plain MQTT on the TLS port', async () => {
    const c = mqtt.connect(`mqtt://127.0.0.1:${tlsPort}`, { protocolVersion: 4, username: `${dev.productId}/${dev.deviceId}`, password: dev.secret, reconnectPeriod: 0, connectTimeout: 5_000 })
    const outcome = await new Promise<string>((resolve) => {
      c.once('connect', () => resolve('connected'))
      c.once('error', () => resolve('refused'))
      c.once('close', () => resolve('refused'))
    })
    c.end(true)
    expect(outcome).toBe('refused')
  })
})

describe('TLS towards the hub', () => {
  let hubPki: { ca: string; cert: string; key: string }
  let otherPki: { ca: string; cert: string; key: string }
  let mosq: ChildProcess
  let port: number

  beforeAll(async () => {
    hubPki = makeCa('hub')
    otherPki = makeCa('other')
    port = await freePort()
    const conf = path.join(dir, 'mosquitto.conf')
    writeFileSync(
      conf,
      [`listener ${port} 127.0.0.1`, 'allow_anonymous true', `cafile ${hubPki.ca}`, `certfile ${hubPki.cert}`, `keyfile ${hubPki.key}`, ...(process.getuid?.() === 0 ? ['user root'] : [])].join('\n') + '\n',
    )
    mosq = spawn('/usr/sbin/mosquitto', ['-c', conf], { stdio: 'ignore' })
    await waitForTcp(port, { timeoutMs: 10_000 })
  })
  afterAll(() => {
    mosq?.kill()
  })

  async function gatewayWith(ca: string | undefined): Promise<GatewayProcess> {
    const gw = new GatewayProcess({
      gateway: { secret: 'gw' },
      northbound: { url: `mqtts://127.0.0.1:${port}`, ...(ca ? { tls: { ca } } : {}) },
      log: { level: 'warn' },
    })
    await gw.start()
    return gw
  }

  it('connects to a hub whose certificate chains to the configured CA', async () => {
    const gw = await gatewayWith(hubPki.ca)
    try {
      await gw.waitForHealth((h) => h.northbound.connected, 15_000, 'northbound connected over TLS')
    } finally {
      await gw.close()
    }
  })

  it('refuses a hub it cannot verify (another CA, or none configured): verification is on by default', async () => {
    for (const ca of [otherPki.ca, undefined]) {
      const gw = await gatewayWith(ca)
      try {
        await new Promise((r) => setTimeout(r, 2_500))
        expect((await gw.health()).northbound.connected).toBe(false)
        expect(gw.logs()).toMatch(/certificate|self[- ]signed|unable to verify/i)
      } finally {
        await gw.close()
      }
    }
  })
})
