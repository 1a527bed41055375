"""The Fetch adapter on real gymnasium-robotics environments (MuJoCo, rendered on the CPU with
OSMesa): frames, the DROID state/action mapping against the simulator's own end-effector motion,
goal frames that leave the simulation exactly as it was, success from the environment, and a
short closed loop through the planner's generic path."""
from __future__ import annotations

import numpy as np
import pytest
import torch

fetch = pytest.importorskip("vjepa_fast.worlds.fetch")
pytest.importorskip("gymnasium_robotics", reason=fetch.INSTALL)


OPEN = []


@pytest.fixture(autouse=True)
def close_environments():
    yield
    while OPEN:
        OPEN.pop().close()


def adapter(task: str, size: int = 64, max_steps: int = 50):
    try:
        env = fetch.fetch_adapter(task, size, max_steps)
    except Exception as e:  # only a missing OpenGL backend may skip: anything else fails below
        if "gl" in str(e).lower() or "osmesa" in str(e).lower() or "egl" in str(e).lower():
            pytest.skip(f"MuJoCo cannot render here ({e}); install libosmesa6 (make setup)")
        raise
    OPEN.append(env)
    return env


def test_frames_state_and_hidden_target():
    env = adapter("fetch-push")
    obs, info = env.reset(seed=0)
    assert obs["image"].shape == (64, 64, 3) and obs["image"].dtype == np.uint8 and obs["image"].std() > 10
    assert obs["state"].shape == (7,) and obs["state"].dtype == np.float32
    u = env.env.unwrapped
    grip = u._utils.get_site_xpos(u.model, u.data, "robot0:grip")
    np.testing.assert_allclose(obs["state"][:3], grip, atol=1e-6)
    assert np.abs(obs["state"][3:6]).max() < 0.05  # Fetch holds its grasp orientation: near-zero Euler
    assert u.model.site_rgba[env.env.goals.target_site, 3] == 0.0
    import mujoco
    mocap = mujoco.mj_name2id(u.model, mujoco.mjtObj.mjOBJ_BODY, "robot0:mocap")
    assert (u.model.geom_rgba[u.model.geom_bodyid == mocap, 3] == 0).all()  # no crosshair once the hand moves
    assert info["distance"] == pytest.approx(np.linalg.norm(u._utils.get_site_xpos(u.model, u.data, "object0") - u.goal),
                                             abs=1e-6)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_droid_deltas_move_the_end_effector_by_that_much(axis):
    env = adapter("fetch-reach")
    obs, _ = env.reset(seed=1)
    for sign in (1.0, -1.0):
        action = np.zeros(7)
        action[axis] = 0.03 * sign
        action[3:6] = 0.5  # rotation deltas are ignored
        before = obs["state"][:3]
        for _ in range(3):  # the mocap weld lags: three steps settle it
            obs, *_ = env.step(action if _ == 0 else np.zeros(7))
        moved = obs["state"][:3] - before
        assert moved[axis] * sign == pytest.approx(0.03, abs=0.008), moved
        assert np.abs(np.delete(moved, axis)).max() < 0.006, moved
    np.testing.assert_allclose(fetch.fetch_action(np.array([0.1, -0.0066, 0, 0, 0, 0, 1.0])), [1.0, -0.2, 0, -1.0],
                               rtol=1e-5)
    with pytest.raises(ValueError, match="DROID 7-d delta"):
        fetch.fetch_action(np.zeros(4))


def test_gripper_opens_and_closes_with_the_droid_delta():
    env = adapter("fetch-pick-and-place")
    obs, _ = env.reset(seed=0)
    assert obs["state"][6] > 0.95  # Fetch starts with its fingers together
    for delta, check in ((-1.0, lambda c: c < 0.1), (1.0, lambda c: c > 0.8)):
        for _ in range(5):
            obs, *_ = env.step(np.array([0, 0, 0, 0, 0, 0, delta]))
        assert check(obs["state"][6]), (delta, obs["state"][6])


@pytest.mark.parametrize("task", ["fetch-reach", "fetch-push"])
def test_goal_configuration_puts_the_gripper_or_the_object_at_the_goal(task):
    env = adapter(task)
    env.reset(seed=1000)
    u = env.env.unwrapped
    env.env.goals.pose_goal(env.env)
    where = u._utils.get_site_xpos(u.model, u.data, "object0" if u.has_object else "robot0:grip")
    assert np.linalg.norm(where - u.goal) < 0.01, (where, u.goal)


@pytest.mark.parametrize("task", ["fetch-reach", "fetch-push"])
def test_goal_frame_restores_the_simulation_exactly(task):
    """Two environments, same seed and actions; one renders its goal frame midway: from then on
    both give the same states and frames, bit for bit."""
    a, b = adapter(task), adapter(task)
    (oa, _), (ob, _) = a.reset(seed=3), b.reset(seed=3)
    action = np.array([0.02, -0.01, 0.0, 0, 0, 0, 0])
    a.step(action), b.step(action)
    goal = a.goal_image()
    assert goal.shape == oa["image"].shape and np.abs(goal.astype(int) - a.render().astype(int)).max() > 50
    for _ in range(3):
        (sa, *_), (sb, *_) = a.step(action), b.step(action)
        np.testing.assert_array_equal(sa["state"], sb["state"])
        np.testing.assert_array_equal(sa["image"], sb["image"])


