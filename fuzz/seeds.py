#!/usr/bin/env python3
"""Writes the committed seed corpora of the fuzz targets (fuzz/corpus/TARGET/).

A seed named bad-* must be refused with a clear error; every other one accepted
(tests/fuzz_corpus.rs checks both).

Small, valid inputs of every kind each target reads, so the fuzzer starts from the
formats' real structure. Run from the repository root: python3 fuzz/seeds.py
"""
import json
import os
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def put(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- GGUF -------------------------------------------------------------------------
U32, I32, F32, BOOL, STR, ARR, U64 = 4, 5, 6, 7, 8, 9, 10


def gstr(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def gval(t, v):
    if t == U32:
        return struct.pack("<I", v)
    if t == I32:
        return struct.pack("<i", v)
    if t == F32:
        return struct.pack("<f", v)
    if t == BOOL:
        return struct.pack("<B", int(v))
    if t == STR:
        return gstr(v)
    if t == U64:
        return struct.pack("<Q", v)
    et, items = v
    return struct.pack("<IQ", et, len(items)) + b"".join(gval(et, x) for x in items)


def gguf(meta, tensors, alignment=32, max_data=1 << 20):
    """meta: [(key, type, value)]; tensors: [(name, dims ggml order)] as F32 zeros."""
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(meta))
    for k, t, v in meta:
        out += gstr(k) + struct.pack("<I", t) + gval(t, v)
    offset, infos = 0, b""
    for name, dims in tensors:
        infos += gstr(name) + struct.pack("<I", len(dims))
        infos += b"".join(struct.pack("<Q", d) for d in dims)
        infos += struct.pack("<IQ", 0, offset)
        n = 4
        for d in dims:
            n *= d
        offset += (n + alignment - 1) // alignment * alignment
    out += infos
    out += b"\0" * ((-len(out)) % alignment)
    return out + b"\0" * min(offset, max_data)


def llama_gguf(arch, tok_model, tokens, types, merges=None, scores=None, template=None,
               ctx=64, rows=None):
    h, ff, vocab = 8, 16, len(tokens)
    meta = [
        ("general.architecture", STR, arch),
        ("general.alignment", U32, 32),
        (f"{arch}.context_length", U64, ctx),
        (f"{arch}.embedding_length", U32, h),
        (f"{arch}.block_count", U32, 1),
        (f"{arch}.feed_forward_length", U32, ff),
        (f"{arch}.attention.head_count", U32, 2),
        (f"{arch}.attention.head_count_kv", U32, 1),
        (f"{arch}.attention.layer_norm_rms_epsilon", F32, 1e-6),
        (f"{arch}.rope.freq_base", F32, 10000.0),
        ("tokenizer.ggml.model", STR, tok_model),
        ("tokenizer.ggml.tokens", ARR, (STR, tokens)),
        ("tokenizer.ggml.token_type", ARR, (I32, types)),
        ("tokenizer.ggml.bos_token_id", U32, 1),
        ("tokenizer.ggml.eos_token_id", U32, 2),
    ]
    if merges is not None:
        meta.append(("tokenizer.ggml.merges", ARR, (STR, merges)))
    if scores is not None:
        meta.append(("tokenizer.ggml.scores", ARR, (F32, scores)))
    if template is not None:
        meta.append(("tokenizer.chat_template", STR, template))
    if arch == "gemma3":
        meta.append((f"{arch}.attention.key_length", U32, 4))
        meta.append((f"{arch}.attention.value_length", U32, 4))
        meta.append((f"{arch}.attention.sliding_window", U32, 16))
    hd = h // 2
    t = [("token_embd.weight", [h, rows or vocab]), ("output_norm.weight", [h])]
    b = "blk.0."
    t += [
        (b + "attn_norm.weight", [h]),
        (b + "attn_q.weight", [h, 2 * hd]),
        (b + "attn_k.weight", [h, hd]),
        (b + "attn_v.weight", [h, hd]),
        (b + "attn_output.weight", [2 * hd, h]),
        (b + "ffn_norm.weight", [h]),
        (b + "ffn_gate.weight", [h, ff]),
        (b + "ffn_up.weight", [h, ff]),
        (b + "ffn_down.weight", [ff, h]),
    ]
    if arch == "gemma3":
        t += [
            (b + "attn_q_norm.weight", [hd]),
            (b + "attn_k_norm.weight", [hd]),
            (b + "post_attention_norm.weight", [h]),
            (b + "post_ffw_norm.weight", [h]),
        ]
    return gguf(meta, t, max_data=4096 if rows else 1 << 20)


CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
GEMMA = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'assistant' %}"
    "{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}"
)
LLAMA3 = (
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] "
    "+ '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}"
)

