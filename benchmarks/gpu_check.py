"""GPU check (run on a CUDA machine): the serving Predictor and the forecaster body pick CUDA, and one
training epoch of the STFormer "full" preset on a PEMS08-sized network (170 sensors, 3 features, 12→12,
10,700 training windows as in the 6:2:2 split of the full file) is timed on the GPU against the CPU, plus
inference on 207 / 1,000 / 8,600 sensors. Prints a table and writes benchmarks/results/gpu_check.json
(or $OUT/gpu_check.json when OUT is set).
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from stream.network import Feature, Network
from training.model import PRESETS
from training.predictor import Predictor
from training.stformer import STFormer, STFormerConfig

TRAIN_WINDOWS = 10_700  # PEMS08 full: 17,856 steps, 60 % train, minus window + horizon


def _batch(b: int, n: int, f: int, device: str) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, 12, n, f, generator=g).to(device)  # [B, T, N, F]
    tf = torch.rand(b, 12, 2, generator=g).to(device)  # [B, T, 2]
    tf[..., 1] = (tf[..., 1] * 7).floor()
    m = torch.ones(b, 12, n, f, device=device)  # [B, T, N, F]
    y = torch.randn(b, 12, n, 3, generator=g).to(device)  # [B, H, N, out]
    return x, tf, m, y


def train_step_s(device: str, iters: int, batch: int = 16) -> float:
    cfg = STFormerConfig(n_nodes=170, in_features=3, targets=(0, 1, 2), **PRESETS["full"])  # type: ignore[arg-type]
    model = STFormer(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, tf, m, y = _batch(batch, 170, 3, device)
    for i in range(iters + 3):
        if i == 3:
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        loss = (model(x, tf, m) - y).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / iters


def infer_ms(device: str, n: int, reps: int = 10) -> float:
    cfg = STFormerConfig(n_nodes=n, in_features=1, targets=(0,), **PRESETS["full"])  # type: ignore[arg-type]
    model = STFormer(cfg).to(device).eval()
    x, tf, m, _ = _batch(1, n, 1, device)
    with torch.inference_mode():
        for i in range(reps + 2):
            if i == 2:
                if device == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
            model(x, tf, m)
        if device == "cuda":
            torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps * 1000


def main() -> None:
    assert torch.cuda.is_available(), "no CUDA device"
    net = Network.simple("gpu", 207, [Feature("speed")])
    pred = Predictor.baseline("persistence", net)
    vals = np.random.rand(2, 12, 207, 1).astype(np.float32)
    out = pred.predict(vals, np.ones_like(vals), np.zeros((2, 12), dtype=np.int64))
    res: dict[str, object] = {
        "machine": platform.node(),
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "predictor_default_device": str(pred.device),
        "predictor_output_shape": list(out.shape),
    }
    gpu_step = train_step_s("cuda", 50)
    cpu_step = train_step_s("cpu", 5)
    steps_per_epoch = TRAIN_WINDOWS // 16
    res.update(
        train_step_ms_gpu=gpu_step * 1000,
        train_step_ms_cpu=cpu_step * 1000,
        epoch_s_gpu=gpu_step * steps_per_epoch,
        epoch_s_cpu=cpu_step * steps_per_epoch,
        gpu_over_cpu_speedup_ratio=cpu_step / gpu_step,
    )
    for n in (207, 1000, 8600):
        res[f"infer_ms_gpu_{n}"] = infer_ms("cuda", n)
    res["infer_ms_cpu_207"] = infer_ms("cpu", 207, reps=3)
    for k, v in res.items():
        print(f"{k:32s} {v}")
    out_dir = Path(os.environ.get("OUT", Path(__file__).parent / "results"))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "gpu_check.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
