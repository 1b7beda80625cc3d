import os, mmap, time, sys
def cpu():
    f = open('/proc/stat').readline().split()[1:]
    v = list(map(int, f)); return (sum(v) - v[3] - v[4]) / os.sysconf('SC_CLK_TCK')
mode = sys.argv[1]; bs = 1 << 20; n = 1024
buf = mmap.mmap(-1, bs); buf.write(b'x' * bs)
flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (os.O_DIRECT if mode == 'direct' else 0)
fd = os.open('/tmp/diot', flags, 0o600)
c0 = cpu(); r0 = os.times(); t0 = time.perf_counter()
for i in range(n):
    os.pwritev(fd, [buf], i * bs)
    if mode == 'stream' and i % 8 == 7 and i >= 24:
        os.posix_fadvise(fd, (i-31)*bs if i>=31 else 0, 24*bs, os.POSIX_FADV_DONTNEED)
    if i % 256 == 255: os.fdatasync(fd)
os.fdatasync(fd)
t = time.perf_counter() - t0; r1 = os.times(); c1 = cpu()
print(f"{mode}: {n/t:.0f} MiB/s, proc cpu {(r1.user+r1.system-r0.user-r0.system)/4:.3f} s per 256MiB, system {(c1-c0)/4:.3f} s per 256 MiB")
os.unlink('/tmp/diot')
