#!/usr/bin/env python3
"""tutti against llama.cpp on the same GGUF files: prefill and decode speed, side by side.

Run through scripts/speed-vs-llamacpp.sh, which builds both programs. For every model and
thread count, each repetition runs llama.cpp's own benchmark program (`llama-bench`, built
from the llama.cpp source and with the CMake flags of the llama-cpp-python build that
scripts/llamacpp-reference.sh makes) and then `tutti bench speed` on the same file, one
after the other, so that both see the same machine load; the order alternates between
repetitions. The best repetition of each counts (least disturbed by other load).

Measured, for both programs:
  prefill   tokens/s of one forward over a P-token prompt (llama-bench `pp P`);
  decode    ms per generated token for N tokens after a 1-token prompt
            (llama-bench `tg N` at depth 0) and after the P-token prompt (depth P).
llama-bench feeds random token ids, tutti a fixed English text cut to the same length: the
arithmetic per token does not depend on which ids they are. tutti's figure is a full
engine step (forward, softmax, top-k, choice, feedback), llama-bench's the forward alone.

With --ensemble, the demo pair also runs as an ensemble (`tutti bench speed -m A -m B`)
and the ensemble's ms/token is compared with the sum of its members' in that same run.
"""

import argparse
import json
import os
import subprocess
import sys
import time


def run_json(cmd, env=None):
    """Runs `cmd` and parses its stdout as JSON; exits with the command's stderr on failure."""
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    if p.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} failed (exit {p.returncode}):\n{p.stderr.strip()[-2000:]}")
    try:
        return json.loads(p.stdout)
    except json.JSONDecodeError as e:
        sys.exit(f"error: {' '.join(cmd)} printed no JSON ({e}):\n{p.stdout[:500]}")


# Models whose llama-bench prefill crashed with repacking on (llama.cpp's default); their
# prefill is measured with `--repack 0` from then on, and the table says so.
PREFILL_NO_REPACK = set()


def llama_prefill(bench, model, threads, prompt):
    """llama-bench `pp P` tokens/s, with llama.cpp's default (repacked weights) unless that
    crashed: the llama.cpp of llama-cpp-python 0.3.36 faults there on some AVX-512 CPUs."""
    cmd = [bench, "-m", model, "-t", str(threads), "-p", str(prompt), "-n", "0", "-r", "1",
           "-o", "json"]
    if model not in PREFILL_NO_REPACK:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if p.returncode == 0:
            return json.loads(p.stdout)[0]["avg_ts"]
        if p.returncode > 0:
            sys.exit(f"error: {' '.join(cmd)} failed (exit {p.returncode}):\n{p.stderr.strip()[-2000:]}")
        print(f"[speed] llama-bench prefill on {os.path.basename(model)} crashed with weight "
              f"repacking (signal {-p.returncode}); measuring its prefill with --repack 0 "
              f"(decode keeps llama.cpp's default)", file=sys.stderr, flush=True)
        PREFILL_NO_REPACK.add(model)
    return run_json(cmd + ["--repack", "0"])[0]["avg_ts"]


def llama(bench, model, threads, prompt, decode):
    """llama-bench: {'prefill_tps', 'decode_ms_short', 'decode_ms_long'} of one repetition.
    Decode is always llama.cpp's default (repacked weights): the number its users see."""
    out = {}
    out["prefill_tps"] = llama_prefill(bench, model, threads, prompt)
    rows = run_json([bench, "-m", model, "-t", str(threads), "-p", "0", "-n", str(decode),
                     "-d", f"0,{prompt}", "-r", "1", "-o", "json"])
    for r in rows:
        ms = r["avg_ns"] / 1e6 / r["n_gen"]
        out["decode_ms_short" if r["n_depth"] == 0 else "decode_ms_long"] = ms
    return out


def tutti_speed(tutti, models, threads, prompt, decode):
    env = dict(os.environ, RUST_LOG="warn")
    cmd = [tutti, "--quiet", "--threads", str(threads), "bench", "speed"]
    for m in models:
        cmd += ["-m", m]
    cmd += ["--device", "cpu", "--prompt-tokens", str(prompt), "--decode-tokens", str(decode),
            "--json"]
    return run_json(cmd, env)["rows"]


def tutti(tutti_bin, model, threads, prompt, decode):
    """tutti bench speed: the same three figures as `llama`."""
    long_row = tutti_speed(tutti_bin, [model], threads, prompt, decode)[0]
    short_row = tutti_speed(tutti_bin, [model], threads, 1, decode)[0]
    return {
        "prefill_tps": long_row["prefill_tokens_per_s"],
        "decode_ms_short": short_row["decode_ms_per_token"],
        "decode_ms_long": long_row["decode_ms_per_token"],
    }


