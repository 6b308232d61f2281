"""Does E2VPT's pruning criterion rank prompt tokens as removing them really does? The default demo run.

Issue 15: trains the default demo (`python -m e2vpt train` with no flags: the shipped ViT on digits)
or reads a finished run (`--run`), then audits every pruning round with `e2vpt.analysis.ablation`:
each token alive when the scores were computed is removed alone and the validation loss change is
measured; Spearman's rank correlation sets it against the scores the run pruned by (under the default
`studio` recipe a token's score is the sum of its segments' mean |dL/dmask| on the training images:
`token_importance: segments`). Also each layer's prompts removed together, against the layer's summed
score. Writes results/ablation_demo.csv (with the commit, the defaults' digest and the machine) and the
table of benchmarks/README.md (its generated block `ablation`).

    python benchmarks/ablation_demo.py                 # trains the demo (about 75 s here), then audits
    python benchmarks/ablation_demo.py --run runs/X    # audits a finished run

Last line: `ablation: round 1 rho R1 (p P1), round 2 rho R2 (p P2)`.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import RESULTS, provenance, read_csv, write_csv, write_readme_block

COLUMNS = ["decision", "tokens audited", "rank correlation, tokens",
           "whole layers (score sum vs removing the layer)", "mean loss change, pruned / kept tokens", "time"]


def render(rows: list[dict]) -> str:
    """benchmarks/README.md's ablation table, from the result file's rows (strings or numbers)."""
    if not rows:
        return "No result yet: run `python benchmarks/ablation_demo.py`.\n"
    first = rows[0]
    lines = [f"Run: the default demo, test accuracy {100 * float(first['test_acc']):.2f} %, scores by "
             f"`token_importance: {first['token_importance']}`; commit `{first['commit']}`, defaults "
             f"`{first['defaults']}`, {first['date']}, {first['cpu']} ({first['cores']} cores).", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        lines.append(f"| round {r['round']} | {r['tokens']} | **rho {float(r['spearman']):+.2f}** "
                     f"(p = {float(r['spearman_p']):.2f}) | rho {float(r['layer_spearman']):+.2f} ({r['layers']} layers) "
                     f"| {float(r['pruned_loss_change_mean']):+.5f} / {float(r['kept_loss_change_mean']):+.5f} "
                     f"| {float(r['seconds']):.0f} s |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default=None, help="a finished run to audit (default: train the demo)")
    p.add_argument("--out", default=None, help="CSV (default benchmarks/results/ablation_demo.csv)")
    args = p.parse_args()

    from e2vpt.analysis.ablation import prompt_ablation
    from e2vpt.analysis.pruning_views import load_pruning
    from e2vpt.config import TrainConfig
    from e2vpt.runs import RunDir
    from e2vpt import train

    stamp = provenance("cpu")  # the code and defaults this run starts with
    if args.run:
        run = Path(args.run)
    else:
        run = Path(tempfile.mkdtemp(prefix="e2vpt-ablation-")) / "demo"
        train(TrainConfig(), run, quiet=True)
    config, summary = RunDir(run).config(), RunDir(run).summary() or {}
    rows = []
    for record in load_pruning(run)["rounds"]:
        if record["round"] < 1 or record.get("token_importance") is None:
            continue
        audit = prompt_ablation(run, record["round"], refresh=True)
        rows.append({"round": record["round"], "tokens": len(audit["tokens"]), "layers": len(audit["layers"]),
                     "images": audit["images"],
                     "spearman": round(audit["spearman"], 4), "spearman_p": round(audit["spearman_p"], 4),
                     "layer_spearman": round(audit["layer_spearman"], 4),
                     "layer_spearman_p": round(audit["layer_spearman_p"], 4),
                     "pruned_loss_change_mean": round(sum(t["val_loss_change"] for t in audit["tokens"] if t["pruned"])
                                                      / max(1, sum(t["pruned"] for t in audit["tokens"])), 6),
                     "kept_loss_change_mean": round(sum(t["val_loss_change"] for t in audit["tokens"] if not t["pruned"])
                                                    / max(1, sum(not t["pruned"] for t in audit["tokens"])), 6),
                     "seconds": audit["seconds"], "test_acc": summary.get("test_acc"),
                     "token_importance": config.get("token_importance"), "run": str(run),
                     "defaults_used": not args.run, **stamp})
        print(f"round {rows[-1]['round']}: {rows[-1]['tokens']} tokens, rho {rows[-1]['spearman']:+.3f} "
              f"(p {rows[-1]['spearman_p']:.3f}); layers rho {rows[-1]['layer_spearman']:+.3f}; mean loss change "
              f"pruned {rows[-1]['pruned_loss_change_mean']:+.5f} vs kept {rows[-1]['kept_loss_change_mean']:+.5f}; "
              f"{audit['seconds']:.0f} s")
    write_csv(Path(args.out) if args.out else RESULTS / "ablation_demo.csv", rows)
    if not args.out and not args.run:  # the published table: the default demo, written by this script only
        write_readme_block("ablation", render(read_csv(RESULTS / "ablation_demo.csv")))
    print("ablation: " + ", ".join(f"round {r['round']} rho {r['spearman']:+.2f} (p {r['spearman_p']:.2f})" for r in rows))


if __name__ == "__main__":
    main()
