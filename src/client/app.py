"""The hospital's Flower ClientApp: train on its own images, evaluate on its own test split.

A train message that asks for it (`evaluate-round`) first evaluates the global model it
brings (the previous round's) on the test split; only the last round's model needs an
evaluate message of its own.

A hospital's images are named by its manifest (its part of the run's `split.json`),
and what it accepts by its policy, both from its own node config (`src/client/hospital.py`),
never from the server's run config. In deployment every message runs in the hospital's
warm worker (`src/client/worker.py`), which imports torch, Opacus and MONAI once
(`warm_up`); this module imports none of them at its top, so a process that only runs
the secure-aggregation stages (`src/client/secure_aggregation.py`: numpy and
`cryptography`) never pays for them.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from src.client import secure_aggregation
from src.client.hospital import manifest, node_settings, policy
from src.secagg import SecAggError

if TYPE_CHECKING:
    from src.data.federation import Federation

log = logging.getLogger("fedcxr.hospital")


class HospitalError(RuntimeError):
    """What the server is told when a handler fails (see `keeps_its_reasons`)."""


class PolicyRefusal(RuntimeError):
    """A message the hospital's own policy refuses; the reason names the policy and the run config's values,
    nothing of the data, so it reaches the server."""


def keeps_its_reasons(handler):
    """A failing handler's reason stays in the hospital's own log; the server gets a fixed one.

    An exception's text can name a patient's file, and which failure a crafted config meets
    can tell one training set from another, before any ε is spent. The protocol's and the
    policy's refusals (SecAggError, PolicyRefusal: rounds, node ids, policies and the run
    config's values, nothing of the data) reach the server as they are: a coordinator needs
    them to see why a round failed."""

    @functools.wraps(handler)
    def answered(msg: Message, context: Context) -> Message:
        try:
            return handler(msg, context)
        except (SecAggError, PolicyRefusal):
            raise
        except Exception:
            log.exception("%r (round message %r) failed", msg.metadata.message_type, msg.metadata.group_id)
            raise HospitalError("the hospital could not answer; the reason stays in its own log") from None

    return answered


app = ClientApp()
app.train("secagg_share")(keeps_its_reasons(secure_aggregation.share_keys))
app.train("secagg_consistency")(keeps_its_reasons(secure_aggregation.consistency))
app.train("secagg_unmask")(keeps_its_reasons(secure_aggregation.unmask))


def hospital_data(context: Context) -> Federation:
    from src.data.federation import Federation

    return Federation.load(manifest(context))


@app.train("secagg_setup")
@keeps_its_reasons
def secagg_setup(msg: Message, context: Context) -> Message:
    """Secure aggregation's first stage, when it runs on its own; the answer names the hospital."""
    return secure_aggregation.setup(msg, context, hospital_data(context).hospitals[0])


def run_config(context: Context):
    """The run's config, except where the hospital caches its decoded images: its own node config's
    `cache-dir` (else a folder beside its manifest), never a path the server chooses for patient data."""
    from src.config import from_run_config

    cfg = from_run_config(context.run_config)
    cfg.data.cache_dir = str(node_settings(context).get("cache-dir", manifest(context).parent / "cache"))
    return cfg


def _share_cpu(context: Context) -> None:
    """Hospitals sharing one machine each get their share of its cores (node config `threads`):
    several processes each running torch on all cores slow one another down many times over."""
    import torch

    if "threads" in context.node_config:
        torch.set_num_threads(int(context.node_config["threads"]))


def _model(cfg, classes: list[str], msg: Message, context: Context):
    """The run's initial model, which the hospital's own settings name (its fixed front end never
    travels in a message), with the message's trained arrays; any other array is refused."""
    from src.models.initial import initial_model_from
    from src.models.wire import load_record

    path = Path(str(node_settings(context)["initial-model"]))
    if not path.is_file():  # never built here: the run config names the reference set it would be fitted on
        raise FileNotFoundError(f"initial-model {path}: no such file (the hospital's node config names it)")
    model = initial_model_from(cfg, len(classes), path)
    load_record(model, msg.content["arrays"])
    return model


def _reply(msg: Message, hospital: str, metrics: dict, records: dict | None = None,
           declined: str | None = None) -> Message:
    content = RecordDict({"metrics": MetricRecord(metrics), "hospital": ConfigRecord(
        {"name": hospital} | ({"declined": declined} if declined else {}))})
    for name, record in (records or {}).items():
        if record is not None:
            content[name] = record
    return Message(content=content, reply_to=msg)


def warm_up() -> None:
    """What the train and evaluate handlers import, imported ahead (by the hospital's worker)."""
    import opacus  # noqa: F401
    import torch._dynamo  # noqa: F401 (torch imports it at the first optimizer: 2 s of CPU)
    import src.training.loops  # noqa: F401
    import src.metrics  # noqa: F401
    import src.models.initial  # noqa: F401


