"""What params.yaml asks of the data that only the prepared images can answer (how many
images each novel class and each run's training set hold). check_params works these out
(`data_needs`) and writes them in its stamp; the prepare stage checks them against the
images it has just read, before writing anything (`bowflow.sections.check_data_needs`), so
a few-shot shape or a batch the data cannot fill stops before any training stage. The stamp
holds only the largest demand per image pool, so an edit that does not change one (a new
run with an ordinary batch, an lr) leaves the stamp, and so the prepare stage, unchanged."""

from __future__ import annotations

from bowflow.paramcheck.runs import Run, walk_runs


def data_needs(checked: dict) -> dict:
    """-> {"few_shot": {way, shots (the largest), queries}, "ssl_batch": {key, size} | None,
    "labelled_batch": {key, size} | None}: the largest batch of each image pool and the
    first key asking for it (params order)."""
    evaluate = checked["evaluate"]
    return {
        "few_shot": {
            "way": evaluate.few_shot_way,
            "shots": max(evaluate.few_shot_shots),
            "queries": evaluate.few_shot_queries,
        },
        "ssl_batch": largest_batch(walk_runs(checked, pool="ssl")),
        "labelled_batch": largest_batch(walk_runs(checked, pool="labelled")),
    }


def largest_batch(runs: list[Run]) -> dict | None:
    """{key, size} of the largest batch_size, the first run asking for it; None if no runs."""
    best = None
    for run in runs:
        if best is None or run.params.batch_size > best["size"]:
            best = {"key": f"{run.key}.batch_size", "size": run.params.batch_size}
    return best
