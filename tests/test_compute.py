"""The compute choice: params.yaml's named mode, the BOWFLOW_COMPUTE override, candidates
from CPU flags (bf16 only when asked: the automatic choice is fp32), the per-machine cache
round-trip, a bounded measurement, and what training records.
No timing is asserted: measurements are replaced or only counted."""

from __future__ import annotations

import json

import pytest
import torch

from bowflow import compute
from bowflow.networks import build_backbone

AVX2 = {"fpu", "sse2", "avx", "avx2", "fma", "f16c"}  # this kind of EPYC
AMX = AVX2 | {"avx512f", "avx512_bf16", "amx_tile", "amx_bf16"}  # a Sapphire Rapids
CPUINFO = (
    "processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse2 avx avx2 fma\n\n"
    "processor\t: 1\nflags\t\t: fpu sse2 avx avx2 fma\n"
)


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("BOWFLOW_CACHE", str(tmp_path))
    monkeypatch.delenv(compute.ENV_OVERRIDE, raising=False)
    return tmp_path


def fake_measure(speeds: dict[str, float], calls: list):
    """A `measure` replacement: seconds per step from {describe(mode): images/s}."""

    def measure(modes, **kwargs):
        calls.append([compute.describe(m) for m in modes])
        return {"seconds": [1.0 / speeds.get(compute.describe(m), 1.0) for m in modes], "rounds": 3, "elapsed_s": 0.1}

    return measure


def test_cpu_flags_parsed_from_cpuinfo():
    assert compute.cpu_flags(CPUINFO) == {"fpu", "sse2", "avx", "avx2", "fma"}
    assert compute.cpu_flags("model name : x\n") == set()
    assert compute.relevant_flags(AMX) == ["avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"]


def test_candidates_follow_the_flags():
    avx2 = compute.candidates(AVX2, default_threads=2)
    assert [compute.describe(m) for m in avx2] == ["fp32", "fp32-channels-last", "fp32-t1", "fp32-channels-last-t1"]
    assert not any(m["bf16"] or m["compile"] for m in avx2)
    amx = [compute.describe(m) for m in compute.candidates(AMX, default_threads=2)]
    assert amx[0] == "fp32" and "bf16-channels-last" in amx and "bf16-channels-last-t1" in amx
    assert len(amx) == 8
    only_avx512_bf16 = compute.candidates({"avx2", "avx512f", "avx512_bf16"}, default_threads=1)
    assert [compute.describe(m) for m in only_avx512_bf16] == [
        "fp32",
        "fp32-channels-last",
        "bf16",
        "bf16-channels-last",
    ]  # one thread: no -t1


@pytest.mark.parametrize("flags", [AMX, {"avx2", "avx512f", "avx512_bf16"}, AVX2])
def test_candidates_without_bf16_are_fp32_even_where_native(flags):
    """The automatic choice's candidates (bf16=False): the fp32 modes alone, whatever the CPU."""
    modes = compute.candidates(flags, default_threads=2, bf16=False)
    assert [compute.describe(m) for m in modes] == ["fp32", "fp32-channels-last", "fp32-t1", "fp32-channels-last-t1"]


def test_pick_needs_a_clear_gain():
    modes = compute.candidates(AVX2, default_threads=2)
    choice, gain = compute.pick(modes, [1.0, 0.98, 1.2, 1.1])  # 2% faster: noise
    assert choice == compute.DEFAULT_CPU and gain == 1.0
    choice, gain = compute.pick(modes, [1.0, 0.8, 1.2, 1.1])
    assert compute.describe(choice) == "fp32-channels-last" and gain == pytest.approx(1.25)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("fp32", {"bf16": False, "channels_last": False, "threads": 0, "compile": False}),
        ("fp32-channels-last", {"bf16": False, "channels_last": True, "threads": 0, "compile": False}),
        ("BF16-channels-last-t1", {"bf16": True, "channels_last": True, "threads": 1, "compile": False}),
        ("fp32-channels-last-compile", {"bf16": False, "channels_last": True, "threads": 0, "compile": True}),
        ("default", compute.DEFAULT_CPU),
        ("auto", None),
        ("", None),
        ("measure", "measure"),
    ],
)
def test_parse_override(text, expected):
    assert compute.parse_override(text) == expected
    if isinstance(expected, dict) and text != "default":
        assert compute.describe(expected) == text.lower()


