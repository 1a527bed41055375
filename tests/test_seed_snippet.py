"""The code the project was started from, verbatim but for its import line, on a checkpoint
directory and a video that transformers and torchcodec wrote: vjepa_fast gives transformers'
embeddings (within 1e-4)."""
import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
torchcodec = pytest.importorskip("torchcodec")

SEED = '''
from {library} import AutoVideoProcessor, AutoModel
model = AutoModel.from_pretrained(hf_repo)
processor = AutoVideoProcessor.from_pretrained(hf_repo)
video = VideoDecoder(path).get_frames_at(indices=np.arange(0, 64)).data   # T x C x H x W uint8
video = processor(video, return_tensors="pt").to(model.device)
with torch.no_grad():
    video_embeddings = model.get_vision_features(**video)
'''


@pytest.fixture(scope="module")
def checkpoint_and_video(tmp_path_factory):
    processor = transformers.VJEPA2VideoProcessor(crop_size=64)  # needs torchvision, as make setup installs it
    from torchcodec.encoders import VideoEncoder
    root = tmp_path_factory.mktemp("seed")
    torch.manual_seed(0)
    config = transformers.VJEPA2Config(crop_size=64, frames_per_clip=64, hidden_size=192, num_hidden_layers=2,
                                       num_attention_heads=3, pred_hidden_size=96, pred_num_hidden_layers=1,
                                       pred_num_attention_heads=3)
    transformers.VJEPA2Model(config).save_pretrained(root / "repo")
    processor.save_pretrained(root / "repo")
    t = torch.arange(64, dtype=torch.float32)[:, None, None, None]
    y, x = torch.meshgrid(torch.arange(72.0), torch.arange(96.0), indexing="ij")
    frames = 127 + 100 * torch.sin(x / 9 + t / 7 + torch.tensor([0.0, 1.0, 2.0])[None, :, None, None]) * torch.cos(y / 13)
    VideoEncoder(frames.clamp(0, 255).to(torch.uint8), frame_rate=24).to_file(str(root / "clip.mp4"))
    return str(root / "repo"), str(root / "clip.mp4")


def run_seed(library: str, hf_repo: str, path: str) -> torch.Tensor:
    from torchcodec.decoders import VideoDecoder
    scope = {"hf_repo": hf_repo, "path": path, "VideoDecoder": VideoDecoder, "np": np, "torch": torch}
    exec(SEED.format(library=library), scope)
    return scope["video_embeddings"]


def test_seed_snippet_runs_on_vjepa_fast_with_transformers_numbers(checkpoint_and_video):
    import vjepa_fast
    hf_repo, path = checkpoint_and_video
    theirs = run_seed("transformers", hf_repo, path)
    ours = run_seed("vjepa_fast", hf_repo, path)
    assert type(vjepa_fast.AutoModel.from_pretrained(hf_repo)) is vjepa_fast.VJEPA2Model
    assert ours.shape == theirs.shape == (1, 32 * 16, 192)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)