@app.train()
@keeps_its_reasons
def train_round(msg: Message, context: Context) -> Message:
    """Local epochs (DP-SGD under privacy=dp); the update goes back in the clear (FedAvg, FedProx)
    or masked by secure aggregation (secagg)."""
    cfg = run_config(context)
    rules = policy(context)
    data = hospital_data(context)
    hospital, samples = data.hospitals[0], data.select(split="train")
    server_round = int(msg.content["config"]["server-round"])
    secure = "secagg" in msg.content
    if rules.require_secure_aggregation and not secure:
        return _reply(msg, hospital, {}, declined="policy hospital.require_secure_aggregation: refusing to train for "
                      "a round without secure aggregation (the update would reach the server in the clear)")
    if rules.max_epsilon is None:
        return _reply(msg, hospital, {}, declined="policy: this hospital's node config sets no max-epsilon; it trains "
                      "only under an ε cap it chose (a number), or with none (inf)")
    capped = math.isfinite(rules.max_epsilon)
    if capped and cfg.privacy.name != "dp":
        return _reply(msg, hospital, {}, declined=f"policy hospital.max_epsilon={rules.max_epsilon}: refusing to "
                      f"train without differential privacy (privacy={cfg.privacy.name})")
    too_large = rules.image_size_refusal(int(cfg.data.image_size))
    if too_large:
        return _reply(msg, hospital, {}, declined=too_large)
    if secure:
        secure_aggregation.check_ready(msg, context)  # before any privacy budget is spent
    # torch and Opacus only for a round the hospital takes part in (a process that declines never imports them)
    from src.models.wire import to_record
    from src.secagg.records import flatten
    from src.training import privacy
    from src.training.loops import local_training_view, resolve_device, train_epochs

    _share_cpu(context)
    records, model = {}, _model(cfg, data.classes, msg, context)
    if "evaluate-round" in msg.content["config"]:  # the global model received, before training changes it
        # a ConfigRecord: Flower's FedAvg wants exactly one MetricRecord (the training metrics) per answer
        records["evaluation"] = ConfigRecord(_evaluate(cfg, data, model, context))
    # one training at a time per hospital: two at once (Flower's simulation engine can) would each read
    # the same ledger, and one round's spending would go unrecorded
    ledger_path = manifest(context).with_name(f"{hospital}.privacy.json")
    with privacy.ledger_lock(ledger_path):
        dp, ledger = None, None
        if cfg.privacy.name == "dp":
            ledger = privacy.Ledger.open(ledger_path)
            dp = privacy.plan(cfg.privacy, cfg.federation, len(samples),
                              max_epsilon=rules.max_epsilon if capped else None, sigma=ledger.noise_multiplier,
                              max_delta=rules.max_delta)
            refusal = ledger.refusal(dp, server_round)
            if refusal:
                records["privacy"] = ConfigRecord(ledger.report(dp, secure))
                if secure:
                    records |= secure_aggregation.decline(msg, context)
                return _reply(msg, hospital, {}, records, declined=refusal)
        device = resolve_device(cfg.device)
        start = time.perf_counter()
        # augmentation and shuffling are seeded (reproducible); under DP sampling, noise and augmentation are secret
        view = local_training_view(model, samples, cfg.data, int(cfg.federation.batch_size),
                                   int(cfg.seed) + server_round, device, features_cache(context))
        loss, steps = train_epochs(
            view.module, view.loader, int(cfg.federation.local_epochs), float(cfg.federation.lr), device,
            proximal_mu=float(msg.content["config"].get("proximal-mu", 0.0)),
            dp=dp, grad_sample_mode=str(cfg.privacy.get("grad_sample_mode", "auto")),
            optimizer=str(cfg.federation.optimizer), momentum=float(cfg.federation.momentum), augment=view.augment,
            precision=str(cfg.federation.precision),
        )
        metrics = {"train_loss": loss, "num-examples": len(samples), "train_seconds": time.perf_counter() - start}
        _log_training(manifest(context).with_name(f"{hospital}.training.jsonl"), server_round, metrics, steps)
        if ledger is not None:
            ledger.spend(dp, server_round, steps)
            records["privacy"] = ConfigRecord(ledger.report(dp, secure))
        trained = to_record(model)
        if secure:  # only the masked sum may tell the server anything about the training data: no metrics
            update = flatten(trained) - flatten(msg.content["arrays"])
            records |= secure_aggregation.contribute(msg, context, update, len(samples))
            metrics = {}
        else:
            records["arrays"] = trained
            if dp is not None:  # the loss and the time are not noised: they stay in the hospital's training log
                metrics = {"num-examples": len(samples)}
        return _reply(msg, hospital, metrics, records)


def _log_training(path: Path, server_round: int, metrics: dict, steps: int) -> None:
    """The hospital's own record of each round it trained (loss, time, images, steps); it stays at the hospital."""
    with open(path, "a") as log:
        log.write(json.dumps({"round": server_round, "steps": steps, **metrics}) + "\n")


def flatten(metrics: dict) -> dict:
    """classification_metrics as a flat MetricRecord: `auc.<class>`, NaN for undefined."""
    flat = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{c}": (math.nan if v is None else v) for c, v in value.items()})
        elif key == "confusion_matrix":
            flat[key] = [int(n) for row in value for n in row]
        elif key == "num_examples":
            flat["num-examples"] = value
        else:
            flat[key] = math.nan if value is None else value
    return flat


def features_cache(context: Context) -> Path:
    """Where this hospital caches a fixed front end's features: beside its manifest, on its own disk."""
    return manifest(context).parent / "features"


def _evaluate(cfg, data: Federation, model, context: Context) -> dict:
    """The received model on this hospital's own test split."""
    from src.training.loops import predict_samples, resolve_device
    from src.metrics import classification_metrics

    labels, probs = predict_samples(model, data.select(split="test"), cfg.data, int(cfg.federation.batch_size),
                                    resolve_device(cfg.device), cache_dir=features_cache(context))
    return flatten(classification_metrics(labels, probs, data.classes))


@app.evaluate()
@keeps_its_reasons
def evaluate_model(msg: Message, context: Context) -> Message:
    """The last round's model (earlier ones are evaluated at the start of the next train message)."""
    _share_cpu(context)
    data = hospital_data(context)
    cfg = run_config(context)
    too_large = policy(context).image_size_refusal(int(cfg.data.image_size))
    if too_large:
        raise PolicyRefusal(too_large)
    return _reply(msg, data.hospitals[0], _evaluate(cfg, data, _model(cfg, data.classes, msg, context), context))
