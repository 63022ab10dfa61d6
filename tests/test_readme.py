"""README.md: every command in its shell blocks is either run here on CPU (the "Embedding a sample" block, in
order, on a small sample) or, where it needs GPUs, hours or a server, checked: perfkit's own parser takes its
flags, the files it names exist, a make target is in the Makefile."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from perfkit.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def shell_blocks(text: str) -> list[list[str]]:
    """Each ```sh block as its command lines: comments dropped, continuation lines joined, `host$ ` prompts cut."""
    blocks = []
    for body in re.findall(r"```sh\n(.*?)```", text, flags=re.S):
        lines, pending = [], ""
        for raw in body.splitlines():
            line = raw.split("  #")[0].rstrip() if not raw.lstrip().startswith("#") else ""
            if not line:
                continue
            line = pending + line.strip()
            if line.endswith("\\"):
                pending = line[:-1] + " "
                continue
            pending = ""
            lines.append(re.sub(r"^\w+\$ ", "", line))
        blocks.append(lines)
    return blocks


BLOCKS = shell_blocks(README)
COMMANDS = [line for block in BLOCKS for line in block]


def perfkit_argv(line: str) -> list[str] | None:
    """The perfkit arguments of a line (also inside `srun bash -c '...'`), or None."""
    inner = re.search(r"bash -c '(.*)'", line)
    # shell variables (SLURM's) stand for numbers and host names: 1 is both
    words = shlex.split(re.sub(r"\$\w+", "1", inner.group(1) if inner else line))
    return words[1:] if words and words[0] == "perfkit" else None


def test_the_readme_has_the_blocks_this_test_knows():
    assert [block[0].split()[0] for block in BLOCKS] == ["make", "perfkit", "perfkit", "export", "perfkit"]
    assert len(COMMANDS) >= 20


@pytest.mark.parametrize("line", [c for c in COMMANDS if perfkit_argv(c) is not None])
def test_every_perfkit_command_parses_and_names_files_that_exist(line):
    argv = perfkit_argv(line)
    args = build_parser().parse_args(argv)  # argparse exits 2 on an unknown flag or a bad value
    assert args.func is not None
    for flag in ("--params",):
        if flag in argv and argv[argv.index(flag) + 1].startswith("params/"):
            assert (ROOT / argv[argv.index(flag) + 1]).exists(), line
    if argv[0] == "compare":
        assert (ROOT / argv[1]).exists(), (
            f"{argv[1]}: the README compares against a report that is not published"
        )


def test_the_make_and_papermill_lines_name_targets_and_files_that_exist():
    makefile = (ROOT / "Makefile").read_text()
    for line in COMMANDS:
        words = shlex.split(line)
        if words[0] == "make":
            assert re.search(rf"^{words[1]}:", makefile, flags=re.M), line
        if words[0] == "papermill":
            assert (ROOT / words[1]).exists() and "-p" in words, line
            params = words[words.index("params_file") + 1] if "params_file" in words else None
            assert params is None or (ROOT / params).exists(), line


def test_every_papermill_line_passes_only_parameters_its_notebook_declares():
    """`-f params.yaml` would turn the YAML's top-level keys into notebook variables (setup rejects them):
    a README line passes each value with -p, and only names the notebook's parameters cell declares."""
    import papermill

    lines = [shlex.split(line) for line in COMMANDS if line.startswith("papermill ")]
    assert lines, "the README shows how to run a notebook with papermill"
    for words in lines:
        assert not {"-f", "--parameters_file", "-y", "--parameters_yaml"} & set(words), words
        declared = set(papermill.inspect_notebook(str(ROOT / words[1])))
        passed = [words[i + 1] for i, word in enumerate(words[:-1]) if word in ("-p", "--parameters")]
        assert passed and set(passed) <= declared, (words, declared)


# what a CPU run of the "Embedding a sample" block changes, and only that: the sizes (a 300-read sample, the
# smallest ESM-2, 40 reads per run) and the device; a line asking for GPUs is checked above, not run
SHRINK = {"-n": "300", "--model": "esm2_t6_8M", "--precision": "fp32", "--token-budget": "2048"}


def shrunk(argv: list[str]) -> list[str]:
    out = list(argv)
    for i, word in enumerate(out[:-1]):
        if word in SHRINK and not (word == "--model" and out[i + 1].startswith("dnabert")):
            out[i + 1] = SHRINK[word]
    if out[0] in ("embed", "predict"):
        out += ["--max-reads", "40", "--device", "cpu", "--num-workers", "0", "--no-progress"]
    return out


@pytest.mark.slow
def test_the_embedding_block_runs_in_order_on_cpu(tmp_path):
    block = next(b for b in BLOCKS if b[0].startswith("perfkit data synth"))
    (tmp_path / "real.fa").write_text(
        ">r1\nATGAAACCCGGGTTTAAACCCGGGTTTAAATAG\n>r2\nATGCCCAAAGGGTTTCCCAAAGGGTAA\n"
    )
    ran = 0
    for line in block:
        argv = perfkit_argv(line)
        if "--gpus" in argv or "--nt-weights" in argv:  # GPUs; a DNABERT-S folder nobody has here
            continue
        if "--resume" in argv:  # resuming a finished run: nothing left, exit 0
            argv = argv[: argv.index("--resume")] + ["--resume"]
        result = subprocess.run(
            [sys.executable, "-m", "perfkit", *shrunk(argv)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, f"{line}\n{result.stderr[-2000:]}"
        ran += 1
    assert (
        ran >= 8
        and (tmp_path / "out" / "embeddings.h5").exists()
        and (tmp_path / "calls_cpu" / "summary.json").exists()
    )


def test_the_six_frame_rules_the_readme_states_are_the_ones_translation_applies():
    from perfkit.workload.translate import translate_read

    rules = " ".join(README.split())
    for rule in (
        "frames F1–F3 at offsets 0–2 of the read and R1–R3 of its reverse complement",
        "a codon with a non-ACGT base is skipped",
        "a frame with a stop codon anywhere is dropped whole",
        "proteins are cut to 1,022 residues",
    ):
        assert rule in rules, rule
    # ATG GCC TAA: F1 holds a stop at its end and is dropped whole; the other frames keep their codons
    frames = {f.frame: f.protein for f in translate_read("r", "ATGGCCTAA")}
    assert frames == {"F2": "WP", "F3": "GL", "R1": "LGH", "R3": "RP"}  # F1 and R2 hold a stop
    assert {f.frame for f in translate_read("r", "ATGNNNGCC")} >= {
        "F1"
    }  # the NNN codon is skipped, not a stop
    assert translate_read("r", "ATGNNNGCC")[0].protein == "MA"
    assert max(len(f.protein) for f in translate_read("r", "GCT" * 2000)) == 1022
