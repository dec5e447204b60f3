// Management operations. Each one runs alone for its resource (a per-resource lock, so an If-Match
// check and the write it guards cannot interleave with another write), persists through the
// MetadataStore, then updates the in-memory state the data path reads, records an audit entry naming
// who did it, from where, and the resource's ETag before and after, and announces the change so live
// sessions follow it (a revoked key or a disabled principal is disconnected).
import { createHash } from 'node:crypto'
import { EventEmitter } from 'node:events'
import { z } from 'zod'
import {
  AccessState, actions, generateKeyId, generateSecret, hashKey, principalKinds,
  type ApiKey, type Grant, type Principal
} from './access.js'
import type { AuditLog } from './audit.js'
import { type Catalog, type Dataset, type DatasetSchema, datasetInputSchema, datasetSchemaSchema, fieldSpec as kind } from './datasets.js'
import { StreamgateError } from './errors.js'
import { type DatasetTables, isShared, type MetadataChange, type MetadataStore } from './ports.js'
import type { Rejects } from './rejects.js'
import { PRINCIPAL_ID } from './topics.js'

export const BOOTSTRAP_ADMIN = 'admin'
export const BOOTSTRAP_KEY_ID = 'key_bootstrap'

const principalId = z.string().regex(PRINCIPAL_ID, 'must match ^[A-Za-z0-9_][A-Za-z0-9_:@-]{0,127}$ (no +, #, /, ., $ or NUL)')

export const principalInputSchema = z.strictObject({
  id: principalId,
  kind: z.enum(principalKinds),
  description: z.string().max(1024).default(''),
  disabled: z.boolean().default(false)
}).meta({ id: 'PrincipalInput' })

export const principalUpdateSchema = z.strictObject({
  description: z.string().max(1024).optional(),
  disabled: z.boolean().optional()
}).meta({ id: 'PrincipalUpdate' })

export const keyInputSchema = z.strictObject({
  description: z.string().max(256).default(''),
  expiresAt: z.iso.datetime({ offset: true }).nullable().default(null)
}).meta({ id: 'KeyInput' })

export const keyRotateSchema = z.strictObject({
  /** How long the old key keeps working (0: revoked at once). */
  graceSeconds: z.number().int().min(0).max(30 * 86_400).default(0)
}).meta({ id: 'KeyRotate' })

export const grantSchema = z.strictObject({
  principal: principalId,
  actions: z.array(z.enum(actions)).min(1).max(4),
  devices: z.array(z.union([z.literal('+'), principalId])).min(1).max(10_000).optional()
}).meta({ id: 'GrantInput' })

export const grantsInputSchema = z.strictObject({
  grants: z.array(grantSchema).max(10_000)
}).meta({ id: 'GrantsInput' })

export const datasetUpdateSchema = z.strictObject({
  description: z.string().max(1024).optional(),
  schema: datasetSchemaSchema.optional()
}).meta({ id: 'DatasetUpdate' })

export type DatasetInput = z.output<typeof datasetInputSchema>
export type DatasetUpdate = z.output<typeof datasetUpdateSchema>
export type PrincipalInput = z.output<typeof principalInputSchema>
export type PrincipalUpdate = z.output<typeof principalUpdateSchema>
export type KeyInput = z.output<typeof keyInputSchema>
export type KeyRotate = z.output<typeof keyRotateSchema>
export type GrantInput = z.output<typeof grantSchema>
export type GrantsInput = z.output<typeof grantsInputSchema>

/** Who asks for a change, for the audit log. */
export interface Actor {
  readonly principal: string | null
  readonly address: string | null
  readonly requestId: string | null
}

export const SYSTEM: Actor = { principal: 'system', address: null, requestId: null }

/** A strong ETag over a resource's public representation. */
export function etagOf (value: unknown): string {
  return '"' + createHash('sha256').update(JSON.stringify(value)).digest('base64url').slice(0, 27) + '"'
}

/**
 * Checks If-Match (RFC 9110 13.1.1: `*` or a list of ETags; weak ones never match) against the
 * current ETag. Absent and required: 428. Present and not matching: 412, and nothing changes.
 */
export function checkIfMatch (current: string, ifMatch: string | undefined, required: boolean): void {
  if (ifMatch === undefined) {
    if (required) throw new StreamgateError('SG_ERR_PRECONDITION_REQUIRED', `send If-Match with the ETag from a GET (current: ${current})`, { field: 'If-Match', etag: current })
    return
  }
  const tags = ifMatch.split(',').map((t) => t.trim())
  if (tags.includes('*') || tags.includes(current)) return
  throw new StreamgateError('SG_ERR_PRECONDITION_FAILED', `the resource changed since it was read (current ETag ${current})`, { field: 'If-Match', etag: current })
}

