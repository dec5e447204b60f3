// The audit log's table as both SQL stores keep it (the embedded DuckDB file and PostgreSQL): its
// columns, a row read back, and the filtered listing (newest first, keyset by seq).
import type { AuditEntry, AuditFilter } from '../../gateway/index.js'

export const AUDIT_COLUMNS = 'seq, "at", actor, address, action, resource, outcome, before_etag, after_etag, detail, request_id, prev_hash, hash'

/** A stored row as an entry; `seq` is given converted (DuckDB reads BIGINT as bigint, pg as a number). */
export function auditRow (r: Record<string, unknown>, seq: number): AuditEntry {
  return {
    seq, at: r.at as string, actor: r.actor as string | null, address: r.address as string | null, action: r.action as string,
    resource: r.resource as string, outcome: r.outcome as AuditEntry['outcome'], before: r.before_etag as string | null, after: r.after_etag as string | null,
    detail: r.detail as string | null, requestId: r.request_id as string | null, prevHash: r.prev_hash as string, hash: r.hash as string
  }
}

/** SELECT for GET /v1/audit with bound parameters ($n); `seqParam` types the seq bound for the driver. */
export function auditListQuery<P> (f: AuditFilter, limit: number, seqParam: (seq: number) => P): { sql: string, params: (string | number | P)[] } {
  const where: string[] = []
  const params: (string | number | P)[] = []
  const add = (sql: string, v: string | number | P): void => { params.push(v); where.push(sql.replace('?', `$${params.length}`)) }
  if (f.actor !== undefined) add('actor = ?', f.actor)
  if (f.action !== undefined) add('action = ?', f.action)
  if (f.resource !== undefined) add('starts_with(resource, ?)', f.resource)
  if (f.outcome !== undefined) add('outcome = ?', f.outcome)
  if (f.since !== undefined) add('"at" >= ?', f.since)
  if (f.until !== undefined) add('"at" < ?', f.until)
  if (f.beforeSeq !== undefined) add('seq < ?', seqParam(f.beforeSeq))
  params.push(limit)
  return { sql: `SELECT ${AUDIT_COLUMNS} FROM sg_audit ${where.length > 0 ? 'WHERE ' + where.join(' AND ') : ''} ORDER BY seq DESC LIMIT $${params.length}`, params }
}
