"""The periodically asynchronous pipeline (docs/pipeline.md): a rollout worker process behind the
RolloutEngine protocol (remote.py, worker.py, messages.py) and the per-iteration overlap metrics (timeline.py).
The schedule itself is `Controller._rollout_and_train`."""
