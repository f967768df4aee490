"""Energy over an interval, from what the hardware tells: Linux powercap (RAPL, Intel and AMD),
NVML on NVIDIA GPUs, and the INA3221 power rails of NVIDIA Jetsons (sysfs, or `tegrastats`).

Why one interface: the profiler (bench/profile_device.py) and the cost model need joules per
call whatever the device, and must say where they came from. Every reader measures what its
sensor covers (a CPU package, a GPU board, a Jetson module's input), idle draw included: the
source string says which. Where none works, `find_meter` says why for each, and energy is
left out rather than guessed.

    meter, why_not = find_meter("cpu")
    meter.start(); work(); joules = meter.stop()
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable, Sequence

POWERCAP = Path("/sys/class/powercap")
I2C_DRIVERS = Path("/sys/bus/i2c/drivers")
MODULE_INPUT_RAILS = ("VDD_IN", "POM_5V_IN")  # a Jetson module's whole input, where its board has the rail (jtop's choice too)


class Meter(ABC):
    """Joules between start() and stop(); `source` names the sensor and what it covers."""

    source: str
    seconds: float = 0.0  # wall time of the last interval

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def stop(self) -> float:
        """Joules since start()."""


class CounterMeter(Meter):
    """A cumulative energy counter (RAPL energy_uj, NVML total energy): the difference of two
    reads, per counter, allowing one wrap-around where the counter has a range."""

    def __init__(self, source: str, read: Callable[[], Sequence[int]], joules_per_unit: float, ranges: Sequence[int | None]) -> None:
        self.source, self.read, self.unit, self.ranges = source, read, joules_per_unit, list(ranges)
        self._t0, self._c0 = 0.0, list[int]()

    def start(self) -> None:
        self._t0, self._c0 = time.perf_counter(), list(self.read())

    def stop(self) -> float:
        c1 = list(self.read())
        self.seconds = time.perf_counter() - self._t0
        total = 0
        for a, b, span in zip(self._c0, c1, self.ranges):
            total += (b - a) % (span + 1) if span else b - a
        return total * self.unit


class SampledMeter(Meter):
    """Power read every `interval_s` on a thread and integrated (trapezoids): for sensors that
    give power only (INA3221 rails, NVML on GPUs without an energy counter)."""

    def __init__(self, source: str, read_w: Callable[[], float], interval_s: float = 0.02) -> None:
        self.source, self.read_w, self.interval_s = source, read_w, interval_s
        self._samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        self._samples.append((time.perf_counter(), self.read_w()))

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def start(self) -> None:
        self._samples, self._stop = [], threading.Event()
        self._sample()
        self._thread = threading.Thread(target=self._run, name="energy-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> float:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
        s = self._samples
        self.seconds = s[-1][0] - s[0][0]
        return sum((t1 - t0) * (p0 + p1) / 2 for (t0, p0), (t1, p1) in zip(s, s[1:]))


# ------------------------------------------------------------------------------------ RAPL
def rapl_meter(root: Path = POWERCAP) -> Meter:
    """The CPU packages' energy from powercap zones named package-N (intel-rapl:N; AMD Zen
    through the same driver, or amd-rapl:N): their sum, each wrapping at max_energy_range_uj.
    Raises OSError saying why where there is none or it cannot be read (root only since Linux 5.10)."""
    zones = sorted(z for z in root.glob("*-rapl:*") if z.name.count(":") == 1 and _text(z / "name").startswith("package"))
    if not zones:
        raise OSError(f"RAPL: no package zone under {root}")
    files = [z / "energy_uj" for z in zones]
    ranges = [int(_text(z / "max_energy_range_uj")) for z in zones]
    for f in files:
        try:
            int(_text(f))
        except PermissionError as exc:
            raise OSError(f"RAPL: {f} is readable by root only (Linux 5.10 and later)") from exc

    def read() -> list[int]:
        return [int(_text(f)) for f in files]

    names = ", ".join(f"{_text(z / 'name')} ({z.name})" for z in zones)
    return CounterMeter(f"RAPL powercap {names}: CPU package energy", read, 1e-6, ranges)


# ------------------------------------------------------------------------------------ NVML
def nvml_meter(index: int = 0) -> Meter:
    """GPU `index`'s energy from NVML (package nvidia-ml-py, imported here only): the total-energy
    counter (mJ, Volta and later), else board power (mW) sampled. Raises OSError saying why not."""
    try:
        import pynvml
    except ImportError as exc:
        raise OSError("NVML: nvidia-ml-py is not installed (pip install nvidia-ml-py)") from exc
    try:
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        name = pynvml.nvmlDeviceGetName(handle)
    except pynvml.NVMLError as exc:
        raise OSError(f"NVML: {exc}") from exc
    name = name.decode() if isinstance(name, bytes) else name
    try:
        pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        return CounterMeter(
            f"NVML total energy counter of GPU {index} ({name}): board energy",
            lambda: [pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)],
            1e-3,
            [None],
        )
    except pynvml.NVMLError:
        return SampledMeter(f"NVML board power of GPU {index} ({name}), sampled", lambda: pynvml.nvmlDeviceGetPowerUsage(handle) / 1000)


# ------------------------------------------------------------------------------------ Jetson
def ina3221_rails(root: Path = I2C_DRIVERS) -> dict[str, tuple[Path, Path]]:
    """A Jetson's INA3221 rails as the hwmon driver shows them (JetPack 5 and later, as jtop reads
    them): label -> (in<N>_input in mV, curr<N>_input in mA). Unconnected (NC) channels and the
    sum-of-shunts channel 7 are left out."""
    rails = {}
    for label in sorted(root.glob("ina3221*/*/hwmon/hwmon*/in*_label")):
        name, channel = _text(label), label.name[2:].split("_")[0]
        if "NC" in name or channel == "7":
            continue
        rails[name] = (label.parent / f"in{channel}_input", label.parent / f"curr{channel}_input")
    return rails


def jetson_meter(root: Path = I2C_DRIVERS, interval_s: float = 0.02) -> Meter:
    """A Jetson module's power from its INA3221 rails, sampled: the module input rail where the
    board has one (VDD_IN on Orin Nano/NX), else the sum of all rails (AGX Orin). Raises OSError."""
    rails = ina3221_rails(root)
    if not rails:
        raise OSError(f"Jetson: no INA3221 hwmon rails under {root}")
    chosen = [r for r in MODULE_INPUT_RAILS if r in rails][:1] or sorted(rails)
    paths = [rails[r] for r in chosen]

    def read_w() -> float:
        return sum(int(_text(v)) * int(_text(c)) for v, c in paths) / 1e6  # mV * mA = uW

    read_w()
    what = f"rail {chosen[0]} (module input)" if len(chosen) == 1 else "sum of rails " + ", ".join(chosen)
    return SampledMeter(f"Jetson INA3221 {what}, sampled every {interval_s * 1000:g} ms", read_w, interval_s)


_TEGRA_RAIL = re.compile(r"\b([A-Z][A-Z0-9_]*) (\d+)(?:mW)?/(\d+)(?:mW)?(?:/\d+(?:mW)?)?(?=\s|$)")


def parse_tegrastats(line: str) -> dict[str, int]:
    """Each power rail's current draw in mW from one `tegrastats` line: "VDD_IN 5000mW/4900mW"
    (JetPack 5: now/average), "VDD_IN 5000mW/4900mW/5100mW" (later: now/average/max) or
    "POM_5V_IN 2426/2426" (JetPack 4, no unit). RAM and swap ("4722/7844MB") are not rails."""
    return {m.group(1): int(m.group(2)) for m in _TEGRA_RAIL.finditer(line)}


def rails_total_mw(rails: dict[str, int]) -> int:
    """The module's draw: its input rail where present, else the sum of the rails."""
    return next((rails[r] for r in MODULE_INPUT_RAILS if r in rails), sum(rails.values()))


