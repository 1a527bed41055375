import numpy as np
import pytest
import torch

from vjepa_fast.worlds.physics import PALETTE, PhysicsClips, PhysicsConfig, generate_clip, write_mp4


@pytest.mark.parametrize("frames,size,balls", [(16, 64, (1, 3)), (5, 37, (4, 4)), (1, 16, (1, 1))])
def test_clip_shapes_and_determinism(frames, size, balls):
    config = PhysicsConfig(frames=frames, size=size, min_balls=balls[0], max_balls=balls[1],
                           min_radius=0.1, max_radius=0.12)
    seed = int(torch.randint(0, 2**31, ()))
    video, info = generate_clip(config, seed)
    again, info_again = generate_clip(config, seed)
    other, _ = generate_clip(config, seed + 1)
    n = info["num_balls"]
    assert video.shape == (frames, size, size, 3) and video.dtype == torch.uint8
    assert balls[0] <= n <= balls[1]
    assert info["positions"].shape == info["velocities"].shape == (frames, n, 2)
    assert info["radii"].shape == (n,) and isinstance(info["collided"], bool)
    assert torch.equal(video, again) and torch.equal(info["positions"], info_again["positions"])
    assert not torch.equal(video, other)


def test_balls_stay_inside_and_gravity_accelerates():
    g, size = 0.01, 64
    config = PhysicsConfig(frames=24, size=size, min_balls=1, max_balls=1, gravity=g)
    free_frames = 0
    for seed in range(5):
        _, info = generate_clip(config, seed)
        pos, vel, r = info["positions"][:, 0], info["velocities"][:, 0], info["radii"][0]
        assert (pos >= r - 1e-3).all() and (pos <= size - r + 1e-3).all()
        for t in range(23):
            # Far enough from the floor and ceiling not to touch them within the frame, and no
            # side wall hit (vx unchanged): free flight, vy grows by exactly g.
            margin = vel[t:t + 2, 1].abs().max() + 1
            clear = all(r + margin < pos[s, 1] < size - r - margin for s in (t, t + 1))
            if clear and vel[t + 1, 0] == vel[t, 0]:
                torch.testing.assert_close(vel[t + 1, 1] - vel[t, 1], torch.tensor(g * size), atol=1e-4, rtol=0)
                free_frames += 1
    assert free_frames > 20


def test_collisions_conserve_momentum_and_energy():
    # No gravity, elastic walls: total kinetic energy is conserved exactly by every event, and
    # momentum by the ball-ball collisions (walls change it, so compare only when none was hit).
    config = PhysicsConfig(frames=40, size=64, min_balls=4, max_balls=4, gravity=0.0, max_speed=0.08,
                           min_radius=0.1, max_radius=0.12)
    collided = 0
    for seed in range(6):
        _, info = generate_clip(config, seed)
        mass = info["radii"] ** 2
        energy = (mass[None, :, None] * info["velocities"] ** 2).sum((1, 2))
        torch.testing.assert_close(energy, energy[:1].expand_as(energy), rtol=1e-4, atol=0)
        collided += info["collided"]
    assert collided >= 3, "four large fast balls should collide in most clips"


def test_render_draws_ball_colours_at_centres():
    config = PhysicsConfig(frames=3, size=48, min_balls=3, max_balls=3, min_radius=0.1, max_radius=0.1)
    video, info = generate_clip(config, 7)
    for t in range(3):
        for i in range(3):
            x, y = info["positions"][t, i].long().tolist()
            others = [j for j in range(i + 1, 3) if (info["positions"][t, j] - info["positions"][t, i]).norm()
                      < info["radii"][j] + 1.5]
            if not others:  # a later ball paints over an earlier one where they touch
                expected = torch.from_numpy((PALETTE[i] * 255 + 0.5).astype(np.uint8))
                assert (video[t, y, x].int() - expected.int()).abs().max() <= 1


def test_dataset_is_indexed_deterministically():
    clips = PhysicsClips(PhysicsConfig(frames=4, size=32), seed=3)
    assert torch.equal(clips[10][0], clips[10][0])
    assert not torch.equal(clips[10][0], clips[11][0])
    assert not torch.equal(clips[10][0], PhysicsClips(clips.config, seed=4)[10][0])


def test_mp4_round_trip(tmp_path):
    from torchcodec.decoders import VideoDecoder
    video, _ = generate_clip(PhysicsConfig(frames=6, size=32), 1)
    write_mp4(video, tmp_path / "clip.mp4")
    decoded = VideoDecoder(str(tmp_path / "clip.mp4"))[:]  # (T, 3, H, W)
    assert decoded.shape == (6, 3, 32, 32)
    assert (decoded.permute(0, 2, 3, 1).float() - video.float()).abs().mean() < 12  # lossy codec


@pytest.mark.parametrize("field,value", [("frames", 0), ("max_balls", 0), ("min_radius", 0.0),
                                         ("max_radius", 0.5), ("restitution", 1.5), ("size", 2.5)])
def test_bad_config_is_rejected(field, value):
    with pytest.raises(ValueError, match=field if field != "max_balls" else "max_balls"):
        PhysicsConfig(**{field: value})


def far_from_balls(info, size):
    """(size, size) pixels that no ball comes within 2 pixels of during the clip."""
    ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    far = torch.ones(size, size, dtype=torch.bool)
    for positions in info["positions"]:
        for (x, y), r in zip(positions, info["radii"]):
            far &= (xs - x) ** 2 + (ys - y) ** 2 > (r + 2) ** 2
    return far


def test_textured_background_is_static_per_clip_and_leaves_motion_alone():
    from vjepa_fast.worlds.physics import BACKGROUND
    flat_config = PhysicsConfig(frames=6, size=64, texture=0.0)
    textured_config = PhysicsConfig(frames=6, size=64, texture=0.25, texture_cells=8)
    seed = int(torch.randint(0, 2**31, ()))
    flat, flat_info = generate_clip(flat_config, seed)
    textured, info = generate_clip(textured_config, seed)
    other, other_info = generate_clip(textured_config, seed + 1)
    assert torch.equal(info["positions"], flat_info["positions"])  # the texture is drawn after the simulation
    far = far_from_balls(info, 64)
    assert far.sum() > 500
    assert (textured[:, far] == textured[:1, far]).all()  # static over time
    expected_flat = torch.from_numpy((BACKGROUND * 255 + 0.5).astype(np.uint8))
    assert (flat[:, far].int() - expected_flat.int()).abs().max() <= 1
    assert textured[0, far].float().std() > 5  # brightness cells of up to +-0.25 * 255
    both = far & far_from_balls(other_info, 64)
    assert not torch.equal(textured[0, both], other[0, both])  # a new texture per clip
