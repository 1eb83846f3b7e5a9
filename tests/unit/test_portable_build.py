"""The installed llama.cpp runs on any x86-64 with AVX2, not only on the machine that built it."""

from __future__ import annotations

import importlib.util
import os
import re
import signal
from pathlib import Path

import pytest

from providers.llamacpp import DEFAULT_EMBEDDED, PORTABLE_REINSTALL, LlamaCppServer, system_info
from providers.supervisor import Exit

if importlib.util.find_spec("llama_cpp") is None:
    if os.environ.get("CI"):
        raise RuntimeError("CI must install the local extra: its build is tested there")
    pytest.skip("the local extra is not installed", allow_module_level=True)


def test_the_installed_llama_cpp_is_built_for_the_avx2_baseline_without_avx512_or_amx() -> None:
    info = system_info()

    # A native build on a CPU that lists AVX-512 or AMX uses them, and crashed on a
    # VM whose CPU flags promised them; the portable build never does.
    assert "AVX2 = 1" in info, info
    assert not re.search(r"\b(AVX512\w*|AMX\w*) = 1", info), info


@pytest.mark.parametrize("how", [signal.SIGILL, signal.SIGSEGV, signal.SIGBUS])
def test_a_server_dying_of_a_cpu_fault_points_to_the_portable_build(how: signal.Signals) -> None:
    server = LlamaCppServer(DEFAULT_EMBEDDED, Path("model.gguf"))

    assert PORTABLE_REINSTALL in server.hint(Exit(pid=1, returncode=-how, output="", at=0.0))
    assert server.hint(Exit(pid=1, returncode=-signal.SIGKILL, output="", at=0.0)) == ""
