//! Where bench items come from: a local JSONL / JSON / Parquet file, or a dataset on the
//! Hugging Face hub (`hf:ORG/NAME`, fetched into the HF cache; `HF_HUB_OFFLINE=1` uses
//! only the cache). Rows are read as JSON objects; each task picks its fields.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::BenchError;

/// A JSON object row.
pub type Row = Map<String, Value>;

/// Known hub datasets: the file holding a split.
fn hub_file(repo: &str, split: &str) -> Option<String> {
    match repo {
        "openai/gsm8k" => Some(format!("main/{split}-00000-of-00001.parquet")),
        "llm-blender/mix-instruct" => Some(format!("{split}_data_prepared.jsonl")),
        _ => None,
    }
}

/// Resolves `--data`: a local path, `hf:ORG/NAME` (a known dataset; the split picks the
/// file) or `hf:ORG/NAME/FILE`.
pub fn resolve(data: &str, split: &str) -> Result<PathBuf, BenchError> {
    let Some(rest) = data.strip_prefix("hf:") else {
        let p = PathBuf::from(data);
        if !p.is_file() {
            return Err(BenchError::Data {
                path: data.into(),
                reason: "no such file (pass a JSONL/Parquet path or hf:ORG/NAME)".into(),
            });
        }
        return Ok(p);
    };
    let parts: Vec<&str> = rest.splitn(3, '/').collect();
    if parts.len() < 2 || parts[0].is_empty() || parts[1].is_empty() {
        return Err(BenchError::Data {
            path: data.into(),
            reason: "expected hf:ORG/NAME or hf:ORG/NAME/FILE".into(),
        });
    }
    let (name, revision) = match parts[1].split_once('@') {
        Some((n, r)) => (n, Some(r)),
        None => (parts[1], None),
    };
    let repo = format!("{}/{name}", parts[0]);
    let file = match parts.get(2) {
        Some(f) if !f.is_empty() => f.to_string(),
        _ => hub_file(&repo, split).ok_or_else(|| BenchError::Data {
            path: data.into(),
            reason: format!(
                "unknown hub dataset {repo}: name the file as hf:{repo}/FILE.jsonl \
                 (known: openai/gsm8k, llm-blender/mix-instruct)"
            ),
        })?,
    };
    tutti_models::fetch_hub_file(&repo, tutti_models::RepoKind::Dataset, revision, &file).map_err(
        |e| BenchError::Data {
            path: data.into(),
            reason: e.to_string(),
        },
    )
}

/// Reads every row of a `.jsonl`, `.json` (an array of objects) or `.parquet` file.
pub fn read_rows(path: &Path) -> Result<Vec<Row>, BenchError> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let bytes = std::fs::read(path).map_err(|e| BenchError::Data {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    parse_rows(bytes, &ext).map_err(|reason| BenchError::Data {
        path: path.display().to_string(),
        reason,
    })
}

/// The rows of a data file's bytes: `ext` is `parquet`, `json` (an array of objects)
/// or anything else for JSON Lines.
pub fn parse_rows(bytes: Vec<u8>, ext: &str) -> Result<Vec<Row>, String> {
    let rows = match ext {
        "parquet" => parse_parquet(bytes)?,
        "json" => {
            let v: Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
            match v {
                Value::Array(items) => items
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| match v {
                        Value::Object(m) => Ok(m),
                        _ => Err(format!("element {i} is not an object")),
                    })
                    .collect::<Result<_, _>>()?,
                _ => return Err("expected a JSON array of objects".into()),
            }
        }
        _ => {
            let text = String::from_utf8(bytes).map_err(|e| format!("not UTF-8 text: {e}"))?;
            let mut rows = Vec::new();
            for (n, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                match serde_json::from_str::<Value>(line) {
                    Ok(Value::Object(m)) => rows.push(m),
                    Ok(_) => return Err(format!("line {}: not a JSON object", n + 1)),
                    Err(e) => return Err(format!("line {}: {e}", n + 1)),
                }
            }
            rows
        }
    };
    if rows.is_empty() {
        return Err("no rows".into());
    }
    Ok(rows)
}

fn parse_parquet(bytes: Vec<u8>) -> Result<Vec<Row>, String> {
    // The Parquet reader panics on some damaged pages (a length past the page's end);
    // that becomes this file's error.
    std::panic::catch_unwind(move || read_parquet_rows(bytes)).unwrap_or_else(|_| {
        Err("not a readable Parquet file: a damaged page (download it again)".into())
    })
}

