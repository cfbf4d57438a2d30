//! Extra columns of a v3.0 episodes table (`meta/episodes/…`): per-episode values a dataset's producer adds
//! beside lerobot's own (`language_table/seed`, `appearance/<camera>/name`, …). lerobot loads them with the
//! rest of the table and its `aggregate` carries them over unchanged; vadapt does the same: the reader keeps
//! each episode's values as one-row arrow arrays ([`EpisodeColumns`]) and the writer puts them back, after its
//! own columns, with the same names, types and values.
//!
//! Two rules keep the output unambiguous:
//! * lerobot's own columns (and anything under its `data/`, `videos/`, `stats/`, `meta/episodes/` prefixes) are
//!   the writer's: it recomputes them, so a source's values there are never carried as extras;
//! * the `augmentation.` prefix is vadapt's (the expanded layout's columns): an episodes-table column named so
//!   is refused, since a reader of the output could not tell it from vadapt's provenance.
//!
//! Every episode must have the same extra columns with the same types (a parquet table has one schema): an
//! episode without one, or with another type, is refused naming its file, episode and column.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch};
use arrow::datatypes::{Field, FieldRef};

use crate::episode::EpisodeColumns;
use crate::error::{Error, Location, Result};

/// The columns lerobot itself writes in an episodes table (besides the prefixed ones).
const LEROBOT_COLUMNS: [&str; 5] = [
    "episode_index",
    "tasks",
    "length",
    "dataset_from_index",
    "dataset_to_index",
];
/// Prefixes of lerobot's per-file, per-camera and per-feature columns.
const LEROBOT_PREFIXES: [&str; 4] = ["data/", "videos/", "stats/", "meta/episodes/"];
/// vadapt's own column namespace.
pub const RESERVED_PREFIX: &str = "augmentation.";

/// Whether an episodes-table column is one lerobot defines (and the writer recomputes).
pub fn is_lerobot_column(name: &str) -> bool {
    LEROBOT_COLUMNS.contains(&name) || LEROBOT_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// The extra columns of row `row` of an episodes-table batch read from `path` (episode `ep`).
pub fn from_row(batch: &RecordBatch, row: usize, path: &Path, ep: u64) -> Result<EpisodeColumns> {
    let mut out = EpisodeColumns::default();
    for (field, col) in batch.schema().fields().iter().zip(batch.columns()) {
        if is_lerobot_column(field.name()) {
            continue;
        }
        if field.name().starts_with(RESERVED_PREFIX) {
            return Err(Error::invalid(
                Location::file(path).episode(ep).field(field.name()),
                format!(
                    "episodes-table column names starting with {RESERVED_PREFIX:?} are reserved for vadapt's \
                     augmentation columns; rename this column"
                ),
            ));
        }
        out.push(field.clone(), col.slice(row, 1));
    }
    Ok(out)
}

/// The first difference between the extra columns `have` of an episode and `want` (another episode's): a
/// column it lacks, one it has in addition, or one of another type. None when they agree (order aside).
fn difference(want: &EpisodeColumns, have: &EpisodeColumns) -> Option<(String, String)> {
    let field = |c: &EpisodeColumns, name: &str| -> Option<FieldRef> {
        c.iter()
            .find(|(f, _)| f.name() == name)
            .map(|(f, _)| f.clone())
    };
    for (w, _) in want.iter() {
        match field(have, w.name()) {
            None => return Some((w.name().clone(), "this episode lacks it".into())),
            Some(h) if h.data_type() != w.data_type() => {
                return Some((
                    w.name().clone(),
                    format!("type {} here, {}", h.data_type(), w.data_type()),
                ))
            }
            Some(_) => {}
        }
    }
    have.iter()
        .find(|(h, _)| field(want, h.name()).is_none())
        .map(|(h, _)| (h.name().clone(), "only this episode has it".into()))
}

/// Every episode of a dataset has the same extra columns, with the same types. `episodes` are (table file,
/// episode index, columns) in episode order; the first is the reference.
pub fn check_consistent<'a>(
    episodes: impl IntoIterator<Item = (&'a Path, u64, &'a EpisodeColumns)>,
) -> Result<()> {
    let mut episodes = episodes.into_iter();
    let Some((first_path, first_ep, first)) = episodes.next() else {
        return Ok(());
    };
    for (path, ep, cols) in episodes {
        if let Some((name, why)) = difference(first, cols) {
            return Err(Error::invalid(
                Location::file(path).episode(ep).field(name),
                format!(
                    "episodes-table columns differ between episodes ({why} in episode {first_ep} of {}); every \
                     episode must have the same extra columns",
                    first_path.display()
                ),
            ));
        }
    }
    Ok(())
}

/// For the writer: episode `ep`'s extra columns agree with those of the first episode written.
pub fn check_same(first: &EpisodeColumns, cols: &EpisodeColumns, ep: u64) -> Result<()> {
    match difference(first, cols) {
        None => Ok(()),
        Some((name, why)) => Err(Error::invalid(
            Location::none().episode(ep).field(name),
            format!(
                "episode columns differ from the first episode's ({why} in the first episode); every episode \
                 written must have the same extra episodes-table columns"
            ),
        )),
    }
}