def best(samples, key):
    vals = [s[key] for s in samples]
    return max(vals) if key.endswith("tps") else min(vals)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tutti", required=True, help="tutti binary (release build)")
    ap.add_argument("--llama-bench", required=True, help="llama-bench binary")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    ap.add_argument("--repeats", type=int, default=3, help="repetitions, best counts (default 3)")
    ap.add_argument("--prompt", type=int, default=512, help="prompt tokens (default 512)")
    ap.add_argument("--decode", type=int, default=64, help="decoded tokens (default 64)")
    ap.add_argument("--ensemble", action="store_true",
                    help="also the ensemble of all models vs the sum of its members")
    ap.add_argument("--out", help="write every sample and the summary as JSON here")
    ap.add_argument("models", nargs="+", help="GGUF files")
    args = ap.parse_args()
    try:
        threads = [int(t) for t in args.threads.split(",")]
    except ValueError:
        sys.exit(f"error: --threads {args.threads!r}: expected numbers like 1,2")
    if args.repeats < 1 or min(threads) < 1:
        sys.exit("error: --repeats and --threads must be at least 1")
    for m in args.models:
        if not os.path.isfile(m):
            sys.exit(f"error: no GGUF file {m}: scripts/fetch-models.sh fetches the demo models")

    samples = {}
    t0 = time.time()
    for rep in range(args.repeats):
        for model in args.models:
            for t in threads:
                key = (model, t)
                print(f"[speed] repetition {rep + 1}/{args.repeats}: {os.path.basename(model)}, "
                      f"{t} thread(s) ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
                runs = [("llama.cpp", lambda: llama(args.llama_bench, model, t, args.prompt, args.decode)),
                        ("tutti", lambda: tutti(args.tutti, model, t, args.prompt, args.decode))]
                if rep % 2 == 1:
                    runs.reverse()
                for name, f in runs:
                    samples.setdefault(key, {}).setdefault(name, []).append(f())

    summary = []
    for (model, t), by in samples.items():
        row = {"model": os.path.basename(model), "threads": t}
        for k in ("prefill_tps", "decode_ms_short", "decode_ms_long"):
            row[f"llamacpp_{k}"] = best(by["llama.cpp"], k)
            row[f"tutti_{k}"] = best(by["tutti"], k)
        # Speed ratios: above 1 means tutti is faster.
        row["prefill_ratio"] = row["tutti_prefill_tps"] / row["llamacpp_prefill_tps"]
        row["decode_short_ratio"] = row["llamacpp_decode_ms_short"] / row["tutti_decode_ms_short"]
        row["decode_long_ratio"] = row["llamacpp_decode_ms_long"] / row["tutti_decode_ms_long"]
        summary.append(row)

    p, n = args.prompt, args.decode
    print(f"\nbest of {args.repeats}; ratio = tutti's speed / llama.cpp's (above 1: tutti faster)")
    print(f"| model | threads | prefill {p} tok/s: llama.cpp | tutti | ratio "
          f"| decode ms/token (1-token prompt): llama.cpp | tutti | ratio "
          f"| decode ms/token (after {p}): llama.cpp | tutti | ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in summary:
        r["llamacpp_prefill_repack"] = not any(os.path.basename(m) == r["model"] for m in PREFILL_NO_REPACK)
        print(f"| {r['model']} | {r['threads']} "
              f"| {r['llamacpp_prefill_tps']:.1f} | {r['tutti_prefill_tps']:.1f} | {r['prefill_ratio']:.2f} "
              f"| {r['llamacpp_decode_ms_short']:.2f} | {r['tutti_decode_ms_short']:.2f} | {r['decode_short_ratio']:.2f} "
              f"| {r['llamacpp_decode_ms_long']:.2f} | {r['tutti_decode_ms_long']:.2f} | {r['decode_long_ratio']:.2f} |")

    if PREFILL_NO_REPACK:
        names = ", ".join(sorted(os.path.basename(m) for m in PREFILL_NO_REPACK))
        print(f"\nllama.cpp's prefill with repacked weights crashed on {names}: those prefill "
              f"figures are llama-bench --repack 0; every decode figure is llama.cpp's default")
    ensemble = []
    if args.ensemble and len(args.models) > 1:
        t = max(threads)
        for rep in range(args.repeats):
            print(f"[speed] ensemble repetition {rep + 1}/{args.repeats}, {t} thread(s)",
                  file=sys.stderr, flush=True)
            rows = tutti_speed(args.tutti, args.models, t, 1, n)
            members = sum(r["decode_ms_per_token"] for r in rows[:-1])
            ensemble.append({"threads": t, "members_ms": [r["decode_ms_per_token"] for r in rows[:-1]],
                             "ensemble_ms": rows[-1]["decode_ms_per_token"],
                             "ratio": rows[-1]["decode_ms_per_token"] / members})
        b = min(ensemble, key=lambda e: e["ratio"])
        worst = max(e["ratio"] for e in ensemble)
        print(f"\nensemble of {len(args.models)} ({t} threads, 1-token prompt, {n} tokens): "
              f"{b['ensemble_ms']:.2f} ms/token vs members' sum "
              f"{sum(b['members_ms']):.2f} = {b['ratio']:.3f}x (worst repetition {worst:.3f}x)")

    if args.out:
        doc = {"prompt_tokens": p, "decode_tokens": n, "repeats": args.repeats,
               "summary": summary, "ensemble": ensemble,
               "samples": [{"model": os.path.basename(m), "threads": t, **by}
                           for (m, t), by in samples.items()]}
        with open(args.out, "w") as f:
            json.dump(doc, f, indent=1)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
