"""The TensorRT engine cache's pure logic, kept apart from TensorRT so that it is tested without it.

- Which GPU an engine is for: compute capability and SM count, not the name (every Orin module,
  from the Nano's 8 SMs to the AGX's 16, calls itself "Orin"), plus the TensorRT version.
- One build per engine: processes that share the cache (the `*-engines` start-up step, a restarted
  server, a second hub) take a file lock; the second one finds the first one's engine.
- Atomic writes under a unique temporary name (PIDs are 1 in every container), then a rename.
- How fp16 is asked of TensorRT: see `build_flags`.
"""

from __future__ import annotations

import fcntl
import os
import re
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from askexpert.log import get_logger

log = get_logger("askexpert.tensorrt")


@dataclass(frozen=True)
class GpuId:
    """What makes an engine portable between two GPUs: same compute capability and SM count."""

    name: str
    capability: tuple[int, int]
    sm_count: int

    @property
    def tag(self) -> str:
        slug = re.sub(r"[^A-Za-z0-9.]+", "_", self.name).strip("_")[:32] or "gpu"
        return f"{slug}-sm{self.capability[0]}{self.capability[1]}x{self.sm_count}"

    @property
    def fast_fp16(self) -> bool:
        """Native fast fp16 (the CUDA-side answer TensorRT 10.5+ asks for instead of platform_has_fast_fp16)."""
        return self.capability in ((5, 3), (6, 0), (6, 2)) or self.capability >= (7, 0)


def trt_tag(version: str) -> str:
    return "trt" + re.sub(r"[^0-9.]+", "_", version)


def engine_path(cache_dir: Path, sha256: str, role: str, trt_version: str, gpu: GpuId, profile_tag: str) -> Path:
    """A new checkpoint, role, TensorRT version, GPU kind or profile is a new file."""
    return Path(cache_dir) / "tensorrt" / f"{sha256[:20]}-{role}-{trt_tag(trt_version)}-{gpu.tag}-{profile_tag}.engine"


def timing_cache_path(cache_dir: Path, trt_version: str, gpu: GpuId) -> Path:
    """One timing cache per GPU kind and TensorRT version: layers already timed are not timed again."""
    return Path(cache_dir) / "tensorrt" / f"timing-{trt_tag(trt_version)}-{gpu.tag}.cache"


@dataclass(frozen=True)
class BuildFlags:
    strongly_typed: bool  # NetworkDefinitionCreationFlag.STRONGLY_TYPED
    fp16_flag: bool  # BuilderFlag.FP16 (weak typing: TensorRT may pick fp16 kernels per layer)


def build_flags(trt_version: str, fp16: bool, gpu: GpuId, has_fp16_flag: bool) -> BuildFlags:
    """How to ask TensorRT for fp16 from our fp32 ONNX.

    TensorRT 10.x (JetPack 6 ships 10.3) builds fp16 through BuilderFlag.FP16 on a weakly typed
    network; the flag is refused for strongly typed networks, deprecated from 10.12 and removed in
    11, where precision must be in the ONNX graph itself. So: 10.x and fp16 -> weakly typed + FP16;
    fp32 -> no flag (10.x) or strongly typed (11+); fp16 on 11+ needs an fp16 ONNX, which this
    project does not export yet: a clear error, not a silent fp32 engine.
    """
    major = int(m.group(1)) if (m := re.match(r"(\d+)", trt_version)) else 10
    if major >= 11 or not has_fp16_flag:
        if fp16:
            raise ValueError(
                f"TensorRT {trt_version} builds fp16 only from an fp16 ONNX graph, which is not exported "
                "yet: set ATE_TRT_FP16=0 or use TensorRT 10 (JetPack 6)"
            )
        return BuildFlags(strongly_typed=True, fp16_flag=False)
    return BuildFlags(strongly_typed=False, fp16_flag=fp16 and gpu.fast_fp16)


def atomic_write(path: Path, data: bytes) -> None:
    """Write beside `path` under a unique name, then rename: a half-written file never looks cached."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on `path`.lock, held across processes and containers sharing the folder."""
    lock = path.with_name(path.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+b") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("another process is building this file; waiting for it", file=str(path))
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def cached_or_built(path: Path, build: Callable[[], bytes], usable: Callable[[bytes], bool] = lambda _: True) -> tuple[bytes, bool]:
    """The file's bytes, built under the lock when missing or unusable; (data, True) when built here."""
    if path.is_file() and usable(data := path.read_bytes()):
        return data, False
    with file_lock(path):
        if path.is_file() and usable(data := path.read_bytes()):  # built by whoever held the lock
            return data, False
        data = build()
        atomic_write(path, data)
        return data, True
