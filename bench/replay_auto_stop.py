"""When would ``stop: auto`` have fired? Replays ``AutoStop`` on the CEs logged by finished runs.

Reads the per-batch ``let/teacher_ce`` and ``let/student_ce`` of every LET run in the report JSONs
(``bench/reported/regimes/<regime>.json``, written by ``bench/report.py``) and feeds them to
``composer_let.control.AutoStop`` (``analysis.simulate_auto_stop``) with each ``--horizon``; prints
the batch it would fire at (``-``: not within the logged, active phase). Exact for runs whose λ
schedule is the one ``stop: auto`` follows before it fires (λ0 · linear to 0 at ``stop_max`` =
0.5dur: the ``stop=0.5dur`` arms); for other arms an estimate, since the guidance shapes the CEs.

    python bench/replay_auto_stop.py --horizons 1,0.5,0 --arms 'let;let:lambda0=3;let:lambda0=3,stop=0.5dur'
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from analysis import simulate_auto_stop

REPORTED = Path(__file__).resolve().parent / 'reported' / 'regimes'


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--regimes', default='teacher-ahead,overtake,weak-teacher')
    parser.add_argument(
        '--arms', default='let;let:lambda0=3;let:lambda0=3,stop=0.5dur', help="';'-separated, as in convergence.py"
    )
    parser.add_argument('--horizons', default='1,0.5,0', help='AutoStop.horizon values (0: the default)')
    args = parser.parse_args()
    horizons = [float(h) for h in args.horizons.split(',')]
    wanted = {a.strip() for a in args.arms.split(';') if a.strip()}
    print(f'{"regime":14s} {"arm":28s} seed  logged to  fires at (horizon {" / ".join(f"{h:g}" for h in horizons)})')
    for regime in args.regimes.split(','):
        for run in json.loads((REPORTED / f'{regime}.json').read_text())['runs']:
            name, series = run['arm']['name'], run['series']
            if name not in wanted or 'let/teacher_ce' not in series:
                continue
            last = int(series['let/teacher_ce'][-1][0])
            batches = [simulate_auto_stop(series, horizon=h) for h in horizons]
            fired = ' / '.join('-' if b is None else str(b) for b in batches)
            print(f'{regime:14s} {name:28s} {run["seed"]:4d}  {last:9d}  {fired}')


if __name__ == '__main__':
    main()
