"""Write generated episodes as a LeRobot v3.0 dataset, in the layout vadapt and lerobot read.

Episodes are first staged one directory per environment seed (`stage_episode`): rows as .npz, every camera as its
own H.264 mp4 (ffmpeg, single-threaded, macroblock tree off: the same frames give the same bytes), metadata as
JSON. A staged episode is complete once its directory has its final name, so an interrupted run resumes by
skipping complete seeds, and several processes can stage disjoint seed ranges into one directory.

`finalize` then lays out the dataset: `data/chunk-000/file-000.parquet` (one row group per episode),
`videos/<key>/chunk-CCC/file-FFF.mp4` (one file per episode: a valid v3.0 layout, each episode's video range
starting at 0), `meta/episodes/chunk-000/file-000.parquet` (lerobot's columns, per-episode stats, and the
generator's own columns `language_table/...` and `appearance/<key>/name|params`), `meta/tasks.parquet`,
`meta/stats.json` and `meta/info.json`, written into a temporary directory renamed into place when complete.
"""

import json
import os
import shutil
import subprocess

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

FPS = 10
CHUNKS_SIZE = 1000
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
VECTOR_FEATURES = ("observation.state", "observation.effector_target_translation", "action")
DEFAULT_FEATURES = (("timestamp", "float32"), ("frame_index", "int64"), ("episode_index", "int64"),
                    ("index", "int64"), ("task_index", "int64"))


class VideoWriter:
  """Frames (uint8 HxWx3 RGB) piped into one ffmpeg H.264 encoder."""

  def __init__(self, path, size, crf):
    h, w = size
    self.path = path
    self.frames = 0
    self._proc = subprocess.Popen(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
         "-s", f"{w}x{h}", "-r", str(FPS), "-i", "-", "-c:v", "libx264", "-preset", "medium", "-crf", str(crf),
         "-pix_fmt", "yuv420p", "-threads", "1", "-x264-params", "mbtree=0", "-g", "20",
         "-fflags", "+bitexact", "-flags:v", "+bitexact", "-map_metadata", "-1", "-f", "mp4", path],
        stdin=subprocess.PIPE)

  def write(self, frame):
    self._proc.stdin.write(np.ascontiguousarray(frame, np.uint8).tobytes())
    self.frames += 1

  def close(self):
    self._proc.stdin.close()
    if self._proc.wait() != 0:
      raise RuntimeError(f"ffmpeg failed writing {self.path}")

  def abort(self):
    self._proc.kill()
    self._proc.wait()


def _stats(values):
  """lerobot's per-feature stats of an (n, ...) array over axis 0 (and, for images, over pixels)."""
  v = np.asarray(values)
  as_float = v.astype(np.float64)
  out = {"min": v.min(axis=0), "max": v.max(axis=0), "mean": as_float.mean(axis=0), "std": as_float.std(axis=0),
         "count": np.array([len(v)])}
  for q in QUANTILES:
    out[f"q{int(round(q * 100)):02d}"] = np.quantile(as_float, q, axis=0)
  return {k: x.tolist() for k, x in out.items()}


def image_stats(frames):
  """Per-channel stats ([3][1][1], values in [0, 1]) of uint8 frames, from every 4th pixel of every frame."""
  px = np.stack(frames)[:, ::4, ::4, :].reshape(-1, 3).astype(np.float64) / 255.0
  s = _stats(px)
  s = {k: ([[[c]] for c in v] if k != "count" else [len(frames)]) for k, v in s.items()}
  return s


def stage_episode(stage_dir, seed, rows, meta, cameras):
  """Move a finished episode into place: `cameras` maps key -> a closed VideoWriter whose file lies in the
  episode's temporary directory `<stage_dir>/seed-XXXX.tmp`."""
  tmp = os.path.join(stage_dir, f"seed-{seed:04d}.tmp")
  np.savez(os.path.join(tmp, "rows.npz"), **rows)
  meta = dict(meta, videos={k: os.path.basename(w.path) for k, w in cameras.items()})
  with open(os.path.join(tmp, "meta.json"), "w") as f:
    json.dump(meta, f, indent=1, sort_keys=True)
  final = os.path.join(stage_dir, f"seed-{seed:04d}")
  if os.path.exists(final):
    shutil.rmtree(final)
  os.rename(tmp, final)


