#!/usr/bin/env python3
"""Generate tiny random `transformers` models plus reference logits for parity tests.

For every family this writes tests/fixtures/tiny/<family>/:
  config.json, model.safetensors   as written by model.save_pretrained(safe_serialization=True)
  generation_config.json           (if transformers writes one; harmless)
  cases.safetensors                ids.{i}: int64 [seq], logits.{i}: float32 [seq, vocab]
                                   (full-sequence forward, eager attention, f32, no_grad)
  cases.json                       texts, tokenizer, id mapping, versions, config knobs, notes

Run through scripts/gen-tiny-fixtures.sh, which creates the virtualenv.
"""

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import torch
import transformers
from safetensors.torch import save_file
from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parent.parent
SEED = 1234
VOCAB = 512
HIDDEN = 64
HEADS = 4
KV_HEADS = 2
INTER = 128
MAX_POS = 256
LINEAR_STD = 0.08  # std for every matrix (linear + embedding) after random init
BIAS_STD = 0.05
NORM_STD = 0.1  # norm weights: 1 + N(0, 0.1), or N(0, 0.1) where the model uses (1 + w)

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    (
        "In 1969 the Apollo 11 mission landed two astronauts on the Moon, and millions of "
        "people around the world watched the grainy black and white broadcast live on "
        "television while the lunar module rested in the Sea of Tranquility."
    ),
    "Café déjà vu — naïve façade! 東京は晴れ 🌸\ndef add(a, b):\n    return a + b  # ünïcödé",
]

# family -> (tokenizer name, prepend BOS?, bos token string)
TOKENIZER_FOR = {
    "llama3": ("llama3", True, "<|begin_of_text|>"),
    "qwen2": ("qwen3", False, None),
    "qwen3": ("qwen3", False, None),
    "mistral": ("smollm2", False, None),
    "gemma2": ("gemma3", True, "<bos>"),
    "gemma3": ("gemma3", True, "<bos>"),
    "gemma3_default_rope": ("gemma3", True, "<bos>"),
    "phi3": ("gemma3", True, "<bos>"),
}

COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=HIDDEN,
    num_attention_heads=HEADS,
    num_key_value_heads=KV_HEADS,
    intermediate_size=INTER,
    max_position_embeddings=MAX_POS,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)


