"""torch.library.opcheck on every custom op: schema, fake (meta) impl, autograd registration, AOT dispatch."""
import pytest
import torch

import flat.ops  # noqa: F401  (registers torch.ops.flat.*)
from tests.helpers import random_sens

B, C, H, W = 2, 2, 6, 5


def _args():
    g = torch.Generator().manual_seed(0)
    c = lambda *s: torch.randn(*s, dtype=torch.complex128, generator=g, requires_grad=True)  # noqa: E731
    x, v, ahy, k, y = c(B, H, W), c(B, H, W), c(B, H, W), c(B, C, H, W), c(B, C, H, W)
    S = random_sens(B, C, H, W, generator=g).requires_grad_()
    col = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0], dtype=torch.float64).reshape(1, 1, W)
    two_d = (torch.rand(B, H, W, generator=g) < 0.5).double()
    dt = torch.tensor([0.2, 0.3], dtype=torch.float64, requires_grad=True)
    lam = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    ref = "reference"
    cases = {
        "fft2c": (k, ref), "ifft2c": (k, ref), "sens_expand": (x, S, ref), "sens_reduce": (k, S, ref),
        "rss": (k, 1, ref),
    }
    for mname, m in (("col", col), ("2d", two_d)):
        cases.update({
            f"sense_forward/{mname}": (x, S, m, ref),
            f"sense_adjoint/{mname}": (k, S, m, ref),
            f"normal/{mname}": (x, S, m, ref),
            f"dc_gradient/{mname}": (x, y, S, m, ref),
            f"flow_step/{mname}": (x, v, y, S, m, dt, lam, None, ref),
            f"flow_step(ahy)/{mname}": (x, v, None, S, m, dt, lam, ahy, ref),
            f"kspace_flow_step/{mname}": (k, x, y, S, m, dt, lam, ref),
        })
    return cases


CASES = _args()


@pytest.mark.parametrize("case", list(CASES))
def test_opcheck(case):
    op = getattr(torch.ops.flat, case.split("/")[0].split("(")[0])
    torch.library.opcheck(op, CASES[case])


def test_every_op_is_registered():
    names = ["fft2c", "ifft2c", "sens_expand", "sens_reduce", "sense_forward", "sense_adjoint", "normal",
             "dc_gradient", "flow_step", "kspace_flow_step", "rss"]
    for name in names:
        assert hasattr(torch.ops.flat, name), name
