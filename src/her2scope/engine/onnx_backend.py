"""ONNX export of a run's model and an ONNX Runtime session that runs it (``predict --backend onnx``).

The exported graph is the model alone: input ``x`` is the mean/std-normalised float32 batch
``[B, 3, input_px, input_px]`` (the batch axis is dynamic, the image size is the run's), output
``logits`` ``[B, K]``. Preprocessing stays in :func:`her2scope.data.dataset.to_model_input`, so
both backends see the same numbers. The file carries, as metadata, the SHA-256 of the checkpoint it
was made from; loading it for a run whose checkpoint has changed since is refused.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from her2scope.engine.runinfo import file_sha256  # re-exported for export and predict
from her2scope.errors import ConfigError
from her2scope.layout import RunLayout

if TYPE_CHECKING:
    import torch
    from torch import nn

    from her2scope.engine.checkpoint import RunMeta

log = logging.getLogger(__name__)

#: ONNX operator set of the exported graphs (ONNX Runtime 1.15 and later run it).
OPSET = 17
INPUT_NAME = "x"
OUTPUT_NAME = "logits"


def default_onnx_path(run_dir: str | Path) -> Path:
    """Where ``her2scope export RUN --onnx`` writes, and where ``predict --backend onnx`` looks."""
    return RunLayout(Path(run_dir)).best_onnx


def _pool_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``[n_out, n_in]`` averaging weights of adaptive average pooling along one axis (torch's
    bins: ``floor(i·n_in/n_out)`` to ``ceil((i+1)·n_in/n_out)``)."""
    m = np.zeros((n_out, n_in), dtype=np.float32)
    for i in range(n_out):
        a = (i * n_in) // n_out
        b = -((-(i + 1) * n_in) // n_out)
        m[i, a:b] = 1.0 / (b - a)
    return m


def exportable(model: nn.Module, input_px: int) -> nn.Module:
    """``model`` with each adaptive average pooling whose output size does not divide its input
    size (AlexNet's 6×6 pool after a 15×15 map at 512 px) replaced by the same averages written as
    two matrix products, which the ONNX exporter supports. The image size is fixed at
    ``input_px`` (the run's); the model itself is not changed (a copy is returned when needed)."""
    import copy

    import torch
    from torch import nn

    sizes: dict[str, tuple[int, int]] = {}
    hooks = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.AdaptiveAvgPool2d):
            hooks.append(
                mod.register_forward_hook(
                    lambda _m, inp, _o, name=name: sizes.__setitem__(name, tuple(inp[0].shape[-2:]))
                )
            )
    if not hooks:
        return model
    try:
        was_training = model.training
        model.eval()
        with torch.inference_mode():
            p = next(model.parameters())
            model(torch.zeros(1, 3, input_px, input_px, dtype=p.dtype, device=p.device))
        model.train(was_training)
    finally:
        for h in hooks:
            h.remove()
    out = None
    for name, (h_in, w_in) in sizes.items():
        mod = model.get_submodule(name)
        osz: Any = mod.output_size  # int or (h, w), entries None for "same as the input"
        h_out, w_out = (osz, osz) if isinstance(osz, int) else osz
        h_out, w_out = h_out or h_in, w_out or w_in
        if h_in % h_out == 0 and w_in % w_out == 0:
            continue
        out = out if out is not None else copy.deepcopy(model)
        parent_name, _, child = name.rpartition(".")
        parent = out.get_submodule(parent_name) if parent_name else out
        setattr(parent, child, _matrix_pool(_pool_matrix(h_in, h_out), _pool_matrix(w_in, w_out)))
    return out if out is not None else model


def _matrix_pool_class() -> type:
    import torch
    from torch import nn

    class MatrixPool(nn.Module):
        """Adaptive average pooling of a fixed input size as ``P_h · x · P_wᵀ``."""

        ph: torch.Tensor  # buffers, registered below
        pw_t: torch.Tensor

        def __init__(self, ph: np.ndarray, pw: np.ndarray) -> None:
            super().__init__()
            self.register_buffer("ph", torch.from_numpy(ph))
            self.register_buffer("pw_t", torch.from_numpy(np.ascontiguousarray(pw.T)))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.matmul(torch.matmul(self.ph, x), self.pw_t)

    return MatrixPool