def family_specs():
    """family -> (config class name, knobs, notes, ablations).

    An ablation is (label, config overrides); the script reports how much the logits move
    when that feature is switched off, to show the fixture really exercises it.
    """
    specs = {}
    specs["llama3"] = (
        "LlamaConfig",
        dict(
            COMMON,
            num_hidden_layers=2,
            head_dim=16,
            rms_norm_eps=1e-5,
            tie_word_embeddings=True,
            rope_parameters=dict(
                rope_type="llama3",
                rope_theta=500000.0,
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=64,
            ),
        ),
        [
            "GQA 4 query heads / 2 kv heads, head_dim 16",
            "llama3 rope scaling (factor 8, low 1, high 4, original_max_position_embeddings 64) "
            "with rope_theta 500000: with head_dim 16 some frequencies are scaled, one is "
            "smoothed, one is untouched",
            "tied embeddings (no lm_head.weight in model.safetensors)",
        ],
        [("rope_type default (no llama3 scaling)",
          dict(rope_parameters=dict(rope_type="default", rope_theta=500000.0)))],
    )
    specs["qwen2"] = (
        "Qwen2Config",
        dict(COMMON, num_hidden_layers=2, rms_norm_eps=1e-6, tie_word_embeddings=False,
             rope_parameters=dict(rope_type="default", rope_theta=1000000.0)),
        [
            "GQA 4/2, head_dim 16 (hidden/heads)",
            "q/k/v projections with bias (Qwen2 default), o_proj without bias",
            "untied embeddings (lm_head.weight present)",
            "rope_theta 1e6",
        ],
        [],
    )
    specs["qwen3"] = (
        "Qwen3Config",
        dict(COMMON, num_hidden_layers=2, head_dim=32, rms_norm_eps=1e-6,
             tie_word_embeddings=False,
             rope_parameters=dict(rope_type="default", rope_theta=1000000.0)),
        [
            "explicit head_dim 32 != hidden/heads (16): q_proj 64->128, k/v_proj 64->64, o_proj 128->64",
            "per-head q_norm / k_norm RMSNorm (weight shape [head_dim]) applied before rope",
            "no qkv bias, untied embeddings, rope_theta 1e6",
        ],
        [],
    )
    specs["mistral"] = (
        "MistralConfig",
        dict(COMMON, num_hidden_layers=2, head_dim=16, rms_norm_eps=1e-5,
             tie_word_embeddings=False, sliding_window=8,
             rope_parameters=dict(rope_type="default", rope_theta=10000.0)),
        [
            "sliding_window 8 on every layer: a query at position p attends to keys p-7..p "
            "(8 keys including itself); sequences are longer than the window",
            "GQA 4/2, head_dim 16, untied embeddings",
        ],
        [("sliding_window None", dict(sliding_window=None))],
    )
    specs["gemma2"] = (
        "Gemma2Config",
        dict(COMMON, num_hidden_layers=4, head_dim=16, rms_norm_eps=1e-6,
             tie_word_embeddings=True, sliding_window=8,
             query_pre_attn_scalar=24,
             attn_logit_softcapping=2.0,
             final_logit_softcapping=3.0,
             hidden_activation="gelu_pytorch_tanh",
             layer_types=["sliding_attention", "full_attention",
                          "sliding_attention", "full_attention"],
             rope_parameters=dict(rope_type="default", rope_theta=10000.0)),
        [
            "4 layers alternating sliding (window 8) / full attention, layer 0 sliding",
            "query_pre_attn_scalar 24 != head_dim 16: scores scaled by 24**-0.5",
            "attn_logit_softcapping 2.0 and final_logit_softcapping 3.0: chosen small (instead of "
            "the real 50/30) so tanh is clearly non-linear at the magnitudes of this tiny model",
            "Gemma RMSNorm uses (1 + weight); norm weights are N(0, 0.1)",
            "embeddings scaled by sqrt(hidden)=8 (computed in the model's dtype), tied lm_head",
            "pre+post attention norms and pre+post feed-forward norms, gelu_pytorch_tanh MLP",
        ],
        [("softcaps None", dict(attn_logit_softcapping=None, final_logit_softcapping=None)),
         ("all layers full attention", dict(layer_types=["full_attention"] * 4))],
    )
    gemma3_knobs = dict(
        COMMON, num_hidden_layers=4, head_dim=16, rms_norm_eps=1e-6,
        tie_word_embeddings=True, sliding_window=8, query_pre_attn_scalar=24,
        final_logit_softcapping=None, attn_logit_softcapping=None,
        hidden_activation="gelu_pytorch_tanh",
        layer_types=["sliding_attention", "sliding_attention",
                     "sliding_attention", "full_attention"],
        rope_parameters=dict(
            full_attention=dict(rope_type="linear", factor=8.0, rope_theta=1000000.0),
            sliding_attention=dict(rope_type="default", rope_theta=10000.0),
        ),
    )
    gemma3_notes = [
        "layer_types [sliding, sliding, sliding, full] (window 8): only layer 3 is global",
        "q_norm / k_norm (Gemma RMSNorm with 1 + weight) before rope",
        "per-layer-type rope: sliding layers rope_theta 1e4 (rope_local_base_freq), full layers "
        "rope_theta 1e6",
        "query_pre_attn_scalar 24 != head_dim 16; final_logit_softcapping null",
        "embeddings scaled by sqrt(hidden)=8, tied lm_head, Gemma norms (1 + weight) are N(0, 0.1)",
    ]
    specs["gemma3"] = (
        "Gemma3TextConfig",
        gemma3_knobs,
        gemma3_notes + [
            "rope scaling: linear factor 8 on the full_attention layers only "
            "(rope_parameters.full_attention.rope_type = linear), as in Gemma 3 4B and larger; "
            "sliding layers unscaled. See gemma3_default_rope/ for the same weights without it",
        ],
        [("no linear rope scaling on full layers",
          dict(rope_parameters=dict(
              full_attention=dict(rope_type="default", rope_theta=1000000.0),
              sliding_attention=dict(rope_type="default", rope_theta=10000.0)))),
         ("all layers full attention", dict(layer_types=["full_attention"] * 4))],
    )
    specs["gemma3_default_rope"] = (
        "Gemma3TextConfig",
        dict(gemma3_knobs, rope_parameters=dict(
            full_attention=dict(rope_type="default", rope_theta=1000000.0),
            sliding_attention=dict(rope_type="default", rope_theta=10000.0))),
        gemma3_notes + [
            "no rope scaling (like Gemma 3 270M/1B); otherwise identical to gemma3/ (same seed, "
            "same weights)",
        ],
        [],
    )
    specs["phi3"] = (
        "Phi3Config",
        dict(COMMON, num_hidden_layers=2, rms_norm_eps=1e-5, tie_word_embeddings=False,
             original_max_position_embeddings=MAX_POS,
             rope_parameters=dict(rope_type="default", rope_theta=10000.0)),
        [
            "fused qkv_proj ([q; k; v] rows: 64 + 32 + 32 = 128 x 64) and fused gate_up_proj "
            "([gate; up] rows: 2 * 128 x 64)",
            "GQA 4/2, head_dim 16, default rope (theta 1e4), untied, no biases",
        ],
        [],
    )
    return specs


def load_tokenizer(tok_dirs, name):
    for d in tok_dirs:
        p = d / name / "tokenizer.json"
        if p.is_file():
            return Tokenizer.from_file(str(p)), p
    sys.exit(f"tokenizer {name} not found under {[str(d) for d in tok_dirs]} "
             "(run scripts/fetch-tokenizers.sh)")


def randomize_(model, gemma_norms):
    g = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * LINEAR_STD)
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * BIAS_STD)
            elif "norm" in name:
                base = 0.0 if gemma_norms else 1.0
                p.copy_(base + torch.randn(p.shape, generator=g) * NORM_STD)
            else:
                raise RuntimeError(f"unhandled parameter {name} {tuple(p.shape)}")


