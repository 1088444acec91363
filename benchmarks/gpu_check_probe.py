"""The probe's parts of benchmarks/gpu_check.py: CUDA parity, probe cost, and --device-map auto."""

from __future__ import annotations

import math
from collections import defaultdict

import torch

import sinkscope
from gpu_check_common import Context, gib, one_line, ratio, timed
from probe_cost import _model
from sinkscope.testing import FAMILIES, save_tiny, tiny_model, twin

PARITY_TOL = 1e-5  # tests/integration/test_capture_parity.py's tolerance on the CPU, held on CUDA too
PARITY_LENGTHS = (16, 11, 14, 7)  # with batches of 3: padding inside the first batch, a lone sequence in the second
PARITY_BATCH = 3
SMOKE_FAMILIES = ("llama", "mistral")  # plain causal and a sliding window: both visibility paths of the reference
COST_SHAPES = ((1, 4096), (1, 32768))  # issue 26: the 12-layer d = 768 llama at these (batch, length)
SMOKE_COST_SHAPES = ((1, 32), (1, 48))
COST_REPEATS = 2  # interleaved, fastest kept, at lengths up to REPEAT_MAX_LEN; longer ones run once
REPEAT_MAX_LEN = 4096
COST_MODES = ("plain", "no_chain", "chain")  # plain forward (no_grad, SDPA), probe --no-chain, probe with the chain
DEVICE_MAP_ARGS = ("--samples", "8", "--seq-len", "32", "--batch-size", "4")  # tiny llama, embedded prompts
# Two runs on one GPU may differ by float32 rounding where a kernel adds atomically in no fixed order; any real
# placement error (a tensor on the wrong device, a hook left out) moves numbers far more than this, relative.
DEVICE_MAP_TOL = 1e-5


# ---------------------------------------------------------------- CUDA parity
def parity(ctx: Context) -> dict:
    """Every family's tiny model probed on ``ctx.device`` in float32 against eager attention on the CPU."""
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 means float32: no TF32 matmuls on the GPU side
    torch.backends.cudnn.allow_tf32 = False
    rows = []
    for family in SMOKE_FAMILIES if ctx.smoke else sorted(FAMILIES):
        try:
            rows.append({"family": family, **_family_parity(family, ctx.device)})
        except Exception as err:  # noqa: BLE001  (one family's failure is that family's row, not the part's end)
            rows.append({"family": family, "error": one_line(err)})
        ctx.record({"tables": {"parity": rows}})
    done = [r for r in rows if "error" not in r]
    worst = max((r["max_abs_diff"] for r in done), default=None)
    return {"tolerance": PARITY_TOL, "max_abs_diff": worst,
            "all_within": len(done) == len(rows) and all(r["within"] for r in done),
            "tables": {"parity": rows},
            "notes": [f"sink score, importance and attention by query position of the first token, probed on "
                      f"{ctx.device} (float32, padded batches of {PARITY_BATCH}) against eager attention on the CPU "
                      f"(float32, one sequence at a time, averaged in float64); within = max |diff| <= {PARITY_TOL}"]}


def _sequences(seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 96, (n,), generator=g).tolist() for n in PARITY_LENGTHS]


def _family_parity(family: str, device: str) -> dict:
    model = tiny_model(family)
    sequences = _sequences()
    want = _eager_first_token(twin(model, "eager"), sequences)
    got = sinkscope.probe(model.to(device), sequences, chain=False, batch_size=PARITY_BATCH, padding_side="right",
                          sink_positions=(0, -1))  # not (0,) alone, which the probe widens to the family's candidates
    score, importance = torch.tensor(got["sink_score_by_key"]["0"]), torch.tensor(got["importance"])
    table = got.tables["attention_by_position"]
    first = table["key"] == 0
    columns = (table[name][first] for name in ("layer", "head", "query_position", "attention"))
    cells = {(int(layer), int(head), int(t)): float(a) for layer, head, t, a in zip(*columns)}
    common = set(cells) & set(want["by_position"])
    diffs = {"score": _max_diff(score, want["score"]), "importance": _max_diff(importance, want["importance"]),
             "by_position": max((abs(cells[c] - want["by_position"][c]) for c in common), default=math.nan)}
    cells_match = len(common) == len(cells) == len(want["by_position"])
    worst = math.nan if any(math.isnan(v) for v in diffs.values()) else max(diffs.values())
    return {**diffs, "max_abs_diff": worst, "cells_match": cells_match, "within": cells_match and worst <= PARITY_TOL}


