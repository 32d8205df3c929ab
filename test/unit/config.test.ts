import { describe, expect, it } from 'vitest'
import { readFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { ConfigError, configWarnings, fileProblems, loadConfig, parseConfig } from '../../src/config.js'
import { renderConfigDoc } from '../../scripts/gen-config-doc.js'

function problems(doc: unknown): string[] {
  try {
    parseConfig(doc)
  } catch (err) {
    if (err instanceof ConfigError) return err.problems
    throw err
  }
  return []
}

describe('config', () => {
  it('runs a complete local gateway with no file: defaults for every key', () => {
    const cfg = parseConfig(undefined)
    expect(cfg.broker.listeners).toEqual([
      { host: '0.0.0.0', port: 1883, zone: 'external' },
      { host: '127.0.0.1', port: 11883, zone: 'internal' },
    ])
    expect(cfg.http.port).toBe(8090)
    expect(cfg.northbound).toMatchObject({ mode: 'gateway', keepalive: 60, inflight: 1000, maxRate: 0 })
    expect(cfg.northbound.url).toBeUndefined()
    expect(cfg.store.outbox.rpcRespTtlSeconds).toBe(10)
    expect(Object.isFrozen(cfg.northbound)).toBe(true)
  })

  it('leaves optional adapters out unless their section is in the file (they and their libraries never load)', () => {
    const cfg = parseConfig({}) as Record<string, unknown>
    for (const key of ['serial', 'lorawan', 'coap', 'httpDevices']) expect(cfg[key], key).toBeUndefined()
    expect((parseConfig({ serial: {} }) as Record<string, unknown>).serial).toEqual({ ports: [] })
  })

  it('names the key path of every problem at once', () => {
    const p = problems({
      northbound: { url: 'http://hub', mode: 'cloud', tls: { rejectUnauthorized: 'yes' } },
      broker: { listeners: [{ port: 70000 }], aclDenyAction: 'kick' },
      gatway: {},
    })
    expect(p).toContain('northbound.url: must be mqtt:// or mqtts://')
    expect(p).toContain('northbound.mode: must be one of ["gateway","devices"]')
    expect(p).toContain('northbound.tls.rejectUnauthorized: must be boolean, not a string')
    expect(p).toContain('broker.listeners[0].port: must be <= 65535')
    expect(p).toContain('broker.aclDenyAction: must be one of ["ignore","disconnect"]')
    expect(p.some((l) => l.startsWith('gatway: unknown key'))).toBe(true)
  })

  it('a mistyped key names the one meant; a wrong type says what was given, never the value; a file that is not a mapping says so', () => {
    const p = problems({ gatway: { datadir: './d' }, http: { prot: 8090 }, northbound: { Url: 'mqtt://h' }, broker: { listners: [] } })
    expect(p).toContain('gatway: unknown key (did you mean gateway? check the spelling against docs/configuration.md)')
    expect(p).toContain('http.prot: unknown key (did you mean port? check the spelling against docs/configuration.md)')
    expect(p).toContain('northbound.Url: unknown key (did you mean url? check the spelling against docs/configuration.md)')
    expect(p).toContain('broker.listners: unknown key (did you mean listeners? check the spelling against docs/configuration.md)')
    // Nothing close: no guess.
    expect(problems({ gateway: { colour: 'blue' } })).toEqual(['gateway.colour: unknown key (check the spelling against docs/configuration.md)'])
    expect(problems({ http: { port: 'eighty' } })).toEqual(['http.port: must be integer, not a string'])
    // A secret given as a number is refused without being echoed.
    const secret = problems({ gateway: { secret: 123456789 } })
    expect(secret).toEqual(['gateway.secret: must be string, not a number'])
    expect(problems(['gateway'])).toEqual(['(root): the file must be a YAML mapping of sections (gateway:, broker:, ...), not a list'])
  })

  it('a config file that is missing or a folder: one line that says which', () => {
    const missing = path.join(os.tmpdir(), 'no-such-iothub-edge-config.yaml')
    expect(() => loadConfig(missing)).toThrow(ConfigError)
    const said = (file: string): string[] => {
      try {
        loadConfig(file)
      } catch (err) {
        return (err as ConfigError).problems
      }
      return []
    }
    expect(said(missing)).toEqual([`${missing}: cannot read: there is no such file`])
    expect(said(os.tmpdir())).toEqual([`${os.tmpdir()}: cannot read: it is a folder; give the config file in it`])
  })

  it('warns about an internal listener (no login, no ACL) bound beyond the loopback', () => {
    expect(configWarnings(parseConfig({})).filter((w) => w.startsWith('broker.'))).toEqual([])
    const open = parseConfig({ broker: { listeners: [{ port: 1883 }, { host: '0.0.0.0', port: 11883, zone: 'internal' }, { host: '::1', port: 11884, zone: 'internal' }] } })
    expect(configWarnings(open)).toEqual([expect.stringMatching(/^broker\.listeners\[1\]: an internal listener \(no login, no ACL\) on 0\.0\.0\.0:11883: anyone who reaches it may publish and subscribe to everything.*bind it to 127\.0\.0\.1/)])
  })

  it('http.tls: cert and key together, or selfSigned, not both; paths relative to the config file; sessions default to 30 min idle, 12 h', () => {
    expect(problems({ http: { tls: {} } })).toContain('http.tls: set both cert and key (PEM files), or selfSigned: true')
    expect(problems({ http: { tls: { cert: 'a.pem' } } })).toContain('http.tls: set both cert and key (PEM files), or selfSigned: true')
    expect(problems({ http: { tls: { cert: 'a.pem', key: 'a.key', selfSigned: true } } })).toContain('http.tls: either cert and key, or selfSigned: true, not both')
    const cfg = parseConfig({ http: { tls: { cert: 'certs/ui.pem', key: 'certs/ui.key' } } }, '/etc/iothub-edge')
    expect(cfg.http.tls).toEqual({ cert: '/etc/iothub-edge/certs/ui.pem', key: '/etc/iothub-edge/certs/ui.key', selfSigned: false })
    expect(fileProblems(cfg)).toEqual(['http.tls.cert: /etc/iothub-edge/certs/ui.pem does not exist', 'http.tls.key: /etc/iothub-edge/certs/ui.key does not exist'])
    expect(parseConfig({}).http.tls).toBeUndefined()
    expect(parseConfig({}).http.session).toEqual({ idleTimeoutSeconds: 1800, maxLifetimeSeconds: 43_200 })
  })

  it('requires a secret per device in devices mode, and refuses duplicates', () => {
    const p = problems({
      northbound: { url: 'mqtt://hub', mode: 'devices' },
      devices: [
        { productId: 'p', deviceId: 'd', secret: 's' },
        { productId: 'p', deviceId: 'd', secret: 's' },
        { productId: 'p', deviceId: 'e' },
      ],
    })
    expect(p).toContain('devices[1]: duplicate device p/d')
    expect(p.some((l) => l.startsWith('devices[2].secret: required'))).toBe(true)
  })

  it('refuses identifiers the hub would not accept', () => {
    expect(problems({ devices: [{ productId: 'a/b', deviceId: 'd' }] })[0]).toMatch(/^devices\[0\]\.productId: /)
  })

  it('docs/configuration.md is generated from the schema and current (npm run docs:config)', () => {
    const committed = readFileSync(new URL('../../docs/configuration.md', import.meta.url), 'utf8')
    expect(committed).toBe(renderConfigDoc())
  })
})
