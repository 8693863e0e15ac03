"""What the front refuses, and the library's failures as dipole.Error with its message."""

import numpy as np
import pytest
import torch

import dipole
import dipole.torch as dt


def arrays(b=1, nq=4, nk=6, hq=2, hkv=2, d=16, dtype=np.float32):
    r = np.random.default_rng(0)
    return (r.standard_normal((b, nq, hq, d)).astype(dtype),
            r.standard_normal((b, nk, hkv, d)).astype(dtype),
            r.standard_normal((b, nk, hkv, d)).astype(dtype))


def test_wrong_shapes(ctx):
    q, k, v = arrays()
    with pytest.raises(dipole.InvalidArgError, match=r"k has shape \(2, 6, 2, 16\)"):
        dipole.attention(q, np.concatenate([k, k]), v)
    with pytest.raises(dipole.InvalidArgError, match="v has shape"):
        dipole.attention(q, k, v[:, :5])
    with pytest.raises(dipole.InvalidArgError, match="q has 3 dimensions"):
        dipole.attention(q[0], k, v)
    with pytest.raises(dipole.InvalidArgError, match="reads v2"):
        dipole.attention(q, k, v, variant="routed")
    with pytest.raises(dipole.InvalidArgError, match="does not read it"):
        dipole.attention(q, k, v, v, variant="softmax")
    with pytest.raises(dipole.InvalidArgError, match="unknown variant 'cosine'"):
        dipole.attention(q, k, v, variant="cosine")
    with pytest.raises(dipole.InvalidArgError, match="pos_weight has 3 entries, expected 2"):
        dipole.attention(q, k, v, v, variant="two_pole", pos_weight=[1, 2, 3])
    with pytest.raises(dipole.InvalidArgError, match="key_lengths has 2 entries, expected 1"):
        dipole.attention(q, k, v, key_lengths=[1, 2])


def test_wrong_dtypes_and_devices(ctx):
    q, k, v = arrays()
    with pytest.raises(dipole.InvalidArgError, match="q has dtype float64"):
        dipole.attention(q.astype(np.float64), k, v)
    with pytest.raises(dipole.InvalidArgError, match="k is float16 but q is float32"):
        dipole.attention(q, k.astype(np.float16), v)
    tq, tk, tv = (torch.from_numpy(x) for x in (q, k, v))
    with pytest.raises(dipole.InvalidArgError, match="v has dtype torch.int32"):
        dipole.attention(tq, tk, tv.to(torch.int32))
    with pytest.raises(dipole.InvalidArgError, match="q is on device meta"):
        dt.attention(tq.to("meta"), tk, tv)
    with pytest.raises(dipole.InvalidArgError, match="must all be numpy arrays or all torch"):
        dipole.attention(tq, k, v)
    with pytest.raises(dipole.InvalidArgError, match="must be a numpy array or a torch CPU"):
        dipole.attention(q.tolist(), k, v)


def test_library_errors_carry_its_message(ctx):
    q, k, v = arrays(hq=3, hkv=2)
    # heads_kv must divide heads_q: the library's descriptor check says so.
    with pytest.raises(dipole.InvalidArgError, match="heads_kv") as e:
        dipole.attention(q, k, v)
    assert e.value.status == -2001 and e.value.status_name == "DIPOLE_ERR_INVALID_ARG"
    assert isinstance(e.value, dipole.Error) and isinstance(e.value, ValueError)
    q, k, v = arrays()
    with pytest.raises(dipole.InvalidArgError, match="key_lengths"):
        dipole.attention(q, k, v, key_lengths=[7])  # seq_k is 6
    with pytest.raises(dipole.InvalidArgError, match="window"):
        dipole.attention(q, k, v, window=(-3, 1))


def test_contexts_and_devices():
    devs = dipole.devices()
    assert isinstance(devs, list)
    if not devs:
        pytest.skip("no OpenCL device")
    assert all(d.selector.count(":") == 1 and d.name for d in devs)
    with dipole.Context(devs[0].selector) as c:
        assert devs[0].name in c.device_name
        q, k, v = arrays()
        assert dipole.attention(q, k, v, context=c).shape == q.shape
    with pytest.raises(dipole.Error, match="closed"):
        dipole.attention(q, k, v, context=c)
    with pytest.raises((dipole.NoDeviceError, dipole.BadSelectorError)) as e:
        dipole.Context("no-such-device-name-xyz")
    assert "no-such-device-name-xyz" in str(e.value)
