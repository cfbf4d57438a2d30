//! The data table of one episode as the writer stores it: the source's columns checked against the dataset's
//! features, lerobot's default columns added when missing, and episodes, rows and tasks numbered as
//! [`Numbering`] says. The writer owns all numbering of a dataset it writes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float32Array, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Int64Type, Schema};

use crate::episode::{Episode, Feature};
use crate::error::{Error, Location, Result};

/// How the writer numbers episodes (`episode_index`), rows (`index`) and tasks (`task_index`). lerobot loads only
/// datasets whose episodes are `0..total_episodes`, with `index` counting rows and `task_index` a row of
/// `meta/tasks.parquet`, so a subset or a merge of sources needs renumbering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Numbering {
    /// Every source column written bit-exact (the source's numbers must already be a dataset's).
    #[default]
    Source,
    /// The source's columns renumbered in place, keeping their types: `episode_index` the episode's position in
    /// the output, `index` the running row number, `task_index` this dataset's task number in order of first use
    /// of the source's task indices. Every other column stays bit-exact, and a whole source numbered like a
    /// dataset is unchanged (`vadapt augment`'s paired layout).
    Renumber,
    /// The three columns rewritten as new int64 columns, tasks numbered by their text in order of first use (new
    /// episodes made from sources: RLDS conversion, `vadapt augment`'s expanded layout).
    Reindex,
}

/// This dataset's task table (`meta/tasks.parquet`): task_index -> text, and back.
#[derive(Debug, Clone, Default)]
pub(super) struct Tasks {
    by_index: BTreeMap<i64, String>,
    lookup: HashMap<String, i64>,
}

impl Tasks {
    /// The task's index, a new one (one past the largest) for a new task.
    fn index_for(&mut self, task: &str) -> i64 {
        if let Some(&i) = self.lookup.get(task) {
            return i;
        }
        let i = self.by_index.keys().next_back().map(|k| k + 1).unwrap_or(0);
        self.insert(i, task);
        i
    }

    fn insert(&mut self, index: i64, task: &str) {
        self.by_index.insert(index, task.to_string());
        self.lookup.insert(task.to_string(), index);
    }

    /// (task_index, text) in index order.
    pub fn iter(&self) -> impl Iterator<Item = (i64, &str)> {
        self.by_index.iter().map(|(i, t)| (*i, t.as_str()))
    }

    pub fn len(&self) -> usize {
        self.by_index.len()
    }
}

/// What [`episode_table`] needs of the writer.
pub(super) struct TableSpec<'a> {
    /// The dataset's features, in info.json order.
    pub features: &'a [(String, Feature)],
    pub fps: f64,
    pub numbering: Numbering,
    /// Rows written before this episode (its first `index` when re-indexing).
    pub first_row: u64,
}

fn find(fields: &[Arc<Field>], name: &str) -> Option<usize> {
    fields.iter().position(|f| f.name() == name)
}

/// Replace column `name`, or append it.
fn set(fields: &mut Vec<Arc<Field>>, cols: &mut Vec<ArrayRef>, name: &str, col: ArrayRef) {
    let field = Arc::new(Field::new(name, col.data_type().clone(), false));
    match find(fields, name) {
        Some(i) => {
            fields[i] = field;
            cols[i] = col;
        }
        None => {
            fields.push(field);
            cols.push(col);
        }
    }
}

/// Build the output table of one episode: source columns untouched, lerobot's default columns added
/// when missing and rewritten only when re-indexing. Returns the table and the episode's tasks.
pub(super) fn episode_table(
    spec: &TableSpec,
    tasks: &mut Tasks,
    ep: &Episode,
    episode_index: u64,
) -> Result<(RecordBatch, Vec<String>)> {
    let n = ep.len();
    let loc = Location::none().episode(ep.index.0);
    let (mut fields, mut cols) = source_columns(spec.features, ep, &loc)?;
    let mut ep_tasks = task_column(spec, tasks, ep, &mut fields, &mut cols, &loc)?;
    let reindex = spec.numbering == Numbering::Reindex;
    if find(&fields, "timestamp").is_none() {
        set(
            &mut fields,
            &mut cols,
            "timestamp",
            Arc::new(Float32Array::from(
                (0..n)
                    .map(|i| (i as f64 / spec.fps) as f32)
                    .collect::<Vec<_>>(),
            )),
        );
    }
    if find(&fields, "frame_index").is_none() {
        set(
            &mut fields,
            &mut cols,
            "frame_index",
            Arc::new(Int64Array::from((0..n as i64).collect::<Vec<_>>())),
        );
    }
    if reindex || find(&fields, "episode_index").is_none() {
        set(
            &mut fields,
            &mut cols,
            "episode_index",
            Arc::new(Int64Array::from(vec![episode_index as i64; n])),
        );
    }
    if reindex || find(&fields, "index").is_none() {
        let start = spec.first_row as i64;
        set(
            &mut fields,
            &mut cols,
            "index",
            Arc::new(Int64Array::from(
                (start..start + n as i64).collect::<Vec<_>>(),
            )),
        );
    }
    for (k, f) in spec.features.iter().filter(|(_, f)| !f.is_visual()) {
        if find(&fields, k).is_none() {
            return Err(Error::invalid(
                loc.clone().field(k),
                format!("the episode has no column for feature {k:?} ({})", f.dtype),
            ));
        }
    }
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)
        .map_err(|e| Error::table(loc.clone(), e))?;
    if batch.num_rows() != n {
        return Err(Error::invalid(loc, "columns have different lengths"));
    }
    ep_tasks.dedup();
    Ok((batch, ep_tasks))
}

