import re,sys,statistics as st
from collections import defaultdict
# predicted B2/B3 = total CPU of B3's processes / total CPU of B2's, per scenario (medians of per-run totals)
for f in sys.argv[1:]:
    tot=defaultdict(list); thr=defaultdict(list)
    for l in open(f):
        m=re.search(r'bench: (\w+) (B\d) run (\d+): ([\d.]+)s (\d+) MiB/s cpu (\{.*\})',l)
        if not m: continue
        c=eval(m[6]); t=sum(v for k,v in c.items() if k in ('target','postern','client','jump'))
        tot[(m[1],m[2])].append(t); thr[(m[1],m[2])].append(int(m[5]))
    out=[]
    for s in ('output','gate'):
        if (s,'B2') not in tot or (s,'B3') not in tot: continue
        t2,t3=st.median(tot[(s,'B2')]),st.median(tot[(s,'B3')])
        meas=st.median(thr[(s,'B2')])/st.median(thr[(s,'B3')])
        out.append(f"{s}: CPU B2 {t2:.2f} B3 {t3:.2f} s/run -> predicted {t3/t2:.2f} measured {meas:.2f}")
    print(f.split('/')[-1], '|', ' | '.join(out))
