"""bench/summarize.py: the table of bench/compare.sh (called by it; not meant to be run alone).

Reads runs.tsv (arch, impl, rep, exit status, path of our --report JSON or torch_ref's stdout)
and the sgemm_peak JSON files, prints a plain-text table and the same as markdown, optionally
writes the markdown to --md FILE. Exit status: 1 if a run failed, or with --strict 1 if a
target was missed; 0 otherwise.
"""
import argparse
import datetime
import json
import statistics
import sys

TARGETS = {'mlp': 1.5, 'cnn': 1.5, 'resnet': 1.0}  # ours / torch samples/s, issue "training engine"


def load_json_line(path):
    """torch_ref prints one JSON line (possibly after warnings): the last line starting with '{'."""
    with open(path) as f:
        lines = [l for l in f.read().splitlines() if l.startswith('{')]
    return json.loads(lines[-1])


def fmt(x, spec='.0f', none='-'):
    return none if x is None else format(x, spec)


def main():
    p = argparse.ArgumentParser()
    p.add_argument('--runs', required=True)
    p.add_argument('--sgemm', action='append', default=[])
    p.add_argument('--epochs', default='1')
    p.add_argument('--torch-epochs', default='1')
    p.add_argument('--threads', default='2')
    p.add_argument('--batch', default='64')
    p.add_argument('--command', default='bench/compare.sh')
    p.add_argument('--git', default='unknown')
    p.add_argument('--cpu', default='')
    p.add_argument('--torch-version', default='')
    p.add_argument('--load', default='')
    p.add_argument('--md', default='')
    p.add_argument('--strict', default='0')
    a = p.parse_args()

    peaks = []
    for path in a.sgemm:
        try:
            with open(path) as f:
                peaks.append(json.load(f)['gflops'])
        except (OSError, ValueError, KeyError):
            pass
    peak = max(peaks) if peaks else None

    archs, runs, failed = [], {}, []
    with open(a.runs) as f:
        for line in f:
            if not line.strip():
                continue
            arch, impl, rep, status, path = line.rstrip('\n').split('\t')
            if arch not in archs:
                archs.append(arch)
            r = None
            if status == '0':
                try:
                    if impl == 'ours':
                        with open(path) as g:
                            j = json.load(g)
                        r = dict(sps=j['samples_per_second'], acc=j['test_accuracy'], params=j['params'],
                                 flops=j.get('macs_per_sample', j.get('flops_per_sample')), secs=j.get('train_seconds'))
                    else:
                        j = load_json_line(path)
                        r = dict(sps=j['samples_per_s'], acc=j['test_acc'], params=j['params'],
                                 flops=None, secs=j.get('train_s'))
                except (OSError, ValueError, KeyError, IndexError) as e:
                    r = None
                    print(f'summarize: cannot read {impl} {arch} run {rep} ({path}): {e}', file=sys.stderr)
            if r is None:
                failed.append(f'{impl} {arch} run {rep}')
            runs.setdefault((arch, impl), []).append(r)

    rows, notes, all_met = [], [], True
    for arch in archs:
        ours = runs.get((arch, 'ours'), [])
        torch = runs.get((arch, 'torch'), [])
        ok_o = [r for r in ours if r]
        ok_t = [r for r in torch if r]
        med_o = statistics.median(r['sps'] for r in ok_o) if ok_o else None
        med_t = statistics.median(r['sps'] for r in ok_t) if ok_t else None
        ratio = med_o / med_t if med_o and med_t else None
        target = TARGETS.get(arch)
        met = None if ratio is None or target is None else ratio >= target
        if met is not True:
            all_met = False
        p_o = sorted({r['params'] for r in ok_o})
        p_t = sorted({r['params'] for r in ok_t})
        params_ok = p_o == p_t
        if p_o and p_t and not params_ok:
            notes.append(f'{arch}: PARAMS MISMATCH: ours {p_o} vs torch {p_t}: the models differ, '
                         f'so the comparison is not like for like')
        flops = next((r['flops'] for r in ok_o if r.get('flops')), None)
        frac = lambda sps: (6.0 * flops * sps / (peak * 1e9)) if flops and peak and sps else None
        rows.append(dict(
            arch=arch,
            ours=' '.join(fmt(r and r['sps'], '.0f', 'FAIL') for r in ours),
            torch=' '.join(fmt(r and r['sps'], '.0f', 'FAIL') for r in torch),
            ratio=fmt(ratio, '.2f'),
            target=f'>= {target:.1f}x' if target else '-',
            met={True: 'yes', False: 'NO', None: '?'}[met],
            acc_o=' '.join(fmt(r and 100 * r['acc'], '.2f', 'FAIL') for r in ours),
            acc_t=' '.join(fmt(r and 100 * r['acc'], '.2f', 'FAIL') for r in torch),
            params=(f"{'/'.join(map(str, p_o)) or '-'} / {'/'.join(map(str, p_t)) or '-'}"
                    + ('' if params_ok or not (p_o and p_t) else ' MISMATCH')),
            mflops=fmt(flops and flops / 1e6, '.2f'),
            frac_o=fmt(frac(med_o) and 100 * frac(med_o), '.1f'),
            frac_t=fmt(frac(med_t) and 100 * frac(med_t), '.1f'),
        ))

    cols = [('arch', 'arch'), ('ours', 'ours samples/s'), ('torch', 'torch samples/s'),
            ('ratio', 'ratio'), ('target', 'target'), ('met', 'met?'), ('acc_o', 'ours test acc %'),
            ('acc_t', 'torch test acc %'), ('params', 'params ours / torch'),
            ('mflops', 'fwd MMAC/sample'), ('frac_o', 'ours % sgemm peak'),
            ('frac_t', 'torch % sgemm peak')]

    when = datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')
    epochs_note = f'{a.epochs} epoch(s) each' if a.epochs == a.torch_epochs else \
        f'ours {a.epochs} epoch(s), torch {a.torch_epochs} epoch(s) (NOT the same: quick check only)'
    header = [
        f'command: {a.command}',
        f'date: {when}; git: {a.git}; CPU: {a.cpu}; torch {a.torch_version}',
        f'threads {a.threads}, batch {a.batch}, {epochs_note}; runs alternate ours/torch per arch',
        f'sgemm peak ({a.threads} threads, best of {", ".join(fmt(x, ".1f") for x in peaks) or "-"}): '
        f'{fmt(peak, ".1f")} GFLOP/s; load average (1/5/15 min) start -> end: {a.load}',
    ]
    footer = [
        'ratio = median(ours samples/s) / median(torch samples/s); samples/s count training steps '
        'only (no evaluation).',
        '% sgemm peak = 3 x 2 x fwd MAC/sample x samples/s / sgemm peak (forward + backward '
        '~ 3x the forward multiply-adds; the same MAC count is used for torch).',
    ] + notes
    if failed:
        footer.append('FAILED runs: ' + ', '.join(failed))

    # plain text
    w = {k: max(len(t), *(len(r[k]) for r in rows)) if rows else len(t) for k, t in cols}
    print()
    for h in header:
        print(h)
    print()
    print('  '.join(t.ljust(w[k]) for k, t in cols))
    print('  '.join('-' * w[k] for k, _ in cols))
    for r in rows:
        print('  '.join(r[k].ljust(w[k]) for k, _ in cols))
    print()
    for fl in footer:
        print(fl)
    print('all targets met: ' + ('yes' if all_met and not failed else 'NO'))

    # markdown
    md = ['```', *header, '```', '',
          '| ' + ' | '.join(t for _, t in cols) + ' |',
          '|' + '|'.join('---' for _ in cols) + '|']
    for r in rows:
        md.append('| ' + ' | '.join(r[k] for k, _ in cols) + ' |')
    md.append('')
    md += [f'- {fl}' for fl in footer]
    md.append(f'- all targets met: {"yes" if all_met and not failed else "**no**"}')
    md_text = '\n'.join(md) + '\n'
    print('\n---- markdown (for docs/BENCHMARKS.md) ----\n')
    print(md_text, end='')
    if a.md:
        try:
            with open(a.md, 'w') as f:
                f.write(md_text)
            print(f'(markdown written to {a.md})', file=sys.stderr)
        except OSError as e:
            print(f'summarize: cannot write {a.md}: {e}', file=sys.stderr)
            return 1

    if failed:
        return 1
    if a.strict == '1' and not all_met:
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
