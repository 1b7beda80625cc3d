import os, mmap, time, sys
bs = int(sys.argv[1]) << 20
n = (256 << 20) // bs
buf = mmap.mmap(-1, bs); buf.write(b'x' * bs)
fd = os.open('/tmp/diot', os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o600)
lat = []
t0 = time.perf_counter()
for i in range(n):
    t = time.perf_counter()
    os.pwritev(fd, [buf], i * bs)
    lat.append(time.perf_counter() - t)
tot = time.perf_counter() - t0
os.fdatasync(fd)
lat.sort()
print(f"bs {bs>>20} MiB: {256/tot:.0f} MiB/s, median {lat[len(lat)//2]*1e3/(bs>>20):.2f} ms/MiB p90 {lat[int(len(lat)*.9)]*1e3/(bs>>20):.2f}")
os.unlink('/tmp/diot')
