"""What the report says: its sections and tables, built from runs, their seed groups and
their verdict. The opening sections (verdict, what mattered, leaderboard, Pareto front) are
in bench.read.render.verdict_sections; the detail behind them is here.

Shared by every document format (Markdown, HTML); each renderer places the plots in the
sections they name (plots.Plot.section).
"""

from __future__ import annotations

from bench.contract.facts import RunHeader
from bench.contract.pruning import Pruning
from bench.read.render import cells
from bench.read.render.aggregate import (Group, families, group_trials, stat, status_summary,
                                         targets, time_to)
from bench.read.render.cells import Cell, number_cell, plural, stat_cell, text_cell
from bench.read.render.columns import (CONFIG, SEEDS, TRAIN_S, Column, acc_title, accuracy_caption,
                                       metric, rows_table, seeds, with_run)
from bench.read.render.document import Block, Facts, Para, Report, Section, Table, table
from bench.read.render.populations import populations_section, trained_together
from bench.read.render.runs import Run
from bench.read.render.tuning_cost import training_seconds, unpruned_seconds
from bench.read.render.verdict import Verdict, pruned_at_rungs, pruned_text, ranked, verdict
from bench.read.render.verdict_sections import (leaderboard, mattered, pareto, rank_column,
                                                verdict_section)
from bench.contract.schema import UNITS, Record


def build_report(runs: list[Run], groups: list[Group] | None = None,
                 v: Verdict | None = None) -> Report:
    """The whole report of one or more runs (`groups`, `v`: their group_trials and verdict,
    if at hand): the answer first, then the detail behind it."""
    groups = group_trials(runs) if groups is None else groups
    v = verdict(runs, groups) if v is None else v
    parts = [verdict_section(v, runs), mattered(v), leaderboard(v, runs), pareto(v, runs),
             about(runs, groups), tuned_optimizers(runs, groups, v), implementations(runs, groups),
             pivots(runs, groups, v), all_configurations(runs, groups, v), populations_section(runs),
             published(runs, groups), errors(runs), environment(runs)]
    return Report(report_title(runs), tuple(s for s in parts if s is not None))


def report_title(runs: list[Run]) -> str:
    if len(runs) == 1:
        return f"bench run {_run_name(runs[0].header)}"
    return "bench report: " + " vs ".join(run.label for run in runs)


def _run_name(header: RunHeader) -> str:
    """E.g. '20250101-120000' or 'standard (20250101-120000)'."""
    name, run_id = header.name, header.run_id
    return f"{name} ({run_id})" if name else str(run_id)


# ---------------------------------------------------------------- about the run

SEEDS_NOTE = ("Trials that differ only by seed share one row: mean ± sample standard deviation "
              "over the seeds that finished ok. n is the number of seeds; \"(n=k)\" marks a figure "
              "from only k of them (the others did not finish ok, or never reached the target).")
TIMING_NOTE = ("Compilation is timed ahead of time and is never part of an epoch time. Steady "
               "epoch s is the median of the epochs after the first; train s is the sum of the "
               "epoch times (no compilation, no evaluation); ms/step and samples/s come from the "
               "median of the timed rounds.")


def _status_line(records) -> str:
    return f"{len(records)} ({status_summary(records)})"


def _run_facts(run: Run, groups: list[Group]) -> list[tuple[str, str]]:
    h = run.header
    seed_values = sorted({r.config.seed for r in run.records}, key=str)
    facts = [("Run", _run_name(h)),
             ("Data", f"{cells.data_line(h.data or {})}. Every accuracy in this report "
                      f"is measured on the test split of this data set"
                      + (", except those named validation, which choose the best"
                         if (h.data or {}).get("validation_examples") else "") + "."),
             ("Device", cells.device_line(h.device or {})),
             ("Trials", f"{_status_line(run.records)} in {plural(len(groups), 'configuration')}; "
                        f"{'seed' if len(seed_values) == 1 else 'seeds'} "
                        f"{', '.join(map(str, seed_values))}")]
    machines = cells.machines_line(run.records)
    if machines:
        facts.insert(4, ("Machines", f"{machines}. Each trial's figures are its own machine's."))
    if h.tags:
        facts.insert(1, ("Tags", ", ".join(str(t) for t in h.tags)))
    if h.pruning:
        facts.append(("Pruning", pruning_note(run)))
    return facts


