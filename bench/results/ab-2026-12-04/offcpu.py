import sys,re,collections
out={}; agg=collections.defaultdict(float); cnt=collections.Counter()
cur=None; stack=[]
def flush():
    global cur,stack
    if cur is None: return
    t,prev,pst,nxt,pcomm=cur
    if pcomm.startswith('postern-rec'):
        fr=[s for s in stack if not re.search(r'__schedule|schedule\b|schedule\+|entry_SYSCALL|do_syscall_64|exit_to_user|irqentry|preempt',s)]
        key=pst+' '+' < '.join(fr[:3])
        out[prev]=(t,key)
    if nxt in out:
        t0,key=out.pop(nxt); agg[key]+=t-t0; cnt[key]+=1
    cur=None; stack=[]
for l in sys.stdin:
    m=re.match(r'\s*(\S+)\s+(\d+)\s+\[\d+\]\s+([\d.]+): sched:sched_switch: prev_comm=(.*?) prev_pid=(\d+) prev_prio=\d+ prev_state=(\S+) ==> next_comm=.*? next_pid=(\d+)',l)
    if m:
        flush(); cur=(float(m[3]),m[5],m[6],m[7],m[4]); continue
    s=l.strip()
    if s and cur: 
        f=s.split()[1].split('+')[0] if len(s.split())>1 else s
        stack.append(f)
flush()
tot=sum(agg.values())
for k,v in sorted(agg.items(),key=lambda x:-x[1])[:25]: print(f"{v*1000:8.1f} ms {cnt[k]:6d}  {k}")
print('total',tot)
