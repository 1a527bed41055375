"""The built-in tabletop sim, the gymnasium adapter and the trajectory files."""
import numpy as np
import pytest
import torch

from vjepa_fast.worlds.sim import GymAdapter, SimConfig, TabletopEnv
from vjepa_fast.worlds.trajectories import generate_trajectories, list_trajectories, load_trajectory, write_trajectory


def rollout(env, seed, actions):
    obs, _ = env.reset(seed)
    frames, states = [obs["image"]], [obs["state"]]
    for a in actions:
        obs, *_ = env.step(a)
        frames.append(obs["image"])
        states.append(obs["state"])
    return np.stack(frames), np.stack(states)


@pytest.mark.parametrize("task", ["reach", "push"])
def test_deterministic_under_seed(task):
    rng = np.random.default_rng(0)
    actions = rng.uniform(-0.05, 0.05, (5, 7))
    env = TabletopEnv(SimConfig(task=task, image_size=32))
    f1, s1 = rollout(env, 7, actions)
    f2, s2 = rollout(TabletopEnv(SimConfig(task=task, image_size=32)), 7, actions)
    f3, _ = rollout(env, 8, actions)
    assert f1.shape == (6, 32, 32, 3) and f1.dtype == np.uint8 and s1.shape == (6, 7)
    np.testing.assert_array_equal(f1, f2)
    np.testing.assert_array_equal(s1, s2)
    assert not np.array_equal(f1, f3)


def test_reach_dynamics_and_success():
    env = TabletopEnv(SimConfig(task="reach"))
    obs, info = env.reset(3)
    c = env.config
    start = obs["state"][:3].copy()
    obs, *_ = env.step(np.array([1.0, -1.0, 0, 0.3, 0.2, 0.1, 0.4]))  # clipped to max_delta; rotation ignored
    np.testing.assert_allclose(obs["state"][:3] - start, [c.max_delta, -c.max_delta, 0], atol=1e-6)
    np.testing.assert_array_equal(obs["state"][3:6], 0)
    assert obs["state"][6] == pytest.approx(0.4)
    # Walking straight to the goal ends the episode as a success, within the step budget.
    terminated = truncated = False
    while not (terminated or truncated):
        delta = np.zeros(7)
        delta[:3] = env.goal - env.ee
        obs, reward, terminated, truncated, info = env.step(delta)
    assert terminated and info["success"] and reward > -c.success_radius
    np.testing.assert_array_equal(env.render(), env.goal_image())


def test_push_moves_the_block():
    env = TabletopEnv(SimConfig(task="push"))
    env.reset(5)
    before = env.block.copy()
    env.ee[:2] = before - np.array([0.1, 0.0])
    env.step(np.array([0, 0, -0.05, 0, 0, 0, 0]))  # down to the table
    env.step(np.array([0, 0, -0.05, 0, 0, 0, 0]))
    for _ in range(3):
        env.step(np.array([0.05, 0, 0, 0, 0, 0, 0]))
    assert env.block[0] > before[0] + 0.02


def test_bad_inputs():
    env = TabletopEnv()
    env.reset(0)
    with pytest.raises(ValueError, match="action must have shape"):
        env.step(np.zeros(4))
    with pytest.raises(ValueError, match="NaN"):
        env.step(np.full(7, np.nan))
    with pytest.raises(ValueError, match="SimConfig.task"):
        SimConfig(task="stack")


class FakeGymEnv:
    """The gymnasium API surface the adapter relies on, nothing more."""

    def __init__(self):
        self.pos = np.zeros(2)

    def reset(self, seed=None):
        self.pos = np.random.default_rng(seed).uniform(-1, 1, 2)
        return self.pos.copy(), {}

    def step(self, action):
        self.pos = self.pos + action
        return self.pos.copy(), -float(np.abs(self.pos).sum()), False, False, {"distance": float(np.abs(self.pos).sum())}

    def render(self):
        img = np.zeros((16, 16, 3), dtype=np.uint8)
        img[..., 0] = int(np.clip((self.pos[0] + 2) * 60, 0, 255))
        return img


def test_gym_adapter():
    adapter = GymAdapter(FakeGymEnv(), state_fn=lambda e: np.r_[e.pos, 0, 0, 0, 0, 0],
                         action_fn=lambda a: a[:2], goal_fn=lambda e: np.zeros((16, 16, 3), np.uint8))
    obs, _ = adapter.reset(seed=1)
    obs2, reward, *_ = adapter.step(np.array([0.5, 0, 0, 0, 0, 0, 0]))
    assert obs2["state"][0] == pytest.approx(obs["state"][0] + 0.5) and obs2["image"].shape == (16, 16, 3)
    bad = GymAdapter(FakeGymEnv(), lambda e: np.zeros(7), lambda a: a[:2], lambda e: None)
    bad.env.render = lambda: np.zeros((16, 16, 3), np.float32)
    with pytest.raises(ValueError, match="uint8 RGB"):
        bad.reset(seed=0)


def test_trajectory_files_round_trip(tmp_path):
    sim = SimConfig(image_size=32)
    stems = generate_trajectories(tmp_path, 2, 4, seed=3, sim=sim)
    assert list_trajectories(tmp_path) == stems
    traj = load_trajectory(stems[1])
    assert traj.frames.shape == (4, 32, 32, 3) and traj.states.shape == (4, 7) and traj.actions.shape == (3, 7)
    # The files hold what the sim produced: replay the recorded actions from the same reset.
    frames, states = rollout(TabletopEnv(sim), 3 + 1, traj.actions.double().numpy())
    np.testing.assert_allclose(traj.states.numpy(), states, atol=1e-6)
    assert (traj.frames.int() - torch.from_numpy(frames).int()).abs().max() <= 2  # near-lossless H.264
    with pytest.raises(ValueError, match="T-1"):
        write_trajectory(tmp_path / "bad", frames, states, traj.actions.numpy()[:1])