def staged_seeds(stage_dir):
  if not os.path.isdir(stage_dir):
    return []
  return sorted(int(d[5:]) for d in os.listdir(stage_dir) if d.startswith("seed-") and not d.endswith(".tmp"))


def _feature_visual(size, codec="h264"):
  h, w = size
  return {"dtype": "video", "shape": [h, w, 3], "names": ["height", "width", "channels"],
          "info": {"video.height": h, "video.width": w, "video.codec": codec, "video.pix_fmt": "yuv420p",
                   "video.is_depth_map": False, "video.fps": FPS, "video.channels": 3, "has_audio": False}}


def _features(video_keys, size):
  f = {k: _feature_visual(size) for k in video_keys}
  for k in VECTOR_FEATURES:
    f[k] = {"dtype": "float32", "shape": [2], "names": ["x", "y"]}
  f["next.reward"] = {"dtype": "float32", "shape": [1]}
  for k in ("is_first", "is_last", "is_terminal"):
    f[k] = {"dtype": "bool", "shape": [1]}
  for k, dtype in DEFAULT_FEATURES:
    f[k] = {"dtype": dtype, "shape": [1]}
  return f


def _hf_features(features):
  out = {}
  for k, f in features.items():
    if f["dtype"] == "video":
      continue
    value = {"dtype": f["dtype"], "_type": "Value"}
    out[k] = {"feature": value, "length": f["shape"][0], "_type": "List"} if k in VECTOR_FEATURES else value
  return json.dumps({"info": {"features": out}}, separators=(",", ":"))


def _data_table(rows, features):
  cols, fields = [], []
  for k, f in features.items():
    if f["dtype"] == "video":
      continue
    v = rows[k]
    if k in VECTOR_FEATURES:
      arr = pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1).astype(np.float32)), 2)
      typ = pa.list_(pa.float32(), 2)
    else:
      typ = {"float32": pa.float32(), "int64": pa.int64(), "bool": pa.bool_()}[f["dtype"]]
      arr = pa.array(v, typ)
    cols.append(arr)
    fields.append(pa.field(k, typ, nullable=False))
  schema = pa.schema(fields, metadata={"huggingface": _hf_features(features)})
  return pa.Table.from_arrays(cols, schema=schema)


def _aggregate(per_episode):
  """lerobot's aggregate_stats: count-weighted means, pooled variance, min/max, count-weighted quantiles."""
  counts = np.array([s["count"][0] for s in per_episode], np.float64)
  w = counts / counts.sum()
  out = {}
  means = np.array([s["mean"] for s in per_episode], np.float64)
  mean = np.tensordot(w, means, axes=1)
  var = np.tensordot(w, np.array([s["std"] for s in per_episode], np.float64)**2 + (means - mean)**2, axes=1)
  out["min"] = np.min(np.array([s["min"] for s in per_episode]), axis=0).tolist()
  out["max"] = np.max(np.array([s["max"] for s in per_episode]), axis=0).tolist()
  out["mean"] = mean.tolist()
  out["std"] = np.sqrt(var).tolist()
  out["count"] = [int(counts.sum())]
  for q in QUANTILES:
    k = f"q{int(round(q * 100)):02d}"
    out[k] = np.tensordot(w, np.array([s[k] for s in per_episode], np.float64), axes=1).tolist()
  return out


