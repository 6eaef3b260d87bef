"""How a training step runs on the device at hand: bf16 autocast, channels-last, threads, compile.

A compute choice is the dict `{"bf16": bool, "channels_last": bool, "threads": int,
"compile": bool}`; threads 0 means "leave torch's default" (one per physical core, see
`bowflow.runtime.configure_threads`), compile means `backbone.compile()` (inductor) before
training. The mode of record is params.yaml's `compute:`, which the training stages get as
`--compute` (so DVC reruns them when it changes, and each stage records what it resolved
to). `decide_compute(device, mode)` returns the choice with how it was decided, in this order:

0. params: a named mode (`fp32-channels-last-t1`, `bf16-channels-last`, ...) is used as it is.
   The rest applies to `compute: auto`.
1. override: the environment variable `BOWFLOW_COMPUTE` pins a mode (tests do this):
   `default` (eager fp32, torch's threads), `auto` or unset (go on to 2-4), `measure`
   (ignore the cache: measure again and overwrite it), or
   `<fp32|bf16>[-channels-last][-compile][-t<threads>]`, e.g. `fp32-channels-last`,
   `bf16-channels-last-t1`.
2. gpu: on CUDA, fp32 + channels-last (bf16 is opt-in everywhere, see Precision).
3. cache: on a CPU, the per-machine file `cache_path()` written by an earlier
   measurement (or by `python -m benchmarks.bench_compute --save`).
4. measured: no cache yet. The automatic choice measures fp32 modes only (bf16 is
   opt-in). `benchmarks/bench_compute` also measures bf16, and only with `amx_bf16` or
   `avx512_bf16` (elsewhere bf16 is emulated in fp32 registers with extra conversions and
   is slower than fp32). Then every candidate
   (precision x layout x thread count) trains a small convnet for a few steps, interleaved
   round by round, within `MEASURE_BUDGET_S` (see `measure` for the deadlines); the
   fastest by median step time wins if it beats eager fp32 by `MIN_GAIN`, else eager
   fp32 stays. The result is saved to the cache unless time ran out before every
   candidate was measured (then the next stage measures again).

Precision: a bf16 choice runs each training step under `torch.autocast(bfloat16)`
(`bowflow.train.autocast_context`): convolutions and linear layers in bf16; every loss,
softmax/log-softmax target, BoW code, EMA/queue/centre update, BatchNorm statistic and
the evaluate stage's features in float32 (`BF16_PRECISION`, checked by
tests/test_precision.py; the op-by-op list is docs/precision.md). Why it is opt-in: on a
CPU with native bf16 (AVX-512 bf16) the default digits pipeline at 5 seeds, bf16 against
fp32 paired by seed (docs/BENCHMARKS.md section 14), shifted no accuracy one way (every
run and metric mixed in sign, mean differences -2.8 to +1.4), but a single training moved by up
to 6.8 points 5-shot between the two modes: a bf16 run is another training, not the fp32
one faster. fp32 runs on every machine, so it is the mode of record; a bf16 result names
its mode in params.yaml.

`compile` is never measured here (inductor needs 14-94 s for the convnet's forward +
backward on a 2-core CPU, beyond the budget of a decision) and the automatic choice
leaves it off: on the AVX2-only machine of docs/BENCHMARKS.md (section 8) it gained
less than channels-last alone and nothing on top of it. `BOWFLOW_COMPUTE=...-compile`
turns it on (or `compute: fp32-channels-last-compile` in params.yaml).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import re
import socket
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import torch

from bowflow.io import write_json

DEFAULT_CPU = {"bf16": False, "channels_last": False, "threads": 0, "compile": False}
GPU = {"bf16": False, "channels_last": True, "threads": 0, "compile": False}
KEYS = tuple(DEFAULT_CPU)

# CPU flags that decide the candidates; the metrics record which of them the CPU has.
BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # native bf16 dot products
RELEVANT_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")

# The measurement: a convnet of the CIFAR preset's width at 32 px (the layers training
# runs), batch 8 so that one step stays near 0.05 s on a 2-core AVX2 CPU (0.8 s at
# 2 threads when other jobs load it to 9: a decision then took 11.5 s with batch 16).
MEASURE_WIDTH = 32  # convnet stage-1 channels (as presets/cifar10-cpu.yaml)
MEASURE_SIZE = 32  # pixels
MEASURE_BATCH = 8  # images per step
MEASURE_BUDGET_S = 5.0  # seconds in all (building, warm-up, rounds); one round may overrun
MEASURE_MAX_ROUNDS = 5  # timed steps per candidate at most (median of these)
MIN_GAIN = 0.05  # another mode must be 5% faster than eager fp32 to be chosen

# Logged with (and recorded in the reason of) every choice with bf16: what stays float32.
BF16_PRECISION = (
    "bf16 autocast: convs/linears in bf16; losses, softmax targets, BoW codes, "
    "EMA updates, BatchNorm statistics and eval features in float32; no accuracy "
    "cost beyond seed noise measured (docs/precision.md)"
)

ENV_OVERRIDE = "BOWFLOW_COMPUTE"
_OVERRIDE = re.compile(r"^(fp32|bf16)(-channels-last)?(-compile)?(?:-t(\d+))?$")


# ---------------------------------------------------------------------------- the machine
def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, else what `platform` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU's feature flags (the first `flags` line of /proc/cpuinfo; empty elsewhere)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def relevant_flags(flags: set[str]) -> list[str]:
    """The flags among RELEVANT_FLAGS the CPU has, in that order (recorded in metrics)."""
    return [f for f in RELEVANT_FLAGS if f in flags]


def bf16_native(flags: set[str]) -> bool:
    """True when the CPU has native bf16 arithmetic (AMX or AVX512-BF16)."""
    return any(f in flags for f in BF16_FLAGS)


def machine_key() -> str:
    """A short hash of hostname and CPU model: one cache file per machine."""
    raw = f"{socket.gethostname()}|{cpu_model()}"
    return hashlib.sha256(raw.encode()).hexdigest()[:12]


def cache_path() -> Path:
    """`$BOWFLOW_CACHE/compute-<key>.json`, `$BOWFLOW_CACHE` defaulting to ~/.cache/bowflow."""
    folder = os.environ.get("BOWFLOW_CACHE") or Path.home() / ".cache" / "bowflow"
    return Path(folder) / f"compute-{machine_key()}.json"


# --------------------------------------------------------------------------- the choice
def _normalise(choice) -> dict | None:
    """A well-formed choice with every key (compile defaults to False: caches written
    before it existed), or None."""
    if not isinstance(choice, dict):
        return None
    out = {"compile": False, **{k: choice[k] for k in KEYS if k in choice}}
    ok = (
        all(isinstance(out.get(k), bool) for k in ("bf16", "channels_last", "compile"))
        and isinstance(out.get("threads"), int)
        and not isinstance(out["threads"], bool)
        and out["threads"] >= 0
    )
    return out if ok else None


def describe(choice: dict) -> str:
    """{"bf16": False, "channels_last": True, "threads": 1, ...} -> 'fp32-channels-last-t1'
    (the BOWFLOW_COMPUTE spelling; 'default' threads are omitted)."""
    text = "bf16" if choice["bf16"] else "fp32"
    text += "-channels-last" if choice["channels_last"] else ""
    text += "-compile" if choice.get("compile") else ""
    return text + (f"-t{choice['threads']}" if choice["threads"] else "")


def parse_mode(text: str) -> dict | str | None:
    """A compute mode (params.yaml's `compute:`, or BOWFLOW_COMPUTE) -> a choice dict,
    'measure', or None ('auto' or empty: decide on this machine).

    Raises ValueError naming the accepted forms for anything else.
    """
    value = str(text).strip().lower()
    if value in ("", "auto"):
        return None
    if value == "measure":
        return "measure"
    if value == "default":
        return dict(DEFAULT_CPU)
    match = _OVERRIDE.match(value)
    if not match:
        raise ValueError(
            f"{text!r}: expected auto, measure, default or "
            "<fp32|bf16>[-channels-last][-compile][-t<threads>], e.g. fp32-channels-last-t1"
        )
    return {
        "bf16": match[1] == "bf16",
        "channels_last": bool(match[2]),
        "threads": int(match[4] or 0),
        "compile": bool(match[3]),
    }


def parse_override(text: str) -> dict | str | None:
    """BOWFLOW_COMPUTE -> as `parse_mode`; the error names the variable."""
    try:
        return parse_mode(text)
    except ValueError as error:
        raise ValueError(f"{ENV_OVERRIDE}={error}") from None


def save_choice(choice: dict, details: dict | None = None) -> Path:
    """Write the CPU compute choice (plus how it was made) to `cache_path()`."""
    normal = _normalise(choice)
    if normal is None:
        raise ValueError(f"not a compute choice: {choice}")
    path = cache_path()
    record = {
        "choice": normal,
        "cpu_model": cpu_model(),
        "hostname": socket.gethostname(),
        "torch": torch.__version__,
        "saved": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        **(details or {}),
    }
    write_json(path, record)
    return path


def load_record() -> dict | None:
    """The whole cache record (choice + details), or None when absent or malformed."""
    try:
        record = json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or _normalise(record.get("choice")) is None:
        return None
    return record


def load_choice() -> dict | None:
    """The cached CPU choice, or None when there is no (readable, well-formed) cache file."""
    record = load_record()
    return _normalise(record["choice"]) if record else None


# ---------------------------------------------------------------------------- measuring
def candidates(flags: set[str], default_threads: int, bf16: bool = True) -> list[dict]:
    """The modes worth measuring on a CPU with these flags, eager fp32 first.

    fp32 and fp32 + channels-last always; the bf16 pair only with native bf16 (see
    BF16_FLAGS) and `bf16` (the pipeline's automatic choice passes False: bf16 is opt-in,
    docs/precision.md); each at torch's default thread count (0) and, when that is above 1, at
    1 thread (on a loaded 2-core machine two OpenMP threads can wait on each other).
    """
    precisions = [False, True] if bf16 and bf16_native(flags) else [False]
    thread_counts = [0] + ([1] if default_threads > 1 else [])
    return [
        {"bf16": bf16, "channels_last": cl, "threads": threads, "compile": False}
        for threads in thread_counts
        for bf16 in precisions
        for cl in (False, True)
    ]


class _Probe:
    """A small convnet + linear head + SGD, trained on fixed random images in one mode."""

    def __init__(self, choice: dict, width: int, size: int, batch: int, seed: int = 0):
        from bowflow.networks import build_backbone  # here, lazily: compute stays light to import

        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        self.backbone = build_backbone("convnet", width)
        self.head = torch.nn.Linear(self.backbone.out_channels, 4)
        memory_format = torch.channels_last if choice["channels_last"] else torch.contiguous_format
        self.backbone.to(memory_format=memory_format)
        self.x = torch.randn(batch, 3, size, size, generator=gen).contiguous(
            memory_format=memory_format
        )  # [B, 3, S, S]
        self.y = torch.randint(0, 4, (batch,), generator=gen)  # [B]
        params = list(self.backbone.parameters()) + list(self.head.parameters())
        self.optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9)
        self.choice = choice

    def step(self) -> None:
        if self.choice["bf16"]:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = torch.nn.functional.cross_entropy(self.head(self.backbone(self.x)), self.y)
        else:
            loss = torch.nn.functional.cross_entropy(self.head(self.backbone(self.x)), self.y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


def measure(
    modes: list[dict],
    budget_s: float = MEASURE_BUDGET_S,
    max_rounds: int = MEASURE_MAX_ROUNDS,
    width: int = MEASURE_WIDTH,
    size: int = MEASURE_SIZE,
    batch: int = MEASURE_BATCH,
    clock: Callable[[], float] = time.perf_counter,
) -> dict:
    """Median seconds per training step of each mode, interleaved A/B/C/A/B/C...

    1. Warm-up: one timed step per mode (oneDNN builds its kernels), in order; modes not
       reached within 2 x `budget_s` of the start are skipped (the first, the baseline,
       always runs).
    2. Rounds of one timed step per contender (a mode whose warm-up step was at most 4x
       the fastest warm-up: a slower one cannot win, and under heavy load a 2-thread step
       can take seconds) until `budget_s` have passed since the start (checked after each
       round; no round at all when the warm-ups used the budget) or after `max_rounds`. Within a round the modes run
       grouped by thread count; after a change of thread count one untimed step spins the
       new OpenMP team up (else the first mode timed after the switch pays for it: 4x
       slower in a first version of this loop).
    A mode's figure is its median round, or its warm-up step when it had no round, or
    inf when skipped. Restores torch's thread count. Returns {"seconds": [per mode],
    "rounds": int, "elapsed_s": float, "skipped": [indices], "warmup_only": [indices]}.
    """
    threads_before = torch.get_num_threads()
    start = clock()
    try:
        probes: list[_Probe] = []
        warm: list[float] = []
        for mode in modes:
            if probes and clock() - start >= 2 * budget_s:
                break
            torch.set_num_threads(mode["threads"] or threads_before)
            probe = _Probe(mode, width, size, batch)
            t0 = clock()
            probe.step()  # warm-up
            warm.append(clock() - t0)
            probes.append(probe)
        contenders = [i for i, w in enumerate(warm) if w <= 4 * min(warm)]
        groups: dict[int, list[int]] = {}
        for i in contenders:
            groups.setdefault(modes[i]["threads"] or threads_before, []).append(i)
        times: list[list[float]] = [[] for _ in modes]
        rounds = 0
        if clock() - start >= budget_s:  # the warm-ups used the budget: no rounds
            max_rounds = 0
        while rounds < max_rounds:
            for threads, members in groups.items():
                torch.set_num_threads(threads)
                if len(groups) > 1:
                    probes[members[0]].step()  # spin-up, untimed
                for i in members:
                    t0 = clock()
                    probes[i].step()
                    times[i].append(clock() - t0)
            rounds += 1
            if clock() - start >= budget_s:
                break
    finally:
        torch.set_num_threads(threads_before)
    seconds = [
        statistics.median(times[i]) if times[i] else warm[i] if i < len(warm) else math.inf for i in range(len(modes))
    ]
    return {
        "seconds": seconds,
        "rounds": rounds,
        "elapsed_s": round(clock() - start, 3),
        "skipped": list(range(len(warm), len(modes))),
        "warmup_only": [i for i in range(len(warm)) if i not in contenders],
    }


def pick(modes: list[dict], seconds: list[float], min_gain: float = MIN_GAIN) -> tuple[dict, float]:
    """-> (the fastest mode, its speed-up over modes[0]); modes[0] unless the fastest
    beats it by `min_gain` (so measurement noise does not flip the choice)."""
    best = min(range(len(modes)), key=lambda i: seconds[i])
    gain = seconds[0] / seconds[best]
    if gain < 1.0 + min_gain:
        return dict(modes[0]), 1.0
    return dict(modes[best]), gain


@dataclass
class Decision:
    """A compute choice and how it was made (for the log and the training metrics)."""

    choice: dict
    source: str  # override | gpu | cache | measured
    reason: str
    cpu_flags: list[str] = field(default_factory=list)

    def record(self) -> dict:
        """The metrics fields: compute, compute_source, compute_reason, cpu_flags."""
        return {
            "compute": dict(self.choice),
            "compute_source": self.source,
            "compute_reason": self.reason,
            "cpu_flags": list(self.cpu_flags),
        }


def measure_and_save(flags: set[str], budget_s: float = MEASURE_BUDGET_S, bf16: bool = False) -> Decision:
    """Measure the candidates for this CPU (fp32 only unless `bf16`), save the winner to
    the cache, return it."""
    default_threads = torch.get_num_threads()
    modes = candidates(flags, default_threads, bf16=bf16)
    result = measure(modes, budget_s=budget_s)
    best, gain = pick(modes, result["seconds"])
    names = [describe(m) for m in modes]
    rates = {n: round(MEASURE_BATCH / s, 1) for n, s in zip(names, result["seconds"])}
    notes = "".join(
        f"; {names[i]} {what}"
        for key, what in (("warmup_only", "slow at warm-up, not in the rounds"), ("skipped", "skipped: time up"))
        for i in result.get(key, [])
    )
    native = (
        "fp32 only: bf16 is opt-in"
        if not bf16
        else "native bf16 (" + ", ".join(f for f in BF16_FLAGS if f in flags) + ")"
        if bf16_native(flags)
        else "no amx_bf16/avx512_bf16: fp32 only"
    )
    reason = (
        f"measured {len(modes)} modes ({native}; {result['rounds']} rounds, "
        f"{result['elapsed_s']:.1f} s, load {os.getloadavg()[0]:.1f}): images/s "
        + ", ".join(f"{n} {r}" for n, r in rates.items())
        + notes
        + f"; {describe(best)} x{gain:.2f} over eager fp32"
    )
    details = {
        "source": "measured",
        "reason": reason,
        "cpu_flags": relevant_flags(flags),
        "default_threads": default_threads,
        "loadavg": list(os.getloadavg()),
        "measurement": {
            "images_per_s": rates,
            "rounds": result["rounds"],
            "elapsed_s": result["elapsed_s"],
            "width": MEASURE_WIDTH,
            "size": MEASURE_SIZE,
            "batch": MEASURE_BATCH,
        },
    }
    if result.get("skipped"):  # incomplete: the next stage measures again
        reason += "; not saved (time ran out before every mode was measured)"
    else:
        try:
            path = save_choice(best, details)
            reason += f"; saved to {path}"
        except OSError as error:  # a read-only home must not stop training
            reason += f"; not saved ({error})"
    return Decision(best, "measured", reason, relevant_flags(flags))


def decide_compute(device: torch.device, mode: str = "auto") -> Decision:
    """The compute choice for training on `device`, and how it was decided (logged).

    `mode` is params.yaml's `compute:` (the training stages' --compute): a named mode is
    used as it is (source "params"). `auto` decides here: BOWFLOW_COMPUTE when set (tests
    pin modes with it), fp32 + channels-last on a GPU, else the cached or measured fastest
    fp32 mode of this CPU. The automatic choice never picks bf16: a bf16 training differs
    from the fp32 one of the same seed by up to 6.8 points 5-shot on the default pipeline
    (docs/BENCHMARKS.md section 14), so bf16 runs only when a params file names it.
    """
    from bowflow.runtime import log

    flags = cpu_flags()
    named = parse_mode(mode)
    override = parse_override(os.environ.get(ENV_OVERRIDE, ""))
    if isinstance(named, dict):
        decision = Decision(named, "params", f"compute: {mode}", relevant_flags(flags))
    elif isinstance(override, dict):
        decision = Decision(override, "override", f"{ENV_OVERRIDE}={os.environ[ENV_OVERRIDE]}", relevant_flags(flags))
    elif device.type == "cuda":
        decision = Decision(dict(GPU), "gpu", "CUDA device: fp32 + channels-last", [])
    elif device.type != "cpu":
        decision = Decision(dict(DEFAULT_CPU), "default", f"{device.type}: eager fp32", [])
    else:
        remeasure = "measure" in (named, override)
        record = None if remeasure else load_record()
        # load_record returns only records whose choice is well-formed (_normalise not None)
        if record is not None and not cast(dict, _normalise(record["choice"]))["bf16"]:
            choice = cast(dict, _normalise(record["choice"]))
            made = record.get("source", "bench_compute --save")
            decision = Decision(
                choice,
                "cache",
                f"{cache_path()} ({made} {record.get('saved', '')}, torch {record.get('torch', '?')})".replace(
                    " ,", ","
                ),
                relevant_flags(flags),
            )
        else:  # no cache, or a cached bf16 choice (made before bf16 was opt-in)
            decision = measure_and_save(flags)
    if decision.choice["bf16"]:
        decision.reason += f"; {BF16_PRECISION}"
    log(f"compute: {describe(decision.choice)} [{decision.source}] {decision.reason}")
    return decision


def select_compute(device: torch.device, mode: str = "auto") -> dict:
    """-> the choice dict {"bf16", "channels_last", "threads", "compile"} for `device`
    (see `decide_compute`, which also says how it was decided)."""
    return decide_compute(device, mode).choice
