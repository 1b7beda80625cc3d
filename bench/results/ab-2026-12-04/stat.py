import time,sys
out=open(sys.argv[1],'w')
while True:
    v=open('/proc/stat').readline().split()[1:]
    out.write(f"{time.time():.3f} {' '.join(v)}\n"); out.flush()
    time.sleep(0.05)
