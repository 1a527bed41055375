"""Feature extraction throughput: vjepa_fast.extract (decoding workers, batches of uint8 crops into
the encoder, features streamed to shards) against the loop a user writes with transformers today
(torchcodec decodes, AutoVideoProcessor, VJEPA2Model.get_vision_features, one video at a time,
features kept in a dict), same weights, same files, same precision, timed in alternating rounds
of one test; and the peak RSS of `python -m vjepa_fast.extract` (and of that loop) on 10 and on
100 videos.

CPU (fp32): the `tiny` (width 192, 4 blocks, 64 px crop) and `small` (width 384, 12 blocks, 128 px)
layouts, 32 generated MP4s of 16 frames at 320x240 (noisy, so they decode at about 1 ms a frame,
as real 240p video does). CUDA (bf16 autocast on both sides): the full ViT-L (24 blocks, 256 px),
32 MP4s of 64 frames at 640x480.
Run: pytest benchmarks/test_bench_extract.py --benchmark-only
"""
import json
import subprocess
import sys
from itertools import count
from pathlib import Path

import pytest
import torch

from model_bench import alternate, autocast, device, sync

DEV = device()
LAYOUTS = {"vitl": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, crop_size=256)} \
    if DEV == "cuda" else {"tiny": dict(hidden_size=192, num_hidden_layers=4, num_attention_heads=3, crop_size=64),
                           "small": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, crop_size=128)}
FRAMES, HEIGHT, WIDTH = (64, 480, 640) if DEV == "cuda" else (16, 240, 320)
DTYPE = torch.bfloat16 if DEV == "cuda" else None
VIDEOS = 32


