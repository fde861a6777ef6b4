"""The inference path of ``predict_tiles``: backend, precision, memory format, threads and readers.

Three ways to run a model on tiles, chosen by :class:`InferenceOptions`:

- ``torch`` fp32 in channels_last memory format (the default): the same numbers as the eager
  model within float rounding (docs/performance.md gives the measured difference), on every CPU;
- ``torch`` with bf16 autocast on CPUs with native bf16: faster, but probabilities move by a few
  1e-3. ``precision="bf16"`` uses it as is; ``her2scope predict``'s default (``auto``) uses it
  with a guard (:func:`guarded_bf16`, :mod:`her2scope.scoring.guard`): a slide whose decisions sit
  within bf16's error of a threshold is scored again in fp32, so its calls are fp32's on every
  CPU. ``evaluate`` and training's validation stay fp32 (their metrics rank probabilities);
- ``onnx``: the run's exported graph (``her2scope export RUN --onnx``) in ONNX Runtime, fp32.

Pixels are read by reader threads that run ahead of the model (:func:`prefetch_batches`); the
number of readers and torch's (or ONNX Runtime's) threads are chosen together from the CPUs
given to the process (:func:`her2scope.engine.cpu_plan.plan_threads`), so the two never ask
for more cores than there are.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from her2scope.engine.cpu_plan import plan_threads
from her2scope.errors import ConfigError
from her2scope.tiling.scan import cpu_workers as available_cpus

if TYPE_CHECKING:
    import torch
    from torch import nn

    from her2scope.data.dataset import TileDataset
    from her2scope.engine.checkpoint import RunMeta

log = logging.getLogger(__name__)

Backend = Literal["torch", "onnx"]
Precision = Literal["auto", "fp32", "bf16"]
BACKENDS: tuple[str, ...] = ("torch", "onnx")
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class InferenceOptions:
    """How ``predict_tiles`` runs the model.

    ``precision``: ``auto`` is fp32 on a CPU and the run's ``train.precision`` autocast on CUDA (as
    before); ``bf16`` asks for bf16 autocast on a CPU too (used only where the CPU has native bf16,
    else fp32 with a warning; the record says which ran). ``onnx_path``: the ``.onnx`` file for
    ``backend="onnx"`` (None: ``RUN/checkpoints/best.onnx``). ``threads``: torch's / ONNX
    Runtime's threads; ``readers``: tile-reading threads (0: read in the calling thread); None
    chooses both from the CPUs (:func:`her2scope.engine.cpu_plan.plan_threads`).
    """

    backend: Backend = "torch"
    precision: Precision = "auto"
    channels_last: bool = True
    onnx_path: str | None = None
    threads: int | None = None
    readers: int | None = None

    def problems(self) -> list[str]:
        out = []
        if self.backend not in BACKENDS:
            out.append(f"backend {self.backend!r}: choose one of {', '.join(BACKENDS)}")
        if self.precision not in PRECISIONS:
            out.append(f"precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}")
        if self.backend == "onnx" and self.precision == "bf16":
            out.append("precision bf16 runs on the torch backend only; use --backend torch")
        for name in ("threads", "readers"):
            v = getattr(self, name)
            lo = 1 if name == "threads" else 0
            if v is not None and not lo <= v <= 1024:
                out.append(f"{name} {v}: must be between {lo} and 1024")
        return out

    def fingerprint(self) -> dict[str, Any]:
        """What changes the numbers (not threads or readers): for predict's resume check."""
        return {"backend": self.backend, "precision": self.precision}


