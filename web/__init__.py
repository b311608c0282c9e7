"""The Quart app: the REST API and the Server-Sent-Events stream. Start at web/app.py."""