def write_videos(folder: Path, n: int) -> Path:
    """n MP4s of FRAMES frames: a coarse random pattern sliding sideways, with per-frame noise."""
    from torchcodec.encoders import VideoEncoder
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    for i in range(n):
        base = torch.randint(0, 256, (1, 3, HEIGHT // 8, WIDTH // 8), generator=g).float()
        clip = torch.cat([torch.roll(base, t, dims=-1) for t in range(FRAMES)])
        clip = torch.nn.functional.interpolate(clip, size=(HEIGHT, WIDTH), mode="bilinear")
        clip = (clip + 12 * torch.randn(clip.shape, generator=g)).clamp(0, 255).to(torch.uint8)
        VideoEncoder(clip, frame_rate=16).to_file(str(folder / f"video_{i:03d}.mp4"))
    return folder


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    return write_videos(tmp_path_factory.mktemp("videos"), VIDEOS)


@pytest.fixture(scope="module", params=sorted(LAYOUTS))
def setup(request, tmp_path_factory, videos):
    transformers = pytest.importorskip("transformers")
    from vjepa_fast import VideoProcessor, ProcessorConfig, VJEPA2Model
    layout = LAYOUTS[request.param]
    root = tmp_path_factory.mktemp(request.param)
    cfg = transformers.VJEPA2Config(**layout, frames_per_clip=FRAMES, pred_num_hidden_layers=1)
    cfg._attn_implementation = "sdpa"
    ref = transformers.VJEPA2Model(cfg).eval()
    ref.save_pretrained(root / "ckpt")
    VideoProcessor(ProcessorConfig(crop_size=layout["crop_size"])).save_pretrained(root / "ckpt")
    processor = transformers.AutoVideoProcessor.from_pretrained(root / "ckpt")
    ours = VJEPA2Model.from_pretrained(str(root / "ckpt"))
    return request.param, root, ref.to(DEV), processor, ours, videos


def transformers_loop(model, processor, videos: Path) -> dict:
    from torchcodec.decoders import VideoDecoder
    features = {}
    for path in sorted(videos.glob("*.mp4")):
        clip = VideoDecoder(str(path), seek_mode="exact").get_frames_at(list(range(FRAMES))).data  # (T, 3, H, W)
        inputs = processor(clip, return_tensors="pt").to(DEV)
        with torch.no_grad(), autocast(DEV, DTYPE):
            features[path.stem] = model.get_vision_features(**inputs).cpu()
    sync(DEV)
    return features


def test_extract_throughput(benchmark, setup):
    from vjepa_fast.extract import ExtractConfig, extract
    name, root, ref, processor, ours, videos = setup
    runs, layout = count(), LAYOUTS[name]

    def reference():
        assert len(transformers_loop(ref, processor, videos)) == VIDEOS

    def candidate():  # a fresh folder each time: the same folder would resume, with nothing left to do
        config = ExtractConfig(videos=[str(videos)], model=str(root / "ckpt"), out=str(root / f"out{next(runs)}"),
                               num_frames=FRAMES, device=DEV, dtype="bfloat16" if DTYPE else "float32",
                               progress=False)
        assert sum(r["status"] == "ok" for r in extract(config, ours)) == VIDEOS

    benchmark.group = f"extract-{name}-{DEV}"
    result = alternate(benchmark, f"extract {VIDEOS} videos {WIDTH}x{HEIGHT}, {FRAMES} f, {name} layout "
                       f"({layout['crop_size']} px), {'bf16' if DTYPE else 'fp32'}, videos/s",
                       "transformers loop", reference, candidate, memory=False)
    benchmark.extra_info["videos_per_s"] = VIDEOS / (result["vjepa_fast_ms"] / 1e3)
    benchmark.extra_info["reference_videos_per_s"] = VIDEOS / (result["reference_ms"] / 1e3)


# Each run in a process of its own, which then prints the peak RSS of its main process (VmHWM:
# getrusage's ru_maxrss would carry over the forking pytest process's peak through exec) and of
# its largest child (a decoding worker; 0 for the transformers loop, which has none).
REPORT_PEAK_RSS = """
import json, resource
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"main": int(hwm.split()[1]) / 1024,
                  "worker": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""
# `python -m vjepa_fast.extract`
PEAK_RSS = """
import json, runpy, sys
sys.argv = ["vjepa_fast.extract", *json.loads(sys.argv[1])]
runpy.run_module("vjepa_fast.extract", run_name="__main__")
""" + REPORT_PEAK_RSS
# the transformers loop of test_extract_throughput
REFERENCE_PEAK_RSS = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import transformers
from test_bench_extract import DEV, transformers_loop
model = transformers.VJEPA2Model.from_pretrained(sys.argv[2], attn_implementation="sdpa").eval().to(DEV)
transformers_loop(model, transformers.AutoVideoProcessor.from_pretrained(sys.argv[2]), Path(sys.argv[3]))
""" + REPORT_PEAK_RSS


@pytest.mark.parametrize("layers", ["last", "all"])
def test_extract_peak_rss_is_flat_in_the_number_of_videos(benchmark, setup, layers):
    """Default flags (the last layer, 0.75 MiB a video) and every block's features (--layers
    1..12, 9 MiB a video: a run that held them would grow by about 800 MiB from 10 to 100
    videos). The shards stream to disk and freed pages go back after each batch, so what is left
    is glibc's allocator keeping some freed blocks of each batch's temporaries (with every layer,
    a batch stacks 75 MiB of them): the bound is a fifth of what holding the features would add,
    and the default flags' growth is reported in percent."""
    name, root, *_ = setup
    if name == "tiny":
        pytest.skip("peak RSS is measured with the small layout")
    layout = LAYOUTS[name]
    many = root / "many"
    if not many.exists():
        write_videos(many, 100)
    few = root / "few"
    if not few.exists():
        few.mkdir()
        for path in sorted(many.glob("*.mp4"))[:10]:
            (few / path.name).symlink_to(path)
    depth = layout["num_hidden_layers"]
    tokens = FRAMES // 2 * (layout["crop_size"] // 16) ** 2
    video_mib = (depth if layers == "all" else 1) * tokens * layout["hidden_size"] * 4 / 2**20
    peaks = {}

    def peak(program: str, *argv: str) -> dict:
        done = subprocess.run([sys.executable, "-c", program, *argv], check=True, capture_output=True, text=True,
                              cwd=root)
        return json.loads(done.stdout.strip().splitlines()[-1])

    def run(folder: Path) -> dict:
        argv = [str(folder), "--model", str(root / "ckpt"), "--out", str(root / f"rss-{layers}-{folder.name}"),
                "--num-frames", str(FRAMES), "--device", DEV, "--no-progress"]
        if layers == "all":
            argv += ["--layers", ",".join(str(n) for n in range(1, depth + 1))]
        return peak(PEAK_RSS, json.dumps(argv))

    def measure():
        peaks["10"], peaks["100"] = run(few), run(many)
        if layers == "last":  # the loop of test_extract_throughput, which keeps every feature tensor
            here = str(Path(__file__).parent)
            peaks["reference 10"], peaks["reference 100"] = (peak(REFERENCE_PEAK_RSS, here, str(root / "ckpt"),
                                                                  str(folder)) for folder in (few, many))

    benchmark.group = f"extract-rss-{name}-{DEV}"
    benchmark.pedantic(measure, rounds=1, iterations=1)
    growth = peaks["100"]["main"] - peaks["10"]["main"]
    held = 90 * video_mib
    benchmark.extra_info.update(rss_mib_10_videos=peaks["10"], rss_mib_100_videos=peaks["100"],
                                rss_growth_mib=growth, rss_growth_percent=100 * growth / peaks["10"]["main"],
                                features_mib_90_videos=held)
    print(f"\npeak RSS of python -m vjepa_fast.extract --layers {layers} (main / largest worker, MiB): 10 videos "
          f"{peaks['10']['main']:.0f} / {peaks['10']['worker']:.0f}, 100 videos {peaks['100']['main']:.0f} / "
          f"{peaks['100']['worker']:.0f}: {growth:+.0f} MiB ({100 * growth / peaks['10']['main']:+.1f} %), where "
          f"holding the 90 videos' features would add {held:.0f} MiB ({name} layout)")
    if layers == "last":
        reference = peaks["reference 100"]["main"] - peaks["reference 10"]["main"]
        benchmark.extra_info.update(reference_rss_mib_10_videos=peaks["reference 10"]["main"],
                                    reference_rss_mib_100_videos=peaks["reference 100"]["main"],
                                    reference_rss_growth_mib=reference)
        print(f"the transformers loop: 10 videos {peaks['reference 10']['main']:.0f}, 100 videos "
              f"{peaks['reference 100']['main']:.0f}: {reference:+.0f} MiB "
              f"({100 * reference / peaks['reference 10']['main']:+.1f} %)")
    if layers == "all":
        assert growth < held / 5
