// The machine's RabbitMQ for tests: rabbitmqctl, and RabbitMQ users named after principals (so RabbitMQ
// itself vouches for a producer's `user_id`), deleted by deleteRabbitUsers() afterwards.
import { execFileSync } from 'node:child_process'
import type { ChannelModel } from 'amqplib'

export const AMQP = process.env.STREAMGATE_TEST_AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672'
const users: string[] = []

/**
 * A gateway's RabbitMQ settings with exchanges and an ingest queue of `run`'s own (other test files
 * use the same RabbitMQ), and the auth backend on a free port.
 */
export function bridgeEnv (run: string, url = AMQP): Record<string, string> {
  return {
    STREAMGATE_AMQP_URL: url,
    STREAMGATE_AMQP_INGEST_EXCHANGE: `${run}.ingest`,
    STREAMGATE_AMQP_RECORDS_EXCHANGE: `${run}.records`,
    STREAMGATE_AMQP_INGEST_QUEUE: `${run}.ingest`,
    STREAMGATE_RABBITMQ_AUTH_PORT: '0'
  }
}

type ChannelOpener = Pick<ChannelModel, 'createChannel'>

/** Deletes what a gateway with bridgeEnv(run) declared (its ingest queue and both exchanges), on `conn`. */
export async function deleteBridgeObjects (conn: ChannelOpener, run: string): Promise<void> {
  const ch = await conn.createChannel()
  await ch.deleteQueue(`${run}.ingest`).catch(() => undefined)
  await ch.deleteExchange(`${run}.ingest`).catch(() => undefined)
  await ch.deleteExchange(`${run}.records`).catch(() => undefined)
  await ch.close().catch(() => undefined)
}

export function rabbitmqctl (...args: string[]): void {
  execFileSync('rabbitmqctl', args, { stdio: 'ignore', timeout: 30_000 })
}

/** A RabbitMQ user named after a principal, allowed everything on `/` (streamgate decides what it may ingest). */
export function rabbitUser (name: string, password: string): void {
  rabbitmqctl('add_user', name, password)
  users.push(name)
  rabbitmqctl('set_permissions', '-p', '/', name, '.*', '.*', '.*')
}

/** The AMQP URL of the machine's RabbitMQ with another user's credentials. */
export function amqpUrlAs (user: string, password: string): string {
  const url = new URL(AMQP)
  url.username = user
  url.password = password
  return url.toString()
}

export function deleteRabbitUsers (): void {
  for (const u of users.splice(0)) { try { rabbitmqctl('delete_user', u) } catch { /* already gone */ } }
}

/** Closes the connections RabbitMQ has from clients named `connectionName` (as if the network cut them). */
export function closeRabbitConnections (connectionName: string, reason: string): number {
  // close_connection wants the pid as rabbitmqctl prints it in its table (`<rabbit@host.….0>`), not JSON's `#PID<…>`.
  const out = execFileSync('rabbitmqctl', ['list_connections', 'pid', 'client_properties', '-q', '--no-table-headers'], { encoding: 'utf8', timeout: 30_000 })
  const pids = out.split('\n').filter((line) => line.includes(`{"connection_name","${connectionName}"}`)).map((line) => line.split('\t')[0]!)
  for (const pid of pids) rabbitmqctl('close_connection', pid, reason)
  return pids.length
}