def _stats_columns(ep_stats, features):
  """`stats/<feature>/<stat>` columns, with lerobot's types (bool/int min & max keep the feature's type)."""
  cols = {}
  for k, f in features.items():
    for stat in ["min", "max", "mean", "std", "count"] + [f"q{int(round(q * 100)):02d}" for q in QUANTILES]:
      values = [s[k][stat] for s in ep_stats]
      if f["dtype"] == "video":
        typ = pa.list_(pa.int64()) if stat == "count" else pa.list_(pa.list_(pa.list_(pa.float64())))
      elif stat == "count":
        typ = pa.list_(pa.int64())
      elif stat in ("min", "max") and f["dtype"] in ("bool", "int64"):
        typ = pa.list_(pa.bool_() if f["dtype"] == "bool" else pa.int64())
      else:
        typ = pa.list_(pa.float64())
      cols[f"stats/{k}/{stat}"] = pa.array(values, typ)
  return cols


def _tasks_table(tasks):
  pandas_meta = {
      "index_columns": ["__index_level_0__"],
      "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "object",
                          "metadata": {"encoding": "UTF-8"}}],
      "columns": [{"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
                   "numpy_type": "int64", "metadata": None},
                  {"name": None, "field_name": "__index_level_0__", "pandas_type": "unicode",
                   "numpy_type": "object", "metadata": None}],
      "attributes": {}, "creator": {"library": "pyarrow", "version": pa.__version__}, "pandas_version": "2.2.0"}
  schema = pa.schema([pa.field("task_index", pa.int64()), pa.field("__index_level_0__", pa.string())],
                     metadata={"pandas": json.dumps(pandas_meta)})
  return pa.Table.from_arrays([pa.array(range(len(tasks)), pa.int64()), pa.array(tasks, pa.string())],
                              schema=schema)


def _link_or_copy(src, dst):
  try:
    os.link(src, dst)
  except OSError:
    shutil.copyfile(src, dst)