@pytest.mark.parametrize("text", ["fp16", "bf16-channels_last", "fp32-t", "fastest"])
def test_parse_override_rejects_nonsense(text):
    with pytest.raises(ValueError, match="BOWFLOW_COMPUTE"):
        compute.parse_override(text)


def test_override_wins_everywhere(cache_dir, monkeypatch):
    compute.save_choice({"bf16": True, "channels_last": True, "threads": 0})
    monkeypatch.setenv(compute.ENV_OVERRIDE, "fp32-t1")
    for device in ("cpu", "cuda"):
        decision = compute.decide_compute(torch.device(device))
        assert decision.source == "override"
        assert decision.choice == {"bf16": False, "channels_last": False, "threads": 1, "compile": False}
    monkeypatch.setenv(compute.ENV_OVERRIDE, "bf16-fast")
    with pytest.raises(ValueError):
        compute.decide_compute(torch.device("cpu"))


def test_gpu_needs_no_measurement(cache_dir, monkeypatch):
    monkeypatch.setattr(compute, "measure", lambda *a, **k: pytest.fail("measured on a GPU"))
    decision = compute.decide_compute(torch.device("cuda"))
    assert decision.source == "gpu" and decision.choice == compute.GPU
    # automatic on a GPU: fp32 + channels-last (bf16 is opt-in there too)
    assert decision.choice == {"bf16": False, "channels_last": True, "threads": 0, "compile": False}
    assert compute.BF16_PRECISION not in decision.reason


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_a_named_mode_in_params_is_used_as_it_is(cache_dir, monkeypatch, device):
    """params.yaml's `compute: fp32-channels-last-t1` (the training stages' --compute) wins
    over BOWFLOW_COMPUTE, a cache and the GPU default; nothing is measured."""
    monkeypatch.setattr(compute, "measure", lambda *a, **k: pytest.fail("measured a named mode"))
    compute.save_choice({"bf16": False, "channels_last": False, "threads": 0})
    monkeypatch.setenv(compute.ENV_OVERRIDE, "default")
    decision = compute.decide_compute(torch.device(device), "fp32-channels-last-t1")
    assert decision.source == "params" and "fp32-channels-last-t1" in decision.reason
    assert decision.choice == {"bf16": False, "channels_last": True, "threads": 1, "compile": False}
    assert compute.select_compute(torch.device(device), "fp32-channels-last-t1") == decision.choice
    opted_in = compute.decide_compute(torch.device(device), "bf16-channels-last")
    assert opted_in.source == "params" and opted_in.choice["bf16"]
    # auto: on to the override
    assert compute.decide_compute(torch.device(device), "auto").source == "override"


@pytest.mark.parametrize("mode", ["fp16", "fastest", "fp32-t"])
def test_a_bad_mode_in_params_is_refused(cache_dir, mode):
    with pytest.raises(ValueError, match="expected auto, measure, default"):
        compute.decide_compute(torch.device("cpu"), mode)


def test_mode_measure_in_params_measures_again(cache_dir, monkeypatch):
    calls = []
    monkeypatch.setattr(compute, "cpu_flags", lambda: set(AVX2))
    monkeypatch.setattr(compute, "measure", fake_measure({"fp32-t1": 200}, calls))
    compute.save_choice({"bf16": False, "channels_last": True, "threads": 0})
    decision = compute.decide_compute(torch.device("cpu"), "measure")
    assert decision.source == "measured" and compute.describe(decision.choice) == "fp32-t1"
    assert len(calls) == 1 and compute.load_choice() == decision.choice


def test_first_use_measures_saves_then_reads_the_cache(cache_dir, monkeypatch):
    calls = []
    monkeypatch.setattr(compute, "cpu_flags", lambda: set(AVX2))
    monkeypatch.setattr(compute, "measure", fake_measure({"fp32": 100, "fp32-channels-last": 130}, calls))
    first = compute.decide_compute(torch.device("cpu"))
    assert first.source == "measured" and compute.describe(first.choice) == "fp32-channels-last"
    assert first.cpu_flags == ["avx2", "fma"] and "fp32 only" in first.reason
    assert len(calls) == 1 and not any("bf16" in name for name in calls[0])
    record = json.loads(compute.cache_path().read_text())
    assert record["choice"] == first.choice and record["source"] == "measured"
    assert record["cpu_flags"] == ["avx2", "fma"] and len(record["loadavg"]) == 3

    again = compute.decide_compute(torch.device("cpu"))
    assert again.source == "cache" and again.choice == first.choice and len(calls) == 1
    assert compute.select_compute(torch.device("cpu")) == first.choice

    monkeypatch.setenv(compute.ENV_OVERRIDE, "measure")  # forced re-measurement
    assert compute.decide_compute(torch.device("cpu")).source == "measured" and len(calls) == 2


