// Stable error codes, one catalogue (STYLE.md, fastify's lib/errors.js). Every code here is emitted
// somewhere in src/ and explained, with what to do, in docs/operators/troubleshooting.md; a unit
// test holds both true.
export const ErrorCodes = {
  /** The config file is wrong (the CLI exits 78), or a setting cannot work on this machine. */
  CONFIG_INVALID: 'IHE_CONFIG_INVALID',
  /** The data disk is full: nothing more is acknowledged until there is room. */
  STORE_FULL: 'IHE_STORE_FULL',
  /** SQLite failed for another reason. */
  STORE_FAILED: 'IHE_STORE_FAILED',
  /** A device used a topic that is not PROTOCOL.md's. */
  BAD_TOPIC: 'IHE_BAD_TOPIC',
  /** A device published or subscribed outside its rights. */
  ACL_DENIED: 'IHE_ACL_DENIED',
  /** A device was refused at connect (unknown, disabled, wrong secret). */
  AUTH_FAILED: 'IHE_AUTH_FAILED',
  /** An MQTT listener could not bind. */
  LISTENER_FAILED: 'IHE_LISTENER_FAILED',
  /** The hub link failed, or the hub sent something unusable. */
  NORTHBOUND: 'IHE_NORTHBOUND',
  /** A southbound adapter failed to start or stopped working; the rest of the gateway carries on. */
  ADAPTER_FAILED: 'IHE_ADAPTER_FAILED',
  /** A device spoke a protocol version the broker does not (MQTT 5; only 3.1.1 and 3.1 are served). */
  UNSUPPORTED_PROTOCOL: 'IHE_UNSUPPORTED_PROTOCOL',
  /** Another live gateway holds the data folder's lock. */
  DATA_DIR_BUSY: 'IHE_DATA_DIR_BUSY',
  /** The data folder cannot be created or written. */
  DATA_DIR_UNWRITABLE: 'IHE_DATA_DIR_UNWRITABLE',
  /** A local rule failed on a message (the message went on unchanged), or its output could not be stored or republished. */
  RULE_FAILED: 'IHE_RULE_FAILED',
  /** The HTTP API could not bind its port. */
  HTTP_LISTEN_FAILED: 'IHE_HTTP_LISTEN_FAILED',
  /** history.db was unusable (damaged, not a database): moved aside and made anew; the outbox is untouched. */
  HISTORY_QUARANTINED: 'IHE_HISTORY_QUARANTINED',
  /** The local history could not write a batch (disk full, I/O error); that batch is not recorded. */
  HISTORY_FAILED: 'IHE_HISTORY_FAILED',
  /** The local history fell behind and skipped uplinks (they still went to the hub). */
  HISTORY_BEHIND: 'IHE_HISTORY_BEHIND',
  /** A device reached store.history.maxSeriesPerDevice: samples of further keys are not recorded. */
  HISTORY_SERIES_CAP: 'IHE_HISTORY_SERIES_CAP',
  /** The OTA relay could not fetch, verify or keep an image (the jobs waiting for it were answered upstream). */
  OTA_FAILED: 'IHE_OTA_FAILED',
  /** A client broke an MQTT 3.1.1 rule the broker enforces (ill-formed UTF-8, packet id 0, ...): connection closed. */
  MQTT_PROTOCOL_VIOLATION: 'IHE_MQTT_PROTOCOL_VIOLATION',
  /** A client subscribed with `$queue/`, a malformed `$share/`, or any `$share/` with broker.mqtt5 on: SUBACK 0x80. */
  SHARED_SUBSCRIPTION: 'IHE_SHARED_SUBSCRIPTION',
  /** Five failed web UI logins (or setup codes) within a minute from one address or for one username: further attempts get 429 for a minute. */
  UI_LOGIN_RATE_LIMITED: 'IHE_UI_LOGIN_RATE_LIMITED',
  /** The web server's TLS certificate or key (http.tls) cannot be read, made or used. */
  HTTP_TLS_FAILED: 'IHE_HTTP_TLS_FAILED',
  /** gateway.db was damaged: moved aside, its readable rows salvaged into a fresh one; degraded until acknowledged. */
  STORE_SALVAGED: 'IHE_STORE_SALVAGED',
  /** SQLite found the store damaged while running: the gateway exits so that the next start checks and salvages it. */
  STORE_CORRUPT: 'IHE_STORE_CORRUPT',
  /** ota.db was unusable (damaged, not a database): moved aside and made anew; its jobs and cached images are forgotten. */
  OTA_QUARANTINED: 'IHE_OTA_QUARANTINED',
  /** broker.db (the local broker's persistent sessions, retained messages, wills) could not be opened or written. */
  BROKER_SESSIONS_FAILED: 'IHE_BROKER_SESSIONS_FAILED',
  /** A persistent session's queue on the local broker went over broker.maxQueuedMessages or maxQueuedBytes: its oldest messages were dropped. */
  BROKER_QUEUE_FULL: 'IHE_BROKER_QUEUE_FULL',
  /** broker.db was damaged: moved aside, its readable rows salvaged into a fresh one; degraded until acknowledged. */
  BROKER_SESSIONS_SALVAGED: 'IHE_BROKER_SESSIONS_SALVAGED',
  /** A database, folder or key in the data folder that the gateway's user may not write or read (it belongs to root or another user): the start stops and says which and what to run. */
  DATA_FILE_UNWRITABLE: 'IHE_DATA_FILE_UNWRITABLE',
} as const

export type ErrorCode = (typeof ErrorCodes)[keyof typeof ErrorCodes]

/**
 * A failure that stops the start, told the way the config errors are: the key to look at, the path
 * or address involved, what to do, and a code from this catalogue.
 */
export class StartError extends Error {
  constructor(
    readonly code: ErrorCode,
    readonly key: string,
    message: string,
  ) {
    super(`${key}: ${message}`)
    this.name = 'StartError'
  }
}