def pruning_note(run: Run) -> str:
    """What a pruned run did, and how its figures are to be read."""
    epochs = max((r.config.epochs for r in run.records), default=None)
    pruned = pruned_at_rungs(run.records)
    return (f"{Pruning.from_json(run.header.pruning).describe(epochs)}, on validation accuracy "
            f"within each group of configurations that differ only in learning rate, L1, L2 "
            f"and dropout rate; {pruned_text(pruned) if pruned else 'none pruned'}. A pruned "
            "trial is censored: it is never best and never in a mean. The survivors' times "
            "are those of a pruned run: a population's epochs, throughput and time to accuracy "
            "fall as pruned members leave it.")


def _runs_table(runs: list[Run]) -> Table:
    rows = [[text_cell(text) for text in (
        run.label, run.header.run_id, run.header.name,
        ", ".join(map(str, (run.header.tags or []))), _device_cell(run),
        cells.data_line(run.header.data or {}), _status_line(run.records))] for run in runs]
    columns = [("run", False), ("run id", False), ("name", False), ("tags", False),
               ("device", False), ("data", False), ("trials", False)]
    return table("Runs", columns, rows, wrap=("device", "data"))


def _device_cell(run: Run) -> str:
    line = cells.device_line(run.header.device or {})
    machines = cells.machines_line(run.records)
    return f"{line}; trials from {machines}" if machines else line


def about(runs: list[Run], groups: list[Group]) -> Section:
    """What was run, on what data and device, and how the tables' figures are made."""
    if len(runs) == 1:
        blocks: list[Block] = [Facts(tuple(_run_facts(runs[0], groups)))]
    else:
        blocks = [Para(f"{len(runs)} runs; every table labels its rows by run."), _runs_table(runs)]
    blocks += [Para(SEEDS_NOTE), Para(TIMING_NOTE)]
    return Section("run", "About this run" if len(runs) == 1 else "About these runs",
                   tuple(blocks))


# ---------------------------------------------------------------- pivots

PIVOT_FIXED = ("activation", "optimizer", "seed")


def pivot_cells(groups: list[Group], v: Verdict) -> dict[tuple[int, str, str], list[Group]]:
    """(run index, activation, optimizer) -> the family's groups there, best first (in the
    verdict's ranking, which respects seeds)."""
    order = {id(g): i for i, g in enumerate(ranked(v))}
    out: dict[tuple[int, str, str], list[Group]] = {}
    for g in groups:
        out.setdefault((g.run_index, g.config["activation"], g.config["optimizer"]), []).append(g)
    for members in out.values():
        members.sort(key=lambda g: order.get(id(g), len(order)))
    return out


def _pivot_cell(members: list[Group] | None, name: str, kind: str) -> Cell:
    if not members:
        return Cell("", None)
    g = members[0]
    if not g.ok:
        return Cell(", ".join(g.status_counts()), None)
    return stat_cell(g.metric(name), kind, seeds(g))


def _varying(cell_map: dict) -> list[str]:
    """Config fields that differ inside some pivot cell (besides activation, optimizer, seed)."""
    names = set()
    for members in cell_map.values():
        for g in members[1:]:
            names |= {k for k, v in g.config.items() if members[0].config.get(k) != v}
    return sorted(names - set(PIVOT_FIXED))


def pivot_table(runs: list[Run], family: str, family_groups: list[Group], shown: tuple,
                v: Verdict) -> Table:
    """Activations down, optimizers (per run) across; each cell the most accurate configuration
    (`shown`: the cells' column title, metric name and unit)."""
    title, name, kind = shown
    cell_map = pivot_cells(family_groups, v)
    acts = sorted({g.config["activation"] for g in family_groups})
    opts = sorted({g.config["optimizer"] for g in family_groups})
    keys = [(i, o) for o in opts for i in sorted({g.run_index for g in family_groups})]
    heads = [o if len(runs) == 1 else f"{o} · {runs[i].label}" for i, o in keys]
    rows = [[text_cell(a), *(_pivot_cell(cell_map.get((i, a, o)), name, kind) for i, o in keys)]
            for a in acts]
    varying = _varying(cell_map)
    caption = ("Each cell: the best-ranked configuration with that activation and optimizer"
               + (f" (best over {', '.join(varying)}; all are in the full table)." if varying else "."))
    return table(f"{family}: {title}", [("activation", False), *((h, True) for h in heads)], rows,
                 caption)


def pivots(runs: list[Run], groups: list[Group], v: Verdict) -> Section | None:
    if not groups:
        return None
    blocks: list[Block] = []
    for family in families(groups):
        members = [g for g in groups if g.family == family]
        blocks.append(pivot_table(runs, family, members, (acc_title(runs), "test_accuracy", "pct"), v))
        blocks.append(pivot_table(runs, family, members, ("steady epoch s", "steady_epoch_s", "s"), v))
    blocks.append(Para(accuracy_caption(runs) + " Steady epoch s belongs to the configuration "
                       "shown in the accuracy table."))
    return Section("pivots", "By activation and optimizer", tuple(blocks))


