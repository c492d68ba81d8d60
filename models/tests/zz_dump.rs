//! TEMPORARY debugging helper (to be removed).
mod common;
use common::*;
use tutti_models::{LoadOptions, Model};

#[test]
fn zz_dump() {
    let Ok(file) = std::env::var("ZZ_MODEL") else {
        return;
    };
    let toks: Vec<u32> = std::env::var("ZZ_TOKENS")
        .unwrap()
        .split(',')
        .map(|x| x.parse().unwrap())
        .collect();
    let mut model =
        Model::load(demo_model(&file).to_str().unwrap(), &LoadOptions::default()).unwrap();
    model.lm.reset();
    let logits: Vec<f32> = model.lm.forward(&toks).unwrap().to_vec1().unwrap();
    let bytes: Vec<u8> = logits.iter().flat_map(|x| x.to_le_bytes()).collect();
    std::fs::write(
        format!("{}/logits.f32", std::env::var("TUTTI_DUMP_DIR").unwrap()),
        bytes,
    )
    .unwrap();
}
