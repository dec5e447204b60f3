// Management operations: each persists through the MetadataStore first, then updates the in-memory
// state the data path reads, then announces the change so live sessions follow it.
import { EventEmitter } from 'node:events'
import { z } from 'zod'
import {
  AccessState, actions, generateKeyId, generateSecret, hashKey, principalKinds,
  type ApiKey, type Grant, type Principal
} from './access.js'
import { type Catalog, type Dataset, type DatasetSchema, datasetInputSchema, datasetSchemaSchema, fieldSpec as kind } from './datasets.js'
import { StreamgateError } from './errors.js'
import type { DatasetTables, MetadataStore } from './ports.js'
import type { Rejects } from './rejects.js'
import { PRINCIPAL_ID } from './topics.js'

export const BOOTSTRAP_ADMIN = 'admin'
export const BOOTSTRAP_KEY_ID = 'key_bootstrap'

export const principalInputSchema = z.strictObject({
  id: z.string().regex(PRINCIPAL_ID, 'must match ^[A-Za-z0-9_][A-Za-z0-9_:@-]{0,127}$ (no +, #, /, ., $ or NUL)'),
  kind: z.enum(principalKinds)
})

export const keyInputSchema = z.strictObject({
  description: z.string().max(256).default(''),
  expiresAt: z.iso.datetime({ offset: true }).nullable().default(null)
})

export const grantsInputSchema = z.strictObject({
  grants: z.array(z.strictObject({
    principal: z.string().regex(PRINCIPAL_ID),
    actions: z.array(z.enum(actions)).min(1),
    devices: z.array(z.union([z.literal('+'), z.string().regex(PRINCIPAL_ID)])).min(1).optional()
  })).max(10_000)
})

export const datasetUpdateSchema = z.strictObject({
  description: z.string().max(1024).optional(),
  schema: datasetSchemaSchema.optional()
})

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

export type DatasetInput = z.input<typeof datasetInputSchema>
export type PrincipalInput = z.input<typeof principalInputSchema>
export type KeyInput = z.input<typeof keyInputSchema>
export type GrantsInput = z.input<typeof grantsInputSchema>

export interface ManagementEvents {
  keyRevoked: [key: ApiKey]
  grantsChanged: [dataset: string]
  datasetDeleted: [dataset: string]
}

export class Management extends EventEmitter<ManagementEvents> {
  constructor (
    private readonly store: MetadataStore,
    readonly access: AccessState,
    readonly catalog: Catalog,
    private readonly sinks: readonly DatasetTables[],
    private readonly rejects: Rejects
  ) {
    super()
  }

  /** Loads the metadata into memory and makes sure every sink has a table for every dataset. */
  async load (): Promise<void> {
    const snap = await this.store.load()
    for (const p of snap.principals) this.access.putPrincipal(p)
    for (const k of snap.keys) this.access.putKey(k)
    const byDataset = new Map<string, Grant[]>()
    for (const g of snap.grants) {
      let list = byDataset.get(g.dataset)
      if (list === undefined) byDataset.set(g.dataset, list = [])
      list.push(g)
    }
    for (const d of snap.datasets) {
      this.catalog.put(d)
      this.access.setDatasetGrants(d.id, byDataset.get(d.id) ?? [])
      for (const s of this.sinks) await s.prepareDataset(d)
    }
  }

  /**
   * Makes sure the bootstrap admin exists. With `adminKey`, that key is (re)registered; without one on
   * a first start a key is generated and returned so the caller can print it once.
   */
  async bootstrapAdmin (adminKey: string | undefined): Promise<{ generatedKey: string | null }> {
    const now = new Date().toISOString()
    const existing = this.access.getPrincipal(BOOTSTRAP_ADMIN)
    if (existing === undefined) {
      const admin: Principal = { id: BOOTSTRAP_ADMIN, kind: 'admin', disabled: false, createdAt: now }
      await this.store.savePrincipal(admin)
      this.access.putPrincipal(admin)
    }
    const current = this.access.getKey(BOOTSTRAP_KEY_ID)
    if (adminKey !== undefined) {
      const hash = hashKey(adminKey)
      if (current?.hash !== hash || current.revokedAt !== null) await this.putKey({ id: BOOTSTRAP_KEY_ID, principal: BOOTSTRAP_ADMIN, hash, description: 'bootstrap (STREAMGATE_ADMIN_KEY)', createdAt: now, expiresAt: null, revokedAt: null })
      return { generatedKey: null }
    }
    if (existing !== undefined) return { generatedKey: null }
    const secret = generateSecret()
    await this.putKey({ id: BOOTSTRAP_KEY_ID, principal: BOOTSTRAP_ADMIN, hash: hashKey(secret), description: 'bootstrap (generated at first start)', createdAt: now, expiresAt: null, revokedAt: null })
    return { generatedKey: secret }
  }

  private async putKey (k: ApiKey): Promise<void> {
    await this.store.saveKey(k)
    this.access.putKey(k)
  }

  // ---- datasets

