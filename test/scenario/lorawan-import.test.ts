// `iothub-edge lorawan import` (issue 8, "Provisioning help"): with ChirpStack's gRPC API configured
// the CLI lists the tenant's applications (ApplicationService.List) and their devices
// (DeviceService.List, in pages) and registers each as the child the mapping gives it: in the
// database when no gateway runs, through the running gateway's API otherwise. ChirpStack's API is a
// grpc-js server built from the package's own service definitions (ChirpstackApiServer).
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import YAML from 'yaml'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { ChirpstackApiServer } from '../helpers/chirpstack.js'
import { GatewayProcess, runCli } from '../helpers/gateway-process.js'
import { freePort } from '../helpers/ports.js'

const TOKEN = 'chirpstack-api-key-for-import'
const TENANT = '52f14cd4-c6f1-4fbd-8f87-4025e1d49242'
const PLANT = '17c82e96-be03-4f38-aef3-f83d48582d97'
const WAREHOUSE = '2b9e0d0c-5f5e-4a57-9a0b-3d1f0c8b7a11'
const LISTED = { devEui: '0101010101010101', productId: 'sensors', deviceId: 'room-101', tags: ['floor1'] }
// More than one page of ChirpStack's List (100 per page).
const WAREHOUSE_DEVICES = Array.from({ length: 101 }, (_, i) => ({ devEui: `70b3d5${String(i).padStart(10, '0')}`, name: `shelf-${i}`, deviceProfileName: 'Shelf sensor' }))

interface ImportRow { devEui: string; productId?: string; deviceId?: string; tags: string[]; result: string; reason?: string }