/** What makes `next` unable to read what `prev` accepted (empty: compatible). */
export function incompatibilities (prev: DatasetSchema, next: DatasetSchema): string[] {
  const out: string[] = []
  if (prev.timestamp !== next.timestamp) out.push(`the timestamp field changes from ${prev.timestamp ?? '(arrival time)'} to ${next.timestamp ?? '(arrival time)'}`)
  for (const t of prev.tags) if (!next.tags.includes(t)) out.push(`tag ${t} is removed`)
  for (const [name, spec] of Object.entries(prev.fields)) {
    const after = next.fields[name]
    if (after === undefined) { out.push(`field ${name} is removed`); continue }
    if (kind(after).type !== kind(spec).type) out.push(`field ${name} changes type from ${kind(spec).type} to ${kind(after).type}`)
    if (kind(after).required && !kind(spec).required) out.push(`field ${name} becomes required`)
  }
  for (const [name, spec] of Object.entries(next.fields)) {
    if (prev.fields[name] === undefined && kind(spec).required) out.push(`new field ${name} is required`)
  }
  return out
}

export interface ManagementEvents {
  keyRevoked: [key: ApiKey]
  /** Disabled or deleted: its sessions end. */
  principalLocked: [principal: string]
  grantsChanged: [dataset: string]
  datasetDeleted: [dataset: string]
}

export interface Page<T> { readonly items: T[], readonly next: string | null }

/** Keyset page over items sorted by id: `after` is the last id of the previous page. */
function page<T extends { id: string }> (sorted: readonly T[], after: string | undefined, limit: number): Page<T> {
  let i = 0
  if (after !== undefined) while (i < sorted.length && sorted[i]!.id <= after) i++
  const items = sorted.slice(i, i + limit)
  return { items, next: i + limit < sorted.length && items.length > 0 ? items.at(-1)!.id : null }
}

const byId = <T extends { id: string }>(a: T, b: T): number => a.id < b.id ? -1 : a.id > b.id ? 1 : 0

export interface ManagementDeps {
  readonly store: MetadataStore
  readonly access: AccessState
  readonly catalog: Catalog
  readonly sinks: readonly DatasetTables[]
  readonly rejects: Rejects
  readonly audit: AuditLog
  /** Rows stored for a dataset (a delete without purge is refused when there are any). */
  readonly storedCount: (dataset: Dataset) => Promise<number>
  /** The journal position of the last append made so far (journal.queuedSeq). */
  readonly queuedSeq: () => number
  /** Resolves once the records sink has stored everything up to `seq`; rejects after `timeoutMs`. */
  readonly drained: (seq: number, timeoutMs: number) => Promise<void>
  /**
   * The sinks' tables are this node's own (the embedded store), not shared with other nodes (QuestDB):
   * a dataset another node deletes is dropped here too. Only matters with a shared metadata store.
   */
  readonly localTables?: boolean
}

export class Management extends EventEmitter<ManagementEvents> {
  readonly access: AccessState
  readonly catalog: Catalog
  private readonly locks = new Map<string, Promise<unknown>>()
  /** Datasets loaded from a shared store without this node's sinceSeq: added by settle(). */
  private unsettled: Dataset[][] = []
  /** Other nodes' changes that arrive before settle(): applied by it. */
  private early: MetadataChange[] | null = []

  constructor (private readonly deps: ManagementDeps) {
    super()
    this.access = deps.access
    this.catalog = deps.catalog
  }

  /** Runs `fn` after every earlier call for the same resource key has finished. */
  private exclusive<T> (key: string, fn: () => Promise<T>): Promise<T> {
    const prior = this.locks.get(key) ?? Promise.resolve()
    const run = prior.then(fn, fn)
    const tail = run.catch(() => undefined)
    this.locks.set(key, tail)
    void tail.then(() => { if (this.locks.get(key) === tail) this.locks.delete(key) })
    return run
  }

  private async audited (actor: Actor, action: string, resource: string, before: string | null, after: string | null, detail: string | null = null): Promise<void> {
    await this.deps.audit.append({ actor: actor.principal, address: actor.address, requestId: actor.requestId, action, resource, outcome: 'ok', before, after, detail })
  }

  /** Records an operator action that changes no stored resource (e.g. ending a session). */
  async note (actor: Actor, action: string, resource: string, detail: string): Promise<void> {
    await this.audited(actor, action, resource, null, null, detail)
  }

