#!/usr/bin/env python3
"""Write llama.cpp reference fixtures (tokens, top-10 raw logits, greedy ids) for the demo GGUFs.

Run through scripts/llamacpp-reference.sh (which builds llama-cpp-python and fetches models).

Raw mode: no chat template. Prompts are tokenized with
llm.tokenize(prompt.encode(), add_bos=<GGUF tokenizer.ggml.add_bos_token, llama.cpp's default>,
special=False); the logits are the raw last-position logits after llm.eval (no sampling
transforms); greedy decoding takes the argmax of the raw logits one token at a time and stops
after an end-of-generation id (included) or 32 ids.
"""

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import llama_cpp
from llama_cpp import Llama

N_THREADS = 2
N_CTX = 512
TOP_K = 10
MAX_GREEDY = 32
SPEED_TOKENS = 64
SPEED_REPEATS = 3
GENERATOR = f"llama-cpp-python {llama_cpp.__version__} (llama.cpp vendored), CPU, n_threads={N_THREADS}"

MODELS = {
    "smollm2": "SmolLM2-135M-Instruct.Q4_1.gguf",
    "gemma3": "gemma-3-270m-q4_k_m.gguf",
}

PROMPTS = [
    "The capital of France is",
    "Question: What is 17 + 25?\nAnswer:",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    (
        "The history of the printing press begins in the fifteenth century, when Johannes "
        "Gutenberg combined movable metal type, oil-based ink and a wooden screw press. Within "
        "a few decades, printing shops had spread across Europe, books became cheaper, and "
        "literacy slowly began to"
    ),
    "Le café crème à Paris coûte très cher, mais à Zürich et à São Paulo",
    "東京は日本の首都です。寿司が好き 🍣🎌 and emoji 😀👍",
    "Shopping list:\n1. Apples\n2. Bread\n3.",
    "Why is the sky blue?",
    "  leading spaces,\ttabs and  double  spaces:",
]


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def meta_bool(v):
    return str(v).strip().lower() in ("true", "1")


def is_eog(llm, tok):
    vocab = llama_cpp.llama_model_get_vocab(llm._model.model)
    return bool(llama_cpp.llama_vocab_is_eog(vocab, tok))


def last_logits(llm):
    # llama-cpp-python 0.3.36 no longer copies logits into llm.scores unless logits_all=True;
    # read the raw logits of the last evaluated position straight from the context.
    ptr = llm._ctx.get_logits_ith(-1)
    return np.array(np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)), dtype=np.float32, copy=True)


def run_case(llm, prompt, add_bos):
    tokens = llm.tokenize(prompt.encode("utf-8"), add_bos=add_bos, special=False)
    llm.reset()
    llm.eval(tokens)
    logits = last_logits(llm)
    order = np.argsort(-logits, kind="stable")[:TOP_K]
    top = [[int(i), float(logits[i])] for i in order]
    greedy = []
    for _ in range(MAX_GREEDY):
        tok = int(np.argmax(logits))
        greedy.append(tok)
        if is_eog(llm, tok):
            break
        llm.eval([tok])
        logits = last_logits(llm)
    return {"prompt": prompt, "add_bos": add_bos, "tokens": [int(t) for t in tokens],
            "top": top, "greedy": greedy}


def measure_speed(llm, add_bos):
    tokens = llm.tokenize(PROMPTS[0].encode("utf-8"), add_bos=add_bos, special=False)
    llm.reset()
    llm.eval(tokens)
    tok = int(np.argmax(last_logits(llm)))
    # one warm-up step, not timed
    llm.eval([tok])
    tok = int(np.argmax(last_logits(llm)))
    t0 = time.perf_counter()
    for _ in range(SPEED_TOKENS):
        llm.eval([tok])
        tok = int(np.argmax(last_logits(llm)))
    dt = time.perf_counter() - t0
    return dt


