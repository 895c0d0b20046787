"""Which model to build: the model kinds and their classes, the size presets, and `build_model`, which sizes
a fresh model of a kind for a dataset and its protocol.

The models themselves live in `training.seq2seq` (AttentionSeq2Seq), `training.stformer` (STFormer) and
`training.baselines`; their attention blocks in `training.attention`, the sensor blocks of the "blocks"
preset in `training.partition`. A checkpoint rebuilds its model from the same table (`MODEL_CLASSES`, used
by `training.checkpoint`). No I/O, no training here.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from stream.datasets import SensorDataset
from training.baselines import HistoricalAverage, HistoricalAverageConfig, Persistence, PersistenceConfig
from training.data import DAY_MS, Protocol
from training.partition import partition
from training.seq2seq import AttentionSeq2Seq, Seq2SeqConfig
from training.stformer import STFormer, STFormerConfig

# kind -> (config dataclass, model class); a checkpoint names its model by the kind
MODEL_CLASSES: dict[str, tuple[type, type[nn.Module]]] = {
    "persistence": (PersistenceConfig, Persistence),
    "historical_average": (HistoricalAverageConfig, HistoricalAverage),
    "seq2seq": (Seq2SeqConfig, AttentionSeq2Seq),
    "stformer": (STFormerConfig, STFormer),
}
BASELINES = ("persistence", "historical_average")  # fitted, not trained by gradient descent
MODEL_ALIASES = {"ha": "historical_average", "transformer": "stformer"}

SMALL: dict[str, int | float] = dict(  # CPU: fits a 2-core, 30-minute budget on a ~200-sensor network.
    input_dim=16,
    tod_dim=16,
    dow_dim=8,
    adaptive_dim=24,
    heads=2,
    temporal_layers=1,
    spatial_layers=1,
    ffn_dim=96,
    dropout=0.1,
)
PRESETS: dict[str, dict[str, int | float]] = {  # STFormer sizes
    "small": SMALL,
    # CPU, large networks: "small" with spatial attention within blocks of 128 sensors (home + halo), so
    # serving and training cost grow linearly with the sensors (`training.partition`).
    "blocks": {**SMALL, "block_size": 128},
    # GPU: STAEformer's published size.
    "full": dict(
        input_dim=24,
        tod_dim=24,
        dow_dim=24,
        adaptive_dim=80,
        heads=4,
        temporal_layers=3,
        spatial_layers=3,
        ffn_dim=256,
        dropout=0.1,
    ),
}
SEQ2SEQ_PRESETS: dict[str, dict[str, Any]] = {
    "small": {"hidden": 64},
    "blocks": {"hidden": 64},  # the seq2seq model has no spatial attention to split
    "full": {"hidden": 128},
}


def model_kind(name: str) -> str:
    """The kind a model name (or alias: ha, transformer) stands for; ValueError for an unknown one."""
    kind = MODEL_ALIASES.get(name, name)
    if kind not in MODEL_CLASSES:
        raise ValueError(f"unknown model {name!r}: expected seq2seq, stformer, persistence or ha")
    return kind


def check_preset(kind: str, preset: str) -> None:
    """ValueError when a learned model of `kind` has no size `preset` (baselines have no size)."""
    if kind not in BASELINES and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}: expected one of {sorted(PRESETS)}")


def build_model(
    kind: str, ds: SensorDataset, protocol: Protocol, preset: str, overrides: dict[str, Any]
) -> nn.Module:
    """A fresh model of `kind` sized for `ds` and `protocol`: learned models untrained, baselines unfitted."""
    kind = model_kind(kind)
    check_preset(kind, preset)
    common: dict[str, Any] = dict(window=protocol.window, horizon=protocol.horizon, targets=protocol.targets)
    if kind == "stformer":
        spd = max(1, DAY_MS // ds.network.step_ms)
        config = {"steps_per_day": spd, **PRESETS[preset], **overrides}
        if spd == 1:  # daily data: the season, not the time of day, carries the cycle
            config.setdefault("doy_dim", config["tod_dim"])
        blocks = partition(ds.network, int(config["block_size"])) if config.get("block_size") else None
        if blocks is not None:
            config["n_blocks"] = blocks.count
        model = STFormer(
            STFormerConfig(
                n_nodes=ds.network.n_sensors,
                in_features=ds.network.n_features,
                **common,
                **config,
            )
        )
        if blocks is not None:
            model.set_blocks(blocks)
        return model.set_graph(ds.network.edges) if model.config.graph_bias else model
    if kind == "seq2seq":
        config = {**SEQ2SEQ_PRESETS[preset], **overrides}
        if ds.network.step_ms >= DAY_MS:
            config.setdefault("seasonal", True)
        return AttentionSeq2Seq(Seq2SeqConfig(in_features=ds.network.n_features, **common, **config))
    if kind == "persistence":
        return Persistence(PersistenceConfig(horizon=protocol.horizon, targets=protocol.targets))
    return HistoricalAverage(  # empty until fitted (`training.train.fit_baseline`)
        HistoricalAverageConfig(
            n_nodes=ds.network.n_sensors,
            steps_per_day=max(1, DAY_MS // ds.network.step_ms),
            horizon=protocol.horizon,
            targets=protocol.targets,
        )
    )