fn read_parquet_rows(bytes: Vec<u8>) -> Result<Vec<Row>, String> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let bytes = bytes::Bytes::from(bytes);
    let reader =
        SerializedFileReader::new(bytes.clone()).map_err(|e| format!("not a Parquet file: {e}"))?;
    check_page_sizes(&bytes, reader.metadata())?;
    let iter = reader.get_row_iter(None).map_err(|e| e.to_string())?;
    let mut rows = Vec::new();
    for row in iter {
        let row = row.map_err(|e| e.to_string())?;
        match row.to_json_value() {
            Value::Object(m) => rows.push(m),
            other => return Err(format!("row is not a record: {other}")),
        }
    }
    Ok(rows)
}

/// The largest uncompressed page a data file may claim. Writers cut pages at about 1 MiB;
/// the Parquet reader reserves a compressed page's claimed size before decompressing it,
/// so a damaged header could otherwise make a file of a few bytes take up to 2 GiB.
const MAX_PAGE_BYTES: i64 = 16 << 20;

/// Walks every column chunk's page headers (as the reader will read them) and refuses a
/// page whose claimed uncompressed size is past [`MAX_PAGE_BYTES`], or a header that
/// cannot be read at all.
fn check_page_sizes(
    bytes: &[u8],
    meta: &parquet::file::metadata::ParquetMetaData,
) -> Result<(), String> {
    let damaged = || "not a readable Parquet file: a damaged page header (download it again)";
    for group in meta.row_groups() {
        for col in group.columns() {
            let start = col
                .dictionary_page_offset()
                .unwrap_or(col.data_page_offset());
            let (Ok(start), Ok(len)) = (
                usize::try_from(start),
                usize::try_from(col.compressed_size()),
            ) else {
                return Err(damaged().into());
            };
            let end = start.saturating_add(len).min(bytes.len());
            // Dictionary values are stored plainly, each at least this many bytes.
            let value_bytes: i64 = match col.column_type() {
                parquet::basic::Type::BOOLEAN => 1,
                parquet::basic::Type::INT32
                | parquet::basic::Type::FLOAT
                | parquet::basic::Type::BYTE_ARRAY => 4,
                parquet::basic::Type::INT64 | parquet::basic::Type::DOUBLE => 8,
                parquet::basic::Type::INT96 => 12,
                parquet::basic::Type::FIXED_LEN_BYTE_ARRAY => 1,
            };
            let mut pos = start;
            while pos < end {
                let page = thrift::page_sizes(&bytes[pos..end]).ok_or_else(damaged)?;
                if page.uncompressed > MAX_PAGE_BYTES {
                    return Err(format!(
                        "not a readable Parquet file: a page claims {} bytes uncompressed, \
                         past the {MAX_PAGE_BYTES} tutti reads per page (the file is damaged; \
                         download it again)",
                        page.uncompressed
                    ));
                }
                if let Some(n) = page.dictionary_values {
                    // The reader makes room for every entry before decoding them.
                    if n < 0 || n.saturating_mul(value_bytes) > page.uncompressed {
                        return Err(format!(
                            "not a readable Parquet file: a dictionary page claims {n} values \
                             in {} bytes (the file is damaged; download it again)",
                            page.uncompressed
                        ));
                    }
                }
                let body = usize::try_from(page.compressed).map_err(|_| damaged())?;
                pos = pos.saturating_add(page.header_len).saturating_add(body);
            }
        }
    }
    Ok(())
}

/// Just enough of Thrift's compact protocol to read a Parquet page header's sizes the way
/// the Parquet reader reads them: varints of any length with the bits past 64 dropped,
/// the known fields (1–8) by id whatever their type, 32-bit values truncated, unknown
/// fields skipped by type.
mod thrift {
    /// A page header's length in bytes and the sizes it claims for the page.
    #[derive(Debug, PartialEq)]
    pub struct PageSizes {
        pub header_len: usize,
        pub uncompressed: i64,
        pub compressed: i64,
        /// A dictionary page's number of values.
        pub dictionary_values: Option<i64>,
    }

    /// Nesting past this is refused (real headers nest two structs deep).
    const MAX_DEPTH: usize = 32;