def _matrix_pool(ph: np.ndarray, pw: np.ndarray) -> nn.Module:
    return _matrix_pool_class()(ph, pw)


def export_onnx(model: nn.Module, meta: RunMeta, path: str | Path, checkpoint_sha256: str) -> Path:
    """Write ``model`` (eval mode, on the CPU) as ONNX to ``path``, atomically.

    Legacy (TorchScript-based) exporter, opset :data:`OPSET`, dynamic batch axis. The metadata
    records the model name, classes, input size, mean/std and ``checkpoint_sha256``.
    """
    import json

    import onnx
    import torch

    from her2scope._io import atomic_path

    model = model.to("cpu").eval()
    graph_model = exportable(model, meta.input_px)
    x = torch.zeros(2, 3, meta.input_px, meta.input_px)
    path = Path(path)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        # the legacy exporter is chosen on purpose (the dynamo one needs onnxscript)
        warnings.simplefilter("ignore", DeprecationWarning)
        # shape checks on non-batch axes (e.g. the ordinal head's) are constants of the graph
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            graph_model,
            (x,),
            str(tmp),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
        proto = onnx.load(str(tmp))
        info = {
            "her2scope_model_name": meta.model_name,
            "her2scope_classes": json.dumps(list(meta.classes)),
            "her2scope_input_px": str(meta.input_px),
            "her2scope_mean": json.dumps(list(meta.mean)),
            "her2scope_std": json.dumps(list(meta.std)),
            "her2scope_checkpoint_sha256": checkpoint_sha256,
        }
        for k, v in info.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = k, v
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
    return path


class OnnxRunner:
    """An ONNX Runtime CPU session for a run's exported model; ``logits(x)`` → ``[B, K]``."""

    def __init__(self, path: str | Path, meta: RunMeta, threads: int) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise ConfigError(
                "--backend onnx needs onnxruntime; install her2scope's 'onnx' extra "
                "(pip install 'her2scope[onnx]') or use --backend torch"
            ) from None
        self.path = Path(path)
        if not self.path.is_file():
            raise ConfigError(
                f"no ONNX model at '{self.path}'; write it with `her2scope export "
                f"{meta.run_dir or 'RUN'} --onnx` (or give --onnx FILE)"
            )
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, int(threads))
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(
                str(self.path), opts, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ConfigError(
                f"ONNX model '{self.path}' could not be loaded ({exc}); re-export it with "
                "`her2scope export RUN --onnx`"
            ) from None
        props = self.session.get_modelmeta().custom_metadata_map
        self._check(props, meta)
        self.threads = opts.intra_op_num_threads
        self.version = ort.__version__

    def _check(self, props: dict[str, str], meta: RunMeta) -> None:
        import json

        fix = f"re-export it with `her2scope export {meta.run_dir or 'RUN'} --onnx`"
        want = {
            "her2scope_model_name": meta.model_name,
            "her2scope_classes": json.dumps(list(meta.classes)),
            "her2scope_input_px": str(meta.input_px),
        }
        for key, value in want.items():
            if props.get(key) != value:
                raise ConfigError(
                    f"ONNX model '{self.path}' was not exported from this run "
                    f"({key.removeprefix('her2scope_')} {props.get(key)!r}, run {value!r}); {fix}"
                )
        if meta.checkpoint and Path(meta.checkpoint).is_file():
            sha = file_sha256(meta.checkpoint)
            if props.get("her2scope_checkpoint_sha256") != sha:
                raise ConfigError(
                    f"ONNX model '{self.path}' was exported from another version of "
                    f"'{meta.checkpoint}' (the checkpoint changed since); {fix}"
                )

    def logits(self, x: np.ndarray) -> np.ndarray:
        out = self.session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(x, np.float32)})
        return np.asarray(out[0])
