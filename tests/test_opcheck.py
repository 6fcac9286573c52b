"""torch.library.opcheck on every custom op of the table: schema, fake (meta) impl, autograd
registration, AOT dispatch; every variant (e.g. flow_step with y or with Aᴴy), column and 2-D masks."""
import pytest
import torch

import flat.ops  # noqa: F401  (registers torch.ops.flat.*)
from flat.ops.table import OPS

B, C, H, W = 2, 2, 6, 5


def _cases():
    g = torch.Generator().manual_seed(0)
    masks = {
        "col": torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0], dtype=torch.float64).reshape(1, 1, W),
        "2d": (torch.rand(B, H, W, generator=g) < 0.5).double(),
    }
    cases = {}
    for spec in OPS:
        for mname, m in (masks.items() if spec.has_mask else [("", None)]):
            for i, variant in enumerate(spec.variants):
                args = spec.sample(B, C, H, W, m, generator=g, variant=variant, requires_grad=True,
                                   scalar_shape=(B,) if i == 0 else ())
                cases[f"{spec.name}[{i}]/{mname}"] = (spec.name, args + ("reference",))
    return cases


CASES = _cases()


@pytest.mark.parametrize("case", list(CASES))
def test_opcheck(case):
    name, args = CASES[case]
    torch.library.opcheck(getattr(torch.ops.flat, name), args)


def test_every_op_is_registered():
    for spec in OPS:
        assert hasattr(torch.ops.flat, spec.name), spec.name
        assert hasattr(flat.ops, spec.name), spec.name