def cpu_bf16_native() -> bool:
    """True when this CPU computes bf16 in hardware (x86 AVX512-BF16 or AMX; Arm BF16)."""
    import platform

    import torch

    arch = platform.machine().lower()
    if arch in ("x86_64", "amd64", "i386", "i686"):
        cpu = getattr(torch, "cpu", None)
        for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
            fn = getattr(cpu, probe, None)
            if fn is not None and bool(fn()):
                return True
        return False
    try:  # aarch64: oneDNN reports bf16 only where the CPU has it
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def guarded_bf16(options: InferenceOptions, device_type: str) -> bool:
    """Whether ``predict`` runs bf16 with an fp32 recheck near decisions
    (:mod:`her2scope.scoring.guard`): ``precision="auto"`` on the torch backend, on a CPU with
    native bf16. Elsewhere ``auto`` stays fp32 (and, on CUDA, the run's autocast)."""
    return (
        options.backend == "torch"
        and options.precision == "auto"
        and device_type == "cpu"
        and cpu_bf16_native()
    )


class Predictor:
    """A model ready to turn uint8 tile batches into softmax probabilities, and a record of how.

    Built once per call (the ONNX session, the memory-format change and the precision choice are
    paid once); :meth:`probs` takes ``uint8 [B, 3, H, W]`` and returns ``float32 [B, K]``.
    """

    def __init__(
        self,
        model: nn.Module | None,
        meta: RunMeta,
        device: torch.device,
        options: InferenceOptions | None = None,
    ) -> None:
        import torch

        opts = options or InferenceOptions()
        if problems := opts.problems():
            raise ConfigError("inference options: " + "; ".join(problems))
        self.meta = meta
        self.options = opts
        self.device = device
        self.k = len(meta.classes)
        self.threads, self.readers = plan_threads(
            available_cpus(), device.type, opts.threads, opts.readers
        )
        self.mean = torch.tensor(meta.mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(meta.std, device=device).view(1, 3, 1, 1)
        self.model = model
        self.onnx: Any = None
        self.autocast_dtype: torch.dtype | None = None
        self.channels_last = False
        self.note = ""
        if opts.backend == "onnx":
            if device.type != "cpu":
                raise ConfigError(
                    f"--backend onnx runs on the CPU; use --device cpu (not {device}) or "
                    "--backend torch"
                )
            from her2scope.engine.onnx_backend import OnnxRunner, default_onnx_path

            path = opts.onnx_path or default_onnx_path(meta.run_dir or ".")
            self.onnx = OnnxRunner(path, meta, self.threads)
            return
        if model is None:
            raise ValueError("the torch backend needs a model")
        self.channels_last = bool(opts.channels_last)
        self.autocast_dtype = self._autocast_dtype(opts.precision)

    def _autocast_dtype(self, precision: str) -> torch.dtype | None:
        import torch

        if self.device.type == "cuda":
            want = self.meta.config.train.precision if precision == "auto" else precision
            if want == "fp32":
                return None
            if want == "auto":
                return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            return torch.bfloat16 if want == "bf16" else torch.float16
        if precision != "bf16":
            return None
        if self.device.type == "cpu" and cpu_bf16_native():
            return torch.bfloat16
        self.note = "bf16 asked for, but this CPU has no native bf16: ran in fp32"
        log.warning("precision bf16: this CPU has no native bf16 support; running in fp32")
        return None

    @property
    def precision(self) -> str:
        import torch

        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.autocast_dtype]

    def record(self) -> dict[str, Any]:
        """The path used, for a slide JSON's ``inference`` object."""
        import torch

        rec: dict[str, Any] = {
            "backend": self.options.backend,
            "precision": self.precision,
            "precision_asked": self.options.precision,
            "channels_last": self.channels_last,
            "device": str(self.device),
            "threads": self.threads,
            "readers": self.readers,
            "torch_version": torch.__version__,
        }
        if self.onnx is not None:
            rec["onnx_path"] = str(Path(self.onnx.path).resolve())
            rec["onnxruntime_version"] = self.onnx.version
        if self.note:
            rec["note"] = self.note
        return rec

    def prepare(self) -> contextlib.AbstractContextManager[Any]:
        """Context for a prediction: eval mode, memory format and threads set, undone after."""
        return _prepared(self)

    def probs(self, xb: torch.Tensor) -> np.ndarray:
        import torch

        from her2scope.data.dataset import to_model_input

        x = to_model_input(
            xb.to(self.device, non_blocking=True), self.mean, self.std, self.channels_last
        )
        if not self.channels_last:  # batches come channels-last from the reader
            x = x.contiguous()
        if self.onnx is not None:
            logits = torch.from_numpy(self.onnx.logits(x.numpy()))
        else:
            assert self.model is not None
            with self._autocast():
                out = self.model(x)
            logits = out if isinstance(out, torch.Tensor) else out[0]  # inception aux outputs
        p = torch.softmax(logits.float(), dim=1).cpu().numpy()
        if p.shape[1] != self.k:
            raise ValueError(f"model gives {p.shape[1]} classes, run has {self.k}")
        return p

    def _autocast(self) -> Any:
        import torch

        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)


