"""``GET /metrics``: Prometheus exposition of this app's own registry."""

from __future__ import annotations

from fastapi import APIRouter, Response

from billing.api.deps import Resources

router = APIRouter(tags=["operations"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}},
    summary="Prometheus metrics",
)
def metrics(resources: Resources) -> Response:
    body, content_type = resources.metrics.render()
    return Response(body, media_type=content_type)
