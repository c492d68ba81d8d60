//! Files that survive a crash or a power loss: every file tutti writes whole (exported
//! tokenizers here; reports, route policies and alignment maps in `tutti`, which
//! re-exports this module as `tutti::durable`) goes through [`write_atomic`], and
//! append-only result files are synced after each row ([`sync_appended`]).
//!
//! A rename alone is not enough: without an fsync of the new file's data the rename can
//! reach the disk before the data, and a power loss then leaves an empty or partial
//! file under the final name; without an fsync of the folder the rename itself can be
//! lost. The temporary name is unique per process and call, so concurrent writers of
//! the same path (two exports, two threads building one map) never write into each
//! other's temporary file: the last rename wins with a whole file.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Writes `bytes` to `path` so that, whatever happens, `path` holds either its previous
/// content or all of `bytes`: a unique temporary file in the same folder, written and
/// fsynced, renamed over `path`, then the folder fsynced. The folder must exist.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_with(path, |f| f.write_all(bytes))
}

/// [`write_atomic`] with the content produced by `write` into the temporary file (for
/// writers that stream, such as serializers).
pub fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<()> {
    let (tmp, mut file) = create_temp(path)?;
    let written = write(&mut file)
        .and_then(|()| file.sync_all())
        .and_then(|()| {
            drop(file);
            std::fs::rename(&tmp, path)
        });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(parent_of(path))
}

/// Makes the rows appended to `file` durable (call after each whole row).
pub fn sync_appended(file: &File) -> io::Result<()> {
    file.sync_data()
}

/// Flushes a folder's entries (new names, renames) to the disk. A no-op where folders
/// cannot be opened as files.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// The folder a relative or absolute `path` lives in (`.` for a bare file name).
fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Creates a new temporary file beside `path`: `.NAME.PID.N.tmp`, with N counting the
/// calls of this process, created exclusively so that no two writers ever share one.
fn create_temp(path: &Path) -> io::Result<(PathBuf, File)> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: not a file path", path.display()),
        )
    })?;
    let dir = parent_of(path);
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(
            ".{}.{}.{n}.tmp",
            name.to_string_lossy(),
            std::process::id()
        ));
        match OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(f) => return Ok((tmp, f)),
            // Left by a killed process that had the same id: take the next number.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tutti-durable-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn leftovers(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect()
    }

    #[test]
    fn replaces_the_file_whole_and_leaves_no_temporary() {
        let dir = scratch("replace");
        let path = dir.join("report.md");
        write_atomic(&path, b"first").unwrap();
        write_atomic(&path, b"second, longer").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second, longer");
        assert!(leftovers(&dir).is_empty(), "{:?}", leftovers(&dir));
    }

    #[test]
    fn concurrent_writers_of_one_path_each_leave_a_whole_file() {
        let dir = scratch("concurrent");
        let path = dir.join("tokenizer.json");
        let contents: Vec<Vec<u8>> = (0..8u8).map(|i| vec![b'a' + i; 200_000]).collect();
        std::thread::scope(|s| {
            for c in &contents {
                let path = &path;
                s.spawn(move || {
                    for _ in 0..5 {
                        write_atomic(path, c).unwrap();
                    }
                });
            }
        });
        let got = std::fs::read(&path).unwrap();
        assert!(
            contents.contains(&got),
            "a mixed file of {} bytes",
            got.len()
        );
        assert!(leftovers(&dir).is_empty(), "{:?}", leftovers(&dir));
    }

    #[test]
    fn a_failed_write_keeps_the_old_file_and_removes_the_temporary() {
        let dir = scratch("failed");
        let path = dir.join("policy.safetensors");
        write_atomic(&path, b"old").unwrap();
        let e = write_atomic_with(&path, |f| {
            f.write_all(b"half")?;
            Err(io::Error::other("serializer failed"))
        })
        .unwrap_err();
        assert_eq!(e.to_string(), "serializer failed");
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert!(leftovers(&dir).is_empty(), "{:?}", leftovers(&dir));
    }

    #[test]
    fn the_folder_of_a_bare_file_name_is_the_current_one() {
        assert_eq!(parent_of(Path::new("x.md")), Path::new("."));
        assert_eq!(parent_of(Path::new("a/x.md")), Path::new("a"));
        assert!(write_atomic(Path::new("/"), b"x").is_err());
    }
}
