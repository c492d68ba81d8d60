//! Every SIMD kernel against its scalar twin, every driver against the one-row kernel it
//! must reproduce, and the activation quantization against ggml's rounding: equal bits,
//! not tolerances.

use super::act::{act_block_bytes, quantize_q8_0_or_1, quantize_q8k, ActFormat};
use super::block32::{dot_tiles_32, dot_tiles_q0, Q41Tiles};
use super::blocks::{f16_at, q4k_scales, unpack_q4_0, unpack_q5_0, unpack_q8_0, QBlock, Unpack};
use super::blocks::{Q4kGroup, Q6kGroup};
use super::interleaved::{dot_q4k_interleaved, dot_q6k_interleaved};
use super::kdot;
use super::kquant::SUMS;
use super::{has_vnni, run, scalar, simd, KernelSet, QuantLinear, Shape};
use crate::Numerics;
use candle_core::quantized::k_quants::{BlockQ4K, BlockQ6K, QK_K};
use half::f16;

/// A small deterministic generator (no extra dependency).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) as u32
    }
    fn f(&mut self) -> f32 {
        self.next() as f32 / u32::MAX as f32 * 2.0 - 1.0
    }
}

fn random_blocks(rng: &mut Lcg, n: usize, block: usize, d_off: &[usize]) -> Vec<u8> {
    let mut v: Vec<u8> = (0..n * block).map(|_| rng.next() as u8).collect();
    for b in 0..n {
        for &o in d_off {
            let d = f16::from_f32(rng.f() * 0.01).to_bits().to_le_bytes();
            v[b * block + o..b * block + o + 2].copy_from_slice(&d);
        }
    }
    v
}

#[test]
fn simd_dots_equal_scalar_dots() {
    let mut rng = Lcg(7);
    let k = 512;
    let xs: Vec<f32> = (0..k).map(|_| rng.f() * 3.0).collect();
    let mut a1 = vec![0u8; k / 32 * 36];
    quantize_q8_0_or_1(&xs, &mut a1, true);
    let mut a0 = vec![0u8; k / 32 * 34];
    quantize_q8_0_or_1(&xs, &mut a0, false);
    for _ in 0..20 {
        let w = random_blocks(&mut rng, k / 32, 20, &[0, 2]);
        assert_eq!(
            simd::dot_q4_1(&w, &a1).to_bits(),
            scalar::dot_q4_1(&w, &a1).to_bits()
        );
        let w = random_blocks(&mut rng, k / 32, 22, &[0]);
        assert_eq!(
            simd::dot_q0(&w, &a0, 22, unpack_q5_0).to_bits(),
            scalar::dot_q0(&w, &a0, 22, unpack_q5_0).to_bits()
        );
        let w = random_blocks(&mut rng, k / 32, 34, &[0]);
        assert_eq!(
            simd::dot_q0(&w, &a0, 34, unpack_q8_0).to_bits(),
            scalar::dot_q0(&w, &a0, 34, unpack_q8_0).to_bits()
        );
        let w = random_blocks(&mut rng, k / 32, 18, &[0]);
        assert_eq!(
            simd::dot_q0(&w, &a0, 18, unpack_q4_0).to_bits(),
            scalar::dot_q0(&w, &a0, 18, unpack_q4_0).to_bits()
        );
    }
}

