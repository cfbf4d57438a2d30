"""The LanguageTable simulator plus a second, render-only pybullet world that mirrors its poses.

The simulation world is the unmodified LanguageTable environment: its physics, its reward and the oracle's plan
are exactly the simulator's. Appearances are applied only in the render world (a second environment instance whose
bodies have the same ids), so changing textures, adding the board and background overlays or moving bodies out of
sight there can never change a rollout.
"""

import json
import os

import cv2
import numpy as np
import pybullet

from language_table.environments import blocks as blocks_module
from language_table.environments import constants
from language_table.environments import language_table
from language_table.environments.oracles import push_oracle_rrt_slowdown
from language_table.environments.rewards import block2absolutelocation
from language_table.environments.rewards import block2block
from language_table.environments.rewards import block2block_relative_location
from language_table.environments.rewards import block2relativelocation
from language_table.environments.rewards import separate_blocks

import appearance as appearance_module

NATIVE_SIZE = (constants.IMAGE_HEIGHT, constants.IMAGE_WIDTH)  # (180, 320)
CONTROL_FREQUENCY = 10.0  # the environment's default: one step = 0.1 s
GOAL_REWARD = 100.0  # what LanguageTable passes to every reward calculator

REWARDS = {  # the reward types of language_table/eval/main.py
    "blocktoblock": block2block.BlockToBlockReward,
    "blocktoabsolutelocation": block2absolutelocation.BlockToAbsoluteLocationReward,
    "blocktoblockrelativelocation": block2block_relative_location.BlockToBlockRelativeLocationReward,
    "blocktorelativelocation": block2relativelocation.BlockToRelativeLocationReward,
    "separate": separate_blocks.SeparateBlocksReward,
}
BLOCK_MODES = {
    "BLOCK_4": blocks_module.LanguageTableBlockVariants.BLOCK_4,
    "BLOCK_8": blocks_module.LanguageTableBlockVariants.BLOCK_8,
}

PLANE_BODY, BOARD_BODY = 0, 1  # load order in LanguageTable._setup_workspace_and_robot
BOARD_CENTER = (0.35, 0.0)  # workspace_real.urdf's base position
BOARD_HALF = (15 * 0.01524, 15 * 0.02032)  # its plane.obj (+-15) times the URDF's mesh scale
HIDDEN = [0.0, 0.0, -10.0]  # below the floor: out of the camera's sight


class QuietLanguageTable(language_table.LanguageTable):
  """LanguageTable that skips the camera render inside compute_state (the oracle calls it every step and the
  generator renders the frames itself); everything else is the simulator's own code."""

  def _render_camera(self, image_size, return_seg_mask=False):
    return np.zeros((image_size[0], image_size[1], 3), np.uint8)

  def render_default(self, size):
    """The simulator's own camera image (LanguageTable._render_camera), at `size` with the native field of view."""
    return render(self.pybullet_client, self, size)


class OracleEnv:
  """What the push oracle expects of its environment (tf_agents' wrapper plus get_control_frequency)."""

  def __init__(self, env):
    self._env = env

  def __getattr__(self, name):
    return getattr(self._env, name)

  def time_step_spec(self):
    return None

  def action_spec(self):
    return None

  def get_control_frequency(self):
    return CONTROL_FREQUENCY


class _FirstStep:

  def __init__(self, first):
    self._first = first

  def is_first(self):
    return self._first


def make_env(reward, block_mode, seed):
  env = QuietLanguageTable(block_mode=BLOCK_MODES[block_mode], reward_factory=REWARDS[reward], seed=seed,
                           control_frequency=CONTROL_FREQUENCY, render_text_in_image=False)
  oracle = push_oracle_rrt_slowdown.ObstacleOrientedPushOracleBoard2dRRT(OracleEnv(env), use_ee_planner=True)
  return env, oracle


def reset_with_plan(env, oracle, max_tries=50):
  """Reset until the oracle finds a motion plan (as language_table/eval/main.py does). The oracle keeps that plan:
  act with first=False from the start, or it would plan again."""
  for _ in range(max_tries):
    obs = env.reset()
    oracle.reset()
    if oracle.get_plan(env.compute_state()):
      return obs
  raise RuntimeError(f"no plannable initial state in {max_tries} resets")


def oracle_action(oracle, first):
  return np.asarray(oracle.action(_FirstStep(first)).action, np.float32)


def render(client, env, size, **kwargs):
  """RGB (and segmentation) of the LanguageTable camera at `size` = (h, w). The projection is computed for the
  native 180x320 image (LanguageTable.calc_camera_params ties the field of view to it), so larger renders show the
  same view at a higher resolution."""
  viewm, projm, _, _, _ = env.calc_camera_params(NATIVE_SIZE)
  seg_wanted = kwargs.pop("segmentation", False)
  flags = 0 if seg_wanted else pybullet.ER_NO_SEGMENTATION_MASK
  _, _, color, _, seg = client.getCameraImage(width=size[1], height=size[0], viewMatrix=viewm, projectionMatrix=projm,
                                              flags=flags, renderer=pybullet.ER_TINY_RENDERER, **kwargs)
  rgb = np.asarray(color, np.uint8).reshape(size[0], size[1], 4)[:, :, :3].copy()
  if seg_wanted:
    return rgb, np.asarray(seg, np.int32).reshape(size[0], size[1])
  return rgb


