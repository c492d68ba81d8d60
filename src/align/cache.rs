//! On-disk cache of [`TokenMap`]s, and of relrep's preparation ([`Prepared`]) for
//! pairs without a full map.
//!
//! A map file is named by its key: the SHA-256 of the method, its parameters and the
//! fingerprints of both vocabularies (plus model weight fingerprints for relrep). The
//! file repeats the key and ends with a checksum, so a truncated, corrupt, foreign or
//! stale file is detected and rebuilt, never trusted.
//!
//! Map layout (little endian, `KEY.map`): `TUTTIMAP` magic (8 bytes), format version
//! (u32), key (32 bytes), method tag (u8), A length (u64), B length (u64), targets
//! (A length × u32, `u32::MAX` = none), scores (A length × f32), SHA-256 of everything
//! before (32 bytes).
//!
//! Preparation layout (`KEY.relrep`, the key of the pair's relrep map): `TUTTIRRP`
//! magic, format version (u32), key (32 bytes), then per side (A, B): rows (u64), cols
//! (u64), whether an offset follows (u8), rows × cols f32, cols f32 when it does; then
//! the SHA-256 of everything before.

use std::fs;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::relrep::{Prepared, ProjectorParts};
use super::{AlignError, AlignMethod, TokenMap};
use crate::vocab::Vocab;

const MAGIC: &[u8; 8] = b"TUTTIMAP";
const VERSION: u32 = 1;
const HEADER: usize = 8 + 4 + 32 + 1 + 8 + 8;
const PREP_MAGIC: &[u8; 8] = b"TUTTIRRP";
const PREP_VERSION: u32 = 2;

/// Identity of a map: what it was built from and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapKey(pub [u8; 32]);

impl MapKey {
    /// Key of a map A → B by `method`. `extra` holds everything else the result depends
    /// on: method parameters and, for relrep, the weight fingerprints of both models.
    pub fn new(method: AlignMethod, a: &Vocab, b: &Vocab, extra: &[&str]) -> MapKey {
        let mut h = Sha256::new();
        h.update(b"tutti-map-key-v1");
        h.update([method.tag()]);
        h.update(a.fingerprint());
        h.update(b.fingerprint());
        for e in extra {
            h.update((e.len() as u64).to_le_bytes());
            h.update(e.as_bytes());
        }
        MapKey(h.finalize().into())
    }

    /// Lowercase hex.
    pub fn hex(&self) -> String {
        tutti_models::hex(&self.0)
    }
}

/// What a cache lookup found.
#[derive(Debug)]
pub enum Lookup {
    /// A valid map for the key.
    Hit(TokenMap),
    /// No file for the key.
    Missing,
    /// A file that failed validation; the reason says why.
    Invalid(String),
}

/// Where the map came from, for reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// Loaded from the cache file.
    Cached,
    /// Built now (no file, or the cache was bypassed).
    Built,
    /// Built now because the cache file was invalid (reason).
    Rebuilt(String),
}

/// A directory of cached maps.
#[derive(Clone, Debug)]
pub struct MapCache {
    dir: PathBuf,
}

impl MapCache {
    /// A cache in `dir` (maps are stored directly in it).
    pub fn new(dir: impl Into<PathBuf>) -> MapCache {
        MapCache { dir: dir.into() }
    }

