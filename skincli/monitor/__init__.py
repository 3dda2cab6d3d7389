"""Production monitoring: the prediction log and store, drift tests, reports, safe retraining.

- `predlog`:  the server's prediction logger (queue, writer threads, journal) into the store.
- `store`:    `open_store` and the store's public names; `rows` (the row and the interface),
              `sqlite_store`, `sql_store` (the two back ends), `imagestats` (what a row keeps of
              an image).
- `reference`, `drift`, `labelshift`, `labels`, `report`: the drift reference of a run, the
  tests against it, label shift, confirmed labels and the monitoring report.
- `retrain`:  retraining on confirmed labels, safely.

Nothing is imported here, so `import skincli.monitor.predlog` stays light (no pandas).
"""