# ---------------------------------------------------------------- optimizers at their best rate


def best_rates(groups: list[Group], v: Verdict) -> dict[tuple, list[tuple[Group, int]]]:
    """(run index, configuration without optimizer and rate) -> per optimizer tried at two or
    more learning rates: (its best-ranked group, how many rates were tried), best first. The
    verdict's ranking: a rate that lost seeds never beats one whose every seed finished. A
    rate pruned (--prune) was tried too: it counts, after the ranked ones."""
    tried: dict[tuple, dict[str, list[Group]]] = {}
    ours = {id(g) for g in groups}
    best_first = [g for g in ranked(v) if id(g) in ours]
    ranked_ids = {id(g) for g in best_first}
    pruned = [g for g in groups if id(g) not in ranked_ids
              and any(r.status == "pruned" for r in g.records)]
    for g in best_first + pruned:
        rest = tuple((k, v) for k, v in g.config.items() if k not in ("optimizer", "learning_rate"))
        tried.setdefault((g.run_index, rest), {}).setdefault(g.config["optimizer"], []).append(g)
    out = {}
    for key, by_optimizer in tried.items():
        best = [(members[0], len(members)) for members in by_optimizer.values()
                if len(members) > 1 and id(members[0]) in ranked_ids]
        if best:
            out[key] = best
    return out


def tuned_optimizers(runs: list[Run], groups: list[Group], v: Verdict) -> Section | None:
    """DeepOBS' question: which optimizer is best when each gets its best learning rate."""
    found = best_rates(groups, v)
    if not found:
        return None
    rows = [(g, rates) for best in found.values() for g, rates in best]
    rank = {id(g): i + 1 for best in found.values() for i, (g, _) in enumerate(best)}
    rates = {id(g): n for g, n in rows}
    # The verdict's ranking chooses: on validation where the family holds a split out.
    on_validation = {f.family for f in v.families if f.chosen_on == "validation"}
    chosen = [g for g, _ in rows if g.family in on_validation]
    validation = [metric("validation acc %", "validation_accuracy")] if chosen else []
    columns = with_run(runs, CONFIG, ("rank", True, lambda g: Cell(str(rank[id(g)]), rank[id(g)])),
                       ("rates tried", True, lambda g: Cell(str(rates[id(g)]), rates[id(g)])),
                       SEEDS, *validation, metric(acc_title(runs), "test_accuracy"),
                       metric("ms/step", "step_ms"))
    split = ("validation accuracy" if len(chosen) == len(rows) else "test accuracy" if not chosen
             else f"validation accuracy for {', '.join(sorted(on_validation))}, test for the rest")
    held = (" The validation split is held out of training: the rate is chosen on it, and "
            "test accuracy is reported." if chosen else "")
    caption = ("For each model and optimizer tried at several learning rates: its best-ranked "
               f"rate (the highest mean {split} among rates whose every seed finished ok), "
               "ranked within the model (the "
               "DeepOBS protocol: tune each optimizer's rate on a grid, compare them at their "
               f"best over several seeds).{held} " + accuracy_caption(runs))
    return Section("tuned", "Optimizers at their best learning rate",
                   (rows_table("", columns, [g for g, _ in rows], caption),
                    *(Para(line) for line in tuning_cost_lines(runs))))


def tuning_cost_lines(runs: list[Run]) -> list[str]:
    """Each run's total training time, and for a pruned run an estimate of it unpruned."""
    out = []
    for run in runs:
        spent = training_seconds(run.records)
        if spent is None:
            continue
        line = (f"{run.label + ': ' if len(runs) > 1 else ''}Tuning cost: "
                f"{cells.duration(spent)} of training in all (the trials' epoch times summed, "
                "a population's once; no compilation, evaluation or timed rounds)")
        unpruned = unpruned_seconds(run.records) if run.header.pruning else None
        if unpruned is not None:
            line += (f"; without pruning about {cells.duration(unpruned)} (an estimate: each "
                     "pruned trial's epochs not run at its program's measured epoch time per "
                     f"trial), {unpruned / spent:.1f}× as long" if spent else "")
        out.append(line + ".")
    return out


# ---------------------------------------------------------------- implementations


IMPL_FORMS = ("tuned", "flax")


