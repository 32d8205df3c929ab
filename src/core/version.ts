// The gateway's version, from package.json (reported to the hub in update_status and in logs).
import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)
export const VERSION: string = (require('../../package.json') as { version: string }).version