def test_success_is_the_environments_own():
    env = adapter("fetch-push", max_steps=5)
    env.reset(seed=0)
    u = env.env.unwrapped
    qpos = u._utils.get_joint_qpos(u.model, u.data, "object0:joint").copy()
    qpos[:3] = u.goal
    u._utils.set_joint_qpos(u.model, u.data, "object0:joint", qpos)
    _, _, terminated, truncated, info = env.step(np.zeros(7))
    assert info["success"] and info["is_success"] == 1.0 and terminated and not truncated
    assert info["distance"] < 0.05


def test_short_closed_loop_through_the_generic_path():
    from vjepa_fast.ac_model import ACConfig, ACPredictor, encode_frames
    from vjepa_fast.config import VJEPA2Config
    from vjepa_fast.model import VJEPA2Model
    from vjepa_fast.planner import CEMConfig, CEMPlanner, mpc_episode
    torch.manual_seed(0)
    encoder = VJEPA2Model(VJEPA2Config.from_name("tiny")).eval()
    predictor = ACPredictor(ACConfig.from_name("ac-tiny")).eval()
    env = adapter("fetch-reach", size=64, max_steps=2)

    def encode(frame):
        return encode_frames(encoder.encoder, torch.from_numpy(frame)[None])[0]

    planner = CEMPlanner(predictor, CEMConfig(horizon=1, samples=8, top_k=2, iterations=2))
    for agent in (planner, None):
        episode = mpc_episode(env, encode, agent, seed=5, generator=torch.Generator().manual_seed(0))
        assert episode.steps == 2 and len(episode.distances) == 3 and len(episode.frames) == 3


def test_collect_writes_resumes_and_trains(tmp_path, capsys):
    """python -m vjepa_fast.collect: two simulator processes, the project's trajectory format,
    an interrupted folder completed without redoing what is there, other settings refused,
    and train_ac reading the result."""
    from vjepa_fast.jobs.collect import main
    from vjepa_fast.jobs.train_ac import TrainACConfig, train
    from vjepa_fast.worlds.trajectories import list_trajectories, load_trajectory
    out = tmp_path / "push"
    argv = ["--env", "fetch-push", "--episodes", "4", "--frames", "6", "--out", str(out), "--workers", "2",
            "--no-progress"]
    main(argv)
    stems = list_trajectories(out)
    assert [s.name for s in stems] == [f"traj_{i:05d}" for i in range(4)]
    traj = load_trajectory(stems[0])
    assert traj.frames.shape == (6, 64, 64, 3) and traj.states.shape == (6, 7) and traj.actions.shape == (5, 7)
    assert traj.actions[:, :3].abs().max() <= 0.05 * 0.66 + 1e-6 and traj.actions[:, 3:6].abs().max() == 0
    kept = stems[0].with_suffix(".npz").stat().st_mtime_ns
    stems[2].with_suffix(".mp4").unlink()  # as if killed while writing it
    main(argv)
    assert "1 collected now, 3 there before" in capsys.readouterr().out
    assert stems[0].with_suffix(".npz").stat().st_mtime_ns == kept and len(list_trajectories(out)) == 4
    with pytest.raises(SystemExit, match=r"collected with other settings \(--frames 6 there, 7 now\)"):
        main(argv[:-3] + ["--frames", "7", "--no-progress"])
    result = train(TrainACConfig(out=str(tmp_path / "ac"), data_dir=str(out), steps=2, warmup_steps=0,
                                 cooldown_steps=0, batch_size=2, clip_frames=3))
    assert (tmp_path / "ac" / "ac_predictor.pt").exists() and result is not None


def test_plan_in_fetch_collects_trains_and_evaluates_three_agents(tmp_path):
    """plan --env fetch-reach with no predictor: collects in Fetch, trains, then the planner,
    random actions and the scripted oracle (which reaches every goal) over the same seeds."""
    from vjepa_fast.jobs import plan
    results = plan.run(plan.PlanConfig(env="fetch-reach", cache_dir=str(tmp_path / "ac"), out=str(tmp_path / "plan"),
                                       collect_episodes=4, train_steps=3, episodes=2, max_steps=6, samples=8, top_k=2,
                                       iterations=1))
    assert len(list((tmp_path / "ac" / "trajectories").glob("*.mp4"))) == 4
    assert set(results) == {"planner", "random", "oracle", "config"}
    assert results["oracle"]["success_rate"] == 1.0 and results["oracle"]["mean_final_distance"] < 0.05
    assert results["planner"]["actions"] >= 2 and (tmp_path / "plan" / "energy.png").stat().st_size > 0
    from torchcodec.decoders import VideoDecoder
    video = VideoDecoder(str(tmp_path / "plan" / "episodes.mp4"))  # the two episodes, observation beside goal
    assert video.metadata.width == 128 and video.metadata.height == 64 and len(video) >= 2 * 2 + 2
    assert plan.PlanConfig(env="fetch-push").cem().maxnorm == pytest.approx(0.033)
