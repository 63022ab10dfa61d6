"""perfkit.workload.layers: the model build both encoders share."""

import pytest
import torch

from perfkit.workload import dnabert, esm2
from perfkit.workload.layers import empty_model_on


@pytest.mark.parametrize("family, name", [(esm2, "esm2_t6_8M"), (dnabert, "dnabert_mini")])
def test_a_host_build_equals_the_meta_build_once_initialised(family, name):
    # on CPU the model is built plainly (meta's first use costs ~2 s of imports); on a GPU through meta: after
    # the seeded init both must hold the same values, buffers included
    make = (
        (lambda: esm2.ESM2(esm2.get_config(name)))
        if family is esm2
        else (lambda: dnabert.DNABERT(dnabert.CONFIGS[name]))
    )
    host = family.init_random_(empty_model_on(make, "cpu", torch.float32), 3)
    with torch.device("meta"):
        meta = make()
    meta = family.init_random_(meta.to_empty(device="cpu").eval(), 3)
    host_state, meta_state = host.state_dict(), meta.state_dict()
    assert host_state.keys() == meta_state.keys()
    for key, value in host_state.items():
        assert torch.equal(value, meta_state[key]), key
    assert not host.training
