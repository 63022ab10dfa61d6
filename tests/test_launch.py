"""perfkit.workload.launch: the torchrun command for one and several nodes, and checks before a launch."""

from perfkit.workload import distributed, launch
from perfkit.workload.config import make_config


def test_launcher_compares_a_resume_with_the_precision_the_ranks_recorded(small_fasta, tmp_path):
    from perfkit.workload.outdir import prepare_out_dir
    from perfkit.workload.runner import check_before_work

    # precision auto
    cfg = make_config(input=small_fasta, out_dir=tmp_path / "o", device="cpu", progress=False)
    prepare_out_dir(check_before_work(cfg))  # what rank 0 records: the resolved precision (fp32 on CPU)
    # the launcher compared "auto" with it and refused every resume of a run started without --precision
    assert launch.check_launch(cfg.model_copy(update={"resume": True}), 2, gpus=False) == "cpu"


def test_torchrun_command_for_one_and_for_several_nodes(tmp_path, monkeypatch):
    monkeypatch.setenv(distributed.RDZV_TIMEOUT_ENV, "42")
    one = launch.torchrun_command(2, tmp_path / "rank_spec.json")
    assert one[3:] == [
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "perfkit.workload.rank",
        str(tmp_path / "rank_spec.json"),
    ]  # the ranks' settings: the spec, never a command line
    run_id = launch.rendezvous_id("embed", tmp_path / "run")
    # every node derives it alike; another folder or command is another rendezvous
    assert run_id == launch.rendezvous_id("embed", tmp_path / "x" / ".." / "run")
    assert run_id != launch.rendezvous_id("embed", tmp_path / "other")
    assert run_id != launch.rendezvous_id("predict", tmp_path / "run")
    for node, is_host in ((0, 1), (1, 0)):
        nodes = distributed.Nodes(2, node, "head:29500")
        command = launch.torchrun_command(8, tmp_path / "rank_spec.json", nodes, run_id)
        where = command[3 : command.index("-m", 3)]
        assert where == [
            "--nnodes",
            "2",
            "--rdzv-backend",
            "c10d",
            "--rdzv-endpoint",
            "head:29500",
            "--rdzv-id",
            run_id,
            "--rdzv-conf",
            f"join_timeout=42,is_host={is_host}",
            "--nproc-per-node",
            "8",
        ]
