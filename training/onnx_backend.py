"""ONNX Runtime inference of a trained model on a CPU: the serving path's faster engine.

On a CPU, eager torch spends much of a small model's forward between its kernels (dispatch, copies for
head reshapes, un-fused bias adds); ONNX Runtime fuses those into its graph. `OnnxModel` exports the
loaded model (the verified checkpoint's weights, so nothing new is trusted) to ONNX in memory with the
batch axis dynamic — the TorchScript-based exporter, ~0.5 s for the Los-loop STFormer — and runs it in
an `InferenceSession` with as many threads as torch has.

Before it is used, the session's forecast of a probe batch is compared with torch's; beyond `atol` (in
scaled units) it is refused with `OnnxBackendError`, so an exporter or runtime defect can never change
what is served. `training.predictor.Predictor(backend=...)` decides when to use it.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from torch import nn

INPUTS = ("x", "time_features", "mask")


class OnnxBackendError(RuntimeError):
    """The model could not be exported or ONNX Runtime's forecasts differ from torch's."""


def onnx_available() -> bool:
    """Whether onnx (for the export) and onnxruntime are importable."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def export_onnx(model: nn.Module, example: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> bytes:
    """The model as an ONNX graph (opset 17) with a dynamic batch axis; `example` fixes the other axes."""
    buf = io.BytesIO()
    model = model.eval()
    with warnings.catch_warnings():
        # The TorchScript exporter's deprecation notice and tracer warnings about shape checks, which
        # hold for every batch the session will see (window and sensors are fixed by the model).
        warnings.simplefilter("ignore")
        with torch.no_grad():
            torch.onnx.export(
                model,
                example,
                buf,  # type: ignore[arg-type]  # a file object: the TorchScript exporter takes one
                input_names=list(INPUTS),
                output_names=["y"],
                dynamic_axes={name: {0: "batch"} for name in (*INPUTS, "y")},
                opset_version=17,
                dynamo=False,
            )
    return buf.getvalue()


class OnnxModel:
    """A model's forward `(x, time_features, mask) -> y` in ONNX Runtime, checked against torch."""

    def __init__(
        self,
        model: nn.Module,
        example: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        *,
        threads: int = 1,
        atol: float = 1e-3,
    ) -> None:
        import onnxruntime as ort

        try:
            graph = export_onnx(model, example)
        except Exception as exc:  # the exporter raises many types; all mean "not exportable"
            raise OnnxBackendError(f"{type(model).__name__} could not be exported to ONNX: {exc}") from exc
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: its warnings go to stderr, not to our logs
        # Threads sleep between runs instead of spinning: the cores are shared with ingest and the sink.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
            self._inputs = [i.name for i in self.session.get_inputs()]  # the exporter drops unused ones
            got = self(*(t.numpy() for t in example))
        except Exception as exc:  # onnxruntime's own error types: the graph does not load or run
            raise OnnxBackendError(f"ONNX Runtime could not run {type(model).__name__}: {exc}") from exc
        with torch.no_grad():
            expected = model(*example).float().numpy()
        if got.shape != expected.shape:
            raise OnnxBackendError(f"ONNX Runtime output shape {got.shape}, torch {expected.shape}")
        diff = float(np.nanmax(np.abs(got - expected))) if got.size else 0.0
        if not np.array_equal(np.isnan(got), np.isnan(expected)) or not diff <= atol:
            raise OnnxBackendError(
                f"ONNX Runtime's forecast differs from torch's by {diff:.3g} (scaled units; allowed {atol})"
            )

    def __call__(self, x: np.ndarray, time_features: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """float32 arrays as the model takes them -> y [B, H, N, out] float32."""
        feeds = {"x": x, "time_features": time_features, "mask": mask}
        return self.session.run(None, {k: np.ascontiguousarray(feeds[k], np.float32) for k in self._inputs})[
            0
        ]
