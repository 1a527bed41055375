"""gymnasium-robotics' Fetch arm (MuJoCo) behind the planner's generic GymAdapter.

Fetch is a 7-DoF arm over a table whose actions are end-effector deltas plus a gripper command,
DROID's convention. What the adapter adds to the environment (`pip install vjepa_fast[sim]`,
`make setup-sim` for headless rendering):
  state   (7,): gripper site xyz (metres), its orientation as xyz Euler angles, and gripper
          closedness in [0, 1] (0: fingers fully open) -- the 7-d pose V-JEPA 2-AC reads;
  action  (7,) DROID delta (xyz metres, Euler deltas, gripper closedness delta) -> Fetch's (4,):
          xyz / (0.05 * 0.66) (Fetch's mocap step, of which the gripper follows two thirds) clipped
          to [-1, 1], rotation ignored (Fetch keeps the gripper pointing down), gripper: closing is
          Fetch's negative command;
  camera  closer than Fetch's default view: the table, the arm and the object at 256 px;
  goal    a frame of the scene in its goal configuration (Reach: the gripper at the goal, Push and
          PickAndPlace: the object at the goal), rendered and then the simulation restored exactly;
          the red target marker and the mocap crosshair are hidden in every frame (the goal is
          given as an image only);
  info    "distance" (achieved to desired goal, metres) and "success" (the environment's own
          is_success), which the MPC loop reads.
A user's own gymnasium environment plugs in the same way: three small functions and GymAdapter.
"""
from __future__ import annotations

import os

import numpy as np

from vjepa_fast.worlds.sim import GymAdapter

# Headless machines render in software unless told otherwise (MUJOCO_GL=egl on a GPU machine). Set
# before MuJoCo is first imported, which fixes its OpenGL backend for the process.
if "MUJOCO_GL" not in os.environ and not os.environ.get("DISPLAY"):
    os.environ["MUJOCO_GL"] = "osmesa"

FETCH_TASKS = {"fetch-reach": "FetchReach-v4", "fetch-push": "FetchPush-v4",
               "fetch-pick-and-place": "FetchPickAndPlace-v4"}
# From the front, above the table: the arm, the object and the goal region all in view.
CAMERA = {"distance": 0.9, "azimuth": 180.0, "elevation": -55.0, "lookat": np.array([1.3, 0.75, 0.42])}
MAX_DELTA = 0.05      # metres Fetch adds to its mocap target per step at |action| = 1
# The gripper follows its mocap weld about two thirds of the way (measured: 0.61 within the step,
# 0.66 once settled, the same for every axis and size): a DROID delta asks for that much more, so
# the motion realised is the delta given (up to 0.033 m a step).
TRACKING = 0.66
FINGER_OPEN = 0.05    # each finger joint's position when fully open (metres)
# The gripper site's rotation in the grasp pose Fetch holds (its mocap quaternion (1, 0, 1, 0)
# turns the site's z up; read from the simulation at rest).
GRASP = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])
INSTALL = ("the Fetch simulator needs MuJoCo and gymnasium-robotics: pip install 'vjepa_fast[sim]' "
           "(headless rendering: make setup-sim, then MUJOCO_GL=osmesa or egl)")


def make_fetch_env(task: str, image_size: int = 256):
    """The gymnasium environment of `task` (one of FETCH_TASKS), rendering RGB frames of image_size."""
    if task not in FETCH_TASKS:
        raise ValueError(f"task must be one of {tuple(FETCH_TASKS)}, got {task!r}")
    # FFmpeg's libraries (torchcodec, which writes the trajectories and episode videos) must be
    # loaded before MuJoCo's OSMesa renderer: loaded after it, the process crashes (a clash
    # between their shared libraries).
    try:
        import torchcodec.encoders  # noqa: F401
    except ImportError:
        pass  # nothing will write video then
    try:
        import gymnasium as gym
        import gymnasium_robotics
    except ImportError as e:
        raise ImportError(f"{INSTALL} ({e})") from None
    gym.register_envs(gymnasium_robotics)
    return gym.make(FETCH_TASKS[task], render_mode="rgb_array", width=image_size, height=image_size,
                    default_camera_config=CAMERA)


def fetch_state(env) -> np.ndarray:
    """(7,) gripper xyz, Euler xyz of the gripper site relative to Fetch's fixed grasp orientation
    (pointing down: its own Euler angles sit at the gimbal singularity, where they flip between
    equivalent values), closedness in [0, 1]."""
    from gymnasium_robotics.utils import rotations
    u = env.unwrapped
    site = u._model_names.site_name2id["robot0:grip"]
    fingers = [u._utils.get_joint_qpos(u.model, u.data, f"robot0:{side}_gripper_finger_joint")[0]
               for side in ("l", "r")]
    closed = 1.0 - float(np.clip(sum(fingers) / (2 * FINGER_OPEN), 0.0, 1.0))
    euler = rotations.mat2euler(GRASP.T @ u.data.site_xmat[site].reshape(3, 3))
    return np.concatenate([u.data.site_xpos[site], euler, [closed]]).astype(np.float32)


