"""bench/summarize.py: the table of bench/compare.sh (called by it; not meant to be run alone).

Reads runs.tsv (arch, impl = ours | base | torch, rep, exit status, path of our --report JSON or
torch_ref's stdout), the sgemm_peak and fma_peak JSON files, prints a plain-text table and the same as markdown, optionally
writes the markdown to --md FILE. Exit status: 1 if a run failed, or with --strict 1 if a
target was missed; 0 otherwise.
"""
import argparse
import datetime
import json
import statistics
import sys

TARGETS = {'mlp': 2.0, 'cnn': 2.0, 'resnet': 2.0, 'main': 2.0}  # ours / torch samples/s (issue 16)
FMA_TARGETS = {'cnn': 60.0, 'resnet': 60.0, 'main': 60.0}  # % of the FMA limit (issue 16)


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
    p.add_argument('--fma', action='append', default=[])
    # The string options and their defaults (the run's description, --md FILE, --strict 0|1).
    for name, default in (
        ('coretype', ''),
        ('epochs', '1'),
        ('torch-epochs', '1'),
        ('threads', '2'),
        ('batch', '64'),
        ('command', 'bench/compare.sh'),
        ('git', 'unknown'),
        ('cpu', ''),
        ('torch-version', ''),
        ('load', ''),
        ('md', ''),
        ('strict', '0'),
    ):
        p.add_argument('--' + name, default=default)
    a = p.parse_args()

    peaks = []
    for path in a.sgemm:
        try:
            with open(path) as f:
                peaks.append(json.load(f)['gflops'])
        except (OSError, ValueError, KeyError):
            pass
    peak = max(peaks) if peaks else None
    fmas, fma_detail = [], None
    for path in a.fma:
        try:
            with open(path) as f:
                j = json.load(f)
            fmas.append(j['gflops'])
            if fma_detail is None or j['gflops'] >= max(fmas):
                fma_detail = j
        except (OSError, ValueError, KeyError):
            pass
    fma = max(fmas) if fmas else None

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
                    if impl in ('ours', 'base'):
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
        base = runs.get((arch, 'base'), [])
        ok_o = [r for r in ours if r]
        ok_t = [r for r in torch if r]
        ok_b = [r for r in base if r]
        med_o = statistics.median(r['sps'] for r in ok_o) if ok_o else None
        med_t = statistics.median(r['sps'] for r in ok_t) if ok_t else None
        med_b = statistics.median(r['sps'] for r in ok_b) if ok_b else None
        ratio = med_o / med_t if med_o and med_t else None
        ratio_b = med_o / med_b if med_o and med_b else None
        target = TARGETS.get(arch)
        met = None if ratio is None or target is None else ratio >= target
        p_o = sorted({r['params'] for r in ok_o})
        p_t = sorted({r['params'] for r in ok_t})
        params_ok = p_o == p_t
        if p_o and p_t and not params_ok:
            notes.append(f'{arch}: PARAMS MISMATCH: ours {p_o} vs torch {p_t}: the models differ, '
                         f'so the comparison is not like for like')
        flops = next((r['flops'] for r in ok_o if r.get('flops')), None)
        frac = lambda sps: (6.0 * flops * sps / (peak * 1e9)) if flops and peak and sps else None
        ffrac = lambda sps: (6.0 * flops * sps / (fma * 1e9)) if flops and fma and sps else None
        fma_t = FMA_TARGETS.get(arch)
        fma_met = None if fma_t is None or ffrac(med_o) is None else 100 * ffrac(med_o) >= fma_t
        if met is not True or fma_met is False:
            all_met = False
        rows.append(dict(
            arch=arch,
            ours=' '.join(fmt(r and r['sps'], '.0f', 'FAIL') for r in ours),
            torch=' '.join(fmt(r and r['sps'], '.0f', 'FAIL') for r in torch),
            ratio=fmt(ratio, '.2f'),
            base=' '.join(fmt(r and r['sps'], '.0f', 'FAIL') for r in base),
            ratio_b=fmt(ratio_b, '.3f'),
            target=f'>= {target:.1f}x' if target else '-',
            met={True: 'yes', False: 'NO', None: '?'}[met],
            acc_o=' '.join(fmt(r and 100 * r['acc'], '.2f', 'FAIL') for r in ours),
            acc_t=' '.join(fmt(r and 100 * r['acc'], '.2f', 'FAIL') for r in torch),
            params=(f"{'/'.join(map(str, p_o)) or '-'} / {'/'.join(map(str, p_t)) or '-'}"
                    + ('' if params_ok or not (p_o and p_t) else ' MISMATCH')),
            mflops=fmt(flops and flops / 1e6, '.2f'),
            frac_o=fmt(frac(med_o) and 100 * frac(med_o), '.1f'),
            frac_t=fmt(frac(med_t) and 100 * frac(med_t), '.1f'),
            ffrac_o=fmt(ffrac(med_o) and 100 * ffrac(med_o), '.1f')
            + (f' (< {fma_t:.0f})' if fma_met is False else ''),
            ffrac_t=fmt(ffrac(med_t) and 100 * ffrac(med_t), '.1f'),
        ))

    have_t = any(runs.get((x, 'torch')) for x in archs)
    have_b = any(runs.get((x, 'base')) for x in archs)
    cols = [('arch', 'arch'), ('ours', 'ours samples/s')]
    if have_b:
        cols += [('base', 'base samples/s'), ('ratio_b', 'ours / base')]
    if have_t:
        cols += [('torch', 'torch samples/s'), ('ratio', 'ratio'), ('target', 'target'),
                 ('met', 'met?')]
    cols += [('acc_o', 'ours test acc %')]
    if have_t:
        cols += [('acc_t', 'torch test acc %'), ('params', 'params ours / torch')]
    cols += [('mflops', 'fwd MMAC/sample'), ('ffrac_o', 'ours % FMA limit')]
    if have_t:
        cols += [('ffrac_t', 'torch % FMA limit')]
    cols += [('frac_o', 'ours % sgemm peak')]
    if have_t:
        cols += [('frac_t', 'torch % sgemm peak')]
    if not have_t:
        all_met = False  # nothing to compare with: the targets cannot be checked

    when = datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')
    epochs_note = f'{a.epochs} epoch(s) each' if a.epochs == a.torch_epochs else \
        f'ours {a.epochs} epoch(s), torch {a.torch_epochs} epoch(s) (NOT the same: quick check only)'
    header = [
        f'command: {a.command}',
        f'date: {when}; git: {a.git}; CPU: {a.cpu}; torch {a.torch_version}',
        f'threads {a.threads}, batch {a.batch}, {epochs_note}; runs alternate '
        + '/'.join(['ours'] + (['base'] if have_b else []) + (['torch'] if have_t else []))
        + f' per arch; OPENBLAS_CORETYPE={a.coretype or "?"}',
        f'FMA limit ({a.threads} threads, best of {", ".join(fmt(x, ".1f") for x in fmas) or "-"}): '
        f'{fmt(fma, ".1f")} GFLOP/s'
        + (f' (AVX-512 1 / {a.threads} threads {fma_detail["avx512_1t"]:.1f} / {fma_detail["avx512"]:.1f}, '
           f'AVX2 {fma_detail["avx2_1t"]:.1f} / {fma_detail["avx2"]:.1f})' if fma_detail else ''),
        f'sgemm peak ({a.threads} threads, best of {", ".join(fmt(x, ".1f") for x in peaks) or "-"}): '
        f'{fmt(peak, ".1f")} GFLOP/s; load average (1/5/15 min) start -> end: {a.load}',
    ]
    footer = [
        'ratio = median(ours samples/s) / median(torch samples/s) (ours / base likewise); samples/s '
        'count training steps only (no evaluation).',
        '% FMA limit = 3 x 2 x fwd MAC/sample x samples/s / FMA limit (bench/fma_peak.c: chains of '
        'independent FMAs; forward + backward ~ 3x the forward multiply-adds; the same MAC count is '
        'used for torch); % sgemm peak likewise against OpenBLAS sgemm at n <= 2048. Target: '
        + ', '.join(f'{k} >= {v:.0f}%' for k, v in FMA_TARGETS.items()) + '.',
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
