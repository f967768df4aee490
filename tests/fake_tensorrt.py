"""A stand-in for the `tensorrt` module, for CPU-only CI: exercises TensorRTBackend's control flow.

It implements just the API surface the backend uses (builder, ONNX parser, optimisation profile,
runtime, engine, execution context with tensor addresses). The "engine" is the ONNX file itself,
run with ONNX Runtime on the CPU buffers the backend hands over by address. It proves the build /
cache / warm-up / batching / tail plumbing, not TensorRT's numerics: those need a Jetson.
"""

from __future__ import annotations

import ctypes
import types
from enum import Enum

import numpy as np
import onnx

MAGIC = b"FAKE-TRT-ENGINE\n"
builds: list[dict] = []


class Logger:
    WARNING = 2

    def __init__(self, level: int = 2) -> None:
        self.level = level


class NetworkDefinitionCreationFlag(Enum):
    EXPLICIT_BATCH = 0


class MemoryPoolType(Enum):
    WORKSPACE = 0


class BuilderFlag(Enum):
    FP16 = 0


class TensorIOMode(Enum):
    INPUT = 1
    OUTPUT = 2


class DataType(Enum):
    FLOAT = 0


class _Tensor:
    def __init__(self, name: str, shape: tuple[int, ...]) -> None:
        self.name, self.shape = name, shape


class _Network:
    def __init__(self) -> None:
        self.inputs: list[_Tensor] = []
        self.onnx: bytes = b""

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    def get_input(self, i: int) -> _Tensor:
        return self.inputs[i]


class OnnxParser:
    def __init__(self, network: _Network, logger: Logger) -> None:
        self.network = network
        self.num_errors = 0

    def parse_from_file(self, path: str) -> bool:
        model = onnx.load(path)
        for inp in model.graph.input:
            dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in inp.type.tensor_type.shape.dim)
            self.network.inputs.append(_Tensor(inp.name, dims))
        with open(path, "rb") as f:
            self.network.onnx = f.read()
        return True

    def get_error(self, i: int) -> str:
        return ""


class _Profile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple] = {}

    def set_shape(self, name: str, lo, opt, hi) -> None:
        self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))


class _Config:
    def __init__(self) -> None:
        self.flags: set = set()
        self.profiles: list[_Profile] = []
        self.workspace = 0

    def set_memory_pool_limit(self, pool, size: int) -> None:
        self.workspace = size

    def set_flag(self, flag) -> None:
        self.flags.add(flag)

    def add_optimization_profile(self, profile: _Profile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1


class Builder:
    platform_has_fast_fp16 = True

    def __init__(self, logger: Logger) -> None:
        pass

    def create_network(self, flags: int = 0) -> _Network:
        return _Network()

    def create_builder_config(self) -> _Config:
        return _Config()

    def create_optimization_profile(self) -> _Profile:
        return _Profile()

    def build_serialized_network(self, network: _Network, config: _Config) -> bytes:
        (profile,) = config.profiles
        builds.append({"shapes": profile.shapes, "fp16": BuilderFlag.FP16 in config.flags, "workspace": config.workspace})
        (name,) = profile.shapes
        lo, _, hi = profile.shapes[name]
        header = f"{name} {lo[0]} {hi[0]}\n".encode()
        return MAGIC + header + network.onnx


class _Engine:
    def __init__(self, data: bytes) -> None:
        import onnxruntime as ort

        header, model = data[len(MAGIC):].split(b"\n", 1)
        name, lo, hi = header.decode().split()
        self.min_batch, self.max_batch = int(lo), int(hi)
        self.session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        self.names = [self.session.get_inputs()[0].name, self.session.get_outputs()[0].name]

    @property
    def num_io_tensors(self) -> int:
        return 2

    def get_tensor_name(self, i: int) -> str:
        return self.names[i]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return TensorIOMode.INPUT if name == self.names[0] else TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name: str) -> DataType:
        return DataType.FLOAT

    def create_execution_context(self) -> "_Context":
        return _Context(self)


class _Context:
    def __init__(self, engine: _Engine) -> None:
        self.engine = engine
        self.in_shape: tuple[int, ...] | None = None
        self.addr: dict[str, int] = {}

    def set_input_shape(self, name: str, shape) -> bool:
        if not self.engine.min_batch <= shape[0] <= self.engine.max_batch:
            return False
        self.in_shape = tuple(shape)
        return True

    def _run(self) -> np.ndarray:
        n = int(np.prod(self.in_shape))
        x = np.ctypeslib.as_array((ctypes.c_float * n).from_address(self.addr[self.engine.names[0]]))
        return self.engine.session.run(None, {self.engine.names[0]: x.reshape(self.in_shape).copy()})[0]

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        x = np.zeros(self.in_shape, dtype=np.float32)  # shape inference, the slow way
        return self.engine.session.run(None, {self.engine.names[0]: x})[0].shape

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self.addr[name] = ptr
        return True

    def execute_async_v3(self, stream: int) -> bool:
        y = np.ascontiguousarray(self._run(), dtype=np.float32)
        ctypes.memmove(self.addr[self.engine.names[1]], y.ctypes.data, y.nbytes)
        return True


class Runtime:
    def __init__(self, logger: Logger) -> None:
        pass

    def deserialize_cuda_engine(self, data: bytes):
        if not data.startswith(MAGIC):
            return None
        return _Engine(data)


def module(version: str = "10.3.0-fake") -> types.ModuleType:
    m = types.ModuleType("tensorrt")
    for name, value in globals().items():
        if not name.startswith("__"):
            setattr(m, name, value)
    m.__version__ = version
    return m