def test_bf16_candidates_only_where_native(cache_dir, monkeypatch):
    """Asked for bf16 (measure_and_save(bf16=True)), a CPU with native bf16 measures it."""
    calls = []
    monkeypatch.setattr(compute, "measure", fake_measure({"fp32": 100, "bf16-channels-last": 250}, calls))
    decision = compute.measure_and_save(AMX, bf16=True)
    assert compute.describe(decision.choice) == "bf16-channels-last"
    assert any(name.startswith("bf16") for name in calls[0])
    assert "amx_bf16" in decision.cpu_flags and "native bf16" in decision.reason
    compute.measure_and_save(AVX2, bf16=True)  # asked, but not native
    assert not any(name.startswith("bf16") for name in calls[1])


def test_auto_never_picks_bf16_even_where_native(cache_dir, monkeypatch):
    """On a CPU with avx512_bf16/AMX where bf16 would measure fastest, the automatic choice
    measures fp32 modes only and picks the fastest of them."""
    calls = []
    monkeypatch.setattr(compute, "cpu_flags", lambda: set(AMX))
    monkeypatch.setattr(
        compute,
        "measure",
        fake_measure({"fp32": 100, "fp32-channels-last": 130, "bf16": 300, "bf16-channels-last": 400}, calls),
    )
    decision = compute.decide_compute(torch.device("cpu"))
    assert decision.source == "measured" and compute.describe(decision.choice) == "fp32-channels-last"
    assert len(calls) == 1 and not any("bf16" in name for name in calls[0])
    assert "fp32 only: bf16 is opt-in" in decision.reason
    assert "avx512_bf16" in decision.cpu_flags and compute.BF16_PRECISION not in decision.reason


def test_a_cached_bf16_choice_is_not_used_by_auto(cache_dir, monkeypatch):
    """A bf16 cache (bench_compute --save, or written before bf16 was opt-in) is measured
    over: auto picks an fp32 mode and replaces the cache."""
    calls = []
    monkeypatch.setattr(compute, "cpu_flags", lambda: set(AMX))
    monkeypatch.setattr(compute, "measure", fake_measure({"fp32": 100, "fp32-channels-last": 130}, calls))
    compute.save_choice({"bf16": True, "channels_last": True, "threads": 0})
    decision = compute.decide_compute(torch.device("cpu"))
    assert decision.source == "measured" and not decision.choice["bf16"] and len(calls) == 1
    assert compute.load_choice() == decision.choice  # the cache is fp32 now
    assert compute.decide_compute(torch.device("cpu")).source == "cache" and len(calls) == 1


def test_broken_or_old_cache(cache_dir, monkeypatch):
    calls = []
    monkeypatch.setattr(compute, "measure", fake_measure({}, calls))
    compute.cache_path().parent.mkdir(parents=True, exist_ok=True)
    compute.cache_path().write_text("{not json")
    assert compute.load_choice() is None
    assert compute.decide_compute(torch.device("cpu")).source == "measured"  # and overwrote it
    compute.cache_path().write_text(json.dumps({"choice": {"bf16": "yes"}}))
    assert compute.load_choice() is None
    # a cache written before `compile` existed (bench_compute --save of earlier versions)
    compute.cache_path().write_text(json.dumps({"choice": {"bf16": True, "channels_last": True, "threads": 0}}))
    assert compute.load_choice() == {"bf16": True, "channels_last": True, "threads": 0, "compile": False}
    with pytest.raises(ValueError):
        compute.save_choice({"bf16": True})


