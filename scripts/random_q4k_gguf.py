#!/usr/bin/env python3
"""Write a random-weight Llama-shaped GGUF with every matrix in Q4_K, for speed runs.

The demo models are small (135M and 270M parameters); the speed of a larger shape, where
the Q4_K matrices dominate, is measured on a file this script writes: random Q4_K blocks
(finite scales, so the arithmetic stays finite), norms of ones, the tokenizer and chat
template copied from an existing Llama-architecture GGUF (SmolLM2's by default). Its text
is meaningless; only timings are read from it.

    python3 -m pip install gguf numpy
    python3 scripts/random_q4k_gguf.py --out models-cache/random-llama-1b-q4_k.gguf
    scripts/speed-vs-llamacpp.sh models-cache/random-llama-1b-q4_k.gguf

The default shape is TinyLlama-1.1B's (hidden 2048, FFN 5632, 22 layers, 32 heads, 4 KV
heads), with SmolLM2's 49,152-token vocabulary.
"""
import argparse
import sys

try:
    import numpy as np
    from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter
except ImportError:
    sys.exit("random_q4k_gguf.py: needs the gguf and numpy packages (python3 -m pip install gguf numpy)")

QK_K = 256
Q4K_BYTES = 144
# Keys that describe the shape or the file: written from the arguments, not copied.
OWN_KEYS = {
    "general.architecture", "general.name", "general.file_type", "general.size_label",
    "llama.block_count", "llama.embedding_length", "llama.feed_forward_length",
    "llama.attention.head_count", "llama.attention.head_count_kv",
    "llama.rope.dimension_count", "llama.vocab_size",
}


def q4k_matrix(rng, rows, cols):
    """`rows` random Q4_K rows of `cols` values as bytes, `d` and `dmin` in [0.5, 1.5]e-3."""
    if cols % QK_K:
        sys.exit(f"random_q4k_gguf.py: {cols} columns is not a multiple of {QK_K} (Q4_K)")
    blocks = rng.integers(0, 256, size=(rows, cols // QK_K, Q4K_BYTES), dtype=np.uint8)
    scales = (rng.uniform(0.5, 1.5, size=(rows, cols // QK_K, 2)) * 1e-3).astype(np.float16)
    blocks[:, :, 0:4] = scales.view(np.uint8).reshape(rows, cols // QK_K, 4)
    return blocks.reshape(rows, cols // QK_K * Q4K_BYTES)


def copy_field(writer, field):
    types = field.types
    value = field.contents()
    if types[0] == GGUFValueType.ARRAY:
        writer.add_key_value(field.name, value, GGUFValueType.ARRAY, sub_type=types[1])
    else:
        writer.add_key_value(field.name, value, types[0])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="the GGUF file to write")
    ap.add_argument("--tokenizer-from", default="models-cache/SmolLM2-135M-Instruct.Q4_1.gguf",
                    help="a Llama-architecture GGUF whose tokenizer and settings are copied")
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--ffn", type=int, default=5632)
    ap.add_argument("--layers", type=int, default=22)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.hidden % args.heads or args.heads % args.kv_heads:
        sys.exit("random_q4k_gguf.py: --hidden must divide by --heads, --heads by --kv-heads")

    src = GGUFReader(args.tokenizer_from)
    arch = src.fields["general.architecture"].contents()
    if arch != "llama":
        sys.exit(f"random_q4k_gguf.py: {args.tokenizer_from} is `{arch}`, not a llama GGUF")
    vocab = len(src.fields["tokenizer.ggml.tokens"].contents())
    head_dim = args.hidden // args.heads
    kv_dim = head_dim * args.kv_heads

    w = GGUFWriter(args.out, "llama")
    w.add_name(f"random Q4_K llama {args.hidden}x{args.layers}")
    w.add_file_type(15)  # MOSTLY_Q4_K_M
    w.add_block_count(args.layers)
    w.add_embedding_length(args.hidden)
    w.add_feed_forward_length(args.ffn)
    w.add_head_count(args.heads)
    w.add_head_count_kv(args.kv_heads)
    w.add_rope_dimension_count(head_dim)
    w.add_vocab_size(vocab)
    for name, field in src.fields.items():
        if name.startswith("GGUF.") or name in OWN_KEYS:
            continue
        copy_field(w, field)

    rng = np.random.default_rng(args.seed)
    ones = np.ones(args.hidden, dtype=np.float32)
    q4k = GGMLQuantizationType.Q4_K

    def matrix(name, rows, cols):
        w.add_tensor(name, q4k_matrix(rng, rows, cols), raw_dtype=q4k)

    matrix("token_embd.weight", vocab, args.hidden)
    w.add_tensor("output_norm.weight", ones)
    for i in range(args.layers):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", ones)
        matrix(p + "attn_q.weight", args.hidden, args.hidden)
        matrix(p + "attn_k.weight", kv_dim, args.hidden)
        matrix(p + "attn_v.weight", kv_dim, args.hidden)
        matrix(p + "attn_output.weight", args.hidden, args.hidden)
        w.add_tensor(p + "ffn_norm.weight", ones)
        matrix(p + "ffn_gate.weight", args.ffn, args.hidden)
        matrix(p + "ffn_up.weight", args.ffn, args.hidden)
        matrix(p + "ffn_down.weight", args.hidden, args.ffn)
        print(f"[random-gguf] layer {i + 1}/{args.layers}", file=sys.stderr, end="\r")
    print(file=sys.stderr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file(progress=False)
    w.close()
    print(f"[random-gguf] wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
