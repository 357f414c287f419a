"""Hyper-parameter sweeps over an LM setup: ``python -m sgdjax.sweep FILE``.

A sweep file (TOML) names a base setup, a search method and a parameter space in the seed's
W&B form::

    name = "hw1"                       # results go to results/sweeps/NAME/
    experiment = "lm"
    setup = "tiny"
    method = "bayes"                   # grid | random | bayes
    count = 15                         # runs of random / bayes (grid: every combination)
    seed = 0                           # the search's own random choices
    [metric]
    name = "final_eval_loss"
    goal = "minimize"
    [set]                              # fixed overrides of the setup (dotted keys)
    "train.max_steps" = 200
    [parameters]
    per_device_train_batch_size = { values = [1, 2, 4, 6] }
    learning_rate = { values = [5e-5, 1e-4, 2e-4, 5e-4] }
    warmup_ratio = { min = 0.0, max = 0.2 }                       # random / bayes
    "optim.b2" = { min = 0.9, max = 0.999, distribution = "log_uniform_values" }

Parameters are the seed's ``TrainingArguments`` names (``per_device_train_batch_size``,
``gradient_accumulation_steps``, ``learning_rate``, ``optim`` with adamw_torch /
adamw_torch_fused / adafactor, ``lr_scheduler_type``, ``torch_compile``, ``warmup_ratio``,
``seed``) or any dotted key of the LM config. Every run is named by the seed's pattern
``bs{B}#ga{G}#lr{lr}#{optim}#{sched}#warmup_{ratio}`` (plus ``#seed{n}`` when seeds are swept).

Runs whose configs differ only in learning rate and seed have arrays of equal shapes: they are
trained together as ONE vmapped call of the engine (``sgdjax.lm.train.train_flat``). The
objective is the final evaluation loss on all held-out blocks. ``bayes`` fits a Gaussian process
(RBF kernel, length scale by marginal likelihood) to the runs so far and picks the candidate of
highest expected improvement, one run at a time after a few random ones. Results:
``sweep_results.csv`` / ``.json``, a printed table and ``sweep.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import math
import sys
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sgdjax.errors import ConfigError, SgdjaxError, did_you_mean

#: The seed's TrainingArguments names -> LM config keys.
ALIASES: dict[str, str] = {
    "per_device_train_batch_size": "train.batch_size",
    "gradient_accumulation_steps": "train.grad_accum",
    "learning_rate": "optim.lr",
    "optim": "optim.name",
    "lr_scheduler_type": "schedule.kind",
    "torch_compile": "train.jit",
    "warmup_ratio": "schedule.warmup_ratio",
    "seed": "seed",
}
#: Values of the seed's names -> config values.
VALUE_ALIASES: dict[str, dict[Any, Any]] = {
    "optim.name": {"adamw_torch": "adamw", "adamw_torch_fused": "adamw_fused",
                   "adamw_hf": "adamw", "adafactor": "adafactor"},
    "schedule.kind": {"triangular_v1": "triangular", "v1": "triangular",
                      "step_down_v2": "step_down", "v2": "step_down"},
}
METHODS = ("grid", "random", "bayes")
METRICS = ("final_eval_loss", "final_eval_perplexity", "final_train_loss")
FILE_KEYS = ("name", "description", "experiment", "setup", "method", "count", "seed", "metric",
             "set", "parameters")


@dataclass(frozen=True)
class Param:
    """One swept parameter: a list of ``values``, or a ``[low, high]`` range."""

    name: str  # as written in the file
    key: str  # dotted config key
    values: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False

    @property
    def discrete(self) -> bool:
        return bool(self.values)


@dataclass(frozen=True)
class SweepFile:
    name: str
    description: str
    experiment: str
    setup: str
    method: str
    count: int
    seed: int
    metric: str
    goal: str
    fixed: tuple[tuple[str, Any], ...]
    params: tuple[Param, ...]


def load_sweep(path: str | Path, count: int | None = None) -> SweepFile:
    """Parse and check a sweep file; errors name the key and the fix."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file {path} does not exist; sweep files live in "
                          "experiments/sweeps/ (e.g. experiments/sweeps/tiny_grid.toml).")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    for key in raw:
        if key not in FILE_KEYS:
            raise ConfigError(f"{path}: unknown key '{key}'; a sweep file has "
                              f"{', '.join(FILE_KEYS)}.{did_you_mean(key, FILE_KEYS)}")
    method = str(raw.get("method", "grid"))
    if method not in METHODS:
        raise ConfigError(f"{path}: method='{method}' is not one of {', '.join(METHODS)}."
                          f"{did_you_mean(method, METHODS)}")
    metric = raw.get("metric", {})
    if str(metric.get("name", "final_eval_loss")) not in METRICS:
        raise ConfigError(f"{path}: metric.name={metric.get('name')!r} is not one of "
                          f"{', '.join(METRICS)}.{did_you_mean(str(metric.get('name')), METRICS)}")
    goal = str(metric.get("goal", "minimize"))
    if goal not in ("minimize", "maximize"):
        raise ConfigError(f"{path}: metric.goal must be 'minimize' or 'maximize', got {goal!r}.")
    space = raw.get("parameters")
    if not isinstance(space, Mapping) or not space:
        raise ConfigError(f"{path}: [parameters] is missing or empty; give at least one, e.g. "
                          "learning_rate = { values = [1e-3, 3e-3] }.")
    params = tuple(_param(path, name, spec) for name, spec in space.items())
    keys = [p.key for p in params]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"{path}: two parameters set the same config key ({keys}).")
    if method == "grid" and not all(p.discrete for p in params):
        ranged = [p.name for p in params if not p.discrete]
        raise ConfigError(f"{path}: method='grid' needs a list of values for every parameter, "
                          f"but {', '.join(ranged)} give a range; use method='random' or "
                          "'bayes', or list values.")
    n = count if count is not None else int(raw.get("count", 10))
    if n < 1:
        raise ConfigError(f"{path}: count must be positive, got {n}.")
    return SweepFile(
        name=str(raw.get("name", path.stem)), description=str(raw.get("description", "")),
        experiment=str(raw.get("experiment", "lm")), setup=str(raw.get("setup", "tiny")),
        method=method, count=n, seed=int(raw.get("seed", 0)),
        metric=str(metric.get("name", "final_eval_loss")), goal=goal,
        fixed=tuple((str(k), v) for k, v in (raw.get("set") or {}).items()), params=params)