  /** Records a denied access (not awaited: denials must not slow the refusal down). */
  denied (actor: Actor, action: string, resource: string, detail: string): void {
    this.deps.audit.record({ actor: actor.principal, address: actor.address, requestId: actor.requestId, action, resource, outcome: 'denied', before: null, after: null, detail })
  }

  /** Loads the metadata into memory and makes sure every sink has a table for every dataset. */
  async load (): Promise<void> {
    const snap = await this.deps.store.load()
    for (const p of snap.principals) this.access.putPrincipal(p)
    for (const k of snap.keys) this.access.putKey(k)
    const grouped = new Map<string, Grant[]>()
    for (const g of snap.grants) {
      let list = grouped.get(g.dataset)
      if (list === undefined) grouped.set(g.dataset, list = [])
      list.push(g)
    }
    const current = new Map(snap.datasets.map((d) => [d.id, d]))
    const versions = new Map<string, Dataset[]>()
    for (const v of snap.datasetVersions) {
      if (!current.has(v.id) || v.version >= current.get(v.id)!.version) continue
      let list = versions.get(v.id)
      if (list === undefined) versions.set(v.id, list = [])
      list.push(v)
    }
    for (const d of snap.datasets) {
      this.access.setDatasetGrants(d.id, grouped.get(d.id) ?? [])
      // Earlier versions first: entries accepted under them may still wait in the journal.
      const all = [...(versions.get(d.id) ?? []).sort((a, b) => a.version - b.version), d]
      // From a shared store, a dataset this node never had: its sinceSeq is this node's journal end (settle()).
      if (d.sinceSeq === -1) this.unsettled.push(all)
      else await this.putDataset(all)
    }
  }

  /** Puts a dataset's versions (oldest first, current last) into the catalog and every sink. */
  private async putDataset (all: readonly Dataset[]): Promise<void> {
    for (const v of all) {
      for (const s of this.deps.sinks) await s.prepareDataset(v)
      this.catalog.putVersion(v)
    }
  }

  /**
   * With a shared store, once the journal is open (`seq` is its end): datasets this node did not have
   * yet start there, and the changes other nodes made meanwhile are applied. Without one, nothing to do.
   */
  async settle (seq: number): Promise<void> {
    for (const all of this.unsettled.splice(0)) await this.adopt(all, seq)
    const early = this.early ?? []
    this.early = null
    for (const c of early) await this.remote(c)
  }

  /** A dataset new to this node, from a shared store: its entries start after `seq` in this node's journal. */
  private async adopt (all: readonly Dataset[], seq: number): Promise<void> {
    const own = all.map((v) => ({ ...v, sinceSeq: seq }))
    const store = this.deps.store
    if (isShared(store)) await store.saveSince(own.at(-1)!)
    await this.putDataset(own)
  }

  /**
   * Applies a change another node made to the shared store: reads the resource back and updates what
   * the data path reads, announcing it like a local change (a revoked key disconnects its sessions
   * here too). Idempotent: applying the current state again changes nothing and announces nothing.
   */
  async remote (c: MetadataChange): Promise<void> {
    const store = this.deps.store
    if (!isShared(store)) return
    if (this.early !== null) { this.early.push(c); return }
    switch (c.kind) {
      case 'principal': return this.exclusive(`principals/${c.id}`, async () => {
        const p = await store.getPrincipal(c.id)
        const cur = this.access.getPrincipal(c.id)
        if (p === null) {
          if (cur === undefined) return
          const datasets = this.access.grantedDatasets(c.id)
          this.access.deletePrincipal(c.id)
          this.emit('principalLocked', c.id)
          for (const d of datasets) this.emit('grantsChanged', d)
          return
        }
        this.access.putPrincipal(p)
        if (p.disabled && cur?.disabled !== true) this.emit('principalLocked', c.id)
      })
      case 'key': {
        const found = await store.getKey(c.id)
        const principal = found?.principal ?? this.access.getKey(c.id)?.principal
        if (principal === undefined) return
        return this.exclusive(`principals/${principal}`, async () => {
          // Read again under the lock: a local change to the key may have been made meanwhile.
          const k = await store.getKey(c.id)
          const cur = this.access.getKey(c.id)
          if (k === null) {
            this.access.deleteKey(c.id)
            if (cur !== undefined) this.emit('keyRevoked', cur)
            return
          }
          this.access.putKey(k)
          if (k.revokedAt !== null && cur?.revokedAt == null) this.emit('keyRevoked', k)
        })
      }
      case 'grants': {
        // After the dataset's own change still being applied (its tables made in every sink, then the
        // catalog): grants seen first let a publish in that the pipeline then refused as unknown, and
        // a refused PUBLISH disconnects. A dataset made on another node is announced before its grants.
        await this.exclusive(`datasets/${c.id}`, async () => undefined)
        return this.exclusive('grants', () => this.remoteGrants(c.id))
      }
      case 'dataset': return this.exclusive(`datasets/${c.id}`, async () => {
        const r = await store.getDataset(c.id)
        const cur = this.catalog.get(c.id)
        if (cur !== undefined && (r === null || r.current.createdAt !== cur.createdAt)) {
          // Deleted (and maybe created again) on another node.
          this.catalog.take(c.id)
          this.access.setDatasetGrants(c.id, [])
          this.deps.rejects.forget(c.id)
          if (this.deps.localTables === true) for (const s of this.deps.sinks) await s.dropDataset(cur)
          this.emit('grantsChanged', c.id)
          this.emit('datasetDeleted', c.id)
        }
        if (r === null) return
        const all = [...r.versions.filter((v) => v.version < r.current.version), r.current]
        const known = this.catalog.get(c.id)
        if (known === undefined) {
          await this.adopt(all, this.deps.queuedSeq())
          this.access.setDatasetGrants(c.id, await store.getGrants(c.id))
          this.emit('grantsChanged', c.id)
          return
        }
        // The same dataset, updated or given a new version: this node keeps its own sinceSeq.
        await this.putDataset(all.filter((v) => v.version >= known.version).map((v) => ({ ...v, sinceSeq: known.sinceSeq ?? 0 })))
      })
    }
  }

