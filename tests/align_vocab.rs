//! Byte surfaces of the real tokenizers: for `ids = encode(text)` without special
//! tokens, the concatenated surfaces must equal the text's bytes exactly.
//!
//! What is compared: the UTF-8 bytes of `text`, where every test text is NFC-stable
//! (asserted below through Qwen 3's NFC normalizer, so normalisation is the identity on
//! it) and contains no `▁`. A tokenizer that prepends `▁` (Llama 2-style SentencePiece)
//! would be compared against `" " + text` ([`Vocab::prepends_space`]); none of the five
//! tested here does: Gemma 3 maps spaces to `▁` without a prefix.

mod align_support;

use align_support::{load, KNOWN};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokenizers::{NormalizedString, Normalizer, Tokenizer};
use tutti::vocab::{Vocab, VocabScheme};

const FIXED: &[&str] = &[
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "  leading spaces, trailing spaces   ",
    "tabs\tand\nnewlines\r\n\n\n  mixed \t whitespace",
    "Numbers: 3.14159, 1,000,000 and -42e-7; dates 2024-05-17.",
    "fn main() {\n    let x: Vec<u8> = vec![0xff, 0x10];\n    println!(\"{:?}\", x);\n}\n",
    "def f(x):\n\treturn {'a': x ** 2, \"b\": [i for i in range(10)]}  # comment",
    "<div class=\"c\">&amp; &lt;tag&gt;</div> <think> not special </think>",
    "Größenmaßstäbe, déjà vu, naïve café, Ærøskøbing, İstanbul, Łódź",
    "Привет, мир! Съешь же ещё этих мягких французских булок.",
    "机器学习是人工智能的一个分支。我们今天去北京，天气很好！",
    "日本語のテキスト：ひらがな、カタカナ、漢字。東京タワー",
    "한국어 문장입니다. 안녕하세요, 세계!",
    "العربية: مرحبا بالعالم",
    "हिन्दी भाषा में एक वाक्य।",
    "Emoji: 😀🎉👍🏽 👨‍👩‍👧‍👦 🇫🇷 ❤️ 🫠 and symbols ∑∫√∞ ≤≥ → ⇒ ©®™",
    "Rare CJK: 𠀀𪚥𝄞 and ancient 𓀀𓂀 glyphs",
    "Mixed: résumé 履歴書 резюме 📄 — “quotes” ‘single’ «guillemets» …",
    "a",
    " ",
    "\n",
];

/// Characters to draw random texts from: every script of `FIXED` plus code and
/// whitespace, so random texts mix scripts at arbitrary boundaries.
fn alphabet() -> Vec<char> {
    let mut chars: Vec<char> = FIXED.iter().flat_map(|t| t.chars()).collect();
    chars.extend([
        '\t', '\n', ' ', ' ', ' ', '{', '}', '_', '\\', '`', '~', '|',
    ]);
    // Whole blocks of NFC-stable code points: CJK, kana, Hangul syllables, Cyrillic,
    // emoji, box drawing.
    for (lo, hi) in [
        (0x4e00u32, 0x4fff),
        (0x3041, 0x3096),
        (0xac00, 0xad00),
        (0x0410, 0x044f),
        (0x1f300, 0x1f5ff),
        (0x2500, 0x257f),
    ] {
        chars.extend((lo..=hi).filter_map(char::from_u32));
    }
    chars.sort_unstable();
    chars.dedup();
    chars
}

fn random_texts(n: usize, seed: u64) -> Vec<String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let chars = alphabet();
    let words: Vec<&str> = FIXED.iter().flat_map(|t| t.split(' ')).collect();
    (0..n)
        .map(|_| {
            let mut s = String::new();
            for _ in 0..rng.gen_range(1..12) {
                match rng.gen_range(0..4) {
                    0 => s.push_str(words[rng.gen_range(0..words.len())]),
                    1 => {
                        for _ in 0..rng.gen_range(1..6) {
                            s.push(chars[rng.gen_range(0..chars.len())]);
                        }
                    }
                    2 => s.push_str(&" ".repeat(rng.gen_range(1..4))),
                    _ => s.push_str(&rng.gen_range(0..100_000u32).to_string()),
                }
            }
            s
        })
        .collect()
}