def finalize(stage_dir, seeds, out_dir, extra_info, size, name_of=None):
  """Lay out the staged `seeds` (in this order: episode i is seeds[i]) as a LeRobot v3.0 dataset at `out_dir`.
  name_of(params), if given, names each appearance again from its recorded parameters (names are a function of
  them), so that staged episodes follow the current vocabulary."""
  if os.path.exists(out_dir):
    raise FileExistsError(f"{out_dir} exists; remove it first")
  metas, all_rows = [], []
  for seed in seeds:
    d = os.path.join(stage_dir, f"seed-{seed:04d}")
    with open(os.path.join(d, "meta.json")) as f:
      metas.append(json.load(f))
    if name_of is not None:
      for params in metas[-1]["appearances"].values():
        params["name"] = name_of(params)
    with np.load(os.path.join(d, "rows.npz")) as z:
      all_rows.append({k: z[k] for k in z.files})
  video_keys = list(metas[0]["videos"])
  size = tuple(size)
  for seed, m in zip(seeds, metas):
    if list(m["videos"]) != video_keys or tuple(m["size"]) != size:
      raise ValueError(f"seed {seed} is staged with cameras {list(m['videos'])} at {m['size']}, not "
                       f"{video_keys} at {list(size)}; stage every episode with the same --size/--appearances")
  features = _features(video_keys, size)
  tmp = f"{out_dir}.tmp-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  tasks, ep_stats, ep_rows = [], [], []
  index = 0
  for ep, (m, rows) in enumerate(zip(metas, all_rows)):
    n = len(rows["frame_index"])
    if m["instruction"] not in tasks:
      tasks.append(m["instruction"])
    rows = dict(rows, episode_index=np.full(n, ep, np.int64), index=np.arange(index, index + n, dtype=np.int64),
                task_index=np.full(n, tasks.index(m["instruction"]), np.int64))
    stats = {k: _stats(rows[k] if rows[k].ndim > 1 else rows[k][:, None]) for k in features
             if features[k]["dtype"] != "video"}
    stats.update({k: m["image_stats"][k] for k in video_keys})
    ep_stats.append(stats)
    ep_rows.append(rows)
    index += n

  os.makedirs(os.path.join(tmp, "data", "chunk-000"))
  writer = None
  for rows in ep_rows:
    table = _data_table(rows, features)
    if writer is None:
      writer = pq.ParquetWriter(os.path.join(tmp, "data", "chunk-000", "file-000.parquet"), table.schema,
                                compression="snappy")
    writer.write_table(table)
  writer.close()
  for ep, (seed, m) in enumerate(zip(seeds, metas)):
    for k in video_keys:
      d = os.path.join(tmp, "videos", k, f"chunk-{ep // CHUNKS_SIZE:03d}")
      os.makedirs(d, exist_ok=True)
      _link_or_copy(os.path.join(stage_dir, f"seed-{seed:04d}", m["videos"][k]),
                    os.path.join(d, f"file-{ep % CHUNKS_SIZE:03d}.mp4"))

  lengths = [len(r["frame_index"]) for r in ep_rows]
  starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
  cols = {
      "episode_index": pa.array(range(len(metas)), pa.int64()),
      "tasks": pa.array([[m["instruction"]] for m in metas], pa.list_(pa.string())),
      "length": pa.array(lengths, pa.int64()),
      "data/chunk_index": pa.array([0] * len(metas), pa.int64()),
      "data/file_index": pa.array([0] * len(metas), pa.int64()),
      "dataset_from_index": pa.array(starts, pa.int64()),
      "dataset_to_index": pa.array(starts + np.array(lengths), pa.int64()),
  }
  for k in video_keys:
    cols[f"videos/{k}/chunk_index"] = pa.array([ep // CHUNKS_SIZE for ep in range(len(metas))], pa.int64())
    cols[f"videos/{k}/file_index"] = pa.array([ep % CHUNKS_SIZE for ep in range(len(metas))], pa.int64())
    cols[f"videos/{k}/from_timestamp"] = pa.array([0.0] * len(metas), pa.float64())
    cols[f"videos/{k}/to_timestamp"] = pa.array([n / FPS for n in lengths], pa.float64())
  cols.update(_stats_columns(ep_stats, features))
  cols["meta/episodes/chunk_index"] = pa.array([0] * len(metas), pa.int64())
  cols["meta/episodes/file_index"] = pa.array([0] * len(metas), pa.int64())
  for k in ("seed", "reward_type", "block_mode", "success", "steps"):
    cols[f"language_table/{k}"] = pa.array([m[k] for m in metas])
  for k in video_keys:
    if k in metas[0]["appearances"]:
      cols[f"appearance/{k}/name"] = pa.array([m["appearances"][k]["name"] for m in metas], pa.string())
      cols[f"appearance/{k}/params"] = pa.array(
          [json.dumps(m["appearances"][k], sort_keys=True) for m in metas], pa.string())
      if "look" in metas[0]["appearances"][k]:
        cols[f"appearance/{k}/look"] = pa.array([m["appearances"][k]["look"] for m in metas], pa.string())
  os.makedirs(os.path.join(tmp, "meta", "episodes", "chunk-000"))
  pq.write_table(pa.table(cols), os.path.join(tmp, "meta", "episodes", "chunk-000", "file-000.parquet"),
                 compression="snappy")
  pq.write_table(_tasks_table(tasks), os.path.join(tmp, "meta", "tasks.parquet"), compression="snappy")
  stats = {k: _aggregate([s[k] for s in ep_stats]) for k in features}
  with open(os.path.join(tmp, "meta", "stats.json"), "w") as f:
    json.dump(stats, f, indent=2)
  info = {
      "codebase_version": "v3.0", "robot_type": "xarm6", "total_episodes": len(metas),
      "total_frames": int(sum(lengths)), "total_tasks": len(tasks), "chunks_size": CHUNKS_SIZE,
      "data_files_size_in_mb": 100, "video_files_size_in_mb": 200, "fps": FPS,
      "splits": {"train": f"0:{len(metas)}"},
      "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
      "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
      "features": features,
      "language_table": extra_info,
  }
  with open(os.path.join(tmp, "meta", "info.json"), "w") as f:
    json.dump(info, f, indent=4)
  os.rename(tmp, out_dir)
  return info
