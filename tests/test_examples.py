"""The training and evaluation examples run end to end on CPU with a tiny random Llama (offline)."""

import fcntl
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.slow  # `pytest -m "not slow"` skips it for a quick inner loop

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TEXT = "the quick brown fox jumps over the lazy dog. " * 400


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("examples")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=64)
    transformers.LlamaForCausalLM(config).save_pretrained(tmp / "model")
    (tmp / "data.txt").write_text(TEXT)
    (tmp / "data.jsonl").write_text("\n".join(json.dumps({"text": TEXT[i::3]}) for i in range(3)) + "\n")
    return tmp


def run(script, *args, launcher=(sys.executable,), expect=0, env=None):
    path = os.pathsep.join(filter(None, [str(EXAMPLES.parent), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, DPROPE_BACKEND="torch", TOKENIZERS_PARALLELISM="false", PYTHONPATH=path,
               **(env or {}))
    result = subprocess.run([*launcher, str(EXAMPLES / script), *map(str, args)], capture_output=True,
                            text=True, env=env, timeout=600)
    assert result.returncode == expect, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def losses(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]


def train_args(ws, output, steps, *extra):
    return ("--model", ws / "model", "--data", ws / "data.txt", ws / "data.jsonl", "--output", output,
            "--target-length", 256, "--seq-len", 128, "--batch-size", 2, "--steps", steps, "--lr", 3e-3,
            "--save-every", 4, "--byte-tokenizer", *extra)


@pytest.fixture(scope="module")
def trained(workspace):
    """A run of 8 steps with gradient checkpointing, then resumed to step 10: (output dir, stdouts)."""
    output = workspace / "run"
    first = run("train.py", *train_args(workspace, output, 8, "--gradient-checkpointing")).stdout
    losses_after_8 = losses(output)
    resumed = run("train.py", *train_args(workspace, output, 10, "--resume")).stdout
    return output, first, losses_after_8, resumed


def test_train_loss_decreases_then_resumes(trained):
    output, printed, rows, resumed = trained
    assert "interpolated pairs" in printed  # the plan's table is shown
    assert [r["step"] for r in rows] == list(range(1, 9))
    values = [r["loss"] for r in rows]
    assert all(torch.isfinite(torch.tensor(values)))
    assert sum(values[-2:]) / 2 < 0.8 * values[0], values
    assert (output / "checkpoint-4").is_dir() and (output / "checkpoint-8").is_dir()

    assert "resumed from" in resumed and "checkpoint-8" in resumed
    assert [r["step"] for r in losses(output)] == list(range(1, 11))

    config = json.loads((output / "final" / "config.json").read_text())
    rope = config.get("rope_parameters") or config.get("rope_scaling")
    assert (rope["rope_type"] == "dprope" and rope["factor"] == 4.0
            and config["max_position_embeddings"] == 256)


def test_evaluate_reports_perplexity_and_passkey(workspace, trained):
    output = trained[0]
    report = workspace / "eval.json"
    run("evaluate.py", "--model", output / "final", "--data", workspace / "data.txt", "--lengths", "64,256",
        "--max-windows", 2, "--passkey-trials", 1, "--byte-tokenizer", "--output", report)
    results = json.loads(report.read_text())
    for length in ("64", "256"):
        row = results["lengths"][length]
        assert row["windows"] == 2 and 1.0 <= row["perplexity"] < 1e4
        assert 0.0 <= row["passkey_accuracy"] <= 1.0
    assert results["rope"]["rope_type"] == "dprope"


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_train_with_two_processes_and_the_fused_projection(workspace, parallel):
    output = workspace / parallel
    launcher = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2")
    run("train.py", *train_args(workspace, output, 2, "--batch-size", 1, "--parallel", parallel,
                                "--fused-projection"),
        launcher=launcher)
    assert [r["step"] for r in losses(output)] == [1, 2]
    assert all(torch.isfinite(torch.tensor([r["loss"] for r in losses(output)])))
    assert (output / "final" / "config.json").exists()


def test_fused_projection_trains_like_the_rope_only_patch(workspace):
    rows = {}
    for mode in ("rope", "fused"):
        output = workspace / f"mode-{mode}"
        run("train.py", *train_args(workspace, output, 3,
                                    *(["--fused-projection"] if mode == "fused" else [])))
        rows[mode] = [r["loss"] for r in losses(output)]
    assert rows["fused"] == pytest.approx(rows["rope"], rel=1e-5)


def test_kill_during_save_resumes_from_the_last_complete_checkpoint_with_identical_losses(workspace):
    straight = workspace / "straight"
    run("train.py", *train_args(workspace, straight, 6, "--save-every", 2))
    killed = workspace / "killed"
    run("train.py", *train_args(workspace, killed, 6, "--save-every", 2), expect=137,
        env={"DPROPE_EXAMPLE_KILL_DURING_SAVE": "6"})
    assert (killed / ".checkpoint-6.partial").is_dir() and not (killed / "checkpoint-6").exists()
    (killed / "checkpoint-old").mkdir()  # a stray name
    (killed / "checkpoint-9").mkdir()  # an incomplete one, newer than the rest
    resumed = run("train.py", *train_args(workspace, killed, 6, "--save-every", 2, "--resume")).stdout
    assert "resumed from checkpoint-4 at step 4" in resumed
    for skipped in (".checkpoint-6.partial", "checkpoint-9 (incomplete", "checkpoint-old (not a checkpoint"):
        assert skipped in resumed
    assert [r["step"] for r in losses(killed)] == list(range(1, 7)), \
        "metrics cut back to step 4, then 5 and 6"
    assert [r["loss"] for r in losses(killed)] == pytest.approx([r["loss"] for r in losses(straight)],
                                                                rel=1e-6)
    assert (killed / "checkpoint-6" / "trainer_state.json").exists()


def test_a_fresh_run_refuses_an_output_holding_an_earlier_run(workspace, trained):
    output = trained[0]
    before = sorted(p.name for p in output.iterdir())
    result = run("train.py", *train_args(workspace, output, 2), expect=2)
    assert "holds an earlier run" in result.stderr and "--overwrite" in result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in output.iterdir()) == before
    fresh = workspace / "overwritten"
    run("train.py", *train_args(workspace, fresh, 2))
    run("train.py", *train_args(workspace, fresh, 1, "--overwrite"))
    assert [r["step"] for r in losses(fresh)] == [1]
    assert not (fresh / "checkpoint-2").exists()


@pytest.mark.parametrize("flag, value, match", [
    ("--save-every", "0", "--save-every"), ("--batch-size", "0", "--batch-size"),
    ("--grad-accum", "0", "--grad-accum"), ("--seq-len", "0", "--seq-len"), ("--seq-len", "-5", "--seq-len"),
    ("--target-length", str(2**63), "--target-length"),
    ("--lr", "nan", "--lr"), ("--model", "/no/such/model", "no such directory"),
])
def test_bad_arguments_get_a_one_line_error_and_nothing_runs(workspace, flag, value, match):
    output = workspace / f"bad{flag}{value}"
    args = list(train_args(workspace, output, 2))
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]
    result = run("train.py", *args, expect=2)
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("usage:") is False and "error:" in last and match in last
    assert "Traceback" not in result.stderr
    assert not output.exists(), "nothing may be written for a refused command line"


