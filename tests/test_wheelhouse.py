from perfkit.wheelhouse import canonical, project_requirements


def test_requirements_come_from_the_project_and_leave_torch_out():
    reqs = {canonical(r) for r in project_requirements(("test",))}
    assert "torch" not in reqs
    assert {"fair-esm", "nvitop", "papermill", "scrapbook", "nbval"} <= reqs


def test_canonical_names():
    assert canonical("fair_esm>=2.0") == "fair-esm"
    assert canonical("PyYAML") == "pyyaml"