  /** A dataset's grants as another node left them. */
  private async remoteGrants (id: string): Promise<void> {
    const store = this.deps.store
    if (!isShared(store)) return
    const grants = await store.getGrants(id)
    if (this.catalog.get(id) === undefined && grants.length === 0) return
    this.access.setDatasetGrants(id, grants)
    this.emit('grantsChanged', id)
  }

  /** Re-reads every resource from the shared store (after notifications may have been missed). */
  async resync (): Promise<void> {
    const store = this.deps.store
    if (!isShared(store)) return
    const snap = await store.load()
    const ids = (kind: MetadataChange['kind'], a: Iterable<string>, b: Iterable<string>): MetadataChange[] => [...new Set([...a, ...b])].map((id) => ({ kind, id }))
    const changes = [
      ...ids('principal', snap.principals.map((p) => p.id), this.access.listPrincipals().map((p) => p.id)),
      ...ids('key', snap.keys.map((k) => k.id), this.access.listPrincipals().flatMap((p) => this.access.keysOf(p.id).map((k) => k.id))),
      ...ids('dataset', snap.datasets.map((d) => d.id), this.catalog.list().map((d) => d.id)),
      ...ids('grants', snap.grants.map((g) => g.dataset), this.catalog.list().map((d) => d.id))
    ]
    for (const c of changes) await this.remote(c)
  }

  /**
   * Makes sure the bootstrap admin exists. With `adminKey`, that key is (re)registered; without one on
   * a first start a key is generated and returned so the caller can print it once.
   */
  async bootstrapAdmin (adminKey: string | undefined): Promise<{ generatedKey: string | null }> {
    const now = new Date().toISOString()
    const existing = this.access.getPrincipal(BOOTSTRAP_ADMIN)
    if (existing === undefined) {
      const admin: Principal = { id: BOOTSTRAP_ADMIN, kind: 'admin', description: 'bootstrap administrator', disabled: false, createdAt: now, updatedAt: now }
      await this.deps.store.savePrincipal(admin)
      this.access.putPrincipal(admin)
      await this.audited(SYSTEM, 'principal.create', `principals/${BOOTSTRAP_ADMIN}`, null, etagOf(admin))
    }
    const current = this.access.getKey(BOOTSTRAP_KEY_ID)
    const bootstrapKey = async (hash: string, description: string): Promise<void> => {
      const k: ApiKey = { id: BOOTSTRAP_KEY_ID, principal: BOOTSTRAP_ADMIN, hash, description, createdAt: now, expiresAt: null, revokedAt: null }
      await this.deps.store.saveKey(k)
      this.access.putKey(k)
      await this.audited(SYSTEM, 'key.issue', `principals/${BOOTSTRAP_ADMIN}/keys/${BOOTSTRAP_KEY_ID}`, current === undefined ? null : etagOf(publicKey(current)), etagOf(publicKey(k)), description)
    }
    if (adminKey !== undefined) {
      const hash = hashKey(adminKey)
      if (current?.hash !== hash || current.revokedAt !== null) await bootstrapKey(hash, 'bootstrap (STREAMGATE_ADMIN_KEY)')
      return { generatedKey: null }
    }
    if (existing !== undefined) return { generatedKey: null }
    const secret = generateSecret()
    await bootstrapKey(hashKey(secret), 'bootstrap (generated at first start)')
    return { generatedKey: secret }
  }

