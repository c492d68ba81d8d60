#!/usr/bin/env python3
"""Records llama.cpp's answers with prompts evaluated one token at a time (`-ub 1`).

tutti's default numerics compute every row of a prompt with llama.cpp's one-row kernels
(batch invariance), which is what llama.cpp itself does when its physical batch is one
token. For each prompt of `tests/fixtures/llamacpp/NAME.json` this starts the project's
llama-server (scripts/llama-server.sh builds it) with `--ubatch-size 1`, asks for the
greedy continuation with the top-10 log-probabilities of every step, and writes
`tests/fixtures/llamacpp/NAME-ubatch1.json`:

    {"model_file", "model_sha256", "generator",
     "cases": [{"prompt", "tokens", "greedy", "top_logprobs": [[[id, logprob], ...], ...]}]}

`--compare` also runs the server with its default batch and prints how many greedy
continuations each configuration shares with the other fixture, as a check that the two
fixtures come from the same llama.cpp.

Usage: scripts/llamacpp_ubatch1_reference.py --server PATH [--models-dir DIR] [--compare]
"""
import argparse
import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODELS = {"smollm2": "SmolLM2-135M-Instruct.Q4_1.gguf", "gemma3": "gemma-3-270m-q4_k_m.gguf"}
THREADS = int(os.environ.get("PROBE_THREADS", "2"))
CTX = os.environ.get("PROBE_CTX", "2048")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.load(r)


class Server:
    def __init__(self, binary, model, extra):
        self.port = free_port()
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [binary, "-m", str(model), "--host", "127.0.0.1", "--port", str(self.port),
             "-t", str(THREADS), "-tb", str(THREADS), "-np", "1", "-c", CTX,
             "--no-warmup", "-fa", "off", *extra],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                sys.exit(f"llama-server exited:\n{self.log.read().decode(errors='replace')}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2):
                    return
            except Exception:
                time.sleep(0.3)
        self.stop()
        sys.exit("llama-server did not start within 120 s")

    def complete(self, tokens, n):
        # One request per step: the server holds back the probabilities of a token that
        # ends inside a UTF-8 sequence, so a many-token answer can skip steps. No prompt
        # cache: a reused prefix leaves the server's KV cells in another order, which
        # changes its attention sums.
        greedy, top = [], []
        for _ in range(n):
            body = {"prompt": tokens + greedy, "n_predict": 1, "n_probs": 10,
                    "temperature": 0.0, "top_k": 1, "cache_prompt": False,
                    "return_tokens": True}
            ans = post(f"http://127.0.0.1:{self.port}/completion", body)
            ids = ans.get("tokens") or []
            probs = ans.get("completion_probabilities") or []
            if len(ids) != 1 or len(probs) != 1:
                break  # end of generation
            greedy.append(ids[0])
            top.append([[t["id"], t["logprob"]] for t in probs[0]["top_logprobs"]])
        return greedy, top

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def cpu_description():
    """The CPU model and the SIMD flags that choose llama.cpp's kernels."""
    model, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    wanted = ["avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw", "avx512vl",
              "avx512_vnni", "avx512_bf16", "amx_int8"]
    return f"{model}; " + " ".join(f for f in wanted if f in flags)


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--server", required=True, help="llama-server binary")
    ap.add_argument("--models-dir", default=str(ROOT / "models-cache"))
    ap.add_argument("--compare", action="store_true")
    args = ap.parse_args()
    fixtures = ROOT / "tests/fixtures/llamacpp"
    for name, fname in MODELS.items():
        model = Path(args.models_dir) / fname
        ref = json.loads((fixtures / f"{name}.json").read_text())
        configs = [("ubatch1", ["-ub", "1"])]
        if args.compare:
            configs.append(("default", []))
        for label, extra in configs:
            server = Server(args.server, model, extra)
            try:
                cases = []
                for c in ref["cases"]:
                    greedy, top = server.complete(c["tokens"], len(c["greedy"]))
                    cases.append({"prompt": c["prompt"], "tokens": c["tokens"],
                                  "greedy": greedy, "top_logprobs": top})
            finally:
                server.stop()
            same = sum(a["greedy"] == b["greedy"] for a, b in zip(cases, ref["cases"]))
            print(f"{name} {label}: greedy equal to {name}.json on {same}/{len(cases)} prompts")
            if label == "ubatch1":
                doc = {"model_file": fname, "model_sha256": sha256_of(model),
                       "cpu": cpu_description(),
                       "generator": "llama-server from the llama-cpp-python 0.3.36 sdist, CPU, "
                                    f"-t {THREADS} -ub 1 -fa off, temperature 0, n_probs 10",
                       "cases": cases}
                out = fixtures / f"{name}-ubatch1.json"
                tmp = out.with_suffix(".json.partial")
                tmp.write_text(json.dumps(doc, indent=1) + "\n")
                os.replace(tmp, out)
                print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
