"""Tiny random BERT encoder + reference hidden states for tutti's BERTScore tests.

Writes tests/fixtures/tiny/bert/: config.json, model.safetensors (BertModel weights,
random, seed 0), tokenizer.json (a WordPiece vocabulary of a few hundred pieces built
here), cases.json (texts, token ids, every layer's hidden states, and BERTScore P/R/F1
of candidate/reference pairs computed with the formula of Zhang et al. 2020: greedy
cosine matching of token embeddings, [CLS]/[SEP] excluded, no idf, no rescaling).
Run through scripts/gen-tiny-fixtures.sh (which provides the virtualenv) with
`--bert`, or directly with that environment's python.
"""

import json
import os

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import BertConfig, BertModel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "tiny", "bert")

WORDS = """the a an of to and in is was it for on with as at by this that from be are
cat dog sat mat lay on rug paris france capital city of is the river nile long
quick brown fox jumps over lazy answer question what who where when how many
one two three four five six seven eight nine ten hundred thousand
red blue green white black small big large tiny model models ensemble token tokens""".split()


def build_tokenizer():
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    for c in "abcdefghijklmnopqrstuvwxyz0123456789.,!?'-":
        vocab.append(c)
        vocab.append("##" + c)
    for w in WORDS:
        if w not in vocab:
            vocab.append(w)
    for suffix in ["s", "ed", "ing", "er", "est", "ly"]:
        vocab.append("##" + suffix)
    ids = {t: i for i, t in enumerate(vocab)}
    tok = Tokenizer(models.WordPiece(ids, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])],
    )
    return tok, len(vocab)


def bertscore(c, r):
    c = torch.nn.functional.normalize(c, dim=-1)
    r = torch.nn.functional.normalize(r, dim=-1)
    sim = c @ r.T
    p = sim.max(dim=1).values.mean().item()
    rec = sim.max(dim=0).values.mean().item()
    f = 2 * p * rec / (p + rec)
    return p, rec, f


def main():
    os.makedirs(OUT, exist_ok=True)
    tok, vocab_size = build_tokenizer()
    tok.save(os.path.join(OUT, "tokenizer.json"))
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        type_vocab_size=2,
        hidden_act="gelu",
        layer_norm_eps=1e-12,
    )
    model = BertModel(cfg, add_pooling_layer=False).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    model.save_pretrained(OUT, safe_serialization=True)
    texts = [
        "The cat sat on the mat.",
        "A dog lay on the rug!",
        "Paris is the capital of France; the Nile is a long river.",
        "zebra quokka 42",
    ]
    cases = []
    hidden = {}
    for t in texts:
        ids = tok.encode(t).ids
        with torch.no_grad():
            out = model(torch.tensor([ids]), output_hidden_states=True)
        layers = [h[0] for h in out.hidden_states]
        hidden[t] = layers
        cases.append({
            "text": t,
            "ids": ids,
            "hidden_states": [h.tolist() for h in layers],
        })
    pairs = []
    for a, b in [(0, 1), (1, 0), (0, 2), (2, 3), (0, 0)]:
        for layer in [1, 3]:
            c = hidden[texts[a]][layer][1:-1]
            r = hidden[texts[b]][layer][1:-1]
            p, rec, f = bertscore(c, r)
            pairs.append({"candidate": texts[a], "reference": texts[b], "layer": layer,
                          "precision": p, "recall": rec, "f1": f})
    with open(os.path.join(OUT, "cases.json"), "w") as fh:
        json.dump({"cases": cases, "bertscore": pairs,
                   "note": "random weights N(0, 0.2); see scripts/gen_tiny_bert.py"}, fh)
    print("wrote", OUT)


if __name__ == "__main__":
    main()