/// The episode's non-camera columns, each declared in `features` with a matching type.
fn source_columns(
    features: &[(String, Feature)],
    ep: &Episode,
    loc: &Location,
) -> Result<(Vec<Arc<Field>>, Vec<ArrayRef>)> {
    let visual: Vec<&str> = features
        .iter()
        .filter(|(_, f)| f.is_visual())
        .map(|(k, _)| k.as_str())
        .collect();
    let mut fields: Vec<Arc<Field>> = Vec::new();
    let mut cols: Vec<ArrayRef> = Vec::new();
    for (field, col) in ep
        .columns
        .schema()
        .fields()
        .iter()
        .zip(ep.columns.columns())
    {
        if visual.contains(&field.name().as_str()) {
            continue;
        }
        let f = features
            .iter()
            .find(|(k, _)| k == field.name())
            .map(|(_, f)| f)
            .ok_or_else(|| {
                Error::invalid(
                    loc.clone().field(field.name()),
                    "column is not declared in the writer's features",
                )
            })?;
        check_column(field.name(), f, col.data_type(), loc)?;
        fields.push(Arc::new(Field::new(
            field.name(),
            field.data_type().clone(),
            field.is_nullable(),
        )));
        cols.push(col.clone());
    }
    Ok((fields, cols))
}

/// Tasks: with re-indexing (or no task_index column) the episode's task gets this dataset's index; otherwise the
/// source's task_index values are kept and must map to the episode's task. Returns the episode's tasks.
fn task_column(
    spec: &TableSpec,
    tasks: &mut Tasks,
    ep: &Episode,
    fields: &mut Vec<Arc<Field>>,
    cols: &mut Vec<ArrayRef>,
    loc: &Location,
) -> Result<Vec<String>> {
    let mut ep_tasks = vec![ep.task.clone()];
    let reindex = spec.numbering == Numbering::Reindex;
    match find(fields, "task_index") {
        Some(i) if !reindex => {
            let c = arrow::compute::cast(&cols[i], &DataType::Int64)
                .map_err(|e| Error::table(loc.clone().field("task_index"), e))?;
            let mut distinct: Vec<i64> = c.as_primitive::<Int64Type>().iter().flatten().collect();
            distinct.sort_unstable();
            distinct.dedup();
            if let [only] = distinct.as_slice() {
                match tasks.by_index.get(only) {
                    Some(t) if *t != ep.task => {
                        return Err(Error::invalid(
                            loc.clone().field("task_index"),
                            format!("task_index {only} is {t:?} in this dataset but the episode's task is {:?} (write with re-indexing)", ep.task),
                        ))
                    }
                    Some(_) => {}
                    None => {
                        if let Some(other) = tasks.lookup.get(&ep.task) {
                            return Err(Error::invalid(
                                loc.clone().field("task_index"),
                                format!("task {:?} already has task_index {other}, this episode says {only} (write with re-indexing)", ep.task),
                            ));
                        }
                        tasks.insert(*only, &ep.task);
                    }
                }
            } else {
                ep_tasks.clear();
                for t in &distinct {
                    let name = tasks.by_index.get(t).cloned().ok_or_else(|| {
                        Error::invalid(
                            loc.clone().field("task_index"),
                            format!("task_index {t} has no task text (write with re-indexing)"),
                        )
                    })?;
                    ep_tasks.push(name);
                }
            }
        }
        _ => {
            let ti = tasks.index_for(&ep.task);
            set(
                fields,
                cols,
                "task_index",
                Arc::new(Int64Array::from(vec![ti; ep.len()])),
            );
        }
    }
    Ok(ep_tasks)
}

