"""A bench-only entry point of the web process on uvloop: `python -m bench.web` (a lever to measure).

The same app, settings and server as `python -m tickler web`; only the event loop differs.
"""

from __future__ import annotations

import uvloop

from tickler.cli import main

if __name__ == "__main__":
    uvloop.install()
    main(["web"])
