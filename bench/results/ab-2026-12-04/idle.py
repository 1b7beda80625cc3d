import sys,re
st=[l.split() for l in open(sys.argv[1])]
st=[(float(r[0]),list(map(int,r[1:]))) for r in st]
for l in open(sys.argv[2]):
    m=re.match(r'([\d.]+) bench: (\w+) (B\d) run (\d+): ([\d.]+)s',l)
    if not m: continue
    end=float(m[1]); dur=float(m[5]); beg=end-dur
    # window inside the run
    s=[x for x in st if beg+0.05<=x[0]<=end-0.02]
    if len(s)<2: continue
    a,b=s[0][1],s[-1][1]; d=[y-x for x,y in zip(a,b)]; tot=sum(d)
    names=['user','nice','sys','idle','iowait','irq','softirq','steal']
    print(m[2],m[3],m[4],' '.join(f"{n}={d[i]/tot*200:.0f}%" for i,n in enumerate(names)), f"(of 200%) secs={s[-1][0]-s[0][0]:.2f}")