/// The dtype name lerobot would give a leaf arrow type.
fn dtype_name(t: &DataType) -> Option<&'static str> {
    Some(match t {
        DataType::Boolean => "bool",
        DataType::Int8 => "int8",
        DataType::Int16 => "int16",
        DataType::Int32 => "int32",
        DataType::Int64 => "int64",
        DataType::UInt8 => "uint8",
        DataType::UInt16 => "uint16",
        DataType::UInt32 => "uint32",
        DataType::UInt64 => "uint64",
        DataType::Float16 => "float16",
        DataType::Float32 => "float32",
        DataType::Float64 => "float64",
        DataType::Utf8 | DataType::LargeUtf8 => "string",
        _ => return None,
    })
}

/// Does a column's arrow type fit an info.json feature (dtype, and scalar for shape [1] / list of d for [d])?
pub(super) fn check_column(key: &str, f: &Feature, t: &DataType, loc: &Location) -> Result<()> {
    let (leaf, len) = match t {
        DataType::FixedSizeList(inner, n) => (inner.data_type(), Some(*n as usize)),
        DataType::List(inner) | DataType::LargeList(inner) => (inner.data_type(), None),
        t => (t, Some(1)),
    };
    let scalar = !matches!(
        t,
        DataType::FixedSizeList(..) | DataType::List(_) | DataType::LargeList(_)
    );
    let dtype_ok = dtype_name(leaf).is_some_and(|d| d == f.dtype)
        || (f.dtype == "string" && dtype_name(leaf) == Some("string"));
    let shape_ok = match f.shape.as_slice() {
        [1] => scalar,
        [d] => len.is_none_or(|n| n == *d) && !scalar,
        _ => true,
    };
    if !dtype_ok || !shape_ok {
        return Err(Error::invalid(
            loc.clone().field(key),
            format!(
                "column type {t} does not match the feature (dtype {:?}, shape {:?})",
                f.dtype, f.shape
            ),
        ));
    }
    Ok(())
}

/// [`Numbering::Renumber`]: `episode_index` becomes the episode's position in the output, `index` the running row
/// number and `task_index` this dataset's task number (in order of first use). lerobot loads only datasets whose episodes are
/// `0..total_episodes`, with `index` counting rows and `task_index` a row of `meta/tasks.parquet` (it refuses a gap
/// in the episodes as "doesn't contain all requested episodes", and fails on a task index past its table), so an
/// output with a skipped episode, a `--shard` part or a subset of the source is numbered like that. For a whole
/// source numbered the same way (lerobot numbers tasks by first use when it records) nothing changes, and every
/// other column is the source's, bit-exact. (`vadapt augment` records the source episode of output episode `i` as
/// `source_episodes[i]` in `meta/augmentation.json`.)
pub(super) fn renumber(
    ep: &mut Episode,
    episode: u64,
    first_row: u64,
    tasks: &mut BTreeMap<i64, i64>,
) -> Result<()> {
    let n = ep.len() as i64;
    let loc = || Location::none().episode(ep.index.0);
    let schema = ep.columns.schema();
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    let mut cols: Vec<ArrayRef> = ep.columns.columns().to_vec();
    let mut changed = false;
    let mut replace =
        |fields: &mut Vec<Field>, cols: &mut Vec<ArrayRef>, name: &str, new: ArrayRef| {
            match fields.iter().position(|f| f.name() == name) {
                Some(i) => {
                    // The source's integer type, so the schema stays the source's.
                    let cast = arrow::compute::cast(&new, fields[i].data_type())
                        .map_err(|e| Error::table(loc().field(name), e))?;
                    if cast.as_ref() != cols[i].as_ref() {
                        cols[i] = cast;
                        changed = true;
                    }
                }
                // No such column: the writer numbers `index` and tasks itself, and takes the episode's index from here.
                None if name == "episode_index" => {
                    fields.push(Field::new(name, DataType::Int64, false));
                    cols.push(new);
                    changed = true;
                }
                None => {}
            }
            Ok::<(), Error>(())
        };
    replace(
        &mut fields,
        &mut cols,
        "episode_index",
        Arc::new(Int64Array::from(vec![episode as i64; n as usize])),
    )?;
    let first = first_row as i64;
    replace(
        &mut fields,
        &mut cols,
        "index",
        Arc::new(Int64Array::from((first..first + n).collect::<Vec<_>>())),
    )?;
    if let Some(i) = fields.iter().position(|f| f.name() == "task_index") {
        let src = arrow::compute::cast(&cols[i], &DataType::Int64)
            .map_err(|e| Error::table(loc().field("task_index"), e))?;
        let mapped: Int64Array = src
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("cast to Int64")
            .iter()
            .map(|v| {
                v.map(|t| {
                    let next = tasks.len() as i64;
                    *tasks.entry(t).or_insert(next)
                })
            })
            .collect();
        replace(&mut fields, &mut cols, "task_index", Arc::new(mapped))?;
    }
    if changed {
        ep.columns = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)
            .map_err(|e| Error::table(loc(), e))?;
    }
    Ok(())
}
