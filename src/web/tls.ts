// TLS for the web server (http.tls): the operator's certificate and key, or a self-signed pair the
// gateway makes on its first start into the data folder (key 0600) and reuses afterwards. Made in
// JavaScript (selfsigned, on Node's WebCrypto): no openssl binary is needed on the box. The SHA-256
// fingerprint is logged at each start, for a technician to compare with what the browser shows.
import { X509Certificate, createPrivateKey } from 'node:crypto'
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { ErrorCodes, StartError } from '../core/errors.js'

export const TLS_KEY_FILE = 'ui-tls-key.pem'
export const TLS_CERT_FILE = 'ui-tls-cert.pem'
const SELF_SIGNED_DAYS = 3650

export interface HttpTlsConfig {
  cert?: string
  key?: string
  selfSigned?: boolean
}

export interface ServerTls {
  key: string
  cert: string
  /** `AB:CD:...`, as browsers show it. */
  fingerprint256: string
  certFile: string
  selfSigned: boolean
  /** True when the self-signed pair was made at this start. */
  created: boolean
}

/** The configured TLS material, or undefined when http.tls is not set (plain HTTP). */
export async function loadServerTls(cfg: HttpTlsConfig | undefined, dataDir: string): Promise<ServerTls | undefined> {
  if (!cfg) return undefined
  if (cfg.cert && cfg.key) return { ...checkedPair(cfg.cert, cfg.key, 'http.tls'), certFile: cfg.cert, selfSigned: false, created: false }
  if (!cfg.selfSigned) return undefined
  const certFile = path.join(dataDir, TLS_CERT_FILE)
  const keyFile = path.join(dataDir, TLS_KEY_FILE)
  if (existsSync(certFile) && existsSync(keyFile)) {
    const pair = checkedPair(certFile, keyFile, 'http.tls.selfSigned')
    if (new Date(new X509Certificate(pair.cert).validTo).getTime() > Date.now()) return { ...pair, certFile, selfSigned: true, created: false }
  }
  let made: { private: string; cert: string }
  try {
    // Loaded only here (about 1 MB of heap with its ASN.1 and PKI code): most starts reuse the pair.
    const { default: selfsigned } = await import('selfsigned')
    made = await selfsigned.generate([{ name: 'commonName', value: `iothub-edge ${os.hostname()}` }], {
      keyType: 'ec',
      curve: 'P-256',
      algorithm: 'sha256',
      notAfterDate: new Date(Date.now() + SELF_SIGNED_DAYS * 86_400_000),
      extensions: [
        { name: 'basicConstraints', cA: false },
        { name: 'keyUsage', digitalSignature: true, critical: true },
        { name: 'extKeyUsage', serverAuth: true },
        { name: 'subjectAltName', altNames: subjectAltNames() },
      ],
    })
    rmSync(keyFile, { force: true })
    writeFileSync(keyFile, made.private, { mode: 0o600, flag: 'wx' })
    writeFileSync(certFile, made.cert, { mode: 0o644 })
  } catch (err) {
    throw new StartError(ErrorCodes.HTTP_TLS_FAILED, 'http.tls.selfSigned', `could not make or write the self-signed certificate in ${dataDir} (${(err as Error).message}): make the data folder writable, or configure http.tls.cert and key`)
  }
  return { key: made.private, cert: made.cert, fingerprint256: new X509Certificate(made.cert).fingerprint256, certFile, selfSigned: true, created: true }
}

/** The names a browser or the CLI may reach this box by: localhost, the hostname, its addresses now. */
function subjectAltNames(): { type: 2 | 7; value?: string; ip?: string }[] {
  const names = [...new Set(['localhost', os.hostname(), `${os.hostname()}.local`])].map((value) => ({ type: 2 as const, value }))
  const ips = new Set(['127.0.0.1', '::1'])
  for (const list of Object.values(os.networkInterfaces())) for (const a of list ?? []) if (!a.internal && !a.address.startsWith('fe80')) ips.add(a.address)
  return [...names, ...[...ips].map((ip) => ({ type: 7 as const, ip }))]
}

function checkedPair(certFile: string, keyFile: string, key: string): { key: string; cert: string; fingerprint256: string } {
  let cert: string
  let pem: string
  try {
    cert = readFileSync(certFile, 'utf8')
    pem = readFileSync(keyFile, 'utf8')
  } catch (err) {
    throw new StartError(ErrorCodes.HTTP_TLS_FAILED, key, `cannot read ${(err as NodeJS.ErrnoException).path ?? certFile} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`)
  }
  try {
    const x509 = new X509Certificate(cert)
    if (!x509.checkPrivateKey(createPrivateKey(pem))) throw new Error('the key is not the certificate\'s')
    return { key: pem, cert, fingerprint256: x509.fingerprint256 }
  } catch (err) {
    throw new StartError(ErrorCodes.HTTP_TLS_FAILED, key, `${certFile} and ${keyFile} are not a usable PEM certificate and its private key (${(err as Error).message})`)
  }
}
