# The throwaway driver that ran seeds 18 and 19 of the quickstart for seeds.json (2026-12-01/02), kept as
# the record of how they ran: the quickstart's own worker and YAMLs with the demo's settings (Plan()), and
# variables.seed overridden -- what `bash scripts/quickstart.sh --seed N` now does, one run after the other.
# Ran as `OMP_NUM_THREADS=1 python driver.py --seeds 18,19` (and `--seeds 19 --arms let` in a second process),
# beside benchmark runs: only losses are reported from it. Seed 17 is the 2026-12-01 run of
# `bash scripts/quickstart.sh` (bench/reported/quickstart/summary.json; two torch threads, another machine).
"""Quickstart seed noise: baseline and LET (the demo's settings) at seeds given on the command line."""
import argparse, json, os, subprocess, sys, time
from pathlib import Path
from composer_let.prep import quickstart as qs

p = argparse.ArgumentParser()
p.add_argument('--seeds', default='17,18,19')
p.add_argument('--arms', default='baseline,let')
p.add_argument('--extra', default='', help='extra overrides for the let arm, ;-separated')
p.add_argument('--tag', default='')
p.add_argument('--out', default='/tmp/q/qs')
a = p.parse_args()
plan = qs.FULL
ns = argparse.Namespace(work='/work/main/work', teacher=None, data=None)
teacher, data = qs.prepare_assets(ns, plan)
yamls = qs.yamls_folder()
for seed in a.seeds.split(','):
    for arm in a.arms.split(','):
        folder = Path(a.out) / f'{arm}{a.tag}-s{seed}'
        rec = folder / 'record.json'
        if rec.exists():
            continue
        folder.mkdir(parents=True, exist_ok=True)
        ov = [f'variables.teacher={teacher.resolve()}', f'variables.data_local={data.resolve()}',
              f'variables.run_name=qs-{arm}-s{seed}', *plan.overrides(), f'variables.seed={seed}']
        if arm == 'let' and a.extra:
            ov += a.extra.split(';')
        cmd = [sys.executable, '-m', 'composer_let.prep.quickstart', '--worker',
               str(yamls / 'cpu' / f'quickstart-{arm}.yaml'), str(rec), arm, *ov]
        t = time.time(); load = os.getloadavg()
        subprocess.run(cmd, cwd=folder, check=True, stdout=open(folder / 'log.txt', 'w'), stderr=subprocess.STDOUT)
        r = json.loads(rec.read_text())
        ev = r.get('eval') or r.get('evals')
        print(arm + a.tag, seed, 'wall', round(time.time() - t), 'load', load, os.getloadavg(), 'eval', json.dumps(ev)[-200:], flush=True)
