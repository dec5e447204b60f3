// The machine's PostgreSQL for tests (trust auth, database `test`): a schema of its own per test file,
// dropped afterwards, so runs never see each other's tables or notifications.
import pg from 'pg'
import { uniqueId } from '../helpers.js'

export const PG = process.env.STREAMGATE_TEST_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/test'

export interface PgSchema {
  /** STREAMGATE_METADATA_URL for gateways using this schema. */
  readonly url: string
  readonly name: string
  /** Runs SQL on the database (as the test, not as a gateway). */
  query (sql: string, params?: unknown[]): Promise<pg.QueryResult>
  drop (): Promise<void>
}

export async function pgSchema (): Promise<PgSchema> {
  const name = uniqueId('sg').toLowerCase().replace(/[^a-z0-9_]/g, '_')
  const admin = new pg.Client({ connectionString: PG })
  await admin.connect()
  await admin.query(`CREATE SCHEMA "${name}"`)
  const sep = PG.includes('?') ? '&' : '?'
  return {
    url: `${PG}${sep}options=${encodeURIComponent(`-c search_path=${name}`)}`,
    name,
    query: (sql, params = []) => admin.query(sql, params),
    async drop () {
      await admin.query(`DROP SCHEMA IF EXISTS "${name}" CASCADE`).catch(() => undefined)
      await admin.end().catch(() => undefined)
    }
  }
}
