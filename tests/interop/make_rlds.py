"""Write a small RLDS dataset in the LanguageTable layout with tensorflow-datasets' OWN writer.

usage: make_rlds.py OUT_DIR

OUT_DIR/data/language_table/0.0.1/   TFRecord shards + dataset_info.json + features.json, written by
                                     tfds' GeneratorBasedBuilder from tests/fixtures/formats/language_table_rlds/features.json
OUT_DIR/expected.safetensors
    ep{i}.rgb            uint8 (T, 360, 640, 3)  the frames before JPEG encoding
    ep{i}.action, ep{i}.effector_translation, ep{i}.effector_target_translation  float32 (T, 2)
    ep{i}.reward         float32 (T,)
    ep{i}.is_first/is_last/is_terminal  uint8 (T,)
    ep{i}.instruction    uint8 UTF-8 bytes of the instruction
Episode i is the record with episode_id "ep{i}"; the order in the shards is tfds' (shuffled by key), so the test
matches episodes by their instruction text, which is unique per episode here.
"""

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import tensorflow_datasets as tfds
from safetensors.numpy import save_file

SPEC = Path(__file__).resolve().parents[1] / "fixtures/formats/language_table_rlds/features.json"
LENGTHS = [5, 3, 4]
INSTRUCTIONS = ["push the red star to the blue cube", "move the green moon left", "slide the yellow pentagon up ✓"]


def episode(i: int):
    n = LENGTHS[i]
    rng = np.random.default_rng(100 + i)
    yy, xx = np.mgrid[0:360, 0:640]
    frames = []
    for t in range(n):
        img = np.stack([40 + xx // 4, 60 + yy // 3, np.full_like(xx, 90 + 40 * i)], -1).astype(np.float32)
        cx, cy = 100 + 40 * t, 120 + 30 * i
        img[cy - 30:cy + 30, cx - 30:cx + 30] = [220, 50, 40]
        frames.append(np.clip(img, 0, 255).astype(np.uint8))
    frames = np.stack(frames)
    f32 = lambda *s: rng.normal(size=s).astype(np.float32)
    steps = dict(action=f32(n, 2), effector_translation=f32(n, 2), effector_target_translation=f32(n, 2),
                 reward=rng.random(n).astype(np.float32), is_first=np.arange(n) == 0,
                 is_last=np.arange(n) == n - 1, is_terminal=np.arange(n) == n - 1)
    return frames, steps


class LanguageTable(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("0.0.1")

    def _info(self):
        features = tfds.features.FeatureConnector.from_json(json.loads(SPEC.read_text()))
        return tfds.core.DatasetInfo(builder=self, features=features)

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i in range(len(LENGTHS)):
            frames, s = episode(i)
            code = np.zeros(512, np.int32)
            utf8 = np.frombuffer(INSTRUCTIONS[i].encode(), np.uint8)
            code[: len(utf8)] = utf8
            steps = []
            for t in range(len(frames)):
                steps.append({
                    "action": s["action"][t], "reward": s["reward"][t],
                    "is_first": s["is_first"][t], "is_last": s["is_last"][t], "is_terminal": s["is_terminal"][t],
                    "observation": {"rgb": frames[t], "instruction": code,
                                    "effector_translation": s["effector_translation"][t],
                                    "effector_target_translation": s["effector_target_translation"][t]},
                })
            yield f"ep{i}", {"episode_id": f"ep{i}", "steps": steps}


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    builder = LanguageTable(data_dir=str(out / "data"))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(max_examples_per_split=None))
    expected = {}
    for i in range(len(LENGTHS)):
        frames, s = episode(i)
        expected[f"ep{i}.rgb"] = frames
        for k, v in s.items():
            expected[f"ep{i}.{k}"] = v.astype(np.uint8) if v.dtype == bool else v
        expected[f"ep{i}.instruction"] = np.frombuffer(INSTRUCTIONS[i].encode(), np.uint8).copy()
    save_file(expected, str(out / "expected.safetensors"))
    print(builder.data_dir)


if __name__ == "__main__":
    main()
