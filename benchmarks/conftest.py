"""The benchmark scripts' quick checks (test_quick.py) run with the test suite's oneDNN cap: on
VMs whose AMX tile state is not preserved, AMX bf16 kernels return NaN at random (tests/conftest.py
says more), and a tiny sweep whose only trial diverged has no images/s to print."""

import os

os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
