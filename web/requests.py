"""The request class: every way a body can fail to be JSON is a 400 that says so, never a 500."""

from __future__ import annotations

from typing import Any, NoReturn

from quart import Request
from werkzeug.exceptions import BadRequest, UnsupportedMediaType

NOT_JSON = "The body is not valid JSON; send a JSON object with Content-Type: application/json."


class JSONRequest(Request):
    async def get_json(self, force: bool = False, silent: bool = False, cache: bool = True) -> Any:
        if not (force or silent or self.is_json):
            raise UnsupportedMediaType("Send the body as JSON, with Content-Type: application/json.")
        try:
            return await super().get_json(force=force, silent=silent, cache=cache)
        # Quart decodes the body as strict UTF-8 before its ValueError guard, and json.loads raises
        # RecursionError (not a ValueError) on deeply nested arrays: both would be 500s.
        except (UnicodeDecodeError, RecursionError) as error:
            if silent:
                return None
            raise BadRequest(NOT_JSON) from error

    def on_json_loading_failed(self, error: Exception) -> NoReturn:
        # Quart raises a bare BadRequest() outside debug mode, whose text says nothing about JSON.
        raise BadRequest(NOT_JSON) from error
