"""Reference stills for the restyle model (e.g. out/language_table/looks/): the first frame of chosen appearance cameras
of generated episodes, as JPEGs named after their look, plus looks.json with each one's full appearance name, episode
and camera. Development time, like generate.py (the interop venv has PyAV and pyarrow):

  python scripts/language_table/looks.py out/language_table/pool models/language_table/looks \
      0:appearance_0 0:appearance_2 4:appearance_0 4:appearance_3 5:appearance_1 6:appearance_0 8:appearance_1 32:appearance_1 \
      78:appearance_0

(nine looks of the pooled restyle data, `generate.py --appearance-pool 64`, with distinct board colours; the ninth,
painted-grey-violet, was added in session 20 as the second styled target, chosen on seeds 908-915: docs/results.md)
"""
import sys, glob, json, av, pyarrow.parquet as pq
root, out = sys.argv[1], sys.argv[2]
picks = [(int(a), b) for a, b in (p.split(":") for p in sys.argv[3:])]  # episode:camera_suffix
t = {ep["episode_index"]: ep for ep in pq.read_table(glob.glob(f"{root}/meta/episodes/chunk-*/*.parquet")[0]).to_pylist()}
names = {}
for e, cam in picks:
    ep = t[e]; key = f"observation.images.{cam}"
    c, f = ep[f"videos/{key}/chunk_index"], ep[f"videos/{key}/file_index"]
    t0 = ep[f"videos/{key}/from_timestamp"]
    with av.open(f"{root}/videos/{key}/chunk-{c:03d}/file-{f:03d}.mp4") as cont:
        for fr in cont.decode(video=0):
            if float(fr.pts * fr.time_base) >= t0 - 1e-3:
                img = fr.to_image(); break
    name = ep[f"appearance/{key}/name"]
    short = "-".join(name.split(",")[0].split()[:2]) + "-" + name.split(",")[1].split()[0]
    base, n = short, 2
    while f"{short}.jpg" in names:  # two looks may share board and background words
        short, n = f"{base}-{n}", n + 1
    img.save(f"{out}/{short}.jpg", quality=92)
    names[f"{short}.jpg"] = {"name": name, "episode_index": e, "camera": key}
    print(short, name)
json.dump(names, open(f"{out}/looks.json", "w"), indent=1)
