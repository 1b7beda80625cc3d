import re,sys,ast,statistics as st
from collections import defaultdict
for f in sys.argv[1:]:
    c=defaultdict(lambda: defaultdict(list))
    for l in open(f):
        m=re.search(r'bench: (\w+) (B\d) run (\d+): ([\d.]+)s (\d+) MiB/s cpu (\{.*\})',l)
        if m:
            d=ast.literal_eval(m[6])
            for k,v in d.items():
                if k in('target','postern','client','jump'): c[(m[1],m[2])][k].append(v)
            c[(m[1],m[2])]['wall'].append(float(m[4]))
    print(f)
    for k in sorted(c):
        if k[1] in ('B2','B3'):
            print(' ',k, ' '.join(f'{n}={st.median(v):.3f}' for n,v in c[k].items()))
