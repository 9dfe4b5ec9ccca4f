"""The periodically asynchronous pipeline's measurements (docs/pipeline.md): per-iteration overlap metrics and
the timeline (timeline.py). The rollout side itself (worker process, messages, weight-sync transports) lives
in engine/rollout/; the schedule is `Controller._rollout_and_train`."""
