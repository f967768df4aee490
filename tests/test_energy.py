"""Energy readers on fixture trees and recorded-format outputs (askexpert/energy.py)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from askexpert.energy import (
    TegrastatsMeter,
    find_meter,
    ina3221_rails,
    jetson_meter,
    nvml_meter,
    parse_tegrastats,
    rails_total_mw,
    rapl_meter,
)

FIX = Path(__file__).parent / "fixtures" / "energy"


def test_rapl_sums_packages_and_wraps(tmp_path):
    root = tmp_path / "powercap"
    shutil.copytree(FIX / "powercap", root)
    meter = rapl_meter(root)
    assert "package-0 (intel-rapl:0)" in meter.source and "package-1 (intel-rapl:1)" in meter.source
    assert "core" not in meter.source and "mmio" not in meter.source  # subzones and MMIO duplicates left out
    meter.start()
    # package 0 wraps past max_energy_range_uj (262143328850): 328850 + 1 + 1000000 uJ; package 1 +2 J
    (root / "intel-rapl:0" / "energy_uj").write_text("1000000\n")
    (root / "intel-rapl:1" / "energy_uj").write_text("7000000\n")
    assert meter.stop() == pytest.approx((328850 + 1 + 1000000 + 2000000) * 1e-6)


def test_rapl_says_why_not(tmp_path):
    with pytest.raises(OSError, match="no package zone"):
        rapl_meter(tmp_path)


def test_jetson_rails_orin_nano_module_input():
    rails = ina3221_rails(FIX / "orin-nano")
    assert list(rails) == ["VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"]  # the sum-of-shunts channel 7 left out
    meter = jetson_meter(FIX / "orin-nano", interval_s=0.001)
    assert "VDD_IN (module input)" in meter.source
    meter.start()
    joules = meter.stop()
    assert joules == pytest.approx(5072 * 1196 / 1e6 * meter.seconds)  # constant 6.07 W over the interval


def test_jetson_rails_agx_orin_sum_without_nc():
    meter = jetson_meter(FIX / "agx-orin", interval_s=0.001)
    assert "sum of rails VDDQ_VDD2_1V8AO, VDD_CPU_CV, VDD_GPU_SOC, VIN_SYS_5V0" in meter.source
    watts = (19904 * 202 + 19904 * 81 + 4984 * 672 + 4984 * 80) / 1e6
    meter.start()
    assert meter.stop() == pytest.approx(watts * meter.seconds)


def test_parse_tegrastats_forms():
    nano = (FIX / "tegrastats-orin-nano.txt").read_text().splitlines()
    assert parse_tegrastats(nano[0]) == {"VDD_IN": 4868, "VDD_CPU_GPU_CV": 556, "VDD_SOC": 1428}
    assert parse_tegrastats(nano[2])["VDD_IN"] == 9250  # now/average/max: the first
    agx = parse_tegrastats((FIX / "tegrastats-agx-orin.txt").read_text())
    assert rails_total_mw(agx) == 5139 + 3268 + 5500 + 402 and "RAM" not in agx
    jp4 = parse_tegrastats((FIX / "tegrastats-nano-jp4.txt").read_text())
    assert jp4 == {"POM_5V_IN": 2426, "POM_5V_GPU": 0, "POM_5V_CPU": 240} and rails_total_mw(jp4) == 2426


def test_tegrastats_meter_integrates_lines():
    path = FIX / "tegrastats-orin-nano.txt"
    meter = TegrastatsMeter(interval_s=0.1, command=[sys.executable, "-c", f"print(open({str(path)!r}).read(), end='')"])
    meter.start()
    meter._proc.wait(10)  # every line written before stop
    assert meter.stop() == pytest.approx((4868 + 9132 + 9250) / 1000 * 0.1)


def test_nvml_meter_or_why_not():
    try:
        meter = nvml_meter()
    except OSError as exc:  # no nvidia-ml-py, or no driver (this box)
        assert str(exc).startswith("NVML:")
    else:
        assert "NVML" in meter.source


def test_find_meter_on_this_box_names_each_reason():
    meter, why_not = find_meter("cpu")
    assert meter is not None or any("RAPL" in w for w in why_not)
    meter, why_not = find_meter("cuda")
    assert meter is not None or any("NVML" in w for w in why_not)