bpe_tokens = ["<unk>", "<s>", "</s>", "a", "b", "c", "Ġ", "ab", "Ġa", "<|im_start|>"]
bpe_types = [2, 3, 3, 1, 1, 1, 1, 1, 1, 3]
tiny_bpe = llama_gguf("llama", "gpt2", bpe_tokens, bpe_types, merges=["a b", "Ġ a"], template=CHATML)
put("gguf", "tiny-llama-bpe.gguf", tiny_bpe)
spm_tokens = ["<unk>", "<s>", "</s>", "▁", "▁a", "a", "b", "<0x41>", "<start_of_turn>", "<end_of_turn>"]
spm_types = [2, 3, 3, 1, 1, 1, 1, 6, 4, 4]
spm_scores = [0.0, 0.0, 0.0, -1.0, -2.0, -3.0, -3.5, 0.0, 0.0, 0.0]
put("gguf", "tiny-gemma3-spm.gguf",
    llama_gguf("gemma3", "llama", spm_tokens, spm_types, scores=spm_scores, template=GEMMA))
put("gguf", "bad-truncated.gguf", tiny_bpe[: len(tiny_bpe) // 2])
# Absurd sizes in the metadata and in a tensor's shape: refused before any allocation.
put("gguf", "bad-context-2e40.gguf",
    llama_gguf("llama", "gpt2", bpe_tokens, bpe_types, merges=["a b"], ctx=1 << 40))
put("gguf", "bad-vocab-rows-2e40.gguf",
    llama_gguf("llama", "gpt2", bpe_tokens, bpe_types, merges=["a b"], rows=1 << 40))

# ---- dense checkpoint: config.json NUL safetensors ----------------------------------
def safetensors(tensors):
    header, data = {}, b""
    for name, shape in tensors:
        n = 4
        for d in shape:
            n *= d
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [len(data), len(data) + n]}
        data += b"\0" * n
    h = json.dumps(header).encode()
    h += b" " * ((-len(h)) % 8)
    return struct.pack("<Q", len(h)) + h + data


cfg = {
    "architectures": ["LlamaForCausalLM"], "vocab_size": 10, "hidden_size": 8,
    "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
    "num_key_value_heads": 1, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
    "max_position_embeddings": 64, "tie_word_embeddings": True,
}
p = "model.layers.0."
st = safetensors([
    ("model.embed_tokens.weight", [10, 8]), ("model.norm.weight", [8]),
    (p + "input_layernorm.weight", [8]), (p + "post_attention_layernorm.weight", [8]),
    (p + "self_attn.q_proj.weight", [8, 8]), (p + "self_attn.k_proj.weight", [4, 8]),
    (p + "self_attn.v_proj.weight", [4, 8]), (p + "self_attn.o_proj.weight", [8, 8]),
    (p + "mlp.gate_proj.weight", [16, 8]), (p + "mlp.up_proj.weight", [16, 8]),
    (p + "mlp.down_proj.weight", [8, 16]),
])
put("hf_checkpoint", "tiny-llama", json.dumps(cfg).encode() + b"\0" + st)
cfg_q = dict(cfg, architectures=["Qwen2ForCausalLM"], sliding_window=32,
             rope_scaling={"type": "linear", "factor": 2.0})
put("hf_checkpoint", "tiny-qwen2-config-only", json.dumps(cfg_q).encode() + b"\0")

# ---- tokenizer.json -----------------------------------------------------------------
bytelevel = {
    "version": "1.0", "truncation": None, "padding": None,
    "added_tokens": [{"id": 8, "content": "<|im_start|>", "single_word": False, "lstrip": False,
                      "rstrip": False, "normalized": False, "special": True},
                     {"id": 9, "content": "<|im_end|>", "single_word": False, "lstrip": False,
                      "rstrip": False, "normalized": False, "special": True}],
    "normalizer": None,
    "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                      "use_regex": True},
    "post_processor": None,
    "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                "use_regex": True},
    "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
              "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
              "vocab": {"a": 0, "b": 1, "c": 2, "Ġ": 3, "ab": 4, "Ġa": 5, "Ã": 6, "©": 7},
              "merges": ["a b", "Ġ a"]},
}
unigram = {
    "version": "1.0", "truncation": None, "padding": None, "added_tokens": [],
    "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
    "pre_tokenizer": None, "post_processor": None,
    "decoder": {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
        {"type": "ByteFallback"}, {"type": "Fuse"}]},
    "model": {"type": "Unigram", "unk_id": 0, "byte_fallback": True,
              "vocab": [["<unk>", 0.0], ["▁", -1.0], ["▁a", -2.0], ["a", -3.0], ["b", -3.0],
                        ["<0xC3>", 0.0], ["<0xA9>", 0.0]]},
}
wordlevel = {
    "version": "1.0", "truncation": None, "padding": None, "added_tokens": [],
    "normalizer": None, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": None,
    "decoder": None,
    "model": {"type": "WordLevel", "vocab": {"a": 0, "b": 1, "<unk>": 2}, "unk_token": "<unk>"},
}
for target in ("tokenizer_json", "byte_vocab"):
    put(target, "bytelevel-bpe.json", json.dumps(bytelevel))
    put(target, "unigram-byte-fallback.json", json.dumps(unigram))
    put(target, "wordlevel.json", json.dumps(wordlevel))

