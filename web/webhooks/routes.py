"""`/v1/webhooks`: an organization's endpoints, managed by its admins (a `roles` claim with `admin`)."""

from __future__ import annotations

import uuid

from quart import Blueprint, Response
from quart_schema import validate_request, validate_response

from web.auth import authenticated, principal
from web.problems import problems, responds
from web.resources import resources
from web.webhooks import service
from web.webhooks.schemas import (
    DeliveryList,
    DeliveryOut,
    EndpointCreate,
    EndpointCreated,
    EndpointList,
    EndpointOut,
)

blueprint = Blueprint("webhooks", __name__, url_prefix="/v1/webhooks")


@blueprint.post("")
@problems(400, 401, 403, 409, 413, 415, 422, 429, 503)
@authenticated
@validate_request(EndpointCreate)
@validate_response(EndpointCreated, 201)
async def create_endpoint(data: EndpointCreate) -> tuple[EndpointCreated, int]:
    """Add an endpoint: each event of `events` is POSTed to `url`, signed as Standard Webhooks says
    (`webhook-id`, `webhook-timestamp`, `webhook-signature`), retried with backoff for up to a day.
    The answer holds the `secret` that verifies the signatures, this once. At most 20 endpoints per
    organization (409 beyond). Admins only."""
    endpoint = await service.create(resources(), principal(), data)
    return EndpointCreated.model_validate(endpoint, from_attributes=True), 201


@blueprint.get("")
@problems(401, 403, 429, 503)
@authenticated
@validate_response(EndpointList)
async def list_endpoints() -> EndpointList:
    """Your organization's endpoints (without their secrets). Admins only."""
    rows = await service.listed(resources(), principal())
    return EndpointList(items=[EndpointOut.model_validate(r, from_attributes=True) for r in rows])


@blueprint.delete("/<uuid:endpoint_id>")
@problems(401, 403, 404, 429, 503)
@responds(204, "Deleted: nothing more is sent to it.")
@authenticated
async def delete_endpoint(endpoint_id: uuid.UUID) -> Response:
    """Delete an endpoint; deliveries in flight to it stop. Admins only."""
    await service.remove(resources(), principal(), endpoint_id)
    return Response(status=204)


@blueprint.get("/<uuid:endpoint_id>/deliveries")
@problems(401, 403, 404, 429, 503)
@authenticated
@validate_response(DeliveryList)
async def list_deliveries(endpoint_id: uuid.UUID) -> DeliveryList:
    """Every attempt at delivering to the endpoint, newest first: when, the status code, the error."""
    rows = await service.deliveries(resources(), principal(), endpoint_id)
    return DeliveryList(items=[DeliveryOut.model_validate(r, from_attributes=True) for r in rows])
