"""The composition root: the `tickler` command, the worker process and the development stack."""
