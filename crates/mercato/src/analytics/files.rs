//! The marts on disk.
//!
//! ```text
//! {dir}/manifest-{cell}.json                 the position each cell is exported up to
//! {dir}/{mart}/merchant={id}/day={date}/     facts, one directory per merchant and day
//! {dir}/{mart}/merchant={id}/                dimensions and day sums, per merchant
//! {dir}/dim_date/dim_date.parquet
//! {dir}/_staging/{cell}/…                    an export not yet committed
//! ```
//!
//! A file is named by the cell and the positions it covers,
//! `{cell}-{from}-{to}-{n}.parquet` (`n` tells apart the files of one
//! export), so a reader takes only files up to the manifest's position, and
//! a compacted file (`…-c.parquet`) stands for every file its range covers.
//! An export writes its files under `_staging`, then commits by writing the
//! manifest (`publishing`), moves them into place, and clears `publishing`:
//! a crash before the manifest leaves only staging (cleared at restart), a
//! crash after it is finished at restart. So every row is in the marts once.

use std::fs::File;
use std::path::{Path, PathBuf};

use arrow_array::RecordBatch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};

use super::columns::{ColumnError, MartRow};

/// Files a run changed in the analytics directory, relative to it (what
/// the mirror sends).
#[derive(Debug, Default)]
pub struct Changes {
    pub written: Vec<PathBuf>,
    pub removed: Vec<PathBuf>,
}

impl Changes {
    pub fn extend(&mut self, other: Changes) {
        self.written.extend(other.written);
        self.removed.extend(other.removed);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parquet {
        path: PathBuf,
        source: parquet::errors::ParquetError,
    },
    #[error("{path}: {source}")]
    Arrow {
        path: PathBuf,
        source: arrow_schema::ArrowError,
    },
    #[error("{path}: {source}")]
    Column { path: PathBuf, source: ColumnError },
    #[error("{path}: not a manifest ({source})")]
    Manifest {
        path: PathBuf,
        source: serde_json::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FilesError + '_ {
    move |source| FilesError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Where one cell's export stands.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub cell: String,
    /// The database the cell's marts come from (`current_database()`): a
    /// directory is never filled from two.
    #[serde(default)]
    pub database: Option<String>,
    /// Every event of the cell's outbox with a commit position (`xid8`)
    /// below this one is in the marts.
    pub position: u64,
    /// Events from before analytics existed (no position) are exported.
    pub history_done: bool,
    /// Audit records from before their export existed (no position) are
    /// exported (migration 0038).
    #[serde(default)]
    pub audit_history_done: bool,
    /// The export committed but not yet moved into place: `[from, to)`.
    pub publishing: Option<(u64, u64)>,
    pub exported_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Events exported so far, and fact rows written.
    pub events: u64,
    pub rows: u64,
}

/// The analytics directory.
#[derive(Debug, Clone)]
pub struct Layout {
    pub dir: PathBuf,
}

/// A mart file's coverage, parsed from its name.
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    pub path: PathBuf,
    pub cell: String,
    pub from: u64,
    pub to: u64,
    pub compacted: bool,
}

impl Part {
    fn parse(path: &Path) -> Option<Part> {
        let name = path.file_name()?.to_str()?.strip_suffix(".parquet")?;
        let mut fields = name.rsplitn(4, '-');
        let last = fields.next()?;
        let to = fields.next()?.parse().ok()?;
        let from = fields.next()?.parse().ok()?;
        let cell = fields.next()?.to_owned();
        Some(Part {
            path: path.to_owned(),
            cell,
            from,
            to,
            compacted: last == "c",
        })
    }
}

pub fn part_name(cell: &str, from: u64, to: u64, n: &str) -> String {
    format!("{cell}-{from:020}-{to:020}-{n}.parquet")
}

impl Layout {
    pub fn new(dir: impl Into<PathBuf>) -> Layout {
        Layout { dir: dir.into() }
    }

    fn manifest_path(&self, cell: &str) -> PathBuf {
        self.dir.join(Layout::manifest_file(cell))
    }

    pub fn staging(&self, cell: &str) -> PathBuf {
        self.dir.join("_staging").join(cell)
    }

    /// The directory of a merchant's rows of `mart` (and of a day, for facts).
    pub fn partition(&self, mart: &str, merchant: &str, day: Option<&str>) -> PathBuf {
        let dir = self.dir.join(mart).join(format!("merchant={merchant}"));
        match day {
            Some(day) => dir.join(format!("day={day}")),
            None => dir,
        }
    }

    pub fn load_manifest(&self, cell: &str) -> Result<Manifest, FilesError> {
        let path = self.manifest_path(cell);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|source| FilesError::Manifest { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Manifest {
                cell: cell.to_owned(),
                ..Manifest::default()
            }),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Every cell's manifest in the directory.
    pub fn manifests(&self) -> Result<Vec<Manifest>, FilesError> {
        let mut all = Vec::new();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(all),
            Err(e) => return Err(io(&self.dir)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io(&self.dir))?;
            let name = entry.file_name();
            let Some(cell) = name
                .to_str()
                .and_then(|n| n.strip_prefix("manifest-"))
                .and_then(|n| n.strip_suffix(".json"))
            else {
                continue;
            };
            all.push(self.load_manifest(cell)?);
        }
        Ok(all)
    }

