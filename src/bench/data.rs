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
    tutti_models::fetch_dataset_file(&repo, revision, &file).map_err(|e| BenchError::Data {
        path: data.into(),
        reason: e.to_string(),
    })
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
    let reader = SerializedFileReader::new(bytes::Bytes::from(bytes))
        .map_err(|e| format!("not a Parquet file: {e}"))?;
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
