// What an adapter folder hands the registry: how to build the adapter from its context and its own
// section of the config, and optionally route plugins: diagnostics under /api/adapters/{name}/
// (behind the API token), and device-facing routes under /devices/ (no token: the adapter
// authenticates each device itself, e.g. HTTP ingest with the device's own credentials), and
// optionally command-line tools (`iothub-edge lorawan import`).
import type { FastifyPluginAsync } from 'fastify'
import type { AdapterContext } from '../core/adapter-context.js'
import type { DeviceRef, SouthboundAdapter } from '../core/types.js'

export interface AdapterInstance {
  adapter: SouthboundAdapter
  /**
   * Why the adapter is degraded right now, if it is (e.g. `port_down:line1`): reported in
   * /api/health as `{adapter}:{reason}` while the adapter keeps running.
   */
  health?: () => string[]
  routes?: FastifyPluginAsync
  /**
   * Routes devices call, mounted under /devices/ on the gateway's HTTP listener, outside /api and
   * without the API token: the plugin must authenticate every request with the device's own
   * credentials (secure by default: nothing in it may answer an anonymous caller).
   */
  deviceRoutes?: FastifyPluginAsync
  /**
   * Publish on the adapter's local broker for trusted on-site consumers (the rules' `republish`);
   * only an adapter that runs a broker offers it.
   */
  localPublish?: (topic: string, payload: Buffer, retain: boolean) => Promise<void>
}

/** What the command line hands an adapter's tool (`iothub-edge {key} {tool} ...`). */
export interface ToolContext<C> {
  /** The adapter's section of the config file. */
  config: C
  /** Positional arguments after the tool's name. */
  args: string[]
  /** The command line's options (--json, --dry-run, and those the tool documents in its usage). */
  options: Readonly<Record<string, string | boolean | undefined>>
  /**
   * Make sure these children exist: each missing one is created with its tags and a secret nobody is
   * told (the adapter speaks for it), through the running gateway's API or, when none runs, in its
   * database; existing ones are left as they are.
   */
  registerChildren(children: { device: DeviceRef; tags: string[] }[]): Promise<('created' | 'exists')[]>
  /** The result: printed as the table on a terminal, as JSON when piped or with --json. */
  report(result: { json: unknown; table: { headers: string[]; rows: string[][] } }): void
  /** A line for the operator on stderr (problems, hints, a summary). */
  err(text: string): void
}

/** A command-line tool of an adapter, e.g. `iothub-edge lorawan import`. */
export interface AdapterTool<C> {
  /** Its usage after `iothub-edge {key} `, one or two lines. */
  usage: string
  /** The long options it takes (besides --config and --help): any other is refused as a usage error. */
  options?: readonly string[]
  /** Resolves with the exit code. */
  run(t: ToolContext<C>): Promise<number>
}

export interface AdapterModule<C> {
  create(ctx: AdapterContext, config: C): AdapterInstance
  tools?: Record<string, AdapterTool<C>>
}