    /// Writes the manifest so that a crash leaves the old one or the new one.
    pub fn save_manifest(&self, manifest: &Manifest) -> Result<(), FilesError> {
        private_dirs(&self.dir)?;
        let path = self.manifest_path(&manifest.cell);
        let temp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(manifest).map_err(|source| FilesError::Manifest {
            path: path.clone(),
            source,
        })?;
        write_durably(&temp, &bytes)?;
        std::fs::rename(&temp, &path).map_err(io(&path))?;
        sync_dir(&self.dir)
    }

    /// The manifest's path relative to the directory.
    pub fn manifest_file(cell: &str) -> PathBuf {
        PathBuf::from(format!("manifest-{cell}.json"))
    }

    /// Moves a committed export's staged files into place (again after a
    /// crash: what was moved already is not in staging any more); returns
    /// them, relative to the directory.
    pub fn publish(&self, cell: &str) -> Result<Vec<PathBuf>, FilesError> {
        let staging = self.staging(cell);
        let mut published = Vec::new();
        for staged in files_under(&staging)? {
            let Ok(relative) = staged.strip_prefix(&staging) else {
                continue;
            };
            let target = self.dir.join(relative);
            if let Some(parent) = target.parent() {
                private_dirs(parent)?;
            }
            std::fs::rename(&staged, &target).map_err(io(&target))?;
            published.push(relative.to_owned());
        }
        self.clear_staging(cell)?;
        Ok(published)
    }

    fn relative(&self, path: &Path) -> PathBuf {
        path.strip_prefix(&self.dir).unwrap_or(path).to_owned()
    }

    pub fn clear_staging(&self, cell: &str) -> Result<(), FilesError> {
        let staging = self.staging(cell);
        match std::fs::remove_dir_all(&staging) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&staging)(e)),
            _ => Ok(()),
        }
    }

    /// The files of a directory a reader takes: those each cell's manifest
    /// covers, without the ones a compacted file stands for.
    pub fn visible(&self, dir: &Path, manifests: &[Manifest]) -> Result<Vec<Part>, FilesError> {
        let parts: Vec<Part> = list(dir)?
            .iter()
            .filter_map(|p| Part::parse(p))
            .filter(|p| {
                manifests.iter().any(|m| {
                    m.cell == p.cell && p.to <= m.position && m.publishing != Some((p.from, p.to))
                })
            })
            .collect();
        Ok(parts
            .iter()
            .filter(|p| {
                !parts.iter().any(|c| {
                    c.compacted
                        && c.path != p.path
                        && c.cell == p.cell
                        && c.from <= p.from
                        && p.to <= c.to
                })
            })
            .cloned()
            .collect())
    }

    /// Deletes the files of `cell` a compacted file stands for: a crash
    /// inside `compact` leaves them, and an engine that reads the files
    /// without the manifest would count their rows twice.
    pub fn sweep_covered(&self, cell: &str) -> Result<usize, FilesError> {
        let mut by_dir: std::collections::BTreeMap<PathBuf, Vec<Part>> = Default::default();
        let staging = self.dir.join("_staging");
        for path in files_under(&self.dir)? {
            if path.starts_with(&staging) {
                continue;
            }
            if let (Some(part), Some(parent)) = (Part::parse(&path), path.parent()) {
                if part.cell == cell {
                    by_dir.entry(parent.to_owned()).or_default().push(part);
                }
            }
        }
        let mut swept = 0;
        for parts in by_dir.values() {
            for p in parts {
                let covered = parts
                    .iter()
                    .any(|c| c.compacted && c.path != p.path && c.from <= p.from && p.to <= c.to);
                if covered {
                    std::fs::remove_file(&p.path).map_err(io(&p.path))?;
                    swept += 1;
                }
            }
        }
        Ok(swept)
    }

    /// Every day directory of a merchant's fact mart between two days.
    pub fn days(&self, mart: &str, merchant: &str) -> Result<Vec<(String, PathBuf)>, FilesError> {
        let dir = self.partition(mart, merchant, None);
        let mut days = Vec::new();
        for path in list(&dir)? {
            if let Some(day) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix("day="))
            {
                days.push((day.to_owned(), path.clone()));
            }
        }
        days.sort();
        Ok(days)
    }
}

fn list(dir: &Path) -> Result<Vec<PathBuf>, FilesError> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.map(|e| e.path()).map_err(io(dir)))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io(dir)(e)),
    }
}

pub(super) fn files_under(dir: &Path) -> Result<Vec<PathBuf>, FilesError> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        for path in list(&dir)? {
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push(path);
            }
        }
    }
    Ok(files)
}

/// The marts hold every merchant's sales: only the service's own user may
/// read them (directories 0700, files 0600), whatever the umask.
fn private_dirs(dir: &Path) -> Result<(), FilesError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))?;
    // One made before this rule (or by hand) is closed too.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io(dir))
}