def dump_json(doc, path):
    """JSON with one case (or one speed result) per line, everything else one key per line."""
    lines = ["{"]
    items = list(doc.items())
    for n, (k, v) in enumerate(items):
        sep = "," if n + 1 < len(items) else ""
        if isinstance(v, list) and v and isinstance(v[0], dict):
            lines.append(f" {json.dumps(k)}: [")
            for m, item in enumerate(v):
                comma = "," if m + 1 < len(v) else ""
                lines.append("  " + json.dumps(item, ensure_ascii=False) + comma)
            lines.append(" ]" + sep)
        else:
            lines.append(f" {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}{sep}")
    lines.append("}")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def describe_metadata(md):
    keys = [
        "general.architecture", "general.name", "general.file_type",
        "tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.add_bos_token",
        "tokenizer.ggml.add_eos_token", "tokenizer.ggml.add_space_prefix",
        "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id",
        "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id",
    ]
    out = {k: md[k] for k in keys if k in md}
    arch = md.get("general.architecture", "")
    for k, v in md.items():
        if k.startswith(arch + ".") and k not in out:
            out[k] = v
    out["has_chat_template"] = "tokenizer.chat_template" in md
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models-dir", required=True)
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--speed", action="store_true", help="also measure decode speed -> speed.json")
    ap.add_argument("--only", nargs="*", choices=list(MODELS))
    args = ap.parse_args()

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    speed = []
    for name in args.only or list(MODELS):
        fname = MODELS[name]
        path = Path(args.models_dir) / fname
        if not path.is_file():
            sys.exit(f"missing {path}: run scripts/fetch-models.sh")
        t_start = time.perf_counter()
        llm = Llama(model_path=str(path), n_ctx=N_CTX, n_threads=N_THREADS,
                    n_threads_batch=N_THREADS, logits_all=False, verbose=False, seed=0)
        md = llm.metadata
        add_bos = meta_bool(md.get("tokenizer.ggml.add_bos_token", "false"))
        info = describe_metadata(md)
        eog = [t for t in range(llm.n_vocab()) if is_eog(llm, t)]
        print(f"== {name}: {fname} (load + metadata + eog scan: {time.perf_counter() - t_start:.1f} s)")
        for k, v in info.items():
            print(f"   {k} = {v}")
        print(f"   n_vocab = {llm.n_vocab()}, token_bos = {llm.token_bos()}, "
              f"token_eos = {llm.token_eos()}, end-of-generation ids = {eog}")

        cases = []
        for prompt in PROMPTS:
            c = run_case(llm, prompt, add_bos)
            text = llm.detokenize(c["greedy"]).decode("utf-8", errors="replace")
            print(f"   {prompt[:40]!r}: {len(c['tokens'])} tokens, top3={c['top'][:3]}, "
                  f"greedy({len(c['greedy'])})={text[:60]!r}")
            cases.append(c)
        doc = {"model_file": fname, "model_sha256": sha256_of(path), "generator": GENERATOR,
               "cases": cases}
        dump_json(doc, out_dir / f"{name}.json")
        print(f"   wrote {name}.json ({time.perf_counter() - t_start:.1f} s since load start)")

        if args.speed:
            load_before = os.getloadavg()[0]
            runs = [measure_speed(llm, add_bos) for _ in range(SPEED_REPEATS)]
            dt = min(runs)  # best of N: least disturbed by other load on the machine
            ms = dt * 1000 / SPEED_TOKENS
            print(f"   decode speed: {SPEED_TOKENS / dt:.1f} tokens/s, {ms:.2f} ms/token")
            speed.append({"model": fname, "n_threads": N_THREADS, "decode_tokens": SPEED_TOKENS,
                          "ms_per_token": round(ms, 3), "tokens_per_s": round(SPEED_TOKENS / dt, 2),
                          "loadavg_1min_before": round(load_before, 2),
                          "all_runs_ms_per_token": [round(r * 1000 / SPEED_TOKENS, 3) for r in runs]})
        del llm

    if args.speed:
        doc = {"generator": GENERATOR,
               "method": "eval the first prompt, one untimed greedy step, then time "
                         f"{SPEED_TOKENS} greedy single-token llm.eval calls (argmax included); "
                         f"best of {SPEED_REPEATS} runs",
               "note": "machine-dependent: measured on the machine that regenerated the "
                       "fixtures (see README.md); compare only against runs on the same machine",
               "cpu_count": os.cpu_count(),
               "system_info": llama_cpp.llama_print_system_info().decode(errors="replace").strip(),
               "results": speed}
        dump_json(doc, out_dir / "speed.json")


if __name__ == "__main__":
    main()
