"""Run a bench or the trainer's plan with bf16 forced on a CPU without native bf16 (AVX2 only), to
measure what `precision auto` and the training autocast avoid there (both run fp32 on such a CPU).

    python docs/results/precision/emulated_bf16.py bench/precision.py --frames 4000 --threads 2 --batch 64
    python docs/results/precision/emulated_bf16.py -m trainer.cli plan --recipe cpu --measure-batch 256
"""

import runpy
import sys

import askexpert.backends.torch_backend as torch_backend
import askexpert.hardware as hardware

hardware._cpu_flags_bf16 = lambda: True  # the trainer's autocast reads this
torch_backend.cpu_has_bf16 = lambda: True  # the backend imported the check by name
if sys.argv[1] == "-m":
    sys.argv = [sys.argv[2], *sys.argv[3:]]
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
else:
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