def _quad(client, half_x, half_y, z):
  """A textured rectangle without collision, UV 0..1 across it (the board mesh repeats its UV 15 times)."""
  verts = [[-half_x, -half_y, 0], [half_x, -half_y, 0], [half_x, half_y, 0], [-half_x, half_y, 0]]
  shape = client.createVisualShape(pybullet.GEOM_MESH, vertices=verts, indices=[0, 1, 2, 0, 2, 3],
                                   uvs=[[0, 0], [1, 0], [1, 1], [0, 1]], normals=[[0, 0, 1]] * 4,
                                   rgbaColor=[1, 1, 1, 1])
  return client.createMultiBody(baseMass=0, baseVisualShapeIndex=shape, basePosition=HIDDEN), z


class RenderWorld:
  """A render-only copy of the scene. `sync` copies every movable pose from the simulation; `render` draws the
  default look (appearance None) or an appearance."""

  def __init__(self, block_mode, texture_dir):
    self._env = QuietLanguageTable(block_mode=BLOCK_MODES[block_mode], reward_factory=None, seed=0,
                                   control_frequency=CONTROL_FREQUENCY, render_text_in_image=False)
    self.client = self._env.pybullet_client
    self._texture_dir = texture_dir
    self._board = _quad(self.client, BOARD_HALF[0], BOARD_HALF[1], 0.0003)
    self._background = _quad(self.client, 2.5, 2.5, -0.0005)
    self._textures = {}
    self._arm = self._env._robot.xarm
    self._arm_rgba = [(v[1], v[7]) for v in self.client.getVisualShapeData(self._arm)]
    # The robot as the renderer's segmentation sees it: the arm and the effector cylinder (a body of its own).
    self.robot_bodies = [self._arm, self._env._robot.end_effector]
    self._movable = [b for b in range(self.client.getNumBodies()) if b not in (PLANE_BODY, BOARD_BODY)
                     and b not in (self._board[0], self._background[0])]
    self._joints = {b: [j for j in range(self.client.getNumJoints(b))
                        if self.client.getJointInfo(b, j)[2] != pybullet.JOINT_FIXED] for b in self._movable}

  @property
  def board_body(self):
    return self._board[0]

  @property
  def background_body(self):
    return self._background[0]

  def close(self):
    self.client.disconnect()

  def sync(self, sim_client):
    for b in self._movable:
      pos, orn = sim_client.getBasePositionAndOrientation(b)
      self.client.resetBasePositionAndOrientation(b, pos, orn)
      for j in self._joints[b]:
        self.client.resetJointState(b, j, sim_client.getJointState(b, j)[0])

  def _texture(self, key, make_image):
    if key not in self._textures:
      image = make_image()
      path = os.path.join(self._texture_dir, f"{len(self._textures)}.png")
      cv2.imwrite(path, cv2.cvtColor((image * 255).round().astype(np.uint8), cv2.COLOR_RGB2BGR))
      self._textures[key] = self.client.loadTexture(path)
    return self._textures[key]

  def _place(self, body_z, visible):
    body, z = body_z
    pos = [BOARD_CENTER[0], BOARD_CENTER[1], z] if visible else HIDDEN
    self.client.resetBasePositionAndOrientation(body, pos, [0, 0, 0, 1])

  def render(self, size, appearance=None, segmentation=False):
    c = self.client
    if appearance is None:
      self._place(self._board, False)
      self._place(self._background, False)
      c.resetBasePositionAndOrientation(PLANE_BODY, [0, 0, -0.001], [0, 0, 0, 1])
      c.resetBasePositionAndOrientation(BOARD_BODY, [BOARD_CENTER[0], BOARD_CENTER[1], 0.0], [0, 0, 0, 1])
      for link, rgba in self._arm_rgba:
        c.changeVisualShape(self._arm, link, rgbaColor=rgba)
      return render(c, self._env, size, segmentation=segmentation)
    board_tex = self._texture(("board", json.dumps(appearance["board"])),
                              lambda: appearance_module.board_texture(appearance))
    bg_tex = self._texture(("background", json.dumps(appearance["background"])),
                           lambda: appearance_module.background_texture(appearance))
    c.changeVisualShape(self._board[0], -1, textureUniqueId=board_tex, rgbaColor=[1, 1, 1, 1])
    c.changeVisualShape(self._background[0], -1, textureUniqueId=bg_tex, rgbaColor=[1, 1, 1, 1])
    self._place(self._board, True)
    self._place(self._background, True)
    c.resetBasePositionAndOrientation(PLANE_BODY, HIDDEN, [0, 0, 0, 1])
    c.resetBasePositionAndOrientation(BOARD_BODY, HIDDEN, [0, 0, 0, 1])
    for link, _ in self._arm_rgba:
      c.changeVisualShape(self._arm, link, rgbaColor=appearance["arm_rgb"] + [1])
    return render(c, self._env, size, segmentation=segmentation, **appearance_module.light_args(appearance))


  def robot_mask(self, size):
    """(h, w) bool: the robot's pixels (arm and effector) in the default look's render at `size`."""
    _, seg = self.render(size, segmentation=True)
    return np.isin(seg & ((1 << 24) - 1), self.robot_bodies)


def block_bodies(env):
  """Body id -> colour name of the blocks on the table."""
  out = {}
  for block in env._blocks_on_table:
    out[env._block_to_pybullet_id[block]] = block.split("_")[0]
  return out