def test_unwritable_cache_still_decides(monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("BOWFLOW_CACHE", str(blocker / "sub"))  # a folder under a file
    monkeypatch.delenv(compute.ENV_OVERRIDE, raising=False)
    monkeypatch.setattr(compute, "measure", fake_measure({}, []))
    decision = compute.decide_compute(torch.device("cpu"))
    assert decision.source == "measured" and "not saved" in decision.reason


def test_measurement_is_bounded_by_rounds_and_budget():
    modes = compute.candidates(AVX2, default_threads=max(2, torch.get_num_threads()))[:2]
    threads = torch.get_num_threads()
    ticks = iter(range(10**6))  # a fake clock: every reading is 1 s later
    result = compute.measure(
        modes, budget_s=8.0, max_rounds=50, width=4, size=8, batch=2, clock=lambda: float(next(ticks))
    )
    assert 1 <= result["rounds"] < 50  # stopped by the budget, not the round cap
    assert len(result["seconds"]) == 2 and all(s > 0 for s in result["seconds"])
    result = compute.measure(modes, budget_s=1e9, max_rounds=2, width=4, size=8, batch=2)
    assert result["rounds"] == 2  # stopped by the round cap
    assert torch.get_num_threads() == threads


def test_compile_in_place_keeps_state_dict_keys():
    plain, compiled = build_backbone("convnet", 4), build_backbone("convnet", 4)
    compiled.compile()  # lazy: nothing is compiled until called
    assert list(compiled.state_dict()) == list(plain.state_dict())
    plain.load_state_dict(compiled.state_dict())


def test_decision_record_for_metrics():
    decision = compute.Decision(dict(compute.DEFAULT_CPU), "override", "BOWFLOW_COMPUTE=default", ["avx2"])
    assert decision.record() == {
        "compute": compute.DEFAULT_CPU,
        "compute_source": "override",
        "compute_reason": "BOWFLOW_COMPUTE=default",
        "cpu_flags": ["avx2"],
    }


def test_measurement_skips_what_the_deadline_does_not_reach():
    modes = compute.candidates(AVX2, default_threads=max(2, torch.get_num_threads()))
    ticks = iter(range(10**6))  # 1 s per clock reading: warm-up 1 s each
    result = compute.measure(
        modes, budget_s=1.0, max_rounds=50, width=4, size=8, batch=2, clock=lambda: float(next(ticks))
    )
    assert result["skipped"] == [1, 2, 3] and result["rounds"] == 0  # warm-ups used it
    assert result["seconds"][0] == 1.0 and all(s == float("inf") for s in result["seconds"][1:])
    choice, gain = compute.pick(modes, result["seconds"])
    assert choice == compute.DEFAULT_CPU and gain == 1.0


def test_an_incomplete_measurement_is_used_but_not_saved(cache_dir, monkeypatch):
    def measure(modes, **kwargs):
        return {
            "seconds": [1.0] + [float("inf")] * (len(modes) - 1),
            "rounds": 1,
            "elapsed_s": 12.0,
            "skipped": list(range(1, len(modes))),
            "warmup_only": [],
        }

    monkeypatch.setattr(compute, "measure", measure)
    decision = compute.decide_compute(torch.device("cpu"))
    assert decision.source == "measured" and decision.choice == compute.DEFAULT_CPU
    assert "not saved" in decision.reason and not compute.cache_path().exists()


def test_a_bf16_choice_says_what_stays_float32(cache_dir, monkeypatch):
    """Wherever bf16 is chosen (params, override, an opted-in measurement; on a CPU or a
    GPU), the logged and recorded reason names what stays float32 and where its accuracy
    cost is recorded; fp32 does not."""
    monkeypatch.setattr(compute, "cpu_flags", lambda: set(AMX))
    monkeypatch.setattr(compute, "measure", fake_measure({"fp32": 100, "bf16-channels-last": 250}, []))
    params_cpu = compute.decide_compute(torch.device("cpu"), "bf16-channels-last")
    params_gpu = compute.decide_compute(torch.device("cuda"), "bf16-channels-last")
    monkeypatch.setenv(compute.ENV_OVERRIDE, "bf16")
    override = compute.decide_compute(torch.device("cuda"))
    assert (params_cpu.source, params_gpu.source, override.source) == ("params", "params", "override")
    for decision in (params_cpu, params_gpu, override):
        assert decision.choice["bf16"] and decision.reason.endswith(compute.BF16_PRECISION)
    assert "docs/precision.md" in compute.BF16_PRECISION
    monkeypatch.setenv(compute.ENV_OVERRIDE, "default")
    assert "float32" not in compute.decide_compute(torch.device("cpu")).reason
    assert "float32" not in compute.decide_compute(torch.device("cpu"), "fp32-channels-last-t1").reason