  // ---- datasets

  getDataset (id: string): Dataset {
    const d = this.catalog.get(id)
    if (d === undefined) throw new StreamgateError('SG_ERR_NOT_FOUND', `dataset ${id} does not exist`)
    return d
  }

  listDatasets (filter: { prefix?: string, after?: string, limit: number, visibleTo?: string }): Page<Dataset> {
    let all = this.catalog.list()
    if (filter.prefix !== undefined) all = all.filter((d) => d.id.startsWith(filter.prefix!))
    if (filter.visibleTo !== undefined) {
      const granted = new Set(this.access.grantedDatasets(filter.visibleTo))
      all = all.filter((d) => granted.has(d.id))
    }
    return page(all, filter.after, filter.limit)
  }

  createDataset (input: DatasetInput, actor: Actor): Promise<Dataset> {
    return this.exclusive(`datasets/${input.id}`, async () => {
      if (this.catalog.get(input.id) !== undefined) throw new StreamgateError('SG_ERR_CONFLICT', `dataset ${input.id} already exists`, { field: 'id' })
      const now = new Date().toISOString()
      // Entries of an earlier dataset with this id may still wait in the journal: they are not this one's.
      const dataset: Dataset = { id: input.id, description: input.description, schema: input.schema, version: 1, sinceSeq: this.deps.queuedSeq(), createdAt: now, updatedAt: now }
      for (const s of this.deps.sinks) await s.prepareDataset(dataset)
      await this.deps.store.saveDataset(dataset)
      this.catalog.put(dataset)
      this.access.setDatasetGrants(dataset.id, [])
      await this.audited(actor, 'dataset.create', `datasets/${dataset.id}`, null, etagOf(dataset))
      return dataset
    })
  }

  /**
   * Changes a dataset's description and schema in place when the change is compatible: the timestamp
   * field, every tag and every field (with its type) stay; fields may become optional; new tags and
   * new optional fields may be added. Sinks add the new columns. Anything else is refused.
   */
  updateDataset (id: string, input: DatasetUpdate, ifMatch: string | undefined, actor: Actor): Promise<Dataset> {
    return this.exclusive(`datasets/${id}`, async () => {
      const current = this.getDataset(id)
      const before = etagOf(current)
      checkIfMatch(before, ifMatch, true)
      const schema = input.schema ?? current.schema
      const problems = incompatibilities(current.schema, schema)
      if (problems.length > 0) throw new StreamgateError('SG_ERR_INCOMPATIBLE_SCHEMA', `incompatible schema change: ${problems.join('; ')}`, { field: 'schema', problems })
      const updated: Dataset = { ...current, description: input.description ?? current.description, schema, updatedAt: new Date().toISOString() }
      for (const s of this.deps.sinks) await s.prepareDataset(updated)
      await this.deps.store.saveDataset(updated)
      this.catalog.put(updated)
      await this.audited(actor, 'dataset.update', `datasets/${id}`, before, etagOf(updated))
      return updated
    })
  }

  /**
   * Makes a new schema version current (any change, compatible or not): records published from now on
   * are validated against it and stored in its own table; earlier records stay in theirs, queried with
   * their `version`. Entries already journaled keep the version they were accepted under.
   */
  createVersion (id: string, input: { schema: DatasetSchema, description?: string | undefined }, actor: Actor): Promise<Dataset> {
    return this.exclusive(`datasets/${id}`, async () => {
      const current = this.getDataset(id)
      const before = etagOf(current)
      const next: Dataset = { ...current, schema: input.schema, description: input.description ?? current.description, version: current.version + 1, updatedAt: new Date().toISOString() }
      for (const s of this.deps.sinks) await s.prepareDataset(next)
      await this.deps.store.saveDataset(next)
      this.catalog.put(next)
      await this.audited(actor, 'dataset.version', `datasets/${id}`, before, etagOf(next), `version ${next.version}`)
      return next
    })
  }

