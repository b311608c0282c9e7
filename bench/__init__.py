"""The benchmark suite of issue 7: latency from due time to an SSE client, bursts, creation, fan-out and
idle cost, on the embedded stack of `make run`, side by side with the BullMQ design it replaces.

`make bench` (or `python -m bench --help`); the report goes to bench/results/<time>/.
"""