@pytest.mark.parametrize("rope, message", [
    ({"rope_type": "linear", "factor": 2.0}, "already extends its rope with rope type 'linear' (factor 2"),
    ({"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
      "original_max_position_embeddings": 16}, "already extends its rope with rope type 'llama3' (factor 4"),
])
def test_a_model_whose_rope_is_extended_already_is_refused(workspace, rope, message):
    """It planned from the raw table and wrote factor 4: the model's own x2 was thrown away."""
    from conftest import rope_config_kwargs

    model = workspace / f"scaled-{rope['rope_type']}"
    config = transformers.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=64, **rope_config_kwargs(rope))
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(model)
    output = workspace / f"out-{rope['rope_type']}"
    args = list(train_args(workspace, output, 2))
    args[args.index("--model") + 1] = model
    result = run("train.py", *args, expect=2)
    last = result.stderr.strip().splitlines()[-1]
    assert "cannot plan the extension" in last and message in last and "Traceback" not in result.stderr
    assert not output.exists()


BAD_DATA = {  # file name -> (content, what the one-line error says)
    "short.txt": ("too short", "--data has 9 tokens, fewer than one block of 128"),
    "broken.jsonl": ('{"text": "fine"}\n{"text": oops}\n', "broken.jsonl:2: not valid JSON"),
    "untitled.jsonl": ('{"body": "no text field"}\n',
                       "untitled.jsonl:1: a jsonl record needs a 'text' field"),
}