  /** The dataset as it was under `version`; NOT_FOUND when there is no such version. */
  getDatasetVersion (id: string, version: number): Dataset {
    this.getDataset(id)
    const d = this.catalog.datasetVersion(id, version)
    if (d === undefined) throw new StreamgateError('SG_ERR_NOT_FOUND', `dataset ${id} has no version ${version}`, { field: 'version' })
    return d
  }

  /**
   * Deletes the dataset and its grants and rejects. Its stored records go too only with `purge`;
   * without it a dataset that has any is refused (409 dataset-not-empty).
   */
  deleteDataset (id: string, opts: { purge: boolean, ifMatch: string | undefined }, actor: Actor): Promise<void> {
    return this.exclusive(`datasets/${id}`, async () => {
      const current = this.getDataset(id)
      const before = etagOf(current)
      checkIfMatch(before, opts.ifMatch, false)
      const versions = this.catalog.versionsOf(id)
      // Refuse new records first, so none arrives between the checks below and the delete; put the
      // dataset back if the delete does not go ahead.
      const taken = this.catalog.take(id)
      try {
        if (!opts.purge) {
          // Acknowledged records may still wait in the journal: let the store take them, then count.
          await this.deps.drained(this.deps.queuedSeq(), 30_000).catch((err: Error) => {
            throw new StreamgateError('SG_ERR_UNAVAILABLE', `records of ${id} may still be on their way to the store (${err.message}); retry, or delete with ?purge=true`, { retryAfter: 5 })
          })
          let n = 0
          for (const v of versions) n += await this.deps.storedCount(v)
          if (n > 0) throw new StreamgateError('SG_ERR_DATASET_NOT_EMPTY', `dataset ${id} has ${n} stored records; delete with ?purge=true to delete them too`, { field: 'purge', stored: n })
        }
        // Tables first: if the store refuses, nothing else is deleted and the delete can be retried.
        for (const s of this.deps.sinks) await s.dropDataset(current)
      } catch (err) {
        this.catalog.restore(id, taken)
        if (opts.purge) for (const v of versions) for (const s of this.deps.sinks) await s.prepareDataset(v).catch(() => undefined)
        throw err
      }
      await this.exclusive('grants', async () => {
        await this.deps.store.deleteDataset(id)
        this.access.setDatasetGrants(id, [])
      })
      this.deps.rejects.forget(id)
      this.emit('grantsChanged', id)
      this.emit('datasetDeleted', id)
      await this.audited(actor, opts.purge ? 'dataset.purge' : 'dataset.delete', `datasets/${id}`, before, null)
    })
  }

  // ---- principals

  getPrincipal (id: string): Principal {
    const p = this.access.getPrincipal(id)
    if (p === undefined) throw new StreamgateError('SG_ERR_NOT_FOUND', `principal ${id} does not exist`)
    return p
  }

  listPrincipals (filter: { kind?: Principal['kind'], after?: string, limit: number }): Page<Principal> {
    let all = this.access.listPrincipals().sort(byId)
    if (filter.kind !== undefined) all = all.filter((p) => p.kind === filter.kind)
    return page(all, filter.after, filter.limit)
  }

  createPrincipal (input: PrincipalInput, actor: Actor): Promise<Principal> {
    return this.exclusive(`principals/${input.id}`, async () => {
      if (this.access.getPrincipal(input.id) !== undefined) throw new StreamgateError('SG_ERR_CONFLICT', `principal ${input.id} already exists`, { field: 'id' })
      const now = new Date().toISOString()
      const p: Principal = { id: input.id, kind: input.kind, description: input.description, disabled: input.disabled, createdAt: now, updatedAt: now }
      await this.deps.store.savePrincipal(p)
      this.access.putPrincipal(p)
      await this.audited(actor, 'principal.create', `principals/${p.id}`, null, etagOf(p))
      return p
    })
  }

  /** Changes description and `disabled`; disabling ends the principal's live sessions. */
  updatePrincipal (id: string, input: PrincipalUpdate, ifMatch: string | undefined, actor: Actor): Promise<Principal> {
    return this.exclusive(`principals/${id}`, async () => {
      const current = this.getPrincipal(id)
      const before = etagOf(current)
      checkIfMatch(before, ifMatch, true)
      if (id === BOOTSTRAP_ADMIN && input.disabled === true) throw new StreamgateError('SG_ERR_CONFLICT', 'the bootstrap admin cannot be disabled', { field: 'disabled' })
      const updated: Principal = { ...current, description: input.description ?? current.description, disabled: input.disabled ?? current.disabled, updatedAt: new Date().toISOString() }
      await this.deps.store.savePrincipal(updated)
      this.access.putPrincipal(updated)
      if (updated.disabled && !current.disabled) this.emit('principalLocked', id)
      await this.audited(actor, updated.disabled !== current.disabled ? (updated.disabled ? 'principal.disable' : 'principal.enable') : 'principal.update', `principals/${id}`, before, etagOf(updated))
      return updated
    })
  }