describe('iothub-edge lorawan import', () => {
  let api: ChirpstackApiServer
  let gateway: GatewayProcess
  let tmp: string
  const importCli = async (args: string[], configFile = gateway.configFile): Promise<{ code: number | null; rows: ImportRow[]; stderr: string }> => {
    const r = await runCli(['lorawan', 'import', '-c', configFile, '--json', ...args], { timeoutMs: 60_000 })
    return { code: r.code, rows: r.stdout ? (JSON.parse(r.stdout) as { devices: ImportRow[] }).devices : [], stderr: r.stderr }
  }
  const children = async (): Promise<{ productId: string; deviceId: string; tags: string[] }[]> => {
    const r = await runCli(['devices', 'list', '-c', gateway.configFile, '--json'])
    return (JSON.parse(r.stdout) as { devices: { productId: string; deviceId: string; tags: string[] }[] }).devices
  }

  beforeAll(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), 'lorawan-import-'))
    api = new ChirpstackApiServer(TOKEN, {
      tenantId: TENANT,
      applications: [
        {
          id: PLANT,
          name: 'Plant 7!',
          devices: [
            { devEui: LISTED.devEui.toUpperCase(), name: 'room 101', deviceProfileName: 'Room sensor' },
            { devEui: 'abcdefabcdefabcd', name: 'boiler', deviceProfileName: 'Boiler', tags: { floor: '2', zone: 'east wing' } },
          ],
        },
        { id: WAREHOUSE, name: 'Warehouse', devices: WAREHOUSE_DEVICES },
      ],
    })
    await api.start()
    gateway = new GatewayProcess({
      gateway: { productId: 'gateways', deviceId: 'gw-01', secret: 'gw-secret' },
      lorawan: {
        // ChirpStack's broker is not part of this test: the adapter keeps trying it in the background.
        chirpstack: { mqtt: { url: `mqtt://127.0.0.1:${await freePort()}` }, api: { url: api.url, token: TOKEN } },
        autoRegister: { productIdFrom: 'applicationName' },
        devices: [LISTED],
      },
      log: { level: 'warn' },
    })
    // Started once and stopped: the data folder and its database exist, no gateway runs.
    await gateway.start()
    await gateway.stop()
  }, 60_000)

  afterAll(async () => {
    await gateway?.close()
    api?.stop()
    if (tmp) await rm(tmp, { recursive: true, force: true })
  })

  it('registers every device of the tenant\'s applications as the child the mapping gives it, in the database when no gateway runs', async () => {
    const dry = await importCli(['--tenant', TENANT, '--dry-run'])
    expect(dry.code, dry.stderr).toBe(0)
    expect(dry.rows).toHaveLength(2 + WAREHOUSE_DEVICES.length)
    expect(dry.rows.filter((r) => r.result !== 'would_create')).toEqual([])
    expect((await children()).filter((c) => c.productId !== 'gateways').map((c) => `${c.productId}/${c.deviceId}`)).toEqual(['sensors/room-101'])

    const r = await importCli(['--tenant', TENANT])
    expect(r.code, r.stderr).toBe(0)
    // The listed device keeps its table entry (and exists since the gateway's start); the rest follow
    // the rule: ProductId from the application's name, DeviceId the devEui, ChirpStack's tags.
    expect(r.rows.find((x) => x.devEui === LISTED.devEui)).toMatchObject({ productId: 'sensors', deviceId: 'room-101', tags: ['floor1'], result: 'exists' })
    expect(r.rows.find((x) => x.devEui === 'abcdefabcdefabcd')).toMatchObject({ productId: 'Plant7', deviceId: 'abcdefabcdefabcd', tags: ['floor_2', 'zone_east_wing'], result: 'created' })
    expect(r.rows.filter((x) => x.productId === 'Warehouse' && x.result === 'created')).toHaveLength(WAREHOUSE_DEVICES.length)
    expect(r.stderr).toContain(`${2 + WAREHOUSE_DEVICES.length} device(s) in ChirpStack: ${1 + WAREHOUSE_DEVICES.length} created, 1 already children, 0 skipped`)
    const now = await children()
    expect(now.find((c) => c.deviceId === 'abcdefabcdefabcd')).toMatchObject({ productId: 'Plant7', tags: ['floor_2', 'zone_east_wing'] })
    expect(now.filter((c) => c.productId === 'Warehouse')).toHaveLength(WAREHOUSE_DEVICES.length)
    expect(api.unauthenticated).toBe(0)
  }, 90_000)

  it('registers through the running gateway\'s API, one application by id, and leaves existing children as they are', async () => {
    api.contents.applications[0]!.devices.push({ devEui: 'fedcbafedcbafedc', name: 'pump', deviceProfileName: 'Pump', tags: { line: 'A' } })
    await gateway.start()
    const r = await importCli(['--application', PLANT])
    expect(r.code, r.stderr).toBe(0)
    expect(r.rows.map((x) => [x.devEui, x.result])).toEqual([
      [LISTED.devEui, 'exists'],
      ['abcdefabcdefabcd', 'exists'],
      ['fedcbafedcbafedc', 'created'],
    ])
    const pump = await gateway.api<{ device: { tags: string[] } }>('GET', '/api/devices/Plant7/fedcbafedcbafedc')
    expect(pump.status).toBe(200)
    expect(pump.body.device.tags).toEqual(['line_A'])
  }, 60_000)

  it('says what is missing: ChirpStack\'s API in the config, the tenant, a token ChirpStack accepts; and skips unmapped devices', async () => {
    const write = async (name: string, lorawan: Record<string, unknown>): Promise<string> => {
      const file = path.join(tmp, `${name}.yaml`)
      await writeFile(file, YAML.stringify({ gateway: { dataDir: path.join(tmp, `${name}-data`) }, lorawan }))
      return file
    }
    const mqtt = { url: 'mqtt://127.0.0.1:1' }
    const noApi = await importCli(['--tenant', TENANT], await write('no-api', { chirpstack: { mqtt } }))
    expect(noApi.code).toBe(78)
    expect(noApi.stderr).toContain('lorawan.chirpstack.api')

    const noTenant = await importCli([], await write('no-tenant', { chirpstack: { mqtt, api: { url: api.url, token: TOKEN } } }))
    expect(noTenant.code).toBe(64)
    expect(noTenant.stderr).toContain('--tenant')

    const refused = await importCli(['--tenant', TENANT], await write('bad-token', { chirpstack: { mqtt, api: { url: api.url, token: 'not-the-key' } } }))
    expect(refused.code).toBe(69)
    expect(refused.stderr).toContain('ApplicationService.List: authorization header missing or invalid')

    // Without lorawan.devices entries or autoRegister nothing maps: listed as skipped, nothing created.
    const unmapped = await importCli(['--tenant', TENANT, '--create'], await write('no-rule', { chirpstack: { mqtt, api: { url: api.url, token: TOKEN, tenantId: TENANT } } }))
    expect(unmapped.code, unmapped.stderr).toBe(0)
    expect(new Set(unmapped.rows.map((x) => x.result))).toEqual(new Set(['skipped']))
    expect(unmapped.rows[0]!.reason).toContain('autoRegister is off')
  }, 60_000)
})
