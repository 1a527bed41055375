"""Every job's command line comes from its config dataclass, with the same flag names and
defaults across jobs."""
import dataclasses

import pytest

from vjepa_fast.jobs import cli, convert, extract, plan, probe, train, train_ac
from vjepa_fast.jobs.convert import ConvertConfig
from vjepa_fast.jobs.extract import ExtractConfig
from vjepa_fast.jobs.plan import PlanConfig
from vjepa_fast.jobs.probe import ProbeConfig
from vjepa_fast.jobs.train_ac import TrainACConfig
from vjepa_fast.jobs.train_config import TrainConfig

JOBS = [(TrainConfig, train), (TrainACConfig, train_ac), (PlanConfig, plan), (ProbeConfig, probe), (ExtractConfig, extract),
        (ConvertConfig, convert)]


@pytest.mark.parametrize("cls,job", JOBS, ids=[c.__name__ for c, _ in JOBS])
def test_every_field_is_one_documented_flag(cls, job, capsys):
    parser = cli.build_parser(cls, "prog", "")
    actions = [a for a in parser._actions if a.dest not in ("help", "debug")]
    assert sorted(a.dest for a in actions) == sorted(f.name for f in dataclasses.fields(cls))
    assert all(a.help for a in actions)
    with pytest.raises(SystemExit) as e:
        job.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for f in dataclasses.fields(cls):
        if f.type == "bool":
            assert f"--{f.name.replace('_', '-')}" in text and f"--no-{f.name.replace('_', '-')}" in text


@pytest.mark.parametrize("cls", [c for c, _ in JOBS], ids=[c.__name__ for c, _ in JOBS])
def test_shared_flags_mean_the_same_everywhere(cls):
    names = {f.name: f for f in dataclasses.fields(cls)}
    assert "out" in names and "out_dir" not in names
    if "device" in names:
        assert names["device"].default == "auto"
    if "resume" in names:
        assert names["resume"].default is False


def test_types_bools_and_positionals_are_parsed():
    c = cli.parse(ExtractConfig, ["a.mp4", "b.mp4", "--model", "m", "--fps", "2.5", "--no-uniform"], "prog", "")
    assert (c.videos, c.model, c.fps, c.uniform, c.frame_step) == (["a.mp4", "b.mp4"], "m", 2.5, False, None)
    c = cli.parse(TrainACConfig, ["--no-cache-features", "--steps", "400"], "prog", "")
    assert (c.cache_features, c.steps) == (False, 400)


def test_a_rejected_value_is_a_one_line_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        cli.parse(ProbeConfig, ["--clips", "0"], "prog", "")
    err = capsys.readouterr().err
    assert e.value.code == 2 and "prog: error: --clips must be an int >= 1" in err and "Traceback" not in err


def test_bad_input_while_running_is_one_line(capsys):
    def job(config):
        raise FileNotFoundError("data: no such folder")
    with pytest.raises(SystemExit) as e:
        cli.run(job, None, "prog")
    assert e.value.code == "prog: error: data: no such folder"


def test_ctrl_c_is_one_line_and_status_130(capsys):
    def job(config):
        raise KeyboardInterrupt
    with pytest.raises(SystemExit) as e:
        cli.run(job, None, "prog")
    assert e.value.code == 130 and capsys.readouterr().err == "prog: interrupted\n"


@pytest.mark.parametrize("name,message", [("gpu", "must be auto, cpu, cuda or cuda:N"), ("cuda:0", "no CUDA device")])
def test_device_names_are_checked(name, message):
    import torch
    if name.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(ValueError, match=message):
        cli.resolve_device(name)
    assert cli.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


class Payload:
    def __reduce__(self):
        return (print, ("this ran",))


@pytest.mark.parametrize("content", ["truncated", "pickle"])
def test_an_unreadable_checkpoint_is_one_line_and_debug_shows_the_traceback(tmp_path, capsys, content):
    import torch
    from vjepa_fast.jobs import train as train_job
    out = tmp_path / "latest.pt"
    if content == "truncated":
        torch.save({"step": 1, "weights": torch.randn(1000)}, out)
        out.write_bytes(out.read_bytes()[:300])
    else:
        torch.save(Payload(), out)
    with pytest.raises(SystemExit) as e:
        train_job.main(["--out", str(tmp_path), "--resume"])
    assert str(e.value).startswith("python -m vjepa_fast.train: error: --resume: ")
    assert "cannot be read as a checkpoint" in str(e.value) and "this ran" not in capsys.readouterr().out
    with pytest.raises(ValueError, match="cannot be read as a checkpoint"):
        train_job.main(["--out", str(tmp_path), "--resume", "--debug"])


