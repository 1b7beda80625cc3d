import re,sys,statistics as st
from collections import defaultdict
for f in sys.argv[1:]:
    d=defaultdict(list); cpu=defaultdict(list)
    for l in open(f):
        m=re.search(r'bench: (\w+) (B\d) run (\d+): ([\d.]+)s (\d+) MiB/s cpu (\{.*\})',l)
        if m:
            d[(m[1],m[2])].append(int(m[5]))
            cpu[(m[1],m[2])].append(m[6])
    print(f)
    for test in sorted(set(k[0] for k in d)):
        row={b:st.median(d[(test,b)]) for (t,b) in d if t==test}
        s=' '.join(f'{b}={row[b]:.0f}' for b in sorted(row))
        r=row.get('B2',0)/row['B3'] if 'B3' in row else 0
        # paired ratio
        pr=[a/b for a,b in zip(d[(test,'B2')],d[(test,'B3')])] if (test,'B3') in d else []
        print(f'  {test}: {s} ratio(med)={r:.3f} paired-med={st.median(pr) if pr else 0:.3f} n={len(d[(test,"B2")])}')
