import os,resource,time,sys
buf=os.urandom(1<<20)
def ru(): r=resource.getrusage(resource.RUSAGE_SELF); return r.ru_utime+r.ru_stime
def run(name, total, sync_every=0, drop=False, overwrite=0):
    p='/work/pc.test'
    if os.path.exists(p): os.unlink(p)
    fd=os.open(p,os.O_WRONLY|os.O_CREAT)
    wcpu=0; synccpu=0; off=0; last=0
    t0=time.time()
    for i in range(total):
        at = (off % overwrite) if overwrite else off
        c=ru(); os.pwrite(fd,buf,at); wcpu+=ru()-c
        off+=len(buf)
        if sync_every and off-last>=sync_every<<20:
            c=ru(); os.fdatasync(fd)
            if drop: os.posix_fadvise(fd,last,off-last,os.POSIX_FADV_DONTNEED)
            synccpu+=ru()-c; last=off
    os.close(fd); os.unlink(p)
    print(f'{name}: write cpu {wcpu:.3f}s ({total/wcpu:.0f} MiB/s) sync+drop cpu {synccpu:.3f} wall {time.time()-t0:.2f}')
n=int(sys.argv[1]) if len(sys.argv)>1 else 512
run('overwrite 64M',n,overwrite=64<<20)
run('fresh, no sync',n)
run('fresh, sync 64M',n,sync_every=64)
run('fresh, sync+drop 64M',n,sync_every=64,drop=True)
run('fresh, sync+drop 256M',n,sync_every=256,drop=True)
run('overwrite 64M',n,overwrite=64<<20)