@pytest.mark.parametrize("name", sorted(BAD_DATA))
def test_bad_data_is_refused_before_the_output_is_touched(workspace, name):
    """A traceback came after .lock and run.json were written, so the corrected command was refused."""
    content, message = BAD_DATA[name]
    (workspace / name).write_text(content)
    output = workspace / f"data-{name}"
    args = list(train_args(workspace, output, 1))
    at = args.index("--data")
    args[at + 1: at + 3] = [workspace / name]
    result = run("train.py", *args, expect=2)
    last = result.stderr.strip().splitlines()[-1]
    assert "error:" in last and message in last and "Traceback" not in result.stderr
    assert not output.exists()
    run("train.py", *train_args(workspace, output, 1))  # the corrected command is not refused


def test_a_model_without_a_tokenizer_is_refused_before_the_output_is_touched(workspace):
    output = workspace / "no-tokenizer"
    args = [a for a in train_args(workspace, output, 1) if a != "--byte-tokenizer"]
    result = run("train.py", *args, expect=2)
    last = result.stderr.strip().splitlines()[-1]
    assert ("no tokenizer could be loaded" in last and "--byte-tokenizer" in last
            and "Traceback" not in result.stderr)
    assert not output.exists()


def copy_of_run(source: Path, target: Path) -> Path:
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target)
    return target


def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "empty": b"",
                      "garbage": random.Random(0).randbytes(len(data))}[how])


@pytest.mark.parametrize("how", ["truncate", "empty", "garbage"])
@pytest.mark.parametrize("file", [".metadata", "__0_0.distcp"])
def test_resume_skips_a_damaged_checkpoint_for_the_one_before(workspace, trained, file, how):
    output = copy_of_run(trained[0], workspace / f"damaged{file}-{how}")
    damage(output / "checkpoint-10" / file, how)
    result = run("train.py", *train_args(workspace, output, 10, "--resume"))
    assert "skipping checkpoint-10 (damaged: " in result.stdout
    assert "resumed from checkpoint-8 at step 8" in result.stdout
    assert "Traceback" not in result.stderr
    assert [r["step"] for r in losses(output)] == list(range(1, 11))
    assert [r["loss"] for r in losses(output)] == pytest.approx([r["loss"] for r in losses(trained[0])],
                                                                rel=1e-6)


def test_resume_stops_when_every_checkpoint_is_damaged(workspace, trained):
    output = copy_of_run(trained[0], workspace / "all-damaged")
    for step in (4, 8, 10):
        damage(output / f"checkpoint-{step}" / ".metadata", "garbage")
    rows = losses(output)
    result = run("train.py", *train_args(workspace, output, 12, "--resume"), expect=1)
    assert (f"every checkpoint in {output} is damaged (checkpoint-10, checkpoint-8, checkpoint-4"
            in result.stderr)
    assert "Traceback" not in result.stderr
    assert losses(output) == rows and not (output / "checkpoint-12").exists()


def hold_lock(output: Path):
    handle = open(output / ".lock", "a+")
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    handle.truncate(0)
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


