"""The hospital's Flower ClientApp: train on its own images, evaluate on its own test split.

A hospital's images are named by its manifest (its part of the run's `split.json`),
given by the SuperNode's node config (`hospital`, `manifest`) in deployment, or
looked up by partition id in simulation. Decoded images come from the on-disk MONAI
cache, since Flower may start a fresh ClientApp process for every message.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from src.client.training import make_loader, predict, resolve_device, train_epochs
from src.config import from_run_config
from src.data.federation import Federation
from src.metrics import classification_metrics
from src.models.registry import build_model

app = ClientApp()


def hospital_data(context: Context) -> Federation:
    """This hospital's part of the federation."""
    if "manifest" in context.node_config:
        return Federation.load(Path(str(context.node_config["manifest"])))
    run_dir = Path(str(context.run_config["run-dir"]))
    names = Federation.load(run_dir / "split.json").hospitals
    return Federation.load(run_dir / "hospitals" / f"{names[int(context.node_config['partition-id'])]}.json")


def _share_cpu(context: Context) -> None:
    """Hospitals sharing one machine each get their share of its cores (node config `threads`):
    several processes each running torch on all cores slow one another down many times over."""
    if "threads" in context.node_config:
        torch.set_num_threads(int(context.node_config["threads"]))


def _model(cfg, classes: list[str], msg: Message):
    model = build_model(cfg.model, len(classes))
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    return model


def _reply(msg: Message, hospital: str, metrics: dict, arrays: ArrayRecord | None = None) -> Message:
    content = RecordDict({"metrics": MetricRecord(metrics), "hospital": ConfigRecord({"name": hospital})})
    if arrays is not None:
        content["arrays"] = arrays
    return Message(content=content, reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    _share_cpu(context)
    cfg = from_run_config(context.run_config)
    data = hospital_data(context)
    hospital, samples = data.hospitals[0], data.select(split="train")
    server_round = int(msg.content["config"]["server-round"])
    torch.manual_seed(int(cfg.seed) + server_round)
    model = _model(cfg, data.classes, msg)
    loader = make_loader(samples, cfg.data, True, int(cfg.federation.batch_size), int(cfg.seed) + server_round)
    loss = train_epochs(
        model, loader, int(cfg.federation.local_epochs), float(cfg.federation.lr), resolve_device(cfg.device),
        proximal_mu=float(msg.content["config"].get("proximal-mu", 0.0)),
    )
    return _reply(msg, hospital, {"train_loss": loss, "num-examples": len(samples)},
                  ArrayRecord(model.cpu().state_dict()))


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


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    _share_cpu(context)
    cfg = from_run_config(context.run_config)
    data = hospital_data(context)
    samples = data.select(split="test")
    model = _model(cfg, data.classes, msg)
    loader = make_loader(samples, cfg.data, False, int(cfg.federation.batch_size), int(cfg.seed))
    labels, probs = predict(model, loader, resolve_device(cfg.device))
    return _reply(msg, data.hospitals[0], flatten(classification_metrics(labels, probs, data.classes)))
