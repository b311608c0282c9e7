"""The chaos suite (issue 13): faults injected into `tickler run --replicas 2` while clients stream through
the proxy, and what reached them counted. `make chaos` runs it; nothing in the app imports it."""
