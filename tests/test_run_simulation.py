"""`python run_simulation.py` end to end: real Flower processes, results on disk, bad configs refused."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

import psutil
import pytest
import tomli_w
import torch

ROOT = Path(__file__).resolve().parent.parent


def run(tmp_path: Path, *overrides: str, timeout: float = 480) -> tuple[subprocess.CompletedProcess, Path]:
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "run_simulation.py"), f"hydra.run.dir={run_dir}",
         f"data.root={tmp_path / 'synthetic'}", f"data.cache_dir={tmp_path / 'cache'}", *overrides],
        capture_output=True, text=True, timeout=timeout, cwd=tmp_path,
    )
    return proc, run_dir


@pytest.mark.parametrize("override, message", [
    ("model=small_cnn model.name=vit_huge", "model.name"),
    ("federation.rounds=0", "federation.rounds"),
    ("data=folder data.root=/nonexistent/archive", "data.root"),
])
def test_bad_configs_are_refused_before_any_process_starts(tmp_path, override, message):
    proc, run_dir = run(tmp_path, *override.split(), timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stdout
    assert not (run_dir / "federation").exists()


def test_plain_keys_and_the_data_root_are_refused_before_torch_is_imported():
    """Seconds of imports (torch, Opacus) only for a config whose plain keys passed; a layout's root
    left unset (`???`) is one line too, not a traceback."""
    code = ("import sys\nfrom src.config import compose_config, validate\n"
            "for override in sys.argv[1:]:\n"
            "    try:\n        validate(compose_config(override.split()))\n"
            "    except ValueError as error:\n        print(error)\n"
            "print('torch imported' if 'torch' in sys.modules else 'no torch')")
    overrides = ["federation.rounds=0", "data=folder data.root=/nonexistent", "device=tpu", "data=csv",
                 "data.num_workers=-1", "data.memory_cache_mb=-1", "hospital.max_image_size=32"]
    proc = subprocess.run([sys.executable, "-c", code, *overrides], capture_output=True, text=True, timeout=60, cwd=ROOT)
    lines = proc.stdout.splitlines()
    assert [line.split(":")[0] for line in lines[:7]] == ["federation.rounds", "data.root", "device", "data.root",
                                                         "data.num_workers", "data.memory_cache_mb",
                                                         "hospital.max_image_size"], proc.stderr
    assert "expected a value, got none" in lines[3] and lines[7] == "no torch"


def test_more_hospitals_than_images_is_refused(tmp_path):
    from PIL import Image

    for name in ("NORMAL", "PNEUMONIA"):
        for i in range(3):
            path = tmp_path / "kermany" / "train" / name / f"person{i}_bacteria_{i}.jpeg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("L", (32, 32), 40 * i).save(path)
    proc, run_dir = run(tmp_path, "data=kermany", f"data.root={tmp_path / 'kermany'}",
                        "federation.num_hospitals=40", "privacy=none", timeout=120)  # no Opacus check: quicker
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "federation.num_hospitals" in proc.stdout
    assert not (run_dir / "federation").exists()


def test_an_unknown_key_is_refused_by_hydra(tmp_path):
    proc, _ = run(tmp_path, "federation.roundz=3", timeout=120)
    assert proc.returncode != 0
    assert "roundz" in proc.stderr


SMALL = ("federation.num_hospitals=2", "federation.rounds=2", "federation.local_epochs=1",
         "data.images_per_hospital=40", "data.image_size=32", "reference.images=150", "logger=none",
         "baselines=false",
         # in simulation one Ray actor (importing torch once) rather than one per core: these rounds are short
         "federation.simulation_cpus=2")


THREE = ("federation.num_hospitals=3", "federation.min_hospitals=2")


@pytest.fixture(scope="module")
def hospitals(tmp_path_factory, worker_id) -> tuple[str, ...]:
    """Three synthetic hospitals and a public reference set, made once for the runs of this module
    on every xdist worker (under a file lock), and the decoded-image and feature caches their runs
    share (made safe for concurrent runs by the launcher itself); the overrides that point a run at them."""
    from filelock import FileLock

    from src.config import compose_config
    from src.data.reference import reference_samples
    from src.data.synthetic import ensure_synthetic

    session = tmp_path_factory.getbasetemp()
    base = (session if worker_id == "master" else session.parent) / "e2e-hospitals"  # the workers' common folder
    overrides = (f"data.root={base / 'synthetic'}", f"data.cache_dir={base / 'cache'}", f"reference.root={base / 'public'}")
    base.mkdir(exist_ok=True)
    with FileLock(base.with_suffix(".lock")):
        cfg = compose_config([*overrides, *SMALL])
        ensure_synthetic(base / "synthetic", 3, 40, int(cfg.seed))
        reference_samples(cfg.reference)  # generated here: a run finding it missing would write it beside others reading it
    return overrides


TRAINING_METRICS = {"num_examples", "train_loss", "train_seconds"}


def check_results(run_dir: Path, hospitals: set[str], rounds: list[int], interrupted_at: int | None = None) -> dict:
    """`interrupted_at`: rounds up to this one ran while a Ctrl-C reached every process; a hospital whose
    ClientApp it stopped mid-round has no entry of that round's training nor, in the round before, of
    its evaluation (the next train message carries it)."""
    results = json.loads((run_dir / "results.json").read_text())
    assert [r["round"] for r in results["rounds"]] == rounds
    secure = results["config"]["strategy"]["name"] == "secagg"
    for r in results["rounds"]:
        assert set(r["hospitals"]) <= hospitals
        assert 0.0 <= r["global"]["accuracy"] <= 1.0
        assert r["global"]["num_examples"] >= sum(h.get("num_test_examples", 0) for h in r["hospitals"].values())
        evaluated = [h.get("num_test_examples") for h in r["hospitals"].values()]
        if interrupted_at is not None and r["round"] < interrupted_at:
            evaluated = [n for n in evaluated if n is not None]
        assert all(n is not None and n > 0 for n in evaluated)  # each model evaluated by each
        if interrupted_at is None or r["round"] > interrupted_at:
            assert all("trained" in h for h in r["hospitals"].values())  # each answered the round's training
        trained = [h for h in r["hospitals"].values() if h.get("trained")]
        if secure:  # nothing per hospital about its training data but its ε: the sum's total weight only
            assert all(not TRAINING_METRICS & set(h) for h in r["hospitals"].values())
            assert all(set(h.get("privacy", {})) <= {"epsilon", "delta", "accountant"} for h in r["hospitals"].values())
            assert r["secure_aggregation"]["num_examples"] > 0
        elif results["config"]["privacy"]["name"] == "dp":  # the loss and the time are not noised: not sent
            assert all(h["num_examples"] > 0 and not {"train_loss", "train_seconds"} & set(h) for h in trained)
        else:
            assert all(h["num_examples"] > 0 and h["train_seconds"] > 0 for h in trained)
        assert {"train", "aggregate", "total"} <= set(r["time"])
    if results["config"]["privacy"]["name"] == "dp":  # cumulative ε over the run
        target = results["config"]["privacy"]["target_epsilon"]
        for name in hospitals:
            spent = [r["hospitals"][name]["privacy"] for r in results["rounds"]
                     if r["hospitals"].get(name, {}).get("trained")]
            assert all(a["epsilon"] < b["epsilon"] for a, b in zip(spent, spent[1:]))
            assert target is None or all(p["epsilon"] <= target for p in spent)
            assert all(p["accountant"] == "rdp" and p["delta"] == 1e-5 for p in spent)
    saved = torch.load(run_dir / "model.pt", weights_only=False)
    assert saved["classes"] == ["normal", "bacterial", "viral"] and saved["round"] == rounds[-1]
    from omegaconf import OmegaConf

    from src.models.registry import build_model

    build_model(OmegaConf.create(saved["model"]), 3).load_state_dict(saved["state_dict"])
    return results


def supernode_of(hospital: str) -> int | None:
    """The pid of the SuperNode process serving `hospital` (its manifest is in its command line)."""
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or ())
        if ("flower-supernode" in cmdline or "src.launch.supernode" in cmdline) and f"hospitals/{hospital}.json" in cmdline:
            return process.pid
    return None


def spend_privacy_budget(run_dir: Path, hospital: str) -> None:
    """A ledger far beyond any target (an earlier study, say), where run_simulation.py will look for it."""
    ledger = run_dir / "hospitals" / f"{hospital}.privacy.json"
    ledger.parent.mkdir(parents=True)
    ledger.write_text(json.dumps({"noise_multiplier": 1.0, "history": [
        {"round": 0, "noise_multiplier": 1.0, "sample_rate": 0.5, "steps": 1000}]}))


@pytest.mark.e2e
def test_deployment_secure_aggregation_recovers_a_hospital_killed_mid_protocol(hospitals, tmp_path):
    """The default run's privacy=dp strategy=secagg on three real SuperNodes. hospital_3's SuperNode
    is killed (SIGKILL) once it has shared its keys and is asked to train and send its masked
    update: the round completes with the other two, its masks recovered from their shares, and
    the run names the dead hospital. The round does not wait out `federation.round_timeout`
    (300 s, beyond this test's deadline): the SuperLink answers for a SuperNode silent for two
    heartbeats (src/launch/supernode.py: every 10 s) that it is unavailable."""
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "run_simulation.py"), f"hydra.run.dir={run_dir}", *hospitals,
         *SMALL, "federation.num_hospitals=3", "federation.rounds=1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(proc.stdout), daemon=True)
    reader.start()
    log = run_dir / "federation" / "logs" / "supernode-hospital_3.log"
    killed = False
    try:
        while proc.poll() is None and not killed:
            if log.exists() and "Receiving: train message" in log.read_text(errors="replace"):
                os.kill(supernode_of("hospital_3"), signal.SIGKILL)
                killed = True
            time.sleep(0.05)
        proc.wait(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(timeout=10)
    text = "".join(output)
    assert killed, text[-5000:]
    assert proc.returncode == 0, text[-5000:]
    assert "hospitals that failed during the run: hospital_3" in text
    results = check_results(run_dir, {"hospital_1", "hospital_2", "hospital_3"}, [1])
    assert results["config"]["strategy"]["name"] == "secagg" and results["config"]["privacy"]["name"] == "dp"
    secure = results["rounds"][0]["secure_aggregation"]
    assert secure["survivors"] == ["hospital_1", "hospital_2"] and secure["dropped"] == ["hospital_3"]
    assert results["config"]["federation"]["mode"] == "deployment"


@pytest.fixture(scope="module")
def sweep(hospitals, tmp_path_factory):
    """`-m strategy=fedavg,secagg` in simulation mode: two runs of three hospitals without DP (training
    is then deterministic, so the two models can be compared), with a reader CSV."""
    base = tmp_path_factory.mktemp("sweep")
    synthetic = Path(hospitals[0].split("=", 1)[1])
    images = sorted(synthetic.rglob("*.dcm"))
    classes = ["normal", "bacterial", "viral"]
    reads = [(p.relative_to(synthetic), classes[(classes.index(p.parent.name) + (i % 5 == 0)) % 3])
             for i, p in enumerate(images)]  # a reader wrong on every fifth image
    (base / "reads.csv").write_text("image,label\n" + "".join(f"{image},{label}\n" for image, label in reads))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "run_simulation.py"), "-m", f"hydra.sweep.dir={base / 'multirun'}",
         *hospitals, *SMALL, *THREE, "federation.mode=simulation", f"eval.reader_csv={base / 'reads.csv'}",
         "privacy=none", "strategy=fedavg,secagg"],
        capture_output=True, text=True, timeout=600, cwd=base)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return base, proc


def sweep_runs(base: Path) -> dict[str, Path]:
    return {json.loads((d / "results.json").read_text())["config"]["strategy"]["name"]: d
            for d in (base / "multirun").iterdir() if (d / "results.json").exists()}


@pytest.mark.e2e
def test_simulation_multirun_sweeps_strategies_with_expert_reads(sweep):
    base, proc = sweep
    assert proc.stdout.count("round 2/2") == 2 and proc.stdout.count("hospitals 3/3") == 4
    runs = sweep_runs(base)
    assert set(runs) == {"fedavg", "secagg"}
    states = {}
    for name, run_dir in runs.items():
        results = check_results(run_dir, {"hospital_1", "hospital_2", "hospital_3"}, [1, 2])
        assert results["config"]["federation"]["mode"] == "simulation"
        # a small federation that diagnoses: a bound no constant prediction reaches (training is
        # deterministic here, without DP, so this is the same number on every run of the suite)
        assert results["final"]["global"]["auc"] >= 0.75 and results["final"]["global"]["balanced_accuracy"] > 0.5
        reader = results["final"]["reader"]
        tested = results["final"]["global"]["num_examples"]
        assert reader["images"] == tested and reader["skipped"] == 120 - tested
        assert 0.6 < reader["reader"]["accuracy"] < 1.0
        assert reader["model"]["accuracy"] == results["final"]["global"]["accuracy"]
        report = (run_dir / "report.md").read_text()
        assert "## Expert reads" in report
        states[name] = torch.load(run_dir / "model.pt", weights_only=False)["state_dict"]
    # without DP training is deterministic, and secure aggregation gives FedAvg's model up to quantisation:
    # each round's average is within clip_range / (2^quant_bits - 1) = 3e-8 per weight; training carries
    # that difference on.
    secure = json.loads((runs["secagg"] / "results.json").read_text())
    assert all(r["secure_aggregation"]["survivors"] == ["hospital_1", "hospital_2", "hospital_3"]
               for r in secure["rounds"])
    # Adam, which divides by the root of tiny second moments where a gradient is near zero, can
    # amplify that difference in a few weights: all of them stay within 1e-4 (a round moves a weight
    # by ~lr x steps = 1e-2), and on average within 1e-6
    for key in states["fedavg"]:
        difference = (states["secagg"][key].double() - states["fedavg"][key].double()).abs()
        assert difference.max() <= 1e-4 and difference.mean() <= 1e-6, key


@pytest.mark.e2e
def test_resume_continues_an_interrupted_private_run_with_a_declining_hospital(hospitals, tmp_path):
    """DP-SGD, hospital_3's privacy budget already spent (it declines every round). Ctrl-C once
    round 1 of 4 is reported (a round takes about a second, and its line reaches the launcher
    through Flower's log stream, so a later round may complete before the Ctrl-C lands), then
    `resume=`: the rounds recorded before the interruption as they were, the rest trained with
    fresh DP noise, and ε carried over (never under-counted: a round trained before the
    interruption counts again when it is redone)."""
    spend_privacy_budget(tmp_path / "run", "hospital_3")
    first = subprocess.Popen(
        [sys.executable, str(ROOT / "run_simulation.py"), f"hydra.run.dir={tmp_path / 'run'}", *hospitals, *SMALL, *THREE,
         "federation.mode=simulation", "strategy=fedavg", "federation.rounds=4",
         # a fixed σ and a cap with room for a round trained twice (once before the interruption, when
         # the hospitals are quicker than the Ctrl-C), which the ledger rightly counts twice
         "privacy.target_epsilon=null", "privacy.noise_multiplier=1.0", "hospital.max_epsilon=50"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path, start_new_session=True)
    output = []
    try:
        for line in first.stdout:
            output.append(line)
            if line.startswith("round 1/4"):
                os.killpg(first.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
                break
        first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode != 0, "".join(output)[-3000:]
    assert "hospitals 2/3" in "".join(output)
    recorded = json.loads((tmp_path / "run" / "results.json").read_text())["rounds"]
    done = [r["round"] for r in recorded]
    assert done == list(range(1, len(done) + 1)) and 1 <= len(done) < 4, done

    resumed = subprocess.run([sys.executable, str(ROOT / "run_simulation.py"), f"hydra.run.dir={tmp_path / 'again'}",
                              f"resume={tmp_path / 'run'}"], capture_output=True, text=True, timeout=480, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout and f"round {done[-1]}/4" not in resumed.stdout and "round 4/4" in resumed.stdout
    results = check_results(tmp_path / "run", {"hospital_1", "hospital_2", "hospital_3"}, [1, 2, 3, 4],
                            interrupted_at=done[-1])
    for before, again in zip(recorded, results["rounds"]):
        assert {k: v for k, v in again.items() if k != "hospitals"} == {k: v for k, v in before.items() if k != "hospitals"}
    for entry in results["rounds"]:
        declined = entry["hospitals"]["hospital_3"]
        if "trained" not in declined:  # stopped by the Ctrl-C in this round
            assert entry["round"] <= done[-1] and "hospital_3" in entry["failed_hospitals"]
            continue
        assert "privacy budget spent" in declined["declined"] and not declined["trained"]
        assert declined["privacy"]["steps"] == 1000
    assert "privacy budget spent" in (tmp_path / "run" / "report.md").read_text()
    for name in ("hospital_1", "hospital_2"):  # ε carried across the resume: every round's steps counted
        steps = {r["round"]: r["hospitals"][name]["privacy"]["steps"] for r in results["rounds"]
                 if r["hospitals"].get(name, {}).get("trained")}
        assert 4 in steps and all(s >= r * min(steps.values()) > 0 for r, s in steps.items())


@pytest.mark.e2e
def test_flwr_run_runs_a_prepared_run_and_hospitals_refuse_a_plain_round(hospitals, tmp_path):
    """`launch=false` prepares the run and prints Flower's own commands; run as printed (on a free port
    here), a simulation SuperLink and `flwr run .` train the federation and leave the run's results.
    Then a lying server submits the same run as plain FedAvg: every hospital's own policy (from its
    node settings, not the server) requires secure aggregation, so each refuses and no round happens."""
    from src.launch.processes import ProcessSupervisor, free_port, port_in_use

    proc, run_dir = run(tmp_path, *hospitals, *SMALL, *THREE, "federation.rounds=1", "federation.mode=simulation",
                        "launch=false", timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    printed = [line for line in proc.stdout.splitlines() if line.startswith(("cd ", "export ", "flower-", "flwr "))]
    app = run_dir / "app"  # the app's own files, without the checkout's .venv that `flwr run` would walk
    assert printed[:3] == [f"cd {app}", f"export FLWR_HOME={run_dir / 'flwr_home'}",  # and the hospitals' own
                           f"export FEDCXR_NODE_CONFIGS={run_dir / 'hospitals'}"]  # folder, not the server's
    assert (app / "pyproject.toml").exists() and (app / "src" / "client" / "app.py").exists()
    assert not (app / ".venv").exists()  # the README and CI put the venv in the checkout
    superlink, submit = printed[3:]
    assert superlink.endswith("--simulation &") and "--disable-runtime-dependency-installation" in superlink
    assert submit.startswith("flwr run . fedcxr --run-config") and "num-supernodes=3" in submit
    assert not (run_dir / "results.json").exists()

    port = free_port()
    home = run_dir / "flwr_home"
    connection = (home / "config.toml").read_text().replace("127.0.0.1:9093", f"127.0.0.1:{port}")
    (home / "config.toml").write_text(connection)
    env = os.environ | {"FLWR_HOME": str(home), "FEDCXR_NODE_CONFIGS": str(run_dir / "hospitals"),
                        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    with ProcessSupervisor(tmp_path / "logs", env) as processes:  # the SuperLink starts its executor detached
        command = superlink.removesuffix(" &").replace("--port 9093", f"--port {port}")
        processes.start("superlink", shlex.split(command), cwd=app)
        deadline = time.monotonic() + 60
        while not port_in_use(port) and time.monotonic() < deadline:
            time.sleep(0.2)
        flwr = subprocess.run(shlex.split(submit), env=env, cwd=app, capture_output=True, text=True, timeout=300)
        assert flwr.returncode == 0 and "round 1/1" in flwr.stdout, flwr.stdout[-3000:] + flwr.stderr[-3000:]
        results = check_results(run_dir, {"hospital_1", "hospital_2", "hospital_3"}, [1])
        assert results["config"]["strategy"]["name"] == "secagg" and results["config"]["privacy"]["name"] == "dp"
        assert (run_dir / "report.md").exists()

        run_config = tomllib.loads((run_dir / "run_config.toml").read_text())
        plain = json.loads(run_config["config"]) | {"strategy": {"name": "fedavg"}}
        (tmp_path / "plain.toml").write_text(tomli_w.dumps(run_config | {"config": json.dumps(plain)}))
        refused = subprocess.run(shlex.split(submit.replace(str(run_dir / "run_config.toml"), str(tmp_path / "plain.toml"))),
                                 env=env, cwd=app, capture_output=True, text=True, timeout=300)
    assert "declined by hospital_1" in refused.stdout and "declined by hospital_3" in refused.stdout, refused.stdout[-3000:]
    assert "policy hospital.require_secure_aggregation" in refused.stdout
    results = json.loads((run_dir / "results.json").read_text())
    assert results["rounds"] == [] and "policy hospital.require_secure_aggregation" in results["stopped"]


def test_a_resumed_run_keeps_its_config_but_may_run_longer(tmp_path):
    from omegaconf import OmegaConf

    from run_simulation import resumed_config
    from src.config import compose_config

    OmegaConf.save(compose_config(["federation.rounds=2", "seed=5"]), tmp_path / "config.yaml", resolve=True)
    asked = compose_config([f"resume={tmp_path}", "federation.rounds=4"])
    resumed = resumed_config(asked, [f"resume={tmp_path}", "federation.rounds=4"])
    assert resumed.federation.rounds == 4 and resumed.seed == 5 and resumed.resume == str(tmp_path.resolve())
    with pytest.raises(ValueError, match="model.components cannot change"):
        resumed_config(compose_config([f"resume={tmp_path}", "model.components=32"]), [f"resume={tmp_path}", "model.components=32"])
    with pytest.raises(ValueError, match="not a fedcxr run directory"):
        resumed_config(compose_config([f"resume={tmp_path / 'nope'}"]), [])