/// The extra columns of `rows` (episodes in table order, all agreeing as [`check_same`] requires), as fields
/// and arrays in the first row's column order.
pub fn concat(
    rows: &[&EpisodeColumns],
    loc: impl Fn() -> Location,
) -> Result<Vec<(Field, ArrayRef)>> {
    let Some(first) = rows.first() else {
        return Ok(Vec::new());
    };
    let mut out = Vec::with_capacity(first.len());
    for (field, _) in first.iter() {
        let parts = rows
            .iter()
            .map(|r| {
                r.get(field.name()).map(|a| a.as_ref()).ok_or_else(|| {
                    Error::invalid(loc().field(field.name()), "missing for some episodes")
                })
            })
            .collect::<Result<Vec<&dyn Array>>>()?;
        let col = arrow::compute::concat(&parts)
            .map_err(|e| Error::table(loc().field(field.name()), e))?;
        out.push((field.as_ref().clone(), col));
    }
    Ok(out)
}

/// One-row columns for tests and tools: `(field, value)` pairs.
pub fn columns(pairs: impl IntoIterator<Item = (Field, ArrayRef)>) -> EpisodeColumns {
    let mut out = EpisodeColumns::default();
    for (f, v) in pairs {
        out.push(Arc::new(f), v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{BooleanArray, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Schema};

    fn batch() -> RecordBatch {
        let fields = vec![
            Field::new("episode_index", DataType::Int64, true),
            Field::new("videos/cam/chunk_index", DataType::Int64, true),
            Field::new("lt/seed", DataType::Int64, true),
            Field::new("lt/ok", DataType::Boolean, true),
            Field::new("lt/name", DataType::Utf8, true),
        ];
        let cols: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(vec![0, 1])),
            Arc::new(Int64Array::from(vec![0, 0])),
            Arc::new(Int64Array::from(vec![Some(7), None])),
            Arc::new(BooleanArray::from(vec![true, false])),
            Arc::new(StringArray::from(vec!["a", "b"])),
        ];
        RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap()
    }

    #[test]
    fn keeps_only_extra_columns_one_row_each() {
        let b = batch();
        let c = from_row(&b, 1, Path::new("e.parquet"), 1).unwrap();
        let names: Vec<&str> = c.iter().map(|(f, _)| f.name().as_str()).collect();
        assert_eq!(names, ["lt/seed", "lt/ok", "lt/name"]);
        assert!(c.get("lt/seed").unwrap().is_null(0));
        assert_eq!(
            c.get("lt/name").unwrap().as_ref(),
            &StringArray::from(vec!["b"]) as &dyn Array
        );
        let both = [&from_row(&b, 0, Path::new("e"), 0).unwrap(), &c];
        let cat = concat(&both, Location::none).unwrap();
        for ((f, a), orig) in cat.iter().zip(&b.columns()[2..]) {
            assert_eq!(a.as_ref(), orig.as_ref(), "{}", f.name());
        }
    }

    #[test]
    fn refuses_reserved_names_and_disagreeing_episodes() {
        let b = batch();
        let s = Schema::new(vec![Field::new(
            "augmentation.target",
            DataType::Utf8,
            true,
        )]);
        let r = RecordBatch::try_new(Arc::new(s), vec![Arc::new(StringArray::from(vec!["x"]))])
            .unwrap();
        let e = from_row(&r, 0, Path::new("f.parquet"), 3)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("f.parquet") && e.contains("augmentation.target") && e.contains("reserved"),
            "{e}"
        );
        let full = from_row(&b, 0, Path::new("a"), 0).unwrap();
        let short = from_row(
            &b.project(&[0, 2, 3]).unwrap(),
            0,
            Path::new("b.parquet"),
            4,
        )
        .unwrap();
        let e = check_consistent([
            (Path::new("a.parquet"), 0, &full),
            (Path::new("b.parquet"), 4, &short),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("b.parquet") && e.contains("lt/name") && e.contains("lacks"),
            "{e}"
        );
        let e = check_same(&short, &full, 9).unwrap_err().to_string();
        assert!(
            e.contains("lt/name") && e.contains("only this episode"),
            "{e}"
        );
        let retyped = columns([(
            Field::new("lt/seed", DataType::Utf8, true),
            Arc::new(StringArray::from(vec!["7"])) as ArrayRef,
        )]);
        let seed_only = columns([(
            Field::new("lt/seed", DataType::Int64, true),
            Arc::new(Int64Array::from(vec![7])) as ArrayRef,
        )]);
        let e = check_same(&seed_only, &retyped, 2).unwrap_err().to_string();
        assert!(e.contains("lt/seed") && e.contains("Utf8"), "{e}");
        assert!(check_same(&full, &full.clone(), 1).is_ok());
    }
}
