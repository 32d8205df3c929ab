// Files the gateway serves its devices on site (OTA images), by an unguessable token in the URL the
// device was given. The transports (the web server's /ota/, the CoAP adapter's /ota/) serve byte
// ranges of the file; what the file is and how long the token holds is the provider's business
// (src/ota, plugged in by the composition root). The core only carries the port between them.
import type { Transport } from './types.js'

export interface LocalFile {
  /** Absolute path of a complete, verified file: read ranges of it, never the whole into memory. */
  path: string
  size: number
  /** Strong validator of the content: hex, 16 characters (8 bytes, what a CoAP ETag can hold). */
  etag: string
  /** Bytes of it the transport sent (the job's view and the metrics count them). */
  served(bytes: number, transport: Transport): void
}

export interface LocalFiles {
  /** The file behind a token; undefined when the token is unknown, expired or its job ended. */
  open(token: string): LocalFile | undefined
}

/** A token as it may appear in a URL path segment (base64url, 16-64 characters). */
export const isFileToken = (s: string): boolean => /^[A-Za-z0-9_-]{16,64}$/.test(s)