    struct Reader<'a> {
        b: &'a [u8],
        pos: usize,
    }

    impl Reader<'_> {
        fn byte(&mut self) -> Option<u8> {
            let v = *self.b.get(self.pos)?;
            self.pos += 1;
            Some(v)
        }

        fn advance(&mut self, n: usize) -> Option<()> {
            let to = self.pos.checked_add(n)?;
            (to <= self.b.len()).then(|| self.pos = to)
        }

        fn varint(&mut self) -> Option<u64> {
            let mut v = 0u64;
            let mut shift = 0u32;
            loop {
                let byte = self.byte()?;
                v |= u64::from(byte & 0x7f).wrapping_shl(shift);
                if byte & 0x80 == 0 {
                    return Some(v);
                }
                shift = shift.wrapping_add(7);
            }
        }

        fn zigzag(&mut self) -> Option<i64> {
            let n = self.varint()?;
            Some((n >> 1) as i64 ^ -((n & 1) as i64))
        }

        /// A collection's size. Every element takes at least a byte, so a size past the
        /// bytes left is malformed (the reader would loop over it, for booleans without
        /// reading anything, which nested lists turn into a hang).
        fn size(&mut self) -> Option<u64> {
            let n = self.varint()?;
            (n <= i32::MAX as u64 && n <= self.left()).then_some(n)
        }

        fn left(&self) -> u64 {
            (self.b.len() - self.pos) as u64
        }

        /// Skips one value of compact type `ty`.
        fn skip(&mut self, ty: u8, depth: usize) -> Option<()> {
            if depth > MAX_DEPTH {
                return None;
            }
            match ty {
                // Booleans carry no data (a field's value is in its type).
                1 | 2 => Some(()),
                3 => self.advance(1),
                4..=6 => self.varint().map(drop),
                7 => self.advance(8),
                8 => {
                    let n = usize::try_from(self.varint()?).ok()?;
                    self.advance(n)
                }
                9 | 10 => {
                    let head = self.byte()?;
                    if head == 0 {
                        return Some(());
                    }
                    let n = match head >> 4 {
                        15 => self.size()?,
                        n if u64::from(n) <= self.left() => u64::from(n),
                        _ => return None,
                    };
                    let ty = head & 0x0f;
                    if matches!(ty, 1 | 2) {
                        return Some(());
                    }
                    for _ in 0..n {
                        self.skip(ty, depth + 1)?;
                    }
                    Some(())
                }
                11 => {
                    let n = self.size()?;
                    if n > 0 {
                        let kv = self.byte()?;
                        for _ in 0..n {
                            self.skip(kv >> 4, depth + 1)?;
                            self.skip(kv & 0x0f, depth + 1)?;
                        }
                    }
                    Some(())
                }
                12 => self.fields(depth + 1, |_, _, _| Some(false)),
                13 => self.advance(16),
                _ => None,
            }
        }

        /// Reads a struct's fields up to its stop: `each(id, type, reader)` returns
        /// `Some(true)` when it read the value itself, `Some(false)` to have it skipped.
        fn fields(
            &mut self,
            depth: usize,
            mut each: impl FnMut(i16, u8, &mut Self) -> Option<bool>,
        ) -> Option<()> {
            if depth > MAX_DEPTH {
                return None;
            }
            let mut last = 0i16;
            loop {
                let head = self.byte()?;
                let ty = head & 0x0f;
                if ty == 0 {
                    return Some(());
                }
                let id = match head >> 4 {
                    0 => self.zigzag()? as i16,
                    delta => last.checked_add(i16::from(delta))?,
                };
                if !each(id, ty, self)? {
                    self.skip(ty, depth)?;
                }
                last = id;
            }
        }
    }

    /// The sizes in the page header at the start of `b` (`None` when it cannot be read).
    pub fn page_sizes(b: &[u8]) -> Option<PageSizes> {
        let mut r = Reader { b, pos: 0 };
        let (mut uncompressed, mut compressed, mut dictionary_values) = (None, None, None);
        r.fields(0, |id, _, r| match id {
            2 => {
                uncompressed = Some(i64::from(r.zigzag()? as i32));
                Some(true)
            }
            3 => {
                compressed = Some(i64::from(r.zigzag()? as i32));
                Some(true)
            }
            // The page type and the checksum: 32-bit values, read whatever the type says.
            1 | 4 => r.zigzag().map(|_| true),
            // The dictionary page's header: its field 1 is the number of values.
            7 => r
                .fields(1, |id, _, r| match id {
                    1 => {
                        dictionary_values = Some(i64::from(r.zigzag()? as i32));
                        Some(true)
                    }
                    _ => Some(false),
                })
                .map(|_| true),
            // The other page kinds' headers: structs, read whatever the type says.
            5 | 6 | 8 => r.fields(1, |_, _, _| Some(false)).map(|_| true),
            _ => Some(false),
        })?;
        Some(PageSizes {
            header_len: r.pos,
            uncompressed: uncompressed?,
            compressed: compressed?,
            dictionary_values,
        })
    }
}

