"""TensorRT backend (Jetson / any CUDA GPU): ONNX from the pack -> fp16 engine -> CUDA inference.

- `tensorrt` is imported only when this backend is chosen; without it the constructor raises
  `TensorRTUnavailable` (an ImportError) that says what to install.
- Each model is exported to ONNX with a dynamic batch axis (`askexpert.onnx_export.onnx_for`, the
  same files the ONNX Runtime backend runs), then built into an engine with one optimisation profile
  (batch min / opt / max) and fp16 where the GPU has fast fp16 (`engine_cache.build_flags`).
- Engines are built in their own step (`edge-node build-engine`, `expert-hub build-engines`, run by
  compose before the servers start), seconds on a desktop GPU, minutes on a Jetson; a server that
  finds none builds it and says so. Builds share a timing cache, take a file lock (one build per
  engine, whoever asks), log TensorRT's own messages and their progress through structlog, and are
  reported through `on_status(state, **info)` (`building-engine`, `engine-ready`, `warming-up`).
- Engines are cached under `CACHE_DIR/tensorrt/`, keyed by the checkpoint's sha256 and role, the
  TensorRT version, the GPU's compute capability and SM count, the batch profile and the precision
  (`engine_cache`); a stale or foreign engine is never loaded, a corrupt one is rebuilt.
- Inference runs on the engine's own CUDA stream; buffers are torch CUDA tensors (JetPack and CUDA
  images ship PyTorch): frames are uploaded as uint8 and normalised on the GPU; tails run on the
  trunk's tokens without leaving it.

Batch profile: `ATE_TRT_MIN_BATCH` (1), `ATE_TRT_OPT_BATCH` (8), `ATE_TRT_MAX_BATCH` (32),
`ATE_TRT_WORKSPACE_MB` (1024), `ATE_TRT_FP16` (1); or the constructor's keyword arguments.
A call with more rows than the max batch runs in chunks.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from askexpert.backends.base import Backend, Classifier, ExpertLibrary, group_rows
from askexpert.backends.engine_cache import (
    GpuId,
    atomic_write,
    build_flags,
    cached_or_built,
    engine_path,
    file_lock,
    timing_cache_path,
)
from askexpert.frames import blank_frames
from askexpert.log import get_logger
from askexpert.onnx_export import onnx_for
from askexpert.pack import ExpertEntry, ModelEntry, Pack

log = get_logger("askexpert.tensorrt")

StatusHook = Callable[..., None]

INSTALL_HINT = (
    "the tensorrt backend needs NVIDIA TensorRT's Python bindings and a CUDA GPU. On a Jetson, use "
    "the project's L4T image (docker/Dockerfile.jetson, JetPack 6) or `sudo apt install "
    "python3-libnvinfer` from JetPack; on x86-64 with CUDA 12, `pip install tensorrt-cu12==10.3.0` "
    "(or use docker/Dockerfile.cuda). Without a GPU choose --backend onnx or torch."
)


class TensorRTUnavailable(ImportError):
    """TensorRT (or a CUDA GPU) is not there: the message says what to install."""


def import_tensorrt() -> Any:
    try:
        import tensorrt as trt  # lazy on purpose: optional, GPU-only dependency
    except ImportError as exc:  # also OSError-wrapped libnvinfer misses surface as ImportError
        raise TensorRTUnavailable(f"cannot import tensorrt ({exc}): {INSTALL_HINT}") from exc
    return trt


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


@dataclass(frozen=True)
class Profile:
    """The engine's dynamic batch range and precision."""

    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 32
    fp16: bool = True
    workspace_mb: int = 1024

    def __post_init__(self) -> None:
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise ValueError(f"need 1 <= min <= opt <= max batch, got {self.min_batch}/{self.opt_batch}/{self.max_batch}")

    @classmethod
    def from_env(cls, **override: Any) -> "Profile":
        values = dict(
            min_batch=_env_int("ATE_TRT_MIN_BATCH", 1),
            opt_batch=_env_int("ATE_TRT_OPT_BATCH", 8),
            max_batch=_env_int("ATE_TRT_MAX_BATCH", 32),
            fp16=os.environ.get("ATE_TRT_FP16", "1").lower() not in ("0", "false", "no"),
            workspace_mb=_env_int("ATE_TRT_WORKSPACE_MB", 1024),
        )
        values.update({k: v for k, v in override.items() if v is not None})
        values["opt_batch"] = min(max(values["opt_batch"], values["min_batch"]), values["max_batch"])
        return cls(**values)

    @property
    def tag(self) -> str:
        return f"b{self.min_batch}-{self.opt_batch}-{self.max_batch}-{'fp16' if self.fp16 else 'fp32'}"