@pytest.mark.parametrize("mode", ["--resume", "--overwrite"])
def test_a_second_run_into_an_output_in_use_is_refused_and_changes_nothing(workspace, trained, mode):
    output = trained[0]
    before = {p.name: p.stat().st_mtime_ns for p in output.iterdir() if p.name != ".lock"}
    rows = losses(output)
    with hold_lock(output):
        result = run("train.py", *train_args(workspace, output, 12, mode), expect=2)
    last = result.stderr.strip().splitlines()[-1]
    assert f"--output {output}: another run (pid {os.getpid()}) is using this directory" in last
    assert "Traceback" not in result.stderr
    assert {p.name: p.stat().st_mtime_ns for p in output.iterdir() if p.name != ".lock"} == before
    assert losses(output) == rows


def test_an_output_locked_by_a_running_process_is_refused_and_by_a_killed_one_is_not(workspace, trained):
    output = copy_of_run(trained[0], workspace / "locked-then-killed")
    hold = ("import fcntl, os, sys, time; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); "
            "f.truncate(0); f.write(str(os.getpid())); f.flush(); print('locked', flush=True); "
            "time.sleep(600)")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(output / ".lock")], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        refused = run("train.py", *train_args(workspace, output, 10, "--resume"), expect=2)
        assert f"another run (pid {holder.pid}) is using this directory" in refused.stderr
    finally:
        holder.kill()
        holder.wait()
    result = run("train.py", *train_args(workspace, output, 10, "--resume"))
    assert "resumed from checkpoint-10 at step 10" in result.stdout


@pytest.mark.parametrize("flag, value, message", [
    ("--target-length", 512, "--target-length was 256, now 512"),
    ("--seq-len", 64, "--seq-len was 128, now 64"),
    ("--n-hat", 4, "--n-hat was unset, now 4"),
])
def test_resume_refuses_settings_that_differ_from_the_run(workspace, trained, flag, value, message):
    output = trained[0]
    recorded = json.loads((output / "run.json").read_text())
    assert recorded["target_length"] == 256 and recorded["rope"]["factor"] == 4.0
    args = list(train_args(workspace, output, 12, "--resume"))
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]
    rows = losses(output)
    result = run("train.py", *args, expect=2)
    last = result.stderr.strip().splitlines()[-1]
    assert f"--resume: the run in {output} was started with other settings: {message}" in last
    assert "Traceback" not in result.stderr
    assert losses(output) == rows and not (output / "checkpoint-12").exists()


DISK_FULL = '''\
import contextlib, errno, os, runpy, sys
import torch
import torch.distributed.checkpoint.filesystem as filesystem

FAIL_IN, WHERE = os.environ["FAIL_IN"], os.environ["FAIL_WHERE"]


class FullDisk:
    """A stream that takes nothing more: the OSError a write gets on a full disk."""

    def __init__(self, stream):
        self.stream = stream

    def __getattr__(self, name):
        return getattr(self.stream, name)

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


opened = filesystem.FileSystem.create_stream


@contextlib.contextmanager
def create_stream(self, path, mode):
    with opened(self, path, mode) as stream:
        yield FullDisk(stream) if WHERE == "distcp" and FAIL_IN in str(path) and "w" in mode else stream


saved = torch.save


def save(obj, f, *args, **kwargs):
    if WHERE == "rng" and FAIL_IN in str(f) and "rng-" in str(f):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 640 vs 534")
    return saved(obj, f, *args, **kwargs)


filesystem.FileSystem.create_stream = create_stream
torch.save = save
script = sys.argv[1]
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(script))
runpy.run_path(script, run_name="__main__")
'''


@pytest.mark.parametrize("where", ["distcp", "rng"])
def test_a_save_that_fails_for_want_of_disk_space_stops_the_run_and_leaves_the_earlier_checkpoints(
        workspace, where):
    wrapper = workspace / "disk_full.py"
    wrapper.write_text(DISK_FULL)
    output = workspace / f"disk-full-{where}"
    result = run("train.py", *train_args(workspace, output, 4, "--save-every", 2),
                 launcher=(sys.executable, wrapper), expect=1,
                 env={"FAIL_IN": ".checkpoint-4.partial", "FAIL_WHERE": where})
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: saving checkpoint-4 failed: ")
    assert last.endswith("the previous checkpoint, checkpoint-2, is intact")
    assert ("no space left on device" if where == "distcp" else "enforce fail at inline_container.cc") in last
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in output.iterdir()) == [".lock", "checkpoint-2", "metrics.jsonl", "run.json"]
    if where == "distcp":
        resumed = run("train.py", *train_args(workspace, output, 4, "--save-every", 2, "--resume"))
        assert "resumed from checkpoint-2 at step 2" in resumed.stdout
        assert [r["step"] for r in losses(output)] == [1, 2, 3, 4] and (output / "checkpoint-4").is_dir()


