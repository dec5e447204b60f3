// Adapters to the outside world, each implementing gateway ports.
export { EmbeddedStore, type EmbeddedStoreOptions } from './embedded/store.js'