def fetch_action(action: np.ndarray) -> np.ndarray:
    """DROID (7,) delta -> Fetch (4,) command."""
    action = np.asarray(action, dtype=np.float64)
    if action.shape != (7,):
        raise ValueError(f"a Fetch action is a DROID 7-d delta (xyz, euler, gripper), got shape {action.shape}")
    xyz = np.clip(action[:3] / (MAX_DELTA * TRACKING), -1.0, 1.0)
    return np.concatenate([xyz, [np.clip(-action[6], -1.0, 1.0)]]).astype(np.float32)


class FetchGoals:
    """What the adapter needs of the live environment: the hidden target marker, the goal frame,
    and the distance/success entries of info."""

    def __init__(self, env):
        self.env = env
        u = env.unwrapped
        self.target_site = u._model_names.site_name2id["target0"]

    def hide_target(self) -> None:
        """Hides the target marker and the mocap body's green crosshair (drawn once it follows the hand)."""
        import mujoco
        model = self.env.unwrapped.model
        model.site_rgba[self.target_site, 3] = 0.0
        mocap = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, "robot0:mocap")
        model.geom_rgba[model.geom_bodyid == mocap, 3] = 0.0

    def pose_goal(self, env) -> None:
        """Puts the scene in its goal configuration: the object at the goal, at rest (Push,
        PickAndPlace), or the gripper driven there by its mocap weld (Reach)."""
        import mujoco
        u = env.unwrapped
        model, data = u.model, u.data
        if u.has_object:
            qpos = u._utils.get_joint_qpos(model, data, "object0:joint").copy()
            qpos[:3] = u.goal
            u._utils.set_joint_qpos(model, data, "object0:joint", qpos)
            u._utils.set_joint_qvel(model, data, "object0:joint", np.zeros(6))
            mujoco.mj_forward(model, data)
        else:
            u._utils.reset_mocap2body_xpos(model, data)  # the weld's target starts where the hand is
            data.mocap_pos[0] += u.goal - u._utils.get_site_xpos(model, data, "robot0:grip")
            for _ in range(20):
                mujoco.mj_step(model, data, nstep=u.n_substeps)

    def goal_image(self, env) -> np.ndarray:
        """A frame of the scene in its goal configuration; the simulation state is restored after."""
        import mujoco
        u = env.unwrapped
        model, data = u.model, u.data
        saved = (data.qpos.copy(), data.qvel.copy(), data.mocap_pos.copy(), data.mocap_quat.copy(),
                 data.ctrl.copy(), data.act.copy() if model.na else None, data.time)
        try:
            self.pose_goal(env)
            frame = np.asarray(env.render()).copy()
        finally:
            data.qpos[:], data.qvel[:], data.mocap_pos[:], data.mocap_quat[:], data.ctrl[:] = saved[:5]
            if saved[5] is not None:
                data.act[:] = saved[5]
            data.time = saved[6]
            mujoco.mj_forward(model, data)
        return frame


class FetchEnv:
    """A Fetch task with the entries the MPC loop reads: reset/step return info["distance"] and
    info["success"]; an episode terminates on success and is truncated after max_steps (Fetch's
    own limit is 50); render() frames without the target marker."""

    def __init__(self, task: str, image_size: int = 256, max_steps: int = 50):
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        self.task, self.max_steps, self.steps = task, max_steps, 0
        self.env = make_fetch_env(task, image_size)
        self.env.reset(seed=0)
        self.goals = FetchGoals(self.env)
        self.goals.hide_target()

    @property
    def unwrapped(self):
        return self.env.unwrapped

    def _info(self, obs: dict, info: dict) -> dict:
        distance = float(np.linalg.norm(obs["achieved_goal"] - obs["desired_goal"]))
        return {**info, "distance": distance, "success": bool(info.get("is_success", 0.0))}

    def reset(self, seed: int | None = None):
        obs, info = self.env.reset(seed=seed)
        self.steps = 0
        return obs, self._info(obs, info)

    def step(self, action):
        obs, reward, _, truncated, info = self.env.step(action)
        self.steps += 1
        info = self._info(obs, info)
        return obs, reward, info["success"], truncated or self.steps >= self.max_steps, info

    def render(self) -> np.ndarray:
        return self.env.render()

    def close(self) -> None:
        self.env.close()


def fetch_adapter(task: str, image_size: int = 256, max_steps: int = 50) -> GymAdapter:
    """A Fetch task as the planner sees any gymnasium environment: GymAdapter with the state,
    action and goal functions above."""
    env = FetchEnv(task, image_size, max_steps)
    return GymAdapter(env, fetch_state, fetch_action, env.goals.goal_image)
