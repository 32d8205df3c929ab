// `iothub-edge lorawan import` (issue 8, "Provisioning help"): with ChirpStack's gRPC API configured,
// list its applications (ApplicationService.List, per tenant) and their devices (DeviceService.List)
// and register each device as the child the mapping gives it (lorawan.devices, else the
// autoRegister rule), before it is ever heard from: the hub can be told about the children, and
// commands for them wait in the gateway from then on.
import type { AdapterTool } from '../adapter-module.js'
import { ChirpstackApi, type ChirpstackApplication } from './chirpstack-api.js'
import { DeviceMap } from './device-map.js'
import type { LorawanConfig } from './schema.js'

// sysexits.h, as the rest of the command line: EX_USAGE, EX_CONFIG, EX_UNAVAILABLE.
const EXIT_USAGE = 64
const EXIT_CONFIG = 78
const EXIT_UNAVAILABLE = 69

interface ImportRow {
  devEui: string
  name: string
  application: string
  deviceProfile: string
  productId?: string
  deviceId?: string
  tags: string[]
  result: 'created' | 'exists' | 'would_create' | 'skipped'
  reason?: string
}

export const importTool: AdapterTool<LorawanConfig> = {
  usage:
    'import [-c FILE] [--tenant UUID] [--application UUID[,UUID]] [--dry-run] [--json] [--create]\n' +
    '      register ChirpStack\'s devices as children by the mapping (needs lorawan.chirpstack.api;\n' +
    '      --create: allow a new database when the data folder has none and no gateway runs)',
  options: ['tenant', 'application', 'dry-run', 'json', 'create'],
  async run(t) {
    const apiCfg = t.config.chirpstack.api
    if (!apiCfg) {
      t.err('lorawan import lists devices through ChirpStack\'s gRPC API: set lorawan.chirpstack.api {url, token} (an API key made in ChirpStack)\n')
      return EXIT_CONFIG
    }
    const tenant = (t.options.tenant as string | undefined) ?? apiCfg.tenantId
    const only = typeof t.options.application === 'string' ? t.options.application.split(',').map((s) => s.trim()).filter(Boolean) : []
    if (!tenant && only.length === 0) {
      t.err(
        'lorawan import needs the ChirpStack tenant whose applications to list: --tenant UUID or lorawan.chirpstack.api.tenantId ' +
          '(ChirpStack UI: Tenants, the tenant\'s id), or --application UUID for single applications\n',
      )
      return EXIT_USAGE
    }
    const map = new DeviceMap(t.config)
    const api = new ChirpstackApi(apiCfg)
    const rows: ImportRow[] = []
    try {
      let apps: ChirpstackApplication[]
      if (tenant) {
        apps = await api.listApplications(tenant)
        if (only.length) apps = apps.filter((a) => only.includes(a.id))
      } else {
        apps = await Promise.all(only.map((id) => api.getApplication(id)))
      }
      for (const app of apps) {
        for (const d of await api.listDevices(app.id)) {
          const base = { devEui: d.devEui, name: d.name, application: app.name, deviceProfile: d.deviceProfileName }
          const mapping = map.map({ devEui: d.devEui, applicationId: app.id, applicationName: app.name, deviceProfileName: d.deviceProfileName, deviceName: d.name, tags: d.tags })
          if (!mapping) {
            rows.push({ ...base, tags: [], result: 'skipped', reason: t.config.autoRegister ? 'its name gives no ProductId' : 'not in lorawan.devices and lorawan.autoRegister is off' })
            continue
          }
          rows.push({ ...base, ...mapping.device, tags: mapping.tags, result: 'would_create' })
        }
      }
    } catch (err) {
      t.err(`lorawan import: ${(err as Error).message} (API ${apiCfg.url})\n`)
      return EXIT_UNAVAILABLE
    } finally {
      api.close()
    }
    const wanted = rows.filter((r) => r.result === 'would_create')
    if (!t.options['dry-run'] && wanted.length) {
      const results = await t.registerChildren(wanted.map((r) => ({ device: { productId: r.productId!, deviceId: r.deviceId! }, tags: r.tags })))
      wanted.forEach((r, i) => (r.result = results[i]))
    }
    const count = (what: ImportRow['result']): number => rows.filter((r) => r.result === what).length
    t.report({
      json: { devices: rows },
      table: {
        headers: ['DEVEUI', 'NAME', 'APPLICATION', 'CHILD', 'TAGS', 'RESULT'],
        rows: rows.map((r) => [r.devEui, r.name, r.application, r.productId ? `${r.productId}/${r.deviceId}` : '-', r.tags.join(',') || '-', r.reason ? `${r.result}: ${r.reason}` : r.result]),
      },
    })
    t.err(
      t.options['dry-run']
        ? `${rows.length} device(s) in ChirpStack: ${count('would_create')} would be registered (existing ones are left as they are), ${count('skipped')} skipped\n`
        : `${rows.length} device(s) in ChirpStack: ${count('created')} created, ${count('exists')} already children, ${count('skipped')} skipped\n`,
    )
    return 0
  },
}