# ---- chat templates -----------------------------------------------------------------
put("chat_template", "chatml.jinja", CHATML)
put("chat_template", "gemma.jinja", GEMMA)
put("chat_template", "llama3.jinja", LLAMA3)
put("chat_template", "python-methods.jinja",
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'].strip() }}"
    "{% else %}{{ raise_exception('no system') }}{% endif %}{{ strftime_now('%d %b %Y') }}"
    "{% for m in messages[1:] %}{{ m.content.split(' ') | join('|') }}{% endfor %}")
put("chat_template", "bad-endless-loop.jinja",
    "{% for a in range(100000) %}{% for b in range(100000) %}{{ a }}{% endfor %}{% endfor %}")
put("chat_template", "bad-huge-output.jinja",
    "{% for a in range(100000) %}{{ 'x' * 100000 }}{% endfor %}")
put("chat_template", "bad-recursive-macro.jinja",
    "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}")

# ---- ensemble TOML ------------------------------------------------------------------
put("ensemble_toml", "pair.toml", '''align = "min-ed"
top_k = 10
gate = "uncertain:0.5"
combine = "mean"
weights = "auto:0.5"
max_tokens = 256
stop = ["\\n\\n"]
temperature = 0.7
top_p = 0.9
seed = 1
on_member_failure = "drop"

[[member]]
model = "models-cache/SmolLM2-135M-Instruct.Q4_1.gguf"
weight = 1.0
t = 1.5
device = "cpu"

[[member]]
model = "openai+http://127.0.0.1:8000/v1#Qwen/Qwen2.5-72B-Instruct"
tokenizer = "hf:Qwen/Qwen2.5-72B-Instruct"
api_key_env = "VLLM_KEY"
lookahead = "auto"
timeout = 60
''')
put("ensemble_toml", "llamacpp.toml", '''combine = "product"
gate = "disagree"

[[member]]
model = "llamacpp+http://127.0.0.1:8080"
tokenizer = "models-cache/gemma-3-270m-q4_k_m.gguf"
lookahead = 4
''')

# ---- bench rows (first byte: 0 JSON Lines, 1 JSON array, 2 Parquet) ------------------
here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
with open(os.path.join(here, "benches/data/qa.jsonl"), "rb") as f:
    qa = b"".join(f.readlines()[:4])
put("bench_rows", "qa.jsonl", b"\0" + qa)
gsm = {"question": "Tom has 3 apples and buys 2 more. How many?",
       "answer": "He has 3 + 2 = <<3+2=5>>5 apples.\n#### 5"}
put("bench_rows", "gsm8k.json", b"\1" + json.dumps([gsm, gsm]).encode())
with open(os.path.join(here, "tests/fixtures/gsm8k/test.parquet"), "rb") as f:
    put("bench_rows", "gsm8k.parquet", b"\2" + f.read())

# ---- server request bodies (first byte: even = completions, odd = chat) --------------
put("serve_request", "completion.json", b"\0" + json.dumps({
    "model": "pair", "prompt": "a b", "max_tokens": 8, "temperature": 0.7, "top_p": 0.9,
    "seed": 3, "stop": ["b"], "logprobs": 2, "stream": True,
    "tutti": {"members": [1, 0], "weights": [1, 2], "gate": "disagree", "combine": "max"}}).encode())
put("serve_request", "chat.json", b"\1" + json.dumps({
    "model": "pair", "messages": [{"role": "system", "content": "a"},
                                  {"role": "user", "content": [{"type": "text", "text": "b a"}]}],
    "max_tokens": 4, "logprobs": True, "top_logprobs": 3,
    "stream_options": {"include_usage": True}}).encode())
put("serve_request", "token-ids.json", b"\0" + json.dumps({"prompt": [0, 1, 1], "max_tokens": 2,
                                                             "tutti": {"members": [0]}}).encode())