fn check_round_trip(name: &str, tok: &Tokenizer, vocab: &Vocab, texts: &[String]) {
    let mut tokens = 0;
    for text in texts {
        let enc = tok.encode(text.as_str(), false).expect("encode");
        let ids = enc.get_ids();
        tokens += ids.len();
        for &id in ids {
            assert!(vocab.bytes(id).is_some(), "{name}: id {id} has no surface");
        }
        let mut expected = Vec::new();
        if vocab.prepends_space() {
            expected.push(b' ');
        }
        expected.extend_from_slice(text.as_bytes());
        let got = vocab.decode_bytes(ids);
        assert_eq!(
            got,
            expected,
            "{name}: surfaces of {ids:?} decode to {:?}, text is {text:?}",
            String::from_utf8_lossy(&got)
        );
    }
    assert!(tokens > texts.len(), "{name}: suspiciously few tokens");
}

fn all_texts() -> Vec<String> {
    let mut texts: Vec<String> = FIXED.iter().map(|s| s.to_string()).collect();
    texts.extend(random_texts(300, 0x77));
    texts
}

#[test]
fn texts_are_nfc_stable() {
    // Qwen 3 normalises to NFC; the comparison above assumes it changes nothing.
    let (tok, _) = load("qwen3");
    let norm = tok.get_normalizer().expect("qwen3 has an NFC normalizer");
    for text in all_texts() {
        let mut n = NormalizedString::from(text.as_str());
        norm.normalize(&mut n).expect("normalize");
        assert_eq!(n.get(), text, "test text is not NFC-stable");
    }
}

#[test]
fn surfaces_concatenate_to_the_text_for_every_tokenizer() {
    let texts = all_texts();
    for (name, _, _) in KNOWN {
        let (tok, vocab) = load(name);
        check_round_trip(name, &tok, &vocab, &texts);
    }
}

#[test]
fn sizes_schemes_and_flags() {
    let (_, llama) = load("llama3");
    assert_eq!(llama.scheme(), VocabScheme::ByteLevel);
    assert_eq!((llama.len(), llama.tokenizer_size()), (128_256, 128_256));
    assert!(
        llama.is_special(128_000) && !llama.is_candidate(128_000),
        "<|begin_of_text|>"
    );
    assert!(llama.is_eos(128_009) && llama.is_candidate(128_009));
    assert!(!llama.prepends_space());

    let (_, qwen) = load("qwen3");
    assert_eq!(qwen.tokenizer_size(), 151_669);
    assert_eq!(qwen.len(), 151_936);
    // Logit padding: a logit, no token.
    assert!(qwen.has_logit(151_700) && !qwen.has_token(151_700) && !qwen.is_candidate(151_700));
    assert_eq!(qwen.bytes(151_700), None);
    // <think> is an added, non-special token outside the model vocabulary: control.
    assert!(qwen.is_added(151_667) && !qwen.is_special(151_667) && !qwen.is_candidate(151_667));

    let (tok, gemma) = load("gemma3");
    assert_eq!(gemma.scheme(), VocabScheme::SentencePiece);
    assert!(!gemma.prepends_space());
    assert_eq!((gemma.len(), gemma.logit_width()), (262_145, 262_144));
    assert!(gemma.has_token(262_144) && !gemma.has_logit(262_144) && !gemma.is_candidate(262_144));
    // Byte fallback: <0x0A> is the single byte 0x0A; "\n" (id 107) is a regular
    // candidate and the canonical id of that byte.
    let nl = tok.token_to_id("<0x0A>").unwrap();
    assert!(gemma.is_byte_fallback(nl));
    assert_eq!(gemma.bytes(nl), Some(&b"\n"[..]));
    assert_eq!(gemma.id_of(b"\n"), Some(107));
    // A partial UTF-8 sequence is a normal surface.
    let e4 = tok.token_to_id("<0xE4>").unwrap();
    assert_eq!(gemma.bytes(e4), Some(&[0xe4u8][..]));
    assert_eq!(gemma.id_of(&[0xe4]), Some(e4));
    let hello = tok.token_to_id("▁hello").unwrap();
    assert_eq!(gemma.bytes(hello), Some(&b" hello"[..]));

    let (tok, smol) = load("smollm2");
    assert_eq!(smol.len(), 49_152);
    let g = tok.token_to_id("Ġthe").unwrap();
    assert_eq!(smol.bytes(g), Some(&b" the"[..]));
    assert_eq!(smol.id_of(b" the"), Some(g));

    let (_, gpt2) = load("gpt2");
    assert_eq!(gpt2.len(), 50_257);
    assert!(gpt2.is_eos(50_256) && gpt2.is_candidate(50_256));
}

#[test]
fn not_json_is_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("tutti-align-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tokenizer.json");
    std::fs::write(&path, b"this is not JSON {").unwrap();
    let err = tutti::vocab::load_tokenizer_file(&path).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("cannot load tokenizer") && msg.contains("tokenizer.json"),
        "{msg}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
