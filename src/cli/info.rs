//! `tutti info`: what this build can do.

use anyhow::Result;

pub fn run() -> Result<()> {
    let features: Vec<&str> = [
        ("cuda", cfg!(feature = "cuda")),
        ("metal", cfg!(feature = "metal")),
    ]
    .iter()
    .filter(|(_, on)| *on)
    .map(|(n, _)| *n)
    .collect();
    println!("tutti {}", env!("CARGO_PKG_VERSION"));
    println!(
        "features: {}",
        if features.is_empty() {
            "cpu only".to_string()
        } else {
            features.join(", ")
        }
    );
    println!("candle: {}", tutti_models::CANDLE_VERSION);
    println!(
        "cpu: {} threads, avx: {}, f16c: {}, neon: {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        candle_core::utils::with_avx(),
        candle_core::utils::with_f16c(),
        candle_core::utils::with_neon(),
    );
    println!("cpu kernels: {}", tutti_models::kernel_choice());
    let cuda = if candle_core::utils::cuda_is_available() {
        match candle_core::Device::new_cuda(0) {
            Ok(d) => format!(
                "available (device 0 opened: {})",
                tutti::bench::speed::device_name(&d)
            ),
            Err(e) => format!(
                "compiled in, but no device could be opened: {}",
                tutti_models::device::first_line(&e)
            ),
        }
    } else {
        "not compiled in (build with --features cuda)".to_string()
    };
    println!("cuda: {cuda}");
    let metal = if candle_core::utils::metal_is_available() {
        "compiled in"
    } else {
        "not compiled in (build with --features metal on macOS)"
    };
    println!("metal: {metal}");
    println!(
        "architectures: {}",
        tutti_models::Architecture::supported_list()
    );
    Ok(())
}
