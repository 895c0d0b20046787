"""Response models of the dashboard's JSON API: they document the API in its OpenAPI spec and check what
`serving.dashboard.reader` returns. Numbers a model or sensor could not produce are `null`, never NaN.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class Problem(BaseModel):
    detail: str


class FeatureInfo(BaseModel):
    name: str
    unit: str


class SensorPosition(BaseModel):
    id: str
    x: float = Field(description="0..1, from the network's coordinates or a force-directed layout")
    y: float = Field(description="0..1, pointing up")


class Edge(BaseModel):
    source: int
    target: int
    weight: float | None


class NetworkView(BaseModel):
    name: str
    step_ms: int
    features: list[FeatureInfo]
    forecast_features: list[str]
    coordinates: bool = Field(description="true: positions are the network's coordinates")
    sensors: list[SensorPosition]
    edges: list[Edge]
    matches_redis: bool | None = Field(
        description="the sensor list in Redis equals this network's (null: none yet)"
    )


class SensorForecastOut(BaseModel):
    sensor: str
    step_ts: int = Field(description="last input step, epoch ms; horizon h targets step_ts + h * step_ms")
    issued_ms: int
    model_version: str
    step_ms: int
    features: list[str]
    forecast: list[list[float | None]] = Field(description="[H][F]")


class LatestView(BaseModel):
    meta: dict[str, int | str]
    forecasts: list[SensorForecastOut]


class ActualPoint(BaseModel):
    ts: int
    value: float | None
    observed: bool


class ForecastLine(BaseModel):
    step_ts: int
    model_version: str
    issued_ms: int
    values: list[float | None] = Field(description="[H]: horizon h at step_ts + h * step_ms")


class SensorView(BaseModel):
    sensor: str
    index: int
    feature: str
    unit: str
    step_ms: int
    model_version: str | None
    actuals: list[ActualPoint]
    forecasts: list[ForecastLine] = Field(description="the fan: forecasts of the newest steps, oldest first")


class SensorState(BaseModel):
    id: str
    actual: float | None
    observed: bool
    forecast: float | None = Field(description="1-step-ahead forecast of the newest forecast step")
    error: float | None = Field(description="|1-step forecast - actual| of the newest sealed step")


class MapState(BaseModel):
    feature: str
    step_ts: int | None
    forecast_step_ts: int | None
    sensors: list[SensorState]


class Event(BaseModel):
    id: str
    ts: int
    type: str
    model_version: str
    detail: dict[str, Any]
    at_step_ts: int | None = Field(
        default=None, description="the step being scored when it happened (in /metrics)"
    )


class HistoryPoint(BaseModel):
    step_ts: int
    model_version: str
    mae: list[float | None] = Field(description="rolling MAE per horizon [H]")
    mean_mae: float | None
    written_ms: int = Field(description="wall-clock time the point was written")


class OnlineView(BaseModel):
    rolling: dict[str, Any] | None = Field(description="rolling scores of the serving model")
    versions: dict[str, dict[str, Any]] = Field(description="all-time scores per model version")
    history: list[HistoryPoint]
    events: list[Event]


class HealthView(BaseModel):
    available: bool
    updated_ms: float | None = None
    age_s: float | None = None
    readings_per_s: float | None = None
    watermark: float | None = None
    last_sealed: float | None = None
    steps_forecast: float | None = None
    model_version: str | None = None
    ledger: dict[str, Any] = Field(default_factory=dict)
    dead_by_reason: dict[str, int] = Field(default_factory=dict)
    lag: dict[str, int] = Field(default_factory=dict, description="messages behind, per partition")
    lag_total: int = 0
    unarchived_steps: int = Field(default=0, description="sealed steps waiting for the archive (store down)")
    archive_failures: int = Field(default=0, description="failed archive writes since the pipeline started")


class ModelVersion(BaseModel):
    version: str
    kind: str
    role: str = Field(description="champion, challenger (never promoted) or former champion")
    parent: str | None
    created_ms: int
    metrics: dict[str, Any] = Field(description="the gate figures recorded at registration")
    reason: str
    data_range: dict[str, Any]


class ModelsView(BaseModel):
    configured: bool
    message: str
    root: str | None
    champion: str | None
    versions: list[ModelVersion]
    history: list[dict[str, Any]]
