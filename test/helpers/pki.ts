// Certificates for TLS tests, made with openssl (Debian's, in scripts/test.sh): a CA of the test's
// own and a certificate for 127.0.0.1 signed by it, so that peers verify as in production.
import { execFileSync } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import path from 'node:path'

export interface TestPki {
  ca: string
  cert: string
  key: string
}

/** A CA and a certificate for 127.0.0.1 (and localhost) signed by it, as files `{dir}/{name}-*`. */
export function makeCa(dir: string, name: string): TestPki {
  const f = (x: string): string => path.join(dir, `${name}-${x}`)
  const ossl = (...args: string[]): void => void execFileSync('openssl', args, { stdio: 'ignore' })
  ossl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', `/CN=${name} test CA`, '-keyout', f('ca.key'), '-out', f('ca.pem'))
  ossl('req', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=127.0.0.1', '-keyout', f('key.pem'), '-out', f('csr.pem'))
  writeFileSync(f('ext.cnf'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\n')
  ossl('x509', '-req', '-in', f('csr.pem'), '-CA', f('ca.pem'), '-CAkey', f('ca.key'), '-CAcreateserial', '-days', '2', '-extfile', f('ext.cnf'), '-out', f('cert.pem'))
  return { ca: f('ca.pem'), cert: f('cert.pem'), key: f('key.pem') }
}