QUICK = ["--steps", "2", "--warmup-steps", "0", "--cooldown-steps", "0"]
ONE_LINE_CASES = [  # (job, argv with {tmp} for the test's folder, what the line must say)
    (train, ["--out", "{tmp}/afile/sub", *QUICK], "--out {tmp}/afile/sub: {tmp}/afile is a file, not a folder"),
    (train, ["--out", "{tmp}/afile", *QUICK], "--out {tmp}/afile: {tmp}/afile is a file, not a folder"),
    (train_ac, ["--out", "{tmp}/afile/x", *QUICK], "--out {tmp}/afile/x: {tmp}/afile is a file"),
    (probe, ["--out", "{tmp}/afile/x"], "--out {tmp}/afile/x: {tmp}/afile is a file"),
    (plan, ["--cache-dir", "{tmp}/afile"], "--cache-dir {tmp}/afile: {tmp}/afile is a file"),
    (extract, ["--demo", "--out", "{tmp}/afile/f.safetensors"], "--out {tmp}/afile/f.safetensors: {tmp}/afile is a file"),
    (convert, ["--src", "{tmp}/x.pt", "--out", "{tmp}/afile/y"], "--out {tmp}/afile/y: {tmp}/afile is a file"),
    (train, ["--device", "cuda", "--out", "{tmp}/run", *QUICK], "--device cuda: no CUDA device is available"),
    (train_ac, ["--device", "cuda", "--out", "{tmp}/run", *QUICK], "--device cuda: no CUDA device is available"),
    (train_ac, ["--encoder-preset", "nope", *QUICK], "--encoder-preset must be one of ("),
    (train_ac, ["--sim-task", "nope", *QUICK], "must be one of ('reach', 'push'), got 'nope'"),
    (train_ac, ["--clip-frames", "9", "--frames", "8", *QUICK], "--clip-frames (9) is longer than the generated"),
    (train_ac, ["--data-dir", "{tmp}/none", "--out", "{tmp}/run", *QUICK], "--data-dir {tmp}/none: no trajectories"),
    (train_ac, ["--encoder", "{tmp}", "--out", "{tmp}/run", *QUICK], "--encoder {tmp}: {tmp}: config.json is missing"),
    (train_ac, ["--encoder", "{tmp}/none", "--out", "{tmp}/run", *QUICK], "--encoder {tmp}/none: "),
]


@pytest.mark.parametrize("job,argv,message", ONE_LINE_CASES,
                         ids=[f"{j.__name__.split('.')[-1]}:{' '.join(a[:2])}" for j, a, _ in ONE_LINE_CASES])
def test_each_bad_command_line_is_one_line_naming_the_flag(tmp_path, capsys, job, argv, message):
    import torch
    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    (tmp_path / "afile").write_text("")
    with pytest.raises(SystemExit) as e:
        job.main([a.format(tmp=tmp_path) for a in argv])
    err = capsys.readouterr().err
    line = str(e.value) if isinstance(e.value.code, str) else err.strip().splitlines()[-1]
    assert message.format(tmp=tmp_path) in line and "Traceback" not in err
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").glob("*.pt"))


def test_a_saved_encoder_of_another_preset_is_refused(tmp_path):
    from vjepa_fast.config import VJEPA2Config
    from vjepa_fast.model import VJEPA2Model
    VJEPA2Model(VJEPA2Config.from_name("tiny")).save_pretrained(str(tmp_path / "encoder"))
    with pytest.raises(SystemExit) as e:
        train_ac.main(["--out", str(tmp_path), "--encoder-preset", "small", "--trajectories", "1", *QUICK])
    assert f"--encoder-preset small: {tmp_path / 'encoder'} holds an encoder of another configuration" in str(e.value)
