"""One oracle episode: simulate, render the default camera and the paired appearance cameras, stage it."""

import copy
import os
import shutil

import cv2
import numpy as np

import appearance as appearance_module
import lerobot_v3
import scene

NATIVE_SIZE = scene.NATIVE_SIZE
CONTROL_FREQUENCY = scene.CONTROL_FREQUENCY
MAX_APPEARANCE_TRIES = 30


def _render_size(size):
  """Render at native size, or at `size` itself when it is larger (same field of view; needs the 9:16 aspect)."""
  h, w = size
  if h <= NATIVE_SIZE[0] and w <= NATIVE_SIZE[1]:
    return NATIVE_SIZE
  if h * NATIVE_SIZE[1] != w * NATIVE_SIZE[0]:
    raise ValueError(f"sizes above the native {NATIVE_SIZE} must keep its aspect (9:16), got {size}")
  return size


def _fit(img, size):
  if img.shape[:2] == tuple(size):
    return img
  return cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_AREA)


def _draw_appearances(world, env, seed, count, size, render_size, pool=None, looks=None):
  """`count` appearances whose first frame passes appearance.check_and_measure, named from the rendered colours.
  Drawn fresh, or with `pool` (a list of appearance parameters shared by every episode) taken from the pool in an
  order drawn from the seed, each distinct, and labelled `look` = "pool-NNN" so that other episodes of the same
  look can be found (a restyle model's references: docs/results.md, "Restyle"). `looks` (pool indices, one per
  camera) fixes the order instead: every episode shows those looks, e.g. a styled target's, to score it against."""
  rng = np.random.default_rng([seed, 0xA77E])
  order = iter(looks if looks else rng.permutation(len(pool)) if pool else [])
  blocks = scene.block_bodies(env)
  out = []
  for k in range(count):
    for attempt in range(MAX_APPEARANCE_TRIES):
      if pool:
        if looks and attempt:
          raise RuntimeError(f"seed {seed}: look {params['look']} fails the block-colour check ({reason})")
        i = next(order, None)
        if i is None:
          raise RuntimeError(f"seed {seed}: the appearance pool has no acceptable look left for camera {k}")
        params = copy.deepcopy(pool[i])
        params.setdefault("look", f"pool-{i:03d}")  # the photo look names itself
      else:
        params = appearance_module.sample(rng)
      raw, seg = world.render(render_size, params, segmentation=True)
      img = appearance_module.post_process(_fit(raw, size), params, np.random.default_rng([seed, k, 0]))
      seg = cv2.resize(seg, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
      ok, reason, board, background = appearance_module.check_and_measure(img, seg, blocks, world.board_body,
                                                                          world.background_body)
      if ok:
        params["rendered_board_rgb"] = np.round(board, 4).tolist()
        params["rendered_background_rgb"] = np.round(background, 4).tolist()
        params["name"] = appearance_module.name(params, board, background)
        params["redraws"] = attempt
        out.append(params)
        break
    else:
      raise RuntimeError(f"seed {seed}: no acceptable appearance {k} in {MAX_APPEARANCE_TRIES} draws ({reason})")
  return out


def run_episode(stage_dir, seed, reward, block_mode, size, n_appearances, max_steps, crf, pool=None, looks=None,
                robot_mask=False):
  """Simulate seed `seed` and stage it under stage_dir; returns the episode's metadata. `robot_mask` adds the camera
  observation.images.robot_mask (RenderWorld.robot_mask at the render size, area-averaged to `size`: a soft matte)."""
  tmp = os.path.join(stage_dir, f"seed-{seed:04d}.tmp")
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  texture_dir = os.path.join(tmp, "textures")
  os.makedirs(texture_dir)
  render_size = _render_size(size)
  np.random.seed(seed)  # the oracle's RRT* samples from numpy's global generator
  env, oracle = scene.make_env(reward, block_mode, seed)
  scene.reset_with_plan(env, oracle)
  world = scene.RenderWorld(block_mode, texture_dir)
  keys = ["observation.images.rgb"] + [f"observation.images.appearance_{k}" for k in range(n_appearances)]
  if robot_mask:
    keys.append("observation.images.robot_mask")
  writers = {k: lerobot_v3.VideoWriter(os.path.join(tmp, f"{k}.mp4"), size, crf) for k in keys}
  frames_for_stats = {k: [] for k in keys}
  try:
    world.sync(env.pybullet_client)
    default = env.render_default(render_size)
    mirrored = world.render(render_size)
    if not np.array_equal(default, mirrored):
      raise RuntimeError(f"seed {seed}: the render world does not reproduce the simulator's image "
                         f"(max difference {np.abs(default.astype(int) - mirrored).max()})")
    appearances = _draw_appearances(world, env, seed, n_appearances, size, render_size, pool, looks)
    rows = {k: [] for k in ("observation.state", "observation.effector_target_translation", "action",
                            "next.reward", "is_first", "is_last", "is_terminal")}
    state = env.compute_state()
    success, step = False, 0
    while True:
      world.sync(env.pybullet_client)
      frames = {"observation.images.rgb": _fit(env.render_default(render_size), size)}
      for k, params in enumerate(appearances):
        raw = world.render(render_size, params)
        frames[f"observation.images.appearance_{k}"] = appearance_module.post_process(
            _fit(raw, size), params, np.random.default_rng([seed, k, step]))
      if robot_mask:
        mask = np.repeat(world.robot_mask(render_size)[:, :, None], 3, axis=2).astype(np.uint8) * 255
        frames["observation.images.robot_mask"] = _fit(mask, size)
      for k, f in frames.items():
        writers[k].write(f)
        if step % 2 == 0:
          frames_for_stats[k].append(f)
      rows["observation.state"].append(state["effector_translation"])
      rows["observation.effector_target_translation"].append(state["effector_target_translation"])
      rows["is_first"].append(step == 0)
      last = success or step == max_steps
      if last:
        rows["action"].append(np.zeros(2, np.float32))
        rows["next.reward"].append(0.0)
        rows["is_last"].append(True)
        rows["is_terminal"].append(success)
        break
      action = scene.oracle_action(oracle, first=False)  # keeps the plan made at reset
      _, reward_value, done, _ = env.step(action)
      rows["action"].append(action)
      rows["next.reward"].append(reward_value / scene.GOAL_REWARD)
      rows["is_last"].append(False)
      rows["is_terminal"].append(False)
      state = env.compute_state()
      success = bool(done)
      step += 1
    for w in writers.values():
      w.close()
  except BaseException:
    for w in writers.values():
      w.abort()
    raise
  finally:
    world.close()
    env.pybullet_client.disconnect()
  shutil.rmtree(texture_dir)
  n = len(rows["is_first"])
  out_rows = {
      "observation.state": np.asarray(rows["observation.state"], np.float32).reshape(n, 2),
      "observation.effector_target_translation":
          np.asarray(rows["observation.effector_target_translation"], np.float32).reshape(n, 2),
      "action": np.asarray(rows["action"], np.float32).reshape(n, 2),
      "next.reward": np.asarray(rows["next.reward"], np.float32),
      "is_first": np.asarray(rows["is_first"], bool),
      "is_last": np.asarray(rows["is_last"], bool),
      "is_terminal": np.asarray(rows["is_terminal"], bool),
      "timestamp": (np.arange(n, dtype=np.float64) / lerobot_v3.FPS).astype(np.float32),
      "frame_index": np.arange(n, dtype=np.int64),
  }
  meta = {
      "seed": seed,
      "reward_type": reward,
      "block_mode": block_mode,
      "instruction": env._instruction_str,
      "success": success,
      "steps": step,
      "size": list(size),
      "render_size": list(render_size),
      "appearances": {f"observation.images.appearance_{k}": p for k, p in enumerate(appearances)},
      "image_stats": {k: lerobot_v3.image_stats(v) for k, v in frames_for_stats.items()},
  }
  lerobot_v3.stage_episode(stage_dir, seed, out_rows, meta, writers)
  return meta
