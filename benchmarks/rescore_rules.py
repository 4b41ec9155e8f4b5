"""Re-scoring's rule of choice, read off stored studies: which candidate each rule would recommend.

A study with re-scoring (``rescore_top`` best trials, each trained again at
``rescore_seeds`` more seeds) recommends the candidate with the best mean over all its
seeds, its own trial's seed included (:func:`bstune.study._rescore.choose`). That seed's
value is why the candidate was chosen, so it is biased low (the winner's curse); the fresh
seeds are not, but they are fewer. This benchmark takes the efficiency runs of
``results/suite_full.json`` that stored their candidates' per-seed values
(``rescore_candidates``), judges every candidate on the judge seeds (the same
:class:`~benchmarks.efficiency.Evaluator` as §2, cached), and sets the rules side by side:

* ``mean of all seeds``: bstune's rule;
* ``fresh seeds only``: the mean over the re-scoring seeds alone;
* ``own seed only``: the trial's own value (what a study without re-scoring recommends
  among these candidates: its best trial);
* ``oracle``: the candidate the judge rates best, the most any rule could get from them.

Ratios are judged value / grid best (1.000 is the grid's best cell). Nothing is trained
but the judging of candidates not judged before. ``python -m benchmarks.rescore_rules
--problems digits_mlp,digits_cnn`` writes ``results/rescore_rules.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks._provenance import run_facts

HERE = Path(__file__).resolve().parent
log = logging.getLogger("benchmarks.rescore_rules")

Candidate = dict[str, Any]  # a stored Rescored.to_dict(): trial, seeds, values (own trial's first)


def _complete(c: Candidate) -> bool:
    return all(v is not None for v in c["values"])


RULES: dict[str, Callable[[Sequence[Candidate]], Candidate | None]] = {}


def _rule(name: str, score: Callable[[Candidate], float]) -> None:
    def pick(cands: Sequence[Candidate]) -> Candidate | None:
        ok = [c for c in cands if _complete(c)]
        return min(ok, key=lambda c: (score(c), c["trial"])) if ok else None

    RULES[name] = pick


_rule("mean of all seeds", lambda c: statistics.fmean(c["values"]))
_rule("fresh seeds only", lambda c: statistics.fmean(c["values"][1:]))
_rule("own seed only", lambda c: c["values"][0])


def compare(runs: Sequence[dict[str, Any]], judged: Callable[[dict[str, Any], Candidate], float]) -> dict[str, Any]:
    """Each rule's pick per run, judged (``judged(run, candidate)``: its ratio to the grid best), and the oracle's."""
    per_run = []
    for run in runs:
        cands = run["rescore_candidates"]
        ratios = {c["trial"]: judged(run, c) for c in cands}
        picks = {name: rule(cands) for name, rule in RULES.items()}
        row = {name: (ratios[p["trial"]] if p is not None else None) for name, p in picks.items()}
        row["oracle"] = min(ratios.values())
        per_run.append({"seed": run["seed"], "ratios": row, "candidates": ratios})
    names = [*RULES, "oracle"]
    summary = {}
    for name in names:
        vals = [r["ratios"][name] for r in per_run if r["ratios"][name] is not None]
        summary[name] = {
            "median": statistics.median(vals) if vals else None,
            "mean": statistics.fmean(vals) if vals else None,
            "n": len(vals),
        }
    return {"runs": per_run, "summary": summary}


def markdown(results: dict[str, dict[str, Any]], facts: dict[str, Any]) -> str:
    names = [*RULES, "oracle"]
    out = [
        "# Re-scoring's rule of choice, on stored studies",
        "",
        f"{facts['date']}, `{facts['command']}`, {facts['machine']['cpu_model']}, git {facts['git_commit']}.",
        "Final pick / grid best (judged on held-out seeds) of the candidate each rule recommends; per seed, then",
        "the median and mean over seeds. See `benchmarks/rescore_rules.py`.",
        "",
        "| problem, method | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for key, res in results.items():
        s = res["summary"]
        cells = [
            f"{s[n]['median']:.3f} (mean {s[n]['mean']:.3f})" if s[n]["median"] is not None else "-" for n in names
        ]
        out.append(f"| {key}, {s[names[0]]['n']} seeds | " + " | ".join(cells) + " |")
    out += ["", "Per seed:", ""]
    for key, res in results.items():
        for r in res["runs"]:
            cells = " / ".join(f"{n}: {r['ratios'][n]:.3f}" for n in names if r["ratios"][n] is not None)
            out.append(f"- {key}, seed {r['seed']}: {cells}")
    return "\n".join(out) + "\n"


def stored_studies(out: Path) -> tuple[dict[str, Any], Callable[[str], Any]]:
    """The stored efficiency runs of ``out/suite_full.json`` by problem, and a judge for a problem's configs (its
    :class:`~benchmarks.efficiency.Evaluator`, cached in ``out/cache``); logs quiet but this package's, one torch
    thread, as every reader of the stored studies runs."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("bstune", "optuna"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import torch

    from benchmarks import sweep as sweep_mod
    from benchmarks.efficiency import Evaluator
    from benchmarks.problems import PROBLEMS

    torch.set_num_threads(1)

    def judge(problem: str) -> Evaluator:
        sweep = sweep_mod.load_or_run(PROBLEMS[problem], "full", out, 1)
        return Evaluator(PROBLEMS[problem], sweep, sweep_mod.analyse(sweep), out / "cache" / f"evals_{problem}.json")

    return json.loads((out / "suite_full.json").read_text())["efficiency"], judge


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", default="digits_mlp,digits_cnn")
    parser.add_argument("--methods", default="prior+rescore,baseline+rescore")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    stored, judge = stored_studies(args.out)
    results: dict[str, dict[str, Any]] = {}
    for p in [p for p in args.problems.split(",") if p]:
        if p not in stored:
            parser.error(f"no efficiency runs of {p} in {args.out / 'suite_full.json'}")
        evaluator = judge(p)
        for m in [m for m in args.methods.split(",") if m]:
            runs = sorted(
                (r for r in stored[p]["runs"] if r["method"] == m and r.get("rescore_candidates")),
                key=lambda r: r["seed"],
            )
            if not runs:
                log.warning("%s %s: no stored run kept its candidates' values; skipped", p, m)
                continue

            def judged(run: dict[str, Any], c: Candidate, evaluator: Any = evaluator) -> float:
                t = next(t for t in run["trials"] if t["number"] == c["trial"])
                return float(evaluator.judge(t["batch_size"], t["lr"])["ratio"])

            log.info("%s %s: %d runs", p, m, len(runs))
            results[f"{p} {m}"] = compare(runs, judged)
    facts = run_facts("benchmarks/rescore_rules.py", sys.argv[1:] if argv is None else argv)
    (args.out / "rescore_rules.json").write_text(json.dumps({"run": facts, "results": results}, indent=1) + "\n")
    (args.out / "rescore_rules.md").write_text(markdown(results, facts))
    log.info("wrote %s", args.out / "rescore_rules.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