class TegrastatsMeter(Meter):
    """Energy from a running `tegrastats --interval MS` (where the rails are not readable from
    sysfs, e.g. in a container): each line's module power times the interval."""

    def __init__(self, interval_s: float = 0.02, command: Sequence[str] | None = None) -> None:
        self.interval_s = interval_s
        self.command = list(command or ["tegrastats", "--interval", str(round(interval_s * 1000))])
        self.source = f"Jetson power rails from `{' '.join(self.command)}`"
        self._lines: list[str] = []

    def start(self) -> None:
        self._lines, self._t0 = [], time.perf_counter()
        self._proc = subprocess.Popen(self.command, stdout=subprocess.PIPE, text=True)
        self._reader = threading.Thread(target=lambda: self._lines.extend(self._proc.stdout), daemon=True)
        self._reader.start()

    def stop(self) -> float:
        if self._proc.poll() is None:
            self._proc.terminate()
        self._proc.wait(5)
        self._reader.join(5)
        self.seconds = time.perf_counter() - self._t0
        return sum(rails_total_mw(parse_tegrastats(line)) for line in self._lines) / 1000 * self.interval_s


# ------------------------------------------------------------------------------------ choice
def find_meter(device: str = "cpu") -> tuple[Meter | None, list[str]]:
    """The first reader that works for `device` ("cpu", "cuda", "cuda:N"), and why each earlier one
    did not: GPUs by NVML, then a Jetson's rails (no NVML there); CPUs by RAPL, then a Jetson's rails."""
    readers: list[Callable[[], Meter]]
    if device.startswith("cuda"):
        readers = [lambda: nvml_meter(int(device.partition(":")[2] or 0)), jetson_meter]
    else:
        readers = [rapl_meter, jetson_meter]
    if shutil.which("tegrastats"):
        readers.append(TegrastatsMeter)
    why_not = []
    for reader in readers:
        try:
            return reader(), why_not
        except (OSError, ValueError) as exc:
            why_not.append(str(exc))
    return None, why_not


def _text(path: Path) -> str:
    return path.read_text().strip()