def onnx_plan(pack: Pack, entries: Sequence[ExpertEntry] = (), classifier: ModelEntry | None = None) -> list[tuple[str, ModelEntry, str]]:
    """(name, entry, role) of every ONNX model the backend builds engines from."""
    plan: list[tuple[str, ModelEntry, str]] = []
    if classifier is not None:
        plan.append(("generalist", classifier, "vit"))
    if any(e.kind == "tail" for e in entries):
        assert pack.manifest.trunk is not None
        plan.append(("trunk", pack.manifest.trunk, "trunk"))
    plan += [(e.key, e, "tail" if e.kind == "tail" else "vit") for e in entries]
    return plan


TRT_LOG_LEVELS = {"INTERNAL_ERROR": "critical", "ERROR": "error", "WARNING": "warning", "INFO": "info", "VERBOSE": "debug"}


def structlog_trt_logger(trt: Any) -> Any:
    """A trt.ILogger that writes TensorRT's messages into the structured (JSON) log, at their level."""

    class Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: Any, msg: str) -> None:
            level = TRT_LOG_LEVELS.get(getattr(severity, "name", str(severity)).rsplit(".", 1)[-1], "info")
            getattr(log, level)("tensorrt", message=msg)

    return Logger()


def progress_monitor(trt: Any, model: str) -> Any | None:
    """A trt.IProgressMonitor (TensorRT 10+) that logs each build phase as it starts and ends."""
    if not hasattr(trt, "IProgressMonitor"):
        return None

    class Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.started: dict[str, float] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            self.started[phase_name] = time.perf_counter()
            if parent_phase is None:
                log.info("tensorrt build phase", model=model, phase=phase_name, steps=num_steps)

        def step_complete(self, phase_name: str, step: int) -> bool:
            return True  # never cancel

        def phase_finish(self, phase_name: str) -> None:
            seconds = round(time.perf_counter() - self.started.pop(phase_name, time.perf_counter()), 1)
            if seconds >= 1:
                log.info("tensorrt build phase done", model=model, phase=phase_name, seconds=seconds)

    return Monitor()


_TRT_TO_TORCH = {
    "FLOAT": "float32",
    "HALF": "float16",
    "INT32": "int32",
    "INT8": "int8",
    "BOOL": "bool",
    "INT64": "int64",
    "BF16": "bfloat16",
}


