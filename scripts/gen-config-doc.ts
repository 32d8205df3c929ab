// Generates docs/configuration.md from the one config schema (src/config.ts), so the reference
// can never drift from what the gateway accepts. `npm run docs:config` rewrites the file;
// test/unit/config.test.ts fails when the committed file is stale.
import { writeFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { ConfigSchema } from '../src/config.js'

interface Node {
  type?: string
  description?: string
  default?: unknown
  properties?: Record<string, Node>
  required?: string[]
  items?: Node
  anyOf?: { const?: unknown }[]
  pattern?: string
  minimum?: number
  maximum?: number
  minLength?: number
}

function typeOf(n: Node): string {
  if (n.anyOf) return n.anyOf.map((a) => JSON.stringify(a.const)).join(' \\| ')
  if (n.type === 'array') return `list of ${n.items?.type === 'object' ? 'objects' : (n.items?.type ?? 'values')}`
  return n.type ?? 'any'
}

function constraints(n: Node): string {
  const c: string[] = []
  if (n.pattern) c.push(`pattern \`${n.pattern}\``)
  if (n.minimum !== undefined) c.push(`>= ${n.minimum}`)
  if (n.maximum !== undefined) c.push(`<= ${n.maximum}`)
  if (n.minLength !== undefined) c.push(`min length ${n.minLength}`)
  return c.join(', ')
}

function rows(n: Node, prefix: string, out: string[]): void {
  for (const [key, child] of Object.entries(n.properties ?? {})) {
    const path = prefix ? `${prefix}.${key}` : key
    if (child.type === 'object' && child.properties) {
      out.push(`| \`${path}\` | object | | ${child.description ?? ''} |`)
      rows(child, path, out)
      continue
    }
    const def = child.default === undefined ? (n.required?.includes(key) ? 'required' : '') : `\`${JSON.stringify(child.default)}\``
    const desc = [child.description, constraints(child)].filter(Boolean).join('; ')
    out.push(`| \`${path}\` | ${typeOf(child)} | ${def} | ${desc} |`)
    if (child.type === 'array' && child.items?.properties) rows(child.items, `${path}[]`, out)
  }
}

export function renderConfigDoc(): string {
  const out: string[] = [
    '# Configuration reference',
    '',
    '<!-- Generated from src/config.ts by `npm run docs:config`. Do not edit by hand. -->',
    '',
    'One YAML file, passed with `iothub-edge start -c FILE`. Every key has a working default, so the',
    'gateway also starts with no file at all. `iothub-edge check-config FILE` validates a file without',
    'starting anything; a wrong file stops the start with exit code 78 and one line per problem naming',
    'the key path, e.g. `northbound.url: must be mqtt:// or mqtts://`. Unknown keys are errors (a typo',
    'never silently falls back to a default).',
    '',
    '| key | type | default | meaning |',
    '| --- | --- | --- | --- |',
  ]
  rows(ConfigSchema as unknown as Node, '', out)
  out.push(
    '',
    'Rules checked besides the types:',
    '',
    '- `devices[]`: a product/device pair appears once; in `northbound.mode: devices` every device needs a `secret`.',
    '- `broker.listeners[].port`: no port twice (0 means "any free port").',
    "- A relative `gateway.dataDir`, and every relative file path (`tls.ca`/`cert`/`key` of any section), is resolved against the config file's folder (against the working directory when started without `-c`).",
    '- Every TLS file the config names (CA, certificate, key) must exist and be readable by the user the gateway runs as: `check-config` and `start` name each one that is not, with its key. A LoRaWAN `codec` file that is not there is a warning (its devices\' payloads go up undecoded).',
    '- `store.outbox.maxBytes` absent: half of what the store can use (the free space of the data folder\'s filesystem plus the database), measured at start and never lower than at an earlier start, so that a restart on a full disk does not shrink it.',
    '',
    'Example:',
    '',
    '```yaml',
    'gateway: { productId: gateways, deviceId: site-7, secret: "from-the-hub" }',
    'northbound: { url: "mqtts://hub.example.com:8883", tls: { ca: /etc/iothub-edge/hub-ca.pem } }',
    'broker:',
    '  listeners:',
    '    - { host: 0.0.0.0, port: 1883 }',
    '    - { host: 127.0.0.1, port: 11883, zone: internal }',
    'devices:',
    '  - { productId: thermo, deviceId: t-001, secret: "s3cret", tags: [floor2] }',
    'log: { level: info }',
    '```',
    '',
  )
  return out.join('\n')
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  writeFileSync(new URL('../docs/configuration.md', import.meta.url), renderConfigDoc())
  console.log('docs/configuration.md written')
}
