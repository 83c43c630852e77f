"""Read-only questions about the queue, its tasks and its daemons, answered as plain values.

One module per question: ``entries`` (stream ranges, task payloads described or decoded), ``delayed``
(the delayed-retry set's ``<entry id>|<payload>`` members), ``queue`` (the gauges every daemon exports,
and the fuller ``stats`` view), ``pending`` (the XPENDING summary and the delivered, unacknowledged
entries), ``deadletters`` (the dead-letter stream), ``daemons`` (heartbeats) and ``tasks`` (each task's
last crawl and next run). Nothing here writes to Redis; the CLI, the daemon's gauges and the demo ask
here rather than reading keys themselves. Import from the module that owns a name.
"""