class _Engine:
    """One deserialised engine, its execution context and I/O names; calls are serialised."""

    def __init__(self, trt: Any, engine: Any, device: Any, name: str) -> None:
        import torch

        self.trt, self.engine, self.device, self.name = trt, engine, device, name
        self.context = engine.create_execution_context()
        if self.context is None:
            raise RuntimeError(f"TensorRT could not create an execution context for {name} (GPU memory?)")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or len(outputs) != 1:
            raise RuntimeError(f"engine {name} has inputs {inputs} and outputs {outputs}; expected one of each")
        self.input, self.output = inputs[0], outputs[0]
        self.in_dtype = getattr(torch, _TRT_TO_TORCH[engine.get_tensor_dtype(self.input).name])
        self.out_dtype = getattr(torch, _TRT_TO_TORCH[engine.get_tensor_dtype(self.output).name])
        self.lock = threading.Lock()
        self.stream = torch.cuda.Stream(device)  # its own stream: enqueueV3 on the default one serialises with everything

    def __call__(self, x: Any) -> Any:
        """torch tensor (N, ...) on the engine's device -> output tensor (N, ...) on the same device."""
        import torch

        x = x.to(self.device, self.in_dtype).contiguous()
        with self.lock:
            if not self.context.set_input_shape(self.input, tuple(x.shape)):
                raise ValueError(f"{self.name}: input shape {tuple(x.shape)} is outside the engine's profile")
            out = torch.empty(tuple(self.context.get_tensor_shape(self.output)), dtype=self.out_dtype, device=self.device)
            self.context.set_tensor_address(self.input, x.data_ptr())
            self.context.set_tensor_address(self.output, out.data_ptr())
            self.stream.wait_stream(torch.cuda.current_stream(self.device))  # x and out are ready
            ok = self.context.execute_async_v3(self.stream.cuda_stream)
            self.stream.synchronize()
            if not ok:
                raise RuntimeError(f"TensorRT execution failed for {self.name}")
        return out


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(
        self,
        device: str = "cuda",
        *,
        profile: Profile | None = None,
        cache_dir: Path | None = None,
        on_status: StatusHook | None = None,
        min_batch: int | None = None,
        opt_batch: int | None = None,
        max_batch: int | None = None,
        fp16: bool | None = None,
    ) -> None:
        self.trt = import_tensorrt()
        import torch

        if device in ("cpu", "", None):
            device = "cuda"  # TensorRT always runs on the GPU; `--device cpu` is just the default
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise TensorRTUnavailable(f"TensorRT runs on a CUDA GPU, not on {device!r}")
        if not torch.cuda.is_available():
            raise TensorRTUnavailable(f"PyTorch sees no CUDA GPU: {INSTALL_HINT}")
        props = torch.cuda.get_device_properties(self.device)
        self.gpu = GpuId(props.name, (props.major, props.minor), props.multi_processor_count)
        self.profile = profile or Profile.from_env(min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch, fp16=fp16)
        if cache_dir is None:
            from askexpert import onnx_export

            cache_dir = onnx_export.CACHE_DIR
        self.cache_dir = Path(cache_dir)
        self.on_status = on_status
        self.flags = build_flags(self.trt.__version__, self.profile.fp16, self.gpu, hasattr(self.trt.BuilderFlag, "FP16"))
        self.trt_logger = structlog_trt_logger(self.trt)
        self.runtime = self.trt.Runtime(self.trt_logger)
        log.info(
            "tensorrt backend",
            tensorrt=self.trt.__version__,
            gpu=self.gpu.tag,
            profile=self.profile.tag,
            strongly_typed=self.flags.strongly_typed,
            fp16_flag=self.flags.fp16_flag,
        )

    # ------------------------------------------------------------ status
    def _status(self, state: str, **info: Any) -> None:
        if self.on_status is not None:
            try:
                self.on_status(state, **info)
            except Exception:  # reporting must not stop a build
                log.exception("tensorrt status hook failed", state=state)

    # ------------------------------------------------------------ engines
    def engine_file(self, entry: ModelEntry, role: str) -> Path:
        return engine_path(self.cache_dir, entry.sha256, role, self.trt.__version__, self.gpu, self.profile.tag)

    def build_engine(self, onnx_path: Path, name: str) -> bytes:
        """ONNX -> serialised engine (dynamic batch profile, `self.flags`), with the shared timing cache."""
        trt, p = self.trt, self.profile
        builder = trt.Builder(self.trt_logger)
        network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if self.flags.strongly_typed else 0)
        parser = trt.OnnxParser(network, self.trt_logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise RuntimeError(f"TensorRT cannot parse {onnx_path}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, p.workspace_mb << 20)
        if self.flags.fp16_flag:
            config.set_flag(trt.BuilderFlag.FP16)
        if (monitor := progress_monitor(trt, name)) is not None:
            config.progress_monitor = monitor
        profile = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            rest = tuple(int(d) for d in tuple(tensor.shape)[1:])
            if any(d < 0 for d in rest):
                raise RuntimeError(f"{onnx_path}: only the batch axis may be dynamic, input shape is {tuple(tensor.shape)}")
            profile.set_shape(tensor.name, (p.min_batch, *rest), (p.opt_batch, *rest), (p.max_batch, *rest))
        config.add_optimization_profile(profile)
        timing_path = timing_cache_path(self.cache_dir, trt.__version__, self.gpu)
        timing = config.create_timing_cache(timing_path.read_bytes() if timing_path.is_file() else b"")
        config.set_timing_cache(timing, ignore_mismatch=False)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise RuntimeError(f"TensorRT failed to build an engine for {name} from {onnx_path} (see its log above)")
        with file_lock(timing_path):  # merge with what builds elsewhere added meanwhile, then replace
            timing = config.get_timing_cache()
            if timing_path.is_file():
                timing.combine(config.create_timing_cache(timing_path.read_bytes()), ignore_mismatch=True)
            atomic_write(timing_path, bytes(timing.serialize()))
        return bytes(serialized)

    def ensure_engine(self, pack: Pack, entry: ModelEntry, role: str, name: str) -> Any:
        """The deserialised engine for one model: from the cache, or built now under the lock."""
        path = self.engine_file(entry, role)
        loaded: dict[str, Any] = {}

        def usable(data: bytes) -> bool:
            loaded["engine"] = self.runtime.deserialize_cuda_engine(data)
            if loaded["engine"] is None:
                log.warning("cached TensorRT engine unusable, rebuilding", engine=str(path))
            return loaded["engine"] is not None

        def build() -> bytes:
            onnx_path = onnx_for(pack, entry, role, self.cache_dir)
            log.warning(
                "building TensorRT engine: first use of this model on this GPU, may take minutes on a Jetson",
                model=name,
                onnx=str(onnx_path),
                engine=str(path),
                profile=self.profile.tag,
            )
            self._status("building-engine", model=name, engine=path.name)
            t0 = time.perf_counter()
            data = self.build_engine(onnx_path, name)
            seconds = round(time.perf_counter() - t0, 1)
            log.info("tensorrt engine built", model=name, engine=str(path), seconds=seconds, mb=round(len(data) / 2**20, 1))
            self._status("engine-ready", model=name, engine=path.name, build_s=seconds)
            return data

        data, built = cached_or_built(path, build, usable)
        if built and not usable(data):
            raise RuntimeError(f"TensorRT built an engine for {name} it cannot load")
        if not built:
            log.info("tensorrt engine from cache", model=name, engine=str(path))
        return loaded["engine"]

    def load(self, pack: Pack, entry: ModelEntry, role: str, name: str) -> _Engine:
        return _Engine(self.trt, self.ensure_engine(pack, entry, role, name), self.device, name)

    # ------------------------------------------------------------ preprocessing
    def upload(self, pack: Pack, images: np.ndarray) -> Any:
        """uint8 (N, H, W, C) -> normalised float32 (N, C, H, W) on the GPU (as base.to_input)."""
        import torch

        spec = pack.manifest.input
        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device, non_blocking=True)
        x = x.permute(0, 3, 1, 2).float().mul_(1.0 / 255.0)
        mean = torch.tensor(spec.mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        std = torch.tensor(spec.std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        return ((x - mean) / std).contiguous()

    def run(self, engine: _Engine, x: Any) -> Any:
        """Run in chunks of at most max_batch rows."""
        import torch

        m = self.profile.max_batch
        if x.shape[0] <= m:
            return engine(x)
        return torch.cat([engine(x[i : i + m]) for i in range(0, x.shape[0], m)])

    def warm_up(self, pack: Pack, call: Callable[[np.ndarray], Any], name: str) -> None:
        self._status("warming-up", model=name)
        for n in sorted({self.profile.min_batch, self.profile.opt_batch}):
            call(blank_frames(pack.manifest.input, n))

    # ------------------------------------------------------------ Backend interface
    def classifier(self, pack: Pack, entry: ModelEntry) -> Classifier:
        clf = _TrtClassifier(self, pack, self.load(pack, entry, "vit", "generalist"))
        self.warm_up(pack, clf, "generalist")
        return clf

    def experts(self, pack: Pack, entries: Sequence[ExpertEntry]) -> ExpertLibrary:
        trunk = None
        if any(e.kind == "tail" for e in entries):
            assert pack.manifest.trunk is not None
            trunk = self.load(pack, pack.manifest.trunk, "trunk", "trunk")
        engines = {e.key: self.load(pack, e, "tail" if e.kind == "tail" else "vit", e.key) for e in entries}
        lib = _TrtExperts(self, pack, trunk, engines, {e.key for e in entries if e.kind == "tail"})
        for key in lib.keys:
            self.warm_up(pack, lambda imgs, k=key: lib(imgs, [k] * len(imgs)), key)
        return lib


class _TrtClassifier(Classifier):
    def __init__(self, backend: TensorRTBackend, pack: Pack, engine: _Engine) -> None:
        self.backend, self.pack, self.engine = backend, pack, engine

    def __call__(self, images: np.ndarray) -> np.ndarray:
        x = self.backend.upload(self.pack, images)
        return self.backend.run(self.engine, x).float().cpu().numpy()


class _TrtExperts(ExpertLibrary):
    def __init__(self, backend: TensorRTBackend, pack: Pack, trunk: _Engine | None, engines: dict[str, _Engine], tails: set[str]) -> None:
        self.backend, self.pack, self.trunk, self.engines, self.tails = backend, pack, trunk, engines, tails
        self.n_classes = len(pack.manifest.classes)
        self.keys = list(engines)

    def __call__(self, images: np.ndarray, keys: Sequence[str]) -> np.ndarray:
        import torch

        b = self.backend
        x = b.upload(self.pack, images)
        groups = group_rows(keys)
        tokens = b.run(self.trunk, x) if self.trunk is not None and self.tails & groups.keys() else None
        out = torch.empty((len(keys), self.n_classes), dtype=torch.float32, device=b.device)
        for key, rows in groups.items():
            idx = torch.from_numpy(rows).to(b.device)
            inp = tokens.index_select(0, idx) if key in self.tails else x.index_select(0, idx)
            out[idx] = b.run(self.engines[key], inp).float()
        return out.cpu().numpy()