  /** Deletes a principal with its keys and grants; its sessions end. */
  deletePrincipal (id: string, ifMatch: string | undefined, actor: Actor): Promise<void> {
    return this.exclusive(`principals/${id}`, async () => {
      const current = this.getPrincipal(id)
      const before = etagOf(current)
      checkIfMatch(before, ifMatch, false)
      if (id === BOOTSTRAP_ADMIN) throw new StreamgateError('SG_ERR_CONFLICT', 'the bootstrap admin cannot be deleted', { field: 'id' })
      const datasets = this.access.grantedDatasets(id)
      await this.exclusive('grants', async () => {
        await this.deps.store.deletePrincipal(id)
        this.access.deletePrincipal(id)
      })
      this.emit('principalLocked', id)
      for (const d of datasets) this.emit('grantsChanged', d)
      await this.audited(actor, 'principal.delete', `principals/${id}`, before, null)
    })
  }

  // ---- keys

  issueKey (principalId: string, input: KeyInput, actor: Actor): Promise<{ key: ApiKey, secret: string }> {
    return this.exclusive(`principals/${principalId}`, async () => {
      this.getPrincipal(principalId)
      const { key, secret } = this.newKey(principalId, input.description, input.expiresAt === null ? null : new Date(input.expiresAt).toISOString())
      await this.putKey(key)
      await this.audited(actor, 'key.issue', `principals/${principalId}/keys/${key.id}`, null, etagOf(publicKey(key)), key.description || null)
      return { key, secret }
    })
  }

  private newKey (principal: string, description: string, expiresAt: string | null): { key: ApiKey, secret: string } {
    const secret = generateSecret()
    return { secret, key: { id: generateKeyId(), principal, hash: hashKey(secret), description, createdAt: new Date().toISOString(), expiresAt, revokedAt: null } }
  }

  private async putKey (k: ApiKey): Promise<void> {
    await this.deps.store.saveKey(k)
    this.access.putKey(k)
  }

  getKey (principalId: string, keyId: string): ApiKey {
    const k = this.access.getKey(keyId)
    if (k === undefined || k.principal !== principalId) throw new StreamgateError('SG_ERR_NOT_FOUND', `key ${keyId} of ${principalId} does not exist`)
    return k
  }

  /**
   * Issues a new key with the old one's description and expiry; the old key stops working after
   * `graceSeconds` (at once with 0: its sessions end).
   */
  rotateKey (principalId: string, keyId: string, input: KeyRotate, actor: Actor): Promise<{ key: ApiKey, secret: string, previous: ApiKey }> {
    return this.exclusive(`principals/${principalId}`, async () => {
      const old = this.getKey(principalId, keyId)
      if (old.revokedAt !== null) throw new StreamgateError('SG_ERR_CONFLICT', `key ${keyId} is revoked`, { field: 'keyId' })
      const { key, secret } = this.newKey(principalId, old.description, old.expiresAt)
      await this.putKey(key)
      const now = Date.now()
      const previous: ApiKey = input.graceSeconds === 0
        ? { ...old, revokedAt: new Date(now).toISOString() }
        : { ...old, expiresAt: new Date(Math.min(now + input.graceSeconds * 1000, old.expiresAt === null ? Infinity : Date.parse(old.expiresAt))).toISOString() }
      await this.putKey(previous)
      if (previous.revokedAt !== null) this.emit('keyRevoked', previous)
      await this.audited(actor, 'key.rotate', `principals/${principalId}/keys/${keyId}`, etagOf(publicKey(old)), etagOf(publicKey(previous)), `replaced by ${key.id}; grace ${input.graceSeconds} s`)
      await this.audited(actor, 'key.issue', `principals/${principalId}/keys/${key.id}`, null, etagOf(publicKey(key)), `rotation of ${keyId}`)
      return { key, secret, previous }
    })
  }

  /** Revokes a key; sessions authenticated with it are disconnected. */
  revokeKey (principalId: string, keyId: string, actor: Actor): Promise<ApiKey> {
    return this.exclusive(`principals/${principalId}`, async () => {
      const k = this.getKey(principalId, keyId)
      if (k.revokedAt !== null) return k
      const revoked: ApiKey = { ...k, revokedAt: new Date().toISOString() }
      await this.putKey(revoked)
      this.emit('keyRevoked', revoked)
      await this.audited(actor, 'key.revoke', `principals/${principalId}/keys/${keyId}`, etagOf(publicKey(k)), etagOf(publicKey(revoked)))
      return revoked
    })
  }