  async createDataset (input: unknown): Promise<Dataset> {
    const parsed = parse(datasetInputSchema, input)
    if (this.catalog.get(parsed.id) !== undefined) throw new StreamgateError('SG_ERR_CONFLICT', `dataset ${parsed.id} already exists`, { field: 'id' })
    const now = new Date().toISOString()
    const dataset: Dataset = { id: parsed.id, description: parsed.description, schema: parsed.schema, version: 1, createdAt: now, updatedAt: now }
    for (const s of this.sinks) await s.prepareDataset(dataset)
    await this.store.saveDataset(dataset)
    this.catalog.put(dataset)
    this.access.setDatasetGrants(dataset.id, [])
    return dataset
  }

  /**
   * Changes a dataset's description and schema in place when the change is compatible: the timestamp
   * field, every tag and every field (with its type) stay; fields may become optional; new tags and
   * new optional fields may be added. Sinks add the new columns. Anything else is refused.
   */
  async updateDataset (id: string, input: unknown): Promise<Dataset> {
    const current = this.getDataset(id)
    const parsed = parse(datasetUpdateSchema, input)
    const schema = parsed.schema ?? current.schema
    const problems = incompatibilities(current.schema, schema)
    if (problems.length > 0) throw new StreamgateError('SG_ERR_INCOMPATIBLE_SCHEMA', `incompatible schema change: ${problems.join('; ')}`, { field: 'schema', problems })
    const updated: Dataset = { ...current, description: parsed.description ?? current.description, schema, updatedAt: new Date().toISOString() }
    for (const s of this.sinks) await s.prepareDataset(updated)
    await this.store.saveDataset(updated)
    this.catalog.put(updated)
    return updated
  }

  getDataset (id: string): Dataset {
    const d = this.catalog.get(id)
    if (d === undefined) throw new StreamgateError('SG_ERR_NOT_FOUND', `dataset ${id} does not exist`)
    return d
  }

  /** Deletes the dataset, its grants, its rejects and its stored rows. */
  async deleteDataset (id: string): Promise<void> {
    this.getDataset(id)
    await this.store.deleteDataset(id)
    this.catalog.delete(id)
    this.access.setDatasetGrants(id, [])
    this.rejects.forget(id)
    for (const s of this.sinks) await s.dropDataset(id)
    this.emit('grantsChanged', id)
    this.emit('datasetDeleted', id)
  }

  // ---- principals and keys

  async createPrincipal (input: unknown): Promise<Principal> {
    const parsed = parse(principalInputSchema, input)
    if (this.access.getPrincipal(parsed.id) !== undefined) throw new StreamgateError('SG_ERR_CONFLICT', `principal ${parsed.id} already exists`, { field: 'id' })
    const p: Principal = { id: parsed.id, kind: parsed.kind, disabled: false, createdAt: new Date().toISOString() }
    await this.store.savePrincipal(p)
    this.access.putPrincipal(p)
    return p
  }

  getPrincipal (id: string): Principal {
    const p = this.access.getPrincipal(id)
    if (p === undefined) throw new StreamgateError('SG_ERR_NOT_FOUND', `principal ${id} does not exist`)
    return p
  }

  /** Issues a key; the secret is returned here and never again. */
  async issueKey (principalId: string, input: unknown): Promise<{ key: ApiKey, secret: string }> {
    this.getPrincipal(principalId)
    const parsed = parse(keyInputSchema, input ?? {})
    const secret = generateSecret()
    const key: ApiKey = {
      id: generateKeyId(),
      principal: principalId,
      hash: hashKey(secret),
      description: parsed.description,
      createdAt: new Date().toISOString(),
      expiresAt: parsed.expiresAt === null ? null : new Date(parsed.expiresAt).toISOString(),
      revokedAt: null
    }
    await this.putKey(key)
    return { key, secret }
  }

  /** Revokes a key; sessions authenticated with it are disconnected. */
  async revokeKey (principalId: string, keyId: string): Promise<ApiKey> {
    const k = this.access.getKey(keyId)
    if (k === undefined || k.principal !== principalId) throw new StreamgateError('SG_ERR_NOT_FOUND', `key ${keyId} of ${principalId} does not exist`)
    const revoked: ApiKey = k.revokedAt !== null ? k : { ...k, revokedAt: new Date().toISOString() }
    if (revoked !== k) await this.putKey(revoked)
    this.emit('keyRevoked', revoked)
    return revoked
  }

  // ---- grants

  async setGrants (dataset: string, input: unknown): Promise<Grant[]> {
    this.getDataset(dataset)
    const parsed = parse(grantsInputSchema, input)
    const seen = new Set<string>()
    const grants: Grant[] = []
    for (const [i, g] of parsed.grants.entries()) {
      if (this.access.getPrincipal(g.principal) === undefined) throw new StreamgateError('SG_ERR_VALIDATION', `principal ${g.principal} does not exist`, { field: `grants/${i}/principal` })
      if (seen.has(g.principal)) throw new StreamgateError('SG_ERR_VALIDATION', `principal ${g.principal} is listed twice`, { field: `grants/${i}/principal` })
      seen.add(g.principal)
      grants.push({ dataset, principal: g.principal, actions: [...new Set(g.actions)], ...(g.devices !== undefined ? { devices: g.devices } : {}) })
    }
    await this.store.saveGrants(dataset, grants)
    this.access.setDatasetGrants(dataset, grants)
    this.emit('grantsChanged', dataset)
    return grants
  }
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