def impl_pairs(groups: list[Group]) -> list[tuple[Group, Group]]:
    """(tuned, flax) groups of one run whose configurations differ only in `impl`."""
    found: dict[tuple, dict[str, Group]] = {}
    for g in groups:
        rest = tuple((k, v) for k, v in g.config.items() if k != "impl")
        found.setdefault((g.run_index, rest), {})[g.config.get("impl") or "tuned"] = g
    return [(forms["tuned"], forms["flax"]) for forms in found.values()
            if all(f in forms for f in IMPL_FORMS)]


def _ratio_cell(pair: tuple[Group, Group], name: str) -> Cell:
    tuned, flax = (g.metric(name).mean for g in pair)
    if not tuned or flax is None:
        return Cell(cells.MISSING, None)
    return Cell(f"{flax / tuned:.2f}×", flax / tuned)


def implementations(runs: list[Run], groups: list[Group]) -> Section | None:
    """The same configurations written as bench's own forms and as stock Flax, side by side."""
    pairs = impl_pairs(groups)
    if not pairs:
        return None
    metrics = (("ms/step", "step_ms"), ("steady epoch s", "steady_epoch_s"), ("compile s", "compile_s"),
               (acc_title(runs), "test_accuracy"))
    columns = [("configuration", False), ("n", True)]
    for title, name in metrics:
        columns += [(f"{title} {form}", True) for form in IMPL_FORMS]
        if name == "step_ms":
            columns.append(("flax ÷ tuned", True))
    rows = []
    for pair in pairs:
        row = [text_cell(pair[0].records[0].config.label(without=("impl",))),
               Cell(str(seeds(pair[0])), seeds(pair[0]))]
        for _, name in metrics:
            row += [stat_cell(g.metric(name), UNITS[name], seeds(g)) for g in pair]
            if name == "step_ms":
                row.append(_ratio_cell(pair, "step_ms"))
        rows.append(row)
    if len(runs) > 1:
        columns.insert(0, ("run", False))
        rows = [[text_cell(pair[0].run), *row] for pair, row in zip(pairs, rows)]
    caption = ("Each configuration in both of its forms (--impl): tuned is bench's own (patch-"
               "product convolutions, the fused CPU LSTM kernel, a hand-written recurrence "
               "gradient), flax the stock Flax NNX layers a Flax user writes. Both compute the "
               "same function from the same initial parameters (tests check logits and "
               "gradients), so accuracies differ only by float rounding over training. ms/step "
               "is each trial's own timed rounds; epoch and compile times of trials trained in "
               "a population are the population's (see Populations). " + accuracy_caption(runs))
    return Section("impls", "Implementations side by side", (table("", columns, rows, caption),))


# ---------------------------------------------------------------- all configurations


def _status(g: Group) -> Cell:
    return Cell(g.status_summary(), g.status_counts().get("ok", 0))


def _busy(g: Group) -> Cell:
    busy = sum(r.busy for r in g.records)
    text = "" if not busy else "yes" if busy == len(g.records) else f"{busy}/{len(g.records)}"
    return Cell(text, busy)


def _params(g: Group) -> Cell:
    return number_cell(stat(r.params for r in g.records).mean, "count")


def _target_columns(runs: list[Run]) -> list[Column]:
    return [metric(f"to {100 * float(t):g}% s", time_to(t), "s", cells.NEVER)
            for t in targets(runs)]


def all_configurations(runs: list[Run], groups: list[Group], v: Verdict) -> Section | None:
    if not groups:
        return None
    columns = with_run(runs, CONFIG, rank_column(v), SEEDS, ("status", False, _status),
                       metric(acc_title(runs), "test_accuracy"),
                       metric("compile s", "compile_s"), metric("epoch 1 s", "first_epoch_s"),
                       metric("steady epoch s", "steady_epoch_s"), TRAIN_S,
                       metric("ms/step", "step_ms"), metric("samples/s", "samples_per_s"),
                       metric("GFLOP/s", "achieved_flops"),
                       metric("% of peak", "peak_fraction"), ("busy", False, _busy),
                       ("params", True, _params), *_target_columns(runs))
    together = any(trained_together(r) for run in runs for r in run.records)
    caption = (accuracy_caption(runs) + " rank: within the family, as in the leaderboard. "
               "\"to X% s\": training seconds until the test accuracy "
               f"first reached X% (compilation excluded; {cells.NEVER} never reached"
               + ("; trials trained in a population count on their population's clock, and "
                  "their compile and epoch times are the population's (see Populations)"
                  if together else "")
               + "). % of peak: achieved FLOP/s over the device's calibrated fp32 matmul peak. "
               "busy: other processes used the CPU while the trial was timed.")
    if any(run.header.pruning for run in runs):
        caption += (" Pruned run (--prune): status 'pruned' marks trials stopped at a rung, "
                    "censored (no accuracy or time here); the others' times, throughput and "
                    "time to accuracy are those of a pruned run (see About this run).")
    return Section("trials", "All configurations", (rows_table("", columns, groups, caption),))


