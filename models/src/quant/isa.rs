//! Which instruction set the CPU kernels run on: the best one the CPU has, found once at
//! start-up, or a lower one named by `TUTTI_KERNELS` (to compare sets, or to test the
//! lower set's kernels on a CPU that has a higher one). Every set gives the same bits;
//! only the speed differs.

use std::sync::OnceLock;

/// The environment switch that forces a lower kernel set.
pub const KERNELS_ENV: &str = "TUTTI_KERNELS";

/// A set of CPU kernels, ordered from the least to the most capable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum KernelSet {
    /// Portable Rust: targets without a SIMD file (aarch64 for now).
    Scalar,
    /// AVX2 and FMA: the floor of every x86-64 build (the workspace targets x86-64-v3).
    Avx2,
    /// AVX-512 F, BW and VL: the decode kernels on 512-bit vectors.
    Avx512,
    /// AVX-512 with VNNI: four byte products summed in one instruction as well.
    Avx512Vnni,
}

impl KernelSet {
    /// Every set this build can run, from the least capable.
    pub const ALL: [KernelSet; 4] = [
        KernelSet::Scalar,
        KernelSet::Avx2,
        KernelSet::Avx512,
        KernelSet::Avx512Vnni,
    ];

    /// The name `TUTTI_KERNELS` takes and the reports print.
    pub fn name(self) -> &'static str {
        match self {
            KernelSet::Scalar => "scalar",
            KernelSet::Avx2 => "avx2",
            KernelSet::Avx512 => "avx512",
            KernelSet::Avx512Vnni => "avx512-vnni",
        }
    }

    /// The set of a name (`avx512_vnni` and `avx512vnni` are taken too).
    pub fn parse(name: &str) -> Option<KernelSet> {
        let norm = name.trim().to_ascii_lowercase().replace('_', "-");
        match norm.as_str() {
            "avx512vnni" => Some(KernelSet::Avx512Vnni),
            _ => Self::ALL.into_iter().find(|s| s.name() == norm),
        }
    }

    /// The lowest set this build can run: its compile-time target.
    pub fn floor() -> KernelSet {
        if cfg!(all(
            target_arch = "x86_64",
            target_feature = "avx2",
            target_feature = "fma"
        )) {
            KernelSet::Avx2
        } else {
            KernelSet::Scalar
        }
    }

    /// The best set the CPU running this build has.
    pub fn detected() -> KernelSet {
        #[cfg(all(
            target_arch = "x86_64",
            target_feature = "avx2",
            target_feature = "fma"
        ))]
        {
            let avx512 = is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl");
            if avx512 && is_x86_feature_detected!("avx512vnni") {
                return KernelSet::Avx512Vnni;
            }
            if avx512 {
                return KernelSet::Avx512;
            }
        }
        Self::floor()
    }
}

impl std::fmt::Display for KernelSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The set in use and why.
#[derive(Debug, Clone)]
pub struct KernelChoice {
    pub set: KernelSet,
    pub detected: KernelSet,
    /// Why the set differs from `detected`, or the way to force a lower one.
    pub reason: String,
}

impl std::fmt::Display for KernelChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.set, self.reason)
    }
}

/// Chooses the set from the CPU and the value of `TUTTI_KERNELS` (if set).
pub fn choose(detected: KernelSet, forced: Option<&str>) -> KernelChoice {
    let floor = KernelSet::floor();
    let names = || {
        KernelSet::ALL
            .iter()
            .filter(|s| **s >= floor && **s <= detected)
            .map(|s| s.name())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let Some(raw) = forced.filter(|v| !v.trim().is_empty()) else {
        let lower: Vec<&str> = KernelSet::ALL
            .iter()
            .filter(|s| **s >= floor && **s < detected)
            .map(|s| s.name())
            .collect();
        let reason = match lower.is_empty() {
            true => "the best this CPU has; this build has no lower set".to_string(),
            false => format!(
                "the best this CPU has; {KERNELS_ENV}={} forces a lower one",
                lower.join(" or ")
            ),
        };
        return KernelChoice {
            set: detected,
            detected,
            reason,
        };
    };
    let reason = match KernelSet::parse(raw) {
        Some(s) if s > detected => {
            format!(
                "{KERNELS_ENV}={raw} asks for more than this CPU has; it can run {}",
                names()
            )
        }
        Some(s) if s < floor => {
            format!(
                "{KERNELS_ENV}={raw} is below this build's target; it can run {}",
                names()
            )
        }
        Some(s) => {
            return KernelChoice {
                set: s,
                detected,
                reason: format!("forced by {KERNELS_ENV}; the CPU has {detected}"),
            }
        }
        None => format!(
            "{KERNELS_ENV}={raw} is not a kernel set; use one of {}",
            names()
        ),
    };
    tracing::warn!("{reason}: using {detected}");
    KernelChoice {
        set: detected,
        detected,
        reason,
    }
}

/// The kernel set of this process (chosen once, logged at debug level).
pub fn kernel_choice() -> &'static KernelChoice {
    static CHOICE: OnceLock<KernelChoice> = OnceLock::new();
    CHOICE.get_or_init(|| {
        let forced = std::env::var(KERNELS_ENV).ok();
        let choice = choose(KernelSet::detected(), forced.as_deref());
        tracing::debug!("CPU kernels: {choice}");
        choice
    })
}

/// The kernel set of this process.
pub fn kernel_set() -> KernelSet {
    kernel_choice().set
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in KernelSet::ALL {
            assert_eq!(KernelSet::parse(s.name()), Some(s));
        }
        assert_eq!(KernelSet::parse("AVX512_VNNI"), Some(KernelSet::Avx512Vnni));
        assert_eq!(KernelSet::parse("sse2"), None);
    }

    #[test]
    fn a_forced_set_never_goes_above_the_cpu_nor_below_the_build() {
        let floor = KernelSet::floor();
        let c = choose(KernelSet::Avx512Vnni, Some("avx512"));
        assert_eq!(c.set, KernelSet::Avx512.max(floor));
        let c = choose(floor, Some("avx512-vnni"));
        assert_eq!(c.set, floor);
        assert!(c.reason.contains("more than this CPU has"), "{}", c.reason);
        let c = choose(KernelSet::Avx512, Some("neon9"));
        assert_eq!(c.set, KernelSet::Avx512);
        assert!(c.reason.contains("not a kernel set"), "{}", c.reason);
        let c = choose(KernelSet::Avx512, None);
        assert_eq!(c.set, KernelSet::Avx512);
        assert!(c.reason.contains(KERNELS_ENV), "{}", c.reason);
    }
}
