//! Scores and their uncertainty: ROUGE-L, and 95% confidence intervals for a
//! proportion (Wilson) and for a mean (normal approximation).

/// z for a two-sided 95% interval.
const Z95: f64 = 1.959_963_984_540_054;

/// Lowercase alphanumeric words, every other character a separator (the usual ROUGE
/// tokenisation, without stemming).
pub fn rouge_tokens(s: &str) -> Vec<String> {
    s.to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

/// Length of the longest common subsequence of two token lists.
pub fn lcs_len<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    if a.is_empty() || b.is_empty() {
        return 0;
    }
    // One row of the DP table suffices: memory O(|b|) for long references.
    let mut row = vec![0usize; b.len() + 1];
    for x in a {
        let mut diag = 0;
        for (j, y) in b.iter().enumerate() {
            let up = row[j + 1];
            row[j + 1] = if x == y {
                diag + 1
            } else {
                row[j + 1].max(row[j])
            };
            diag = up;
        }
    }
    row[b.len()]
}

/// ROUGE-L precision, recall and F1 of `candidate` against `reference` (F1 with β = 1).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RougeL {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

pub fn rouge_l(candidate: &str, reference: &str) -> RougeL {
    let c = rouge_tokens(candidate);
    let r = rouge_tokens(reference);
    let lcs = lcs_len(&c, &r) as f64;
    if lcs == 0.0 {
        return RougeL {
            precision: 0.0,
            recall: 0.0,
            f1: 0.0,
        };
    }
    let precision = lcs / c.len() as f64;
    let recall = lcs / r.len() as f64;
    RougeL {
        precision,
        recall,
        f1: 2.0 * precision * recall / (precision + recall),
    }
}

/// A point estimate with a 95% interval.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Estimate {
    pub mean: f64,
    pub lo: f64,
    pub hi: f64,
}

/// Wilson score interval for `k` successes out of `n` (well behaved near 0 and 1,
/// unlike the normal approximation).
pub fn wilson(k: usize, n: usize) -> Estimate {
    if n == 0 {
        return Estimate {
            mean: 0.0,
            lo: 0.0,
            hi: 0.0,
        };
    }
    let n_f = n as f64;
    let p = k as f64 / n_f;
    let z2 = Z95 * Z95;
    let denom = 1.0 + z2 / n_f;
    let centre = (p + z2 / (2.0 * n_f)) / denom;
    let half = Z95 * (p * (1.0 - p) / n_f + z2 / (4.0 * n_f * n_f)).sqrt() / denom;
    Estimate {
        mean: p,
        lo: (centre - half).max(0.0),
        hi: (centre + half).min(1.0),
    }
}

/// Mean with a normal-approximation 95% interval (sample standard deviation).
pub fn mean_ci(xs: &[f64]) -> Estimate {
    let n = xs.len();
    if n == 0 {
        return Estimate {
            mean: 0.0,
            lo: 0.0,
            hi: 0.0,
        };
    }
    let mean = xs.iter().sum::<f64>() / n as f64;
    if n == 1 {
        return Estimate {
            mean,
            lo: mean,
            hi: mean,
        };
    }
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    let half = Z95 * (var / n as f64).sqrt();
    Estimate {
        mean,
        lo: mean - half,
        hi: mean + half,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn rouge_l_hand_computed() {
        // Reference "the cat sat on the mat" (6 words), candidate "the cat lay on a mat"
        // (6): LCS = the, cat, on, mat = 4 → P = R = F = 4/6.
        let r = rouge_l("The cat lay on a mat.", "the cat sat on the mat");
        assert!(close(r.precision, 4.0 / 6.0) && close(r.recall, 4.0 / 6.0));
        assert!(close(r.f1, 4.0 / 6.0));
        // Candidate "cat mat" (2) against the same reference: LCS 2 → P = 1, R = 1/3,
        // F = 2·1·(1/3) / (4/3) = 0.5.
        let r = rouge_l("cat mat", "the cat sat on the mat");
        assert!(close(r.precision, 1.0) && close(r.recall, 1.0 / 3.0) && close(r.f1, 0.5));
        // Order matters: "mat cat" shares only one word in order with "cat … mat".
        let r = rouge_l("mat cat", "cat sat mat");
        assert!(close(r.precision, 0.5) && close(r.recall, 1.0 / 3.0));
        assert!(close(r.f1, 0.4));
        // Punctuation and case are separators, not words.
        assert!(close(rouge_l("Hello, WORLD!", "hello world").f1, 1.0));
        assert_eq!(rouge_l("", "x").f1, 0.0);
        assert_eq!(rouge_l("x", "").f1, 0.0);
        assert_eq!(rouge_l("a b", "c d").f1, 0.0);
    }

    #[test]
    fn lcs_is_a_subsequence_length() {
        assert_eq!(lcs_len(b"ABCBDAB", b"BDCABA"), 4);
        assert_eq!(lcs_len(b"AAAA", b"AA"), 2);
        assert_eq!(lcs_len::<u8>(b"", b"AB"), 0);
    }

    #[test]
    fn wilson_interval_known_values() {
        // 8/10: Wilson 95% interval (0.4902, 0.9433).
        let e = wilson(8, 10);
        assert!(close(e.mean, 0.8));
        assert!((e.lo - 0.4902).abs() < 1e-3 && (e.hi - 0.9433).abs() < 1e-3);
        // 0/20 keeps a non-zero upper bound; 20/20 a lower bound below 1.
        let e = wilson(0, 20);
        assert!(e.lo == 0.0 && (e.hi - 0.1611).abs() < 1e-3);
        let e = wilson(20, 20);
        assert!((e.lo - 0.8389).abs() < 1e-3 && e.hi == 1.0);
        assert_eq!(wilson(0, 0).mean, 0.0);
    }

    #[test]
    fn mean_interval() {
        let e = mean_ci(&[1.0, 2.0, 3.0, 4.0]);
        // sd = 1.2910, se = 0.6455, half = 1.2652.
        assert!(close(e.mean, 2.5));
        assert!((e.hi - e.mean - 1.2652).abs() < 1e-3 && close(e.mean - e.lo, e.hi - e.mean));
        assert_eq!(mean_ci(&[0.7]).lo, 0.7);
    }
}
