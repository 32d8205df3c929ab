// The arm64 package proven on this x86-64 machine without Docker: its files (dpkg-deb -x) run
// under qemu-user (Debian's qemu-user-static) with Debian's arm64 C and C++ libraries (the
// cross toolchain's libc6-arm64-cross / libstdc++6-arm64-cross in /usr/aarch64-linux-gnu). The
// package's own arm64 Node.js runs the gateway: it starts, a device publishes to its broker,
// and the hub (Mosquitto) receives the message.
import { execFile } from 'node:child_process'
import { existsSync, mkdtempSync, readlinkSync, rmSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { promisify } from 'node:util'
import type { MqttClient } from 'mqtt'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { BUILD_TIMEOUT_MS, buildDeb, debField, elfMachine, extractDeb } from '../helpers/deb-package.js'
import { connectDevice, newMessageId, publishQos1 } from '../helpers/device.js'
import { GatewayProcess } from '../helpers/gateway-process.js'
import { HubBroker, type HubRecorder } from '../helpers/hub-broker.js'

const execFileAsync = promisify(execFile)

const QEMU = '/usr/bin/qemu-aarch64-static'
/** Where Debian's cross toolchain puts the arm64 libc, ld.so and libstdc++ (qemu's -L prefix). */
const ARM64_SYSROOT = '/usr/aarch64-linux-gnu'

/** Emulated arm64 runs several times slower, more so on a busy machine. */
const EMULATED_TIMEOUT_MS = 300_000

const gw = { productId: 'gateways', deviceId: 'gw-arm', secret: 'gw-arm-secret' }
const sensor = { productId: 'thermo', deviceId: 'pi-1', secret: 'pi-1-secret' }

describe('the arm64 package under qemu-user', () => {
  let root: string
  let app: string
  let hub: HubBroker
  let recorder: HubRecorder
  let gateway: GatewayProcess | undefined
  let client: MqttClient | undefined

  /** The package's arm64 Node.js under qemu, with these arguments. */
  function arm64Node(...args: string[]): string[] {
    return [QEMU, '-L', ARM64_SYSROOT, path.join(app, 'node', 'bin', 'node'), ...args]
  }

  beforeAll(async () => {
    for (const f of [QEMU, path.join(ARM64_SYSROOT, 'lib', 'ld-linux-aarch64.so.1'), path.join(ARM64_SYSROOT, 'lib', 'libstdc++.so.6')]) {
      if (!existsSync(f)) throw new Error(`${f} is missing: scripts/test.sh installs qemu-user-static and g++-aarch64-linux-gnu`)
    }
    const deb = await buildDeb('arm64')
    expect(await debField(deb, 'Architecture')).toBe('arm64')
    root = mkdtempSync(path.join(os.tmpdir(), 'iothub-edge-arm64-'))
    await extractDeb(deb, root)
    app = path.join(root, 'opt', 'iothub-edge')
  }, BUILD_TIMEOUT_MS)

  afterAll(async () => {
    await client?.endAsync()
    await gateway?.close()
    await hub?.stop()
    if (root) rmSync(root, { recursive: true, force: true })
  })

  it('ships an aarch64 Node.js and aarch64 native modules', () => {
    expect(elfMachine(path.join(app, 'node', 'bin', 'node'))).toBe('aarch64')
    expect(elfMachine(path.join(app, 'node_modules', 'better-sqlite3', 'build', 'Release', 'better_sqlite3.node'))).toBe('aarch64')
    expect(elfMachine(path.join(app, 'node_modules', '@serialport', 'bindings-cpp', 'prebuilds', 'linux-arm64', '@serialport+bindings-cpp.armv8.glibc.node'))).toBe('aarch64')
  })

  it('loads both native modules on arm64: better-sqlite3 answers a query, the serialport binding opens', async () => {
    const script = `
      const { createRequire } = require('node:module')
      const req = createRequire(${JSON.stringify(path.join(app, 'package.json'))})
      const Database = req('better-sqlite3')
      const db = new Database(':memory:')
      const row = db.prepare('select sqlite_version() as v, 6 * 7 as answer').get()
      const binding = req('node-gyp-build')(${JSON.stringify(path.join(app, 'node_modules', '@serialport', 'bindings-cpp'))})
      console.log(JSON.stringify({ arch: process.arch, answer: row.answer, serialOpen: typeof binding.open }))`
    const [cmd, ...args] = arm64Node('-e', script)
    const { stdout } = await execFileAsync(cmd, args, { timeout: 120_000 })
    expect(JSON.parse(stdout)).toEqual({ arch: 'arm64', answer: 42, serialOpen: 'function' })
  }, EMULATED_TIMEOUT_MS)

  it('starts the gateway; a device publishes to it and the hub receives the message', async () => {
    hub = new HubBroker({ devices: [], gateway: { ...gw, children: [sensor] } })
    await hub.start()
    recorder = await hub.subscribeAll('#')
    gateway = new GatewayProcess(
      { gateway: gw, northbound: { url: hub.url }, devices: [sensor], log: { level: 'info' } },
      { command: arm64Node(path.join(app, 'bin', 'iothub-edge.js')) },
    )
    // Everything runs emulated: give the start time.
    await gateway.start(150_000)
    await gateway.waitForHealth((h) => h.northbound.connected, 60_000, 'connected to the hub')

    client = await connectDevice(gateway.externalUrl, sensor)
    const topic = `upload_data/${sensor.productId}/${sensor.deviceId}/temperature/${newMessageId()}`
    const payload = JSON.stringify({ c: 21.5, board: 'arm64' })
    await publishQos1(client, topic, payload)
    const got = await recorder.waitFor((m) => m.topic === topic, 60_000)
    expect(got.payload.toString()).toBe(payload)
    // The gateway that did it is the emulated arm64 process.
    expect(readlinkSync(`/proc/${gateway.pid}/exe`)).toBe(QEMU)
  }, EMULATED_TIMEOUT_MS)
})
