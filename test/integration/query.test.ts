import { querySuite } from '../shared/query-suite.js'

querySuite('the embedded store', () => ({}), async (gw) => {
  await gw.sg.consumers[0]!.waitFor(gw.sg.journal.committedSeq)
})