def _max_diff(got: torch.Tensor, want: torch.Tensor) -> float:
    """Largest |got - want|; a cell undefined on both sides agrees, one undefined on one side only gives NaN."""
    diff = (got.double() - want).abs()
    return float(diff.masked_fill(got.isnan() & want.isnan(), 0).max())


@torch.no_grad()
def _eager_first_token(eager, sequences: list[list[int]]) -> dict:
    """Means of the attention every query gives the first token, from eager's probabilities (L, H, T, S).

    A key is visible where eager's probability is above zero: masked keys get exactly zero, and these tiny
    models keep visible ones far from underflow (test_capture_parity.py checks the two agree). Sink score:
    queries that see the first token and another key; importance: every query that sees it.
    """
    sums, counts = defaultdict(float), defaultdict(int)
    for seq in sequences:
        attentions = eager(input_ids=torch.tensor([seq]), output_attentions=True).attentions
        for layer, attn in enumerate(attentions):
            a = attn[0].double()  # (H, T, S)
            sees = a[:, :, 0] > 0  # (H, T)
            others = (a > 0).sum(-1) > 1  # (H, T)
            for h in range(a.shape[0]):
                for t in range(a.shape[1]):
                    if not sees[h, t]:
                        continue
                    value = float(a[h, t, 0])
                    for key in (("importance", layer, h), ("by_position", layer, h, t)) + \
                               ((("score", layer, h),) if others[h, t] else ()):
                        sums[key] += value
                        counts[key] += 1
    means = {key: sums[key] / counts[key] for key in sums}
    L, H = len(attentions), attentions[0].shape[1]

    def grid(kind: str) -> torch.Tensor:  # (L, H), NaN where no query counted
        return torch.tensor([[means.get((kind, layer, h), math.nan) for h in range(H)] for layer in range(L)],
                            dtype=torch.float64)

    return {"score": grid("score"), "importance": grid("importance"),
            "by_position": {key[1:]: v for key, v in means.items() if key[0] == "by_position"}}


# ---------------------------------------------------------------- probe cost
def probe_cost(ctx: Context) -> dict:
    """Wall time and peak CUDA memory of a plain forward, probe --no-chain and the whole chain, in bf16."""
    shapes = SMOKE_COST_SHAPES if ctx.smoke else COST_SHAPES
    longest = max(t for _, t in shapes)
    model = (tiny_model("llama") if ctx.smoke else _model(longest, "sdpa")).to(ctx.device, torch.bfloat16)
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (max(b for b, _ in shapes), longest), generator=torch.Generator().manual_seed(0))
    runs = {"plain": lambda x: _plain(model, x.to(ctx.device)),
            "no_chain": lambda x: sinkscope.probe(model, x, chain=False, batch_size=len(x)),
            "chain": lambda x: sinkscope.probe(model, x, chain=True, batch_size=len(x))}
    for mode in COST_MODES:  # warm-up: CUDA context, kernel selection, first-call set-up are not the method's cost
        runs[mode](ids[:1, :min(64, longest)])
    rows = []
    for batch, length in shapes:
        x = ids[:batch, :length]
        found: dict[str, dict] = {}
        for _ in range(COST_REPEATS if length <= REPEAT_MAX_LEN else 1):
            for mode in COST_MODES:  # interleaved, so a slow moment hits every mode alike
                seconds, peak = timed(lambda: runs[mode](x), ctx.device)
                best = found.setdefault(mode, {"seconds": math.inf, "peak": peak})
                best["seconds"] = min(best["seconds"], seconds)
                rows = _cost_rows(rows, batch, length, found, ctx)
                ctx.record({"tables": {"cost": rows}})
    result = runs["chain"](ids[:shapes[0][0], :shapes[0][1]])
    saved = timed(lambda: result.save(ctx.work / "probe"), "cpu")[0]
    return {"tables": {"cost": rows}, "model": _describe(model), "dtype": "bfloat16", "save_seconds": saved,
            "notes": [f"ratios are against the plain forward at the same shape; peak = torch.cuda.max_memory_allocated "
                      f"during the run (weights included); best of {COST_REPEATS} interleaved runs up to "
                      f"{REPEAT_MAX_LEN} tokens, one run above",
                      f"ProbeResult.save of the chain's result at {shapes[0][0]} x {shapes[0][1]}: {saved:.2f} s"]}