fn private_file(path: &Path) -> Result<File, FilesError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))
}

fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), FilesError> {
    use std::io::Write;
    let mut file = private_file(path)?;
    file.write_all(bytes).map_err(io(path))?;
    file.sync_all().map_err(io(path))
}

fn sync_dir(dir: &Path) -> Result<(), FilesError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// Writes `rows` as one Parquet file (Snappy), synced to disk.
pub fn write_rows<R: MartRow>(path: &Path, rows: &[R]) -> Result<(), FilesError> {
    if let Some(parent) = path.parent() {
        private_dirs(parent)?;
    }
    let batch = R::to_batch(rows).map_err(|source| FilesError::Arrow {
        path: path.to_owned(),
        source,
    })?;
    let file = private_file(path)?;
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let parquet = |source| FilesError::Parquet {
        path: path.to_owned(),
        source,
    };
    let mut writer = ArrowWriter::try_new(file, R::schema(), Some(props)).map_err(parquet)?;
    writer.write(&batch).map_err(parquet)?;
    let file = writer.into_inner().map_err(parquet)?;
    file.sync_all().map_err(io(path))
}

/// Reads a mart file's record batches: every column, or only `columns`
/// (a report decodes just what it sums).
pub fn read_batches(path: &Path, columns: Option<&[&str]>) -> Result<Vec<RecordBatch>, FilesError> {
    let file = File::open(path).map_err(io(path))?;
    let parquet = |source| FilesError::Parquet {
        path: path.to_owned(),
        source,
    };
    let mut builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(parquet)?
        .with_batch_size(64 * 1024);
    if let Some(columns) = columns {
        let mask = ProjectionMask::columns(builder.parquet_schema(), columns.iter().copied());
        builder = builder.with_projection(mask);
    }
    builder
        .build()
        .map_err(parquet)?
        .map(|batch| {
            batch.map_err(|source| FilesError::Arrow {
                path: path.to_owned(),
                source,
            })
        })
        .collect()
}

/// Reads every row of a mart file.
pub fn read_rows<R: MartRow>(path: &Path) -> Result<Vec<R>, FilesError> {
    let mut rows = Vec::new();
    for batch in read_batches(path, None)? {
        rows.extend(R::from_batch(&batch).map_err(|source| FilesError::Column {
            path: path.to_owned(),
            source,
        })?);
    }
    Ok(rows)
}

/// Reads the visible files of a directory.
pub fn read_dir_rows<R: MartRow>(
    layout: &Layout,
    dir: &Path,
    manifests: &[Manifest],
) -> Result<Vec<R>, FilesError> {
    let mut rows = Vec::new();
    for part in layout.visible(dir, manifests)? {
        rows.extend(read_rows::<R>(&part.path)?);
    }
    Ok(rows)
}

/// Merges a directory's visible files of one cell into one compacted file
/// once there are more than `above`: the new file first, then the old
/// ones go (a crash between leaves them covered by it, so unread).
/// `merge` may re-aggregate the rows (day sums) or keep them (facts).
/// Returns the file written and those removed, relative to the layout.
pub fn compact<R: MartRow>(
    layout: &Layout,
    dir: &Path,
    manifests: &[Manifest],
    cell: &str,
    above: usize,
    merge: impl FnOnce(Vec<R>) -> Vec<R>,
) -> Result<Changes, FilesError> {
    let parts: Vec<Part> = layout
        .visible(dir, manifests)?
        .into_iter()
        .filter(|p| p.cell == cell)
        .collect();
    if parts.len() <= above {
        return Ok(Changes::default());
    }
    let from = parts.iter().map(|p| p.from).min().unwrap_or(0);
    let to = parts.iter().map(|p| p.to).max().unwrap_or(0);
    let mut rows = Vec::new();
    for part in &parts {
        rows.extend(read_rows::<R>(&part.path)?);
    }
    let merged = merge(rows);
    let target = dir.join(part_name(cell, from, to, "c"));
    let temp = dir.join(format!(".{}.tmp", part_name(cell, from, to, "c")));
    write_rows(&temp, &merged)?;
    std::fs::rename(&temp, &target).map_err(io(&target))?;
    sync_dir(dir)?;
    let mut changes = Changes {
        written: vec![layout.relative(&target)],
        removed: Vec::new(),
    };
    for part in parts.iter().filter(|p| p.path != target) {
        std::fs::remove_file(&part.path).map_err(io(&part.path))?;
        changes.removed.push(layout.relative(&part.path));
    }
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_part_name_says_its_cell_and_range() {
        let name = part_name("big-eu", 17, 42, "3");
        let part = Part::parse(Path::new(&name)).expect("a part");
        assert_eq!(
            (part.cell.as_str(), part.from, part.to, part.compacted),
            ("big-eu", 17, 42, false)
        );
        let c = Part::parse(Path::new(&part_name("main", 0, 9, "c"))).expect("a part");
        assert!(c.compacted);
        assert!(Part::parse(Path::new("notes.txt")).is_none());
    }
}
