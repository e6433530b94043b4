"""What one λ0 means at each target width: the alignment's pull per unit of λ on the first batch.

The cosine loss pulls with a force of about sinθ/‖h‖, so the same λ0 is a different strength at every
width (issues 10 §3 and 11). This measures ``let/grad_ratio / let/lambda`` on batch 1, i.e.
‖∇_h L_align‖ / ‖∇_h L_CE‖ at the hooked block of an untrained target, through the real path: the
teacher-ahead regime's target (8 blocks, heads of 32) at each width, one short LET run per width through
llm-foundry's ``train_from_yaml`` with the cached late-phase teacher. Only batch 1 is read, so a few
steps are enough; runs are cached in ``<results>/runs`` like ``convergence.py``'s.

    python bench/pull_per_lambda.py --widths 32,64,128,192,512,1024,2048 \\
        --out bench/reported/regimes/pull-per-lambda.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from analysis import pull_per_lambda
from common import RESULTS, machine_facts, write_json
from convergence import TARGET, cached_run, make_plan, parse_arm, run_path


def pull(width: int, steps: int, results: Path, embed_scale: float | None = None) -> dict[str, Any]:
    """One LET run of ``steps`` steps at ``width`` (cached); its first batch's gradient ratio per unit of λ."""
    default = width == TARGET['hidden']  # the default width keeps the regime's plan name
    plan = make_plan(
        'teacher-ahead',
        results / 'cache',
        width=None if default else width,
        target_steps=steps,
        embed_scale=embed_scale,
    )
    arm, seed = parse_arm('let'), 1
    path = run_path(results / 'runs', arm, seed, plan, plan['teacher'])
    record = cached_run(arm, seed, plan, plan['teacher'], path)
    return {
        'width': width,
        'embed_scale': embed_scale or 1.0,
        'non_embedding_params': record['params']['non_embedding'],
        'grad_ratio_per_lambda_batch_1': pull_per_lambda(record['series']),
        'run': path.name,
    }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--widths', default='32,64,128,192,512,1024,2048', help='comma list of target widths')
    parser.add_argument('--steps', type=int, default=3, help='steps per run (only batch 1 is read)')
    parser.add_argument('--results', type=Path, default=RESULTS, help='results root (default bench/results)')
    parser.add_argument(
        '--embed-scales', default='1', help="comma list: the target's tied embedding scaled at init (width-free knob)"
    )
    parser.add_argument('--out', type=Path, help='also write the table as JSON here')
    args = parser.parse_args(argv)
    widths = [int(w) for w in args.widths.split(',') if w.strip()]
    scales = [float(e) for e in args.embed_scales.split(',') if e.strip()]
    rows = [pull(w, args.steps, args.results, e) for w in widths for e in scales]
    print(
        '| width | embedding scale | target non-embedding | grad_ratio per unit λ, batch 1 |\n| --- | --- | --- | --- |'
    )
    for row in rows:
        ratio = row['grad_ratio_per_lambda_batch_1']
        print(f'| {row["width"]} | {row["embed_scale"]:g} | {row["non_embedding_params"] / 1e6:.2f}M | {ratio:.3f} |')
    if args.out:
        write_json(args.out, {'rows': rows, 'steps': args.steps, 'machine': machine_facts()})
    return rows


if __name__ == '__main__':
    main()
