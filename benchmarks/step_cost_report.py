"""benchmarks/step_cost.py's README blocks (`step_cost`, `step_cost_pruned_tokens`), from its result
file's rows (strings, as `common.read_csv` returns them): kept apart from the measuring script, which
is long enough, and read by benchmarks/stale.py without importing torch."""

from __future__ import annotations

from common import met, provenance_line

LABELS = {"vit_b": "ViT-B/16 @224", "demo": "demo ViT @32"}
TARGETS = {"step": 0.75, "memory": 0.6, "prompts": 0.03, "removed": 0.9}  # x full, x full, over frozen, x zeroed


def render(rows: list[dict]) -> str:
    """A README block: `step_cost_pruned_tokens` when the rows are that section alone, else `step_cost`
    (the first backbone's table, ViT-B/16's when measured, issue 6's targets, the other tables' figures)."""
    if rows and {r["section"] for r in rows} == {"pruned-tokens"}:
        return _render_pruned(rows, provenance_line(rows[0])) + "\n"
    ms = lambda r: float(r["median_ms"])  # noqa: E731
    pick = lambda section, bb, start: next((r for r in rows if r["section"] == section  # noqa: E731
                                            and r["backbone"] == bb and r["config"].startswith(start)), None)
    head = "vit_b" if pick("main", "vit_b", "") else "demo"
    sel = [r for r in rows if r["section"] == "main" and r["backbone"] == head]
    if not sel:
        return "No result yet: run the command above.\n"
    lines = [f"{LABELS[head]}, batch {sel[0]['batch']}, one AdamW step, median of {sel[0]['n_steps']} interleaved "
             f"steps; peak memory: {sel[0]['memory_method']}; {provenance_line(sel[0])}.", "",
             "| config | step ms | x full step | peak MB | x full memory | trainable |", "|" + "---|" * 6]
    for r in sel:
        label = (f"frozen + input grad, {r['p']} extra tokens" if r["method"] == "frozen+grad" else
                 f"{r['config'].replace(' pruned', '')} after pruning ({100 * float(r['keep']):.0f} % of tokens kept)"
                 if r["keep"] else r["config"])
        lines.append(f"| {label} | {ms(r):.0f} | {float(r['step_vs_full']):.2f} | {float(r['peak_mb']):.0f} "
                     f"| {float(r['mem_vs_full']):.2f} | {int(r['trainable']):,} |")
    e2 = next(r for r in sel if r["method"] == "e2vpt" and not r["keep"])
    vd = next(r for r in sel if r["method"] == "vpt-deep")
    step, mem, t = float(e2["step_vs_full"]), float(e2["mem_vs_full"]), TARGETS
    over = [100 * float(vd["vs_frozen_same_tokens"]), 100 * float(e2["vs_frozen_same_tokens"])]
    text = [f"Targets (issue 6): E2VPT step <= {t['step']}x full: **{step:.2f}, {met(step <= t['step'])}**; peak "
            f"memory <= {t['memory']}x full: **{mem:.2f}, {met(mem <= t['memory'])}**; prompts add <= "
            f"{100 * t['prompts']:.0f} % over a frozen forward/backward with the same tokens: **VPT-deep "
            f"{over[0]:+.1f} %, E2VPT {over[1]:+.1f} % (its key-value prompts included), "
            f"{met(max(over) <= 100 * t['prompts'])}**."]
    for bb in [b for b in LABELS if b != head and pick("main", b, "full")]:
        other = pick("main", bb, f"e2vpt p={e2['p']} l={e2['l']}")
        text.append(f"On the {LABELS[bb]} (batch {other['batch']}) E2VPT's step is {float(other['step_vs_full']):.2f}x "
                    f"full fine-tuning's and its peak memory {float(other['mem_vs_full']):.2f}x.")
    layer = [(bb, pick("layer", bb, "fully pruned layer (no kv)"), pick("layer", bb, "frozen timm block"))
             for bb in LABELS if pick("layer", bb, "frozen timm block")]
    if layer:
        text.append(f"A fully pruned layer against the frozen timm block (one block, forward + backward, median of "
                    f"{layer[0][1]['n_steps']}): " + ", ".join(f"{100 * (ms(a) / ms(b) - 1):+.1f} % on the {LABELS[bb]}"
                                                              for bb, a, b in layer) + ".")
    for bb in LABELS:
        gp = [r for r in rows if r["section"] == "growth-p" and r["backbone"] == bb and r["method"] == "frozen+grad"]
        gl = [r for r in rows if r["section"] == "growth-l" and r["backbone"] == bb]
        if gp and gl:
            text.append(f"Growth on the {LABELS[bb]}: the frozen forward/backward with p={gp[-1]['p']} extra tokens "
                        f"takes {ms(gp[-1]) / ms(gp[0]):.2f}x the p={gp[0]['p']} step; E2VPT's step with "
                        f"l={gl[-1]['l']} key-value prompts is {100 * (ms(gl[-1]) / ms(gl[0]) - 1):+.0f} % over "
                        f"l={gl[0]['l']}.")
    pruned = [r for r in rows if r["section"] == "pruned-tokens"]
    if pruned:
        text.append("In this run, " + _render_pruned(pruned))
    return "\n".join(lines + ["", " ".join(text)]) + "\n"


def _render_pruned(rows: list[dict], provenance: str | None = None) -> str:
    """The removed-vs-zeroed sentence, from the pruned-tokens rows (removed first, as `plan` orders them)."""
    removed, zeroed = rows[0], rows[1]
    r_ms, z_ms, p = float(removed["median_ms"]), float(zeroed["median_ms"]), int(removed["p"])
    return (f"{LABELS[removed['backbone']]}, batch {removed['batch']}, p={p} with "
            f"{p - round(p * float(removed['keep']))} tokens pruned, median of {removed['n_steps']} interleaved steps"
            f"{'; ' + provenance if provenance else ''}: removed from the sequence (`studio`, `paper`) **{r_ms:.0f} "
            f"ms**, kept as zero tokens (`official`) **{z_ms:.0f} ms**: removed = **{r_ms / z_ms:.2f}x** zeroed "
            f"(target <= {TARGETS['removed']}: {met(r_ms / z_ms <= TARGETS['removed'])}); peak memory "
            f"{float(removed['peak_mb']):.0f} vs {float(zeroed['peak_mb']):.0f} MB.")
