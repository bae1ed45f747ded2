"""Independent reference for pipnet-train's MobileNetV2 backbone: torchvision's layout written
in numpy (float64, no torch), with the ImageNet weights read from the legacy (pre-1.6)
checkpoint by Python's pickle. `python tools/mobilenet_v2_features.py mobilenet_v2-b0353104.pth`
prints the figures that crates/pipnet-train/tests/mobilenet.rs stores.
"""
import collections, pickle, struct, sys
import numpy as np

def read_legacy(path):
    f = open(path, 'rb')
    class Storage:
        def __init__(self, dtype, key): self.dtype, self.key = dtype, key
    def rebuild(storage, offset, size, stride, *a):
        return (storage, offset, tuple(size), tuple(stride))
    class U(pickle.Unpickler):
        def find_class(self, mod, name):
            if name == '_rebuild_tensor_v2': return rebuild
            if name == 'OrderedDict': return collections.OrderedDict
            if name.endswith('Storage'): return name
            return super().find_class(mod, name)
        def persistent_load(self, pid):
            return Storage(pid[1], pid[2])
    for _ in range(3): pickle.load(f)
    sd = U(f).load()
    keys = pickle.load(f)
    kinds = {st.key: st.dtype for st, *_ in sd.values()}
    raw = {}
    for k in keys:
        n = struct.unpack('<q', f.read(8))[0]
        dt = np.float32 if kinds[k] == 'FloatStorage' else np.int64
        raw[k] = np.frombuffer(f.read(n * np.dtype(dt).itemsize), dtype=dt)
    out = {}
    for name, (st, off, size, stride) in sd.items():
        a = raw[st.key]
        out[name] = np.lib.stride_tricks.as_strided(a[off:], shape=size, strides=[s * a.itemsize for s in stride]).copy()
    return out

def conv(x, w, stride, groups):
    # x [C,H,W], w [O, C/groups, k, k], zero padding k//2
    k = w.shape[2]; p = k // 2
    c, h, wd = x.shape
    xp = np.pad(x, ((0, 0), (p, p), (p, p)))
    ho = (h + 2 * p - k) // stride + 1; wo = (wd + 2 * p - k) // stride + 1
    cols = np.empty((c, k, k, ho, wo), np.float64)
    for i in range(k):
        for j in range(k):
            cols[:, i, j] = xp[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride]
    if groups == 1:
        return np.einsum('ocij,cijhw->ohw', w, cols)
    return np.einsum('cij,cijhw->chw', w[:, 0], cols)

def bn(x, sd, name):
    g, b, m, v = (sd[f'{name}.{p}'].astype(np.float64) for p in ('weight', 'bias', 'running_mean', 'running_var'))
    return (x - m[:, None, None]) / np.sqrt(v[:, None, None] + 1e-5) * g[:, None, None] + b[:, None, None]

relu6 = lambda x: np.clip(x, 0, 6)

def features(sd, x, last_stage_stride):
    table = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, last_stage_stride), (6, 320, 1, 1)]
    x = relu6(bn(conv(x, sd['features.0.0.weight'], 2, 1), sd, 'features.0.1'))
    i, inp = 1, 32
    for t, c, n, s in table:
        for r in range(n):
            stride = s if r == 0 else 1
            f = f'features.{i}.conv'
            y, j = x, 0
            if t != 1:
                y = relu6(bn(conv(y, sd[f'{f}.0.0.weight'], 1, 1), sd, f'{f}.0.1')); j = 1
            hidden = y.shape[0]
            y = relu6(bn(conv(y, sd[f'{f}.{j}.0.weight'], stride, hidden), sd, f'{f}.{j}.1'))
            y = bn(conv(y, sd[f'{f}.{j + 1}.weight'], 1, 1), sd, f'{f}.{j + 2}')
            x = x + y if (stride == 1 and inp == c) else y
            inp, i = c, i + 1
    return relu6(bn(conv(x, sd['features.18.0.weight'], 1, 1), sd, 'features.18.1'))



def main():
    """Prints the features' sum, sum of squares and a few values for the deterministic input
    of crates/pipnet-train/tests/mobilenet.rs (128x128, 160-channel stage at stride 1)."""
    sd = read_legacy(sys.argv[1])
    size = 128
    x = ((np.arange(3 * size * size) * 37 % 101) / 50.0 - 1.0).reshape(3, size, size)
    out = features(sd, x, 1)
    print(out.shape, repr(out.sum()), repr((out ** 2).sum()))
    flat = out.ravel()
    nz = np.flatnonzero((flat > 0.05) & (flat < 5.9))
    for idx in nz[:: len(nz) // 6][:6]:
        c, r = divmod(idx, 64)
        print(int(c), int(r // 8), int(r % 8), repr(float(flat[idx])))


if __name__ == "__main__":
    main()