def build(cls_name, knobs):
    cfg_cls = getattr(transformers, cls_name)
    cfg = cfg_cls(**knobs)
    torch.manual_seed(SEED)
    model = transformers.AutoModelForCausalLM.from_config(
        cfg, attn_implementation="eager", dtype=torch.float32)
    model.eval()
    return model


@torch.no_grad()
def forward_logits(model, ids):
    out = model(input_ids=ids.unsqueeze(0), use_cache=False)
    return out.logits[0].float().contiguous()


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out-dir", default=str(ROOT / "tests" / "fixtures" / "tiny"))
    ap.add_argument("--tokenizers-dir", action="append", default=[],
                    help="directory holding <name>/tokenizer.json (repeatable)")
    ap.add_argument("--only", nargs="*", help="families to (re)generate")
    args = ap.parse_args()

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    tok_dirs = [Path(d) for d in args.tokenizers_dir] + [ROOT / "models-cache" / "tokenizers"]
    out_root = Path(args.out_dir)
    specs = family_specs()
    families = args.only or list(specs)

    for family in families:
        cls_name, knobs, notes, ablations = specs[family]
        tok_name, add_bos, bos_str = TOKENIZER_FOR[family]
        tok, tok_path = load_tokenizer(tok_dirs, tok_name)
        model = build(cls_name, knobs)
        gemma_norms = family.startswith("gemma")
        randomize_(model, gemma_norms)

        out = out_root / family
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        model.save_pretrained(out, safe_serialization=True)
        for f in out.iterdir():
            if f.name not in ("config.json", "model.safetensors", "generation_config.json"):
                f.unlink() if f.is_file() else shutil.rmtree(f)

        tensors, case_meta, stats = {}, [], []
        all_ids = []
        for i, text in enumerate(TEXTS):
            real = tok.encode(text, add_special_tokens=False).ids
            if add_bos:
                bos_id = tok.token_to_id(bos_str)
                assert bos_id is not None, bos_str
                real = [bos_id] + real
            ids = torch.tensor([t % VOCAB for t in real], dtype=torch.int64)
            logits = forward_logits(model, ids)
            assert logits.shape == (len(ids), VOCAB), logits.shape
            tensors[f"ids.{i}"] = ids.contiguous()
            tensors[f"logits.{i}"] = logits
            all_ids.append(ids)
            case_meta.append({"index": i, "seq_len": len(ids), "real_ids": real})
            stats.append(float(logits.std()))
        save_file(tensors, str(out / "cases.safetensors"))

        # Reload from disk and check the saved model reproduces the logits exactly.
        reloaded = transformers.AutoModelForCausalLM.from_pretrained(
            out, attn_implementation="eager", dtype=torch.float32).eval()
        reload_diff = max(float((forward_logits(reloaded, ids) - tensors[f"logits.{i}"]).abs().max())
                          for i, ids in enumerate(all_ids))
        assert reload_diff == 0.0, f"{family}: reload mismatch {reload_diff}"

        ablation_report = []
        for label, overrides in ablations:
            alt = build(cls_name, dict(knobs, **overrides))
            alt.load_state_dict(model.state_dict())
            diffs = [float((forward_logits(alt, ids) - tensors[f"logits.{i}"]).abs().max())
                     for i, ids in enumerate(all_ids)]
            ablation_report.append({"switched_off": label, "max_abs_logit_diff_per_case": diffs})

        meta = {
            "family": family,
            "model_class": type(model).__name__,
            "config_class": cls_name,
            "transformers_version": transformers.__version__,
            "torch_version": torch.__version__,
            "seed": SEED,
            "init": (f"torch.manual_seed({SEED}) then every matrix N(0, {LINEAR_STD}), biases "
                     f"N(0, {BIAS_STD}), norm weights "
                     + (f"N(0, {NORM_STD}) (Gemma norms multiply by 1 + w)" if gemma_norms
                        else f"1 + N(0, {NORM_STD})")
                     + f" from torch.Generator seeded {SEED + 1}"),
            "forward": "full-sequence forward, eager attention, float32, torch.no_grad, "
                       "use_cache=False; logits at every position",
            "tokenizer": tok_name,
            "tokenizer_file": f"{tok_name}/tokenizer.json",
            "bos_prepended": bool(add_bos),
            "bos_token": bos_str,
            "id_mapping": f"real tokenizer ids (encode with add_special_tokens=False"
                          + (f", then {bos_str} prepended" if add_bos else "")
                          + f") taken modulo vocab_size={VOCAB}",
            "texts": TEXTS,
            "cases": case_meta,
            "logits_std_per_case": stats,
            "config_knobs": knobs,
            "notes": notes,
            "ablations": ablation_report,
        }
        (out / "cases.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
        size = sum(f.stat().st_size for f in out.iterdir())
        print(f"{family}: {type(model).__name__}, seq_lens={[c['seq_len'] for c in case_meta]}, "
              f"logit std={[round(s, 3) for s in stats]}, "
              f"ablations={[(a['switched_off'], round(max(a['max_abs_logit_diff_per_case']), 4)) for a in ablation_report]}, "
              f"{size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
