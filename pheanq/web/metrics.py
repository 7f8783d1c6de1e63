"""/metrics: the Prometheus text of pheanq.ops.metrics, served by the dashboard (read role) and, alone, by
`pheanq metrics --bind` for hosts that do not run the dashboard. Prometheus authenticates with a bearer token of a
configured user (`authorization: credentials:` in its scrape config); with no users, loopback only."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response

from pheanq.ops.metrics import metrics_text
from pheanq.web.guard import Context


def metrics(request: Request, context: Context) -> Response:
    return Response(metrics_text(context.service.dispatch), media_type=CONTENT_TYPE_LATEST)
