"""Tests for search.py: AutoSlim's greedy search over a tiny supernet trained by train.py.

One supernet (1 epoch on 400 synthetic images) and one search are made per session and shared.
"""
import glob
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import evaluate
import models
import search
import slimmable
import train

torch.set_num_threads(1)  # on a shared 2-core machine one thread is several times faster

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = ["--synthetic_train", "400", "--val_size", "100", "--synthetic_test", "100", "--workers", "0"]
SEARCH = dict(steps=4, search_images=50, threads=1)
RATIOS = [0.9, 0.8, 0.7]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder holding runs/sn/checkpoint.pt: a slim_resnet20 supernet (--method random)."""
    path = tmp_path_factory.mktemp("search")
    previous = os.getcwd()
    os.chdir(path)
    assert train.main(["--name", "sn", "--method", "random", "--epochs", "1", "--batch_size", "50",
                       "--threads", "1", *DATA]) == 0
    yield path
    os.chdir(previous)


@pytest.fixture(scope="module")
def searched(workdir):
    return search.run_search("sn", target_ratios=RATIOS, **SEARCH)


def same_path(result):
    """What must not change when a search is interrupted and resumed (not the timings)."""
    history = [{k: v for k, v in h.items() if k != "seconds"} for h in result["history"]]
    return result["records"], history


def test_configs_meet_their_targets_and_shrink_as_targets_do(workdir, searched):
    full = slimmable.macs(models.get_model("slim_resnet20", 10), 1.0)
    records = searched["records"]
    assert searched["finished"] and len(records) == 3
    targets = [r["target_mflops"] for r in records]
    assert targets == sorted(targets, reverse=True)
    assert targets == pytest.approx([r * full / 1e6 for r in RATIOS])
    for record in records:
        assert record["macs"] <= record["target_mflops"] * 1e6
        assert os.path.exists(os.path.join("runs", "sn", "search", record["file"]))
    macs = [r["macs"] for r in records]
    assert macs == sorted(macs, reverse=True)
    # One group loses one level per step, and a configuration is recorded when first under target.
    history = searched["history"]
    assert [h["step"] for h in history] == list(range(1, searched["steps"] + 1))
    assert all(a["macs"] > b["macs"] for a, b in zip(history, history[1:]))
    for record in records:
        before = history[record["step"] - 2]["macs"] if record["step"] > 1 else full
        assert before > record["target_mflops"] * 1e6
    assert searched["total_evaluations"] == searched["evaluations"] > searched["steps"]


def test_levels_are_deduplicated_and_stay_in_the_trained_range(searched):
    net = models.get_model("slim_mobilenetv2", 1000, input_size=64)
    levels = search.width_levels(net, 2 / 12, 12)
    by_name = dict(zip((g.name for g in net.width_groups), levels))
    assert by_name["stage2.out"] == [8, 16, 24]  # mmrazor 1.x tries 11 levels here, 8 of them repeats
    for group, channels in zip(net.width_groups, levels):
        assert channels == sorted(set(channels)) and channels[-1] == group.channels
        assert all(c % 8 == 0 for c in channels)
    net = models.get_model("slim_resnet20", 10)
    levels = search.width_levels(net, 0.42, 12)
    for group, channels in zip(net.width_groups, levels):
        lowest = int(slimmable.round_channels(0.42, group.channels, group.divisor))
        assert channels[0] == lowest and min(channels) >= lowest
        assert len(channels) == len(set(channels)) <= 13
    # The searched configurations only use levels of the 4-step grid, never below the minimum.
    grid = search.width_levels(net, 0.42, SEARCH["steps"])
    for record in searched["records"]:
        for group, channels in zip(net.width_groups, grid):
            assert record["channels"][group.name] in channels


def test_an_interrupted_search_resumes_to_the_same_result(workdir, searched):
    os.makedirs("runs/sn_resume", exist_ok=True)
    shutil.copy("runs/sn/checkpoint.pt", "runs/sn_resume/checkpoint.pt")
    first = search.run_search("sn_resume", target_ratios=RATIOS, max_steps=2, **SEARCH)
    assert not first["finished"] and first["steps"] == 2
    second = search.run_search("sn_resume", target_ratios=RATIOS, **SEARCH)
    assert second["finished"]
    assert same_path(second) == same_path(searched)
    assert second["total_evaluations"] == searched["total_evaluations"]
    assert second["evaluations"] < searched["evaluations"]  # the first two steps were not redone


def test_resuming_with_other_settings_is_refused(workdir, searched, capsys):
    argv = ["--name", "sn", "--target_ratios", *map(str, RATIOS), "--steps", "4",
            "--search_images", "40", "--threads", "1"]
    assert search.main(argv) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: ") and "search_images" in error[0]


@pytest.mark.parametrize("flags", [["--target_flops", "1000"], ["--target_flops", "0.5"],
                                   ["--target_ratios", "0.8", "1.5"], []])
def test_bad_targets_end_in_one_line_and_status_2(workdir, flags, capsys):
    assert search.main(["--name", "sn", *flags]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: ")


def test_command_line_exit_status(workdir):
    done = subprocess.run([sys.executable, os.path.join(HERE, "search.py"), "--name", "sn",
                           "--target_flops", "1"], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().startswith("error: ") and len(done.stderr.strip().splitlines()) == 1
    assert "below the smallest reachable" in done.stderr


def test_configs_round_trip_through_load_config_train_and_evaluate(workdir, searched):
    files = [os.path.join("runs", "sn", "search", r["file"]) for r in searched["records"]]
    assert sorted(glob.glob("runs/sn/search/*.json")) == sorted(files)  # evaluate.py reads *.json
    net = models.get_model("slim_resnet20", 10)
    for path, record in zip(files, searched["records"]):
        widths, saved = slimmable.load_config(path, net)
        assert slimmable.group_channels(net, widths) == record["channels"]
        assert saved["macs"] == record["macs"] and saved["step"] == record["step"]
        assert saved["heldout_top1"] == pytest.approx(record["heldout_top1"])
    assert train.main(["--name", "retrained", "--method", "fixed", "--channel_config", *files,
                       "--epochs", "1", "--batch_size", "100", "--threads", "1", *DATA]) == 0
    checkpoint = torch.load("runs/retrained/checkpoint.pt", weights_only=False)
    retrained = [slimmable.group_channels(net, widths) for widths in checkpoint["fixed_configs"]]
    assert retrained == [r["channels"] for r in searched["records"]]
    result = evaluate.evaluate_run("sn", argv=["--name", "sn", "--configs", *files,
                                               "--calib_batches", "1", "--batch_size", "100"])
    evaluated = sorted(list(c["channels"].values()) for c in result["candidates"])
    assert evaluated == sorted(list(r["channels"].values()) for r in searched["records"])


def test_resumed_scoring_equals_scoring_from_the_image():
    """Resuming candidates at their first changed block gives the scores of a full forward with
    slimmable.calibrate_bn, for both BN policies."""
    torch.manual_seed(0)
    for name in ("slim_resnet20", "slim_mobilenetv2"):
        net = models.get_model(name, 10, input_size=32).train()
        with torch.no_grad():
            net(torch.randn(8, 3, 32, 32))  # running statistics that are not the defaults
        calibration = [torch.randn(12, 3, 32, 32) for _ in range(2)]
        score = [(torch.randn(10, 3, 32, 32), torch.randint(0, 10, (10,))) for _ in range(2)]
        levels = search.width_levels(net, 0.42, 12)
        index = [max(0, len(g) - 2) for g in levels]
        current = search.widths_at(net, levels, index)
        candidates = [(g, search.widths_at(net, levels, index[:g] + [i - 1] + index[g + 1:]), g)
                      for g, i in enumerate(index) if i > 0]
        for bn in ("calibrate", "batch"):
            with torch.inference_mode():
                resumed = search.CandidateScorer(net, calibration, score, bn).evaluate(current, candidates)
                assert max(search.CandidateScorer(net, calibration, score, bn).resume_of_group) > 3
            for group, widths, _ in candidates:
                slimmable.set_widths(net, widths)
                if bn == "calibrate":
                    slimmable.calibrate_bn(net, calibration)
                    with torch.no_grad():
                        logits = [net.eval()(x) for x, _ in score]
                else:
                    with slimmable.batch_statistics(net):
                        logits = [net(x) for x, _ in score]
                loss = sum(float(torch.nn.functional.cross_entropy(z, y, reduction="sum"))
                           for z, (_, y) in zip(logits, score))
                hits = sum(int((z.argmax(1) == y).sum()) for z, (_, y) in zip(logits, score))
                assert resumed[group][0] == hits
                assert resumed[group][1] == pytest.approx(loss, rel=1e-5)


def test_best_candidate_and_file_names():
    assert search.best_candidate({0: (5, 1.0), 1: (6, 2.0), 2: (6, 1.5), 3: (6, 1.5)}) == 2
    assert search.mflops_name(20) == "FLOPS_20M.json"
    assert search.mflops_name(12.5) == "FLOPS_12.5M.json"
    assert search.mflops_name(36.495936) == "FLOPS_36.5M.json"


def test_torchrun_ranks_share_the_candidates_and_agree(workdir, searched):
    """Two processes (gloo) score half the candidates each and find the same configurations."""
    os.makedirs("runs/sn_ranks", exist_ok=True)
    shutil.copy("runs/sn/checkpoint.pt", "runs/sn_ranks/checkpoint.pt")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", os.path.join(HERE, "search.py"), "--name", "sn_ranks",
                           "--target_ratios", *map(str, RATIOS), "--steps", "4", "--search_images",
                           "50", "--threads", "1"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "2 process(es)" in done.stdout
    with open("runs/sn_ranks/search/search.state") as handle:
        state = json.load(handle)
    assert state["records"] == json.loads(json.dumps(searched["records"]))


def test_scorer_runs_from_the_image_when_blocks_do_not_chain():
    """A forward that reuses an early activation late cannot be resumed at a block: detected."""
    net = models.get_model("slim_resnet20", 10)
    score = [(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)))]
    assert max(search.CandidateScorer(net, [], score, "batch").resume_of_group) > 0
    chained = net.forward

    def forward_with_a_long_skip(x):
        return chained(x) + net.conv1(x).mean()

    net.forward = forward_with_a_long_skip
    assert search.CandidateScorer(net, [], score, "batch").resume_of_group == [0] * 12


def test_every_flag_is_explained(capsys):
    with pytest.raises(SystemExit) as leaving:
        search.main(["--help"])
    assert leaving.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--target_flops", "--target_ratios", "--steps", "--bn", "--search_images",
                 "--eval_batch_size", "--calib_batches", "--pause_after", "--restart", "--val_size"):
        assert flag in text
    assert all(action.help for action in search.build_parser()._actions)