def _plain(model, ids: torch.Tensor) -> None:
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)


def _cost_rows(rows: list, batch: int, length: int, found: dict, ctx: Context) -> list:
    """The rows of one shape (replacing the shape's earlier rows), each mode against the plain forward."""
    shape = f"{batch} x {length}"
    plain = found.get("plain", {})
    mine = [{"shape": shape, "mode": mode, "seconds": r["seconds"],
             "time_ratio": ratio(r["seconds"], plain.get("seconds")), "peak_gib": ctx.needs_cuda(gib(r["peak"])),
             "memory_ratio": ctx.needs_cuda(ratio(r["peak"], plain.get("peak")))} for mode, r in found.items()]
    return [r for r in rows if r["shape"] != shape] + mine


def _describe(model) -> str:
    c = model.config
    return (f"random-weight llama, {c.num_hidden_layers} layers, d = {c.hidden_size}, {c.num_attention_heads} heads, "
            f"SwiGLU {c.intermediate_size}, vocab {c.vocab_size}")


# ---------------------------------------------------------------- --device-map auto
def device_map(ctx: Context) -> dict:
    """``sinkscope probe --device-map auto`` against ``--device cuda`` on one GPU: the same statistics."""
    import pyarrow.parquet as pq

    from sinkscope.cli import main as cli_main
    from sinkscope.results import read_json

    folder = ctx.work / "tiny-llama"
    save_tiny("llama", folder)
    placements = {"device": ["--device", ctx.device], "device_map": ["--device-map", "auto"]}
    for name, flags in placements.items():
        code = cli_main(["probe", str(folder), *DEVICE_MAP_ARGS, *flags, "--out", str(ctx.work / name)])
        if code:
            raise RuntimeError(f"sinkscope probe {' '.join(flags)} exited with {code}")
    one, other = (read_json(ctx.work / name / "probe.json") for name in placements)
    diff = Differences()
    one_stats, other_stats = ({k: v for k, v in p.items() if k != "provenance"} for p in (one, other))
    diff.walk(one_stats, other_stats)
    for path in sorted((ctx.work / "device").glob("*.parquet")):
        diff.walk(pq.read_table(path).to_pydict(), pq.read_table(ctx.work / "device_map" / path.name).to_pydict(),
                  path.stem)
    devices = [one["provenance"]["device"], other["provenance"]["device"]]
    row = {"devices": " vs ".join(devices), "numbers": diff.numbers, "max_abs_diff": diff.worst,
           "max_relative_diff": diff.worst_relative, "bitwise": not diff.mismatches and diff.worst == 0,
           "other_differences": len(diff.mismatches),
           "same": not diff.mismatches and diff.worst_relative <= DEVICE_MAP_TOL}
    return {"tables": {"device_map": [row]}, "mismatches": diff.mismatches[:10],
            "notes": [f"sinkscope probe (tiny llama, {' '.join(DEVICE_MAP_ARGS)}, chain on) with --device {ctx.device} "
                      "and with --device-map auto: every number of probe.json but provenance, and every Parquet "
                      "cell; same = "
                      f"no other difference and every |diff| <= {DEVICE_MAP_TOL} x max(1, |value|)"]}


class Differences:
    """Walks two JSON-like values side by side: the largest numeric difference and every other mismatch."""

    def __init__(self):
        self.worst, self.worst_relative, self.numbers, self.mismatches = 0.0, 0.0, 0, []

    def walk(self, a, b, path: str = "") -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                self.walk(a.get(key), b.get(key), f"{path}.{key}")
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            for i, (x, y) in enumerate(zip(a, b)):
                self.walk(x, y, f"{path}[{i}]")
        elif _number(a) and _number(b):
            self.numbers += 1
            self.worst = max(self.worst, abs(a - b))
            self.worst_relative = max(self.worst_relative, abs(a - b) / max(1.0, abs(a), abs(b)))
        elif a != b:
            self.mismatches.append(path)


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)