/// The string field `key` of `row`, trimmed; an error naming the row when missing.
pub fn text_field(row: &Row, keys: &[&str], n: usize) -> Result<String, String> {
    for k in keys {
        if let Some(v) = row.get(*k) {
            return match v {
                Value::String(s) => Ok(s.clone()),
                Value::Number(x) => Ok(x.to_string()),
                _ => Err(format!("row {}: field `{k}` is not a string", n + 1)),
            };
        }
    }
    Err(format!(
        "row {}: missing field `{}` (fields present: {})",
        n + 1,
        keys.join("` or `"),
        row.keys().cloned().collect::<Vec<_>>().join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_header_sizes_are_read_past_fields_and_structs_they_skip() {
        // type = 0, uncompressed 100, compressed 50, crc (skipped), a data page header
        // struct with a nested list and binary (skipped), stop.
        let header = [
            0x15, 0x00, // 1: i32 0
            0x15, 0xc8, 0x01, // 2: i32 100
            0x15, 0x64, // 3: i32 50
            0x15, 0x02, // 4: i32 1
            0x1c, // 5: struct
            0x15, 0x06, // 1: i32 3
            0x19, 0x25, 0x02, 0x04, // 2: list of two i32
            0x18, 0x03, b'a', b'b', b'c', // 3: binary "abc"
            0x00, // end of struct
            0x00, // stop
        ];
        let mut file = header.to_vec();
        file.extend_from_slice(b"page body follows");
        assert_eq!(
            thrift::page_sizes(&file),
            Some(thrift::PageSizes {
                header_len: header.len(),
                uncompressed: 100,
                compressed: 50,
                dictionary_values: None,
            })
        );
        // Cut short, or a struct nested past the limit: unreadable, left to the reader.
        assert_eq!(thrift::page_sizes(&header[..6]), None);
        let deep: Vec<u8> = std::iter::repeat_n(0x1c, 70).collect();
        assert_eq!(thrift::page_sizes(&deep), None);
    }

    #[test]
    fn damaged_page_headers_are_refused_before_the_reader_reads_them() {
        // A 1,068-byte file found by the `bench_rows` fuzzer: one page header claims
        // 1,352,744,965 bytes uncompressed, which the reader would reserve and fill.
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/regressions/bench_rows/parquet-page-claims-1.3-gb");
        let bytes = std::fs::read(&path).unwrap();
        let e = parse_rows(bytes[1..].to_vec(), "parquet").unwrap_err();
        assert!(
            e.contains("a page claims 1352744965 bytes uncompressed"),
            "{e}"
        );
        // A dictionary page claiming about 2^31 entries in a few hundred bytes (the
        // reader made room for them first and aborted on the failed allocation).
        let dict = std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("fuzz/regressions/bench_rows/parquet-dictionary-claims-2e31-values"),
        )
        .unwrap();
        let e = parse_rows(dict[1..].to_vec(), "parquet").unwrap_err();
        assert!(e.contains("a dictionary page claims"), "{e}");
        // Page headers whose skipped fields the reader's own decoder took over ten
        // seconds to walk (found by the same fuzzer; the second nests lists claiming
        // more booleans than there are bytes): refused by the walk first.
        for name in [
            "parquet-page-header-slow-skip",
            "parquet-page-header-bool-lists",
        ] {
            let slow = std::fs::read(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("fuzz/regressions/bench_rows")
                    .join(name),
            )
            .unwrap();
            let e = parse_rows(slow[1..].to_vec(), "parquet").unwrap_err();
            assert!(e.contains("a damaged page header"), "{name}: {e}");
        }
        // A file as the hub serves it (compressed pages, dictionary pages) walks through.
        let real = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gsm8k/test.parquet");
        let rows = parse_rows(std::fs::read(real).unwrap(), "parquet").unwrap();
        assert!(!rows.is_empty());
    }

    #[test]
    fn reads_jsonl_and_json_arrays() {
        let dir = std::env::temp_dir().join(format!("tutti-data-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let jl = dir.join("a.jsonl");
        std::fs::write(&jl, "{\"q\": \"x\"}\n\n{\"q\": 2}\n").unwrap();
        let rows = read_rows(&jl).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(text_field(&rows[1], &["q"], 1).unwrap(), "2");
        assert!(text_field(&rows[0], &["nope"], 0)
            .unwrap_err()
            .contains("fields present: q"));
        let js = dir.join("a.json");
        std::fs::write(&js, "[{\"q\": \"y\"}]").unwrap();
        assert_eq!(read_rows(&js).unwrap().len(), 1);
        std::fs::write(&jl, "{\"q\": \"x\"}\nnot json\n").unwrap();
        assert!(read_rows(&jl).unwrap_err().to_string().contains("line 2"));
        let pq = dir.join("bad.parquet");
        std::fs::write(&pq, "PAR1 but not really").unwrap();
        assert!(read_rows(&pq)
            .unwrap_err()
            .to_string()
            .contains("not a Parquet file"));
        assert!(resolve(dir.join("missing.jsonl").to_str().unwrap(), "test").is_err());
        assert!(resolve("hf:someone/unknown", "test")
            .unwrap_err()
            .to_string()
            .contains("name the file"));
        std::fs::remove_dir_all(&dir).ok();
    }
}
