// Principals, API keys, grants and the ACL. Decisions are pure functions over in-memory state that
// `Management` keeps in sync with the metadata store. Deny by default.
import { createHash, randomBytes } from 'node:crypto'
import type { FilterScope } from './topics.js'

export const principalKinds = ['device', 'service', 'admin'] as const
export type PrincipalKind = typeof principalKinds[number]

export const actions = ['publish', 'subscribe', 'query', 'manage'] as const
export type Action = typeof actions[number]

export interface Principal {
  readonly id: string
  readonly kind: PrincipalKind
  readonly description: string
  /** A disabled principal cannot authenticate; its sessions are ended when it is disabled. */
  readonly disabled: boolean
  readonly createdAt: string
  readonly updatedAt: string
}

export interface ApiKey {
  readonly id: string
  readonly principal: string
  /** sha256 of the whole secret, hex. Keys carry ≥192 bits of entropy, so a fast hash is enough. */
  readonly hash: string
  readonly description: string
  readonly createdAt: string
  readonly expiresAt: string | null
  readonly revokedAt: string | null
}

export interface Grant {
  readonly dataset: string
  readonly principal: string
  readonly actions: readonly Action[]
  /**
   * Device levels this principal may publish under. Absent: only its own id (like AWS IoT's
   * `${iot:ClientId}`). `["+"]`: any device (a gateway or service publishing for a fleet).
   */
  readonly devices?: readonly string[]
}

export function hashKey (secret: string): string {
  return createHash('sha256').update(secret).digest('hex')
}

/** A new key: `sg_` + 32 random bytes, base64url (256 bits). */
export function generateSecret (): string {
  return 'sg_' + randomBytes(32).toString('base64url')
}

export function generateKeyId (): string {
  return 'key_' + randomBytes(8).toString('hex')
}

export type AuthFailure = 'unknown_principal' | 'bad_key' | 'revoked' | 'expired' | 'disabled'
export type AuthResult =
  | { readonly ok: true, readonly principal: Principal, readonly key: ApiKey }
  | { readonly ok: false, readonly reason: AuthFailure }

const ACTION_BIT: Record<Action, number> = { publish: 1, subscribe: 2, query: 4, manage: 8 }
const ANY_DEVICE = '+'

interface CompiledGrant {
  readonly mask: number
  /** null: any device; otherwise the device ids allowed (the principal's own id when the grant names none). */
  readonly devices: ReadonlySet<string> | null
}

/** In-memory access state. Mutated only through its methods, read on every packet. */
export class AccessState {
  private readonly principals = new Map<string, Principal>()
  private readonly keysByHash = new Map<string, ApiKey>()
  private readonly keysById = new Map<string, ApiKey>()
  /** principal → dataset → compiled grant */
  private readonly grants = new Map<string, Map<string, CompiledGrant>>()
  private readonly grantDocs = new Map<string, Map<string, Grant>>()

  putPrincipal (p: Principal): void { this.principals.set(p.id, p) }
  getPrincipal (id: string): Principal | undefined { return this.principals.get(id) }
  listPrincipals (): Principal[] { return [...this.principals.values()] }

  deletePrincipal (id: string): void {
    this.principals.delete(id)
    for (const k of this.keysOf(id)) this.deleteKey(k.id)
    this.grants.delete(id)
    for (const byPrincipal of this.grantDocs.values()) byPrincipal.delete(id)
  }

  putKey (k: ApiKey): void {
    const prior = this.keysById.get(k.id)
    if (prior !== undefined) this.keysByHash.delete(prior.hash)
    this.keysById.set(k.id, k)
    this.keysByHash.set(k.hash, k)
  }

  deleteKey (id: string): void {
    const k = this.keysById.get(id)
    if (k === undefined) return
    this.keysById.delete(id)
    this.keysByHash.delete(k.hash)
  }

  getKey (id: string): ApiKey | undefined { return this.keysById.get(id) }
  keysOf (principal: string): ApiKey[] { return [...this.keysById.values()].filter((k) => k.principal === principal) }

  /** Replaces every grant on a dataset. */
  setDatasetGrants (dataset: string, grants: readonly Grant[]): void {
    for (const byDataset of this.grants.values()) byDataset.delete(dataset)
    const docs = new Map<string, Grant>()
    for (const g of grants) {
      docs.set(g.principal, g)
      let byDataset = this.grants.get(g.principal)
      if (byDataset === undefined) this.grants.set(g.principal, byDataset = new Map())
      let mask = 0
      for (const a of g.actions) mask |= ACTION_BIT[a]
      const devices = g.devices === undefined ? new Set([g.principal]) : g.devices.includes(ANY_DEVICE) ? null : new Set(g.devices)
      byDataset.set(dataset, { mask, devices })
    }
    this.grantDocs.set(dataset, docs)
  }

  datasetGrants (dataset: string): Grant[] { return [...(this.grantDocs.get(dataset)?.values() ?? [])] }
  /** A principal's grants, by dataset id. */
  principalGrants (principal: string): Grant[] {
    return this.grantedDatasets(principal).sort().flatMap((d) => this.grantDocs.get(d)?.get(principal) ?? [])
  }

  /** Datasets on which the principal holds any grant. */
  grantedDatasets (principal: string): string[] { return [...(this.grants.get(principal)?.keys() ?? [])] }

  /** Verifies a principal id and secret (MQTT username/password, or an HTTP bearer key). */
  authenticate (principalId: string | undefined, secret: string, now: number): AuthResult {
    const key = this.keysByHash.get(hashKey(secret))
    if (key === undefined) return { ok: false, reason: principalId !== undefined && !this.principals.has(principalId) ? 'unknown_principal' : 'bad_key' }
    if (principalId !== undefined && key.principal !== principalId) return { ok: false, reason: 'bad_key' }
    const principal = this.principals.get(key.principal)
    if (principal === undefined) return { ok: false, reason: 'unknown_principal' }
    if (key.revokedAt !== null) return { ok: false, reason: 'revoked' }
    if (key.expiresAt !== null && Date.parse(key.expiresAt) <= now) return { ok: false, reason: 'expired' }
    if (principal.disabled) return { ok: false, reason: 'disabled' }
    return { ok: true, principal, key }
  }

  /** May `principal` perform `action` on `dataset`? Admins may do everything. */
  can (principalId: string, action: Action, dataset: string): boolean {
    const p = this.principals.get(principalId)
    if (p === undefined || p.disabled) return false
    if (p.kind === 'admin') return true
    const g = this.grants.get(principalId)?.get(dataset)
    return g !== undefined && (g.mask & ACTION_BIT[action]) !== 0
  }

  /** May `principal` publish records for `device` into `dataset`? */
  canPublish (principalId: string, dataset: string, device: string): boolean {
    const p = this.principals.get(principalId)
    if (p === undefined || p.disabled) return false
    if (p.kind === 'admin') return true
    const g = this.grants.get(principalId)?.get(dataset)
    if (g === undefined || (g.mask & ACTION_BIT.publish) === 0) return false
    return g.devices === null || g.devices.has(device)
  }

  /** May `principal` subscribe to a filter of this scope? `$SYS` and non-dataset filters: admins only. */
  canSubscribe (principalId: string, scope: FilterScope): boolean {
    switch (scope.kind) {
      case 'dataset': return this.can(principalId, 'subscribe', scope.dataset)
      case 'sys':
      case 'other': return this.principals.get(principalId)?.kind === 'admin' && !this.principals.get(principalId)?.disabled
    }
  }
}
