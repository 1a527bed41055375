"""CEM planning: the fast planner (KV cache, vectorised poses, fused update) against Meta's structure."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vjepa_fast.ac_model import ACConfig, ACPredictor
from vjepa_fast.planner import (CEMConfig, CEMPlanner, advance_pose_ref, advance_poses, draw_noise,
                                euler_to_matrix, matrix_to_euler, mpc_episode, plan_reference)
from vjepa_fast.worlds.sim import SimConfig, TabletopEnv


def random_poses(n, generator=None):
    poses = torch.rand(n, 7, generator=generator, dtype=torch.float64) * 2 - 1
    poses[:, 3:6] *= 1.4  # |b| < pi/2: away from gimbal lock, where Euler angles are not unique
    poses[:, 6] = poses[:, 6].abs()
    return poses


def test_euler_round_trip_and_rotation():
    e = random_poses(50)[:, 3:6]
    R = euler_to_matrix(e)
    torch.testing.assert_close(matrix_to_euler(R), e)
    torch.testing.assert_close(R @ R.transpose(1, 2), torch.eye(3, dtype=R.dtype).expand(50, 3, 3))
    # Extrinsic xyz: a pure rotation about z by c maps x to (cos c, sin c, 0).
    Rz = euler_to_matrix(torch.tensor([[0.0, 0.0, 0.3]], dtype=torch.float64))[0]
    torch.testing.assert_close(Rz[:, 0], torch.tensor([math.cos(0.3), math.sin(0.3), 0.0], dtype=torch.float64))


def test_advance_poses_matches_per_sample_python():
    poses, actions = random_poses(40), random_poses(40) * 0.3
    actions[:5, 6] = 2.0  # gripper clipped at 1
    fast = advance_poses(poses, actions)
    ref = torch.tensor([advance_pose_ref(p.tolist(), a.tolist()) for p, a in zip(poses, actions)], dtype=torch.float64)
    torch.testing.assert_close(fast, ref)
    assert (fast[:5, 6] == 1).all()


def setup(fixed=None, horizon=3, close_gripper=None):
    c = ACConfig(enc_dim=48, hidden_size=64, depth=2, num_heads=2, grid_h=3, grid_w=2)
    model = ACPredictor(c).eval()
    for p in model.parameters():  # sharper random weights so energies spread out
        p.data.normal_(0, 0.3 / math.sqrt(p.shape[-1]))
    z = F.layer_norm(torch.randn(c.tokens_per_frame, c.enc_dim), (c.enc_dim,))
    goal = F.layer_norm(torch.randn(c.tokens_per_frame, c.enc_dim), (c.enc_dim,))
    state = random_poses(1)[0].float()
    cem = CEMConfig(horizon=horizon, samples=24, top_k=5, iterations=3, fixed=fixed or {}, close_gripper=close_gripper)
    return model, z, goal, state, cem


@pytest.mark.parametrize("fixed,horizon,close_gripper", [(None, 3, None), ({6: 0.0}, 1, None), (None, 2, None),
                                                          ({2: 0.01, 6: 0.5}, 2, None), ({6: 0.0}, 3, 1),
                                                          (None, 2, 0)])
def test_fast_planner_equals_reference(fixed, horizon, close_gripper):
    """Both planners, the same noise; `fixed` holds action dimensions at values (Meta's axis),
    close_gripper forces the gripper delta to 1 from that rollout step on, over `fixed`."""
    model, z, goal, state, cem = setup(fixed, horizon, close_gripper)
    noise = draw_noise(cem, torch.Generator().manual_seed(3))
    fast = CEMPlanner(model, cem).plan(z, state, goal, noise=noise)
    ref = plan_reference(model, z, state, goal, cem, noise)
    assert fast.energies.shape == (cem.iterations, cem.samples) and fast.actions.shape == (horizon, 7)
    torch.testing.assert_close(fast.energies, ref.energies, atol=1e-5, rtol=1e-5)
    for i in range(cem.iterations):  # the same elites at every iteration
        pick = lambda e: set(e[i].topk(cem.top_k, largest=False).indices.tolist())  # noqa: E731
        assert pick(fast.energies) == pick(ref.energies)
    torch.testing.assert_close(fast.actions, ref.actions, atol=1e-5, rtol=1e-5)
    assert (fast.actions[:, 3:6] == 0).all()
    free = slice(0, horizon if close_gripper is None else close_gripper)
    for d, value in (fixed or {}).items():
        torch.testing.assert_close(fast.actions[free, d], torch.full((free.stop,), value))
    if close_gripper is not None:  # every elite closed there: the mean went to 1 with momentum 0.15
        torch.testing.assert_close(fast.actions[close_gripper:, 6], torch.full((horizon - close_gripper,),
                                                                               1 - 0.15 ** cem.iterations))
    # The plan moved away from the initial mean: CEM did something.
    assert fast.actions[:, :3].abs().max() > 1e-4


def test_bf16_planner_scores_like_the_reference():
    model, z, goal, state, cem = setup()
    noise = draw_noise(cem, torch.Generator().manual_seed(4))
    fast = CEMPlanner(model, cem, dtype=torch.bfloat16).plan(z, state, goal, noise=noise)
    ref = plan_reference(model, z, state, goal, cem, noise)
    # Iteration 0 scores the same sampled actions in both; later ones follow their own elites.
    torch.testing.assert_close(fast.energies[0], ref.energies[0], atol=2e-2, rtol=2e-2)
    assert fast.energies.dtype == torch.float32 and next(model.parameters()).dtype == torch.float32
    with pytest.raises(ValueError, match="dtype"):
        CEMPlanner(model, cem, dtype=torch.int8)


def test_plan_is_reproducible_from_generator():
    model, z, goal, state, cem = setup()
    planner = CEMPlanner(model, cem)
    a = planner.plan(z, state, goal, torch.Generator().manual_seed(5))
    b = planner.plan(z, state, goal, torch.Generator().manual_seed(5))
    torch.testing.assert_close(a.actions, b.actions, atol=0, rtol=0)


def test_bad_inputs():
    model, z, goal, state, cem = setup()
    planner = CEMPlanner(model, cem)
    with pytest.raises(ValueError, match="horizon"):
        CEMConfig(horizon=0)
    with pytest.raises(ValueError, match="top_k"):
        CEMConfig(samples=8, top_k=9)
    with pytest.raises(ValueError, match="close_gripper"):
        CEMConfig(horizon=2, close_gripper=2)
    with pytest.raises(ValueError, match="goal features"):
        planner.plan(z, state, goal[:-1])
    with pytest.raises(ValueError, match="state must be"):
        planner.plan(z, state[:6], goal)
    with pytest.raises(ValueError, match="current features"):
        planner.plan(z[:, :-1], state, goal)
    # A goal image of another size than the frames: the encoder gives another token count.
    from vjepa_fast.ac_model import encode_frames
    from vjepa_fast.config import VJEPA2Config
    from vjepa_fast.model import Encoder
    enc = Encoder(VJEPA2Config(hidden_size=48, num_hidden_layers=1, num_attention_heads=1, crop_size=48,
                               patch_size=16, rope_grid="input")).eval()
    frame = torch.randint(0, 255, (1, 48, 32, 3), dtype=torch.uint8)  # 3 x 2 patches, like the predictor
    assert encode_frames(enc, frame)[0].shape == z.shape
    wrong = encode_frames(enc, torch.randint(0, 255, (1, 32, 32, 3), dtype=torch.uint8))[0]
    with pytest.raises(ValueError, match="goal image must have the size"):
        planner.plan(z, state, wrong)
    other = ACPredictor(ACConfig(enc_dim=48, hidden_size=64, depth=1, num_heads=2, grid_h=3, grid_w=2, action_dim=4))
    with pytest.raises(ValueError, match="7-d DROID"):
        CEMPlanner(other, cem).plan(z, state, goal)


def test_mpc_episode_runs_and_random_baseline():
    model, *_ = setup()
    c = model.config
    env = TabletopEnv(SimConfig(image_size=32, max_steps=3))
    proj = torch.randn(3, c.tokens_per_frame * c.enc_dim)

    def encode(frame):  # a stand-in encoder: any fixed map from the frame to (P, D) features
        x = torch.from_numpy(frame).float().mean((0, 1)) @ proj
        return F.layer_norm(x.view(c.tokens_per_frame, c.enc_dim), (c.enc_dim,))

    planner = CEMPlanner(model, CEMConfig(samples=8, top_k=2, iterations=2))
    ep = mpc_episode(env, encode, planner, seed=1, generator=torch.Generator().manual_seed(0))
    assert ep.steps == 3 and len(ep.frames) == 4 and len(ep.distances) == 4 and len(ep.energies) == 3
    assert ep.energies[0].shape == (2, 8)
    base = mpc_episode(env, encode, None, seed=1, generator=torch.Generator().manual_seed(0))
    assert base.steps == 3 and not base.energies
    np.testing.assert_array_equal(base.frames[0], ep.frames[0])  # same seed, same start