# ---------------------------------------------------------------- published vs measured


def _reference(g: Group) -> dict | None:
    return next((r.reference for r in g.records if r.reference), None)


def _difference(g: Group) -> Cell:
    measured, ref = g.metric("test_accuracy").mean, _reference(g).get("published_test_accuracy")
    if measured is None or ref is None:
        return Cell("", None)
    diff = 100 * (measured - ref)
    return Cell(f"{diff:+.2f}", diff)


def published(runs: list[Run], groups: list[Group]) -> Section | None:
    chosen = [g for g in groups if _reference(g)]
    if not chosen:
        return None
    columns = with_run(runs, CONFIG, SEEDS,
                       ("reference", False, lambda g: text_cell(_reference(g).get("name"))),
                       ("published %", True,
                        lambda g: number_cell(_reference(g).get("published_test_accuracy"), "pct")),
                       metric(acc_title(runs, "measured %"), "test_accuracy"),
                       ("difference pp", True, _difference),
                       ("source", False, lambda g: text_cell(_reference(g).get("source"))))
    caption = ("Published figures are as reported by their source, on its own test set and "
               "training budget; measured figures are this run's. " + accuracy_caption(runs))
    return Section("published", "Published vs measured",
                   (rows_table("", columns, chosen, caption, wrap=("reference", "source")),))


# ---------------------------------------------------------------- errors


def _error_text(record: Record) -> str:
    if record.error:
        return str(record.error)
    if record.status == "diverged":
        return f"loss or test loss not finite in epoch {record.epochs_run}"
    return ""


def _error_rows(run: Run) -> list[list[Cell]]:
    return [[text_cell(run.label), text_cell(g.label), text_cell(r.config.seed),
             text_cell(r.status), text_cell(_error_text(r))]
            for g in group_trials([run]) for r in g.records if r.status not in ("ok", "pruned")]


def errors(runs: list[Run]) -> Section | None:
    rows = [row for run in runs for row in _error_rows(run)]
    if not rows:
        return None
    columns = [("run", False), ("configuration", False), ("seed", True), ("status", False),
               ("error", False)]
    if len(runs) == 1:
        columns, rows = columns[1:], [row[1:] for row in rows]
    return Section("errors", "Errors", (table("", columns, rows, wrap=("error",)),))


# ---------------------------------------------------------------- environment


def _environment_rows(header: RunHeader) -> dict[str, str]:
    """Item -> value: where the numbers came from."""
    device, peak = (header.device or {}), (header.calibration or {})
    items = {"run id": header.run_id, "started": header.started,
             "command": header.command, "git commit": header.git_commit,
             "schema version": header.schema_version,
             "device": cells.device_line(device),
             "host CPU cores": (f"{device.get('host_cpu_count')} "
                                f"({device.get('usable_cpu_count')} usable)")}
    items |= {name: version for name, version in (header.versions or {}).items()}
    if peak.get("peak_flops"):
        items["calibrated peak"] = (f"{peak['peak_flops'] / 1e9:,.0f} GFLOP/s "
                                    f"(fp32 {peak.get('matrix_size')}² matmul)")
    items |= {f"protocol {k.replace('_', ' ')}": ", ".join(map(str, v)) if isinstance(v, list) else v
              for k, v in (header.protocol or {}).items()}
    items["fused LSTM kernel (CPU)"] = header.fused_lstm_cpu
    items["fused GRU/simple-cell kernel (CPU)"] = header.fused_cells_cpu
    items["fused conv kernel (CPU)"] = header.fused_conv_cpu
    items["CPU kernels built for"] = header.cpu_kernel_target
    items["OpenBLAS threads (CPU kernels)"] = header.openblas_threads
    items["data provenance"] = (header.data or {}).get("provenance")
    return {k: "" if v is None else str(v) for k, v in items.items()}


def environment(runs: list[Run]) -> Section:
    per_run = [_environment_rows(run.header) for run in runs]
    names = [k for k in dict.fromkeys(k for rows in per_run for k in rows)
             if any(rows.get(k) for rows in per_run)]
    rows = [[text_cell(n), *(text_cell(rows.get(n, "")) for rows in per_run)] for n in names]
    heads = ["value"] if len(runs) == 1 else [run.label for run in runs]
    columns = [("item", False), *((h, False) for h in heads)]
    return Section("environment", "Environment", (table("", columns, rows, wrap=tuple(heads)),))
