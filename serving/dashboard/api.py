"""The dashboard's JSON API (`/api/...`): what the page draws, for other tools too. Thin: each route asks
the app's `DashboardReader` and returns its data under a documented response model (see `/docs`).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request

from serving.dashboard.reader import DashboardReader
from serving.dashboard.schemas import (
    Event,
    HealthView,
    LatestView,
    MapState,
    ModelsView,
    NetworkView,
    OnlineView,
    Problem,
    SensorView,
)

router = APIRouter(prefix="/api", tags=["dashboard"])
NOT_FOUND = {404: {"model": Problem, "description": "unknown sensor or feature"}}
Feature = Annotated[
    str | None, Query(max_length=200, description="feature name; default: first forecast feature")
]


def _reader(request: Request) -> DashboardReader:
    return request.app.state.reader  # type: ignore[no-any-return]


@router.get("/network", response_model=NetworkView, summary="Sensors, positions, edges and features")
def network(request: Request) -> dict:
    return _reader(request).network_view()


@router.get("/latest", response_model=LatestView, summary="Latest forecast of every sensor, all horizons")
def latest(request: Request) -> dict:
    return _reader(request).latest()


@router.get(
    "/map",
    response_model=MapState,
    responses=NOT_FOUND,
    summary="Per sensor: newest actual, next-step forecast, last 1-step error",
)
def map_state(request: Request, feature: Feature = None) -> dict:
    try:
        return _reader(request).map_state(feature)
    except KeyError as exc:
        raise HTTPException(404, str(exc.args[0])) from exc


@router.get(
    "/sensors/{sensor}",
    response_model=SensorView,
    responses=NOT_FOUND,
    summary="A sensor's recent actuals and the forecast fan",
)
def sensor(
    request: Request,
    sensor: str,
    feature: Feature = None,
    steps: Annotated[int, Query(ge=1, le=2000, description="recent sealed steps of actuals")] = 36,
    fan: Annotated[int, Query(ge=1, le=50, description="newest forecast steps in the fan")] = 6,
) -> dict:
    try:
        return _reader(request).sensor_view(sensor, feature=feature, steps=steps, fan=fan)
    except KeyError as exc:
        raise HTTPException(404, str(exc.args[0])) from exc


@router.get(
    "/metrics",
    response_model=OnlineView,
    summary="Online MAE per horizon over time, scores per model version, lifecycle events",
)
def metrics(
    request: Request, limit: Annotated[int, Query(ge=1, le=10_000, description="newest history points")] = 500
) -> dict:
    return _reader(request).online(limit)


@router.get("/events", response_model=list[Event], summary="Model lifecycle events, oldest first")
def events(request: Request, limit: Annotated[int, Query(ge=1, le=10_000)] = 100) -> list:
    return _reader(request).events(limit)


@router.get(
    "/health",
    response_model=HealthView,
    summary="Stream health: readings/s, dead letters by reason, late readings, lag, watermark",
)
def health(request: Request) -> dict:
    return _reader(request).health()


@router.get(
    "/models", response_model=ModelsView, summary="Model registry: champion, challengers, gate figures"
)
def models(request: Request) -> dict:
    return _reader(request).models()