def _param(path: Path, name: str, spec: Any) -> Param:
    key = ALIASES.get(name, name)
    where = f"{path}: parameter '{name}'"
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where} must be a table such as {{ values = [...] }} or "
                          "{ min = ..., max = ... }.")
    if "values" in spec:
        values = spec["values"]
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: values must be a non-empty list.")
        return Param(name, key, values=tuple(values))
    if "value" in spec:
        return Param(name, key, values=(spec["value"],))
    if "min" in spec and "max" in spec:
        low, high = float(spec["min"]), float(spec["max"])
        dist = str(spec.get("distribution", "uniform"))
        log = dist.startswith("log")
        if not low < high or (log and low <= 0):
            raise ConfigError(f"{where}: need min < max (and min > 0 for a log distribution), "
                              f"got {low}, {high}.")
        integer = dist in ("int_uniform", "q_uniform") or (
            isinstance(spec["min"], int) and isinstance(spec["max"], int))
        return Param(name, key, low=low, high=high, log=log, integer=integer)
    raise ConfigError(f"{where} needs 'values' (a list) or 'min' and 'max'.")


# --------------------------------------------------------------------------------------------
# the search space


def config_value(p: Param, value: Any) -> Any:
    """A swept value as the config takes it (the seed's spellings translated)."""
    return VALUE_ALIASES.get(p.key, {}).get(value, value)


def grid(params: Sequence[Param]) -> list[dict[str, Any]]:
    """Every combination, in file order (last parameter fastest)."""
    return [dict(zip([p.name for p in params], combo, strict=True))
            for combo in itertools.product(*(p.values for p in params))]


def _uniform(key_seed: int, index: int, n: int) -> np.ndarray:
    import jax

    key = jax.random.fold_in(jax.random.key(key_seed), index)
    return np.asarray(jax.random.uniform(key, (n,)), np.float64)


def draw(params: Sequence[Param], u: np.ndarray) -> dict[str, Any]:
    """A point of the space from uniforms ``u`` (one per parameter)."""
    out: dict[str, Any] = {}
    for p, x in zip(params, u, strict=True):
        if p.discrete:
            out[p.name] = p.values[min(int(x * len(p.values)), len(p.values) - 1)]
        else:
            lo, hi = (math.log(p.low), math.log(p.high)) if p.log else (p.low, p.high)
            v = lo + (hi - lo) * float(x)
            v = math.exp(v) if p.log else v
            out[p.name] = int(round(v)) if p.integer else v
    return out


