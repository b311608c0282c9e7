"""`POST /codec/decode` and `/codec/encode`: Temporal's codec server protocol, for operators only.

The Temporal Web UI sends a history's payloads from the browser, as the protobuf JSON of ``Payloads``
(``{"payloads": [{"metadata": {"encoding": "<base64>"}, "data": "<base64>"}]}``), and shows what comes
back; so does `temporal workflow show --codec-endpoint`. The codec is the web process's Temporal client's
own (core/codec.py), so the endpoint holds exactly the keys the app holds.

Who may: an operator (core/auth.py), by a bearer token whose `roles` claim holds `operator` (the UI
forwards its user's access token over https) or by the session cookie of one (the UI's "Include
cross-origin credentials"). No credentials: 401; a user's: 403. Browsers may call it from the origins of
TICKLER_CODEC_CORS_ORIGINS only; a request from another origin is refused before anything is decrypted.
The routes are left out of the OpenAPI document: they are Temporal's protocol, not the CRM's API.
"""

from __future__ import annotations

import asyncio
import logging

from google.protobuf import json_format
from quart import Blueprint, Response, request
from quart_schema import hide
from temporalio.api.common.v1 import Payload, Payloads
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge, UnsupportedMediaType

from core.auth import Operator
from core.codec import PayloadDecryptionError
from core.errors import Forbidden, Unprocessable
from web.auth import credentials
from web.resources import resources

log = logging.getLogger(__name__)

blueprint = Blueprint("codec", __name__, url_prefix="/codec")

# What the UI sends: its fetch adds Content-Type and X-Namespace, and Authorization when it forwards the
# user's access token.
ALLOWED_HEADERS = "authorization, content-type, x-namespace"
PREFLIGHT_MAX_AGE = "600"
# Most payloads in one call, far more than one history event holds; a body of MAX_CONTENT_LENGTH holds
# thousands of empty ones, each to be encrypted and answered in a JSON object of its own.
MAX_PAYLOADS = 1000


def _origin_allowed() -> bool:
    """True for a request without Origin (the CLI, curl) or from an allowed origin."""
    origin = request.headers.get("Origin")
    return origin is None or origin.rstrip("/") in resources().settings.codec_origins()


@blueprint.after_request
async def cors(response: Response) -> Response:
    # On every answer of the blueprint, problems included: a browser hides from the UI an answer that
    # lacks them, so it could not tell "sign in" from "unreachable".
    origin = request.headers.get("Origin")
    if origin is not None and _origin_allowed():
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Allow-Credentials"] = "true"
        if request.method == "OPTIONS":
            response.headers["Access-Control-Allow-Methods"] = "POST, OPTIONS"
            response.headers["Access-Control-Allow-Headers"] = ALLOWED_HEADERS
            response.headers["Access-Control-Max-Age"] = PREFLIGHT_MAX_AGE
    response.vary.add("Origin")
    return response


async def _operator() -> Operator:
    """The operator calling, or 401 (no or bad credentials) / 403 (not an operator, or a foreign origin)."""
    if not _origin_allowed():
        raise Forbidden("This origin may not call the codec endpoint: add it to TICKLER_CODEC_CORS_ORIGINS.")
    return await resources().verifier.verify_operator(credentials())


async def _payloads() -> list[Payload]:
    if request.mimetype != "application/json":
        raise UnsupportedMediaType("Send the payloads as JSON, with Content-Type: application/json.")
    body = await request.get_data(as_text=False)
    try:
        # In a thread, as the answer's serialization is: protobuf's JSON is slow on a body of many small
        # payloads, and on the loop it would stall every stream of this process.
        payloads = (await asyncio.to_thread(json_format.Parse, body, Payloads())).payloads
    except (json_format.ParseError, UnicodeDecodeError) as exc:
        raise BadRequest(
            'Send the protobuf JSON of Temporal\'s Payloads: {"payloads": [{"metadata": {...}, '
            f'"data": "<base64>"}}]}} ({exc}).'
        ) from exc
    if len(payloads) > MAX_PAYLOADS:
        raise RequestEntityTooLarge(f"Send at most {MAX_PAYLOADS} payloads at a time, not {len(payloads)}.")
    return list(payloads)


async def _convert(action: str) -> Response:
    operator = await _operator()
    payloads = await _payloads()
    codec = resources().temporal.data_converter.payload_codec
    converted = payloads
    if codec is not None:  # None: TICKLER_PAYLOAD_ENCRYPTION=false, payloads are in clear already
        try:
            converted = await (codec.decode if action == "decode" else codec.encode)(payloads)
        except PayloadDecryptionError as exc:
            raise Unprocessable(f"A payload cannot be decoded: {exc}.") from exc
    # Who read what: decrypting is the one thing here an audit wants to see.
    log.info("codec %s of %d payloads for operator %s", action, len(payloads), operator.subject)
    body = await asyncio.to_thread(json_format.MessageToJson, Payloads(payloads=converted))
    return Response(body, status=200, content_type="application/json")


@blueprint.post("/decode")
@hide
async def decode() -> Response:
    """Payloads as Tickler's clients wrote them (encrypted) to the payloads they encrypted."""
    return await _convert("decode")


@blueprint.post("/encode")
@hide
async def encode() -> Response:
    """Plain payloads to what Tickler's clients would write: the UI encodes what an operator types (a
    signal's input, say) before it sends it to Temporal."""
    return await _convert("encode")