    /// The default cache: `$TUTTI_CACHE/maps`, else `$XDG_CACHE_HOME/tutti/maps`, else
    /// `~/.cache/tutti/maps`.
    pub fn from_env() -> Result<MapCache, AlignError> {
        let nonempty = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        let root = if let Some(d) = nonempty("TUTTI_CACHE") {
            PathBuf::from(d)
        } else if let Some(d) = nonempty("XDG_CACHE_HOME") {
            PathBuf::from(d).join("tutti")
        } else if let Some(h) = nonempty("HOME") {
            PathBuf::from(h).join(".cache").join("tutti")
        } else {
            return Err(AlignError::NoCacheDir);
        };
        Ok(MapCache::new(root.join("maps")))
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file for `key`.
    pub fn path(&self, key: &MapKey) -> PathBuf {
        self.dir.join(format!("{}.map", key.hex()))
    }

    /// Reads and validates the map stored for `key`.
    pub fn load(&self, key: &MapKey) -> Lookup {
        let path = self.path(key);
        match fs::read(&path) {
            Ok(bytes) => match decode(&bytes, key) {
                Ok(map) => Lookup::Hit(map),
                Err(reason) => Lookup::Invalid(reason),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Lookup::Missing,
            Err(e) => Lookup::Invalid(format!("unreadable: {e}")),
        }
    }

    /// Writes `map` for `key` ([`crate::durable::write_atomic`]).
    pub fn store(&self, key: &MapKey, map: &TokenMap) -> Result<PathBuf, AlignError> {
        self.write(&self.path(key), &encode(map, key))
    }

    /// The file of the relrep preparation for `key` (a relrep map's key).
    pub fn prepared_path(&self, key: &MapKey) -> PathBuf {
        self.dir.join(format!("{}.relrep", key.hex()))
    }

    /// Reads and validates the relrep preparation stored for `key`: `Ok(None)` when
    /// there is none, `Err(reason)` for a file that fails validation.
    pub fn load_prepared(&self, key: &MapKey) -> Result<Option<Prepared>, String> {
        match fs::read(self.prepared_path(key)) {
            Ok(bytes) => decode_prepared(&bytes, key).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("unreadable: {e}")),
        }
    }

    /// Writes the relrep preparation for `key` (atomically).
    pub fn store_prepared(&self, key: &MapKey, p: &Prepared) -> Result<PathBuf, AlignError> {
        self.write(&self.prepared_path(key), &encode_prepared(p, key))
    }

    /// Writes `bytes` to `path` in the cache directory ([`crate::durable::write_atomic`]).
    fn write(&self, path: &Path, bytes: &[u8]) -> Result<PathBuf, AlignError> {
        let io = |path: &Path, source| AlignError::CacheIo {
            path: path.display().to_string(),
            source,
        };
        fs::create_dir_all(&self.dir).map_err(|e| io(&self.dir, e))?;
        crate::durable::write_atomic(path, bytes).map_err(|e| io(path, e))?;
        Ok(path.to_path_buf())
    }

    /// Loads the map for `key`, or builds and stores it. `force` skips the lookup.
    pub fn get_or_build<F>(
        &self,
        key: &MapKey,
        force: bool,
        build: F,
    ) -> Result<(TokenMap, Source), AlignError>
    where
        F: FnOnce() -> Result<TokenMap, AlignError>,
    {
        let source = if force {
            Source::Built
        } else {
            match self.load(key) {
                Lookup::Hit(map) => return Ok((map, Source::Cached)),
                Lookup::Missing => Source::Built,
                Lookup::Invalid(reason) => Source::Rebuilt(reason),
            }
        };
        let map = build()?;
        self.store(key, &map)?;
        Ok((map, source))
    }
}

fn encode(map: &TokenMap, key: &MapKey) -> Vec<u8> {
    let n = map.len();
    let mut out = Vec::with_capacity(HEADER + 8 * n + 32);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&key.0);
    out.push(map.method().tag());
    out.extend_from_slice(&(n as u64).to_le_bytes());
    out.extend_from_slice(&(map.target_len() as u64).to_le_bytes());
    for t in map.raw_targets() {
        out.extend_from_slice(&t.to_le_bytes());
    }
    for s in map.raw_scores() {
        out.extend_from_slice(&s.to_le_bytes());
    }
    let sum: [u8; 32] = Sha256::digest(&out).into();
    out.extend_from_slice(&sum);
    out
}

fn decode(bytes: &[u8], key: &MapKey) -> Result<TokenMap, String> {
    if bytes.len() < HEADER + 32 {
        return Err(format!("truncated ({} bytes)", bytes.len()));
    }
    let (body, sum) = bytes.split_at(bytes.len() - 32);
    if Sha256::digest(body).as_slice() != sum {
        return Err("checksum mismatch".into());
    }
    if &body[..8] != MAGIC {
        return Err("not a tutti map file".into());
    }
    let u32_at = |o: usize| u32::from_le_bytes([body[o], body[o + 1], body[o + 2], body[o + 3]]);
    let u64_at = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&body[o..o + 8]);
        u64::from_le_bytes(b)
    };
    let version = u32_at(8);
    if version != VERSION {
        return Err(format!("format version {version}, expected {VERSION}"));
    }
    if body[12..44] != key.0 {
        return Err("key mismatch (stale file)".into());
    }
    let method = AlignMethod::from_tag(body[44]).ok_or("unknown method tag")?;
    let n = usize::try_from(u64_at(45)).map_err(|_| "length overflow")?;
    let b_len = usize::try_from(u64_at(53)).map_err(|_| "length overflow")?;
    if body.len() != HEADER + n.checked_mul(8).ok_or("length overflow")? {
        return Err("length does not match the header".into());
    }
    let mut targets = Vec::with_capacity(n);
    let mut scores = Vec::with_capacity(n);
    for i in 0..n {
        let t = u32_at(HEADER + 4 * i);
        if t != super::NONE && t as usize >= b_len {
            return Err(format!("target {t} outside B's {b_len} ids"));
        }
        targets.push(t);
        scores.push(f32::from_bits(u32_at(HEADER + 4 * n + 4 * i)));
    }
    Ok(TokenMap::from_parts(method, b_len, targets, scores))
}