/// The 512-bit two-row kernels (with and without VNNI, as far as this CPU has them) and
/// the decode driver of the chosen kernel set, against the scalar one-row kernels.
#[test]
fn decode_row_pairs_equal_scalar_dots() {
    let mut rng = Lcg(29);
    // An odd count of weight rows leaves one row to the one-row kernel.
    let (k, n, m) = (160, 11, 3);
    let xs: Vec<f32> = (0..m * k).map(|_| rng.f() * 3.0).collect();
    let mut a0 = vec![0u8; m * k / 32 * 34];
    quantize_q8_0_or_1(&xs, &mut a0, false);
    let mut a1 = vec![0u8; m * k / 32 * 36];
    quantize_q8_0_or_1(&xs, &mut a1, true);
    let formats: [(usize, Unpack); 4] = [
        (20, unpack_q4_0),
        (18, unpack_q4_0),
        (22, unpack_q5_0),
        (34, unpack_q8_0),
    ];
    let set = super::kernel_set();
    eprintln!("kernel set of this run: {}", super::kernel_choice());
    for (wblock, unpack) in formats {
        let (act, ablock) = if wblock == 20 { (&a1, 36) } else { (&a0, 34) };
        let scales: &[usize] = if wblock == 20 { &[0, 2] } else { &[0] };
        let w = random_blocks(&mut rng, n * k / 32, wblock, scales);
        let (wrow, arow) = (k / 32 * wblock, k / 32 * ablock);
        let want = |r: usize, c: usize| {
            let (wc, ar) = (&w[c * wrow..(c + 1) * wrow], &act[r * arow..(r + 1) * arow]);
            match wblock {
                20 => scalar::dot_q4_1(wc, ar),
                _ => scalar::dot_q0(wc, ar, wblock, unpack),
            }
        };
        let mut dst = vec![0f32; m * n];
        super::block32::dot_rows_32(&w, act, m, k, n, wblock, unpack, &mut dst);
        for r in 0..m {
            for c in 0..n {
                assert_eq!(
                    dst[r * n + c].to_bits(),
                    want(r, c).to_bits(),
                    "{wblock} {set} ({r}, {c})"
                );
            }
        }
        #[cfg(all(
            target_arch = "x86_64",
            target_feature = "avx2",
            target_feature = "fma"
        ))]
        {
            use super::avx512;
            let detected = KernelSet::detected();
            for vnni in [false, true] {
                let needs = if vnni {
                    KernelSet::Avx512Vnni
                } else {
                    KernelSet::Avx512
                };
                if detected < needs {
                    eprintln!("this CPU has no {needs}: its two-row kernels are not run here");
                    continue;
                }
                for r in 0..m {
                    for c in (0..n - 1).step_by(2) {
                        let (w0, w1) = (
                            &w[c * wrow..(c + 1) * wrow],
                            &w[(c + 1) * wrow..(c + 2) * wrow],
                        );
                        let a = &act[r * arow..(r + 1) * arow];
                        // SAFETY: the CPU has the features (checked above).
                        let got = unsafe {
                            match (wblock, vnni) {
                                (20, true) => avx512::dot2_q4_1_vnni(w0, w1, a),
                                (20, false) => avx512::dot2_q4_1(w0, w1, a),
                                (_, true) => avx512::dot2_q0_vnni(w0, w1, a, wblock),
                                (_, false) => avx512::dot2_q0(w0, w1, a, wblock),
                            }
                        };
                        assert_eq!(
                            got[0].to_bits(),
                            want(r, c).to_bits(),
                            "{wblock} {needs} ({r}, {c})"
                        );
                        assert_eq!(
                            got[1].to_bits(),
                            want(r, c + 1).to_bits(),
                            "{wblock} {needs} ({r}, {})",
                            c + 1
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn prefill_tiles_equal_pairwise_dots() {
    // Shapes that leave partial tiles on both sides (9 weight rows, 7 activation rows).
    let mut rng = Lcg(13);
    let (k, n, m) = (96, 9, 7);
    let xs: Vec<f32> = (0..m * k).map(|_| rng.f() * 3.0).collect();
    let mut act = vec![0u8; m * k / 32 * 34];
    quantize_q8_0_or_1(&xs, &mut act, false);
    let formats: [(usize, Unpack); 3] = [(18, unpack_q4_0), (22, unpack_q5_0), (34, unpack_q8_0)];
    for (wblock, unpack) in formats {
        let w = random_blocks(&mut rng, n * k / 32, wblock, &[0]);
        for vnni in [false, has_vnni()] {
            let mut dst = vec![0f32; m * n];
            dot_tiles_q0(&w, &act, m, k, n, wblock, unpack, vnni, &mut dst);
            let (wrow, arow) = (k / 32 * wblock, k / 32 * 34);
            for r in 0..m {
                for c in 0..n {
                    let wc = &w[c * wrow..(c + 1) * wrow];
                    let ar = &act[r * arow..(r + 1) * arow];
                    let want = scalar::dot_q0(wc, ar, wblock, unpack);
                    let got = dst[r * n + c];
                    assert_eq!(got.to_bits(), want.to_bits(), "{wblock} {vnni} ({r}, {c})");
                    // The portable tile gives the same bits.
                    let qs: Vec<QBlock> = wc
                        .chunks_exact(wblock)
                        .map(|b| QBlock(scalar::unpack_q0(b, wblock, unpack, false)))
                        .collect();
                    let ds: Vec<f32> = wc.chunks_exact(wblock).map(|b| f16_at(b, 0)).collect();
                    let da: Vec<f32> = ar.chunks_exact(34).map(|b| f16_at(b, 0)).collect();
                    let portable = scalar::tile_q0u([&qs[..]], [&ds[..]], [ar], [&da[..]]);
                    assert_eq!(portable[0][0].to_bits(), want.to_bits());
                }
            }
        }
    }
    let mut act1 = vec![0u8; m * k / 32 * 36];
    quantize_q8_0_or_1(&xs, &mut act1, true);
    let w = random_blocks(&mut rng, n * k / 32, 20, &[0, 2]);
    for vnni in [false, has_vnni()] {
        let mut dst = vec![0f32; m * n];
        dot_tiles_32(&w, &act1, m, k, n, &mut dst, &Q41Tiles { vnni });
        let (wrow, arow) = (k / 32 * 20, k / 32 * 36);
        for r in 0..m {
            for c in 0..n {
                let wc = &w[c * wrow..(c + 1) * wrow];
                let want = scalar::dot_q4_1(wc, &act1[r * arow..(r + 1) * arow]);
                let got = dst[r * n + c];
                assert_eq!(got.to_bits(), want.to_bits(), "Q4_1 {vnni} ({r}, {c})");
            }
        }
    }
}

/// Q8_K activations of a random row of `k` values.
fn q8k_row(rng: &mut Lcg, k: usize) -> Vec<u8> {
    let xs: Vec<f32> = (0..k).map(|_| rng.f() * 3.0).collect();
    let mut a = vec![0u8; k / QK_K * act_block_bytes(ActFormat::Q8K)];
    quantize_q8k(&xs, &mut a);
    a
}

#[test]
fn simd_k_quant_sums_equal_scalar_sums() {
    let mut rng = Lcg(11);
    let ab = act_block_bytes(ActFormat::Q8K);
    for _ in 0..50 {
        let a = q8k_row(&mut rng, QK_K);
        let x6 = random_blocks(&mut rng, 1, 210, &[208]);
        assert_eq!(
            simd::q6k_lanes(&x6, &a[..ab]),
            scalar::q6k_lanes(&x6, &a[..ab])
        );
        let x4 = random_blocks(&mut rng, 1, 144, &[0, 2]);
        let (scales, _) = q4k_scales(&x4[4..16]);
        assert_eq!(
            simd::q4k_pair_sums(&x4, &a[..ab], &scales),
            scalar::q4k_pair_sums(&x4, &a[..ab], &scales)
        );
    }
}

#[test]
fn k_quant_tiles_equal_pairwise_dots() {
    let mut rng = Lcg(17);
    let k = 2 * QK_K;
    let ab = act_block_bytes(ActFormat::Q8K);
    for _ in 0..20 {
        let rows: Vec<Vec<u8>> = (0..4).map(|_| q8k_row(&mut rng, k)).collect();
        let a: [&[u8]; 4] = std::array::from_fn(|j| &rows[j][..k / QK_K * ab]);
        let w4 = random_blocks(&mut rng, k / QK_K, 144, &[0, 2]);
        for gemm in [false, true] {
            assert_eq!(
                simd::tile_q4k_x4(&w4, a, gemm),
                simd::tile_q4k(&w4, a, gemm)
            );
            let got = simd::tile_q4k(&w4, a, gemm);
            for j in 0..4 {
                assert_eq!(
                    got[j].to_bits(),
                    kdot::dot_q4k_repacked(&w4, a[j], gemm, &SUMS).to_bits()
                );
            }
        }
        let w6 = random_blocks(&mut rng, k / QK_K, 210, &[208]);
        let rows = simd::rows_q6k(&w6, a);
        for j in 0..4 {
            assert_eq!(rows[j].to_bits(), kdot::dot_q6k(&w6, a[j], &SUMS).to_bits());
            assert_eq!(rows[j].to_bits(), simd::rows_q6k(&w6, [a[j]])[0].to_bits());
        }
        let got = simd::tile_q6k(&w6, a);
        for j in 0..4 {
            assert_eq!(
                got[j].to_bits(),
                kdot::dot_q6k_tiled(&w6, a[j], &SUMS).to_bits()
            );
        }
    }
}

#[test]
fn k_quant_prefill_matmul_keeps_the_row_kernels() {
    // 9 rows: Q4_K has two gemm groups of 4 and one gemv row; Q6_K is tiled (m >= 8).
    let mut rng = Lcg(19);
    let (k, n, m) = (2 * QK_K, 8, 9);
    let xs: Vec<f32> = (0..m * k).map(|_| rng.f() * 2.0).collect();
    let ab = act_block_bytes(ActFormat::Q8K);
    let mut act = vec![0u8; m * k / QK_K * ab];
    quantize_q8k(&xs, &mut act);
    let arow = |r: usize| &act[r * k / QK_K * ab..(r + 1) * k / QK_K * ab];
    for wblock in [144, 210] {
        let dmin: &[usize] = if wblock == 144 { &[0, 2] } else { &[208] };
        let bytes = random_blocks(&mut rng, n * k / QK_K, wblock, dmin);
        // Block structs need their alignment: copy into u64 storage.
        let mut store = vec![0u64; bytes.len().div_ceil(8)];
        // SAFETY: `store` holds at least `bytes.len()` bytes.
        let w: &mut [u8] =
            unsafe { std::slice::from_raw_parts_mut(store.as_mut_ptr() as *mut u8, bytes.len()) };
        w.copy_from_slice(&bytes);
        let mut dst = vec![0f32; m * n];
        let shape = Shape {
            m,
            k,
            n,
            by_shape: true,
        };
        if wblock == 144 {
            run::<BlockQ4K>(w, &xs, shape, &mut dst).unwrap();
        } else {
            run::<BlockQ6K>(w, &xs, shape, &mut dst).unwrap();
        }
        let wrow = k / QK_K * wblock;
        for r in 0..m {
            for c in 0..n {
                let wc = &w[c * wrow..(c + 1) * wrow];
                let want = if wblock == 144 {
                    kdot::dot_q4k_repacked(wc, arow(r), r < 8, &SUMS)
                } else {
                    kdot::dot_q6k_tiled(wc, arow(r), &SUMS)
                };
                assert_eq!(
                    dst[r * n + c].to_bits(),
                    want.to_bits(),
                    "{wblock} ({r}, {c})"
                );
            }
        }
    }
}

#[test]
fn interleaved_q4k_equals_the_row_kernels() {
    // 18 rows: four gemm groups of 4 and two gemv rows; 16 weight rows (two groups).
    let mut rng = Lcg(23);
    let (k, n, m) = (2 * QK_K, 16, 18);
    let xs: Vec<f32> = (0..m * k).map(|_| rng.f() * 2.0).collect();
    let ab = act_block_bytes(ActFormat::Q8K);
    let arow = k / QK_K * ab;
    let mut act = vec![0u8; m * arow];
    quantize_q8k(&xs, &mut act);
    let w = random_blocks(&mut rng, n * k / QK_K, 144, &[0, 2]);
    let wrow = k / QK_K * 144;
    for vnni in [false, has_vnni()] {
        let mut dst = vec![0f32; m * n];
        // llama.cpp's split (gemm for the first 16 rows), and gemv for every row.
        for gemm_rows in [16, 0] {
            dot_q4k_interleaved(&w, &act, (m, k, n), gemm_rows, &mut dst, vnni);
            for r in 0..m {
                for c in 0..n {
                    let wc = &w[c * wrow..(c + 1) * wrow];
                    let a = &act[r * arow..(r + 1) * arow];
                    let want = kdot::dot_q4k_repacked(wc, a, r < gemm_rows, &SUMS);
                    let got = dst[r * n + c];
                    assert_eq!(
                        got.to_bits(),
                        want.to_bits(),
                        "{vnni} {gemm_rows} ({r}, {c})"
                    );
                }
            }
        }
    }
    // The portable versions agree.
    let blocks: [&[u8]; 8] = std::array::from_fn(|c| &w[c * wrow..c * wrow + 144]);
    let mut simd_q = vec![QBlock([0; 32]); 64];
    let mut plain_q = vec![QBlock([0; 32]); 64];
    simd::regroup_q4k(blocks, &mut simd_q);
    scalar::regroup_q4k(blocks, &mut plain_q);
    assert!(simd_q.iter().zip(&plain_q).all(|(a, b)| a.0 == b.0));
    let mut g = Q4kGroup {
        q: plain_q,
        scales: vec![[0; 8]; 8],
        mins: vec![[0; 8]; 8],
        d: vec![[0.0; 8]],
        dmin: vec![[0.0; 8]],
    };
    for (c, x) in blocks.iter().enumerate() {
        g.d[0][c] = f16_at(x, 0);
        g.dmin[0][c] = f16_at(x, 2);
        let (scales, mins) = q4k_scales(&x[4..16]);
        for j in 0..8 {
            g.scales[j][c] = scales[j];
            g.mins[j][c] = mins[j];
        }
    }
    for gemm in [false, true] {
        let a = &act[..ab];
        let want = simd::q4k_row_x8(&g, a, gemm);
        assert_eq!(scalar::q4k_row_x8(&g, a, gemm), want);
    }
}

/// The Q4_K matrices regrouped at load for the 16-row decode kernels: the scalar reference
/// over the regrouped bytes, each 512-bit kernel this CPU has, and the driver of the
/// chosen set, against llama.cpp's one-row kernel over its repacked layout.
#[test]
fn regrouped_q4k_equals_the_row_kernel() {
    use super::repack::{self, RepackedQ4k};
    let mut rng = Lcg(37);
    let (k, n, m) = (2 * QK_K, 32, 5);
    let xs: Vec<f32> = (0..m * k).map(|_| rng.f() * 2.0).collect();
    let arow = k / QK_K * act_block_bytes(ActFormat::Q8K);
    let mut act = vec![0u8; m * arow];
    quantize_q8k(&xs, &mut act);
    let w = random_blocks(&mut rng, n * k / QK_K, 144, &[0, 2]);
    let wrow = k / QK_K * 144;
    let want = |r: usize, c: usize, gemm: bool| {
        let (wc, a) = (&w[c * wrow..(c + 1) * wrow], &act[r * arow..(r + 1) * arow]);
        kdot::dot_q4k_repacked(wc, a, gemm, &SUMS)
    };
    let rp = RepackedQ4k::new(&w, n, k);
    assert_eq!(rp.groups(), 2);
    for g in 0..rp.groups() {
        for r in 0..m {
            let a = &act[r * arow..(r + 1) * arow];
            for gemm in [false, true] {
                let reference = RepackedQ4k::reference(rp.group(g), a, gemm);
                for (i, v) in reference.iter().enumerate() {
                    let c = g * repack::ROWS + i;
                    assert_eq!(v.to_bits(), want(r, c, gemm).to_bits(), "{gemm} ({r}, {c})");
                }
                #[cfg(all(
                    target_arch = "x86_64",
                    target_feature = "avx2",
                    target_feature = "fma"
                ))]
                for vnni in [false, true] {
                    let needs = if vnni {
                        KernelSet::Avx512Vnni
                    } else {
                        KernelSet::Avx512
                    };
                    if KernelSet::detected() < needs {
                        continue;
                    }
                    // SAFETY: the CPU has the features (checked above).
                    let got = unsafe {
                        match vnni {
                            true => super::avx512::q4k_x16_vnni(rp.group(g), a, gemm),
                            false => super::avx512::q4k_x16(rp.group(g), a, gemm),
                        }
                    };
                    let bits = |v: [f32; 16]| v.map(f32::to_bits);
                    assert_eq!(
                        bits(got),
                        bits(reference),
                        "{needs} {gemm} group {g} row {r}"
                    );
                }
            }
        }
    }
    if KernelSet::detected() < KernelSet::Avx512 {
        eprintln!("this CPU has no AVX-512: the 16-row Q4_K kernels are not run here");
        return;
    }
    for gemm_rows in [0, 4] {
        let mut dst = vec![0f32; m * n];
        repack::forward(&rp, &xs, m, k, gemm_rows, &mut dst);
        for r in 0..m {
            for c in 0..n {
                assert_eq!(
                    dst[r * n + c].to_bits(),
                    want(r, c, r < gemm_rows).to_bits(),
                    "{gemm_rows} ({r}, {c})"
                );
            }
        }
    }
}

#[test]
fn interleaved_q6k_equals_the_tiled_kernel() {
    let mut rng = Lcg(29);
    let (k, n, m) = (2 * QK_K, 16, 17);
    let xs: Vec<f32> = (0..m * k).map(|_| rng.f() * 2.0).collect();
    let ab = act_block_bytes(ActFormat::Q8K);
    let arow = k / QK_K * ab;
    let mut act = vec![0u8; m * arow];
    quantize_q8k(&xs, &mut act);
    let w = random_blocks(&mut rng, n * k / QK_K, 210, &[208]);
    let wrow = k / QK_K * 210;
    for vnni in [false, has_vnni()] {
        let mut dst = vec![0f32; m * n];
        dot_q6k_interleaved(&w, &act, m, k, n, &mut dst, vnni);
        for r in 0..m {
            for c in 0..n {
                let wc = &w[c * wrow..(c + 1) * wrow];
                let want = kdot::dot_q6k_tiled(wc, &act[r * arow..(r + 1) * arow], &SUMS);
                let got = dst[r * n + c];
                assert_eq!(got.to_bits(), want.to_bits(), "{vnni} ({r}, {c})");
            }
        }
    }
    // The portable versions agree.
    let blocks: [&[u8]; 8] = std::array::from_fn(|c| &w[c * wrow..c * wrow + 210]);
    let mut simd_q = vec![QBlock([0; 32]); 64];
    let mut plain_q = vec![QBlock([0; 32]); 64];
    simd::regroup_q6k(blocks, &mut simd_q);
    scalar::regroup_q6k(blocks, &mut plain_q);
    assert!(simd_q.iter().zip(&plain_q).all(|(a, b)| a.0 == b.0));
    let mut g = Q6kGroup {
        q: plain_q,
        scales: vec![[0; 8]; 16],
        d: vec![[0.0; 8]],
    };
    for (c, x) in blocks.iter().enumerate() {
        g.d[0][c] = f16_at(x, 208);
        for j in 0..16 {
            g.scales[j][c] = x[192 + j] as i8 as i32;
        }
    }
    let a = &act[..ab];
    assert_eq!(scalar::q6k_row_x8(&g, a), simd::q6k_row_x8(&g, a));
}

#[test]
fn q6k_lane_total_is_the_tiled_kernels_sum() {
    // The tiled kernel sums scale * (q - 32) * q8 directly; the lanes subtract the
    // 32 * scale * bsum terms instead. Both are the same integer.
    let mut rng = Lcg(5);
    let ab = act_block_bytes(ActFormat::Q8K);
    for _ in 0..50 {
        let a = q8k_row(&mut rng, QK_K);
        let x = random_blocks(&mut rng, 1, 210, &[208]);
        let (ql, qh, sc, q8) = (&x[0..128], &x[128..192], &x[192..208], &a[4..4 + QK_K]);
        let mut direct = 0i32;
        for half in 0..2 {
            for l in 0..32 {
                let vals = scalar::q6k_quads(&ql[64 * half..], &qh[32 * half..], l);
                for (v, &q) in vals.iter().enumerate() {
                    let e = 128 * half + 32 * v + l;
                    direct += (sc[e / 16] as i8 as i32) * (q - 32) * (q8[e] as i8 as i32);
                }
            }
        }
        assert_eq!(scalar::q6k_lanes(&x, &a[..ab]).iter().sum::<i32>(), direct);
    }
}

#[test]
fn q8_1_matches_ggml_rounding() {
    // 127 / amax scaling, ties to even, s = f16(d * Σq).
    let mut xs = vec![0f32; 32];
    xs[0] = 127.0;
    xs[1] = 2.5;
    xs[2] = -3.5;
    xs[3] = 1.0;
    let mut out = vec![0u8; 36];
    quantize_q8_0_or_1(&xs, &mut out, true);
    assert_eq!(out[4] as i8, 127);
    assert_eq!(out[5] as i8, 2);
    assert_eq!(out[6] as i8, -4);
    assert_eq!(f16_at(&out, 2), 127.0 + 2.0 - 4.0 + 1.0);
}

/// The `m × n` products of `xs` with a random weight of `dtype` quantized by candle, under
/// `numerics`, and the same rows one call each.
fn whole_and_by_row(
    dtype: candle_core::quantized::GgmlDType,
    numerics: Numerics,
    m: usize,
    seed: u64,
) -> (Vec<f32>, Vec<f32>) {
    let (k, n) = (2 * QK_K, 24);
    let mut rng = Lcg(seed);
    let wv: Vec<f32> = (0..n * k).map(|_| rng.f()).collect();
    let w = candle_core::Tensor::from_vec(wv, (n, k), &candle_core::Device::Cpu).unwrap();
    let q = candle_core::quantized::QTensor::quantize(&w, dtype).unwrap();
    let lin = QuantLinear::new(std::sync::Arc::new(q), numerics);
    let xs: Vec<f32> = (0..m * k).map(|_| rng.f() * 3.0).collect();
    let mut whole = Vec::new();
    lin.forward_host(&xs, m, &mut whole).unwrap();
    let mut rows = Vec::new();
    let mut one = Vec::new();
    for r in 0..m {
        lin.forward_host(&xs[r * k..(r + 1) * k], 1, &mut one)
            .unwrap();
        rows.extend_from_slice(&one);
    }
    (whole, rows)
}

const FORMATS: [candle_core::quantized::GgmlDType; 10] = {
    use candle_core::quantized::GgmlDType::*;
    [Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2K, Q3K, Q4K, Q5K, Q6K]
};

#[test]
fn batch_invariant_rows_equal_one_row_calls_in_every_format() {
    for dtype in FORMATS {
        for m in [2, 5, 8, 9, 16, 17, 33] {
            let (whole, rows) = whole_and_by_row(dtype, Numerics::BatchInvariant, m, 7 + m as u64);
            let diff = whole
                .iter()
                .zip(&rows)
                .position(|(a, b)| a.to_bits() != b.to_bits());
            assert_eq!(
                diff, None,
                "{dtype:?} with {m} rows: value {diff:?} differs"
            );
        }
    }
}

#[test]
fn llama_cpp_numerics_round_prompts_differently_from_steps() {
    // The reason batch-invariant numerics exist: llama.cpp's K-quant prompt kernels (the
    // formats of Gemma 3's Q4_K_M file) give other bits than its one-row kernels. Its
    // 32-value tiles keep the one-row order.
    use candle_core::quantized::GgmlDType::*;
    for (dtype, differs) in [
        (Q4_0, false),
        (Q4_1, false),
        (Q8_0, false),
        (Q4K, true),
        (Q6K, true),
    ] {
        let (whole, rows) = whole_and_by_row(dtype, Numerics::LlamaCpp, 17, 3);
        let same = whole
            .iter()
            .zip(&rows)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert_eq!(
            !same, differs,
            "{dtype:?} with 17 rows under llama.cpp's kernels"
        );
    }
}