@contextlib.contextmanager
def _prepared(p: Predictor) -> Iterator[None]:
    import torch

    model = p.model if p.onnx is None else None
    was_training = model.training if model is not None else False
    convs = [w for w in model.parameters() if w.ndim == 4] if model is not None else []
    was_cl = bool(convs) and convs[0].is_contiguous(memory_format=torch.channels_last)
    threads_before = torch.get_num_threads()
    if p.device.type == "cpu" and p.onnx is None:
        torch.set_num_threads(p.threads)
    if model is not None:
        model.to(p.device).eval()
        if p.channels_last and not was_cl:
            model.to(memory_format=torch.channels_last)
    try:
        with torch.inference_mode():
            yield
    finally:
        if model is not None:
            if p.channels_last and not was_cl:  # leave a training model as it was given
                model.to(memory_format=torch.contiguous_format)
            model.train(was_training)
        torch.set_num_threads(threads_before)


def prefetch_batches(ds: TileDataset, batch_size: int, readers: int) -> Iterator[torch.Tensor]:
    """uint8 ``[B, 3, H, W]`` batches of ``ds`` (views of ``[B, H, W, 3]`` memory) in order, read up to ``2 × readers`` batches ahead
    by ``readers`` threads (0: read here, one batch at a time).

    Each thread reads through its own copy of the dataset (its own open slide handles, which are
    not shared between threads); JPEG decoding, resizing and most of the stain transform release
    the GIL, so reading overlaps the model.
    """
    import copy
    from concurrent.futures import ThreadPoolExecutor

    import torch

    n = len(ds)
    spans = [(a, min(a + batch_size, n)) for a in range(0, n, batch_size)]

    def read(d: TileDataset, a: int, b: int) -> torch.Tensor:
        # one array per batch, one torch op: per-tile tensors cost a parallel region each
        rgb = np.stack([d.read_rgb(i) for i in range(a, b)])
        return torch.from_numpy(rgb).permute(0, 3, 1, 2)  # NCHW view of NHWC memory

    if readers <= 0:
        for a, b in spans:
            yield read(ds, a, b)
        return
    local = threading.local()
    copies: list[Any] = []
    lock = threading.Lock()

    def job(a: int, b: int) -> torch.Tensor:
        d = getattr(local, "ds", None)
        if d is None:
            d = local.ds = copy.copy(ds)
            d._slides = {}  # this thread's own handles
            with lock:
                copies.append(d)
        return read(d, a, b)

    pool = ThreadPoolExecutor(max_workers=readers, thread_name_prefix="her2scope-read")
    pending: deque[Any] = deque()
    todo = iter(spans)
    try:
        for a, b in todo:
            pending.append(pool.submit(job, a, b))
            if len(pending) >= 2 * readers:
                break
        while pending:
            batch = pending.popleft().result()
            nxt = next(todo, None)
            if nxt is not None:
                pending.append(pool.submit(job, *nxt))
            yield batch
    finally:
        for f in pending:
            f.cancel()
        pool.shutdown(wait=True)
        for d in copies:
            d.close()