fn encode_prepared(p: &Prepared, key: &MapKey) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(PREP_MAGIC);
    out.extend_from_slice(&PREP_VERSION.to_le_bytes());
    out.extend_from_slice(&key.0);
    for side in [&p.a, &p.b] {
        out.extend_from_slice(&(side.rows as u64).to_le_bytes());
        out.extend_from_slice(&(side.cols as u64).to_le_bytes());
        out.push(u8::from(side.offset.is_some()));
        for v in side.mat.iter().chain(side.offset.iter().flatten()) {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out.extend_from_slice(&(p.mapped.len() as u64).to_le_bytes());
    for &(a, b, cos) in &p.mapped {
        out.extend_from_slice(&a.to_le_bytes());
        out.extend_from_slice(&b.to_le_bytes());
        out.extend_from_slice(&cos.to_le_bytes());
    }
    let sum: [u8; 32] = Sha256::digest(&out).into();
    out.extend_from_slice(&sum);
    out
}

fn decode_prepared(bytes: &[u8], key: &MapKey) -> Result<Prepared, String> {
    const HEAD: usize = 8 + 4 + 32;
    if bytes.len() < HEAD + 32 {
        return Err(format!("truncated ({} bytes)", bytes.len()));
    }
    let (body, sum) = bytes.split_at(bytes.len() - 32);
    if Sha256::digest(body).as_slice() != sum {
        return Err("checksum mismatch".into());
    }
    if &body[..8] != PREP_MAGIC {
        return Err("not a tutti relrep preparation".into());
    }
    let version = u32::from_le_bytes([body[8], body[9], body[10], body[11]]);
    if version != PREP_VERSION {
        return Err(format!("format version {version}, expected {PREP_VERSION}"));
    }
    if body[12..HEAD] != key.0 {
        return Err("key mismatch (stale file)".into());
    }
    let mut at = HEAD;
    let mut take = |n: usize| -> Result<&[u8], String> {
        let end = at.checked_add(n).filter(|&e| e <= body.len());
        let end = end.ok_or("length does not match the header")?;
        let s = &body[at..end];
        at = end;
        Ok(s)
    };
    let mut side = || -> Result<ProjectorParts, String> {
        let u64_of = |b: &[u8]| {
            let mut x = [0u8; 8];
            x.copy_from_slice(b);
            usize::try_from(u64::from_le_bytes(x)).map_err(|_| "length overflow".to_string())
        };
        let rows = u64_of(take(8)?)?;
        let cols = u64_of(take(8)?)?;
        let has_offset = take(1)?[0] == 1;
        let floats = |b: &[u8]| -> Vec<f32> {
            b.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        };
        let n = rows.checked_mul(cols).and_then(|n| n.checked_mul(4));
        let mat = floats(take(n.ok_or("length overflow")?)?);
        let offset = if has_offset {
            Some(floats(take(cols.checked_mul(4).ok_or("length overflow")?)?))
        } else {
            None
        };
        Ok(ProjectorParts {
            rows,
            cols,
            mat,
            offset,
        })
    };
    let a = side()?;
    let b = side()?;
    let mut count = [0u8; 8];
    count.copy_from_slice(take(8)?);
    let n = usize::try_from(u64::from_le_bytes(count)).map_err(|_| "length overflow")?;
    let entries = take(n.checked_mul(12).ok_or("length overflow")?)?;
    let word = |b: &[u8]| [b[0], b[1], b[2], b[3]];
    let mapped = entries
        .chunks_exact(12)
        .map(|e| {
            (
                u32::from_le_bytes(word(&e[..4])),
                u32::from_le_bytes(word(&e[4..8])),
                f32::from_le_bytes(word(&e[8..])),
            )
        })
        .collect();
    if at != body.len() {
        return Err("length does not match the header".into());
    }
    Ok(Prepared { a, b, mapped })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::align::{exact_map, tests::vocab_from};

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tutti-cache-test-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn round_trip_and_corruption() {
        let a = vocab_from(&["a", "b", "c"], &[]);
        let b = vocab_from(&["b", "a"], &[]);
        let map = exact_map(&a, &b);
        let key = MapKey::new(AlignMethod::Exact, &a, &b, &[]);
        let dir = temp_dir("rt");
        let cache = MapCache::new(&dir);
        assert!(matches!(cache.load(&key), Lookup::Missing));
        let mut builds = 0;
        let (m1, src) = cache
            .get_or_build(&key, false, || {
                builds += 1;
                Ok(map.clone())
            })
            .unwrap();
        assert_eq!((src, &m1), (Source::Built, &map));
        let (m2, src) = cache.get_or_build(&key, false, || unreachable!()).unwrap();
        assert_eq!((src, &m2), (Source::Cached, &map));

        // Flip one byte in the body: the checksum catches it and the map is rebuilt.
        let path = cache.path(&key);
        let mut bytes = fs::read(&path).unwrap();
        bytes[HEADER + 1] ^= 0x40;
        fs::write(&path, &bytes).unwrap();
        assert!(matches!(cache.load(&key), Lookup::Invalid(r) if r.contains("checksum")));
        let (m3, src) = cache.get_or_build(&key, false, || Ok(map.clone())).unwrap();
        assert!(matches!(src, Source::Rebuilt(_)));
        assert_eq!(m3, map);

        // Truncation.
        fs::write(&path, &fs::read(&path).unwrap()[..20]).unwrap();
        assert!(matches!(cache.load(&key), Lookup::Invalid(r) if r.contains("truncated")));

        // A valid file stored under another key's name is stale, not trusted.
        let other = MapKey::new(AlignMethod::MinEd, &a, &b, &[]);
        fs::write(cache.path(&other), encode(&map, &key)).unwrap();
        assert!(matches!(cache.load(&other), Lookup::Invalid(r) if r.contains("key mismatch")));
        let _ = fs::remove_dir_all(&dir);
    }

    /// Two threads (or processes) building the same map store it at the same time:
    /// every store succeeds and the entry is whole.
    #[test]
    fn concurrent_stores_of_one_key_all_succeed() {
        let words: Vec<String> = (0..3000).map(|i| format!("w{i}")).collect();
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        let a = vocab_from(&words, &[]);
        let map = exact_map(&a, &a);
        let key = MapKey::new(AlignMethod::Exact, &a, &a, &[]);
        let dir = temp_dir("race");
        let cache = MapCache::new(&dir);
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        (0..20)
                            .map(|_| cache.store(&key, &map).map(drop).map_err(|e| e.to_string()))
                            .collect::<Result<Vec<()>, String>>()
                    })
                })
                .collect();
            for h in handles {
                h.join().unwrap().unwrap();
            }
        });
        assert!(matches!(cache.load(&key), Lookup::Hit(m) if m == map));
        let names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn prepared_round_trip_and_corruption() {
        let a = vocab_from(&["a", "b", "c"], &[]);
        let b = vocab_from(&["b", "a"], &[]);
        let key = MapKey::new(AlignMethod::RelRep, &a, &b, &["w"]);
        let prepared = Prepared {
            a: ProjectorParts {
                rows: 3,
                cols: 2,
                mat: vec![1.0, -2.5, 0.0, 3.25, f32::MIN_POSITIVE, 7.0],
                offset: Some(vec![0.5, -0.5]),
            },
            b: ProjectorParts {
                rows: 1,
                cols: 2,
                mat: vec![9.0, 8.0],
                offset: None,
            },
            mapped: vec![(0, 1, 0.75), (2, 0, -0.125)],
        };
        let dir = temp_dir("prep");
        let cache = MapCache::new(&dir);
        assert_eq!(cache.load_prepared(&key), Ok(None));
        cache.store_prepared(&key, &prepared).unwrap();
        assert_eq!(cache.load_prepared(&key), Ok(Some(prepared.clone())));
        let path = cache.prepared_path(&key);
        let mut bytes = fs::read(&path).unwrap();
        bytes[50] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert!(cache.load_prepared(&key).unwrap_err().contains("checksum"));
        fs::write(&path, &bytes[..30]).unwrap();
        assert!(cache.load_prepared(&key).unwrap_err().contains("truncated"));
        // Another key's file is stale, and a map file is not a preparation.
        let other = MapKey::new(AlignMethod::RelRep, &b, &a, &["w"]);
        fs::write(
            cache.prepared_path(&other),
            encode_prepared(&prepared, &key),
        )
        .unwrap();
        assert!(cache
            .load_prepared(&other)
            .unwrap_err()
            .contains("key mismatch"));
        fs::write(&path, encode(&exact_map(&a, &b), &key)).unwrap();
        assert!(cache.load_prepared(&key).is_err());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn keys_depend_on_everything() {
        let a = vocab_from(&["a", "b"], &[]);
        let b = vocab_from(&["b", "a"], &[]);
        let k = MapKey::new(AlignMethod::Exact, &a, &b, &[]);
        assert_ne!(k, MapKey::new(AlignMethod::Exact, &b, &a, &[]));
        assert_ne!(k, MapKey::new(AlignMethod::MinEd, &a, &b, &[]));
        assert_ne!(k, MapKey::new(AlignMethod::Exact, &a, &b, &["w1"]));
        assert_eq!(k, MapKey::new(AlignMethod::Exact, &a, &b, &[]));
    }
}