def encode(params: Sequence[Param], point: Mapping[str, Any]) -> np.ndarray:
    """Features in [0, 1] for the GP: numbers scaled (log when they span a decade), other
    values one-hot."""
    feats: list[float] = []
    for p in params:
        v = point[p.name]
        if p.discrete:
            numeric = all(isinstance(x, int | float) and not isinstance(x, bool) for x in p.values)
            if numeric and len(set(p.values)) > 1:
                vals = np.array(p.values, float)
                use_log = vals.min() > 0 and vals.max() / vals.min() >= 10
                t = np.log(vals) if use_log else vals
                x = math.log(float(v)) if use_log else float(v)
                feats.append((x - t.min()) / (t.max() - t.min()))
            else:
                feats.extend(1.0 if v == c else 0.0 for c in p.values)
        else:
            lo, hi = (math.log(p.low), math.log(p.high)) if p.log else (p.low, p.high)
            x = math.log(float(v)) if p.log else float(v)
            feats.append((x - lo) / (hi - lo))
    return np.asarray(feats)


def _norm_cdf(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.vectorize(math.erf)(z / math.sqrt(2.0)))


def expected_improvement(x: np.ndarray, y: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """EI (for minimisation) of candidates under a GP fitted to (x, y): RBF kernel on
    standardised targets, length scale from a small grid by marginal likelihood."""
    mu_y, sd_y = float(np.mean(y)), float(np.std(y)) or 1.0
    t = (y - mu_y) / sd_y
    d_xx = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    d_cx = ((cand[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    noise = 1e-4
    best: tuple[float, float] | None = None
    for ell in (0.1, 0.2, 0.35, 0.5, 1.0, 2.0):
        k = np.exp(-0.5 * d_xx / ell**2) + noise * np.eye(len(x))
        chol = np.linalg.cholesky(k)
        alpha = np.linalg.solve(chol.T, np.linalg.solve(chol, t))
        lml = -0.5 * t @ alpha - np.log(np.diag(chol)).sum()
        if best is None or lml > best[0]:
            best = (lml, ell)
    ell = best[1]  # type: ignore[index]
    k = np.exp(-0.5 * d_xx / ell**2) + noise * np.eye(len(x))
    chol = np.linalg.cholesky(k)
    alpha = np.linalg.solve(chol.T, np.linalg.solve(chol, t))
    k_c = np.exp(-0.5 * d_cx / ell**2)
    mean = k_c @ alpha
    v = np.linalg.solve(chol, k_c.T)
    sd = np.sqrt(np.maximum(1.0 + noise - (v * v).sum(0), 1e-12))
    improve = t.min() - mean
    z = improve / sd
    return improve * _norm_cdf(z) + sd * np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


# --------------------------------------------------------------------------------------------
# running


def run_name(point: Mapping[str, Any], cfg: Any, params: Sequence[Param]) -> str:
    """The seed's ``bs{B}#ga{G}#lr{lr}#{optim}#{sched}#warmup_{ratio}``, with the swept values as
    written in the file (e.g. ``adamw_torch``) and ``#seed{n}`` / ``#key=value`` for other swept
    keys."""
    shown = {p.key: point[p.name] for p in params}

    def get(key: str, value: Any) -> Any:
        return shown.get(key, value)

    lr = float(get("optim.lr", cfg.optim.lr))
    name = (f"bs{get('train.batch_size', cfg.train.batch_size)}#"
            f"ga{get('train.grad_accum', cfg.train.grad_accum)}#"
            f"lr{lr}#{get('optim.name', cfg.optim.name)}#"
            f"{get('schedule.kind', cfg.schedule.kind)}#"
            f"warmup_{get('schedule.warmup_ratio', cfg.schedule.warmup_ratio)}")
    # The seed swept torch_compile without naming it; its pattern stays as it was.
    in_pattern = {"train.batch_size", "train.grad_accum", "optim.lr", "optim.name",
                  "schedule.kind", "schedule.warmup_ratio", "train.jit"}
    for p in params:
        if p.key == "seed":
            name += f"#seed{point[p.name]}"
        elif p.key not in in_pattern:
            name += f"#{p.key}={point[p.name]}"
    return name


def _group_key(cfg: Any) -> str:
    """Configs equal up to learning rate and seed share array shapes: one vmapped call."""
    d = cfg.to_dict()
    d.pop("seed")
    d.pop("description")
    d["optim"].pop("lr")
    return json.dumps(d, sort_keys=True)


class Runner:
    """Builds configs of points, trains groups of them, caches corpora per data config."""

    def __init__(self, sweep: SweepFile, log: Callable[[str], None] = print,
                 show_progress: bool = True) -> None:
        from sgdjax.lm import load_config

        self.sweep, self.log, self.show_progress = sweep, log, show_progress
        self._load = load_config
        self.base_overrides = [f"{k}={_raw(v)}" for k, v in sweep.fixed]
        self._corpora: dict[str, Any] = {}
        self.groups = 0

    def config(self, point: Mapping[str, Any]) -> Any:
        overrides = list(self.base_overrides)
        for p in self.sweep.params:
            overrides.append(f"{p.key}={_raw(config_value(p, point[p.name]))}")
        return self._load(self.sweep.experiment, self.sweep.setup, overrides)

    def corpus(self, cfg: Any) -> Any:
        from sgdjax.lm.data import build_corpus

        key = json.dumps(dataclasses.asdict(cfg.data), sort_keys=True)
        if key not in self._corpora:
            self._corpora[key] = build_corpus(cfg.data)
        return self._corpora[key]

    def run_group(self, points: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Points whose configs differ only in lr and seed, trained as one vmapped call."""
        import jax

        from sgdjax.lm.train import evaluate_flat, train_flat
        from sgdjax.progress import Progress

        cfgs = [self.config(p) for p in points]
        base = cfgs[0]
        if base.parallel.mode != "none":
            raise ConfigError("sweeps train unsharded runs; set parallel.mode='none' in the "
                              "sweep's [set] or base setup.")
        if base.train.max_seconds is not None:
            # Each run keeps its share of the clock: a group of k runs gets k x the budget.
            base = dataclasses.replace(base, train=dataclasses.replace(
                base.train, max_seconds=base.train.max_seconds * len(cfgs)))
        corpus = self.corpus(base)
        model = base.model.build(corpus.tokenizer.vocab_size)
        self.groups += 1
        t0 = time.perf_counter()
        with Progress(f"group {self.groups} ({len(cfgs)} runs)", base.train.max_steps,
                      unit="steps", enabled=self.show_progress) as bar:
            res = train_flat(base, model, corpus, seeds=[c.seed for c in cfgs],
                             lrs=[c.optim.lr for c in cfgs], progress=bar)
        with jax.disable_jit() if not base.train.jit else contextlib.nullcontext():
            final = evaluate_flat(model, res.w, corpus.val.tokens, corpus.val.mask)
        wall = time.perf_counter() - t0
        rows = []
        for i, (point, cfg) in enumerate(zip(points, cfgs, strict=True)):
            tail = res.loss[i, -max(1, cfg.logging.log_every):]
            diverged = int(res.diverged_at[i])
            value = float(final[i]) if diverged < 0 else float("nan")
            rows.append({
                "name": run_name(point, cfg, self.sweep.params), **dict(point),
                "lr": cfg.optim.lr, "seed": cfg.seed,
                "final_eval_loss": value,
                "final_eval_perplexity": float(np.exp(min(value, 700.0))),
                "final_train_loss": float(np.mean(tail)) if tail.size else float("nan"),
                "steps": res.steps, "diverged_at": diverged, "group": self.groups,
                "vmapped_runs": len(cfgs), "group_wall_s": wall,
                "tokens_per_s": res.tokens_per_s / len(cfgs),
            })
        self.log(f"group {self.groups}: {len(cfgs)} run(s) vmapped, {res.steps} steps, "
                 f"{wall:.1f} s")
        return rows


def _raw(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ",".join(map(str, value))
    return str(value)


def run_sweep(sweep: SweepFile, *, log: Callable[[str], None] = print,
              show_progress: bool = True) -> list[dict[str, Any]]:
    """All runs of ``sweep``; one row per run (its parameters, objective and counters)."""
    runner = Runner(sweep, log, show_progress)
    params = sweep.params
    if sweep.method == "grid":
        points = grid(params)
    elif sweep.method == "random":
        points = [draw(params, _uniform(sweep.seed, i, len(params))) for i in range(sweep.count)]
    else:
        return _bayes(sweep, runner)
    for p in points:
        runner.config(p)  # every config is checked before anything trains
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for p in points:
        groups.setdefault(_group_key(runner.config(p)), []).append(p)
    rows: list[dict[str, Any]] = []
    for members in groups.values():
        rows.extend(runner.run_group(members))
    return rows


def _bayes(sweep: SweepFile, runner: Runner) -> list[dict[str, Any]]:
    params = sweep.params
    sign = 1.0 if sweep.goal == "minimize" else -1.0
    all_discrete = all(p.discrete for p in params)
    space = math.prod(len(p.values) for p in params) if all_discrete else math.inf
    n_init = min(sweep.count, max(2, len(params) // 2 + 1))
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i in range(sweep.count):
        if i < n_init:
            point = draw(params, _uniform(sweep.seed, i, len(params)))
        else:
            if space <= 20_000:
                cands = [c for c in grid(params) if json.dumps(c, sort_keys=True) not in seen]
            else:
                cands = [draw(params, _uniform(sweep.seed, 10_000 * (i + 1) + j, len(params)))
                         for j in range(1000)]
            if not cands:
                break
            x = np.stack([encode(params, r) for r in rows])
            y = np.array([sign * r[sweep.metric] for r in rows], float)
            finite = np.isfinite(y)
            worst = y[finite].max() + 1.0 if finite.any() else 10.0
            y = np.where(finite, y, worst)  # a diverged run counts as worse than any other
            ei = expected_improvement(x, y, np.stack([encode(params, c) for c in cands]))
            point = cands[int(np.argmax(ei))]
        seen.add(json.dumps(point, sort_keys=True))
        rows.extend(runner.run_group([point]))
    return rows


# --------------------------------------------------------------------------------------------
# results


def table(rows: Sequence[Mapping[str, Any]], metric: str, goal: str = "minimize") -> str:
    """Plain-text table of the runs, best first (diverged runs last)."""
    cols = ["name", metric, "final_train_loss", "steps", "group"]
    sign = 1.0 if goal == "minimize" else -1.0
    order = sorted(rows, key=lambda r: (not np.isfinite(r[metric]), sign * r[metric]))
    widths = [max(len(c), *(len(_cell(r.get(c))) for r in order)) for c in cols]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
    for r in order:
        lines.append("  ".join(_cell(r.get(c)).ljust(w) for c, w in zip(cols, widths,
                                                                        strict=True)))
    return "\n".join(lines)


def _cell(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def to_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    import csv
    import io

    cols: list[str] = []
    for r in rows:
        cols.extend(k for k in r if k not in cols)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols)
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def save_results(store: Any, sweep: SweepFile, rows: list[dict[str, Any]]) -> None:
    from sgdjax.lm import plots

    store.save_json("sweep_results.json", {"sweep": dataclasses.asdict(sweep), "runs": rows},
                    indent=2)
    store.save_text("sweep_results.csv", to_csv(rows))
    store.save_figure("sweep.png", plots.sweep(rows, sweep.metric))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sgdjax.sweep",
                                description="Run a hyper-parameter sweep file over an LM setup.")
    p.add_argument("file", help="sweep file, e.g. experiments/sweeps/tiny_grid.toml")
    p.add_argument("--out", type=Path, help="results directory (default results/sweeps/NAME)")
    p.add_argument("--count", type=int, help="override the number of random / bayes runs")
    p.add_argument("--dry-run", action="store_true", help="list the runs, train nothing")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = p.parse_args(argv)
    try:
        sweep = load_sweep(args.file, args.count)
        if args.dry_run:
            runner = Runner(sweep)
            print(f"# sweep {sweep.name}: {sweep.method} over {sweep.experiment}/{sweep.setup}, "
                  f"objective {sweep.metric} ({sweep.goal})")
            pts = grid(sweep.params) if sweep.method == "grid" else [
                draw(sweep.params, _uniform(sweep.seed, i, len(sweep.params)))
                for i in range(sweep.count if sweep.method == "random" else 0)]
            for pt in pts:
                print(run_name(pt, runner.config(pt), sweep.params))
            if sweep.method == "bayes":
                print(f"({sweep.count} runs chosen one at a time by expected improvement)")
            return 0
        from sgdjax.store import Store, git_commit, now_iso, package_versions

        store = Store(args.out or Path("results") / "sweeps" / sweep.name)
        store.update_manifest(sweep=dataclasses.asdict(sweep), versions=package_versions(),
                              git_commit=git_commit(Path(__file__).parent), started=now_iso())
        t0 = time.perf_counter()
        rows = run_sweep(sweep, show_progress=not args.no_progress)
        save_results(store, sweep, rows)
        store.update_manifest(finished=now_iso(), wall_s=time.perf_counter() - t0)
        print(f"\nsweep {sweep.name} ({store.root}): {len(rows)} runs, objective "
              f"{sweep.metric} ({sweep.goal})")
        print(table(rows, sweep.metric, sweep.goal))
        return 0
    except SgdjaxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
