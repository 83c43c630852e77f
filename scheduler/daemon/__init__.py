"""The long-running daemon: wiring, signals and shutdown order (app), the read loop (intake), a crawl
to an outcome (runner), every ending (outcomes), held entries and their leases (leases), worker slots,
timers, the maintenance jobs every daemon runs, and start-up checks (startup)."""
