"""What operators run against a deployment: `tickler audit`, `repair`, `purge`, `stats` and `schedule`
(docs/operations.md). The maintenance Schedule's activities (activities/maintenance.py) do the same work
through :class:`tickler.ops.maintenance.Operations`."""
