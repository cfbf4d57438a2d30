"""Copy a model directory, storing its F32 safetensors weights as F16 (half the bytes; vadapt loads them as F32).

    python scripts/language_table/to_f16.py SRC_DIR DST_DIR

Only numpy and the standard library: the safetensors format is an 8-byte header length, a JSON header and raw
little-endian arrays. Files other than *.safetensors are copied as they are; trainer state is left out.
"""
import json
import shutil
import struct
import sys
from pathlib import Path

import numpy as np


def to_f16(src: Path, dst: Path) -> None:
    raw = src.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    data = raw[8 + n :]
    out_header, chunks, offset = {}, [], 0
    for name in sorted(k for k in header if k != "__metadata__"):
        info = header[name]
        a, b = info["data_offsets"]
        arr = np.frombuffer(data[a:b], "<f4") if info["dtype"] == "F32" else None
        blob = arr.astype("<f2").tobytes() if arr is not None else data[a:b]
        dtype = "F16" if arr is not None else info["dtype"]
        out_header[name] = {"dtype": dtype, "shape": info["shape"], "data_offsets": [offset, offset + len(blob)]}
        chunks.append(blob)
        offset += len(blob)
    if "__metadata__" in header:
        out_header["__metadata__"] = header["__metadata__"]
    text = json.dumps(out_header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    tmp = dst.with_suffix(".tmp")
    tmp.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(chunks))
    tmp.replace(dst)


def main() -> None:
    src, dst = Path(sys.argv[1]), Path(sys.argv[2])
    for f in sorted(src.rglob("*")):
        rel = f.relative_to(src)
        if f.is_dir() or rel.name.startswith("trainer_state"):
            continue
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if f.suffix == ".safetensors":
            to_f16(f, target)
        else:
            shutil.copyfile(f, target)


if __name__ == "__main__":
    main()