@pytest.mark.parametrize("flag, value, match", [
    ("--lengths", "0", "--lengths: '0': must be at least 2"),
    ("--lengths", "-5", "--lengths: '-5': must be at least 2"),
    ("--lengths", "abc", "--lengths: 'abc': expected an integer"),
    ("--lengths", "64,,256", "--lengths: '64,,256' has an empty item"),
    ("--max-windows", "0", "--max-windows: must be at least 1"),
    ("--passkey-trials", "-1", "--passkey-trials: must be at least 0"),
    ("--backend", "bogus", "--backend: invalid choice: 'bogus'"),
    ("--model", "{ws}/no-such-model", "--model {ws}/no-such-model: no such directory"),
    ("--model", "{ws}", "no config.json"),
    ("--data", "{ws}/no-such-data.txt", "--data: {ws}/no-such-data.txt: no such file"),
    ("--data", "{ws}/model/config.json", "--data: {ws}/model/config.json: expected a .txt or .jsonl file"),
    ("--output", "{ws}/no-such-dir/report.json", "--output {ws}/no-such-dir/report.json: no such directory"),
    ("--output", "{ws}", "is a directory"),
])
def test_evaluate_refuses_bad_arguments_in_one_line_before_any_work(workspace, flag, value, match):
    args = {"--model": "{ws}/model", "--data": "{ws}/data.txt", "--lengths": "64", "--max-windows": "1",
            "--passkey-trials": "1", "--output": "{ws}/refused.json"}
    args[flag] = value
    command = [part.format(ws=workspace) for item in args.items() for part in item] + ["--byte-tokenizer"]
    result = run("evaluate.py", *command, expect=2)
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("evaluate.py: error: ") and match.format(ws=workspace) in last
    assert "Traceback" not in result.stderr
    assert result.stdout == "" and not (workspace / "refused.json").exists()


def test_evaluate_refuses_a_length_the_data_cannot_fill_before_loading_the_model(workspace):
    """--lengths 1000000 was a traceback (no window of that length in the data) after the model loaded."""
    result = run("evaluate.py", "--model", workspace / "model", "--data", workspace / "data.txt",
                 "--lengths", "64,1000000", "--passkey-trials", "0", "--byte-tokenizer",
                 "--output", workspace / "long.json", expect=1)
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("evaluate.py: error: --lengths 1000000: --data has ")
    assert "fewer than one block" in last
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert not (workspace / "long.json").exists()


def test_an_output_in_a_read_only_place_is_refused_before_the_model_loads(workspace, unwritable):
    """Finding 15: train.py gave a traceback from mkdir; evaluate.py ran the whole evaluation, then a
    traceback, and the JSON was lost, though its docstring promises to refuse an unwritable --output
    before the model loads."""
    output = unwritable / "dprope-run"
    result = run("train.py", *train_args(workspace, output, 2), expect=2)
    last = result.stderr.strip().splitlines()[-1]
    assert f"--output {output}: cannot write in {unwritable}" in last and "Traceback" not in result.stderr
    assert result.stdout == ""  # refused before planning and loading
    report = unwritable / "dprope-report.json"
    result = run("evaluate.py", "--model", workspace / "model", "--data", workspace / "data.txt", "--lengths",
                 "64", "--max-windows", "1", "--passkey-trials", "0", "--byte-tokenizer", "--output", report,
                 expect=2)
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("evaluate.py: error: ") and f"--output {report}: cannot write in" in last
    assert result.stdout == "" and "Traceback" not in result.stderr
