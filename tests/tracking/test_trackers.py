"""run.loggers end to end: a tiny run's wandb offline run and mlflow store hold what metrics.jsonl holds."""
from __future__ import annotations

import json
import struct

import pytest

from engine import metrics as M
from engine.train import run
from test_controller import small_config

pytestmark = pytest.mark.slow


def metrics_lines(tmp_path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "runs" / "t" / "metrics.jsonl").read_text().splitlines()]


def wandb_records(path) -> list:
    """The protobuf records of a `.wandb` transaction log: LevelDB's log format (32 KiB blocks of chunks, each
    with a 7-byte header: crc32, length, type 1 full / 2 first / 3 middle / 4 last) after a 7-byte file header."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, chunks, records = path.read_bytes(), 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            break
        chunks += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(chunks)
            records.append(record)
            chunks = b""
    return records


def test_a_wandb_offline_run_holds_the_metrics_and_the_config(tiny_model_dir, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    run(small_config(tiny_model_dir, tmp_path, **{"run.loggers": "[wandb]", "run.iterations": 2}))
    (log_file,) = (tmp_path / "runs" / "t" / "wandb").glob("offline-run-*/run-*.wandb")
    records = wandb_records(log_file)
    history = {}
    for record in records:
        if record.WhichOneof("record_type") == "history":
            row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            history[row["_step"]] = row
    lines = metrics_lines(tmp_path)
    assert sorted(history) == [line["iteration"] for line in lines] == [0, 1, 2]
    for line in lines:  # every value of every line, at the line's iteration as wandb's step
        logged = {k: v for k, v in line.items() if k != "iteration" and v is not None}
        assert {k: history[line["iteration"]][k] for k in logged} == pytest.approx(logged, rel=1e-12)
    assert history[2][M.REWARD_MEAN] == lines[2][M.REWARD_MEAN]
    (run_record,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    config = {item.key: json.loads(item.value_json) for item in run_record.config.update}
    assert config["rollout"]["group_size"] == 4 and config["run"]["loggers"] == ["wandb"]
    summary = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            summary.update({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.summary.update})
    assert summary["summary/policy_version"] == 2
    assert not (tmp_path / "runs" / "t" / "tensorboard").exists()  # the list names exactly the loggers


def test_an_mlflow_store_holds_the_metric_history_and_the_config(tiny_model_dir, tmp_path):
    pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")
    from mlflow.tracking import MlflowClient

    run(small_config(tiny_model_dir, tmp_path, **{"run.loggers": "[mlflow]", "run.iterations": 2}))
    run_dir = tmp_path / "runs" / "t"
    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    mlflow_run = client.get_run((run_dir / "mlflow_run_id").read_text().strip())
    lines = metrics_lines(tmp_path)
    for key in (M.REWARD_MEAN, M.LOSS, M.EVAL_ACCURACY):
        history = [(m.step, m.value) for m in client.get_metric_history(mlflow_run.info.run_id, key)]
        assert sorted(history) == [(line["iteration"], pytest.approx(line[key])) for line in lines if key in line]
    assert mlflow_run.data.params["rollout.group_size"] == "4" and mlflow_run.info.status == "FINISHED"
    assert mlflow_run.data.metrics["summary/policy_version"] == 2.0
    assert mlflow_run.info.run_name == "t"