  // ---- grants

  /** The grants on a dataset, sorted by principal, and their ETag. */
  datasetAccess (dataset: string): { grants: Grant[], etag: string } {
    this.getDataset(dataset)
    const grants = this.access.datasetGrants(dataset).sort((a, b) => a.principal < b.principal ? -1 : a.principal > b.principal ? 1 : 0)
    return { grants, etag: etagOf(grants) }
  }

  private toGrant (dataset: string, g: GrantInput, field: string): Grant {
    if (this.access.getPrincipal(g.principal) === undefined) throw new StreamgateError('SG_ERR_VALIDATION', `principal ${g.principal} does not exist`, { field })
    return { dataset, principal: g.principal, actions: [...new Set(g.actions)], ...(g.devices !== undefined ? { devices: g.devices } : {}) }
  }

  private async saveGrants (dataset: string, grants: Grant[], before: string, actor: Actor, action: string, detail: string | null): Promise<Grant[]> {
    await this.deps.store.saveGrants(dataset, grants)
    this.access.setDatasetGrants(dataset, grants)
    this.emit('grantsChanged', dataset)
    const after = this.datasetAccess(dataset)
    await this.audited(actor, action, `datasets/${dataset}/access`, before, after.etag, detail)
    return after.grants
  }

  /** Replaces every grant on a dataset (If-Match required). */
  setGrants (dataset: string, input: GrantsInput, ifMatch: string | undefined, actor: Actor): Promise<Grant[]> {
    // One lock for every grant change and principal deletion: a grant cannot outlive its principal.
    return this.exclusive('grants', async () => {
      const { etag } = this.datasetAccess(dataset)
      checkIfMatch(etag, ifMatch, true)
      const seen = new Set<string>()
      const grants: Grant[] = []
      for (const [i, g] of input.grants.entries()) {
        if (seen.has(g.principal)) throw new StreamgateError('SG_ERR_VALIDATION', `principal ${g.principal} is listed twice`, { field: `grants/${i}/principal` })
        seen.add(g.principal)
        grants.push(this.toGrant(dataset, g, `grants/${i}/principal`))
      }
      return this.saveGrants(dataset, grants, etag, actor, 'access.set', null)
    })
  }

  /** Grants one principal access to a dataset, replacing its earlier grant there. */
  putGrant (dataset: string, input: GrantInput, actor: Actor): Promise<{ grant: Grant, created: boolean }> {
    return this.exclusive('grants', async () => {
      const { grants, etag } = this.datasetAccess(dataset)
      const grant = this.toGrant(dataset, input, 'principal')
      const created = !grants.some((g) => g.principal === input.principal)
      await this.saveGrants(dataset, [...grants.filter((g) => g.principal !== input.principal), grant], etag, actor, 'access.grant', `${input.principal}: ${grant.actions.join(',')}`)
      return { grant, created }
    })
  }

  /** Takes a principal's grant on a dataset away. */
  removeGrant (dataset: string, principal: string, actor: Actor): Promise<void> {
    return this.exclusive('grants', async () => {
      const { grants, etag } = this.datasetAccess(dataset)
      if (!grants.some((g) => g.principal === principal)) throw new StreamgateError('SG_ERR_NOT_FOUND', `${principal} has no grant on ${dataset}`)
      await this.saveGrants(dataset, grants.filter((g) => g.principal !== principal), etag, actor, 'access.revoke', principal)
    })
  }
}

/** A key as the API shows it: never the hash. */
export function publicKey (k: ApiKey): Omit<ApiKey, 'hash'> {
  const { hash: _hash, ...rest } = k
  return rest
}

/** Parses management input, turning zod issues into one SG_ERR_VALIDATION naming the first bad field. */
export function parse<S extends z.ZodType> (schema: S, input: unknown): z.output<S> {
  const r = schema.safeParse(input)
  if (r.success) return r.data
  const first = r.error.issues[0]
  const field = first === undefined ? '' : first.path.map(String).join('/')
  const detail = r.error.issues.map((i) => `${i.path.map(String).join('/') || '(body)'}: ${i.message}`).join('; ')
  throw new StreamgateError('SG_ERR_VALIDATION', detail, { field, issues: r.error.issues.map((i) => ({ field: i.path.map(String).join('/'), message: i.message })) })
}

