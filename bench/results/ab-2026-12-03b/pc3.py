import os,resource,time,sys,ctypes
libc=ctypes.CDLL("libc.so.6",use_errno=True)
SFR_WRITE=2
buf=os.urandom(1<<20)
def ru(): return time.thread_time()
def run(name,total,mode):
    p='/work/pc.test'
    if os.path.exists(p): os.unlink(p)
    fd=os.open(p,os.O_WRONLY|os.O_CREAT)
    w=0;o=0;off=0;last_sync=time.time();synced=0;t0=time.time()
    for i in range(total):
        c=ru(); os.pwrite(fd,buf,off); w+=ru()-c; off+=1<<20
        c=ru()
        if mode=='fadv' and off%(8<<20)==0:
            lo=max(0,off-(24<<20)); os.posix_fadvise(fd,lo,off-lo,os.POSIX_FADV_DONTNEED)
        if mode=='stream' and off%(8<<20)==0:
            libc.sync_file_range(fd,ctypes.c_longlong(off-(8<<20)),ctypes.c_longlong(8<<20),SFR_WRITE)
            if off>=16<<20: os.posix_fadvise(fd,off-(16<<20),8<<20,os.POSIX_FADV_DONTNEED)
        if time.time()-last_sync>=1.0:
            os.fdatasync(fd); os.posix_fadvise(fd,synced//4096*4096,off-synced,os.POSIX_FADV_DONTNEED); synced=off; last_sync=time.time()
        o+=ru()-c
        # pace to ~300 MiB/s
        dt=t0+(i+1)/300-time.time()
        if dt>0: time.sleep(dt)
    os.close(fd); os.unlink(p)
    print(f'{name}: write {w:.3f}s other {o:.3f}s total {w+o:.3f}')
for r in range(3):
    run('sync1s',276,'plain'); time.sleep(3)
    run('fadv8M',276,'fadv'); time.sleep(3)
    run('stream8M',276,'stream'); time.sleep(3)
