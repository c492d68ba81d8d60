//! A user's clone has nothing beside it: no tracked file of the project may read, name or
//! point at a folder next to the repository (the development machine's reference
//! material lives in such a folder). Every asset a test needs comes from the project's
//! own fetch scripts.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Tracked files (by git when the tree is a clone, else every file outside build
/// outputs, caches and hidden folders).
fn project_files(root: &Path) -> Vec<PathBuf> {
    if root.join(".git").exists() {
        let out = Command::new("git")
            .args(["ls-files", "-z"])
            .current_dir(root)
            .output()
            .expect("git ls-files (git is needed in a clone)");
        assert!(out.status.success(), "git ls-files failed");
        return out
            .stdout
            .split(|&b| b == 0)
            .filter(|p| !p.is_empty())
            .map(|p| root.join(String::from_utf8_lossy(p).as_ref()))
            .collect();
    }
    let mut files = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || name == "target" || name == "models-cache" {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files
}

#[test]
fn no_file_refers_to_a_folder_beside_the_clone() {
    let root = repo();
    // Assembled so that this file does not match itself.
    let sibling = ["..", "/", "shared"].concat();
    let patterns = [
        sibling.clone(),
        ["..", "\\", "shared"].concat(),
        ["shared", "/assets/"].concat(),
        ["shared", "/seeds/"].concat(),
        ["parent / ", "\"shared\""].concat(),
    ];
    let mut hits = Vec::new();
    let files = project_files(&root);
    assert!(files.len() > 50, "found only {} files", files.len());
    for file in files {
        let Ok(bytes) = std::fs::read(&file) else {
            continue; // deleted in the work tree but still tracked
        };
        let text = String::from_utf8_lossy(&bytes);
        for (n, line) in text.lines().enumerate() {
            if patterns.iter().any(|p| line.contains(p.as_str())) {
                let rel = file.strip_prefix(&root).unwrap_or(&file);
                hits.push(format!("{}:{}: {}", rel.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(
        hits.is_empty(),
        "files refer to `{sibling}`, which a user's clone does not have; fetch the asset \
         with a script under scripts/ instead:\n{}",
        hits.join("\n")
    );
}
